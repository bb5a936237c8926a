//! The `Plugin` controller: watches Plugins, the children they own and trust policies, and runs
//! the reconcile pipeline fetch → validate ([`crate::plan`]) → build ([`crate::build`]) → apply →
//! status ([`crate::status`]). Invalid specs wait for a change; transient errors back off.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_crds::plugin::PluginStatus;
use airlock_crds::{Plugin, PluginTrustPolicy};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;
use tracing::{Instrument, info, instrument, warn};

use crate::applied::{self, Applied, Fingerprint};
use crate::build::{self, BuildConfig, FIELD_MANAGER};
use crate::fetch::{self, Registry};
use crate::metrics::Metrics;
use crate::plan::{self, Plan};
use crate::status::{self, Outcome};
use crate::{audit, certs, policy, trust};
use airlock_core::names;
use airlock_tls::pki::Ca;

pub const FINALIZER: &str = "airlock.dev/cleanup";

/// Longest a reconcile may take; registry calls have their own, shorter timeouts.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error("Plugin has no namespace")]
    NoNamespace,
    #[error("the reconcile task failed: {0}")]
    Task(String),
    #[error("plugin certificate: {0}")]
    Certificate(#[from] certs::CertError),
}

impl Error {
    /// Stable label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::NoNamespace => "no_namespace",
            Error::Task(_) => "task",
            Error::Certificate(_) => "certificate",
        }
    }
}

/// Everything a reconcile needs; shared by all reconciles.
pub struct Context {
    pub client: Client,
    /// Watched cache: a reconcile reads namespace labels without an API request.
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    pub build: BuildConfig,
    pub registry: Arc<Registry>,
    pub recorder: Recorder,
    pub metrics: Metrics,
    pub max_bundle_bytes: u64,
    /// The status this process last wrote, per Plugin uid. The watch cache can lag behind our own
    /// writes; comparing with it would repeat Events and audit records for the same transition.
    last_written: Mutex<HashMap<String, PluginStatus>>,
    /// What this process applied to each child: an unchanged reconcile writes nothing.
    applied: Applied,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("build", &self.build)
            .finish()
    }
}

impl Context {
    pub fn new(
        client: Client,
        build: BuildConfig,
        registry: Registry,
        metrics: Metrics,
        max_bundle_bytes: u64,
    ) -> Self {
        let reporter = Reporter {
            controller: "airlock-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let (namespaces, namespace_writer) = reflector::store();
        let namespace_stream = reflector::reflector(
            namespace_writer,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                watcher::Config::default(),
            ),
        );
        tokio::spawn(namespace_stream.default_backoff().for_each(|_| async {}));
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            namespaces,
            client,
            build,
            registry: Arc::new(registry),
            metrics,
            max_bundle_bytes,
            last_written: Mutex::default(),
            applied: Applied::default(),
        }
    }
}

/// Watch caches of the children, filled by the same watches that trigger reconciles. Reads of the
/// children come from here, so a reconcile of an unchanged Plugin makes no API request for them.
struct Children {
    policies: Store<PluginTrustPolicy>,
    /// True once `policies` holds the first complete list.
    policies_listed: tokio::sync::watch::Receiver<bool>,
    deployments: Store<Deployment>,
    services: Store<PartialObjectMeta<Service>>,
    network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
    service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    /// Bundle Secrets known to exist: immutable and named by digest, so existing means right.
    /// (Not watched: a watch on Secrets would need `list` on every Secret in the cluster.)
    secrets: Mutex<std::collections::HashSet<(String, String)>>,
    /// The CA that issues the plugins' certificates, loaded when this term began.
    ca: Ca,
    /// When each plugin's certificate Secret was last found good: it is read again an hour later
    /// (renewal starts with a third of the 30-day lifetime left, so an hour is plenty).
    certificates_checked: Mutex<HashMap<(String, String), Instant>>,
}

/// How long a plugin certificate found good is not looked at again.
const CERTIFICATE_RECHECK: Duration = Duration::from_secs(3600);

/// Loads (or creates) the CA, retrying until it works: no plugin can be served without it.
async fn load_ca(ctx: &Context) -> Ca {
    let mut wait = Duration::from_secs(1);
    loop {
        match certs::load_or_create_ca(&ctx.client, &ctx.build.router_namespace).await {
            Ok(ca) => return ca,
            Err(e) => {
                warn!(error = %e, "cannot load the plugin CA; retrying");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// Keeps the router's certificate issued and fresh for as long as this term lasts.
async fn maintain_router_certificate(client: Client, namespace: String, ca: Ca) {
    let meta = kube::api::ObjectMeta {
        name: Some(certs::ROUTER_TLS_SECRET.into()),
        namespace: Some(namespace.clone()),
        labels: Some(
            [(
                "app.kubernetes.io/managed-by".to_string(),
                "airlock".to_string(),
            )]
            .into(),
        ),
        ..Default::default()
    };
    loop {
        let next = match certs::ensure_certificate(
            &client,
            meta.clone(),
            airlock_core::identity::ROUTER_IDENTITY,
            &ca,
        )
        .await
        {
            Ok(_) => CERTIFICATE_RECHECK,
            Err(e) => {
                warn!(error = %e, "cannot issue the router's certificate; retrying");
                Duration::from_secs(5)
            }
        };
        tokio::time::sleep(next).await;
    }
}

/// One leadership term: the shared context and the child caches its watches fill.
struct Term {
    ctx: Arc<Context>,
    children: Children,
}

/// A watch whose stream both fills a cache and triggers reconciles. managedFields are large and
/// never read here: they are kept out of the cache. The receiver turns true once the cache holds
/// the first complete list.
fn cached_watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    tokio::sync::watch::Receiver<bool>,
    impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let (events, ready) = signal_listed(
        watcher(api, config)
            .default_backoff()
            .modify(|o: &mut K| o.managed_fields_mut().clear())
            .reflect(writer),
    );
    (store, ready, events.touched_objects())
}

/// Passes a watch stream through and reports, on the returned receiver, when its first complete
/// list has gone by (and so into any store reflecting it).
///
/// Why not `Store::wait_until_ready`: in kube-runtime 5.0 it shares one oneshot receiver between
/// all waiters, which remembers only the last waiter's waker. Reconciles that start together
/// (every Plugin, when a new leader starts) all waited there and only one was woken: the others
/// hung forever, holding every later trigger of their Plugins. A watch channel wakes every
/// waiter.
fn signal_listed<K, S>(
    events: S,
) -> (
    impl futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    tokio::sync::watch::Receiver<bool>,
)
where
    S: futures::Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
{
    let (tx, rx) = tokio::sync::watch::channel(false);
    let events = events.inspect(move |e| {
        if matches!(e, Ok(watcher::Event::InitDone)) {
            tx.send_replace(true);
        }
    });
    (events, rx)
}

/// Runs the controller until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    if ctx.namespaces.wait_until_ready().await.is_err() {
        warn!("the namespace cache stopped before it was ready");
        return;
    }
    let client = ctx.client.clone();
    let plugins: Api<Plugin> = Api::all(client.clone());
    let cfg = watcher::Config::default().labels(names::MANAGED_BY_SELECTOR);

    // The same watch fills the policy cache and triggers the reconciles, so a reconcile caused by
    // a policy change always sees that change.
    let (policies, policies_listed, policy_stream) = cached_watch(
        Api::<PluginTrustPolicy>::all(client.clone()),
        watcher::Config::default(),
    );
    let (deployments, _, deployment_stream) =
        cached_watch(Api::<Deployment>::all(client.clone()), cfg.clone());
    let (services, _, service_stream) = cached_watch(
        Api::<PartialObjectMeta<Service>>::all(client.clone()),
        cfg.clone(),
    );
    let (network_policies, _, network_policy_stream) = cached_watch(
        Api::<PartialObjectMeta<NetworkPolicy>>::all(client.clone()),
        cfg.clone(),
    );
    let (service_accounts, _, service_account_stream) = cached_watch(
        Api::<PartialObjectMeta<ServiceAccount>>::all(client.clone()),
        cfg.clone(),
    );
    let ca = load_ca(&ctx).await;
    let router_certificate = tokio::spawn(maintain_router_certificate(
        client.clone(),
        ctx.build.router_namespace.clone(),
        ca.clone(),
    ));
    let term = Arc::new(Term {
        ctx,
        children: Children {
            policies,
            deployments,
            services,
            network_policies,
            service_accounts,
            policies_listed,
            secrets: Mutex::default(),
            ca,
            certificates_checked: Mutex::default(),
        },
    });

    let controller = Controller::new(plugins, watcher::Config::default());
    let store = controller.store();
    controller
        .owns_stream(deployment_stream)
        .owns_stream(service_stream)
        .owns_stream(network_policy_stream)
        .owns_stream(service_account_stream)
        // A trust policy change can block or unblock any plugin: re-check them all.
        .watches_stream(policy_stream, move |_policy| {
            store
                .state()
                .iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .shutdown_on_signal()
        .run(reconcile, error_policy, term)
        .for_each(|res| async move {
            if let Err(e) = res {
                warn!(error = %e, "reconcile failed");
            }
        })
        .await;
    router_certificate.abort();
}

fn error_policy(_plugin: Arc<Plugin>, error: &Error, term: Arc<Term>) -> Action {
    term.ctx.metrics.reconcile_error(error.metric_label());
    Action::requeue(Duration::from_secs(10))
}

#[instrument(skip_all, fields(plugin = %plugin.name_any(), namespace = plugin.namespace().unwrap_or_default()))]
async fn reconcile(plugin: Arc<Plugin>, term: Arc<Term>) -> Result<Action, Error> {
    let ctx = &term.ctx;
    let started = Instant::now();
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Plugin> = Api::namespaced(ctx.client.clone(), &ns);
    let result = finalizer(&api, FINALIZER, plugin, |event| async {
        match event {
            // On its own task: a reconcile that blocks its thread must not freeze the
            // controller's stream, which drives every other reconcile.
            Finalizer::Apply(p) => {
                let term = term.clone();
                tokio::spawn(
                    async move {
                        // A reconcile that never finishes would hold every later trigger of
                        // this Plugin. Every await below has its own timeout (API requests:
                        // kube_client::REQUEST_TIMEOUT; registry calls); this is the backstop.
                        tokio::time::timeout(
                            RECONCILE_TIMEOUT,
                            apply(&p, &term.ctx, &term.children),
                        )
                        .await
                        .map_err(|_| {
                            warn!(
                                "reconcile did not finish within {RECONCILE_TIMEOUT:?}; retrying"
                            );
                            Error::Task(format!("timed out after {RECONCILE_TIMEOUT:?}"))
                        })?
                    }
                    .in_current_span(),
                )
                .await
                .map_err(|e| Error::Task(e.to_string()))?
            }
            Finalizer::Cleanup(p) => cleanup(&p, ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer(other.to_string()),
    });
    ctx.metrics.observe_reconcile(started.elapsed());
    result
}

async fn apply(plugin: &Plugin, ctx: &Context, children: &Children) -> Result<Action, Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;

    // Fetch (namespace labels and policies from the watch caches).
    let ns_labels: BTreeMap<String, String> = ctx
        .namespaces
        .get(&ObjectRef::new(&ns))
        .map(|n| n.labels().clone())
        .unwrap_or_default();
    // Deciding with an empty policy cache would block every plugin for a moment: wait for it
    // (at once after the first list; a list that takes longer is retried, not waited on).
    let mut listed = children.policies_listed.clone();
    let ready = tokio::time::timeout(Duration::from_secs(10), listed.wait_for(|l| *l));
    if !matches!(ready.await, Ok(Ok(_))) {
        info!("the trust policy cache is not filled yet; retrying in 5s");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let policies: Vec<PluginTrustPolicy> = children
        .policies
        .state()
        .iter()
        .map(|p| p.as_ref().clone())
        .collect();
    let governing = policy::governing(&policies, &ns_labels);
    let keys = trust::trusted_keys(&governing);
    let fetched = fetch::fetch(client, &ctx.registry, plugin, &keys, ctx.max_bundle_bytes).await;

    let (next, requeue) = match &fetched {
        Err(failure) => {
            if failure.reason == trust::KEY_REVOKED {
                quarantine(plugin, ctx, children).await?;
            }
            (
                status::next_status(plugin, Outcome::FetchFailed(failure), Timestamp::now()),
                Duration::from_secs(30),
            )
        }
        Ok(fetched) => {
            // Validate.
            let level = fetched
                .signed_by
                .as_ref()
                .map(|(_, l)| *l)
                .unwrap_or(airlock_crds::TrustLevel::Untrusted);
            let limits = policy::limits(&governing, level);
            let plan = plan::plan(plugin, fetched, limits.as_ref());
            // Build + apply.
            let applied = match &plan.rollout {
                Some(rollout) => Some(roll_out(plugin, rollout, ctx, children).await?),
                None => None,
            };
            let next = status::next_status(
                plugin,
                Outcome::Planned(&plan, applied.as_ref()),
                Timestamp::now(),
            );
            (next, requeue_after(&plan, applied.as_ref()))
        }
    };
    record_status(plugin, next, ctx).await?;
    Ok(Action::requeue(requeue))
}

fn requeue_after(plan: &Plan, applied: Option<&status::Rollout>) -> Duration {
    match (plan.rollout.as_ref(), applied) {
        // Changes of the owned Deployment wake us up; this is only a safety net.
        (Some(_), Some(a)) if a.ready_replicas < a.desired_replicas => Duration::from_secs(15),
        (Some(_), _) => Duration::from_secs(300),
        // Blocked: the user must change something; spec and policy changes wake us up.
        (None, _) => Duration::from_secs(300),
    }
}

/// A plugin signed by a revoked key must not keep running: scale its Deployment to zero. The
/// next verified revision is applied by the normal path and brings the replicas back.
async fn quarantine(plugin: &Plugin, ctx: &Context, children: &Children) -> Result<(), Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let name = names::child_name(&plugin.name_any());
    let r = ObjectRef::<Deployment>::new(&name).within(&ns);
    let running = children
        .deployments
        .get(&r)
        .and_then(|d| d.spec.as_ref().and_then(|s| s.replicas))
        .is_some_and(|n| n > 0);
    if running {
        warn!(plugin = %plugin.name_any(), "signer key revoked: scaling the plugin to zero");
        Api::<Deployment>::namespaced(ctx.client.clone(), &ns)
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 0}})),
            )
            .await?;
    }
    Ok(())
}

/// Applies the planned revision, unless it already failed once; a revision that misses its
/// progress deadline is replaced by the last good one.
async fn roll_out(
    plugin: &Plugin,
    rollout: &build::Rollout,
    ctx: &Context,
    children: &Children,
) -> Result<status::Rollout, Error> {
    let prev = plugin.status.clone().unwrap_or_default();
    let good = prev.last_good_revision.filter(|g| g != &rollout.revision);
    if let Some(good) = &good
        && prev.failed_revision.as_deref() == Some(rollout.revision.as_str())
        && let Some(back) = rollback(plugin, rollout, good, ctx, children).await?
    {
        return Ok(back);
    }
    let applied = apply_children(plugin, rollout, ctx, children).await?;
    if applied.deadline_exceeded
        && let Some(good) = &good
        && let Some(back) = rollback(plugin, rollout, good, ctx, children).await?
    {
        warn!(failed = %rollout.revision, %good, "rolled back");
        return Ok(back);
    }
    Ok(applied)
}

/// Re-applies the Deployment with the pod template of `good`'s ReplicaSet. `None` when that
/// ReplicaSet is gone (then the failed revision stays and the status says so).
async fn rollback(
    plugin: &Plugin,
    failed: &build::Rollout,
    good: &str,
    ctx: &Context,
    children: &Children,
) -> Result<Option<status::Rollout>, Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let selector = format!(
        "{}={},{}={good}",
        names::PLUGIN_LABEL,
        plugin.name_any(),
        names::REVISION_LABEL
    );
    let sets = Api::<ReplicaSet>::namespaced(ctx.client.clone(), &ns)
        .list(&ListParams::default().labels(&selector))
        .await?;
    let Some(template) = sets
        .items
        .into_iter()
        .max_by_key(|rs| rs.metadata.creation_timestamp.clone())
        .and_then(|rs| rs.spec)
        .and_then(|s| s.template)
    else {
        return Ok(None);
    };
    let current = build::deployment::deployment(plugin, failed, &ctx.build);
    let deploy = build::deployment::rolled_back(current, template, good);
    let applied = ensure_deployment(plugin, &deploy, ctx, children).await?;
    let mut observed = observe(&applied, good);
    observed.rolled_back_from = Some(failed.revision.clone());
    Ok(Some(observed))
}

async fn apply_children(
    plugin: &Plugin,
    rollout: &build::Rollout,
    ctx: &Context,
    children: &Children,
) -> Result<status::Rollout, Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let sa = build::service_account::service_account(plugin);
    ensure(
        plugin,
        &sa,
        ctx,
        cached_meta(&children.service_accounts, &sa),
    )
    .await?;
    ensure_bundle_secret(plugin, rollout, ctx, children, &ns).await?;
    hourly_checks(plugin, ctx, children, &ns).await?;
    let np = build::network_policy::network_policy(plugin, rollout, &ctx.build);
    ensure(
        plugin,
        &np,
        ctx,
        cached_meta(&children.network_policies, &np),
    )
    .await?;
    let svc = build::service::service(plugin);
    ensure(plugin, &svc, ctx, cached_meta(&children.services, &svc)).await?;
    let deploy = build::deployment::deployment(plugin, rollout, &ctx.build);
    let applied = ensure_deployment(plugin, &deploy, ctx, children).await?;
    Ok(observe(&applied, &rollout.revision))
}

async fn ensure_bundle_secret(
    plugin: &Plugin,
    rollout: &build::Rollout,
    ctx: &Context,
    children: &Children,
    ns: &str,
) -> Result<(), Error> {
    let secret = build::bundle_secret::bundle_secret(plugin, rollout);
    let key = (ns.to_string(), name_of(&secret));
    let known = |c: &Children| {
        c.secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&key)
    };
    if known(children) {
        return Ok(());
    }
    let secrets = Api::<Secret>::namespaced(ctx.client.clone(), ns);
    if secrets.get_opt(&key.1).await?.is_none() {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        secrets.patch(&key.1, &pp, &Patch::Apply(&secret)).await?;
    }
    children
        .secrets
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key);
    Ok(())
}

/// Once an hour per plugin: its TLS Secret holds a good certificate for its identity, and a
/// `PluginStorage` an installer created for it (initial data) is owned by it, so it is deleted
/// with the Plugin even if the plugin never writes it (the router sets the owner when it does).
async fn hourly_checks(
    plugin: &Plugin,
    ctx: &Context,
    children: &Children,
    ns: &str,
) -> Result<(), Error> {
    let key = (ns.to_string(), plugin.name_any());
    let fresh = children
        .certificates_checked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .is_some_and(|at| at.elapsed() < CERTIFICATE_RECHECK);
    if fresh {
        return Ok(());
    }
    let identity = airlock_core::identity::plugin_identity(ns, &key.1);
    let meta = build::tls_secret::plugin_tls_meta(plugin);
    if let Some(why) = certs::ensure_certificate(&ctx.client, meta, &identity, &children.ca).await?
    {
        info!(plugin = %key.1, namespace = ns, reason = %why, "issued the plugin's certificate");
    }
    adopt_storage(plugin, ctx, ns).await?;
    children
        .certificates_checked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, Instant::now());
    Ok(())
}

/// Makes the Plugin the owner of its `PluginStorage`, if there is one without.
async fn adopt_storage(plugin: &Plugin, ctx: &Context, ns: &str) -> Result<(), Error> {
    let api = Api::<airlock_crds::PluginStorage>::namespaced(ctx.client.clone(), ns);
    let Some(storage) = api.get_opt(&plugin.name_any()).await? else {
        return Ok(());
    };
    let uid = plugin.uid().unwrap_or_default();
    if storage
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|o| o.uid == uid)
    {
        return Ok(());
    }
    let patch = json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "PluginStorage",
        "metadata": {"name": plugin.name_any(), "ownerReferences": build::labels::owner(plugin)},
    });
    api.patch(
        &plugin.name_any(),
        &PatchParams::apply(FIELD_MANAGER),
        &Patch::Apply(&patch),
    )
    .await?;
    info!(plugin = %plugin.name_any(), namespace = ns, "adopted the plugin's PluginStorage");
    Ok(())
}

/// The cached metadata of the object `desired` will become, if the watch has seen it.
fn cached_meta<K, C>(store: &Store<C>, desired: &K) -> Option<kube::core::ObjectMeta>
where
    K: Resource,
    C: Resource<DynamicType = ()> + Clone,
{
    let m = desired.meta();
    let r = ObjectRef::<C>::new(m.name.as_deref().unwrap_or_default())
        .within(m.namespace.as_deref().unwrap_or_default());
    store.get(&r).map(|o| o.meta().clone())
}

/// Server-side applies `desired` unless this process already applied the same desired state to
/// the object the watch cache still shows. Returns the object the API server answered with, or
/// `None` when nothing was sent.
async fn ensure<K>(
    plugin: &Plugin,
    desired: &K,
    ctx: &Context,
    cached: Option<kube::core::ObjectMeta>,
) -> Result<Option<K>, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let uid = plugin.uid().unwrap_or_default();
    let kind = K::kind(&());
    let name = name_of(desired);
    let hash = applied::desired_hash(desired);
    if let Some(meta) = &cached
        && ctx
            .applied
            .is_current(&uid, &kind, &name, hash, &Fingerprint::of(&kind, meta))
    {
        return Ok(None);
    }
    let ns = desired.meta().namespace.clone().ok_or(Error::NoNamespace)?;
    let obj = Api::<K>::namespaced(ctx.client.clone(), &ns)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(desired),
        )
        .await?;
    ctx.applied
        .record(&uid, &kind, &name, hash, Fingerprint::of(&kind, obj.meta()));
    Ok(Some(obj))
}

/// [`ensure`] for the Deployment, whose status the rollout is judged by: when nothing was sent,
/// the watch cache has the current status.
async fn ensure_deployment(
    plugin: &Plugin,
    desired: &Deployment,
    ctx: &Context,
    children: &Children,
) -> Result<Deployment, Error> {
    let r = ObjectRef::<Deployment>::new(&name_of(desired))
        .within(desired.meta().namespace.as_deref().unwrap_or_default());
    let cached = children.deployments.get(&r);
    match ensure(
        plugin,
        desired,
        ctx,
        cached.as_ref().map(|d| d.metadata.clone()),
    )
    .await?
    {
        Some(applied) => Ok(applied),
        // `ensure` only skips when the cache had the object.
        None => Ok(cached.map(|d| d.as_ref().clone()).unwrap_or_default()),
    }
}

fn name_of<K: Resource>(obj: &K) -> String {
    obj.meta().name.clone().unwrap_or_default()
}

/// What the Deployment's status says about the revision just applied.
fn observe(d: &Deployment, revision: &str) -> status::Rollout {
    let generation = d.metadata.generation.unwrap_or_default();
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let st = d.status.clone().unwrap_or_default();
    let deadline_exceeded = st.conditions.iter().flatten().any(|c| {
        c.type_ == "Progressing"
            && c.status == "False"
            && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    });
    status::Rollout {
        revision: revision.to_string(),
        desired_replicas: spec_replicas,
        ready_replicas: st.ready_replicas.unwrap_or_default(),
        updated_replicas: st.updated_replicas.unwrap_or_default(),
        total_replicas: st.replicas.unwrap_or_default(),
        available_replicas: st.available_replicas.unwrap_or_default(),
        observed: st.observed_generation.unwrap_or_default() >= generation,
        deadline_exceeded,
        rolled_back_from: None,
    }
}

/// Events and audit records for every transition, then the status itself — only if it changed.
async fn record_status(plugin: &Plugin, next: PluginStatus, ctx: &Context) -> Result<(), Error> {
    let uid = plugin.uid().unwrap_or_default();
    let prev = {
        let written = ctx.last_written.lock().unwrap_or_else(|e| e.into_inner());
        written.get(&uid).cloned().or_else(|| plugin.status.clone())
    };
    if prev.as_ref() == Some(&next) {
        return Ok(());
    }
    let transitions = status::transitions(prev.as_ref(), &next);
    let now = Timestamp::now();
    for t in &transitions {
        audit::emit(&audit::record(plugin, &next, t, now));
        let event = Event {
            type_: if t.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: t.reason.clone(),
            note: Some(truncate(&t.message, 1000)),
            action: t.condition.clone(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&event, &plugin.object_ref(&())).await {
            // An Event is a courtesy; the status and the audit record carry the same facts.
            warn!(error = %e, "could not publish an Event");
        }
    }
    if !transitions.is_empty() {
        info!(phase = ?next.phase, "status changed");
    }
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let patch = json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "Plugin",
        "status": next,
    });
    Api::<Plugin>::namespaced(ctx.client.clone(), &ns)
        .patch_status(
            &plugin.name_any(),
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await?;
    ctx.metrics.set_phase(plugin, &next);
    ctx.last_written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(uid, next);
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Deletion: children go with their owner (garbage collection); record it before letting go.
async fn cleanup(plugin: &Plugin, ctx: &Context) -> Result<Action, Error> {
    let status = plugin.status.clone().unwrap_or_default();
    let t = status::Transition {
        condition: "Deleted".into(),
        status: "True".into(),
        reason: "Deleted".into(),
        message: "the Plugin was deleted: its pods, Service, NetworkPolicy, ServiceAccount and bundle Secrets are removed".into(),
        warning: false,
    };
    audit::emit(&audit::record(plugin, &status, &t, Timestamp::now()));
    let event = Event {
        type_: EventType::Normal,
        reason: "Deleted".into(),
        note: Some(t.message.clone()),
        action: "Delete".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &plugin.object_ref(&())).await {
        warn!(error = %e, "could not publish an Event");
    }
    ctx.metrics.forget(plugin);
    ctx.applied.forget(&plugin.uid().unwrap_or_default());
    ctx.registry.forget(&plugin.uid().unwrap_or_default());
    ctx.last_written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&plugin.uid().unwrap_or_default());
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    /// Every reconcile waiting for the policy cache must wake when it is filled — also when they
    /// all started waiting before the list arrived (a new leader reconciling every Plugin).
    #[tokio::test]
    async fn every_waiter_wakes_when_the_first_list_has_gone_by() {
        let (tx, rx) = futures::channel::mpsc::unbounded();
        let (events, listed) = signal_listed::<ConfigMap, _>(rx);
        let waiters: Vec<_> = (0..16)
            .map(|_| {
                let mut listed = listed.clone();
                tokio::spawn(async move { listed.wait_for(|l| *l).await.is_ok() })
            })
            .collect();
        let drive = tokio::spawn(events.for_each(|_| async {}));
        tokio::task::yield_now().await;
        assert!(
            waiters.iter().all(|w| !w.is_finished()),
            "nobody is woken early"
        );
        tx.unbounded_send(Ok(watcher::Event::Init)).expect("send");
        tx.unbounded_send(Ok(watcher::Event::InitDone))
            .expect("send");
        for w in waiters {
            let woke = tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .expect("joined");
            assert!(woke);
        }
        drop(tx);
        drive.await.expect("the stream ends");
    }
}
