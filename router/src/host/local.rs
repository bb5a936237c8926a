//! The host API on a plugin author's machine (`kubectl airlock run`): the router's own
//! [`HostService`], with its permission checks, limits and rates, for one plugin fixed when it
//! is made ([`AsPlugin`]), its storage in memory or in a file ([`FileStorage`]), and its records
//! going where the caller says ([`RecordSink`]). Nothing here listens on a socket: the shim
//! reaches it in-process, so no other process can speak as the plugin.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use airlock_core::PluginKey;
use airlock_proto::host::v1::host_server::HostServer;
use kube::api::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tonic::Status;

use crate::dispatch::{Answer, CallFailure, CallRequest, Caller, Disabler, Router, RouterConfig};
use crate::host::kube_storage::{SaveError, StorageBackend, Stored, Writer};
use crate::host::service::{AsPlugin, HostService, RecordSink};
use crate::host::storage::Store;
use crate::metrics::Metrics;
use crate::table::{Route, RouteTable};

/// The namespace a locally run plugin is in, for its key in records (there is no cluster).
pub const LOCAL_NAMESPACE: &str = "local";

/// The plugin a local host API serves, as its manifest and the author's flags say.
#[derive(Debug, Clone)]
pub struct LocalPlugin {
    pub name: String,
    pub version: String,
    pub plugin_api_version: u32,
    /// The permissions it holds (in the cluster: declared ∩ the Plugin's spec.permissions ∩ the
    /// trust level; here what the author grants, by default all it declares).
    pub permissions: Vec<String>,
}

/// The host API service for one plugin, as a tonic service the shim's client can wrap.
pub type LocalHost = HostServer<AsPlugin<NoCalls, Arc<FileStorage>>>;

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error("the local plugin cannot be described as a Plugin: {0}")]
    Plugin(String),
    #[error("the router's metrics: {0}")]
    Metrics(String),
}

/// The host API for `plugin`, with `storage` and its records to `records`.
pub fn local_host(
    plugin: &LocalPlugin,
    storage: Arc<FileStorage>,
    records: Arc<dyn RecordSink>,
) -> Result<LocalHost, LocalError> {
    let object: airlock_crds::Plugin = serde_json::from_value(serde_json::json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": plugin.name, "namespace": LOCAL_NAMESPACE, "uid": "local"},
        "spec": {
            "version": plugin.version,
            "image": "local",
            "bundle": {"source": {"configMapRef": {"name": "local"}}},
            "pluginApiVersion": plugin.plugin_api_version,
        },
        "status": {"phase": "Active", "permissions": plugin.permissions},
    }))
    .map_err(|e| LocalError::Plugin(e.to_string()))?;
    let metrics = Metrics::new().map_err(|e| LocalError::Metrics(e.to_string()))?;
    let router = Arc::new(Router::new(
        NoCalls,
        Arc::new(NoDisabler),
        RouterConfig::default(),
        metrics.clone(),
    ));
    router.update(RouteTable::build([&object], &HashMap::new()));
    let service = HostService::new(router, storage, metrics).with_records(records);
    // The cluster's request limit too (router/src/server.rs).
    Ok(HostServer::new(AsPlugin::new(
        Arc::new(service),
        PluginKey::new(LOCAL_NAMESPACE, &plugin.name),
    ))
    .max_decoding_message_size(crate::host::MAX_HOST_MESSAGE_BYTES))
}

/// The local host API makes no hook calls: it is the plugin's side only.
#[derive(Debug)]
pub struct NoCalls;

impl Caller for NoCalls {
    async fn call(&self, _: Arc<Route>, _: CallRequest) -> Result<Answer, CallFailure> {
        Err(CallFailure {
            code: tonic::Code::Unimplemented,
            message: "a local host API calls no plugins".into(),
            outcome: crate::breaker::Outcome::Unreachable,
        })
    }
}

/// Nothing to disable and no status to count in on an author's machine: denials are told
/// through the [`RecordSink`].
#[derive(Debug)]
struct NoDisabler;

impl Disabler for NoDisabler {
    fn disable(&self, _: &Route, _: &str) {}
    fn health(&self, _: &PluginKey, _: &str, _: crate::health_report::HealthChange) {}
}

/// A plugin's storage kept in memory and, with a file, written there after every change (and
/// read from it at start): `{"writtenBy": "1.0.0" | null, "data": {"key": <JSON value>, ...}}`.
/// The limits are the cluster's: the [`Store`] enforces them, not this.
#[derive(Debug, Default)]
pub struct FileStorage {
    path: Option<PathBuf>,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    entries: BTreeMap<String, String>,
    written_by: Option<String>,
    /// Bumped by each save: what an optimistic write compares, as a resourceVersion.
    version: u64,
}

/// The file's form.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FileForm {
    #[serde(default)]
    written_by: Option<String>,
    #[serde(default)]
    data: BTreeMap<String, Box<RawValue>>,
}

#[derive(Debug, thiserror::Error)]
pub enum FileStorageError {
    #[error("reading the storage file {}: {source}", .path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the storage file {} is not {{\"writtenBy\": ..., \"data\": {{key: JSON value}}}}: {reason}",
        .path.display()
    )]
    Form { path: PathBuf, reason: String },
}

impl FileStorage {
    /// Storage in memory only, empty.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// Storage kept in `path`: read now if it exists (its values checked against the limits as
    /// in the cluster), written after every change.
    pub fn in_file(path: &Path) -> Result<Self, FileStorageError> {
        let mut state = State::default();
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let form_error = |reason: String| FileStorageError::Form {
                    path: path.to_path_buf(),
                    reason,
                };
                let form: FileForm =
                    serde_json::from_str(&text).map_err(|e| form_error(e.to_string()))?;
                state.entries = form
                    .data
                    .into_iter()
                    .map(|(k, v)| (k, v.get().to_string()))
                    .collect();
                Store::from_entries(&state.entries).map_err(form_error)?;
                state.written_by = form.written_by;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(FileStorageError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        Ok(Self {
            path: Some(path.to_path_buf()),
            state: Mutex::new(state),
        })
    }

    /// Replaces what is stored with `values` (key → JSON value), as if the version `written_by`
    /// (when given) wrote them; refused, naming the key, beyond the cluster's limits.
    pub fn seed(
        &self,
        values: &BTreeMap<String, serde_json::Value>,
        written_by: Option<&str>,
    ) -> Result<(), FileStorageError> {
        let entries: BTreeMap<String, String> = values
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect();
        Store::from_entries(&entries).map_err(|reason| FileStorageError::Form {
            path: self
                .path
                .clone()
                .unwrap_or_else(|| PathBuf::from("the seed")),
            reason,
        })?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let next = State {
            entries,
            written_by: written_by.map(str::to_string).or(state.written_by.clone()),
            version: state.version + 1,
        };
        self.write_file(&next)
            .map_err(|status| FileStorageError::Form {
                path: self.path.clone().unwrap_or_default(),
                reason: status.message().to_string(),
            })?;
        *state = next;
        Ok(())
    }

    /// What is stored now: key → JSON text, and the version that last wrote it.
    pub fn snapshot(&self) -> (BTreeMap<String, String>, Option<String>) {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        (state.entries.clone(), state.written_by.clone())
    }

    fn write_file(&self, state: &State) -> Result<(), Status> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let data = state
            .entries
            .iter()
            .map(|(k, v)| RawValue::from_string(v.clone()).map(|v| (k.clone(), v)))
            .collect::<Result<BTreeMap<_, _>, _>>()
            .map_err(|e| Status::internal(format!("a stored value is not JSON: {e}")))?;
        let form = FileForm {
            written_by: state.written_by.clone(),
            data,
        };
        let text = serde_json::to_string_pretty(&form)
            .map_err(|e| Status::internal(format!("serializing the storage: {e}")))?;
        // Written beside and renamed: a run stopped mid-write leaves the old file, not half.
        let partial = path.with_extension("partial");
        std::fs::write(&partial, text + "\n")
            .and_then(|()| std::fs::rename(&partial, path))
            .map_err(|e| {
                Status::unavailable(format!("writing the storage file {}: {e}", path.display()))
            })
    }
}

impl StorageBackend for Arc<FileStorage> {
    async fn load(&self, _plugin: &PluginKey) -> Result<Stored, Status> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        Ok(Stored {
            store: Store::from_entries(&state.entries).map_err(Status::failed_precondition)?,
            meta: Some(ObjectMeta {
                resource_version: Some(state.version.to_string()),
                ..Default::default()
            }),
            seed_bytes: 0,
            written_by: state.written_by.clone(),
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
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if previous.and_then(|m| m.resource_version) != Some(state.version.to_string()) {
            return Err(SaveError::Conflict);
        }
        let next = State {
            entries: store.to_entries(),
            written_by: Some(writer.version.to_string()),
            version: state.version + 1,
        };
        self.write_file(&next).map_err(SaveError::Failed)?;
        *state = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use airlock_proto::host::v1::host_client::HostClient;
    use airlock_proto::host::v1::{EmitRequest, GetRequest, LogRequest, PutRequest};

    use super::*;

    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<String>>);
    impl RecordSink for Seen {
        fn audit(&self, record: &serde_json::Value) {
            self.0
                .lock()
                .unwrap()
                .push(format!("audit {}", record["reason"]));
        }
        fn event(&self, line: String) {
            self.0.lock().unwrap().push(line);
        }
    }

    fn plugin(permissions: &[&str]) -> LocalPlugin {
        LocalPlugin {
            name: "counter".into(),
            version: "1.2.0".into(),
            plugin_api_version: 1,
            permissions: permissions.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn put(key: &str, value: &str) -> PutRequest {
        PutRequest {
            invocation_id: "t-1".into(),
            key: key.into(),
            value_json: value.into(),
            plugin_version: "1.2.0".into(),
        }
    }

    #[tokio::test]
    async fn calls_are_checked_as_in_the_cluster_and_stored_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage.json");
        let storage = Arc::new(FileStorage::in_file(&path).unwrap());
        let seen = Arc::new(Seen::default());
        let host = local_host(
            &plugin(&["log", "storage:read", "storage:write"]),
            storage.clone(),
            seen.clone(),
        )
        .unwrap();
        let mut client = HostClient::new(host);
        client.put(put("count", "12.50")).await.unwrap();
        let got = client
            .get(GetRequest {
                invocation_id: "t-1".into(),
                key: "count".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(got.found);
        assert_eq!(got.value_json, "12.50", "the value as the plugin wrote it");
        // Not granted: refused as the router refuses it, and the denial recorded.
        let denied = client
            .emit(EmitRequest {
                invocation_id: "t-1".into(),
                event_type: "counted".into(),
                payload_json: "{}".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("emit"), "{denied:?}");
        assert_eq!(seen.0.lock().unwrap().len(), 1, "one audit record");
        // A bad key is the router's INVALID_ARGUMENT, with its message.
        let bad = client.put(put("", "1")).await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::InvalidArgument);
        // The file holds it, and a new run starts from it.
        let text = std::fs::read_to_string(&path).unwrap();
        let form: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(form["writtenBy"], "1.2.0");
        let again = FileStorage::in_file(&path).unwrap();
        assert_eq!(
            again.snapshot().0.get("count").map(String::as_str),
            Some("12.50")
        );
        let log = client
            .log(LogRequest {
                invocation_id: "t-1".into(),
                level: "info".into(),
                message: "hi".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(log.kept);
    }

    #[tokio::test]
    async fn emitted_events_go_to_the_sink() {
        let seen = Arc::new(Seen::default());
        let host = local_host(
            &plugin(&["events:emit"]),
            Arc::new(FileStorage::in_memory()),
            seen.clone(),
        )
        .unwrap();
        HostClient::new(host)
            .emit(EmitRequest {
                invocation_id: "t-2".into(),
                event_type: "order.seen".into(),
                payload_json: r#"{"id":7}"#.into(),
            })
            .await
            .unwrap();
        let lines = seen.0.lock().unwrap().clone();
        assert_eq!(lines.len(), 1);
        let event: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
        assert_eq!(
            event["data"]["payload"],
            serde_json::json!({"id": 7}),
            "{event}"
        );
        assert!(
            event["type"].as_str().unwrap().ends_with("order.seen"),
            "{event}"
        );
    }

    #[test]
    fn a_storage_file_of_another_shape_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        std::fs::write(&path, r#"{"data": {"k": not-json}}"#).unwrap();
        let e = FileStorage::in_file(&path).unwrap_err();
        assert!(e.to_string().contains("s.json"), "{e}");
    }
}
