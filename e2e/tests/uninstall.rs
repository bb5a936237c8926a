//! Issue 14: Airlock leaves as easily as it came. With Plugins present, `helm uninstall`, then
//! deleting their namespace and Airlock's CRDs completes (nothing waits for an operator that is
//! gone), and a Plugin carrying the finalizer older versions set has it removed by the operator.
//! It uninstalls Airlock for everyone, so it is a test binary of its own (cargo runs test
//! binaries one after another) and installs it again at the end.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use airlock_crds::Plugin;
use airlock_e2e::plugins::wait_plugin;
use airlock_e2e::sandbox::Sandbox;
use airlock_e2e::wait;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const LEGACY_FINALIZER: &str = "airlock.dev/cleanup";
/// The bound for the whole teardown.
const WITHIN: Duration = Duration::from_secs(120);

fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (the Makefile puts it on PATH)"))?;
    ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test]
async fn upgrade_updates_the_crds_and_uninstall_never_hangs() -> Result<()> {
    let result = match crd_upgrade().await {
        Ok(()) => scenario().await,
        Err(e) => Err(e),
    };
    // Whatever happened, the suite after this binary finds Airlock installed.
    let reinstalled = tokio::task::spawn_blocking(airlock_e2e::install::reinstall).await?;
    result.and(reinstalled)
}

/// Issue 14: `helm upgrade` from the previous chart version updates the CRDs. The previous
/// chart's operator ran without `--upgrade-crds` (here: `crds.upgrade=false`) and its CRDs are in
/// the cluster (here: its PluginStorage CRD, without the status subresource this version needs);
/// a plain `helm upgrade` to this chart must leave the current schema served.
async fn crd_upgrade() -> Result<()> {
    tokio::task::spawn_blocking(|| {
        airlock_e2e::install::upgrade_with(&["--set", "crds.upgrade=false"])
    })
    .await??;
    let previous = airlock_e2e::install::workspace()
        .join("e2e/fixtures/previous-chart/pluginstorages.airlock.dev.yaml");
    // Replaced whole, as the previous chart's install left it: its schema, no revision mark.
    run("kubectl", &["replace", "-f", &previous.to_string_lossy()])?;
    let crds: Api<CustomResourceDefinition> = Api::all(airlock_e2e::client().await?);
    let name = "pluginstorages.airlock.dev";
    let has_status = |crd: &CustomResourceDefinition| {
        crd.spec
            .versions
            .iter()
            .any(|v| v.subresources.as_ref().is_some_and(|s| s.status.is_some()))
    };
    ensure!(
        !has_status(&crds.get(name).await?),
        "the previous chart's CRD is served"
    );
    let started = Instant::now();
    tokio::task::spawn_blocking(airlock_e2e::install::reinstall).await??;
    let revision = airlock_crds::generate::SCHEMA_REVISION.to_string();
    let crd = wait::until(
        "the upgraded operator to bring the CRD up to its schema",
        WITHIN,
        async || crds.get(name).await.map_err(Into::into),
        |crd| {
            has_status(crd)
                && crd
                    .annotations()
                    .get(airlock_crds::generate::SCHEMA_REVISION_ANNOTATION)
                    == Some(&revision)
        },
    )
    .await?;
    println!(
        "helm upgrade: {name} at schema revision {revision}, with its status subresource, {:.1} s after the upgrade began",
        started.elapsed().as_secs_f64()
    );
    ensure!(has_status(&crd));
    Ok(())
}

async fn scenario() -> Result<()> {
    let s = Sandbox::new("uninstall", &["log"]).await?;
    s.with_hello_bundle().await?;
    let plugins: Api<Plugin> = s.ns.api();
    s.apply(&s.hello("hello")?).await?;
    s.apply(&s.hello("old")?).await?;
    wait_plugin(
        &plugins,
        "hello",
        "a status",
        airlock_e2e::plugins::seen_by_operator,
    )
    .await?;

    // What an older Airlock left on its Plugins: the operator of today removes it.
    plugins
        .patch(
            "old",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": [LEGACY_FINALIZER]}})),
        )
        .await?;
    wait_plugin(&plugins, "old", "the old finalizer removed", |p| {
        !p.finalizers().iter().any(|f| f == LEGACY_FINALIZER)
    })
    .await?;

    let t0 = Instant::now();
    run(
        "helm",
        &[
            "uninstall",
            "airlock",
            "--namespace",
            "airlock-system",
            "--wait",
        ],
    )?;
    let namespace = s.ns.name.clone();
    // Deletes the namespace (and its trust policy) and waits until it is gone.
    s.teardown().await?;
    let namespaces: Api<Namespace> = Api::all(airlock_e2e::client().await?);
    wait::until(
        &format!("namespace {namespace} gone"),
        WITHIN,
        async || Ok(namespaces.get_opt(&namespace).await?.is_some()),
        |exists| !exists,
    )
    .await?;
    let crds_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/airlock/crds");
    run(
        "kubectl",
        &[
            "delete",
            "--wait=false",
            "-f",
            &crds_dir.display().to_string(),
        ],
    )?;
    let crds: Api<CustomResourceDefinition> = Api::all(airlock_e2e::client().await?);
    wait::until(
        "Airlock's CRDs gone",
        WITHIN,
        async || {
            let mut left = Vec::new();
            for name in [
                "plugins.airlock.dev",
                "plugintrustpolicies.airlock.dev",
                "pluginstorages.airlock.dev",
                "plugincallerbindings.airlock.dev",
                "plugincatalogs.airlock.dev",
            ] {
                if crds.get_opt(name).await?.is_some() {
                    left.push(name);
                }
            }
            Ok(left)
        },
        |left| left.is_empty(),
    )
    .await?;
    let took = t0.elapsed();
    ensure!(
        took < WITHIN,
        "uninstall, namespace and CRDs took {took:?} (bound {WITHIN:?})"
    );
    eprintln!("uninstall, namespace and CRDs gone in {took:?}");

    // The README's "remove Airlock for good": what Helm did not make (the CA and router
    // certificate Secrets, the leader Lease, Events) goes with airlock-system. Then nothing of
    // Airlock is left in the cluster.
    run(
        "kubectl",
        &["delete", "namespace", "airlock-system", "--wait=false"],
    )?;
    wait::until(
        "namespace airlock-system gone",
        WITHIN,
        async || Ok(namespaces.get_opt("airlock-system").await?.is_some()),
        |exists| !exists,
    )
    .await?;
    let mut left = Vec::new();
    for kind in [
        "clusterroles",
        "clusterrolebindings",
        "validatingadmissionpolicies",
        "validatingadmissionpolicybindings",
        "customresourcedefinitions",
    ] {
        let names = run("kubectl", &["get", kind, "-o", "name"])?;
        left.extend(
            names
                .lines()
                // Not the local cluster's own (`airlock-local:…`, e2e/cluster) nor the tests'.
                .filter(|n| {
                    (n.contains("/airlock") || n.contains("airlock.dev"))
                        && !n.contains("airlock-e2e")
                        && !n.contains("/airlock-local:")
                })
                .map(str::to_string),
        );
    }
    ensure!(
        left.is_empty(),
        "left behind after removing Airlock: {left:?}"
    );
    eprintln!("nothing of Airlock left after {:?}", t0.elapsed());
    Ok(())
}
