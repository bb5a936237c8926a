//! Does the revision that runs still pass today's trust policies? (pure)
//!
//! A plan only judges the *current spec*, and only when fetching it succeeds. Revocation and a
//! tightened policy must reach what already runs whatever becomes of the spec (a tenant who breaks
//! the spec first must not keep a revoked plugin running), so every reconcile checks the running
//! revision's [`RevisionRecord`] — the fingerprints of the keys that signed it and what it was
//! approved with — against the keys and limits of today's governing policies. The same check
//! guards a rollback: a revision goes back into service only if its record still passes.

use std::collections::BTreeSet;

use airlock_core::duration::duration_ms;
use airlock_crds::TrustLevel;
use airlock_crds::plugin::{EgressRule, RevisionRecord};
use k8s_openapi::api::core::v1::PodTemplateSpec;

use crate::egress;
use crate::policy::Limits;
use crate::quantity;
use crate::trust::{KEY_REVOKED, TrustedKeys};

/// Condition reason of a running revision today's policies no longer allow (its signer is no
/// longer trusted, or it holds more than its trust level allows now).
pub const NO_LONGER_ALLOWED: &str = "NoLongerAllowed";

/// Why a recorded revision may not run under today's policies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stop {
    /// [`KEY_REVOKED`] or [`NO_LONGER_ALLOWED`].
    pub reason: &'static str,
    /// What changed and what to do; names the revision.
    pub message: String,
}

impl Stop {
    fn revoked(revision: &str, what: &str, key: &str) -> Self {
        Self {
            reason: KEY_REVOKED,
            message: format!(
                "revision {revision} was signed ({what}) by key {key}, which a PluginTrustPolicy revoked; it is quarantined (scaled to zero, no host API). Publish a version signed by a trusted key"
            ),
        }
    }

    fn not_allowed(revision: &str, why: String) -> Self {
        Self {
            reason: NO_LONGER_ALLOWED,
            message: format!(
                "revision {revision} no longer passes the governing PluginTrustPolicies: {why}; it is stopped (scaled to zero, no host API). Change the spec to a version they allow, or restore the policy"
            ),
        }
    }
}

/// The check: `None` when `record` may keep running in a namespace whose governing policies give
/// `keys` and, per trust level, `limits_at` (`None`: no policy governs the namespace);
/// `cluster_cidrs` are the ranges no plugin may reach.
pub fn check(
    record: &RevisionRecord,
    keys: &TrustedKeys,
    limits_at: impl Fn(TrustLevel) -> Option<Limits>,
    cluster_cidrs: &[ipnet::IpNet],
) -> Option<Stop> {
    let rev = record.revision.as_str();
    let mut level = TrustLevel::BuiltIn;
    let mut signed = false;
    if let Some(fp) = &record.bundle_signer {
        signed = true;
        match keys.bundle.iter().find(|k| &k.fingerprint() == fp) {
            Some(k) if k.revoked => return Some(Stop::revoked(rev, "bundle", &k.name)),
            Some(k) => level = level.min(k.level),
            None => return Some(untrusted(rev, "bundle", fp)),
        }
    }
    if let Some(fp) = &record.image_signer {
        signed = true;
        match keys.image.iter().find(|k| &k.fingerprint() == fp) {
            Some(k) if k.revoked => return Some(Stop::revoked(rev, "image", &k.name)),
            Some(k) => level = level.min(k.level),
            None => return Some(untrusted(rev, "image", fp)),
        }
    }
    if !signed {
        level = TrustLevel::Untrusted;
    }
    let Some(limits) = limits_at(level) else {
        return Some(Stop::not_allowed(
            rev,
            "no PluginTrustPolicy governs the namespace any more".into(),
        ));
    };
    within(record, &limits, level, signed, cluster_cidrs).map(|why| Stop::not_allowed(rev, why))
}

fn untrusted(revision: &str, what: &str, fingerprint: &str) -> Stop {
    Stop::not_allowed(
        revision,
        format!(
            "the key that signed its {what} ({fingerprint}) is no longer listed by every governing policy"
        ),
    )
}

/// What the recorded revision holds beyond `limits` at `level`, if anything.
fn within(
    record: &RevisionRecord,
    limits: &Limits,
    level: TrustLevel,
    signed: bool,
    cluster_cidrs: &[ipnet::IpNet],
) -> Option<String> {
    if !signed && !limits.allow_unsigned {
        return Some(format!(
            "it is unsigned and trust level {level:?} no longer allows unsigned plugins"
        ));
    }
    let held: BTreeSet<_> = record.permissions.iter().copied().collect();
    let beyond: Vec<String> = held
        .difference(&limits.permissions)
        .map(|p| p.to_string())
        .collect();
    if !beyond.is_empty() {
        return Some(format!(
            "it holds {} which trust level {level:?} no longer allows",
            beyond.join(", ")
        ));
    }
    let rules: Vec<EgressRule> = record
        .egress
        .iter()
        .map(|cidr| EgressRule {
            cidr: cidr.clone(),
            ports: Vec::new(),
        })
        .collect();
    if let Err(why) = egress::check(&rules, &limits.egress_within, &egress::never(cluster_cidrs)) {
        return Some(why);
    }
    // A limit that does not parse under a cap counts as above it: fail closed (the plan parsed
    // it when the revision was recorded; only a parser stricter since, or beyond u64, gets here).
    let above = |value: &Option<String>, cap: Option<u64>, parse: fn(&str) -> Option<u64>| match (
        value.as_deref(),
        cap,
    ) {
        (Some(text), Some(max)) => parse(text).is_none_or(|v| v > max),
        _ => false,
    };
    if above(&record.cpu_limit, limits.max_cpu_millis, |v| {
        quantity::cpu_millis(v).ok()
    }) {
        return Some(format!(
            "its CPU limit {} is above trust level {level:?}'s maxCpu {}",
            record.cpu_limit.as_deref().unwrap_or_default(),
            limits.max_cpu.as_deref().unwrap_or_default()
        ));
    }
    if above(&record.memory_limit, limits.max_memory_bytes, |v| {
        quantity::memory_bytes(v).ok()
    }) {
        return Some(format!(
            "its memory limit {} is above trust level {level:?}'s maxMemory {}",
            record.memory_limit.as_deref().unwrap_or_default(),
            limits.max_memory.as_deref().unwrap_or_default()
        ));
    }
    if let Some(max) = limits.max_concurrency
        && let Some(n) = record.concurrency
        && i64::from(n) > i64::from(max)
    {
        return Some(format!(
            "its concurrency {n} is above trust level {level:?}'s maxConcurrency {max}"
        ));
    }
    if let Some(max) = limits.max_timeout_ms
        && let Some(h) = record
            .hooks
            .iter()
            .find(|h| duration_ms(&h.timeout).is_none_or(|t| t > max))
    {
        return Some(format!(
            "its hook {} has timeout {}, above trust level {level:?}'s maxTimeout {}",
            h.name.as_str(),
            h.timeout,
            limits.max_timeout.as_deref().unwrap_or_default()
        ));
    }
    None
}

/// Label the Deployment controller adds to each ReplicaSet's template; never in the Plugin's
/// Deployment.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// `sha256:<hex>` of a pod template as the API server stores it (defaults filled in), without
/// the Deployment controller's `pod-template-hash` label: the same for the Deployment's template
/// and the ReplicaSets the Deployment controller made from it, different for any other.
pub fn template_digest(template: &PodTemplateSpec) -> String {
    use sha2::{Digest, Sha256};
    let mut t = template.clone();
    if let Some(labels) = t.metadata.as_mut().and_then(|m| m.labels.as_mut()) {
        labels.remove(POD_TEMPLATE_HASH);
    }
    // Struct fields serialize in declaration order and maps are sorted: a stable encoding.
    let bytes = serde_json::to_vec(&t).unwrap_or_default();
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trust::{BundleKey, ImageKey, ImageSigner};
    use airlock_crds::Permission;

    fn bundle_key(seed: u8, level: TrustLevel, revoked: bool) -> BundleKey {
        let key = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]).verifying_key();
        BundleKey {
            name: format!("policy/k{seed}"),
            level,
            revoked,
            key,
        }
    }

    fn image_key(n: u8, level: TrustLevel, revoked: bool) -> ImageKey {
        ImageKey {
            name: format!("policy/c{n}"),
            level,
            revoked,
            signer: ImageSigner::Key(format!(
                "-----BEGIN PUBLIC KEY-----\nAAAA{n}\n-----END PUBLIC KEY-----"
            )),
        }
    }

    fn keys(bundle: Vec<BundleKey>, image: Vec<ImageKey>) -> TrustedKeys {
        TrustedKeys {
            bundle,
            image,
            problems: Vec::new(),
        }
    }

    fn record(b: &BundleKey, i: &ImageKey) -> RevisionRecord {
        RevisionRecord {
            revision: "r1".into(),
            bundle_signer: Some(b.fingerprint()),
            image_signer: Some(i.fingerprint()),
            trust_level: Some("Trusted".into()),
            permissions: vec![Permission::Log, Permission::StorageWrite],
            egress: vec!["203.0.113.0/24".into()],
            cpu_limit: Some("250m".into()),
            memory_limit: Some("64Mi".into()),
            concurrency: Some(4),
            hooks: vec![
                serde_json::from_value(serde_json::json!({"name": "transform", "timeout": "2s"}))
                    .expect("hook"),
            ],
            template_digest: None,
            bundle_digest: None,
            plugin_api_version: None,
        }
    }

    fn open() -> Limits {
        Limits {
            permissions: Permission::ALL.iter().copied().collect(),
            ..Default::default()
        }
    }

    /// A Trusted bundle key and image key, and the trusted keys listing just them.
    fn trusted() -> (BundleKey, ImageKey, TrustedKeys) {
        let (b, i) = (
            bundle_key(1, TrustLevel::Trusted, false),
            image_key(1, TrustLevel::Trusted, false),
        );
        let ks = keys(vec![b.clone()], vec![i.clone()]);
        (b, i, ks)
    }

    fn all_levels(_: TrustLevel) -> Option<Limits> {
        Some(open())
    }

    #[test]
    fn a_revision_signed_by_trusted_keys_within_its_limits_keeps_running() {
        let (b, i, ks) = trusted();
        assert_eq!(check(&record(&b, &i), &ks, all_levels, &[]), None);
    }

    #[test]
    fn a_revoked_bundle_or_image_key_quarantines_the_running_revision() {
        let (b, i) = (
            bundle_key(1, TrustLevel::Trusted, false),
            image_key(1, TrustLevel::Trusted, false),
        );
        let rec = record(&b, &i);
        let revoked_bundle = keys(
            vec![bundle_key(1, TrustLevel::Untrusted, true)],
            vec![i.clone()],
        );
        let stop = check(&rec, &revoked_bundle, all_levels, &[]).expect("stopped");
        assert_eq!(stop.reason, KEY_REVOKED);
        assert!(stop.message.contains("policy/k1"), "{}", stop.message);
        let revoked_image = keys(
            vec![b.clone()],
            vec![image_key(1, TrustLevel::Untrusted, true)],
        );
        let stop = check(&rec, &revoked_image, all_levels, &[]).expect("stopped");
        assert_eq!(stop.reason, KEY_REVOKED);
    }

    #[test]
    fn a_key_no_policy_lists_any_more_stops_the_revision() {
        let (b, i) = (
            bundle_key(1, TrustLevel::Trusted, false),
            image_key(1, TrustLevel::Trusted, false),
        );
        // The same name, other material: keys are identified by what they are.
        let ks = keys(
            vec![bundle_key(2, TrustLevel::Trusted, false)],
            vec![i.clone()],
        );
        let stop = check(&record(&b, &i), &ks, all_levels, &[]).expect("stopped");
        assert_eq!(stop.reason, NO_LONGER_ALLOWED);
        assert!(stop.message.contains(&b.fingerprint()), "{}", stop.message);
    }

    /// A recorded limit the parser cannot read (beyond u64 here) is not waved through: under a
    /// cap it counts as above it. Without a cap nothing is compared.
    #[test]
    fn a_limit_that_does_not_parse_counts_as_above_the_cap() {
        let (b, i, ks) = trusted();
        let mut rec = record(&b, &i);
        rec.memory_limit = Some("16Ei".into());
        assert_eq!(check(&rec, &ks, all_levels, &[]), None, "no cap");
        let capped = |_: TrustLevel| {
            let mut l = open();
            l.max_memory_bytes = Some(1 << 30);
            l.max_memory = Some("1Gi".into());
            Some(l)
        };
        let stop = check(&rec, &ks, capped, &[]).expect("stopped");
        assert!(
            stop.message.contains("memory limit 16Ei"),
            "{}",
            stop.message
        );
        rec.memory_limit = Some("64Mi".into());
        assert_eq!(check(&rec, &ks, capped, &[]), None, "64Mi is within 1Gi");
    }

    #[test]
    fn a_tightened_policy_stops_what_it_no_longer_allows() {
        let (b, i, ks) = trusted();
        let rec = record(&b, &i);
        let no_write = |_: TrustLevel| {
            let mut l = open();
            l.permissions.remove(&Permission::StorageWrite);
            Some(l)
        };
        let stop = check(&rec, &ks, no_write, &[]).expect("stopped");
        assert!(stop.message.contains("storage:write"), "{}", stop.message);
        let small = |_: TrustLevel| {
            let mut l = open();
            l.max_memory_bytes = Some(32 * 1024 * 1024);
            l.max_memory = Some("32Mi".into());
            Some(l)
        };
        let stop = check(&rec, &ks, small, &[]).expect("stopped");
        assert!(stop.message.contains("maxMemory 32Mi"), "{}", stop.message);
        let short = |_: TrustLevel| {
            let mut l = open();
            l.max_timeout_ms = Some(1000);
            l.max_timeout = Some("1s".into());
            Some(l)
        };
        let stop = check(&rec, &ks, short, &[]).expect("stopped");
        assert!(
            stop.message.contains("hook transform has timeout 2s")
                && stop.message.contains("maxTimeout 1s"),
            "{}",
            stop.message
        );
        let fewer = |_: TrustLevel| {
            let mut l = open();
            l.max_concurrency = Some(2);
            Some(l)
        };
        let stop = check(&rec, &ks, fewer, &[]).expect("stopped");
        assert!(
            stop.message.contains("concurrency 4") && stop.message.contains("maxConcurrency 2"),
            "{}",
            stop.message
        );
        let narrow_egress = |_: TrustLevel| {
            let mut l = open();
            l.egress_within = vec![("p".into(), vec!["198.51.100.0/24".parse().expect("net")])];
            Some(l)
        };
        assert!(check(&rec, &ks, narrow_egress, &[]).is_some());
        assert!(
            check(
                &rec,
                &ks,
                all_levels,
                &["203.0.0.0/8".parse().expect("net")]
            )
            .is_some(),
            "a range that became the cluster's own is refused"
        );
        let stop = check(&rec, &ks, |_| None, &[]).expect("stopped");
        assert!(
            stop.message.contains("no PluginTrustPolicy"),
            "{}",
            stop.message
        );
    }

    #[test]
    fn a_lowered_key_level_is_judged_at_the_new_level() {
        let (b, i) = (
            bundle_key(1, TrustLevel::Trusted, false),
            image_key(1, TrustLevel::Trusted, false),
        );
        let rec = record(&b, &i);
        let lowered = keys(
            vec![bundle_key(1, TrustLevel::Untrusted, false)],
            vec![i.clone()],
        );
        let only_trusted_writes = |level: TrustLevel| {
            let mut l = open();
            if level != TrustLevel::Trusted {
                l.permissions.remove(&Permission::StorageWrite);
            }
            Some(l)
        };
        let stop = check(&rec, &lowered, only_trusted_writes, &[]).expect("stopped");
        assert!(stop.message.contains("Untrusted"), "{}", stop.message);
    }

    #[test]
    fn an_unsigned_revision_stops_when_unsigned_plugins_are_no_longer_allowed() {
        let rec = RevisionRecord {
            revision: "r2".into(),
            ..Default::default()
        };
        let ks = keys(Vec::new(), Vec::new());
        let unsigned_ok = |_: TrustLevel| {
            Some(Limits {
                allow_unsigned: true,
                ..open()
            })
        };
        assert_eq!(check(&rec, &ks, unsigned_ok, &[]), None);
        let stop = check(&rec, &ks, all_levels, &[]).expect("stopped");
        assert!(stop.message.contains("unsigned"), "{}", stop.message);
    }

    #[test]
    fn a_template_digest_ignores_only_the_deployment_controllers_label() {
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"airlock.dev/plugin": "p"}},
            "spec": {"containers": [{"name": "shim", "image": "i@sha256:1"}]}
        }))
        .expect("template");
        let mut in_rs = t.clone();
        in_rs
            .metadata
            .as_mut()
            .and_then(|m| m.labels.as_mut())
            .expect("labels")
            .insert(POD_TEMPLATE_HASH.into(), "5d8f7".into());
        assert_eq!(template_digest(&t), template_digest(&in_rs));
        let mut other = t.clone();
        other.spec.as_mut().expect("spec").containers[0].command =
            Some(vec!["/bin/sh".into(), "-c".into(), "echo HIJACKED".into()]);
        assert_ne!(template_digest(&t), template_digest(&other));
    }
}
