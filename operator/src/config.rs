//! Configuration of the operator process: flags (and their environment variables).

use std::net::SocketAddr;

use clap::Parser;

use crate::build::BuildConfig;

/// Airlock operator: verifies and runs Plugins as sandboxed workloads.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Config {
    /// Image of the plugin shim (pin it by digest), copied into every plugin pod.
    #[arg(long, env = "AIRLOCK_SHIM_IMAGE")]
    pub shim_image: String,
    /// Namespace of the hook router: the only place plugin pods accept connections from.
    #[arg(
        long,
        env = "AIRLOCK_ROUTER_NAMESPACE",
        default_value = "airlock-system"
    )]
    pub router_namespace: String,
    /// Label (key=value) selecting the router's pods; repeat for several.
    #[arg(
        long = "router-label",
        default_value = "app.kubernetes.io/name=airlock-router"
    )]
    pub router_labels: Vec<String>,
    /// host:port plugin shims call the router's host API on. Unset: the cluster IP of the
    /// --router-service Service in --router-namespace, port 50051, looked up at start (plugin pods
    /// resolve no DNS: their NetworkPolicy allows no egress but this).
    #[arg(long, env = "AIRLOCK_ROUTER_HOST_API")]
    pub router_host_api: Option<String>,
    /// Name of the router's Service in --router-namespace (the chart's `<fullname>-router`).
    #[arg(long, env = "AIRLOCK_ROUTER_SERVICE", default_value = "airlock-router")]
    pub router_service: String,
    /// Registries (host:port) reached over plain HTTP instead of HTTPS, e.g. a local test registry.
    #[arg(
        long = "insecure-registry",
        env = "AIRLOCK_INSECURE_REGISTRIES",
        value_delimiter = ','
    )]
    pub insecure_registries: Vec<String>,
    /// Hosts (`host` or `host:port`) HTTP bundles may be downloaded from over plain HTTP;
    /// everything else must be https://.
    #[arg(
        long = "bundle-http-insecure-host",
        env = "AIRLOCK_BUNDLE_HTTP_INSECURE_HOSTS",
        value_delimiter = ','
    )]
    pub bundle_http_insecure_hosts: Vec<String>,
    /// Address ranges that are not globally reachable (private, loopback, link-local, …) but
    /// that HTTP bundles may still be downloaded from, e.g. an in-cluster bundle server's range.
    #[arg(
        long = "bundle-http-allow-cidr",
        env = "AIRLOCK_BUNDLE_HTTP_ALLOWED_CIDRS",
        value_delimiter = ','
    )]
    pub bundle_http_allowed_cidrs: Vec<ipnet::IpNet>,
    /// The cluster's own Pod and Service ranges (e.g. 10.244.0.0/16,10.96.0.0/12): no plugin may
    /// reach them through `spec.network.egress`; broader rules except them.
    #[arg(
        long = "cluster-cidr",
        env = "AIRLOCK_CLUSTER_CIDRS",
        value_delimiter = ','
    )]
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    /// Secret (in each plugin's namespace) every plugin pod pulls with, besides its Plugin's
    /// spec.imagePullSecrets, e.g. for a private mirror of the shim image. Repeat for several.
    #[arg(
        long = "plugin-image-pull-secret",
        env = "AIRLOCK_PLUGIN_IMAGE_PULL_SECRETS",
        value_delimiter = ','
    )]
    pub plugin_image_pull_secrets: Vec<String>,
    /// Let plugin shims run on nodes whose kernel cannot hide their TLS key from the plugin process
    /// (no Landlock): the plugin can then read the key. Unset, such a shim refuses to start.
    #[arg(long, env = "AIRLOCK_SHIM_ALLOW_READABLE_KEY")]
    pub shim_allow_readable_key: bool,
    /// How long each plugin's mTLS certificate is valid, in seconds; it is renewed with a third of
    /// it left. Shorter: a leaked plugin key stops working sooner, for one Secret write per
    /// Plugin per two thirds of it. At least 600 (the renewed certificate must reach the pod
    /// through the kubelet's Secret sync before the old one ends), at most 30 days.
    #[arg(
        long,
        env = "AIRLOCK_PLUGIN_CERTIFICATE_LIFETIME_SECONDS",
        default_value_t = 86_400,
        value_parser = clap::value_parser!(u64)
            .range(airlock_tls::pki::PLUGIN_LEAF_LIFETIME_MIN.as_secs()..=2_592_000)
    )]
    pub plugin_certificate_lifetime_seconds: u64,
    /// Seconds a new revision has to become Ready.
    #[arg(long, default_value_t = 120)]
    pub progress_deadline_seconds: i32,
    /// Localhost seccomp profile for plugin pods (relative to the kubelet's seccomp root);
    /// unset: RuntimeDefault.
    #[arg(long)]
    pub seccomp_localhost_profile: Option<String>,
    /// How long a verified image signature is trusted before the registry is asked again, in
    /// seconds. Key changes in a PluginTrustPolicy take effect at once regardless.
    #[arg(long, default_value_t = 600)]
    pub reverify_interval_seconds: u64,
    /// Largest bundle accepted, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    pub max_bundle_bytes: u64,
    /// Most reconciles running at once. Each may hold a bundle (up to --max-bundle-bytes, plus
    /// its unpacked check) in memory, so this bounds the operator's memory whatever the number
    /// of Plugins: many Plugins with large bundles queue instead of exhausting the leader, which
    /// would stop verification and quarantine for the whole cluster.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_concurrent_reconciles: u16,
    /// Address of the HTTP endpoints /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Elect a leader through a Lease so that several replicas can run; only the leader reconciles.
    #[arg(long)]
    pub leader_election: bool,
    /// Namespace of the leader-election Lease (in-cluster: the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "airlock-system")]
    pub lease_namespace: String,
    /// Namespace of the registry credentials Secrets that PluginTrustPolicies name in
    /// `spec.registries` (in-cluster: the operator's own; the chart lets it read Secrets there only).
    #[arg(long, env = "POD_NAMESPACE", default_value = "airlock-system")]
    pub credentials_namespace: String,
    /// Identity in the leader-election Lease (in-cluster: the pod name).
    #[arg(long, env = "POD_NAME", default_value = "airlock-operator")]
    pub identity: String,
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, env = "AIRLOCK_LOG_JSON")]
    pub log_json: bool,
    /// Also POST every audit record and plugin event (CloudEvents, JSON) to this http(s) URL;
    /// stdout keeps them either way. Empty: stdout only.
    #[arg(
        long,
        env = "AIRLOCK_AUDIT_SINK_URL",
        default_value = "",
        hide_env_values = true
    )]
    pub audit_sink_url: String,
    /// Serve only the Plugins and PluginTrustPolicies labelled airlock.dev/shard=<this>, so that a
    /// second release can run beside another; empty (the default): only those without the label.
    #[arg(long, env = "AIRLOCK_SHARD", default_value = "")]
    pub shard: airlock_core::shard::Shard,
    /// Brings Airlock's CRDs up to this build's schema at start (Helm never upgrades a chart's
    /// CRDs); needs get and patch on them (the chart's value crds.upgrade).
    #[arg(long, env = "AIRLOCK_UPGRADE_CRDS")]
    pub upgrade_crds: bool,
}

impl Config {
    /// Where HTTP bundles may come from, beyond the default (HTTPS to public addresses).
    pub fn bundle_http(&self) -> crate::bundle_http::HttpPolicy {
        crate::bundle_http::HttpPolicy {
            insecure_hosts: self.bundle_http_insecure_hosts.clone(),
            allowed_cidrs: self.bundle_http_allowed_cidrs.clone(),
        }
    }

    pub fn build_config(&self) -> Result<BuildConfig, String> {
        let router_pod_labels = self
            .router_labels
            .iter()
            .map(|l| {
                l.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .ok_or_else(|| format!("--router-label {l:?}: expected key=value"))
            })
            .collect::<Result<_, _>>()?;
        Ok(BuildConfig {
            shim_image: self.shim_image.clone(),
            router_namespace: self.router_namespace.clone(),
            router_pod_labels,
            progress_deadline_seconds: self.progress_deadline_seconds,
            seccomp_localhost_profile: self.seccomp_localhost_profile.clone(),
            host_api: self.router_host_api.clone(),
            cluster_cidrs: self.cluster_cidrs.clone(),
            allow_readable_key: self.shim_allow_readable_key,
            image_pull_secrets: self.plugin_image_pull_secrets.clone(),
        })
    }
}
