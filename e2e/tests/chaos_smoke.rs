//! A bounded smoke of `make chaos` in the suite: each scenario of `e2e/src/bin/chaos.rs` but
//! `apiserver-restarted` (see below) runs one round against the real cluster and must keep its
//! promise (the binary exits non-zero otherwise). A test binary of its own: it deletes router
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
        // Not apiserver-restarted: it passed in 4 of 5 runs on 2026-12-04; the failure was a
        // race of the scenario (Plugins reconciled by the old operator leader, with the
        // suite's 20 s progress deadline, right after the upgrade to 120 s). The scenario now
        // waits for the new leader; back in once it has passed repeatedly.
        .env(
            "CHAOS_SCENARIOS",
            "router-pod-deleted,operator-leader-killed,registry-down,kubelet-containerd-restarted",
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
