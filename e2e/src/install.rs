//! Airlock installed the way users install it: `helm upgrade --install` of `charts/airlock` with
//! the images `make e2e-images` pushed, the operator running in-cluster under the chart's RBAC.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use tokio::sync::OnceCell;

/// Namespace of the release (operator, and the router later).
pub const NAMESPACE: &str = "airlock-system";
pub const RELEASE: &str = "airlock";

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A value from `target/e2e/images.env`, written by `make e2e-images`.
pub fn images_env(key: &str) -> Result<String> {
    let path = workspace().join("target/e2e/images.env");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}: run `make e2e-images` first", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
        .with_context(|| format!("{key} missing from {}", path.display()))
}

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Installs (or upgrades to) the current chart and images once per test process and waits until
/// the operator Deployment is rolled out.
pub async fn ensure_installed() -> Result<()> {
    INSTALLED
        .get_or_try_init(|| async {
            // Helm installs CRDs but never upgrades them: apply the current ones first, as the
            // README tells users to on upgrade.
            crate::crds::install(&crate::client().await?).await?;
            let args = helm_args()?;
            tokio::task::spawn_blocking(move || run_helm(&args)).await?
        })
        .await
        .map(|_| ())
}

fn helm_args() -> Result<Vec<String>> {
    let chart = workspace().join("charts/airlock");
    Ok(vec![
        "upgrade".into(),
        "--install".into(),
        RELEASE.into(),
        chart.display().to_string(),
        "--namespace".into(),
        NAMESPACE.into(),
        "--create-namespace".into(),
        "--set".into(),
        format!("operator.image={}", images_env("AIRLOCK_OPERATOR_IMAGE")?),
        "--set".into(),
        format!("shim.image={}", images_env("AIRLOCK_SHIM_IMAGE")?),
        "--set".into(),
        format!("insecureRegistries={{{}}}", crate::images::registry()),
        // Short, so the rollback test does not wait two minutes.
        "--set".into(),
        "progressDeadlineSeconds=20".into(),
        "--wait".into(),
        "--timeout".into(),
        "3m".into(),
    ])
}

fn run_helm(args: &[String]) -> Result<()> {
    let bin = std::env::var("HELM").unwrap_or_else(|_| "helm".into());
    let mut cmd = Command::new(&bin);
    cmd.args(args);
    if std::env::var_os("KUBECONFIG").is_none() {
        cmd.env("KUBECONFIG", crate::LOCAL_CLUSTER_KUBECONFIG);
    }
    let out = cmd.output().with_context(|| {
        format!("running {bin}: put helm on PATH (the Makefile does) or set HELM")
    })?;
    if !out.status.success() {
        bail!(
            "helm {} failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
