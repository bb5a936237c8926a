//! Properties of the trust-policy merge (`policy::limits`), over arbitrary sets of policies:
//! "the most restrictive answer wins" stated as laws rather than examples (issue 16). A policy set
//! is 1–4 policies, each configuring any subset of the trust levels with arbitrary caps —
//! including spellings that do not parse, which must never widen anything.

// Helpers outside `#[test]` functions build fixtures; a failed expectation is a failed test.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;

use airlock_core::shard::{SHARD_LABEL, Shard};
use airlock_crds::plugin::{AutoDisablePolicy, CrashKind};
use airlock_crds::trust_policy::{StorageLimits, TrustLevel, TrustLevelLimits};
use airlock_crds::{Permission, PluginTrustPolicy};
use airlock_operator::policy::{Limits, governing, limits};
use proptest::prelude::*;

fn quantity(good: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        proptest::sample::select(good).prop_map(|s| Some(s.to_string())),
        // Whatever a user may type: must read as 0 (nothing allowed), never as "no cap".
        "[a-z0-9.]{0,6}".prop_map(Some),
    ]
}

fn level_limits() -> impl Strategy<Value = TrustLevelLimits> {
    (
        any::<bool>(),
        quantity(&["64Mi", "128Mi", "1Gi", "1024Mi", "100M", "0"]),
        quantity(&["100m", "250m", "1", "0.5", "2"]),
        quantity(&["200ms", "2s", "1m", "0s"]),
        proptest::option::of(-2i32..70),
        proptest::sample::subsequence(Permission::ALL.to_vec(), 0..=Permission::ALL.len()),
        proptest::option::of(1u32..10_000),
        proptest::option::of((
            proptest::option::of(1u64..102_400),
            proptest::option::of(0u64..1_048_576),
            proptest::option::of(0u32..2048),
        )),
        proptest::option::of((
            proptest::option::of(1u32..10),
            proptest::option::of(1u32..10),
            proptest::option::of(proptest::sample::subsequence(
                vec![
                    CrashKind::Crash,
                    CrashKind::Oom,
                    CrashKind::Protocol,
                    CrashKind::OutputTooLarge,
                ],
                0..=4,
            )),
        )),
    )
        .prop_map(
            |(allow_unsigned, mem, cpu, timeout, conc, perms, lines, storage, auto)| {
                TrustLevelLimits {
                    allow_unsigned,
                    max_memory: mem,
                    max_cpu: cpu,
                    max_timeout: timeout,
                    max_concurrency: conc,
                    permissions: perms,
                    log_lines_per_minute: lines,
                    egress_cidrs: None,
                    storage: storage.map(|(v, b, k)| StorageLimits {
                        max_value_bytes: v,
                        max_bytes: b,
                        max_keys: k,
                    }),
                    auto_disable: auto.map(|(t, c, kinds)| AutoDisablePolicy {
                        after_timeouts: t,
                        after_crashes: c,
                        crash_kinds: kinds,
                    }),
                }
            },
        )
}

fn policy(name: usize, levels: BTreeMap<TrustLevel, TrustLevelLimits>) -> PluginTrustPolicy {
    let mut p: PluginTrustPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "airlock.dev/v1alpha1", "kind": "PluginTrustPolicy",
        "metadata": {"name": format!("p{name}")},
        "spec": {"keys": []}
    }))
    .expect("a minimal policy");
    p.spec.trust_levels = levels;
    p
}

fn policies() -> impl Strategy<Value = Vec<PluginTrustPolicy>> {
    let levels = proptest::collection::btree_map(
        proptest::sample::select(vec![
            TrustLevel::Untrusted,
            TrustLevel::Trusted,
            TrustLevel::BuiltIn,
        ]),
        level_limits(),
        0..=3,
    );
    proptest::collection::vec(levels, 1..=4).prop_map(|sets| {
        sets.into_iter()
            .enumerate()
            .map(|(i, levels)| policy(i, levels))
            .collect()
    })
}

fn level() -> impl Strategy<Value = TrustLevel> {
    proptest::sample::select(vec![
        TrustLevel::Untrusted,
        TrustLevel::Trusted,
        TrustLevel::BuiltIn,
    ])
}

/// `narrow` allows nothing `wide` does not: every flag implied, every set contained, every cap
/// that `wide` sets set at most as high.
fn at_most(narrow: &Limits, wide: &Limits) -> Result<(), TestCaseError> {
    fn cap<T: Ord + Copy + std::fmt::Debug>(
        what: &str,
        narrow: Option<T>,
        wide: Option<T>,
    ) -> Result<(), TestCaseError> {
        if let Some(w) = wide {
            prop_assert!(
                narrow.is_some_and(|n| n <= w),
                "{what}: {narrow:?} is not within {wide:?}"
            );
        }
        Ok(())
    }
    prop_assert!(
        !narrow.allow_unsigned || wide.allow_unsigned,
        "allowUnsigned widened"
    );
    prop_assert!(
        narrow.permissions.is_subset(&wide.permissions),
        "permissions widened: {:?} vs {:?}",
        narrow.permissions,
        wide.permissions
    );
    cap("maxCpu", narrow.max_cpu_millis, wide.max_cpu_millis)?;
    cap("maxMemory", narrow.max_memory_bytes, wide.max_memory_bytes)?;
    cap("maxTimeout", narrow.max_timeout_ms, wide.max_timeout_ms)?;
    cap(
        "maxConcurrency",
        narrow.max_concurrency,
        wide.max_concurrency,
    )?;
    cap(
        "logLinesPerMinute",
        narrow.log_lines_per_minute,
        wide.log_lines_per_minute,
    )?;
    cap(
        "storage.maxValueBytes",
        narrow.storage_max_value_bytes,
        wide.storage_max_value_bytes,
    )?;
    cap(
        "storage.maxBytes",
        narrow.storage_max_bytes,
        wide.storage_max_bytes,
    )?;
    cap(
        "storage.maxKeys",
        narrow.storage_max_keys,
        wide.storage_max_keys,
    )?;
    // Auto-disable: thresholds no higher, every kind counted still counted.
    let rule = |l: &Limits| l.auto_disable.clone().unwrap_or_default();
    let (n, w) = (rule(narrow), rule(wide));
    cap(
        "autoDisable.afterTimeouts",
        n.after_timeouts,
        w.after_timeouts,
    )?;
    cap("autoDisable.afterCrashes", n.after_crashes, w.after_crashes)?;
    // Kinds named by the wider are still counted (unset is no opinion, as for every cap).
    if let Some(wide_kinds) = &w.crash_kinds {
        let narrow_kinds = n.crash_kinds.clone().unwrap_or_default();
        prop_assert!(
            wide_kinds.iter().all(|k| narrow_kinds.contains(k)),
            "autoDisable.crashKinds narrowed: {narrow_kinds:?} vs {wide_kinds:?}"
        );
    }
    Ok(())
}

/// The merge of the policies as a comparable value (the caps' original spellings left out: of
/// two equal caps either spelling may be shown).
fn numbers(l: &Limits) -> impl PartialEq + std::fmt::Debug + use<> {
    (
        l.allow_unsigned,
        l.permissions.clone(),
        l.max_cpu_millis,
        l.max_memory_bytes,
        l.max_timeout_ms,
        l.max_concurrency,
        l.log_lines_per_minute,
        l.storage_max_value_bytes,
        l.storage_max_bytes,
        l.storage_max_keys,
        l.auto_disable.clone(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The merge is within what each governing policy allows on its own.
    #[test]
    fn the_merge_allows_nothing_any_one_policy_refuses(set in policies(), level in level()) {
        let all: Vec<&PluginTrustPolicy> = set.iter().collect();
        let merged = limits(&all, level).expect("governed");
        for p in &set {
            let alone = limits(&[p], level).expect("governed");
            at_most(&merged, &alone)?;
        }
    }

    /// One more governing policy never widens what a namespace may do.
    #[test]
    fn another_policy_never_widens(set in policies(), extra in policies(), level in level()) {
        let before: Vec<&PluginTrustPolicy> = set.iter().collect();
        let after: Vec<&PluginTrustPolicy> = set.iter().chain(extra.iter().take(1)).collect();
        at_most(
            &limits(&after, level).expect("governed"),
            &limits(&before, level).expect("governed"),
        )?;
    }

    /// Two releases (shards): the policies labelled for another shard never change what this
    /// release allows, however lax or strict they are (`policy::governing`), and this release's
    /// own set governs exactly as it would alone.
    #[test]
    fn another_shards_policies_never_count(set in policies(), other in policies(), level in level()) {
        let mut all = set.clone();
        for (i, mut p) in other.into_iter().enumerate() {
            p.metadata.name = Some(format!("canary-{i}"));
            p.metadata.labels = Some([(SHARD_LABEL.to_string(), "canary".to_string())].into());
            all.push(p);
        }
        let ns = BTreeMap::new();
        let mine = governing(&all, &ns, &Shard::default());
        prop_assert_eq!(mine.len(), set.len());
        let alone: Vec<&PluginTrustPolicy> = set.iter().collect();
        prop_assert_eq!(
            numbers(&limits(&mine, level).expect("governed")),
            numbers(&limits(&alone, level).expect("governed"))
        );
    }

    /// The order the policies are listed in does not matter.
    #[test]
    fn the_order_of_policies_does_not_matter(set in policies(), level in level()) {
        let forward: Vec<&PluginTrustPolicy> = set.iter().collect();
        let backward: Vec<&PluginTrustPolicy> = set.iter().rev().collect();
        prop_assert_eq!(
            numbers(&limits(&forward, level).expect("governed")),
            numbers(&limits(&backward, level).expect("governed"))
        );
    }

    /// A level that one governing policy does not configure allows nothing at all.
    #[test]
    fn a_level_one_policy_leaves_out_allows_nothing(set in policies(), level in level()) {
        let all: Vec<&PluginTrustPolicy> = set.iter().collect();
        let merged = limits(&all, level).expect("governed");
        if set.iter().any(|p| !p.spec.trust_levels.contains_key(&level)) {
            prop_assert!(!merged.allow_unsigned);
            prop_assert!(merged.permissions.is_empty());
            prop_assert_eq!(merged.max_memory_bytes, Some(0));
            prop_assert_eq!(merged.max_cpu_millis, Some(0));
            prop_assert_eq!(merged.max_timeout_ms, Some(0));
        }
    }

    /// A cap that is set, readable or not, is a cap (an unreadable one is 0), never "no cap".
    #[test]
    fn a_set_cap_never_reads_as_no_cap(limits_ in level_limits(), level in level()) {
        let p = policy(0, BTreeMap::from([(level, limits_.clone())]));
        let merged = limits(&[&p], level).expect("governed");
        if limits_.max_memory.is_some() {
            prop_assert!(merged.max_memory_bytes.is_some());
        }
        if limits_.max_cpu.is_some() {
            prop_assert!(merged.max_cpu_millis.is_some());
        }
        if limits_.max_timeout.is_some() {
            prop_assert!(merged.max_timeout_ms.is_some());
        }
    }
}

#[test]
fn no_governing_policy_is_no_answer() {
    assert!(limits(&[], TrustLevel::Untrusted).is_none());
}
