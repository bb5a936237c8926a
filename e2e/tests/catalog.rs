//! Signed plugins from a catalog (issue 18), with the real airlockctl binary, registry and
//! cluster: hello 1.0.0 and 1.1.0 (image signed with cosign, bundles with the catalog's key) are
//! published to a catalog index in the local registry; a PluginCatalog trusts its key;
//! `catalog search` offers 1.1.0, `catalog install hello@1.0.0` gives an Active Plugin pinned by
//! digest, `catalog upgrade` rolls it to 1.1.0 through the normal verified rollout. The attacks:
//! an index signed by another key is refused whole, and an entry of a correctly signed index whose
//! bundle another key signed is refused at install, naming the entry and the key; neither leaves
//! a Plugin.

use std::path::Path;

use airlock_bundle::signing;
use airlock_crds::{Plugin, PluginCatalog};
use airlockctl::catalog::index::{Entry, Index};
use anyhow::{Context, Result, ensure};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::{Value, json};

use airlock_e2e::cli::{airlockctl, run, succeed};
use airlock_e2e::images::{push_unique_variant, registry};
use airlock_e2e::install::images_env;
use airlock_e2e::plugins::{active, wait_plugin};
use airlock_e2e::sandbox::Sandbox;

#[tokio::test]
async fn plugins_install_and_upgrade_from_a_signed_catalog_and_forgeries_are_refused() -> Result<()>
{
    let sandbox = Sandbox::new("catalog", &["log"]).await?;
    let catalogs: Api<PluginCatalog> = Api::all(sandbox.client.clone());
    let suffix = airlock_e2e::unique_suffix();
    let names = [format!("e2e-{suffix}"), format!("e2e-{suffix}-forged")];
    let result = scenario(&sandbox, &catalogs, &names, &suffix).await;
    for name in &names {
        let _ = catalogs.delete(name, &DeleteParams::default()).await;
    }
    sandbox.teardown().await?;
    result
}

/// plugin.yaml of hello at `version`, bound to the image `digest`, packed, signed with `key`,
/// pushed as `REGISTRY/e2e/catalog-hello-bundle:<version>-<suffix>`; the pinned reference.
fn push_bundle(
    bin: &Path,
    work: &Path,
    version: &str,
    digest: &str,
    key: &str,
    suffix: &str,
) -> Result<String> {
    let dir = work.join(format!("hello-{version}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("plugin.yaml"),
        format!(
            "name: hello\nversion: {version}\napiVersion: 1\nhooks: [transform]\npermissions: [log]\nentryPoint: [/hello]\nimageDigest: {digest}\n"
        ),
    )?;
    let bundle = airlock_bundle::pack::pack(&dir, airlock_bundle::DEFAULT_MAX_BYTES)?.bytes;
    let file = work.join(format!("hello-{version}.tar.gz"));
    std::fs::write(&file, &bundle)?;
    let signature = signing::sign(
        &signing::parse_private_key(key)?,
        &airlock_bundle::digest(&bundle),
    );
    std::fs::write(work.join(format!("hello-{version}.tar.gz.sig")), signature)?;
    let reference = format!("{}/e2e/catalog-hello-bundle:{version}-{suffix}", registry());
    let out = succeed(
        bin,
        &[
            "bundle",
            "push",
            &file.display().to_string(),
            &reference,
            "--insecure-registry",
            &registry(),
        ],
    )?;
    out.lines()
        .find_map(|l| l.strip_prefix("pushed "))
        .map(str::to_string)
        .context("bundle push printed no pinned reference")
}

async fn scenario(
    sandbox: &Sandbox,
    catalogs: &Api<PluginCatalog>,
    names: &[String; 2],
    suffix: &str,
) -> Result<()> {
    let bin = airlockctl()?;
    let work = tempfile::tempdir()?;
    let key = sandbox.trust_new_release_keys(work.path()).await?;
    let public = signing::public_key_pem(&signing::parse_private_key(&key)?)?;
    std::fs::write(work.path().join("acme.key"), &key)?;
    let (image, digest) =
        push_unique_variant(&images_env("AIRLOCK_HELLO_IMAGE")?, "e2e/catalog-hello")?;
    let repository = image.rsplit_once(':').map_or(image.as_str(), |(r, _)| r);
    let image_by_digest = format!("{repository}@{digest}");
    airlock_e2e::signing::sign_classic(work.path(), &image_by_digest, None)?;

    let registry = registry();
    let index = format!("{registry}/e2e/catalog-{suffix}:stable");
    for version in ["1.0.0", "1.1.0"] {
        let bundle = push_bundle(&bin, work.path(), version, &digest, &key, suffix)?;
        succeed(
            &bin,
            &[
                "catalog",
                "publish",
                "--index",
                &index,
                "--bundle",
                &bundle,
                "--image",
                &image_by_digest,
                "--key",
                &work.path().join("acme.key").display().to_string(),
                "--key-name",
                "acme",
                "--description",
                "greets whoever it is given",
                "--create",
                "--insecure-registry",
                &registry,
            ],
        )?;
    }
    let catalog = |name: &str, index: &str| {
        json!({
            "apiVersion": "airlock.dev/v1alpha1", "kind": "PluginCatalog",
            "metadata": {"name": name},
            "spec": {"index": index, "keys": [{"name": "acme", "ed25519": public}]}
        })
    };
    catalogs
        .patch(
            &names[0],
            &PatchParams::apply("airlock-e2e"),
            &Patch::Apply(catalog(&names[0], &index)),
        )
        .await?;

    // search: the newest version, once.
    let found: Value = serde_json::from_str(&succeed(
        &bin,
        &[
            "catalog",
            "search",
            "--catalog",
            &names[0],
            "-o",
            "json",
            "--insecure-registry",
            &registry,
        ],
    )?)?;
    ensure!(
        found.as_array().map(Vec::len) == Some(1) && found[0]["version"] == "1.1.0",
        "search offers hello 1.1.0 once: {found}"
    );

    // install 1.0.0: a Plugin pinned by digest, Active.
    let ns = sandbox.ns();
    succeed(
        &bin,
        &[
            "catalog",
            "install",
            "hello@1.0.0",
            "-n",
            ns,
            "--catalog",
            &names[0],
            "--insecure-registry",
            &registry,
        ],
    )?;
    let plugins = sandbox.ns.api::<Plugin>();
    let installed = wait_plugin(&plugins, "hello", "Active at 1.0.0", |p| {
        active(p) && p.spec.version == "1.0.0"
    })
    .await?;
    let bundle_ref =
        serde_json::to_value(&installed.spec)?["bundle"]["source"]["oci"]["ref"].clone();
    ensure!(
        bundle_ref.as_str().is_some_and(|r| r.contains("@sha256:"))
            && installed.spec.image == image_by_digest,
        "the Plugin is pinned by digest: {bundle_ref} {}",
        installed.spec.image
    );

    // upgrade: to 1.1.0 through the operator's verified rollout.
    let out = succeed(
        &bin,
        &[
            "catalog",
            "upgrade",
            "hello",
            "-n",
            ns,
            "--insecure-registry",
            &registry,
        ],
    )?;
    ensure!(
        out.contains("1.0.0 -> 1.1.0"),
        "upgrade says what it did: {out}"
    );
    wait_plugin(&plugins, "hello", "Active at 1.1.0", |p| {
        active(p) && p.spec.version == "1.1.0"
    })
    .await?;

    // The local registry is plain HTTP.
    let plain = airlockctl::oci::RegistryArgs {
        insecure: vec![registry.clone()],
    };
    // Forgery 1: an index signed by another key, under the catalog's name: refused whole.
    let (other, _) = signing::generate()?;
    let mut forged = Index::new();
    let good: Index = {
        let pulled = airlockctl::oci::pull_kind(
            &airlock_bundle::oci::CATALOG,
            &index,
            &plain,
            airlockctl::catalog::index::MAX_INDEX_BYTES,
        )
        .await?
        .context("the index")?;
        serde_json::from_slice(&pulled.0.bundle)?
    };
    for entry in &good.entries {
        forged.put(entry.clone()).map_err(anyhow::Error::msg)?;
    }
    let forged_index = format!("{registry}/e2e/catalog-{suffix}-forged:stable");
    let sign = |key: &str, bytes: &[u8]| -> Result<String> {
        Ok(signing::sign(
            &signing::parse_private_key(key)?,
            &airlockctl::catalog::index::index_digest(bytes),
        ))
    };
    let bytes = forged.to_bytes();
    airlockctl::oci::push_kind(
        &airlock_bundle::oci::CATALOG,
        &forged_index,
        &plain,
        &bytes,
        &sign(&other, &bytes)?,
    )
    .await?;
    catalogs
        .patch(
            &names[1],
            &PatchParams::apply("airlock-e2e"),
            &Patch::Apply(catalog(&names[1], &forged_index)),
        )
        .await?;
    let refused = run(
        &bin,
        &[
            "catalog",
            "install",
            "hello",
            "-n",
            ns,
            "--name",
            "forged-index",
            "--catalog",
            &names[1],
            "--insecure-registry",
            &registry,
        ],
    )?;
    let message = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        refused.status.code() == Some(1)
            && message.contains("does not verify under any of its keys (acme)"),
        "an index signed by another key: {:?} {message}",
        refused.status.code()
    );

    // Forgery 2: the index signed by the catalog's key, but an entry whose bundle another key
    // signed (a publisher's key stolen for the index only, or a bundle replaced).
    let rogue_bundle = push_bundle(&bin, work.path(), "1.2.0", &digest, &other, suffix)?;
    let pulled = airlockctl::oci::pull_kind(
        &airlock_bundle::oci::BUNDLE,
        &rogue_bundle,
        &plain,
        airlock_bundle::DEFAULT_MAX_BYTES,
    )
    .await?
    .context("the rogue bundle")?;
    let mut tampered = good.clone();
    tampered
        .put(Entry {
            version: "1.2.0".parse()?,
            bundle: rogue_bundle,
            bundle_digest: airlock_bundle::digest(&pulled.0.bundle),
            ..good.entries[0].clone()
        })
        .map_err(anyhow::Error::msg)?;
    let bytes = tampered.to_bytes();
    airlockctl::oci::push_kind(
        &airlock_bundle::oci::CATALOG,
        &forged_index,
        &plain,
        &bytes,
        &sign(&key, &bytes)?,
    )
    .await?;
    let refused = run(
        &bin,
        &[
            "catalog",
            "install",
            "hello@1.2.0",
            "-n",
            ns,
            "--name",
            "forged-entry",
            "--catalog",
            &names[1],
            "--insecure-registry",
            &registry,
        ],
    )?;
    let message = String::from_utf8_lossy(&refused.stderr);
    ensure!(
        refused.status.code() == Some(1)
            && message.contains("catalog entry hello@1.2.0")
            && message.contains("does not verify under the catalog key acme"),
        "an entry whose bundle another key signed: {:?} {message}",
        refused.status.code()
    );
    for name in ["forged-index", "forged-entry"] {
        ensure!(
            plugins.get_opt(name).await?.is_none(),
            "a refused install left the Plugin {name}"
        );
    }
    Ok(())
}
