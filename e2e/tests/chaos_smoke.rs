//! A bounded smoke of `make chaos` in the suite: each scenario of `e2e/src/bin/chaos.rs` but
//! `certificate-rotated` (it waits out a 10-minute certificate; `make chaos` runs it) runs one
//! round against the real cluster and must keep its promise (the binary exits non-zero otherwise). A test binary of its own: it deletes router
//! pods and restarts the registry, the kubelet and containerd, and cargo runs test binaries one
//! after another, so no other test's calls see it. Every scenario checks that the cluster came back before it passes.

use std::process::Command;

use anyhow::{Result, ensure};

#[test]
fn one_round_of_each_chaos_scenario_keeps_its_promise() -> Result<()> {
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .env("CHAOS_ROUNDS", "1")
        .env("CHAOS_WORKERS", "4")
        .env("CHAOS_PLUGINS", "10")
        .env("CHAOS_KILLS", "2")
        .env("CHAOS_ROLLOUT_PLUGINS", "5")
        .env(
            "CHAOS_SCENARIOS",
            "router-pod-deleted,operator-leader-killed,apiserver-restarted,registry-down,kubelet-containerd-restarted",
        )
        .env("CHAOS_REGISTRY_DOWN_SECONDS", "20")
        .output()?;
    let report = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "make chaos failed ({}):\n{report}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "== chaos router-pod-deleted:",
        "router-pod-deleted: PASS",
        "== chaos operator-leader-killed:",
        "operator-leader-killed: PASS",
        "== chaos apiserver-restarted:",
        "apiserver-restarted: PASS",
        "== chaos registry-down:",
        "registry-down: PASS",
        "== chaos kubelet-containerd-restarted:",
        "kubelet-containerd-restarted: PASS",
    ] {
        ensure!(
            report.contains(line),
            "no {line:?} in the report:\n{report}"
        );
    }
    Ok(())
}
