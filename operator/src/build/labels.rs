//! Labels and owner references shared by every child object.

use std::collections::BTreeMap;

use airlock_crds::Plugin;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::{Resource, ResourceExt};

pub use airlock_core::names::{MANAGED_BY_SELECTOR, PLUGIN_LABEL, REVISION_LABEL};

/// Labels of every object Airlock creates for `plugin`.
pub fn common(plugin: &Plugin) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), plugin.name_any()),
        ("app.kubernetes.io/component".into(), "plugin".into()),
        ("app.kubernetes.io/managed-by".into(), "airlock".into()),
        (PLUGIN_LABEL.into(), plugin.name_any()),
    ])
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
