//! Names the control plane (which creates a plugin's objects) and the data plane (which finds and
//! calls them) must agree on: ports, labels and the names of per-plugin objects.

/// The plugin API (gRPC, mutual TLS) on every plugin pod.
pub const GRPC_PORT: i32 = 50051;
/// Plain-text gRPC health only, for the kubelet's probes (they cannot present a certificate).
pub const HEALTH_PORT: i32 = 50052;
/// The router's host API (`airlock.host.v1.Host`), which plugin shims call.
pub const HOST_API_PORT: i32 = 50051;

/// Label carrying the plugin name on every child and pod; the Service and NetworkPolicy select on it.
pub const PLUGIN_LABEL: &str = "airlock.dev/plugin";
/// Label carrying the revision on pods.
pub const REVISION_LABEL: &str = "airlock.dev/revision";
/// Label selector matching every object Airlock creates for plugins.
pub const MANAGED_BY_SELECTOR: &str = "app.kubernetes.io/managed-by=airlock";

/// Name of the objects that exist once per plugin (ServiceAccount, Deployment, Service,
/// NetworkPolicy): the plugin's own name, which the CRD limits to 52 characters.
pub fn child_name(plugin_name: &str) -> String {
    plugin_name.to_string()
}
