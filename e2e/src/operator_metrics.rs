//! The operator's own figures for the benches, read from the leader's `/metrics`: Kubernetes API
//! requests (`airlock_kube_requests_total`, writes apart), reconciles, resident memory and CPU.
//! The standby replica reconciles nothing, so the leader's counters are the operator's.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};

use crate::install::NAMESPACE;
use crate::router::http_get;

/// The operator's leader election Lease (and Deployment) name, and its metrics port (see the
/// chart).
pub const LEASE: &str = "airlock-operator";
pub const METRICS_PORT: u16 = 8080;

/// A whole number from the environment (a bench's size or window), `default` when unset.
pub fn env_number(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v}: expected a whole number")),
        Err(_) => Ok(default),
    }
}

/// The operator's counters, read from the leader.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counts {
    pub requests: f64,
    pub writes: f64,
    /// Writes by `"<METHOD> <resource>"` (e.g. `PATCH plugins/status`): where they go.
    pub writes_by: BTreeMap<String, f64>,
    pub rss_bytes: f64,
    pub reconciles: f64,
    /// `process_cpu_seconds_total`.
    pub cpu_seconds: f64,
}

impl Counts {
    pub fn parse(metrics: &str) -> Self {
        let mut counts = Counts::default();
        for line in metrics.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            if let Some(labels) = series.strip_prefix("airlock_kube_requests_total") {
                counts.requests += value;
                let label = |name: &str| {
                    let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
                    let len = labels[start..].find('"')?;
                    Some(labels[start..start + len].to_string())
                };
                let method = label("method").unwrap_or_default();
                if ["POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
                    counts.writes += value;
                    let resource = label("resource").unwrap_or_else(|| "?".into());
                    *counts
                        .writes_by
                        .entry(format!("{method} {resource}"))
                        .or_default() += value;
                }
            } else if series == "process_resident_memory_bytes" {
                counts.rss_bytes = value;
            } else if series == "process_cpu_seconds_total" {
                counts.cpu_seconds = value;
            } else if series == "airlock_reconcile_duration_seconds_count" {
                counts.reconciles = value;
            }
        }
        counts
    }
}

impl Counts {
    /// The writes made since `before`, per Plugin of `n`, by kind, most first:
    /// `PATCH plugins/status 4.0, POST events 3.1, …`.
    pub fn writes_per_plugin_by_kind(&self, before: &Counts, n: f64) -> String {
        let mut kinds: Vec<(f64, &String)> = self
            .writes_by
            .iter()
            .map(|(kind, v)| ((v - before.writes_by.get(kind).unwrap_or(&0.0)) / n, kind))
            .filter(|(v, _)| *v >= 0.05)
            .collect();
        kinds.sort_by(|a, b| b.0.total_cmp(&a.0));
        kinds
            .iter()
            .map(|(v, kind)| format!("{kind} {v:.1}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The counters of the operator that holds the leader Lease.
pub async fn leader_counts(client: &Client) -> Result<Counts> {
    Ok(Counts::parse(&leader_metrics(client).await?))
}

/// The `/metrics` text of the operator that holds the leader Lease. After an upgrade the Lease
/// may still name a pod that is gone until a new leader takes over: retried for a minute.
pub async fn leader_metrics(client: &Client) -> Result<String> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let holder = leases
            .get_opt(LEASE)
            .await?
            .and_then(|l| l.spec?.holder_identity);
        if let Some(holder) = holder {
            let ip = pods.get_opt(&holder).await?.and_then(|p| p.status?.pod_ip);
            if let Some(ip) = ip
                && let Ok(text) = http_get(&format!("{ip}:{METRICS_PORT}"), "/metrics").await
            {
                return Ok(text);
            }
        }
        if Instant::now() > deadline {
            bail!("no operator pod holds the Lease {NAMESPACE}/{LEASE} and answers on /metrics");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_read_requests_writes_and_memory_from_the_operator_metrics() {
        let text = "# HELP airlock_kube_requests_total Requests\n\
            airlock_kube_requests_total{method=\"GET\"} 40\n\
            airlock_kube_requests_total{method=\"PATCH\",resource=\"plugins/status\"} 5\n\
            airlock_kube_requests_total{method=\"PATCH\",resource=\"deployments\"} 2\n\
            airlock_kube_requests_total{method=\"POST\"} 3\n\
            airlock_kube_requests_total{method=\"DELETE\"} 1\n\
            airlock_plugins{phase=\"Disabled\"} 1000\n\
            airlock_reconcile_duration_seconds_count 4000\n\
            process_resident_memory_bytes 2.097152e7\n\
            process_cpu_seconds_total 12.5\n";
        assert_eq!(
            Counts::parse(text),
            Counts {
                requests: 51.0,
                writes: 11.0,
                writes_by: [
                    ("DELETE ?".to_string(), 1.0),
                    ("PATCH deployments".to_string(), 2.0),
                    ("PATCH plugins/status".to_string(), 5.0),
                    ("POST ?".to_string(), 3.0),
                ]
                .into(),
                rss_bytes: 20_971_520.0,
                reconciles: 4000.0,
                cpu_seconds: 12.5,
            }
        );
    }
}
