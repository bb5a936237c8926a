//! Plugin versions and their storage on the cluster (issue 17): the router records in the
//! PluginStorage which plugin version last wrote it (`status.writtenBy`, reported by the shim
//! from its verified manifest), and the operator refuses to roll out an older version over that
//! data — the running revision keeps serving — until the Plugin says `allowDowngrade: true`.
//! A newer version's pods get `onUpgrade {from, to}` and migrate the data an older one wrote.

use airlock_crds::{Plugin, PluginStorage};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use airlock_e2e::plugins::{active, condition, wait_plugin, warned};
use airlock_e2e::router::{Fixture, in_fixture};
use airlock_e2e::wait;

const NAME: &str = "event-logger";

#[tokio::test]
async fn an_older_version_is_refused_over_storage_a_newer_one_wrote_until_allowed() -> Result<()> {
    in_fixture("versions", &["log", "storage:write"], scenario).await
}

/// event-logger's signed manifest with `version` in place of its own, packed as
/// `airlockctl bundle pack` packs it.
fn bundle_of_version(version: &str) -> Result<Vec<u8>> {
    let path = airlock_e2e::install::workspace().join("examples/event-logger/plugin.yaml");
    let manifest = std::fs::read_to_string(&path)?;
    ensure!(
        manifest.contains("\nversion: 1.0.0\n"),
        "{} declares version 1.0.0",
        path.display()
    );
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("plugin.yaml"),
        manifest.replace("\nversion: 1.0.0\n", &format!("\nversion: {version}\n")),
    )?;
    Ok(airlock_bundle::pack::pack(dir.path(), airlock_bundle::DEFAULT_MAX_BYTES)?.bytes)
}

/// The ConfigMap holding the bundle of `version`.
fn bundle_name(version: &str) -> String {
    format!("{NAME}-{}", version.replace('.', "-"))
}

/// event-logger (1.0.0) applied, with the bundles of 1.0.0 and 1.1.0 in their ConfigMaps.
async fn apply_with_both_bundles(f: &Fixture) -> Result<()> {
    for version in ["1.0.0", "1.1.0"] {
        f.sandbox
            .put_bundle(&bundle_name(version), bundle_of_version(version)?)
            .await?;
    }
    let hooks = json!([{"name": "onEvent", "timeout": "2s"}]);
    f.apply(
        NAME,
        NAME,
        hooks,
        json!(["log", "storage:write"]),
        json!({}),
    )
    .await
}

/// Switches the Plugin to `version` (its bundle in [`bundle_name`]), with `allow_downgrade`.
async fn roll_to(f: &Fixture, version: &str, allow_downgrade: bool) -> Result<()> {
    let bundle = bundle_name(version);
    f.ns.api::<Plugin>()
        .patch(
            NAME,
            &PatchParams::apply("airlock-e2e-versions").force(),
            &Patch::Apply(json!({
                "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
                "spec": {
                    "version": version,
                    "bundle": {"source": {"configMapRef": {"name": bundle}}},
                    "allowDowngrade": allow_downgrade,
                },
            })),
        )
        .await
        .with_context(|| format!("rolling {NAME} to {version}"))?;
    Ok(())
}

/// Sends one event; the plugin counts it in its storage.
async fn write_storage(f: &Fixture) -> Result<()> {
    f.invoke(NAME, "onEvent", json!({"type": "order.created"}))
        .await
        .with_context(|| format!("{NAME} handling onEvent"))?;
    Ok(())
}

async fn written_by(f: &Fixture) -> Result<Option<String>> {
    Ok(f.ns
        .api::<PluginStorage>()
        .get_opt(NAME)
        .await?
        .and_then(|s| s.status)
        .and_then(|s| s.written_by))
}

/// Until the storage says `version` wrote it last (the router writes it with each put).
async fn wait_written_by(f: &Fixture, version: &str) -> Result<()> {
    let what = format!("PluginStorage {NAME} status.writtenBy {version}");
    wait::until(
        &what,
        std::time::Duration::from_secs(60),
        async || {
            write_storage(f).await?;
            written_by(f).await
        },
        |seen| seen.as_deref() == Some(version),
    )
    .await
    .map(drop)
}

async fn scenario(f: &Fixture) -> Result<()> {
    let plugins = f.ns.api::<Plugin>();
    apply_with_both_bundles(f).await?;
    roll_to(f, "1.1.0", false).await?;
    let serving = wait_plugin(&plugins, NAME, "1.1.0 Active", |p| {
        active(p) && p.spec.version == "1.1.0"
    })
    .await?;
    let revision = current_revision(&serving);
    f.wait_routed(&[NAME]).await?;
    f.wait_reachable(NAME, "onEvent").await?;
    wait_written_by(f, "1.1.0").await?;

    // Back to 1.0.0 over the data 1.1.0 wrote: refused, and 1.1.0 keeps serving.
    roll_to(f, "1.0.0", false).await?;
    let refused = wait_plugin(&plugins, NAME, "Compatible=False DowngradeRefused", |p| {
        condition(p, "Compatible")
            .is_some_and(|c| c.status == "False" && c.reason == "DowngradeRefused")
    })
    .await?;
    let message = condition(&refused, "Compatible")
        .map(|c| c.message.clone())
        .unwrap_or_default();
    for what in ["1.1.0", "spec.allowDowngrade: true", "status.writtenBy"] {
        ensure!(
            message.contains(what),
            "{what:?} in the condition: {message}"
        );
    }
    ensure!(
        current_revision(&refused) == revision,
        "the running revision stays: {:?}",
        refused.status
    );
    write_storage(f).await?;
    ensure!(
        written_by(f).await?.as_deref() == Some("1.1.0"),
        "1.1.0 still serves and writes"
    );
    ensure!(
        warned(&f.ns.api::<Event>(), NAME, "DowngradeRefused", "1.1.0").await?,
        "a Warning Event names the refusal"
    );

    // The platform team says 1.0.0 reads that data: it rolls out, and writes as 1.0.0.
    roll_to(f, "1.0.0", true).await?;
    let downgraded = wait_plugin(&plugins, NAME, "1.0.0 Active on a new revision", |p| {
        active(p) && current_revision(p) != revision
    })
    .await?;
    ensure!(downgraded.spec.version == "1.0.0");
    f.wait_serving(&[NAME], "onEvent").await?;
    wait_written_by(f, "1.0.0").await
}

fn current_revision(p: &Plugin) -> Option<String> {
    p.status.as_ref().and_then(|s| s.current_revision.clone())
}

#[tokio::test]
async fn an_upgrade_migrates_the_storage_an_older_version_wrote() -> Result<()> {
    in_fixture("upgrade", &["log", "storage:write"], upgrade_scenario).await
}

/// The live entry `key` of the plugin's storage, as JSON.
async fn entry(f: &Fixture, key: &str) -> Result<Option<serde_json::Value>> {
    let storage = f.ns.api::<PluginStorage>().get(NAME).await?;
    storage
        .status
        .and_then(|s| s.entries.get(key).cloned())
        .map(|text| serde_json::from_str(&text).context("a stored value is JSON"))
        .transpose()
}

async fn upgrade_scenario(f: &Fixture) -> Result<()> {
    // Data of the 1.0 era: the installer seeded the count under its old name.
    f.ns.api::<PluginStorage>()
        .patch(
            NAME,
            &PatchParams::apply("airlock-e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "airlock.dev/v1alpha1", "kind": "PluginStorage",
                "metadata": {"name": NAME},
                "spec": {"entries": {"counter": "5"}},
            })),
        )
        .await
        .context("seeding the storage")?;
    let plugins = f.ns.api::<Plugin>();
    apply_with_both_bundles(f).await?;
    roll_to(f, "1.0.0", false).await?;
    f.wait_serving(&[NAME], "onEvent").await?;
    // 1.0.0 writes: the storage is now its data (the seed merged in).
    wait_written_by(f, "1.0.0").await?;
    ensure!(
        entry(f, "counter").await? == Some(json!(5)),
        "1.0.0 found nothing to migrate (it never ran onUpgrade over its own data)"
    );
    let counted = entry(f, "count")
        .await?
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let before = current_revision(&plugins.get(NAME).await?);

    roll_to(f, "1.1.0", false).await?;
    wait_plugin(&plugins, NAME, "1.1.0 Active on a new revision", |p| {
        active(p) && current_revision(p) != before
    })
    .await?;
    // The new pod migrated before it served: counter moved into count, stamped by 1.1.0.
    ensure!(
        entry(f, "counter").await?.is_none(),
        "the old key is gone: {:?}",
        entry(f, "counter").await?
    );
    ensure!(
        entry(f, "upgradedFrom").await? == Some(json!("1.0.0")),
        "onUpgrade got from = 1.0.0: {:?}",
        entry(f, "upgradedFrom").await?
    );
    let migrated = entry(f, "count")
        .await?
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    ensure!(
        migrated >= counted + 5,
        "count {counted} + counter 5 = {migrated}"
    );
    ensure!(
        written_by(f).await?.as_deref() == Some("1.1.0"),
        "the migration's writes are 1.1.0's"
    );
    Ok(())
}

const PYTHON: &str = "python-upper";

/// The non-Rust sample migrates too (issue 17): python-upper's `onUpgrade`, written against the
/// stdio protocol without an SDK, renames the storage key an older version counted under.
#[tokio::test]
async fn a_python_plugin_migrates_a_storage_key_an_older_version_wrote() -> Result<()> {
    in_fixture(
        "pyupgrade",
        &["log", "storage:read", "storage:write"],
        python_upgrade,
    )
    .await
}

async fn python_upgrade(f: &Fixture) -> Result<()> {
    // Data of a 0.9 version (seeded), and the record that 0.9.0 wrote it last (what the router
    // records; set here as the cluster admin, as no 0.9 bundle exists).
    let storages = f.ns.api::<PluginStorage>();
    storages
        .patch(
            PYTHON,
            &PatchParams::apply("airlock-e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "airlock.dev/v1alpha1", "kind": "PluginStorage",
                "metadata": {"name": PYTHON},
                "spec": {"entries": {"seen": "7"}},
            })),
        )
        .await
        .context("seeding python-upper's storage")?;
    storages
        .patch_status(
            PYTHON,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"writtenBy": "0.9.0"}})),
        )
        .await
        .context("recording 0.9.0 as the last writer")?;
    f.apply(
        PYTHON,
        PYTHON,
        json!([{"name": "transform", "timeout": "2s"}]),
        json!(["log", "storage:read", "storage:write"]),
        json!({}),
    )
    .await?;
    f.wait_serving(&[PYTHON], "transform").await?;

    let storage = storages.get(PYTHON).await?.status.unwrap_or_default();
    let value = |key: &str| {
        storage
            .entries
            .get(key)
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok())
    };
    ensure!(
        value("events") == Some(json!(7)) && value("seen").is_none(),
        "onUpgrade moved seen (7) to events: {:?}",
        storage.entries
    );
    ensure!(
        value("upgradedFrom") == Some(json!("0.9.0")),
        "onUpgrade got from = 0.9.0: {:?}",
        storage.entries
    );
    ensure!(
        storage.written_by.as_deref() == Some("1.0.0"),
        "the migration's writes are 1.0.0's: {:?}",
        storage.written_by
    );
    Ok(())
}
