//! Logging for the shim: `tracing` to stderr (the container log), human-readable by default and
//! one JSON object per line when `AIRLOCK_LOG_FORMAT=json`. `RUST_LOG` filters (default `info`).
//! Payloads and outputs are never logged, only hooks, invocation ids, durations and outcomes.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let json = std::env::var("AIRLOCK_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let _ = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
}
