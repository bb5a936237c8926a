//! Validate step of the reconcile pipeline (pure): from the Plugin, its fetched bundle manifest,
//! the resolved image and the governing trust limits, decide whether a revision may roll out and
//! with what ([`Rollout`]), or exactly why not — one verdict per condition type.

use std::collections::BTreeSet;

use airlock_bundle::Manifest;
use airlock_core::api;
use airlock_core::duration::duration_ms;
use airlock_crds::plugin::RevisionRecord;
use airlock_crds::{Permission, Plugin, TrustLevel};
use kube::ResourceExt;
use sha2::{Digest, Sha256};

use crate::build::{Resources, Rollout};
use crate::policy::Limits;
use crate::quantity;

/// Condition reason when no PluginTrustPolicy governs the Plugin's namespace.
pub const NO_TRUST_POLICY: &str = "NoTrustPolicy";

/// Defaults when the spec sets no resources (DESIGN §4: 64 MiB per plugin).
pub const DEFAULT_CPU_LIMIT: &str = "250m";
pub const DEFAULT_MEMORY_LIMIT: &str = "64Mi";

/// The verdict for one condition type. `Ok` = condition True.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok {
        reason: &'static str,
        message: String,
    },
    Blocked {
        reason: &'static str,
        message: String,
    },
}

impl Verdict {
    fn ok(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Ok {
            reason,
            message: message.into(),
        }
    }
    pub(crate) fn blocked(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Blocked {
            reason,
            message: message.into(),
        }
    }
    pub fn is_ok(&self) -> bool {
        matches!(self, Self::Ok { .. })
    }
}

/// What the verify step established about the image and bundle.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub pinned_image: String,
    pub image_digest: String,
    pub bundle: Vec<u8>,
    pub bundle_digest: String,
    /// The detached signature, when it verified (the shim checks it again at start).
    pub bundle_signature: Option<crate::build::BundleSignature>,
    pub manifest: Manifest,
    /// The trusted key(s) that signed both image and bundle, and the resulting trust level;
    /// `None` when neither is signed (then only `allowUnsigned` levels run the plugin).
    pub signed_by: Option<Signer>,
}

/// Who vouches for a revision: the trusted keys that signed its bundle and image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// As the user knows it: `<policy>/<key>` (or one for the bundle and one for the image).
    pub key: String,
    /// The lower of the two keys' levels.
    pub level: TrustLevel,
    /// Fingerprints of the two keys, which the revision's record keeps ([`RevisionRecord`]).
    pub bundle_key: Option<String>,
    pub image_key: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Plan {
    pub compatible: Verdict,
    /// Why the plugin's API version is going away (the `Deprecated` condition), if it is.
    pub deprecated: Option<String>,
    pub verified: Verdict,
    pub permissions_approved: Verdict,
    pub trust_level: TrustLevel,
    /// The trusted key that signed the revision, as the user knows it (`<policy>/<key>`).
    pub signer: Option<String>,
    /// Present only when every verdict is Ok.
    pub rollout: Option<Rollout>,
    /// What `rollout` is approved with, for `status.revisions`; present with `rollout`.
    pub record: Option<RevisionRecord>,
}

/// Decides a revision. `limits` is `None` when no PluginTrustPolicy governs the namespace.
pub fn plan(plugin: &Plugin, fetched: &Fetched, limits: Option<&Limits>) -> Plan {
    let trust_level = fetched
        .signed_by
        .as_ref()
        .map(|s| s.level)
        .unwrap_or(TrustLevel::Untrusted);
    let mut compatible = compatibility(plugin, &fetched.manifest);
    if compatible.is_ok() {
        let approved: BTreeSet<Permission> = plugin.spec.permissions.iter().copied().collect();
        let allowed = limits.map(|l| &l.permissions);
        if let Some(refused) = crate::compat::sdk_support(&fetched.manifest)
            .or_else(|| crate::compat::unmet(&fetched.manifest, &approved, allowed))
        {
            compatible = refused;
        }
    }
    let mut config = None;
    if compatible.is_ok() {
        match plugin_config(plugin, &fetched.manifest) {
            Ok(c) => config = c,
            Err((reason, message)) => compatible = Verdict::blocked(reason, message),
        }
    }
    let verified = verification(plugin, fetched, limits, trust_level);
    let (permissions_approved, effective, resources) = match limits {
        Some(l) => approval(plugin, &fetched.manifest, l),
        None => (
            Verdict::blocked(
                NO_TRUST_POLICY,
                "no permissions can be approved without a PluginTrustPolicy",
            ),
            BTreeSet::new(),
            None,
        ),
    };
    let rollout = match (&compatible, &verified, &permissions_approved, resources) {
        (Verdict::Ok { .. }, Verdict::Ok { .. }, Verdict::Ok { .. }, Some(resources)) => {
            let runtime = limits.map(Limits::runtime).unwrap_or_default();
            Some(rollout(
                fetched,
                effective,
                resources,
                runtime,
                concurrency(plugin),
                config,
                config_secrets(plugin),
            ))
        }
        _ => None,
    };
    let record = rollout
        .as_ref()
        .map(|r| record(plugin, fetched, r, trust_level));
    Plan {
        deprecated: crate::compat::deprecation(
            fetched.manifest.api_version,
            api::DEPRECATED_PLUGIN_API_VERSIONS,
        ),
        compatible,
        verified,
        permissions_approved,
        trust_level,
        signer: fetched.signed_by.as_ref().map(|s| s.key.clone()),
        rollout,
        record,
    }
}

/// Condition reason when `spec.version` is below the version that last wrote the storage.
pub const DOWNGRADE_REFUSED: &str = "DowngradeRefused";
/// Condition reason when the storage's version could not be read before a new revision.
pub const STORAGE_UNREADABLE: &str = "StorageUnreadable";

/// The verdict when the plugin's storage could not be read to rule a downgrade out: the new
/// revision waits (the running one keeps serving) and the reconcile retries.
pub fn storage_unreadable(plugin: &Plugin, error: &str) -> Verdict {
    Verdict::blocked(
        STORAGE_UNREADABLE,
        format!(
            "reading PluginStorage {}/{} (which version last wrote the plugin's data) failed: {error}; the new revision waits until it can be read (retried). If the operator's RBAC was customised, grant it get on pluginstorages",
            plugin.namespace().unwrap_or_default(),
            plugin.name_any()
        ),
    )
}

impl Plan {
    /// Whether this plan would roll out a revision other than the one `plugin` runs now: only
    /// then is the storage's version worth a look (a GET), not on every reconcile.
    pub fn rolls_out_new_revision(&self, plugin: &Plugin) -> bool {
        let current = plugin
            .status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref());
        self.rollout
            .as_ref()
            .is_some_and(|r| Some(r.revision.as_str()) != current)
    }

    /// The plan with nothing to roll out and `Compatible` blocked by `verdict` (the running
    /// revision keeps serving).
    pub fn refuse(mut self, verdict: Verdict) -> Self {
        self.compatible = verdict;
        self.rollout = None;
        self.record = None;
        self
    }
}

/// The verdict on rolling `plugin` out over storage that `written_by` (PluginStorage
/// `status.writtenBy`) last wrote: `Some` blocked verdict when `spec.version` is below it and
/// the Plugin does not set `allowDowngrade` (an older version may misread what a newer one
/// stored), `None` when the rollout may go on. A recorded version that does not parse (the
/// status was edited by hand) blocks too, naming it: whether it is a downgrade is not known.
pub fn downgrade(plugin: &Plugin, written_by: Option<&str>) -> Option<Verdict> {
    let written_by = written_by?;
    if plugin.spec.allow_downgrade {
        return None;
    }
    let storage = format!(
        "PluginStorage {}/{}",
        plugin.namespace().unwrap_or_default(),
        plugin.name_any()
    );
    let wanted = &plugin.spec.version;
    // spec.version is checked by the CRD's own rule; a value that still does not parse is not
    // compared (the compatibility step names it).
    let want = semver::Version::parse(wanted).ok()?;
    match semver::Version::parse(written_by) {
        // Precedence: build metadata (`1.2.0+b2`) is the same version, not an older one.
        Ok(stored) if want.cmp_precedence(&stored).is_ge() => None,
        Ok(_) => Some(Verdict::blocked(
            DOWNGRADE_REFUSED,
            format!(
                "spec.version {wanted} is older than version {written_by}, which last wrote the plugin's storage ({storage} status.writtenBy); nothing new rolls out (a running revision keeps serving). Roll forward to {written_by} or later, or set spec.allowDowngrade: true once you know {wanted} reads that data"
            ),
        )),
        Err(e) => Some(Verdict::blocked(
            DOWNGRADE_REFUSED,
            format!(
                "the version that last wrote the plugin's storage ({storage} status.writtenBy = {written_by:?}) is not a semantic version ({e}), so a downgrade cannot be ruled out; set spec.allowDowngrade: true to roll out {wanted}, or fix the record"
            ),
        )),
    }
}

/// The record of an approved revision: its signers' fingerprints and what it holds, which
/// [`crate::running`] checks again against every later state of the policies.
fn record(
    plugin: &Plugin,
    fetched: &Fetched,
    rollout: &Rollout,
    level: TrustLevel,
) -> RevisionRecord {
    let signer = fetched.signed_by.as_ref();
    RevisionRecord {
        revision: rollout.revision.clone(),
        bundle_signer: signer.and_then(|s| s.bundle_key.clone()),
        image_signer: signer.and_then(|s| s.image_key.clone()),
        trust_level: Some(format!("{level:?}")),
        permissions: rollout.permissions.iter().copied().collect(),
        egress: plugin
            .spec
            .network
            .iter()
            .flat_map(|n| n.egress.iter().map(|e| e.cidr.clone()))
            .collect(),
        cpu_limit: Some(rollout.resources.cpu_limit.clone()),
        memory_limit: Some(rollout.resources.memory_limit.clone()),
        concurrency: (rollout.concurrency > 1).then_some(rollout.concurrency as i32),
        hooks: plugin.spec.hooks.clone(),
        template_digest: None,
        bundle_digest: Some(rollout.bundle_digest.clone()),
        plugin_api_version: Some(fetched.manifest.api_version),
    }
}

fn compatibility(plugin: &Plugin, manifest: &Manifest) -> Verdict {
    let spec = &plugin.spec;
    if !u32::try_from(spec.plugin_api_version).is_ok_and(api::is_supported) {
        return Verdict::blocked(
            "UnsupportedPluginApiVersion",
            format!(
                "spec.pluginApiVersion {} is not supported by this Airlock (supported: {}); use a plugin built for a supported version or upgrade Airlock",
                spec.plugin_api_version,
                api::supported_list()
            ),
        );
    }
    if i64::from(manifest.api_version) != i64::from(spec.plugin_api_version) {
        return Verdict::blocked(
            "PluginApiVersionMismatch",
            format!(
                "spec.pluginApiVersion is {} but the signed manifest targets {}; set spec.pluginApiVersion to {}",
                spec.plugin_api_version, manifest.api_version, manifest.api_version
            ),
        );
    }
    if manifest.version.to_string() != spec.version {
        return Verdict::blocked(
            "VersionMismatch",
            format!(
                "spec.version is {} but the bundle's signed manifest says {}; set spec.version to {} or point spec.bundle at version {}",
                spec.version, manifest.version, manifest.version, spec.version
            ),
        );
    }
    let undeclared: Vec<&str> = spec
        .hooks
        .iter()
        .map(|h| h.name)
        .filter(|h| !manifest.hooks.contains(h))
        .map(|h| h.as_str())
        .collect();
    if !undeclared.is_empty() {
        let declared: Vec<&str> = manifest.hooks.iter().map(|h| h.as_str()).collect();
        return Verdict::blocked(
            "HookNotDeclared",
            format!(
                "spec.hooks names {} which the signed manifest does not declare (it declares {}); remove them from spec.hooks",
                undeclared.join(", "),
                declared.join(", ")
            ),
        );
    }
    Verdict::ok(
        "Compatible",
        format!(
            "plugin API version {} is supported",
            spec.plugin_api_version
        ),
    )
}

/// Condition reason of a `spec.config` the plugin cannot take.
pub const CONFIG_INVALID: &str = "ConfigInvalid";

/// `spec.config` as the pod receives it, checked against the signed manifest's `configSchema`
/// (an absent `spec.config` is checked as `{}`, so a schema's required settings are asked for);
/// `None` when the Plugin sets none. The error is the `Compatible` condition's reason and message.
pub fn plugin_config(
    plugin: &Plugin,
    manifest: &Manifest,
) -> Result<Option<crate::build::PluginConfig>, (&'static str, String)> {
    use airlock_bundle::config::{ConfigSchema, check_shape};
    let schema = match &manifest.config_schema {
        // It compiled when the manifest was parsed; a failure here is still reported, not unwrapped.
        Some(s) => Some(ConfigSchema::compile(s).map_err(|e| {
            (
                CONFIG_INVALID,
                format!("the configSchema of the signed manifest is not usable: {e}; fix it, re-pack and re-sign the bundle"),
            )
        })?),
        None => None,
    };
    let empty = serde_json::Value::Object(Default::default());
    let config = plugin.spec.config.as_ref();
    let text =
        check_shape(config.unwrap_or(&empty)).map_err(|e| (CONFIG_INVALID, e.to_string()))?;
    if let Some(schema) = &schema {
        schema
            .check(config.unwrap_or(&empty))
            .map_err(|e| (CONFIG_INVALID, e.to_string()))?;
    }
    let secrets = !plugin.spec.config_secrets.is_empty();
    if (config.is_some() || secrets) && !manifest.hooks.contains(&airlock_core::Hook::OnLoad) {
        let field = if config.is_some() {
            "spec.config"
        } else {
            "spec.configSecrets"
        };
        return Err((
            "ConfigNotReceived",
            format!(
                "{field} is set but the signed manifest declares no onLoad hook, which is how a plugin receives its configuration; remove {field} or use a plugin version that declares onLoad"
            ),
        ));
    }
    let Some(_) = config else {
        return Ok(None);
    };
    Ok(Some(crate::build::PluginConfig {
        digest: hex::encode(Sha256::digest(text.as_bytes())),
        json: text,
        live: manifest.hooks.contains(&airlock_core::Hook::OnConfigChange),
    }))
}

fn verification(
    plugin: &Plugin,
    fetched: &Fetched,
    limits: Option<&Limits>,
    level: TrustLevel,
) -> Verdict {
    let Some(limits) = limits else {
        return Verdict::blocked(
            NO_TRUST_POLICY,
            format!(
                "no PluginTrustPolicy governs namespace {}; apply one that selects it (see examples/trust-policy.yaml)",
                plugin.namespace().unwrap_or_default()
            ),
        );
    };
    if let Some(bound) = &fetched.manifest.image_digest
        && bound != &fetched.image_digest
    {
        return Verdict::blocked(
            "ImageDigestMismatch",
            format!(
                "spec.image resolves to {} but the signed manifest binds the plugin to {}; use the image the bundle was signed for",
                fetched.image_digest, bound
            ),
        );
    }
    if fetched.signed_by.is_some() && fetched.manifest.image_digest.is_none() {
        return Verdict::blocked(
            "ImageNotBound",
            "the signed manifest (plugin.yaml) has no imageDigest, so the signature does not say which image it vouches for; add `imageDigest: sha256:…` of the image, re-pack and re-sign the bundle",
        );
    }
    match &fetched.signed_by {
        Some(Signer { key, level, .. }) => Verdict::ok(
            "Verified",
            format!("image and bundle signed by key {key} (trust level {level:?})"),
        ),
        None if limits.allow_unsigned => Verdict::ok(
            "UnsignedAllowed",
            format!(
                "image {} and bundle {} are not signature-verified; the trust policy allows unsigned plugins at level {level:?}",
                fetched.image_digest, fetched.bundle_digest
            ),
        ),
        None => Verdict::blocked(
            "SignatureRequired",
            format!(
                "the plugin is not signed by a trusted key and the trust policy does not allow unsigned plugins at level {level:?}; sign it with a key listed in the PluginTrustPolicy"
            ),
        ),
    }
}

type Approval = (Verdict, BTreeSet<Permission>, Option<Resources>);

fn approval(plugin: &Plugin, manifest: &Manifest, limits: &Limits) -> Approval {
    let spec = &plugin.spec;
    let declared: BTreeSet<Permission> = manifest.permissions.iter().copied().collect();
    let requested: BTreeSet<Permission> = spec.permissions.iter().copied().collect();
    if let Some(not_declared) = listed(requested.difference(&declared)) {
        return blocked(
            "NotDeclaredBySigner",
            format!(
                "spec.permissions asks for {not_declared} which the signed manifest does not declare; remove them from spec.permissions or get a bundle signed with them"
            ),
        );
    }
    if let Some(not_allowed) = listed(requested.difference(&limits.permissions)) {
        return blocked(
            "NotAllowedByTrustLevel",
            format!(
                "spec.permissions asks for {not_allowed} which the trust level does not allow; remove them or have an admin allow them in the PluginTrustPolicy"
            ),
        );
    }
    if let Some(max) = limits.max_timeout_ms {
        for h in &spec.hooks {
            if duration_ms(&h.timeout).is_none_or(|t| t > max) {
                return blocked(
                    "TimeoutAboveTrustLevel",
                    format!(
                        "spec.hooks[{}].timeout {} is above the trust level's maxTimeout {}; lower it",
                        h.name.as_str(),
                        h.timeout,
                        limits.max_timeout.as_deref().unwrap_or_default()
                    ),
                );
            }
        }
    }
    let egress = spec.network.iter().flat_map(|n| n.egress.iter()).cloned();
    if let Err(message) = crate::egress::check(
        &egress.collect::<Vec<_>>(),
        &limits.egress_within,
        &crate::egress::never(&limits.cluster_cidrs),
    ) {
        return blocked("EgressNotAllowed", message);
    }
    let resources = match resources(plugin, limits) {
        Ok(r) => r,
        Err((reason, message)) => return blocked(reason, message),
    };
    if let Some(max) = limits.max_concurrency
        && i64::from(spec.concurrency) > i64::from(max)
    {
        return blocked(
            "ConcurrencyAboveTrustLevel",
            format!(
                "spec.concurrency {} is above the trust level's maxConcurrency {max}; lower it, or raise spec.replicas instead",
                spec.concurrency
            ),
        );
    }
    let effective = requested.intersection(&declared).copied().collect();
    (
        Verdict::ok(
            "Approved",
            format!(
                "granted: {}",
                listed(requested.iter()).unwrap_or_else(|| "no permissions".into())
            ),
        ),
        effective,
        Some(resources),
    )
}

/// `a, b, c` for a message; `None` for no permissions.
fn listed<'a>(permissions: impl Iterator<Item = &'a Permission>) -> Option<String> {
    let names: Vec<String> = permissions.map(|p| p.to_string()).collect();
    (!names.is_empty()).then(|| names.join(", "))
}

fn blocked(reason: &'static str, message: String) -> Approval {
    (Verdict::blocked(reason, message), BTreeSet::new(), None)
}

/// Limits from the spec (or the defaults), checked against the caps; requests default to a small
/// CPU share and the full memory limit (memory is not overcommitted), and may not exceed the
/// limits. The pod gets each value as read here ([`quantity::cpu_for_pod`]).
fn resources(plugin: &Plugin, limits: &Limits) -> Result<Resources, (&'static str, String)> {
    let spec_res = plugin.spec.resources.clone().unwrap_or_default();
    let lim = spec_res.limits.unwrap_or_default();
    let req = spec_res.requests.unwrap_or_default();
    let invalid = |m: String| ("InvalidResources", m);
    let cpu_limit = lim.cpu.unwrap_or_else(|| DEFAULT_CPU_LIMIT.into());
    let memory_limit = lim.memory.unwrap_or_else(|| DEFAULT_MEMORY_LIMIT.into());
    let cpu = quantity::cpu_millis(&cpu_limit)
        .map_err(|e| invalid(format!("spec.resources.limits.cpu: {e}")))?;
    let mem = quantity::memory_bytes(&memory_limit)
        .map_err(|e| invalid(format!("spec.resources.limits.memory: {e}")))?;
    if let Some(max) = limits.max_cpu_millis
        && cpu > max
    {
        return Err((
            "ResourcesAboveTrustLevel",
            format!(
                "spec.resources.limits.cpu {cpu_limit} is above the trust level's maxCpu {}; lower it",
                limits.max_cpu.as_deref().unwrap_or_default()
            ),
        ));
    }
    if let Some(max) = limits.max_memory_bytes
        && mem > max
    {
        return Err((
            "ResourcesAboveTrustLevel",
            format!(
                "spec.resources.limits.memory {memory_limit} is above the trust level's maxMemory {}; lower it",
                limits.max_memory.as_deref().unwrap_or_default()
            ),
        ));
    }
    let (cpu_request, cpu_req) = match req.cpu {
        Some(given) => {
            let millis = quantity::cpu_millis(&given)
                .map_err(|e| invalid(format!("spec.resources.requests.cpu: {e}")))?;
            (given, millis)
        }
        None if cpu < 50 => (cpu_limit.clone(), cpu),
        None => ("50m".into(), 50),
    };
    let (memory_request, mem_req) = match req.memory {
        Some(given) => {
            let bytes = quantity::memory_bytes(&given)
                .map_err(|e| invalid(format!("spec.resources.requests.memory: {e}")))?;
            (given, bytes)
        }
        None => (memory_limit.clone(), mem),
    };
    // The API server refuses such a pod template; said here, it names the Plugin's field.
    if cpu_req > cpu {
        return Err(invalid(format!(
            "spec.resources.requests.cpu {cpu_request} is above spec.resources.limits.cpu {cpu_limit}; lower the request or raise the limit"
        )));
    }
    if mem_req > mem {
        return Err(invalid(format!(
            "spec.resources.requests.memory {memory_request} is above spec.resources.limits.memory {memory_limit}; lower the request or raise the limit"
        )));
    }
    Ok(Resources {
        cpu_limit: quantity::cpu_for_pod(&cpu_limit, cpu),
        memory_limit: quantity::memory_for_pod(&memory_limit, mem),
        cpu_request: quantity::cpu_for_pod(&cpu_request, cpu_req),
        memory_request: quantity::memory_for_pod(&memory_request, mem_req),
    })
}

/// `spec.concurrency` as the shim takes it: 1 to [`api::MAX_CONCURRENCY`] (the schema's range).
fn concurrency(plugin: &Plugin) -> u32 {
    u32::try_from(plugin.spec.concurrency)
        .unwrap_or(1)
        .clamp(1, api::MAX_CONCURRENCY)
}

fn rollout(
    fetched: &Fetched,
    permissions: BTreeSet<Permission>,
    resources: Resources,
    limits: airlock_crds::plugin::PluginLimits,
    concurrency: u32,
    config: Option<crate::build::PluginConfig>,
    config_secrets: Vec<airlock_crds::plugin::ConfigSecret>,
) -> Rollout {
    let entry_point = fetched.manifest.entry_point.clone();
    // Everything that changes the pod, and nothing that does not (replicas, enabled).
    let mut h = Sha256::new();
    for part in [
        fetched.pinned_image.as_str(),
        fetched.bundle_digest.as_str(),
        &entry_point.join("\u{0}"),
        &permissions
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(","),
        &resources.cpu_limit,
        &resources.memory_limit,
        &resources.cpu_request,
        &resources.memory_request,
        fetched
            .bundle_signature
            .as_ref()
            .map(|s| s.public_key.as_str())
            .unwrap_or_default(),
        // The shim's log rate is an argument of the pod (the storage caps are the router's).
        &limits.log_lines_per_minute.to_string(),
    ] {
        h.update(part.as_bytes());
        h.update([0xff]);
    }
    // Only when not the default, so that plugins from before the field keep their revision.
    if concurrency > 1 {
        h.update(format!("concurrency={concurrency}").as_bytes());
        h.update([0xff]);
    }
    // Only when set, like concurrency. A live configuration changes in place, not the revision.
    match &config {
        None => {}
        Some(c) if c.live => h.update(b"config=live\xff"),
        Some(c) => h.update(format!("config={}\u{ff}", c.digest).as_bytes()),
    }
    // The references only (the values are the kubelet's to mount, never the operator's to read).
    for s in &config_secrets {
        let r = &s.secret_key_ref;
        h.update(format!("secret={}\u{fe}{}\u{fe}{}\u{ff}", s.name, r.name, r.key).as_bytes());
    }
    let revision = format!("r{}", &hex::encode(h.finalize())[..10]);
    // A function of the bundle and the permissions, both in the revision already.
    let no_upgrade =
        fetched.manifest.upgrades_storage() && !permissions.contains(&Permission::StorageWrite);
    Rollout {
        pinned_image: fetched.pinned_image.clone(),
        image_digest: fetched.image_digest.clone(),
        bundle_digest: fetched.bundle_digest.clone(),
        bundle: fetched.bundle.clone(),
        bundle_signature: fetched.bundle_signature.clone(),
        entry_point,
        permissions,
        resources,
        limits,
        concurrency,
        config,
        config_secrets,
        no_upgrade,
        revision,
    }
}

/// `spec.configSecrets`, in name order (the pod template and the revision do not depend on the
/// order they were written in).
fn config_secrets(plugin: &Plugin) -> Vec<airlock_crds::plugin::ConfigSecret> {
    let mut secrets = plugin.spec.config_secrets.clone();
    secrets.sort_by(|a, b| a.name.cmp(&b.name));
    secrets
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::{HELLO, plugin};

    fn manifest(extra: &str) -> Manifest {
        Manifest::parse(&format!(
            "name: hello\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\npermissions: [log, storage:read]\nentryPoint: [/hello]\n{extra}"
        ))
        .expect("manifest parses")
    }

    fn fetched(m: Manifest) -> Fetched {
        Fetched {
            pinned_image: "198.19.255.1:5000/acme/hello@sha256:bbbb".into(),
            image_digest: "sha256:bbbb".into(),
            bundle: b"bytes".to_vec(),
            bundle_digest: format!("sha256:{}", "c".repeat(64)),
            bundle_signature: None,
            manifest: m,
            signed_by: None,
        }
    }

    fn open_limits() -> Limits {
        Limits {
            allow_unsigned: true,
            permissions: Permission::ALL.iter().copied().collect(),
            ..Default::default()
        }
    }

    #[test]
    fn runtime_limits_come_from_the_trust_level_and_the_log_rate_is_part_of_the_revision() {
        let p = plugin(HELLO);
        let f = fetched(manifest(""));
        let default = plan(&p, &f, Some(&open_limits())).rollout.expect("default");
        assert_eq!(
            default.limits,
            airlock_crds::plugin::PluginLimits::default()
        );
        let tight = Limits {
            log_lines_per_minute: Some(10),
            storage_max_keys: Some(5),
            ..open_limits()
        };
        let r = plan(&p, &f, Some(&tight)).rollout.expect("tight");
        assert_eq!(r.limits.log_lines_per_minute, 10);
        assert_eq!(r.limits.storage_max_keys, 5);
        assert_eq!(
            r.limits.storage_max_bytes,
            1024 * 1024,
            "unset: the default"
        );
        assert_ne!(
            r.revision, default.revision,
            "the shim's log rate changes the pod"
        );
    }

    fn blocked_reason(v: &Verdict) -> &'static str {
        match v {
            Verdict::Blocked { reason, .. } => reason,
            Verdict::Ok { .. } => "Ok",
        }
    }

    /// `v` blocks for `reason`, with a message that names `what`.
    fn assert_blocked(v: &Verdict, reason: &str, what: &str) {
        assert_eq!(blocked_reason(v), reason);
        let Verdict::Blocked { message, .. } = v else {
            unreachable!()
        };
        assert!(message.contains(what), "{what:?} in {message}");
    }

    /// Issue 17: what the signed manifest requires is checked before anything rolls out: a
    /// required permission the spec does not approve, a host feature this Airlock lacks, an SDK
    /// older than served: `Compatible=False`, nothing to roll out.
    #[test]
    fn a_plugin_whose_requirements_are_not_met_is_not_rolled_out() {
        let p = plugin(HELLO);
        let refused = |extra: &str| {
            let plan = plan(&p, &fetched(manifest(extra)), Some(&open_limits()));
            assert!(plan.rollout.is_none() && plan.record.is_none(), "{extra}");
            plan.compatible
        };
        assert_blocked(
            &refused("requires: [storage:read, kvWatch]"),
            crate::compat::REQUIREMENT_NOT_MET,
            "kvWatch",
        );
        assert_blocked(
            &refused("requires: [storage:read]"),
            crate::compat::REQUIREMENT_NOT_MET,
            "add storage:read to spec.permissions",
        );
        assert_blocked(
            &refused("sdk: {name: airlock-sdk, version: 0.0.1}"),
            crate::compat::SDK_NOT_SUPPORTED,
            "airlock-sdk 0.0.1",
        );
        let met = plan(
            &p,
            &fetched(manifest(
                "requires: [log, config]\nsdk: {name: airlock-sdk, version: 0.1.0}",
            )),
            Some(&open_limits()),
        );
        assert!(
            met.compatible.is_ok() && met.rollout.is_some(),
            "{:?}",
            met.compatible
        );
        assert_eq!(met.deprecated, None);
    }

    #[test]
    fn a_version_below_the_one_that_wrote_the_storage_is_refused_unless_allowed() {
        let at = |version: &str, allow: bool| {
            let mut p = plugin(HELLO);
            p.spec.version = version.into();
            p.spec.allow_downgrade = allow;
            p
        };
        // Never written, the same version, or newer: goes on.
        assert_eq!(downgrade(&at("1.0.0", false), None), None);
        assert_eq!(downgrade(&at("1.0.0", false), Some("1.0.0")), None);
        assert_eq!(downgrade(&at("1.2.0", false), Some("1.1.9")), None);
        // Semantic-version order, not text order: 1.10.0 is newer than 1.9.0.
        assert_eq!(downgrade(&at("1.10.0", false), Some("1.9.0")), None);
        let v = downgrade(&at("1.9.0", false), Some("1.10.0")).expect("refused");
        assert_blocked(&v, DOWNGRADE_REFUSED, "spec.allowDowngrade: true");
        assert_blocked(&v, DOWNGRADE_REFUSED, "1.10.0");
        // Build metadata does not make a version older or newer.
        assert_eq!(downgrade(&at("1.2.0", false), Some("1.2.0+b10")), None);
        assert_eq!(downgrade(&at("1.2.0+b2", false), Some("1.2.0+b10")), None);
        // A pre-release is older than its release.
        let v = downgrade(&at("2.0.0-rc.1", false), Some("2.0.0")).expect("refused");
        assert_blocked(&v, DOWNGRADE_REFUSED, "2.0.0-rc.1");
        // Allowed by the Plugin: goes on.
        assert_eq!(downgrade(&at("1.9.0", true), Some("1.10.0")), None);
        // A record that is not a version (edited by hand) cannot rule a downgrade out.
        let v = downgrade(&at("1.0.0", false), Some("latest")).expect("refused");
        assert_blocked(&v, DOWNGRADE_REFUSED, "\"latest\"");
        assert_eq!(downgrade(&at("1.0.0", true), Some("latest")), None);
    }

    #[test]
    fn a_refused_plan_rolls_nothing_out_and_names_the_reason() {
        let mut p = plugin(HELLO);
        let planned = plan(&p, &fetched(manifest("")), Some(&open_limits()));
        assert!(planned.rolls_out_new_revision(&p), "nothing runs yet");
        let revision = planned
            .rollout
            .as_ref()
            .expect("rolls out")
            .revision
            .clone();
        p.status = Some(airlock_crds::plugin::PluginStatus {
            current_revision: Some(revision),
            ..Default::default()
        });
        assert!(
            !planned.rolls_out_new_revision(&p),
            "the revision that runs: no storage look"
        );
        let refused = planned.refuse(Verdict::blocked(DOWNGRADE_REFUSED, "older"));
        assert!(refused.rollout.is_none() && refused.record.is_none());
        assert_blocked(&refused.compatible, DOWNGRADE_REFUSED, "older");
        assert!(refused.verified.is_ok(), "the other verdicts stay");
    }

    #[test]
    fn a_matching_plugin_rolls_out_with_default_resources() {
        let p = plan(&plugin(HELLO), &fetched(manifest("")), Some(&open_limits()));
        let r = p.rollout.expect("rolls out");
        assert_eq!(r.entry_point, vec!["/hello".to_string()]);
        assert_eq!(r.resources.memory_limit, "64Mi");
        assert_eq!(r.permissions, BTreeSet::from([Permission::Log]));
        assert!(r.revision.starts_with('r') && r.revision.len() == 11);
    }

    #[test]
    fn the_revision_changes_with_the_pod_and_only_then() {
        let mut p = plugin(HELLO);
        let f = fetched(manifest(""));
        let a = plan(&p, &f, Some(&open_limits())).rollout.expect("a");
        p.spec.replicas = 3;
        let b = plan(&p, &f, Some(&open_limits())).rollout.expect("b");
        assert_eq!(a.revision, b.revision, "scaling is not a new revision");
        let mut f2 = f.clone();
        f2.bundle_digest = format!("sha256:{}", "d".repeat(64));
        let c = plan(&p, &f2, Some(&open_limits())).rollout.expect("c");
        assert_ne!(a.revision, c.revision);
    }

    /// A manifest with `hooks` and a configSchema that requires a short `greeting`.
    fn configured(hooks: &str) -> Manifest {
        Manifest::parse(&format!(
            "name: hello\nversion: 1.0.0\napiVersion: 1\nhooks: {hooks}\npermissions: [log, storage:read]\n\
             entryPoint: [/hello]\nconfigSchema:\n  type: object\n  properties:\n    greeting: {{type: string, maxLength: 8}}\n  required: [greeting]\n"
        ))
        .expect("manifest parses")
    }

    fn with_config(config: serde_json::Value) -> Plugin {
        let mut p = plugin(HELLO);
        p.spec.config = Some(config);
        p
    }

    #[test]
    fn a_configuration_the_signed_schema_refuses_is_not_compatible_naming_the_field() {
        let f = fetched(configured("[onLoad, transform]"));
        let plan_of = |p: &Plugin| plan(p, &f, Some(&open_limits()));
        let bad = plan_of(&with_config(
            serde_json::json!({"greeting": "far too long"}),
        ));
        assert_blocked(&bad.compatible, CONFIG_INVALID, "spec.config.greeting");
        assert!(bad.rollout.is_none(), "nothing rolls out");
        let Verdict::Blocked { message, .. } = &bad.compatible else {
            unreachable!()
        };
        assert!(
            !message.contains("far too long"),
            "the value is not repeated: {message}"
        );
        // Absent is checked as {}: the schema's required setting is asked for.
        let absent = plan_of(&plugin(HELLO));
        assert_blocked(&absent.compatible, CONFIG_INVALID, "greeting");
        let not_object = plan_of(&with_config(serde_json::json!([1])));
        assert_blocked(&not_object.compatible, CONFIG_INVALID, "JSON object");
        let good = plan_of(&with_config(serde_json::json!({"greeting": "hi"})));
        let config = good.rollout.expect("rolls out").config.expect("config");
        assert_eq!(config.json, r#"{"greeting":"hi"}"#);
        assert!(!config.live, "no onConfigChange: restarted on change");
    }

    #[test]
    fn a_configuration_needs_a_plugin_that_receives_it() {
        let f = fetched(configured("[transform]"));
        let p = with_config(serde_json::json!({"greeting": "hi"}));
        let v = plan(&p, &f, Some(&open_limits())).compatible;
        assert_blocked(&v, "ConfigNotReceived", "onLoad");
    }

    #[test]
    fn config_secrets_need_on_load_and_a_changed_reference_is_a_new_revision() {
        use airlock_crds::plugin::{ConfigSecret, SecretKeyRef};
        let with_secret = |key: &str| {
            let mut p = with_config(serde_json::json!({"greeting": "hi"}));
            p.spec.config_secrets = vec![ConfigSecret {
                name: "apiToken".into(),
                secret_key_ref: SecretKeyRef {
                    name: "vendor".into(),
                    key: key.into(),
                },
            }];
            p
        };
        let mut no_config = with_secret("token");
        no_config.spec.config = None;
        let v = plan(&no_config, &fetched(manifest("")), Some(&open_limits())).compatible;
        assert_blocked(&v, "ConfigNotReceived", "spec.configSecrets");
        let f = fetched(configured("[onLoad, transform]"));
        let a = plan(&with_secret("token"), &f, Some(&open_limits()))
            .rollout
            .expect("a");
        let b = plan(&with_secret("token2"), &f, Some(&open_limits()))
            .rollout
            .expect("b");
        assert_eq!(a.config_secrets.len(), 1);
        assert_ne!(
            a.revision, b.revision,
            "another key is another pod template"
        );
    }

    #[test]
    fn a_new_configuration_is_a_new_revision_unless_the_plugin_takes_it_live() {
        let revision = |hooks: &str, greeting: &str| {
            let f = fetched(configured(hooks));
            let p = with_config(serde_json::json!({"greeting": greeting}));
            plan(&p, &f, Some(&open_limits()))
                .rollout
                .expect("rolls out")
        };
        let (a, b) = (
            revision("[onLoad, transform]", "hi"),
            revision("[onLoad, transform]", "hey"),
        );
        assert_ne!(a.revision, b.revision, "restarted: a new pod template");
        let (a, b) = (
            revision("[onLoad, onConfigChange, transform]", "hi"),
            revision("[onLoad, onConfigChange, transform]", "hey"),
        );
        assert!(a.config.as_ref().is_some_and(|c| c.live));
        assert_eq!(a.revision, b.revision, "live: the same pods get the change");
        assert_ne!(a.config, b.config);
    }

    #[test]
    fn an_unsupported_api_version_is_not_compatible() {
        let mut p = plugin(HELLO);
        p.spec.plugin_api_version = 2;
        let plan = plan(&p, &fetched(manifest("")), Some(&open_limits()));
        assert_eq!(
            blocked_reason(&plan.compatible),
            "UnsupportedPluginApiVersion"
        );
        assert!(plan.rollout.is_none());
    }

    #[test]
    fn spec_and_signed_manifest_must_agree() {
        let mut p = plugin(HELLO);
        p.spec.version = "1.0.1".into();
        let v = plan(&p, &fetched(manifest("")), Some(&open_limits())).compatible;
        assert_blocked(&v, "VersionMismatch", "spec.version");

        let p = plugin(&HELLO.replace("name: transform", "name: onEvent"));
        let v = plan(&p, &fetched(manifest("")), Some(&open_limits())).compatible;
        assert_blocked(&v, "HookNotDeclared", "onEvent");
    }

    #[test]
    fn no_policy_or_no_unsigned_allowance_blocks_the_rollout() {
        let p = plugin(HELLO);
        let none = plan(&p, &fetched(manifest("")), None);
        assert_eq!(blocked_reason(&none.verified), "NoTrustPolicy");
        assert!(none.rollout.is_none());
        let strict = Limits {
            allow_unsigned: false,
            ..open_limits()
        };
        let s = plan(&p, &fetched(manifest("")), Some(&strict));
        assert_eq!(blocked_reason(&s.verified), "SignatureRequired");
        assert!(s.rollout.is_none());
    }

    #[test]
    fn a_manifest_bound_to_another_image_is_not_verified() {
        let m = manifest(&format!("imageDigest: sha256:{}\n", "e".repeat(64)));
        let v = plan(&plugin(HELLO), &fetched(m), Some(&open_limits())).verified;
        assert_eq!(blocked_reason(&v), "ImageDigestMismatch");
    }

    #[test]
    fn a_signed_plugin_must_name_its_image_and_gets_its_signers_level() {
        let mut f = fetched(manifest(""));
        f.signed_by = Some(Signer {
            key: "acme/author".into(),
            level: TrustLevel::Trusted,
            bundle_key: Some("sha256:b".into()),
            image_key: Some("sha256:i".into()),
        });
        let v = plan(&plugin(HELLO), &f, Some(&open_limits())).verified;
        assert_eq!(blocked_reason(&v), "ImageNotBound");

        let bound = format!("sha256:{}", "b".repeat(64));
        let mut f = fetched(manifest(&format!("imageDigest: {bound}\n")));
        f.image_digest = bound;
        f.signed_by = Some(Signer {
            key: "acme/author".into(),
            level: TrustLevel::Trusted,
            bundle_key: Some("sha256:b".into()),
            image_key: Some("sha256:i".into()),
        });
        let p = plan(&plugin(HELLO), &f, Some(&open_limits()));
        assert!(p.verified.is_ok(), "{:?}", p.verified);
        assert_eq!(p.trust_level, TrustLevel::Trusted);
    }

    #[test]
    fn permissions_must_be_declared_and_allowed() {
        let p = plugin(&HELLO.replace("permissions: [log]", "permissions: [log, storage:write]"));
        let v = plan(&p, &fetched(manifest("")), Some(&open_limits())).permissions_approved;
        assert_blocked(&v, "NotDeclaredBySigner", "storage:write");

        let p = plugin(&HELLO.replace("permissions: [log]", "permissions: [log, storage:read]"));
        let only_log = Limits {
            permissions: BTreeSet::from([Permission::Log]),
            ..open_limits()
        };
        let v = plan(&p, &fetched(manifest("")), Some(&only_log)).permissions_approved;
        assert_blocked(&v, "NotAllowedByTrustLevel", "storage:read");
    }

    #[test]
    fn egress_to_the_metadata_endpoint_or_outside_the_levels_networks_is_refused() {
        let with_egress = |cidr: &str| {
            plugin(&HELLO.replace(
                "permissions: [log]",
                &format!("permissions: [log]\n  network: {{egress: [{{cidr: {cidr}}}]}}"),
            ))
        };
        let v = plan(
            &with_egress("169.254.169.254/32"),
            &fetched(manifest("")),
            Some(&open_limits()),
        )
        .permissions_approved;
        assert_blocked(&v, "EgressNotAllowed", "169.254.0.0/16");
        let capped = Limits {
            egress_within: vec![("platform".into(), vec!["203.0.113.0/24".parse().unwrap()])],
            ..open_limits()
        };
        let v = plan(
            &with_egress("198.51.100.0/24"),
            &fetched(manifest("")),
            Some(&capped),
        )
        .permissions_approved;
        assert_blocked(&v, "EgressNotAllowed", "PluginTrustPolicy platform");
        let v = plan(
            &with_egress("203.0.113.8/29"),
            &fetched(manifest("")),
            Some(&capped),
        )
        .permissions_approved;
        assert_eq!(
            blocked_reason(&v),
            "Ok",
            "inside the level's networks: {v:?}"
        );
    }

    #[test]
    fn caps_of_the_trust_level_apply() {
        let capped = Limits {
            max_memory_bytes: Some(32 << 20),
            max_memory: Some("32Mi".into()),
            ..open_limits()
        };
        let v = plan(&plugin(HELLO), &fetched(manifest("")), Some(&capped)).permissions_approved;
        assert_eq!(blocked_reason(&v), "ResourcesAboveTrustLevel");
        let slow = Limits {
            max_timeout_ms: Some(100),
            max_timeout: Some("100ms".into()),
            ..open_limits()
        };
        let v = plan(&plugin(HELLO), &fetched(manifest("")), Some(&slow)).permissions_approved;
        assert_eq!(blocked_reason(&v), "TimeoutAboveTrustLevel");
    }

    /// Limits and requests reach the pod as the caps read them; a request above its limit or a
    /// value that is no quantity is refused with the field named, never sent to the API server.
    #[test]
    fn resources_reach_the_pod_as_read_and_bad_ones_are_named() {
        let with = |limits: serde_json::Value, requests: serde_json::Value| {
            let mut p = plugin(HELLO);
            p.spec.resources = Some(
                serde_json::from_value(serde_json::json!({"limits": limits, "requests": requests}))
                    .expect("resources"),
            );
            plan(&p, &fetched(manifest("")), Some(&open_limits()))
        };
        let usual = with(
            serde_json::json!({"cpu": "500m", "memory": "128Mi"}),
            serde_json::json!({"cpu": "100m", "memory": "64Mi"}),
        );
        let r = usual.rollout.expect("approved").resources;
        assert_eq!(
            (r.cpu_limit.as_str(), r.memory_limit.as_str()),
            ("500m", "128Mi"),
            "plain values unchanged: no new revision for a usual Plugin"
        );
        assert_eq!(
            (r.cpu_request.as_str(), r.memory_request.as_str()),
            ("100m", "64Mi")
        );
        let odd = with(
            serde_json::json!({"cpu": "0.5", "memory": "1e8"}),
            serde_json::json!({"cpu": "1e-1", "memory": "0.5e8"}),
        );
        let r = odd.rollout.expect("approved").resources;
        assert_eq!(
            (r.cpu_limit, r.memory_limit, r.cpu_request, r.memory_request),
            (
                "500m".into(),
                "100000000".into(),
                "100m".into(),
                "50000000".into()
            )
        );
        let v = with(
            serde_json::json!({"cpu": "100m"}),
            serde_json::json!({"cpu": "200m"}),
        )
        .permissions_approved;
        assert_blocked(
            &v,
            "InvalidResources",
            "spec.resources.requests.cpu 200m is above spec.resources.limits.cpu 100m",
        );
        let v =
            with(serde_json::json!({}), serde_json::json!({"memory": "1Gi"})).permissions_approved;
        assert_blocked(
            &v,
            "InvalidResources",
            "spec.resources.requests.memory 1Gi is above spec.resources.limits.memory 64Mi",
        );
        let v =
            with(serde_json::json!({}), serde_json::json!({"memory": "lots"})).permissions_approved;
        assert_blocked(&v, "InvalidResources", "spec.resources.requests.memory");
        let v = with(
            serde_json::json!({"cpu": "1e-4294967293"}),
            serde_json::json!({}),
        )
        .permissions_approved;
        assert_blocked(&v, "InvalidResources", "spec.resources.limits.cpu");
    }

    #[test]
    fn the_record_names_the_verified_bundle_and_api_version_the_router_checks_pods_against() {
        let approved = plan(&plugin(HELLO), &fetched(manifest("")), Some(&open_limits()));
        let record = approved.record.expect("recorded");
        assert_eq!(
            record.bundle_digest.as_deref(),
            Some(format!("sha256:{}", "c".repeat(64)).as_str())
        );
        assert_eq!(record.plugin_api_version, Some(1));
    }

    #[test]
    fn on_upgrade_is_left_out_only_for_a_plugin_not_granted_the_storage_it_declares() {
        let no_upgrade = |manifest_extra: &str, approved: &[Permission]| {
            let mut p = plugin(HELLO);
            p.spec.permissions = approved.to_vec();
            let m = Manifest::parse(&format!(
                "name: hello\nversion: 1.0.0\napiVersion: 1\nhooks: [transform{manifest_extra}]\npermissions: [log, storage:write]\nentryPoint: [/hello]\n"
            ))
            .expect("manifest");
            plan(&p, &fetched(m), Some(&open_limits()))
                .rollout
                .expect("rolled out")
                .no_upgrade
        };
        assert!(no_upgrade(", onUpgrade", &[Permission::Log]));
        assert!(!no_upgrade(
            ", onUpgrade",
            &[Permission::Log, Permission::StorageWrite]
        ));
        assert!(
            !no_upgrade("", &[Permission::Log]),
            "no onUpgrade to leave out"
        );
    }

    #[test]
    fn concurrency_is_approved_up_to_the_trust_level_and_recorded() {
        let mut p = plugin(HELLO);
        p.spec.concurrency = 4;
        let four = Limits {
            max_concurrency: Some(4),
            ..open_limits()
        };
        let approved = plan(&p, &fetched(manifest("")), Some(&four));
        assert_eq!(approved.rollout.as_ref().expect("approved").concurrency, 4);
        assert_eq!(approved.record.expect("recorded").concurrency, Some(4));

        let two = Limits {
            max_concurrency: Some(2),
            ..open_limits()
        };
        let v = plan(&p, &fetched(manifest("")), Some(&two)).permissions_approved;
        assert_blocked(&v, "ConcurrencyAboveTrustLevel", "spec.concurrency 4");
        assert_blocked(&v, "ConcurrencyAboveTrustLevel", "maxConcurrency 2");
    }

    #[test]
    fn more_processes_per_pod_is_a_new_revision() {
        let mut p = plugin(HELLO);
        let f = fetched(manifest(""));
        let one = plan(&p, &f, Some(&open_limits())).rollout.expect("one");
        p.spec.concurrency = 2;
        let two = plan(&p, &f, Some(&open_limits())).rollout.expect("two");
        assert_ne!(one.revision, two.revision);
    }
}
