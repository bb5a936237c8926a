//! Per-plugin failure accounting, pure (time is passed in): the circuit breaker that stops
//! calling a failing plugin for a cool-down, and the auto-disable rule (N consecutive timeouts,
//! or M crashes within a window) that takes a plugin out until an admin re-enables it.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use airlock_core::failure::FailureKind;
use airlock_crds::plugin::{AutoDisablePolicy, CrashKind};

/// Thresholds; defaults from the product requirements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the breaker.
    pub open_after: u32,
    /// How long an open breaker refuses calls before letting one trial call through.
    pub cool_down: Duration,
    /// Consecutive timeouts that auto-disable the plugin.
    pub disable_after_timeouts: u32,
    /// Crashes within [`Self::crash_window`] that auto-disable the plugin.
    pub disable_after_crashes: u32,
    pub crash_window: Duration,
    /// Which failures count as crashes.
    pub crash_kinds: CrashKinds,
}

/// A set of outcomes that count toward the crash rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrashKinds {
    crash: bool,
    out_of_memory: bool,
    protocol: bool,
    output_too_large: bool,
}

impl CrashKinds {
    /// Crashes and out-of-memory kills: what counts when no trust level names kinds.
    pub const DEFAULT: Self = Self {
        crash: true,
        out_of_memory: true,
        protocol: false,
        output_too_large: false,
    };

    /// The kinds a trust level names.
    pub fn of(kinds: &[CrashKind]) -> Self {
        Self {
            crash: kinds.contains(&CrashKind::Crash),
            out_of_memory: kinds.contains(&CrashKind::Oom),
            protocol: kinds.contains(&CrashKind::Protocol),
            output_too_large: kinds.contains(&CrashKind::OutputTooLarge),
        }
    }

    fn counts(self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::Crash => self.crash,
            Outcome::OutOfMemory => self.out_of_memory,
            Outcome::Protocol => self.protocol,
            Outcome::OutputTooLarge => self.output_too_large,
            Outcome::Answered
            | Outcome::Timeout
            | Outcome::Unreachable
            | Outcome::CallerDeadline => false,
        }
    }
}

impl BreakerConfig {
    /// These settings with a plugin's trust-level rules (`status.limits.autoDisable`) in place of
    /// the router's where they say something.
    pub fn with_policy(self, policy: Option<&AutoDisablePolicy>) -> Self {
        let Some(p) = policy else {
            return self;
        };
        Self {
            disable_after_timeouts: p
                .after_timeouts
                .map_or(self.disable_after_timeouts, |n| n.max(1)),
            disable_after_crashes: p
                .after_crashes
                .map_or(self.disable_after_crashes, |n| n.max(1)),
            crash_kinds: p
                .crash_kinds
                .as_deref()
                .map_or(self.crash_kinds, CrashKinds::of),
            ..self
        }
    }
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            open_after: 5,
            cool_down: Duration::from_secs(30),
            disable_after_timeouts: 5,
            disable_after_crashes: 3,
            crash_window: Duration::from_secs(3600),
            crash_kinds: CrashKinds::DEFAULT,
        }
    }
}

/// What one call did, as far as the plugin's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (an answer with `"ok": false` is an answer: the plugin is healthy).
    Answered,
    /// Did not answer within its deadline; the shim killed and restarts it.
    Timeout,
    /// The plugin process died or could not start.
    Crash,
    /// The kernel killed the plugin process at its memory limit: a crash (it counts toward the
    /// crash rule) whose cause is known.
    OutOfMemory,
    /// Broke the protocol; the shim restarted it.
    Protocol,
    /// Answered with more than the output limit; the shim restarted it.
    OutputTooLarge,
    /// Its pods could not be reached.
    Unreachable,
    /// Ran out of the caller's own deadline, which was shorter than the hook's timeout. Says
    /// nothing about the plugin (it was not given its timeout), so it neither counts as a failure
    /// nor resets the failures counted so far: otherwise any caller could open the breaker or
    /// auto-disable a plugin with `deadline_ms: 1`, or hide a hanging plugin behind short calls.
    CallerDeadline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// The cool-down is over; one trial call is in flight or may start.
    HalfOpen {
        trial_in_flight: bool,
    },
}

/// The health of one plugin as the router sees it.
#[derive(Debug, Clone)]
pub struct Health {
    state: State,
    consecutive_failures: u32,
    consecutive_timeouts: u32,
    crashes: VecDeque<Instant>,
    /// Set once the plugin met an auto-disable rule: why.
    disabled: Option<String>,
}

impl Outcome {
    /// The kind of failure `status.health` counts it as; `None` for what says nothing about the
    /// plugin (an answer, an unreachable pod, the caller's own deadline).
    pub fn counted_kind(self) -> Option<FailureKind> {
        match self {
            Outcome::Timeout => Some(FailureKind::Timeout),
            Outcome::Crash => Some(FailureKind::Crash),
            Outcome::OutOfMemory => Some(FailureKind::OutOfMemory),
            Outcome::Protocol => Some(FailureKind::Protocol),
            Outcome::OutputTooLarge => Some(FailureKind::OutputTooLarge),
            Outcome::Answered | Outcome::Unreachable | Outcome::CallerDeadline => None,
        }
    }
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: State::Closed,
            consecutive_failures: 0,
            consecutive_timeouts: 0,
            crashes: VecDeque::new(),
            disabled: None,
        }
    }
}

/// Why a call was not let through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "its circuit breaker is open after {failures} consecutive failures; calls resume in {}s",
        .retry_in.as_secs().max(1)
    )]
    Open { failures: u32, retry_in: Duration },
    #[error("its circuit breaker is half-open and a trial call is in flight; retry shortly")]
    TrialInFlight,
    #[error("it was auto-disabled ({0})")]
    Disabled(String),
}

impl Health {
    /// Whether a call may start now. A half-open breaker lets exactly one trial through.
    pub fn admit(&mut self, now: Instant) -> Result<(), Refusal> {
        if let Some(why) = &self.disabled {
            return Err(Refusal::Disabled(why.clone()));
        }
        match self.state {
            State::Closed => Ok(()),
            State::Open { until } if now < until => Err(Refusal::Open {
                failures: self.consecutive_failures,
                retry_in: until - now,
            }),
            State::Open { .. }
            | State::HalfOpen {
                trial_in_flight: false,
            } => {
                self.state = State::HalfOpen {
                    trial_in_flight: true,
                };
                Ok(())
            }
            State::HalfOpen {
                trial_in_flight: true,
            } => Err(Refusal::TrialInFlight),
        }
    }

    /// Records a finished call. Returns the reason the first time an auto-disable rule is met.
    pub fn record(
        &mut self,
        outcome: Outcome,
        now: Instant,
        cfg: &BreakerConfig,
    ) -> Option<String> {
        if outcome == Outcome::CallerDeadline {
            // A trial call cut short by its caller proved nothing: the next call may try again.
            self.release_trial();
            return None;
        }
        if outcome == Outcome::Answered {
            self.consecutive_failures = 0;
            self.consecutive_timeouts = 0;
            self.state = State::Closed;
            return None;
        }
        self.consecutive_failures += 1;
        self.consecutive_timeouts = if outcome == Outcome::Timeout {
            self.consecutive_timeouts + 1
        } else {
            0
        };
        if cfg.crash_kinds.counts(outcome) {
            self.crashes.push_back(now);
        }
        while self
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > cfg.crash_window)
        {
            self.crashes.pop_front();
        }
        let trial_failed = matches!(self.state, State::HalfOpen { .. });
        if trial_failed || self.consecutive_failures >= cfg.open_after {
            self.state = State::Open {
                until: now + cfg.cool_down,
            };
        }
        if self.disabled.is_some() {
            return None;
        }
        let why = if self.consecutive_timeouts >= cfg.disable_after_timeouts {
            format!("{} consecutive timeouts", self.consecutive_timeouts)
        } else if self.crashes.len() >= cfg.disable_after_crashes as usize {
            format!(
                "{} crashes within {} minutes",
                self.crashes.len(),
                cfg.crash_window.as_secs() / 60
            )
        } else {
            return None;
        };
        self.disabled = Some(why.clone());
        Some(why)
    }

    /// A call that was admitted but never made (e.g. its concurrency slot was taken) gives its
    /// trial back.
    pub fn release_trial(&mut self) {
        if let State::HalfOpen { trial_in_flight } = &mut self.state {
            *trial_in_flight = false;
        }
    }

    /// "closed", "open" or "half-open", for the API and metrics.
    pub fn state_name(&self, now: Instant) -> &'static str {
        match self.state {
            State::Closed => "closed",
            State::Open { until } if now < until => "open",
            State::Open { .. } | State::HalfOpen { .. } => "half-open",
        }
    }

    /// Failed calls in a row (an answer resets it).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Whether an auto-disable rule was met.
    pub fn disabled(&self) -> Option<&str> {
        self.disabled.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: BreakerConfig = BreakerConfig {
        open_after: 3,
        cool_down: Duration::from_secs(30),
        disable_after_timeouts: 5,
        disable_after_crashes: 3,
        crash_window: Duration::from_secs(3600),
        crash_kinds: CrashKinds::DEFAULT,
    };

    /// A new plugin's health, and the time it starts at.
    fn fresh() -> (Health, Instant) {
        (Health::default(), Instant::now())
    }

    /// `n` calls at `now` that end in `outcome`; the auto-disable reason they gave, if any.
    fn fail(h: &mut Health, outcome: Outcome, now: Instant, n: u32) -> Option<String> {
        let mut last = None;
        for _ in 0..n {
            h.admit(now).ok();
            last = h.record(outcome, now, &CFG).or(last);
        }
        last
    }

    /// A breaker opened by three `outcome`s, once its cool-down is over with the trial call
    /// admitted; the time of the trial.
    fn in_trial(outcome: Outcome) -> (Health, Instant) {
        let (mut h, t0) = fresh();
        fail(&mut h, outcome, t0, 3);
        let later = t0 + Duration::from_secs(31);
        h.admit(later).expect("trial");
        (h, later)
    }

    #[test]
    fn the_breaker_opens_after_consecutive_failures_and_lets_one_trial_through_after_the_cool_down()
    {
        let (mut h, t0) = fresh();
        fail(&mut h, Outcome::Unreachable, t0, 3);
        assert_eq!(h.state_name(t0), "open");
        let refused = h.admit(t0 + Duration::from_secs(10)).expect_err("open");
        assert!(
            refused.to_string().contains("calls resume in 20s"),
            "{refused}"
        );

        let later = t0 + Duration::from_secs(31);
        h.admit(later).expect("trial call");
        assert_eq!(h.admit(later), Err(Refusal::TrialInFlight));
        h.record(Outcome::Answered, later, &CFG);
        assert_eq!(h.state_name(later), "closed");
        h.admit(later).expect("closed again");
    }

    #[test]
    fn a_failed_trial_opens_the_breaker_again() {
        let (mut h, later) = in_trial(Outcome::Protocol);
        h.record(Outcome::Protocol, later, &CFG);
        assert_eq!(h.state_name(later), "open");
    }

    #[test]
    fn a_plugin_error_answer_is_not_a_failure() {
        let (mut h, t0) = fresh();
        fail(&mut h, Outcome::Unreachable, t0, 2);
        h.record(Outcome::Answered, t0, &CFG);
        fail(&mut h, Outcome::Unreachable, t0, 2);
        assert_eq!(h.state_name(t0), "closed");
    }

    #[test]
    fn five_consecutive_timeouts_auto_disable_once() {
        let (mut h, t0) = fresh();
        assert_eq!(fail(&mut h, Outcome::Timeout, t0, 4), None);
        assert_eq!(
            h.record(Outcome::Timeout, t0, &CFG).as_deref(),
            Some("5 consecutive timeouts")
        );
        assert_eq!(h.record(Outcome::Timeout, t0, &CFG), None, "reported once");
        assert!(matches!(h.admit(t0), Err(Refusal::Disabled(_))));
    }

    #[test]
    fn timeouts_interrupted_by_an_answer_do_not_count_as_consecutive() {
        let (mut h, t0) = fresh();
        fail(&mut h, Outcome::Timeout, t0, 4);
        h.record(Outcome::Answered, t0, &CFG);
        assert_eq!(fail(&mut h, Outcome::Timeout, t0, 4), None);
    }

    #[test]
    fn running_out_of_the_callers_deadline_neither_counts_nor_forgives() {
        let (mut h, t0) = fresh();
        assert_eq!(fail(&mut h, Outcome::CallerDeadline, t0, 20), None);
        assert_eq!(h.state_name(t0), "closed");
        h.admit(t0).expect("never opened");
        // Four real timeouts, short calls in between, one more real timeout: five consecutive.
        fail(&mut h, Outcome::Timeout, t0, 2);
        fail(&mut h, Outcome::CallerDeadline, t0, 3);
        fail(&mut h, Outcome::Timeout, t0, 2);
        assert_eq!(
            h.record(Outcome::Timeout, t0, &CFG).as_deref(),
            Some("5 consecutive timeouts")
        );
    }

    #[test]
    fn a_trial_cut_short_by_its_caller_lets_the_next_call_try() {
        let (mut h, later) = in_trial(Outcome::Unreachable);
        h.record(Outcome::CallerDeadline, later, &CFG);
        h.admit(later).expect("another trial, not TrialInFlight");
    }

    #[test]
    fn three_crashes_within_the_hour_auto_disable_but_older_ones_are_forgotten() {
        let (mut h, t0) = fresh();
        h.record(Outcome::Crash, t0, &CFG);
        h.record(Outcome::Answered, t0, &CFG);
        h.record(Outcome::Crash, t0 + Duration::from_secs(60), &CFG);
        // Two hours later the first two are out of the window.
        let late = t0 + Duration::from_secs(7200);
        assert_eq!(h.record(Outcome::Crash, late, &CFG), None);
        assert_eq!(h.record(Outcome::Crash, late, &CFG), None);
        assert_eq!(
            h.record(Outcome::Crash, late, &CFG).as_deref(),
            Some("3 crashes within 60 minutes")
        );
    }

    #[test]
    fn out_of_memory_kills_count_as_crashes() {
        let (mut h, t0) = fresh();
        h.record(Outcome::OutOfMemory, t0, &CFG);
        h.record(Outcome::Answered, t0, &CFG);
        h.record(Outcome::Crash, t0, &CFG);
        assert_eq!(
            h.record(Outcome::OutOfMemory, t0, &CFG).as_deref(),
            Some("3 crashes within 60 minutes")
        );
        assert_eq!(
            Outcome::OutOfMemory.counted_kind(),
            Some(FailureKind::OutOfMemory)
        );
        assert_eq!(Outcome::CallerDeadline.counted_kind(), None);
        assert_eq!(Outcome::Unreachable.counted_kind(), None);
    }

    /// Issue 17: a trust level decides which failures count as crashes and the thresholds; what
    /// it leaves unset stays the router's.
    #[test]
    fn a_trust_levels_rules_replace_the_routers_where_they_say_something() {
        let policy = AutoDisablePolicy {
            after_timeouts: None,
            after_crashes: Some(2),
            crash_kinds: Some(vec![CrashKind::Protocol]),
        };
        let cfg = CFG.with_policy(Some(&policy));
        assert_eq!(
            (cfg.disable_after_timeouts, cfg.disable_after_crashes),
            (5, 2)
        );
        let (mut h, t0) = fresh();
        // Crashes no longer count; protocol breaks do.
        for _ in 0..3 {
            assert_eq!(h.record(Outcome::Crash, t0, &cfg), None);
        }
        assert_eq!(h.record(Outcome::Protocol, t0, &cfg), None);
        assert_eq!(
            h.record(Outcome::Protocol, t0, &cfg).as_deref(),
            Some("2 crashes within 60 minutes")
        );
        assert_eq!(CFG.with_policy(None), CFG);
    }
}
