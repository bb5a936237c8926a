//! `status.health`: the failures of a plugin's calls, counted by kind, as the routers saw them.
//!
//! Failures are rare and calls are many, so nothing here is on the path of an answered call:
//! the dispatcher tells the [`Ledger`] of each counted failure (and of the first answer after
//! failures), and a flush every [`REPORT_EVERY`] writes what piled up since, one conditional
//! status write per plugin that had any. Each router replica adds its own counts to what the
//! Plugin's status already says (a write conditional on the resourceVersion it read, retried on a
//! conflict), so replicas add up instead of overwriting each other, and a failed write keeps its
//! counts for the next flush.
//!
//! An out-of-memory kill also gets a Warning Event (`OutOfMemory`) that names the memory limit as
//! the shim read it: the fix (a higher `spec.resources.limits.memory`, or a plugin that uses less)
//! is the user's, and the Event is where `kubectl describe` shows it.
//!
//! Limits of the record: `consecutiveFailures` is the count of the replica that reported last (a
//! replica that saw no failure reports nothing); a stopping router writes its last counts (for
//! up to 5 s), one killed without its grace period loses up to 10 s of them; a write whose answer was lost (the API server stored it, the router saw an error) is
//! counted again at the next flush.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use airlock_core::PluginKey;
use airlock_core::failure::FailureKind;
use airlock_crds::plugin::{FailureCounts, LastFailure, PluginHealth};

/// How often pending counts are written.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Longest failure message kept in `status.health.lastFailure` (the CRD's limit).
pub const MAX_MESSAGE_CHARS: usize = 1024;

/// What one call told about a plugin's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    /// A counted failure; `consecutive` is the plugin's consecutive failures after it, as this
    /// replica counts them.
    Failed {
        kind: FailureKind,
        message: String,
        consecutive: u32,
    },
    /// The first answer after failures: the consecutive count is 0 again.
    Recovered,
    /// A host call refused for a permission the plugin does not hold (counted as `denied`; not a
    /// failed call, so the consecutive count stays).
    Denied { message: String },
}

/// What one plugin's status should learn at the next flush.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Pending {
    /// The Plugin object the failures were of: a Plugin re-created under the same name is
    /// another plugin and gets none of them.
    pub uid: String,
    /// Failures to add, by kind.
    pub added: FailureCounts,
    /// This replica's consecutive failures now.
    pub consecutive: u32,
    /// The latest failure.
    pub last: Option<LastFailure>,
    /// The latest out-of-memory message (it names the limit), for the Event.
    pub out_of_memory: Option<String>,
}

/// The counts waiting for the next flush, per plugin.
#[derive(Debug, Default)]
pub struct Ledger {
    pending: Mutex<HashMap<PluginKey, Pending>>,
}

impl Ledger {
    /// Notes `change` of the plugin `key` (Plugin object `uid`) at `time` (RFC 3339).
    pub fn note(&self, key: &PluginKey, uid: &str, change: HealthChange, time: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let entry = pending.entry(key.clone()).or_default();
        if entry.uid != uid {
            *entry = Pending {
                uid: uid.to_string(),
                ..Default::default()
            };
        }
        let (kind, message) = match change {
            HealthChange::Recovered => {
                entry.consecutive = 0;
                return;
            }
            HealthChange::Denied { message } => {
                entry.added.denied = entry.added.denied.saturating_add(1);
                ("denied", message)
            }
            HealthChange::Failed {
                kind,
                message,
                consecutive,
            } => {
                // What says nothing about the plugin is not its failure.
                let Some(count) = count_of(&mut entry.added, kind) else {
                    return;
                };
                *count = count.saturating_add(1);
                entry.consecutive = consecutive;
                if kind == FailureKind::OutOfMemory {
                    entry.out_of_memory = Some(clean(&message));
                }
                (count_name(kind), message)
            }
        };
        entry.last = Some(LastFailure {
            kind: kind.to_string(),
            message: clean(&message),
            time: time.to_string(),
        });
    }

    /// Everything pending, leaving nothing.
    pub fn take(&self) -> HashMap<PluginKey, Pending> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts back what a flush could not write; anything noted since is newer and wins where the
    /// two cannot be added (the consecutive count, the last failure).
    pub fn put_back(&self, key: PluginKey, unwritten: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match pending.remove(&key) {
            None => {
                pending.insert(key, unwritten);
            }
            Some(newer) if newer.uid != unwritten.uid => {
                pending.insert(key, newer);
            }
            Some(newer) => {
                let mut added = unwritten.added;
                add(&mut added, &newer.added);
                pending.insert(
                    key,
                    Pending {
                        added,
                        last: newer.last.or(unwritten.last),
                        out_of_memory: newer.out_of_memory.or(unwritten.out_of_memory),
                        ..newer
                    },
                );
            }
        }
    }
}

/// The shim's message can carry the plugin's own text (an onLoad error, the id it answered with):
/// cut to what the CRD takes, and no control characters (terminal escapes, line breaks) reach the
/// status that `kubectl` and dashboards print.
fn clean(message: &str) -> String {
    message
        .chars()
        .take(MAX_MESSAGE_CHARS)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The name of a counted kind in `status.health` (its field in `failures`).
fn count_name(kind: FailureKind) -> &'static str {
    match kind {
        FailureKind::OutOfMemory => "oom",
        FailureKind::OutputTooLarge => "outputTooLarge",
        other => other.as_str(),
    }
}

/// The counter of `kind` in `counts`; `None` for the kinds that are not counted.
fn count_of(counts: &mut FailureCounts, kind: FailureKind) -> Option<&mut u64> {
    match kind {
        FailureKind::Timeout => Some(&mut counts.timeout),
        FailureKind::Crash => Some(&mut counts.crash),
        FailureKind::OutOfMemory => Some(&mut counts.oom),
        FailureKind::OutputTooLarge => Some(&mut counts.output_too_large),
        FailureKind::Protocol => Some(&mut counts.protocol),
        FailureKind::QueueTimeout | FailureKind::Backoff | FailureKind::PluginError => None,
    }
}

fn add(to: &mut FailureCounts, more: &FailureCounts) {
    to.timeout = to.timeout.saturating_add(more.timeout);
    to.crash = to.crash.saturating_add(more.crash);
    to.oom = to.oom.saturating_add(more.oom);
    to.output_too_large = to.output_too_large.saturating_add(more.output_too_large);
    to.protocol = to.protocol.saturating_add(more.protocol);
    to.denied = to.denied.saturating_add(more.denied);
}

/// `status.health` once `pending` is added to what it says now (`current`).
pub fn merged(current: Option<&PluginHealth>, pending: &Pending) -> PluginHealth {
    let mut health = current.cloned().unwrap_or_default();
    add(&mut health.failures, &pending.added);
    health.consecutive_failures = pending.consecutive;
    if let Some(last) = &pending.last {
        health.last_failure = Some(last.clone());
    }
    health
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> PluginKey {
        PluginKey::new("team-a", "p")
    }

    fn failed(kind: FailureKind, consecutive: u32) -> HealthChange {
        HealthChange::Failed {
            kind,
            message: format!("{} failed", kind.as_str()),
            consecutive,
        }
    }

    #[test]
    fn failures_are_counted_by_kind_and_added_to_what_the_status_says() {
        let ledger = Ledger::default();
        ledger.note(&key(), "u1", failed(FailureKind::Timeout, 1), "t1");
        ledger.note(&key(), "u1", failed(FailureKind::OutOfMemory, 2), "t2");
        ledger.note(&key(), "u1", failed(FailureKind::Crash, 3), "t3");
        // What says nothing about the plugin is not counted.
        ledger.note(&key(), "u1", failed(FailureKind::PluginError, 3), "t4");
        let pending = ledger.take().remove(&key()).unwrap();
        assert!(ledger.take().is_empty(), "taken once");
        let before = PluginHealth {
            consecutive_failures: 0,
            failures: FailureCounts {
                timeout: 4,
                oom: 1,
                ..Default::default()
            },
            last_failure: None,
        };
        let after = merged(Some(&before), &pending);
        assert_eq!(
            after.failures,
            FailureCounts {
                timeout: 5,
                crash: 1,
                oom: 2,
                ..Default::default()
            }
        );
        assert_eq!(after.consecutive_failures, 3);
        assert_eq!(after.last_failure.unwrap().kind, "crash");
        assert_eq!(pending.out_of_memory.as_deref(), Some("oom failed"));
    }

    #[test]
    fn an_answer_after_failures_resets_the_consecutive_count_but_not_the_totals() {
        let ledger = Ledger::default();
        ledger.note(&key(), "u1", failed(FailureKind::Timeout, 1), "t1");
        ledger.note(&key(), "u1", HealthChange::Recovered, "t2");
        let pending = ledger.take().remove(&key()).unwrap();
        let after = merged(None, &pending);
        assert_eq!((after.consecutive_failures, after.failures.timeout), (0, 1));
        assert_eq!(after.last_failure.unwrap().time, "t1");
    }

    #[test]
    fn an_unwritten_flush_is_kept_and_a_re_created_plugin_inherits_nothing() {
        let ledger = Ledger::default();
        ledger.note(&key(), "u1", failed(FailureKind::Timeout, 1), "t1");
        let unwritten = ledger.take().remove(&key()).unwrap();
        ledger.note(&key(), "u1", failed(FailureKind::Crash, 2), "t2");
        ledger.put_back(key(), unwritten.clone());
        let pending = ledger.take().remove(&key()).unwrap();
        assert_eq!((pending.added.timeout, pending.added.crash), (1, 1));
        assert_eq!(pending.consecutive, 2, "the newer count wins");
        assert_eq!(pending.last.unwrap().time, "t2");

        // The Plugin was deleted and created again meanwhile: the old failures are not its own.
        ledger.note(&key(), "u2", failed(FailureKind::Protocol, 1), "t3");
        ledger.put_back(key(), unwritten);
        let pending = ledger.take().remove(&key()).unwrap();
        assert_eq!(pending.uid, "u2");
        assert_eq!((pending.added.timeout, pending.added.protocol), (0, 1));
    }

    #[test]
    fn a_refused_host_call_is_counted_as_denied_and_named_as_in_the_counts() {
        let ledger = Ledger::default();
        ledger.note(&key(), "u1", failed(FailureKind::OutputTooLarge, 2), "t1");
        let denied = HealthChange::Denied {
            message: "storage.put needs storage:write".into(),
        };
        ledger.note(&key(), "u1", denied, "t2");
        let pending = ledger.take().remove(&key()).unwrap();
        assert_eq!(
            (pending.added.denied, pending.added.output_too_large),
            (1, 1)
        );
        assert_eq!(pending.consecutive, 2, "a refusal is not a failed call");
        let last = pending.last.unwrap();
        assert_eq!((last.kind.as_str(), last.time.as_str()), ("denied", "t2"));
        let mut l = Ledger::default();
        l.note(&key(), "u1", failed(FailureKind::OutputTooLarge, 1), "t1");
        assert_eq!(
            l.pending.get_mut().unwrap()[&key()]
                .last
                .as_ref()
                .unwrap()
                .kind,
            "outputTooLarge",
            "lastFailure.kind is the name of the count"
        );
    }

    #[test]
    fn control_characters_of_the_plugins_text_never_reach_the_status() {
        let ledger = Ledger::default();
        let change = HealthChange::Failed {
            kind: FailureKind::Crash,
            message: "onLoad failed: \u{1b}[2J\u{1b}]0;owned\u{7}\nfake line".to_string(),
            consecutive: 1,
        };
        ledger.note(&key(), "u1", change, "t1");
        let message = ledger.take().remove(&key()).unwrap().last.unwrap().message;
        assert!(!message.chars().any(char::is_control), "{message:?}");
        assert!(message.contains("fake line"));
    }

    #[test]
    fn a_long_message_is_cut_to_what_the_crd_takes() {
        let ledger = Ledger::default();
        let change = HealthChange::Failed {
            kind: FailureKind::Protocol,
            message: "é".repeat(5000),
            consecutive: 1,
        };
        ledger.note(&key(), "u1", change, "t1");
        let pending = ledger.take().remove(&key()).unwrap();
        assert_eq!(
            pending.last.unwrap().message.chars().count(),
            MAX_MESSAGE_CHARS
        );
    }
}
