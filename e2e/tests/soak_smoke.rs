//! A bounded smoke of `make soak` in the suite: one minute on ten plugins (one failing at random),
//! a row every 20 s, and its verdict without the latency bound: no healthy call fails, no healthy
//! plugin is auto-disabled, no router restarts, RSS and descriptors stay flat (the binary exits
//! non-zero otherwise). A test binary of its
//! own, so that no other test's calls share the CPU with its load and skew its ratios.

use std::process::Command;

use anyhow::{Result, ensure};

#[test]
fn a_minute_of_load_with_a_failing_plugin_keeps_the_healthy_ones_served() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_soak"))
        .env("SOAK_PLUGINS", "10")
        .env("SOAK_SECONDS", "60")
        .env("SOAK_ROW_SECONDS", "20")
        // The latency ratio is printed, not judged: no timing threshold in a test.
        .env("SOAK_P99_FACTOR", "0")
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "make soak failed ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "== airlock soak: 10 plugins (1 failing at random)",
        "floor under the same load",
        "healthy p99, worst row:",
        "soak: PASS",
    ] {
        ensure!(
            report.contains(line),
            "no {line:?} in the report:\n{report}"
        );
    }
    Ok(())
}
