//! The `PluginTrustPolicy` resource (cluster-scoped): which keys a cluster admin trusts, and what
//! a plugin signed by each may do.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use airlock_core::Permission;

/// Trusted signing keys and the limits of each trust level, for the namespaces it selects.
/// When several policies select a namespace, the most restrictive answer wins: a key is trusted
/// there only if every selecting policy lists it (at the lowest level any gives it), a key that
/// any policy of the cluster revokes is revoked everywhere, and caps are the smallest of them.
// Printer columns of the same type repeat `type_ = "integer"`, which clippy mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "airlock.dev",
    version = "v1alpha1",
    kind = "PluginTrustPolicy",
    plural = "plugintrustpolicies",
    doc = "Which signing keys a cluster admin trusts for which namespaces, at which trust level, and what each level may do (permissions, resources, timeouts, egress). When several policies select a namespace, the most restrictive answer wins.",
    shortname = "ptp",
    category = "airlock",
    printcolumn(name = "Keys", type_ = "integer", json_path = ".status.keyCount"),
    printcolumn(
        name = "Namespaces",
        type_ = "integer",
        json_path = ".status.namespaces"
    ),
    printcolumn(name = "Plugins", type_ = "integer", json_path = ".status.plugins"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    status = "PluginTrustPolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct PluginTrustPolicySpec {
    /// Signing keys. A plugin's trust level is the level of the key that signed it.
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(k, self.exists_one(o, o.name == k.name))")
        .message("spec.keys: each key name may appear once"))]
    pub keys: Vec<TrustedKey>,
    /// Caps and allowed permissions per trust level. A level without an entry allows nothing.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub trust_levels: BTreeMap<TrustLevel, TrustLevelLimits>,
    /// Namespaces this policy governs. Empty: every namespace.
    pub namespaces: Option<LabelSelector>,
    /// Credentials the operator uses to read images, signatures and bundle artifacts from private
    /// registries, for Plugins in the namespaces this policy governs. The longest matching prefix
    /// wins. A Plugin's pods pull with the Plugin's own `spec.imagePullSecrets`, never with these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.all(r, self.exists_one(o, o.prefix == r.prefix))")
        .message("spec.registries: each prefix may appear once"))]
    pub registries: Vec<RegistryCredentials>,
    /// Registries (`host[:port]`, optionally followed by a repository path, matched by whole
    /// path segments) that Plugins of the governed namespaces may name in `spec.image` and
    /// `spec.bundle.source.oci.ref`. Any other reference is refused (reason
    /// `RegistryNotAllowed`) before the operator sends a request there. Empty: no restriction
    /// from this policy. Several governing policies: a reference must be allowed by each one
    /// that lists any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(length(min = 1, max = 255)))]
    #[x_kube(validation = Rule::new(r"self.all(p, p.matches('^[a-zA-Z0-9][a-zA-Z0-9.-]*(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$'))")
        .message("spec.allowedRegistries: write each as host[:port][/path], e.g. registry.example.com/acme (no scheme, tag or trailing slash)"))]
    pub allowed_registries: Vec<String>,
}

/// Which Secret holds the credentials for a registry, or for the repositories under a path of it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RegistryCredentials {
    /// `host[:port]` of the registry, optionally followed by a repository path
    /// (`registry.example.com/acme`): matched by whole path segments, without scheme, tag or
    /// trailing slash.
    #[schemars(length(min = 1, max = 255))]
    #[x_kube(validation = Rule::new(r"self.matches('^[a-zA-Z0-9][a-zA-Z0-9.-]*(:[0-9]{1,5})?(/[a-z0-9]+([._-][a-z0-9]+)*)*$')")
        .message("spec.registries[].prefix: write host[:port][/path], e.g. registry.example.com/acme (no scheme, tag or trailing slash)"))]
    pub prefix: String,
    /// Name of a Secret of type `kubernetes.io/dockerconfigjson` in the namespace Airlock is
    /// installed in (tenants cannot read or write it there).
    #[schemars(length(min = 1, max = 253))]
    pub credentials_secret: String,
}

#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.ed25519) || has(self.cosign) || has(self.certificate)")
    .message("a key needs ed25519 (bundle signatures), or cosign or certificate (image signatures), or both kinds"))]
#[x_kube(validation = Rule::new("!(has(self.cosign) && has(self.certificate))")
    .message("a key verifies image signatures with cosign (a public key) or certificate (a CA and identities), not both: write two keys"))]
pub struct TrustedKey {
    /// Name of the key, referenced in status and audit records.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Base64 of the raw 32-byte ed25519 public key that verifies bundle signatures.
    #[schemars(length(max = 128))]
    pub ed25519: Option<String>,
    /// PEM public key that verifies cosign image signatures.
    #[schemars(length(max = 4096))]
    pub cosign: Option<String>,
    /// Image signatures made with a certificate of the organisation's own PKI
    /// (`cosign sign --key … --certificate … --certificate-chain …`): verified offline against
    /// these roots and identities, instead of one public key.
    pub certificate: Option<CertificateSigner>,
    /// Trust level of plugins signed with this key.
    pub trust_level: TrustLevel,
    /// A revoked key verifies nothing; running plugins it signed are quarantined.
    #[serde(default)]
    pub revoked: bool,
}

/// Who may sign images with a certificate: a signature counts when its certificate chains to
/// one of `roots` (through `intermediates` and the chain cosign stored with the signature), is
/// valid now, is for code signing, and names one of `identities`.
#[skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSigner {
    /// PEM of the root CA certificate(s) (`-----BEGIN CERTIFICATE-----`), at most 8.
    #[schemars(length(min = 1, max = 65536))]
    pub roots: String,
    /// PEM of intermediate CA certificates. Needed for cosign's new bundle format, which stores
    /// the signing certificate without its chain; classic signatures carry their chain.
    #[schemars(length(max = 65536))]
    pub intermediates: Option<String>,
    /// Identities the signing certificate must name in its Subject Alternative Name (an email
    /// address, URI or DNS name, compared exactly); one is enough.
    #[schemars(length(min = 1, max = 16), inner(length(min = 1, max = 256)))]
    pub identities: Vec<String>,
}

#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub enum TrustLevel {
    Untrusted,
    Trusted,
    BuiltIn,
}

#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TrustLevelLimits {
    /// Run plugins without a valid signature at this level (only meaningful for Untrusted).
    #[serde(default)]
    pub allow_unsigned: bool,
    /// Largest memory limit a plugin of this level may have, e.g. 64Mi.
    #[schemars(length(max = 32))]
    pub max_memory: Option<String>,
    /// Largest CPU limit, e.g. 500m.
    #[schemars(length(max = 32))]
    pub max_cpu: Option<String>,
    /// Longest hook timeout, e.g. 200ms.
    #[schemars(length(max = 16))]
    pub max_timeout: Option<String>,
    /// Most calls a plugin pod of this level may take side by side (`spec.concurrency`: plugin
    /// processes per pod). Unset: up to 64.
    #[schemars(range(min = 1, max = airlock_core::api::MAX_CONCURRENCY))]
    pub max_concurrency: Option<i32>,
    /// Permissions a plugin of this level may be granted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub permissions: Vec<Permission>,
    /// Log lines a plugin of this level may write a minute: its stderr (counted by its shim) and
    /// its host API `log` calls (counted by each router replica). Default 100.
    #[schemars(range(min = 1, max = 10000))]
    pub log_lines_per_minute: Option<u32>,
    /// Networks a plugin of this level may be allowed to reach: each `spec.network.egress[].cidr`
    /// must lie within one of them, e.g. ["203.0.113.0/24"]. Unset: any network except those the
    /// operator always excludes (link-local, loopback, the cluster's own ranges). An entry that is
    /// not a CIDR allows nothing.
    #[schemars(length(max = 32))]
    pub egress_cidrs: Option<Vec<String>>,
    /// Caps of a plugin's host API storage at this level; unset fields keep the defaults, which
    /// are also the most a level may allow (the storage is one Kubernetes object).
    pub storage: Option<StorageLimits>,
    /// When the router auto-disables a plugin of this level: thresholds and which failures count
    /// as crashes. Where several policies govern a namespace, the lowest threshold and every kind
    /// any of them names apply; a field no governing policy sets keeps the router's setting.
    pub auto_disable: Option<crate::plugin::AutoDisablePolicy>,
}

/// Host API storage caps of one trust level.
#[skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StorageLimits {
    /// Largest value, in bytes of JSON text. Default and maximum 102400 (100 KiB).
    #[schemars(range(min = 1, max = 102400))]
    pub max_value_bytes: Option<u64>,
    /// Most bytes of keys plus values per plugin. Default and maximum 1048576 (1 MiB).
    #[schemars(range(min = 0, max = 1048576))]
    pub max_bytes: Option<u64>,
    /// Most keys per plugin. Default and maximum 1024.
    #[schemars(range(min = 0, max = 1024))]
    pub max_keys: Option<u32>,
}

/// What the policy does in the cluster now, kept by the operator.
#[skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginTrustPolicyStatus {
    /// The metadata.generation this status describes.
    pub observed_generation: Option<i64>,
    /// Ready (its keys are readable; True with what it governs) and, for kstatus, Stalled while a
    /// key cannot be read (present only while True).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Number of keys that are not revoked.
    pub key_count: Option<i32>,
    /// Namespaces the policy governs now (spec.namespaces matches their labels).
    pub namespaces: Option<i32>,
    /// Plugins in those namespaces.
    pub plugins: Option<i32>,
    /// Where another policy governs the same namespaces and the most restrictive answer makes
    /// keys of this one untrusted there (each names the other policy, a namespace and the keys).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub conflicts: Vec<String>,
}
