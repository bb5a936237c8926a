//! Issue 14, "Deliver 2": a real GitOps pipeline. Flux's source-controller and
//! kustomize-controller ([`airlock_e2e::flux`]) reconcile a Kustomization from OCI artifacts
//! pushed to the local registry, each artifact a "commit". Every assertion is what Flux itself
//! reports: the Kustomization's Ready condition and lastAppliedRevision, and the changes
//! kustomize-controller records for each server-side apply (its log and its Events).
//!
//! This scenario needs no Airlock: ConfigMaps stand in for the manifests, to prove the pipeline
//! (commit, failure, revert, rollback, drift) before Airlock's kinds go through it.
//!
//! Flux watches all namespaces, so only one set of its controllers runs at a time: this binary
//! has one test, and `Flux::start` holds a machine-wide lock.

use std::time::Duration;

use airlock_e2e::TestNamespace;
use airlock_e2e::flux::{
    self, Flux, Pipeline, change_event_counts, checkout, failed_at, push_commit, ready, ready_at,
    revision,
};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn flux_applies_commits_reports_a_bad_one_reverts_and_corrects_drift() -> Result<()> {
    let client = airlock_e2e::client().await?;
    let flux = Flux::start(&client).await?;
    let ns = match TestNamespace::create(&client, "gitops", &[]).await {
        Ok(ns) => ns,
        Err(err) => return flux.finish(&[], Err(err)).await,
    };
    let outcome = scenario(&flux, &ns).await;
    // Flux's objects go while Flux runs (they carry its finalizers), then the namespace.
    let finished = flux.finish(&[&ns.name], outcome).await;
    let deleted = ns.delete().await;
    finished.with_context(|| format!("in namespace {}", ns.name))?;
    deleted
}

/// A ConfigMap manifest as a user commits it (no namespace: the Kustomization targets one).
fn configmap(name: &str, greeting: &str) -> String {
    format!(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\n\
         data:\n  greeting: {greeting}\n"
    )
}

async fn greeting(cms: &Api<ConfigMap>, name: &str) -> Result<Option<String>> {
    Ok(cms
        .get_opt(name)
        .await?
        .and_then(|cm| cm.data?.get("greeting").cloned()))
}

async fn scenario(flux: &Flux, ns: &TestNamespace) -> Result<()> {
    let client = &flux.client;
    let repo = flux::repository("configmaps");
    let pipeline = Pipeline::new(&ns.name, "app", &repo);
    let cms: Api<ConfigMap> = ns.api();
    let greeting_id = format!("ConfigMap/{}/greeting", ns.name);

    // Commit 1: two ConfigMaps. Flux applies them and reports the revision Ready.
    let c1 = push_commit(
        &repo,
        &[
            ("greeting.yaml", &configmap("greeting", "hello")),
            ("extra.yaml", &configmap("extra", "x")),
        ],
    )?;
    pipeline.apply(client).await?;
    let k = pipeline
        .wait(client, "commit 1 applied", ready_at(&revision(&c1)))
        .await?;
    println!("commit 1 {c1}: Ready {:?}", ready(&k));
    ensure!(greeting(&cms, "greeting").await?.as_deref() == Some("hello"));
    ensure!(cms.get_opt("extra").await?.is_some(), "extra not created");

    // Commit 2: one ConfigMap changed, the other removed (pruned).
    let c2 = push_commit(
        &repo,
        &[("greeting.yaml", &configmap("greeting", "bonjour"))],
    )?;
    pipeline.reconcile_now(client).await?;
    let k = pipeline
        .wait(client, "commit 2 applied", ready_at(&revision(&c2)))
        .await?;
    println!("commit 2 {c2}: Ready {:?}", ready(&k));
    ensure!(greeting(&cms, "greeting").await?.as_deref() == Some("bonjour"));
    ensure!(cms.get_opt("extra").await?.is_none(), "extra not pruned");

    // Commit 3: an object the API server rejects. The Kustomization fails naming it; nothing of
    // the commit is applied and the last applied revision stays the good one.
    let c3 = push_commit(
        &repo,
        &[
            ("greeting.yaml", &configmap("greeting", "hola")),
            ("bad.yaml", &configmap("Not_Valid", "x")),
        ],
    )?;
    pipeline.reconcile_now(client).await?;
    let k = pipeline
        .wait(client, "commit 3 failed", failed_at(&revision(&c3)))
        .await?;
    let (status, reason, message) = ready(&k);
    println!("commit 3 {c3}: Ready {status} {reason}: {message}");
    ensure!(
        message.contains(&format!("ConfigMap/{}/Not_Valid", ns.name)),
        "the failure does not name the object: {reason}: {message}"
    );
    ensure!(
        k["status"]["lastAppliedRevision"] == revision(&c2).as_str(),
        "lastAppliedRevision moved on a failed commit: {}",
        k["status"]["lastAppliedRevision"]
    );
    ensure!(greeting(&cms, "greeting").await?.as_deref() == Some("bonjour"));

    // Revert of commit 3: the tag points at commit 2 again. Ready again.
    checkout(&repo, &c2)?;
    pipeline.reconcile_now(client).await?;
    let k = pipeline
        .wait(
            client,
            "the revert to commit 2 applied",
            ready_at(&revision(&c2)),
        )
        .await?;
    println!("revert to {c2}: Ready {:?}", ready(&k));

    // Roll back to commit 1: its content again, the pruned object back.
    checkout(&repo, &c1)?;
    pipeline.reconcile_now(client).await?;
    let k = pipeline
        .wait(
            client,
            "the rollback to commit 1 applied",
            ready_at(&revision(&c1)),
        )
        .await?;
    println!("rollback to {c1}: Ready {:?}", ready(&k));
    ensure!(greeting(&cms, "greeting").await?.as_deref() == Some("hello"));
    ensure!(cms.get_opt("extra").await?.is_some(), "extra not restored");

    // Drift: another field manager edits a field Flux applied. The next reconcile reports the
    // object "configured" (in its log and in an Event) and puts Git's value back.
    let drift_event = format!("{greeting_id} configured");
    let events_before = change_event_counts(client, &ns.name, "app").await?;
    let applies = edit_then_reconcile(
        flux,
        &pipeline,
        &cms,
        json!({"data": {"greeting": "drifted"}}),
    )
    .await?;
    println!("applies after the drift: {applies:#?}");
    ensure!(
        applies
            .iter()
            .any(|a| a.changed().get(greeting_id.as_str()) == Some(&"configured")),
        "no apply reported {greeting_id} configured: {applies:#?}"
    );
    ensure!(greeting(&cms, "greeting").await?.as_deref() == Some("hello"));
    let events = change_event_counts(client, &ns.name, "app").await?;
    println!("change-set Events of the Kustomization (message: count): {events:#?}");
    ensure!(
        events.get(&drift_event) > events_before.get(&drift_event),
        "no new Event {drift_event:?}: before {events_before:#?}"
    );

    // Not drift: a field only the other manager owns (its own label). Nothing reported.
    let applies = edit_then_reconcile(
        flux,
        &pipeline,
        &cms,
        json!({"metadata": {"labels": {"e2e-intruder": "yes"}}}),
    )
    .await?;
    println!("applies after the intruder's own label: {applies:#?}");
    ensure!(
        !applies.is_empty() && applies.iter().all(|a| a.changed().is_empty()),
        "an apply changed something: {applies:#?}"
    );
    let events_after = change_event_counts(client, &ns.name, "app").await?;
    ensure!(
        events_after == events,
        "new change-set Events without drift: {events_after:#?}"
    );

    // And left alone, periodic reconciles (every 10s) change nothing: no apply changes an object
    // and no change-set Event is recorded.
    let quiet = flux
        .expect_no_drift(&ns.name, "app", Duration::from_secs(30), 2)
        .await?;
    println!(
        "{} applies in 30s, nothing changed: {:?}",
        quiet.len(),
        quiet.iter().map(|a| &a.actions).collect::<Vec<_>>()
    );
    Ok(())
}

/// Another field manager (`e2e-intruder`, as `kubectl edit` would) merge-patches ConfigMap
/// `greeting`; then a reconcile is requested and awaited (handled, Ready). Returns every apply
/// kustomize-controller logged from just before the edit: periodic ones included, so that a
/// correction cannot slip between the edit and the request.
async fn edit_then_reconcile(
    flux: &Flux,
    pipeline: &Pipeline,
    cms: &Api<ConfigMap>,
    patch: serde_json::Value,
) -> Result<Vec<flux::Apply>> {
    let before = flux.applies(&pipeline.namespace, &pipeline.name)?.len();
    let intruder = PatchParams {
        field_manager: Some("e2e-intruder".into()),
        ..Default::default()
    };
    cms.patch("greeting", &intruder, &Patch::Merge(patch))
        .await?;
    let token = pipeline.reconcile_now(&flux.client).await?;
    pipeline
        .wait(&flux.client, &format!("reconcile {token} handled"), |k| {
            k["status"]["lastHandledReconcileAt"] == token.as_str() && ready(k).0 == "True"
        })
        .await?;
    Ok(flux
        .applies(&pipeline.namespace, &pipeline.name)?
        .split_off(before))
}
