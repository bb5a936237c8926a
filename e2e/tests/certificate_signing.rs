//! Images signed with a certificate of the organisation's own PKI (issue 15, Deliver 3): the
//! real cosign CLI signs with `--certificate` and `--certificate-chain`, as a team with its own
//! CA does; a PluginTrustPolicy trusts "identity X of CA Y" (`spec.keys[].certificate`) instead
//! of one public key. The CA, its intermediate and the leaves are made here for each run.
//!
//! Attacks: a colleague's certificate from the same CA (another identity), an expired
//! certificate, and a CA of the tenant's own making that copies the trusted CA's name and the
//! trusted identity: none of them signs. Revoking the signer quarantines what it signed.

#![allow(clippy::expect_used)]

use std::path::Path;

use airlock_bundle::signing;
use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_e2e::images::{push_unique_variant, registry};
use airlock_e2e::install::images_env;
use airlock_e2e::plugins::{active, invoke, phase, refused, wait_plugin};
use airlock_e2e::sandbox::{Sandbox, in_sandbox};
use airlock_e2e::signing::cosign;
use anyhow::{Result, ensure};
use kube::api::{Api, Patch, PatchParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde_json::json;

const IDENTITY: &str = "release@acme.example";

/// A CA (root and intermediate, the way organisations run one) that issues code-signing leaves.
struct Ca {
    root_pem: String,
    intermediate_pem: String,
    intermediate: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Result<Self> {
        let ca = |cn: &str, path_len: Option<u8>| -> Result<(CertificateParams, KeyPair)> {
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::OrganizationName, name);
            params.distinguished_name.push(DnType::CommonName, cn);
            params.is_ca = IsCa::Ca(path_len.map_or(
                BasicConstraints::Unconstrained,
                BasicConstraints::Constrained,
            ));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            Ok((params, KeyPair::generate()?))
        };
        let (root_params, root_key) = ca(&format!("{name} Root CA"), None)?;
        let root = root_params.self_signed(&root_key)?;
        let root_issuer = Issuer::new(root_params, root_key);
        let (mut inter_params, inter_key) = ca(&format!("{name} Signing CA"), Some(0))?;
        inter_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let intermediate = inter_params.signed_by(&inter_key, &root_issuer)?;
        Ok(Self {
            root_pem: root.pem(),
            intermediate_pem: intermediate.pem(),
            intermediate: Issuer::new(inter_params, inter_key),
        })
    }

    /// A code-signing leaf naming `email`, valid from `days_from_now.0` to `.1` days from now,
    /// written to `dir` as `<name>.pem` with the chain `<name>-chain.pem`, and its key imported
    /// into cosign as `<name>.key` (cosign's encrypted format, empty password).
    fn issue(&self, dir: &Path, name: &str, email: &str, days_from_now: (i64, i64)) -> Result<()> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.subject_alt_names = vec![SanType::Rfc822Name(email.try_into()?)];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days_from_now.0);
        params.not_after = now + time::Duration::days(days_from_now.1);
        let leaf = params.signed_by(&key, &self.intermediate)?;
        std::fs::write(dir.join(format!("{name}.pem")), leaf.pem())?;
        std::fs::write(
            dir.join(format!("{name}-chain.pem")),
            format!("{}{}", self.intermediate_pem, self.root_pem),
        )?;
        std::fs::write(dir.join(format!("{name}.pkcs8")), key.serialize_pem())?;
        cosign(
            dir,
            &[
                "import-key-pair",
                "--key",
                &format!("{name}.pkcs8"),
                "--output-key-prefix",
                name,
            ],
            None,
        )
    }
}

/// `cosign sign` with the leaf `name` and its chain, classic format, as an organisation's CI
/// would with its own PKI (no Fulcio, no transparency log).
fn sign_with_certificate(dir: &Path, name: &str, image_by_digest: &str) -> Result<()> {
    cosign(
        dir,
        &[
            "sign",
            "--key",
            &format!("{name}.key"),
            "--certificate",
            &format!("{name}.pem"),
            "--certificate-chain",
            &format!("{name}-chain.pem"),
            "--tlog-upload=false",
            "--allow-http-registry",
            "--new-bundle-format=false",
            "-y",
            image_by_digest,
        ],
        None,
    )
}

/// A fresh variant of the hello image signed with the leaf `signer`; the Plugin `name` runs
/// it, with the hello bundle signed by `bundle_key`.
async fn deploy_signed(
    s: &Sandbox,
    work: &Path,
    name: &str,
    signer: &str,
    bundle_key: &str,
) -> Result<()> {
    let repository = format!("e2e-certificate/{name}");
    let (_, digest) = push_unique_variant(&images_env("AIRLOCK_HELLO_IMAGE")?, &repository)?;
    let image = format!("{}/{repository}@{digest}", registry());
    sign_with_certificate(work, signer, &image)?;
    s.deploy_signed_hello(work, name, &image, &digest, bundle_key)
        .await
}

/// The sandbox policy trusts the bundle key and "IDENTITY of `ca`" for images.
async fn trust(s: &Sandbox, bundle_public: &str, ca: &Ca, revoked: bool) -> Result<()> {
    Api::<airlock_crds::PluginTrustPolicy>::all(s.client.clone())
        .patch(
            &s.policy,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"keys": [
                {"name": "bundles", "ed25519": bundle_public, "trustLevel": "Untrusted"},
                {"name": "acme-ca", "certificate": {
                    "roots": ca.root_pem, "identities": [IDENTITY],
                }, "trustLevel": "Untrusted", "revoked": revoked},
            ]}})),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_image_signed_with_a_certificate_of_a_listed_identity_runs_and_no_other_does()
-> Result<()> {
    in_sandbox("certificate", &["log"], async |s: &Sandbox| {
        let work = tempfile::tempdir()?;
        let dir = work.path();
        let acme = Ca::new("Acme")?;
        acme.issue(dir, "release", IDENTITY, (-1, 30))?;
        acme.issue(dir, "colleague", "intern@acme.example", (-1, 30))?;
        acme.issue(dir, "expired", IDENTITY, (-30, -1))?;
        // The tenant's own CA, named like Acme's, issuing a leaf with the trusted identity.
        Ca::new("Acme")?.issue(dir, "impostor", IDENTITY, (-1, 30))?;
        let (bundle_private, bundle_public) = signing::generate()?;
        trust(s, &bundle_public, &acme, false).await?;
        let api: Api<Plugin> = s.ns.api();

        // Signed by the listed identity, chain carried by the signature: verified, Active,
        // answers; the status names the certificate signer.
        deploy_signed(s, dir, "signed", "release", &bundle_private).await?;
        let p = wait_plugin(&api, "signed", "Active", active).await?;
        let signer = p.status.as_ref().and_then(|st| st.signer.clone());
        ensure!(
            signer
                .as_deref()
                .is_some_and(|k| k.contains(&format!("{}/acme-ca", s.policy))),
            "signed by the certificate signer: {signer:?}"
        );
        let answer = invoke(&s.client, s.ns(), "signed").await?;
        ensure!(answer["greeting"] == "hello, airlock", "{answer}");

        // Same CA, another identity: refused, and the condition says which identity it named.
        deploy_signed(s, dir, "colleague", "colleague", &bundle_private).await?;
        let message = refused(&api, "colleague", "ImageSignatureUntrusted").await?;
        ensure!(
            message.contains("\"intern@acme.example\"") && message.contains("identities"),
            "the refusal names the identity: {message}"
        );

        // The listed identity, but expired: refused with the date.
        deploy_signed(s, dir, "expired", "expired", &bundle_private).await?;
        let message = refused(&api, "expired", "ImageSignatureUntrusted").await?;
        ensure!(message.contains("expired at"), "{message}");

        // A look-alike CA (same names) with the trusted identity: its chain names the listed
        // root but is not signed by it.
        deploy_signed(s, dir, "impostor", "impostor", &bundle_private).await?;
        let message = refused(&api, "impostor", "ImageSignatureUntrusted").await?;
        ensure!(
            message.contains("not signed by the CA it names"),
            "{message}"
        );

        // The signer revoked: what it signed is quarantined.
        trust(s, &bundle_public, &acme, true).await?;
        refused(&api, "signed", "KeyRevoked").await?;
        wait_plugin(&api, "signed", "Quarantined", |p| {
            phase(p) == Some(PluginPhase::Quarantined)
        })
        .await?;
        Ok(())
    })
    .await
}
