//! A PluginTrustPolicy's `spec.allowedRegistries` (issue 15): Plugins of the namespaces it governs
//! may name images and bundle artifacts only under those prefixes. The operator refuses any other
//! reference before it sends a single request there: a tenant with `edit` cannot make the operator
//! talk to a registry of its choosing (one that answers with endless manifests, or one that
//! records which images the cluster runs).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use airlock_crds::Plugin;
use airlock_e2e::images::registry;
use airlock_e2e::install::images_env;
use airlock_e2e::plugins::{active, condition, refused, wait_plugin};
use airlock_e2e::sandbox::{Sandbox, in_sandbox};
use anyhow::{Result, ensure};
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

#[tokio::test]
async fn an_image_outside_the_allowed_registries_is_refused_before_any_request() -> Result<()> {
    in_sandbox("allowed-registries", &["log"], async |s: &Sandbox| {
        s.with_hello_bundle().await?;
        let policies = Api::<airlock_crds::PluginTrustPolicy>::all(s.client.clone());
        let allow = async |prefixes: &[&str]| {
            policies
                .patch(
                    &s.policy,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"allowedRegistries": prefixes}})),
                )
                .await
        };
        allow(&["registry.example.com/acme"]).await?;
        // The API server refuses a prefix that is not host[:port][/path], naming the field.
        for bad in [
            "https://registry.example.com",
            "registry.example.com/acme/",
            "reg.example/Acme:1",
        ] {
            match allow(&[bad]).await {
                Err(kube::Error::Api(e)) => ensure!(
                    e.message
                        .contains("spec.allowedRegistries: write each as host[:port][/path]"),
                    "{bad}: {}",
                    e.message
                ),
                other => anyhow::bail!("{bad} was not refused by the API server: {other:?}"),
            }
        }

        // A "registry" the tenant controls, on the node: it only counts who connects.
        let node = registry().split(':').next().unwrap_or_default().to_string();
        let listener = tokio::net::TcpListener::bind((node.as_str(), 0)).await?;
        let port = listener.local_addr()?.port();
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        let server = tokio::spawn(async move {
            while let Ok((_conn, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        let hello_image = images_env("AIRLOCK_HELLO_IMAGE")?;
        let api: Api<Plugin> = s.ns.api();
        let mut outside = s.hello("outside")?;
        outside["spec"]["image"] = json!(format!("{node}:{port}/acme/hello:1.0.0"));
        s.apply(&outside).await?;
        let message = refused(&api, "outside", "RegistryNotAllowed").await?;
        ensure!(
            message.contains(&s.policy)
                && message.contains("allowedRegistries")
                && message.contains("registry.example.com/acme"),
            "the refusal names the policy, the field and what it allows: {message}"
        );
        // The local registry's images too, while the policy does not list it.
        s.apply(&s.hello("hello")?).await?;
        refused(&api, "hello", "RegistryNotAllowed").await?;

        // The admin allows the local registry's repository prefix: the Plugin rolls out without
        // anyone touching it; the tenant's registry stays refused.
        let repository = hello_image
            .strip_prefix(&format!("{}/", registry()))
            .unwrap_or_default();
        let first_segment = repository.split('/').next().unwrap_or_default();
        let prefix = format!("{}/{first_segment}", registry());
        allow(&["registry.example.com/acme", &prefix]).await?;
        wait_plugin(&api, "hello", "Active", active).await?;
        let p = api.get("outside").await?;
        let verified = condition(&p, "Verified").map(|c| c.reason.clone());
        ensure!(
            verified.as_deref() == Some("RegistryNotAllowed"),
            "the tenant's registry is still refused: {verified:?}"
        );
        server.abort();
        let n = connections.load(Ordering::SeqCst);
        ensure!(
            n == 0,
            "the operator connected {n} times to a registry no policy allows"
        );
        Ok(())
    })
    .await
}
