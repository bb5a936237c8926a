//! Prometheus metrics of the operator, served on `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginStatus;
use kube::ResourceExt;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    reconcile_duration: HistogramVec,
    reconcile_errors: IntCounterVec,
    plugins: IntGaugeVec,
    kube_requests: IntCounterVec,
    hook_invocations: IntCounterVec,
    hook_duration: HistogramVec,
    auto_disabled: IntCounterVec,
    plugin_restarts: IntCounterVec,
    host_calls: IntCounterVec,
    host_log_dropped: IntCounterVec,
    breaker_open: IntGaugeVec,
    /// Last (phase, trust level) seen per plugin, so the gauge counts each plugin once.
    seen: Arc<Mutex<HashMap<String, (String, String)>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "airlock_reconcile_duration_seconds",
                "Time to reconcile one Plugin",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &[],
        )?;
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "airlock_reconcile_errors_total",
                "Reconciles that failed, by error",
            ),
            &["error"],
        )?;
        let plugins = IntGaugeVec::new(
            Opts::new("airlock_plugins", "Plugins by phase and trust level"),
            &["phase", "trust_level"],
        )?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(reconcile_errors.clone()))?;
        let kube_requests = IntCounterVec::new(
            Opts::new(
                "airlock_kube_requests_total",
                "Requests the operator sent to the Kubernetes API, by HTTP method (writes: POST, PUT, PATCH, DELETE)",
            ),
            &["method"],
        )?;
        registry.register(Box::new(plugins.clone()))?;
        registry.register(Box::new(kube_requests.clone()))?;
        // The router's series (its own process; the operator's stay empty and vice versa).
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
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self {
            registry,
            reconcile_duration,
            reconcile_errors,
            plugins,
            kube_requests,
            hook_invocations,
            hook_duration,
            auto_disabled,
            plugin_restarts,
            host_calls,
            host_log_dropped,
            breaker_open,
            seen: Arc::default(),
        })
    }

    /// Counts one request to the Kubernetes API (called by the client's middleware).
    pub fn kube_request(&self, method: &str) {
        self.kube_requests.with_label_values(&[method]).inc();
    }

    /// One hook call; `took` is None for calls refused before reaching the plugin.
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

    /// Counts one host API call of `plugin` ("namespace/name").
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

    pub fn observe_reconcile(&self, took: Duration) {
        self.reconcile_duration
            .with_label_values::<&str>(&[])
            .observe(took.as_secs_f64());
    }

    pub fn reconcile_error(&self, label: &str) {
        self.reconcile_errors.with_label_values(&[label]).inc();
    }

    pub fn set_phase(&self, plugin: &Plugin, status: &PluginStatus) {
        let phase = status.phase.map(|p| format!("{p:?}")).unwrap_or_default();
        let trust = status.trust_level.clone().unwrap_or_else(|| "None".into());
        let key = format!(
            "{}/{}",
            plugin.namespace().unwrap_or_default(),
            plugin.name_any()
        );
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, t)) = seen.insert(key, (phase.clone(), trust.clone())) {
            self.plugins
                .with_label_values(&[p.as_str(), t.as_str()])
                .dec();
        }
        self.plugins
            .with_label_values(&[phase.as_str(), trust.as_str()])
            .inc();
    }

    pub fn forget(&self, plugin: &Plugin) {
        let key = format!(
            "{}/{}",
            plugin.namespace().unwrap_or_default(),
            plugin.name_any()
        );
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((p, t)) = seen.remove(&key) {
            self.plugins
                .with_label_values(&[p.as_str(), t.as_str()])
                .dec();
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Text encoding of registered metrics cannot fail for these metric types.
        let _ = prometheus::TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out);
        out
    }
}
