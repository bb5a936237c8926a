//! The host API on the local cluster, as installed by the chart: `event-logger` (permissions log
//! and storage:write) calls back through its shim to the router while it handles `onEvent`. It
//! reads the two keys its installer pre-populated in its `PluginStorage`, counts events in it,
//! logs through the host, and tries to emit an event it has no permission for — which is refused
//! with PERMISSION_DENIED and audited while the plugin keeps answering. Its storage is kept while
//! it is disabled and deleted with it.

use std::time::{Duration, Instant};

use airlock_crds::{Plugin, PluginStorage};
use airlock_e2e::plugins::{phase, wait_plugin};
use airlock_e2e::router::{self, Fixture, active};
use anyhow::{Context, Result, bail, ensure};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

#[tokio::test]
async fn a_plugin_uses_its_storage_and_logs_and_a_denied_call_is_audited() -> Result<()> {
    let f = Fixture::new("host", &["log", "storage:read", "storage:write"]).await?;
    let result = scenario(&f).await;
    let cleanup = f.teardown().await;
    result.and(cleanup)
}

async fn scenario(f: &Fixture) -> Result<()> {
    // The installer pre-populates the plugin's storage (GitOps-friendly: a resource like any
    // other), before the Plugin exists.
    let storage = f.ns.api::<PluginStorage>();
    storage
        .patch(
            "event-logger",
            &PatchParams::apply("airlock-e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "airlock.dev/v1alpha1",
                "kind": "PluginStorage",
                "metadata": {"name": "event-logger"},
                "spec": {"entries": {
                    "greeting": "\"hello from the installer\"",
                    "count": "41",
                }},
            })),
        )
        .await
        .context("pre-populating the storage")?;
    f.apply(
        "event-logger",
        "event-logger",
        json!([{"name": "onEvent", "timeout": "2s"}]),
        json!(["log", "storage:write"]),
        json!({}),
    )
    .await?;
    let plugins = f.ns.api::<Plugin>();
    let plugin = wait_plugin(&plugins, "event-logger", "phase Active", active).await?;
    let permissions = plugin.status.clone().unwrap_or_default().permissions;
    ensure!(
        permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>() == ["log", "storage:write"],
        "status.permissions lists the effective permissions: {permissions:?}"
    );
    ensure!(
        plugin.status.clone().unwrap_or_default().limits
            == Some(airlock_crds::plugin::PluginLimits::default()),
        "status.limits shows the limits it runs under (the trust level sets none: the defaults)"
    );
    f.wait_routed(&["event-logger"]).await?;
    f.wait_reachable("event-logger", "onEvent").await?;

    // wait_reachable made one call already: count from what the storage holds now.
    let before = count_in(&storage).await?;
    let out = f
        .invoke("event-logger", "onEvent", json!({"type": "order.created"}))
        .await?;
    ensure!(
        out["greeting"] == "hello from the installer",
        "the pre-populated key is read through the host API: {out}"
    );
    ensure!(
        out["count"] == json!(before + 1),
        "count {before} + 1 is written back: {out}"
    );
    ensure!(
        count_in(&storage).await? == before + 1,
        "the write reached the PluginStorage object"
    );
    // No events:emit: refused, and the plugin still answered.
    ensure!(
        out["emit"] == "PERMISSION_DENIED",
        "emit without permission: {out}"
    );
    let denied = wait_for(|| async {
        Ok(router::router_audit(&f.client)
            .await?
            .into_iter()
            .find(|r| {
                r["event"] == "HostCallDenied"
                    && r["plugin"]["namespace"] == f.ns()
                    && r["plugin"]["name"] == "event-logger"
            }))
    })
    .await
    .context("an audit record of the denied emit")?;
    ensure!(denied["call"] == "emit", "{denied}");
    ensure!(
        denied["permissions"] == json!(["log", "storage:write"]),
        "the record names the plugin's permissions: {denied}"
    );
    ensure!(
        denied["message"]
            .as_str()
            .is_some_and(|m| m.contains("events:emit")),
        "the record names the permission needed: {denied}"
    );
    // The log line went through the host (rate-limited per plugin), tagged with the plugin.
    let logged = wait_for(|| async {
        Ok(router::router_log_lines(&f.client, "plugin log")
            .await?
            .into_iter()
            .find(|l| l.contains(f.ns()) && l.contains("order.created")))
    })
    .await
    .context("the plugin's host log line in the router's log")?;
    ensure!(logged.contains("event-logger"), "{logged}");
    let metrics = router::metrics(&f.client).await?;
    let series = |call: &str, result: &str| {
        format!(
            "airlock_host_calls_total{{call=\"{call}\",plugin=\"{}/event-logger\",result=\"{result}\"}}",
            f.ns()
        )
    };
    ensure!(
        router::counter_sum(&metrics, &series("emit", "permission_denied")) >= 1.0,
        "the denied emit is counted: {}",
        metrics
            .lines()
            .filter(|l| l.starts_with("airlock_host_calls_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        router::counter_sum(&metrics, &series("storage.put", "ok")) >= 1.0,
        "the storage writes are counted"
    );

    // Owned by the Plugin: kept while it is disabled, deleted with it.
    let owned = storage.get("event-logger").await?;
    let owner = owned
        .metadata
        .owner_references
        .unwrap_or_default()
        .into_iter()
        .find(|o| o.kind == "Plugin")
        .context("the router made the Plugin the storage's owner")?;
    ensure!(
        Some(owner.uid) == plugin.metadata.uid,
        "owner is this Plugin"
    );
    let kept = before + 1;
    plugins
        .patch(
            "event-logger",
            &PatchParams::apply("airlock-e2e-toggle").force(),
            &Patch::Apply(json!({
                "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
                "spec": {"enabled": false},
            })),
        )
        .await?;
    wait_plugin(&plugins, "event-logger", "phase Disabled", |p| {
        phase(p) == Some(airlock_crds::plugin::PluginPhase::Disabled)
    })
    .await?;
    ensure!(
        count_in(&storage).await? == kept,
        "storage is kept while disabled"
    );
    plugins
        .patch(
            "event-logger",
            &PatchParams::apply("airlock-e2e-toggle").force(),
            &Patch::Apply(json!({
                "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
                "spec": {"enabled": true},
            })),
        )
        .await?;
    wait_plugin(&plugins, "event-logger", "phase Active", active).await?;
    f.wait_routed(&["event-logger"]).await?;
    f.wait_reachable("event-logger", "onEvent").await?;
    let after = count_in(&storage).await?;
    ensure!(
        after > kept,
        "the re-enabled plugin continues from the kept count ({kept} → {after})"
    );

    plugins
        .delete("event-logger", &DeleteParams::default())
        .await?;
    wait_for(|| async {
        Ok(storage
            .get_opt("event-logger")
            .await?
            .is_none()
            .then_some(()))
    })
    .await
    .context("the PluginStorage is deleted with its Plugin")?;
    Ok(())
}

/// The `count` entry of event-logger's storage.
async fn count_in(storage: &kube::Api<PluginStorage>) -> Result<u64> {
    let s = storage.get("event-logger").await?;
    let text = s
        .spec
        .entries
        .get("count")
        .context("the storage has a count")?;
    let v: Value = serde_json::from_str(text)?;
    v.as_u64().context("count is a number")
}

/// Polls `f` until it yields something (60 s at most).
async fn wait_for<T, F, Fut>(f: F) -> Result<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
