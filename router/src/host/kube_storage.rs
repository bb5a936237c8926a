//! Where a plugin's key-value store is persisted: the `status` of the Plugin's `PluginStorage`
//! object (same name and namespace, owned by the Plugin), read and replaced with optimistic
//! concurrency. The object's `spec` is the installer's seed: read, merged in when it changes
//! ([`airlock_crds::storage::effective_entries`]), never written here, so a GitOps tool that
//! applies the seed and the router never fight over a field.
//!
//! Owns the [`StorageBackend`] seam (so the host service is tested without a cluster), its
//! Kubernetes implementation [`KubeStorage`], and [`update`], the load → change → save loop that
//! starts again when another router replica wrote in between. The rules of the store itself
//! (limits, quotas, the JSON form of its entries) are [`crate::host::storage`]; who may call and
//! how a call becomes a gRPC answer is [`crate::host::service`].

use std::collections::BTreeMap;
use std::future::Future;

use airlock_crds::storage::effective_entries;
use airlock_crds::{PluginStorage, PluginStorageSpec, PluginStorageStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tonic::Status;

use crate::host::storage::Store;
use crate::table::Holder;
use airlock_core::PluginKey;

/// A plugin's storage as loaded, with the object it came from.
#[derive(Debug, Clone, Default)]
pub struct Stored {
    pub store: Store,
    /// The stored object's metadata (its resourceVersion is what a write replaces, its
    /// generation the seed a write records as merged); `None` when there is no object yet.
    pub meta: Option<ObjectMeta>,
    /// Bytes of the installer's seed (the spec), stored beside the live data in one object.
    pub seed_bytes: usize,
    /// The plugin version that last wrote the live data (`status.writtenBy`).
    pub written_by: Option<String>,
}

/// Who writes a plugin's storage: the Plugin that owns it, and the plugin version whose process
/// writes, recorded as `status.writtenBy` (the operator refuses a downgrade below it).
#[derive(Debug, Clone, Copy)]
pub struct Writer<'a> {
    pub holder: &'a Holder,
    pub version: &'a str,
}

impl<'a> Writer<'a> {
    /// The version the plugin's shim reported (its verified manifest's) when it is a semantic
    /// version, else the Plugin's `spec.version` (an older shim reports none). During a rollout
    /// the two differ: an old pod still writing is recorded as the old version, so a rollback to
    /// it is not refused as a downgrade. A stolen pod identity could report any version, but
    /// could as well write any data: it decides nothing beyond this plugin's own storage.
    pub fn new(holder: &'a Holder, reported: &'a str) -> Self {
        let version = if reported.len() <= 64 && semver::Version::parse(reported).is_ok() {
            reported
        } else {
            holder.version.as_str()
        };
        Self { holder, version }
    }
}

/// Why a write did not happen.
#[derive(Debug)]
pub enum SaveError {
    /// Someone else (another router replica) wrote in between: load again and retry.
    Conflict,
    Failed(Status),
}

/// Where plugin storage is persisted.
pub trait StorageBackend: Send + Sync + 'static {
    fn load(&self, plugin: &PluginKey) -> impl Future<Output = Result<Stored, Status>> + Send;
    fn save(
        &self,
        plugin: &PluginKey,
        writer: Writer<'_>,
        store: &Store,
        previous: Option<ObjectMeta>,
        seed_bytes: usize,
    ) -> impl Future<Output = Result<(), SaveError>> + Send;
}

/// Largest serialised PluginStorage written: below etcd's default request limit (1.5 MiB) with
/// room for metadata. Within the 1 MiB quota only values full of characters JSON must escape
/// get there.
const MAX_OBJECT_BYTES: usize = 1_400_000;

/// Storage in the Plugin's `PluginStorage` object (same name and namespace, owned by the Plugin).
#[derive(Clone)]
pub struct KubeStorage {
    client: Client,
}

impl std::fmt::Debug for KubeStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeStorage").finish_non_exhaustive()
    }
}

impl KubeStorage {
    pub fn new(client: Client) -> Self {
        Self { client }
    }

    fn api(&self, plugin: &PluginKey) -> Api<PluginStorage> {
        Api::namespaced(self.client.clone(), &plugin.namespace)
    }
}

impl StorageBackend for KubeStorage {
    async fn load(&self, plugin: &PluginKey) -> Result<Stored, Status> {
        let obj = self.api(plugin).get_opt(&plugin.name).await.map_err(|e| {
            Status::unavailable(format!("cannot read the plugin's storage ({e}); retry"))
        })?;
        let Some(obj) = obj else {
            return Ok(Stored::default());
        };
        let (entries, _) = effective_entries(&obj);
        let store = Store::from_entries(&entries).map_err(|why| {
            Status::failed_precondition(format!(
                "PluginStorage {plugin} is damaged: {why}; an admin fixes or removes that entry (in spec.entries, the seed: `kubectl edit pluginstorage -n {} {}`; in status.entries: `kubectl edit --subresource=status pluginstorage -n {} {}`)",
                plugin.namespace, plugin.name, plugin.namespace, plugin.name
            ))
        })?;
        Ok(Stored {
            store,
            seed_bytes: serde_json::to_vec(&obj.spec).map_or(0, |v| v.len()),
            written_by: obj.status.and_then(|s| s.written_by),
            meta: Some(obj.metadata),
        })
    }

    async fn save(
        &self,
        plugin: &PluginKey,
        writer: Writer<'_>,
        store: &Store,
        previous: Option<ObjectMeta>,
        seed_bytes: usize,
    ) -> Result<(), SaveError> {
        let usage = store.usage();
        let status = PluginStorageStatus {
            entries: store.to_entries(),
            key_count: u32::try_from(usage.keys).unwrap_or(u32::MAX),
            bytes: usage.bytes as u64,
            seed_generation: None,
            written_by: Some(writer.version.to_string()),
        };
        let api = self.api(plugin);
        let mut metadata = match previous {
            Some(meta) => meta,
            // No object yet: create one with no seed (and the owner, so it is deleted with the
            // Plugin), then write its status like any other.
            None => match api
                .create(&PostParams::default(), &new_storage(plugin, writer.holder))
                .await
            {
                Ok(created) => created.metadata,
                Err(kube::Error::Api(e)) if e.code == 409 => return Err(SaveError::Conflict),
                Err(e) => return Err(unavailable(e)),
            },
        };
        metadata.managed_fields = None;
        let obj = PluginStorage {
            status: Some(PluginStorageStatus {
                seed_generation: metadata.generation,
                ..status
            }),
            metadata,
            spec: PluginStorageSpec::default(),
        };
        // The object holds the seed (spec) and the live data (status) together.
        let size = serde_json::to_vec(&obj)
            .map_or(usize::MAX, |v| v.len())
            .saturating_add(seed_bytes);
        if size > MAX_OBJECT_BYTES {
            return Err(SaveError::Failed(Status::resource_exhausted(format!(
                "the stored form of this plugin's storage would be {size} bytes (its live data \
                 plus the installer's seed of {seed_bytes} bytes in spec.entries), over the \
                 {MAX_OBJECT_BYTES} bytes a Kubernetes object may hold (values with many \
                 characters JSON must escape take more room); delete keys, store smaller values \
                 or shrink the seed"
            ))));
        }
        // The status subresource ignores the spec sent along: only the live data is replaced,
        // on condition of the resourceVersion read.
        match api
            .replace_status(&plugin.name, &PostParams::default(), &obj)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Err(SaveError::Conflict),
            // Retrying cannot help: the object is over what the API server or etcd takes.
            Err(kube::Error::Api(e)) if e.code == 413 || e.message.contains("too large") => {
                Err(SaveError::Failed(Status::resource_exhausted(format!(
                    "the API server refused this plugin's storage as too large ({}); delete keys, store smaller values or shrink the seed in spec.entries",
                    e.message
                ))))
            }
            Err(e) => Err(unavailable(e)),
        }
    }
}

fn unavailable(e: kube::Error) -> SaveError {
    SaveError::Failed(Status::unavailable(format!(
        "cannot write the plugin's storage ({e}); retry"
    )))
}

/// A PluginStorage for a plugin that has none: no seed, owned by the Plugin (deleted with it,
/// kept while it is disabled or upgraded), labelled with its name.
fn new_storage(plugin: &PluginKey, owner: &Holder) -> PluginStorage {
    PluginStorage {
        metadata: ObjectMeta {
            name: Some(plugin.name.clone()),
            namespace: Some(plugin.namespace.clone()),
            labels: Some(BTreeMap::from([(
                airlock_core::names::PLUGIN_LABEL.to_string(),
                plugin.name.clone(),
            )])),
            owner_references: Some(vec![OwnerReference {
                api_version: "airlock.dev/v1alpha1".into(),
                kind: "Plugin".into(),
                name: plugin.name.clone(),
                uid: owner.uid.clone(),
                controller: None,
                block_owner_deletion: Some(true),
            }]),
            ..Default::default()
        },
        spec: PluginStorageSpec::default(),
        status: None,
    }
}

/// Loads, changes and saves again on conflict (another router replica wrote in between).
const SAVE_ATTEMPTS: usize = 5;

/// Load → change → save of `plugin`'s storage in `storage`, again from the start when another
/// writer got in between. `change` returns its result and whether it changed the store (an
/// unchanged store is not written). Gives up with ABORTED after `SAVE_ATTEMPTS` (5) conflicts.
///
/// Every router replica serves host calls with no leader, so two replicas may write the same
/// PluginStorage at once; replacing by resourceVersion and redoing the change on the newer
/// object is what keeps either write from losing the other's keys.
pub async fn update<S: StorageBackend, R>(
    storage: &S,
    plugin: &PluginKey,
    writer: Writer<'_>,
    change: impl Fn(&mut Store) -> Result<(R, bool), Status>,
) -> Result<R, Status> {
    for _ in 0..SAVE_ATTEMPTS {
        let Stored {
            mut store,
            meta,
            seed_bytes,
            ..
        } = storage.load(plugin).await?;
        let (out, changed) = change(&mut store)?;
        if !changed {
            return Ok(out);
        }
        match storage.save(plugin, writer, &store, meta, seed_bytes).await {
            Ok(()) => return Ok(out),
            Err(SaveError::Conflict) => continue,
            Err(SaveError::Failed(s)) => return Err(s),
        }
    }
    Err(Status::aborted(
        "the plugin's storage kept changing while this call tried to write it; retry",
    ))
}

/// A [`StorageBackend`] in memory with the API server's optimistic concurrency, for the tests of
/// this module and of [`crate::host::service`].
#[cfg(test)]
pub(crate) mod memory {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use kube::api::ObjectMeta;
    use tonic::Status;

    use super::{SaveError, StorageBackend, Stored, Writer};
    use crate::host::storage::Store;
    use airlock_core::PluginKey;

    /// Storage in memory; the first `conflicts` saves lose to "another replica".
    #[derive(Debug, Default)]
    pub(crate) struct MemoryStorage {
        pub(crate) stored: Mutex<Option<(BTreeMap<String, String>, u64)>>,
        pub(crate) conflicts: AtomicUsize,
        /// The version recorded by the last save (`status.writtenBy`).
        pub(crate) written_by: Mutex<Option<String>>,
    }

    impl StorageBackend for Arc<MemoryStorage> {
        async fn load(&self, _plugin: &PluginKey) -> Result<Stored, Status> {
            let stored = self.stored.lock().unwrap().clone();
            Ok(match stored {
                None => Stored::default(),
                Some((entries, v)) => Stored {
                    store: Store::from_entries(&entries).map_err(Status::failed_precondition)?,
                    meta: Some(ObjectMeta {
                        resource_version: Some(v.to_string()),
                        ..Default::default()
                    }),
                    seed_bytes: 0,
                    written_by: self.written_by.lock().unwrap().clone(),
                },
            })
        }

        async fn save(
            &self,
            _plugin: &PluginKey,
            writer: Writer<'_>,
            store: &Store,
            previous: Option<ObjectMeta>,
            _seed_bytes: usize,
        ) -> Result<(), SaveError> {
            let version = previous.and_then(|m| m.resource_version);
            let mut stored = self.stored.lock().unwrap();
            if self.conflicts.load(Ordering::SeqCst) > 0 {
                self.conflicts.fetch_sub(1, Ordering::SeqCst);
                // Someone else wrote: the version moves on.
                if let Some((_, v)) = stored.as_mut() {
                    *v += 1;
                }
                return Err(SaveError::Conflict);
            }
            let current = stored.as_ref().map(|(_, v)| v.to_string());
            if current != version {
                return Err(SaveError::Conflict);
            }
            let next = stored.as_ref().map_or(1, |(_, v)| v + 1);
            *stored = Some((store.to_entries(), next));
            *self.written_by.lock().unwrap() = Some(writer.version.to_string());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::sync::atomic::Ordering;

    use tonic::Code;

    use super::memory::MemoryStorage;
    use super::*;
    use crate::host::storage::Limits;

    fn me() -> (PluginKey, Holder) {
        let holder = Holder {
            uid: "uid-1".into(),
            version: "1.0.0".into(),
            permissions: BTreeSet::new(),
            limits: Default::default(),
        };
        (PluginKey::new("team-a", "logger"), holder)
    }

    /// `update` with a `put` of `key` = `value`.
    async fn put(storage: &Arc<MemoryStorage>, key: &str, value: &str) -> Result<(), Status> {
        let (plugin, holder) = me();
        update(storage, &plugin, Writer::new(&holder, ""), |store| {
            store
                .put(key, value, &Limits::default())
                .map(|()| ((), true))
                .map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .await
    }

    async fn get(storage: &Arc<MemoryStorage>, key: &str) -> Option<String> {
        let stored = storage.load(&me().0).await.unwrap();
        stored.store.get(key).map(str::to_string)
    }

    #[tokio::test]
    async fn a_write_that_loses_a_race_is_retried_on_the_new_version() {
        let storage = Arc::new(MemoryStorage::default());
        put(&storage, "a", "1").await.unwrap();
        storage.conflicts.store(2, Ordering::SeqCst);
        put(&storage, "b", "2").await.unwrap();
        assert_eq!(get(&storage, "b").await.as_deref(), Some("2"));
        assert!(get(&storage, "a").await.is_some(), "nothing lost");
        storage.conflicts.store(SAVE_ATTEMPTS, Ordering::SeqCst);
        let err = put(&storage, "c", "3").await.unwrap_err();
        assert_eq!(err.code(), Code::Aborted, "{err:?}");
    }

    #[tokio::test]
    async fn each_write_records_the_version_that_made_it() {
        let (plugin, holder) = me();
        let storage = Arc::new(MemoryStorage::default());
        let write = |reported: &'static str| {
            let (storage, plugin, holder) = (storage.clone(), plugin.clone(), holder.clone());
            async move {
                update(&storage, &plugin, Writer::new(&holder, reported), |store| {
                    store
                        .put("k", "1", &Limits::default())
                        .map(|()| ((), true))
                        .map_err(|e| Status::invalid_argument(e.to_string()))
                })
                .await
                .unwrap();
                storage.written_by.lock().unwrap().clone()
            }
        };
        // What the shim reports (an old pod during a rollout writes as the old version)…
        assert_eq!(write("0.9.0").await.as_deref(), Some("0.9.0"));
        assert_eq!(write("2.0.0-rc.1").await.as_deref(), Some("2.0.0-rc.1"));
        // …else the Plugin's spec.version: an older shim reports nothing, and text that is not a
        // version is not recorded.
        assert_eq!(write("").await.as_deref(), Some("1.0.0"));
        assert_eq!(write("latest").await.as_deref(), Some("1.0.0"));
        let long: &'static str = Box::leak(format!("1.0.0-{}", "a".repeat(80)).into_boxed_str());
        assert_eq!(write(long).await.as_deref(), Some("1.0.0"));
    }
}
