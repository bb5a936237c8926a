//! `airlock.host.v1.Host`: the plugins' callbacks (log, storage, emit), served by the router to
//! plugin shims over mutual TLS.
//!
//! The caller is the plugin named by its client certificate (issued by the operator to that
//! Plugin's pods only), so a plugin can only act as itself. Every call is checked against the
//! plugin's effective permissions (`status.permissions`) before anything else: a denied call is
//! PERMISSION_DENIED, audited and counted, and changes nothing. The rules (limits, quotas, event
//! shape) are the pure [`crate::host`] core; storage lives in the Plugin's `PluginStorage` object,
//! behind [`StorageBackend`] so the service is tested without a cluster. How that object is read
//! and written (and retried when another replica wrote first) is [`crate::host::kube_storage`];
//! this module owns only the gRPC side: who calls, whether they may, and the answer.
//!
//! Every RPC takes the same steps, written once: `caller` names the plugin from its certificate
//! (or the call is UNAUTHENTICATED / PERMISSION_DENIED), `HostService::call_as` authorizes it (the
//! Plugin must exist and hold the call's permission; a denial is audited), runs the RPC's handler
//! (its own limits, then the storage or the log) and counts the result. The table `host_rpcs!`
//! names, per RPC, the [`HostCall`] it is checked as and its handler.

use std::future::Future;
use std::sync::{Arc, Mutex};

use airlock_core::identity::parse_plugin_identity;
use airlock_proto::host::v1 as api;
use airlock_proto::host::v1::host_server::Host;
use k8s_openapi::jiff::Timestamp;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::dispatch::{Caller, Router};
use crate::host::kube_storage::{self, StorageBackend, Writer};
use crate::host::log::{Level, LogLimiter, cut_message};
use crate::host::permission::{HostCall, check};
use crate::host::rate::WriteRates;
use crate::host::storage::{DEFAULT_PAGE_SIZE, Limits};
use crate::host::{HostError, event};
use crate::metrics::Metrics;
use crate::table::Holder;
use airlock_core::PluginKey;

/// Where the service's audit records (of denied calls) and the events plugins emit go: the
/// router's audit stream (stdout and the sink) in the cluster, the terminal and a test's
/// expectations on an author's machine (`kubectl airlock run`).
pub trait RecordSink: Send + Sync + std::fmt::Debug {
    /// An audit record of the router (a denied call).
    fn audit(&self, record: &serde_json::Value);
    /// One event a plugin emitted, as the CloudEvent line of the plugins' events stream.
    fn event(&self, line: String);
}

/// The router's audit stream: stdout, and the HTTP sink when one is configured.
#[derive(Debug, Default)]
pub struct AuditStream;

impl RecordSink for AuditStream {
    fn audit(&self, record: &serde_json::Value) {
        crate::audit::emit(record);
    }

    fn event(&self, line: String) {
        airlock_runtime::audit::publish(line);
    }
}

/// The `airlock.host.v1.Host` service.
#[derive(Debug)]
pub struct HostService<C, S> {
    router: Arc<Router<C>>,
    storage: S,
    limits: Limits,
    max_event_bytes: usize,
    log: Mutex<LogLimiter<PluginKey>>,
    /// Storage writes and emits per plugin ([`rate`]).
    rates: Mutex<WriteRates>,
    metrics: Metrics,
    actor: String,
    records: Arc<dyn RecordSink>,
}

impl<C, S> HostService<C, S> {
    pub fn new(router: Arc<Router<C>>, storage: S, metrics: Metrics) -> Self {
        Self {
            router,
            storage,
            limits: Limits::default(),
            max_event_bytes: event::DEFAULT_MAX_PAYLOAD_BYTES,
            log: Mutex::new(LogLimiter::default()),
            rates: Mutex::new(WriteRates::default()),
            metrics,
            actor: format!(
                "airlock-router/{}",
                std::env::var("POD_NAME").unwrap_or_else(|_| "local".into())
            ),
            records: Arc::new(AuditStream),
        }
    }

    /// This service with its audit records and the plugins' events going to `records`.
    pub fn with_records(self, records: Arc<dyn RecordSink>) -> Self {
        Self { records, ..self }
    }
}

impl<C, S> HostService<C, S> {
    /// This service with other write rates: storage writes and events a plugin may make a
    /// minute on this replica.
    pub fn with_write_rates(self, storage_writes_per_minute: u32, emits_per_minute: u32) -> Self {
        Self {
            rates: Mutex::new(WriteRates::new(storage_writes_per_minute, emits_per_minute)),
            ..self
        }
    }
}

/// The storage limits of `holder`: its trust level's caps (never above the service's own).
fn limits_of(base: &Limits, holder: &Holder) -> Limits {
    let l = &holder.limits;
    let cap = |configured: u64, max: usize| usize::try_from(configured).map_or(max, |c| c.min(max));
    Limits {
        max_value_bytes: cap(l.storage_max_value_bytes, base.max_value_bytes),
        max_total_bytes: cap(l.storage_max_bytes, base.max_total_bytes),
        max_keys: cap(u64::from(l.storage_max_keys), base.max_keys),
        ..*base
    }
}

/// The Plugin uid the request's client certificate is bound to, if any.
fn caller_uid<T>(request: &Request<T>) -> Option<String> {
    request
        .peer_certs()
        .and_then(|certs| airlock_tls::peer_plugin_uid(&certs))
}

/// The plugin a request comes from, by its client certificate.
fn caller<T>(request: &Request<T>) -> Result<PluginKey, Status> {
    let Some(certs) = request.peer_certs() else {
        return Err(Status::unauthenticated(
            "the host API is for plugin shims over mutual TLS; no client certificate was presented",
        ));
    };
    let identities = airlock_tls::peer_identities(&certs);
    identities
        .iter()
        .find_map(|id| parse_plugin_identity(id))
        .map(|(ns, name)| PluginKey::new(ns, name))
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "the host API is for plugins; the caller is {identities:?}"
            ))
        })
}

fn status_of(e: &HostError) -> Status {
    Status::new(e.code(), e.to_string())
}

/// Metric label of a host call's result: ok or the gRPC code, lower case.
fn result_label<T>(r: &Result<T, Status>) -> &'static str {
    use tonic::Code;
    match r.as_ref().map_err(Status::code) {
        Ok(_) => "ok",
        Err(Code::PermissionDenied) => "permission_denied",
        Err(Code::InvalidArgument) => "invalid_argument",
        Err(Code::ResourceExhausted) => "resource_exhausted",
        Err(Code::Unavailable) => "unavailable",
        Err(Code::FailedPrecondition) => "failed_precondition",
        Err(Code::Unauthenticated) => "unauthenticated",
        Err(Code::Aborted) => "aborted",
        Err(_) => "other",
    }
}

/// A call [`HostService::authorize`] let through: the plugin that makes it, what that plugin
/// holds, and the request.
#[derive(Debug)]
struct Call<R> {
    plugin: PluginKey,
    holder: Holder,
    request: R,
}

/// A request of `airlock.host.v1.Host`, as [`HostService::call_as`] runs it. Implemented for each
/// RPC's request by `host_rpcs!`.
trait HostRequest: Sized {
    /// The call it is: the permission it needs, its name in denials, audit records and metrics.
    const CALL: HostCall;
    type Response;

    /// The invocation the call is made for (it goes into the audit record of a denial).
    fn invocation_id(&self) -> &str;

    /// The answer to `call` once it is authorized: the RPC's handler.
    fn answer<C: Caller, S: StorageBackend>(
        service: &HostService<C, S>,
        call: Call<Self>,
    ) -> impl Future<Output = Result<Self::Response, Status>> + Send;
}

impl<C: Caller, S: StorageBackend> HostService<C, S> {
    /// Who calls, and whether it may make `call`: the plugin and what it holds, or the refusal
    /// (audited when it is a missing permission).
    fn authorize(
        &self,
        plugin: &PluginKey,
        call: HostCall,
        invocation_id: &str,
    ) -> Result<Holder, Status> {
        let holder = self.router.holder(plugin).ok_or_else(|| {
            Status::permission_denied(format!(
                "there is no Plugin {plugin} that may run (it is being deleted, disabled or quarantined); its calls are refused"
            ))
        })?;
        // The rate first: a denied call costs its budget too, so a plugin that repeats a call it
        // may not make writes at most its rate of audit records, not one per attempt.
        self.rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit(plugin, call, std::time::Instant::now())
            .map_err(|over| {
                warn!(plugin = %plugin, call = call.as_str(), "host call over its rate");
                Status::resource_exhausted(over.to_string())
            })?;
        if let Err(denied) = check(call, &holder.permissions) {
            let record = crate::audit::host_call_denied(
                plugin,
                &holder,
                &denied,
                invocation_id,
                &self.actor,
                Timestamp::now(),
            );
            self.records.audit(&record);
            warn!(plugin = %plugin, call = call.as_str(), invocation = invocation_id, "host call denied");
            let error = HostError::Denied(denied);
            // Counted in status.health as `denied` (at most the call's rate of them, as above).
            self.router.note_health(
                plugin,
                &holder.uid,
                crate::health_report::HealthChange::Denied {
                    message: error.to_string(),
                },
            );
            return Err(status_of(&error));
        }
        Ok(holder)
    }

    /// Whether a certificate bound to `uid` speaks for the Plugin `plugin` is now: a certificate of
    /// a deleted Plugin (or one issued before certificates were bound) does not speak for a new
    /// Plugin of the same name.
    fn bound_to(&self, plugin: &PluginKey, uid: Option<&str>) -> Result<(), Status> {
        let Some(holder) = self.router.holder(plugin) else {
            // No Plugin that may run: `authorize` refuses the call and says so.
            return Ok(());
        };
        if uid == Some(holder.uid.as_str()) {
            return Ok(());
        }
        warn!(plugin = %plugin, "host call with a certificate of another Plugin object");
        self.metrics
            .host_call(plugin, "certificate", "permission_denied");
        Err(Status::permission_denied(format!(
            "the client certificate is not bound to the Plugin {plugin} that exists now (uid {}): it was issued for an earlier Plugin of that name, or before certificates were bound; the operator issues a new one to the plugin's pods",
            holder.uid
        )))
    }

    /// Runs `request` as `plugin` (whom the client certificate names): authorizes it, answers it
    /// once it is allowed, and counts the result.
    async fn call_as<R: HostRequest>(
        &self,
        plugin: PluginKey,
        request: R,
    ) -> Result<R::Response, Status> {
        // The id goes into logs, audit records and events: as bounded as on the HookRouter API.
        let id_len = request.invocation_id().len();
        let result = if id_len > crate::dispatch::MAX_INVOCATION_ID_LEN {
            Err(Status::invalid_argument(format!(
                "invocation_id is {id_len} bytes long; the limit is {}: pass on the id the plugin was called with",
                crate::dispatch::MAX_INVOCATION_ID_LEN
            )))
        } else {
            self.authorize(&plugin, R::CALL, request.invocation_id())
        };
        let result = match result {
            Ok(holder) => {
                let call = Call {
                    plugin: plugin.clone(),
                    holder,
                    request,
                };
                R::answer(self, call).await
            }
            Err(e) => Err(e),
        };
        self.metrics
            .host_call(&plugin, R::CALL.as_str(), result_label(&result));
        result
    }
}

/// The RPCs of `airlock.host.v1.Host`, one line each: the RPC, its request and response types,
/// the [`HostCall`] it is checked as, and its handler. Every RPC is served alike: the caller is
/// named by its client certificate ([`caller`]), then [`HostService::call_as`] authorizes the
/// call, runs the handler and counts the result.
macro_rules! host_rpcs {
    ($($rpc:ident($request:ident) -> $response:ident: $call:ident, $handler:ident;)*) => {
        $(
            impl HostRequest for api::$request {
                const CALL: HostCall = HostCall::$call;
                type Response = api::$response;

                fn invocation_id(&self) -> &str {
                    &self.invocation_id
                }

                fn answer<C: Caller, S: StorageBackend>(
                    service: &HostService<C, S>,
                    call: Call<Self>,
                ) -> impl Future<Output = Result<Self::Response, Status>> + Send {
                    service.$handler(call)
                }
            }
        )*

        #[tonic::async_trait]
        impl<C: Caller, S: StorageBackend> Host for HostService<C, S> {
            $(
                async fn $rpc(
                    &self,
                    request: Request<api::$request>,
                ) -> Result<Response<api::$response>, Status> {
                    let plugin = caller(&request)?;
                    self.bound_to(&plugin, caller_uid(&request).as_deref())?;
                    self.call_as(plugin, request.into_inner())
                        .await
                        .map(Response::new)
                }
            )*
        }

        #[tonic::async_trait]
        impl<C: Caller, S: StorageBackend> Host for AsPlugin<C, S> {
            $(
                async fn $rpc(
                    &self,
                    request: Request<api::$request>,
                ) -> Result<Response<api::$response>, Status> {
                    self.service
                        .call_as(self.plugin.clone(), request.into_inner())
                        .await
                        .map(Response::new)
                }
            )*
        }
    };
}

/// The host API for one plugin fixed when it is made, with no certificate: every call is made as
/// that plugin, with the same checks, rules and limits. It is never served on a socket: an
/// author's `kubectl airlock run` hands it to the shim in-process
/// ([`crate::host::local::LocalHost`]), so no other process can speak as the plugin.
#[derive(Debug)]
pub struct AsPlugin<C, S> {
    service: Arc<HostService<C, S>>,
    plugin: PluginKey,
}

impl<C, S> AsPlugin<C, S> {
    pub fn new(service: Arc<HostService<C, S>>, plugin: PluginKey) -> Self {
        Self { service, plugin }
    }
}

host_rpcs! {
    log(LogRequest) -> LogResponse: Log, log_line;
    get(GetRequest) -> GetResponse: Get, get_value;
    put(PutRequest) -> PutResponse: Put, put_value;
    delete(DeleteRequest) -> DeleteResponse: Delete, delete_key;
    list(ListRequest) -> ListResponse: List, list_keys;
    written_by(WrittenByRequest) -> WrittenByResponse: WrittenBy, storage_written_by;
    emit(EmitRequest) -> EmitResponse: Emit, emit_event;
}

/// The handlers, run once the call is authorized.
impl<C: Caller, S: StorageBackend> HostService<C, S> {
    /// `log`: the line goes to the router's log while the plugin is within its rate.
    async fn log_line(&self, call: Call<api::LogRequest>) -> Result<api::LogResponse, Status> {
        let (plugin, r) = (&call.plugin, &call.request);
        let level = Level::parse(&r.level).map_err(|e| status_of(&e.into()))?;
        let admission = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .admit_at_rate(
                plugin,
                call.holder.limits.log_lines_per_minute.max(1),
                tokio::time::Instant::now(),
            );
        if admission.kept {
            let message = cut_message(&r.message);
            info!(
                target: "airlock::plugin",
                plugin = %plugin,
                invocation = %r.invocation_id,
                level = level.as_str(),
                message,
                "plugin log"
            );
        } else {
            self.metrics.host_log_dropped(plugin);
        }
        Ok(api::LogResponse {
            kept: admission.kept,
            dropped: admission.dropped,
        })
    }

    /// `storage.get`: the value stored under the key, if any.
    async fn get_value(&self, call: Call<api::GetRequest>) -> Result<api::GetResponse, Status> {
        let stored = self.storage.load(&call.plugin).await?;
        Ok(match stored.store.get(&call.request.key) {
            Some(v) => api::GetResponse {
                found: true,
                value_json: v.to_string(),
            },
            None => api::GetResponse {
                found: false,
                value_json: String::new(),
            },
        })
    }

    /// `storage.put`: stores the value within the plugin's storage limits.
    async fn put_value(&self, call: Call<api::PutRequest>) -> Result<api::PutResponse, Status> {
        let (r, limits) = (&call.request, limits_of(&self.limits, &call.holder));
        let writer = Writer::new(&call.holder, &r.plugin_version);
        kube_storage::update(&self.storage, &call.plugin, writer, |store| {
            store
                .put(&r.key, &r.value_json, &limits)
                .map(|()| ((), true))
                .map_err(|e| status_of(&e.into()))
        })
        .await?;
        Ok(api::PutResponse {})
    }

    /// `storage.delete`: removes the key, saying whether it was there.
    async fn delete_key(
        &self,
        call: Call<api::DeleteRequest>,
    ) -> Result<api::DeleteResponse, Status> {
        let writer = Writer::new(&call.holder, &call.request.plugin_version);
        let existed = kube_storage::update(&self.storage, &call.plugin, writer, |store| {
            let existed = store.delete(&call.request.key);
            Ok((existed, existed))
        })
        .await?;
        Ok(api::DeleteResponse { existed })
    }

    /// `storage.list`: one page of the keys with the prefix.
    async fn list_keys(&self, call: Call<api::ListRequest>) -> Result<api::ListResponse, Status> {
        let stored = self.storage.load(&call.plugin).await?;
        let r = call.request;
        let after = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let size = match r.page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n as usize,
        };
        let page = stored.store.list(&r.prefix, after, size);
        Ok(api::ListResponse {
            keys: page.keys,
            next_page_token: page.next.unwrap_or_default(),
        })
    }

    /// `storage.writtenBy`: the plugin version that last wrote the storage, if one is recorded.
    async fn storage_written_by(
        &self,
        call: Call<api::WrittenByRequest>,
    ) -> Result<api::WrittenByResponse, Status> {
        let stored = self.storage.load(&call.plugin).await?;
        Ok(api::WrittenByResponse {
            written_by: stored.written_by.unwrap_or_default(),
        })
    }

    /// `emit`: one line on the plugin's events stream.
    async fn emit_event(&self, call: Call<api::EmitRequest>) -> Result<api::EmitResponse, Status> {
        let (plugin, r) = (&call.plugin, &call.request);
        let ev = event::check_event(&r.event_type, &r.payload_json, self.max_event_bytes)
            .map_err(|e| status_of(&e.into()))?;
        // The plugin's events stream: one CloudEvent per line on the router's stdout (next to
        // the audit stream) and to the audit sink, stamped with who emitted it and when.
        // Embedded as sent (no re-encoding of numbers); check_event made sure it is JSON.
        let payload = serde_json::value::RawValue::from_string(ev.payload_json.clone())
            .map_err(|e| Status::invalid_argument(format!("payload_json: {e}")))?;
        self.records.event(airlock_runtime::audit::plugin_event(
            &plugin.namespace,
            &plugin.name,
            &call.holder.uid,
            &r.invocation_id,
            &ev.event_type,
            &payload,
            &Timestamp::now().to_string(),
        ));
        Ok(api::EmitResponse {})
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use tonic::Code;

    use super::*;
    use crate::dispatch::{Answer, CallFailure, CallRequest, RouterConfig};
    use crate::host::kube_storage::memory::MemoryStorage;
    use crate::table::{Route, RouteTable};

    #[derive(Debug)]
    struct NoCalls;
    impl Caller for NoCalls {
        async fn call(&self, _: Arc<Route>, _: CallRequest) -> Result<Answer, CallFailure> {
            Err(CallFailure {
                code: Code::Unavailable,
                message: "not in this test".into(),
                outcome: crate::breaker::Outcome::Unreachable,
            })
        }
    }
    /// Records what the host API tells the plugin's health record.
    #[derive(Debug, Default)]
    struct HealthSeen(std::sync::Mutex<Vec<crate::health_report::HealthChange>>);
    impl crate::dispatch::Disabler for HealthSeen {
        fn disable(&self, _: &Route, _: &str) {}
        fn health(
            &self,
            _: &airlock_core::PluginKey,
            _: &str,
            change: crate::health_report::HealthChange,
        ) {
            self.0.lock().unwrap().push(change);
        }
    }

    type Service = HostService<NoCalls, Arc<MemoryStorage>>;

    /// The Plugin team-a/logger with `status`.
    fn logger(status: serde_json::Value) -> airlock_crds::Plugin {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": "logger", "namespace": "team-a", "uid": "uid-1"},
            "spec": {
                "version": "1.0.0",
                "image": "r/logger:1",
                "bundle": {"source": {"configMapRef": {"name": "b"}}},
                "pluginApiVersion": 1,
            },
            "status": status,
        }))
        .unwrap()
    }

    fn service(permissions: &[&str]) -> (Service, Arc<MemoryStorage>) {
        let (svc, storage, _) = service_seen(permissions);
        (svc, storage)
    }

    fn service_seen(permissions: &[&str]) -> (Service, Arc<MemoryStorage>, Arc<HealthSeen>) {
        let plugin = logger(serde_json::json!({"phase": "Active", "permissions": permissions}));
        let metrics = Metrics::new().unwrap();
        let seen = Arc::new(HealthSeen::default());
        let router = Arc::new(Router::new(
            NoCalls,
            seen.clone(),
            RouterConfig::default(),
            metrics.clone(),
        ));
        router.update(RouteTable::build([&plugin], &HashMap::new()));
        let storage = Arc::new(MemoryStorage::default());
        (
            HostService::new(router, storage.clone(), metrics),
            storage,
            seen,
        )
    }

    fn me() -> PluginKey {
        PluginKey::new("team-a", "logger")
    }

    fn put(key: &str, value: &str) -> api::PutRequest {
        api::PutRequest {
            invocation_id: "inv-1".into(),
            key: key.into(),
            value_json: value.into(),
            plugin_version: String::new(),
        }
    }

    fn get(key: &str) -> api::GetRequest {
        api::GetRequest {
            invocation_id: "inv-1".into(),
            key: key.into(),
        }
    }

    fn log(level: &str) -> api::LogRequest {
        api::LogRequest {
            invocation_id: "inv-1".into(),
            level: level.into(),
            message: "hello".into(),
        }
    }

    /// How many of `lines` info lines logged in a row the service keeps.
    async fn lines_kept(svc: &Service, lines: usize) -> usize {
        let mut kept = 0;
        for _ in 0..lines {
            if svc.call_as(me(), log("info")).await.unwrap().kept {
                kept += 1;
            }
        }
        kept
    }

    /// Review (issue 15 telemetry): the id goes into logs, audit records and events; a plugin
    /// cannot make it any size.
    #[tokio::test]
    async fn an_overlong_invocation_id_is_refused_before_anything_runs() {
        let (svc, storage) = service(&["storage:write"]);
        let mut p = put("k", "1");
        p.invocation_id = "x".repeat(crate::dispatch::MAX_INVOCATION_ID_LEN + 1);
        let e = svc.call_as(me(), p).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains("invocation_id"), "{e:?}");
        let mut g = get("k");
        g.invocation_id = "x".repeat(crate::dispatch::MAX_INVOCATION_ID_LEN);
        assert!(
            svc.call_as(me(), g).await.is_ok(),
            "the limit itself is allowed"
        );
        drop(storage);
    }

    /// A plugin repeating a call it may not make is held to the call's rate: past it the answer
    /// is RESOURCE_EXHAUSTED (no audit record), not one PERMISSION_DENIED record per attempt.
    #[tokio::test]
    async fn denied_calls_are_held_to_the_calls_rate() {
        let (svc, _) = service(&["log"]);
        let mut codes = std::collections::BTreeMap::new();
        for _ in 0..2000 {
            let code = svc.call_as(me(), put("k", "1")).await.unwrap_err().code();
            *codes.entry(format!("{code:?}")).or_insert(0) += 1;
        }
        assert!(codes.contains_key("PermissionDenied"), "{codes:?}");
        assert!(codes.contains_key("ResourceExhausted"), "{codes:?}");
    }

    #[tokio::test]
    async fn a_plugin_with_storage_write_stores_reads_lists_and_deletes() {
        let (svc, storage) = service(&["storage:write"]);
        svc.call_as(me(), put("orders/1", "{ \"total\": 1.10 }"))
            .await
            .unwrap();
        // A shim that reports no version: the write is the Plugin's spec.version's.
        assert_eq!(storage.written_by.lock().unwrap().as_deref(), Some("1.0.0"));
        svc.call_as(me(), put("orders/2", "2")).await.unwrap();
        let got = svc.call_as(me(), get("orders/1")).await.unwrap();
        assert!(got.found);
        assert_eq!(
            got.value_json, "{\"total\":1.10}",
            "kept as sent, compacted"
        );
        let listed = svc
            .call_as(
                me(),
                api::ListRequest {
                    invocation_id: "inv-1".into(),
                    prefix: "orders/".into(),
                    page_token: String::new(),
                    page_size: 1,
                },
            )
            .await
            .unwrap();
        assert_eq!(listed.keys, ["orders/1"]);
        assert_eq!(listed.next_page_token, "orders/1");
        let gone = svc
            .call_as(
                me(),
                api::DeleteRequest {
                    invocation_id: "inv-1".into(),
                    key: "orders/1".into(),
                    plugin_version: "0.9.0".into(),
                },
            )
            .await
            .unwrap();
        assert!(gone.existed);
        // The delete came from a process of 0.9.0 (an old pod during a rollout).
        assert_eq!(storage.written_by.lock().unwrap().as_deref(), Some("0.9.0"));
        let asked = api::WrittenByRequest {
            invocation_id: "inv-1".into(),
        };
        assert_eq!(
            svc.call_as(me(), asked).await.unwrap().written_by,
            "0.9.0",
            "what onUpgrade's from comes from"
        );
        assert!(!svc.call_as(me(), get("orders/1")).await.unwrap().found);
    }

    #[tokio::test]
    async fn a_call_without_its_permission_is_denied_and_changes_nothing() {
        let (svc, storage, seen) = service_seen(&["log", "storage:read"]);
        let err = svc.call_as(me(), put("k", "1")).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("storage:write"), "{err:?}");
        assert!(storage.stored.lock().unwrap().is_none(), "nothing written");
        // Issue 17: the refusal is part of the plugin's health (status.health.failures.denied);
        // an allowed call is not.
        svc.call_as(me(), get("k")).await.unwrap();
        assert!(matches!(
            seen.0.lock().unwrap().as_slice(),
            [crate::health_report::HealthChange::Denied { message }] if message.contains("storage:write")
        ));
        let err = svc
            .call_as(
                me(),
                api::EmitRequest {
                    invocation_id: "inv-1".into(),
                    event_type: "seen".into(),
                    payload_json: "{}".into(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("events:emit"), "{err:?}");
        // Reading is allowed with storage:read.
        assert!(!svc.call_as(me(), get("k")).await.unwrap().found);
    }

    /// What `call_as` answers `request` for a plugin holding `permissions`: Ok, or the code.
    async fn outcome<R: HostRequest>(permissions: &[&str], request: R) -> Result<(), Code> {
        let (svc, _) = service(permissions);
        svc.call_as(me(), request)
            .await
            .map(drop)
            .map_err(|e| e.code())
    }

    /// Issue 12: a plugin's certificate speaks only for the Plugin object it was issued to. One of
    /// a deleted Plugin (a leaked key of its pods), or one bound to no Plugin, is refused for a new
    /// Plugin of the same name.
    #[tokio::test]
    async fn a_certificate_speaks_only_for_the_plugin_object_it_was_bound_to() {
        let (svc, _) = service(&["log"]);
        assert!(svc.bound_to(&me(), Some("uid-1")).is_ok());
        for uid in [Some("uid-of-an-earlier-logger"), None] {
            let err = svc.bound_to(&me(), uid).expect_err("another Plugin object");
            assert_eq!(err.code(), Code::PermissionDenied);
            assert!(err.message().contains("uid uid-1"), "{err:?}");
        }
    }

    /// A plugin over its write rate is refused with RESOURCE_EXHAUSTED naming the rate, and
    /// nothing is written; its reads go on.
    #[tokio::test]
    async fn storage_writes_and_emits_are_rate_limited_per_plugin() {
        let (svc, storage) = service(&["storage:read", "storage:write", "events:emit"]);
        let svc = svc.with_write_rates(2, 1);
        svc.call_as(me(), put("a", "1")).await.expect("first write");
        svc.call_as(me(), put("b", "2"))
            .await
            .expect("second write");
        let over = svc
            .call_as(me(), put("c", "3"))
            .await
            .expect_err("a third write in the same minute");
        assert_eq!(over.code(), Code::ResourceExhausted);
        assert!(
            over.message().contains("2 storage writes a minute"),
            "{over:?}"
        );
        let stored = storage.stored.lock().unwrap().clone().expect("stored").0;
        assert!(!stored.contains_key("c"), "nothing written: {stored:?}");
        svc.call_as(me(), get("a"))
            .await
            .expect("reads are not limited");
        let emit = || api::EmitRequest {
            invocation_id: "inv-1".into(),
            event_type: "seen".into(),
            payload_json: "{}".into(),
        };
        svc.call_as(me(), emit()).await.expect("first event");
        assert_eq!(
            svc.call_as(me(), emit())
                .await
                .map(drop)
                .map_err(|e| e.code()),
            Err(Code::ResourceExhausted)
        );
    }

    /// Each RPC is checked as its own call: with no permission every one is denied, and each is
    /// allowed by exactly the permissions `permission::required` names for it (a row of the
    /// `host_rpcs!` table bound to the wrong call would fail here).
    #[tokio::test]
    async fn every_rpc_needs_the_permission_of_its_own_call() {
        let list = || api::ListRequest {
            invocation_id: "inv-1".into(),
            ..Default::default()
        };
        let delete = || api::DeleteRequest {
            invocation_id: "inv-1".into(),
            key: "k".into(),
            ..Default::default()
        };
        let emit = || api::EmitRequest {
            invocation_id: "inv-1".into(),
            event_type: "seen".into(),
            payload_json: "{}".into(),
        };
        let written_by = || api::WrittenByRequest {
            invocation_id: "inv-1".into(),
        };
        let denied = Err(Code::PermissionDenied);
        for (permissions, expected) in [
            (
                &[][..],
                [denied, denied, denied, denied, denied, denied, denied],
            ),
            (
                &["log"][..],
                [Ok(()), denied, denied, denied, denied, denied, denied],
            ),
            (
                &["storage:read"][..],
                [denied, Ok(()), denied, denied, Ok(()), Ok(()), denied],
            ),
            (
                &["storage:write"][..],
                [denied, Ok(()), Ok(()), Ok(()), Ok(()), Ok(()), denied],
            ),
            (
                &["events:emit"][..],
                [denied, denied, denied, denied, denied, denied, Ok(())],
            ),
        ] {
            let got = [
                outcome(permissions, log("info")).await,
                outcome(permissions, get("k")).await,
                outcome(permissions, put("k", "1")).await,
                outcome(permissions, delete()).await,
                outcome(permissions, list()).await,
                outcome(permissions, written_by()).await,
                outcome(permissions, emit()).await,
            ];
            assert_eq!(
                got, expected,
                "log, get, put, delete, list, writtenBy, emit with {permissions:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_unknown_plugin_is_refused() {
        let (svc, _) = service(&["storage:write"]);
        let err = svc
            .call_as(PluginKey::new("team-a", "ghost"), get("k"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied);
        assert!(err.message().contains("no Plugin team-a/ghost"), "{err:?}");
    }

    #[tokio::test]
    async fn limits_come_back_with_their_codes() {
        let (svc, _) = service(&["storage:write"]);
        let big = format!("\"{}\"", "x".repeat(200 * 1024));
        let err = svc.call_as(me(), put("k", &big)).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
        let err = svc.call_as(me(), put("k", "not json")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }

    #[tokio::test]
    async fn the_trust_levels_caps_apply_to_storage_and_log() {
        let (svc, _) = service(&["storage:write", "log"]);
        // The controller wrote tighter limits into the status (from the trust level).
        let table_plugin = logger(serde_json::json!({
            "phase": "Active", "permissions": ["log", "storage:write"],
            "limits": {"logLinesPerMinute": 3, "storageMaxValueBytes": 10,
                "storageMaxBytes": 30, "storageMaxKeys": 2},
        }));
        svc.router
            .update(RouteTable::build([&table_plugin], &HashMap::new()));
        let err = svc
            .call_as(me(), put("k", "\"0123456789\""))
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::ResourceExhausted,
            "value over 10 bytes: {err:?}"
        );
        svc.call_as(me(), put("a", "1")).await.unwrap();
        svc.call_as(me(), put("b", "2")).await.unwrap();
        let err = svc.call_as(me(), put("c", "3")).await.unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted, "a third key: {err:?}");
        assert_eq!(lines_kept(&svc, 10).await, 3);
    }

    #[tokio::test]
    async fn log_lines_over_the_rate_limit_are_dropped_not_failed() {
        let (svc, _) = service(&["log"]);
        assert_eq!(
            lines_kept(&svc, 150).await,
            100,
            "the default budget is 100 lines a minute"
        );
        let err = svc.call_as(me(), log("loud")).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
    }
}
