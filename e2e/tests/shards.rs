//! Two releases of the chart side by side (issue 15): the suite's release `airlock` and a second
//! one, `airlock2` in `airlock2-system` with `charts/airlock/ci/second-release.yaml` and shard
//! `canary`, both installed from the same `oci://` chart. Each serves only its own shard: a Plugin
//! labelled `airlock.dev/shard: canary` is verified, run and recorded by the canary operator alone
//! and routed by the canary router alone, an unlabelled one in the same namespace by the first
//! release alone; `helm test` of the second release calls its Plugin through its router as a host
//! application would; and relabelling a Plugin hands it over from one release to the other.

use std::process::Command;
use std::time::Duration;

use airlock_crds::{Plugin, PluginTrustPolicy};
use airlock_e2e::install::workspace;
use airlock_e2e::plugins::{active, wait_plugin};
use airlock_e2e::router::{Fixture, ensure_status, in_fixture};
use airlock_e2e::wait;
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;
use tonic::Code;

const RELEASE: &str = "airlock2";
const RELEASE_NAMESPACE: &str = "airlock2-system";
const SHARD: &str = "canary";
const SHARD_LABEL: &str = "airlock.dev/shard";
/// `fullnameOverride` of `ci/second-release.yaml`: its operator pods are named after it.
const CANARY_OPERATOR: &str = "airlock-canary-operator-";
const FIRST_OPERATOR: &str = "airlock-operator-";

fn kube_tool(name: &str) -> Command {
    let mut cmd = Command::new(name);
    if std::env::var_os("KUBECONFIG").is_none() {
        cmd.env("KUBECONFIG", airlock_e2e::LOCAL_CLUSTER_KUBECONFIG);
    }
    cmd
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {:?} (on PATH?)", cmd.get_program()))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The second release, installed the way the first is (`e2e/helm-install.sh`: the chart from
/// `oci://`, the suite's registry and bundle settings), with `ci/second-release.yaml`, shard
/// `canary`, and `helm test` calling `plugin`.
fn install_second_release(plugin: &str) -> Result<()> {
    let root = workspace();
    let mut install = kube_tool("bash");
    install
        .arg(root.join("e2e/helm-install.sh"))
        .env("AIRLOCK_RELEASE", RELEASE)
        .env("AIRLOCK_RELEASE_NAMESPACE", RELEASE_NAMESPACE)
        .arg("--values")
        .arg(root.join("charts/airlock/ci/second-release.yaml"))
        .args(["--set", "progressDeadlineSeconds=20"])
        .args(["--set", &format!("tests.invoke.plugin={plugin}")]);
    run(&mut install).context("installing the second release")?;
    Ok(())
}

/// Removes the second release, its namespace and the canary's trust policy, whatever happened.
async fn remove_second_release(client: &kube::Client, policy: &str) -> Result<()> {
    let mut uninstall = kube_tool("helm");
    uninstall.args([
        "uninstall",
        RELEASE,
        "--namespace",
        RELEASE_NAMESPACE,
        "--wait",
        "--ignore-not-found",
    ]);
    let uninstalled = run(&mut uninstall);
    let _ = Api::<PluginTrustPolicy>::all(client.clone())
        .delete(policy, &DeleteParams::default())
        .await;
    let _ = Api::<Namespace>::all(client.clone())
        .delete(RELEASE_NAMESPACE, &DeleteParams::default())
        .await;
    uninstalled.map(drop)
}

/// Which operator pods published Events about Plugin `name` (their reporting instances), and why.
async fn reporters(f: &Fixture, name: &str) -> Result<Vec<(String, String)>> {
    let events = f.ns.api::<Event>().list(&ListParams::default()).await?;
    Ok(events
        .items
        .into_iter()
        .filter(|e| {
            e.regarding.as_ref().is_some_and(|r| {
                r.kind.as_deref() == Some("Plugin") && r.name.as_deref() == Some(name)
            })
        })
        .map(|e| {
            (
                e.reporting_instance.unwrap_or_default(),
                e.reason.unwrap_or_default(),
            )
        })
        .collect())
}

#[tokio::test]
async fn two_releases_each_serve_only_their_own_shard() -> Result<()> {
    in_fixture("shards", &["log"], async |f: &Fixture| {
        let policy = format!("{}-{SHARD}", f.sandbox.policy);
        // The admission guards are cluster-wide: the first release's must let the canary's
        // operator write its plugins' objects (ci/second-release.yaml lists the first's).
        tokio::task::spawn_blocking(|| {
            airlock_e2e::install::upgrade_with(&[
                "--set",
                "admission.peerOperators={airlock2-system/airlock-canary-operator}",
            ])
        })
        .await??;
        let outcome = side_by_side(f, &policy).await;
        let removed = remove_second_release(&f.client, &policy).await;
        let restored = tokio::task::spawn_blocking(airlock_e2e::install::reinstall).await?;
        outcome.and(removed).and(restored)
    })
    .await
}

async fn side_by_side(f: &Fixture, policy: &str) -> Result<()> {
    let hooks = json!([{"name": "transform", "timeout": "2s"}]);
    install_second_release(&format!("{}/canary-hello", f.ns()))?;

    // The canary trusts only policies labelled for it: the sandbox's policy, again, in its shard.
    let policies = Api::<PluginTrustPolicy>::all(f.client.clone());
    let mut copy = policies.get(&f.sandbox.policy).await?;
    copy.metadata = kube::api::ObjectMeta {
        name: Some(policy.to_string()),
        labels: Some([(SHARD_LABEL.to_string(), SHARD.to_string())].into()),
        ..Default::default()
    };
    copy.status = None;
    policies.create(&PostParams::default(), &copy).await?;

    f.apply_labelled(
        "canary-hello",
        "hello",
        hooks.clone(),
        json!(["log"]),
        json!({}),
        json!({SHARD_LABEL: SHARD}),
    )
    .await?;
    f.apply("hello", "hello", hooks, json!(["log"]), json!({}))
        .await?;
    let plugins = f.ns.api::<Plugin>();
    wait_plugin(&plugins, "canary-hello", "phase Active (canary)", active).await?;
    f.wait_serving(&["hello"], "transform").await?;

    // Each Plugin's children carry its shard, and each Plugin was handled by one operator only.
    let deployments = f.ns.api::<Deployment>();
    let canary = deployments.get("canary-hello").await?;
    ensure!(
        canary.labels().get(SHARD_LABEL).map(String::as_str) == Some(SHARD),
        "the canary Plugin's Deployment lacks {SHARD_LABEL}={SHARD}: {:?}",
        canary.labels()
    );
    let first = deployments.get("hello").await?;
    ensure!(
        !first.labels().contains_key(SHARD_LABEL),
        "the first release's Deployment carries a shard label: {:?}",
        first.labels()
    );
    let by = reporters(f, "canary-hello").await?;
    ensure!(
        !by.is_empty() && by.iter().all(|(who, _)| who.starts_with(CANARY_OPERATOR)),
        "Events about canary-hello come from other than the canary operator: {by:?}"
    );
    let by = reporters(f, "hello").await?;
    ensure!(
        !by.is_empty() && by.iter().all(|(who, _)| who.starts_with(FIRST_OPERATOR)),
        "Events about hello come from other than the first operator: {by:?}"
    );

    // The first router does not route to the canary's Plugin (its caller is granted every
    // plugin of the namespace: only the shard keeps it out).
    ensure_status(
        &f.invoke_err("canary-hello", "transform", json!({"name": "x"}))
            .await?,
        Code::NotFound,
        "",
    )?;

    // `helm test` of the second release: health, and a call of canary-hello's transform through
    // the canary router with a token of the test's ServiceAccount for the canary's audience.
    let mut test = kube_tool("helm");
    test.args([
        "test",
        RELEASE,
        "--namespace",
        RELEASE_NAMESPACE,
        "--timeout",
        "3m",
        "--logs",
    ]);
    let out = run(&mut test).context("helm test of the second release")?;
    ensure!(
        out.contains("canary-hello transform: OK"),
        "helm test did not show the call of canary-hello: {out}"
    );

    // Relabelled out of the canary shard, the Plugin is the first release's: the canary operator
    // records the hand-over (not a deletion), the first operator takes it, the first router
    // routes to it (once its pods hold the first release's certificate).
    plugins
        .patch(
            "canary-hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {SHARD_LABEL: null}}})),
        )
        .await?;
    wait::until(
        "the first router to answer for canary-hello",
        Duration::from_secs(240),
        async || {
            Ok(
                f.invoke("canary-hello", "transform", json!({"name": "moved"}))
                    .await,
            )
        },
        |answer| matches!(answer, Ok(out) if out["greeting"] == "hello, moved"),
    )
    .await??;
    let by = reporters(f, "canary-hello").await?;
    let handed_over = by
        .iter()
        .any(|(who, why)| who.starts_with(CANARY_OPERATOR) && why == "ShardChanged");
    let taken = by.iter().any(|(who, _)| who.starts_with(FIRST_OPERATOR));
    let deleted = by.iter().any(|(_, why)| why == "Deleted");
    if !handed_over || !taken || deleted {
        bail!(
            "expected a ShardChanged Event from the canary operator, Events from the first one \
             and no Deleted: {by:?}"
        );
    }
    let moved = deployments.get("canary-hello").await?;
    ensure!(
        !moved.labels().contains_key(SHARD_LABEL),
        "the handed-over Deployment still carries the canary's label: {:?}",
        moved.labels()
    );
    Ok(())
}
