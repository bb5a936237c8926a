//! Calling the hook router the way a host application does: over gRPC to the `airlock-router`
//! Service the chart installs, plus reading the router pods' metrics.

use std::time::{Duration, Instant};

use airlock_proto::router::v1::hook_router_client::HookRouterClient;
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::{Api, ListParams};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

use crate::install::NAMESPACE;

/// The router's gRPC port (chart value router.port).
pub const ROUTER_PORT: u16 = 50050;

/// host:port of the router Service (its cluster IP; reachable from the node).
pub async fn address(client: &Client) -> Result<String> {
    let svc = Api::<Service>::namespaced(client.clone(), NAMESPACE)
        .get("airlock-router")
        .await
        .context("the chart's airlock-router Service")?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("airlock-router has a cluster IP")?;
    Ok(format!("{ip}:{ROUTER_PORT}"))
}

/// A client of the router, retried while its pods start.
pub async fn connect(client: &Client) -> Result<HookRouterClient<Channel>> {
    let addr = address(client).await?;
    let deadline = Instant::now() + crate::WAIT;
    loop {
        match HookRouterClient::connect(format!("http://{addr}")).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to the router at {addr}")),
        }
    }
}

/// The /metrics text of every router pod, concatenated (each replica counts its own calls).
pub async fn metrics(client: &Client) -> Result<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/name=airlock-router"))
        .await?;
    let mut out = String::new();
    for pod in pods.items {
        let Some(ip) = pod.status.and_then(|s| s.pod_ip) else {
            continue;
        };
        out.push_str(&http_get(&format!("{ip}:8080"), "/metrics").await?);
    }
    Ok(out)
}

/// Sum of a counter over every series whose line starts with `prefix` (name and labels).
pub fn counter_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.0 GET (the tests need nothing more and no HTTP client crate).
async fn http_get(addr: &str, path: &str) -> Result<String> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .with_context(|| format!("connecting to {addr}"))??;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body))
        .await
        .with_context(|| format!("reading {addr}{path}"))??;
    match body.split_once("\r\n\r\n") {
        Some((head, rest)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(rest.to_string())
        }
        _ => bail!("GET {addr}{path}: unexpected answer"),
    }
}
