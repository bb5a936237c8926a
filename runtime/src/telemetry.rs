//! Logging of the operator and the router: `tracing` to stderr, JSON when asked (stdout is the
//! audit stream), filtered by `RUST_LOG` (default `info`).
//!
//! Lines are formatted on the thread that logs and written to stderr by a background thread
//! (`tracing-appender`'s non-blocking writer): the router logs a span record per hook call, and a
//! `write(2)` under stderr's lock on every call was part of its hot path. Nothing is dropped: when
//! [`QUEUED_LINES`] lines wait for the writer, logging blocks until there is room again.

/// Lines that may wait for the background writer before logging blocks.
///
/// Bounded memory, not only order: a line is a few hundred bytes, so 16,384 waiting lines hold a
/// few MiB at most (the writer empties the queue far faster than calls fill it; when stderr
/// stalls, logging waits instead of growing the pod toward its memory limit).
pub const QUEUED_LINES: usize = 16_384;

/// Keeps the background writer of [`init_tracing`]: the lines still queued are written when it is
/// dropped, so hold it until the process ends.
#[must_use = "the lines still queued are lost unless this lives until the process ends"]
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard")
            .field("writing", &self.0.is_some())
            .finish()
    }
}

/// Installs the global subscriber. Call once, first thing in `run`, and keep the guard.
pub fn init_tracing(json: bool) -> LogGuard {
    use tracing_subscriber::EnvFilter;
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("airlock-log-writer")
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // A second init (tests that start several servers in one process) keeps the first, and its
    // writer: this one's ends with its guard.
    let installed = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    LogGuard(installed.is_ok().then_some(guard))
}
