//! Logging of the operator and the router: `tracing` to stderr, JSON when asked (stdout is the
//! audit stream), filtered by `RUST_LOG` (default `info`); and, when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! is set, traces over OTLP (`airlock_telemetry`): the spans of hook calls, and every `tracing`
//! span that passes the filter (the operator's reconciles) through `tracing-opentelemetry`.
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

/// Keeps the background writer of [`init_tracing`] and the trace exporters: the lines and spans
/// still queued are written when it is dropped, so hold it until the process ends.
#[must_use = "the lines still queued are lost unless this lives until the process ends"]
pub struct LogGuard {
    _writer: Option<tracing_appender::non_blocking::WorkerGuard>,
    otlp: Option<airlock_telemetry::Otlp>,
}

impl std::fmt::Debug for LogGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogGuard")
            .field("writing", &self._writer.is_some())
            .field("exporting_traces", &self.otlp.is_some())
            .finish()
    }
}

impl LogGuard {
    /// Whether traces are exported over OTLP.
    pub fn exporting_traces(&self) -> bool {
        self.otlp.is_some()
    }
}

/// Targets whose spans never go to the trace exporter: the exporter's own gRPC stack (its spans
/// would be exported by the exporter, forever) and the SDK itself.
const NOT_EXPORTED: [&str; 6] = ["h2", "hyper", "tonic", "tower", "opentelemetry", "reqwest"];

/// Installs the global subscriber, with OTLP export of traces under the service name `service`
/// when the environment asks for it. Call once, first thing in `run` (inside the Tokio runtime:
/// the exporter runs on it), and keep the guard. An exporter that cannot be built is logged and
/// left out: the process runs on without traces.
pub fn init_tracing(json: bool, service: &'static str) -> LogGuard {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::{EnvFilter, Layer};
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("airlock-log-writer")
        .finish(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    let lines = if json {
        lines.json().boxed()
    } else {
        lines.boxed()
    };
    let (otlp, otlp_error) = match airlock_telemetry::Otlp::from_env(service) {
        Ok(otlp) => (otlp, None),
        Err(e) => (None, Some(e)),
    };
    let spans = otlp.as_ref().map(|o| {
        use opentelemetry::trace::TracerProvider as _;
        let quiet = NOT_EXPORTED
            .iter()
            .fold(Targets::new().with_default(LevelFilter::TRACE), |t, n| {
                t.with_target(*n, LevelFilter::OFF)
            });
        tracing_opentelemetry::layer()
            .with_tracer(o.tracer_provider().tracer(service))
            .with_filter(quiet)
    });
    // A second init (tests that start several servers in one process) keeps the first, and its
    // writer: this one's ends with its guard.
    let installed = tracing_subscriber::registry()
        .with(filter)
        .with(lines)
        .with(spans)
        .try_init()
        .is_ok();
    if let Some(e) = otlp_error {
        tracing::error!(error = %e, "traces are not exported");
    } else if otlp.is_some() {
        tracing::info!("exporting traces over OTLP (OTEL_EXPORTER_OTLP_ENDPOINT)");
    }
    LogGuard {
        _writer: installed.then_some(guard),
        otlp,
    }
}
