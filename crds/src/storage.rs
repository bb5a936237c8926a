//! The `PluginStorage` resource (namespaced): a plugin's key-value storage, written by the router
//! when the plugin calls the host API (`airlock.host.v1.Host` Put/Delete) and read for Get/List.
//!
//! One object per Plugin, named like it, in its namespace, owned by it: kept while the Plugin is
//! disabled or upgraded, deleted with it. An admin may create it before the Plugin to give the
//! plugin initial data (the operator then adopts it). Values are JSON documents kept as text, so
//! numbers keep their spelling (an embedded JSON value would be re-encoded by the API server).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The stored keys of one plugin.
// Two printer columns of the same type repeat `type_ = "integer"`, which clippy mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "airlock.dev",
    version = "v1alpha1",
    kind = "PluginStorage",
    plural = "pluginstorages",
    doc = "The key-value storage of one plugin (named like its Plugin, in its namespace), read and written by the plugin through the host API; an installer may create it first with initial data.",
    shortname = "pst",
    category = "airlock",
    namespaced,
    printcolumn(name = "Keys", type_ = "integer", json_path = ".spec.keyCount"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".spec.bytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginStorageSpec {
    /// Key → JSON document (as text). Keys are 1–256 characters without control characters; a
    /// value is at most 100 KiB; keys plus values at most 1 MiB and 1024 keys. The router refuses
    /// writes over these limits; entries written here by hand beyond them are kept but count
    /// against the plugin's quota.
    #[serde(default)]
    pub entries: BTreeMap<String, String>,
    /// Number of entries, kept by the router (for `kubectl get`).
    #[serde(default)]
    pub key_count: u32,
    /// Bytes of keys plus values, kept by the router (for `kubectl get`).
    #[serde(default)]
    pub bytes: u64,
}
