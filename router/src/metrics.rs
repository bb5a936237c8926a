//! The router's Prometheus metrics, served on its own `/metrics`: hook calls, breakers,
//! auto-disables, plugin restarts and host-API calls. The operator has its own registry.

use std::time::Duration;

use airlock_runtime::metrics::KubeRequests;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub kube_requests: KubeRequests,
    hook_invocations: IntCounterVec,
    hook_duration: HistogramVec,
    auto_disabled: IntCounterVec,
    plugin_restarts: IntCounterVec,
    host_calls: IntCounterVec,
    host_log_dropped: IntCounterVec,
    breaker_open: IntGaugeVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let kube_requests = KubeRequests::register(&registry, "router")?;
        let hook_invocations = IntCounterVec::new(
            Opts::new(
                "airlock_hook_invocations_total",
                "Hook calls the router made or refused, by plugin (namespace/name), hook and result (ok, timeout, unavailable, plugin_error, resource_exhausted, internal, refused, ...)",
            ),
            &["plugin", "hook", "result"],
        )?;
        let hook_duration = HistogramVec::new(
            HistogramOpts::new(
                "airlock_hook_duration_seconds",
                "Time of one hook call as the router saw it, by hook",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 10.0,
            ]),
            &["hook"],
        )?;
        let auto_disabled = IntCounterVec::new(
            Opts::new(
                "airlock_plugins_auto_disabled_total",
                "Plugins the router auto-disabled after repeated timeouts or crashes",
            ),
            &[],
        )?;
        let plugin_restarts = IntCounterVec::new(
            Opts::new(
                "airlock_plugin_restarts_total",
                "Plugin processes the shim replaced after a call the router made (timeout, crash, protocol violation, oversized answer), by plugin",
            ),
            &["plugin"],
        )?;
        let breaker_open = IntGaugeVec::new(
            Opts::new(
                "airlock_breaker_open",
                "1 while the router's circuit breaker for a plugin refuses calls (open or half-open), else 0",
            ),
            &["plugin"],
        )?;
        let host_calls = IntCounterVec::new(
            Opts::new(
                "airlock_host_calls_total",
                "Host API calls plugins made (log, storage.*, emit), by plugin, call and result (ok or the gRPC code)",
            ),
            &["plugin", "call", "result"],
        )?;
        let host_log_dropped = IntCounterVec::new(
            Opts::new(
                "airlock_host_log_dropped_total",
                "Host API log lines dropped over a plugin's rate limit, by plugin",
            ),
            &["plugin"],
        )?;
        registry.register(Box::new(host_calls.clone()))?;
        registry.register(Box::new(host_log_dropped.clone()))?;
        registry.register(Box::new(plugin_restarts.clone()))?;
        registry.register(Box::new(breaker_open.clone()))?;
        registry.register(Box::new(hook_invocations.clone()))?;
        registry.register(Box::new(hook_duration.clone()))?;
        registry.register(Box::new(auto_disabled.clone()))?;
        Ok(Self {
            registry,
            kube_requests,
            hook_invocations,
            hook_duration,
            auto_disabled,
            plugin_restarts,
            host_calls,
            host_log_dropped,
            breaker_open,
        })
    }

    pub fn hook_invocation(&self, plugin: &str, hook: &str, result: &str, took: Option<Duration>) {
        self.hook_invocations
            .with_label_values(&[plugin, hook, result])
            .inc();
        if let Some(took) = took {
            self.hook_duration
                .with_label_values(&[hook])
                .observe(took.as_secs_f64());
        }
    }

    pub fn plugin_restarted(&self, plugin: &str) {
        self.plugin_restarts.with_label_values(&[plugin]).inc();
    }

    pub fn breaker(&self, plugin: &str, open: bool) {
        self.breaker_open
            .with_label_values(&[plugin])
            .set(i64::from(open));
    }

    pub fn host_call(&self, plugin: &str, call: &str, result: &str) {
        self.host_calls
            .with_label_values(&[plugin, call, result])
            .inc();
    }

    pub fn host_log_dropped(&self, plugin: &str) {
        self.host_log_dropped.with_label_values(&[plugin]).inc();
    }

    pub fn auto_disabled(&self) {
        self.auto_disabled.with_label_values::<&str>(&[]).inc();
    }

    /// The registry in Prometheus' text format (what `/metrics` serves).
    pub fn render(&self) -> String {
        airlock_runtime::http::render(&self.registry)
    }
}
