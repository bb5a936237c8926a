//! The audit stream: one JSON record per line on stdout (`"stream":"airlock.audit"`), where log
//! collectors pick it up. The operator writes a record per lifecycle transition of a plugin, the
//! router one per auto-disable and per refused host call; each builds its records (pure) and
//! hands them to [`emit`].

use std::io::Write;

/// The `stream` field of every audit record.
pub const STREAM: &str = "airlock.audit";

/// Writes one record as a single line. Stdout is locked for the write, so concurrent writers
/// never interleave within a record.
pub fn emit(record: &serde_json::Value) {
    let line = format!("{record}\n");
    let mut out = std::io::stdout().lock();
    // The audit stream is stdout; if it is gone there is nowhere left to report to.
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}
