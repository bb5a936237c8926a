//! The rules of the `Log` call: its levels, how long a message may be, and the per-plugin rate
//! limit (default 100 lines a minute). Lines over the limit are dropped and counted, not refused:
//! a plugin that logs too much loses lines, never its invocation.
//!
//! The limiter is the shim's token bucket ([`LineBudget`]), one per plugin, so a plugin's stderr
//! and its host log calls are limited the same way. It is pure: the caller passes the time in.
//! Each router replica keeps its own limiter, so the limit holds per replica.

use std::collections::BTreeMap;

use airlock_core::rate::{LineBudget, MAX_LOG_LINE_BYTES};
use tokio::time::Instant;

/// Lines a plugin may log per minute unless configured otherwise.
pub const DEFAULT_LINES_PER_MINUTE: u32 = 100;

/// Longest message logged; the rest is cut. The same as a line of the plugin's stderr.
pub const MAX_MESSAGE_BYTES: usize = MAX_LOG_LINE_BYTES;

/// The level of a log line, as the plugin names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

impl Level {
    /// Parses exactly "debug", "info", "warn" or "error": one spelling each, so what a plugin
    /// writes is what shows up in the log.
    pub fn parse(level: &str) -> Result<Self, BadLevel> {
        match level {
            "debug" => Ok(Self::Debug),
            "info" => Ok(Self::Info),
            "warn" => Ok(Self::Warn),
            "error" => Ok(Self::Error),
            _ => Err(BadLevel),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// A level that is not one of the four. The level sent is not repeated: it is the plugin's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the log level must be one of debug, info, warn, error")]
pub struct BadLevel;

/// `message` cut to at most [`MAX_MESSAGE_BYTES`], at a character boundary.
pub fn cut_message(message: &str) -> &str {
    &message[..message.floor_char_boundary(MAX_MESSAGE_BYTES)]
}

/// What happens to one log line of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Whether the line goes out; false when the plugin is over its rate limit.
    pub kept: bool,
    /// Lines of this plugin dropped so far, this one included.
    pub dropped: u64,
    /// Lines dropped in a row, so drops can be reported once per burst (as the shim does for
    /// stderr) rather than once per line. For a kept line: how many were dropped just before it
    /// (the burst that just ended; 0 if none). For a dropped line: the burst so far, this one
    /// included (1 = a burst starts).
    pub dropped_in_burst: u64,
}

/// Per-plugin log rate limits, keyed by the plugin's identity `K`.
#[derive(Debug)]
pub struct LogLimiter<K> {
    per_minute: u32,
    plugins: BTreeMap<K, PluginLog>,
}

#[derive(Debug)]
struct PluginLog {
    budget: LineBudget,
    rate: u32,
    dropped: u64,
    dropped_in_burst: u64,
}

impl<K: Ord + Clone> LogLimiter<K> {
    /// A limiter that lets each plugin log `per_minute` lines a minute (a burst of that many,
    /// refilled continuously).
    pub fn new(per_minute: u32) -> Self {
        Self {
            per_minute,
            plugins: BTreeMap::new(),
        }
    }

    /// Decides whether `plugin` may log one more line at `now`, and counts it.
    pub fn admit(&mut self, plugin: &K, now: Instant) -> Admission {
        self.admit_at_rate(plugin, self.per_minute, now)
    }

    /// [`LogLimiter::admit`] for a plugin whose own rate is `per_minute` (from its trust level).
    /// A changed rate starts a fresh budget at the new rate; the drop count is kept.
    pub fn admit_at_rate(&mut self, plugin: &K, per_minute: u32, now: Instant) -> Admission {
        let now = now.into_std();
        let log = self
            .plugins
            .entry(plugin.clone())
            .or_insert_with(|| PluginLog {
                budget: LineBudget::new(per_minute, now),
                rate: per_minute,
                dropped: 0,
                dropped_in_burst: 0,
            });
        if log.rate != per_minute {
            log.budget = LineBudget::new(per_minute, now);
            log.rate = per_minute;
        }
        if log.budget.take(now) {
            let burst = std::mem::take(&mut log.dropped_in_burst);
            Admission {
                kept: true,
                dropped: log.dropped,
                dropped_in_burst: burst,
            }
        } else {
            log.dropped += 1;
            log.dropped_in_burst += 1;
            Admission {
                kept: false,
                dropped: log.dropped,
                dropped_in_burst: log.dropped_in_burst,
            }
        }
    }

    /// Lines of `plugin` dropped so far.
    pub fn dropped(&self, plugin: &K) -> u64 {
        self.plugins.get(plugin).map_or(0, |log| log.dropped)
    }

    /// Forgets `plugin` (when it is deleted), so the limiter does not grow with every plugin
    /// ever seen. A plugin that logs again starts with a full budget.
    pub fn forget(&mut self, plugin: &K) {
        self.plugins.remove(plugin);
    }
}

impl<K: Ord + Clone> Default for LogLimiter<K> {
    fn default() -> Self {
        Self::new(DEFAULT_LINES_PER_MINUTE)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn levels_are_the_four_lower_case_names() {
        for level in [Level::Debug, Level::Info, Level::Warn, Level::Error] {
            assert_eq!(Level::parse(level.as_str()), Ok(level));
        }
        for bad in ["", "INFO", "warning", "fatal", "trace"] {
            assert_eq!(Level::parse(bad), Err(BadLevel), "{bad:?}");
        }
        assert_eq!(
            BadLevel.to_string(),
            "the log level must be one of debug, info, warn, error"
        );
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        assert_eq!(cut_message("short"), "short");
        let exact = "x".repeat(MAX_MESSAGE_BYTES);
        assert_eq!(cut_message(&exact), exact);
        // 4095 ASCII bytes then a 2-byte character that would straddle the limit.
        let straddling = format!("{}é and more", "x".repeat(MAX_MESSAGE_BYTES - 1));
        assert_eq!(cut_message(&straddling), "x".repeat(MAX_MESSAGE_BYTES - 1));
    }

    #[test]
    fn a_plugin_over_its_budget_loses_lines_and_they_are_counted() {
        let t0 = Instant::now();
        let mut limiter = LogLimiter::default();
        let plugin = "team-a/hello";
        let kept = (0..150).filter(|_| limiter.admit(&plugin, t0).kept).count();
        assert_eq!(kept, 100);
        assert_eq!(limiter.dropped(&plugin), 50);

        // 30 s later half the budget is back; the first kept line reports the burst of 50.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(
            limiter.admit(&plugin, later),
            Admission {
                kept: true,
                dropped: 50,
                dropped_in_burst: 50
            }
        );
        let kept = (0..100)
            .filter(|_| limiter.admit(&plugin, later).kept)
            .count();
        assert_eq!(kept, 49);
        assert_eq!(limiter.dropped(&plugin), 101);
    }

    #[test]
    fn a_burst_of_drops_is_reported_from_its_first_line() {
        let t0 = Instant::now();
        let mut limiter = LogLimiter::new(2);
        let p = "p";
        assert!(limiter.admit(&p, t0).kept);
        assert!(limiter.admit(&p, t0).kept);
        let first = limiter.admit(&p, t0);
        assert_eq!(
            first,
            Admission {
                kept: false,
                dropped: 1,
                dropped_in_burst: 1
            }
        );
        assert_eq!(limiter.admit(&p, t0).dropped_in_burst, 2);
        let next = limiter.admit(&p, t0 + Duration::from_secs(30));
        assert_eq!((next.kept, next.dropped_in_burst), (true, 2));
        // The burst was reported; the following kept line has nothing to report.
        let after = limiter.admit(&p, t0 + Duration::from_secs(60));
        assert_eq!((after.kept, after.dropped_in_burst), (true, 0));
    }

    #[test]
    fn plugins_have_separate_budgets_and_a_forgotten_plugin_starts_afresh() {
        let t0 = Instant::now();
        let mut limiter = LogLimiter::new(1);
        assert!(limiter.admit(&"flood", t0).kept);
        assert!(!limiter.admit(&"flood", t0).kept);
        // Another plugin is not affected by the flood.
        assert!(limiter.admit(&"quiet", t0).kept);
        assert_eq!(limiter.dropped(&"quiet"), 0);

        limiter.forget(&"flood");
        assert_eq!(limiter.dropped(&"flood"), 0);
        assert!(limiter.admit(&"flood", t0).kept);
    }
}
