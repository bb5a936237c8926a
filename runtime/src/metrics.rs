//! The metrics every Airlock binary that talks to Kubernetes exports, whatever else it measures:
//! API requests by method (so the cost of a reconcile, and of a steady state that should write
//! nothing, shows) and the process collector. Each binary owns its own registry and series.

use prometheus::{IntCounterVec, Opts, Registry};

/// `airlock_kube_requests_total{method}`.
#[derive(Clone, Debug)]
pub struct KubeRequests(IntCounterVec);

impl KubeRequests {
    /// Creates the series and registers it, with the process collector, in `registry`.
    pub fn register(registry: &Registry, binary: &str) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "airlock_kube_requests_total",
                format!(
                    "Requests the {binary} sent to the Kubernetes API, by HTTP method (writes: POST, PUT, PATCH, DELETE)"
                ),
            ),
            &["method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
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
