//! Which watch events start a reconcile. Every reconcile of a Plugin costs API requests and a
//! slot of the controller's concurrency; at 1,000 Plugins, reconciles that change nothing were
//! what kept a creation burst from settling (≈ 16 reconciles per Plugin, most of them echoes of
//! the operator's own writes). Two kinds of event are not a reason to reconcile:
//!
//! - a change of the Plugin's **status** only: the operator writes the status itself, at the end
//!   of the reconcile that decided it (the router writes two fields of it: `autoDisabled`, which
//!   does trigger, below, and `health`, which does not);
//! - the watch event of a **child exactly as this process applied it** (same resourceVersion as
//!   the API server's answer to the apply): the reconcile that applied it already acted on it.
//!
//! Everything else still triggers: spec changes (generation), annotations (auto-disable and
//! re-enable), labels, finalizers, deletion, a child edited, deleted or updated by its own
//! controller (a Deployment's rollout progress), and the periodic requeue as a safety net.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;

use airlock_crds::Plugin;
use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use crate::applied::Applied;

/// The hash of what in a Plugin asks for a reconcile (kube-runtime's `predicate_filter` passes an
/// event only when it changed): generation (spec; the API server also bumps it when deletion
/// starts), annotations, labels, finalizers and the deletion timestamp. Not the status, not the
/// resourceVersion.
pub(super) fn plugin_changes(plugin: &Plugin) -> Option<u64> {
    let meta = plugin.meta();
    let mut h = DefaultHasher::new();
    meta.generation.hash(&mut h);
    plugin.annotations().hash(&mut h);
    plugin.labels().hash(&mut h);
    plugin.finalizers().hash(&mut h);
    // The router's auto-disable is recorded in status: the one status change not our own.
    plugin.auto_disabled_record().hash(&mut h);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut h);
    Some(h.finish())
}

/// What of a trust policy can change what Plugins may do: its spec (generation), labels and
/// whether it exists (`cached`: still in the policy cache, which a delete event has already left);
/// its status (written by this process, [`crate::policy_status`]) cannot.
pub(super) fn policy_changes(
    policy: &airlock_crds::PluginTrustPolicy,
    cached: bool,
) -> Option<u64> {
    let mut h = DefaultHasher::new();
    policy.meta().generation.hash(&mut h);
    policy.labels().hash(&mut h);
    cached.hash(&mut h);
    Some(h.finish())
}

/// `children` without the events that show a child exactly as this process last applied it.
/// Errors pass through (the controller's own backoff handles them).
pub(super) fn without_own_writes<K, S>(
    children: S,
    applied: Arc<Applied>,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Send + 'static,
    S: Stream<Item = Result<K, watcher::Error>> + Send + 'static,
{
    children.filter(move |event| {
        let own = event
            .as_ref()
            .is_ok_and(|child| is_own_write(&applied, child));
        std::future::ready(!own)
    })
}

fn is_own_write<K: Resource<DynamicType = ()>>(applied: &Applied, child: &K) -> bool {
    let meta = child.meta();
    let Some(owner) = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "Plugin")
    else {
        return false;
    };
    applied.is_own_write(
        &owner.uid,
        &K::kind(&()),
        meta.name.as_deref().unwrap_or_default(),
        meta.resource_version.as_deref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_crds::plugin::{PluginPhase, PluginStatus};
    use futures::stream;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
    use kube::core::PartialObjectMeta;

    fn plugin() -> Plugin {
        let mut p: Plugin = serde_json::from_value(serde_json::json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": "p", "namespace": "t", "generation": 1, "resourceVersion": "10"},
            "spec": {
                "version": "1.0.0",
                "image": "r/p@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "bundle": {"source": {"configMapRef": {"name": "b"}}},
                "pluginApiVersion": 1,
            }
        }))
        .expect("a Plugin");
        p.metadata.finalizers = Some(vec!["airlock.dev/cleanup".into()]);
        p
    }

    /// A status written (by the operator) is not a reason to reconcile; everything a user, the
    /// router or the API server changes in the Plugin is.
    #[test]
    fn only_changes_outside_the_status_trigger_a_reconcile() {
        let before = plugin();
        let mut status_only = before.clone();
        status_only.metadata.resource_version = Some("11".into());
        status_only.status = Some(PluginStatus {
            phase: Some(PluginPhase::Active),
            ..Default::default()
        });
        assert_eq!(plugin_changes(&before), plugin_changes(&status_only));

        type Change = fn(&mut Plugin);
        let changed: [(&str, Change); 5] = [
            ("spec (generation)", |p| p.metadata.generation = Some(2)),
            ("the auto-disable annotation", |p| {
                p.annotations_mut()
                    .insert("airlock.dev/auto-disabled".into(), "5 timeouts".into());
            }),
            ("a label", |p| {
                p.labels_mut().insert("team".into(), "a".into());
            }),
            ("the finalizer removed", |p| p.metadata.finalizers = None),
            ("deletion started", |p| {
                p.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            }),
        ];
        for (what, change) in changed {
            let mut after = status_only.clone();
            change(&mut after);
            assert_ne!(
                plugin_changes(&before),
                plugin_changes(&after),
                "{what} must trigger a reconcile"
            );
        }
    }

    fn service(owner_uid: &str, rv: &str) -> PartialObjectMeta<Service> {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some("airlock-plugin-p".into()),
                namespace: Some("t".into()),
                resource_version: Some(rv.into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "airlock.dev/v1alpha1".into(),
                    kind: "Plugin".into(),
                    name: "p".into(),
                    uid: owner_uid.into(),
                    controller: Some(true),
                    block_owner_deletion: Some(true),
                }]),
                ..Default::default()
            },
            _phantom: Default::default(),
        }
    }

    /// The echo of the operator's own apply is dropped; a later version of the same child (an
    /// edit to repair, a deletion) and other Plugins' children still trigger.
    #[tokio::test]
    async fn the_echo_of_an_own_apply_does_not_trigger_but_a_later_change_does() {
        let applied = Arc::new(Applied::default());
        applied.record(
            "uid-p",
            "Service",
            "airlock-plugin-p",
            7,
            &service("uid-p", "5").metadata,
        );
        let events = stream::iter([
            Ok(service("uid-p", "5")),
            Ok(service("uid-p", "6")),
            Ok(service("uid-other", "5")),
        ]);
        let passed: Vec<String> = without_own_writes(events, applied)
            .map(|e| {
                let s = e.expect("no error");
                format!(
                    "{}@{}",
                    s.metadata.owner_references.expect("owner")[0].uid,
                    s.metadata.resource_version.expect("rv")
                )
            })
            .collect()
            .await;
        assert_eq!(passed, ["uid-p@6", "uid-other@5"]);
    }
}
