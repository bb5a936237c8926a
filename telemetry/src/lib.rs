//! Airlock's traces over OTLP.
//!
//! One hook invocation is one trace: the router's span for the host application's call, a span
//! per call to a plugin's shim, the shim's span and the plugin process's span (see
//! `airlock_proto::trace`, whose W3C context Airlock carries through gRPC metadata and the plugin's
//! request line). Those spans are not `tracing` spans: their ids must be the ones sent on the
//! wire, so they are built here as finished [`CallSpan`]s and handed to the OpenTelemetry SDK's
//! batch processor, which exports them with its OTLP exporter (gRPC). The operator's own spans
//! (`#[instrument]` on reconcile) go through `tracing-opentelemetry` with [`Otlp::tracer_provider`].
//!
//! Plugin pods never export: their egress is denied (a collector reachable from a plugin pod would
//! be reachable by the plugin's code too). The shim hands its spans to the router in the answer's
//! metadata ([`relay`]), and the router, which checks them, exports them under the service name
//! `airlock-shim`.
//!
//! Configuration is the standard environment: `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) turns export on, `OTEL_SDK_DISABLED=true` or
//! `OTEL_TRACES_EXPORTER=none` keep it off, `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` name
//! the process, `OTEL_TRACES_SAMPLER(_ARG)` samples, `OTEL_BSP_*` size the batches and
//! `OTEL_EXPORTER_OTLP_{HEADERS,TIMEOUT,COMPRESSION}` are the exporter's.

pub mod relay;
mod sampler;

use std::borrow::Cow;
use std::sync::OnceLock;
use std::time::SystemTime;

use airlock_proto::trace::TraceContext;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, SdkTracerProvider, SpanData, SpanEvents, SpanLinks, SpanProcessor,
};

pub use opentelemetry::KeyValue as Attribute;
pub use opentelemetry::trace::SpanKind as Kind;

/// Why export could not be set up. The process starts anyway (without export) and logs this.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error(
        "the OTLP exporter could not be built from OTEL_EXPORTER_OTLP_* ({0}); check the endpoint \
         (e.g. http://collector.monitoring:4317, gRPC) or unset it to run without trace export"
    )]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    #[error(
        "reading the collector's CA certificate {path} (OTEL_EXPORTER_OTLP_CERTIFICATE): {source}; \
         mount the PEM file there or unset the variable"
    )]
    Certificate {
        path: String,
        source: std::io::Error,
    },
}

/// Whether the environment asks for trace export: an OTLP endpoint is set and export is not
/// switched off.
pub fn requested() -> bool {
    requested_by(|k| std::env::var(k).ok())
}

fn requested_by(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |k: &str| var(k).is_some_and(|v| !v.trim().is_empty());
    let off = var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        || var("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !off && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// The exporters of one process. Dropping it flushes what is queued and stops them.
#[derive(Debug)]
pub struct Otlp {
    provider: SdkTracerProvider,
}

/// Who exported a call span: the process itself, or the shim whose spans the router relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Own,
    Shim,
}

/// The service name of spans relayed for shims.
pub const SHIM_SERVICE: &str = "airlock-shim";

struct CallExport {
    own: BatchSpanProcessor,
    shim: BatchSpanProcessor,
    sampler: sampler::Sampler,
    scope: InstrumentationScope,
}

static CALLS: OnceLock<CallExport> = OnceLock::new();

fn resource(default_service: &'static str) -> Resource {
    // OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name.
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty());
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(default_service).build()
    }
}

/// The OTLP/gRPC exporter: endpoint, headers, timeout and compression from `OTEL_EXPORTER_OTLP_*`
/// (read by the exporter itself); over TLS for an `https://` endpoint, trusting the system's
/// roots and the CA in `OTEL_EXPORTER_OTLP_(TRACES_)CERTIFICATE` (a PEM file), the standard way
/// to name a collector's private CA.
fn exporter() -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    use opentelemetry_otlp::WithTonicConfig;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    let ca = [
        "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
        "OTEL_EXPORTER_OTLP_CERTIFICATE",
    ]
    .into_iter()
    .find_map(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()));
    if let Some(path) = ca {
        let pem = std::fs::read(&path).map_err(|source| TelemetryError::Certificate {
            path: path.clone(),
            source,
        })?;
        builder = builder.with_tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(pem))
                .with_native_roots(),
        );
    }
    Ok(builder.build()?)
}

impl Otlp {
    /// Sets up export when [`requested`] (else `Ok(None)`): call spans of this process under
    /// `service` (unless `OTEL_SERVICE_NAME` says otherwise), relayed shim spans under
    /// [`SHIM_SERVICE`], and a tracer provider for `tracing` spans. Call inside the Tokio runtime
    /// (the gRPC exporter runs on it), once.
    pub fn from_env(service: &'static str) -> Result<Option<Self>, TelemetryError> {
        if !requested() {
            return Ok(None);
        }
        let mut own = BatchSpanProcessor::builder(exporter()?).build();
        own.set_resource(&resource(service));
        let mut shim = BatchSpanProcessor::builder(exporter()?).build();
        shim.set_resource(
            &Resource::builder_empty()
                .with_service_name(SHIM_SERVICE)
                .build(),
        );
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter()?)
            .with_resource(resource(service))
            .build();
        let calls = CallExport {
            own,
            shim,
            sampler: sampler::Sampler::from_env(),
            scope: InstrumentationScope::builder("airlock")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        };
        if CALLS.set(calls).is_err() {
            tracing::warn!("trace export was set up twice; the first set-up stays");
        }
        Ok(Some(Self { provider }))
    }

    /// The provider of `tracing` spans (for `tracing_opentelemetry::layer().with_tracer`).
    pub fn tracer_provider(&self) -> &SdkTracerProvider {
        &self.provider
    }
}

impl Drop for Otlp {
    fn drop(&mut self) {
        // Queued spans are sent before the process ends.
        if let Some(calls) = CALLS.get() {
            let _ = calls.own.force_flush();
            let _ = calls.shim.force_flush();
        }
        let _ = self.provider.force_flush();
    }
}

/// Whether call spans are exported at all (cheap: the hot path asks before building a span).
pub fn enabled() -> bool {
    CALLS.get().is_some()
}

/// The sampling decision for a new root or a continued trace, written into the context's
/// sampled flag so that every span of the call (and the shim's, which the router relays) follows
/// it. Without export the flag is left as it is.
pub fn sample(span: &mut TraceContext, parent: Option<&TraceContext>) {
    if let Some(calls) = CALLS.get() {
        let sampled = calls
            .sampler
            .sampled(span.trace_id, parent.map(|p| p.flags & 1 == 1));
        span.flags = if sampled {
            span.flags | 1
        } else {
            span.flags & !1
        };
    }
}

/// One finished span of a hook call, with the ids that travelled on the wire.
#[derive(Debug, Clone)]
pub struct CallSpan {
    pub name: &'static str,
    pub kind: SpanKind,
    pub context: TraceContext,
    /// The parent span's id; `None` for the root of a trace.
    pub parent: Option<[u8; 8]>,
    /// Whether the parent is another process's span.
    pub parent_is_remote: bool,
    pub start: SystemTime,
    pub end: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// The error the call ended with, if any (the span's status).
    pub error: Option<String>,
}

impl CallSpan {
    fn into_data(self, scope: &InstrumentationScope) -> SpanData {
        let c = self.context;
        SpanData {
            span_context: SpanContext::new(
                TraceId::from_bytes(c.trace_id),
                SpanId::from_bytes(c.span_id),
                TraceFlags::new(c.flags),
                false,
                TraceState::NONE,
            ),
            parent_span_id: self.parent.map_or(SpanId::INVALID, SpanId::from_bytes),
            parent_span_is_remote: self.parent_is_remote,
            span_kind: self.kind,
            name: Cow::Borrowed(self.name),
            start_time: self.start,
            end_time: self.end.max(self.start),
            attributes: self.attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: match self.error {
                Some(e) => Status::error(e),
                None => Status::Ok,
            },
            instrumentation_scope: scope.clone(),
        }
    }
}

/// Exports `span` when export is on and its trace is sampled; otherwise does nothing.
pub fn export(origin: Origin, span: CallSpan) {
    let Some(calls) = CALLS.get() else { return };
    if span.context.flags & 1 == 0 {
        return;
    }
    let data = span.into_data(&calls.scope);
    match origin {
        Origin::Own => calls.own.on_end(data),
        Origin::Shim => calls.shim.on_end(data),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn export_is_requested_by_an_endpoint_and_switched_off_by_the_standard_variables() {
        assert!(!requested_by(env(&[])));
        assert!(!requested_by(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(requested_by(env(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://c:4317"
        )])));
        assert!(requested_by(env(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://c:4317"
        )])));
        assert!(!requested_by(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(!requested_by(env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }

    #[test]
    fn a_call_span_keeps_the_ids_that_travelled_on_the_wire() {
        let ctx =
            TraceContext::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        let start = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(10);
        let span = CallSpan {
            name: "router.call",
            kind: SpanKind::Client,
            context: ctx,
            parent: Some([1; 8]),
            parent_is_remote: false,
            start,
            // An end before the start (a clock step) is not exported as a negative duration.
            end: start - std::time::Duration::from_secs(1),
            attributes: vec![KeyValue::new("airlock.plugin", "ns/hello")],
            error: Some("DEADLINE_EXCEEDED".into()),
        };
        let data = span.into_data(&InstrumentationScope::builder("airlock").build());
        assert_eq!(
            data.span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(data.span_context.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(data.parent_span_id.to_string(), "0101010101010101");
        assert!(data.span_context.is_sampled());
        assert_eq!(data.end_time, data.start_time);
        assert!(matches!(data.status, Status::Error { .. }));
    }
}
