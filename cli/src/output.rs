//! How a command prints what it found: `-o table|json|yaml`, one rule for every command.

use clap::ValueEnum;
use serde::Serialize;

/// How a command prints what it found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Lines for people.
    #[default]
    Table,
    Json,
    Yaml,
}

/// A report that could not be serialized (a bug, never the user's input).
#[derive(Debug, thiserror::Error)]
#[error("printing: {0}")]
pub struct PrintError(String);

/// `value` as `output` says: `table` renders it for people, json/yaml as one document.
pub fn print<T: Serialize>(
    value: &T,
    output: Output,
    table: impl FnOnce(&T) -> String,
) -> Result<String, PrintError> {
    match output {
        Output::Table => Ok(table(value)),
        Output::Json => serde_json::to_string_pretty(value).map_err(|e| PrintError(e.to_string())),
        Output::Yaml => serde_yaml::to_string(value)
            .map(|s| s.trim_end().to_string())
            .map_err(|e| PrintError(e.to_string())),
    }
}
