//! Labels and owner references shared by every child object.

use std::collections::BTreeMap;

use airlock_crds::Plugin;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

pub use airlock_core::names::{MANAGED_BY_SELECTOR, PLUGIN_LABEL, REVISION_LABEL};
use airlock_core::shard::SHARD_LABEL;

/// Labels of every object Airlock creates for `plugin`. The Plugin's shard label is copied, so
/// that the release serving the Plugin (and only it) watches its children
/// ([`airlock_core::shard`]).
pub fn common(plugin: &Plugin) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".into(), plugin.name_any()),
        ("app.kubernetes.io/component".into(), "plugin".into()),
        ("app.kubernetes.io/managed-by".into(), "airlock".into()),
        (PLUGIN_LABEL.into(), plugin.name_any()),
    ]);
    if let Some(shard) = plugin.labels().get(SHARD_LABEL) {
        labels.insert(SHARD_LABEL.into(), shard.clone());
    }
    labels
}

/// The selector of the plugin's pods (stable across revisions: Deployments forbid changing it).
pub fn selector(plugin: &Plugin) -> BTreeMap<String, String> {
    BTreeMap::from([(PLUGIN_LABEL.into(), plugin.name_any())])
}

/// `metadata` of a per-plugin child (name, namespace, labels, owner), as JSON for the builders
/// that write their objects as JSON.
pub fn child_metadata(plugin: &Plugin) -> serde_json::Value {
    serde_json::json!({
        "name": super::child_name(&plugin.name_any()),
        "namespace": plugin.namespace(),
        "labels": common(plugin),
        "ownerReferences": owner(plugin),
    })
}

/// Controller owner reference, so deleting the Plugin garbage-collects its children.
pub fn owner(plugin: &Plugin) -> Vec<OwnerReference> {
    plugin.controller_owner_ref(&()).into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::*;

    /// The children of a Plugin in shard `canary` carry the label, so only the canary release's
    /// watches (`managed-by=airlock,airlock.dev/shard=canary`) see them; the default release's
    /// (`…,!airlock.dev/shard`) see only those of unlabelled Plugins.
    #[test]
    fn children_carry_their_plugins_shard_and_nothing_else_does() {
        let mut p = plugin(HELLO);
        assert!(!common(&p).contains_key(SHARD_LABEL));
        p.labels_mut().insert(SHARD_LABEL.into(), "canary".into());
        p.labels_mut().insert("team".into(), "a".into());
        let labels = common(&p);
        assert_eq!(labels[SHARD_LABEL], "canary");
        assert!(!labels.contains_key("team"), "{labels:?}");
        let meta = child_metadata(&p);
        assert_eq!(meta["labels"][SHARD_LABEL], "canary");
    }
}
