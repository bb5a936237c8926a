//! The hook router: the one gRPC front door host applications call (`airlock.router.v1`).
//!
//! Built like the controller, core first: [`table`] (which plugins can be called, a pure
//! function of Plugins and Services), [`breaker`] (health accounting, pure), [`dispatch`]
//! (invoke, broadcast, pipeline; independent of gRPC and Kubernetes), then the edges: [`grpc`]
//! (the served API and the client of plugin shims) and [`cluster`] (watches, auto-disable).
//!
//! Every router replica serves on its own (no leader): each watches the cluster and keeps its own
//! breakers. An auto-disable is written to the Plugin, so every replica and the controller see it.

pub mod breaker;
pub mod cluster;
pub mod dispatch;
pub mod grpc;
pub mod host;
pub mod table;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use airlock_proto::router::v1::hook_router_server::HookRouterServer;
use clap::Parser;
use tonic_health::ServingStatus;
use tracing::info;

use crate::metrics::Metrics;
use breaker::BreakerConfig;
use dispatch::{Router, RouterConfig};

/// The fully qualified name of the router service, as health and reflection know it.
pub const SERVICE_NAME: &str = "airlock.router.v1.HookRouter";

/// Airlock hook router: calls plugin hooks on behalf of host applications.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Config {
    /// Address of the gRPC API (airlock.router.v1.HookRouter, health, reflection).
    #[arg(long, default_value = "0.0.0.0:50050")]
    pub grpc_addr: SocketAddr,
    /// Address of the host API (airlock.host.v1.Host) plugin shims call back on, over mutual TLS
    /// with the router's certificate (needs --tls-secret).
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub host_addr: SocketAddr,
    /// Address of the HTTP endpoints /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Calls in flight per plugin (per router replica); more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 16)]
    pub max_concurrency: usize,
    /// Consecutive failed calls that open a plugin's circuit breaker.
    #[arg(long, default_value_t = 5)]
    pub breaker_failures: u32,
    /// Seconds an open breaker refuses calls before one trial call.
    #[arg(long, default_value_t = 30)]
    pub breaker_cool_down_seconds: u64,
    /// Consecutive timeouts that auto-disable a plugin.
    #[arg(long, default_value_t = 5)]
    pub disable_after_timeouts: u32,
    /// Crashes within an hour that auto-disable a plugin.
    #[arg(long, default_value_t = 3)]
    pub disable_after_crashes: u32,
    /// Secret (in --namespace) with the router's mTLS client certificate: tls.crt, tls.key and
    /// the operator CA's ca.crt. The operator issues and renews it. Empty: plugins are called in
    /// plain text (only for a shim run by hand during development).
    #[arg(long, default_value = "airlock-router-tls")]
    pub tls_secret: String,
    /// The router's namespace (where --tls-secret is).
    #[arg(long, env = "POD_NAMESPACE", default_value = "airlock-system")]
    pub namespace: String,
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, env = "AIRLOCK_LOG_JSON")]
    pub log_json: bool,
}

impl Config {
    pub fn router_config(&self) -> RouterConfig {
        RouterConfig {
            breaker: BreakerConfig {
                open_after: self.breaker_failures.max(1),
                cool_down: Duration::from_secs(self.breaker_cool_down_seconds),
                disable_after_timeouts: self.disable_after_timeouts.max(1),
                disable_after_crashes: self.disable_after_crashes.max(1),
                ..BreakerConfig::default()
            },
            max_concurrency: self.max_concurrency.max(1),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(
        "cannot reach the Kubernetes API ({0}); check the in-cluster service account or KUBECONFIG"
    )]
    Kube(#[from] kube::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP endpoint on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("gRPC endpoint on {addr}: {source}")]
    Grpc {
        addr: SocketAddr,
        source: tonic::transport::Error,
    },
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Runs the router until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), RouterError> {
    crate::init_tracing(config.log_json);
    let metrics = Metrics::new()?;
    let client = {
        let kube_config = kube::Config::infer()
            .await
            .map_err(|e| RouterError::Config(format!("finding the cluster: {e}")))?;
        crate::kube_client::client(kube_config, &metrics)?
    };
    let caller = Arc::new(if config.tls_secret.is_empty() {
        tracing::warn!("--tls-secret is empty: calling plugins in plain text");
        grpc::GrpcCaller::plain()
    } else {
        grpc::GrpcCaller::mutual()
    });
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
    let router = Arc::new(Router::new(
        caller,
        Arc::new(cluster::KubeDisabler::new(client.clone())),
        config.router_config(),
        metrics.clone(),
    ));

    let (loaded_tx, mut loaded) = tokio::sync::watch::channel(false);
    tokio::spawn(cluster::watch_routes(
        client.clone(),
        router.clone(),
        loaded_tx,
    ));

    let ready = Arc::new(AtomicBool::new(false));
    let http = {
        let (addr, metrics, ready) = (config.http_addr, metrics.clone(), ready.clone());
        tokio::spawn(async move {
            crate::http::serve(addr, metrics, ready)
                .await
                .map_err(|source| RouterError::Http { addr, source })
        })
    };

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status(SERVICE_NAME, ServingStatus::NotServing)
        .await;
    reporter
        .set_service_status("", ServingStatus::NotServing)
        .await;
    // Serving once the route table is loaded: a router that answered NOT_FOUND for every plugin
    // while it was still listing them would look like an outage.
    tokio::spawn(async move {
        if loaded.wait_for(|l| *l).await.is_ok()
            && (plain || identity_loaded.wait_for(|l| l.is_some()).await.is_ok())
        {
            reporter
                .set_service_status(SERVICE_NAME, ServingStatus::Serving)
                .await;
            reporter
                .set_service_status("", ServingStatus::Serving)
                .await;
            ready.store(true, Ordering::Relaxed);
        }
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
        );
        tokio::spawn(serve_host(config.host_addr, service, identity))
    });
    let addr = config.grpc_addr;
    info!(%addr, "serving {SERVICE_NAME}");
    let grpc = tonic::transport::Server::builder()
        .add_service(health)
        .add_service(reflection)
        .add_service(HookRouterServer::new(grpc::HookRouterService::new(router)))
        .serve_with_shutdown(addr, shutdown_signal());
    let host_failed = async move {
        match host {
            Some(task) => match task.await {
                Ok(Err(e)) => Err(e),
                _ => Ok(()),
            },
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        res = grpc => res.map_err(|source| RouterError::Grpc { addr, source }),
        res = host_failed => res,
        res = http => match res {
            Ok(Err(e)) => Err(e),
            _ => Ok(()),
        },
    }
}

/// Serves the host API once the router has its certificate, with the certificate of the moment
/// (a renewal is used for new connections at once).
async fn serve_host<C: dispatch::Caller, S: host::StorageBackend>(
    addr: SocketAddr,
    service: host::HostService<C, S>,
    mut identity: tokio::sync::watch::Receiver<Option<grpc::ClientIdentity>>,
) -> Result<(), RouterError> {
    let config_of = |id: &grpc::ClientIdentity| {
        airlock_plugin_shim::tls::server_config(
            id.cert_pem.as_bytes(),
            id.key_pem.as_bytes(),
            id.ca_pem.as_bytes(),
            std::path::Path::new("Secret airlock-router-tls"),
        )
    };
    let first = match identity.wait_for(|i| i.is_some()).await {
        Ok(id) => id.clone(),
        Err(_) => return Ok(()),
    };
    let Some(first) = first else { return Ok(()) };
    let acceptor = airlock_plugin_shim::tls::Acceptor::new(
        config_of(&first)
            .map_err(|e| RouterError::Config(format!("the router's certificate: {e}")))?,
    );
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
        .map_err(|source| RouterError::Http { addr, source })?;
    info!(%addr, "serving airlock.host.v1.Host (mutual TLS, plugins only)");
    tonic::transport::Server::builder()
        .add_service(airlock_proto::host::v1::host_server::HostServer::new(
            service,
        ))
        .serve_with_incoming_shutdown(acceptor.incoming(listener), shutdown_signal())
        .await
        .map_err(|source| RouterError::Grpc { addr, source })
}

/// SIGTERM (kubelet) or SIGINT (a terminal): stop taking calls and drain the ones in flight.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    info!("shutting down: draining calls in flight");
}
