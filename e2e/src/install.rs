//! Airlock installed the way users install it: `helm upgrade --install` of `charts/airlock`
//! packaged with the images `make e2e-images` pushed pinned by digest and installed from the local
//! registry (`oci://`, `e2e/chart-package.sh`), the operator running in-cluster under the chart's
//! RBAC.

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

/// The chart's `pluginCertificateLifetimeSeconds` (charts/airlock/values.yaml), which the
/// suite's install keeps.
pub const DEFAULT_PLUGIN_CERTIFICATE_LIFETIME_SECONDS: u64 = 86_400;

static INSTALLED: OnceCell<()> = OnceCell::const_new();

/// Set by `make e2e` after it installed Airlock once for the whole run.
pub const INSTALLED_ENV: &str = "AIRLOCK_E2E_INSTALLED";

/// Installs (or upgrades to) the current chart and images and waits until the operator Deployment
/// is rolled out: once per run when `make e2e` did it (it sets [`INSTALLED_ENV`]), else once per
/// test process (a test run by hand). The install is `e2e/helm-install.sh`, the same script
/// `make demo` and `make bench` run: one Helm install path.
pub async fn ensure_installed() -> Result<()> {
    INSTALLED
        .get_or_try_init(|| async {
            if std::env::var(INSTALLED_ENV).is_ok_and(|v| v == "1") {
                return Ok(());
            }
            tokio::task::spawn_blocking(|| {
                // Short, so the rollback test does not wait two minutes.
                helm_install(&["--set", "progressDeadlineSeconds=20"])
            })
            .await?
        })
        .await
        .map(|_| ())
}

/// Installs Airlock again as the suite does (after a test that uninstalled it).
pub fn reinstall() -> Result<()> {
    helm_install(&["--set", "progressDeadlineSeconds=20"])
}

/// `helm upgrade` to the suite's install with `extra` values on top (e.g. `crds.upgrade=false`).
pub fn upgrade_with(extra: &[&str]) -> Result<()> {
    let mut args = vec!["--set", "progressDeadlineSeconds=20"];
    args.extend_from_slice(extra);
    helm_install(&args)
}

/// Runs `e2e/helm-install.sh` with extra Helm arguments.
fn helm_install(extra: &[&str]) -> Result<()> {
    let script = workspace().join("e2e/helm-install.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).args(extra);
    if std::env::var_os("KUBECONFIG").is_none() {
        cmd.env("KUBECONFIG", crate::LOCAL_CLUSTER_KUBECONFIG);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "{} {} failed (helm and kubectl must be on PATH, as the Makefile puts them): {}{}",
            script.display(),
            extra.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
