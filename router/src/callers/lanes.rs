//! Who may ask the API server for a TokenReview now: two lanes of reviews in flight, neither with
//! a queue.
//!
//! Why two: a cache miss of an anonymous stranger and a cache miss of a caller the router has
//! accepted before look the same to the API server, but not to the router. Strangers share
//! [`STRANGER_REVIEWS`] places; a token whose SHA-256 was accepted within [`KNOWN_FOR`] (a caller
//! whose answer merely expired from the cache) gets [`KNOWN_REVIEWS`] places of its own, and a
//! stranger's place too when those are taken. Nobody can forge their way into the known lane:
//! it takes a token whose hash the API server accepted. So a flood of made-up tokens (which pass
//! the pre-check by construction: claims are unverified) fills the strangers' lane at most, and
//! known callers keep working.
//!
//! Why no queue: a queue in front of the API server makes every stranger's request wait its turn
//! behind the flood, each holding its connection slot and its request in memory; a full lane
//! answers UNAVAILABLE at once (retry), which costs the router nothing.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use super::cache::ReviewCache;
use super::token::TokenHash;

/// Reviews in flight per replica for tokens the router has not accepted before.
pub const STRANGER_REVIEWS: usize = 32;
/// Reviews in flight per replica for tokens it has accepted before (re-reviews).
pub const KNOWN_REVIEWS: usize = 32;
/// How long an accepted token's hash stays known (capped by the token's own `exp`): longer than
/// the answer cache, so that a re-review when the answer expires is a known caller's.
pub const KNOWN_FOR: Duration = Duration::from_secs(60 * 60);
/// Accepted tokens' hashes remembered per replica (oldest forgotten first).
pub const KNOWN_ENTRIES: usize = 10_000;

/// The lane a review runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Known,
    Stranger,
}

/// Every place in the lanes this token may use is taken (UNAVAILABLE).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("too many token reviews in flight; retry")]
pub struct LanesFull;

/// A place among the reviews in flight, given back when dropped.
#[derive(Debug)]
pub struct Place<'a> {
    pub lane: Lane,
    _permit: SemaphorePermit<'a>,
}

#[derive(Debug)]
pub struct ReviewLanes {
    known: Semaphore,
    strangers: Semaphore,
    accepted_before: Mutex<ReviewCache<()>>,
}

impl Default for ReviewLanes {
    fn default() -> Self {
        Self::new(KNOWN_REVIEWS, STRANGER_REVIEWS)
    }
}

impl ReviewLanes {
    pub fn new(known: usize, strangers: usize) -> Self {
        Self {
            known: Semaphore::new(known),
            strangers: Semaphore::new(strangers),
            accepted_before: Mutex::new(ReviewCache::new(KNOWN_ENTRIES)),
        }
    }

    /// A place for a review of the token `key` at `now`, at once or not at all.
    pub fn enter(&self, key: &TokenHash, now: Instant) -> Result<Place<'_>, LanesFull> {
        let known = lock(&self.accepted_before).get(key, now).is_some();
        if known && let Ok(permit) = self.known.try_acquire() {
            return Ok(Place {
                lane: Lane::Known,
                _permit: permit,
            });
        }
        self.strangers
            .try_acquire()
            .map(|permit| Place {
                lane: Lane::Stranger,
                _permit: permit,
            })
            .map_err(|_| LanesFull)
    }

    /// The API server accepted the token `key`: known until `until`.
    pub fn accepted(&self, key: TokenHash, until: Instant) {
        lock(&self.accepted_before).insert(key, (), until);
    }

    /// The API server refused the token `key`: a stranger again.
    pub fn refused(&self, key: &TokenHash) {
        lock(&self.accepted_before).remove(key);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strangers_fill_their_lane_only_and_are_refused_at_once() {
        let lanes = ReviewLanes::new(1, 2);
        let now = Instant::now();
        let known = TokenHash::of("known");
        lanes.accepted(known, now + KNOWN_FOR);
        let s1 = lanes
            .enter(&TokenHash::of("s1"), now)
            .expect("a stranger's place");
        let _s2 = lanes
            .enter(&TokenHash::of("s2"), now)
            .expect("a stranger's place");
        assert_eq!(s1.lane, Lane::Stranger);
        assert_eq!(
            lanes.enter(&TokenHash::of("s3"), now).map(|p| p.lane),
            Err(LanesFull)
        );
        let k = lanes.enter(&known, now).expect("the known lane is free");
        assert_eq!(k.lane, Lane::Known);
        // The known lane taken too: a known caller may use a stranger's place, when one is free.
        assert_eq!(lanes.enter(&known, now).map(|p| p.lane), Err(LanesFull));
        drop(s1);
        assert_eq!(lanes.enter(&known, now).map(|p| p.lane), Ok(Lane::Stranger));
    }

    #[test]
    fn a_token_is_known_until_its_deadline_or_its_refusal() {
        let lanes = ReviewLanes::new(1, 0);
        let now = Instant::now();
        let key = TokenHash::of("t");
        assert_eq!(lanes.enter(&key, now).map(|p| p.lane), Err(LanesFull));
        lanes.accepted(key, now + KNOWN_FOR);
        assert_eq!(
            lanes
                .enter(&key, now + KNOWN_FOR - Duration::from_secs(1))
                .map(|p| p.lane),
            Ok(Lane::Known)
        );
        assert_eq!(
            lanes.enter(&key, now + KNOWN_FOR).map(|p| p.lane),
            Err(LanesFull)
        );
        lanes.accepted(key, now + KNOWN_FOR);
        lanes.refused(&key);
        assert_eq!(lanes.enter(&key, now).map(|p| p.lane), Err(LanesFull));
    }
}
