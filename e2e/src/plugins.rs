//! Watching Plugins and calling their hooks, as a user would.

use std::time::{Duration, Instant};

use airlock_core::identity::plugin_identity;
use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_proto::plugin::v1::InvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::Client;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

pub async fn wait_plugin(
    api: &Api<Plugin>,
    name: &str,
    what: &str,
    check: impl Fn(&Plugin) -> bool,
) -> Result<Plugin> {
    let deadline = Instant::now() + crate::WAIT;
    loop {
        let p = api.get(name).await?;
        if check(&p) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            let warnings = operator_warnings(&api.clone().into_client())
                .await
                .unwrap_or_else(|e| vec![format!("(could not read the operator logs: {e})")]);
            bail!(
                "Plugin {name}: timed out waiting for {what}; status: {}\noperator warnings:\n{}",
                serde_json::to_string(&p.status).unwrap_or_default(),
                warnings.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn phase(p: &Plugin) -> Option<PluginPhase> {
    p.status.as_ref().and_then(|s| s.phase)
}

/// Whether the operator has written a status: a Plugin it has not looked at yet reads the
/// CRD's default status (`phase: Pending, observedGeneration: 0`).
pub fn seen_by_operator(p: &Plugin) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.observed_generation)
        .is_some_and(|g| g > 0)
}

/// Whether the Plugin is in phase Active.
pub fn active(p: &Plugin) -> bool {
    phase(p) == Some(PluginPhase::Active)
}

/// Fails unless the Plugin is in phase `want`; `why` says why it should be.
pub fn ensure_phase(p: &Plugin, want: PluginPhase, why: &str) -> Result<()> {
    ensure!(
        phase(p) == Some(want),
        "{why}: phase {:?}, expected {want:?}; status: {:?}",
        phase(p),
        p.status
    );
    Ok(())
}

/// Server-side applies `plugin` (a Plugin manifest) as the e2e suite's field manager.
pub async fn apply(api: &Api<Plugin>, plugin: &Value) -> Result<()> {
    let name = plugin["metadata"]["name"].as_str().unwrap_or_default();
    api.patch(
        name,
        &PatchParams::apply("airlock-e2e").force(),
        &Patch::Apply(plugin),
    )
    .await
    .with_context(|| format!("applying Plugin {name}"))?;
    Ok(())
}

/// Disables or re-enables the Plugin `name` (only `spec.enabled`, through a field manager of its
/// own, so the rest of the spec stays as it was applied) and waits until it is Disabled or Active.
pub async fn set_enabled(api: &Api<Plugin>, name: &str, enabled: bool) -> Result<Plugin> {
    api.patch(
        name,
        &PatchParams::apply("airlock-e2e-toggle").force(),
        &Patch::Apply(json!({
            "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
            "spec": {"enabled": enabled},
        })),
    )
    .await
    .with_context(|| format!("setting spec.enabled of Plugin {name} to {enabled}"))?;
    let want = if enabled {
        PluginPhase::Active
    } else {
        PluginPhase::Disabled
    };
    let what = format!("phase {want:?} after setting spec.enabled to {enabled}");
    wait_plugin(api, name, &what, |p| phase(p) == Some(want)).await
}

/// Re-enables the auto-disabled Plugin `name` as a user does from Git: a new `spec.reEnable`
/// (`value`), through a field manager of its own; waits until it is Active again.
pub async fn re_enable(api: &Api<Plugin>, name: &str, value: &str) -> Result<Plugin> {
    api.patch(
        name,
        &PatchParams::apply("airlock-e2e-re-enable").force(),
        &Patch::Apply(json!({
            "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
            "spec": {"reEnable": value},
        })),
    )
    .await
    .with_context(|| format!("setting spec.reEnable of Plugin {name}"))?;
    let p = wait_plugin(api, name, "phase Active after a new spec.reEnable", active).await?;
    wait_plugin(api, name, "status.autoDisabled removed", |p| {
        p.auto_disabled_record().is_none()
    })
    .await?;
    Ok(p)
}

/// Records an auto-disable of `name` for `reason` exactly as the router does (a merge patch of
/// `status.autoDisabled` under the Plugin's current `spec.reEnable`), for tests that need one
/// without making a plugin fail.
pub async fn auto_disable(api: &Api<Plugin>, name: &str, reason: &str) -> Result<()> {
    let p = api.get(name).await?;
    let record = airlock_crds::plugin::AutoDisabled::under(&p, reason);
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"autoDisabled": record}})),
    )
    .await
    .with_context(|| format!("recording an auto-disable of Plugin {name}"))?;
    Ok(())
}

/// Whether the namespace of `events` holds a Warning Event `reason` about the Plugin `name` whose
/// note contains `note`.
pub async fn warned(
    events: &Api<k8s_openapi::api::events::v1::Event>,
    name: &str,
    reason: &str,
    note: &str,
) -> Result<bool> {
    Ok(events
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .any(|e| {
            e.reason.as_deref() == Some(reason)
                && e.type_.as_deref() == Some("Warning")
                && e.note.as_deref().is_some_and(|n| n.contains(note))
        }))
}

/// Waits until `name`'s Verified condition is False with `reason`; returns its message.
pub async fn refused(api: &Api<Plugin>, name: &str, reason: &str) -> Result<String> {
    let p = wait_plugin(api, name, &format!("Verified=False reason {reason}"), |p| {
        condition(p, "Verified").is_some_and(|c| c.status == "False" && c.reason == reason)
    })
    .await?;
    Ok(condition(&p, "Verified")
        .map(|c| c.message.clone())
        .unwrap_or_default())
}

pub fn condition<'a>(
    p: &'a Plugin,
    ty: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    p.status.as_ref()?.conditions.iter().find(|c| c.type_ == ty)
}

/// A certificate, its key and the CA, as the operator stores them in a TLS Secret: what a client
/// presents and trusts over mutual TLS ([`TlsFiles::client_config`]).
#[derive(Clone)]
pub struct TlsFiles {
    ca: String,
    cert: String,
    key: String,
}

impl std::fmt::Debug for TlsFiles {
    // Keys stay out of test output.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles").finish_non_exhaustive()
    }
}

impl TlsFiles {
    /// A client presenting this certificate, trusting this CA, that accepts only a server
    /// proving `server_identity` (the plugin's, for a shim).
    pub fn client_config(&self, server_identity: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(server_identity)
    }
}

/// The TLS Secret `ns/name`.
pub async fn tls_files(client: &Client, ns: &str, name: &str) -> Result<TlsFiles> {
    let secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .with_context(|| format!("reading the TLS Secret {ns}/{name}"))?;
    let text = |key: &str| -> Result<String> {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .with_context(|| format!("{ns}/{name} has no {key}"))?;
        Ok(String::from_utf8(bytes.0.clone())?)
    };
    Ok(TlsFiles {
        ca: text("ca.crt")?,
        cert: text("tls.crt")?,
        key: text("tls.key")?,
    })
}

/// The router's identity, which the operator issues (the only one a shim serves).
pub async fn router_identity(client: &Client) -> Result<TlsFiles> {
    tls_files(client, crate::install::NAMESPACE, "airlock-router-tls").await
}

/// The cluster IP of the plugin's Service.
pub async fn service_ip(client: &Client, ns: &str, name: &str) -> Result<String> {
    Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await?
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the plugin Service has a cluster IP")
}

/// A connection to the plugin's shim through its Service, over mutual TLS as `caller`, expecting
/// the plugin's own identity — what the router does. kube-router programs a new pod's firewall
/// chain a moment after the pod starts, so connecting is retried for a bounded time.
pub async fn shim_channel(
    client: &Client,
    ns: &str,
    name: &str,
    caller: &TlsFiles,
) -> Result<Channel> {
    let ip = service_ip(client, ns, name).await?;
    let endpoint = Channel::from_shared(format!("https://{ip}:50051"))?
        .tls_config(caller.client_config(&plugin_identity(ns, name)))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match endpoint.connect().await {
            Ok(c) => return Ok(c),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("connecting to the plugin's gRPC port over mTLS"),
        }
    }
}

/// A call of `transform` with `payload_json` and a 2 s deadline, as the router makes it to a shim.
pub fn transform_request(payload_json: String, invocation_id: &str) -> InvokeRequest {
    InvokeRequest {
        hook: "transform".into(),
        payload_json,
        deadline_ms: 2000,
        invocation_id: invocation_id.into(),
    }
}

/// Calls `transform` on the plugin through its Service, as the router would.
pub async fn invoke(client: &Client, ns: &str, name: &str) -> Result<serde_json::Value> {
    let router = router_identity(client).await?;
    let mut grpc = PluginClient::new(shim_channel(client, ns, name, &router).await?);
    let answer = grpc
        .invoke(transform_request(
            json!({"name": "airlock"}).to_string(),
            "e2e-1",
        ))
        .await
        .context("invoking transform")?
        .into_inner();
    Ok(serde_json::from_str(&answer.output_json)?)
}

/// The last warnings and errors of the operator pods: what a user would look at when a Plugin
/// does not move.
pub async fn operator_warnings(client: &Client) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for (pod, text) in operator_logs(client).await? {
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
            .collect();
        let tail = lines.len().saturating_sub(20);
        out.extend(lines[tail..].iter().map(|l| format!("{pod}: {l}")));
    }
    Ok(out)
}

/// The log of every operator pod, by pod name.
pub async fn operator_logs(client: &Client) -> Result<Vec<(String, String)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), crate::install::NAMESPACE);
    let lp = ListParams::default().labels("app.kubernetes.io/name=airlock-operator");
    let mut out = Vec::new();
    for pod in pods.list(&lp).await?.items {
        let name = pod.metadata.name.unwrap_or_default();
        if let Ok(text) = pods.logs(&name, &Default::default()).await {
            out.push((name, text));
        }
    }
    Ok(out)
}

/// The audit record (`data`) of one audit-stream line: a CloudEvent 1.0 with an id, a type under
/// `dev.airlock.audit.`, a source, a time and the audit schema, else `None`.
pub fn audit_record(line: &str) -> Option<serde_json::Value> {
    let mut event: serde_json::Value = serde_json::from_str(line).ok()?;
    let valid = event["specversion"] == "1.0"
        && event["stream"] == "airlock.audit"
        && event["dataschema"] == "urn:airlock:audit:v1"
        && event["id"].as_str().is_some_and(|i| !i.is_empty())
        && event["source"].as_str().is_some_and(|s| !s.is_empty())
        && event["time"].is_string()
        && event["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("dev.airlock.audit."));
    valid.then(|| event["data"].take())
}

/// The audit records the operator pods wrote (their stdout), oldest first per pod.
pub async fn audit_records(client: &Client) -> Result<Vec<serde_json::Value>> {
    Ok(operator_logs(client)
        .await?
        .iter()
        .flat_map(|(_, text)| {
            text.lines()
                .filter(|l| l.contains("\"airlock.audit\""))
                .filter_map(audit_record)
                .collect::<Vec<_>>()
        })
        .collect())
}
