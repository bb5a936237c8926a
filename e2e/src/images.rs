//! Images the tests run, and pushing new ones to the cluster's registry with `crane`.
//!
//! `make e2e-images` (run by `make test`) builds the probe image and pushes it; the tests only
//! read its reference from the environment so that another cluster can use another registry.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// The registry the local cluster's containerd pulls from (plain HTTP on the node address).
pub const LOCAL_REGISTRY: &str = "198.19.255.1:5000";

/// `host:port` of the registry the tests push to and the kubelet pulls from.
pub fn registry() -> String {
    std::env::var("AIRLOCK_E2E_REGISTRY").unwrap_or_else(|_| LOCAL_REGISTRY.to_string())
}

/// The probe image (see `e2e/probe`), pushed by `make e2e-images`.
pub fn probe_image() -> String {
    std::env::var("AIRLOCK_E2E_PROBE_IMAGE")
        .unwrap_or_else(|_| format!("{}/airlock/e2e-probe:dev", registry()))
}

/// Runs `crane <args>` against the (plain HTTP) test registry and returns its trimmed stdout.
pub fn crane(args: &[&str]) -> Result<String> {
    let bin = std::env::var("CRANE").unwrap_or_else(|_| "crane".to_string());
    let out = Command::new(&bin)
        .args(args)
        .arg("--insecure")
        .output()
        .with_context(|| {
            format!("running {bin}: put crane on PATH (make e2e-images does) or set CRANE")
        })?;
    if !out.status.success() {
        bail!(
            "crane {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Pushes a new image, never seen by the node before, derived from `base` with a unique
/// environment variable (so its config and manifest digest are new), and returns
/// `(reference by tag, manifest digest)`.
pub fn push_unique_variant(base: &str, repository: &str) -> Result<(String, String)> {
    let suffix = crate::unique_suffix();
    let target = format!("{}/{repository}:{suffix}", registry());
    crane(&[
        "mutate",
        base,
        "--env",
        &format!("AIRLOCK_E2E_NONCE={suffix}"),
        "-t",
        &target,
    ])?;
    let digest = crane(&["digest", &target])?;
    Ok((target, digest))
}
