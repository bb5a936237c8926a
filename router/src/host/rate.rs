//! How often a plugin may write: storage writes (`put`, `delete`) and `emit`, per plugin and per
//! router replica, as token buckets refilled continuously ([`LineBudget`], the limiter of log
//! lines). Without it one plugin could rewrite its `PluginStorage` object (up to its storage
//! limit, about a megabyte each time) as fast as the API server takes it, or flood the event
//! stream, at the cost of every other tenant of the cluster.

use std::collections::BTreeMap;
use std::time::Instant;

use airlock_core::PluginKey;
use airlock_core::rate::LineBudget;

use crate::host::HostCall;

/// Storage writes (put and delete together) a plugin may make a minute, per router replica.
pub const DEFAULT_STORAGE_WRITES_PER_MINUTE: u32 = 300;
/// Events a plugin may emit a minute, per router replica.
pub const DEFAULT_EMITS_PER_MINUTE: u32 = 600;

/// A call over its plugin's rate: RESOURCE_EXHAUSTED with this message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{plugin} made more than {per_minute} {what} a minute on this router replica; {call} is refused until the rate drops (write less often: batch values into one key, events into one)"
)]
pub struct OverRate {
    pub plugin: String,
    pub call: &'static str,
    pub what: &'static str,
    pub per_minute: u32,
}

/// The two budgets of every plugin.
#[derive(Debug)]
pub struct WriteRates {
    storage_writes_per_minute: u32,
    emits_per_minute: u32,
    buckets: BTreeMap<(PluginKey, Kind), LineBudget>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    StorageWrite,
    Emit,
}

impl Default for WriteRates {
    fn default() -> Self {
        Self::new(DEFAULT_STORAGE_WRITES_PER_MINUTE, DEFAULT_EMITS_PER_MINUTE)
    }
}

impl WriteRates {
    pub fn new(storage_writes_per_minute: u32, emits_per_minute: u32) -> Self {
        Self {
            storage_writes_per_minute: storage_writes_per_minute.max(1),
            emits_per_minute: emits_per_minute.max(1),
            buckets: BTreeMap::new(),
        }
    }

    /// Takes one `call` of `plugin` at `now`, or says it is over its rate. Reads and logs are
    /// not counted here (logs have their own limiter).
    pub fn admit(
        &mut self,
        plugin: &PluginKey,
        call: HostCall,
        now: Instant,
    ) -> Result<(), OverRate> {
        let (kind, per_minute, what) = match call {
            HostCall::Put | HostCall::Delete => (
                Kind::StorageWrite,
                self.storage_writes_per_minute,
                "storage writes",
            ),
            HostCall::Emit => (Kind::Emit, self.emits_per_minute, "events"),
            HostCall::Log | HostCall::Get | HostCall::List | HostCall::WrittenBy => return Ok(()),
        };
        let bucket = self
            .buckets
            .entry((plugin.clone(), kind))
            .or_insert_with(|| LineBudget::new(per_minute, now));
        if bucket.take(now) {
            Ok(())
        } else {
            Err(OverRate {
                plugin: plugin.to_string(),
                call: call.as_str(),
                what,
                per_minute,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn writes_and_emits_have_their_own_budgets_per_plugin_and_refill() {
        let mut r = WriteRates::new(2, 1);
        let (a, b) = (PluginKey::new("t", "a"), PluginKey::new("t", "b"));
        let t0 = Instant::now();
        assert!(r.admit(&a, HostCall::Put, t0).is_ok());
        assert!(r.admit(&a, HostCall::Delete, t0).is_ok());
        let over = r.admit(&a, HostCall::Put, t0).expect_err("a third write");
        assert_eq!(over.per_minute, 2);
        assert!(over.to_string().contains("storage writes"), "{over}");
        // Another plugin, and another kind of call, are not affected; reads never count.
        assert!(r.admit(&b, HostCall::Put, t0).is_ok());
        assert!(r.admit(&a, HostCall::Emit, t0).is_ok());
        assert!(r.admit(&a, HostCall::Emit, t0).is_err());
        for _ in 0..100 {
            assert!(r.admit(&a, HostCall::Get, t0).is_ok());
            assert!(r.admit(&a, HostCall::List, t0).is_ok());
        }
        // Half a minute later one write is back.
        let later = t0 + Duration::from_secs(30);
        assert!(r.admit(&a, HostCall::Put, later).is_ok());
        assert!(r.admit(&a, HostCall::Put, later).is_err());
    }
}
