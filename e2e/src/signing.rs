//! Signing as plugin authors do: the real cosign CLI for images, and the hello bundle packed the
//! way `airlockctl bundle pack` packs it, bound to an image digest.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};

/// Runs the real cosign CLI in `dir` (its keys there, empty password); with `docker_config`, it
/// reaches registries with the credentials of that docker config directory.
pub fn cosign(dir: &Path, args: &[&str], docker_config: Option<&Path>) -> Result<()> {
    let bin = std::env::var("COSIGN").unwrap_or_else(|_| "cosign".into());
    let mut command = Command::new(&bin);
    command
        .args(args)
        .current_dir(dir)
        .env("COSIGN_PASSWORD", "");
    if let Some(config) = docker_config {
        command.env("DOCKER_CONFIG", config);
    }
    let out = command
        .output()
        .with_context(|| format!("running {bin}: put cosign on PATH (make test does)"))?;
    ensure!(
        out.status.success(),
        "cosign {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// `cosign sign` as the README tells users to: the key `cosign.key` in `dir`, no transparency log,
/// a plain-HTTP registry, cosign v2's classic `.sig` format.
pub fn sign_classic(dir: &Path, image_by_digest: &str, docker_config: Option<&Path>) -> Result<()> {
    cosign(
        dir,
        &[
            "sign",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--allow-http-registry",
            "-y",
            image_by_digest,
        ],
        docker_config,
    )
}

/// The hello bundle whose signed manifest names `image_digest`, packed (in `work/bundle-<name>`)
/// the way `airlockctl bundle pack` packs it.
pub fn hello_bundle(work: &Path, name: &str, image_digest: &str) -> Result<Vec<u8>> {
    let dir = work.join(format!("bundle-{name}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("plugin.yaml"),
        format!(
            "name: hello\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\npermissions: [log]\nentryPoint: [/hello]\nimageDigest: {image_digest}\n"
        ),
    )?;
    Ok(airlock_bundle::pack::pack(&dir, airlock_bundle::DEFAULT_MAX_BYTES)?.bytes)
}
