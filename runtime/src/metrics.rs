//! The metrics every Airlock binary that talks to Kubernetes exports, whatever else it measures:
//! API requests by method (so the cost of a reconcile, and of a steady state that should write
//! nothing, shows), the process collector and `airlock_build_info` (which build runs where). Each binary owns its own registry and series, and
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

/// Registers `airlock_build_info{component, version} 1` in `registry`: the usual info-gauge, so
/// `airlock_build_info` tells which build each scraped pod runs (and joins its version onto other
/// series with `* on(pod) group_left(version)`). `component` is `operator` or `router`; the
/// version is the workspace's (every crate shares it). No `git_commit` label: the build does not
/// know its commit (adding one needs the image build to pass it in).
pub fn build_info(registry: &Registry, component: &str) -> Result<()> {
    let info = gauge(
        registry,
        "airlock_build_info",
        "Always 1: the Airlock component (operator or router) and its version",
        &["component", "version"],
    )?;
    info.with_label_values(&[component, env!("CARGO_PKG_VERSION")])
        .set(1);
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn build_info_names_the_component_and_version() {
        let registry = Registry::new();
        build_info(&registry, "router").unwrap();
        let text = crate::http::render(&registry);
        let line = format!(
            "airlock_build_info{{component=\"router\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&line), "{line} in\n{text}");
        // One per registry: a second registration is refused, not a second series.
        assert!(build_info(&registry, "router").is_err());
    }
}
