//! Calls in flight per caller and router replica (`--max-calls-per-caller`): one authenticated
//! caller cannot take all of a replica's capacity (its plugins' concurrency slots, its memory)
//! from the others. A caller over its limit gets RESOURCE_EXHAUSTED ("busy, retry later").
//!
//! The map holds only callers with calls in flight (an entry goes with its last call), and at most
//! [`MAX_CALLERS`] of them, so its size is bounded by what the replica is doing now, not by how
//! many callers it has ever seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::CallerId;

/// Most distinct callers with calls in flight on one replica.
pub const MAX_CALLERS: usize = 10_000;

/// Why a call is refused (RESOURCE_EXHAUSTED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Busy {
    #[error(
        "{caller} already has {limit} calls in flight on this router replica, the limit per \
         caller (--max-calls-per-caller, chart value router.maxCallsPerCaller); retry when some \
         have finished"
    )]
    Caller { caller: CallerId, limit: usize },
    #[error(
        "this router replica already serves calls of {MAX_CALLERS} different callers, the most it \
         tracks; retry later"
    )]
    Callers,
}

#[derive(Debug)]
pub struct CallerLimits {
    limit: usize,
    in_flight: Mutex<HashMap<CallerId, usize>>,
}

impl CallerLimits {
    /// At most `limit` calls in flight per caller (at least one).
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit: limit.max(1),
            in_flight: Mutex::default(),
        })
    }

    /// A slot for one call of `caller`, held until the permit is dropped.
    pub fn acquire(self: &Arc<Self>, caller: &CallerId) -> Result<CallerPermit, Busy> {
        let mut in_flight = self.lock();
        let tracked = in_flight.len();
        match in_flight.get_mut(caller) {
            Some(n) if *n >= self.limit => {
                return Err(Busy::Caller {
                    caller: caller.clone(),
                    limit: self.limit,
                });
            }
            Some(n) => *n += 1,
            None if tracked >= MAX_CALLERS => return Err(Busy::Callers),
            None => {
                in_flight.insert(caller.clone(), 1);
            }
        }
        Ok(CallerPermit {
            limits: Arc::clone(self),
            caller: caller.clone(),
        })
    }

    /// Callers with calls in flight now.
    pub fn callers(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<CallerId, usize>> {
        self.in_flight.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One call's slot; dropping it (the call is over, or its caller went away) gives it back.
#[derive(Debug)]
pub struct CallerPermit {
    limits: Arc<CallerLimits>,
    caller: CallerId,
}

impl Drop for CallerPermit {
    fn drop(&mut self) {
        let mut in_flight = self.limits.lock();
        if let Some(n) = in_flight.get_mut(&self.caller) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                in_flight.remove(&self.caller);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_at_most_its_limit_and_others_are_unaffected() {
        let limits = CallerLimits::new(2);
        let (a, b) = (CallerId::new("ns", "a"), CallerId::new("ns", "b"));
        let first = limits.acquire(&a).expect("1");
        let _second = limits.acquire(&a).expect("2");
        let e = limits.acquire(&a).expect_err("3 > 2");
        assert_eq!(
            e.to_string(),
            "system:serviceaccount:ns:a already has 2 calls in flight on this router replica, the \
             limit per caller (--max-calls-per-caller, chart value router.maxCallsPerCaller); \
             retry when some have finished"
        );
        let _b = limits.acquire(&b).expect("b has its own");
        drop(first);
        let _third = limits.acquire(&a).expect("a slot came back");
    }

    #[test]
    fn an_idle_caller_leaves_no_entry() {
        let limits = CallerLimits::new(4);
        for i in 0..100 {
            let c = CallerId::new("ns", format!("sa-{i}"));
            let p = limits.acquire(&c).expect("slot");
            drop(p);
        }
        assert_eq!(limits.callers(), 0);
    }

    #[test]
    fn the_number_of_callers_tracked_is_bounded() {
        let limits = CallerLimits::new(1);
        let held: Vec<_> = (0..MAX_CALLERS)
            .map(|i| {
                limits
                    .acquire(&CallerId::new("ns", format!("sa-{i}")))
                    .expect("slot")
            })
            .collect();
        assert_eq!(
            limits
                .acquire(&CallerId::new("ns", "one-more"))
                .expect_err("full"),
            Busy::Callers
        );
        drop(held);
        limits
            .acquire(&CallerId::new("ns", "one-more"))
            .expect("room again");
    }
}
