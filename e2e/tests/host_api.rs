//! The host API on the local cluster, as installed by the chart: `event-logger` (permissions log
//! and storage:write) calls back through its shim to the router while it handles `onEvent`. It
//! reads the two keys its installer pre-populated in its `PluginStorage`, counts events in it,
//! logs through the host, and tries to emit an event it has no permission for — which is refused
//! with PERMISSION_DENIED and audited while the plugin keeps answering. Its storage is kept while
//! it is disabled and deleted with it.

use std::time::Duration;

use airlock_crds::{Plugin, PluginStorage};
use airlock_e2e::plugins::{set_enabled, wait_plugin};
use airlock_e2e::router::{self, Fixture, active, in_fixture};
use airlock_e2e::wait;
use anyhow::{Context, Result, ensure};
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

/// How long the router's audit records and log, and the garbage collector, may trail the test.
const TRAIL: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_plugin_uses_its_storage_and_logs_and_a_denied_call_is_audited() -> Result<()> {
    in_fixture("host", &["log", "storage:read", "storage:write"], scenario).await
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
    // Issue 14: desired state only in spec. The installer's seed is exactly as applied (what a
    // GitOps tool compares), the live data is in status.
    let seeded = storage.get("event-logger").await?;
    ensure!(
        seeded.spec.entries.get("count").map(String::as_str) == Some("41")
            && seeded.spec.entries.len() == 2,
        "the seed in spec is never written by Airlock: {:?}",
        seeded.spec.entries
    );
    ensure!(
        seeded
            .status
            .as_ref()
            .is_some_and(|s| s.key_count >= 2 && s.seed_generation == seeded.metadata.generation),
        "status holds the live data and the seed it merged: {:?}",
        seeded.status
    );
    airlock_e2e::kstatus::expect("a plugin's storage", &seeded, "Current")?;
    // A changed seed (a new commit) sets its keys; the plugin's other data stays.
    storage
        .patch(
            "event-logger",
            &PatchParams::apply("airlock-e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "airlock.dev/v1alpha1",
                "kind": "PluginStorage",
                "metadata": {"name": "event-logger"},
                "spec": {"entries": {
                    "greeting": "\"hello again from the installer\"",
                    "count": "1000",
                }},
            })),
        )
        .await
        .context("changing the seed")?;
    let out = f
        .invoke("event-logger", "onEvent", json!({"type": "order.created"}))
        .await?;
    ensure!(
        out["greeting"] == "hello again from the installer" && out["count"] == json!(1001),
        "a changed seed is what the plugin reads next (count 1000 + 1): {out}"
    );
    let before = count_in(&storage).await? - 1;
    // No events:emit: refused, and the plugin still answered.
    ensure!(
        out["emit"] == "PERMISSION_DENIED",
        "emit without permission: {out}"
    );
    let denied = wait::found("an audit record of the denied emit", TRAIL, async || {
        Ok(router::router_audit(&f.client)
            .await?
            .into_iter()
            .find(|r| {
                r["event"] == "HostCallDenied"
                    && r["plugin"]["namespace"] == f.ns()
                    && r["plugin"]["name"] == "event-logger"
            }))
    })
    .await?;
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
    let what = "the plugin's host log line in the router's log";
    let logged = wait::found(what, TRAIL, async || {
        Ok(router::router_log_lines(&f.client, "plugin log")
            .await?
            .into_iter()
            .find(|l| l.contains(f.ns()) && l.contains("order.created")))
    })
    .await?;
    ensure!(logged.contains("event-logger"), "{logged}");
    let metrics = router::metrics(&f.client).await?;
    let series = |call: &str, result: &str| {
        format!(
            "airlock_host_calls_total{{call=\"{call}\",namespace=\"{}\",plugin=\"event-logger\",result=\"{result}\"}}",
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
    set_enabled(&plugins, "event-logger", false).await?;
    ensure!(
        count_in(&storage).await? == kept,
        "storage is kept while disabled"
    );
    set_enabled(&plugins, "event-logger", true).await?;
    f.wait_serving(&["event-logger"], "onEvent").await?;
    let after = count_in(&storage).await?;
    ensure!(
        after > kept,
        "the re-enabled plugin continues from the kept count ({kept} → {after})"
    );

    plugins
        .delete("event-logger", &DeleteParams::default())
        .await?;
    let what = "the PluginStorage to be deleted with its Plugin";
    wait::found(what, TRAIL, async || {
        Ok(storage
            .get_opt("event-logger")
            .await?
            .is_none()
            .then_some(()))
    })
    .await
}

/// The `count` entry of event-logger's storage.
async fn count_in(storage: &kube::Api<PluginStorage>) -> Result<u64> {
    let s = storage.get("event-logger").await?;
    let text = s
        .status
        .as_ref()
        .and_then(|s| s.entries.get("count"))
        .context("the storage has a live count")?;
    let v: Value = serde_json::from_str(text)?;
    v.as_u64().context("count is a number")
}
