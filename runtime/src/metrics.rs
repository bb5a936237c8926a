//! The metrics every Airlock binary that talks to Kubernetes exports, whatever else it measures:
//! API requests by method (so the cost of a reconcile, and of a steady state that should write
//! nothing, shows) and the process collector. Each binary owns its own registry and series, and
//! makes them with [`counter`], [`gauge`] and [`histogram`] (created and registered in one step).

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, Result};

/// Registers `metric` in `registry` and hands it back (its clones share the series).
fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> Result<M> {
    registry.register(Box::new(metric.clone()))?;
    Ok(metric)
}

/// The counter `name`, by `labels`, registered in `registry`.
pub fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntCounterVec> {
    registered(registry, IntCounterVec::new(Opts::new(name, help), labels)?)
}

/// The gauge `name`, by `labels`, registered in `registry`.
pub fn gauge(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> Result<IntGaugeVec> {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

/// The histogram `name` with `buckets`, by `labels`, registered in `registry`.
pub fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    buckets: &[f64],
    labels: &[&str],
) -> Result<HistogramVec> {
    let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
    registered(registry, HistogramVec::new(opts, labels)?)
}

/// `airlock_kube_requests_total{method}`.
#[derive(Clone, Debug)]
pub struct KubeRequests(IntCounterVec);

impl KubeRequests {
    /// Creates the series and registers it, with the process collector, in `registry`.
    pub fn register(registry: &Registry, binary: &str) -> Result<Self> {
        let help = format!(
            "Requests the {binary} sent to the Kubernetes API, by HTTP method (writes: POST, PUT, PATCH, DELETE)"
        );
        let requests = counter(registry, "airlock_kube_requests_total", &help, &["method"])?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self(requests))
    }

    /// One request with `method`.
    pub fn count(&self, method: &str) {
        self.0.with_label_values(&[method]).inc();
    }

    /// Requests so far with `method` (for tests and benches).
    pub fn get(&self, method: &str) -> u64 {
        self.0.with_label_values(&[method]).get()
    }
}
