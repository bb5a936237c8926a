//! A registry that fails while Airlock reads an image's signatures: verification fails closed
//! (reason `RegistryUnavailable`, nothing rolled out, retried), never "unsigned", and recovers by
//! itself when the registry does.
//!
//! The attack: a registry (or a path to it) that errors on the signature tag only. Before
//! Airlock read the `.sig` tag itself, the sigstore crate logged and dropped that error, so the
//! image read as unsigned (`ImageNotSigned`, a verdict cached for the re-verify interval; with
//! an unsigned bundle under a policy allowing unsigned plugins, the plugin ran unverified).
//!
//! The faulty registry is a proxy on the node address, port [`FAULTY_PORT`] (listed as an
//! insecure registry by `e2e/helm-install.sh`), in front of the local registry: it answers 503
//! for the `.sig` manifest while told to, and passes everything else through.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use airlock_crds::Plugin;
use airlock_e2e::images::{push_unique_variant, registry};
use airlock_e2e::install::images_env;
use airlock_e2e::plugins::{condition, refused, wait_plugin};
use airlock_e2e::sandbox::{Sandbox, in_sandbox, put_bundle};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, ListParams};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The port of the faulty registry on the node address (see `e2e/helm-install.sh`).
const FAULTY_PORT: u16 = 5002;

/// The proxy: fails the `.sig` manifest while `failing`; counts the failures it answered.
struct FaultyRegistry {
    failing: Arc<AtomicBool>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyRegistry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultyRegistry {
    async fn start() -> Result<Self> {
        let node = registry().split(':').next().unwrap_or_default().to_string();
        let listener = tokio::net::TcpListener::bind((node.as_str(), FAULTY_PORT))
            .await
            .with_context(|| {
                format!("listening on {node}:{FAULTY_PORT} (another run of this test?)")
            })?;
        let failing = Arc::new(AtomicBool::new(true));
        let failed = Arc::new(AtomicUsize::new(0));
        let (f, n) = (failing.clone(), failed.clone());
        let upstream = registry();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (f, n, upstream) = (f.clone(), n.clone(), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &upstream, &f, &n).await;
                });
            }
        });
        Ok(Self {
            failing,
            failed,
            task,
        })
    }
}

/// One request per connection (the request tells the registry `Connection: close`), so every
/// request is seen here.
async fn serve(
    mut conn: tokio::net::TcpStream,
    upstream: &str,
    failing: &AtomicBool,
    failed: &AtomicUsize,
) -> Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let path = text.split_whitespace().nth(1).unwrap_or_default();
    if failing.load(Ordering::SeqCst)
        && path.contains("/manifests/sha256-")
        && path.ends_with(".sig")
    {
        failed.fetch_add(1, Ordering::SeqCst);
        conn.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await?;
        return Ok(());
    }
    // GET and HEAD only (the operator reads): the head is the whole request.
    let forwarded: String = text
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect::<Vec<_>>()
        .join("\r\n")
        .replacen("\r\n\r\n", "\r\nConnection: close\r\n\r\n", 1);
    let mut up = tokio::net::TcpStream::connect(upstream).await?;
    up.write_all(forwarded.as_bytes()).await?;
    tokio::io::copy(&mut up, &mut conn).await?;
    conn.shutdown().await?;
    Ok(())
}

#[tokio::test]
async fn a_registry_failing_on_the_signature_fails_closed_and_recovers_by_itself() -> Result<()> {
    in_sandbox("registry-faults", &["log"], async |s: &Sandbox| {
        let work = tempfile::tempdir()?;
        let dir = work.path();
        let bundle_private = s.trust_new_release_keys(dir).await?;

        let repository = "e2e-registry-faults/signed";
        let (_, digest) = push_unique_variant(&images_env("AIRLOCK_HELLO_IMAGE")?, repository)?;
        airlock_e2e::signing::sign_classic(
            dir,
            &format!("{}/{repository}@{digest}", registry()),
            None,
        )?;
        let faulty = FaultyRegistry::start().await?;
        let node = registry().split(':').next().unwrap_or_default().to_string();
        let image = format!("{node}:{FAULTY_PORT}/{repository}@{digest}");

        let bundle = airlock_e2e::signing::hello_bundle(dir, "signed", &digest)?;
        let signature = airlock_bundle::signing::sign(
            &airlock_bundle::signing::parse_private_key(&bundle_private)?,
            &airlock_bundle::digest(&bundle),
        );
        put_bundle(&s.ns, "signed-bundle", bundle, Some(signature)).await?;
        let mut plugin = s.hello("signed")?;
        plugin["spec"]["image"] = json!(image);
        plugin["spec"]["bundle"] = json!({"source": {"configMapRef": {"name": "signed-bundle"}}});
        s.apply(&plugin).await?;

        let api: Api<Plugin> = s.ns.api();
        let message = refused(&api, "signed", "RegistryUnavailable").await?;
        ensure!(
            message.contains("cosign signatures") && message.contains("retrying"),
            "the condition says what failed and that it is retried: {message}"
        );
        ensure!(
            faulty.failed.load(Ordering::SeqCst) > 0,
            "the operator never asked the faulty registry for the signature"
        );
        let deployments =
            s.ns.api::<Deployment>()
                .list(&ListParams::default())
                .await?
                .items
                .len();
        ensure!(
            deployments == 0,
            "nothing is rolled out while the signature cannot be read: {deployments} Deployments"
        );
        // Still failing a while later: retried, never taken for "unsigned".
        let asked = faulty.failed.load(Ordering::SeqCst);
        airlock_e2e::wait::until(
            "the operator asking for the signature again",
            std::time::Duration::from_secs(120),
            async || Ok(faulty.failed.load(Ordering::SeqCst)),
            |n| *n > asked,
        )
        .await?;
        let p = api.get("signed").await?;
        let verified = condition(&p, "Verified").map(|c| (c.status.clone(), c.reason.clone()));
        ensure!(
            verified == Some(("False".into(), "RegistryUnavailable".into())),
            "after a retry against the same failure: {verified:?}"
        );

        // The registry recovers: verified by the trusted key without anyone touching the Plugin.
        faulty.failing.store(false, Ordering::SeqCst);
        let p = wait_plugin(&api, "signed", "Verified=True", |p| {
            condition(p, "Verified").is_some_and(|c| c.status == "True")
        })
        .await?;
        let signer = p.status.as_ref().and_then(|st| st.signer.clone());
        ensure!(
            signer.as_deref() == Some(&format!("{}/release", s.policy)),
            "verified by the trusted key once the registry answers: {signer:?}"
        );
        Ok(())
    })
    .await
}
