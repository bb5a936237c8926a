//! Signatures gate every rollout: the tamper matrix, on the local cluster, with images signed by
//! the real cosign CLI and bundles signed with airlockctl's format. Each tampered Plugin is
//! blocked with its own condition reason and an audit record, while a correctly signed plugin in
//! the same namespace stays Active and answers.
//!
//! One test, run as a sequence: the registry-down step blocks the registry for the operator's
//! pods, which must not overlap with the other steps. It ends with two policies governing the
//! namespace: a key must be listed by both.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airlock_bundle::signing;
use airlock_crds::plugin::PluginPhase;
use airlock_crds::{Plugin, PluginTrustPolicy};
use airlock_e2e::TestNamespace;
use airlock_e2e::images::{crane, push_unique_variant, registry};
use airlock_e2e::install::images_env;
use airlock_e2e::plugins::{
    active, audit_records, condition, ensure_phase, invoke, phase, wait_plugin,
};
use airlock_e2e::sandbox::put_bundle;
use airlock_e2e::tenant::Tenant;
use airlock_e2e::wait;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

const REGISTRY_LOG: &str = "/var/lib/airlock-cluster/logs/registry.log";
/// The Trusted level's memory cap (the plugins ask for 32Mi).
const MAX_MEMORY: &str = "64Mi";

/// A cosign key pair made by the real cosign CLI (empty password).
struct CosignKey {
    dir: PathBuf,
}

impl CosignKey {
    fn generate(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        cosign(&dir, &["generate-key-pair"])?;
        Ok(Self { dir })
    }
    fn public(&self) -> Result<String> {
        Ok(std::fs::read_to_string(self.dir.join("cosign.pub"))?)
    }
    /// `cosign sign` as the README tells users to: key-based, no transparency log, HTTP registry.
    fn sign(&self, image_by_digest: &str) -> Result<()> {
        airlock_e2e::signing::sign_classic(&self.dir, image_by_digest, None)
    }
}

fn cosign(dir: &Path, args: &[&str]) -> Result<()> {
    airlock_e2e::signing::cosign(dir, args, None)
}

/// An image variant of the hello example: `(tag reference, repository@digest, digest)`.
struct Image {
    tag: String,
    pinned: String,
    digest: String,
}

fn variant(repository: &str) -> Result<Image> {
    variant_of("AIRLOCK_HELLO_IMAGE", repository)
}

/// [`variant`] of the image `images.env` names `env`.
fn variant_of(env: &str, repository: &str) -> Result<Image> {
    let (tag, digest) = push_unique_variant(&images_env(env)?, repository)?;
    let pinned = format!("{}/{repository}@{digest}", registry());
    Ok(Image {
        tag,
        pinned,
        digest,
    })
}

use airlock_e2e::signing::hello_bundle as bundle;

/// A bundle with this `plugin.yaml`, packed without the checks `airlockctl bundle pack` makes,
/// as an attacker (or a broken tool) could.
fn raw_bundle(manifest: &str) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(
        Vec::new(),
        flate2::Compression::default(),
    ));
    let mut header = tar::Header::new_gnu();
    header.set_size(manifest.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "plugin.yaml", manifest.as_bytes())?;
    Ok(tar.into_inner()?.finish()?)
}

/// A minimal HTTP/1.1 file server on the node address, reachable from the operator's pod.
struct FileServer {
    base: String,
    hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    async fn start(files: Vec<(String, Vec<u8>)>) -> Result<Self> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("198.19.255.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        let files = std::sync::Arc::new(files);
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let files = files.clone();
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let n = conn.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]);
                    let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let response = match files.iter().find(|(p, _)| *p == path) {
                        Some((_, body)) => {
                            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                body.len()
                            )
                            .into_bytes();
                            r.extend_from_slice(body);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = conn.write_all(&response).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        Ok(Self { base, hits, task })
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Matrix {
    client: Client,
    ns: TestNamespace,
    policy: String,
    suffix: String,
    work: tempfile::TempDir,
    author: BundleKey,
    revokee: BundleKey,
}

/// An ed25519 bundle signing key pair (PEM texts), as `airlockctl keygen` writes them.
struct BundleKey {
    private: String,
    public: String,
}

impl Matrix {
    fn keypair() -> Result<BundleKey> {
        let (private, public) = signing::generate()?;
        Ok(BundleKey { private, public })
    }

    fn sign(&self, pair: &BundleKey, bundle: &[u8]) -> Result<String> {
        let key = signing::parse_private_key(&pair.private)?;
        Ok(signing::sign(&key, &airlock_bundle::digest(bundle)))
    }

    /// The bundle (and its signature) in a ConfigMap named `<plugin>-bundle`.
    async fn publish(
        &self,
        plugin: &str,
        bundle: Vec<u8>,
        signature: Option<String>,
    ) -> Result<()> {
        put_bundle(&self.ns, &format!("{plugin}-bundle"), bundle, signature).await
    }

    /// The hello bundle bound to `image_digest`, signed by `signer` and published, and the Plugin
    /// `name` running `image` with `permissions` applied.
    async fn deploy(
        &self,
        name: &str,
        image: &str,
        image_digest: &str,
        signer: &BundleKey,
        permissions: &[&str],
    ) -> Result<()> {
        let b = bundle(self.work.path(), name, image_digest)?;
        self.publish_signed(name, b, signer).await?;
        self.apply(&self.plugin(name, image, permissions)).await
    }

    /// An upgrade of the Plugin `name` to `image`: a new bundle bound to `image_digest`, signed
    /// by `signer`, in its own ConfigMap `<name>-<tag>-bundle`.
    async fn upgrade(
        &self,
        name: &str,
        tag: &str,
        image: &Image,
        signer: &BundleKey,
    ) -> Result<()> {
        let versioned = format!("{name}-{tag}");
        let b = bundle(self.work.path(), &versioned, &image.digest)?;
        self.publish_signed(&versioned, b, signer).await?;
        let mut plugin = self.plugin(name, &image.tag, &["log"]);
        plugin["spec"]["bundle"] =
            json!({"source": {"configMapRef": {"name": format!("{versioned}-bundle")}}});
        self.apply(&plugin).await
    }

    /// `publish` with the signature of `signer`.
    async fn publish_signed(
        &self,
        plugin: &str,
        bundle: Vec<u8>,
        signer: &BundleKey,
    ) -> Result<()> {
        let signature = self.sign(signer, &bundle)?;
        self.publish(plugin, bundle, Some(signature)).await
    }

    fn plugin(&self, name: &str, image: &str, permissions: &[&str]) -> serde_json::Value {
        json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": name},
            "spec": {
                "version": "1.0.0",
                "image": image,
                "bundle": {"source": {"configMapRef": {"name": format!("{name}-bundle")}}},
                "pluginApiVersion": 1,
                "hooks": [{"name": "transform", "timeout": "200ms"}],
                "permissions": permissions,
                "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}}
            }
        })
    }

    async fn apply(&self, plugin: &serde_json::Value) -> Result<()> {
        airlock_e2e::plugins::apply(&self.ns.api(), plugin).await
    }

    /// Waits until `name` is blocked on `condition` with `reason`, and checks the audit stream
    /// recorded it.
    async fn expect_blocked(&self, name: &str, cond: &str, reason: &str) -> Result<Plugin> {
        let api: Api<Plugin> = self.ns.api();
        let p = wait_plugin(&api, name, &format!("{cond}=False reason {reason}"), |p| {
            condition(p, cond).is_some_and(|c| c.status == "False" && c.reason == reason)
        })
        .await?;
        let what = format!("an audit record with reason {reason} for Plugin {name}");
        wait::found(&what, Duration::from_secs(30), async || {
            let records = audit_records(&self.client).await?;
            Ok(records.into_iter().find(|r| {
                r["plugin"]["namespace"] == self.ns.name.as_str()
                    && r["plugin"]["name"] == name
                    && r["reason"] == reason
            }))
        })
        .await?;
        // kstatus (Flux's health checks): blocked for good, except a registry that did not answer
        // in time, which is retried.
        let expected = if reason == "RegistryTimeout" {
            "InProgress"
        } else {
            "Failed"
        };
        airlock_e2e::kstatus::expect(&format!("{name} blocked with {reason}"), &p, expected)?;
        let deployments: Api<Deployment> = self.ns.api();
        if reason != "KeyRevoked" && reason != "NoLongerAllowed" {
            ensure!(
                deployments.get_opt(name).await?.is_none()
                    || phase(&p) == Some(PluginPhase::Degraded),
                "Plugin {name} blocked with {reason} but something was rolled out"
            );
        }
        Ok(p)
    }

    async fn expect_active(&self, name: &str) -> Result<()> {
        let api: Api<Plugin> = self.ns.api();
        wait_plugin(&api, name, "phase Active", active).await?;
        let out = invoke(&self.client, &self.ns.name, name).await?;
        ensure!(out["greeting"] == "hello, airlock", "{name} answered {out}");
        Ok(())
    }

    async fn set_revoked(
        &self,
        revoked: bool,
        author_cosign: &str,
        revokee_cosign: &str,
    ) -> Result<()> {
        self.set_policy(revoked, author_cosign, revokee_cosign, MAX_MEMORY)
            .await
    }

    /// The namespace's policy: the author's keys, the revokee's (`revoked` or not), and the
    /// Trusted level's memory cap `max_memory`.
    async fn set_policy(
        &self,
        revoked: bool,
        author_cosign: &str,
        revokee_cosign: &str,
        max_memory: &str,
    ) -> Result<()> {
        let keys = json!([
            {"name": "author", "ed25519": self.author.public, "cosign": author_cosign, "trustLevel": "Trusted"},
            {"name": "revokee", "ed25519": self.revokee.public, "cosign": revokee_cosign, "trustLevel": "Trusted", "revoked": revoked}
        ]);
        self.apply_policy_capped(&self.policy, keys, max_memory)
            .await
    }

    /// The trust policy `name` governing this namespace with `keys` and the Trusted level's caps.
    async fn apply_policy(&self, name: &str, keys: serde_json::Value) -> Result<()> {
        self.apply_policy_capped(name, keys, MAX_MEMORY).await
    }

    async fn apply_policy_capped(
        &self,
        name: &str,
        keys: serde_json::Value,
        max_memory: &str,
    ) -> Result<()> {
        let body = json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "PluginTrustPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaces": {"matchLabels": {"airlock.dev/e2e-signed": self.suffix}},
                "keys": keys,
                "trustLevels": {"Trusted": {
                    "maxMemory": max_memory, "maxCpu": "250m", "maxTimeout": "2s", "permissions": ["log"]
                }}
            }
        });
        Api::<PluginTrustPolicy>::all(self.client.clone())
            .patch(
                name,
                &PatchParams::apply("airlock-e2e").force(),
                &Patch::Apply(&body),
            )
            .await
            .with_context(|| format!("applying the trust policy {name}"))?;
        Ok(())
    }
}

/// Drops packets from pods to the registry while alive: the registry hangs, as far as the
/// operator (which runs in a pod) can tell. The kubelet pulls from the host and is not affected.
/// In the raw table, ahead of kube-router's filter chains (which accept pod traffic first).
struct RegistryBlocked;

const BLOCK_RULE: &[&str] = &[
    "PREROUTING",
    "-s",
    "198.18.0.0/16",
    "-d",
    "198.19.255.1",
    "-p",
    "tcp",
    "--dport",
    "5000",
    "-m",
    "comment",
    "--comment",
    "airlock-e2e-registry-block",
    "-j",
    "DROP",
];

impl RegistryBlocked {
    fn new() -> Result<Self> {
        // A run killed inside this step left its rule behind: remove it first.
        Self::remove_all();
        let mut args = vec!["-t", "raw", "-I"];
        args.extend_from_slice(BLOCK_RULE);
        let st = Command::new("iptables").args(&args).status()?;
        ensure!(st.success(), "iptables -I failed");
        Ok(Self)
    }
}

impl RegistryBlocked {
    fn remove_all() {
        let mut args = vec!["-t", "raw", "-D"];
        args.extend_from_slice(BLOCK_RULE);
        while Command::new("iptables")
            .args(&args)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {}
    }
}

impl Drop for RegistryBlocked {
    fn drop(&mut self) {
        Self::remove_all();
    }
}

fn registry_requests_for(repository: &str) -> Result<usize> {
    let log =
        std::fs::read_to_string(REGISTRY_LOG).with_context(|| format!("reading {REGISTRY_LOG}"))?;
    let needle = format!("/v2/{repository}/");
    Ok(log.lines().filter(|l| l.contains(&needle)).count())
}

#[tokio::test]
async fn the_tamper_matrix_is_blocked_while_a_signed_plugin_stays_active() -> Result<()> {
    airlock_e2e::install::ensure_installed().await?;
    let client = airlock_e2e::client().await?;
    let suffix = airlock_e2e::unique_suffix();
    let ns = TestNamespace::create(
        &client,
        "signed",
        &[
            ("airlock.dev/e2e-signed", suffix.as_str()),
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
        ],
    )
    .await?;
    let m = Matrix {
        client: client.clone(),
        policy: format!("e2e-signed-{suffix}"),
        suffix,
        ns,
        work: tempfile::tempdir()?,
        author: Matrix::keypair()?,
        revokee: Matrix::keypair()?,
    };
    let outcome = matrix(&m).await;
    // Clean up whatever happened.
    let _ = m.ns.delete().await;
    let _ = Api::<PluginTrustPolicy>::all(client.clone())
        .delete(&m.policy, &DeleteParams::default())
        .await;
    outcome
}

async fn matrix(m: &Matrix) -> Result<()> {
    let work = m.work.path();
    let trusted = CosignKey::generate(work.join("cosign-trusted"))?;
    let stranger = CosignKey::generate(work.join("cosign-stranger"))?;
    let revokee_cosign = CosignKey::generate(work.join("cosign-revokee"))?;
    m.set_revoked(false, &trusted.public()?, &revokee_cosign.public()?)
        .await?;
    let repo = format!("e2e-signed/{}", m.suffix);

    // The happy path: image signed with cosign, bundle signed, both by trusted keys.
    let good = variant(&format!("{repo}/good"))?;
    trusted.sign(&good.pinned)?;
    m.deploy("good", &good.tag, &good.digest, &m.author, &["log"])
        .await?;
    m.expect_active("good").await?;
    let good_plugin = m.ns.api::<Plugin>().get("good").await?;
    ensure!(
        good_plugin
            .status
            .as_ref()
            .and_then(|s| s.trust_level.as_deref())
            == Some("Trusted"),
        "trust level comes from the signer: {:?}",
        good_plugin.status
    );

    // The same, with the bundle published as an OCI artifact next to the image.
    let b = bundle(work, "good-oci", &good.digest)?;
    let bundle_path = work.join("good-oci.tar.gz");
    std::fs::write(&bundle_path, &b)?;
    std::fs::write(work.join("good-oci.tar.gz.sig"), m.sign(&m.author, &b)?)?;
    let bundle_ref = format!("{}/{repo}/good-bundle:1.0.0", registry());
    {
        use airlock_bundle::oci;
        let signature = std::fs::read_to_string(work.join("good-oci.tar.gz.sig"))?;
        let artifact = oci::artifact(&std::fs::read(&bundle_path)?, Some(&signature))?;
        let client = oci::client(vec![registry()]);
        oci::push(
            &client,
            &oci::parse_reference(&bundle_ref)?,
            &oci::RegistryAuth::Anonymous,
            &artifact,
        )
        .await
        .context("pushing the bundle artifact")?;
    }
    let mut from_oci = m.plugin("good-oci", &good.tag, &["log"]);
    from_oci["spec"]["bundle"] = json!({"source": {"oci": {"ref": bundle_ref}}});
    m.apply(&from_oci).await?;
    m.expect_active("good-oci").await?;

    // The same, with the bundle and its .sig served over HTTP.
    let b = bundle(work, "good-http", &good.digest)?;
    let sig = m.sign(&m.author, &b)?;
    let server = FileServer::start(vec![
        ("/good.tar.gz".into(), b),
        ("/good.tar.gz.sig".into(), sig.into_bytes()),
    ])
    .await?;
    let mut from_http = m.plugin("good-http", &good.tag, &["log"]);
    from_http["spec"]["bundle"] =
        json!({"source": {"http": {"url": format!("{}/good.tar.gz", server.base)}}});
    m.apply(&from_http).await?;
    m.expect_active("good-http").await?;
    ensure!(
        server.hits.load(std::sync::atomic::Ordering::SeqCst) >= 2,
        "the operator did not download the bundle and its signature from the server"
    );

    // A re-reconcile of the unchanged plugin asks the registry nothing.
    let before = registry_requests_for(&format!("{repo}/good"))?;
    m.ns.api::<Plugin>()
        .patch(
            "good",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {"e2e/poke": "1"}}})),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = registry_requests_for(&format!("{repo}/good"))?;
    ensure!(
        after == before,
        "re-reconciling an unchanged Plugin made {} registry requests",
        after - before
    );

    // Images the signed manifest does not vouch for: an unsigned one, one signed by a key no
    // policy trusts, and a signed one that is not the image the manifest is bound to.
    for (name, signer, bound_to, reason) in [
        ("unsigned", None, None, "ImageNotSigned"),
        ("foreign", Some(&stranger), None, "ImageSignatureUntrusted"),
        (
            "mismatch",
            Some(&trusted),
            Some(&good.digest),
            "ImageDigestMismatch",
        ),
    ] {
        let image = variant(&format!("{repo}/{name}"))?;
        if let Some(key) = signer {
            key.sign(&image.pinned)?;
        }
        let digest = bound_to.unwrap_or(&image.digest);
        m.deploy(name, &image.tag, digest, &m.author, &["log"])
            .await?;
        m.expect_blocked(name, "Verified", reason).await?;
    }

    // One byte of the bundle flipped after signing.
    let b = bundle(work, "flipped", &good.digest)?;
    let sig = m.sign(&m.author, &b)?;
    let mut flipped = b.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    m.publish("flipped", flipped, Some(sig)).await?;
    m.apply(&m.plugin("flipped", &good.tag, &["log"])).await?;
    m.expect_blocked("flipped", "Verified", "BundleSignatureInvalid")
        .await?;

    // Permission escalation: the spec asks for more than the signer declared.
    m.deploy(
        "escalate",
        &good.tag,
        &good.digest,
        &m.author,
        &["log", "storage:write"],
    )
    .await?;
    m.expect_blocked("escalate", "PermissionsApproved", "NotDeclaredBySigner")
        .await?;

    // Fail closed on garbage: a signature that is not one, and a signed bundle whose manifest
    // has a duplicate key (it verifies, then unpacking refuses it).
    let b = bundle(work, "garbled", &good.digest)?;
    m.publish("garbled", b, Some("this is not a signature".into()))
        .await?;
    m.apply(&m.plugin("garbled", &good.tag, &["log"])).await?;
    m.expect_blocked("garbled", "Verified", "MalformedSignature")
        .await?;
    let b = raw_bundle(&format!(
        "name: hello\nname: hello\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\nentryPoint: [/hello]\nimageDigest: {}\n",
        good.digest
    ))?;
    m.publish_signed("dupkey", b, &m.author).await?;
    m.apply(&m.plugin("dupkey", &good.tag, &["log"])).await?;
    m.expect_blocked("dupkey", "Verified", "InvalidManifest")
        .await?;

    // Tag moved to an unsigned digest after verification: the running pods keep the verified
    // digest; the next rollout is blocked.
    let mover = variant(&format!("{repo}/mover"))?;
    trusted.sign(&mover.pinned)?;
    m.deploy("mover", &mover.tag, &mover.digest, &m.author, &["log"])
        .await?;
    m.expect_active("mover").await?;
    let moved = variant(&format!("{repo}/mover"))?;
    crane(&[
        "tag",
        &moved.pinned,
        mover.tag.rsplit(':').next().unwrap_or_default(),
    ])?;
    ensure!(
        crane(&["digest", &mover.tag])? == moved.digest,
        "the tag did not move"
    );
    let mut changed = m.plugin("mover", &mover.tag, &["log"]);
    changed["spec"]["hooks"][0]["timeout"] = json!("300ms");
    m.apply(&changed).await?;
    let p = m
        .expect_blocked("mover", "Verified", "ImageNotSigned")
        .await?;
    ensure_phase(&p, PluginPhase::Degraded, "the old revision keeps serving")?;
    let d = m.ns.api::<Deployment>().get("mover").await?;
    let image = d
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.first().and_then(|c| c.image.clone()))
        .unwrap_or_default();
    ensure!(
        image.ends_with(&mover.digest),
        "the running Deployment left the verified digest: {image}"
    );
    invoke(&m.client, &m.ns.name, "mover").await?;

    // Registry unreachable from the operator: fail closed, recover when it returns.
    {
        let _blocked = RegistryBlocked::new()?;
        let late = variant(&format!("{repo}/late"))?;
        trusted.sign(&late.pinned)?;
        m.deploy("late", &late.tag, &late.digest, &m.author, &["log"])
            .await?;
        m.expect_blocked("late", "Verified", "RegistryTimeout")
            .await?;
    }
    m.expect_active("late").await?;

    // Revocation the tenant tries to dodge (issue 12): a spec broken before the revocation, a
    // stuck upgrade whose last good revision is revoked, and a forged ReplicaSet to roll back to.
    let tenant = Tenant::of_namespace(&m.ns).await?;
    forged_rollback(m, &trusted, &tenant, &repo).await?;
    let comeback = dodges_before_revocation(m, &trusted, &revokee_cosign, &tenant, &repo).await?;

    // Key revoked while the plugin runs: quarantined (scaled to zero).
    let revoked = variant(&format!("{repo}/revoked"))?;
    revokee_cosign.sign(&revoked.pinned)?;
    m.deploy(
        "revoked",
        &revoked.tag,
        &revoked.digest,
        &m.revokee,
        &["log"],
    )
    .await?;
    m.expect_active("revoked").await?;
    m.set_revoked(true, &trusted.public()?, &revokee_cosign.public()?)
        .await?;
    let p = m
        .expect_blocked("revoked", "Verified", "KeyRevoked")
        .await?;
    ensure_phase(&p, PluginPhase::Quarantined, "its signing key is revoked")?;
    stopped(m, "revoked").await?;

    dodges_after_revocation(m, &comeback).await?;

    // Through all of it, the signed plugin kept serving.
    m.expect_active("good").await?;

    // A tightened policy reaches what runs: a memory cap below the plugins' 32Mi stops them
    // (NoLongerAllowed) within one reconcile; restoring it brings them back.
    m.set_policy(true, &trusted.public()?, &revokee_cosign.public()?, "16Mi")
        .await?;
    let p = m.expect_blocked("good", "Ready", "NoLongerAllowed").await?;
    ensure_phase(
        &p,
        PluginPhase::Quarantined,
        "its revision exceeds the new cap",
    )?;
    stopped(m, "good").await?;
    m.set_revoked(true, &trusted.public()?, &revokee_cosign.public()?)
        .await?;
    m.expect_active("good").await?;

    // A second policy governs the namespace: a key only the first one lists is not trusted here
    // (a broad policy cannot add its keys to a namespace a narrower one also governs), and the
    // refusal names the policy that does not list it. Once that one lists the key too, it runs.
    let second = format!("{}-second", m.policy);
    let other = Matrix::keypair()?;
    let outcome = async {
        m.apply_policy(&second, json!([{"name": "other", "ed25519": other.public, "trustLevel": "Trusted"}]))
            .await?;
        m.deploy("agreed", &good.tag, &good.digest, &m.author, &["log"])
            .await?;
        let p = m
            .expect_blocked("agreed", "Verified", "BundleSignatureInvalid")
            .await?;
        let message = condition(&p, "Verified")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        let expected = format!("is not listed by PluginTrustPolicy {second}");
        ensure!(
            message.contains(&expected),
            "the refusal should say {expected:?}: {message}"
        );
        m.apply_policy(
            &second,
            json!([
                {"name": "other", "ed25519": other.public, "trustLevel": "Trusted"},
                {"name": "author", "ed25519": m.author.public, "cosign": trusted.public()?, "trustLevel": "Trusted"}
            ]),
        )
        .await?;
        m.expect_active("agreed").await
    }
    .await;
    let _ = Api::<PluginTrustPolicy>::all(m.client.clone())
        .delete(&second, &DeleteParams::default())
        .await;
    outcome
}

/// The revision `name` serves (`status.currentRevision`).
async fn current_revision(m: &Matrix, name: &str) -> Result<String> {
    let p = m.ns.api::<Plugin>().get(name).await?;
    p.status
        .and_then(|s| s.current_revision)
        .with_context(|| format!("{name} has a current revision"))
}

/// Waits until the Plugin's Deployment asks for no pods and has none.
async fn stopped(m: &Matrix, name: &str) -> Result<()> {
    wait::until(
        &format!("{name} to stop (spec.replicas, pods)"),
        airlock_e2e::WAIT,
        async || {
            let d = m.ns.api::<Deployment>().get(name).await?;
            let replicas = d.spec.and_then(|s| s.replicas).unwrap_or(-1);
            let running = d.status.and_then(|s| s.replicas).unwrap_or(0);
            Ok((replicas, running))
        },
        |stopped| *stopped == (0, 0),
    )
    .await?;
    let p = m.ns.api::<Plugin>().get(name).await?;
    let held = p.status.map(|s| s.permissions).unwrap_or_default();
    ensure!(
        held.is_empty(),
        "{name} still holds {held:?}: the host API must refuse it"
    );
    Ok(())
}

/// The attack of issue 12 on rollback: the tenant (namespace `edit`) writes a ReplicaSet with
/// the Plugin's labels, the last good revision and even a controller reference to the Plugin's
/// Deployment, whose template runs the tenant's command; then an upgrade never becomes ready.
/// The chart's admission policy `airlock-plugin-workloads` refuses the tenant's ReplicaSet (it
/// used to be accepted; its pods would also have become endpoints of the plugin's Service). The
/// same ReplicaSet written by a cluster admin (exempt from the policy) is still never rolled back
/// to: the rollback goes back to the genuine template.
async fn forged_rollback(
    m: &Matrix,
    trusted: &CosignKey,
    tenant: &Tenant,
    repo: &str,
) -> Result<()> {
    let image = variant(&format!("{repo}/forged"))?;
    trusted.sign(&image.pinned)?;
    m.deploy("forged", &image.tag, &image.digest, &m.author, &["log"])
        .await?;
    m.expect_active("forged").await?;
    let good = current_revision(m, "forged").await?;
    let uid =
        m.ns.api::<Deployment>()
            .get("forged")
            .await?
            .metadata
            .uid
            .context("Deployment uid")?;
    let labels = json!({"airlock.dev/plugin": "forged", "airlock.dev/revision": good});
    let forged: ReplicaSet = serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "forged-tenant", "labels": labels,
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment",
                                          "name": "forged", "uid": uid, "controller": true}]},
        "spec": {"replicas": 0, "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "plugin", "image": image.pinned,
                                  "command": ["/bin/sh", "-c", "echo HIJACKED: unsigned tenant code; sleep 3600"]}]}}}
    }))?;
    match tenant
        .api::<ReplicaSet>()
        .create(&PostParams::default(), &forged)
        .await
    {
        Err(kube::Error::Api(e)) => ensure!(
            e.code == 403
                && e.message.contains("airlock-plugin-workloads")
                && e.message.contains("change the Plugin instead"),
            "the tenant's ReplicaSet is refused by the admission policy: {e:?}"
        ),
        other => anyhow::bail!(
            "the tenant wrote a ReplicaSet with the plugin's labels: {:?}",
            other.map(|rs| rs.metadata.name)
        ),
    }
    m.ns.api::<ReplicaSet>()
        .create(&PostParams::default(), &forged)
        .await
        .context("the cluster admin writes the forged ReplicaSet")?;

    let broken = variant_of(
        "AIRLOCK_HELLO_BROKEN_IMAGE",
        &format!("{repo}/forged-broken"),
    )?;
    trusted.sign(&broken.pinned)?;
    m.upgrade("forged", "broken", &broken, &m.author).await?;
    let p = m.expect_blocked("forged", "Ready", "RolledBack").await?;
    ensure!(
        p.status.and_then(|s| s.current_revision).as_deref() == Some(good.as_str()),
        "rolled back to {good}"
    );
    let d = m.ns.api::<Deployment>().get("forged").await?;
    let template = serde_json::to_string(&d.spec.map(|s| s.template))?;
    ensure!(
        !template.contains("HIJACKED"),
        "the rollback applied the tenant's template: {template}"
    );
    invoke(&m.client, &m.ns.name, "forged").await?;
    m.ns.api::<Plugin>()
        .delete("forged", &DeleteParams::default())
        .await?;
    Ok(())
}

/// Before the revocation: `dodger` (signed by the revokee) has its spec broken by the tenant
/// (a wrong bundle digest: the fetch fails before any signature is looked at), and `comeback`
/// (signed by the revokee) is upgraded to a revision, signed by the author, that never becomes
/// ready, so its last good revision keeps serving. Returns `comeback`'s last good revision.
async fn dodges_before_revocation(
    m: &Matrix,
    trusted: &CosignKey,
    revokee_cosign: &CosignKey,
    tenant: &Tenant,
    repo: &str,
) -> Result<String> {
    let dodger = variant(&format!("{repo}/dodger"))?;
    revokee_cosign.sign(&dodger.pinned)?;
    m.deploy("dodger", &dodger.tag, &dodger.digest, &m.revokee, &["log"])
        .await?;
    m.expect_active("dodger").await?;
    tenant
        .api::<Plugin>()
        .patch(
            "dodger",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"bundle": {"digest": format!("sha256:{}", "0".repeat(64))}}}),
            ),
        )
        .await
        .context("the tenant breaks the spec")?;
    let p = m
        .expect_blocked("dodger", "Verified", "BundleDigestMismatch")
        .await?;
    ensure_phase(&p, PluginPhase::Degraded, "the old revision keeps serving")?;

    let comeback = variant(&format!("{repo}/comeback"))?;
    revokee_cosign.sign(&comeback.pinned)?;
    m.deploy(
        "comeback",
        &comeback.tag,
        &comeback.digest,
        &m.revokee,
        &["log"],
    )
    .await?;
    m.expect_active("comeback").await?;
    let good = current_revision(m, "comeback").await?;
    let broken = variant_of(
        "AIRLOCK_HELLO_BROKEN_IMAGE",
        &format!("{repo}/comeback-broken"),
    )?;
    trusted.sign(&broken.pinned)?;
    m.upgrade("comeback", "broken", &broken, &m.author).await?;
    wait_plugin(
        &m.ns.api::<Plugin>(),
        "comeback",
        "the upgrade rolling out",
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.current_revision.as_deref())
                .is_some_and(|r| r != good)
        },
    )
    .await?;
    Ok(good)
}

/// After the revocation: `dodger` is quarantined although its spec is broken, and `comeback`'s
/// revoked last good revision stops serving and is never rolled back to.
async fn dodges_after_revocation(m: &Matrix, comeback_good: &str) -> Result<()> {
    let p = m.expect_blocked("dodger", "Ready", "KeyRevoked").await?;
    ensure_phase(
        &p,
        PluginPhase::Quarantined,
        "its signer is revoked, its spec broken",
    )?;
    stopped(m, "dodger").await?;

    let selector = format!("airlock.dev/plugin=comeback,airlock.dev/revision={comeback_good}");
    wait::until(
        "comeback's revoked revision to have no pods",
        airlock_e2e::WAIT,
        async || {
            let sets =
                m.ns.api::<ReplicaSet>()
                    .list(&ListParams::default().labels(&selector))
                    .await?;
            Ok(sets
                .items
                .iter()
                .map(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0))
                .sum::<i32>())
        },
        |pods| *pods == 0,
    )
    .await?;
    // Past the progress deadline (20s in the e2e install): no rollback to the revoked revision.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let p = m.ns.api::<Plugin>().get("comeback").await?;
    let ready = condition(&p, "Ready").context("Ready")?;
    ensure!(ready.status == "False", "comeback: {ready:?}");
    ensure!(
        p.status
            .as_ref()
            .and_then(|s| s.current_revision.as_deref())
            != Some(comeback_good)
            || phase(&p) == Some(PluginPhase::Quarantined),
        "the revoked revision {comeback_good} serves again: {:?}",
        p.status
    );
    let d = m.ns.api::<Deployment>().get("comeback").await?;
    let pods_of_good =
        m.ns.api::<ReplicaSet>()
            .list(&ListParams::default().labels(&selector))
            .await?
            .items
            .iter()
            .map(|rs| rs.status.as_ref().map(|s| s.replicas).unwrap_or(0))
            .sum::<i32>();
    ensure!(
        pods_of_good == 0,
        "{pods_of_good} pod(s) of the revoked revision run again (Deployment {:?})",
        d.spec.map(|s| s.replicas)
    );
    Ok(())
}
