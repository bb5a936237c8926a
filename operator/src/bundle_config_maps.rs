//! Bundles held in ConfigMaps (`spec.bundle.source.configMapRef`), read once per version of the
//! ConfigMap for every Plugin that uses it.
//!
//! A metadata-only watch of ConfigMaps says which version each has now (and triggers the
//! reconciles of the Plugins that use one when it changes); the content is read with one GET per
//! version, whoever asks first, and kept in memory once per ConfigMap — not once per Plugin. So
//! 1,000 Plugins created from one bundle ConfigMap cost one GET, where each used to GET it itself
//! on every reconcile (and a burst of them timed the API server out).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client};

/// Where to find one ConfigMap.
type Key = (String, String);

/// The last version read of one ConfigMap.
#[derive(Debug)]
struct Read {
    resource_version: String,
    config_map: Arc<ConfigMap>,
}

/// Most bytes of ConfigMap content kept at once: past it, every other ConfigMap read is
/// forgotten (and read again when next used), so ConfigMaps a tenant keeps after deleting their
/// Plugins cannot grow the operator's memory.
const MAX_BYTES_KEPT: usize = 16 << 20;

/// Bytes of content of a ConfigMap (data and binaryData).
fn content_bytes(cm: &ConfigMap) -> usize {
    cm.data
        .iter()
        .flatten()
        .map(|(k, v)| k.len() + v.len())
        .chain(
            cm.binary_data
                .iter()
                .flatten()
                .map(|(k, v)| k.len() + v.0.len()),
        )
        .sum()
}

/// See the module documentation.
pub struct BundleConfigMaps {
    /// Every ConfigMap's metadata (resourceVersion), from the watch.
    versions: Store<PartialObjectMeta<ConfigMap>>,
    /// True once `versions` holds the first complete list.
    listed: tokio::sync::watch::Receiver<bool>,
    /// Per ConfigMap: the last version read, behind a lock of its own so that Plugins asking for
    /// the same ConfigMap at once wait for one GET instead of each making one.
    read: Mutex<HashMap<Key, Arc<tokio::sync::Mutex<Option<Read>>>>>,
    /// Bytes of content held in `read` (approximately: updated as versions are read).
    bytes_kept: std::sync::atomic::AtomicUsize,
    /// [`MAX_BYTES_KEPT`], smaller in tests.
    max_bytes_kept: usize,
}

impl std::fmt::Debug for BundleConfigMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BundleConfigMaps").finish_non_exhaustive()
    }
}

/// Whether the version read can be served for the version the watch reports now. Without a
/// version from the watch (the watch has not seen the ConfigMap yet, or it was just created) the
/// ConfigMap is read again: the watch may lag behind a user who just created it.
fn still_current(read: Option<&Read>, watched: Option<&str>) -> bool {
    matches!((read, watched), (Some(r), Some(w)) if r.resource_version == w)
}

impl BundleConfigMaps {
    pub fn new(
        versions: Store<PartialObjectMeta<ConfigMap>>,
        listed: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            versions,
            listed,
            read: Mutex::default(),
            bytes_kept: std::sync::atomic::AtomicUsize::new(0),
            max_bytes_kept: MAX_BYTES_KEPT,
        }
    }

    /// The ConfigMap `namespace/name`, `None` when it does not exist: from memory when the
    /// version read last is still the current one, else read (once, for all who ask now).
    pub async fn get(
        &self,
        client: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<ConfigMap>>, kube::Error> {
        // Right after a start every Plugin asks at once: wait (briefly) for the watch's first
        // list, or each would read the ConfigMap itself. Past that, reading is still right.
        let mut listed = self.listed.clone();
        let _ = tokio::time::timeout(Duration::from_secs(10), listed.wait_for(|l| *l)).await;
        let key = (namespace.to_string(), name.to_string());
        let slot = Arc::clone(
            self.read
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key.clone())
                .or_default(),
        );
        let mut slot = slot.lock().await;
        let watched = self
            .versions
            .get(&ObjectRef::new(name).within(namespace))
            .and_then(|m| m.metadata.resource_version.clone());
        if still_current(slot.as_ref(), watched.as_deref()) {
            return Ok(slot.as_ref().map(|r| Arc::clone(&r.config_map)));
        }
        let got = Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .get_opt(name)
            .await;
        let got = match got {
            Ok(got) => got,
            Err(e) => {
                if slot.is_none() {
                    // Nothing read yet: keep no entry for a name that only failed.
                    drop(slot);
                    self.forget(&key);
                }
                return Err(e);
            }
        };
        use std::sync::atomic::Ordering;
        if let Some(old) = slot.as_ref() {
            self.bytes_kept
                .fetch_sub(content_bytes(&old.config_map), Ordering::Relaxed);
        }
        match got {
            Some(cm) => {
                let bytes = content_bytes(&cm);
                if self.bytes_kept.load(Ordering::Relaxed) + bytes > self.max_bytes_kept {
                    self.forget_all_but(&key);
                }
                self.bytes_kept.fetch_add(bytes, Ordering::Relaxed);
                let config_map = Arc::new(cm);
                *slot = config_map
                    .metadata
                    .resource_version
                    .clone()
                    .map(|resource_version| Read {
                        resource_version,
                        config_map: Arc::clone(&config_map),
                    });
                Ok(Some(config_map))
            }
            None => {
                // Gone: forget it (and its bytes).
                *slot = None;
                drop(slot);
                self.forget(&key);
                Ok(None)
            }
        }
    }

    fn forget(&self, key: &Key) {
        self.read
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Forgets every ConfigMap read but `key` (which the caller holds). Entries another caller
    /// holds right now stay reachable to it and are dropped when it lets go.
    fn forget_all_but(&self, key: &Key) {
        let mut read = self.read.lock().unwrap_or_else(|e| e.into_inner());
        read.retain(|k, _| k == key);
        self.bytes_kept
            .store(0, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::{Request, Response};
    use kube::client::Body;
    use kube::runtime::reflector::{self, store::Writer};
    use kube::runtime::watcher;

    use super::*;

    /// A client whose API server answers every request with the ConfigMap `t/bundle` at
    /// resourceVersion `rv` (whatever it holds when asked), counting the requests.
    fn api_server(rv: Arc<Mutex<String>>, requests: Arc<AtomicUsize>) -> Client {
        let service = tower::service_fn(move |_req: Request<Body>| {
            let rv = rv.lock().unwrap().clone();
            requests.fetch_add(1, Ordering::SeqCst);
            async move {
                let cm = serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "bundle", "namespace": "t", "resourceVersion": rv},
                    "binaryData": {"bundle.tar.gz": "AAAA"},
                });
                Ok::<_, std::convert::Infallible>(Response::new(Body::from(
                    serde_json::to_vec(&cm).unwrap(),
                )))
            }
        });
        Client::new(service, "t")
    }

    /// Attack (issue 13 review): a tenant keeps many large ConfigMaps its Plugins once named;
    /// the operator keeps at most its budget of their content, and reads again what it dropped.
    #[tokio::test]
    async fn the_content_kept_is_bounded() {
        let requests = Arc::new(AtomicUsize::new(0));
        let client = api_server(Arc::new(Mutex::new("7".to_string())), Arc::clone(&requests));
        let (store, mut writer) = reflector::store();
        watched(&mut writer, "7");
        let mut cms = BundleConfigMaps::new(store, tokio::sync::watch::channel(true).1);
        // Each ConfigMap of the fake API server holds 16 bytes ("bundle.tar.gz" and 3 bytes).
        cms.max_bytes_kept = 40;
        for ns in ["a", "b", "c", "d", "e"] {
            cms.get(&client, ns, "bundle").await.unwrap();
        }
        assert!(
            cms.read.lock().unwrap().len() <= 2,
            "at most 40 bytes of 16-byte ConfigMaps kept"
        );
        assert!(cms.bytes_kept.load(Ordering::SeqCst) <= 40);
        // A ConfigMap forgotten is read again when a Plugin needs it.
        let before = requests.load(Ordering::SeqCst);
        cms.get(&client, "a", "bundle")
            .await
            .unwrap()
            .expect("read again");
        assert_eq!(requests.load(Ordering::SeqCst), before + 1);
    }

    /// The watch reports the ConfigMap at `rv`.
    fn watched(writer: &mut Writer<PartialObjectMeta<ConfigMap>>, rv: &str) {
        let meta: PartialObjectMeta<ConfigMap> = serde_json::from_value(serde_json::json!({
            "apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
            "metadata": {"name": "bundle", "namespace": "t", "resourceVersion": rv},
        }))
        .unwrap();
        writer.apply_watcher_event(&watcher::Event::Apply(meta));
    }

    /// Issue 13: Plugins sharing a bundle ConfigMap read it once per version, not once each.
    #[tokio::test]
    async fn plugins_sharing_a_config_map_read_it_once_per_version() {
        let (rv, requests) = (Arc::new(Mutex::new("7".to_string())), Arc::default());
        let client = api_server(Arc::clone(&rv), Arc::clone(&requests));
        let (store, mut writer) = reflector::store();
        watched(&mut writer, "7");
        let cms = BundleConfigMaps::new(store, tokio::sync::watch::channel(true).1);

        let reads = futures::future::join_all((0..50).map(|_| cms.get(&client, "t", "bundle")));
        for read in reads.await {
            assert!(read.unwrap().is_some());
        }
        assert_eq!(requests.load(Ordering::SeqCst), 1, "50 Plugins, one GET");

        // A new bundle uploaded: the watch reports the new version, which is read once.
        *rv.lock().unwrap() = "8".into();
        watched(&mut writer, "8");
        for _ in 0..3 {
            let cm = cms.get(&client, "t", "bundle").await.unwrap().unwrap();
            assert_eq!(cm.metadata.resource_version.as_deref(), Some("8"));
        }
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    fn read(rv: &str) -> Read {
        Read {
            resource_version: rv.into(),
            config_map: Arc::new(ConfigMap::default()),
        }
    }

    #[test]
    fn a_version_read_is_served_only_while_the_watch_reports_the_same_one() {
        assert!(still_current(Some(&read("7")), Some("7")));
        // Changed since: read the new one.
        assert!(!still_current(Some(&read("7")), Some("8")));
        // Never read, or not (yet) seen by the watch: read it.
        assert!(!still_current(None, Some("7")));
        assert!(!still_current(Some(&read("7")), None));
    }
}
