//! Authentication of a request: its bearer token ([`super::token`]), pre-checked locally, then
//! reviewed by the API server ([`super::review`]) unless a recent answer for the same token is
//! cached ([`super::cache`]).
//!
//! Caching: a token the API server accepted is trusted for at most [`ACCEPTED_FOR`] (60 seconds)
//! and never past its own `exp`; so a deleted ServiceAccount keeps calling for at most that long
//! (a deleted *binding* takes effect at once: authorization is decided per call). A token the API
//! server refused is remembered for [`REFUSED_FOR`] only — long enough that a caller retrying a bad
//! token in a loop costs the API server one review every few seconds, short enough that a token
//! that just became valid (a new ServiceAccount) works almost at once. A review that could not be
//! made is not cached at all.
//!
//! Cost to an attacker without a token: a token that cannot be one for the router (not a JWT, not
//! for its audience, expired) is refused before any review ([`token::precheck`]). Whatever passes
//! it needs a place among the reviews in flight ([`super::lanes`]): strangers share one lane,
//! callers accepted before have their own, and a full lane answers UNAVAILABLE at once instead of
//! queueing. Calls with the same token while it is being reviewed share that one review, so a
//! burst of one caller's calls takes one place, not one each.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::OnceCell;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

use super::CallerId;
use super::cache::ReviewCache;
use super::lanes::{KNOWN_FOR, LanesFull, ReviewLanes};
use super::review::{Rejected, TokenReviewer, judge};
use super::token::{self, TokenError, TokenHash, Unfit, how_to_get_a_token};
use crate::metrics::Metrics;

/// Longest an accepted review is reused (capped by the token's `exp`): how long a deleted
/// ServiceAccount keeps access at most. Short, because the known-caller lane makes the re-review
/// cheap for the caller (it never waits behind strangers).
pub const ACCEPTED_FOR: Duration = Duration::from_secs(60);
/// How long a refused review is reused.
pub const REFUSED_FOR: Duration = Duration::from_secs(2);
/// Accepted tokens remembered per replica (oldest evicted first).
pub const ACCEPTED_ENTRIES: usize = 10_000;
/// Refused tokens remembered per replica, apart from the accepted ones: a flood of bad tokens
/// never evicts a good caller's entry.
pub const REFUSED_ENTRIES: usize = 1_000;

/// Why a request is not authenticated. No variant holds the token; the messages say what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    /// No usable `authorization: Bearer` metadata (UNAUTHENTICATED).
    #[error("no caller identity: {reason}; {}", how_to_get_a_token(.audience))]
    NoToken {
        reason: TokenError,
        audience: String,
    },
    /// The token cannot be one for the router; refused without a review (UNAUTHENTICATED).
    #[error(
        "the caller's token is refused: the router did not accept the token for the audience \
         {audience}: {reason}; {}",
        how_to_get_a_token(.audience)
    )]
    Unfit { reason: Unfit, audience: String },
    /// The API server refused the token for the router (UNAUTHENTICATED).
    #[error("the caller's token is refused: {0}")]
    Rejected(Rejected),
    /// Every place among the reviews in flight this token may use is taken (UNAVAILABLE: retry).
    #[error(transparent)]
    Busy(LanesFull),
    /// The token could not be reviewed now (UNAVAILABLE: retry).
    #[error("cannot check the caller's token now ({0}); retry later")]
    Unavailable(String),
}

/// The answer to a review, shared by every call with the same token that waits for it.
type Answer = Result<CallerId, AuthnError>;

/// Authenticates requests, caching the API server's answers by the token's hash.
pub struct Authenticator {
    reviewer: Arc<dyn TokenReviewer>,
    audience: String,
    accepted: Mutex<ReviewCache<CallerId>>,
    refused: Mutex<ReviewCache<Rejected>>,
    lanes: ReviewLanes,
    /// Reviews in flight by token: later calls with the token wait for the answer of the first.
    /// An entry lives only while a call is inside [`Authenticator::authenticate`] for it.
    flights: Mutex<HashMap<TokenHash, Arc<OnceCell<Answer>>>>,
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
        Self::with_lanes(reviewer, audience, metrics, ReviewLanes::default())
    }

    /// An authenticator with these review lanes (tests size them).
    pub fn with_lanes(
        reviewer: Arc<dyn TokenReviewer>,
        audience: String,
        metrics: Metrics,
        lanes: ReviewLanes,
    ) -> Self {
        Self {
            reviewer,
            audience,
            accepted: Mutex::new(ReviewCache::new(ACCEPTED_ENTRIES)),
            refused: Mutex::new(ReviewCache::new(REFUSED_ENTRIES)),
            lanes,
            flights: Mutex::default(),
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
        token::precheck(token, &self.audience, unix_now()).map_err(|reason| AuthnError::Unfit {
            reason,
            audience: self.audience.clone(),
        })?;
        let flight = Flight::join(&self.flights, key);
        flight
            .answer
            .get_or_init(|| self.review(token, key))
            .await
            .clone()
    }

    /// Reviews `token` (hash `key`) if a place is free now, and caches the answer.
    async fn review(&self, token: &str, key: TokenHash) -> Answer {
        // A review of the same token may have ended between the look-up and joining its flight.
        if let Some(known) = self.cached(&key) {
            return known;
        }
        let _place = self.lanes.enter(&key, Instant::now()).map_err(|full| {
            self.metrics.token_review("busy");
            AuthnError::Busy(full)
        })?;
        let status = match self.reviewer.review(token, &self.audience).await {
            Ok(status) => status,
            Err(e) => {
                self.metrics.token_review("error");
                return Err(AuthnError::Unavailable(token::scrub(&e.to_string(), token)));
            }
        };
        let (now, unix) = (Instant::now(), unix_now());
        match judge(&status, &self.audience) {
            Ok(caller) => {
                self.metrics.token_review("authenticated");
                let ttl = reuse_for(token, unix, ACCEPTED_FOR);
                if !ttl.is_zero() {
                    lock(&self.accepted).insert(key, caller.clone(), now + ttl);
                    self.lanes
                        .accepted(key, now + reuse_for(token, unix, KNOWN_FOR));
                }
                Ok(caller)
            }
            Err(rejected) => {
                self.metrics.token_review("rejected");
                self.lanes.refused(&key);
                let rejected = scrubbed(rejected, token);
                lock(&self.refused).insert(key, rejected.clone(), now + REFUSED_FOR);
                Err(AuthnError::Rejected(rejected))
            }
        }
    }

    fn cached(&self, key: &TokenHash) -> Option<Answer> {
        let now = Instant::now();
        if let Some(caller) = lock(&self.accepted).get(key, now) {
            return Some(Ok(caller));
        }
        lock(&self.refused)
            .get(key, now)
            .map(|r| Err(AuthnError::Rejected(r)))
    }
}

/// One call's share of the review of its token: the first call of a token makes the review, the
/// others wait for its answer (if the first is cancelled, the next waiting call makes it). The
/// entry is removed when the call that made it is done, so the map holds only reviews in flight.
struct Flight<'a> {
    flights: &'a Mutex<HashMap<TokenHash, Arc<OnceCell<Answer>>>>,
    key: TokenHash,
    answer: Arc<OnceCell<Answer>>,
}

impl<'a> Flight<'a> {
    fn join(flights: &'a Mutex<HashMap<TokenHash, Arc<OnceCell<Answer>>>>, key: TokenHash) -> Self {
        let answer = lock(flights).entry(key).or_default().clone();
        Self {
            flights,
            key,
            answer,
        }
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut flights = lock(self.flights);
        if flights
            .get(&self.key)
            .is_some_and(|a| Arc::ptr_eq(a, &self.answer))
        {
            flights.remove(&self.key);
        }
    }
}

/// How long an accepted review of `token` may be reused at `unix_now` (seconds since the epoch):
/// [`ACCEPTED_FOR`], or less when the token expires sooner (zero: not at all).
pub fn accepted_for(token: &str, unix_now: u64) -> Duration {
    reuse_for(token, unix_now, ACCEPTED_FOR)
}

/// `longest`, or less when `token` expires sooner.
fn reuse_for(token: &str, unix_now: u64, longest: Duration) -> Duration {
    match token::expiry(token) {
        Some(exp) => Duration::from_secs(exp.saturating_sub(unix_now)).min(longest),
        None => longest,
    }
}

pub(crate) fn unix_now() -> u64 {
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
pub(crate) mod tests;
