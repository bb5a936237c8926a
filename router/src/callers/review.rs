//! TokenReview (`authentication.k8s.io/v1`): the [`TokenReviewer`] seam (the API server in the
//! router, a fake in tests), the Kubernetes implementation, and the pure [`judge`] of an answer.

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};

use super::CallerId;

/// Asks whether a token is valid for an audience.
pub trait TokenReviewer: Send + Sync + 'static {
    /// The API server's answer, or why it could not be had. Errors must not contain the token.
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, ReviewUnavailable>>;
}

/// The review could not be made (API server unreachable, the router's RBAC, a timeout): the
/// caller is told UNAVAILABLE, not UNAUTHENTICATED — nothing is known about its token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the API server could not review the token: {0}")]
pub struct ReviewUnavailable(pub String);

/// Why a reviewed token is refused (UNAUTHENTICATED). Messages name what is wrong, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("the API server did not accept the token for the audience {audience}{}", reason(.error))]
    NotAuthenticated {
        audience: String,
        error: Option<String>,
    },
    #[error(
        "the token is not for the audience {audience} (the API server reports the audiences \
         {got:?}); request one for {audience}"
    )]
    WrongAudience { audience: String, got: Vec<String> },
    #[error(
        "the token names {user:?}, not a ServiceAccount (system:serviceaccount:<namespace>:<name>): \
         the router accepts ServiceAccount tokens only"
    )]
    NotAServiceAccount { user: String },
}

fn reason(error: &Option<String>) -> String {
    error
        .as_deref()
        .filter(|e| !e.is_empty())
        .map(|e| format!(" ({e})"))
        .unwrap_or_default()
}

/// What a TokenReview's `status` says about a token presented for `audience` (pure): the
/// ServiceAccount it names, only when the API server authenticated it *for that audience*.
/// An audience-aware authenticator answers with the requested audiences the token is valid for;
/// an empty or missing list would mean the API server's own audience, which is not the router's.
pub fn judge(status: &TokenReviewStatus, audience: &str) -> Result<CallerId, Rejected> {
    if status.authenticated != Some(true) {
        return Err(Rejected::NotAuthenticated {
            audience: audience.to_string(),
            error: status.error.clone(),
        });
    }
    let audiences = status.audiences.clone().unwrap_or_default();
    if !audiences.iter().any(|a| a == audience) {
        return Err(Rejected::WrongAudience {
            audience: audience.to_string(),
            got: audiences,
        });
    }
    let user = status
        .user
        .as_ref()
        .and_then(|u| u.username.clone())
        .unwrap_or_default();
    CallerId::from_username(&user).ok_or(Rejected::NotAServiceAccount { user })
}

/// Reviews tokens with the API server, as the router's ServiceAccount (which needs `create` on
/// `tokenreviews.authentication.k8s.io`).
#[derive(Clone)]
pub struct KubeTokenReviewer {
    api: Api<TokenReview>,
}

impl std::fmt::Debug for KubeTokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeTokenReviewer")
    }
}

impl KubeTokenReviewer {
    pub fn new(client: Client) -> Self {
        Self {
            api: Api::all(client),
        }
    }
}

impl TokenReviewer for KubeTokenReviewer {
    fn review<'a>(
        &'a self,
        token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, ReviewUnavailable>> {
        Box::pin(async move {
            let review = TokenReview {
                spec: TokenReviewSpec {
                    audiences: Some(vec![audience.to_string()]),
                    token: Some(token.to_string()),
                },
                ..TokenReview::default()
            };
            let answer = self
                .api
                .create(&PostParams::default(), &review)
                .await
                .map_err(|e| ReviewUnavailable(super::token::scrub(&e.to_string(), token)))?;
            answer.status.ok_or_else(|| {
                ReviewUnavailable("the API server answered the TokenReview without a status".into())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn status(authenticated: bool, audiences: &[&str], user: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.into()),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    const SA: &str = "system:serviceaccount:team-a:frontend";

    #[test]
    fn a_service_account_token_for_the_routers_audience_names_the_caller() {
        assert_eq!(
            judge(&status(true, &["airlock-router"], SA), "airlock-router"),
            Ok(CallerId::new("team-a", "frontend"))
        );
    }

    #[test]
    fn anything_else_is_refused_naming_why() {
        let not = TokenReviewStatus {
            authenticated: Some(false),
            error: Some("token audiences [\"api\"] is invalid for the target audiences".into()),
            ..TokenReviewStatus::default()
        };
        let e = judge(&not, "airlock-router").expect_err("refused");
        assert!(
            e.to_string().starts_with(
                "the API server did not accept the token for the audience airlock-router (token \
                 audiences"
            ),
            "{e}"
        );
        assert!(matches!(
            judge(&TokenReviewStatus::default(), "airlock-router"),
            Err(Rejected::NotAuthenticated { .. })
        ));
        // Authenticated, but for other audiences (or the API server's own: no list).
        let e = judge(&status(true, &["api"], SA), "airlock-router").expect_err("refused");
        assert!(
            e.to_string()
                .starts_with("the token is not for the audience airlock-router"),
            "{e}"
        );
        let mut none = status(true, &[], SA);
        none.audiences = None;
        assert!(matches!(
            judge(&none, "airlock-router"),
            Err(Rejected::WrongAudience { .. })
        ));
        // A user, a node: not a ServiceAccount.
        for user in ["jane@example.com", "system:node:worker-1", ""] {
            let e = judge(&status(true, &["airlock-router"], user), "airlock-router")
                .expect_err("refused");
            assert!(
                e.to_string()
                    .contains("the router accepts ServiceAccount tokens only"),
                "{e}"
            );
        }
    }
}
