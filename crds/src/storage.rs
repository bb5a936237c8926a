//! The `PluginStorage` resource (namespaced): a plugin's key-value storage, kept by the router
//! when the plugin calls the host API (`airlock.host.v1.Host` Put/Delete) and read for Get/List.
//!
//! One object per Plugin, named like it, in its namespace, owned by it: kept while the Plugin is
//! disabled or upgraded, deleted with it. Desired state only in `spec`: an installer may create it
//! (from Git, before or after the Plugin) with a seed in `spec.entries`, which Airlock never
//! writes; the live data is in `status`, which only the router writes. The seed is merged in
//! whenever the spec changes ([`effective_entries`]): its keys take the seed's values, the
//! plugin's other keys stay; until the next change of the spec the plugin's writes win. Values are
//! JSON documents kept as text, so numbers keep their spelling (an embedded JSON value would be
//! re-encoded by the API server).

use std::collections::BTreeMap;

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
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
    status = "PluginStorageStatus",
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keyCount"),
    printcolumn(name = "Bytes", type_ = "integer", json_path = ".status.bytes"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginStorageSpec {
    /// The seed: key → JSON document (as text) the plugin finds in its storage. Merged into the
    /// live data whenever the spec changes (these keys take these values; other keys stay).
    /// Airlock never writes here. Keys are 1–256 characters without control characters; a value is
    /// at most 100 KiB; keys plus values at most 1 MiB and 1024 keys.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub entries: BTreeMap<String, String>,
}

/// The live data, written by the router only.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginStorageStatus {
    /// Key → JSON document (as text): what the plugin reads now.
    #[serde(default)]
    pub entries: BTreeMap<String, String>,
    /// Number of entries (for `kubectl get`).
    #[serde(default)]
    pub key_count: u32,
    /// Bytes of keys plus values (for `kubectl get`).
    #[serde(default)]
    pub bytes: u64,
    /// The metadata.generation of the spec whose seed is merged into `entries`.
    pub seed_generation: Option<i64>,
    /// The plugin version whose process last wrote `entries` (the version of its signed
    /// manifest). The operator refuses a Plugin version below it unless the Plugin sets
    /// `spec.allowDowngrade`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<String>,
}

/// What the plugin reads: the live data, with the seed merged in when the spec changed since the
/// seed was last merged (or when there is no live data yet). Returns the entries and whether the
/// seed was merged (then the next write records `seedGeneration`).
pub fn effective_entries(storage: &PluginStorage) -> (BTreeMap<String, String>, bool) {
    let live = storage.status.as_ref();
    let merged = live.and_then(|s| s.seed_generation);
    let mut entries = live.map(|s| s.entries.clone()).unwrap_or_default();
    let stale = live.is_none() || merged != storage.metadata.generation;
    if stale {
        entries.extend(
            storage
                .spec
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    (entries, stale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;

    fn storage(
        seed: &[(&str, &str)],
        generation: i64,
        live: Option<(&[(&str, &str)], i64)>,
    ) -> PluginStorage {
        let map = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        PluginStorage {
            metadata: ObjectMeta {
                generation: Some(generation),
                ..Default::default()
            },
            spec: PluginStorageSpec { entries: map(seed) },
            status: live.map(|(kv, g)| PluginStorageStatus {
                entries: map(kv),
                seed_generation: Some(g),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn the_seed_is_what_a_new_storage_holds() {
        let (entries, merged) = effective_entries(&storage(&[("count", "41")], 1, None));
        assert_eq!(entries.get("count").map(String::as_str), Some("41"));
        assert!(merged, "the first write records the seed as merged");
    }

    #[test]
    fn the_plugins_writes_win_until_the_seed_changes() {
        let s = storage(
            &[("count", "41")],
            1,
            Some((&[("count", "45"), ("x", "1")], 1)),
        );
        let (entries, merged) = effective_entries(&s);
        assert_eq!(entries.get("count").map(String::as_str), Some("45"));
        assert!(!merged);
    }

    #[test]
    fn a_changed_seed_sets_its_keys_and_keeps_the_others() {
        let s = storage(
            &[("count", "1000")],
            2,
            Some((&[("count", "45"), ("x", "1")], 1)),
        );
        let (entries, merged) = effective_entries(&s);
        assert_eq!(entries.get("count").map(String::as_str), Some("1000"));
        assert_eq!(entries.get("x").map(String::as_str), Some("1"), "kept");
        assert!(merged);
    }

    #[test]
    fn a_storage_without_a_seed_is_the_live_data() {
        let s = storage(&[], 1, Some((&[("x", "1")], 1)));
        assert_eq!(effective_entries(&s).0.len(), 1);
    }
}
