//! Who calls the router, and what they may call (issue 12): every `airlock.router.v1.HookRouter`
//! request is authenticated, authorized and bounded here before the router's core sees it.
//!
//! **Authentication: projected, audience-bound ServiceAccount tokens, checked with TokenReview.**
//! Host applications are ordinary workloads. A projected ServiceAccount token is what Kubernetes
//! already gives every pod: it names a ServiceAccount, is bound to an audience (`airlock-router`,
//! so a token meant for the router is good for nothing else, and a token meant for anything else
//! is refused here), rotates by itself, and needs no CA distributed to callers. Mutual TLS would
//! need every host application to obtain and renew a client certificate from Airlock's CA. The
//! caller sends `authorization: Bearer <token>`; the router asks the API server (`TokenReview`)
//! and accepts only `system:serviceaccount:<namespace>:<name>`.
//!
//! **Authorization: `PluginCallerBinding`s, default deny.** A caller may call hook H of Plugin P in
//! namespace N only if a binding *in N* lists it and matches P and H (pure: [`authz::authorize`]).
//! Broadcasts and pipelines cover one namespace (the caller's own unless it names another) and, in
//! it, only the plugins the caller may call: pipeline priority orders plugins of one namespace,
//! whose owner writes all of them.
//!
//! **Bounds.** At most `--max-calls-per-caller` calls in flight per caller and router replica
//! ([`limit`]); TokenReviews are cached by the token's SHA-256, never by the token ([`cache`]), so
//! the per-call cost of a known caller is one hash and one map lookup. Callers without a token
//! for the router cannot crowd out those with one: junk is refused before any review, strangers'
//! reviews have a lane of their own, and no request ever waits for a place ([`lanes`]).
//!
//! Modules: [`token`] (the bearer token of a request, its hash, the local pre-check of its
//! claims), [`review`] (TokenReview: the seam, the Kubernetes client, the pure judgement of an
//! answer), [`cache`], [`lanes`], [`authn`] (all of it together), [`authz`], [`limit`],
//! [`audit_budget`] (how many refusals are written down), and [`gate`]: what the gRPC edge calls,
//! and the one place where a refusal becomes a gRPC status, a metric and an audit record.

pub mod audit_budget;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod gate;
pub mod lanes;
pub mod limit;
pub mod review;
pub mod token;

use std::fmt;

pub use authn::{Authenticator, AuthnError};
pub use authz::{Bindings, Denied, ScopeDenied, ScopeWhy, authorize};
pub use gate::{Denial, Gate, Pass};
pub use review::{KubeTokenReviewer, TokenReviewer};

/// The router's audience by default: tokens must be issued for it (`--caller-audience`).
pub const DEFAULT_AUDIENCE: &str = "airlock-router";

/// Calls in flight per caller and router replica by default (`--max-calls-per-caller`).
pub const DEFAULT_MAX_CALLS_PER_CALLER: usize = 64;

/// An authenticated caller: a ServiceAccount.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallerId {
    pub namespace: String,
    pub name: String,
}

/// How the API server names a ServiceAccount.
const SERVICE_ACCOUNT_PREFIX: &str = "system:serviceaccount:";

impl CallerId {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The ServiceAccount a username names (`system:serviceaccount:<namespace>:<name>`), if it
    /// names one: both parts non-empty and free of `:`.
    pub fn from_username(user: &str) -> Option<Self> {
        let (namespace, name) = user.strip_prefix(SERVICE_ACCOUNT_PREFIX)?.split_once(':')?;
        (!namespace.is_empty() && !name.is_empty() && !name.contains(':'))
            .then(|| Self::new(namespace, name))
    }
}

impl fmt::Display for CallerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{SERVICE_ACCOUNT_PREFIX}{}:{}",
            self.namespace, self.name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_service_account_usernames_name_a_caller() {
        assert_eq!(
            CallerId::from_username("system:serviceaccount:team-a:frontend"),
            Some(CallerId::new("team-a", "frontend"))
        );
        for other in [
            "admin",
            "system:node:worker-1",
            "system:serviceaccount:team-a",
            "system:serviceaccount::frontend",
            "system:serviceaccount:team-a:",
            "system:serviceaccount:team-a:front:end",
            "system:serviceaccounts:team-a:frontend",
        ] {
            assert_eq!(CallerId::from_username(other), None, "{other}");
        }
        assert_eq!(
            CallerId::new("team-a", "frontend").to_string(),
            "system:serviceaccount:team-a:frontend"
        );
    }
}
