//! The Plugin controller: watches Plugins (and the children and trust policies that affect
//! them) and runs one reconcile per change, as a named pipeline readable top-down in
//! [`pipeline::run`]:
//!
//! 1. **fetch** (IO): namespace labels and governing policies from watch caches; the bundle and
//!    the image from their sources ([`crate::fetch`]);
//! 2. **verify** (pure): every signature and trust decision, one typed verdict ([`crate::trust`],
//!    [`crate::verify`]);
//! 3. **plan** (pure): the revision to roll out and each condition ([`crate::plan`]); then
//!    **ownership** ([`ownership`], rule in [`crate::ownership`]): an object the revision would
//!    write that exists and is not this Plugin's stops it whole (`Ready=False`,
//!    `ObjectNotOwned`): a Plugin never takes over an object someone else made;
//! 4. **apply** (IO, [`apply`]): rollback to the last good revision when the planned one failed;
//!    else the plugin's identity ([`certificates`]), then its children with server-side apply;
//!    quarantine of a revoked one;
//! 5. **status** (IO, [`record`]): conditions, Events and audit records, from what was applied.
//!
//! Per-Plugin memory lives in [`caches::PluginCaches`] (by uid, cleared on delete); watch caches of
//! the children in [`watches`].

mod apply;
pub mod caches;
mod certificates;
mod ownership;
mod pipeline;
mod record;
mod triggers;
mod watches;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_crds::{Plugin, PluginTrustPolicy};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{Instrument, instrument, warn};

use crate::build::BuildConfig;
use crate::fetch::Registry;
use crate::metrics::Metrics;
use crate::{audit, certs};
use airlock_core::shard::Shard;
use caches::PluginCaches;
use watches::{Watches, cached_watch};

/// The finalizer Airlock set on every Plugin before issue 14. Only the operator removed it, so
/// deleting a Plugin, its namespace or the CRD hung while the operator was away (after
/// `helm uninstall`, say). Plugins get none now; the operator removes it from those that have it.
/// A deletion is recorded from the watch's delete event instead ([`record::cleanup`]).
pub const LEGACY_FINALIZER: &str = "airlock.dev/cleanup";

/// Reconciles at once unless configured (`--max-concurrent-reconciles`).
pub const DEFAULT_CONCURRENT_RECONCILES: u16 = 8;

/// Longest a reconcile may take; registry calls have their own, shorter timeouts.
const RECONCILE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Plugin has no namespace")]
    NoNamespace,
    #[error("the reconcile task failed: {0}")]
    Task(String),
    #[error("plugin certificate: {0}")]
    Certificate(#[from] certs::CertError),
    /// A Secret the revision writes is not the Plugin's (the API server's admission policy
    /// refused the write): the pipeline turns it into `Ready=False ObjectNotOwned`.
    #[error("{}", .0.message())]
    NotOwned(crate::ownership::NotOwned),
}

impl Error {
    /// `e`, from a write of the Plugin's Secret `ns/name`, as [`Error::NotOwned`] when it is the
    /// chart's admission policy refusing a Secret that is not the Plugin's.
    pub(crate) fn from_secret_write(e: kube::Error, plugin: &Plugin, ns: &str, name: &str) -> Self {
        let target = crate::ownership::Refused {
            kind: "Secret",
            policy: crate::ownership::SECRET_POLICY,
            namespace: ns,
            name,
        };
        Self::from_owned_write(e, plugin, target)
    }

    /// The same for the ConfigMap of the Plugin's configuration (the chart's policy
    /// `<release>-operator-configmaps`).
    pub(crate) fn from_config_map_write(
        e: kube::Error,
        plugin: &Plugin,
        ns: &str,
        name: &str,
    ) -> Self {
        let target = crate::ownership::Refused {
            kind: "ConfigMap",
            policy: crate::ownership::CONFIG_MAP_POLICY,
            namespace: ns,
            name,
        };
        Self::from_owned_write(e, plugin, target)
    }

    fn from_owned_write(
        e: kube::Error,
        plugin: &Plugin,
        target: crate::ownership::Refused<'_>,
    ) -> Self {
        let uid = plugin.uid().unwrap_or_default();
        match &e {
            kube::Error::Api(ae) if ae.code == 403 || ae.code == 422 => {
                crate::ownership::refusal(target, &ae.message, &plugin.name_any(), &uid)
                    .or_else(|| {
                        crate::ownership::invalid(
                            target.kind,
                            &ae.message,
                            target.namespace,
                            target.name,
                        )
                    })
                    .map_or(Error::Kube(e), Error::NotOwned)
            }
            _ => Error::Kube(e),
        }
    }
}

impl Error {
    /// Stable label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::NoNamespace => "no_namespace",
            Error::Task(_) => "task",
            Error::Certificate(_) => "certificate",
            Error::NotOwned(_) => "not_owned",
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
    /// Most reconciles at once (`--max-concurrent-reconciles`): with `max_bundle_bytes`, what
    /// bounds the bundles held in memory.
    pub max_concurrent_reconciles: u16,
    /// What this process remembers per Plugin (by uid), dropped when the Plugin is deleted.
    pub caches: PluginCaches,
    /// Where audit records go: [`audit::emit`], the operator's stdout.
    pub audit: audit::Sink,
    /// Which Plugins and PluginTrustPolicies this release serves (`--shard`).
    pub shard: Shard,
    /// How long a plugin's certificate is valid (`--plugin-certificate-lifetime-seconds`).
    pub plugin_certificate_lifetime: Duration,
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
        let (namespaces, namespace_writer) = reflector::store();
        let namespace_stream = reflector::reflector(
            namespace_writer,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                airlock_runtime::watch::config(),
            ),
        );
        tokio::spawn(
            namespace_stream
                .backoff(airlock_runtime::watch::WatchBackoff::default())
                .for_each(|_| async {}),
        );
        Self::with_namespaces(
            client,
            namespaces,
            build,
            registry,
            metrics,
            max_bundle_bytes,
        )
    }

    /// A context reading namespace labels from `namespaces`, a cache someone else fills (the
    /// watch [`Context::new`] starts, or a test).
    pub fn with_namespaces(
        client: Client,
        namespaces: Store<PartialObjectMeta<Namespace>>,
        build: BuildConfig,
        registry: Registry,
        metrics: Metrics,
        max_bundle_bytes: u64,
    ) -> Self {
        let reporter = Reporter {
            controller: "airlock-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            namespaces,
            client,
            build,
            registry: Arc::new(registry),
            metrics,
            max_bundle_bytes,
            max_concurrent_reconciles: DEFAULT_CONCURRENT_RECONCILES,
            caches: PluginCaches::default(),
            audit: Arc::new(audit::emit),
            shard: Shard::default(),
            plugin_certificate_lifetime: airlock_tls::pki::PLUGIN_LEAF_LIFETIME,
        }
    }
}

/// One leadership term: the shared context and the caches its watches fill.
struct Term {
    ctx: Arc<Context>,
    watches: Watches,
}

/// Runs the controller until the process is asked to stop.
pub async fn run(ctx: Arc<Context>) {
    if ctx.namespaces.wait_until_ready().await.is_err() {
        warn!("the namespace cache stopped before it was ready");
        return;
    }
    let client = ctx.client.clone();
    // Status-only changes (the operator's own writes) start no reconcile ([`triggers`]), and
    // managedFields, never read, are kept out of the cache.
    let (plugins, plugin_writer) = reflector::store();
    // A deleted Plugin is recorded (audit record, Event) and forgotten as its delete event goes
    // by: no finalizer holds the deletion for the operator.
    let (deleted_tx, mut deleted) = tokio::sync::mpsc::unbounded_channel::<Plugin>();
    let recorder = tokio::spawn({
        let ctx = ctx.clone();
        async move {
            while let Some(p) = deleted.recv().await {
                record::cleanup(&p, &ctx).await;
            }
        }
    });
    // Not `Store::wait_until_ready`: the controller waits on this store, and in kube-runtime 5.0
    // a second waiter can leave one of them asleep for ever (see `watches::signal_listed`).
    let (plugins_listed_tx, plugins_listed) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn(sweep_forgotten_deletions(
        ctx.clone(),
        plugins.clone(),
        plugins_listed.clone(),
    ));
    // Only this release's shard: another release serves the rest ([`airlock_core::shard`]). A
    // Plugin relabelled into another shard leaves this watch as a delete event ([`record::cleanup`]
    // tells the two apart).
    let plugin_triggers = watcher(
        Api::<Plugin>::all(client.clone()),
        airlock_runtime::watch::config().labels(&ctx.shard.selector()),
    )
    .backoff(airlock_runtime::watch::WatchBackoff::default())
    .modify(|p: &mut Plugin| {
        // Who last changed the spec, for audit records, before managedFields leave the cache.
        crate::audit::keep_spec_writer(p);
        p.managed_fields_mut().clear();
    })
    .reflect(plugin_writer)
    .inspect(move |event| {
        if let Ok(watcher::Event::InitDone) = event {
            plugins_listed_tx.send_replace(true);
        }
        if let Ok(watcher::Event::Delete(p)) = event {
            let _ = deleted_tx.send(p.clone());
        }
    })
    .applied_objects()
    .predicate_filter(triggers::plugin_changes, Default::default());
    // The children of this shard's Plugins carry its label ([`crate::build::labels::common`]).
    let cfg = airlock_runtime::watch::config().labels(&ctx.shard.managed_selector());

    // The same watch fills the policy cache and triggers the reconciles, so a reconcile caused by
    // a policy change always sees that change.
    // Every policy of the cluster, whatever its shard: a key revoked by any policy is revoked
    // for every release. What a policy grants counts only for the release of its shard
    // ([`crate::policy::governing`]), which alone writes its status.
    let (policies, policies_listed, policy_stream) = cached_watch(
        Api::<PluginTrustPolicy>::all(client.clone()),
        airlock_runtime::watch::config(),
    );
    // Each policy's status: what it governs, its keys, its conflicts with others.
    let policy_statuses = tokio::spawn(crate::policy_status::maintain(
        client.clone(),
        ctx.shard.clone(),
        policies.clone(),
        plugins.clone(),
        ctx.namespaces.clone(),
        [plugins_listed, policies_listed.clone()],
    ));
    // Only a change of a policy's spec (or labels) can change what it allows: its status, written
    // above, must not re-check every Plugin.
    let cached = policies.clone();
    let policy_stream = policy_stream.predicate_filter(
        move |p: &PluginTrustPolicy| {
            triggers::policy_changes(p, cached.get(&ObjectRef::from_obj(p)).is_some())
        },
        Default::default(),
    );
    // A list page is held whole before its Deployments are stripped: pages of 100 instead of
    // kube's 500 keep that peak at ≈ 5 MB (≈ 48 KB per full Deployment in memory).
    let (deployments, deployments_listed, deployment_stream) = watches::cached_watch_stripped(
        Api::<Deployment>::all(client.clone()),
        cfg.clone().page_size(100),
        watches::strip_deployment,
    );
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
    // Metadata only: which version each ConfigMap has, not its content (read once per version,
    // and only for ConfigMaps a Plugin names).
    // Annotations and labels are dropped: a client-side `kubectl apply` copies the whole
    // content into an annotation, which would put every ConfigMap of the cluster in memory.
    let (config_maps, config_maps_listed, config_map_stream) = watches::cached_watch_stripped(
        Api::<PartialObjectMeta<ConfigMap>>::all(client.clone()),
        airlock_runtime::watch::config(),
        |cm| {
            cm.annotations_mut().clear();
            cm.labels_mut().clear();
        },
    );
    let ca = certificates::load_ca(&ctx).await;
    let router_certificate = tokio::spawn(certificates::maintain_router_certificate(
        client.clone(),
        ctx.build.router_namespace.clone(),
        ca.clone(),
    ));
    let term = Arc::new(Term {
        ctx,
        watches: Watches {
            policies,
            deployments,
            deployments_listed,
            services,
            network_policies,
            service_accounts,
            bundle_config_maps: crate::bundle_config_maps::BundleConfigMaps::new(
                config_maps,
                config_maps_listed,
            ),
            policies_listed,
            ca,
        },
    });

    let controller = Controller::for_stream(plugin_triggers, plugins)
        .with_config(
            kube::runtime::controller::Config::default()
                .concurrency(term.ctx.max_concurrent_reconciles.max(1)),
        )
        .trigger_backoff(watches::EachWatchBacksOff);
    let store = controller.store();
    let users = controller.store();
    // The echo of this process's own apply of a child starts no reconcile ([`triggers`]).
    let applied = &term.ctx.caches.applied;
    controller
        .owns_stream(triggers::without_own_writes(
            deployment_stream,
            applied.clone(),
        ))
        .owns_stream(triggers::without_own_writes(
            service_stream,
            applied.clone(),
        ))
        .owns_stream(triggers::without_own_writes(
            network_policy_stream,
            applied.clone(),
        ))
        .owns_stream(triggers::without_own_writes(
            service_account_stream,
            applied.clone(),
        ))
        // A trust policy change can block or unblock any plugin: re-check them all.
        .watches_stream(policy_stream, move |_policy| {
            store
                .state()
                .iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        // A bundle ConfigMap changed (a new bundle uploaded): re-check the Plugins that use it.
        .watches_stream(config_map_stream, move |cm| {
            let (ns, name) = (cm.namespace().unwrap_or_default(), cm.name_any());
            users
                .state()
                .iter()
                .filter(|p| {
                    p.namespace().as_deref() == Some(ns.as_str())
                        && p.spec
                            .bundle
                            .source
                            .config_map_ref
                            .as_ref()
                            .is_some_and(|r| r.name == name)
                })
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
    recorder.abort();
    sweeper.abort();
    policy_statuses.abort();
}

/// How often what this process remembers per Plugin is checked against the Plugins that exist.
const SWEEP_EVERY: Duration = Duration::from_secs(300);

/// Drops what is remembered about Plugins that no longer exist although no delete event said so
/// (the watch relisted after a gap, or a reconcile in flight refilled a cache after the delete):
/// per-Plugin caches, registry pins and the phase gauge. Their `Deleted` audit record is lost —
/// only the watch could have told.
async fn sweep_forgotten_deletions(
    ctx: Arc<Context>,
    plugins: Store<Plugin>,
    mut listed: tokio::sync::watch::Receiver<bool>,
) {
    // Never against an empty cache that is not listed yet: it would forget every Plugin.
    if listed.wait_for(|l| *l).await.is_err() {
        return;
    }
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let state = plugins.state();
        let uids: std::collections::HashSet<String> =
            state.iter().filter_map(|p| p.uid()).collect();
        let keys: std::collections::HashSet<String> = state
            .iter()
            .map(|p| format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any()))
            .collect();
        let alive = |uid: &str| uids.contains(uid);
        ctx.caches.retain(&alive);
        ctx.registry.retain(&alive);
        ctx.metrics.retain(&|key: &str| keys.contains(key));
    }
}

fn error_policy(_plugin: Arc<Plugin>, error: &Error, term: Arc<Term>) -> Action {
    term.ctx.metrics.reconcile_error(error.metric_label());
    Action::requeue(Duration::from_secs(10))
}

#[instrument(skip_all, fields(plugin = %plugin.name_any(), namespace = plugin.namespace().unwrap_or_default()))]
async fn reconcile(plugin: Arc<Plugin>, term: Arc<Term>) -> Result<Action, Error> {
    let ctx = &term.ctx;
    let started = Instant::now();
    let result = reconcile_plugin(plugin, &term).await;
    ctx.metrics.observe_reconcile(started.elapsed());
    result
}

async fn reconcile_plugin(plugin: Arc<Plugin>, term: &Arc<Term>) -> Result<Action, Error> {
    let ctx = &term.ctx;
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<Plugin> = Api::namespaced(ctx.client.clone(), &ns);
    if plugin.finalizers().iter().any(|f| f == LEGACY_FINALIZER) {
        remove_legacy_finalizer(&api, &plugin).await?;
    }
    if plugin.re_enabled() {
        forget_auto_disable(&api, &plugin).await?;
    }
    let namespace_going = ctx
        .namespaces
        .get(&ObjectRef::new(&ns))
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some());
    if plugin.metadata.deletion_timestamp.is_some() || namespace_going {
        // Going away (children with it, by garbage collection; a namespace being deleted also
        // refuses every create meanwhile); its delete event is recorded.
        return Ok(Action::await_change());
    }
    // kstatus reads a Plugin without a status as Current: give it one at once, before the
    // (possibly slow) verification. The CRD's default status (Pending, observedGeneration 0)
    // makes this write unneeded; it stays for a Plugin read through a CRD without that default.
    if plugin.status.is_none()
        && ctx
            .caches
            .last_written(&plugin.uid().unwrap_or_default())
            .is_none()
    {
        record::record_status(
            &plugin,
            crate::status::first_sight(&plugin, crate::status::now()),
            ctx,
        )
        .await?;
    }
    // On its own task: a reconcile that blocks its thread must not freeze the controller's
    // stream, which drives every other reconcile.
    let term = term.clone();
    tokio::spawn(
        async move {
            // A reconcile that never finishes would hold every later trigger of this Plugin.
            // Every await below has its own timeout (API requests: kube_client::REQUEST_TIMEOUT;
            // registry calls); this is the backstop.
            tokio::time::timeout(
                RECONCILE_TIMEOUT,
                pipeline::run(&plugin, &term.ctx, &term.watches),
            )
            .await
            .map_err(|_| {
                warn!("reconcile did not finish within {RECONCILE_TIMEOUT:?}; retrying");
                Error::Task(format!("timed out after {RECONCILE_TIMEOUT:?}"))
            })?
        }
        .in_current_span(),
    )
    .await
    .map_err(|e| Error::Task(e.to_string()))?
}

/// Removes `status.autoDisabled` once `spec.reEnable` moved past it (the plugin runs again
/// either way: [`Plugin::auto_disabled`] ignores such a record). A merge patch, because the
/// router owns that field; conditional on the version read, so an auto-disable recorded in
/// between under the new `spec.reEnable` is never removed (a conflict is retried).
async fn forget_auto_disable(api: &Api<Plugin>, plugin: &Plugin) -> Result<(), Error> {
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": plugin.resource_version()},
        "status": {"autoDisabled": null},
    });
    api.patch_status(
        &plugin.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    tracing::info!("spec.reEnable changed: the router's auto-disable no longer applies");
    Ok(())
}

/// Removes [`LEGACY_FINALIZER`], keeping any other (the resourceVersion makes it a conditional
/// write: a conflict is retried with the fresh object).
async fn remove_legacy_finalizer(api: &Api<Plugin>, plugin: &Plugin) -> Result<(), Error> {
    let rest: Vec<&String> = plugin
        .finalizers()
        .iter()
        .filter(|f| *f != LEGACY_FINALIZER)
        .collect();
    let patch = serde_json::json!({
        "metadata": {"finalizers": rest, "resourceVersion": plugin.resource_version()}
    });
    api.patch(
        &plugin.name_any(),
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(&patch),
    )
    .await?;
    Ok(())
}
