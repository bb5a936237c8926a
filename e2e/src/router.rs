//! Calling the hook router the way a host application does: over gRPC to the `airlock-router`
//! Service the chart installs, plus reading the router pods' metrics.

use std::time::{Duration, Instant};

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_proto::router::v1::hook_router_client::HookRouterClient;
use airlock_proto::router::v1::{InvokeRequest, ListPluginsRequest, PluginRef};
use anyhow::{Context, Result, bail};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

use crate::TestNamespace;
use crate::install::{NAMESPACE, images_env};
use crate::plugins::{condition, phase};
use crate::sandbox::Sandbox;

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

/// A [`Sandbox`] (namespace + trust policy allowing `permissions`) and a client of the router:
/// what the router and sandbox e2e tests call plugins through.
pub struct Fixture {
    pub sandbox: Sandbox,
    pub client: Client,
    pub ns: TestNamespace,
    pub grpc: HookRouterClient<Channel>,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture").field("ns", &self.ns).finish()
    }
}

impl Fixture {
    pub async fn new(prefix: &str, permissions: &[&str]) -> Result<Self> {
        let sandbox = Sandbox::new(prefix, permissions).await?;
        let grpc = connect(&sandbox.client).await?;
        Ok(Self {
            client: sandbox.client.clone(),
            ns: sandbox.ns.clone(),
            sandbox,
            grpc,
        })
    }

    pub fn ns(&self) -> &str {
        &self.ns.name
    }

    /// A Plugin from the sample `sample` (image and bundle from `make e2e-images`, keys
    /// AIRLOCK_<SAMPLE>_IMAGE/_BUNDLE), its bundle in a ConfigMap of its own. `extra` is merged
    /// into the spec (e.g. `network`).
    pub async fn apply(
        &self,
        name: &str,
        sample: &str,
        hooks: Value,
        permissions: Value,
        extra: Value,
    ) -> Result<()> {
        let key = sample.to_uppercase().replace('-', "_");
        let bundle = std::fs::read(images_env(&format!("AIRLOCK_{key}_BUNDLE"))?)?;
        self.sandbox
            .put_bundle(&format!("{name}-bundle"), bundle)
            .await?;
        let mut plugin = json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": name},
            "spec": {
                "version": "1.0.0",
                "image": images_env(&format!("AIRLOCK_{key}_IMAGE"))?,
                "bundle": {"source": {"configMapRef": {"name": format!("{name}-bundle")}}},
                "pluginApiVersion": 1,
                "hooks": hooks,
                "permissions": permissions,
                "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
            }
        });
        if let Value::Object(extra) = extra {
            for (k, v) in extra {
                plugin["spec"][k] = v;
            }
        }
        self.ns
            .api::<Plugin>()
            .patch(
                name,
                &PatchParams::apply("airlock-e2e").force(),
                &Patch::Apply(&plugin),
            )
            .await
            .with_context(|| format!("applying Plugin {name}"))?;
        Ok(())
    }

    pub fn plugin_ref(&self, name: &str) -> Option<PluginRef> {
        Some(PluginRef {
            namespace: self.ns().into(),
            name: name.into(),
        })
    }

    pub async fn invoke(
        &self,
        name: &str,
        hook: &str,
        payload: Value,
    ) -> Result<Value, tonic::Status> {
        let answer = self
            .grpc
            .clone()
            .invoke(InvokeRequest {
                plugin: self.plugin_ref(name),
                hook: hook.into(),
                payload_json: payload.to_string(),
                deadline_ms: 0,
                invocation_id: format!("e2e-{name}-{hook}"),
            })
            .await?
            .into_inner();
        serde_json::from_str(&answer.output_json)
            .map_err(|e| tonic::Status::internal(format!("the output is not JSON: {e}")))
    }

    /// Waits until the router lists every one of `names` (its watch trails the status a little).
    pub async fn wait_routed(&self, names: &[&str]) -> Result<()> {
        let deadline = Instant::now() + crate::WAIT;
        loop {
            let listed = self
                .grpc
                .clone()
                .list_plugins(ListPluginsRequest {
                    namespace: self.ns().into(),
                })
                .await?
                .into_inner();
            let have: Vec<String> = listed
                .plugins
                .iter()
                .filter_map(|p| p.plugin.as_ref().map(|r| r.name.clone()))
                .collect();
            if names.iter().all(|n| have.iter().any(|h| h == n)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the router lists {have:?}, expected {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Phase and Ready condition of a Plugin, for failure messages.
    pub async fn describe(&self, name: &str) -> String {
        match self.ns.api::<Plugin>().get(name).await {
            Ok(p) => format!(
                "phase {:?}, Ready {:?}",
                phase(&p),
                condition(&p, "Ready").map(|c| (
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone()
                ))
            ),
            Err(e) => format!("cannot read it: {e}"),
        }
    }

    /// Waits until a call to `name` reaches its shim (any answer but UNAVAILABLE).
    pub async fn wait_reachable(&self, name: &str, hook: &str) -> Result<()> {
        let deadline = Instant::now() + crate::WAIT;
        loop {
            match self.invoke(name, hook, json!({})).await {
                Err(e) if e.code() == Code::Unavailable => {
                    if Instant::now() > deadline {
                        bail!("{name} is still unreachable through the router: {e:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                _ => return Ok(()),
            }
        }
    }

    pub async fn teardown(self) -> Result<()> {
        self.sandbox.teardown().await
    }
}

pub fn active(p: &Plugin) -> bool {
    phase(p) == Some(PluginPhase::Active)
}

/// Audit records the router pods wrote (their stdout).
pub async fn router_audit(client: &Client) -> Result<Vec<Value>> {
    Ok(router_log_lines(client, "\"airlock.audit\"")
        .await?
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .collect())
}

/// Lines of the router pods' logs that contain `needle`.
pub async fn router_log_lines(client: &Client, needle: &str) -> Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let mut out = Vec::new();
    for pod in pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=airlock-router"))
        .await?
        .items
    {
        let name = pod.metadata.name.unwrap_or_default();
        let text = pods.logs(&name, &Default::default()).await?;
        out.extend(
            text.lines()
                .filter(|l| l.contains(needle))
                .map(str::to_string),
        );
    }
    Ok(out)
}
