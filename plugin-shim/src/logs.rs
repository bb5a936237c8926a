//! The plugin's log: its stderr, forwarded line by line to the container log under a rate limit
//! (default 100 lines per minute), so a plugin that floods its log cannot fill the node's disk or
//! drown the logs of everything else. Lines over the limit are dropped and counted: the first drop
//! of a burst is announced at once, the count when lines flow again. Overlong lines are cut.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use airlock_core::rate::{LineBudget, MAX_LOG_LINE_BYTES};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::time::Instant;

/// Lines dropped so far, over every plugin process of this shim.
#[derive(Debug, Default)]
pub struct LogStats {
    pub forwarded: AtomicU64,
    pub dropped: AtomicU64,
}

/// Forwards `input` (the plugin's stderr) to `output` until it closes, within `budget`.
pub async fn forward<R, W>(
    input: R,
    mut output: W,
    budget: Arc<Mutex<LineBudget>>,
    stats: Arc<LogStats>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut reader = BufReader::new(input);
    let mut line = Vec::new();
    // Lines dropped since the last report: the first drop of a burst is announced at once, the
    // count when lines flow again (or the plugin's stderr closes).
    let mut dropped_since_report: u64 = 0;
    loop {
        line.clear();
        // A line longer than the cap is read in full (to stay in step) but cut when written.
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let allowed = budget
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take(Instant::now().into_std());
        if allowed {
            if dropped_since_report > 0 {
                let _ = output
                    .write_all(report(dropped_since_report).as_bytes())
                    .await;
                dropped_since_report = 0;
            }
            stats.forwarded.fetch_add(1, Ordering::Relaxed);
            let text = &line[..line.len().min(MAX_LOG_LINE_BYTES)];
            let _ = output.write_all(text).await;
            if !text.ends_with(b"\n") {
                let _ = output.write_all(b"\n").await;
            }
        } else {
            if dropped_since_report == 0 {
                let _ = output.write_all(OVER_LIMIT.as_bytes()).await;
            }
            stats.dropped.fetch_add(1, Ordering::Relaxed);
            dropped_since_report += 1;
        }
        let _ = output.flush().await;
    }
    if dropped_since_report > 0 {
        let _ = output
            .write_all(report(dropped_since_report).as_bytes())
            .await;
        let _ = output.flush().await;
    }
}

/// Written when a burst of lines starts being dropped.
pub const OVER_LIMIT: &str =
    "airlock-shim: the plugin's log is over its rate limit; dropping lines until it refills\n";

fn report(dropped: u64) -> String {
    format!("airlock-shim: {dropped} plugin log lines dropped (over the log rate limit)\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_flood_is_cut_to_the_budget_and_the_drops_are_reported() {
        let flood: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let mut out = Vec::new();
        let stats = Arc::new(LogStats::default());
        let budget = Arc::new(Mutex::new(LineBudget::new(100, Instant::now().into_std())));
        forward(flood.as_bytes(), &mut out, budget, stats.clone()).await;
        let text = String::from_utf8(out).expect("utf8");
        assert_eq!(stats.forwarded.load(Ordering::Relaxed), 100);
        assert_eq!(stats.dropped.load(Ordering::Relaxed), 900);
        assert!(text.starts_with("line 0\nline 1\n"));
        assert!(
            text.ends_with(
                "airlock-shim: 900 plugin log lines dropped (over the log rate limit)\n"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn overlong_lines_are_cut() {
        let long = format!("{}\nnext\n", "x".repeat(10_000));
        let mut out = Vec::new();
        let budget = Arc::new(Mutex::new(LineBudget::new(100, Instant::now().into_std())));
        forward(long.as_bytes(), &mut out, budget, Arc::default()).await;
        let text = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0].len(), MAX_LOG_LINE_BYTES);
        assert_eq!(lines[1], "next");
    }
}
