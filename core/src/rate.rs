//! A token bucket of lines per minute, refilled continuously. Pure: the caller passes the time, so
//! the shim (a plugin's stderr) and the router (the host `log` call) share one limiter and tests
//! need no clock.

use std::time::Instant;

/// Longest log line a plugin may write (stderr or the host `log` call); the rest is cut.
pub const MAX_LOG_LINE_BYTES: usize = 4096;

#[derive(Debug, Clone)]
pub struct LineBudget {
    per_minute: u32,
    tokens: f64,
    last: Instant,
}

impl LineBudget {
    /// A full bucket of `per_minute` lines at `now`.
    pub fn new(per_minute: u32, now: Instant) -> Self {
        Self {
            per_minute,
            tokens: f64::from(per_minute),
            last: now,
        }
    }

    /// Whether one more line may go out at `now`.
    pub fn take(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() / 60.0
            * f64::from(self.per_minute);
        self.tokens = (self.tokens + refill).min(f64::from(self.per_minute));
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_full_bucket_empties_then_refills_with_time() {
        let t0 = Instant::now();
        let mut b = LineBudget::new(2, t0);
        assert!(b.take(t0));
        assert!(b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_secs(30)));
        assert!(!b.take(t0 + Duration::from_secs(30)));
    }
}
