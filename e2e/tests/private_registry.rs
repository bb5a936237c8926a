//! Private registries (issue 15, Deliver 2), against the local cluster's second registry
//! (198.19.255.1:5001, HTTP Basic auth from an htpasswd file; `make cluster-up`).
//!
//! The admin grants the operator credentials in a PluginTrustPolicy (`spec.registries`, a Secret
//! in the operator's namespace) for the namespaces it governs; the tenant's pods pull with the
//! Plugin's own `spec.imagePullSecrets`. The image, its cosign signature and the bundle artifact
//! all live in the private registry. Attacks: a tenant whose namespace has no grant names the same
//! image — by tag and by the very digest the granted tenant verified and a node already holds —
//! and a grant with a wrong password; each is refused by the registry, never served from the
//! operator's caches or another tenant's access.

use std::path::Path;

use airlock_bundle::{oci, signing};
use airlock_crds::Plugin;
use airlock_e2e::images::{
    PRIVATE_REGISTRY, copy_to_private_registry, private_registry_credentials,
    private_registry_docker_config_dir,
};
use airlock_e2e::install::images_env;
use airlock_e2e::plugins::{active, condition, invoke, wait_plugin};
use airlock_e2e::sandbox::{Sandbox, in_sandbox};
use airlock_e2e::signing::{cosign, hello_bundle};
use anyhow::{Context, Result, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const OPERATOR_NAMESPACE: &str = "airlock-system";

/// The private registry's docker config (what `kubectl create secret docker-registry` writes).
fn docker_config() -> Result<Vec<u8>> {
    let path = private_registry_docker_config_dir().join("config.json");
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// A `kubernetes.io/dockerconfigjson` Secret `name` holding `config`.
fn pull_secret(name: &str, config: Vec<u8>) -> Secret {
    Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        type_: Some("kubernetes.io/dockerconfigjson".into()),
        data: Some([(".dockerconfigjson".to_string(), ByteString(config))].into()),
        ..Default::default()
    }
}

/// Creates (or replaces) `secret` through `api`.
async fn put_secret(api: &Api<Secret>, secret: &Secret) -> Result<()> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let _ = api.delete(&name, &DeleteParams::default()).await;
    api.create(&PostParams::default(), secret)
        .await
        .with_context(|| format!("creating Secret {name}"))?;
    Ok(())
}

/// The signer's public keys: `(cosign PEM, ed25519)`.
type Signer = (String, String);

/// Grants the sandbox's namespace the credentials of `secret` (operator namespace) for `prefix`,
/// and trusts `signer` at level Untrusted.
async fn grant(s: &Sandbox, prefix: &str, secret: &str, signer: Option<&Signer>) -> Result<()> {
    let keys = match signer {
        Some((cosign, ed25519)) => json!([{"name": "private-signer", "cosign": cosign,
                                           "ed25519": ed25519, "trustLevel": "Untrusted"}]),
        None => json!([]),
    };
    Api::<airlock_crds::PluginTrustPolicy>::all(s.client.clone())
        .patch(
            &s.policy,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {
                "keys": keys,
                "registries": [{"prefix": prefix, "credentialsSecret": secret}],
            }})),
        )
        .await
        .context("granting registry credentials")?;
    Ok(())
}

/// Signs `image` (by digest) with a fresh key made by the real cosign CLI, pushing the signature
/// to the private registry with its docker config. Returns the public key.
fn cosign_sign(dir: &Path, image: &str) -> Result<String> {
    let config = private_registry_docker_config_dir();
    cosign(dir, &["generate-key-pair"], Some(&config))?;
    airlock_e2e::signing::sign_classic(dir, image, Some(&config))?;
    Ok(std::fs::read_to_string(dir.join("cosign.pub"))?)
}

/// Pushes the hello bundle bound to `image_digest`, signed with a fresh ed25519 key, as an OCI
/// artifact to `reference` in the private registry. Returns the public key.
async fn push_bundle(work: &Path, reference: &str, image_digest: &str) -> Result<String> {
    let bundle = hello_bundle(work, "private", image_digest)?;
    let (private, public) = signing::generate()?;
    let signature = signing::sign(
        &signing::parse_private_key(&private)?,
        &airlock_bundle::digest(&bundle),
    );
    let artifact = oci::artifact(&bundle, Some(&signature))?;
    let (user, password) = private_registry_credentials();
    oci::push(
        &oci::client(vec![PRIVATE_REGISTRY.to_string()]),
        &oci::parse_reference(reference)?,
        &oci::RegistryAuth::Basic(user, password),
        &artifact,
    )
    .await?;
    Ok(public)
}

/// The hello Plugin `name` with `image` and the bundle artifact at `bundle`.
fn private_hello(s: &Sandbox, name: &str, image: &str, bundle: &str) -> Result<serde_json::Value> {
    let mut plugin = s.hello(name)?;
    plugin["spec"]["image"] = json!(image);
    plugin["spec"]["bundle"] = json!({"source": {"oci": {"ref": bundle}}});
    Ok(plugin)
}

/// Waits until `name` is refused by the registry, and returns the message.
async fn unauthorized(api: &Api<Plugin>, name: &str) -> Result<String> {
    let p = wait_plugin(
        api,
        name,
        "Verified=False reason RegistryUnauthorized",
        |p| {
            condition(p, "Verified")
                .is_some_and(|c| c.status == "False" && c.reason == "RegistryUnauthorized")
        },
    )
    .await?;
    Ok(condition(&p, "Verified")
        .map(|c| c.message.clone())
        .unwrap_or_default())
}

#[tokio::test]
async fn a_private_registry_is_read_with_the_admin_s_grant_and_pulled_with_the_tenant_s_secret()
-> Result<()> {
    in_sandbox("private", &["log"], async |a: &Sandbox| {
        // Unique repositories: no node holds this image under this name yet.
        let repository = format!("e2e-private-{}", airlock_e2e::unique_suffix());
        let prefix = format!("{PRIVATE_REGISTRY}/{repository}");
        let image_tag = format!("{prefix}/hello:1");
        let pinned = copy_to_private_registry(
            &images_env("AIRLOCK_HELLO_IMAGE")?,
            &format!("{repository}/hello:1"),
        );
        let bundle = format!("{prefix}/hello-bundle:1");
        let work = tempfile::tempdir()?;
        let digest = pinned.rsplit('@').next().unwrap_or_default();
        let ed25519 = push_bundle(work.path(), &bundle, digest).await?;
        let signer = (cosign_sign(work.path(), &pinned)?, ed25519);
        let (_, password) = private_registry_credentials();
        let api: Api<Plugin> = a.ns.api();

        // No grant yet: the registry refuses the operator, and the status says what to do.
        a.apply(&private_hello(a, "hello", &image_tag, &bundle)?)
            .await?;
        let message = unauthorized(&api, "hello").await?;
        ensure!(
            message.contains("refused anonymous access") && message.contains("spec.registries"),
            "the refusal says who grants access: {message}"
        );
        ensure!(!message.contains(&password), "{message}");

        // The admin grants credentials: the operator reads the bundle, resolves and verifies the
        // image with them (the status names the cosign key that signed it in the private
        // registry: the signature was read with the credentials too)…
        let operator_secrets: Api<Secret> = Api::namespaced(a.client.clone(), OPERATOR_NAMESPACE);
        let granted_secret = format!("{repository}-pull");
        put_secret(
            &operator_secrets,
            &pull_secret(&granted_secret, docker_config()?),
        )
        .await?;
        let outcome = async {
            grant(a, &prefix, &granted_secret, Some(&signer)).await?;
            let p = wait_plugin(&api, "hello", "Verified=True", |p| {
                condition(p, "Verified").is_some_and(|c| c.status == "True")
            })
            .await?;
            let signer = p.status.as_ref().and_then(|s| s.signer.clone());
            ensure!(
                signer.as_deref() == Some(&format!("{}/private-signer", a.policy)),
                "the image's signature was read from the private registry: signer {signer:?}"
            );

            // …but the pods get none of them: without the Plugin's own pull secret, the kubelet
            // is refused.
            let pods: Api<Pod> = a.ns.api();
            airlock_e2e::wait::found(
                "the plugin pod to fail its image pull",
                airlock_e2e::WAIT,
                async || {
                    let pods = pods.list(&Default::default()).await?.items;
                    Ok(pods
                        .iter()
                        .flat_map(|pod| pod.status.iter())
                        .flat_map(|s| s.container_statuses.iter().flatten())
                        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
                        .find(|r| r == "ErrImagePull" || r == "ImagePullBackOff"))
                },
            )
            .await?;

            // The tenant's own pull secret, in its namespace: Active, and it answers.
            put_secret(&a.ns.api(), &pull_secret("registry-pull", docker_config()?)).await?;
            let mut plugin = private_hello(a, "hello", &image_tag, &bundle)?;
            plugin["spec"]["imagePullSecrets"] = json!([{"name": "registry-pull"}]);
            a.apply(&plugin).await?;
            wait_plugin(&api, "hello", "Active", active).await?;
            let answer = invoke(&a.client, a.ns(), "hello").await?;
            ensure!(answer["greeting"] == "hello, airlock", "{answer}");

            // Another tenant, whose namespace has no grant, names the same repositories: by tag,
            // and by the digest that was just verified and that the node now holds. The
            // operator asks the registry each time, anonymously, and is refused.
            in_sandbox("private-other", &["log"], async |b: &Sandbox| {
                let api: Api<Plugin> = b.ns.api();
                b.with_hello_bundle().await?;
                b.apply(&private_hello(b, "by-tag", &image_tag, &bundle)?)
                    .await?;
                b.apply(&private_hello(b, "by-digest", &pinned, &bundle)?)
                    .await?;
                let mut cached = b.hello("image-only")?;
                cached["spec"]["image"] = json!(pinned);
                b.apply(&cached).await?;
                for name in ["by-tag", "by-digest", "image-only"] {
                    let message = unauthorized(&api, name).await?;
                    ensure!(message.contains("anonymous access"), "{name}: {message}");
                }
                let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = b.ns.api();
                ensure!(
                    deployments
                        .list(&Default::default())
                        .await?
                        .items
                        .is_empty(),
                    "nothing of the other tenant's rolls out"
                );

                // A grant whose password is wrong: refused, naming the Secret to check.
                let wrong = format!("{repository}-wrong");
                let (user, _) = private_registry_credentials();
                let config = json!({"auths": {PRIVATE_REGISTRY: {
                    "username": user, "password": "not-the-password"
                }}});
                put_secret(
                    &operator_secrets,
                    &pull_secret(&wrong, serde_json::to_vec(&config)?),
                )
                .await?;
                let outcome = async {
                    grant(b, &prefix, &wrong, None).await?;
                    let message = wait_plugin(
                        &api,
                        "by-tag",
                        "refused with the granted credentials",
                        |p| {
                            condition(p, "Verified").is_some_and(|c| {
                                c.reason == "RegistryUnauthorized"
                                    && c.message
                                        .contains(&format!("Secret airlock-system/{wrong}"))
                            })
                        },
                    )
                    .await
                    .map(|p| condition(&p, "Verified").map(|c| c.message.clone()));
                    ensure!(
                        !format!("{message:?}").contains("not-the-password"),
                        "{message:?}"
                    );
                    message.map(|_| ())
                }
                .await;
                let _ = operator_secrets
                    .delete(&wrong, &DeleteParams::default())
                    .await;
                outcome
            })
            .await
        }
        .await;
        let _ = operator_secrets
            .delete(&granted_secret, &DeleteParams::default())
            .await;
        outcome
    })
    .await
}
