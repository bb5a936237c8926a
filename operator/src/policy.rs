//! Which `PluginTrustPolicy` objects govern a namespace, and what they allow at a trust level.
//!
//! Several policies may select one namespace. The most restrictive answer wins: a level allows
//! running unsigned plugins only if every selecting policy says so, permissions are the
//! intersection, and each cap is the smallest one set. A level missing from any selecting policy
//! allows nothing.

use std::collections::{BTreeMap, BTreeSet};

use airlock_crds::plugin::{AutoDisablePolicy, CrashKind};
use airlock_crds::trust_policy::{TrustLevel, TrustLevelLimits};
use airlock_crds::{Permission, PluginTrustPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use kube::ResourceExt;

use crate::quantity;
use airlock_core::shard::{SHARD_LABEL, Shard};

/// Does `selector` match `labels`? An absent selector matches everything.
pub fn selects(selector: Option<&LabelSelector>, labels: &BTreeMap<String, String>) -> bool {
    let Some(sel) = selector else { return true };
    let labels_ok = sel
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = sel.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator the API server would have rejected: select nothing (fail closed).
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// The policies of `shard` that govern a namespace with these labels. (Another release's
/// policies grant nothing here; their revocations still count: [`crate::trust`] reads every
/// policy for those.)
pub fn governing<'a>(
    policies: &'a [PluginTrustPolicy],
    namespace_labels: &BTreeMap<String, String>,
    shard: &Shard,
) -> Vec<&'a PluginTrustPolicy> {
    policies
        .iter()
        .filter(|p| in_shard(p, shard))
        .filter(|p| selects(p.spec.namespaces.as_ref(), namespace_labels))
        .collect()
}

/// Whether `policy` is one of `shard`'s (its label `airlock.dev/shard`).
pub fn in_shard(policy: &PluginTrustPolicy, shard: &Shard) -> bool {
    shard.serves(policy.labels().get(SHARD_LABEL).map(String::as_str))
}

/// What a plugin at one trust level may have, combined over every governing policy.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Limits {
    pub allow_unsigned: bool,
    pub permissions: BTreeSet<Permission>,
    pub max_cpu_millis: Option<u64>,
    pub max_memory_bytes: Option<u64>,
    /// Original spellings, for messages.
    pub max_cpu: Option<String>,
    pub max_memory: Option<String>,
    pub max_timeout_ms: Option<u64>,
    pub max_timeout: Option<String>,
    /// Most plugin processes per pod (`spec.concurrency`).
    pub max_concurrency: Option<u32>,
    /// Runtime caps; `None` where no policy sets one (the default applies).
    pub log_lines_per_minute: Option<u32>,
    pub storage_max_value_bytes: Option<u64>,
    pub storage_max_bytes: Option<u64>,
    pub storage_max_keys: Option<u32>,
    /// Per governing policy that lists `egressCidrs` at this level: its name and networks (an
    /// entry that is not a CIDR allows nothing).
    pub egress_within: Vec<(String, Vec<ipnet::IpNet>)>,
    /// The cluster's own ranges, which no plugin may reach (from the operator's `--cluster-cidr`,
    /// added by the reconcile).
    pub cluster_cidrs: Vec<ipnet::IpNet>,
    /// When the router auto-disables the plugin; `None` where no policy says.
    pub auto_disable: Option<AutoDisablePolicy>,
}

impl Limits {
    /// The limits a plugin runs under: these caps, or the defaults where none is set.
    pub fn runtime(&self) -> airlock_crds::plugin::PluginLimits {
        let d = airlock_crds::plugin::PluginLimits::default();
        airlock_crds::plugin::PluginLimits {
            log_lines_per_minute: self.log_lines_per_minute.unwrap_or(d.log_lines_per_minute),
            storage_max_value_bytes: self
                .storage_max_value_bytes
                .unwrap_or(d.storage_max_value_bytes),
            storage_max_bytes: self.storage_max_bytes.unwrap_or(d.storage_max_bytes),
            storage_max_keys: self.storage_max_keys.unwrap_or(d.storage_max_keys),
            auto_disable: self.auto_disable.clone(),
        }
    }
}

/// Two policies' auto-disable rules as one, the strictest of each: the lower threshold, and every
/// kind either counts as a crash. Like every cap here, what a policy leaves unset is no opinion
/// (the router's setting applies only where no governing policy sets one).
fn strictest_auto_disable(
    a: Option<AutoDisablePolicy>,
    b: Option<AutoDisablePolicy>,
) -> Option<AutoDisablePolicy> {
    let (a, b) = match (a, b) {
        (Some(a), Some(b)) => (a, b),
        (x, None) | (None, x) => return x,
    };
    let crash_kinds = match (a.crash_kinds, b.crash_kinds) {
        (Some(x), Some(y)) => {
            let all: BTreeSet<CrashKind> = x.into_iter().chain(y).collect();
            Some(all.into_iter().collect())
        }
        (x, None) | (None, x) => x,
    };
    Some(AutoDisablePolicy {
        after_timeouts: min_opt(a.after_timeouts, b.after_timeouts),
        after_crashes: min_opt(a.after_crashes, b.after_crashes),
        crash_kinds,
    })
}

/// The smaller of two optional caps (unset = no cap).
fn min_opt<T: Ord>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

/// Combines the limits of `level` over `policies` (most restrictive wins). `None` when no policy
/// governs the namespace. Caps that do not parse are treated as 0, so a typo never widens access.
pub fn limits(policies: &[&PluginTrustPolicy], level: TrustLevel) -> Option<Limits> {
    let mut iter = policies.iter();
    let first = iter.next()?;
    let mut acc = one(first.spec.trust_levels.get(&level));
    for p in iter {
        let l = one(p.spec.trust_levels.get(&level));
        acc.allow_unsigned &= l.allow_unsigned;
        acc.permissions = acc
            .permissions
            .intersection(&l.permissions)
            .copied()
            .collect();
        (acc.max_cpu_millis, acc.max_cpu) =
            min_cap(acc.max_cpu_millis, acc.max_cpu, l.max_cpu_millis, l.max_cpu);
        (acc.max_memory_bytes, acc.max_memory) = min_cap(
            acc.max_memory_bytes,
            acc.max_memory,
            l.max_memory_bytes,
            l.max_memory,
        );
        (acc.max_timeout_ms, acc.max_timeout) = min_cap(
            acc.max_timeout_ms,
            acc.max_timeout,
            l.max_timeout_ms,
            l.max_timeout,
        );
        acc.max_concurrency = min_opt(acc.max_concurrency, l.max_concurrency);
        acc.log_lines_per_minute = min_opt(acc.log_lines_per_minute, l.log_lines_per_minute);
        acc.storage_max_value_bytes =
            min_opt(acc.storage_max_value_bytes, l.storage_max_value_bytes);
        acc.storage_max_bytes = min_opt(acc.storage_max_bytes, l.storage_max_bytes);
        acc.storage_max_keys = min_opt(acc.storage_max_keys, l.storage_max_keys);
        acc.auto_disable = strictest_auto_disable(acc.auto_disable.take(), l.auto_disable);
    }
    acc.egress_within = policies
        .iter()
        .filter_map(|p| {
            let listed = p.spec.trust_levels.get(&level)?.egress_cidrs.as_ref()?;
            let nets = listed.iter().filter_map(|c| c.parse().ok()).collect();
            Some((p.name_any(), nets))
        })
        .collect();
    Some(acc)
}

fn one(level: Option<&TrustLevelLimits>) -> Limits {
    let Some(l) = level else {
        // Not configured at this level: nothing allowed.
        return Limits {
            max_cpu_millis: Some(0),
            max_memory_bytes: Some(0),
            max_timeout_ms: Some(0),
            max_cpu: Some("0 (level not configured)".into()),
            max_memory: Some("0 (level not configured)".into()),
            max_timeout: Some("0 (level not configured)".into()),
            ..Default::default()
        };
    };
    Limits {
        allow_unsigned: l.allow_unsigned,
        permissions: l.permissions.iter().copied().collect(),
        max_cpu_millis: l
            .max_cpu
            .as_deref()
            .map(|v| quantity::cpu_millis(v).unwrap_or(0)),
        max_memory_bytes: l
            .max_memory
            .as_deref()
            .map(|v| quantity::memory_bytes(v).unwrap_or(0)),
        max_timeout_ms: l
            .max_timeout
            .as_deref()
            .map(|v| airlock_core::duration::duration_ms(v).unwrap_or(0)),
        max_cpu: l.max_cpu.clone(),
        max_memory: l.max_memory.clone(),
        max_timeout: l.max_timeout.clone(),
        // The schema keeps it within 1..=64; anything else caps at 1, never widens.
        max_concurrency: l
            .max_concurrency
            .map(|n| u32::try_from(n).unwrap_or(1).max(1)),
        log_lines_per_minute: l.log_lines_per_minute,
        storage_max_value_bytes: l.storage.as_ref().and_then(|s| s.max_value_bytes),
        storage_max_bytes: l.storage.as_ref().and_then(|s| s.max_bytes),
        storage_max_keys: l.storage.as_ref().and_then(|s| s.max_keys),
        // Set over all policies by `limits`, and by the reconcile.
        egress_within: Vec::new(),
        cluster_cidrs: Vec::new(),
        // Kinds as a set (sorted, once each): the merge's answer must not depend on how a
        // policy lists them.
        auto_disable: l.auto_disable.clone().map(|mut a| {
            if let Some(kinds) = &mut a.crash_kinds {
                kinds.sort();
                kinds.dedup();
            }
            a
        }),
    }
}

fn min_cap(
    a: Option<u64>,
    a_text: Option<String>,
    b: Option<u64>,
    b_text: Option<String>,
) -> (Option<u64>, Option<String>) {
    match (a, b) {
        (Some(x), Some(y)) if y < x => (b, b_text),
        (Some(_), _) => (a, a_text),
        (None, _) => (b, b_text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> PluginTrustPolicy {
        serde_yaml::from_str(yaml).expect("policy parses")
    }

    const TEAM: &str = r#"
apiVersion: airlock.dev/v1alpha1
kind: PluginTrustPolicy
metadata: {name: team}
spec:
  keys: []
  namespaces: {matchLabels: {team: a}}
  trustLevels:
    Untrusted: {allowUnsigned: true, maxMemory: 128Mi, maxTimeout: 2s, permissions: [log, storage:read]}
"#;
    const STRICT: &str = r#"
apiVersion: airlock.dev/v1alpha1
kind: PluginTrustPolicy
metadata: {name: strict}
spec:
  keys: []
  trustLevels:
    Untrusted: {allowUnsigned: false, maxMemory: 64Mi, permissions: [log]}
"#;

    #[test]
    fn a_policy_governs_only_the_namespaces_it_selects() {
        let all = [policy(TEAM)];
        let a = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let b = BTreeMap::from([("team".to_string(), "b".to_string())]);
        assert_eq!(governing(&all, &a, &Shard::default()).len(), 1);
        assert!(governing(&all, &b, &Shard::default()).is_empty());
        assert!(
            limits(
                &governing(&all, &b, &Shard::default()),
                TrustLevel::Untrusted
            )
            .is_none()
        );
    }

    /// Two releases in one cluster: each is governed only by the policies of its shard, so a
    /// canary's laxer policy grants nothing to the main release's Plugins and the other way round.
    #[test]
    fn a_policy_governs_only_for_the_release_of_its_shard() {
        let mut canary = policy(STRICT);
        canary
            .labels_mut()
            .insert(SHARD_LABEL.into(), "canary".into());
        let all = [policy(TEAM), canary];
        let a = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let main = governing(&all, &a, &Shard::default());
        assert_eq!(main.len(), 1);
        assert_eq!(main[0].name_any(), "team");
        let shard: Shard = "canary".parse().unwrap();
        let of_canary = governing(&all, &a, &shard);
        assert_eq!(of_canary.len(), 1);
        assert_eq!(of_canary[0].name_any(), "strict");
        assert!(governing(&all, &a, &"other".parse().unwrap()).is_empty());
    }

    #[test]
    fn the_most_restrictive_policy_wins() {
        let all = [policy(TEAM), policy(STRICT)];
        let a = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let l = limits(
            &governing(&all, &a, &Shard::default()),
            TrustLevel::Untrusted,
        )
        .expect("governed");
        assert!(!l.allow_unsigned);
        assert_eq!(l.permissions, BTreeSet::from([Permission::Log]));
        assert_eq!(l.max_memory_bytes, Some(64 << 20));
        assert_eq!(l.max_memory.as_deref(), Some("64Mi"));
        assert_eq!(l.max_timeout_ms, Some(2000));
    }

    /// Issue 17: auto-disable rules per trust level, the strictest of each over the governing
    /// policies, reach the plugin's runtime limits (what the router reads).
    #[test]
    fn auto_disable_rules_combine_to_the_strictest_and_reach_the_runtime_limits() {
        let strict = STRICT.replace(
            "permissions: [log]}",
            "permissions: [log], autoDisable: {afterCrashes: 1, crashKinds: [protocol]}}",
        );
        let team = TEAM.replace(
            "permissions: [log, storage:read]}",
            "permissions: [log, storage:read], autoDisable: {afterTimeouts: 2, afterCrashes: 4}}",
        );
        let a = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let only_team = [policy(&team)];
        let one = limits(
            &governing(&only_team, &a, &Shard::default()),
            TrustLevel::Untrusted,
        )
        .expect("governed");
        assert_eq!(
            one.runtime().auto_disable,
            Some(AutoDisablePolicy {
                after_timeouts: Some(2),
                after_crashes: Some(4),
                crash_kinds: None,
            })
        );
        let both = [policy(&team), policy(&strict)];
        let l = limits(
            &governing(&both, &a, &Shard::default()),
            TrustLevel::Untrusted,
        )
        .expect("governed");
        assert_eq!(
            l.runtime().auto_disable,
            Some(AutoDisablePolicy {
                after_timeouts: Some(2),
                after_crashes: Some(1),
                // Only strict names kinds.
                crash_kinds: Some(vec![CrashKind::Protocol]),
            })
        );
        // No policy says: the router's settings.
        let plain = [policy(TEAM)];
        let l = limits(
            &governing(&plain, &a, &Shard::default()),
            TrustLevel::Untrusted,
        )
        .expect("governed");
        assert_eq!(l.runtime().auto_disable, None);
    }

    #[test]
    fn a_level_no_policy_configures_allows_nothing() {
        let all = [policy(TEAM)];
        let a = BTreeMap::from([("team".to_string(), "a".to_string())]);
        let l =
            limits(&governing(&all, &a, &Shard::default()), TrustLevel::Trusted).expect("governed");
        assert!(!l.allow_unsigned);
        assert!(l.permissions.is_empty());
        assert_eq!(l.max_memory_bytes, Some(0));
    }
}
