//! What a plugin's signed manifest requires, on the cluster (issue 17): event-logger's
//! `plugin.yaml` says `requires: [storage:write, liveConfig, upgrade]`. Applied without
//! `storage:write` in `spec.permissions` it is refused before anything runs
//! (`Compatible=False`, reason `RequirementNotMet`, naming the permission and the fix); granted
//! it, it runs. A version that requires a host feature this Airlock does not provide (`kvWatch`)
//! is refused naming it, and the running revision keeps serving.

use airlock_crds::Plugin;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use airlock_e2e::plugins::{active, condition, wait_plugin};
use airlock_e2e::router::{Fixture, in_fixture};

const NAME: &str = "event-logger";

#[tokio::test]
async fn a_plugin_whose_requirements_are_not_met_is_refused_naming_them() -> Result<()> {
    in_fixture("requires", &["log", "storage:write"], scenario).await
}

/// event-logger's signed manifest at version 1.1.0 requiring `kvWatch` too, packed as
/// `airlockctl bundle pack` packs it.
fn bundle_requiring_kv_watch() -> Result<Vec<u8>> {
    let path = airlock_e2e::install::workspace().join("examples/event-logger/plugin.yaml");
    let manifest = std::fs::read_to_string(&path)?;
    let (version, requires) = (
        "\nversion: 1.0.0\n",
        "\nrequires: [storage:write, liveConfig, upgrade]\n",
    );
    ensure!(
        manifest.contains(version) && manifest.contains(requires),
        "{} declares version 1.0.0 and {requires:?}",
        path.display()
    );
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("plugin.yaml"),
        manifest.replace(version, "\nversion: 1.1.0\n").replace(
            requires,
            "\nrequires: [storage:write, liveConfig, upgrade, kvWatch]\n",
        ),
    )?;
    Ok(airlock_bundle::pack::pack(dir.path(), airlock_bundle::DEFAULT_MAX_BYTES)?.bytes)
}

/// Applies `spec` to the Plugin with this test's field manager.
async fn change_spec(f: &Fixture, spec: serde_json::Value) -> Result<()> {
    f.ns.api::<Plugin>()
        .patch(
            NAME,
            &PatchParams::apply("airlock-e2e-requires").force(),
            &Patch::Apply(json!({
                "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
                "spec": spec,
            })),
        )
        .await
        .with_context(|| format!("changing the Plugin's spec to {spec}"))?;
    Ok(())
}

/// Waits for `Compatible=False` with `reason` and returns its message.
async fn refused(f: &Fixture, reason: &str) -> Result<(Plugin, String)> {
    let p = wait_plugin(
        &f.ns.api::<Plugin>(),
        NAME,
        &format!("Compatible=False {reason}"),
        |p| condition(p, "Compatible").is_some_and(|c| c.status == "False" && c.reason == reason),
    )
    .await?;
    let message = condition(&p, "Compatible")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    Ok((p, message))
}

async fn scenario(f: &Fixture) -> Result<()> {
    let hooks = json!([{"name": "onEvent", "timeout": "2s"}]);
    f.apply(NAME, NAME, hooks, json!(["log"]), json!({}))
        .await?;
    let (p, message) = refused(f, "RequirementNotMet").await?;
    for what in ["storage:write", "add storage:write to spec.permissions"] {
        ensure!(
            message.contains(what),
            "{what:?} in the condition: {message}"
        );
    }
    ensure!(
        !message.contains("liveConfig") && !message.contains("upgrade Airlock"),
        "only what is missing is named: {message}"
    );
    ensure!(!active(&p), "nothing runs: {:?}", p.status);
    let deployments = f.ns.api::<Deployment>();
    ensure!(
        deployments.get_opt(NAME).await?.is_none(),
        "no Deployment was made for a plugin whose requirements are not met"
    );

    // Granted: it runs.
    change_spec(f, json!({"permissions": ["log", "storage:write"]})).await?;
    let serving = wait_plugin(&f.ns.api::<Plugin>(), NAME, "Active once granted", active).await?;
    let revision = serving
        .status
        .as_ref()
        .and_then(|s| s.current_revision.clone());
    f.wait_serving(&[NAME], "onEvent").await?;

    // A version that requires what this Airlock lacks: refused by name; 1.0.0 keeps serving.
    f.sandbox
        .put_bundle("event-logger-kv", bundle_requiring_kv_watch()?)
        .await?;
    change_spec(
        f,
        json!({
            "version": "1.1.0",
            "bundle": {"source": {"configMapRef": {"name": "event-logger-kv"}}},
        }),
    )
    .await?;
    let (p, message) = refused(f, "RequirementNotMet").await?;
    for what in [
        "kvWatch",
        "does not provide",
        "liveConfig",
        "upgrade Airlock",
    ] {
        ensure!(
            message.contains(what),
            "{what:?} in the condition: {message}"
        );
    }
    ensure!(
        p.status.as_ref().and_then(|s| s.current_revision.clone()) == revision,
        "the running revision stays: {:?}",
        p.status
    );
    f.invoke(NAME, "onEvent", json!({"type": "still.served"}))
        .await
        .context("1.0.0 keeps serving while 1.1.0 is refused")?;
    Ok(())
}
