//! The watches of one leadership term: each fills a cache the reconcile reads and triggers the
//! reconciles of the Plugins it concerns.

use airlock_crds::PluginTrustPolicy;
use airlock_tls::pki::Ca;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Resource, ResourceExt};
use serde::de::DeserializeOwned;

/// Watch caches of the children and of the trust policies, filled by the same watches that
/// trigger reconciles. Reads come from here, so a reconcile of an unchanged Plugin makes no API
/// request for them. What this process itself did per Plugin is in [`super::caches`].
pub(super) struct Watches {
    pub policies: Store<PluginTrustPolicy>,
    /// True once `policies` holds the first complete list.
    pub policies_listed: tokio::sync::watch::Receiver<bool>,
    pub deployments: Store<Deployment>,
    /// True once `deployments` holds the first complete list: before, "no Deployment" could be a
    /// running plugin's not listed yet (a stopped plugin would be taken for one that never ran).
    pub deployments_listed: tokio::sync::watch::Receiver<bool>,
    pub services: Store<PartialObjectMeta<Service>>,
    pub network_policies: Store<PartialObjectMeta<NetworkPolicy>>,
    pub service_accounts: Store<PartialObjectMeta<ServiceAccount>>,
    /// Bundles in ConfigMaps, read once per ConfigMap version (metadata watched).
    pub bundle_config_maps: crate::bundle_config_maps::BundleConfigMaps,
    /// The CA that issues the plugins' certificates, loaded when this term began.
    pub ca: Ca,
}

/// The controller's backoff over its merged trigger streams: none (kube-runtime's default is
/// one exponential backoff for all of them together). Each watch backs off on its own
/// (`airlock_runtime::watch::WatchBackoff` in [`cached_watch`] and on the Plugin watch). A joint backoff stops every
/// watch while any one errs: after an API server restart the watches' errors kept re-arming it
/// (up to 30 s), the watches' bodies went unread and their requests timed out unpolled, which
/// were errors again — the leader made no progress for minutes (make chaos
/// apiserver-restarted; the same wedge is reported against kube-runtime by other operators).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct EachWatchBacksOff;

impl Iterator for EachWatchBacksOff {
    type Item = std::time::Duration;
    fn next(&mut self) -> Option<std::time::Duration> {
        Some(std::time::Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for EachWatchBacksOff {
    fn reset(&mut self) {}
}

/// A watch whose stream both fills a cache and triggers reconciles. managedFields are large and
/// never read here: they are kept out of the cache. The receiver turns true once the cache holds
/// the first complete list.
pub(super) fn cached_watch<K>(
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
    cached_watch_stripped(api, config, |_| {})
}

/// [`cached_watch`], with `strip` also removing from each cached object what is never read.
pub(super) fn cached_watch_stripped<K>(
    api: Api<K>,
    config: watcher::Config,
    strip: fn(&mut K),
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
            .backoff(airlock_runtime::watch::WatchBackoff::default())
            .modify(move |o: &mut K| {
                o.managed_fields_mut().clear();
                strip(o);
            })
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

/// Annotation under which the Deployment cache keeps the digest of the pod template it drops.
/// Only ever set here, on the cache's own copy: never sent to the API server, and a value the API
/// server sends is replaced.
const CACHED_TEMPLATE_DIGEST: &str = "airlock.dev/cached-template-digest";

/// What the Deployment cache keeps of a Deployment: all but its pod template, of which only the
/// digest is read ([`crate::running::template_digest`], what a revision is rolled back to). The
/// template is most of a Deployment's memory: measured with k8s-openapi 0.29, a plugin's
/// Deployment takes ≈ 48 KB in memory with it and ≈ 6 KB without (1,000 Plugins: ≈ 42 MB).
pub(super) fn strip_deployment(d: &mut Deployment) {
    let annotations = d.metadata.annotations.get_or_insert_with(Default::default);
    annotations.remove(CACHED_TEMPLATE_DIGEST);
    if let Some(spec) = d.spec.as_mut() {
        let digest = crate::running::template_digest(&spec.template);
        spec.template = Default::default();
        annotations.insert(CACHED_TEMPLATE_DIGEST.to_string(), digest);
    }
}

/// The digest of the pod template of `d`, a Deployment of the cache: kept by [`strip_deployment`]
/// (computed from the template where it is still there, as in a cache filled without it).
pub(super) fn cached_template_digest(d: &Deployment) -> Option<String> {
    let spec = d.spec.as_ref()?;
    Some(
        d.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CACHED_TEMPLATE_DIGEST))
            .cloned()
            .unwrap_or_else(|| crate::running::template_digest(&spec.template)),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;

    /// One watch erring must not hold the others: after its error, the next event of a healthy
    /// watch passes at once (kube-runtime's default joint backoff held it ≥ 800 ms, and up to
    /// 30 s as errors went on).
    #[tokio::test(start_paused = true)]
    async fn an_erring_watch_does_not_hold_the_others_back() {
        use kube::runtime::utils::StreamBackoff;
        let failing = futures::stream::iter([Err::<u32, &str>("connect refused")]);
        let healthy = futures::stream::iter([Ok::<u32, &str>(1), Ok(2)]);
        let merged = futures::stream::select(failing, healthy);
        let mut triggers = std::pin::pin!(StreamBackoff::new(merged, EachWatchBacksOff));
        let started = tokio::time::Instant::now();
        let mut seen = Vec::new();
        while let Some(item) = triggers.next().await {
            seen.push(item);
        }
        assert_eq!(seen.len(), 3, "{seen:?}");
        assert_eq!(started.elapsed(), std::time::Duration::ZERO, "held back");
    }

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

    fn deployment(image: &str, annotations: serde_json::Value) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "airlock-plugin-x", "annotations": annotations},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": {"a": "b"}},
                "template": {
                    "metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "plugin", "image": image}]},
                },
            },
            "status": {"readyReplicas": 1},
        }))
        .expect("a Deployment")
    }

    /// The cache drops the template but keeps what is read of it: its digest, the same as the
    /// full Deployment's; a digest the API server sends under the cache's annotation (anyone who
    /// can edit the Deployment could set one) is replaced by the real one.
    #[test]
    fn the_deployment_cache_keeps_the_templates_digest_not_the_template() {
        let full = deployment("registry.example/p@sha256:aa", serde_json::json!({}));
        let real = crate::running::template_digest(&full.spec.as_ref().expect("spec").template);
        let mut cached = full.clone();
        strip_deployment(&mut cached);
        assert_eq!(
            cached.spec.as_ref().expect("spec").template,
            Default::default(),
            "the template is not kept"
        );
        assert_eq!(cached.spec.as_ref().and_then(|s| s.replicas), Some(2));
        assert_eq!(
            cached.status.as_ref().and_then(|s| s.ready_replicas),
            Some(1)
        );
        assert_eq!(cached_template_digest(&cached), Some(real.clone()));
        assert_eq!(cached_template_digest(&full), Some(real.clone()));

        let mut forged = deployment(
            "registry.example/p@sha256:aa",
            serde_json::json!({CACHED_TEMPLATE_DIGEST: "sha256:forged"}),
        );
        strip_deployment(&mut forged);
        assert_eq!(cached_template_digest(&forged), Some(real.clone()));

        let mut other = deployment("registry.example/p@sha256:bb", serde_json::json!({}));
        strip_deployment(&mut other);
        assert_ne!(cached_template_digest(&other), Some(real));
    }
}
