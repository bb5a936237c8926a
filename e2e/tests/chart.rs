//! The Helm chart lints cleanly and everything it renders is accepted by the real API server
//! (server-side dry run), with the values the e2e suite installs it with.

use std::process::{Command, Stdio};

use airlock_e2e::install::{NAMESPACE, images_env, workspace};
use anyhow::{Context, Result, ensure};

fn values() -> Result<Vec<String>> {
    Ok(vec![
        "--set".into(),
        format!("operator.image={}", images_env("AIRLOCK_OPERATOR_IMAGE")?),
        "--set".into(),
        format!("shim.image={}", images_env("AIRLOCK_SHIM_IMAGE")?),
    ])
}

fn tool(name: &str) -> Command {
    let mut cmd = Command::new(name);
    if std::env::var_os("KUBECONFIG").is_none() {
        cmd.env("KUBECONFIG", airlock_e2e::LOCAL_CLUSTER_KUBECONFIG);
    }
    cmd
}

#[tokio::test]
async fn the_chart_lints_and_its_manifests_pass_a_server_side_dry_run() -> Result<()> {
    airlock_e2e::install::ensure_installed().await?;
    let chart = workspace().join("charts/airlock");
    let lint = tool("helm")
        .arg("lint")
        .arg("--strict")
        .arg(&chart)
        .args(values()?)
        .output()
        .context("running helm lint (helm on PATH)")?;
    ensure!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );

    let rendered = tool("helm")
        .args(["template", "airlock"])
        .arg(&chart)
        .args([
            "--namespace",
            NAMESPACE,
            "--include-crds",
            "--kube-version",
            "1.34.0",
        ])
        .args(values()?)
        .output()
        .context("running helm template")?;
    ensure!(
        rendered.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let mut apply = tool("kubectl")
        .args([
            "apply",
            "--dry-run=server",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running kubectl (kubectl on PATH)")?;
    {
        use std::io::Write;
        let mut stdin = apply.stdin.take().context("stdin")?;
        stdin.write_all(&rendered.stdout)?;
    }
    let out = apply.wait_with_output()?;
    ensure!(
        out.status.success(),
        "the API server rejected rendered manifests: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let accepted = String::from_utf8_lossy(&out.stdout);
    for kind in [
        "customresourcedefinition",
        "clusterrole",
        "deployment",
        "service",
    ] {
        ensure!(
            accepted.contains(kind),
            "no {kind} in the dry run: {accepted}"
        );
    }
    Ok(())
}
