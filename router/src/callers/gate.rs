//! The gate of the HookRouter API: what the gRPC edge calls before the router's core sees a
//! request ([`Gate::admit`]: authenticate, take a per-caller slot, snapshot the bindings), and the
//! one place where a refused caller becomes a gRPC status, a count in
//! `airlock_router_refused_total{rpc,reason}` and an audit record ([`Gate::deny`]).

use std::sync::{Arc, Mutex, RwLock};

use airlock_core::rate::LineBudget;
use k8s_openapi::jiff::Timestamp;
use serde_json::Value;
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::CallerId;
use super::authn::{Authenticator, AuthnError};
use super::authz::{Bindings, Denied, NoneGranted, authorize};
use super::limit::{Busy, CallerLimits, CallerPermit};
use super::review::TokenReviewer;
use crate::metrics::Metrics;
pub use crate::metrics::Rpc;

/// Where audit records go: the audit stream in the router ([`crate::audit::emit`]), a recorder in
/// tests.
pub type AuditSink = Arc<dyn Fn(&Value) + Send + Sync>;

/// Audit records of refused callers per minute and replica. A flood of anonymous calls must not
/// become a flood of audit lines: past this, refusals are still counted in the metric, only their
/// records are dropped.
pub const AUDITED_DENIALS_PER_MINUTE: u32 = 1000;

/// A refused caller. Each message names what is missing and how to get it; none holds a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No token, a refused token (UNAUTHENTICATED), or none could be checked (UNAVAILABLE).
    #[error(transparent)]
    Authn(AuthnError),
    /// No binding lets the caller call this hook of this plugin (PERMISSION_DENIED).
    #[error(transparent)]
    Forbidden(Box<Denied>),
    /// No binding lets the caller call any subscriber of a broadcast or pipeline
    /// (PERMISSION_DENIED).
    #[error(transparent)]
    NoneGranted(NoneGranted),
    /// Too many calls of this caller in flight (RESOURCE_EXHAUSTED).
    #[error(transparent)]
    Busy(Busy),
}

impl Denial {
    /// The gRPC code of this refusal: the one mapping.
    pub fn code(&self) -> Code {
        match self {
            Self::Authn(AuthnError::Unavailable(_)) => Code::Unavailable,
            Self::Authn(_) => Code::Unauthenticated,
            Self::Forbidden(_) | Self::NoneGranted(_) => Code::PermissionDenied,
            Self::Busy(_) => Code::ResourceExhausted,
        }
    }

    /// The `reason` label of `airlock_router_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Authn(AuthnError::Unavailable(_)) => "token_review_unavailable",
            Self::Authn(_) => "unauthenticated",
            Self::Forbidden(_) | Self::NoneGranted(_) => "forbidden",
            Self::Busy(_) => "caller_concurrency",
        }
    }

    /// The audit record's `reason`; `None`: not a refusal of the caller (the router could not
    /// check its token), so not audited.
    fn audit_reason(&self) -> Option<&'static str> {
        match self {
            Self::Authn(AuthnError::Unavailable(_)) => None,
            Self::Authn(_) => Some("Unauthenticated"),
            Self::Forbidden(_) | Self::NoneGranted(_) => Some("PermissionDenied"),
            Self::Busy(_) => Some("CallerConcurrency"),
        }
    }

    /// The authenticated caller refused, if it got that far.
    pub fn caller(&self) -> Option<&CallerId> {
        match self {
            Self::Authn(_) | Self::Busy(Busy::Callers) => None,
            Self::Forbidden(d) => Some(&d.caller),
            Self::NoneGranted(n) => Some(&n.caller),
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
}

pub struct Gate {
    authn: Authenticator,
    limits: Arc<CallerLimits>,
    bindings: RwLock<Arc<Bindings>>,
    metrics: Metrics,
    audit: AuditSink,
    audit_budget: Mutex<LineBudget>,
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
        Self {
            authn: Authenticator::new(reviewer, audience, metrics.clone()),
            limits: CallerLimits::new(max_calls_per_caller),
            bindings: RwLock::default(),
            metrics,
            audit,
            audit_budget: Mutex::new(LineBudget::new(
                AUDITED_DENIALS_PER_MINUTE,
                std::time::Instant::now(),
            )),
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

    /// Records `denial` of a request of `rpc` (metric, audit record) and makes its status.
    pub fn deny(&self, rpc: Rpc, denial: Denial) -> Status {
        self.metrics.refused(rpc.as_str(), denial.reason());
        match denial.audit_reason() {
            Some(reason) => {
                let now = std::time::Instant::now();
                let budget = self
                    .audit_budget
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(now);
                if budget {
                    (self.audit)(&crate::audit::caller_denied(
                        rpc,
                        &denial,
                        reason,
                        crate::cluster::ACTOR,
                        Timestamp::now(),
                    ));
                }
            }
            None => {
                tracing::warn!(rpc = rpc.as_str(), error = %denial, "cannot authenticate a caller")
            }
        }
        Status::new(denial.code(), denial.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::super::authz::Why;
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
}
