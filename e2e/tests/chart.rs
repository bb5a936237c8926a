//! The Helm chart lints cleanly and everything it renders is accepted by the real API server
//! (server-side dry run), with the values the e2e suite installs it with.

use std::process::{Command, Stdio};

use airlock_e2e::install::{NAMESPACE, images_env, workspace};
use anyhow::{Context, Result, ensure};

/// The images `make e2e-images` pushed, as the chart takes them: repository and digest.
fn values() -> Result<Vec<String>> {
    let mut values = Vec::new();
    for (key, var) in [
        ("operator", "AIRLOCK_OPERATOR_IMAGE"),
        ("shim", "AIRLOCK_SHIM_IMAGE"),
    ] {
        let reference = images_env(var)?;
        let (repository, digest) = reference
            .split_once('@')
            .with_context(|| format!("{var}={reference} is not pinned by digest"))?;
        values.extend([
            "--set".into(),
            format!("{key}.image.repository={repository}"),
            "--set".into(),
            format!("{key}.image.digest={digest}"),
        ]);
    }
    Ok(values)
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
    // The defaults, the router's own autoscaler turned on, and `helm test` calling a plugin.
    for (extra, expect) in [
        (&[][..], "deployment"),
        (
            &["--set", "router.autoscaling.enabled=true"][..],
            "horizontalpodautoscaler",
        ),
        // helm test calling a plugin: its ServiceAccount, binding and pod are valid objects.
        (
            &["--set", "tests.invoke.plugin=airlock-system/hello"][..],
            "plugincallerbinding",
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
        // A dry run creates nothing, and the API server refuses a pod whose ServiceAccount does
        // not exist: the invoke test's ServiceAccount is made for real around its dry run.
        let caller = (expect == "plugincallerbinding").then_some("airlock-router-test-caller");
        if let Some(sa) = caller {
            let mut create = tool("kubectl");
            create.args(["create", "serviceaccount", sa, "--namespace", NAMESPACE]);
            run(&mut create, &[]).context("creating the invoke test's ServiceAccount")?;
        }
        let mut apply = tool("kubectl");
        apply.args([
            "apply",
            "--dry-run=server",
            "--server-side",
            "--force-conflicts",
            "-f",
            "-",
        ]);
        let out = run(&mut apply, &rendered);
        if let Some(sa) = caller {
            let mut delete = tool("kubectl");
            delete.args(["delete", "serviceaccount", sa, "--namespace", NAMESPACE]);
            run(&mut delete, &[]).context("deleting the invoke test's ServiceAccount")?;
        }
        let out = out.context("a server-side dry run of the rendered manifests")?;
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

/// `helm test` against the release the suite installed: the router's health, asked through its
/// Service by `airlock-router health` from the operator image.
#[tokio::test]
async fn helm_test_finds_the_router_serving() -> Result<()> {
    airlock_e2e::install::ensure_installed().await?;
    let mut test = tool("helm");
    test.args([
        "test",
        "airlock",
        "--namespace",
        NAMESPACE,
        "--timeout",
        "3m",
        "--logs",
    ]);
    let out = run(&mut test, &[]).context("helm test")?;
    let out = String::from_utf8_lossy(&out);
    ensure!(
        out.contains("Phase:          Succeeded") || out.contains("Phase: Succeeded"),
        "helm test did not report a succeeded test pod: {out}"
    );
    ensure!(
        out.contains("SERVING"),
        "the test pod's log does not show the router SERVING: {out}"
    );
    Ok(())
}

/// A second release of the chart in another namespace names nothing the installed release
/// already has (CRDs aside, which the two share by design): every namespaced and cluster-scoped
/// object it would create is absent from the cluster.
#[tokio::test]
async fn a_second_release_collides_with_nothing_the_first_installed() -> Result<()> {
    airlock_e2e::install::ensure_installed().await?;
    let mut template = tool("helm");
    template
        .args(["template", "airlock2"])
        .arg(workspace().join("charts/airlock"))
        .args(["--namespace", "airlock2-system", "--kube-version", "1.34.0"])
        .args(values()?);
    let rendered = run(&mut template, &[]).context("helm template of a second release")?;
    let mut checked = 0;
    let rendered = String::from_utf8(rendered)?;
    for doc in rendered.split("\n---") {
        let value: serde_yaml::Value = serde_yaml::from_str(doc)?;
        let (Some(kind), Some(name)) = (value["kind"].as_str(), value["metadata"]["name"].as_str())
        else {
            continue;
        };
        let mut get = tool("kubectl");
        get.args(["get", kind, name, "--ignore-not-found", "-o", "name"]);
        if let Some(ns) = value["metadata"]["namespace"].as_str() {
            get.args(["--namespace", ns]);
        }
        let found = run(&mut get, &[]).with_context(|| format!("kubectl get {kind} {name}"))?;
        ensure!(
            found.is_empty(),
            "the second release's {kind} {name} already exists: {}",
            String::from_utf8_lossy(&found)
        );
        checked += 1;
    }
    ensure!(checked >= 10, "only {checked} objects rendered: {rendered}");
    Ok(())
}
