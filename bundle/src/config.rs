//! A plugin's configuration: the JSON document in `Plugin.spec.config`, checked against the JSON
//! Schema the signed manifest may declare (`configSchema` in `plugin.yaml`). The operator checks
//! it before a revision rolls out (an error names the field, e.g. `spec.config.greeting`); the
//! shim hands the document to the plugin in `onLoad` and `onConfigChange` (`sdk/PROTOCOL.md`).
//!
//! The schema comes from the plugin's author, who is not trusted: compiling it never fetches a
//! `$ref` (no retriever: the operator is never a deputy, and the shim has no network to use), and
//! its `pattern`s run on the linear-time `regex` engine (no backtracking for a schema to abuse).

use jsonschema::paths::LocationSegment;
use jsonschema::{PatternOptions, Validator};
use serde_json::Value;

/// Largest `spec.config`, as compact JSON: it travels in a ConfigMap, an `onLoad` request line
/// and the Plugin object itself, all of which have room for much more; a plugin that needs more
/// should read data from its storage.
pub const MAX_CONFIG_BYTES: usize = 64 * 1024;

/// Deepest nesting of `spec.config` (objects and arrays).
pub const MAX_CONFIG_DEPTH: usize = 32;

/// Problems listed in one error (the rest are counted): a condition message stays readable.
const MAX_REPORTED: usize = 5;

/// Why a configuration was refused. Each message names the field and says what to do.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Larger than [`MAX_CONFIG_BYTES`].
    #[error(
        "spec.config is {bytes} bytes as JSON, more than the {MAX_CONFIG_BYTES} a plugin's configuration may have; keep large data in the plugin's storage or its bundle"
    )]
    TooLarge {
        /// Its size as compact JSON.
        bytes: usize,
    },
    /// Nested deeper than [`MAX_CONFIG_DEPTH`].
    #[error(
        "spec.config nests objects and arrays more than {MAX_CONFIG_DEPTH} levels deep; flatten it"
    )]
    TooDeep,
    /// Not a JSON object.
    #[error("spec.config must be a JSON object (a mapping of settings), not {found}")]
    NotAnObject {
        /// What it is instead.
        found: &'static str,
    },
    /// The document does not match the manifest's `configSchema`.
    #[error(
        "spec.config does not match the configSchema of the plugin's signed manifest: {}{}; fix spec.config",
        problems.join("; "),
        more_text(*more)
    )]
    SchemaMismatch {
        /// Up to [`MAX_REPORTED`] problems, each naming its field (`spec.config.a.b[2]: …`).
        problems: Vec<String>,
        /// How many more there are.
        more: usize,
    },
}

fn more_text(more: usize) -> String {
    match more {
        0 => String::new(),
        n => format!(" (and {n} more)"),
    }
}

/// A `configSchema` compiled for checking configurations.
#[derive(Debug)]
pub struct ConfigSchema {
    validator: Validator,
}

impl ConfigSchema {
    /// Compiles `schema` (a JSON Schema, draft 2020-12 unless its `$schema` says otherwise).
    /// Fails with a message saying what is wrong with it, e.g. an unknown type, a `pattern` that
    /// is not a regular expression of the `regex` engine, or a `$ref` outside the schema.
    pub fn compile(schema: &Value) -> Result<Self, String> {
        if !schema.is_object() {
            return Err(format!(
                "is {}, not a JSON Schema object such as {{type: object, properties: {{…}}}}",
                type_name(schema)
            ));
        }
        jsonschema::options()
            .with_pattern_options(PatternOptions::regex())
            .build(schema)
            .map(|validator| Self { validator })
            .map_err(|e| {
                let at = e.instance_path().as_str();
                match at.is_empty() {
                    true => e.masked().to_string(),
                    false => format!("at {at}: {}", e.masked()),
                }
            })
    }

    /// Checks `config` against the schema (after [`check_shape`]).
    pub fn check(&self, config: &Value) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut more = 0;
        for error in self.validator.iter_errors(config) {
            if problems.len() == MAX_REPORTED {
                more += 1;
                continue;
            }
            // The value itself is left out of the message: it may be long, and the condition
            // is not the place to repeat a configuration.
            problems.push(format!(
                "{}: {}",
                field_path(error.instance_path().iter()),
                error.masked()
            ));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(ConfigError::SchemaMismatch { problems, more }),
        }
    }
}

/// Checks what every configuration must be, with or without a schema: a JSON object of at most
/// [`MAX_CONFIG_BYTES`] nested at most [`MAX_CONFIG_DEPTH`] deep. Returns its compact JSON text.
pub fn check_shape(config: &Value) -> Result<String, ConfigError> {
    if !config.is_object() {
        return Err(ConfigError::NotAnObject {
            found: type_name(config),
        });
    }
    let text = config.to_string();
    if text.len() > MAX_CONFIG_BYTES {
        return Err(ConfigError::TooLarge { bytes: text.len() });
    }
    if airlock_core::json_depth::nests_deeper_than(text.as_bytes(), MAX_CONFIG_DEPTH) {
        return Err(ConfigError::TooDeep);
    }
    Ok(text)
}

/// `spec.config.a.b[2]`, or `spec.config."odd key"` for a key that is not a plain word.
fn field_path<'a>(segments: impl Iterator<Item = LocationSegment<'a>>) -> String {
    let mut path = String::from("spec.config");
    for segment in segments {
        match segment {
            LocationSegment::Index(i) => path.push_str(&format!("[{i}]")),
            LocationSegment::Property(p) => {
                let plain = !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                match plain {
                    true => path.push_str(&format!(".{p}")),
                    false => path.push_str(&format!(".{}", Value::String(p.into_owned()))),
                }
            }
        }
    }
    path
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> ConfigSchema {
        let s = json!({
            "type": "object",
            "properties": {
                "greeting": {"type": "string", "maxLength": 16},
                "limits": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "odd key": {"type": "boolean"}
            },
            "required": ["greeting"],
            "additionalProperties": false
        });
        ConfigSchema::compile(&s).unwrap()
    }

    #[test]
    fn a_config_that_matches_passes() {
        let ok = json!({"greeting": "hi", "limits": [1, 2]});
        assert_eq!(schema().check(&ok), Ok(()));
    }

    #[test]
    fn each_problem_names_its_field_and_the_value_is_not_repeated() {
        let bad = json!({"greeting": 5, "limits": [1, -3], "odd key": "secret-ish", "extra": 1});
        let Err(ConfigError::SchemaMismatch { problems, more }) = schema().check(&bad) else {
            panic!("a mismatch must be refused");
        };
        let text = problems.join("\n");
        assert!(text.contains("spec.config.greeting: "), "{text}");
        assert!(text.contains("spec.config.limits[1]: "), "{text}");
        assert!(text.contains(r#"spec.config."odd key": "#), "{text}");
        assert!(text.contains("extra"), "{text}");
        assert!(!text.contains("secret-ish"), "values stay out: {text}");
        assert_eq!(more, 0);
    }

    #[test]
    fn a_missing_required_field_is_named() {
        let err = schema().check(&json!({})).unwrap_err().to_string();
        assert!(err.contains("greeting"), "{err}");
        assert!(err.contains("fix spec.config"), "{err}");
    }

    #[test]
    fn many_problems_are_cut_to_five_and_counted() {
        let s = json!({"type": "object", "additionalProperties": {"type": "string"}});
        let schema = ConfigSchema::compile(&s).unwrap();
        let bad: serde_json::Map<String, Value> =
            (0..8).map(|i| (format!("k{i}"), json!(i))).collect();
        let Err(ConfigError::SchemaMismatch { problems, more }) = schema.check(&Value::Object(bad))
        else {
            panic!("refused");
        };
        assert_eq!((problems.len(), more), (5, 3));
    }

    #[test]
    fn a_schema_never_fetches_a_remote_ref() {
        // A listener that records whether anyone connected: compiling must not.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/schema.json", listener.local_addr().unwrap());
        let s = json!({"type": "object", "properties": {"a": {"$ref": url}}});
        let err = ConfigSchema::compile(&s).unwrap_err();
        assert!(
            listener.accept().is_err(),
            "compiling the schema connected to its $ref"
        );
        assert!(!err.is_empty());
        let file = json!({"$ref": "file:///etc/passwd"});
        assert!(ConfigSchema::compile(&file).is_err());
    }

    #[test]
    fn a_backtracking_pattern_is_refused_or_runs_in_linear_time() {
        // Look-around needs backtracking; the regex engine does not have it.
        let s =
            json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "(?=a)a"}}});
        assert!(ConfigSchema::compile(&s).is_err());
        // A pattern that is catastrophic for a backtracking engine is linear here.
        let s = json!({"type": "object", "properties": {"a": {"type": "string", "pattern": "^(a+)+$"}}});
        let schema = ConfigSchema::compile(&s).unwrap();
        let long = format!("{}!", "a".repeat(50_000));
        assert!(schema.check(&json!({"a": long})).is_err());
    }

    #[test]
    fn a_schema_that_is_not_a_schema_says_so() {
        assert!(ConfigSchema::compile(&json!("object")).is_err());
        let err = ConfigSchema::compile(&json!({"type": "objekt"})).unwrap_err();
        assert!(!err.is_empty());
    }

    #[test]
    fn shape_limits_hold_without_a_schema() {
        assert_eq!(
            check_shape(&json!([1])),
            Err(ConfigError::NotAnObject { found: "an array" })
        );
        let big = json!({"a": "x".repeat(MAX_CONFIG_BYTES)});
        assert!(matches!(
            check_shape(&big),
            Err(ConfigError::TooLarge { .. })
        ));
        let mut deep = json!(1);
        for _ in 0..=MAX_CONFIG_DEPTH {
            deep = json!({ "a": deep });
        }
        assert_eq!(check_shape(&deep), Err(ConfigError::TooDeep));
        assert_eq!(check_shape(&json!({"a": 1})).unwrap(), r#"{"a":1}"#);
    }
}
