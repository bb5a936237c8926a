//! The Airlock operator, the control plane: the `Plugin` controller (fetch → verify → plan →
//! apply → status), image and bundle verification, the CA that issues mTLS identities, audit
//! records and metrics. The data plane (the router) is the `airlock-router` crate; neither
//! depends on the other.

pub mod applied;
pub mod audit;
pub mod build;
pub mod bundle_config_maps;
pub mod bundle_http;
pub mod certs;
pub mod cluster_ranges;
pub mod compat;
pub mod config;
pub mod cosign_bundle;
pub mod cosign_certificate;
pub mod cosign_classic;
pub mod crd_upgrade;
pub mod egress;
pub mod fetch;
pub mod metrics;
pub mod ownership;
pub mod plan;
pub mod policy;
pub mod policy_status;
pub mod quantity;
pub mod reconcile;
pub mod registry_auth;
pub mod running;
pub mod status;
pub mod stopped;
#[cfg(test)]
mod test_registry;
pub mod trust;
pub mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Start(#[from] airlock_runtime::StartError),
    #[error(
        "leader election: {0}; check the Role that lets the operator manage Leases in its namespace"
    )]
    LeaderElection(String),
    #[error(
        "lost leadership; exiting so that the new leader alone reconciles (the pod restarts as a standby)"
    )]
    LostLeadership,
}

/// `ip:port` of the router's host API: the cluster IP of its Service `name`. `None` (with a
/// warning) when there is no such Service: plugins then get no host API.
async fn router_host_api(client: &kube::Client, namespace: &str, name: &str) -> Option<String> {
    let services =
        kube::Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), namespace);
    match services.get_opt(name).await {
        Ok(Some(svc)) => {
            let ip = svc.spec.and_then(|s| s.cluster_ip)?;
            Some(format!("{ip}:{}", build::HOST_API_PORT))
        }
        Ok(None) => {
            tracing::warn!(
                namespace,
                service = name,
                "no such router Service (--router-service): plugins get no host API"
            );
            None
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot look up the router's Service: plugins get no host API");
            None
        }
    }
}

/// Starts the operator and runs it until SIGTERM/SIGINT.
pub async fn run(config: Config) -> Result<(), StartError> {
    let _logs = airlock_runtime::telemetry::init_tracing(config.log_json, "airlock-operator");
    if !config.audit_sink_url.is_empty() {
        airlock_runtime::audit::sink::start(&config.audit_sink_url)
            .map_err(|e| airlock_runtime::StartError::Config(e.to_string()))?;
    }
    let mut build = config
        .build_config()
        .map_err(airlock_runtime::StartError::Config)?;
    let metrics = metrics::Metrics::new().map_err(airlock_runtime::StartError::from)?;
    let client = {
        let config = kube::Config::infer().await.map_err(|e| {
            airlock_runtime::StartError::Config(format!("finding the cluster: {e}"))
        })?;
        airlock_runtime::kube_client::client(config, &metrics.kube_requests)
            .map_err(airlock_runtime::StartError::from)?
    };
    // Before any controller reads a Plugin: the new fields of this build must be served.
    if config.upgrade_crds
        && let Err(e) = crd_upgrade::upgrade(&client).await
    {
        tracing::warn!(error = %e, "could not bring Airlock's CRDs up to this operator's schema (the chart's RBAC allows get and patch on them when crds.upgrade is true); running with the CRDs the cluster serves");
    }
    if build.host_api.is_none() {
        build.host_api =
            router_host_api(&client, &build.router_namespace, &config.router_service).await;
    }
    // The chart's clusterCidrs and what the cluster says it occupies: a forgotten value must not
    // let a broad egress rule reach the cluster's own Pods, Services and nodes.
    match cluster_ranges::discover(&client).await {
        Ok(found) => {
            // Node addresses alone: no Pod or Service range was found.
            if found.iter().all(|n| n.prefix_len() == n.max_prefix_len()) {
                tracing::warn!(
                    "the nodes list no Pod ranges and there are no ServiceCIDRs (a CNI with its own IP pools?): set the chart value clusterCidrs to the cluster's Pod and Service ranges"
                );
            }
            build.cluster_cidrs = cluster_ranges::merged(&build.cluster_cidrs, &found);
            tracing::info!(ranges = ?build.cluster_cidrs, "the cluster's own ranges, excepted from every plugin's egress");
        }
        Err(e) => tracing::warn!(
            error = %e,
            "cannot list the nodes and ServiceCIDRs (chart RBAC too old?): only the chart value clusterCidrs is excepted from plugin egress"
        ),
    }
    let ready = Arc::new(AtomicBool::new(false));
    let http = tokio::spawn(airlock_runtime::http::serve_or_fail(
        config.http_addr,
        metrics.registry.clone(),
        ready.clone(),
    ));
    let mut ctx = reconcile::Context::new(
        client.clone(),
        build,
        fetch::Registry::new(
            config.insecure_registries.clone(),
            std::time::Duration::from_secs(config.reverify_interval_seconds),
        )
        .map_err(|e| {
            airlock_runtime::StartError::Config(format!(
                "the registry client could not start ({e}); check the image's TLS roots"
            ))
        })?
        .with_bundle_http(config.bundle_http())
        .with_credentials(client.clone(), &config.credentials_namespace),
        metrics,
        config.max_bundle_bytes,
    );
    ctx.max_concurrent_reconciles = config.max_concurrent_reconciles;
    ctx.shard = config.shard.clone();
    ctx.plugin_certificate_lifetime =
        std::time::Duration::from_secs(config.plugin_certificate_lifetime_seconds);
    let ctx = Arc::new(ctx);
    ready.store(true, Ordering::Relaxed);
    tracing::info!(shard = %config.shard, "airlock operator started");
    let work = async {
        if config.leader_election {
            lead(&ctx.client, &config, reconcile::run(ctx.clone())).await
        } else {
            reconcile::run(ctx.clone()).await;
            Ok(())
        }
    };
    tokio::select! {
        res = work => res,
        res = http => res.unwrap_or(Ok(())).map_err(StartError::from),
    }
}

/// Waits until this replica holds the Lease, then runs `work` until it ends or leadership is lost.
async fn lead(
    client: &kube::Client,
    config: &Config,
    work: impl std::future::Future<Output = ()>,
) -> Result<(), StartError> {
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), "airlock-operator")
        .with_namespace(config.lease_namespace.clone())
        .with_identity(config.identity.clone())
        .with_duration(15)
        .with_grace(5)
        .build()
        .await
        .map_err(|e| StartError::LeaderElection(e.to_string()))?;
    let (mut leader, _task) = manager.watch().await;
    tracing::info!(identity = %config.identity, "waiting to become the leader");
    while !*leader.borrow_and_update() {
        leader
            .changed()
            .await
            .map_err(|e| StartError::LeaderElection(e.to_string()))?;
    }
    tracing::info!(identity = %config.identity, "became the leader");
    let lost = async {
        loop {
            if leader.changed().await.is_err() || !*leader.borrow_and_update() {
                return;
            }
        }
    };
    tokio::select! {
        _ = work => Ok(()),
        _ = lost => Err(StartError::LostLeadership),
    }
}
