//! The plugin's configuration (`Plugin.spec.config`) as the shim gets it: a file the operator
//! fills from a ConfigMap (`airlock-shim run --config-file`) and the secrets the Plugin gives it
//! (`spec.configSecrets`, a directory of files the kubelet fills from Secrets,
//! `--config-secrets-dir`), read at start and watched while the shim runs.
//!
//! Secret values go to the plugin in its `onLoad` payload and nowhere else: no log line, error or
//! `Debug` output of the shim holds one (errors name the secret, never its value).
//!
//! The shim checks the document again against the `configSchema` of the bundle it verified, on
//! every read: the operator checked `spec.config`, but a live configuration's ConfigMap can be
//! edited by anyone who may edit ConfigMaps in the namespace, and the plugin must only ever get a
//! configuration its own signed schema accepts. A change that fails the check is not passed on
//! (the plugin keeps the one it has) and the log says which field is wrong, never its value.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use airlock_bundle::config::{ConfigError, ConfigSchema, MAX_CONFIG_BYTES, check_shape};
use serde_json::Value;
use tracing::{info, warn};

use std::collections::BTreeMap;

use crate::child::{LoadPayload, Supervisor};

/// Largest secret value handed to the plugin.
pub const MAX_SECRET_BYTES: u64 = 64 * 1024;

/// Most secrets (the CRD allows as many).
pub const MAX_SECRETS: usize = 16;

/// How often a watched configuration file is read again. The kubelet updates a mounted
/// ConfigMap on its own schedule (up to about a minute); this only adds a little to that.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    /// The file could not be read.
    #[error("cannot read the plugin's configuration {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Larger than any configuration may be (checked before parsing it).
    #[error(
        "the plugin's configuration {} is {bytes} bytes, more than the {MAX_CONFIG_BYTES} a configuration may have",
        path.display()
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        bytes: usize,
    },
    /// Not JSON.
    #[error("the plugin's configuration {} is not JSON: {source}", path.display())]
    NotJson {
        /// The file.
        path: PathBuf,
        /// Where it broke (line and column; no content).
        #[source]
        source: serde_json::Error,
    },
    /// A secret cannot be used (its value is never part of the message).
    #[error("the plugin's secret {name:?} in {} cannot be used: {reason}", dir.display())]
    Secret {
        /// The secrets directory.
        dir: PathBuf,
        /// The secret's name (`spec.configSecrets[].name`).
        name: String,
        /// Why.
        reason: String,
    },
    /// JSON, but not a configuration the plugin's signed `configSchema` accepts.
    #[error("the plugin's configuration {} is refused: {source}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, by field.
        #[source]
        source: ConfigError,
    },
}

/// A configuration file and the signed schema its content must match.
#[derive(Debug)]
pub struct ConfigFile {
    path: PathBuf,
    schema: Option<ConfigSchema>,
}

impl ConfigFile {
    /// `path`, checked against `schema` (the verified manifest's `configSchema`, if any).
    /// Fails only when the schema does not compile, which a verified manifest's always does.
    pub fn new(path: &Path, schema: Option<&Value>) -> Result<Self, String> {
        let schema = schema.map(ConfigSchema::compile).transpose()?;
        Ok(Self {
            path: path.to_path_buf(),
            schema,
        })
    }

    /// The file's raw content (what a watcher compares).
    fn read_raw(&self) -> Result<Vec<u8>, ConfigFileError> {
        let raw = std::fs::read(&self.path).map_err(|source| ConfigFileError::Read {
            path: self.path.clone(),
            source,
        })?;
        // A document this large cannot pass the shape check; do not parse it.
        if raw.len() > 2 * MAX_CONFIG_BYTES {
            return Err(ConfigFileError::TooLarge {
                path: self.path.clone(),
                bytes: raw.len(),
            });
        }
        Ok(raw)
    }

    /// `raw` checked: a JSON object within the limits that the signed schema accepts, as compact
    /// JSON.
    fn check(&self, raw: &[u8]) -> Result<String, ConfigFileError> {
        let value: Value =
            serde_json::from_slice(raw).map_err(|source| ConfigFileError::NotJson {
                path: self.path.clone(),
                source,
            })?;
        let invalid = |source| ConfigFileError::Invalid {
            path: self.path.clone(),
            source,
        };
        let text = check_shape(&value).map_err(invalid)?;
        if let Some(schema) = &self.schema {
            schema.check(&value).map_err(invalid)?;
        }
        Ok(text)
    }

    /// Reads and checks the file: the configuration as compact JSON.
    pub fn read(&self) -> Result<String, ConfigFileError> {
        self.check(&self.read_raw()?)
    }
}

/// Everything the plugin is configured with: the configuration file (if the Plugin sets
/// `spec.config`) and the secrets directory (if it sets `spec.configSecrets`).
#[derive(Debug, Default)]
pub struct ConfigSource {
    /// `--config-file`, with the signed schema.
    pub file: Option<ConfigFile>,
    /// `--config-secrets-dir`.
    pub secrets_dir: Option<PathBuf>,
}

impl ConfigSource {
    /// Whether there is anything to read (else the plugin gets `{"config":{}}` and nothing is
    /// watched).
    pub fn is_empty(&self) -> bool {
        self.file.is_none() && self.secrets_dir.is_none()
    }

    /// Reads and checks everything: the payload of `onLoad` and `onConfigChange`.
    pub fn read(&self) -> Result<LoadPayload, ConfigFileError> {
        let config = match &self.file {
            Some(file) => file.read()?,
            None => "{}".to_string(),
        };
        let secrets = match &self.secrets_dir {
            Some(dir) => read_secrets(dir)?,
            None => BTreeMap::new(),
        };
        Ok(LoadPayload::new(&config, &secrets))
    }

    /// Reads everything every `interval` and hands each new payload that passes the checks to
    /// `supervisor` ([`Supervisor::reconfigure`]); `current` is the one the plugin started with.
    /// A failure is logged once (until it changes) and the plugin keeps what it has. Runs until
    /// the task is dropped.
    pub async fn watch(
        self: Arc<Self>,
        supervisor: Arc<Supervisor>,
        current: LoadPayload,
        interval: Duration,
    ) {
        let mut current = current;
        let mut last_error: Option<String> = None;
        loop {
            tokio::time::sleep(interval).await;
            match self.read() {
                Ok(payload) => {
                    last_error = None;
                    if payload == current {
                        continue;
                    }
                    let outcome = supervisor.reconfigure(payload.clone()).await;
                    info!(
                        changed = outcome.changed,
                        restarted = outcome.restarted,
                        failed = outcome.failed,
                        "the plugin's configuration changed"
                    );
                    current = payload;
                }
                Err(e) => {
                    // E.g. the kubelet swapping the mounted files: tried again next round, told
                    // once.
                    let message = e.to_string();
                    if last_error.as_deref() != Some(message.as_str()) {
                        warn!(
                            error = %message,
                            "the plugin's configuration changed to one that cannot be used; \
                             the plugin keeps its current configuration (fix spec.config or \
                             spec.configSecrets of the Plugin)"
                        );
                        last_error = Some(message);
                    }
                }
            }
        }
    }
}

/// The secrets in `dir` (one file per secret, named as in `spec.configSecrets`; the kubelet's own
/// entries, which start with `.`, skipped): name → value.
fn read_secrets(dir: &Path) -> Result<BTreeMap<String, String>, ConfigFileError> {
    let failed = |name: &str, reason: String| ConfigFileError::Secret {
        dir: dir.to_path_buf(),
        name: name.to_string(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|source| ConfigFileError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut secrets = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|source| ConfigFileError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        // Follows the kubelet's symlinks to the current version of each file.
        let meta = std::fs::metadata(entry.path()).map_err(|e| failed(&name, e.to_string()))?;
        if !meta.is_file() {
            continue;
        }
        if meta.len() > MAX_SECRET_BYTES {
            return Err(failed(
                &name,
                format!(
                    "it is {} bytes, more than the {MAX_SECRET_BYTES} a secret may have",
                    meta.len()
                ),
            ));
        }
        let bytes = std::fs::read(entry.path()).map_err(|e| failed(&name, e.to_string()))?;
        let value = String::from_utf8(bytes)
            .map_err(|_| failed(&name, "its value is not UTF-8 text".into()))?;
        secrets.insert(name, value);
        if secrets.len() > MAX_SECRETS {
            return Err(failed("", format!("more than {MAX_SECRETS} secrets")));
        }
    }
    Ok(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn file(content: &str, schema: Option<Value>) -> (tempfile::TempDir, ConfigFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, content).unwrap();
        let config = ConfigFile::new(&path, schema.as_ref()).unwrap();
        (dir, config)
    }

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {"greeting": {"type": "string", "maxLength": 8}},
            "required": ["greeting"],
        })
    }

    #[test]
    fn a_configuration_the_signed_schema_accepts_is_read_as_compact_json() {
        let (_dir, config) = file("{ \"greeting\" : \"hi\" }\n", Some(schema()));
        assert_eq!(config.read().unwrap(), r#"{"greeting":"hi"}"#);
    }

    #[test]
    fn an_edited_configuration_is_checked_again_and_the_error_names_the_field_not_the_value() {
        let (_dir, config) = file(r#"{"greeting":"a secret value"}"#, Some(schema()));
        let e = config.read().unwrap_err().to_string();
        assert!(e.contains("spec.config.greeting"), "{e}");
        assert!(
            !e.contains("secret value"),
            "the value is not repeated: {e}"
        );

        let (_dir, config) = file("[1, 2]", None);
        let e = config.read().unwrap_err().to_string();
        assert!(e.contains("must be a JSON object"), "{e}");

        let (_dir, config) = file("{\"greeting\":", None);
        assert!(matches!(
            config.read(),
            Err(ConfigFileError::NotJson { .. })
        ));

        let big = format!(r#"{{"x":"{}"}}"#, "a".repeat(3 * MAX_CONFIG_BYTES));
        let (_dir, config) = file(&big, None);
        assert!(matches!(
            config.read(),
            Err(ConfigFileError::TooLarge { .. })
        ));

        let missing = ConfigFile::new(Path::new("/nonexistent/config.json"), None).unwrap();
        assert!(matches!(missing.read(), Err(ConfigFileError::Read { .. })));
    }
}
