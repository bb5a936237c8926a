//! The trust-policy merge (`airlock_operator::policy::limits`), structure-aware: the input bytes
//! are decoded into a set of 1–4 PluginTrustPolicies, each configuring any of the three trust
//! levels with any caps — known spellings, or whatever text the fuzzer makes (quantities such as
//! "1e3", "9Ei", "0x10", overflowing durations), which must never widen anything. The laws of
//! "the most restrictive answer wins" (operator/tests/policy_properties.rs states the same laws
//! over proptest's generators; here libFuzzer's coverage guides the caps' text):
//! - the merge allows nothing one policy alone refuses;
//! - another policy never widens the merge;
//! - the order of the policies does not matter, nor a policy listed twice;
//! - a cap a policy sets never reads as "no cap".
#![no_main]

use std::collections::BTreeMap;

use airlock_crds::plugin::{AutoDisablePolicy, CrashKind};
use airlock_crds::trust_policy::{StorageLimits, TrustLevel, TrustLevelLimits};
use airlock_crds::{Permission, PluginTrustPolicy};
use airlock_operator::policy::{Limits, limits};
use libfuzzer_sys::fuzz_target;

const LEVELS: [TrustLevel; 3] = [
    TrustLevel::Untrusted,
    TrustLevel::Trusted,
    TrustLevel::BuiltIn,
];

/// Reads the input a byte, a number or a short text at a time; zeros once it runs out.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.0.split_first() {
            Some((b, rest)) => {
                self.0 = rest;
                *b
            }
            None => 0,
        }
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
    fn text(&mut self) -> String {
        let n = usize::from(self.byte() % 16).min(self.0.len());
        let (text, rest) = self.0.split_at(n);
        self.0 = rest;
        String::from_utf8_lossy(text).into_owned()
    }
    /// No cap, one of `known`, or a text from the input.
    fn cap(&mut self, known: &[&str]) -> Option<String> {
        match usize::from(self.byte()) {
            0 => None,
            i if i <= known.len() => Some(known[i - 1].to_string()),
            _ => Some(self.text()),
        }
    }
    fn option_u32(&mut self) -> Option<u32> {
        (self.byte() % 2 == 1).then(|| self.u32())
    }
    fn option_u64(&mut self) -> Option<u64> {
        (self.byte() % 2 == 1).then(|| u64::from(self.u32()) * u64::from(self.byte()))
    }
}

fn level_limits(input: &mut Input) -> TrustLevelLimits {
    let flags = input.byte();
    let permissions = Permission::ALL
        .iter()
        .enumerate()
        .filter(|(i, _)| input.byte() >> (i % 8) & 1 == 1)
        .map(|(_, p)| *p)
        .collect();
    TrustLevelLimits {
        allow_unsigned: flags & 1 == 1,
        max_memory: input.cap(&["64Mi", "128Mi", "1Gi", "100M", "0", "1e3", "9Ei"]),
        max_cpu: input.cap(&["100m", "250m", "1", "0.5", "2", "0", "1e-3"]),
        max_timeout: input.cap(&["200ms", "2s", "1m", "0s", "1h", "1.5s"]),
        max_concurrency: (flags & 2 == 2).then(|| input.u32() as i32),
        permissions,
        log_lines_per_minute: input.option_u32(),
        egress_cidrs: None,
        storage: (flags & 4 == 4).then(|| StorageLimits {
            max_value_bytes: input.option_u64(),
            max_bytes: input.option_u64(),
            max_keys: input.option_u32(),
        }),
        auto_disable: (flags & 8 == 8).then(|| AutoDisablePolicy {
            after_timeouts: input.option_u32(),
            after_crashes: input.option_u32(),
            // Any list, repeats and order included.
            crash_kinds: (flags & 16 == 16).then(|| {
                (0..input.byte() % 6)
                    .map(|_| KINDS[usize::from(input.byte() % 4)])
                    .collect()
            }),
        }),
    }
}

const KINDS: [CrashKind; 4] = [
    CrashKind::Crash,
    CrashKind::Oom,
    CrashKind::Protocol,
    CrashKind::OutputTooLarge,
];

fn policy(i: usize, levels: BTreeMap<TrustLevel, TrustLevelLimits>) -> PluginTrustPolicy {
    let mut p: PluginTrustPolicy = serde_json::from_value(serde_json::json!({
        "apiVersion": "airlock.dev/v1alpha1", "kind": "PluginTrustPolicy",
        "metadata": {"name": format!("p{i}")},
        "spec": {"keys": []}
    }))
    .expect("a minimal policy");
    p.spec.trust_levels = levels;
    p
}

fn policies(input: &mut Input) -> Vec<PluginTrustPolicy> {
    let count = 1 + usize::from(input.byte() % 4);
    (0..count)
        .map(|i| {
            let configured = input.byte();
            let levels = LEVELS
                .iter()
                .enumerate()
                .filter(|(l, _)| configured >> l & 1 == 1)
                .map(|(_, level)| (*level, level_limits(input)))
                .collect();
            policy(i, levels)
        })
        .collect()
}

/// `narrow` allows nothing `wide` does not.
fn assert_at_most(narrow: &Limits, wide: &Limits, what: &str) {
    fn cap<T: Ord + Copy + std::fmt::Debug>(field: &str, what: &str, n: Option<T>, w: Option<T>) {
        if let Some(w) = w {
            assert!(
                n.is_some_and(|n| n <= w),
                "{what}: {field} {n:?} is not within {w:?}"
            );
        }
    }
    assert!(
        !narrow.allow_unsigned || wide.allow_unsigned,
        "{what}: allowUnsigned widened"
    );
    assert!(
        narrow.permissions.is_subset(&wide.permissions),
        "{what}: permissions widened: {:?} vs {:?}",
        narrow.permissions,
        wide.permissions
    );
    cap("maxCpu", what, narrow.max_cpu_millis, wide.max_cpu_millis);
    cap(
        "maxMemory",
        what,
        narrow.max_memory_bytes,
        wide.max_memory_bytes,
    );
    cap(
        "maxTimeout",
        what,
        narrow.max_timeout_ms,
        wide.max_timeout_ms,
    );
    cap(
        "maxConcurrency",
        what,
        narrow.max_concurrency,
        wide.max_concurrency,
    );
    cap(
        "logLinesPerMinute",
        what,
        narrow.log_lines_per_minute,
        wide.log_lines_per_minute,
    );
    cap(
        "storage.maxValueBytes",
        what,
        narrow.storage_max_value_bytes,
        wide.storage_max_value_bytes,
    );
    cap(
        "storage.maxBytes",
        what,
        narrow.storage_max_bytes,
        wide.storage_max_bytes,
    );
    cap(
        "storage.maxKeys",
        what,
        narrow.storage_max_keys,
        wide.storage_max_keys,
    );
    // Auto-disable: thresholds no higher, every kind the wider counts still counted.
    let (n, w) = (
        narrow.auto_disable.clone().unwrap_or_default(),
        wide.auto_disable.clone().unwrap_or_default(),
    );
    cap(
        "autoDisable.afterTimeouts",
        what,
        n.after_timeouts,
        w.after_timeouts,
    );
    cap(
        "autoDisable.afterCrashes",
        what,
        n.after_crashes,
        w.after_crashes,
    );
    if let Some(wide_kinds) = &w.crash_kinds {
        let narrow_kinds = n.crash_kinds.clone().unwrap_or_default();
        assert!(
            wide_kinds.iter().all(|k| narrow_kinds.contains(k)),
            "{what}: autoDisable.crashKinds narrowed: {narrow_kinds:?} vs {wide_kinds:?}"
        );
    }
}

/// The merge as a comparable value (of two equal caps either spelling may be kept).
fn numbers(l: &Limits) -> impl PartialEq + std::fmt::Debug + use<> {
    (
        l.allow_unsigned,
        l.permissions.clone(),
        (l.max_cpu_millis, l.max_memory_bytes, l.max_timeout_ms),
        l.max_concurrency,
        l.log_lines_per_minute,
        (
            l.storage_max_value_bytes,
            l.storage_max_bytes,
            l.storage_max_keys,
        ),
        l.auto_disable.clone(),
    )
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let level = LEVELS[usize::from(input.byte() % 3)];
    let set = policies(&mut input);
    let extra = policies(&mut input);
    let all: Vec<&PluginTrustPolicy> = set.iter().collect();
    let merged = limits(&all, level).expect("a governed namespace has limits");

    for p in &set {
        let alone = limits(&[p], level).expect("one policy");
        assert_at_most(&merged, &alone, "the merge against one policy");
        // A cap the policy sets is a cap in the merge, however it is spelled.
        if let Some(l) = p.spec.trust_levels.get(&level) {
            assert!(l.max_memory.is_none() || merged.max_memory_bytes.is_some());
            assert!(l.max_cpu.is_none() || merged.max_cpu_millis.is_some());
            assert!(l.max_timeout.is_none() || merged.max_timeout_ms.is_some());
        } else {
            // A level one policy leaves out allows nothing.
            assert!(!merged.allow_unsigned && merged.permissions.is_empty());
            assert_eq!(merged.max_memory_bytes, Some(0));
        }
    }

    let mut wider = all.clone();
    wider.extend(extra.iter());
    let with_extra = limits(&wider, level).expect("governed");
    assert_at_most(&with_extra, &merged, "another policy");

    let mut reversed = all.clone();
    reversed.reverse();
    assert_eq!(
        numbers(&limits(&reversed, level).expect("governed")),
        numbers(&merged)
    );

    let mut twice = all.clone();
    twice.push(all[0]);
    assert_eq!(
        numbers(&limits(&twice, level).expect("governed")),
        numbers(&merged)
    );
});
