//! The gate of the HookRouter API: what the gRPC edge calls before the router's core sees a
//! request ([`Gate::admit`]: authenticate, take a per-caller slot, snapshot the bindings), and the
//! one place where a refused caller becomes a gRPC status, a count in
//! `airlock_router_refused_total{rpc,reason}` and an audit record ([`Gate::deny`]), within the
//! audit budgets of [`super::audit_budget`].

use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::CallerId;
use super::audit_budget::{AUDITED_PER_MINUTE, Budgets, Class, WARNINGS_PER_MINUTE};
use super::authn::{Authenticator, AuthnError};
use super::authz::{Bindings, Denied, ScopeDenied, authorize};
use super::limit::{Busy, CallerLimits, CallerPermit};
use super::review::TokenReviewer;
use crate::metrics::Metrics;
pub use crate::metrics::Rpc;

/// Where audit records go: the audit stream in the router ([`crate::audit::emit`]), a recorder in
/// tests.
pub type AuditSink = Arc<dyn Fn(&Value) + Send + Sync>;

/// A refused caller. Each message names what is missing and how to get it; none holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No token, a refused token (UNAUTHENTICATED), or none could be checked (UNAVAILABLE).
    #[error(transparent)]
    Authn(AuthnError),
    /// No binding lets the caller call this hook of this plugin (PERMISSION_DENIED).
    #[error(transparent)]
    Forbidden(Box<Denied>),
    /// A broadcast or pipeline the caller may not make in that namespace (PERMISSION_DENIED).
    #[error(transparent)]
    OutOfScope(Box<ScopeDenied>),
    /// Too many calls of this caller in flight (RESOURCE_EXHAUSTED).
    #[error(transparent)]
    Busy(Busy),
}

impl Denial {
    /// The gRPC code of this refusal: the one mapping.
    pub fn code(&self) -> Code {
        match self.class() {
            Class::Unavailable => Code::Unavailable,
            Class::Unauthenticated => Code::Unauthenticated,
            Class::Forbidden => Code::PermissionDenied,
            Class::Busy => Code::ResourceExhausted,
        }
    }

    /// The `reason` label of `airlock_router_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self.class() {
            Class::Unavailable => "token_review_unavailable",
            Class::Unauthenticated => "unauthenticated",
            Class::Forbidden => "forbidden",
            Class::Busy => "caller_concurrency",
        }
    }

    /// The class of this refusal: its audit budget, and whether it is audited at all.
    pub fn class(&self) -> Class {
        match self {
            Self::Authn(AuthnError::Unavailable(_) | AuthnError::Busy(_)) => Class::Unavailable,
            Self::Authn(_) => Class::Unauthenticated,
            Self::Forbidden(_) | Self::OutOfScope(_) => Class::Forbidden,
            Self::Busy(_) => Class::Busy,
        }
    }

    /// The authenticated caller refused, if it got that far.
    pub fn caller(&self) -> Option<&CallerId> {
        match self {
            Self::Authn(_) | Self::Busy(Busy::Callers) => None,
            Self::Forbidden(d) => Some(&d.caller),
            Self::OutOfScope(d) => Some(&d.caller),
            Self::Busy(Busy::Caller { caller, .. }) => Some(caller),
        }
    }
}

/// An admitted request: who called, the bindings as they were when it came in, and its slot
/// among the caller's calls in flight (given back when the request is done).
#[derive(Debug)]
pub struct Pass {
    pub caller: CallerId,
    bindings: Arc<Bindings>,
    _slot: CallerPermit,
}

impl Pass {
    /// Whether the caller may call `hook` of the Plugin `namespace`/`plugin`, and if not, why.
    pub fn check(&self, namespace: &str, plugin: &str, hook: &str) -> Result<(), Box<Denied>> {
        authorize(&self.bindings, &self.caller, namespace, plugin, hook)
    }

    pub fn may_call(&self, namespace: &str, plugin: &str, hook: &str) -> bool {
        self.check(namespace, plugin, hook).is_ok()
    }

    /// Whether some binding in `namespace` lists the caller at all.
    pub fn listed_in(&self, namespace: &str) -> bool {
        self.bindings.lists(namespace, &self.caller)
    }
}

/// A request admitted before its body was read (by the gRPC edge's admission layer), as a request
/// extension for the handler. Extensions are the server's own: nothing on the wire sets them.
#[derive(Debug, Clone)]
pub struct Admitted(Arc<Pass>);

impl Admitted {
    pub fn new(pass: Pass) -> Self {
        Self(Arc::new(pass))
    }

    pub fn pass(&self) -> Arc<Pass> {
        Arc::clone(&self.0)
    }
}

pub struct Gate {
    authn: Authenticator,
    limits: Arc<CallerLimits>,
    bindings: RwLock<Arc<Bindings>>,
    metrics: Metrics,
    audit: AuditSink,
    budgets: Mutex<Budgets>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("authn", &self.authn)
            .field("limits", &self.limits)
            .finish()
    }
}

impl Gate {
    pub fn new(
        reviewer: Arc<dyn TokenReviewer>,
        audience: String,
        max_calls_per_caller: usize,
        metrics: Metrics,
        audit: AuditSink,
    ) -> Self {
        Self::with_authenticator(
            Authenticator::new(reviewer, audience, metrics.clone()),
            max_calls_per_caller,
            metrics,
            audit,
        )
    }

    /// A gate with this authenticator (tests size its review lanes).
    pub fn with_authenticator(
        authn: Authenticator,
        max_calls_per_caller: usize,
        metrics: Metrics,
        audit: AuditSink,
    ) -> Self {
        Self {
            authn,
            limits: CallerLimits::new(max_calls_per_caller),
            bindings: RwLock::default(),
            metrics,
            audit,
            budgets: Mutex::new(Budgets::new(AUDITED_PER_MINUTE, WARNINGS_PER_MINUTE, now())),
        }
    }

    /// Replaces the bindings (from the watch); requests admitted from now on see them.
    pub fn update_bindings(&self, bindings: Bindings) {
        *self.bindings.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(bindings);
    }

    fn bindings(&self) -> Arc<Bindings> {
        self.bindings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Authenticates a request of `rpc` and takes a slot among its caller's calls in flight; a
    /// refusal is recorded and returned as the status to answer with.
    pub async fn admit(&self, rpc: Rpc, metadata: &MetadataMap) -> Result<Pass, Status> {
        let caller = self
            .authn
            .authenticate(metadata)
            .await
            .map_err(|e| self.deny(rpc, Denial::Authn(e)))?;
        let slot = self
            .limits
            .acquire(&caller)
            .map_err(|e| self.deny(rpc, Denial::Busy(e)))?;
        Ok(Pass {
            caller,
            bindings: self.bindings(),
            _slot: slot,
        })
    }

    /// Records `denial` of a request of `rpc` (metric, audit record or warning, within the budget
    /// of its class) and makes its status.
    pub fn deny(&self, rpc: Rpc, denial: Denial) -> Status {
        self.metrics.refused(rpc.as_str(), denial.reason());
        let class = denial.class();
        let now = now();
        let (kept, due) = {
            let mut budgets = lock(&self.budgets);
            (budgets.take(class, now), budgets.due(now))
        };
        self.summarize(due);
        if kept && class.audited() {
            (self.audit)(&crate::audit::caller_denied(
                rpc,
                &denial,
                class.reason(),
                crate::cluster::ACTOR,
                Timestamp::now(),
            ));
        } else if kept {
            tracing::warn!(rpc = rpc.as_str(), error = %denial, "cannot authenticate a caller");
        }
        Status::new(denial.code(), denial.to_string())
    }

    /// Writes the summaries of refusals dropped over the budgets that are due (at most one a
    /// minute per class). Called by every refusal and, so that the last minute of a flood is not
    /// left unsummarized when the flood stops, periodically by the server.
    pub fn flush_audit(&self) {
        let due = lock(&self.budgets).due(now());
        self.summarize(due);
    }

    fn summarize(&self, due: Vec<(Class, u64)>) {
        for (class, dropped) in due {
            if class.audited() {
                (self.audit)(&crate::audit::caller_denials_dropped(
                    class.reason(),
                    dropped,
                    crate::cluster::ACTOR,
                    Timestamp::now(),
                ));
            } else {
                tracing::warn!(
                    dropped,
                    "{dropped} more warnings about callers' tokens the router could not check \
                     were suppressed (at most {WARNINGS_PER_MINUTE} a minute)"
                );
            }
        }
    }
}

/// The gate's clock: tokio's, so tests with paused time see budgets refill.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::super::audit_budget::SUMMARY_EVERY;
    use super::super::authn::tests::FakeReviewer;
    use super::super::authz::{ScopeWhy, Why};
    use super::super::lanes::LanesFull;
    use super::super::token::TokenError;
    use super::*;

    #[test]
    fn each_refusal_has_its_code_and_reason() {
        let caller = CallerId::new("a", "fe");
        let cases = [
            (
                Denial::Authn(AuthnError::NoToken {
                    reason: TokenError::Missing,
                    audience: "airlock-router".into(),
                }),
                Code::Unauthenticated,
                "unauthenticated",
            ),
            (
                Denial::Authn(AuthnError::Unavailable("down".into())),
                Code::Unavailable,
                "token_review_unavailable",
            ),
            (
                Denial::Authn(AuthnError::Busy(LanesFull)),
                Code::Unavailable,
                "token_review_unavailable",
            ),
            (
                Denial::OutOfScope(Box::new(ScopeDenied {
                    caller: caller.clone(),
                    namespace: "b".into(),
                    hook: "onEvent".into(),
                    why: ScopeWhy::NotListed,
                })),
                Code::PermissionDenied,
                "forbidden",
            ),
            (
                Denial::Forbidden(Box::new(Denied {
                    caller: caller.clone(),
                    namespace: "b".into(),
                    plugin: "p".into(),
                    hook: "transform".into(),
                    why: Why::NotListed,
                })),
                Code::PermissionDenied,
                "forbidden",
            ),
            (
                Denial::Busy(Busy::Caller { caller, limit: 64 }),
                Code::ResourceExhausted,
                "caller_concurrency",
            ),
        ];
        for (denial, code, reason) in cases {
            assert_eq!((denial.code(), denial.reason()), (code, reason), "{denial}");
        }
    }

    #[test]
    fn the_audit_record_names_caller_target_and_reason() {
        let denial = Denial::Forbidden(Box::new(Denied {
            caller: CallerId::new("a", "fe"),
            namespace: "b".into(),
            plugin: "p".into(),
            hook: "transform".into(),
            why: Why::NotListed,
        }));
        let r = crate::audit::caller_denied(
            Rpc::Invoke,
            &denial,
            "PermissionDenied",
            "airlock-router",
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(r["event"], "CallerDenied");
        assert_eq!(r["stream"], "airlock.audit");
        assert_eq!(r["caller"], "system:serviceaccount:a:fe");
        assert_eq!(r["rpc"], "invoke");
        assert_eq!(
            r["target"],
            serde_json::json!({"namespace": "b", "plugin": "p", "hook": "transform"})
        );
        assert_eq!(r["message"], denial.to_string());
    }

    /// Issue (MEDIUM): one audit budget for every refusal: an anonymous flood used it up and a
    /// tenant's probes of other namespaces that followed went unaudited, without a trace.
    #[tokio::test(start_paused = true)]
    async fn an_anonymous_flood_does_not_silence_the_audit_of_forbidden_calls() {
        let records = Arc::new(Mutex::new(Vec::<Value>::new()));
        let sink = records.clone();
        let gate = Gate::new(
            Arc::new(FakeReviewer::default()),
            "airlock-router".into(),
            64,
            Metrics::new().expect("metrics"),
            Arc::new(move |r: &Value| lock(&sink).push(r.clone())),
        );
        let flood = AUDITED_PER_MINUTE as usize + 500;
        for _ in 0..flood {
            gate.admit(Rpc::Invoke, &MetadataMap::new())
                .await
                .expect_err("no token");
        }
        let probe = Denial::Forbidden(Box::new(Denied {
            caller: CallerId::new("a", "fe"),
            namespace: "b".into(),
            plugin: "p".into(),
            hook: "transform".into(),
            why: Why::NotListed,
        }));
        gate.deny(Rpc::Invoke, probe);
        let reasons = |records: &[Value], reason: &str| {
            records
                .iter()
                .filter(|r| r["event"] == "CallerDenied" && r["reason"] == reason)
                .count()
        };
        {
            let records = lock(&records);
            assert_eq!(
                reasons(&records, "Unauthenticated"),
                AUDITED_PER_MINUTE as usize
            );
            assert_eq!(reasons(&records, "PermissionDenied"), 1, "the probe");
        }
        // A minute on, with the flood over: one summary of what was not audited.
        tokio::time::advance(SUMMARY_EVERY).await;
        gate.flush_audit();
        gate.flush_audit();
        let summaries: Vec<Value> = lock(&records)
            .iter()
            .filter(|r| r["event"] == "CallerDenialsNotAudited")
            .cloned()
            .collect();
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert_eq!(summaries[0]["reason"], "Unauthenticated");
        assert_eq!(summaries[0]["dropped"], 500);
        assert_eq!(
            summaries[0]["message"],
            "500 denials of class Unauthenticated not audited (over the budget of 1000 audit \
             records a minute per class and router replica); every denial is counted in \
             airlock_router_refused_total"
        );
    }
}
