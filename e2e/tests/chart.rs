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

/// Runs `cmd` with `input` on its stdin and returns its stdout; fails with what it printed unless
/// it succeeds.
fn run(cmd: &mut Command, input: &[u8]) -> Result<Vec<u8>> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?} (on PATH?)", cmd.get_program()))?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().context("stdin")?;
        stdin.write_all(input)?;
    }
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

#[tokio::test]
async fn the_chart_lints_and_its_manifests_pass_a_server_side_dry_run() -> Result<()> {
    airlock_e2e::install::ensure_installed().await?;
    let chart = workspace().join("charts/airlock");
    // The defaults, and the router's own autoscaler turned on.
    for (extra, expect) in [
        (&[][..], "deployment"),
        (
            &["--set", "router.autoscaling.enabled=true"][..],
            "horizontalpodautoscaler",
        ),
    ] {
        let mut lint = tool("helm");
        lint.arg("lint")
            .arg("--strict")
            .arg(&chart)
            .args(values()?)
            .args(extra);
        run(&mut lint, &[]).context("helm lint")?;

        let mut template = tool("helm");
        template
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
            .args(extra);
        let rendered = run(&mut template, &[]).context("helm template")?;
        let mut apply = tool("kubectl");
        apply.args([
            "apply",
            "--dry-run=server",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
        ]);
        let out = run(&mut apply, &rendered)
            .context("a server-side dry run of the rendered manifests")?;
        let accepted = String::from_utf8_lossy(&out);
        for kind in [
            "customresourcedefinition",
            "clusterrole",
            "deployment",
            "service",
            expect,
        ] {
            ensure!(
                accepted.contains(kind),
                "no {kind} in the dry run ({extra:?}): {accepted}"
            );
        }
    }
    Ok(())
}
