//! Logging of the operator and the router: `tracing` to stderr, JSON when asked (stdout is the
//! audit stream), filtered by `RUST_LOG` (default `info`).

/// Installs the global subscriber. Call once, first thing in `run`.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second init (tests that start several servers in one process) keeps the first.
    if json {
        let _ = builder.json().try_init();
    } else {
        let _ = builder.try_init();
    }
}
