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

/// Registers `airlock_audit_sink_events_total{result}` in `registry` (`delivered`, `dropped`: the
/// audit sink's queue was full or every try failed), counted by [`crate::audit::sink`]. Zero
/// while no sink is configured.
pub fn audit_sink(registry: &Registry) -> Result<()> {
    let events = counter(
        registry,
        "airlock_audit_sink_events_total",
        "Audit records and plugin events the audit sink took (delivered) or lost (dropped; stdout still has them)",
        &["result"],
    )?;
    for result in ["delivered", "dropped"] {
        events.with_label_values(&[result]);
    }
    crate::audit::sink::count_into(events);
    Ok(())
}

/// `airlock_kube_requests_total{method, resource}`.
#[derive(Clone, Debug)]
pub struct KubeRequests(IntCounterVec);

/// The resource (and subresource) a Kubernetes API path addresses, e.g. `deployments`,
/// `plugins/status`, `leases`: what a request cost is broken down by. Never an object or
/// namespace name (bounded cardinality); `other` for a path of no known shape.
pub fn resource_of(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let rest = match segments.as_slice() {
        ["api", _version, rest @ ..] => rest,
        ["apis", _group, _version, rest @ ..] => rest,
        _ => return "other".into(),
    };
    let rest = match rest {
        ["namespaces", _ns, rest @ ..] if !rest.is_empty() => rest,
        other => other,
    };
    match rest {
        [resource] | [resource, _] => (*resource).to_string(),
        [resource, _, sub] => format!("{resource}/{sub}"),
        _ => "other".into(),
    }
}

impl KubeRequests {
    /// Creates the series and registers it, with the process collector, in `registry`.
    pub fn register(registry: &Registry, binary: &str) -> Result<Self> {
        let help = format!(
            "Requests the {binary} sent to the Kubernetes API, by HTTP method (writes: POST, PUT, PATCH, DELETE)"
        );
        let requests = counter(
            registry,
            "airlock_kube_requests_total",
            &help,
            &["method", "resource"],
        )?;
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Self(requests))
    }

    /// One request with `method` to `path` (counted under [`resource_of`] the path).
    pub fn count(&self, method: &str, path: &str) {
        self.0
            .with_label_values(&[method, &resource_of(path)])
            .inc();
    }

    /// Requests so far with `method`, all resources (for tests and benches).
    pub fn get(&self, method: &str) -> u64 {
        use prometheus::core::Collector;
        self.0
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .filter(|m| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == "method" && l.value() == method)
            })
            .map(|m| m.get_counter().get_value() as u64)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_resource_never_by_name() {
        for (path, resource) in [
            (
                "/apis/apps/v1/namespaces/acme/deployments/hello",
                "deployments",
            ),
            ("/apis/apps/v1/namespaces/acme/deployments", "deployments"),
            (
                "/apis/airlock.dev/v1alpha1/namespaces/acme/plugins/hello/status",
                "plugins/status",
            ),
            ("/api/v1/namespaces/acme/events", "events"),
            ("/api/v1/namespaces/acme", "namespaces"),
            ("/api/v1/namespaces", "namespaces"),
            (
                "/apis/coordination.k8s.io/v1/namespaces/airlock-system/leases/airlock",
                "leases",
            ),
            (
                "/apis/airlock.dev/v1alpha1/plugintrustpolicies/p/status",
                "plugintrustpolicies/status",
            ),
            (
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/plugins.airlock.dev",
                "customresourcedefinitions",
            ),
            ("/version", "other"),
            ("/api/v1/namespaces/acme/pods/a/b/c", "other"),
        ] {
            assert_eq!(resource_of(path), resource, "{path}");
        }
        let registry = Registry::new();
        let requests = KubeRequests::register(&registry, "operator").unwrap();
        requests.count("PATCH", "/apis/apps/v1/namespaces/acme/deployments/hello");
        requests.count("PATCH", "/api/v1/namespaces/acme/events/x");
        requests.count("GET", "/api/v1/namespaces/acme/events/x");
        assert_eq!(requests.get("PATCH"), 2);
        let text = crate::http::render(&registry);
        assert!(
            text.contains(
                r#"airlock_kube_requests_total{method="PATCH",resource="deployments"} 1"#
            ),
            "{text}"
        );
        assert!(!text.contains("hello"), "{text}");
    }

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
