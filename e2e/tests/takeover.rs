//! A namespace editor cannot take over an object of its namespace by naming a Plugin like it
//! (issue 12, point 3). The operator applies a Plugin's children with force and a controller owner
//! reference; a Plugin `victim` would have replaced the pod selector of the NetworkPolicy `victim`
//! and, once deleted, taken the policy with it. Now nothing of such a Plugin is applied, its status
//! names the object and what to do, and the policy is left exactly as its owner made it — while a
//! correctly named Plugin next to it runs as usual.
//!
//! The same for Secrets, which the operator may not even read outside its namespace: the API
//! server's admission policy refuses its write to a Secret that is not the Plugin's, and a stolen
//! operator token reads no Secret of a tenant (issue 12, point 7).
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
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use airlock_e2e::plugins::{self, active, condition, wait_plugin};
use airlock_e2e::sandbox::{self, Sandbox};
use airlock_e2e::tenant::{Tenant, impersonating};
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
    cannot_widen_plugin_network(&tenant).await
}

/// The tenant cannot open its plugins' network beyond the trust policy (the chart's admission
/// policies `airlock-plugin-network` and `airlock-plugin-pods`): NetworkPolicies add up, so a policy allowing all egress
/// for every pod, or a plugin pod without its `airlock.dev/` labels (its own policy then no
/// longer selects it), would. Before the policy both were accepted for anyone with `edit`.
async fn cannot_widen_plugin_network(tenant: &Tenant) -> Result<()> {
    let policies: Api<NetworkPolicy> = tenant.api();
    let open_egress = |name: &str, pod_selector: Value| -> Result<NetworkPolicy> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name},
            "spec": {"podSelector": pod_selector, "policyTypes": ["Egress"], "egress": [{}]},
        }))?)
    };
    let refused = policies
        .create(
            &PostParams::default(),
            &open_egress("allow-all-egress", json!({}))?,
        )
        .await;
    refused_by(
        refused,
        &["airlock-plugin-network", "operator: DoesNotExist"],
        "a tenant's policy opening all egress for the plugin pods",
    )?;
    // The same policy that leaves plugin pods out is the tenant's business.
    policies
        .create(
            &PostParams::default(),
            &open_egress(
                "allow-all-egress",
                json!({"matchExpressions": [{"key": "airlock.dev/plugin", "operator": "DoesNotExist"}]}),
            )?,
        )
        .await
        .context("an egress policy excluding plugin pods is accepted")?;

    let pods: Api<k8s_openapi::api::core::v1::Pod> = tenant.api();
    let pod = pods
        .list(&ListParams::default().labels("airlock.dev/plugin=hello"))
        .await?
        .items
        .into_iter()
        .next()
        .context("hello's pod")?;
    let pod_name = pod.metadata.name.clone().unwrap_or_default();
    let unlabelled = pods
        .patch(
            &pod_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"airlock.dev/plugin": null}}})),
        )
        .await;
    refused_by(
        unlabelled,
        &["airlock-plugin-pods", "cannot be added, changed or removed"],
        "taking the plugin label off a plugin pod",
    )?;
    // Other labels stay the tenant's to set.
    pods.patch(
        &pod_name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "blue"}}})),
    )
    .await
    .context("a label of the tenant's own on a plugin pod is accepted")?;
    cannot_replace_plugin_code(tenant, &pod_name).await
}

/// Fails unless `result` is a refusal (403) whose message names each of `needles` (the admission
/// policy first, then what the message must tell).
fn refused_by<T: std::fmt::Debug>(
    result: kube::Result<T>,
    needles: &[&str],
    what: &str,
) -> Result<()> {
    match result {
        Err(kube::Error::Api(e))
            if e.code == 403 && needles.iter().all(|n| e.message.contains(n)) =>
        {
            Ok(())
        }
        other => anyhow::bail!("{what} must be refused, naming {needles:?}: {other:?}"),
    }
}

/// The tenant cannot make its own code serve the plugin's calls (its pods would pass the router's
/// check: the tenant can read the plugin's TLS Secret): no pod of its own gets the plugin label,
/// a plugin pod's image cannot be changed, no other kind of workload gets labelled pods made by
/// its controller, and the plugin's Service and NetworkPolicy are the operator's alone. Scaling
/// the Plugin stays the tenant's. Before the admission policies each of these was accepted.
async fn cannot_replace_plugin_code(tenant: &Tenant, plugin_pod: &str) -> Result<()> {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Pod;
    let pods: Api<Pod> = tenant.api();
    let own: Pod = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "impostor"},
        "spec": {"containers": [{"name": "c", "image": "198.19.255.1:5000/examples/hello:1.0.0",
            "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]},
    }))?;
    pods.create(&PostParams::default(), &own)
        .await
        .context("the tenant creates a pod of its own")?;
    refused_by(
        pods.patch(
            "impostor",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"airlock.dev/plugin": "hello"}}})),
        )
        .await,
        &["airlock-plugin-pods"],
        "labelling a pod of the tenant's as the plugin's",
    )?;
    refused_by(
        pods.patch(
            plugin_pod,
            &PatchParams::default(),
            &Patch::Strategic(json!({"spec": {"containers": [{"name": "plugin", "image": "198.19.255.1:5000/examples/hello:broken"}]}})),
        )
        .await,
        &["airlock-plugin-pods"],
        "changing the plugin pod's image",
    )?;

    // A StatefulSet with the plugin label: its controller may not make the pod.
    let sets: Api<StatefulSet> = tenant.api();
    let labels = json!({"airlock.dev/plugin": "hello"});
    let set: StatefulSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "impostor-set"},
        "spec": {"replicas": 1, "serviceName": "hello", "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels}, "spec": own.spec}},
    }))?;
    sets.create(&PostParams::default(), &set)
        .await
        .context("the tenant creates a StatefulSet")?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let made = pods
        .get_opt("impostor-set-0")
        .await?
        .map(|p| p.metadata.name);
    ensure!(
        made.is_none(),
        "the StatefulSet controller made a pod with the plugin label: {made:?}"
    );

    let services: Api<Service> = tenant.api();
    refused_by(
        services
            .patch(
                "hello",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"selector": {"airlock.dev/plugin": "impostor"}}})),
            )
            .await,
        &["airlock-plugin-objects"],
        "changing the plugin Service's selector",
    )?;
    let policies: Api<NetworkPolicy> = tenant.api();
    refused_by(
        policies.delete("hello", &DeleteParams::default()).await,
        &["airlock-plugin-objects"],
        "deleting the plugin's NetworkPolicy",
    )?;
    // Scaling is the tenant's (the scale subresource, through `edit`).
    tenant
        .api::<Plugin>()
        .patch_scale(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .context("the tenant scales its Plugin")?;
    Ok(())
}

/// The Secret a tenant made, named like the TLS Secret of its Plugin `sec`.
const SECRET_PLUGIN: &str = "sec";
const TENANT_SECRET_VALUE: &str = "tenant-only-value";

#[tokio::test]
async fn the_operator_reads_no_tenant_secret_and_takes_none_over() -> Result<()> {
    sandbox::in_sandbox("secrets", &["log"], async |s: &Sandbox| {
        s.with_hello_bundle().await?;
        secrets(s).await
    })
    .await
}

async fn secrets(s: &Sandbox) -> Result<()> {
    let tenant = Tenant::of(s).await?;
    let ns = s.ns();
    let name = format!("{SECRET_PLUGIN}-tls");
    let theirs: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": name},
        "stringData": {"token": TENANT_SECRET_VALUE},
    }))?;
    let tenant_secrets: Api<Secret> = tenant.api();
    tenant_secrets
        .create(&PostParams::default(), &theirs)
        .await
        .context("creating the Secret as the tenant")?;
    let original = tenant_secrets.get(&name).await?;
    let tenant_plugins: Api<Plugin> = tenant.api();
    plugins::apply(&tenant_plugins, &s.hello(SECRET_PLUGIN)?).await?;
    plugins::apply(&tenant_plugins, &s.hello("hello")?).await?;

    // The write was refused by the API server, and the Plugin names the Secret.
    let watched: Api<Plugin> = s.ns.api();
    let names_it = format!("Secret {ns}/{name} already exists");
    wait_plugin(
        &watched,
        SECRET_PLUGIN,
        "Ready=False ObjectNotOwned naming the Secret",
        |p| {
            condition(p, "Ready").is_some_and(|c| {
                c.status == "False" && c.reason == "ObjectNotOwned" && c.message.contains(&names_it)
            })
        },
    )
    .await?;
    let now = tenant_secrets.get(&name).await?;
    ensure!(
        now.data == original.data && now.metadata.owner_references.is_none(),
        "the tenant's Secret is untouched: owners {:?}",
        now.metadata.owner_references
    );
    ensure!(
        watched
            .get_opt(SECRET_PLUGIN)
            .await?
            .is_some_and(|p| airlock_e2e::plugins::seen_by_operator(&p)
                && p.status.is_some_and(|st| st.current_revision.is_none())),
        "nothing of the refused Plugin rolled out"
    );
    ensure!(
        s.ns.api::<Deployment>()
            .get_opt(SECRET_PLUGIN)
            .await?
            .is_none(),
        "no Deployment of the refused Plugin"
    );
    // The operator's own writes pass the same policy: the other Plugin runs.
    wait_plugin(&watched, "hello", "phase Active", active).await?;

    // What a stolen operator token could do with the tenant's Secrets: nothing.
    let operator = impersonating(&format!(
        "system:serviceaccount:{}:airlock-operator",
        airlock_e2e::install::NAMESPACE
    ))
    .await?;
    let as_operator: Api<Secret> = Api::namespaced(operator, ns);
    let read = as_operator.get(&name).await;
    ensure!(
        matches!(&read, Err(kube::Error::Api(e)) if e.code == 403),
        "the operator may not read a tenant's Secret: {:?}",
        read.map(|s| s.metadata.name)
    );
    let listed = as_operator.list(&ListParams::default()).await;
    ensure!(
        matches!(&listed, Err(kube::Error::Api(e)) if e.code == 403),
        "the operator may not list a tenant's Secrets"
    );
    // A patch answers with the whole object: a no-op one would read it. Refused, with nothing
    // of the Secret in the answer.
    let patched = as_operator
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"probe": "x"}}})),
        )
        .await;
    match patched {
        Err(kube::Error::Api(e)) => ensure!(
            e.code == 403
                && e.message.contains("airlock-operator-secrets")
                && !e.message.contains(TENANT_SECRET_VALUE),
            "refused by the admission policy, without the Secret's content: {e:?}"
        ),
        other => anyhow::bail!(
            "the operator patched a tenant's Secret: {:?}",
            other.map(|s| s.metadata.name)
        ),
    }

    // The tenant removes its Secret: the Plugin gets its own identity and runs.
    tenant_secrets
        .delete(&name, &DeleteParams::default())
        .await
        .context("deleting the Secret as the tenant")?;
    wait_plugin(&watched, SECRET_PLUGIN, "phase Active", active).await?;
    Ok(())
}

/// Issue 13's stopped plugins lose their NetworkPolicy once their pods are gone; a tenant with
/// `edit` must not give a plugin pods behind the operator's back. Scaling the plugin's Deployment
/// or ReplicaSet through their `scale` subresource (what `kubectl scale deploy/…` does, and
/// `edit` allows) is refused by the chart's admission policy `airlock-plugin-scale`; the Plugin's
/// own scale subresource stays the way.
#[tokio::test]
async fn a_tenant_cannot_scale_a_plugins_deployment_or_replica_set() -> Result<()> {
    sandbox::in_sandbox("scale-attack", &["log"], async |s: &Sandbox| {
        s.with_hello_bundle().await?;
        let tenant = Tenant::of(s).await?;
        let tenant_plugins: Api<Plugin> = tenant.api();
        plugins::apply(&tenant_plugins, &s.hello("hello")?).await?;
        wait_plugin(&s.ns.api(), "hello", "phase Active", active).await?;
        let scale = Patch::Merge(json!({"spec": {"replicas": 3}}));
        let deployments: Api<Deployment> = tenant.api();
        let refused = deployments
            .patch_scale("hello", &PatchParams::default(), &scale)
            .await
            .err()
            .context("the tenant scaled the plugin's Deployment")?;
        ensure!(
            refused.to_string().contains("airlock-plugin-scale"),
            "refused, but not by the policy: {refused}"
        );
        let sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = s.ns.api();
        let set = sets
            .list(&ListParams::default().labels("airlock.dev/plugin=hello"))
            .await?
            .items
            .into_iter()
            .next()
            .context("the plugin's ReplicaSet")?;
        let name = set.metadata.name.clone().unwrap_or_default();
        let tenant_sets: Api<k8s_openapi::api::apps::v1::ReplicaSet> = tenant.api();
        let refused = tenant_sets
            .patch_scale(&name, &PatchParams::default(), &scale)
            .await
            .err()
            .context("the tenant scaled the plugin's ReplicaSet")?;
        ensure!(
            refused.to_string().contains("airlock-plugin-scale"),
            "refused, but not by the policy: {refused}"
        );
        // The way that works: the Plugin's own scale subresource.
        tenant_plugins
            .patch_scale("hello", &PatchParams::default(), &scale)
            .await
            .context("scaling the Plugin as the tenant")?;
        Ok(())
    })
    .await
}

/// Issue 14: the router's records live in status, which a tenant with `edit` cannot write. It
/// cannot forge a PluginStorage's live data (another plugin's state a plugin trusts), nor clear
/// or forge an auto-disable; it re-enables its plugin the declared way, a new `spec.reEnable`.
#[tokio::test]
async fn a_tenant_cannot_write_what_the_router_records_in_status() -> Result<()> {
    sandbox::in_sandbox("status-attack", &["log"], async |s: &Sandbox| {
        s.with_hello_bundle().await?;
        let tenant = Tenant::of(s).await?;
        let tenant_plugins: Api<Plugin> = tenant.api();
        plugins::apply(&tenant_plugins, &s.hello("hello")?).await?;
        let admin: Api<Plugin> = s.ns.api();
        wait_plugin(&admin, "hello", "phase Active", active).await?;
        plugins::auto_disable(
            &admin,
            "hello",
            "5 consecutive timeouts (written by the e2e)",
        )
        .await?;
        wait_plugin(&admin, "hello", "auto-disabled", |p| {
            p.auto_disabled().is_some() && !active(p)
        })
        .await?;
        let clear = Patch::Merge(json!({"status": {"autoDisabled": null}}));
        let refused = tenant_plugins
            .patch_status("hello", &PatchParams::default(), &clear)
            .await
            .err()
            .context("the tenant cleared status.autoDisabled")?;
        ensure!(
            matches!(&refused, kube::Error::Api(e) if e.code == 403),
            "refused, but not as forbidden: {refused}"
        );
        // The tenant seeds its plugin's storage (the spec), but cannot write the live data.
        let storages: Api<airlock_crds::PluginStorage> = tenant.api();
        storages
            .patch(
                "hello",
                &PatchParams::apply("tenant-gitops").force(),
                &Patch::Apply(json!({
                    "apiVersion": "airlock.dev/v1alpha1", "kind": "PluginStorage",
                    "metadata": {"name": "hello"},
                    "spec": {"entries": {"greeting": "\"seeded by the tenant\""}},
                })),
            )
            .await
            .context("the tenant seeding its plugin's storage")?;
        let forged = Patch::Merge(json!({"status": {"entries": {"owner": "\"tenant\""}}}));
        let refused = storages
            .patch_status("hello", &PatchParams::default(), &forged)
            .await
            .err()
            .context("the tenant wrote a PluginStorage's live data")?;
        ensure!(
            matches!(&refused, kube::Error::Api(e) if e.code == 403),
            "refused, but not as forbidden: {refused}"
        );
        // The declared way works for the tenant.
        plugins::re_enable(&tenant_plugins, "hello", "2026-12-01").await?;
        Ok(())
    })
    .await
}

/// A Plugin's shard label picks the release that verifies and runs it (issue 15, shards). A
/// tenant who could move a running Plugin to a shard no release serves (or serves without
/// looking at it yet) would take it out of every operator's sight: a later revocation would stop
/// nothing. The chart's `<fullname>-plugin-shard` admission policy fixes the label at creation:
/// it cannot be added, changed or removed by the tenant, nor created empty; an admin may.
#[tokio::test]
async fn a_tenant_cannot_move_a_plugin_to_another_shard() -> Result<()> {
    sandbox::in_sandbox("shard-move", &["log"], async |s: &Sandbox| {
        s.with_hello_bundle().await?;
        let tenant = Tenant::of(s).await?;
        let tenant_plugins: Api<Plugin> = tenant.api();
        plugins::apply(&tenant_plugins, &s.hello("hello")?).await?;
        let refused = |what: &str, answer: Result<Plugin, kube::Error>| -> Result<()> {
            match answer {
                Err(kube::Error::Api(e))
                    if e.code == 403 && e.message.contains("airlock.dev/shard") =>
                {
                    Ok(())
                }
                other => anyhow::bail!(
                    "{what}: expected a refusal naming airlock.dev/shard, got {other:?}"
                ),
            }
        };
        for (what, labels) in [
            (
                "moving it to a shard",
                json!({"airlock.dev/shard": "canary"}),
            ),
            (
                "moving it to a shard nobody serves",
                json!({"airlock.dev/shard": ""}),
            ),
        ] {
            let answer = tenant_plugins
                .patch(
                    "hello",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": labels}})),
                )
                .await;
            refused(what, answer)?;
        }
        let mut empty = s.hello("empty-shard")?;
        empty["metadata"]["labels"] = json!({"airlock.dev/shard": ""});
        let answer = tenant_plugins
            .create(&PostParams::default(), &serde_json::from_value(empty)?)
            .await;
        refused("creating a Plugin with an empty shard", answer)?;

        // Created in a shard, it stays there: the label cannot be removed either.
        let mut canary = s.hello("canary")?;
        canary["metadata"]["labels"] = json!({"airlock.dev/shard": "canary"});
        tenant_plugins
            .create(&PostParams::default(), &serde_json::from_value(canary)?)
            .await
            .context("creating a Plugin in shard canary as the tenant")?;
        let answer = tenant_plugins
            .patch(
                "canary",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"airlock.dev/shard": null}}})),
            )
            .await;
        refused("taking a Plugin out of its shard", answer)?;

        // Other labels stay the tenant's to change; an admin may still move a Plugin.
        tenant_plugins
            .patch(
                "hello",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"team": "a"}}})),
            )
            .await
            .context("another label, as the tenant")?;
        s.ns.api::<Plugin>()
            .patch(
                "canary",
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {"airlock.dev/shard": null}}})),
            )
            .await
            .context("an admin moves the Plugin")?;
        Ok(())
    })
    .await
}
