//! The shim's gRPC server: `airlock.plugin.v1.Plugin` in front of the [`Supervisor`], standard
//! health (`grpc.health.v1`, following the supervisor's readiness) and reflection
//! (`grpc.reflection.v1`).
//!
//! The service is thin: it checks the request against the manifest, runs the invocation in a task
//! of its own (so a caller hanging up cannot leave a half-finished exchange with the plugin) and
//! maps errors to gRPC codes in one place, [`status_of`].

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use airlock_proto::plugin::v1::plugin_server::{Plugin, PluginServer};
use airlock_proto::plugin::v1::{
    HandshakeRequest, HandshakeResponse, InvokeRequest, InvokeResponse,
};
use airlock_proto::trace::{TRACEPARENT, TraceContext, relay};
use tokio::net::TcpListener;
use tonic::{Code, Request, Response, Status};
use tonic_health::ServingStatus;
use tracing::{debug, info, warn};

use crate::child::{InvokeError, Supervisor};
use airlock_bundle::Manifest;
use airlock_core::failure::{FAILURE_METADATA, FailureKind};

/// Longest deadline a caller may ask for; longer ones are cut to this.
pub const MAX_DEADLINE: Duration = Duration::from_secs(60);

/// Longest invocation id accepted (it goes into logs and to the plugin).
pub const MAX_INVOCATION_ID_LEN: usize = 256;

/// The fully qualified name of the plugin service, as health and reflection know it.
pub const SERVICE_NAME: &str = "airlock.plugin.v1.Plugin";

/// The `airlock.plugin.v1.Plugin` service of one plugin.
#[derive(Debug)]
pub struct PluginService {
    supervisor: Arc<Supervisor>,
    manifest: Arc<Manifest>,
    bundle_digest: String,
    default_deadline: Duration,
    next_id: AtomicU64,
}

impl PluginService {
    /// A service for the plugin described by `manifest`, unpacked from the bundle with
    /// `bundle_digest`, running under `supervisor`. `default_deadline` applies when a request
    /// sets none.
    pub fn new(
        supervisor: Arc<Supervisor>,
        manifest: Manifest,
        bundle_digest: String,
        default_deadline: Duration,
    ) -> Self {
        Self {
            supervisor,
            manifest: Arc::new(manifest),
            bundle_digest,
            default_deadline,
            next_id: AtomicU64::new(1),
        }
    }
}

#[tonic::async_trait]
impl Plugin for PluginService {
    async fn handshake(
        &self,
        request: Request<HandshakeRequest>,
    ) -> Result<Response<HandshakeResponse>, Status> {
        let host = request.into_inner().host_api_version;
        let plugin = self.manifest.api_version;
        if host != 0 && host != plugin {
            return Err(Status::failed_precondition(format!(
                "the host speaks plugin API version {host}, this plugin targets version {plugin}"
            )));
        }
        Ok(Response::new(HandshakeResponse {
            plugin_api_version: plugin,
            name: self.manifest.name.clone(),
            version: self.manifest.version.to_string(),
            hooks: self.manifest.hooks.iter().map(|h| h.to_string()).collect(),
            permissions: self
                .manifest
                .permissions
                .iter()
                .map(|p| p.to_string())
                .collect(),
            shim_version: env!("CARGO_PKG_VERSION").to_string(),
            bundle_digest: self.bundle_digest.clone(),
        }))
    }

    async fn invoke(
        &self,
        request: Request<InvokeRequest>,
    ) -> Result<Response<InvokeResponse>, Status> {
        // This call is a span of the caller's trace (the router's), or starts one.
        let (span, parent) = TraceContext::continue_from(
            request
                .metadata()
                .get(TRACEPARENT)
                .and_then(|v| v.to_str().ok()),
        );
        let InvokeRequest {
            hook,
            payload_json,
            deadline_ms,
            invocation_id,
        } = request.into_inner();
        if airlock_core::Hook::parse(&hook).is_some_and(airlock_core::Hook::is_lifecycle) {
            return Err(Status::permission_denied(format!(
                "{hook} is a lifecycle hook of plugin {}: only its shim calls it (a new \
                 configuration comes from the Plugin's spec.config, checked); call one of its \
                 other hooks",
                self.manifest.name
            )));
        }
        if !self.manifest.declares(&hook) {
            let declared: Vec<_> = self.manifest.hooks.iter().map(|h| h.as_str()).collect();
            return Err(Status::invalid_argument(format!(
                "plugin {} does not implement hook {hook:?}; it declares {}",
                self.manifest.name,
                declared.join(", ")
            )));
        }
        // The router refuses deeper payloads already; a plugin's parser must never meet one
        // that reaches its recursion limit (it would crash the process: a caller-made crash).
        if airlock_core::json_depth::nests_deeper_than(
            payload_json.as_bytes(),
            airlock_core::json_depth::MAX_DEPTH,
        ) {
            return Err(Status::invalid_argument(format!(
                "payload_json nests deeper than {} levels; flatten the document",
                airlock_core::json_depth::MAX_DEPTH
            )));
        }
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&payload_json) {
            // The position only: the payload itself never goes into errors or logs.
            return Err(Status::invalid_argument(format!(
                "payload_json is not a JSON document (line {}, column {}: {})",
                e.line(),
                e.column(),
                classify(&e)
            )));
        }
        if invocation_id.len() > MAX_INVOCATION_ID_LEN {
            return Err(Status::invalid_argument(format!(
                "invocation_id is {} bytes long; the limit is {MAX_INVOCATION_ID_LEN}",
                invocation_id.len()
            )));
        }
        let invocation_id = if invocation_id.is_empty() {
            format!(
                "shim-{}-{}",
                std::process::id(),
                self.next_id.fetch_add(1, Ordering::Relaxed)
            )
        } else {
            invocation_id
        };
        let deadline = match deadline_ms {
            0 => self.default_deadline,
            ms => Duration::from_millis(u64::from(ms)).min(MAX_DEADLINE),
        };

        // Its own task: if the caller goes away, the exchange with the plugin still completes
        // (or times out) and the plugin stays in step with the shim.
        let supervisor = Arc::clone(&self.supervisor);
        let (task_hook, task_id) = (hook.clone(), invocation_id.clone());
        // The plugin's own span, a child of the shim's.
        let plugin_ctx = span.child();
        let plugin_span = plugin_ctx.traceparent();
        let started = std::time::Instant::now();
        let started_at = std::time::SystemTime::now();
        let result = tokio::spawn(async move {
            supervisor
                .invoke(
                    &task_hook,
                    &payload_json,
                    &task_id,
                    deadline,
                    Some(&plugin_span),
                )
                .await
        })
        .await
        .map_err(|e| Status::internal(format!("the invocation task failed: {e}")))?;
        // The shim's span record: one line per call, correlated with the router's by trace id.
        info!(
            target: "airlock::trace",
            trace_id = %span.trace_id(),
            span_id = %span.span_id(),
            parent_span_id = %parent.map(|p| p.span_id()).unwrap_or_default(),
            invocation = %invocation_id,
            %hook,
            duration_ms = started.elapsed().as_millis() as u64,
            result = match &result { Ok(_) => "ok", Err(e) => failure_kind(e).as_str() },
            "span shim.invoke"
        );

        // The router exports the shim's span and the plugin's (this pod has no egress): their
        // ids and times go back in the answer's metadata.
        let ended_at = std::time::SystemTime::now();
        let shim_measured = relay::Measured {
            span_id: span.span_id,
            start: started_at,
            end: ended_at,
        };
        let spans = |plugin_time: Option<Duration>| {
            let plugin = plugin_time.map(|d| relay::Measured {
                span_id: plugin_ctx.span_id,
                // The answer was read just before `ended_at`; the plugin took `d` to write it.
                start: ended_at
                    .checked_sub(d)
                    .unwrap_or(started_at)
                    .max(started_at),
                end: ended_at,
            });
            tonic::metadata::MetadataValue::try_from(relay::encode(shim_measured, plugin)).ok()
        };
        match result {
            Ok(answer) => {
                debug!(%hook, %invocation_id, duration_ms = answer.duration.as_millis() as u64, "invoked");
                let mut response = Response::new(InvokeResponse {
                    output_json: answer.output,
                    duration_ms: u32::try_from(answer.duration.as_millis()).unwrap_or(u32::MAX),
                    invocation_id,
                });
                if let Some(v) = spans(Some(answer.duration)) {
                    response.metadata_mut().insert(relay::METADATA_KEY, v);
                }
                Ok(response)
            }
            Err(e) => {
                let mut status = status_of(&e);
                warn!(%hook, %invocation_id, code = ?status.code(), error = %e, "invocation failed");
                if let Some(v) = spans(None) {
                    status.metadata_mut().insert(relay::METADATA_KEY, v);
                }
                Err(status)
            }
        }
    }
}

/// The gRPC status for an invocation error; the only place that decides codes.
pub fn status_of(error: &InvokeError) -> Status {
    let code = match error {
        InvokeError::Timeout(_)
        | InvokeError::QueueTimeout(_)
        | InvokeError::ShortenedTimeout { .. } => Code::DeadlineExceeded,
        InvokeError::Spawn { .. }
        | InvokeError::Exited { .. }
        | InvokeError::OutOfMemory { .. }
        | InvokeError::LoadFailed(_)
        | InvokeError::UpgradeFailed(_)
        | InvokeError::Backoff { .. } => Code::Unavailable,
        InvokeError::Plugin(_) => Code::Aborted,
        InvokeError::OutputTooLarge => Code::ResourceExhausted,
        InvokeError::Protocol(_) => Code::Internal,
    };
    let mut status = Status::new(code, error.to_string());
    status.metadata_mut().insert(
        FAILURE_METADATA,
        tonic::metadata::MetadataValue::from_static(failure_kind(error).as_str()),
    );
    status
}

/// What happened to the plugin process, for the [`FAILURE_METADATA`] trailer on every failed
/// Invoke: the router counts timeouts and crashes from it without parsing messages.
pub fn failure_kind(error: &InvokeError) -> FailureKind {
    match error {
        // Also when the kernel's kill ended onLoad or onUpgrade.
        _ if error.out_of_memory().is_some() => FailureKind::OutOfMemory,
        InvokeError::Timeout(_) => FailureKind::Timeout,
        // Not counted as the plugin's timeout by the router (see ShortenedTimeout).
        InvokeError::QueueTimeout(_) | InvokeError::ShortenedTimeout { .. } => {
            FailureKind::QueueTimeout
        }
        InvokeError::Spawn { .. }
        | InvokeError::Exited { .. }
        | InvokeError::LoadFailed(_)
        | InvokeError::UpgradeFailed(_) => FailureKind::Crash,
        InvokeError::OutOfMemory { .. } => FailureKind::OutOfMemory,
        InvokeError::Backoff { .. } => FailureKind::Backoff,
        InvokeError::Plugin(_) => FailureKind::PluginError,
        InvokeError::OutputTooLarge => FailureKind::OutputTooLarge,
        InvokeError::Protocol(_) => FailureKind::Protocol,
    }
}

/// The kind of JSON error without serde_json's quoting of input.
fn classify(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "invalid data",
        serde_json::error::Category::Io => "read error",
    }
}

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The reflection service could not load the descriptors.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed.
    #[error("the gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Where and how the shim serves.
#[derive(Debug)]
pub struct Listeners {
    /// The plugin API, health and reflection.
    pub grpc: TcpListener,
    /// With TLS, `grpc` requires the router's client certificate (mTLS); without, it is plain
    /// text (local development and tests).
    pub tls: Option<airlock_tls::ServerTls>,
    /// Plain-text gRPC health only, for the kubelet's probes, which cannot present a certificate.
    pub health: Option<TcpListener>,
}

/// Serves `service` with health and reflection until `shutdown` resolves, then drains in-flight
/// calls. Health follows the supervisor's readiness.
pub async fn serve(
    service: PluginService,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut ready = service.supervisor.subscribe_ready();
    // tonic-health starts "" as SERVING; set the real status before the first request can come.
    let publish = |reporter: tonic_health::server::HealthReporter, ready: bool| async move {
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        reporter.set_service_status(SERVICE_NAME, status).await;
    };
    let now = *ready.borrow_and_update();
    publish(reporter.clone(), now).await;
    // Then health mirrors readiness for as long as the server runs.
    let health_task = tokio::spawn(async move {
        while ready.changed().await.is_ok() {
            let now = *ready.borrow_and_update();
            publish(reporter.clone(), now).await;
        }
    });

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(airlock_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    // One shutdown signal for both servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let health_server = listeners.health.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "serving plain-text gRPC health for probes");
        }
        let health = health.clone();
        let rx = stop_rx.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    stopped(rx),
                )
                .await
        })
    });

    if let Ok(addr) = listeners.grpc.local_addr() {
        let mode = if listeners.tls.is_some() {
            "mutual TLS, router only"
        } else {
            "plain text"
        };
        info!(%addr, plugin = %service.manifest.name, %mode, "serving {SERVICE_NAME}");
    }
    let router = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection);
    let signal = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let result = match listeners.tls {
        Some(tls) => {
            router
                .add_service(PluginServer::with_interceptor(
                    service,
                    airlock_tls::only_the_router,
                ))
                .serve_with_incoming_shutdown(tls.incoming(listeners.grpc), signal)
                .await
        }
        None => {
            router
                .add_service(PluginServer::new(service))
                .serve_with_incoming_shutdown(
                    // Nagle would hold the response's last small write for the client's delayed
                    // ACK (≈ 40 ms a call).
                    tonic::transport::server::TcpIncoming::from(listeners.grpc)
                        .with_nodelay(Some(true)),
                    signal,
                )
                .await
        }
    };
    health_task.abort();
    if let Some(task) = health_server {
        match task.await {
            Ok(Err(e)) => warn!(error = %e, "the health server failed"),
            Err(e) => warn!(error = %e, "the health server task failed"),
            Ok(Ok(())) => {}
        }
    }
    Ok(result?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17: an out-of-memory kill is its own kind (the router counts it as such), also when
    /// it ended an onLoad, and the message names the limit and the fix.
    #[test]
    fn an_out_of_memory_kill_is_told_apart_and_names_the_memory_limit() {
        let oom = InvokeError::OutOfMemory {
            limit: Some(64 << 20),
        };
        assert_eq!(failure_kind(&oom), FailureKind::OutOfMemory);
        let in_load = InvokeError::LoadFailed(Box::new(InvokeError::OutOfMemory {
            limit: Some(32 << 20),
        }));
        assert_eq!(failure_kind(&in_load), FailureKind::OutOfMemory);
        let status = status_of(&in_load);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.metadata().get(FAILURE_METADATA).unwrap(),
            FailureKind::OutOfMemory.as_str()
        );
        for part in [
            "onLoad",
            "out of memory",
            "memory limit of 32Mi",
            "spec.resources.limits.memory",
        ] {
            assert!(
                status.message().contains(part),
                "{part}: {}",
                status.message()
            );
        }
        let crash = InvokeError::Exited {
            status: "killed by SIGKILL".into(),
        };
        assert_eq!(failure_kind(&crash), FailureKind::Crash);
    }
}
