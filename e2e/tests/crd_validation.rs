//! The real API server rejects invalid Plugins with a message that names the field, using only the
//! schema generated from `airlock-crds` (no controller involved). Requests are server-side applies
//! with strict field validation and dry-run, which is what `kubectl apply --server-side` sends.

use airlock_crds::Plugin;
use anyhow::{Context, Result, bail, ensure};
use kube::{Api, Client};
use serde_json::{Value, json};

fn valid_plugin(name: &str) -> Value {
    json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": name},
        "spec": {
            "version": "1.2.3",
            "image": "198.19.255.1:5000/acme/data-formatter:1.2.3",
            "bundle": {"source": {"oci": {"ref": "198.19.255.1:5000/acme/data-formatter-bundle:1.2.3"}}},
            "pluginApiVersion": 1,
            "hooks": [{"name": "transform", "timeout": "200ms", "failurePolicy": "Fail", "priority": 100}],
            "permissions": ["log", "storage:read"],
            "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}}
        }
    })
}

/// Dry-run create with strict field validation, which is what `kubectl apply` and `kubectl
/// create` send for a new object; returns the API error, if any. (Server-side apply reports an
/// unknown field as HTTP 500 "field not declared in schema" instead, an upstream quirk.)
async fn dry_create(client: &Client, ns: &str, obj: &Value) -> Result<Option<kube::core::Status>> {
    let url = format!(
        "/apis/airlock.dev/v1alpha1/namespaces/{ns}/plugins?dryRun=All&fieldValidation=Strict"
    );
    let request = http::Request::post(url)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(obj)?)?;
    match client.request::<Plugin>(request).await {
        Ok(_) => Ok(None),
        Err(kube::Error::Api(status)) => Ok(Some(*status)),
        Err(e) => Err(e).context("talking to the API server"),
    }
}

#[tokio::test]
async fn the_api_server_rejects_invalid_plugins_naming_the_field() -> Result<()> {
    let client = airlock_e2e::client().await?;
    // The CRDs stay installed: like the chart, they are shared by every test of the suite.
    airlock_e2e::crds::install(&client).await?;
    check_cases(&client).await
}

async fn check_cases(client: &Client) -> Result<()> {
    let ns = airlock_e2e::TestNamespace::create(client, "crd", &[]).await?;
    let outcome = async {
        if let Some(status) = dry_create(client, &ns.name, &valid_plugin("formatter")).await? {
            bail!("a valid Plugin was rejected: {}", status.message);
        }

        type Mutation = fn(&mut Value);
        let cases: [(&str, Mutation, &str); 9] = [
            (
                "bad semver",
                |p| p["spec"]["version"] = json!("1.2"),
                "spec.version",
            ),
            (
                "unknown hook",
                |p| p["spec"]["hooks"][0]["name"] = json!("onExplode"),
                "spec.hooks[0].name",
            ),
            (
                "timeout 0",
                |p| p["spec"]["hooks"][0]["timeout"] = json!("0ms"),
                "spec.hooks[0].timeout",
            ),
            (
                "timeout above the bound",
                |p| p["spec"]["hooks"][0]["timeout"] = json!("31s"),
                "spec.hooks[0].timeout",
            ),
            (
                "name too long",
                |p| p["metadata"]["name"] = json!("p".repeat(53)),
                "metadata.name",
            ),
            (
                "unknown field",
                |p| p["spec"]["colour"] = json!("blue"),
                "spec.colour",
            ),
            (
                "egress without permission",
                |p| p["spec"]["network"] = json!({"egress": [{"cidr": "198.18.4.0/24"}]}),
                "spec.network.egress",
            ),
            (
                "two bundle sources",
                |p| {
                    p["spec"]["bundle"]["source"]["http"] =
                        json!({"url": "https://example.invalid/b.tgz"})
                },
                "spec.bundle.source",
            ),
            (
                "unknown permission",
                |p| p["spec"]["permissions"] = json!(["root"]),
                "spec.permissions[0]",
            ),
        ];
        let mut failures = Vec::new();
        for (case, mutate, field) in cases {
            let mut plugin = valid_plugin("formatter");
            mutate(&mut plugin);
            match dry_create(client, &ns.name, &plugin).await? {
                None => failures.push(format!("{case}: accepted")),
                Some(s) if !s.message.contains(field) => failures.push(format!(
                    "{case}: message does not name {field}: {}",
                    s.message
                )),
                Some(s) if s.code != 422 && s.code != 400 => failures.push(format!(
                    "{case}: HTTP {} instead of 422/400: {}",
                    s.code, s.message
                )),
                Some(_) => {}
            }
        }
        ensure!(
            failures.is_empty(),
            "invalid Plugins:\n  {}",
            failures.join("\n  ")
        );

        // Egress is accepted once the permission is granted.
        let mut with_egress = valid_plugin("formatter");
        with_egress["spec"]["network"] =
            json!({"egress": [{"cidr": "198.18.4.0/24", "ports": [{"port": 443}]}]});
        with_egress["spec"]["permissions"] = json!(["log", "net:egress"]);
        if let Some(status) = dry_create(client, &ns.name, &with_egress).await? {
            bail!("egress with net:egress was rejected: {}", status.message);
        }
        Ok(())
    }
    .await;
    ns.delete().await?;
    outcome
}

/// Issue 14, API versions: an object written (and stored) as v1alpha1 reads the same as v1beta1,
/// and one written as v1beta1 is stored as v1alpha1 (the storage version) and reads back as it.
/// The plan for when the schemas differ is in ARCHITECTURE.md.
#[tokio::test]
async fn an_object_stored_as_v1alpha1_reads_as_v1beta1() -> Result<()> {
    let client = airlock_e2e::client().await?;
    airlock_e2e::crds::install(&client).await?;
    let ns = airlock_e2e::TestNamespace::create(&client, "versions", &[]).await?;
    let outcome = async {
        // A namespaced kind with no operator side effects: PluginStorage.
        let storage = |v: &str| {
            kube::api::ApiResource::from_gvk_with_plural(
                &kube::api::GroupVersionKind::gvk("airlock.dev", v, "PluginStorage"),
                "pluginstorages",
            )
        };
        let alpha: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), &ns.name, &storage("v1alpha1"));
        let beta: Api<kube::api::DynamicObject> =
            Api::namespaced_with(client.clone(), &ns.name, &storage("v1beta1"));
        let written = json!({
            "apiVersion": "airlock.dev/v1alpha1", "kind": "PluginStorage",
            "metadata": {"name": "old"},
            "spec": {"entries": {"greeting": "\"written as v1alpha1\""}},
        });
        alpha
            .create(&Default::default(), &serde_json::from_value(written)?)
            .await?;
        let read = beta.get("old").await?;
        ensure!(
            read.types.as_ref().map(|t| t.api_version.as_str()) == Some("airlock.dev/v1beta1")
                && read.data["spec"]["entries"]["greeting"] == "\"written as v1alpha1\"",
            "read as v1beta1: {read:?}"
        );
        let written = json!({
            "apiVersion": "airlock.dev/v1beta1", "kind": "PluginStorage",
            "metadata": {"name": "new"},
            "spec": {"entries": {"greeting": "\"written as v1beta1\""}},
        });
        beta.create(&Default::default(), &serde_json::from_value(written)?)
            .await?;
        let read = alpha.get("new").await?;
        ensure!(
            read.data["spec"]["entries"]["greeting"] == "\"written as v1beta1\"",
            "read as v1alpha1: {read:?}"
        );
        let crd = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(client.clone())
            .get("pluginstorages.airlock.dev")
            .await?;
        let stored = crd.status.and_then(|s| s.stored_versions).unwrap_or_default();
        ensure!(
            stored == ["v1alpha1"],
            "only the storage version is stored: {stored:?}"
        );
        Ok(())
    }
    .await;
    let deleted = ns.delete().await;
    outcome.and(deleted)
}
