//! A namespace editor cannot take over an object of its namespace by naming a Plugin like it
//! (issue 12, point 3). The operator applies a Plugin's children with force and a controller owner
//! reference; a Plugin `victim` would have replaced the pod selector of the NetworkPolicy `victim`
//! and, once deleted, taken the policy with it. Now nothing of such a Plugin is applied, its status
//! names the object and what to do, and the policy is left exactly as its owner made it — while a
//! correctly named Plugin next to it runs as usual.
//!
//! The tenant is a ServiceAccount bound to the built-in `edit` ClusterRole in the sandbox only
//! (`airlock_e2e::tenant`): it can create Plugins through the chart's `airlock-plugin-editor`,
//! which `rbac.aggregateToEdit` (default true) aggregates into `edit`.

use std::time::Duration;

use airlock_crds::Plugin;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};

use airlock_e2e::plugins::{self, active, condition, wait_plugin};
use airlock_e2e::sandbox::{self, Sandbox};
use airlock_e2e::tenant::Tenant;
use airlock_e2e::wait;

const VICTIM: &str = "victim";

/// The namespace's deny-all-ingress policy, as its tenant writes it: no owner, no labels.
fn deny_all_ingress() -> Result<NetworkPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": VICTIM},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }))?)
}

/// Fails unless the policy is still the tenant's, as it was made: selecting every pod, owned by
/// nobody.
async fn ensure_untouched(policies: &Api<NetworkPolicy>, when: &str) -> Result<()> {
    let np = policies
        .get_opt(VICTIM)
        .await?
        .with_context(|| format!("{when}: the NetworkPolicy {VICTIM} is gone"))?;
    let selector = serde_json::to_value(&np.spec)?["podSelector"].clone();
    ensure!(
        selector == json!({}),
        "{when}: the pod selector was replaced: {selector}"
    );
    ensure!(
        np.metadata
            .owner_references
            .as_deref()
            .unwrap_or_default()
            .is_empty(),
        "{when}: the policy got owners: {:?}",
        np.metadata.owner_references
    );
    Ok(())
}

#[tokio::test]
async fn a_plugin_named_like_a_tenants_network_policy_does_not_take_it_over() -> Result<()> {
    sandbox::in_sandbox("takeover", &["log"], async |s: &Sandbox| {
        s.with_hello_bundle().await?;
        takeover(s).await
    })
    .await
}

async fn takeover(s: &Sandbox) -> Result<()> {
    let tenant = Tenant::of(s).await?;
    // The client really is the tenant: `edit` (with Airlock's aggregation) reaches no trust policy.
    ensure!(
        !tenant
            .may("create", "airlock.dev", "plugintrustpolicies")
            .await?,
        "{} may create trust policies: is the client impersonating?",
        tenant.user
    );
    let ns = s.ns();

    // As the tenant: its own deny-all policy, then a Plugin named like it, and a well-named one.
    let policies: Api<NetworkPolicy> = tenant.api();
    policies
        .create(&PostParams::default(), &deny_all_ingress()?)
        .await
        .context("creating the NetworkPolicy as the tenant")?;
    let tenant_plugins: Api<Plugin> = tenant.api();
    plugins::apply(&tenant_plugins, &s.hello(VICTIM)?).await?;
    plugins::apply(&tenant_plugins, &s.hello("hello")?).await?;

    // The operator refuses and says which object is in the way and what to do.
    let watched: Api<Plugin> = s.ns.api();
    let names_it = format!("NetworkPolicy {ns}/{VICTIM}");
    let p = wait_plugin(
        &watched,
        VICTIM,
        "Ready=False ObjectNotOwned naming the NetworkPolicy",
        |p| {
            condition(p, "Ready").is_some_and(|c| {
                c.status == "False" && c.reason == "ObjectNotOwned" && c.message.contains(&names_it)
            })
        },
    )
    .await?;
    let message = &condition(&p, "Ready").context("Ready")?.message;
    ensure!(
        message.contains(&format!(
            "rename the Plugin or delete/rename the existing NetworkPolicy {VICTIM} if it is not in use"
        )),
        "the message says what to do: {message}"
    );
    ensure_untouched(&policies, "after the refusal").await?;

    // Nothing of the Plugin was applied, not only the policy: no half-built workload.
    let leftovers = [
        s.ns.api::<Deployment>().get_opt(VICTIM).await?.is_some(),
        s.ns.api::<Service>().get_opt(VICTIM).await?.is_some(),
        s.ns.api::<ServiceAccount>()
            .get_opt(VICTIM)
            .await?
            .is_some(),
        s.ns.api::<Secret>()
            .get_opt(&format!("{VICTIM}-tls"))
            .await?
            .is_some(),
    ];
    ensure!(
        leftovers.iter().all(|l| !l),
        "children of the refused Plugin exist (deployment, service, sa, tls secret): {leftovers:?}"
    );

    // The refusal is told like any other: a Warning Event on the Plugin.
    wait::found(
        "a Warning Event ObjectNotOwned on the Plugin",
        Duration::from_secs(30),
        async || {
            let events = s.ns.api::<Event>().list(&ListParams::default()).await?;
            Ok(events.items.into_iter().find(|e| {
                e.reason.as_deref() == Some("ObjectNotOwned")
                    && e.type_.as_deref() == Some("Warning")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(VICTIM)
            }))
        },
    )
    .await?;

    // Meanwhile the correctly named Plugin of the same tenant runs.
    wait_plugin(&watched, "hello", "phase Active", active).await?;
    ensure_untouched(&policies, "after the other Plugin became Active").await?;

    // Deleting the refused Plugin (as the tenant) takes nothing of the tenant's with it.
    tenant_plugins
        .delete(VICTIM, &DeleteParams::default())
        .await
        .context("deleting the Plugin as the tenant")?;
    wait::until(
        "the Plugin victim to be gone",
        airlock_e2e::WAIT,
        async || Ok(watched.get_opt(VICTIM).await?.is_some()),
        |exists| !exists,
    )
    .await?;
    // The garbage collector acts on what the deleted Plugin owned within seconds: give it time.
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure_untouched(&policies, "after the Plugin was deleted").await?;
    let hello: Value = serde_json::to_value(watched.get("hello").await?)?;
    ensure!(
        hello["status"]["phase"] == "Active",
        "the other Plugin still runs: {}",
        hello["status"]
    );
    Ok(())
}
