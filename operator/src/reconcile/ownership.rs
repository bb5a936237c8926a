//! The ownership step, between plan and apply: every object the planned revision would write is
//! looked at, and any that exists without being this Plugin's ([`crate::ownership::ownership`]
//! decides) stops the whole revision — no child at all is applied, so no half-built workload
//! appears next to someone else's object — and goes into the status instead.
//!
//! Where an object's metadata comes from: the watch caches when they hold it (a steady state
//! costs no request), else a GET of its metadata. The caches only see objects labelled as
//! Airlock's, so a cache miss does not mean "absent": someone else's object is found by asking.
//! Secrets are neither watched nor read: the operator may not read Secrets outside its own
//! namespace (a stolen operator token must not read the cluster's Secrets). Their ownership is
//! checked by the API server at the write, atomically, by the chart's ValidatingAdmissionPolicy;
//! a refusal becomes the same `ObjectNotOwned` ([`super::Error::NotOwned`]). The PluginStorage
//! is looked at when the hourly identity checks are due.
//!
//! Recovery: a Plugin blocked by an earlier Plugin's leftovers (deleted, re-created under the
//! same name) is woken by the watch when the garbage collector deletes a watched child (the
//! deletion names the old owner's name, which is this Plugin's), and looks again after
//! [`crate::ownership::RECHECK_GARBAGE_COLLECTION`] anyway; then everything is absent and the
//! revision rolls out. A Plugin blocked by someone else's object looks again after
//! [`crate::ownership::RECHECK_FOREIGN`], or at once when the Plugin changes.

use std::time::Instant;

use airlock_crds::{Plugin, PluginStorage};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

use super::watches::Watches;
use super::{Context, Error};
use crate::build;
use crate::ownership::{NotOwned, Owner, Ownership, ownership};

/// The objects a revision of `plugin` would write (but its Secrets: see above) that exist and are
/// not `plugin`'s, in a fixed order (so an unchanged world gives an unchanged status). Empty: the
/// revision may be applied.
pub(super) async fn not_owned(
    plugin: &Plugin,
    ctx: &Context,
    watches: &Watches,
) -> Result<Vec<NotOwned>, Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let plugin_name = plugin.name_any();
    let uid = plugin.uid().unwrap_or_default();
    let child = build::child_name(&plugin_name);
    let decide = |meta: Option<ObjectMeta>| ownership(meta.as_ref(), &plugin_name, &uid);
    let mut looked: Vec<(String, String, Ownership)> = Vec::new();
    let mut look = |kind: String, name: &str, found: Ownership| {
        looked.push((kind, name.to_string(), found));
    };

    // The PluginStorage an installer created (no controller) is adopted by design, and the
    // router's reference to this Plugin is a loose one: only a storage another object controls,
    // or an earlier Plugin's, is in the way. Looked at when the hourly checks are due.
    // Looked up at once (each a cache read, or a GET on a miss), decided in a fixed order.
    let storage = async {
        if ctx.caches.hourly_checks_due(&uid, Instant::now()) {
            fetched::<PluginStorage>(ctx, &ns, &plugin_name)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    };
    let (storage, sa, np, svc, deployment) = futures::try_join!(
        storage,
        watched::<ServiceAccount, _>(ctx, &watches.service_accounts, &ns, &child),
        watched::<NetworkPolicy, _>(ctx, &watches.network_policies, &ns, &child),
        watched::<Service, _>(ctx, &watches.services, &ns, &child),
        watched::<Deployment, _>(ctx, &watches.deployments, &ns, &child),
    )?;
    if let Some(storage) = storage.map(decide)
        && storage != Ownership::Foreign(Owner::Nobody)
    {
        look(kind::<PluginStorage>(), &plugin_name, storage);
    }
    look(kind::<ServiceAccount>(), &child, decide(sa));
    look(kind::<NetworkPolicy>(), &child, decide(np));
    look(kind::<Service>(), &child, decide(svc));
    look(kind::<Deployment>(), &child, decide(deployment));

    Ok(looked
        .into_iter()
        .filter_map(|(kind, name, found)| match found {
            Ownership::Foreign(owner) => Some(NotOwned {
                kind,
                namespace: ns.clone(),
                name,
                owner,
            }),
            Ownership::Absent | Ownership::Ours => None,
        })
        .collect())
}

fn kind<K: Resource<DynamicType = ()>>() -> String {
    K::kind(&()).into_owned()
}

/// The metadata of `ns/name` from the watch cache `store`, else from the API server.
async fn watched<K, C>(
    ctx: &Context,
    store: &Store<C>,
    ns: &str,
    name: &str,
) -> Result<Option<ObjectMeta>, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    C: Resource<DynamicType = ()> + Clone,
{
    if let Some(cached) = store.get(&ObjectRef::new(name).within(ns)) {
        return Ok(Some(cached.meta().clone()));
    }
    fetched::<K>(ctx, ns, name).await
}

/// The metadata of `ns/name` from the API server; `None` when there is no such object.
async fn fetched<K>(ctx: &Context, ns: &str, name: &str) -> Result<Option<ObjectMeta>, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    Ok(Api::<K>::namespaced(ctx.client.clone(), ns)
        .get_metadata_opt(name)
        .await?
        .map(|m| m.metadata))
}
