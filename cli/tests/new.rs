//! `new --lang rust|go|python` with the real binary: each skeleton builds with its own toolchain
//! (cargo, go; Python needs none) and passes its own test cases with `run --test`, its SDK (copied
//! in) speaking to the real shim and the router's host API — the SDKs' conformance test.

#![allow(clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn airlockctl(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_airlockctl"))
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .expect("running airlockctl")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `new --lang LANG NAME` in a fresh directory, then `build` there, then `run --test`; the cases'
/// JSON results.
fn made_built_and_tested(lang: &str, name: &str, build: &[&[&str]], entry: &[&str]) {
    let parent = tempfile::tempdir().expect("dir");
    let out = airlockctl(parent.path(), &["new", "--lang", lang, name]);
    assert!(out.status.success(), "new: {}", text(&out.stderr));
    let dir = parent.path().join(name);
    for step in build {
        let status = Command::new(step[0])
            .args(&step[1..])
            .current_dir(&dir)
            .env("CARGO_TARGET_DIR", dir.join("target"))
            .env("GOTOOLCHAIN", "local")
            .env("GOFLAGS", "-mod=mod")
            .status()
            .unwrap_or_else(|e| panic!("{}: {e}", step.join(" ")));
        assert!(status.success(), "{lang}: {} failed", step.join(" "));
    }
    let mut args = vec!["run", "bundle", "--test", "cases.yaml", "-o", "json"];
    if !entry.is_empty() {
        args.push("--");
        args.extend(entry);
    }
    let out = airlockctl(&dir, &args);
    assert!(
        out.status.success(),
        "{lang}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let results: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let results = results.as_array().expect("a list");
    assert_eq!(results.len(), 4, "{lang}: {results:?}");
    assert!(
        results.iter().all(|r| r["passed"] == true),
        "{lang}: {results:?}"
    );
}

#[test]
fn a_python_skeleton_passes_its_cases() {
    made_built_and_tested("python", "py-greeter", &[], &[]);
}

#[test]
fn a_go_skeleton_builds_and_passes_its_cases() {
    made_built_and_tested(
        "go",
        "go-greeter",
        &[&["go", "build", "-o", "go-greeter", "."]],
        &["./go-greeter"],
    );
}

#[test]
fn a_rust_skeleton_builds_and_passes_its_cases() {
    made_built_and_tested(
        "rust",
        "rs-greeter",
        &[&["cargo", "build", "--offline", "-q"]],
        &["target/debug/rs-greeter"],
    );
}
