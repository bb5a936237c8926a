//! The router's Prometheus metrics, served on its own `/metrics`: hook calls, refusals (of
//! callers and of requests), token reviews, breakers, auto-disables, plugin restarts and host-API
//! calls, and `airlock_build_info`. The operator has its own registry.
//!
//! Per-plugin series name the Plugin by kube-state-metrics' label names `namespace` and `plugin`
//! (the Plugin's name), so they join with `kube_*` series. The latency histogram drops them
//! (empty values) when [`Metrics::with_per_plugin`] is false: its buckets are by far the most
//! series per plugin; the counters and gauges stay per plugin.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use airlock_core::PluginKey;
use airlock_runtime::metrics::{KubeRequests, build_info, counter, gauge, histogram};
use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec, Registry};

/// The RPCs of `airlock.router.v1.HookRouter`: the `rpc` label of refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Invoke,
    Broadcast,
    Transform,
    ListPlugins,
}

impl Rpc {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Invoke => "invoke",
            Self::Broadcast => "broadcast",
            Self::Transform => "transform",
            Self::ListPlugins => "list_plugins",
        }
    }

    /// The name of the router's span for a call of this method (OpenTelemetry's gRPC
    /// convention: `package.Service/Method`).
    pub fn span_name(self) -> &'static str {
        match self {
            Self::Invoke => "airlock.router.v1.HookRouter/Invoke",
            Self::Broadcast => "airlock.router.v1.HookRouter/Broadcast",
            Self::Transform => "airlock.router.v1.HookRouter/Transform",
            Self::ListPlugins => "airlock.router.v1.HookRouter/ListPlugins",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub kube_requests: KubeRequests,
    hook_invocations: IntCounterVec,
    refused: IntCounterVec,
    token_reviews: IntCounterVec,
    hook_duration: HistogramVec,
    auto_disabled: IntCounterVec,
    plugin_restarts: IntCounterVec,
    host_calls: IntCounterVec,
    host_log_dropped: IntCounterVec,
    handshake_refusals: IntCounterVec,
    breaker_open: IntGaugeVec,
    calls_in_flight: IntGaugeVec,
    routes: IntGaugeVec,
    /// Whether the latency histogram has a series per plugin (`--metrics-per-plugin`).
    per_plugin: bool,
}

/// One call in flight to a plugin, counted in `airlock_router_calls_in_flight` until dropped.
#[derive(Debug)]
pub struct InFlightCall(prometheus::IntGauge);

impl Drop for InFlightCall {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// The router's metrics, the latency histogram per plugin.
    pub fn new() -> Result<Self, prometheus::Error> {
        Self::with_per_plugin(true)
    }

    /// The router's metrics; `per_plugin` false leaves the latency histogram's `namespace` and
    /// `plugin` labels empty (one series set per hook instead of per hook and plugin).
    pub fn with_per_plugin(per_plugin: bool) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        build_info(&registry, "router")?;
        airlock_runtime::metrics::audit_sink(&registry)?;
        let metrics = Self {
            kube_requests: KubeRequests::register(&registry, "router")?,
            hook_invocations: counter(
                &registry,
                "airlock_hook_invocations_total",
                "Hook calls the router made or refused, by the Plugin's namespace and name, hook and result (ok, timeout, caller_deadline, unavailable, plugin_error, resource_exhausted, internal, refused, ...); caller_deadline: the caller's deadline, shorter than the hook's timeout, ran out (not counted against the plugin)",
                &["namespace", "plugin", "hook", "result"],
            )?,
            refused: counter(
                &registry,
                "airlock_router_refused_total",
                "Requests (or pipeline steps' outputs) the router refused before calling a plugin with them, by RPC (invoke, broadcast, transform, list_plugins) and reason (unauthenticated: no or a refused token; forbidden: no PluginCallerBinding grants the call; caller_concurrency: too many calls of one caller in flight; token_review_unavailable: the caller's token could not be checked; payload_too_large, payload_too_deep, payload_not_json, output_too_large, output_too_deep, output_not_json, too_many_subscribers, broadcast_too_large)",
                &["rpc", "reason"],
            )?,
            token_reviews: counter(
                &registry,
                "airlock_router_token_reviews_total",
                "TokenReviews the router asked the API server for (callers' tokens not in its cache that pass its local pre-check), by result (authenticated, rejected, error: the review failed, busy: not asked, every review lane the token may use was full)",
                &["result"],
            )?,
            hook_duration: histogram(
                &registry,
                "airlock_hook_duration_seconds",
                "Time of one hook call the router made, as it saw it, by the Plugin's namespace and name (kube-state-metrics' label names; both empty with --metrics-per-plugin=false) and hook",
                &[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0,
                ],
                &["namespace", "plugin", "hook"],
            )?,
            auto_disabled: counter(
                &registry,
                "airlock_plugins_auto_disabled_total",
                "Plugins the router auto-disabled after repeated timeouts or crashes",
                &[],
            )?,
            plugin_restarts: counter(
                &registry,
                "airlock_plugin_restarts_total",
                "Plugin processes the shim replaced after a call the router made (timeout, crash, protocol violation, oversized answer), by the Plugin's namespace and name",
                &["namespace", "plugin"],
            )?,
            breaker_open: gauge(
                &registry,
                "airlock_breaker_open",
                "1 while the router's circuit breaker for a plugin refuses calls (open or half-open), else 0, by the Plugin's namespace and name",
                &["namespace", "plugin"],
            )?,
            calls_in_flight: gauge(
                &registry,
                "airlock_router_calls_in_flight",
                "Calls this router replica has in flight to a plugin's pods, by the Plugin's namespace and name: what a HorizontalPodAutoscaler on the Plugin scales on (through a metrics adapter; sum over router replicas, divide by spec.replicas × spec.concurrency for the load per process)",
                &["namespace", "plugin"],
            )?,
            routes: gauge(
                &registry,
                "airlock_router_routes",
                "Plugins in this router replica's route table (Active or Deploying, with their ready endpoints), and the ready endpoints they have in all",
                &["kind"],
            )?,
            host_calls: counter(
                &registry,
                "airlock_host_calls_total",
                "Host API calls plugins made (log, storage.*, emit), by the Plugin's namespace and name, call and result (ok or the gRPC code)",
                &["namespace", "plugin", "call", "result"],
            )?,
            host_log_dropped: counter(
                &registry,
                "airlock_host_log_dropped_total",
                "Host API log lines dropped over a plugin's rate limit, by the Plugin's namespace and name",
                &["namespace", "plugin"],
            )?,
            handshake_refusals: counter(
                &registry,
                "airlock_router_handshake_refusals_total",
                "Plugin pods the router refused to call after asking them what they run (Handshake), once per connection, by the Plugin's namespace and name and reason (bundle_digest: not a bundle verified for a revision that may serve; api_version: another plugin API version; handshake_failed: an error a shim never gives)",
                &["namespace", "plugin", "reason"],
            )?,
            registry,
            per_plugin,
        };
        // The label-less counter exists (at 0) from the start: `increase()` over a series that
        // is born at 1 sees no increase, and the first auto-disable would go unalerted.
        metrics.auto_disabled.with_label_values::<&str>(&[]);
        Ok(metrics)
    }

    /// A call of `hook` of `plugin` with `result` (a stable label); `took` is how long a call
    /// made took (none for a call refused before it was made: no latency to observe).
    pub fn hook_invocation(
        &self,
        plugin: &PluginKey,
        hook: &str,
        result: &str,
        took: Option<Duration>,
    ) {
        self.hook_invocations
            .with_label_values(&[
                plugin.namespace.as_str(),
                plugin.name.as_str(),
                hook,
                result,
            ])
            .inc();
        if let Some(took) = took {
            let (namespace, name) = if self.per_plugin {
                (plugin.namespace.as_str(), plugin.name.as_str())
            } else {
                ("", "")
            };
            self.hook_duration
                .with_label_values(&[namespace, name, hook])
                .observe(took.as_secs_f64());
        }
    }

    /// A request the router refused before calling any plugin with it (`reason` is a stable
    /// label, never request content).
    pub fn refused(&self, rpc: &str, reason: &str) {
        self.refused.with_label_values(&[rpc, reason]).inc();
    }

    /// A TokenReview the router made (a cache miss), by result.
    pub fn token_review(&self, result: &str) {
        self.token_reviews.with_label_values(&[result]).inc();
    }

    /// A pod of `plugin` refused after its handshake, for `reason` (a stable label).
    pub fn handshake_refused(&self, plugin: &PluginKey, reason: &str) {
        self.handshake_refusals
            .with_label_values(&[plugin.namespace.as_str(), plugin.name.as_str(), reason])
            .inc();
    }

    pub fn plugin_restarted(&self, plugin: &PluginKey) {
        self.plugin_restarts
            .with_label_values(&labels(plugin))
            .inc();
    }

    /// Counts a call to `plugin` as in flight until the returned guard is dropped.
    pub fn call_in_flight(&self, plugin: &PluginKey) -> InFlightCall {
        let gauge = self.calls_in_flight.with_label_values(&labels(plugin));
        gauge.inc();
        InFlightCall(gauge)
    }

    /// Drops every per-plugin series of the Plugins not in `live` (the route table's): deleted,
    /// stopped or moved to another shard. Without it each Plugin that ever existed keeps its
    /// series — the cardinality grows with churn, and a deleted plugin's open breaker stays 1
    /// for dashboards and alerts. A Plugin that comes back starts its counters again from zero
    /// (a counter reset, which rate() and increase() handle).
    pub fn forget_plugins_except(&self, live: &HashSet<PluginKey>) {
        prune(&self.hook_invocations, live);
        prune(&self.hook_duration, live);
        prune(&self.plugin_restarts, live);
        prune(&self.breaker_open, live);
        prune(&self.calls_in_flight, live);
        prune(&self.host_calls, live);
        prune(&self.host_log_dropped, live);
        prune(&self.handshake_refusals, live);
    }

    /// Drops the breaker series of the plugins not in `routable`: a plugin the router does not
    /// route to has no breaker (see [`crate::dispatch::Router::update`]).
    pub fn forget_breakers_except(&self, routable: &HashSet<PluginKey>) {
        prune(&self.breaker_open, routable);
    }

    pub fn breaker(&self, plugin: &PluginKey, open: bool) {
        self.breaker_open
            .with_label_values(&labels(plugin))
            .set(i64::from(open));
    }

    /// The size of the route table just installed: its plugins and their ready endpoints.
    pub fn routes(&self, plugins: usize, endpoints: usize) {
        let set = |kind: &str, n: usize| {
            self.routes
                .with_label_values(&[kind])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        };
        set("plugins", plugins);
        set("endpoints", endpoints);
    }

    pub fn host_call(&self, plugin: &PluginKey, call: &str, result: &str) {
        self.host_calls
            .with_label_values(&[
                plugin.namespace.as_str(),
                plugin.name.as_str(),
                call,
                result,
            ])
            .inc();
    }

    pub fn host_log_dropped(&self, plugin: &PluginKey) {
        self.host_log_dropped
            .with_label_values(&labels(plugin))
            .inc();
    }

    pub fn auto_disabled(&self) {
        self.auto_disabled.with_label_values::<&str>(&[]).inc();
    }

    /// The registry in Prometheus' text format (what `/metrics` serves).
    pub fn render(&self) -> String {
        airlock_runtime::http::render(&self.registry)
    }
}

/// The `namespace` and `plugin` label values of `plugin`.
/// Removes from `vec` every series whose `namespace` and `plugin` labels name a Plugin not in
/// `live` (series with both empty, the histogram's without --metrics-per-plugin, stay).
fn prune<T: MetricVecBuilder>(vec: &MetricVec<T>, live: &HashSet<PluginKey>) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: HashMap<&str, &str> = metric
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            let (Some(ns), Some(name)) = (labels.get("namespace"), labels.get("plugin")) else {
                continue;
            };
            if (ns.is_empty() && name.is_empty()) || live.contains(&PluginKey::new(*ns, *name)) {
                continue;
            }
            let _ = vec.remove(&labels);
        }
    }
}

fn labels(plugin: &PluginKey) -> [&str; 2] {
    [plugin.namespace.as_str(), plugin.name.as_str()]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines of `metrics`' text that start with `name`.
    fn lines(metrics: &Metrics, name: &str) -> Vec<String> {
        metrics
            .render()
            .lines()
            .filter(|l| l.starts_with(name))
            .map(str::to_owned)
            .collect()
    }

    /// Found by `make soak`: the routers still showed an open breaker (1) for a plugin deleted
    /// minutes before. Every per-plugin series goes once the Plugin leaves the route table.
    #[test]
    fn a_plugin_gone_from_the_route_table_leaves_no_series() {
        let metrics = Metrics::new().unwrap();
        let (gone, kept) = (
            PluginKey::new("shop", "gone"),
            PluginKey::new("shop", "kept"),
        );
        for key in [&gone, &kept] {
            metrics.hook_invocation(key, "transform", "ok", Some(Duration::from_millis(3)));
            metrics.breaker(key, true);
            metrics.plugin_restarted(key);
            metrics.handshake_refused(key, "bundle_digest");
            metrics.host_call(key, "log", "ok");
            metrics.host_log_dropped(key);
            drop(metrics.call_in_flight(key));
        }
        metrics.forget_plugins_except(&HashSet::from([kept.clone()]));
        let text = metrics.render();
        assert!(!text.contains(r#"plugin="gone""#), "{text}");
        for name in [
            "airlock_hook_invocations_total",
            "airlock_hook_duration_seconds_count",
            "airlock_breaker_open",
            "airlock_plugin_restarts_total",
            "airlock_host_calls_total",
            "airlock_host_log_dropped_total",
            "airlock_router_calls_in_flight",
            "airlock_router_handshake_refusals_total",
        ] {
            assert_eq!(lines(&metrics, name).len(), 1, "{name} of kept in\n{text}");
        }
    }

    /// Without --metrics-per-plugin the latency series have empty plugin labels: not a Plugin's.
    #[test]
    fn series_without_a_plugin_are_not_forgotten() {
        let metrics = Metrics::with_per_plugin(false).unwrap();
        let key = PluginKey::new("shop", "any");
        metrics.hook_invocation(&key, "transform", "ok", Some(Duration::from_millis(3)));
        metrics.forget_plugins_except(&HashSet::new());
        assert_eq!(
            lines(&metrics, "airlock_hook_duration_seconds_count").len(),
            1
        );
    }

    #[test]
    fn the_latency_histogram_names_the_plugin_like_kube_state_metrics() {
        let metrics = Metrics::new().unwrap();
        let key = PluginKey::new("shop", "slow");
        metrics.hook_invocation(&key, "transform", "ok", Some(Duration::from_millis(300)));
        // Refused before the call: counted, but no latency.
        metrics.hook_invocation(&key, "onEvent", "refused", None);
        let text = metrics.render();
        for line in [
            r#"airlock_hook_duration_seconds_bucket{hook="transform",namespace="shop",plugin="slow",le="0.2"} 0"#,
            r#"airlock_hook_duration_seconds_bucket{hook="transform",namespace="shop",plugin="slow",le="0.5"} 1"#,
            r#"airlock_hook_duration_seconds_count{hook="transform",namespace="shop",plugin="slow"} 1"#,
            r#"airlock_hook_invocations_total{hook="transform",namespace="shop",plugin="slow",result="ok"} 1"#,
            r#"airlock_hook_invocations_total{hook="onEvent",namespace="shop",plugin="slow",result="refused"} 1"#,
            r#"airlock_build_info{component="router",version=""#,
            "airlock_plugins_auto_disabled_total 0",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert_eq!(
            lines(&metrics, "airlock_hook_duration_seconds_count").len(),
            1,
            "no latency for the refused call"
        );
    }

    #[test]
    fn the_per_plugin_counters_and_gauges_name_the_plugin_like_kube_state_metrics() {
        // Even without per-plugin latency series: only the histogram drops the labels.
        let metrics = Metrics::with_per_plugin(false).unwrap();
        let key = PluginKey::new("shop", "slow");
        metrics.plugin_restarted(&key);
        metrics.breaker(&key, true);
        let in_flight = metrics.call_in_flight(&key);
        metrics.host_call(&key, "log", "ok");
        metrics.host_log_dropped(&key);
        let text = metrics.render();
        for line in [
            r#"airlock_plugin_restarts_total{namespace="shop",plugin="slow"} 1"#,
            r#"airlock_breaker_open{namespace="shop",plugin="slow"} 1"#,
            r#"airlock_router_calls_in_flight{namespace="shop",plugin="slow"} 1"#,
            r#"airlock_host_calls_total{call="log",namespace="shop",plugin="slow",result="ok"} 1"#,
            r#"airlock_host_log_dropped_total{namespace="shop",plugin="slow"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        drop(in_flight);
        assert_eq!(
            lines(&metrics, "airlock_router_calls_in_flight"),
            [r#"airlock_router_calls_in_flight{namespace="shop",plugin="slow"} 0"#]
        );
    }

    #[test]
    fn without_per_plugin_series_the_labels_stay_empty() {
        let metrics = Metrics::with_per_plugin(false).unwrap();
        for name in ["fast", "slow"] {
            let key = PluginKey::new("shop", name);
            metrics.hook_invocation(&key, "transform", "ok", Some(Duration::from_millis(3)));
        }
        assert_eq!(
            lines(&metrics, "airlock_hook_duration_seconds_count"),
            [r#"airlock_hook_duration_seconds_count{hook="transform",namespace="",plugin=""} 2"#]
        );
        // The invocation counter stays per plugin.
        assert_eq!(
            lines(&metrics, "airlock_hook_invocations_total").len(),
            2,
            "{}",
            metrics.render()
        );
    }
}
