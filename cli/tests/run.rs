//! `run` with the real binary and the real examples: the Rust hello (built here) and the Python
//! python-upper run in the shim's sandbox on this machine, with the router's host API in-process,
//! and their test cases pass; a case that does not hold fails with exit code 1, naming the
//! difference; a permission the manifest does not declare is refused before anything runs.

#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn airlockctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlockctl"))
        .args(args)
        .current_dir(workspace())
        .env_remove("RUST_LOG")
        .output()
        .expect("running airlockctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The hello example's binary, built now if it is not up to date.
fn hello() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--locked", "-q", "-p", "airlock-example-hello"])
        .current_dir(workspace())
        .status()
        .expect("cargo build");
    assert!(
        built.success(),
        "cargo build -p airlock-example-hello failed"
    );
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    target.join("debug").join("hello")
}

#[test]
fn the_rust_example_passes_its_cases_and_answers_one_call() {
    let bin = hello();
    let bin = bin.to_str().expect("utf-8 path");
    let out = airlockctl(&[
        "run",
        "examples/hello",
        "--test",
        "examples/hello/cases.yaml",
        "-o",
        "json",
        "--",
        bin,
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(results.as_array().map(Vec::len), Some(2), "{results}");
    assert!(
        results
            .as_array()
            .expect("list")
            .iter()
            .all(|r| r["passed"] == true)
    );

    let out = airlockctl(&[
        "run",
        "examples/hello",
        "transform",
        "--payload",
        r#"{"name":"author"}"#,
        "--",
        bin,
    ]);
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(answer["greeting"], "hello, author", "{}", text(&out.stderr));
}

#[test]
fn the_python_example_upgrades_its_storage_and_passes_its_cases() {
    let out = airlockctl(&[
        "run",
        "examples/python-upper",
        "--test",
        "examples/python-upper/cases.yaml",
    ]);
    let report = text(&out.stdout);
    assert!(out.status.success(), "{report}{}", text(&out.stderr));
    assert!(report.ends_with("3 of 3 passed\n"), "{report}");
    // The plugin's own log line, through the shim, on the terminal.
    assert!(
        text(&out.stderr).contains("onUpgrade from 0.9.0 to 1.0.0"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn a_case_that_does_not_hold_fails_naming_the_difference() {
    let dir = tempfile::tempdir().expect("dir");
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "cases:\n- name: wrong on purpose\n  hook: transform\n  payload: {text: a}\n  expect:\n    output: {text: B, plugin: python-upper}\n    storage: {events: 1}\n",
    )
    .expect("write");
    let out = airlockctl(&[
        "run",
        "examples/python-upper",
        "--test",
        cases.to_str().expect("utf-8"),
    ]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}{}", text(&out.stderr));
    assert!(report.contains("FAIL wrong on purpose"), "{report}");
    assert!(report.contains(r#"output: expected {"plugin":"python-upper","text":"B"}, got {"plugin":"python-upper","text":"A"}"#), "{report}");
    assert!(
        report.contains(r#"storage "events": expected 1, got null"#),
        "{report}"
    );
    assert!(
        text(&out.stderr).contains("1 of 1 test case(s) failed"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn without_storage_write_granted_no_migration_runs_and_an_undeclared_grant_is_refused() {
    // python-upper's onUpgrade writes storage; granted only log and storage:read, the shim is told
    // not to send it (as the operator tells it), so the older version's key stays where it was.
    let dir = tempfile::tempdir().expect("dir");
    let cases = dir.path().join("cases.yaml");
    std::fs::write(
        &cases,
        "writtenBy: 0.9.0\nstorage: {seen: 7}\ncases:\n- name: no migration\n  hook: transform\n  payload: {text: x}\n  expect:\n    output: {text: X, plugin: python-upper}\n    storage: {seen: 7, events: null, upgradedFrom: null}\n",
    )
    .expect("write");
    let out = airlockctl(&[
        "run",
        "examples/python-upper",
        "--test",
        cases.to_str().expect("utf-8"),
        "--grant",
        "log,storage:read",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let refused = airlockctl(&[
        "run",
        "examples/python-upper",
        "transform",
        "--grant",
        "events:emit",
    ]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("NotDeclaredBySigner"),
        "{}",
        text(&refused.stderr)
    );
}
