//! Images signed by cosign in its new bundle format (`--new-bundle-format`, the default of cosign
//! v3) are verified like the classic `.sig` signatures (issue 15, Deliver 3), with the real
//! cosign CLI against the local registry, which has no referrers API: cosign writes the
//! signature as an OCI manifest listed under the fallback tag `sha256-<hex>`.
//!
//! Attacks: an attestation of another predicate type, made by the trusted key, is not a
//! signature of the image; a bundle-format signature by a key no policy lists is untrusted.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

use airlock_bundle::signing;
use airlock_crds::Plugin;
use airlock_e2e::images::{push_unique_variant, registry};
use airlock_e2e::install::images_env;
use airlock_e2e::plugins::{active, invoke, refused, wait_plugin};
use airlock_e2e::sandbox::{Sandbox, in_sandbox};
use anyhow::{Result, ensure};
use kube::api::Api;

/// Forwards 127.0.0.1:<port> to the registry, on threads of its own (cosign runs as a blocking
/// child process meanwhile). cosign v2.6.4 speaks plain HTTP in the new bundle format only to
/// `localhost` (it ignores --allow-http-registry there). Ends with the test process.
fn loopback_registry() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let upstream = registry();
    std::thread::spawn(move || {
        for inbound in listener.incoming().flatten() {
            let Ok(outbound) = TcpStream::connect(&upstream) else {
                continue;
            };
            let pipe = |mut from: TcpStream, mut to: TcpStream| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                });
            };
            if let (Ok(i), Ok(o)) = (inbound.try_clone(), outbound.try_clone()) {
                pipe(i, outbound);
                pipe(o, inbound);
            }
        }
    });
    Ok(port)
}

/// Runs the real cosign CLI in `dir` (keys there, empty password).
fn cosign(dir: &Path, args: &[&str]) -> Result<()> {
    airlock_e2e::signing::cosign(dir, args, None)
}

/// A fresh variant of the hello image: `(repository@digest, digest, repository)`.
fn fresh_image(name: &str) -> Result<(String, String, String)> {
    let repository = format!("e2e-cosign-bundle/{name}");
    let (_, digest) = push_unique_variant(&images_env("AIRLOCK_HELLO_IMAGE")?, &repository)?;
    Ok((
        format!("{}/{repository}@{digest}", registry()),
        digest,
        repository,
    ))
}

/// Signs (or attests, with `extra` arguments) `repository@digest` in the new bundle format.
fn sign_new_format(
    dir: &Path,
    port: u16,
    verb: &str,
    key: &str,
    repository: &str,
    digest: &str,
    extra: &[&str],
) -> Result<()> {
    let via_loopback = format!("localhost:{port}/{repository}@{digest}");
    let mut args = vec![
        verb,
        "--key",
        key,
        "--tlog-upload=false",
        "--new-bundle-format",
        "-y",
    ];
    args.extend_from_slice(extra);
    args.push(&via_loopback);
    cosign(dir, &args)
}

#[tokio::test]
async fn an_image_signed_in_cosign_s_bundle_format_is_verified_and_an_attestation_is_no_signature()
-> Result<()> {
    in_sandbox("cosign-bundle", &["log"], async |s: &Sandbox| {
        let work = tempfile::tempdir()?;
        let keys = work.path();
        cosign(
            keys,
            &["generate-key-pair", "--output-key-prefix", "trusted"],
        )?;
        cosign(
            keys,
            &["generate-key-pair", "--output-key-prefix", "stranger"],
        )?;
        let (bundle_private, bundle_public) = signing::generate()?;
        let cosign_public = std::fs::read_to_string(keys.join("trusted.pub"))?;
        s.trust_release_key(&cosign_public, &bundle_public).await?;
        let port = loopback_registry()?;
        let api: Api<Plugin> = s.ns.api();

        // Signed by the trusted key in the bundle format: verified, Active, answers.
        let (signed, digest, repository) = fresh_image("signed")?;
        sign_new_format(keys, port, "sign", "trusted.key", &repository, &digest, &[])?;
        s.deploy_signed_hello(keys, "signed", &signed, &digest, &bundle_private)
            .await?;
        let p = wait_plugin(&api, "signed", "Active", active).await?;
        let signer = p.status.as_ref().and_then(|st| st.signer.clone());
        ensure!(
            signer.as_deref() == Some(&format!("{}/release", s.policy)),
            "signed by the trusted key: {signer:?}"
        );
        let answer = invoke(&s.client, s.ns(), "signed").await?;
        ensure!(answer["greeting"] == "hello, airlock", "{answer}");

        // Only an attestation of another predicate type, by the same trusted key: the image
        // is not signed (cosign verify --key would accept it as a signature).
        let (attested, digest, repository) = fresh_image("attested")?;
        std::fs::write(keys.join("predicate.json"), br#"{"built-by": "ci"}"#)?;
        sign_new_format(
            keys,
            port,
            "attest",
            "trusted.key",
            &repository,
            &digest,
            &[
                "--predicate",
                "predicate.json",
                "--type",
                "https://example.com/provenance",
            ],
        )?;
        s.deploy_signed_hello(keys, "attested", &attested, &digest, &bundle_private)
            .await?;
        refused(&api, "attested", "ImageNotSigned").await?;

        // Signed in the bundle format by a key no policy lists: untrusted.
        let (stranger, digest, repository) = fresh_image("stranger")?;
        sign_new_format(
            keys,
            port,
            "sign",
            "stranger.key",
            &repository,
            &digest,
            &[],
        )?;
        s.deploy_signed_hello(keys, "stranger", &stranger, &digest, &bundle_private)
            .await?;
        refused(&api, "stranger", "ImageSignatureUntrusted").await?;
        Ok(())
    })
    .await
}
