//! Authentication of a request: its bearer token ([`super::token`]), reviewed by the API server
//! ([`super::review`]) unless a recent answer for the same token is cached ([`super::cache`]).
//!
//! Caching: a token the API server accepted is trusted for at most [`ACCEPTED_FOR`] (5 minutes)
//! and never past its own `exp`; so a deleted ServiceAccount keeps calling for at most that long
//! (a deleted *binding* takes effect at once: authorization is decided per call). A token the API
//! server refused is remembered for [`REFUSED_FOR`] only — long enough that a caller retrying a bad
//! token in a loop costs the API server one review every few seconds, short enough that a token
//! that just became valid (a new ServiceAccount) works almost at once. A review that could not be
//! made is not cached at all. At most [`REVIEWS_IN_FLIGHT`] reviews run at once per replica, so a
//! flood of distinct bad tokens cannot turn the router into a load generator for the API server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use super::CallerId;
use super::cache::ReviewCache;
use super::review::{Rejected, TokenReviewer, judge};
use super::token::{self, TokenError, TokenHash, how_to_get_a_token};
use crate::metrics::Metrics;

/// Longest an accepted review is reused (capped by the token's `exp`).
pub const ACCEPTED_FOR: Duration = Duration::from_secs(5 * 60);
/// How long a refused review is reused.
pub const REFUSED_FOR: Duration = Duration::from_secs(2);
/// Accepted tokens remembered per replica (oldest evicted first).
pub const ACCEPTED_ENTRIES: usize = 10_000;
/// Refused tokens remembered per replica, apart from the accepted ones: a flood of bad tokens
/// never evicts a good caller's entry.
pub const REFUSED_ENTRIES: usize = 1_000;
/// TokenReviews in flight per replica; more wait up to [`REVIEW_QUEUE_WAIT`].
pub const REVIEWS_IN_FLIGHT: usize = 32;
pub const REVIEW_QUEUE_WAIT: Duration = Duration::from_secs(5);

/// Why a request is not authenticated. No variant holds the token; the messages say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No usable `authorization: Bearer` metadata (UNAUTHENTICATED).
    #[error("no caller identity: {reason}; {}", how_to_get_a_token(.audience))]
    NoToken {
        reason: TokenError,
        audience: String,
    },
    /// The API server refused the token for the router (UNAUTHENTICATED).
    #[error("the caller's token is refused: {0}")]
    Rejected(Rejected),
    /// The token could not be reviewed now (UNAVAILABLE: retry).
    #[error("cannot check the caller's token now ({0}); retry later")]
    Unavailable(String),
}

/// Authenticates requests, caching the API server's answers by the token's hash.
pub struct Authenticator {
    reviewer: Arc<dyn TokenReviewer>,
    audience: String,
    accepted: Mutex<ReviewCache<CallerId>>,
    refused: Mutex<ReviewCache<Rejected>>,
    reviews: Semaphore,
    metrics: Metrics,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("audience", &self.audience)
            .finish()
    }
}

impl Authenticator {
    pub fn new(reviewer: Arc<dyn TokenReviewer>, audience: String, metrics: Metrics) -> Self {
        Self {
            reviewer,
            audience,
            accepted: Mutex::new(ReviewCache::new(ACCEPTED_ENTRIES)),
            refused: Mutex::new(ReviewCache::new(REFUSED_ENTRIES)),
            reviews: Semaphore::new(REVIEWS_IN_FLIGHT),
            metrics,
        }
    }

    /// The audience tokens must be issued for.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The ServiceAccount whose token the request carries.
    pub async fn authenticate(&self, metadata: &MetadataMap) -> Result<CallerId, AuthnError> {
        let token = token::bearer(metadata).map_err(|reason| AuthnError::NoToken {
            reason,
            audience: self.audience.clone(),
        })?;
        let key = TokenHash::of(token);
        if let Some(known) = self.cached(&key) {
            return known;
        }
        let Ok(Ok(_slot)) = tokio::time::timeout(REVIEW_QUEUE_WAIT, self.reviews.acquire()).await
        else {
            self.metrics.token_review("busy");
            return Err(AuthnError::Unavailable(format!(
                "{REVIEWS_IN_FLIGHT} token reviews are already waiting for the API server"
            )));
        };
        // Another call with the same token may have been reviewed while this one waited.
        if let Some(known) = self.cached(&key) {
            return known;
        }
        let status = match self.reviewer.review(token, &self.audience).await {
            Ok(status) => status,
            Err(e) => {
                self.metrics.token_review("error");
                return Err(AuthnError::Unavailable(token::scrub(&e.to_string(), token)));
            }
        };
        let now = Instant::now();
        match judge(&status, &self.audience) {
            Ok(caller) => {
                self.metrics.token_review("authenticated");
                let ttl = accepted_for(token, unix_now());
                if !ttl.is_zero() {
                    lock(&self.accepted).insert(key, caller.clone(), now + ttl);
                }
                Ok(caller)
            }
            Err(rejected) => {
                self.metrics.token_review("rejected");
                let rejected = scrubbed(rejected, token);
                lock(&self.refused).insert(key, rejected.clone(), now + REFUSED_FOR);
                Err(AuthnError::Rejected(rejected))
            }
        }
    }

    fn cached(&self, key: &TokenHash) -> Option<Result<CallerId, AuthnError>> {
        let now = Instant::now();
        if let Some(caller) = lock(&self.accepted).get(key, now) {
            return Some(Ok(caller));
        }
        lock(&self.refused)
            .get(key, now)
            .map(|r| Err(AuthnError::Rejected(r)))
    }
}

/// How long an accepted review of `token` may be reused at `unix_now` (seconds since the epoch):
/// [`ACCEPTED_FOR`], or less when the token expires sooner (zero: not at all).
pub fn accepted_for(token: &str, unix_now: u64) -> Duration {
    match token::expiry(token) {
        Some(exp) => Duration::from_secs(exp.saturating_sub(unix_now)).min(ACCEPTED_FOR),
        None => ACCEPTED_FOR,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The API server's own words about a token, without the token.
fn scrubbed(rejected: Rejected, token: &str) -> Rejected {
    match rejected {
        Rejected::NotAuthenticated { audience, error } => Rejected::NotAuthenticated {
            audience,
            error: error.map(|e| token::scrub(&e, token)),
        },
        Rejected::NotAServiceAccount { user } => Rejected::NotAServiceAccount {
            user: token::scrub(&user, token),
        },
        other => other,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures::future::BoxFuture;
    use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

    use super::super::review::ReviewUnavailable;
    use super::super::token::tests::jwt;
    use super::*;

    /// Answers reviews from a table: token → (authenticated, username); counts the reviews.
    #[derive(Default)]
    pub(crate) struct FakeReviewer {
        pub answers: Mutex<std::collections::HashMap<String, Result<String, String>>>,
        pub reviews: AtomicUsize,
        /// Fail every review as if the API server were down.
        pub down: std::sync::atomic::AtomicBool,
    }

    impl FakeReviewer {
        /// `token` is valid for the router's audience and names `user`.
        pub fn accept(&self, token: &str, user: &str) {
            lock(&self.answers).insert(token.into(), Ok(user.into()));
        }

        pub fn reviews(&self) -> usize {
            self.reviews.load(Ordering::SeqCst)
        }
    }

    impl TokenReviewer for FakeReviewer {
        fn review<'a>(
            &'a self,
            token: &'a str,
            audience: &'a str,
        ) -> BoxFuture<'a, Result<TokenReviewStatus, ReviewUnavailable>> {
            self.reviews.fetch_add(1, Ordering::SeqCst);
            let answer = lock(&self.answers).get(token).cloned();
            let down = self.down.load(Ordering::SeqCst);
            Box::pin(async move {
                if down {
                    // A careless client error that quotes the request: must be scrubbed.
                    return Err(ReviewUnavailable(format!(
                        "connection refused while posting {token}"
                    )));
                }
                let error = match answer {
                    Some(Ok(user)) => {
                        return Ok(TokenReviewStatus {
                            authenticated: Some(true),
                            audiences: Some(vec![audience.to_string()]),
                            user: Some(UserInfo {
                                username: Some(user),
                                ..UserInfo::default()
                            }),
                            error: None,
                        });
                    }
                    Some(Err(error)) => error,
                    None => "token lookup failed".to_string(),
                };
                // The API server's error quoting the token (it does not, but nothing may rely
                // on that): must be scrubbed.
                Ok(TokenReviewStatus {
                    authenticated: Some(false),
                    error: Some(format!("[invalid bearer token {token}, {error}]")),
                    ..TokenReviewStatus::default()
                })
            })
        }
    }

    pub(crate) fn metadata(token: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(
            token::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("ascii"),
        );
        m
    }

    fn authenticator() -> (Authenticator, Arc<FakeReviewer>) {
        let fake = Arc::new(FakeReviewer::default());
        let metrics = Metrics::new().expect("metrics");
        (
            Authenticator::new(fake.clone(), "airlock-router".into(), metrics),
            fake,
        )
    }

    const FRONTEND: &str = "system:serviceaccount:team-a:frontend";

    #[tokio::test(start_paused = true)]
    async fn a_known_token_is_not_reviewed_again_for_five_minutes() {
        let (authn, fake) = authenticator();
        fake.accept("good", FRONTEND);
        for _ in 0..100 {
            assert_eq!(
                authn.authenticate(&metadata("good")).await,
                Ok(CallerId::new("team-a", "frontend"))
            );
        }
        assert_eq!(fake.reviews(), 1, "one review, then the cache");
        tokio::time::advance(ACCEPTED_FOR - Duration::from_secs(1)).await;
        authn.authenticate(&metadata("good")).await.expect("ok");
        assert_eq!(fake.reviews(), 1);
        tokio::time::advance(Duration::from_secs(1)).await;
        authn.authenticate(&metadata("good")).await.expect("ok");
        assert_eq!(fake.reviews(), 2, "reviewed again after five minutes");
    }

    #[tokio::test(start_paused = true)]
    async fn an_accepted_review_is_not_reused_past_the_tokens_exp() {
        let (authn, fake) = authenticator();
        let token = jwt(serde_json::json!({"exp": unix_now() + 60}));
        fake.accept(&token, FRONTEND);
        authn.authenticate(&metadata(&token)).await.expect("ok");
        authn.authenticate(&metadata(&token)).await.expect("ok");
        assert_eq!(fake.reviews(), 1);
        tokio::time::advance(Duration::from_secs(61)).await;
        authn.authenticate(&metadata(&token)).await.expect("ok");
        assert_eq!(fake.reviews(), 2, "the cached answer ended with the token");

        assert_eq!(
            accepted_for(&jwt(serde_json::json!({"exp": 1000})), 400),
            Duration::from_secs(600).min(ACCEPTED_FOR)
        );
        assert_eq!(
            accepted_for(&jwt(serde_json::json!({"exp": 1000})), 970),
            Duration::from_secs(30)
        );
        assert_eq!(
            accepted_for(&jwt(serde_json::json!({"exp": 1000})), 2000),
            Duration::ZERO
        );
        assert_eq!(accepted_for("opaque", 2000), ACCEPTED_FOR);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_token_is_remembered_for_seconds_only() {
        let (authn, fake) = authenticator();
        for _ in 0..50 {
            let e = authn
                .authenticate(&metadata("bad"))
                .await
                .expect_err("refused");
            assert!(
                matches!(e, AuthnError::Rejected(Rejected::NotAuthenticated { .. })),
                "{e}"
            );
        }
        assert_eq!(fake.reviews(), 1, "a retry loop costs one review");
        tokio::time::advance(REFUSED_FOR).await;
        // Now valid (say, its ServiceAccount was just created): accepted at the next review.
        fake.accept("bad", FRONTEND);
        authn
            .authenticate(&metadata("bad"))
            .await
            .expect("accepted now");
        assert_eq!(fake.reviews(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_review_that_cannot_be_made_is_unavailable_and_not_cached() {
        let (authn, fake) = authenticator();
        fake.accept("good", FRONTEND);
        fake.down.store(true, Ordering::SeqCst);
        let e = authn
            .authenticate(&metadata("good"))
            .await
            .expect_err("down");
        assert!(matches!(e, AuthnError::Unavailable(_)), "{e}");
        assert!(!e.to_string().contains("good"), "no token in: {e}");
        assert!(e.to_string().contains("posting <token>"), "{e}");
        fake.down.store(false, Ordering::SeqCst);
        authn
            .authenticate(&metadata("good"))
            .await
            .expect("reviewed again");
        assert_eq!(fake.reviews(), 2);
    }

    #[tokio::test]
    async fn no_token_says_how_to_get_one() {
        let (authn, fake) = authenticator();
        let e = authn
            .authenticate(&MetadataMap::new())
            .await
            .expect_err("refused");
        assert!(
            e.to_string().starts_with(
                "no caller identity: the request has no `authorization` metadata; send gRPC \
                 metadata `authorization: Bearer <token>`"
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains(
                "kubectl create token <serviceaccount> -n <namespace> --audience airlock-router"
            ),
            "{e}"
        );
        assert_eq!(fake.reviews(), 0, "nothing to review");
    }

    #[tokio::test]
    async fn refusals_never_carry_the_token() {
        let (authn, fake) = authenticator();
        let secret = "eyJhbGciOiJSUzI1NiJ9.c2VjcmV0.c2ln";
        // The API server's error quotes the token (the fake does): scrubbed.
        let e = authn
            .authenticate(&metadata(secret))
            .await
            .expect_err("refused");
        assert!(!e.to_string().contains(secret), "{e}");
        assert!(!format!("{e:?}").contains(secret), "{e:?}");
        // A "user" that is the token: scrubbed too.
        fake.accept("weird", "weird");
        let e = authn
            .authenticate(&metadata("weird"))
            .await
            .expect_err("refused");
        assert!(!e.to_string().contains("\"weird\""), "{e}");
    }
}
