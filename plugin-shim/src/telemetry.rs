//! Logging for the shim: `tracing` to stderr (the container log), human-readable by default and
//! one JSON object per line when `AIRLOCK_LOG_FORMAT=json`. `RUST_LOG` filters (default `info`).
//! Payloads and outputs are never logged, only hooks, invocation ids, durations and outcomes.
//!
//! A background thread writes the lines (`tracing-appender`'s non-blocking writer), so that an
//! invocation's span record and the plugin's forwarded log lines cost a channel send on the call
//! path, not a `write(2)` under stderr's lock. Nothing is dropped: logging blocks while
//! [`QUEUED_LINES`] lines wait.

use tracing_subscriber::EnvFilter;

/// Lines that may wait for the background writer before logging blocks.
///
/// Bounded memory, not only order: a line is a few hundred bytes, so 16,384 waiting lines hold a
/// few MiB at most (the writer empties the queue far faster than calls fill it; when stderr
/// stalls, logging waits instead of growing the pod toward its memory limit).
pub const QUEUED_LINES: usize = 16_384;

/// Keeps the background writer: the lines still queued are written when it is dropped.
#[must_use = "the lines still queued are lost unless this lives until the process ends"]
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard")
            .field("writing", &self.0.is_some())
            .finish()
    }
}

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init() -> LogGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("airlock-shim-log-writer")
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let json = std::env::var("AIRLOCK_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let installed = if json {
        builder.json().with_current_span(true).try_init()
    } else {
        builder.try_init()
    };
    LogGuard(installed.is_ok().then_some(guard))
}
