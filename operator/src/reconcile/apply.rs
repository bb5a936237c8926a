//! The apply step: server-side apply of the children a planned revision needs (only when the
//! desired state or the object changed since this process applied it), rollback of a revision
//! that missed its progress deadline to the last good one, and quarantine of a revision whose
//! signer was revoked. Desired objects come from the pure builders in [`crate::build`].
//!
//! Applies are forced and set a controller owner reference, so they must only ever land on this
//! Plugin's own objects: [`super::ownership`] runs before [`roll_out`] and lets it run only when
//! every object it writes is absent or this Plugin's.

use std::sync::Arc;

use airlock_core::names;
use airlock_crds::Plugin;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{info, warn};

use super::watches::Watches;
use super::{Context, Error, certificates};
use crate::applied::{self, Fingerprint};
use crate::build::{self, FIELD_MANAGER};
use crate::ownership::{Ownership, ownership};
use crate::running::Stop;
use crate::status;
use crate::stopped::{self, Network};
use airlock_crds::plugin::RevisionRecord;

/// Scales the Plugin's own Deployment to zero (`why` is logged): a plugin signed by a revoked key
/// must not keep running, nor one switched off while no rollout can set its replicas (its spec
/// fails to fetch or verify). The next revision the normal path applies brings replicas back.
pub(super) async fn quarantine(
    plugin: &Plugin,
    ctx: &Context,
    watches: &Watches,
    why: &'static str,
) -> Result<(), Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let name = names::child_name(&plugin.name_any());
    let r = ObjectRef::<Deployment>::new(&name).within(&ns);
    let uid = plugin.uid().unwrap_or_default();
    let api = Api::<Deployment>::namespaced(ctx.client.clone(), &ns);
    // Not in the cache: read it. The cache holds this shard's children only, and children still
    // labelled for another shard (a Plugin an admin moved, whose new release has not rolled it
    // out yet) must stop too: a stop never trusts a cache miss.
    let deployment = match watches.deployments.get(&r) {
        Some(d) => Some((*d).clone()),
        None => api.get_opt(&name).await?,
    };
    // Only this Plugin's own Deployment: a Deployment of that name someone else made is not ours
    // to scale (the watch sees any that carries Airlock's labels).
    let own = deployment
        .filter(|d| ownership(Some(d.meta()), &plugin.name_any(), &uid) == Ownership::Ours);
    let running = own
        .as_ref()
        .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas))
        .is_some_and(|n| n > 0);
    if let (true, Some(own)) = (running, own) {
        warn!(plugin = %plugin.name_any(), "{why}: scaling the plugin to zero");
        // Only the Deployment just judged (its uid), not one re-created under the name since.
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"uid": own.uid()}, "spec": {"replicas": 0}})),
        )
        .await?;
    }
    Ok(())
}

/// Whether a recorded revision may run under today's policies ([`crate::running::check`]).
pub(super) type Judge<'a> = &'a (dyn Fn(&RevisionRecord) -> Option<Stop> + Sync);

/// Stops the pods of `revision` while another revision rolls out: its ReplicaSets that the
/// Plugin's own Deployment controls are scaled to zero. The Deployment controller never scales an
/// old ReplicaSet up again (with `maxUnavailable: 0` it would otherwise keep its pods until the
/// new revision is ready).
pub(super) async fn stop_revision(
    plugin: &Plugin,
    revision: &str,
    ctx: &Context,
    watches: &Watches,
) -> Result<(), Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let Some(deployment_uid) = own_deployment_uid(plugin, &ns, watches) else {
        return Ok(());
    };
    let api = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns);
    let selector = revision_selector(plugin, revision);
    for rs in api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let running = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0;
        if running && controlled_by(&rs, &deployment_uid) {
            warn!(plugin = %plugin.name_any(), %revision, "stopping the pods of a revision that may not run any more");
            api.patch(
                &rs.name_any(),
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await?;
        }
    }
    Ok(())
}

/// Whether a rollout of `plugin` writes children: it runs, or it ran (its Deployment is kept).
pub(super) fn writes_children(plugin: &Plugin, watches: &Watches) -> bool {
    plugin.should_run()
        || plugin
            .namespace()
            .is_some_and(|ns| own_deployment_uid(plugin, &ns, watches).is_some())
}

/// The Plugin's own Deployment, from the watch cache.
fn own_deployment(plugin: &Plugin, ns: &str, watches: &Watches) -> Option<Arc<Deployment>> {
    let name = names::child_name(&plugin.name_any());
    let uid = plugin.uid().unwrap_or_default();
    watches
        .deployments
        .get(&ObjectRef::<Deployment>::new(&name).within(ns))
        .filter(|d| ownership(Some(d.meta()), &plugin.name_any(), &uid) == Ownership::Ours)
}

/// The uid of the Plugin's own Deployment, from the watch cache.
fn own_deployment_uid(plugin: &Plugin, ns: &str, watches: &Watches) -> Option<String> {
    own_deployment(plugin, ns, watches).and_then(|d| d.uid())
}

/// Whether the Plugin's own Deployment (watch cache) asks for pods, which serve with the
/// certificate of its TLS Secret. Its plugin label counts too: only the operator can make a
/// Deployment with it (the chart's admission policy `plugin-workloads`).
pub(super) fn asks_for_pods(plugin: &Plugin, watches: &Watches) -> bool {
    plugin
        .namespace()
        .and_then(|ns| own_deployment(plugin, &ns, watches))
        .filter(|d| d.labels().get(names::PLUGIN_LABEL) == Some(&plugin.name_any()))
        .is_some_and(|d| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1) > 0)
}

/// The label selector of `revision`'s ReplicaSets.
fn revision_selector(plugin: &Plugin, revision: &str) -> String {
    format!(
        "{}={},{}={revision}",
        names::PLUGIN_LABEL,
        plugin.name_any(),
        names::REVISION_LABEL
    )
}

/// Applies the planned revision, unless it already failed once; a revision that misses its
/// progress deadline is replaced by the last good one, if that one may still run.
pub(super) async fn roll_out(
    plugin: &Plugin,
    rollout: &build::Rollout,
    ctx: &Context,
    watches: &Watches,
    judge: Judge<'_>,
) -> Result<status::Rollout, Error> {
    let prev = plugin.status.clone().unwrap_or_default();
    let good = prev.last_good_revision.filter(|g| g != &rollout.revision);
    // Only for a plugin that runs: a stopped one goes through `apply_children`, which keeps it
    // at zero (and re-enabling brings its network objects back before its pods).
    if let Some(good) = &good
        && plugin.should_run()
        && prev.failed_revision.as_deref() == Some(rollout.revision.as_str())
        && let Ok(back) = rollback(plugin, rollout, good, ctx, watches, judge).await?
    {
        return Ok(back);
    }
    // The plugin's identity before the pods that mount it (a rollback above sees to its own).
    certificates::ensure_identity(plugin, ctx, watches).await?;
    let mut applied = apply_children(plugin, rollout, ctx, watches).await?;
    if applied.deadline_exceeded
        && let Some(good) = &good
    {
        match rollback(plugin, rollout, good, ctx, watches, judge).await? {
            Ok(back) => {
                warn!(failed = %rollout.revision, %good, "rolled back");
                return Ok(back);
            }
            Err(why) => applied.no_rollback = Some(why),
        }
    }
    Ok(applied)
}

/// Re-applies the Deployment with the pod template of `good`, or says why not. Only a template
/// the Deployment controller made from this Plugin's own Deployment goes back into service: a
/// ReplicaSet controlled by that Deployment (by uid) whose template has the digest recorded when
/// `good` was Ready — a ReplicaSet a tenant wrote, labels and owner reference included, has
/// another template. And only when `good`'s record passes today's policies: a revoked or
/// no-longer-allowed revision never comes back.
async fn rollback(
    plugin: &Plugin,
    failed: &build::Rollout,
    good: &str,
    ctx: &Context,
    watches: &Watches,
    judge: Judge<'_>,
) -> Result<Result<status::Rollout, String>, Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let record = plugin
        .status
        .iter()
        .flat_map(|s| s.revisions.iter())
        .find(|r| r.revision == good);
    let Some(record) = record else {
        return Ok(Err(format!(
            "no record of revision {good} (it became ready under an older Airlock); nothing was rolled back"
        )));
    };
    if let Some(stop) = judge(record) {
        return Ok(Err(format!(
            "revision {good} was not rolled back to: {}",
            stop.message
        )));
    }
    let Some(digest) = &record.template_digest else {
        return Ok(Err(format!(
            "the pod template of revision {good} was not recorded; nothing was rolled back"
        )));
    };
    let Some(deployment_uid) = own_deployment_uid(plugin, &ns, watches) else {
        return Ok(Err("the Plugin's Deployment is not known yet".into()));
    };
    let selector = revision_selector(plugin, good);
    let sets = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await?;
    let template = sets
        .items
        .into_iter()
        .filter(|rs| controlled_by(rs, &deployment_uid))
        .filter_map(|rs| rs.spec.and_then(|s| s.template))
        .find(|t| &crate::running::template_digest(t) == digest);
    let Some(template) = template else {
        return Ok(Err(format!(
            "no ReplicaSet of the Plugin's Deployment has revision {good}'s recorded pod template (it was deleted, or changed); nothing was rolled back"
        )));
    };
    // The pods of `good` start confined and reachable: a stopped plugin's NetworkPolicy and
    // Service were removed (crate::stopped), and its certificate not renewed meanwhile.
    certificates::ensure_identity(plugin, ctx, watches).await?;
    certificates::hourly_checks(plugin, ctx).await?;
    ensure_network(plugin, failed, ctx, watches).await?;
    let current = build::deployment::deployment(plugin, failed, &ctx.build);
    let deploy = build::deployment::rolled_back(current, template, good);
    let mut observed = ensure_deployment(plugin, &deploy, ctx, watches, good).await?;
    observed.rolled_back_from = Some(failed.revision.clone());
    Ok(Ok(observed))
}

/// Whether `rs`'s controller is the object with `uid`.
fn controlled_by(rs: &ReplicaSet, uid: &str) -> bool {
    rs.metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.controller == Some(true) && o.uid == uid)
}

async fn apply_children(
    plugin: &Plugin,
    rollout: &build::Rollout,
    ctx: &Context,
    watches: &Watches,
) -> Result<status::Rollout, Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let uid = plugin.uid().unwrap_or_default();
    if !plugin.should_run() {
        certificates::hourly_checks(plugin, ctx).await?;
        return apply_stopped(plugin, rollout, ctx, watches, &ns, &uid).await;
    }
    ctx.caches.not_stopped(&uid);
    // The bundle Secret first, then the configuration: a refusal of either (someone else's
    // object of that name) leaves nothing else written. The hourly storage check goes beside the
    // Secret (it writes nothing the pods need; issue 13: each request a new Plugin waits for in
    // turn is a round trip of an API server under load); both finish, so a refused Secret does
    // not cut the check short, and the Secret's refusal is the one reported. Then what the pods
    // need around them, all at once (none needs another), and the Deployment only when all of it
    // exists.
    let (checked, secret) = tokio::join!(
        certificates::hourly_checks(plugin, ctx),
        ensure_bundle_secret(plugin, rollout, ctx, &ns)
    );
    secret?;
    checked?;
    ensure_config_map(plugin, rollout, ctx, &ns).await?;
    ensure_network(plugin, rollout, ctx, watches).await?;
    let deploy = build::deployment::deployment(plugin, rollout, &ctx.build);
    ensure_deployment(plugin, &deploy, ctx, watches, &rollout.revision).await
}

/// What the plugin's pods need around them before they start: their ServiceAccount, the
/// NetworkPolicy that confines them and the Service the router finds them through — written at
/// once (independent objects; the caller waits for all three before any pod can exist).
async fn ensure_network(
    plugin: &Plugin,
    rollout: &build::Rollout,
    ctx: &Context,
    watches: &Watches,
) -> Result<(), Error> {
    let sa = build::service_account::service_account(plugin);
    let np = build::network_policy::network_policy(plugin, rollout, &ctx.build);
    let svc = build::service::service(plugin);
    tokio::try_join!(
        ensure(plugin, &sa, ctx, &watches.service_accounts),
        ensure(plugin, &np, ctx, &watches.network_policies),
        ensure(plugin, &svc, ctx, &watches.services),
    )?;
    Ok(())
}

/// The children of a Plugin that does not run ([`crate::stopped`]): none if it never ran; else its
/// Deployment scaled to zero, and its NetworkPolicy and Service until no pod can be left.
async fn apply_stopped(
    plugin: &Plugin,
    rollout: &build::Rollout,
    ctx: &Context,
    watches: &Watches,
    ns: &str,
    uid: &str,
) -> Result<status::Rollout, Error> {
    if own_deployment_uid(plugin, ns, watches).is_none() {
        return Ok(status::Rollout::nothing_runs(&rollout.revision));
    }
    let deploy = build::deployment::deployment(plugin, rollout, &ctx.build);
    let mut observed = ensure_deployment(plugin, &deploy, ctx, watches, &rollout.revision).await?;
    let now = std::time::Instant::now();
    let since = if observed.at_zero() {
        Some(ctx.caches.stopped_since(uid, now))
    } else {
        ctx.caches.not_stopped(uid);
        None
    };
    match stopped::network(since, now) {
        Network::Remove => remove_network(plugin, ns, ctx, watches).await?,
        Network::Keep { recheck_after } => {
            // Pods may still be running: they stay confined (and reachable for their last
            // calls). Once the Deployment is at zero, only what exists is kept: an operator
            // that restarts does not re-create what a previous one removed.
            if !observed.at_zero() {
                ensure_network(plugin, rollout, ctx, watches).await?;
            }
            observed.recheck_after = recheck_after;
        }
    }
    Ok(observed)
}

/// Deletes the Plugin's own NetworkPolicy and Service (as the watch caches show them; the uid
/// precondition makes sure it is that very object).
async fn remove_network(
    plugin: &Plugin,
    ns: &str,
    ctx: &Context,
    watches: &Watches,
) -> Result<(), Error> {
    remove_own(plugin, ns, &watches.network_policies, ctx).await?;
    remove_own(plugin, ns, &watches.services, ctx).await
}

/// Deletes the Plugin's own child of kind `K` if the watch cache `store` shows one.
async fn remove_own<K>(
    plugin: &Plugin,
    ns: &str,
    store: &Store<PartialObjectMeta<K>>,
    ctx: &Context,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = names::child_name(&plugin.name_any());
    let uid = plugin.uid().unwrap_or_default();
    let Some(child_uid) = store
        .get(&ObjectRef::new(&name).within(ns))
        .filter(|o| ownership(Some(o.meta()), &plugin.name_any(), &uid) == Ownership::Ours)
        .and_then(|o| o.uid())
    else {
        return Ok(());
    };
    delete_exactly::<K>(ctx, ns, &name, child_uid).await?;
    // Whatever the (possibly lagging) watch still shows, the next ensure applies it again.
    ctx.caches.applied.forget_child(&uid, &K::kind(&()), &name);
    Ok(())
}

/// Deletes `name` if it is still the object with `uid` (gone already is fine).
async fn delete_exactly<K>(ctx: &Context, ns: &str, name: &str, uid: String) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    };
    match Api::<K>::namespaced(ctx.client.clone(), ns)
        .delete(name, &params)
        .await
    {
        Ok(_) => {
            info!(kind = %K::kind(&()), %name, namespace = ns, "removed: the plugin does not run");
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The bundle Secret of the revision: immutable and named by digest, so it is created once and
/// then only remembered (per Plugin uid: a re-created Plugin creates it again).
async fn ensure_bundle_secret(
    plugin: &Plugin,
    rollout: &build::Rollout,
    ctx: &Context,
    ns: &str,
) -> Result<(), Error> {
    let secret = build::bundle_secret::bundle_secret(plugin, rollout);
    let uid = plugin.uid().unwrap_or_default();
    let name = name_of(&secret);
    if ctx.caches.bundle_secret_known(&uid, &name) {
        return Ok(());
    }
    // Not looked at first: the operator may not read Secrets outside its namespace. The chart's
    // admission policy refuses the write unless the Secret is absent or this Plugin's.
    Api::<Secret>::namespaced(ctx.client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&secret),
        )
        .await
        .map_err(|e| Error::from_secret_write(e, plugin, ns, &name))?;
    ctx.caches.bundle_secret_exists(&uid, &name);
    Ok(())
}

/// The ConfigMap of the revision's configuration, before the pods that mount it. Created once
/// per configuration when immutable (named by digest); the live one is applied again when its
/// configuration changes. Not looked at first, like the bundle Secret: the chart's admission
/// policy refuses the write unless the ConfigMap is absent or this Plugin's.
async fn ensure_config_map(
    plugin: &Plugin,
    rollout: &build::Rollout,
    ctx: &Context,
    ns: &str,
) -> Result<(), Error> {
    let Some(config) = &rollout.config else {
        return Ok(());
    };
    let uid = plugin.uid().unwrap_or_default();
    let map = build::config_map::config_map(plugin, config);
    let name = name_of(&map);
    if ctx.caches.config_map_known(&uid, &name, &config.digest) {
        return Ok(());
    }
    Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&map),
        )
        .await
        .map_err(|e| Error::from_config_map_write(e, plugin, ns, &name))?;
    ctx.caches.config_map_written(&uid, &name, &config.digest);
    Ok(())
}

/// What [`ensure`] did.
enum Ensured<K, C> {
    /// Applied: the object as the API server answered.
    Applied(K),
    /// Nothing sent: the watch cache shows the object as this process left it.
    Unchanged(Arc<C>),
}

/// Server-side applies `desired` unless this process already applied the same desired state to
/// the object the watch cache `watched` still shows.
async fn ensure<K, C>(
    plugin: &Plugin,
    desired: &K,
    ctx: &Context,
    watched: &Store<C>,
) -> Result<Ensured<K, C>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
    C: Resource<DynamicType = ()> + Clone,
{
    let uid = plugin.uid().unwrap_or_default();
    let kind = K::kind(&());
    let name = name_of(desired);
    let hash = applied::desired_hash(desired);
    let ns = desired.meta().namespace.clone().ok_or(Error::NoNamespace)?;
    if let Some(cached) = watched.get(&ObjectRef::new(&name).within(&ns))
        && ctx.caches.applied.is_current(
            &uid,
            &kind,
            &name,
            hash,
            &Fingerprint::of(&kind, cached.meta()),
        )
    {
        return Ok(Ensured::Unchanged(cached));
    }
    let obj = Api::<K>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await?;
    ctx.caches
        .applied
        .record(&uid, &kind, &name, hash, obj.meta());
    Ok(Ensured::Applied(obj))
}

/// [`ensure`] for the Deployment, and what its status says about `revision`: when nothing was
/// sent, the watch cache has the current status (and the digest of the template it no longer
/// holds, [`super::watches::strip_deployment`]).
async fn ensure_deployment(
    plugin: &Plugin,
    desired: &Deployment,
    ctx: &Context,
    watches: &Watches,
    revision: &str,
) -> Result<status::Rollout, Error> {
    let ensured = ensure(plugin, desired, ctx, &watches.deployments).await?;
    let deadline = u64::try_from(ctx.build.progress_deadline_seconds).unwrap_or_default();
    let observed = match ensured {
        Ensured::Applied(applied) => {
            let digest = applied
                .spec
                .as_ref()
                .map(|s| crate::running::template_digest(&s.template));
            observe(&applied, revision, digest)
        }
        Ensured::Unchanged(cached) => observe(
            &cached,
            revision,
            super::watches::cached_template_digest(&cached),
        ),
    };
    Ok(status::Rollout {
        progress_deadline: Some(std::time::Duration::from_secs(deadline)),
        ..observed
    })
}

fn name_of<K: Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

/// What the Deployment's status says about the revision just applied.
/// `template_digest`: of the Deployment's pod template ([`crate::running::template_digest`]).
fn observe(d: &Deployment, revision: &str, template_digest: Option<String>) -> status::Rollout {
    let generation = d.metadata.generation.unwrap_or_default();
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let deadline_exceeded = st.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    status::Rollout {
        revision: revision.to_string(),
        desired_replicas: spec_replicas,
        ready_replicas: st.ready_replicas.unwrap_or_default(),
        updated_replicas: st.updated_replicas.unwrap_or_default(),
        total_replicas: st.replicas.unwrap_or_default(),
        available_replicas: st.available_replicas.unwrap_or_default(),
        observed: st.observed_generation.unwrap_or_default() >= generation,
        deadline_exceeded,
        rolled_back_from: None,
        no_rollback: None,
        template_digest,
        recheck_after: None,
        progress_deadline: None,
    }
}
