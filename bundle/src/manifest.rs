//! `plugin.yaml`, the manifest at the root of every bundle: who the plugin is, which hooks it
//! implements, which permissions it asks for and how to start it. The bundle is signed, so the
//! manifest is what the operator and the shim trust; parsing is strict (unknown fields, duplicate
//! keys and unknown hooks or permissions are errors that say how to fix them), because a typo that
//! is silently ignored in a security manifest is a permission the author did not mean to ask for,
//! or one they think they have and do not.
//!
//! ```yaml
//! name: data-formatter
//! version: 1.2.3
//! apiVersion: 1
//! hooks: [transform]
//! permissions: [log, storage:read]
//! entryPoint: ["python3", "main.py"]
//! imageDigest: sha256:0123...   # optional: binds the bundle to one image
//! multiplexed: true              # optional (default false): one process takes several calls at once
//! configSchema:                  # optional: the JSON Schema Plugin.spec.config must match
//!   type: object
//!   properties: {greeting: {type: string, maxLength: 64}}
//!   additionalProperties: false
//! requires: [storage:read, config] # optional: permissions and host features it cannot do without
//! sdk: {name: airlock-sdk, version: 0.1.0}  # optional: the SDK it was built with
//! ```
//!
//! `requires` lists permissions the plugin cannot work without (each also in `permissions`) and
//! host features (`airlock_core::api::HOST_FEATURES`); a feature this version does not know is
//! not a parse error — the operator refuses it as one this Airlock does not provide, by name.
//!
//! `multiplexed` says how the plugin takes `concurrency` N > 1 (`sdk/PROTOCOL.md`, "Multiplexed
//! plugins"): without it the shim runs N processes with one request each; with it, one process
//! with up to N requests in flight, answered by id in any order.

use std::fmt;

use airlock_core::api;
pub use airlock_core::{Hook, Permission};
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_yaml::Value;

/// Longest plugin name: a DNS label, since the operator derives Kubernetes names from it.
const MAX_NAME_LEN: usize = 63;

/// A parsed, validated `plugin.yaml`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// The plugin's name, a DNS label (lowercase letters, digits, `-`).
    pub name: String,
    /// The plugin's version.
    pub version: semver::Version,
    /// The plugin API version the plugin targets.
    pub api_version: u32,
    /// Hooks the plugin implements, in manifest order, no duplicates.
    pub hooks: Vec<Hook>,
    /// Permissions the plugin asks for, in manifest order, no duplicates.
    pub permissions: Vec<Permission>,
    /// The command that starts the plugin process (argv; the first element is looked up in PATH
    /// or relative to the bundle directory).
    pub entry_point: Vec<String>,
    /// The image the bundle is bound to, `sha256:<64 hex>`, if any.
    pub image_digest: Option<String>,
    /// The plugin process takes several requests at once and answers them by id, in any order:
    /// with `concurrency` N > 1 the shim runs one process with N requests in flight instead of N
    /// processes with one each. Default false.
    pub multiplexed: bool,
    /// The JSON Schema `Plugin.spec.config` must match ([`crate::config`]), if the author
    /// declared one; it compiled when the manifest was parsed.
    pub config_schema: Option<serde_json::Value>,
    /// What the plugin cannot run without, in manifest order, no duplicates.
    pub requires: Vec<Requirement>,
    /// The SDK the plugin was built with, if the author said.
    pub sdk: Option<Sdk>,
}

/// One entry of `requires`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// A permission the plugin cannot work without: the operator refuses to run it unless the
    /// permission is granted (declared, approved by `Plugin.spec.permissions`, allowed by the
    /// trust level).
    Permission(Permission),
    /// A host feature by name (`airlock_core::api::HOST_FEATURES`, or one a newer Airlock has).
    Feature(String),
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Permission(p) => p.fmt(f),
            Requirement::Feature(name) => f.write_str(name),
        }
    }
}

/// The SDK a plugin was built with (`sdk`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sdk {
    /// Its name, e.g. `airlock-sdk` (the Rust SDK's crate).
    pub name: String,
    pub version: semver::Version,
}

/// Most entries of `requires`.
const MAX_REQUIREMENTS: usize = 16;

/// Why a `plugin.yaml` was rejected. Each message names the field and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not YAML at all.
    #[error("plugin.yaml is not valid YAML: {0}")]
    Syntax(#[source] serde_yaml::Error),
    /// The document is not a mapping.
    #[error("plugin.yaml must be a mapping of fields at the top level ({})", FIELDS.join(", "))]
    NotAMapping,
    /// A top-level key that is not a string.
    #[error("plugin.yaml: top-level key {key} is not a string; use one of {}", FIELDS.join(", "))]
    NonStringKey {
        /// The key, as YAML.
        key: String,
    },
    /// The same key twice.
    #[error("plugin.yaml: field `{field}` appears more than once; keep a single `{field}:` entry")]
    DuplicateKey {
        /// The repeated field.
        field: String,
    },
    /// A field this version does not know.
    #[error("plugin.yaml: unknown field `{field}`; {hint}allowed fields are {}", FIELDS.join(", "))]
    UnknownField {
        /// The unknown field.
        field: String,
        /// "did you mean `x`? " or empty.
        hint: String,
    },
    /// A required field is missing.
    #[error("plugin.yaml: required field `{field}` is missing; add it, e.g. `{example}`")]
    MissingField {
        /// The missing field.
        field: &'static str,
        /// An example line.
        example: &'static str,
    },
    /// A field with the wrong type or value.
    #[error("plugin.yaml: field `{field}` {problem}; {fix}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
        /// How to fix it.
        fix: String,
    },
    /// A hook this plugin API does not have.
    #[error(
        "plugin.yaml: `hooks` lists unknown hook `{hook}`; use only {}",
        list(Hook::ALL)
    )]
    UnknownHook {
        /// The unknown hook.
        hook: String,
    },
    /// A permission this plugin API does not have.
    #[error(
        "plugin.yaml: `permissions` lists unknown permission `{permission}`; use only {}",
        list(Permission::ALL)
    )]
    UnknownPermission {
        /// The unknown permission.
        permission: String,
    },
    /// The same hook or permission twice.
    #[error("plugin.yaml: `{field}` lists `{value}` more than once; list it once")]
    DuplicateEntry {
        /// `hooks` or `permissions`.
        field: &'static str,
        /// The repeated value.
        value: String,
    },
    /// An API version this shim cannot serve.
    #[error(
        "plugin.yaml: apiVersion {found} is not supported by this airlock-shim (it supports {}); \
         build the plugin against a supported plugin API or use a newer airlock-shim",
        api::supported_list()
    )]
    UnsupportedApiVersion {
        /// The manifest's apiVersion.
        found: u32,
    },
}

/// The fields of `plugin.yaml`, in the order the documentation lists them.
pub const FIELDS: &[&str] = &[
    "name",
    "version",
    "apiVersion",
    "hooks",
    "permissions",
    "entryPoint",
    "imageDigest",
    "multiplexed",
    "configSchema",
    "requires",
    "sdk",
];

fn list<T: fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Manifest {
    /// Parses and validates a `plugin.yaml`.
    pub fn parse(yaml: &str) -> Result<Self, ManifestError> {
        // An empty document is an EOF error to the YAML parser; it is "no fields" to the author.
        let blank = |l: &str| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        };
        if yaml.lines().all(blank) {
            return Err(ManifestError::NotAMapping);
        }
        let fields = match serde_yaml::from_str::<TopLevel>(yaml) {
            Ok(TopLevel::Map(fields)) => fields,
            Ok(TopLevel::NotAMap) => return Err(ManifestError::NotAMapping),
            Err(e) => return Err(ManifestError::Syntax(e)),
        };
        let mut raw = RawFields::default();
        for (key, value) in fields {
            let Value::String(field) = key else {
                return Err(ManifestError::NonStringKey {
                    key: yaml_inline(&key),
                });
            };
            let slot = match field.as_str() {
                "name" => &mut raw.name,
                "version" => &mut raw.version,
                "apiVersion" => &mut raw.api_version,
                "hooks" => &mut raw.hooks,
                "permissions" => &mut raw.permissions,
                "entryPoint" => &mut raw.entry_point,
                "imageDigest" => &mut raw.image_digest,
                "multiplexed" => &mut raw.multiplexed,
                "configSchema" => &mut raw.config_schema,
                "requires" => &mut raw.requires,
                "sdk" => &mut raw.sdk,
                _ => {
                    let hint = closest(&field, FIELDS)
                        .map(|f| format!("did you mean `{f}`? "))
                        .unwrap_or_default();
                    return Err(ManifestError::UnknownField { field, hint });
                }
            };
            if slot.replace(value).is_some() {
                return Err(ManifestError::DuplicateKey { field });
            }
        }
        raw.validate()
    }

    /// Fails unless this shim can serve the manifest's plugin API version.
    pub fn check_api_version(&self) -> Result<(), ManifestError> {
        if api::is_supported(self.api_version) {
            Ok(())
        } else {
            Err(ManifestError::UnsupportedApiVersion {
                found: self.api_version,
            })
        }
    }

    /// Whether the manifest declares `hook` (by its manifest spelling).
    pub fn declares(&self, hook: &str) -> bool {
        self.hooks.iter().any(|h| h.as_str() == hook)
    }

    /// Whether the plugin migrates its storage on upgrade: it declares `onUpgrade` and
    /// `storage:write` (what a migration writes with). The shim sends `onUpgrade` only to such a
    /// plugin, and only when the Plugin grants it `storage:write` (else the operator passes
    /// `--no-upgrade`).
    pub fn upgrades_storage(&self) -> bool {
        self.hooks.contains(&Hook::OnUpgrade)
            && self.permissions.contains(&Permission::StorageWrite)
    }
}

/// The top-level mapping as written, keys in order and duplicates kept, so they can be reported
/// (deserialising straight into a struct or a map would drop or blur them).
enum TopLevel {
    Map(Vec<(Value, Value)>),
    NotAMap,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry::<Value, Value>()? {
                    entries.push(entry);
                }
                Ok(TopLevel::Map(entries))
            }
            // Anything else is reported as "not a mapping" rather than as a serde type error.
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TopLevel, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(TopLevel::NotAMap)
            }
            fn visit_unit<E: de::Error>(self) -> Result<TopLevel, E> {
                Ok(TopLevel::NotAMap)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<TopLevel, E> {
                Ok(TopLevel::NotAMap)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<TopLevel, E> {
                Ok(TopLevel::NotAMap)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<TopLevel, E> {
                Ok(TopLevel::NotAMap)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<TopLevel, E> {
                Ok(TopLevel::NotAMap)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<TopLevel, E> {
                Ok(TopLevel::NotAMap)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Default)]
struct RawFields {
    name: Option<Value>,
    version: Option<Value>,
    api_version: Option<Value>,
    hooks: Option<Value>,
    permissions: Option<Value>,
    entry_point: Option<Value>,
    image_digest: Option<Value>,
    multiplexed: Option<Value>,
    config_schema: Option<Value>,
    requires: Option<Value>,
    sdk: Option<Value>,
}

impl RawFields {
    fn validate(self) -> Result<Manifest, ManifestError> {
        let name = required_string(self.name, "name", "name: data-formatter")?;
        if !is_dns_label(&name) {
            return Err(ManifestError::InvalidField {
                field: "name",
                problem: format!("is `{name}`, which is not a DNS label"),
                fix: format!(
                    "use 1-{MAX_NAME_LEN} lowercase letters, digits and `-`, starting with a \
                     letter and ending with a letter or digit"
                ),
            });
        }

        let version_text = match self.version {
            // `version: 1.2` parses as a float; quote it or give three parts.
            Some(Value::Number(n)) => n.to_string(),
            other => required_string(other, "version", "version: 1.0.0")?,
        };
        let version =
            semver::Version::parse(&version_text).map_err(|e| ManifestError::InvalidField {
                field: "version",
                problem: format!("is `{version_text}`, which is not a semantic version ({e})"),
                fix: "use MAJOR.MINOR.PATCH, e.g. `version: 1.2.3`".to_string(),
            })?;

        let api_version = match self.api_version {
            None => {
                return Err(ManifestError::MissingField {
                    field: "apiVersion",
                    example: "apiVersion: 1",
                });
            }
            Some(Value::Number(n)) => n
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .filter(|v| *v > 0),
            Some(_) => None,
        }
        .ok_or_else(|| ManifestError::InvalidField {
            field: "apiVersion",
            problem: "is not a positive integer".to_string(),
            fix: "write the plugin API version as a bare number, e.g. `apiVersion: 1`".to_string(),
        })?;

        let hooks = string_list(self.hooks, "hooks", "hooks: [transform]")?;
        if hooks.is_empty() {
            return Err(ManifestError::InvalidField {
                field: "hooks",
                problem: "is empty".to_string(),
                fix: format!("list at least one of {}", list(Hook::ALL)),
            });
        }
        let hooks = unique(hooks, "hooks", |h| {
            Hook::parse(&h).ok_or(ManifestError::UnknownHook { hook: h })
        })?;

        let permissions = match self.permissions {
            // No permissions is a valid (and the safest) manifest.
            None => Vec::new(),
            some => string_list(some, "permissions", "permissions: [log]")?,
        };
        let permissions = unique(permissions, "permissions", |p| {
            Permission::parse(&p).ok_or(ManifestError::UnknownPermission { permission: p })
        })?;

        let entry_point = string_list(
            self.entry_point,
            "entryPoint",
            r#"entryPoint: ["python3", "main.py"]"#,
        )?;
        if entry_point.first().is_none_or(|e| e.is_empty()) {
            return Err(ManifestError::InvalidField {
                field: "entryPoint",
                problem: "has no command".to_string(),
                fix: r#"give the command and its arguments, e.g. `entryPoint: ["python3", "main.py"]`"#
                    .to_string(),
            });
        }

        let image_digest = match self.image_digest {
            None | Some(Value::Null) => None,
            Some(v) => {
                let d = required_string(Some(v), "imageDigest", "")?;
                if !is_sha256_digest(&d) {
                    return Err(ManifestError::InvalidField {
                        field: "imageDigest",
                        problem: format!("is `{d}`, which is not a sha256 digest"),
                        fix: "write `sha256:` followed by 64 lowercase hex digits, or leave the \
                              field out"
                            .to_string(),
                    });
                }
                Some(d)
            }
        };

        let multiplexed = match self.multiplexed {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => b,
            Some(other) => {
                return Err(ManifestError::InvalidField {
                    field: "multiplexed",
                    problem: format!("is {}, not true or false", yaml_inline(&other)),
                    fix: "write `multiplexed: true` (one process takes several calls at once) or \
                          leave the field out"
                        .to_string(),
                });
            }
        };

        let config_schema = match self.config_schema {
            None | Some(Value::Null) => None,
            Some(v) => Some(config_schema(v)?),
        };

        let requires = match self.requires {
            None | Some(Value::Null) => Vec::new(),
            some => requirements(
                string_list(some, "requires", "requires: [storage:read, config]")?,
                &permissions,
                &hooks,
            )?,
        };
        let sdk = match self.sdk {
            None | Some(Value::Null) => None,
            Some(v) => Some(sdk(v)?),
        };

        Ok(Manifest {
            name,
            version,
            api_version,
            hooks,
            permissions,
            entry_point,
            image_digest,
            multiplexed,
            config_schema,
            requires,
            sdk,
        })
    }
}

/// `requires`: permissions (each one the manifest declares) and host feature names.
fn requirements(
    items: Vec<String>,
    declared: &[Permission],
    hooks: &[Hook],
) -> Result<Vec<Requirement>, ManifestError> {
    if items.len() > MAX_REQUIREMENTS {
        return Err(ManifestError::InvalidField {
            field: "requires",
            problem: format!("lists {} entries", items.len()),
            fix: format!("list at most {MAX_REQUIREMENTS}"),
        });
    }
    unique(items, "requires", |item| {
        if let Some(p) = Permission::parse(&item) {
            return if declared.contains(&p) {
                Ok(Requirement::Permission(p))
            } else {
                Err(ManifestError::InvalidField {
                    field: "requires",
                    problem: format!("lists the permission `{p}`, which `permissions` does not"),
                    fix: format!("add `{p}` to `permissions` too, or remove it from `requires`"),
                })
            };
        }
        // A feature the plugin could not use as declared is a mistake in the manifest.
        let needs: Option<(Hook, Option<Permission>)> = match item.as_str() {
            "liveConfig" => Some((Hook::OnConfigChange, None)),
            "upgrade" => Some((Hook::OnUpgrade, Some(Permission::StorageWrite))),
            _ => None,
        };
        if let Some((hook, permission)) = needs {
            if !hooks.contains(&hook) {
                return Err(ManifestError::InvalidField {
                    field: "requires",
                    problem: format!("lists `{item}`, but `hooks` does not declare `{hook}`"),
                    fix: format!("add `{hook}` to `hooks`, or remove `{item}` from `requires`"),
                });
            }
            if let Some(p) = permission.filter(|p| !declared.contains(p)) {
                return Err(ManifestError::InvalidField {
                    field: "requires",
                    problem: format!("lists `{item}`, but `permissions` does not declare `{p}`"),
                    fix: format!(
                        "add `{p}` to `permissions` (a migration writes the storage), or remove `{item}` from `requires`"
                    ),
                });
            }
        }
        if is_feature_name(&item) {
            Ok(Requirement::Feature(item))
        } else {
            Err(ManifestError::InvalidField {
                field: "requires",
                problem: format!(
                    "lists `{}`, which is neither a permission nor a host feature name",
                    item.chars().take(64).collect::<String>()
                ),
                fix: format!(
                    "list permissions ({}) and host features ({})",
                    list(Permission::ALL),
                    list(api::HOST_FEATURES)
                ),
            })
        }
    })
}

/// A host feature's name: a lowercase letter, then up to 31 letters and digits (camelCase).
fn is_feature_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter().all(u8::is_ascii_alphanumeric)
}

/// `sdk: {name, version}`.
fn sdk(value: Value) -> Result<Sdk, ManifestError> {
    let example = "sdk: {name: airlock-sdk, version: 0.1.0}";
    let invalid = |problem: String| ManifestError::InvalidField {
        field: "sdk",
        problem,
        fix: format!("write `{example}` (the SDK's name and semantic version), or leave it out"),
    };
    let Value::Mapping(map) = value else {
        return Err(invalid(format!(
            "is {}, not a mapping",
            yaml_inline(&value)
        )));
    };
    let (mut name, mut version) = (None, None);
    for (k, v) in map {
        match (k.as_str(), v) {
            (Some("name"), Value::String(s)) if name.is_none() => name = Some(s),
            (Some("version"), Value::String(s)) if version.is_none() => version = Some(s),
            // `version: 1.0` is a number to YAML; said as a version that does not parse.
            (Some("version"), Value::Number(n)) if version.is_none() => {
                version = Some(n.to_string())
            }
            (Some(key), v) => {
                let short = |t: &str| t.chars().take(64).collect::<String>();
                return Err(invalid(format!(
                    "has `{}: {}`, but only `name` and `version` strings",
                    short(key),
                    short(&yaml_inline(&v))
                )));
            }
            (None, _) => return Err(invalid("has a key that is not a string".to_string())),
        }
    }
    let name = name.ok_or_else(|| invalid("has no `name`".to_string()))?;
    let well_formed = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/'));
    if !well_formed {
        return Err(invalid(format!(
            "has the name `{}`, which is not 1-64 letters, digits, `-`, `_`, `.` or `/`",
            name.chars().take(64).collect::<String>()
        )));
    }
    let text = version.ok_or_else(|| invalid("has no `version`".to_string()))?;
    let version = semver::Version::parse(&text).map_err(|e| {
        invalid(format!(
            "has the version `{}`, which is not a semantic version ({e})",
            text.chars().take(64).collect::<String>()
        ))
    })?;
    Ok(Sdk { name, version })
}

/// `configSchema` as JSON, compiled once to prove it is a schema Airlock can check against.
fn config_schema(value: Value) -> Result<serde_json::Value, ManifestError> {
    let invalid = |problem: String| ManifestError::InvalidField {
        field: "configSchema",
        problem,
        fix: "write a JSON Schema object (e.g. `configSchema: {type: object, properties: \
              {greeting: {type: string}}}`), re-pack and re-sign the bundle"
            .to_string(),
    };
    let json = serde_json::to_value(&value)
        .map_err(|e| invalid(format!("cannot be read as JSON ({e})")))?;
    crate::config::ConfigSchema::compile(&json)
        .map_err(|e| invalid(format!("is not usable: {e}")))?;
    Ok(json)
}

fn required_string(
    value: Option<Value>,
    field: &'static str,
    example: &'static str,
) -> Result<String, ManifestError> {
    match value {
        None | Some(Value::Null) => Err(ManifestError::MissingField { field, example }),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ManifestError::InvalidField {
            field,
            problem: format!("is {}, not a string", yaml_inline(&other)),
            fix: format!("quote the value, e.g. `{example}`"),
        }),
    }
}

fn string_list(
    value: Option<Value>,
    field: &'static str,
    example: &'static str,
) -> Result<Vec<String>, ManifestError> {
    let items = match value {
        None | Some(Value::Null) => return Err(ManifestError::MissingField { field, example }),
        Some(Value::Sequence(items)) => items,
        Some(other) => {
            return Err(ManifestError::InvalidField {
                field,
                problem: format!("is {}, not a list", yaml_inline(&other)),
                fix: format!("write a list of strings, e.g. `{example}`"),
            });
        }
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::String(s) => Ok(s),
            other => Err(ManifestError::InvalidField {
                field,
                problem: format!(
                    "has the item {}, which is not a string",
                    yaml_inline(&other)
                ),
                fix: format!("write a list of strings, e.g. `{example}`"),
            }),
        })
        .collect()
}

fn unique<T: PartialEq + fmt::Display>(
    items: Vec<String>,
    field: &'static str,
    parse: impl Fn(String) -> Result<T, ManifestError>,
) -> Result<Vec<T>, ManifestError> {
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        let parsed = parse(item)?;
        if out.contains(&parsed) {
            return Err(ManifestError::DuplicateEntry {
                field,
                value: parsed.to_string(),
            });
        }
        out.push(parsed);
    }
    Ok(out)
}

fn yaml_inline(value: &Value) -> String {
    match serde_yaml::to_string(value) {
        Ok(s) => format!("`{}`", s.trim_end()),
        Err(_) => "a value".to_string(),
    }
}

fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= MAX_NAME_LEN
        && b[0].is_ascii_lowercase()
        && b[b.len() - 1] != b'-'
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The allowed name closest to `field` when it looks like a typo (case or up to two edits).
fn closest(field: &str, allowed: &[&'static str]) -> Option<&'static str> {
    allowed
        .iter()
        .map(|a| {
            (
                edit_distance(&field.to_ascii_lowercase(), &a.to_ascii_lowercase()),
                *a,
            )
        })
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name: data-formatter
version: 1.2.3
apiVersion: 1
hooks: [transform, onLoad]
permissions: [log, "storage:read"]
entryPoint: ["python3", "main.py"]
imageDigest: sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
"#;

    fn with(line_from: &str, line_to: &str) -> String {
        assert!(GOOD.contains(line_from), "{line_from}");
        GOOD.replace(line_from, line_to)
    }

    fn err(yaml: &str) -> (ManifestError, String) {
        let e = Manifest::parse(yaml).unwrap_err();
        let msg = e.to_string();
        (e, msg)
    }

    #[test]
    fn parses_a_complete_manifest() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.name, "data-formatter");
        assert_eq!(m.version, semver::Version::new(1, 2, 3));
        assert_eq!(m.api_version, 1);
        assert_eq!(m.hooks, vec![Hook::Transform, Hook::OnLoad]);
        assert_eq!(
            m.permissions,
            vec![Permission::Log, Permission::StorageRead]
        );
        assert_eq!(m.entry_point, vec!["python3", "main.py"]);
        assert!(m.image_digest.is_some());
        assert!(!m.multiplexed, "multiplexed is off unless asked for");
        assert!(m.declares("transform") && !m.declares("onEvent"));
        m.check_api_version().unwrap();
    }

    #[test]
    fn permissions_and_image_digest_are_optional() {
        let yaml =
            "name: p\nversion: 0.1.0\napiVersion: 1\nhooks: [onEvent]\nentryPoint: [./run]\n";
        let m = Manifest::parse(yaml).unwrap();
        assert!(m.permissions.is_empty());
        assert_eq!(m.image_digest, None);
    }

    #[test]
    fn multiplexed_is_a_boolean() {
        let m = Manifest::parse(&format!("{GOOD}multiplexed: true\n")).unwrap();
        assert!(m.multiplexed);
        let m = Manifest::parse(&format!("{GOOD}multiplexed: false\n")).unwrap();
        assert!(!m.multiplexed);
        let (e, msg) = err(&format!("{GOOD}multiplexed: \"yes\"\n"));
        assert!(
            matches!(
                e,
                ManifestError::InvalidField {
                    field: "multiplexed",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(msg.contains("`multiplexed: true`"), "{msg}");
        let (_, msg) = err(&format!("{GOOD}multiplex: true\n"));
        assert!(msg.contains("did you mean `multiplexed`?"), "{msg}");
    }

    #[test]
    fn requires_lists_declared_permissions_and_feature_names() {
        let m = Manifest::parse(&format!(
            "{GOOD}requires: [storage:read, config, kvWatch]\n"
        ))
        .unwrap();
        assert_eq!(
            m.requires,
            vec![
                Requirement::Permission(Permission::StorageRead),
                Requirement::Feature("config".into()),
                Requirement::Feature("kvWatch".into()),
            ],
            "a feature this version does not know parses: the operator names it"
        );
        assert!(Manifest::parse(GOOD).unwrap().requires.is_empty());

        let (_, msg) = err(&format!("{GOOD}requires: [events:emit]\n"));
        assert!(
            msg.contains("`events:emit`, which `permissions` does not")
                && msg.contains("add `events:emit` to `permissions`"),
            "{msg}"
        );
        let (_, msg) = err(&format!("{GOOD}requires: [\"Storage Write\"]\n"));
        assert!(
            msg.contains("neither a permission nor a host feature") && msg.contains("`liveConfig`"),
            "{msg}"
        );
        let (_, msg) = err(&format!("{GOOD}requires: [liveConfig]\n"));
        assert!(
            msg.contains("`hooks` does not declare `onConfigChange`"),
            "{msg}"
        );
        let (_, msg) = err(&with(
            "hooks: [transform, onLoad]",
            "hooks: [transform, onUpgrade]",
        )
        .replace("\nentryPoint", "\nrequires: [upgrade]\nentryPoint"));
        assert!(msg.contains("does not declare `storage:write`"), "{msg}");
        let (_, msg) = err(&format!("{GOOD}requires: [config, config]\n"));
        assert!(msg.contains("lists `config` more than once"), "{msg}");
        let many: Vec<String> = (0..17).map(|i| format!("f{i}")).collect();
        let (_, msg) = err(&format!("{GOOD}requires: [{}]\n", many.join(", ")));
        assert!(msg.contains("at most 16"), "{msg}");
    }

    #[test]
    fn sdk_names_the_sdk_and_its_semantic_version() {
        let m = Manifest::parse(&format!(
            "{GOOD}sdk: {{name: airlock-sdk, version: 0.1.0}}\n"
        ))
        .unwrap();
        assert_eq!(
            m.sdk,
            Some(Sdk {
                name: "airlock-sdk".into(),
                version: semver::Version::new(0, 1, 0)
            })
        );
        for (bad, says) in [
            ("sdk: airlock-sdk", "not a mapping"),
            ("sdk: {name: airlock-sdk}", "has no `version`"),
            ("sdk: {version: 1.0.0}", "has no `name`"),
            (
                "sdk: {name: airlock-sdk, version: 1.0}",
                "not a semantic version",
            ),
            ("sdk: {name: \"a b\", version: 1.0.0}", "not 1-64 letters"),
            (
                "sdk: {name: x, version: 1.0.0, extra: 1}",
                "only `name` and `version`",
            ),
        ] {
            let (e, msg) = err(&format!("{GOOD}{bad}\n"));
            assert!(
                matches!(e, ManifestError::InvalidField { field: "sdk", .. }) && msg.contains(says),
                "{bad}: {msg}"
            );
        }
    }

    #[test]
    fn unknown_field_is_named_with_a_suggestion() {
        let (e, msg) = err(&with("hooks:", "hook:"));
        assert!(matches!(e, ManifestError::UnknownField { ref field, .. } if field == "hook"));
        assert!(msg.contains("did you mean `hooks`?"), "{msg}");
        let (_, msg) = err(&format!("{GOOD}sandbox: off\n"));
        assert!(msg.contains("unknown field `sandbox`"), "{msg}");
        assert!(!msg.contains("did you mean"), "{msg}");
    }

    #[test]
    fn duplicate_key_is_an_error_not_last_one_wins() {
        // The classic attack on a signed manifest reviewed by eye: a second `permissions:` below.
        let (e, msg) = err(&format!("{GOOD}permissions: [net:egress]\n"));
        assert!(
            matches!(e, ManifestError::DuplicateKey { ref field } if field == "permissions"),
            "{e:?}"
        );
        assert!(msg.contains("keep a single `permissions:`"), "{msg}");
    }

    #[test]
    fn unknown_hook_and_permission_list_the_allowed_ones() {
        let (e, msg) = err(&with(
            "hooks: [transform, onLoad]",
            "hooks: [transform, onSave]",
        ));
        assert!(matches!(e, ManifestError::UnknownHook { ref hook } if hook == "onSave"));
        assert!(
            msg.contains(
                "`onLoad`, `onUnload`, `onConfigChange`, `onUpgrade`, `transform`, `onEvent`"
            ),
            "{msg}"
        );
        let (e, msg) = err(&with(r#""storage:read""#, "root"));
        assert!(
            matches!(e, ManifestError::UnknownPermission { ref permission } if permission == "root")
        );
        assert!(msg.contains("`net:egress`"), "{msg}");
        let (e, _) = err(&with("[log, ", "[log, log, "));
        assert!(matches!(
            e,
            ManifestError::DuplicateEntry {
                field: "permissions",
                ..
            }
        ));
    }

    #[test]
    fn missing_and_mistyped_fields_say_how_to_fix_them() {
        let (e, msg) = err(&with("apiVersion: 1\n", ""));
        assert!(matches!(
            e,
            ManifestError::MissingField {
                field: "apiVersion",
                ..
            }
        ));
        assert!(msg.contains("apiVersion: 1"), "{msg}");
        // (a line of the valid manifest, what replaces it, the field named, a hint the message
        // must give: "" for none in particular)
        let mistyped = [
            ("apiVersion: 1", "apiVersion: \"1\"", "apiVersion", ""),
            (
                "version: 1.2.3",
                "version: 1.2",
                "version",
                "MAJOR.MINOR.PATCH",
            ),
            (
                r#"entryPoint: ["python3", "main.py"]"#,
                "entryPoint: python3 main.py",
                "entryPoint",
                "",
            ),
            (
                r#"entryPoint: ["python3", "main.py"]"#,
                "entryPoint: []",
                "entryPoint",
                "",
            ),
            ("sha256:0123", "sha256:XYZ", "imageDigest", ""),
            ("name: data-formatter", "name: Data_Formatter", "name", ""),
            ("hooks: [transform, onLoad]", "hooks: []", "hooks", ""),
        ];
        for (valid, invalid, field, hint) in mistyped {
            let (e, msg) = err(&with(valid, invalid));
            assert!(
                matches!(e, ManifestError::InvalidField { field: f, .. } if f == field),
                "{invalid}: {msg}"
            );
            assert!(msg.contains(hint), "{msg}");
        }
    }

    #[test]
    fn not_a_mapping_and_bad_yaml() {
        assert!(matches!(err("- a\n- b\n").0, ManifestError::NotAMapping));
        assert!(matches!(err("").0, ManifestError::NotAMapping));
        assert!(matches!(err("just text").0, ManifestError::NotAMapping));
        assert!(matches!(
            err("name: [unclosed\n").0,
            ManifestError::Syntax(_)
        ));
    }

    #[test]
    fn unsupported_api_version_is_reported_by_the_check() {
        let m = Manifest::parse(&with("apiVersion: 1", "apiVersion: 2")).unwrap();
        let msg = m.check_api_version().unwrap_err().to_string();
        assert!(
            msg.contains("apiVersion 2 is not supported") && msg.contains("supports 1"),
            "{msg}"
        );
    }

    #[test]
    fn a_config_schema_is_read_as_json_and_must_compile() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.config_schema, None, "no schema unless declared");
        let yaml = format!(
            "{GOOD}configSchema:\n  type: object\n  properties:\n    greeting: {{type: string, maxLength: 8}}\n"
        );
        let m = Manifest::parse(&yaml).unwrap();
        let schema = m.config_schema.unwrap();
        assert_eq!(schema["properties"]["greeting"]["maxLength"], 8);
        let (e, msg) = err(&format!("{GOOD}configSchema: {{type: objekt}}\n"));
        assert!(
            matches!(
                e,
                ManifestError::InvalidField {
                    field: "configSchema",
                    ..
                }
            ),
            "{msg}"
        );
        assert!(msg.contains("re-sign"), "{msg}");
        let (_, msg) = err(&format!("{GOOD}configSchema: [1]\n"));
        assert!(msg.contains("configSchema"), "{msg}");
        let (_, msg) = err(&format!("{GOOD}configSchem: {{}}\n"));
        assert!(msg.contains("did you mean `configSchema`"), "{msg}");
    }

    #[test]
    fn on_config_change_is_a_hook_a_manifest_may_declare() {
        let m = Manifest::parse(&with(
            "hooks: [transform, onLoad]",
            "hooks: [onLoad, onConfigChange]",
        ))
        .unwrap();
        assert!(m.declares("onConfigChange"));
    }
}
