//! The `Plugin` resource: what a platform team applies to run one plugin.
//!
//! Every rule that can be checked without the cluster is in the schema (OpenAPI bounds and enums,
//! CEL `x-kubernetes-validations`), so `kubectl apply` rejects a bad Plugin with a message that
//! names the field. Rules that need the signed manifest or the trust policy live in the controller.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use airlock_core::{Hook, Permission};

/// Longest `metadata.name` of a Plugin: the children it owns are named `<plugin>-<suffix>` and
/// Service names are DNS labels (≤ 63 characters).
pub const MAX_PLUGIN_NAME_LEN: usize = 52;
/// Upper bound of any hook timeout; a trust level may cap it further.
pub const MAX_HOOK_TIMEOUT: &str = "30s";

/// Annotation with which routers before `status.autoDisabled` marked a Plugin they auto-disabled
/// (its value says why). Still honoured, so a plugin auto-disabled before an upgrade stays so;
/// removing it re-enables such a plugin. Nothing writes it any more.
pub const AUTO_DISABLED_ANNOTATION: &str = "airlock.dev/auto-disabled";

/// What to do to re-enable the auto-disabled Plugin `ns`/`name` once it is fixed: give
/// `spec.reEnable` a new value (in Git, for a Plugin a GitOps tool applies).
pub fn re_enable_hint(ns: &str, name: &str) -> String {
    format!(
        r#"set spec.reEnable to a new value such as today's date (in the manifest your GitOps tool applies, or `kubectl patch plugin -n {ns} {name} --type merge -p '{{"spec":{{"reEnable":"<today's date>"}}}}'`)"#
    )
}

impl Plugin {
    /// Why the router auto-disabled this plugin, if that is in effect: `status.autoDisabled`
    /// recorded under the `spec.reEnable` the spec still has (a new value re-enables), or the
    /// legacy annotation.
    pub fn auto_disabled(&self) -> Option<&str> {
        if let Some(why) = self
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(AUTO_DISABLED_ANNOTATION))
        {
            return Some(why);
        }
        self.auto_disabled_record()
            .filter(|a| a.re_enable == self.spec.re_enable)
            .map(|a| a.reason.as_str())
    }

    /// What to do to re-enable this auto-disabled plugin once it is fixed (for messages).
    pub fn re_enable_hint(&self) -> String {
        let ns = self.metadata.namespace.as_deref().unwrap_or_default();
        let name = self.metadata.name.as_deref().unwrap_or_default();
        let legacy = self
            .metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(AUTO_DISABLED_ANNOTATION));
        match legacy {
            true => format!(
                "remove the annotation an older router set: `kubectl annotate plugin -n {ns} {name} {AUTO_DISABLED_ANNOTATION}-`"
            ),
            false => re_enable_hint(ns, name),
        }
    }

    /// The router's record of an auto-disable, in effect or not.
    pub fn auto_disabled_record(&self) -> Option<&AutoDisabled> {
        self.status.as_ref().and_then(|s| s.auto_disabled.as_ref())
    }

    /// A `status.autoDisabled` that `spec.reEnable` has since moved past: the plugin runs again
    /// and the record is to be removed.
    pub fn re_enabled(&self) -> bool {
        self.auto_disabled_record()
            .is_some_and(|a| a.re_enable != self.spec.re_enable)
    }

    /// Whether the plugin should run pods: enabled in its spec and not auto-disabled.
    pub fn should_run(&self) -> bool {
        self.spec.enabled && self.auto_disabled().is_none()
    }
}

/// A plugin: its image, its signed bundle, the hooks it serves and the permissions the applier
/// approves. Airlock verifies image and bundle against the cluster's `PluginTrustPolicy` before
/// anything runs, and reports every step in `status`.
#[skip_serializing_none]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "airlock.dev",
    version = "v1alpha1",
    kind = "Plugin",
    plural = "plugins",
    doc = "A plugin: code someone else wrote (a container image and a signed bundle), run by Airlock only after its signatures verify against a PluginTrustPolicy, sandboxed, and called through the Airlock router on the hooks listed in spec.hooks. status says what Airlock decided and why.",
    namespaced,
    status = "PluginStatus",
    // `kubectl scale plugin/x --replicas=3` and a HorizontalPodAutoscaler work on a Plugin: they
    // write spec.replicas (still capped at 10 by the schema), read the ready pods in
    // status.replicas and find the pods with status.selector.
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    shortname = "plg",
    category = "airlock",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Version", type_ = "string", json_path = ".spec.version"),
    printcolumn(name = "Trust", type_ = "string", json_path = ".status.trustLevel"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "Revision",
        type_ = "string",
        json_path = ".status.currentRevision",
        priority = 1
    ),
    printcolumn(name = "Signer", type_ = "string", json_path = ".status.signer", priority = 1),
    validation = Rule::new("size(self.metadata.name) <= 52")
        .message("metadata.name must be at most 52 characters: the Plugin's Deployment, Service and Secrets are named after it")
        .reason(kube::core::Reason::FieldValueInvalid),
)]
#[x_kube(
    validation = Rule::new("!has(self.network) || !has(self.network.egress) || size(self.network.egress) == 0 || (has(self.permissions) && self.permissions.exists(p, p == 'net:egress'))")
        .message("spec.network.egress needs the net:egress permission: add it to spec.permissions or remove the egress rules")
        .field_path(".network.egress"),
    validation = Rule::new("!has(self.hooks) || self.hooks.all(h, self.hooks.exists_one(o, o.name == h.name))")
        .message("spec.hooks lists a hook twice: each hook name may appear once")
        .field_path(".hooks"),
)]
#[serde(rename_all = "camelCase")]
pub struct PluginSpec {
    /// false stops the plugin: no pods run, its storage and status are kept. Default true.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// Version of the plugin (semantic versioning, e.g. 1.2.3). Must equal the version in the
    /// signed manifest of the bundle.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new(r"self.matches('^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\\+[0-9A-Za-z.-]+)?$')")
        .message("spec.version must be a semantic version such as 1.2.3 or 1.2.3-rc.1"))]
    pub version: String,

    /// Container image of the plugin, by tag or digest (registry/repository:tag[@sha256:...]).
    /// Airlock resolves it to a digest, verifies its signature and pins the pod to that digest.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(r"self.matches('^[a-zA-Z0-9][a-zA-Z0-9._:/@-]*$')")
        .message("spec.image must be an image reference such as registry.example/acme/plugin:1.2.3"))]
    pub image: String,

    /// Secrets of type `kubernetes.io/dockerconfigjson` in the Plugin's namespace that the
    /// plugin's pods pull `spec.image` with (the pod's `imagePullSecrets`). The operator never
    /// reads them: it reads a private registry with the credentials an admin names in a
    /// PluginTrustPolicy's `spec.registries`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub image_pull_secrets: Vec<ImagePullSecret>,

    /// The signed plugin package: its manifest (plugin.yaml) and files.
    pub bundle: BundleSpec,

    /// The plugin API version the plugin targets; must match the signed manifest. Plugins that
    /// target a version this Airlock cannot host get `Compatible=False` and are not rolled out.
    #[schemars(range(min = 1, max = 100))]
    pub plugin_api_version: i32,

    /// Hooks the host may call on this plugin; each must be declared by the signed manifest.
    /// A map keyed by name (server-side apply and GitOps diffs merge items by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub hooks: Vec<HookSpec>,

    /// Permissions the applier approves. The plugin runs with the intersection of these, the ones
    /// its signed manifest declares and the ones its trust level allows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub permissions: Vec<Permission>,

    /// Network access of the plugin pod. Egress is denied unless listed here (needs net:egress).
    pub network: Option<NetworkSpec>,

    /// CPU and memory of the plugin container, capped by the trust level.
    pub resources: Option<PluginResources>,

    /// Number of plugin pods. Default 1.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: i32,

    /// Calls one plugin pod takes side by side: the pod runs this many processes of the plugin,
    /// each answering one call at a time, each restarted on its own; all share the pod's CPU and
    /// memory. For plugins that wait (I/O); CPU-bound plugins scale with replicas instead. At
    /// most the trust level's maxConcurrency. Default 1.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = airlock_core::api::MAX_CONCURRENCY))]
    pub concurrency: i32,

    /// Re-enables a plugin the router auto-disabled. Any value; a date is customary (e.g.
    /// "2026-12-01T10:00"). The router records the value this field has when it auto-disables the
    /// plugin (`status.autoDisabled.reEnable`); a different value re-enables it. Declarative: a
    /// sync that re-applies the same value never clears an auto-disable.
    #[schemars(length(min = 1, max = 64))]
    pub re_enable: Option<String>,

    /// Configuration of the plugin: a JSON object of settings, checked against the JSON Schema
    /// the signed manifest declares (`configSchema`; a mismatch is `Compatible=False` naming the
    /// field) and handed to the plugin in its `onLoad` hook. A change reaches the running plugin
    /// in `onConfigChange` when its manifest declares that hook, else through a rolling restart.
    /// At most 64 KiB as JSON. Not for secrets: it is readable by whoever reads the Plugin.
    // `default`: a field with its own schema function is otherwise listed as required.
    #[serde(default)]
    #[schemars(schema_with = "config_schema")]
    pub config: Option<serde_json::Value>,

    /// Secrets the plugin gets with its configuration, by reference: each names a key of a
    /// Secret in the Plugin's namespace, which the kubelet mounts into the plugin's pods only; the
    /// shim hands the values to the plugin in `onLoad` (and `onConfigChange`, also when the
    /// Secret changes) as `secrets.<name>`. The operator never reads them, and they appear in no
    /// status, Event or log. A plugin that takes them needs an `onLoad` hook. At most 16.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub config_secrets: Vec<ConfigSecret>,

    /// Lets `spec.version` go below the version that last wrote the plugin's storage
    /// (`PluginStorage` `status.writtenBy`). Without it such a downgrade is refused
    /// (`Compatible=False`, reason `DowngradeRefused`) and the running revision keeps serving: an
    /// older version may not understand what a newer one stored. Set it once you know the older
    /// version reads that data (or after clearing the storage). Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
}

/// One secret value for the plugin (`spec.configSecrets[]`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSecret {
    /// The name the plugin knows the value by (`secrets.<name>` in its `onLoad` payload).
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new(r"self.matches('^[A-Za-z][A-Za-z0-9_-]*$')")
        .message("spec.configSecrets[].name must start with a letter and hold only letters, digits, _ and -"))]
    pub name: String,
    /// The Secret (in the Plugin's namespace) and its key that hold the value.
    pub secret_key_ref: SecretKeyRef,
}

/// A key of a Secret in the Plugin's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// The key in its data.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(r"self.matches('^[-._a-zA-Z0-9]+$')")
        .message("spec.configSecrets[].secretKeyRef.key must be a Secret data key (letters, digits, -, _ and .)"))]
    pub key: String,
}

/// `spec.config`: any JSON object, kept as written (the plugin's own schema applies, not ours).
fn config_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A Secret in the Plugin's namespace, by name.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImagePullSecret {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

fn default_true() -> bool {
    true
}
fn default_replicas() -> i32 {
    1
}
fn default_concurrency() -> i32 {
    1
}

/// Where the signed bundle comes from, and optionally its pinned digest.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BundleSpec {
    pub source: BundleSource,
    /// Expected sha256 digest of the bundle (sha256:<64 hex>). When set, any other content is
    /// rejected before its signature is even checked.
    #[x_kube(validation = Rule::new("self.matches('^sha256:[a-f0-9]{64}$')")
        .message("spec.bundle.digest must look like sha256:<64 lowercase hex digits>"))]
    pub digest: Option<String>,
}

/// Exactly one source of the bundle.
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.oci) ? 1 : 0) + (has(self.http) ? 1 : 0) + (has(self.configMapRef) ? 1 : 0) == 1")
    .message("spec.bundle.source must set exactly one of oci, http or configMapRef"))]
pub struct BundleSource {
    /// An OCI artifact holding the bundle.
    pub oci: Option<OciBundleSource>,
    /// An HTTP(S) URL serving the bundle.
    pub http: Option<HttpBundleSource>,
    /// A ConfigMap in the Plugin's namespace holding the bundle (binaryData).
    pub config_map_ref: Option<ConfigMapBundleSource>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct OciBundleSource {
    /// Reference of the bundle artifact, e.g. registry.example/acme/plugin-bundle:1.2.3.
    #[serde(rename = "ref")]
    #[schemars(length(min = 1, max = 512))]
    pub reference: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct HttpBundleSource {
    /// URL of the bundle (.tar.gz).
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')")
        .message("spec.bundle.source.http.url must be an http:// or https:// URL"))]
    pub url: String,
}

#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ConfigMapBundleSource {
    /// Name of the ConfigMap.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in binaryData holding the bundle. Default bundle.tar.gz.
    #[schemars(length(min = 1, max = 253))]
    pub key: Option<String>,
}

/// One hook the host may call.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HookSpec {
    /// Name of the hook.
    pub name: Hook,
    /// Deadline of one invocation, e.g. 200ms (default). Above 0 and at most 30s; the trust level
    /// may allow less.
    #[serde(default = "default_timeout")]
    #[schemars(length(min = 1, max = 16))]
    #[x_kube(validation = Rule::new(r"self.matches('^[0-9]+(ms|s)$') && duration(self) > duration('0s') && duration(self) <= duration('30s')")
        .message("hook timeout must be a duration above 0 and at most 30s, written like 200ms or 2s"))]
    pub timeout: String,
    /// What the host does when the hook fails or times out: Fail returns the error, Ignore
    /// continues as if the plugin had not been called.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Order in pipelines and broadcasts: lower runs first. Default 100.
    #[serde(default = "default_priority")]
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,
}

fn default_timeout() -> String {
    "200ms".into()
}
fn default_priority() -> i32 {
    100
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// The host receives the error.
    #[default]
    Fail,
    /// The host continues without this plugin's result.
    Ignore,
}

/// Network access of the plugin pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct NetworkSpec {
    /// Destinations the plugin may reach (needs the net:egress permission). Empty: no egress.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub egress: Vec<EgressRule>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EgressRule {
    /// Destination network in CIDR notation, e.g. 198.18.4.0/24.
    #[schemars(length(min = 1, max = 64))]
    #[x_kube(validation = Rule::new("isCIDR(self)")
        .message("egress cidr must be a CIDR such as 198.18.4.0/24"))]
    pub cidr: String,
    /// TCP ports allowed at that destination. Empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub ports: Vec<EgressPort>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct EgressPort {
    /// Port number (1-65535).
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// CPU and memory of the plugin container (Kubernetes quantities, e.g. 250m, 64Mi).
#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct PluginResources {
    pub limits: Option<ResourceAmounts>,
    pub requests: Option<ResourceAmounts>,
}

#[skip_serializing_none]
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ResourceAmounts {
    /// CPU, e.g. 250m.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))")
        .message("cpu must be a positive Kubernetes quantity such as 250m or 1"))]
    pub cpu: Option<String>,
    /// Memory, e.g. 64Mi.
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("isQuantity(self) && quantity(self).isGreaterThan(quantity('0'))")
        .message("memory must be a positive Kubernetes quantity such as 64Mi"))]
    pub memory: Option<String>,
}

/// What Airlock observed and did. Written only by the controller.
#[skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginStatus {
    pub phase: Option<PluginPhase>,
    /// The metadata.generation this status describes.
    pub observed_generation: Option<i64>,
    /// Verified, PermissionsApproved, Compatible, Ready; and, for kstatus (Flux health checks,
    /// `kubectl wait`), Reconciling while Airlock works on the Plugin and Stalled when it cannot go
    /// on without a change from the user, each present only while True; and Deprecated, present
    /// only while the plugin targets a plugin API version that is going away (its message names
    /// the Airlock release that removes it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The image digest the pods are pinned to.
    pub image_digest: Option<String>,
    /// Digest of the verified bundle.
    pub bundle_digest: Option<String>,
    /// Trust level derived from the key that signed the plugin; never taken from the spec.
    pub trust_level: Option<String>,
    /// The trusted key that signed the running revision, as `<policy>/<key>`; absent for an
    /// unsigned plugin a policy allows.
    pub signer: Option<String>,
    /// Revision being rolled out or serving.
    pub current_revision: Option<String>,
    /// Ready plugin pods (the `scale` subresource's status replicas).
    pub replicas: Option<i32>,
    /// Label selector of the plugin's pods, e.g. `airlock.dev/plugin=hello` (the `scale`
    /// subresource's selector, which a HorizontalPodAutoscaler reads).
    pub selector: Option<String>,
    /// Last revision that became Ready; a failed rollout returns to it.
    pub last_good_revision: Option<String>,
    /// A revision that did not become Ready within its progress deadline and was rolled back. It
    /// is not tried again until the spec (or what it resolves to) changes.
    pub failed_revision: Option<String>,
    /// Hooks the router can call on this plugin (their settings are in the current revision's
    /// record, `revisions[].hooks`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
    /// Permissions the plugin holds: declared in its signed manifest, approved in
    /// spec.permissions and allowed by its trust level. The host API checks every call against
    /// these.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<Permission>,
    /// Runtime limits from the plugin's trust level (defaults where it sets none), which the
    /// shim and the router's host API enforce.
    pub limits: Option<PluginLimits>,
    /// What the current and the last good revision were approved with. Every reconcile checks the
    /// running revision's record against today's trust policies, whatever becomes of the spec,
    /// and a rollback only goes to a revision whose record still passes.
    /// Kept: the current and the last good revision, and while a revision rolls out the latest one
    /// it replaced (a spec changed again mid-rollout leaves its pods serving for a while).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 4))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["revision"]))]
    pub revisions: Vec<RevisionRecord>,
    /// The plugin's mTLS certificate as the operator last issued it into the TLS Secret
    /// `<name>-tls`: an operator that did not issue it (restarted, a new leader) keeps it until
    /// `renewAt` instead of issuing every running plugin a new one at once.
    pub certificate: Option<PluginCertificate>,
    /// Written by the router when it auto-disabled the plugin after repeated timeouts or crashes:
    /// no pods run and calls are refused while `spec.reEnable` still has the value recorded here.
    /// Removed by the controller once `spec.reEnable` changes. Kept in status, so no sync of the
    /// spec or metadata (apply, replace) can clear it by accident.
    pub auto_disabled: Option<AutoDisabled>,
    /// Written by the router: the failures of the plugin's calls, counted by kind, and the last
    /// one. Like `autoDisabled`, the router's, never the controller's.
    pub health: Option<PluginHealth>,
}

/// The router's record of a plugin's failures (`PluginStatus.health`).
#[skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginHealth {
    /// Failed calls in a row as the router replica that reported last saw them; 0 once a call
    /// was answered again.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Failed calls since the Plugin was created, by kind (added up over every router replica).
    #[serde(default)]
    pub failures: FailureCounts,
    /// The most recent failure.
    pub last_failure: Option<LastFailure>,
}

/// Failed calls by kind (`PluginHealth.failures`); the kinds are those of the shim's
/// `airlock-failure` trailer that say something about the plugin.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct FailureCounts {
    /// The plugin did not answer within its hook's timeout; the shim killed it.
    #[serde(default)]
    pub timeout: u64,
    /// The plugin process exited, could not start or failed its onLoad.
    #[serde(default)]
    pub crash: u64,
    /// The kernel killed the plugin process at the container's memory limit.
    #[serde(default)]
    pub oom: u64,
    /// The plugin's answer was over the output limit.
    #[serde(default)]
    pub output_too_large: u64,
    /// The plugin broke the stdio protocol.
    #[serde(default)]
    pub protocol: u64,
    /// The plugin made a host call it holds no permission for (each refusal is also an audit
    /// record `HostCallDenied`).
    #[serde(default)]
    pub denied: u64,
}

/// One failure (`PluginHealth.lastFailure`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LastFailure {
    /// timeout, crash, oom, outputTooLarge, protocol or denied (as in `failures`).
    pub kind: String,
    /// What the shim said (at most 1,024 characters).
    #[schemars(length(max = 1024))]
    pub message: String,
    /// When the router saw it (RFC 3339).
    pub time: String,
}

/// The operator's record of the plugin's certificate (`PluginStatus.certificate`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub struct PluginCertificate {
    /// When the certificate ends (RFC 3339).
    pub not_after: String,
    /// When the operator issues the next one, with a third of its lifetime left (RFC 3339).
    pub renew_at: String,
    /// `sha256:<hex>` of the CA certificate that signed it: a certificate of a CA the operator
    /// no longer has (the CA was replaced) is issued again at once.
    pub ca_digest: String,
}

/// The router's record of an auto-disable (`PluginStatus.autoDisabled`).
#[skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoDisabled {
    /// Why, e.g. "5 timeouts within 60s".
    pub reason: String,
    /// When (RFC 3339).
    pub since: Option<String>,
    /// `spec.reEnable` at that time (absent when it was unset): a different value re-enables.
    pub re_enable: Option<String>,
}

impl AutoDisabled {
    /// The record of auto-disabling `plugin` for `reason`, under the `spec.reEnable` it has now.
    pub fn under(plugin: &Plugin, reason: &str) -> Self {
        Self {
            reason: reason.to_string(),
            since: None,
            re_enable: plugin.spec.re_enable.clone(),
        }
    }
}

/// Who signed a revision and what it was approved with, recorded when it rolls out (see
/// `PluginStatus.revisions`).
#[skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RevisionRecord {
    /// The revision (`status.currentRevision`, `status.lastGoodRevision`).
    pub revision: String,
    /// `sha256:<hex>` of the ed25519 public key that signed the bundle; absent when unsigned.
    pub bundle_signer: Option<String>,
    /// `sha256:<hex>` of the cosign public key that signed the image; absent when unsigned.
    pub image_signer: Option<String>,
    /// The trust level the signers earned when the revision was approved.
    pub trust_level: Option<String>,
    /// The permissions the revision holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<Permission>,
    /// The egress networks its NetworkPolicy opens (`spec.network.egress` when approved).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub egress: Vec<String>,
    /// Its container CPU limit, as approved.
    pub cpu_limit: Option<String>,
    /// Its container memory limit, as approved.
    pub memory_limit: Option<String>,
    /// Its plugin processes per pod (`spec.concurrency` when approved); absent means 1.
    pub concurrency: Option<i32>,
    /// Its hooks with the timeout, failure policy and priority they were approved with: the
    /// router calls these, never what the spec says now (a spec the plan blocked — say, a
    /// timeout above the trust level's maxTimeout — must not reach the calls).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["name"]))]
    pub hooks: Vec<HookSpec>,
    /// `sha256:<hex>` of the pod template the Plugin's Deployment ran the revision with, recorded
    /// once it was Ready: a rollback re-applies only a ReplicaSet of that Deployment whose
    /// template has exactly this digest.
    pub template_digest: Option<String>,
    /// `sha256:<hex>` of the bundle that was verified for the revision: the router calls only a
    /// pod whose shim says (`Handshake`) it runs this bundle. Absent in a record written before
    /// Airlock recorded it: while any kept record lacks it the router checks nothing (the current
    /// revision's record gets it at the next reconcile, an older one when it is dropped).
    #[schemars(length(max = 71))]
    pub bundle_digest: Option<String>,
    /// The plugin API version of the verified bundle's manifest (`apiVersion`): the router calls
    /// only a pod whose shim says it serves this version.
    pub plugin_api_version: Option<u32>,
}

/// The limits a plugin runs under (see `PluginStatus.limits`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct PluginLimits {
    /// Log lines a minute (stderr per shim; host `log` calls per router replica).
    pub log_lines_per_minute: u32,
    /// Largest storage value, in bytes of JSON text.
    pub storage_max_value_bytes: u64,
    /// Most bytes of keys plus values in the plugin's storage.
    pub storage_max_bytes: u64,
    /// Most keys in the plugin's storage.
    pub storage_max_keys: u32,
    /// When the router auto-disables the plugin, from its trust level (`autoDisable` of the
    /// governing policies, the strictest of each); absent: the router's own settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_disable: Option<AutoDisablePolicy>,
}

/// Which failures auto-disable a plugin (`TrustLevelLimits.autoDisable`, and the result for one
/// plugin in `PluginLimits.autoDisable`). Each unset field keeps the router's setting.
#[skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AutoDisablePolicy {
    /// Consecutive timeouts that auto-disable the plugin (the router's
    /// `router.disableAfterTimeouts`, 5, when unset).
    #[schemars(range(min = 1, max = 1000))]
    pub after_timeouts: Option<u32>,
    /// Failures of the `crashKinds` within an hour that auto-disable the plugin (the router's
    /// `router.disableAfterCrashes`, 3, when unset).
    #[schemars(range(min = 1, max = 1000))]
    pub after_crashes: Option<u32>,
    /// The kinds of failure that count toward `afterCrashes`, named as in
    /// `status.health.failures` ([crash, oom] when unset).
    #[schemars(length(max = 4))]
    pub crash_kinds: Option<Vec<CrashKind>>,
}

/// A kind of failure that can count toward the crash rule of auto-disable.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
#[serde(rename_all = "camelCase")]
pub enum CrashKind {
    /// The plugin process exited, could not start or failed its onLoad.
    Crash,
    /// The kernel killed it at its memory limit.
    Oom,
    /// It broke the stdio protocol.
    Protocol,
    /// Its answer was over the output limit.
    OutputTooLarge,
}

impl Default for PluginLimits {
    /// The defaults of the product requirements.
    fn default() -> Self {
        Self {
            log_lines_per_minute: 100,
            storage_max_value_bytes: 100 * 1024,
            storage_max_bytes: 1024 * 1024,
            storage_max_keys: 1024,
            auto_disable: None,
        }
    }
}

/// Lifecycle phase, for humans and `kubectl get`; automation should read the conditions
/// (`Ready`, and kstatus' `Reconciling` / `Stalled`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PluginPhase {
    /// Not decided yet: being verified, or waiting for a registry or bundle server that did not
    /// answer (retried).
    Pending,
    /// A revision is rolling out (pods starting, scaling, being replaced).
    Deploying,
    Active,
    Degraded,
    Disabled,
    /// Signed by a key that was revoked: scaled to zero until a trusted signature replaces it.
    Quarantined,
    /// Blocked: nothing runs until the user changes something (the `Ready` condition says what).
    Failed,
}
