//! How Airlock's processes watch the API server: settings shared by the router's and the
//! operator's watches, so that a watch is never stale for long after the API server comes back.

use std::time::Duration;

use kube::runtime::watcher;

/// How long the API server keeps one watch request open (`timeoutSeconds`). kube's default is 290 s,
/// and a watch whose connection died silently (no TCP keepalive, no read timeout on the body) is
/// noticed only after it plus 5 s; at 55 s the API server ends each watch (a bookmark before),
/// the watcher resumes from the last version (served from the watch cache, no relist), and a
/// dead connection is found within a minute. Cost: one watch request per watch per minute.
pub const WATCH_TIMEOUT_SECONDS: u32 = 55;

/// The watcher configuration every Airlock watch starts from: [`WATCH_TIMEOUT_SECONDS`].
pub fn config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS)
}

/// First wait after a watch failed.
pub const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Longest wait between a watch's retries. kube's default (client-go's) grows to 30 s with up to
/// 100 % jitter and is reset only by an event, so after an API server restart the errors in a row
/// (connection refused while the Service has no endpoint, then `410 Expired`, then a list that
/// times out) stacked up to minutes before a router learnt a new Plugin (make chaos
/// apiserver-restarted). A handful of watches per pod can afford retrying every 5 s.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Exponential backoff from [`BACKOFF_FIRST`], doubling to [`BACKOFF_MAX`], back to the start
/// after any event of the watch.
#[derive(Debug, Clone, Copy)]
pub struct WatchBackoff {
    next: Duration,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: BACKOFF_FIRST,
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let now = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        Some(now)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = BACKOFF_FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::utils::Backoff;

    #[test]
    fn retries_grow_to_five_seconds_and_start_over_after_an_event() {
        let mut b = WatchBackoff::default();
        let waits: Vec<u64> = b.by_ref().take(6).map(|d| d.as_millis() as u64).collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(BACKOFF_FIRST));
    }

    #[test]
    fn every_watch_asks_the_api_server_to_end_it_within_a_minute() {
        assert_eq!(config().timeout, Some(55));
    }
}
