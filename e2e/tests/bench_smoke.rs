//! A bounded smoke of `make bench` in the suite: the benches are binaries that must keep working
//! against the real cluster, but their full runs take minutes. Each runs here with small counts;
//! the test checks that it finished and printed its report, never its numbers.

use std::process::Command;

use anyhow::{Result, ensure};

/// The controller bench scales the operator to zero for its floor, and both it and the KWOK
/// bench read the operator's counters: they take turns.
static OPERATOR: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn run_bench(bin: &str, env: &[(&str, &str)]) -> Result<String> {
    let out = Command::new(bin).envs(env.iter().copied()).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    ensure!(
        out.status.success(),
        "{bin} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[test]
fn the_controller_bench_reports_on_a_few_plugins() -> Result<()> {
    let _turn = OPERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let report = run_bench(
        env!("CARGO_BIN_EXE_controller-bench"),
        &[("BENCH_PLUGINS", "20"), ("BENCH_STEADY_SECONDS", "5")],
    )?;
    for line in [
        "== airlock controller bench: 20 disabled Plugins ==",
        "time to steady state:",
        "API server floor:",
        "API requests per Plugin:",
        "API writes/min, steady state:",
        "operator RSS:",
    ] {
        ensure!(
            report.contains(line),
            "no {line:?} in the report:\n{report}"
        );
    }
    Ok(())
}

#[test]
fn the_router_bench_reports_every_path_and_its_floors() -> Result<()> {
    let report = run_bench(
        env!("CARGO_BIN_EXE_router-bench"),
        &[("BENCH_ROUTER_CALLS", "50"), ("BENCH_ROUTER_SECONDS", "2")],
    )?;
    for line in [
        "floor: bare tonic echo",
        "floor: pipe round trip",
        "via router / floor",
        "CPU per call: router",
        "concurrency 4 / 1:",
        "a pod deleted mid-window",
    ] {
        ensure!(
            report.contains(line),
            "no {line:?} in the report:\n{report}"
        );
    }
    Ok(())
}

#[test]
fn the_kwok_bench_reports_on_a_few_plugins_on_fake_nodes() -> Result<()> {
    let _turn = OPERATOR.lock().unwrap_or_else(|e| e.into_inner());
    let report = run_bench(
        env!("CARGO_BIN_EXE_kwok-bench"),
        &[
            ("BENCH_KWOK_PLUGINS", "20"),
            ("BENCH_KWOK_NAMESPACES", "2"),
            ("BENCH_STEADY_SECONDS", "5"),
        ],
    )?;
    for line in [
        "== airlock control plane bench: 20 enabled Plugins in 2 namespaces on KWOK nodes ==",
        "time to all Active:",
        "API requests per Plugin:",
        "API writes/min, steady state:",
        "operator RSS:",
        "operator CPU:",
        "router replicas:",
    ] {
        ensure!(
            report.contains(line),
            "no {line:?} in the report:\n{report}"
        );
    }
    Ok(())
}
