//! The one call to a plugin, as the router's core sees it: the request, whose deadline it runs
//! under, the answer or failure, and the two seams to the outside world ([`Caller`] for the
//! network, [`Disabler`] for the cluster), which tests replace with fakes.

use airlock_core::PluginKey;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use airlock_core::Hook;
use tonic::Code;

use crate::breaker::Outcome;
use crate::table::Route;

/// One call to a plugin's shim.
#[derive(Debug, Clone)]
pub struct CallRequest {
    pub hook: Hook,
    /// Shared, not copied, by every call of a broadcast (an `Arc<String>` rather than `Arc<str>`:
    /// wrapping the request's own String costs no copy either). Only the gRPC edge copies it, once
    /// per call, into the message it sends.
    pub payload: Arc<String>,
    /// What the plugin may take; the shim enforces it.
    pub deadline: Duration,
    pub invocation_id: String,
}

/// How long one call may take, and whose limit that is: it decides whether running out of time
/// is the plugin's failure or the caller's choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// The hook's timeout (the caller asked for no less): running out is a plugin timeout.
    Hook(Duration),
    /// The caller's own deadline, shorter than the hook's timeout: running out says nothing about
    /// the plugin and is not counted against it (see [`Outcome::CallerDeadline`]).
    Caller(Duration),
}

impl Deadline {
    /// The smaller of the hook's `timeout` and the caller's deadline, if it set one.
    pub fn of(timeout: Duration, caller: Option<Duration>) -> Self {
        match caller {
            Some(c) if c < timeout => Self::Caller(c),
            _ => Self::Hook(timeout),
        }
    }

    pub fn duration(self) -> Duration {
        match self {
            Self::Hook(d) | Self::Caller(d) => d,
        }
    }
}

/// A plugin's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub output: String,
    pub duration: Duration,
}

/// A call that produced no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallFailure {
    pub code: Code,
    pub message: String,
    /// What the failure says about the plugin's health.
    pub outcome: Outcome,
}

/// Calls a plugin's shim (gRPC in the router; a fake in tests).
pub trait Caller: Send + Sync + 'static {
    fn call(
        &self,
        route: Arc<Route>,
        request: CallRequest,
    ) -> impl Future<Output = Result<Answer, CallFailure>> + Send;

    /// The route table changed to `table`: a caller that keeps connections per pod drops those
    /// to pods no route lists any more.
    fn routes_changed(&self, _table: &crate::table::RouteTable) {}
}

/// The cluster side of a plugin's health: takes a plugin out of service (status, Event, audit
/// record), and keeps `status.health` (its failures by kind).
pub trait Disabler: Send + Sync + 'static {
    fn disable(&self, route: &Route, reason: &str);
    /// A counted failure of the plugin `plugin` (Plugin object `uid`): of a call, or a host call
    /// refused; or the first answer after failures.
    fn health(&self, plugin: &PluginKey, uid: &str, change: crate::health_report::HealthChange);
}
