//! Calling the hook router the way a host application does: over gRPC to the `airlock-router`
//! Service the chart installs, as a ServiceAccount with a token for the router's audience (see
//! [`crate::callers`]), plus reading the router pods' metrics.

use std::time::{Duration, Instant};

use airlock_crds::{Plugin, PluginCallerBinding};
use airlock_proto::router::v1::hook_router_client::HookRouterClient;
use airlock_proto::router::v1::{
    ActivePlugin, BroadcastRequest, BroadcastResponse, InvokeRequest, ListPluginsRequest,
    PluginRef, TransformRequest, TransformResponse,
};
use anyhow::{Context, Result, bail, ensure};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Client;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::{Code, Status};

use crate::TestNamespace;
use crate::callers::{self, Bearer, RouterClient, Subject};
use crate::install::{NAMESPACE, images_env};
pub use crate::plugins::active;
use crate::plugins::{condition, phase, wait_plugin};
use crate::sandbox::Sandbox;
use crate::wait;

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

/// A client of the router that sends `bearer` with every call, retried while its pods start.
pub async fn connect_with(client: &Client, bearer: Bearer) -> Result<RouterClient> {
    let addr = address(client).await?;
    let deadline = Instant::now() + crate::WAIT;
    loop {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?;
        match endpoint.connect().await {
            Ok(c) => return Ok(HookRouterClient::with_interceptor(c, bearer)),
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to the router at {addr}")),
        }
    }
}

/// One client per running router pod (its pod IP), each sending `bearer`: to make each replica
/// see calls, where the Service would pick one per connection.
pub async fn connect_each_replica(client: &Client, bearer: Bearer) -> Result<Vec<RouterClient>> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/name=airlock-router"))
        .await?;
    let mut out = Vec::new();
    for pod in pods.items {
        let status = pod.status.unwrap_or_default();
        let (Some("Running"), Some(ip)) = (status.phase.as_deref(), status.pod_ip) else {
            continue;
        };
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://{ip}:{ROUTER_PORT}"))?
                .connect()
                .await
                .with_context(|| format!("connecting to the router pod at {ip}"))?;
        out.push(HookRouterClient::with_interceptor(channel, bearer.clone()));
    }
    Ok(out)
}

/// The /metrics text of every running router pod, concatenated (each replica counts its own
/// calls). Pods that ended (Completed, Evicted) keep their old address in their status: skipped.
pub async fn metrics(client: &Client) -> Result<String> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default().labels("app.kubernetes.io/name=airlock-router"))
        .await?;
    let mut out = String::new();
    for pod in pods.items {
        let Some(ip) = pod
            .status
            .filter(|s| s.phase.as_deref() == Some("Running"))
            .and_then(|s| s.pod_ip)
        else {
            continue;
        };
        out.push_str(&http_get(&format!("{ip}:8080"), "/metrics").await?);
    }
    Ok(out)
}

/// Container restarts of the router pods that exist now (summed).
pub async fn router_restarts(client: &Client) -> Result<i32> {
    crate::pods::container_restarts(client, NAMESPACE, "app.kubernetes.io/name=airlock-router")
        .await
}

/// Sum of a counter over every series whose line starts with `prefix` (name and labels).
pub fn counter_sum(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A minimal HTTP/1.0 GET of `http://{addr}{path}` (the tests and benches need nothing more and no
/// HTTP client crate).
pub async fn http_get(addr: &str, path: &str) -> Result<String> {
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

/// The ServiceAccount a [`Fixture`] calls the router as, in the fixture's namespace.
pub const CALLER: &str = "e2e-caller";

/// A [`Sandbox`] (namespace + trust policy allowing `permissions`) and a client of the router:
/// what the router and sandbox e2e tests call plugins through. The client calls as the
/// ServiceAccount [`CALLER`] of the sandbox's namespace, which a PluginCallerBinding `CALLER`
/// there lets call every plugin and hook of that namespace (the router denies by default).
pub struct Fixture {
    pub sandbox: Sandbox,
    pub client: Client,
    pub ns: TestNamespace,
    pub grpc: RouterClient,
    /// [`CALLER`]'s token for the router's audience, for clients started as programs (grpcurl,
    /// Python): pass it in their environment, never on a command line.
    pub token: String,
}

impl std::fmt::Debug for Fixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixture").field("ns", &self.ns).finish()
    }
}

impl Fixture {
    pub async fn new(prefix: &str, permissions: &[&str]) -> Result<Self> {
        let sandbox = Sandbox::new(prefix, permissions).await?;
        let (client, ns) = (sandbox.client.clone(), sandbox.ns.clone());
        callers::bind(
            &ns.api::<PluginCallerBinding>(),
            CALLER,
            &[Subject::local(CALLER)],
            &["*"],
            &["*"],
        )
        .await?;
        let token = callers::token(&client, &ns.name, CALLER, &[callers::ROUTER_AUDIENCE]).await?;
        let grpc = connect_with(&client, Bearer::token(&token)?).await?;
        Ok(Self {
            client,
            ns,
            sandbox,
            grpc,
            token,
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
        self.apply_labelled(name, sample, hooks, permissions, extra, json!({}))
            .await
    }

    /// [`Fixture::apply`] with `labels` on the Plugin from its first write (e.g. a shard label,
    /// which must be there before any release sees the Plugin).
    pub async fn apply_labelled(
        &self,
        name: &str,
        sample: &str,
        hooks: Value,
        permissions: Value,
        extra: Value,
        labels: Value,
    ) -> Result<()> {
        let key = sample.to_uppercase().replace('-', "_");
        let bundle = std::fs::read(images_env(&format!("AIRLOCK_{key}_BUNDLE"))?)?;
        self.sandbox
            .put_bundle(&format!("{name}-bundle"), bundle)
            .await?;
        let mut plugin = json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": name, "labels": labels},
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
        crate::plugins::apply(&self.ns.api::<Plugin>(), &plugin).await
    }

    pub fn plugin_ref(&self, name: &str) -> Option<PluginRef> {
        Some(PluginRef {
            namespace: self.ns().into(),
            name: name.into(),
        })
    }

    pub async fn invoke(&self, name: &str, hook: &str, payload: Value) -> Result<Value, Status> {
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
            .map_err(|e| Status::internal(format!("the output is not JSON: {e}")))
    }

    /// Runs the namespace's transform pipeline on `payload`.
    pub async fn transform(
        &self,
        payload: Value,
        deadline_ms: u32,
        invocation_id: &str,
    ) -> Result<TransformResponse, Status> {
        let request = TransformRequest {
            payload_json: payload.to_string(),
            deadline_ms,
            invocation_id: invocation_id.into(),
            namespace: self.ns().into(),
        };
        Ok(self.grpc.clone().transform(request).await?.into_inner())
    }

    /// Broadcasts `hook` with `payload` to the namespace's plugins, each under its own timeout.
    pub async fn broadcast(
        &self,
        hook: &str,
        payload: Value,
        invocation_id: &str,
    ) -> Result<BroadcastResponse, Status> {
        let request = BroadcastRequest {
            hook: hook.into(),
            payload_json: payload.to_string(),
            deadline_ms: 0,
            invocation_id: invocation_id.into(),
            namespace: self.ns().into(),
        };
        Ok(self.grpc.clone().broadcast(request).await?.into_inner())
    }

    /// Calls `hook` on `name` where the call must fail, and returns the failure.
    pub async fn invoke_err(&self, name: &str, hook: &str, payload: Value) -> Result<Status> {
        match self.invoke(name, hook, payload).await {
            Ok(out) => bail!("{name} answered {hook} with {out}, but the call must fail"),
            Err(status) => Ok(status),
        }
    }

    /// Calls `hook` on `name` where the call must fail with `code` and a message that contains
    /// `message` (`""`: any message).
    pub async fn expect_failure(
        &self,
        name: &str,
        hook: &str,
        payload: Value,
        code: Code,
        message: &str,
    ) -> Result<()> {
        ensure_status(&self.invoke_err(name, hook, payload).await?, code, message)
    }

    /// Calls `transform` on the greeter `name` (hello, go-greeter) with `payload` and checks that
    /// it answers with `greeting`.
    pub async fn expect_greeting(&self, name: &str, payload: Value, greeting: &str) -> Result<()> {
        let out = self
            .invoke(name, "transform", payload)
            .await
            .with_context(|| format!("calling {name}, which must answer {greeting:?}"))?;
        ensure!(
            out["greeting"] == greeting,
            "{name} answered {out}, expected the greeting {greeting:?}"
        );
        Ok(())
    }

    /// What the router lists for the sandbox's namespace (`ListPlugins`).
    pub async fn listed(&self) -> Result<Vec<ActivePlugin>> {
        Ok(self
            .grpc
            .clone()
            .list_plugins(ListPluginsRequest {
                namespace: self.ns().into(),
            })
            .await?
            .into_inner()
            .plugins)
    }

    /// Waits until the router lists every one of `names` (its watch trails the status a little).
    pub async fn wait_routed(&self, names: &[&str]) -> Result<()> {
        let what = format!("the router to list {names:?}");
        wait::until(
            &what,
            crate::WAIT,
            async || {
                Ok(self
                    .listed()
                    .await?
                    .iter()
                    .filter_map(|p| p.plugin.as_ref().map(|r| r.name.clone()))
                    .collect::<Vec<String>>())
            },
            |have| names.iter().all(|n| have.iter().any(|h| h == n)),
        )
        .await
        .map(drop)
    }

    /// Waits until every one of `names` is Active, listed by the router and answers `hook` through
    /// it. The helm upgrade at the start of a test may have replaced the router pods: plugin pods
    /// admit them once kube-router has programmed the new pods into their NetworkPolicy (seconds).
    pub async fn wait_serving(&self, names: &[&str], hook: &str) -> Result<()> {
        let api = self.ns.api::<Plugin>();
        for name in names {
            wait_plugin(&api, name, "phase Active", active).await?;
        }
        self.wait_routed(names).await?;
        for name in names {
            self.wait_reachable(name, hook).await?;
        }
        Ok(())
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
        let what = format!("{name} to be reachable through the router");
        wait::until(
            &what,
            crate::WAIT,
            async || Ok(self.invoke(name, hook, json!({})).await),
            |answer| !matches!(answer, Err(e) if e.code() == Code::Unavailable),
        )
        .await
        .map(drop)
    }

    pub async fn teardown(self) -> Result<()> {
        self.sandbox.teardown().await
    }
}

/// Runs `body` with a [`Fixture`] and tears it down whatever the outcome.
pub async fn in_fixture<F>(prefix: &str, permissions: &[&str], body: F) -> Result<()>
where
    F: AsyncFnOnce(&Fixture) -> Result<()>,
{
    let fixture = Fixture::new(prefix, permissions).await?;
    crate::sandbox::torn_down_after(fixture, body, Fixture::teardown).await
}

/// Fails unless `status` has `code` and a message that contains `message` (`""`: any message).
pub fn ensure_status(status: &Status, code: Code, message: &str) -> Result<()> {
    ensure!(
        status.code() == code && status.message().contains(message),
        "expected {code:?} with a message containing {message:?}, got {status:?}"
    );
    Ok(())
}

/// Audit records the router pods wrote (their stdout).
pub async fn router_audit(client: &Client) -> Result<Vec<Value>> {
    Ok(router_log_lines(client, "\"airlock.audit\"")
        .await?
        .iter()
        .filter_map(|l| crate::plugins::audit_record(l))
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
