//! Starting the router: the Kubernetes client and watches, the HookRouter API for host
//! applications (behind the callers' gate: TokenReview, PluginCallerBindings, per-caller bounds),
//! the host API for plugin shims, and the HTTP endpoints; all until SIGTERM.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use airlock_runtime::StartError;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::info;

use crate::callers::{Gate, KubeTokenReviewer};
use crate::dispatch::Router;
use crate::metrics::Metrics;
use crate::{Config, audit, cluster, dispatch, grpc, host};

/// The fully qualified name of the router service, as health and reflection know it.
pub const SERVICE_NAME: &str = "airlock.router.v1.HookRouter";

/// Requests in flight on one HTTP/2 connection of the gRPC port: the streams a client may open
/// (SETTINGS_MAX_CONCURRENT_STREAMS, rather than hyper's default of the moment) and the requests
/// served at once. One connection is one client, anonymous or not: each of its requests holds its
/// headers, and what flow control lets it send of its body, while it waits for admission. Four
/// times the default per-caller limit, so a caller at its own limit never waits here.
pub const MAX_CALLS_PER_CONNECTION: usize = 256;

/// The gRPC server of the HookRouter port, with its per-connection bounds.
pub fn grpc_server() -> tonic::transport::Server {
    tonic::transport::Server::builder()
        .max_concurrent_streams(MAX_CALLS_PER_CONNECTION as u32)
        .concurrency_limit_per_connection(MAX_CALLS_PER_CONNECTION)
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("gRPC endpoint on {addr}: {}", chain(source))]
    Grpc {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// An error with its causes (tonic's transport error says only "transport error" itself; the
/// cause, e.g. the address in use, is its source).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// Runs the router until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), RouterError> {
    let _logs = airlock_runtime::telemetry::init_tracing(config.log_json, "airlock-router");
    if !config.audit_sink_url.is_empty() {
        airlock_runtime::audit::sink::start(&config.audit_sink_url)
            .map_err(|e| RouterError::from(StartError::Config(e.to_string())))?;
    }
    let metrics = Metrics::with_per_plugin(config.metrics_per_plugin)
        .map_err(airlock_runtime::StartError::from)?;
    let client = {
        let kube_config = kube::Config::infer().await.map_err(|e| {
            RouterError::from(StartError::Config(format!("finding the cluster: {e}")))
        })?;
        airlock_runtime::kube_client::client(kube_config, &metrics.kube_requests)
            .map_err(airlock_runtime::StartError::from)?
    };
    let disabler = Arc::new(cluster::KubeDisabler::new(client.clone(), metrics.clone()));
    let caller = Arc::new(
        if config.tls_secret.is_empty() {
            tracing::warn!("--tls-secret is empty: calling plugins in plain text");
            grpc::GrpcCaller::plain()
        } else {
            grpc::GrpcCaller::mutual()
        }
        .with_observer(disabler.clone()),
    );
    // Ready needs the client certificate too: without it no plugin can be called.
    let (identity_tx, identity) = tokio::sync::watch::channel(None);
    let plain = config.tls_secret.is_empty();
    let mut identity_loaded = identity.clone();
    if !config.tls_secret.is_empty() {
        tokio::spawn(cluster::watch_identity(
            client.clone(),
            config.namespace.clone(),
            config.tls_secret.clone(),
            caller.clone(),
            identity_tx,
        ));
    }
    tokio::spawn(disabler.clone().report_health());
    let router = Arc::new(Router::new(
        caller,
        disabler.clone(),
        config.router_config(),
        metrics.clone(),
    ));

    let (loaded_tx, mut loaded) = tokio::sync::watch::channel(false);
    tokio::spawn(cluster::watch_routes(
        client.clone(),
        config.shard.clone(),
        router.clone(),
        loaded_tx,
    ));
    let gate = Arc::new(Gate::new(
        Arc::new(KubeTokenReviewer::new(client.clone())),
        config.caller_audience.clone(),
        config.max_calls_per_caller,
        metrics.clone(),
        Arc::new(audit::emit),
    ));
    // Summaries of refusals dropped over the audit budgets, also when the flood has stopped.
    let summaries = gate.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(crate::callers::audit_budget::SUMMARY_EVERY);
        loop {
            every.tick().await;
            summaries.flush_audit();
        }
    });
    let (bindings_tx, mut bindings_loaded) = tokio::sync::watch::channel(false);
    tokio::spawn(cluster::watch_bindings(
        client.clone(),
        gate.clone(),
        bindings_tx,
    ));

    let ready = Arc::new(AtomicBool::new(false));
    let http = tokio::spawn(airlock_runtime::http::serve_or_fail(
        config.http_addr,
        metrics.registry.clone(),
        ready.clone(),
    ));

    let (reporter, health) = tonic_health::server::health_reporter();
    report(&reporter, ServingStatus::NotServing).await;
    // Serving once the route table and the callers' bindings are loaded: a router that answered
    // NOT_FOUND or PERMISSION_DENIED for every call while it was still listing them would look
    // like an outage.
    let stopping = Arc::new(AtomicBool::new(false));
    let serving = {
        let (reporter, ready, stopping) = (reporter.clone(), ready.clone(), stopping.clone());
        tokio::spawn(async move {
            if loaded.wait_for(|l| *l).await.is_ok()
                && bindings_loaded.wait_for(|l| *l).await.is_ok()
                && (plain || identity_loaded.wait_for(|l| l.is_some()).await.is_ok())
                && !stopping.load(Ordering::SeqCst)
            {
                report(&reporter, ServingStatus::Serving).await;
                ready.store(true, Ordering::Relaxed);
            }
        })
    };
    // SIGTERM: not ready and NOT_SERVING at once, but still serving for the shutdown delay while
    // the cluster takes the pod out of the Service's endpoints (connections it would otherwise
    // refuse), then no new connections, and the calls in flight are finished.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let delay = Duration::from_secs(config.shutdown_delay_seconds);
    tokio::spawn(async move {
        airlock_runtime::shutdown::signal().await;
        stopping.store(true, Ordering::SeqCst);
        serving.abort();
        // Had it just reported SERVING, its report is overwritten below.
        let _ = serving.await;
        ready.store(false, Ordering::Relaxed);
        report(&reporter, ServingStatus::NotServing).await;
        info!(
            seconds = delay.as_secs(),
            "stopping: not ready; serving on until the endpoints have dropped this pod"
        );
        tokio::time::sleep(delay).await;
        info!("stopping: no new connections; finishing the calls in flight");
        stop_tx.send_replace(true);
    });

    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(airlock_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let host = (!plain).then(|| {
        let service = host::HostService::new(
            router.clone(),
            host::KubeStorage::new(client.clone()),
            metrics.clone(),
        )
        .with_write_rates(
            config.max_storage_writes_per_minute,
            config.max_emits_per_minute,
        );
        tokio::spawn(serve_host(
            config.host_addr,
            service,
            identity,
            stopped(stop.clone()),
        ))
    });
    let addr = config.grpc_addr;
    info!(%addr, audience = %config.caller_audience, "serving {SERVICE_NAME} to callers with a ServiceAccount token for the audience");
    let grpc = grpc_server()
        .add_service(health)
        .add_service(reflection)
        .add_service(grpc::hook_router(router, gate, config.max_payload_bytes))
        .serve_with_shutdown(addr, stopped(stop));
    let host_failed = async move {
        match host {
            Some(task) => match task.await {
                Ok(Err(e)) => Err(e),
                _ => Ok(()),
            },
            None => std::future::pending().await,
        }
    };
    let result = tokio::select! {
        res = grpc => res.map_err(|source| RouterError::Grpc { addr, source }),
        res = host_failed => res,
        res = http => res.unwrap_or(Ok(())).map_err(RouterError::from),
    };
    // The failures of the last seconds go into status.health before the process ends (bounded:
    // the pod's termination grace period is running).
    if tokio::time::timeout(FINAL_FLUSH, disabler.flush())
        .await
        .is_err()
    {
        tracing::warn!("could not write the last failure counts to status.health in time");
    }
    result
}

/// How long a stopping router tries to write its last failure counts.
const FINAL_FLUSH: Duration = Duration::from_secs(5);

/// Resolves once the shutdown delay after SIGTERM has passed (or the sender is gone).
async fn stopped(mut stop: tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Reports `status` for the router service and for the server as a whole (the service "").
async fn report(reporter: &HealthReporter, status: ServingStatus) {
    for service in [SERVICE_NAME, ""] {
        reporter.set_service_status(service, status).await;
    }
}

/// Serves the host API once the router has its certificate, with the certificate of the moment
/// (a renewal is used for new connections at once).
async fn serve_host<C: dispatch::Caller, S: host::StorageBackend>(
    addr: SocketAddr,
    service: host::HostService<C, S>,
    mut identity: tokio::sync::watch::Receiver<Option<grpc::ClientIdentity>>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), RouterError> {
    let config_of = |id: &grpc::ClientIdentity| {
        airlock_tls::server_config(
            id.leaf.cert_pem.as_bytes(),
            id.leaf.key_pem.as_bytes(),
            id.ca_pem.as_bytes(),
            std::path::Path::new("Secret airlock-router-tls"),
        )
    };
    let first = match identity.wait_for(|i| i.is_some()).await {
        Ok(id) => id.clone(),
        Err(_) => return Ok(()),
    };
    let Some(first) = first else { return Ok(()) };
    let acceptor = airlock_tls::Acceptor::new(config_of(&first).map_err(|e| {
        RouterError::from(StartError::Config(format!("the router's certificate: {e}")))
    })?);
    let renewals = acceptor.clone();
    tokio::spawn(async move {
        while identity.changed().await.is_ok() {
            let next = identity.borrow_and_update().clone();
            if let Some(id) = next {
                match config_of(&id) {
                    Ok(c) => renewals.replace(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "the renewed router certificate is unusable; keeping the current one")
                    }
                }
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| RouterError::from(StartError::Http { addr, source }))?;
    info!(%addr, "serving airlock.host.v1.Host (mutual TLS, plugins only)");
    tonic::transport::Server::builder()
        .add_service(
            // A host call's largest honest message is a storage value (100 KiB) or an event
            // (100 KiB) with its key and ids; tonic's default would take 4 MiB from a plugin.
            airlock_proto::host::v1::host_server::HostServer::new(service)
                .max_decoding_message_size(crate::host::MAX_HOST_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(acceptor.incoming(listener), shutdown)
        .await
        .map_err(|source| RouterError::Grpc { addr, source })
}
