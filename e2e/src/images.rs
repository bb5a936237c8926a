//! Images the tests run, and pushing new ones to the cluster's registry with `crane`.
//!
//! `make e2e-images` (run by `make test`) builds the probe image and pushes it; the tests only
//! read its reference from the environment so that another cluster can use another registry.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::artifacts::{IMAGE_USER, Image};

/// Pushes `image` (its one layer, run as [`IMAGE_USER`], with the layer's entry point) and
/// returns its reference by digest.
pub fn push(image: &Image) -> Result<String> {
    let layer = tempfile::NamedTempFile::new().context("creating the layer file")?;
    std::fs::write(layer.path(), image.layer.tar()?)
        .with_context(|| format!("writing the layer of {}", image.reference))?;
    let layer_path = layer.path().to_string_lossy().into_owned();
    crane(&["append", "-f", &layer_path, "-t", &image.reference])
        .with_context(|| format!("pushing {}", image.reference))?;
    let mut mutate = vec!["mutate".to_string(), format!("--user={IMAGE_USER}")];
    if let Some(entrypoint) = image.layer.entrypoint() {
        mutate.push(format!("--entrypoint={entrypoint}"));
    }
    mutate.push(image.reference.clone());
    crane(&mutate.iter().map(String::as_str).collect::<Vec<_>>())
        .with_context(|| format!("configuring {}", image.reference))?;
    let digest = crane(&["digest", &image.reference])?;
    let repository = strip_tag(&image.reference);
    Ok(format!("{repository}@{digest}"))
}

/// The registry the local cluster's containerd pulls from (plain HTTP on the node address).
pub const LOCAL_REGISTRY: &str = "198.19.255.1:5000";

/// `host:port` of the registry the tests push to and the kubelet pulls from.
pub fn registry() -> String {
    std::env::var("AIRLOCK_E2E_REGISTRY").unwrap_or_else(|_| LOCAL_REGISTRY.to_string())
}

/// The local cluster's second registry, which requires HTTP Basic auth (user
/// [`PRIVATE_REGISTRY_USER`], password made per cluster by `e2e/cluster/up.sh`). The node pulls
/// from it only with the pod's imagePullSecrets; containerd has no credentials of its own.
pub const PRIVATE_REGISTRY: &str = "198.19.255.1:5001";

/// The user of [`PRIVATE_REGISTRY`].
pub const PRIVATE_REGISTRY_USER: &str = "airlock-e2e";

/// Where `e2e/cluster/up.sh` keeps the private registry's password and docker config (the
/// cluster's state directory, `STATE` in `e2e/cluster/lib.sh`, may be moved with `AIRLOCK_STATE`).
fn private_registry_state_dir() -> PathBuf {
    let state =
        std::env::var("AIRLOCK_STATE").unwrap_or_else(|_| "/var/lib/airlock-cluster".to_string());
    Path::new(&state).join("registry-private")
}

/// A docker config directory (for `DOCKER_CONFIG`) with the credentials of [`PRIVATE_REGISTRY`]:
/// crane and cosign use it as it is; `config.json` in it is a ready `.dockerconfigjson`.
pub fn private_registry_docker_config_dir() -> PathBuf {
    private_registry_state_dir().join("docker-config")
}

/// `(user, password)` of [`PRIVATE_REGISTRY`]. Panics when the cluster has none (not started, or
/// started before the private registry existed).
pub fn private_registry_credentials() -> (String, String) {
    let file = private_registry_state_dir().join("password");
    let password = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "reading the private registry's password from {}: {e}; run `make cluster-up` \
             (it starts the private registry at {PRIVATE_REGISTRY})",
            file.display()
        )
    });
    (
        PRIVATE_REGISTRY_USER.to_string(),
        password.trim().to_string(),
    )
}

/// Copies the image `src` (from any registry crane reaches over plain HTTP, e.g. [`registry()`])
/// to `PRIVATE_REGISTRY/<dst_repo_tag>` and returns the pushed reference by digest
/// (`198.19.255.1:5001/<repo>@sha256:…`). Panics when crane fails.
pub fn copy_to_private_registry(src: &str, dst_repo_tag: &str) -> String {
    let config = private_registry_docker_config_dir();
    assert!(
        config.join("config.json").is_file(),
        "no docker config for the private registry at {}; run `make cluster-up`",
        config.display()
    );
    let dst = format!("{PRIVATE_REGISTRY}/{dst_repo_tag}");
    crane_with_config(&["copy", src, &dst], Some(&config))
        .unwrap_or_else(|e| panic!("copying {src} to the private registry: {e:#}"));
    let digest = crane_with_config(&["digest", &dst], Some(&config))
        .unwrap_or_else(|e| panic!("reading the digest of {dst}: {e:#}"));
    let repo = strip_tag(&dst);
    format!("{repo}@{digest}")
}

/// `host:port/repo:tag` → `host:port/repo` (a colon in the host part is not a tag).
fn strip_tag(reference: &str) -> &str {
    let reference = reference.split('@').next().unwrap_or(reference);
    match reference.rfind(':') {
        Some(i) if !reference[i..].contains('/') => &reference[..i],
        _ => reference,
    }
}

/// The probe image (see `e2e/probe`), pushed by `make e2e-images`.
pub fn probe_image() -> String {
    std::env::var("AIRLOCK_E2E_PROBE_IMAGE")
        .unwrap_or_else(|_| format!("{}/airlock/e2e-probe:dev", registry()))
}

/// Runs `crane <args>` against the (plain HTTP) test registry and returns its trimmed stdout.
pub fn crane(args: &[&str]) -> Result<String> {
    crane_with_config(args, None)
}

/// [`crane`] with `DOCKER_CONFIG` set to `docker_config` (credentials), when given.
fn crane_with_config(args: &[&str], docker_config: Option<&Path>) -> Result<String> {
    let bin = std::env::var("CRANE").unwrap_or_else(|_| "crane".to_string());
    let mut cmd = Command::new(&bin);
    cmd.args(args).arg("--insecure");
    if let Some(dir) = docker_config {
        cmd.env("DOCKER_CONFIG", dir);
    }
    let out = cmd.output().with_context(|| {
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

#[cfg(test)]
mod tests {
    use super::strip_tag;

    #[test]
    fn strip_tag_keeps_the_registry_port() {
        assert_eq!(
            strip_tag("198.19.255.1:5001/test/x:1"),
            "198.19.255.1:5001/test/x"
        );
        assert_eq!(
            strip_tag("198.19.255.1:5001/test/x"),
            "198.19.255.1:5001/test/x"
        );
        assert_eq!(
            strip_tag("198.19.255.1:5001/x@sha256:ab"),
            "198.19.255.1:5001/x"
        );
    }
}
