//! Helpers for Airlock's end-to-end tests: connecting to the cluster, per-test namespaces that are
//! always cleaned up, pods built from the probe image, and bounded waits on what a user would see
//! (pod phase, pod logs, API errors).
//!
//! The cluster is the local one that `e2e/cluster/up.sh` starts (its admin kubeconfig is used when
//! `KUBECONFIG` is not set), or any cluster `KUBECONFIG` points at. No part of Kubernetes is mocked.

pub mod argocd;
pub mod artifacts;
pub mod callers;
pub mod cli;
pub mod crds;
pub mod floors;
pub mod flux;
pub mod images;
pub mod install;
pub mod kstatus;
pub mod kwok;
pub mod namespace;
pub mod operator_metrics;
pub mod plugins;
pub mod pods;
pub mod router;
pub mod sandbox;
pub mod signing;
pub mod tenant;
pub mod timeline;
pub mod traces;
pub mod wait;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use namespace::TestNamespace;

/// The admin kubeconfig that `e2e/cluster/up.sh` writes.
pub const LOCAL_CLUSTER_KUBECONFIG: &str = "/var/lib/airlock-cluster/kubeconfig";

/// How long a test waits for the cluster to do something it should do in seconds (pull an image,
/// start a pod, program a NetworkPolicy). Generous, because it bounds a failure, not a benchmark.
pub const WAIT: Duration = Duration::from_secs(120);

/// A client for the cluster under test: `KUBECONFIG` when set, else the local cluster.
pub async fn client() -> Result<Client> {
    let config = if std::env::var_os("KUBECONFIG").is_some() {
        kube::Config::infer()
            .await
            .context("reading the cluster from KUBECONFIG")?
    } else if Path::new(LOCAL_CLUSTER_KUBECONFIG).exists() {
        let kubeconfig = Kubeconfig::read_from(LOCAL_CLUSTER_KUBECONFIG)
            .with_context(|| format!("reading {LOCAL_CLUSTER_KUBECONFIG}"))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?
    } else {
        anyhow::bail!(
            "no cluster: start the local one with `make cluster-up`, or set KUBECONFIG to a cluster of yours"
        );
    };
    Client::try_from(config).context("building the Kubernetes client")
}

/// A count from the environment variable `name` (the size knobs of the bench, chaos and soak
/// binaries); `default` when unset, unparsable or zero.
pub fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

/// A short random-enough suffix so that concurrent and repeated runs never collide on names.
pub fn unique_suffix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:x}{:x}{n}", std::process::id() & 0xfff, nanos & 0xfffff)
}
