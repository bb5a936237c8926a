//! Prometheus metrics of the operator, served on `/metrics`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginStatus;
use airlock_runtime::metrics::KubeRequests;
use kube::ResourceExt;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub kube_requests: KubeRequests,
    reconcile_duration: HistogramVec,
    reconcile_errors: IntCounterVec,
    plugins: IntGaugeVec,
    /// Last (phase, trust level) seen per plugin, so the gauge counts each plugin once.
    seen: Arc<Mutex<HashMap<String, (String, String)>>>,
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
        registry.register(Box::new(plugins.clone()))?;
        let kube_requests = KubeRequests::register(&registry, "operator")?;
        airlock_runtime::metrics::build_info(&registry, "operator")?;
        airlock_runtime::metrics::audit_sink(&registry)?;
        Ok(Self {
            registry,
            kube_requests,
            reconcile_duration,
            reconcile_errors,
            plugins,
            seen: Arc::default(),
        })
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

    /// Stops counting every Plugin whose `namespace/name` `alive` does not accept.
    pub fn retain(&self, alive: &dyn Fn(&str) -> bool) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        seen.retain(|key, (p, t)| {
            let keep = alive(key);
            if !keep {
                self.plugins
                    .with_label_values(&[p.as_str(), t.as_str()])
                    .dec();
            }
            keep
        });
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

    /// The registry in Prometheus' text format (what `/metrics` serves).
    pub fn render(&self) -> String {
        airlock_runtime::http::render(&self.registry)
    }
}
