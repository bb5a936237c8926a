//! The real `airlockctl` binary, for the tests that run it as users do.

use std::path::PathBuf;
use std::process::{Command, Output};

use anyhow::{Context, Result, ensure};

use crate::install::workspace;

/// The airlockctl binary of this workspace, built now if it is not up to date.
pub fn airlockctl() -> Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = Command::new(cargo)
        .args(["build", "--locked", "-q", "-p", "airlockctl"])
        .current_dir(workspace())
        .status()
        .context("running cargo build -p airlockctl")?;
    ensure!(built.success(), "cargo build -p airlockctl failed");
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace().join("target"));
    Ok(target.join("debug").join("airlockctl"))
}

/// `airlockctl args...`, which must succeed; its stdout.
pub fn succeed(bin: &std::path::Path, args: &[&str]) -> Result<String> {
    let out = run(bin, args)?;
    ensure!(
        out.status.success(),
        "airlockctl {} failed ({}): {}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `airlockctl args...` with the test's environment (its KUBECONFIG).
pub fn run(bin: &std::path::Path, args: &[&str]) -> Result<Output> {
    Command::new(bin)
        .args(args)
        .output()
        .with_context(|| format!("running airlockctl {}", args.join(" ")))
}
