//! The router's Kubernetes side: watches of Plugins and their EndpointSlices that keep the
//! [`RouteTable`] current, the watch of PluginCallerBindings that keeps the callers' grants
//! current, and the [`Disabler`] that records an auto-disable on the Plugin (`status.autoDisabled`), as an
//! Event and on the audit stream, and writes the plugin's failures into `status.health`.

use std::collections::HashMap;
use std::sync::Arc;

use airlock_crds::plugin::AutoDisabled;
use airlock_crds::{Plugin, PluginCallerBinding};
use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::audit;
use crate::callers::{Bindings, Gate};
use crate::dispatch::{Caller, Disabler, Router};
use crate::health_report::{HealthChange, Ledger, Pending, REPORT_EVERY, merged};
use crate::table::{Route, RouteTable};
use airlock_core::shard::Shard;

/// Who the router's audit records and Events name.
pub const ACTOR: &str = "airlock-router";

/// Most watch events folded into one rebuild of the route table (they are all in the stores by
/// then; the bound only keeps one batch's buffer small).
const EVENTS_PER_REBUILD: usize = 1024;

/// Keeps `router`'s table in step with the cluster until the watches end: the Plugins of
/// `shard` (the operator of this release serves the same) and their EndpointSlices. `loaded`
/// turns true once both watches listed everything (the router is then ready to serve).
pub async fn watch_routes<C: Caller>(
    client: Client,
    shard: Shard,
    router: Arc<Router<C>>,
    loaded: watch::Sender<bool>,
) {
    let (plugins, plugin_writer) = reflector::store::<Plugin>();
    let (slices, slice_writer) = reflector::store::<EndpointSlice>();
    // Each watch event becomes (which watch, whether it finished its initial list).
    let plugin_events = reflector::reflector(
        plugin_writer,
        watcher(
            Api::<Plugin>::all(client.clone()),
            airlock_runtime::watch::config().labels(&shard.selector()),
        )
        .modify(slim),
    )
    .backoff(airlock_runtime::watch::WatchBackoff::default())
    .filter({
        // A write of status.health alone (every 10 s per failing plugin, by each replica) is
        // not a reason to rebuild the table of every Plugin.
        let mut seen = RouteInputs::default();
        move |e| std::future::ready(seen.changed(e))
    })
    .filter_map(|e| async move { change("Plugin", e).map(|listed| (0, listed)) });
    // The EndpointSlice controller copies the Service's labels onto its slices: only the slices
    // of the Services Airlock made for this shard's Plugins are watched.
    let slice_events = reflector::reflector(
        slice_writer,
        watcher(
            Api::<EndpointSlice>::all(client),
            airlock_runtime::watch::config().labels(&shard.managed_selector()),
        )
        .modify(slim),
    )
    .backoff(airlock_runtime::watch::WatchBackoff::default())
    .filter_map(|e| async move { change("EndpointSlice", e).map(|listed| (1, listed)) });
    // The table is rebuilt from both stores (O(Plugins)) once per batch of the events that are
    // waiting, not once per event: a burst of N changes (10,000 Plugins and their slices being
    // created) costs a few rebuilds while the previous one ran, instead of N × O(N).
    let mut changes = std::pin::pin!(
        futures::stream::select(plugin_events, slice_events).ready_chunks(EVENTS_PER_REBUILD)
    );
    let mut listed = [false, false];
    while let Some(batch) = changes.next().await {
        for (watch, done) in batch {
            listed[watch] |= done;
        }
        if !listed.iter().all(|l| *l) {
            continue;
        }
        // Off the async workers: at thousands of Plugins a rebuild takes long enough to starve
        // the tasks that answer calls and the kubelet's probes (found at 8,600 Plugins: /healthz
        // timed out, the kubelet restarted the router, which listed everything again, and so on).
        let (p, s, r) = (plugins.clone(), slices.clone(), Arc::clone(&router));
        if let Err(e) = tokio::task::spawn_blocking(move || r.update(table(&p, &s))).await {
            warn!(error = %e, "rebuilding the route table failed");
            continue;
        }
        if !*loaded.borrow() {
            info!(plugins = plugins.state().len(), "route table loaded");
            loaded.send_replace(true);
        }
    }
    warn!("the Plugin and EndpointSlice watches ended");
}

/// The hash of what the route table reads of each Plugin (everything but `status.health` and the
/// resourceVersion), to tell the watch events that change a route from those that do not.
#[derive(Default)]
struct RouteInputs(HashMap<String, u64>);

impl RouteInputs {
    /// Whether `event` may change the table: not when it shows a Plugin whose route inputs are
    /// those it had at its last event.
    fn changed(&mut self, event: &Result<watcher::Event<Plugin>, watcher::Error>) -> bool {
        match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) => {
                let (uid, hash) = (p.metadata.uid.clone().unwrap_or_default(), route_inputs(p));
                self.0.insert(uid, hash) != Some(hash)
                    || matches!(event, Ok(watcher::Event::InitApply(_)))
            }
            Ok(watcher::Event::Delete(p)) => {
                self.0.remove(p.metadata.uid.as_deref().unwrap_or_default());
                true
            }
            _ => true,
        }
    }
}

fn route_inputs(plugin: &Plugin) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let meta = &plugin.metadata;
    (&meta.name, &meta.namespace, &meta.generation).hash(&mut h);
    (&meta.labels, &meta.annotations).hash(&mut h);
    meta.deletion_timestamp.is_some().hash(&mut h);
    // The spec and the status as JSON (neither derives Hash), the router's health record aside.
    serde_json::to_string(&plugin.spec)
        .unwrap_or_default()
        .hash(&mut h);
    // (No status reads as the default one, as the table reads it.)
    let status = airlock_crds::plugin::PluginStatus {
        health: None,
        ..plugin.status.clone().unwrap_or_default()
    };
    serde_json::to_string(&status)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// What the route table never reads, left out of the watch caches (their memory grows with the
/// number of Plugins): who wrote which field, and `kubectl apply`'s copy of the whole object.
fn slim<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    object
        .annotations_mut()
        .remove("kubectl.kubernetes.io/last-applied-configuration");
}

/// Keeps `gate`'s PluginCallerBindings in step with the cluster (every namespace) until the watch
/// ends. `loaded` turns true once they are listed: until then every call would be denied, so the
/// router is not ready. A deleted binding stops granting as soon as the router sees the delete.
pub async fn watch_bindings(client: Client, gate: Arc<Gate>, loaded: watch::Sender<bool>) {
    let (bindings, writer) = reflector::store::<PluginCallerBinding>();
    let events = reflector::reflector(
        writer,
        watcher(
            Api::<PluginCallerBinding>::all(client),
            airlock_runtime::watch::config(),
        ),
    )
    .backoff(airlock_runtime::watch::WatchBackoff::default())
    .filter_map(|e| async move { change("PluginCallerBinding", e) });
    let mut events = std::pin::pin!(events);
    let mut listed = false;
    while let Some(done) = events.next().await {
        listed |= done;
        if !listed {
            continue;
        }
        let state = bindings.state();
        gate.update_bindings(Bindings::new(state.iter().map(|b| b.as_ref())));
        if !*loaded.borrow() {
            info!(bindings = state.len(), "PluginCallerBindings loaded");
            loaded.send_replace(true);
        }
    }
    warn!("the PluginCallerBinding watch ended");
}

/// Whether a watch event changes the table: `Some(true)` when the initial list is complete,
/// `Some(false)` for an object applied or deleted, `None` for the rest (list pages, errors).
fn change<K>(watch: &str, event: Result<watcher::Event<K>, watcher::Error>) -> Option<bool> {
    match event {
        Ok(watcher::Event::InitDone) => Some(true),
        Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_)) => Some(false),
        Ok(_) => None,
        Err(e) => {
            warn!(watch, error = %e, "watch failed; retrying with backoff");
            None
        }
    }
}

fn table(plugins: &Store<Plugin>, slices: &Store<EndpointSlice>) -> RouteTable {
    let slices = slices.state();
    let ready = ready_endpoints(slices.iter().map(|s| s.as_ref()));
    let plugins = plugins.state();
    RouteTable::build(plugins.iter().map(|p| p.as_ref()), &ready)
}

/// `host:port` of every ready endpoint of each Service (by namespace and name), from its
/// EndpointSlices (pure). Ready means the pod passes its readiness probe and is not terminating:
/// a pod that is starting, or draining after a delete or a rollout, gets no new call. Sorted, so
/// an unchanged world gives an unchanged table.
pub fn ready_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> HashMap<(String, String), Vec<String>> {
    let mut out: HashMap<(String, String), Vec<String>> = HashMap::new();
    for slice in slices {
        let (Some(ns), Some(service)) = (
            slice.namespace(),
            slice.labels().get("kubernetes.io/service-name").cloned(),
        ) else {
            continue;
        };
        let port = slice
            .ports
            .iter()
            .flatten()
            .find_map(|p| p.port)
            .unwrap_or(airlock_core::names::GRPC_PORT);
        let entry = out.entry((ns, service)).or_default();
        for e in &slice.endpoints {
            let ready = e
                .conditions
                .as_ref()
                .is_some_and(|c| c.ready == Some(true) && c.terminating != Some(true));
            if !ready {
                continue;
            }
            for address in &e.addresses {
                // An IPv6 address needs brackets in host:port.
                let host = if address.contains(':') {
                    format!("[{address}]")
                } else {
                    address.clone()
                };
                entry.push(format!("{host}:{port}"));
            }
        }
    }
    for endpoints in out.values_mut() {
        endpoints.sort();
        endpoints.dedup();
    }
    out
}

/// Records an auto-disable in the cluster: `status.autoDisabled` (which the controller turns into
/// zero replicas and a status), an Event, an audit record and the metric.
///
/// Each router replica counts the failures of the calls it makes, so two replicas may reach the
/// threshold at nearly the same time. The record is the shared truth: a replica records the
/// decision only if its write adds the record (a write conditional on the resourceVersion it
/// read), so the Plugin gets one Event, one audit record and one count, whatever the number of
/// replicas.
pub struct KubeDisabler {
    client: Client,
    recorder: Recorder,
    metrics: crate::metrics::Metrics,
    /// Failures waiting for [`KubeDisabler::report_health`] to write them.
    ledger: Arc<Ledger>,
}

/// What a replica that wants to auto-disable a Plugin does, given the Plugin as it is now.
#[derive(Debug, PartialEq, Eq)]
pub enum DisableStep {
    /// The Plugin is gone, or another object of the same name replaced it: nothing to disable.
    Gone,
    /// Already auto-disabled (by another replica, or by this one before): record nothing.
    AlreadyDisabled(String),
    /// Write `status.autoDisabled` (with the `spec.reEnable` the Plugin has, which a later
    /// change re-enables), on condition that the Plugin is still at this resourceVersion.
    Write { resource_version: String },
}

/// The pure decision of [`KubeDisabler`]: `current` is the Plugin as read now, `uid` the one the
/// route was built from.
pub fn disable_step(current: Option<&Plugin>, uid: &str) -> DisableStep {
    let Some(plugin) = current else {
        return DisableStep::Gone;
    };
    if plugin.metadata.uid.as_deref() != Some(uid) {
        return DisableStep::Gone;
    }
    if let Some(why) = plugin.auto_disabled() {
        return DisableStep::AlreadyDisabled(why.to_string());
    }
    match &plugin.metadata.resource_version {
        Some(rv) => DisableStep::Write {
            resource_version: rv.clone(),
        },
        // Never happens for an object read from the API server; nothing to condition on.
        None => DisableStep::Gone,
    }
}

/// How a replica's attempt to auto-disable a Plugin ended.
#[derive(Debug)]
enum Claimed {
    /// This replica's write added the record: the decision is its own to record.
    Decided,
    Skipped(DisableStep),
}

/// Why an auto-disable could not be recorded.
#[derive(Debug, thiserror::Error)]
enum ClaimError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    /// The write was accepted but the record is not there: the served Plugin CRD predates the
    /// field and the API server pruned it.
    #[error(
        "the API server dropped {0}: the Plugin CRD in the cluster is older than this router; upgrade Airlock's CRDs (the chart's crds.upgrade=true does it at operator start, or `kubectl apply --server-side -f charts/airlock/crds/`)"
    )]
    NotStored(&'static str),
}

/// Whether the Plugin as written carries this decision (an older CRD prunes the field).
fn stored(written: &Plugin, record: &AutoDisabled) -> Result<Claimed, ClaimError> {
    match written.auto_disabled_record() {
        Some(r) if r.reason == record.reason => Ok(Claimed::Decided),
        _ => Err(ClaimError::NotStored("status.autoDisabled")),
    }
}

/// Conditional writes tried before giving up (≈ 2.7 s of backoff in all).
const CLAIM_ATTEMPTS: u64 = 10;

/// Writes `status.autoDisabled` unless an auto-disable is in effect already; retried when the
/// Plugin changed between the read and the write.
async fn claim(api: &Api<Plugin>, route: &Route, reason: &str) -> Result<Claimed, ClaimError> {
    let mut asked = None;
    // Unchanged since it was read (the resourceVersion; disable_step checked the uid) — so the
    // recorded spec.reEnable is the one in force, and only one replica decides. Never
    // unconditionally: a status patch's metadata.uid is not checked, so only the resourceVersion
    // keeps a Plugin re-created under the same name from being disabled for its predecessor's
    // failures. After the last attempt this replica still refuses the plugin's calls (the caller
    // logs it).
    let outcome = write_status_if_unchanged(api, &route.plugin.name, |current| {
        match disable_step(current.as_ref(), &route.uid) {
            DisableStep::Write { .. } => {}
            skipped => return Decision::Done(Claimed::Skipped(skipped)),
        }
        let Some(current) = current else {
            return Decision::Done(Claimed::Skipped(DisableStep::Gone));
        };
        let record = AutoDisabled {
            since: Some(Timestamp::now().to_string()),
            ..AutoDisabled::under(&current, reason)
        };
        let status = json!({"autoDisabled": record});
        asked = Some(record);
        Decision::Write(status)
    })
    .await?;
    match (outcome, asked) {
        (Written::Done(claimed), _) => Ok(claimed),
        (Written::Wrote(written), Some(record)) => stored(&written, &record),
        (Written::Wrote(_), None) => Err(ClaimError::NotStored("status.autoDisabled")),
    }
}

/// What to do with a Plugin as read: nothing more (with the result), or write this status patch.
enum Decision<T> {
    Done(T),
    Write(serde_json::Value),
}

/// How [`write_status_if_unchanged`] ended.
enum Written<T> {
    Done(T),
    /// The Plugin as the API server stored the write.
    Wrote(Box<Plugin>),
}

/// Reads the Plugin `name`, lets `decide` choose, and writes the status patch it asks for
/// conditional on the resourceVersion read (a merge patch with `metadata.resourceVersion`: the API
/// server refuses it with a conflict if the Plugin changed in between). On a conflict it reads and
/// decides again, up to [`CLAIM_ATTEMPTS`] times with a growing pause.
async fn write_status_if_unchanged<T>(
    api: &Api<Plugin>,
    name: &str,
    mut decide: impl FnMut(Option<Plugin>) -> Decision<T>,
) -> Result<Written<T>, kube::Error> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let current = api.get_opt(name).await?;
        let resource_version = current
            .as_ref()
            .and_then(|p| p.metadata.resource_version.clone());
        let status = match decide(current) {
            Decision::Done(result) => return Ok(Written::Done(result)),
            Decision::Write(status) => status,
        };
        let patch = json!({
            "metadata": {"resourceVersion": resource_version},
            "status": status,
        });
        match api
            .patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => return Ok(Written::Wrote(Box::new(written))),
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < CLAIM_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl std::fmt::Debug for KubeDisabler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeDisabler")
    }
}

impl KubeDisabler {
    pub fn new(client: Client, metrics: crate::metrics::Metrics) -> Self {
        let reporter = Reporter {
            controller: ACTOR.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            ledger: Arc::default(),
        }
    }

    /// Writes the failures noted since the last flush into each plugin's `status.health`, every
    /// [`REPORT_EVERY`], until the process ends (see [`crate::health_report`]).
    pub async fn report_health(self: Arc<Self>) {
        let mut every = tokio::time::interval(REPORT_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            self.flush().await;
        }
    }

    /// Writes what is pending now (one pass); also the last one when the router stops.
    pub async fn flush(&self) {
        for (key, pending) in self.ledger.take() {
            let api: Api<Plugin> = Api::namespaced(self.client.clone(), &key.namespace);
            match write_health(&api, &key.name, &pending).await {
                Ok(true) => self.tell_out_of_memory(&key, &pending).await,
                // Deleted, or re-created under the same name: not its failures.
                Ok(false) => {}
                Err(e) => {
                    warn!(plugin = %key, error = %e, "could not write status.health; kept for the next try");
                    self.ledger.put_back(key, pending);
                }
            }
        }
    }

    /// The Warning Event of out-of-memory kills, which names the memory limit (the shim's
    /// message does).
    async fn tell_out_of_memory(&self, key: &airlock_core::PluginKey, pending: &Pending) {
        let Some(message) = &pending.out_of_memory else {
            return;
        };
        let event = Event {
            type_: EventType::Warning,
            reason: "OutOfMemory".into(),
            note: Some(airlock_runtime::events::note(&format!(
                "{} call(s) failed because the plugin ran out of memory: {message}",
                pending.added.oom
            ))),
            action: "Invoke".into(),
            secondary: None,
        };
        let reference = plugin_reference(key, &pending.uid);
        if let Err(e) = self.recorder.publish(&event, &reference).await {
            warn!(plugin = %key, error = %e, "could not publish the OutOfMemory Event");
        }
    }
}

/// The Plugin `key` with `uid`, as an Event's object.
fn plugin_reference(key: &airlock_core::PluginKey, uid: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("airlock.dev/v1alpha1".into()),
        kind: Some("Plugin".into()),
        namespace: Some(key.namespace.clone()),
        name: Some(key.name.clone()),
        uid: Some(uid.to_string()),
        ..Default::default()
    }
}

/// Adds `pending` to the Plugin `name`'s `status.health`, conditional on the resourceVersion read
/// (another replica adding its own counts in between is a conflict, read again and retried).
/// `Ok(false)`: the Plugin is gone or is another object now. Nothing is written when it would
/// change nothing (a recovery after failures that were not counted, e.g. unreachable pods).
async fn write_health(
    api: &Api<Plugin>,
    name: &str,
    pending: &Pending,
) -> Result<bool, ClaimError> {
    let mut asked = None;
    let outcome = write_status_if_unchanged(api, name, |current| {
        let Some(current) = current else {
            return Decision::Done(false);
        };
        if current.metadata.uid.as_deref() != Some(pending.uid.as_str()) {
            return Decision::Done(false);
        }
        let now = current.status.as_ref().and_then(|s| s.health.as_ref());
        let health = merged(now, pending);
        if now == Some(&health) {
            return Decision::Done(true);
        }
        let status = json!({"health": health});
        asked = Some(health);
        Decision::Write(status)
    })
    .await?;
    match outcome {
        Written::Done(result) => Ok(result),
        // A CRD older than status.health prunes it: say so, never count it as written.
        Written::Wrote(written) => {
            let kept = written.status.as_ref().and_then(|s| s.health.as_ref());
            if kept.is_some() && kept == asked.as_ref() {
                Ok(true)
            } else {
                Err(ClaimError::NotStored("status.health"))
            }
        }
    }
}

/// A pod refused after its handshake (`crate::grpc::handshake`): the metric, and a Warning Event
/// `HandshakeMismatch` on the Plugin that names the pod, what it runs and what was verified.
impl crate::grpc::handshake::RefusalObserver for KubeDisabler {
    fn refused(&self, route: &Route, endpoint: &str, refusal: &crate::grpc::handshake::Refusal) {
        self.metrics
            .handshake_refused(&route.plugin, refusal.reason.as_str());
        audit::emit(&audit::handshake_mismatch(
            route,
            endpoint,
            refusal.reason.as_str(),
            &refusal.message,
            ACTOR,
            Timestamp::now(),
        ));
        let recorder = self.recorder.clone();
        let reference = plugin_reference(&route.plugin, &route.uid);
        let (key, message) = (route.plugin.clone(), refusal.message.clone());
        tokio::spawn(async move {
            let event = Event {
                type_: EventType::Warning,
                reason: "HandshakeMismatch".into(),
                note: Some(airlock_runtime::events::note(&message)),
                action: "Handshake".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(plugin = %key, error = %e, "could not publish the HandshakeMismatch Event");
            }
        });
    }
}

impl Disabler for KubeDisabler {
    fn health(&self, plugin: &airlock_core::PluginKey, uid: &str, change: HealthChange) {
        self.ledger
            .note(plugin, uid, change, &Timestamp::now().to_string());
    }

    fn disable(&self, route: &Route, reason: &str) {
        let (client, recorder) = (self.client.clone(), self.recorder.clone());
        let metrics = self.metrics.clone();
        let (route, reason) = (route.clone(), reason.to_string());
        tokio::spawn(async move {
            let key = &route.plugin;
            let api: Api<Plugin> = Api::namespaced(client, &key.namespace);
            match claim(&api, &route, &reason).await {
                Ok(Claimed::Decided) => {}
                Ok(Claimed::Skipped(step)) => {
                    info!(plugin = %key, ?step, "not auto-disabling the Plugin again: it is already disabled or gone");
                    return;
                }
                Err(e) => {
                    // This replica refuses the plugin's calls all the same: keep the record of
                    // that decision, though the cluster may not know it.
                    audit::emit(&audit::auto_disabled(
                        &route,
                        &reason,
                        ACTOR,
                        Timestamp::now(),
                    ));
                    warn!(plugin = %key, error = %e, "could not record the auto-disable in the Plugin's status; this router keeps refusing its calls");
                    return;
                }
            }
            audit::emit(&audit::auto_disabled(
                &route,
                &reason,
                ACTOR,
                Timestamp::now(),
            ));
            metrics.auto_disabled();
            let reference = plugin_reference(key, &route.uid);
            let event = Event {
                type_: EventType::Warning,
                reason: "AutoDisabled".into(),
                note: Some(format!(
                    "auto-disabled by the router: {reason}. Once it is fixed, {}",
                    airlock_crds::plugin::re_enable_hint(&key.namespace, &key.name)
                )),
                action: "Disable".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&event, &reference).await {
                warn!(plugin = %key, error = %e, "could not publish the AutoDisabled Event");
            }
        });
    }
}

/// Keeps `caller`'s mTLS identity in step with the Secret `namespace/name` (issued and renewed by
/// the operator): polled every 2 s until it exists, then every 30 s. `loaded` carries the current
/// identity (for the host API server) once there is one.
pub async fn watch_identity(
    client: Client,
    namespace: String,
    name: String,
    caller: Arc<crate::grpc::GrpcCaller>,
    loaded: tokio::sync::watch::Sender<Option<crate::grpc::ClientIdentity>>,
) {
    let secrets = Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client, &namespace);
    let mut reported = false;
    loop {
        let got = secrets.get_opt(&name).await;
        let identity = match &got {
            Ok(Some(secret)) => {
                // The Secret's keys are the file names a mounted copy would have.
                use airlock_tls::{CA_FILE, CERT_FILE, KEY_FILE};
                let text = |key| airlock_runtime::secrets::text(secret, key);
                match (text(CA_FILE), text(CERT_FILE), text(KEY_FILE)) {
                    (Some(ca_pem), Some(cert_pem), Some(key_pem)) => {
                        Some(crate::grpc::ClientIdentity {
                            leaf: airlock_tls::CertAndKey { cert_pem, key_pem },
                            ca_pem,
                        })
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        match (identity, got) {
            (Some(identity), _) => {
                if caller.set_identity(identity.clone()) {
                    info!(secret = %format!("{namespace}/{name}"), "loaded the router's certificate");
                    loaded.send_replace(Some(identity));
                }
            }
            (None, Err(e)) => {
                warn!(error = %e, secret = %format!("{namespace}/{name}"), "cannot read the router's client certificate")
            }
            (None, Ok(_)) if !reported => {
                reported = true;
                warn!(secret = %format!("{namespace}/{name}"), "the router's client certificate is not issued yet (the operator issues it); plugins cannot be called until then");
            }
            (None, Ok(_)) => {}
        }
        let every = if loaded.borrow().is_some() { 30 } else { 2 };
        tokio::time::sleep(std::time::Duration::from_secs(every)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slice(service: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": format!("{service}-abcde"), "namespace": "t",
                         "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 50051, "protocol": "TCP"}],
            "endpoints": endpoints,
        }))
        .expect("slice")
    }

    /// Issue 13: only pods that are ready and not terminating get calls; a Service's slices are
    /// merged.
    #[test]
    fn only_ready_endpoints_that_are_not_terminating_are_routed() {
        let a = slice(
            "hello",
            json!([
                {"addresses": ["198.18.0.7"], "conditions": {"ready": true}},
                {"addresses": ["198.18.0.8"], "conditions": {"ready": false}},
                {"addresses": ["198.18.0.9"], "conditions": {"ready": true, "terminating": true}},
                {"addresses": ["198.18.0.10"]},
            ]),
        );
        let b = slice(
            "hello",
            json!([{"addresses": ["198.18.0.3"], "conditions": {"ready": true}}]),
        );
        let starting = slice(
            "new",
            json!([{"addresses": ["198.18.0.4"], "conditions": {"ready": false}}]),
        );
        let ready = ready_endpoints([&a, &b, &starting]);
        assert_eq!(
            ready[&("t".to_string(), "hello".to_string())],
            vec![
                "198.18.0.3:50051".to_string(),
                "198.18.0.7:50051".to_string()
            ]
        );
        assert_eq!(
            ready[&("t".to_string(), "new".to_string())],
            Vec::<String>::new()
        );
    }

    fn plugin(uid: &str, rv: &str, disabled: Option<&str>) -> Plugin {
        let mut p: Plugin = serde_json::from_value(json!({
            "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
            "metadata": {"name": "p", "namespace": "t", "uid": uid, "resourceVersion": rv},
            "spec": {"version": "1.0.0", "image": "r/i:1", "pluginApiVersion": 1,
                     "bundle": {"source": {"configMapRef": {"name": "b"}}}},
        }))
        .expect("plugin");
        if let Some(why) = disabled {
            p.status.get_or_insert_default().auto_disabled = Some(AutoDisabled::under(&p, why));
        }
        p
    }

    /// Issue 17: a write of status.health alone (each failing plugin, every 10 s, by every router
    /// replica) does not rebuild the route table; any other change of a Plugin does.
    #[test]
    fn a_health_write_alone_does_not_rebuild_the_route_table() {
        use airlock_crds::plugin::{PluginHealth, PluginPhase};
        let mut seen = RouteInputs::default();
        let event = |p: &Plugin| Ok(watcher::Event::Apply(p.clone()));
        let p = plugin("u1", "1", None);
        assert!(seen.changed(&Ok(watcher::Event::InitApply(p.clone()))));
        assert!(
            !seen.changed(&event(&plugin("u1", "2", None))),
            "same inputs"
        );
        let mut healthy = plugin("u1", "3", None);
        healthy.status.get_or_insert_default().health = Some(PluginHealth {
            consecutive_failures: 1,
            ..Default::default()
        });
        assert!(
            !seen.changed(&event(&healthy)),
            "only status.health changed"
        );
        let mut active = healthy.clone();
        active.status.get_or_insert_default().phase = Some(PluginPhase::Active);
        assert!(
            seen.changed(&event(&active)),
            "the phase is read by the table"
        );
        assert!(seen.changed(&event(&plugin("u1", "5", Some("5 timeouts")))));
        assert!(seen.changed(&Ok(watcher::Event::Delete(p))));
    }

    /// Against a Plugin CRD older than `status.autoDisabled` the API server accepts the patch and
    /// prunes the field: that is no decision (the caller says to upgrade the CRDs), never a
    /// silent success that leaves the other replicas routing.
    #[test]
    fn a_record_the_api_server_pruned_is_no_decision() {
        let asked = AutoDisabled::under(&plugin("u1", "1", None), "5 consecutive timeouts");
        let pruned = plugin("u1", "2", None);
        assert!(matches!(
            stored(&pruned, &asked),
            Err(ClaimError::NotStored("status.autoDisabled"))
        ));
        assert!(
            ClaimError::NotStored("status.autoDisabled")
                .to_string()
                .contains("crds.upgrade"),
            "says what to do"
        );
        let kept = plugin("u1", "2", Some("5 consecutive timeouts"));
        assert!(matches!(stored(&kept, &asked), Ok(Claimed::Decided)));
    }

    /// Issue 13: two router replicas reaching the threshold together record one decision: the
    /// second finds the record and writes nothing; a write is conditional on what was read.
    #[test]
    fn only_the_first_replica_to_disable_a_plugin_records_it() {
        assert_eq!(
            disable_step(Some(&plugin("u1", "42", None)), "u1"),
            DisableStep::Write {
                resource_version: "42".into()
            }
        );
        assert_eq!(
            disable_step(
                Some(&plugin("u1", "43", Some("5 consecutive timeouts"))),
                "u1"
            ),
            DisableStep::AlreadyDisabled("5 consecutive timeouts".into())
        );
        // Re-enabled since (spec.reEnable moved on): a new decision is recorded.
        let mut re_enabled = plugin("u1", "45", Some("5 consecutive timeouts"));
        re_enabled.spec.re_enable = Some("2026-12-01".into());
        assert_eq!(
            disable_step(Some(&re_enabled), "u1"),
            DisableStep::Write {
                resource_version: "45".into()
            }
        );
        // Re-created under the same name, or deleted: the new object is not this one to disable.
        assert_eq!(
            disable_step(Some(&plugin("u2", "44", None)), "u1"),
            DisableStep::Gone
        );
        assert_eq!(disable_step(None, "u1"), DisableStep::Gone);
    }
}
