//! The plugin's configuration (`Plugin.spec.config`) as the shim gets it: a file the operator
//! fills from a ConfigMap (`airlock-shim run --config-file`), read at start and watched while the
//! shim runs.
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

use crate::child::Supervisor;

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

    /// Reads the file every `interval` and hands each new configuration that passes the check to
    /// `supervisor` ([`Supervisor::reconfigure`]); `current` is the one the plugin started with.
    /// Runs until the task is dropped.
    pub async fn watch(
        self: Arc<Self>,
        supervisor: Arc<Supervisor>,
        current: String,
        interval: Duration,
    ) {
        let mut last_raw: Option<Vec<u8>> = None;
        let mut current = current;
        loop {
            tokio::time::sleep(interval).await;
            let raw = match self.read_raw() {
                Ok(raw) => raw,
                Err(e) => {
                    // E.g. the kubelet swapping the mount's files: try again next round, and
                    // say it once per kind of failure only.
                    if last_raw.is_some() {
                        warn!(error = %e, "cannot read the plugin's configuration; keeping the current one");
                        last_raw = None;
                    }
                    continue;
                }
            };
            if last_raw.as_deref() == Some(&raw[..]) {
                continue;
            }
            let checked = self.check(&raw);
            last_raw = Some(raw);
            match checked {
                Ok(text) if text == current => {}
                Ok(text) => {
                    let outcome = supervisor.reconfigure(text.clone()).await;
                    info!(
                        changed = outcome.changed,
                        restarted = outcome.restarted,
                        failed = outcome.failed,
                        "the plugin's configuration changed"
                    );
                    current = text;
                }
                Err(e) => warn!(
                    error = %e,
                    "the plugin's configuration changed to one its signed configSchema refuses; \
                     the plugin keeps its current configuration (fix spec.config of the Plugin)"
                ),
            }
        }
    }
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
