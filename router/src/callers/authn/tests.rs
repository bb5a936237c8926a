//! The authenticator against a fake TokenReview: caching, the pre-check, the review lanes.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};

use super::super::lanes::{KNOWN_REVIEWS, STRANGER_REVIEWS};
use super::super::review::ReviewUnavailable;
use super::super::token::tests::jwt;
use super::*;

/// Answers reviews from a table: token → (authenticated, username); counts the reviews.
#[derive(Default)]
pub(crate) struct FakeReviewer {
    pub answers: Mutex<HashMap<String, Result<String, String>>>,
    pub reviews: AtomicUsize,
    /// Fail every review as if the API server were down.
    pub down: AtomicBool,
    /// Never answer a review of a token not in the table (an API server slowed down by a flood).
    pub stall_unknown: AtomicBool,
    /// Time each review takes.
    pub latency: Mutex<Duration>,
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
        let stall = answer.is_none() && self.stall_unknown.load(Ordering::SeqCst);
        let latency = *lock(&self.latency);
        Box::pin(async move {
            if stall {
                std::future::pending::<()>().await;
            }
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
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

/// A token that passes the pre-check (a JWT for the router's audience, an hour left), told apart
/// by `name`. Whether the API server accepts it is the fake's table.
pub(crate) fn token(name: &str) -> String {
    jwt(serde_json::json!({
        "aud": ["airlock-router"],
        "exp": unix_now() + 3600,
        "sub": name,
    }))
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
async fn a_known_token_is_not_reviewed_again_for_a_minute() {
    let (authn, fake) = authenticator();
    let good = token("good");
    fake.accept(&good, FRONTEND);
    for _ in 0..100 {
        assert_eq!(
            authn.authenticate(&metadata(&good)).await,
            Ok(CallerId::new("team-a", "frontend"))
        );
    }
    assert_eq!(fake.reviews(), 1, "one review, then the cache");
    tokio::time::advance(Duration::from_secs(59)).await;
    authn.authenticate(&metadata(&good)).await.expect("ok");
    assert_eq!(fake.reviews(), 1);
    // Issue: it was five minutes, how long a deleted ServiceAccount kept access.
    tokio::time::advance(Duration::from_secs(1)).await;
    authn.authenticate(&metadata(&good)).await.expect("ok");
    assert_eq!(fake.reviews(), 2, "reviewed again after a minute");
}

#[tokio::test(start_paused = true)]
async fn an_accepted_review_is_not_reused_past_the_tokens_exp() {
    let (authn, fake) = authenticator();
    let token = jwt(serde_json::json!({"aud": "airlock-router", "exp": unix_now() + 30}));
    fake.accept(&token, FRONTEND);
    authn.authenticate(&metadata(&token)).await.expect("ok");
    authn.authenticate(&metadata(&token)).await.expect("ok");
    assert_eq!(fake.reviews(), 1);
    tokio::time::advance(Duration::from_secs(31)).await;
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
    let bad = token("bad");
    for _ in 0..50 {
        let e = authn
            .authenticate(&metadata(&bad))
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
    fake.accept(&bad, FRONTEND);
    authn
        .authenticate(&metadata(&bad))
        .await
        .expect("accepted now");
    assert_eq!(fake.reviews(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_review_that_cannot_be_made_is_unavailable_and_not_cached() {
    let (authn, fake) = authenticator();
    let good = token("good");
    fake.accept(&good, FRONTEND);
    fake.down.store(true, Ordering::SeqCst);
    let e = authn
        .authenticate(&metadata(&good))
        .await
        .expect_err("down");
    assert!(matches!(e, AuthnError::Unavailable(_)), "{e}");
    assert!(!e.to_string().contains(&good), "no token in: {e}");
    assert!(e.to_string().contains("posting <token>"), "{e}");
    fake.down.store(false, Ordering::SeqCst);
    authn
        .authenticate(&metadata(&good))
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
    let secret = token("secret");
    // The API server's error quotes the token (the fake does): scrubbed.
    let e = authn
        .authenticate(&metadata(&secret))
        .await
        .expect_err("refused");
    assert!(!e.to_string().contains(&secret), "{e}");
    assert!(!format!("{e:?}").contains(&secret), "{e:?}");
    // A "user" that is the token: scrubbed too.
    let weird = token("weird");
    fake.accept(&weird, &weird);
    let e = authn
        .authenticate(&metadata(&weird))
        .await
        .expect_err("refused");
    assert!(!e.to_string().contains(&weird), "{e}");
    // Refused by the pre-check: no claim of it is quoted either.
    let junk = jwt(serde_json::json!({"aud": "the-secret-audience", "exp": 1}));
    let e = authn
        .authenticate(&metadata(&junk))
        .await
        .expect_err("refused");
    assert!(!e.to_string().contains("the-secret-audience"), "{e}");
}

/// Issue (HIGH): every junk token was reviewed by the API server, in the one queue in front of it.
#[tokio::test]
async fn a_token_that_cannot_be_for_the_router_is_refused_without_a_review() {
    let (authn, fake) = authenticator();
    for junk in [
        "junk".to_string(),
        jwt(serde_json::json!({"aud": ["api"], "exp": unix_now() + 600})),
        jwt(serde_json::json!({"aud": ["airlock-router"], "exp": unix_now() - 3600})),
        jwt(serde_json::json!({"aud": ["airlock-router"]})),
    ] {
        let e = authn
            .authenticate(&metadata(&junk))
            .await
            .expect_err("refused");
        assert!(matches!(e, AuthnError::Unfit { .. }), "{e}");
        assert!(
            e.to_string().starts_with(
                "the caller's token is refused: the router did not accept the token for the \
                 audience airlock-router: "
            ),
            "{e}"
        );
    }
    assert_eq!(fake.reviews(), 0, "no TokenReview for junk");
}

/// Issue (HIGH): strangers' tokens filled the one queue in front of TokenReview and everyone
/// behind them waited 5 s for UNAVAILABLE — a known caller whose cached answer had expired too.
#[tokio::test(start_paused = true)]
async fn strangers_cannot_lock_out_a_known_caller_and_a_full_lane_answers_at_once() {
    let fake = Arc::new(FakeReviewer::default());
    let authn = Arc::new(Authenticator::new(
        fake.clone(),
        "airlock-router".into(),
        Metrics::new().expect("metrics"),
    ));
    let known = token("known");
    fake.accept(&known, FRONTEND);
    authn.authenticate(&metadata(&known)).await.expect("ok");
    tokio::time::advance(ACCEPTED_FOR).await;

    // A flood of made-up tokens that pass the pre-check; the API server never answers them.
    fake.stall_unknown.store(true, Ordering::SeqCst);
    let flood: Vec<_> = (0..STRANGER_REVIEWS + KNOWN_REVIEWS)
        .map(|i| {
            let authn = authn.clone();
            tokio::spawn(async move {
                authn
                    .authenticate(&metadata(&token(&format!("stranger-{i}"))))
                    .await
            })
        })
        .collect();
    while fake.reviews() < 1 + STRANGER_REVIEWS {
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        fake.reviews(),
        1 + STRANGER_REVIEWS,
        "strangers use their lane only"
    );
    // One more stranger: UNAVAILABLE at once, not after a wait.
    let started = Instant::now();
    let e = authn
        .authenticate(&metadata(&token("one-more")))
        .await
        .expect_err("the lane is full");
    assert_eq!(e.to_string(), "too many token reviews in flight; retry");
    assert_eq!(started.elapsed(), Duration::ZERO, "no queue");
    // The known caller, due for a re-review: its own lane.
    assert_eq!(
        authn.authenticate(&metadata(&known)).await,
        Ok(CallerId::new("team-a", "frontend"))
    );
    assert_eq!(started.elapsed(), Duration::ZERO);
    // A new caller (never accepted) must wait for the flood to pass: retry.
    let new = token("new");
    fake.accept(&new, FRONTEND);
    assert!(matches!(
        authn.authenticate(&metadata(&new)).await,
        Err(AuthnError::Busy(_))
    ));
    for task in flood {
        task.abort();
    }
}

/// Without a queue, a burst of one caller's calls must not each want a place among the reviews:
/// they share one review.
#[tokio::test(start_paused = true)]
async fn calls_with_one_token_share_its_review() {
    let (authn, fake) = authenticator();
    *lock(&fake.latency) = Duration::from_millis(50);
    let good = token("good");
    fake.accept(&good, FRONTEND);
    let md = metadata(&good);
    let calls = (0..3 * STRANGER_REVIEWS).map(|_| authn.authenticate(&md));
    let answers = futures::future::join_all(calls).await;
    assert!(answers.iter().all(Result::is_ok), "{answers:?}");
    assert_eq!(fake.reviews(), 1);
    assert!(lock(&authn.flights).is_empty(), "no flight left behind");
}
