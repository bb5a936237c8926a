//! `Plugin.spec.config` on the cluster (issue 17): checked against the signed manifest's
//! `configSchema`, delivered in `onLoad`, changed live in `onConfigChange` (python-upper) or by a
//! rolling restart when the plugin cannot take it live (python-upper-restart, the same code
//! without `onConfigChange`), refused naming the field — and out of a namespace editor's reach
//! past the Plugin.

use std::time::Duration;

use airlock_crds::Plugin;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use airlock_e2e::plugins::{condition, operator_logs, wait_plugin};
use airlock_e2e::pods::containers;
use airlock_e2e::router::{Fixture, in_fixture};
use airlock_e2e::tenant::{Tenant, impersonating};
use airlock_e2e::wait;

/// The kubelet refreshes a mounted ConfigMap at its pod sync (about a minute), then the shim
/// reads it within 2 s.
const LIVE_CHANGE: Duration = Duration::from_secs(240);

fn hooks() -> Value {
    json!([{"name": "transform", "timeout": "2s"}])
}

/// Sets `spec.config` of `name` (its own field manager: the rest of the spec stays).
async fn set_config(f: &Fixture, name: &str, config: Value) -> Result<()> {
    f.ns.api::<Plugin>()
        .patch(
            name,
            &PatchParams::apply("airlock-e2e-config").force(),
            &Patch::Apply(json!({
                "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
                "spec": {"config": config},
            })),
        )
        .await
        .with_context(|| format!("setting spec.config of Plugin {name}"))?;
    Ok(())
}

/// Calls `transform` on `name` until it answers `want` for the text `a`.
async fn wait_answer(f: &Fixture, name: &str, want: &str, within: Duration) -> Result<()> {
    wait::until(
        &format!("{name} to answer {want:?}"),
        within,
        async || {
            Ok(f.invoke(name, "transform", json!({"text": "a"}))
                .await
                .map(|out| out["text"].clone()))
        },
        |answer| matches!(answer, Ok(text) if text == want),
    )
    .await
    .map(drop)
}

async fn revision(f: &Fixture, name: &str) -> Result<String> {
    let p = f.ns.api::<Plugin>().get(name).await?;
    Ok(p.status
        .and_then(|s| s.current_revision)
        .unwrap_or_default())
}

#[tokio::test]
async fn a_live_configuration_reaches_the_running_plugin_without_a_restart() -> Result<()> {
    in_fixture("config-live", &["log"], async |f: &Fixture| {
        f.apply(
            "upper",
            "python-upper",
            hooks(),
            json!(["log"]),
            json!({"config": {"suffix": "!"}}),
        )
        .await?;
        f.wait_serving(&["upper"], "transform").await?;
        wait_answer(f, "upper", "A!", crate_wait()).await?;
        let labels = "airlock.dev/plugin=upper";
        let before = containers(&f.client, f.ns(), labels).await?;
        let revision_before = revision(f, "upper").await?;

        set_config(f, "upper", json!({"suffix": "?"})).await?;
        wait_answer(f, "upper", "A?", LIVE_CHANGE)
            .await
            .context("the running plugin takes the new configuration")?;
        ensure!(
            containers(&f.client, f.ns(), labels).await? == before,
            "no pod was replaced and no container restarted: {before:?}"
        );
        ensure!(
            revision(f, "upper").await? == revision_before,
            "a live change is not a new revision"
        );
        let log = plugin_logs(f, labels).await?;
        ensure!(
            log.contains("onConfigChange: configured ['suffix']"),
            "the plugin got onConfigChange:\n{log}"
        );

        // A namespace editor cannot edit the plugin's configuration past the Plugin (and its
        // schema check): the ConfigMap is the operator's.
        let tenant = Tenant::of(&f.sandbox).await?;
        let edit = tenant
            .api::<ConfigMap>()
            .patch(
                "upper-config",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"config.json": "{\"suffix\":\"owned\"}"}})),
            )
            .await;
        match edit {
            Err(kube::Error::Api(e)) if e.code == 403 && e.message.contains("Airlock plugin") => {}
            other => anyhow::bail!("the tenant's edit of the ConfigMap was not refused: {other:?}"),
        }
        let delete = tenant
            .api::<ConfigMap>()
            .delete("upper-config", &Default::default())
            .await;
        ensure!(
            matches!(&delete, Err(kube::Error::Api(e)) if e.code == 403),
            "the tenant's delete of the ConfigMap was not refused: {delete:?}"
        );

        // A stolen operator token may write ConfigMaps (RBAC), but only plugins' configurations:
        // the tenant's own ConfigMap, and a new one without the label, are refused.
        let theirs = serde_json::from_value::<ConfigMap>(json!({
            "metadata": {"name": "tenant-settings"},
            "data": {"mode": "safe"},
        }))?;
        tenant
            .api::<ConfigMap>()
            .create(&Default::default(), &theirs)
            .await
            .context("the tenant creates a ConfigMap of its own")?;
        let operator = impersonating(&format!(
            "system:serviceaccount:{}:airlock-operator",
            airlock_e2e::install::NAMESPACE
        ))
        .await?;
        let as_operator: kube::Api<ConfigMap> = kube::Api::namespaced(operator, f.ns());
        let patched = as_operator
            .patch(
                "tenant-settings",
                &PatchParams::default(),
                &Patch::Merge(json!({"data": {"mode": "owned"}})),
            )
            .await;
        ensure!(
            matches!(&patched, Err(kube::Error::Api(e)) if e.code == 403
                && e.message.contains("airlock-operator-configmaps")),
            "the operator's token patched a tenant's ConfigMap: {patched:?}"
        );
        let created = as_operator
            .create(
                &Default::default(),
                &serde_json::from_value(json!({"metadata": {"name": "planted"}, "data": {}}))?,
            )
            .await;
        ensure!(
            matches!(&created, Err(kube::Error::Api(e)) if e.code == 403),
            "the operator's token created a ConfigMap that is no plugin's: {created:?}"
        );
        let kept = f.ns.api::<ConfigMap>().get("tenant-settings").await?;
        ensure!(
            kept.data
                .unwrap_or_default()
                .get("mode")
                .map(String::as_str)
                == Some("safe"),
            "the tenant's ConfigMap is unchanged"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_configuration_change_rolls_a_plugin_without_on_config_change() -> Result<()> {
    in_fixture("config-restart", &["log"], async |f: &Fixture| {
        f.apply(
            "upper",
            "python-upper-restart",
            hooks(),
            json!(["log"]),
            json!({"config": {"suffix": "1"}}),
        )
        .await?;
        f.wait_serving(&["upper"], "transform").await?;
        wait_answer(f, "upper", "A1", crate_wait()).await?;
        let first = revision(f, "upper").await?;
        let first_map = mounted_config(f, "upper").await?;

        set_config(f, "upper", json!({"suffix": "2"})).await?;
        wait_answer(f, "upper", "A2", crate_wait())
            .await
            .context("the new pods loaded the new configuration")?;
        let second = revision(f, "upper").await?;
        ensure!(second != first, "a new revision: {first} → {second}");
        let second_map = mounted_config(f, "upper").await?;
        ensure!(
            second_map != first_map,
            "{first_map} → {second_map}: an immutable ConfigMap per configuration"
        );
        // The first one stays for a rollback to the revision that ran with it.
        let old = f.ns.api::<ConfigMap>().get(&first_map).await?;
        ensure!(old.immutable == Some(true), "{first_map} is immutable");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_configuration_the_signed_schema_refuses_is_a_condition_naming_the_field() -> Result<()> {
    in_fixture("config-bad", &["log"], async |f: &Fixture| {
        let secretish = "x".repeat(40);
        f.apply(
            "upper",
            "python-upper",
            hooks(),
            json!(["log"]),
            json!({"config": {"suffix": secretish}}),
        )
        .await?;
        let api = f.ns.api::<Plugin>();
        let p = wait_plugin(&api, "upper", "Compatible=False ConfigInvalid", |p| {
            condition(p, "Compatible").is_some_and(|c| c.reason == "ConfigInvalid")
        })
        .await?;
        let message = condition(&p, "Compatible")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ensure!(message.contains("spec.config.suffix"), "{message}");
        ensure!(
            !message.contains(&secretish),
            "the value is not repeated: {message}"
        );
        ensure!(
            f.ns.api::<Deployment>().get_opt("upper").await?.is_none(),
            "nothing runs with a refused configuration"
        );

        // An unknown setting is refused too (the schema says additionalProperties: false).
        set_config(f, "upper", json!({"sufix": "!"})).await?;
        let p = wait_plugin(&api, "upper", "a message naming sufix", |p| {
            condition(p, "Compatible").is_some_and(|c| c.message.contains("sufix"))
        })
        .await?;
        ensure!(
            condition(&p, "Compatible").is_some_and(|c| c.status == "False"),
            "still refused"
        );

        // Fixed: it rolls out with it.
        set_config(f, "upper", json!({"suffix": "!"})).await?;
        f.wait_serving(&["upper"], "transform").await?;
        wait_answer(f, "upper", "A!", crate_wait()).await
    })
    .await
}

fn crate_wait() -> Duration {
    airlock_e2e::WAIT
}

/// The ConfigMap the Deployment `name`'s pods mount as their configuration.
async fn mounted_config(f: &Fixture, name: &str) -> Result<String> {
    let d = f.ns.api::<Deployment>().get(name).await?;
    d.spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.volumes)
        .into_iter()
        .flatten()
        .find(|v| v.name == "config")
        .and_then(|v| v.config_map)
        .map(|c| c.name)
        .context("the pods mount no configuration")
}

/// The logs of the plugin pods selected by `labels`.
async fn plugin_logs(f: &Fixture, labels: &str) -> Result<String> {
    let pods = f.ns.api::<Pod>();
    let mut out = String::new();
    for pod in pods
        .list(&ListParams::default().labels(labels))
        .await?
        .items
    {
        let name = pod.metadata.name.unwrap_or_default();
        out.push_str(&pods.logs(&name, &Default::default()).await?);
    }
    Ok(out)
}

/// HMAC-SHA256 of `text` under `key`, hex, as python-upper signs (computed by Python's own
/// `hmac`, the reference the plugin uses, rather than by the test).
fn hmac_hex(key: &str, text: &str) -> Result<String> {
    let python = std::env::var("AIRLOCK_PYTHON").unwrap_or_else(|_| "python3".into());
    let out = std::process::Command::new(python)
        .args([
            "-c",
            "import hmac,hashlib,sys; print(hmac.new(sys.argv[1].encode(), sys.argv[2].encode(), hashlib.sha256).hexdigest())",
            key,
            text,
        ])
        .output()
        .context("running python3 for the expected HMAC")?;
    ensure!(out.status.success(), "python3: {out:?}");
    Ok(String::from_utf8(out.stdout)?.trim().to_string())
}

async fn put_secret(f: &Fixture, value: &str) -> Result<()> {
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "signing"},
        "stringData": {"hmac": value},
    }))?;
    f.ns.api::<Secret>()
        .patch(
            "signing",
            &PatchParams::apply("airlock-e2e").force(),
            &Patch::Apply(json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "signing"},
                "stringData": secret.string_data,
            })),
        )
        .await
        .context("writing the Secret signing")?;
    Ok(())
}

/// The `signature` of python-upper's answer to the text `a`.
async fn signature(f: &Fixture) -> Result<Option<String>, tonic::Status> {
    f.invoke("upper", "transform", json!({"text": "a"}))
        .await
        .map(|out| out["signature"].as_str().map(str::to_string))
}

#[tokio::test]
async fn a_secret_by_reference_reaches_the_plugin_only_and_a_rotation_reaches_it_live() -> Result<()>
{
    in_fixture("config-secret", &["log"], async |f: &Fixture| {
        let (first, second) = ("e2e-signing-key-7f3a91", "e2e-signing-key-rotated-c04d");
        put_secret(f, first).await?;
        f.apply(
            "upper",
            "python-upper",
            hooks(),
            json!(["log"]),
            json!({
                "config": {"suffix": "!"},
                "configSecrets": [
                    {"name": "signingKey", "secretKeyRef": {"name": "signing", "key": "hmac"}},
                ],
            }),
        )
        .await?;
        f.wait_serving(&["upper"], "transform").await?;
        let want = hmac_hex(first, "A!")?;
        wait::until(
            "python-upper to sign with the mounted secret",
            crate_wait(),
            async || Ok(signature(f).await),
            |s| matches!(s, Ok(Some(got)) if *got == want),
        )
        .await
        .map(drop)?;
        let labels = "airlock.dev/plugin=upper";
        let before = containers(&f.client, f.ns(), labels).await?;

        // Rotated in the Secret: the running plugin signs with the new key, no restart.
        put_secret(f, second).await?;
        let want = hmac_hex(second, "A!")?;
        wait::until(
            "python-upper to sign with the rotated secret",
            LIVE_CHANGE,
            async || Ok(signature(f).await),
            |s| matches!(s, Ok(Some(got)) if *got == want),
        )
        .await
        .map(drop)?;
        ensure!(
            containers(&f.client, f.ns(), labels).await? == before,
            "no pod was replaced and no container restarted"
        );

        // Neither value in the Plugin (status included), its Deployment, its Events or the
        // logs of the operator and the plugin pod.
        let mut seen = serde_json::to_string(&f.ns.api::<Plugin>().get("upper").await?)?;
        seen += &serde_json::to_string(&f.ns.api::<Deployment>().get("upper").await?)?;
        let events =
            f.ns.api::<k8s_openapi::api::events::v1::Event>()
                .list(&ListParams::default())
                .await?;
        seen += &serde_json::to_string(&events.items)?;
        for (_, log) in operator_logs(&f.client).await? {
            seen += &log;
        }
        seen += &plugin_logs(f, labels).await?;
        for value in [first, second] {
            ensure!(!seen.contains(value), "the secret value {value} leaked");
        }
        ensure!(
            seen.contains("secrets ['signingKey']"),
            "the plugin logged the secret's name (so the logs were read)"
        );
        Ok(())
    })
    .await
}
