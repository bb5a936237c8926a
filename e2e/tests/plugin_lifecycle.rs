//! A Plugin from `kubectl apply` to a sandboxed pod whose hook answers, and its lifecycle:
//! disable/enable, an unsupported plugin API version, a broken upgrade rolled back, delete and
//! re-create under the same name. (The operator killed mid-rollout is `operator_restart.rs`: it
//! disrupts the whole cluster, so it runs alone.) Airlock is installed with its Helm chart; the operator runs
//! in-cluster under the chart's RBAC.

use std::time::Duration;

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use airlock_e2e::install::images_env;
use airlock_e2e::plugins::{
    active, condition, ensure_phase, invoke, seen_by_operator, set_enabled, wait_plugin,
};
use airlock_e2e::sandbox::{self, Sandbox};
use airlock_e2e::{kstatus, wait};

async fn running_pods(client: &Client, ns: &str, plugin: &str) -> Result<usize> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("airlock.dev/plugin={plugin}")))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count())
}

/// A sandbox allowing `log`, with the hello bundle in the ConfigMap `hello-bundle`; torn down
/// whatever the outcome.
async fn in_sandbox<F>(prefix: &str, body: F) -> Result<()>
where
    F: AsyncFnOnce(&Sandbox) -> Result<()>,
{
    sandbox::in_sandbox(prefix, &["log"], async |s: &Sandbox| {
        s.with_hello_bundle().await?;
        body(s).await
    })
    .await
}

#[tokio::test]
async fn a_plugin_becomes_active_in_a_restricted_namespace_and_follows_its_lifecycle() -> Result<()>
{
    in_sandbox("plugin", async |s| lifecycle(s).await).await
}

async fn lifecycle(s: &Sandbox) -> Result<()> {
    let (client, ns) = (&s.client, &s.ns);
    let plugin = s.hello("hello")?;
    s.apply(&plugin).await?;
    let plugins: Api<Plugin> = ns.api();

    // Active, with a real pod that the restricted namespace admitted, and the hook answers.
    let p = wait_plugin(&plugins, "hello", "phase Active", active).await?;
    let ready = condition(&p, "Ready").context("Ready condition")?;
    ensure!(ready.status == "True", "Ready is {}", ready.status);
    ensure!(
        p.status
            .as_ref()
            .and_then(|s| s.image_digest.clone())
            .is_some_and(|d| d.starts_with("sha256:")),
        "the image digest is recorded"
    );
    ensure!(
        running_pods(client, &ns.name, "hello").await? == 1,
        "one plugin pod"
    );
    let out = invoke(client, &ns.name, "hello").await?;
    ensure!(
        out["greeting"] == "hello, airlock",
        "unexpected hook output {out}"
    );

    // Disable: no pods, Disabled; enable: back to Active and answering.
    set_enabled(&plugins, "hello", false).await?;
    wait::until(
        "no running pods after disable",
        airlock_e2e::WAIT,
        async || running_pods(client, &ns.name, "hello").await,
        |running| *running == 0,
    )
    .await?;
    ensure!(
        ns.api::<Deployment>().get_opt("hello").await?.is_some(),
        "a disabled plugin keeps its Deployment (scaled to zero)"
    );
    // Issue 13: its NetworkPolicy and Service, which cost the cluster work while idle, go once no
    // pod of it can be left (the pods' grace period after the Deployment reached zero).
    wait::until(
        "the disabled plugin's NetworkPolicy and Service removed",
        airlock_e2e::WAIT,
        async || {
            Ok((
                ns.api::<NetworkPolicy>().get_opt("hello").await?.is_some(),
                ns.api::<Service>().get_opt("hello").await?.is_some(),
            ))
        },
        |(np, svc)| !np && !svc,
    )
    .await?;
    set_enabled(&plugins, "hello", true).await?;
    let out = invoke(client, &ns.name, "hello").await?;
    ensure!(
        out["greeting"] == "hello, airlock",
        "after re-enable: {out}"
    );

    // An API version this Airlock cannot host: Compatible=False, nothing rolled out.
    let mut future = plugin.clone();
    future["metadata"]["name"] = json!("from-the-future");
    future["spec"]["pluginApiVersion"] = json!(2);
    s.apply(&future).await?;
    let p = wait_plugin(&plugins, "from-the-future", "Compatible=False", |p| {
        condition(p, "Compatible").is_some_and(|c| c.status == "False")
    })
    .await?;
    let c = condition(&p, "Compatible").context("Compatible")?;
    ensure!(
        c.reason == "UnsupportedPluginApiVersion",
        "reason {}",
        c.reason
    );
    ensure!(
        c.message.contains("spec.pluginApiVersion"),
        "message {}",
        c.message
    );
    ensure!(
        ns.api::<Deployment>()
            .get_opt("from-the-future")
            .await?
            .is_none(),
        "nothing is rolled out for an incompatible plugin"
    );

    // Issue 14: no finalizer only the operator could remove (deleting the Plugin, its namespace
    // or the CRD would hang without it).
    let p = plugins.get("hello").await?;
    ensure!(
        p.metadata.finalizers.as_ref().is_none_or(|f| f.is_empty()),
        "finalizers on a Plugin: {:?}",
        p.metadata.finalizers
    );
    // Delete: every child goes.
    plugins.delete("hello", &DeleteParams::default()).await?;
    wait::until(
        "the Plugin and its children to go (left: deployment, service, netpol, sa, secrets, plugin)",
        airlock_e2e::WAIT,
        async || {
            Ok([
                ns.api::<Deployment>().get_opt("hello").await?.is_some(),
                ns.api::<Service>().get_opt("hello").await?.is_some(),
                ns.api::<NetworkPolicy>().get_opt("hello").await?.is_some(),
                ns.api::<ServiceAccount>().get_opt("hello").await?.is_some(),
                !ns.api::<Secret>()
                    .list(&ListParams::default().labels("airlock.dev/plugin=hello"))
                    .await?
                    .items
                    .is_empty(),
                plugins.get_opt("hello").await?.is_some(),
            ])
        },
        |left| left.iter().all(|l| !l),
    )
    .await?;
    // The deletion is still recorded (from the delete event).
    let uid = p.metadata.uid.clone().unwrap_or_default();
    wait::found(
        "the audit record of the deletion",
        Duration::from_secs(30),
        async || {
            Ok(airlock_e2e::plugins::audit_records(client)
                .await?
                .into_iter()
                .find(|r| r["event"] == "Deleted" && r["plugin"]["uid"] == uid.as_str()))
        },
    )
    .await?;
    let _ = plugins
        .delete("from-the-future", &DeleteParams::default())
        .await;

    // Applied again under the same name, within the same leadership term: a new object whose
    // Secrets Kubernetes deleted with the old one. It must get new ones and become Active (the
    // operator once remembered "Secret exists" by name and left the pod unable to start).
    s.apply(&plugin).await?;
    let again = wait_plugin(&plugins, "hello", "phase Active after re-create", active).await?;
    let uid = again.metadata.uid.clone().unwrap_or_default();
    let secrets = ns
        .api::<Secret>()
        .list(&ListParams::default().labels("airlock.dev/plugin=hello"))
        .await?;
    ensure!(
        secrets.items.len() >= 2
            && secrets.items.iter().all(|s| {
                s.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|o| o.uid == uid)
            }),
        "the re-created Plugin owns fresh bundle and TLS Secrets: {:?}",
        secrets
            .items
            .iter()
            .map(|s| s.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    let out = invoke(client, &ns.name, "hello").await?;
    ensure!(
        out["greeting"] == "hello, airlock",
        "the re-created plugin answers: {out}"
    );
    Ok(())
}

#[tokio::test]
async fn an_upgrade_that_never_becomes_ready_is_rolled_back_while_the_old_revision_serves()
-> Result<()> {
    in_sandbox("rollback", async |s| {
        let plugins: Api<Plugin> = s.ns.api();
        let good = s.hello("hello")?;
        // What the API server answers at once, before the operator can have looked: the CRD's
        // default status, which no kstatus tool may take for Current.
        let created = plugins
            .patch(
                "hello",
                &PatchParams::apply("airlock-e2e").force(),
                &Patch::Apply(&good),
            )
            .await?;
        let seen = created
            .status
            .as_ref()
            .map(|st| (st.phase, st.observed_generation));
        ensure!(
            seen == Some((Some(PluginPhase::Pending), Some(0))),
            "a new Plugin reads phase Pending at observedGeneration 0: {seen:?}"
        );
        kstatus::expect("not looked at yet", &created, "InProgress")?;
        let p = wait_plugin(&plugins, "hello", "phase Active", active).await?;
        kstatus::expect("Active", &p, "Current")?;
        let good_revision = p
            .status
            .and_then(|st| st.current_revision)
            .context("current revision")?;

        // The upgrade's image exists, but the plugin process in it never starts.
        let mut broken = good.clone();
        broken["spec"]["image"] = json!(images_env("AIRLOCK_HELLO_BROKEN_IMAGE")?);
        s.apply(&broken).await?;
        // Until its progress deadline, the upgrade is a rollout in progress.
        let p = wait_plugin(&plugins, "hello", "phase Deploying", |p| {
            p.status.as_ref().and_then(|st| st.phase) == Some(PluginPhase::Deploying)
        })
        .await?;
        kstatus::expect("Deploying", &p, "InProgress")?;
        let p = wait_plugin(&plugins, "hello", "Ready=False reason RolledBack", |p| {
            condition(p, "Ready").is_some_and(|c| c.reason == "RolledBack")
        })
        .await?;
        ensure_phase(&p, PluginPhase::Degraded, "the last good revision serves")?;
        kstatus::expect("RolledBack", &p, "Failed")?;
        let st = p.status.clone().context("status")?;
        ensure!(
            st.current_revision.as_deref() == Some(good_revision.as_str()),
            "serving {:?}, expected the last good revision {good_revision}",
            st.current_revision
        );
        let failed = st
            .failed_revision
            .clone()
            .context("failed revision recorded")?;
        ensure!(
            failed != good_revision,
            "the failed revision is the new one"
        );
        let msg = &condition(&p, "Ready").context("Ready")?.message;
        ensure!(
            msg.contains(&failed) && msg.contains(&good_revision),
            "message: {msg}"
        );

        // The old revision keeps answering, and the broken one is not retried.
        let out = invoke(&s.client, &s.ns.name, "hello").await?;
        ensure!(out["greeting"] == "hello, airlock", "after rollback: {out}");
        tokio::time::sleep(Duration::from_secs(5)).await;
        let d = s.ns.api::<Deployment>().get("hello").await?;
        let serving = d
            .spec
            .and_then(|sp| sp.template.metadata)
            .and_then(|m| m.labels)
            .and_then(|l| l.get("airlock.dev/revision").cloned());
        ensure!(
            serving.as_deref() == Some(good_revision.as_str()),
            "the Deployment went back to {serving:?}"
        );

        // Fixing the spec rolls forward again.
        s.apply(&good).await?;
        wait_plugin(&plugins, "hello", "Active after the fix", active).await?;
        Ok(())
    })
    .await
}

/// Issue 13: a revision that served and then loses its pods for longer than the progress
/// deadline (the e2e installs with 20 s) is told: Ready=False `PodsNotReady` naming the ready
/// count, a Warning Event, kstatus InProgress; and Active again once pods come back. The pods
/// are lost as a cluster loses them: the namespace's quota leaves no room for a replacement.
#[tokio::test]
async fn a_served_revision_whose_pods_stay_gone_is_told_pods_not_ready() -> Result<()> {
    use k8s_openapi::api::core::v1::ResourceQuota;
    in_sandbox("unready", async |s| {
        let plugins: Api<Plugin> = s.ns.api();
        s.apply(&s.hello("hello")?).await?;
        let p = wait_plugin(&plugins, "hello", "phase Active", active).await?;
        let serving = p
            .status
            .and_then(|st| st.current_revision)
            .context("current revision")?;

        let quotas: Api<ResourceQuota> = s.ns.api();
        let quota = json!({
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": {"name": "no-pods"},
            "spec": {"hard": {"pods": "0"}},
        });
        quotas
            .patch(
                "no-pods",
                &PatchParams::apply("airlock-e2e").force(),
                &Patch::Apply(&quota),
            )
            .await?;
        // The quota controller must have counted the namespace before a pod create is refused.
        wait::until(
            "the quota counts the namespace's pods",
            Duration::from_secs(60),
            async || Ok(quotas.get("no-pods").await?.status.and_then(|st| st.used)),
            |used| used.as_ref().is_some_and(|u| u.contains_key("pods")),
        )
        .await?;
        let pods: Api<Pod> = s.ns.api();
        pods.delete_collection(
            &DeleteParams::default(),
            &ListParams::default().labels("airlock.dev/plugin=hello"),
        )
        .await?;

        let p = wait_plugin(&plugins, "hello", "Ready=False reason PodsNotReady", |p| {
            condition(p, "Ready").is_some_and(|c| c.reason == "PodsNotReady")
        })
        .await?;
        ensure_phase(&p, PluginPhase::Deploying, "its pods are gone")?;
        kstatus::expect("PodsNotReady", &p, "InProgress")?;
        let message = &condition(&p, "Ready").context("Ready")?.message;
        ensure!(
            message.contains("0/1 pod(s)"),
            "the message names the ready count: {message}"
        );
        ensure!(
            p.status
                .as_ref()
                .and_then(|st| st.current_revision.as_deref())
                == Some(&serving),
            "still the revision that served"
        );
        let events: Api<k8s_openapi::api::events::v1::Event> = s.ns.api();
        let warned = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("hello"))
            .any(|e| {
                e.reason.as_deref() == Some("PodsNotReady") && e.type_.as_deref() == Some("Warning")
            });
        ensure!(
            warned,
            "no Warning Event tells that the pods stayed unready"
        );

        // Room again: the ReplicaSet replaces the pod and the plugin is Active with no change.
        quotas.delete("no-pods", &DeleteParams::default()).await?;
        let p = wait_plugin(&plugins, "hello", "Active again", active).await?;
        ensure!(
            p.status
                .as_ref()
                .and_then(|st| st.current_revision.as_deref())
                == Some(&serving),
            "the same revision serves again"
        );
        let out = invoke(&s.client, &s.ns.name, "hello").await?;
        ensure!(out["greeting"] == "hello, airlock", "after recovery: {out}");
        Ok(())
    })
    .await
}

/// Issue 14: a Plugin in a namespace no trust policy governs is blocked for good (kstatus reads
/// Failed, as Flux's health check would), and never without a status a moment after it is created
/// (kstatus reads an object without one as Current).
#[tokio::test]
async fn a_plugin_no_policy_governs_reads_failed_in_kstatus() -> Result<()> {
    airlock_e2e::install::ensure_installed().await?;
    airlock_e2e::namespace::with_namespace("no-policy", &[], |ns| async move {
        let plugins: Api<Plugin> = ns.api();
        let plugin = json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": "orphan"},
            "spec": {
                "version": "1.0.0",
                "image": images_env("AIRLOCK_HELLO_IMAGE")?,
                "bundle": {"source": {"configMapRef": {"name": "orphan-bundle"}}},
                "pluginApiVersion": 1,
                "hooks": [{"name": "transform"}],
            }
        });
        airlock_e2e::plugins::apply(&plugins, &plugin).await?;
        let p = wait_plugin(&plugins, "orphan", "a status", seen_by_operator).await?;
        let verdict = kstatus::of(&p)?;
        ensure!(
            verdict.0 != "Current",
            "kstatus reads the Plugin's first status as {verdict:?}: {:?}",
            p.status
        );
        let p = wait_plugin(
            &plugins,
            "orphan",
            "Ready=False reason NoTrustPolicy",
            |p| condition(p, "Ready").is_some_and(|c| c.reason == "NoTrustPolicy"),
        )
        .await?;
        ensure_phase(&p, PluginPhase::Failed, "nothing may run here")?;
        kstatus::expect("NoTrustPolicy", &p, "Failed")?;
        Ok(())
    })
    .await
}

/// Issue 14: a PluginTrustPolicy's status says what it governs (namespaces, Plugins, keys) and is
/// kstatus-correct: Current when its keys read, Failed (Stalled, naming the field) when one does
/// not. The bad policy governs no namespace, so no other test is disturbed.
#[tokio::test]
async fn a_trust_policy_reports_what_it_governs_and_a_bad_key() -> Result<()> {
    in_sandbox("policy-status", async |s: &Sandbox| {
        s.apply(&s.hello("hello")?).await?;
        wait_plugin(&s.ns.api(), "hello", "phase Active", active).await?;
        let policies: Api<airlock_crds::PluginTrustPolicy> = Api::all(s.client.clone());
        let governing = wait::until(
            "the sandbox policy's status to count its namespace and Plugin",
            airlock_e2e::WAIT,
            async || Ok(policies.get(&s.policy).await?),
            |p| {
                p.status.as_ref().is_some_and(|st| {
                    st.namespaces == Some(1)
                        && st.plugins == Some(1)
                        && st.observed_generation == p.metadata.generation
                })
            },
        )
        .await?;
        kstatus::expect("a trust policy whose keys read", &governing, "Current")?;

        let bad = format!("{}-bad-key", s.policy);
        let body = json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "PluginTrustPolicy",
            "metadata": {"name": bad},
            "spec": {
                "keys": [{"name": "typo", "ed25519": "bm90IGEga2V5", "trustLevel": "Trusted"}],
                "namespaces": {"matchLabels": {"airlock.dev/e2e-nothing": "selected"}},
            }
        });
        policies
            .patch(
                &bad,
                &kube::api::PatchParams::apply("airlock-e2e").force(),
                &kube::api::Patch::Apply(&body),
            )
            .await?;
        let checked = wait::until(
            "the bad key's policy to be Stalled",
            airlock_e2e::WAIT,
            async || Ok(policies.get(&bad).await?),
            |p| {
                p.status.as_ref().is_some_and(|st| {
                    st.conditions
                        .iter()
                        .any(|c| c.type_ == "Stalled" && c.status == "True")
                })
            },
        )
        .await;
        let deleted = policies.delete(&bad, &DeleteParams::default()).await;
        let p = checked?;
        deleted?;
        let ready = p
            .status
            .as_ref()
            .and_then(|st| st.conditions.iter().find(|c| c.type_ == "Ready"))
            .context("Ready condition")?;
        ensure!(
            ready.reason == "InvalidKey" && ready.message.contains("spec.keys[0].ed25519"),
            "the condition names the field: {ready:?}"
        );
        kstatus::expect("a trust policy with a key that does not read", &p, "Failed")?;
        Ok(())
    })
    .await
}
