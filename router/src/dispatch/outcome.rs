//! What a plugin call's result does once the call is over: whose failure it was (the plugin's, or
//! the caller's own short deadline), the invocation metric, the plugin's breaker (and through it
//! the restart, breaker-open and auto-disable bookkeeping), and the log line of a failed call.
//! Also the counting of calls refused before they were made, and the guard that gives a half-open
//! breaker's trial back when a call is abandoned before its result could be recorded.
//!
//! Kept out of [`super::Router::call_one`] so that the call path only decides and calls, and
//! every side effect of a result is in one place, in the order the breaker needs.

use std::time::Duration;

use airlock_core::Hook;
use airlock_core::PluginKey;
use tonic::Code;
use tracing::{info, warn};

use super::{Answer, CallFailure, Caller, Deadline, Router, now};
use crate::breaker::{Health, Outcome};
use crate::health_report::HealthChange;
use crate::table::Route;

impl<C: Caller> Router<C> {
    /// Counts a call refused before it reached the plugin (open breaker, concurrency limit).
    /// Only the metric: the plugin was not called, so there is no outcome for its breaker.
    pub(super) fn record_refused(&self, key: &PluginKey, hook: Hook) {
        self.metrics
            .hook_invocation(key, hook.as_str(), "refused", None);
    }

    /// Records the `result` of `call` that took `elapsed`: the invocation metric, the outcome in
    /// the plugin's breaker (which disarms `trial`: the outcome now is recorded), restarts and
    /// breaker state, and the auto-disable the breaker asks for, if any.
    pub(super) fn record(
        &self,
        call: Made<'_>,
        result: &Result<Answer, CallFailure>,
        elapsed: Duration,
        mut trial: TrialRelease<'_, C>,
    ) {
        let Made {
            route,
            hook,
            invocation_id,
            deadline,
        } = call;
        let key = &route.plugin;
        let outcome = match result {
            Ok(_) => Outcome::Answered,
            Err(f) => attribute(f, deadline),
        };
        let label = match (result, outcome) {
            (Ok(_), _) => "ok",
            (Err(_), Outcome::CallerDeadline) => "caller_deadline",
            (Err(f), _) => code_label(f.code),
        };
        self.metrics
            .hook_invocation(key, hook.as_str(), label, Some(elapsed));
        let now = now();
        // The plugin's trust level may set its own auto-disable rules.
        let rules = self.config.breaker.with_policy(route.auto_disable.as_ref());
        let (disabled, state) = self.health_of(key, |h| {
            let failing_before = h.consecutive_failures();
            let disabled = h.record(outcome, now, &rules);
            // status.health: counted failures, and the first answer after failures (never every
            // answer: that is the hot path). Told under the breaker's lock, so the ledger sees
            // them in the order the breaker counted them.
            match (result, outcome.counted_kind()) {
                (Err(f), Some(kind)) => self.disabler.health(
                    key,
                    &route.uid,
                    HealthChange::Failed {
                        kind,
                        message: f.message.clone(),
                        consecutive: h.consecutive_failures(),
                    },
                ),
                // An answer, also an error answer (`"ok": false`: the plugin is alive).
                _ if outcome == Outcome::Answered && failing_before > 0 => {
                    self.disabler
                        .health(key, &route.uid, HealthChange::Recovered);
                }
                _ => {}
            }
            (disabled, h.state_name(now))
        });
        trial.armed = false;
        // The shim replaced the plugin process after these (whoever's deadline it missed: the
        // shim kills at the deadline it was given); an error answer or an unreachable pod is no
        // restart.
        // (Exactly the failures status.health counts.)
        if let Err(f) = result
            && f.outcome.counted_kind().is_some()
        {
            self.metrics.plugin_restarted(key);
        }
        self.metrics.breaker(key, state != "closed");
        if let Some(reason) = disabled {
            warn!(plugin = %key, %reason, "auto-disabling the plugin");
            // Whether this replica's decision is the one recorded (and counted) is the
            // disabler's business: another replica may have decided first.
            self.disabler.disable(route, &reason);
        } else if let Err(f) = result {
            let caller_deadline = outcome == Outcome::CallerDeadline;
            info!(plugin = %key, hook = hook.as_str(), %invocation_id, code = ?f.code, caller_deadline, "hook call failed");
        }
    }
}

/// What a failed call says about the plugin's health. Running out of time under the caller's own
/// deadline (shorter than the hook's timeout) is the caller's outcome, not a plugin timeout:
/// whether the shim killed the plugin at that deadline (`timeout`), the call waited for the
/// plugin behind earlier calls (`queue-timeout`) or the router gave up on the shim, the plugin
/// was never given its timeout. Everything else is what the shim reported.
fn attribute(failure: &CallFailure, deadline: Deadline) -> Outcome {
    match deadline {
        Deadline::Caller(_) if failure.code == Code::DeadlineExceeded => Outcome::CallerDeadline,
        Deadline::Caller(_) | Deadline::Hook(_) => failure.outcome,
    }
}

/// The call a result is recorded for.
#[derive(Debug, Clone, Copy)]
pub(super) struct Made<'a> {
    pub route: &'a Route,
    pub hook: Hook,
    pub invocation_id: &'a str,
    /// Whose deadline the call ran under: it decides whether running out of time is the plugin's.
    pub deadline: Deadline,
}

/// Gives a half-open breaker's trial back unless disarmed (see [`Router::call_one`]).
pub(super) struct TrialRelease<'a, C: Caller> {
    router: &'a Router<C>,
    key: &'a PluginKey,
    armed: bool,
}

impl<'a, C: Caller> TrialRelease<'a, C> {
    /// Armed until [`Router::record`] has recorded the call's outcome.
    pub(super) fn arm(router: &'a Router<C>, key: &'a PluginKey) -> Self {
        Self {
            router,
            key,
            armed: true,
        }
    }
}

impl<C: Caller> Drop for TrialRelease<'_, C> {
    fn drop(&mut self) {
        if self.armed {
            self.router.health_of(self.key, Health::release_trial);
        }
    }
}

/// Metric label of a gRPC code: stable, lower case.
pub fn code_label(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::DeadlineExceeded => "timeout",
        Code::Unavailable => "unavailable",
        Code::Aborted => "plugin_error",
        Code::ResourceExhausted => "resource_exhausted",
        Code::InvalidArgument => "invalid_argument",
        Code::Internal => "internal",
        _ => "other",
    }
}
