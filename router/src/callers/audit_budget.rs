//! How many refusals of callers are written down (pure: the caller passes the time).
//!
//! Every refusal is counted in the metric; only its audit record (or, for a token the router could
//! not check, its warning line) is rate-limited, so that a flood of refused calls is not a flood of
//! audit lines. Each class of refusal has its own budget: with one budget for all, an anonymous
//! flood (free to send) used it up and a tenant's probes of other namespaces (the records an
//! auditor looks for) went unrecorded. What a budget drops is not lost without a trace: once a
//! minute at most, each class with drops gets one summary ("N denials of class X not audited").

use std::time::{Duration, Instant};

use airlock_core::rate::LineBudget;

/// Audit records per minute and replica for each audited class.
pub const AUDITED_PER_MINUTE: u32 = 1000;
/// Warning lines per minute and replica about tokens the router could not check.
pub const WARNINGS_PER_MINUTE: u32 = 10;
/// Least time between two summaries of one class.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// A class of refusal, with a budget of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// No token, or a refused one (UNAUTHENTICATED): anyone can send these.
    Unauthenticated,
    /// An authenticated caller without a grant (PERMISSION_DENIED): who probed what.
    Forbidden,
    /// An authenticated caller over its concurrency (RESOURCE_EXHAUSTED).
    Busy,
    /// The router could not check the token now (UNAVAILABLE): not the caller's doing, so a
    /// warning line, not an audit record.
    Unavailable,
}

impl Class {
    const ALL: [Self; 4] = [
        Self::Unauthenticated,
        Self::Forbidden,
        Self::Busy,
        Self::Unavailable,
    ];

    /// The `reason` of the audit records (and summaries) of this class.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Unauthenticated => "Unauthenticated",
            Self::Forbidden => "PermissionDenied",
            Self::Busy => "CallerConcurrency",
            Self::Unavailable => "TokenReviewUnavailable",
        }
    }

    /// Whether refusals of this class are audited (else logged as a warning).
    pub fn audited(self) -> bool {
        self != Self::Unavailable
    }

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug)]
struct ClassBudget {
    budget: LineBudget,
    dropped: u64,
    last_summary: Instant,
}

/// The budgets of every class.
#[derive(Debug)]
pub struct Budgets {
    classes: [ClassBudget; 4],
}

impl Budgets {
    /// Full budgets at `now`: `audited_per_minute` records for each audited class,
    /// `warnings_per_minute` warning lines.
    pub fn new(audited_per_minute: u32, warnings_per_minute: u32, now: Instant) -> Self {
        Self {
            classes: Class::ALL.map(|c| ClassBudget {
                budget: LineBudget::new(
                    if c.audited() {
                        audited_per_minute
                    } else {
                        warnings_per_minute
                    },
                    now,
                ),
                dropped: 0,
                last_summary: now,
            }),
        }
    }

    /// Whether one more refusal of `class` may be written down at `now`; if not, it is counted
    /// for the class's next summary.
    pub fn take(&mut self, class: Class, now: Instant) -> bool {
        let c = &mut self.classes[class.index()];
        let kept = c.budget.take(now);
        if !kept {
            c.dropped += 1;
        }
        kept
    }

    /// The classes due for a summary at `now` (some dropped, and none summarized for
    /// [`SUMMARY_EVERY`]) with how many each dropped; their counts start again.
    pub fn due(&mut self, now: Instant) -> Vec<(Class, u64)> {
        Class::ALL
            .into_iter()
            .filter_map(|class| {
                let c = &mut self.classes[class.index()];
                if c.dropped == 0 || now.saturating_duration_since(c.last_summary) < SUMMARY_EVERY {
                    return None;
                }
                c.last_summary = now;
                Some((class, std::mem::take(&mut c.dropped)))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_one_class_leaves_the_others_their_budget() {
        let t0 = Instant::now();
        let mut b = Budgets::new(3, 1, t0);
        let kept = (0..100)
            .filter(|_| b.take(Class::Unauthenticated, t0))
            .count();
        assert_eq!(kept, 3);
        for class in [Class::Forbidden, Class::Busy] {
            assert!(b.take(class, t0), "{class:?} has its own budget");
        }
        assert!(b.take(Class::Unavailable, t0));
        assert!(!b.take(Class::Unavailable, t0), "one warning a minute");
    }

    #[test]
    fn drops_are_summarized_once_a_minute_per_class() {
        let t0 = Instant::now();
        let mut b = Budgets::new(1, 1, t0);
        for _ in 0..5 {
            b.take(Class::Unauthenticated, t0);
        }
        b.take(Class::Forbidden, t0);
        assert!(b.due(t0).is_empty(), "not before a minute");
        let t1 = t0 + SUMMARY_EVERY;
        assert_eq!(b.due(t1), [(Class::Unauthenticated, 4)]);
        assert!(b.due(t1).is_empty(), "once");
        for _ in 0..3 {
            b.take(Class::Unauthenticated, t1);
        }
        assert!(b.due(t1 + Duration::from_secs(59)).is_empty());
        let t2 = t1 + SUMMARY_EVERY;
        // The budget refilled in the minute: the first of the three was kept.
        assert_eq!(b.due(t2), [(Class::Unauthenticated, 2)]);
    }
}
