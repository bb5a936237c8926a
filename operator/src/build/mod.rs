//! Pure builders of the objects a `Plugin` owns: one file per kind, each a function from the
//! Plugin and what verification established ([`Rollout`]) to the desired object. No IO here; the
//! controller applies what these return with server-side apply.

pub mod bundle_secret;
pub mod config_map;
pub mod deployment;
pub mod labels;
pub mod network_policy;
pub mod service;
pub mod service_account;
pub mod tls_secret;

use std::collections::BTreeSet;

use airlock_crds::Permission;

pub use airlock_core::names::{GRPC_PORT, HEALTH_PORT, HOST_API_PORT, child_name};
/// Where the plugin's TLS Secret is mounted in its pod.
pub const TLS_DIR: &str = "/var/run/airlock/tls";
/// Field manager of every server-side apply Airlock makes.
pub const FIELD_MANAGER: &str = "airlock-operator";

/// Cluster-wide settings the builders need, from the operator's configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct BuildConfig {
    /// Image of the shim, copied into every plugin pod by an init container (pinned by digest).
    pub shim_image: String,
    /// Namespace of the hook router, the only client allowed to reach plugin pods.
    pub router_namespace: String,
    /// Labels selecting the router's pods.
    pub router_pod_labels: Vec<(String, String)>,
    /// Seconds a new revision has to become Ready before it is rolled back.
    pub progress_deadline_seconds: i32,
    /// `None`: the container runtime's default profile; `Some(path)`: a Localhost profile relative
    /// to the kubelet's seccomp root, installed by the chart.
    pub seccomp_localhost_profile: Option<String>,
    /// `ip:port` of the router's host API, which shims call back on (`--host-api`); the
    /// NetworkPolicy lets plugin pods reach the router's pods on [`HOST_API_PORT`] only then.
    /// `None`: plugins get no host API.
    pub host_api: Option<String>,
    /// The cluster's own Pod and Service ranges: excepted from every egress rule (and refused as
    /// a destination by the plan).
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    /// Let shims run where the kernel cannot hide their TLS key from the plugin process
    /// (`airlock-shim run --allow-readable-key`); otherwise such a shim refuses to start.
    pub allow_readable_key: bool,
    /// Secrets every plugin pod pulls with, besides its Plugin's `spec.imagePullSecrets` (e.g.
    /// for a private mirror of the shim image); each plugin namespace must hold them.
    pub image_pull_secrets: Vec<String>,
}

/// CPU and memory the plugin container gets, after the trust level's caps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resources {
    pub cpu_limit: String,
    pub memory_limit: String,
    pub cpu_request: String,
    pub memory_request: String,
}

/// What verification established for one revision of a plugin: everything in it was checked,
/// nothing is taken from the spec unverified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rollout {
    /// `repository@sha256:...`: the pod never runs a tag.
    pub pinned_image: String,
    pub image_digest: String,
    pub bundle_digest: String,
    /// The bundle bytes (a gzipped tar), stored in an immutable Secret named by digest.
    pub bundle: Vec<u8>,
    /// Detached signature and the signer's public key, for the shim to check again at start.
    pub bundle_signature: Option<BundleSignature>,
    /// argv of the plugin process, from the signed manifest.
    pub entry_point: Vec<String>,
    /// Signed manifest ∩ spec ∩ trust level.
    pub permissions: BTreeSet<Permission>,
    pub resources: Resources,
    /// Runtime limits from the trust level (or the defaults).
    pub limits: airlock_crds::plugin::PluginLimits,
    /// Plugin processes per pod (`spec.concurrency`, approved).
    pub concurrency: u32,
    /// `spec.config`, checked against the signed manifest's `configSchema`; `None` when the
    /// Plugin sets none (the pod then has no configuration mount and the plugin gets `{}`).
    pub config: Option<PluginConfig>,
    /// `spec.configSecrets` in name order: Secret keys mounted into the pod for the shim to hand
    /// to the plugin ([`config_map::SECRETS_DIR`]). References only; never read by the operator.
    pub config_secrets: Vec<airlock_crds::plugin::ConfigSecret>,
    /// The signed manifest declares `onUpgrade` and a storage permission, but the Plugin holds
    /// neither storage permission: its shim is told not to send `onUpgrade` (`--no-upgrade`).
    /// It could migrate nothing, and asking the host for the storage's version would be
    /// refused, which fails every start of a plugin that has to run without its storage.
    pub no_upgrade: bool,
    /// Short hash of everything that changes the pod; names the revision in status.
    pub revision: String,
}

/// A plugin's checked configuration, as the pod receives it ([`config_map`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PluginConfig {
    /// `spec.config` as compact JSON: the file the shim reads and hands to the plugin.
    pub json: String,
    /// sha256 of `json`, 64 hex digits.
    pub digest: String,
    /// The plugin takes a new configuration while it runs (its signed manifest declares
    /// `onConfigChange`): its pods mount one ConfigMap that is changed in place and the shim
    /// passes each change on. Otherwise each configuration is an immutable ConfigMap of its own,
    /// part of the revision: a change rolls the pods, and a rollback brings the old one back.
    pub live: bool,
}

/// A verified detached bundle signature and the public key it verified under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BundleSignature {
    pub signature: String,
    /// SPKI PEM.
    pub public_key: String,
}

/// The Plugin, [`Rollout`] and [`BuildConfig`] the builders' unit tests start from, for other
/// crates' tests too (the shim's contract test builds the pod spec from them) with the feature
/// `test-support`, which the operator's own builds do not enable.
#[cfg(any(test, feature = "test-support"))]
#[allow(clippy::expect_used)] // a fixture that does not parse is a broken test
pub mod test_support {
    use airlock_crds::Plugin;

    use super::*;

    pub fn plugin(yaml: &str) -> Plugin {
        let mut p: Plugin = serde_yaml::from_str(yaml).expect("test Plugin YAML parses");
        p.metadata.uid = Some("0b7c1e9e-1111-2222-3333-444455556666".into());
        p
    }

    pub const HELLO: &str = r#"
apiVersion: airlock.dev/v1alpha1
kind: Plugin
metadata: {name: hello, namespace: plugins, generation: 3}
spec:
  version: 1.0.0
  image: 198.19.255.1:5000/acme/hello:1.0.0
  bundle: {source: {configMapRef: {name: hello-bundle}}}
  pluginApiVersion: 1
  hooks: [{name: transform, timeout: 200ms}]
  permissions: [log]
"#;

    pub fn config() -> BuildConfig {
        BuildConfig {
            shim_image: "198.19.255.1:5000/airlock/shim@sha256:aaaa".into(),
            router_namespace: "airlock-system".into(),
            router_pod_labels: vec![("app.kubernetes.io/name".into(), "airlock-router".into())],
            progress_deadline_seconds: 60,
            seccomp_localhost_profile: None,
            host_api: None,
            cluster_cidrs: vec!["10.96.0.0/12".parse().expect("cidr")],
            allow_readable_key: false,
            image_pull_secrets: vec![],
        }
    }

    /// A detached bundle signature and its signer's key, as verification hands them on.
    pub fn bundle_signature() -> BundleSignature {
        BundleSignature {
            signature: "c2lnbmF0dXJl".into(),
            public_key: "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"
                .into(),
        }
    }

    pub fn rollout() -> Rollout {
        Rollout {
            pinned_image: "198.19.255.1:5000/acme/hello@sha256:bbbb".into(),
            image_digest: "sha256:bbbb".into(),
            bundle_digest: format!("sha256:{}", "c".repeat(64)),
            bundle: b"bundle bytes".to_vec(),
            bundle_signature: None,
            entry_point: vec!["/hello".into()],
            permissions: [airlock_crds::Permission::Log].into_iter().collect(),
            resources: Resources {
                cpu_limit: "250m".into(),
                memory_limit: "64Mi".into(),
                cpu_request: "50m".into(),
                memory_request: "64Mi".into(),
            },
            limits: Default::default(),
            concurrency: 1,
            config: None,
            config_secrets: vec![],
            no_upgrade: false,
            revision: "r1a2b3c4d".into(),
        }
    }
}
