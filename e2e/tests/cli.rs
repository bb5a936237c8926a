//! The real `airlockctl` binary against the cluster (issue 18): `status` and `why` of a Plugin
//! read with a kubeconfig whose context names the namespace (no `-n`), `-o json` parsed here,
//! `why` of an auto-disabled plugin naming the cause and the command that fixes it, `enable`
//! bringing it back to Active, `invoke`, `transform`, `broadcast` and `plugins` reaching the
//! router through a port-forward the binary opens itself (no --router, no `kubectl
//! port-forward`), and exit code 5 for a Plugin
//! that does not exist.

use std::path::{Path, PathBuf};
use std::process::Output;

use airlock_crds::Plugin;
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use airlock_e2e::cli::airlockctl;
use airlock_e2e::plugins::{active, auto_disable, wait_plugin};
use airlock_e2e::router::{Fixture, in_fixture};

const NAME: &str = "hello";

#[tokio::test]
async fn the_cli_shows_status_explains_why_and_re_enables() -> Result<()> {
    in_fixture("cli", &["log"], scenario).await
}

/// A copy of the kubeconfig whose current context's namespace is `namespace`.
fn kubeconfig_in(namespace: &str, dir: &Path) -> Result<PathBuf> {
    let mut config = kube::config::Kubeconfig::read().context("reading the kubeconfig")?;
    let current = config
        .current_context
        .clone()
        .context("the kubeconfig has a current context")?;
    let context = config
        .contexts
        .iter_mut()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_mut())
        .context("the current context")?;
    context.namespace = Some(namespace.to_string());
    let path = dir.join("kubeconfig");
    std::fs::write(&path, serde_yaml::to_string(&config)?)?;
    Ok(path)
}

/// Runs `airlockctl args...` with `kubeconfig`, and `token` for the router in AIRLOCK_TOKEN
/// (never on the command line). No router address: it must find the router itself.
fn run_as(bin: &Path, kubeconfig: &Path, token: &str, args: &[&str]) -> Result<Output> {
    std::process::Command::new(bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env("AIRLOCK_TOKEN", token)
        .env_remove("AIRLOCK_ROUTER")
        .env_remove("AIRLOCK_ROUTER_SERVICE")
        .output()
        .with_context(|| format!("running airlockctl {}", args.join(" ")))
}

/// Runs `airlockctl args...` with `kubeconfig` and no router token.
fn run(bin: &Path, kubeconfig: &Path, args: &[&str]) -> Result<Output> {
    run_as(bin, kubeconfig, "", args)
}

/// `airlockctl args... -o json` (with the router `token`), which must succeed; its document.
fn json_as(bin: &Path, kubeconfig: &Path, token: &str, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = run_as(bin, kubeconfig, token, &all)?;
    ensure!(
        out.status.success(),
        "airlockctl {} failed ({}): {}",
        all.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "airlockctl {} printed no JSON: {}",
            all.join(" "),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `airlockctl args... -o json`, which must succeed; its document.
fn json_of(bin: &Path, kubeconfig: &Path, args: &[&str]) -> Result<Value> {
    json_as(bin, kubeconfig, "", args)
}

async fn scenario(f: &Fixture) -> Result<()> {
    let bin = airlockctl()?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = kubeconfig_in(f.ns(), dir.path())?;
    f.apply(
        NAME,
        "hello",
        json!([{"name": "transform", "timeout": "2s"}]),
        json!(["log"]),
        json!({}),
    )
    .await?;
    let plugins = f.ns.api::<Plugin>();
    wait_plugin(&plugins, NAME, "Active", active).await?;

    // The kubeconfig's namespace, no -n.
    let status = json_of(&bin, &kubeconfig, &["status", NAME])?;
    ensure!(
        status["phase"] == "Active" && status["namespace"] == f.ns() && status["name"] == NAME,
        "status: {status}"
    );
    ensure!(
        status["conditions"].as_array().is_some_and(|c| c
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")),
        "status lists Ready=True: {status}"
    );
    let why = json_of(&bin, &kubeconfig, &["why", NAME])?;
    ensure!(why["serving"] == true, "why of an Active plugin: {why}");

    // Auto-disabled: why names it and the command that re-enables it.
    auto_disable(
        &plugins,
        NAME,
        "5 consecutive timeouts (written by the e2e)",
    )
    .await?;
    wait_plugin(&plugins, NAME, "auto-disabled, not Active", |p| {
        p.auto_disabled().is_some() && !active(p)
    })
    .await?;
    let why = json_of(&bin, &kubeconfig, &["why", NAME])?;
    let enable = format!("airlockctl enable {}/{NAME}", f.ns());
    ensure!(
        why["serving"] == false
            && why["cause"] == "AutoDisabled"
            && why["message"]
                .as_str()
                .is_some_and(|m| m.contains("5 consecutive timeouts"))
            && why["next"] == enable.as_str(),
        "why of an auto-disabled plugin: {why}"
    );
    let table = run(&bin, &kubeconfig, &["why", NAME])?;
    let text = String::from_utf8_lossy(&table.stdout);
    ensure!(
        table.status.success() && text.contains("does not serve") && text.contains(&enable),
        "why, as a table: {text}"
    );

    // enable (as NAMESPACE/NAME): Active again.
    let out = run(
        &bin,
        &kubeconfig,
        &["enable", &format!("{}/{NAME}", f.ns())],
    )?;
    ensure!(
        out.status.success(),
        "enable failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_plugin(&plugins, NAME, "Active again after enable", |p| {
        active(p) && p.auto_disabled().is_none()
    })
    .await?;
    f.wait_serving(&[NAME], "transform").await?;

    // invoke and plugins: no --router, no kubectl port-forward; the binary port-forwards to the
    // router through the kubeconfig, calls as the fixture's caller, and -o json is one document.
    let answer = json_as(
        &bin,
        &kubeconfig,
        &f.token,
        &[
            "invoke",
            NAME,
            "transform",
            "--payload",
            r#"{"name":"cli"}"#,
        ],
    )?;
    ensure!(
        answer["output"]["greeting"] == "hello, cli"
            && answer["plugin"] == format!("{}/{NAME}", f.ns()).as_str()
            && answer["hook"] == "transform"
            && answer["invocationId"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
        "invoke -o json through the CLI's own port-forward: {answer}"
    );
    let listed = json_as(&bin, &kubeconfig, &f.token, &["plugins", "-n", f.ns()])?;
    ensure!(
        listed.as_array().is_some_and(|l| l
            .iter()
            .any(|p| p["plugin"] == format!("{}/{NAME}", f.ns()).as_str()
                && p["hooks"][0]["name"] == "transform")),
        "plugins -o json lists {NAME} with its transform hook: {listed}"
    );
    // transform and broadcast: the router's other modes, one document each with -o json.
    let piped = json_as(
        &bin,
        &kubeconfig,
        &f.token,
        &[
            "transform",
            "-n",
            f.ns(),
            "--payload",
            r#"{"name":"pipeline"}"#,
        ],
    )?;
    ensure!(
        piped["output"]["greeting"] == "hello, pipeline"
            && piped["steps"][0]["plugin"] == format!("{}/{NAME}", f.ns()).as_str()
            && piped["steps"][0]["code"] == "OK",
        "transform -o json: {piped}"
    );
    let sent = json_as(
        &bin,
        &kubeconfig,
        &f.token,
        &[
            "broadcast",
            "--hook",
            "transform",
            "-n",
            f.ns(),
            "--payload",
            r#"{"name":"all"}"#,
        ],
    )?;
    ensure!(
        sent["failed"] == false && sent["results"][0]["output"]["greeting"] == "hello, all",
        "broadcast -o json: {sent}"
    );
    // Without a token the router refuses the caller: exit code 7, and the message says how.
    let refused = run(&bin, &kubeconfig, &["invoke", NAME, "transform"])?;
    ensure!(
        refused.status.code() == Some(7)
            && String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED"),
        "invoke without a token: {:?} {}",
        refused.status.code(),
        String::from_utf8_lossy(&refused.stderr)
    );

    // A Plugin that does not exist: exit code 5, a message that says how to list them.
    let missing = run(&bin, &kubeconfig, &["status", "no-such-plugin"])?;
    ensure!(
        missing.status.code() == Some(5)
            && String::from_utf8_lossy(&missing.stderr).contains("kubectl get plugins -A"),
        "status of a missing Plugin: {:?} {}",
        missing.status.code(),
        String::from_utf8_lossy(&missing.stderr)
    );
    Ok(())
}
