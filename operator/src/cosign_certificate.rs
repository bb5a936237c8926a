//! Image signatures made with a certificate of an organisation's own PKI (pure), offline: no
//! Fulcio, no Rekor, no CT log.
//!
//! `cosign sign --key k --certificate leaf.pem --certificate-chain chain.pem` signs as with a
//! plain key and stores the key's certificate next to the signature: in the classic format as
//! the layer annotations [`CERTIFICATE_ANNOTATION`] (the leaf, PEM) and [`CHAIN_ANNOTATION`]
//! (the chain file, PEM); in the sigstore bundle format as
//! `verificationMaterial.certificate.rawBytes` (the leaf alone, DER) or, in older bundles,
//! `verificationMaterial.x509CertificateChain`. A policy then says "signed by identity X of
//! CA Y" ([`CertificateTrust`]) instead of naming a public key.
//!
//! [`signing_key`] decides whether a signature's certificate speaks for such a signer and, if
//! so, gives the key its signature is checked with. Everything the signature carries is
//! untrusted input: its chain certificates are only candidates for the path to a root the
//! policy lists; the identity is read from the leaf only after the path verified.
//!
//! Differences from `cosign verify --ca-roots … --certificate-identity …`, each stricter:
//! the whole chain must be valid at verification time (classic cosign checks the chain at the
//! leaf's NotBefore), an identity is compared exactly (no regular expressions), and the leaf
//! must carry the code-signing extended key usage. An expired certificate thus stops new
//! rollouts of what it signed; running revisions are not quarantined by it (revocation does
//! that).

use airlock_crds::trust_policy::CertificateSigner;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, UnixTime};
use sigstore::crypto::CosignVerificationKey;
use webpki::{EndEntityCert, KeyUsage};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The classic signature layer annotation holding the signing certificate (PEM).
pub const CERTIFICATE_ANNOTATION: &str = "dev.sigstore.cosign/certificate";
/// The classic signature layer annotation holding the certificate chain (PEM, leaf excluded).
pub const CHAIN_ANNOTATION: &str = "dev.sigstore.cosign/chain";
/// Certificates one signature may present (leaf and chain) or one policy field may hold: a
/// real chain has two or three; more only costs path-building time.
pub const MAX_CERTIFICATES: usize = 8;
/// One certificate as DER; an X.509 code-signing certificate is 1–2 KiB.
pub const MAX_CERTIFICATE_BYTES: usize = 16 * 1024;

/// id-kp-codeSigning (1.3.6.1.5.5.7.3.3), DER content octets.
const EKU_CODE_SIGNING: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x03];

/// A signer as a policy names it: roots and intermediates as DER, identities as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertificateTrust {
    pub roots: Vec<Vec<u8>>,
    pub intermediates: Vec<Vec<u8>>,
    pub identities: Vec<String>,
}

/// Why a signature's certificate does not speak for a trusted signer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertificateRefusal {
    #[error("the signature carries no certificate")]
    NoCertificate,
    #[error("the signature's certificates cannot be read: {0}")]
    Unreadable(String),
    #[error("the signature carries {count} certificates, over the limit of {MAX_CERTIFICATES}")]
    TooMany { count: usize },
    #[error("the policy's roots cannot be used: {0}")]
    Roots(String),
    #[error("the signing certificate is not valid for code signing under a listed root: {0}")]
    Chain(String),
    #[error("the signing certificate has no code-signing extended key usage")]
    NotCodeSigning,
    #[error("the signing certificate names {found}, none of the listed identities")]
    Identity { found: String },
    #[error("the signing certificate's public key cannot verify signatures: {0}")]
    KeyUnusable(String),
}

/// The certificates of a PEM text, as DER, at most [`MAX_CERTIFICATES`]; sections of other
/// kinds are ignored. For the policy's fields and the classic chain annotation.
pub fn pem_certificates(text: &str) -> Result<Vec<Vec<u8>>, CertificateRefusal> {
    let mut out = Vec::new();
    for certificate in CertificateDer::pem_slice_iter(text.as_bytes()) {
        let certificate =
            certificate.map_err(|e| CertificateRefusal::Unreadable(format!("bad PEM: {e}")))?;
        if out.len() == MAX_CERTIFICATES {
            return Err(CertificateRefusal::TooMany {
                count: MAX_CERTIFICATES + 1,
            });
        }
        out.push(certificate.to_vec());
    }
    Ok(out)
}

/// A policy's `certificate` entry, read: at least one root that can anchor a path, the
/// intermediates, the identities sorted (their order means nothing). The error says what to fix.
pub fn trust_of(spec: &CertificateSigner) -> Result<CertificateTrust, String> {
    let roots = pem_certificates(&spec.roots).map_err(|e| format!("roots: {e}"))?;
    if roots.is_empty() {
        return Err(
            "roots: no certificate; paste the root CA certificate(s) in PEM (-----BEGIN CERTIFICATE-----)".into(),
        );
    }
    for root in &roots {
        webpki::anchor_from_trusted_cert(&CertificateDer::from(root.as_slice())).map_err(|e| {
            format!(
                "roots: a certificate cannot be read ({e}); paste the root CA certificate in PEM"
            )
        })?;
    }
    let intermediates = match &spec.intermediates {
        Some(text) => pem_certificates(text).map_err(|e| format!("intermediates: {e}"))?,
        None => Vec::new(),
    };
    let mut identities = spec.identities.clone();
    identities.sort();
    identities.dedup();
    if identities.is_empty() {
        return Err(
            "identities: list the email, URI or DNS name the signing certificate names".into(),
        );
    }
    Ok(CertificateTrust {
        roots,
        intermediates,
        identities,
    })
}

/// The public key of `leaf` (DER) if the leaf speaks for `trust` at `now`: it chains to one of
/// the roots through the policy's intermediates and the `presented` chain, every certificate on
/// the path is valid at `now` and, where it restricts its extended key usage, allows code
/// signing; the leaf itself is not a CA, is for code signing, and names one of the identities
/// in its Subject Alternative Name.
pub fn signing_key(
    trust: &CertificateTrust,
    leaf: &[u8],
    presented: &[Vec<u8>],
    now: UnixTime,
) -> Result<CosignVerificationKey, CertificateRefusal> {
    if presented.len() + 1 > MAX_CERTIFICATES {
        return Err(CertificateRefusal::TooMany {
            count: presented.len() + 1,
        });
    }
    if std::iter::once(leaf)
        .chain(presented.iter().map(Vec::as_slice))
        .any(|c| c.len() > MAX_CERTIFICATE_BYTES)
    {
        return Err(CertificateRefusal::Unreadable(format!(
            "a certificate is over {MAX_CERTIFICATE_BYTES} bytes"
        )));
    }
    let roots: Vec<CertificateDer<'_>> = trust
        .roots
        .iter()
        .map(|r| CertificateDer::from(r.as_slice()))
        .collect();
    let anchors = roots
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CertificateRefusal::Roots(e.to_string()))?;
    let intermediates: Vec<CertificateDer<'_>> = trust
        .intermediates
        .iter()
        .chain(presented)
        .map(|c| CertificateDer::from(c.as_slice()))
        .collect();
    let leaf_der = CertificateDer::from(leaf);
    let end_entity = EndEntityCert::try_from(&leaf_der)
        .map_err(|e| CertificateRefusal::Unreadable(e.to_string()))?;
    // `required_if_present` on every certificate of the path: a CA that restricts its usage
    // must allow code signing; the leaf's own EKU is required below.
    end_entity
        .verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            &intermediates,
            now,
            KeyUsage::required_if_present(EKU_CODE_SIGNING),
            None,
            None,
        )
        .map_err(|e| CertificateRefusal::Chain(path_problem(&e)))?;

    let (_, parsed) = X509Certificate::from_der(leaf)
        .map_err(|e| CertificateRefusal::Unreadable(e.to_string()))?;
    let code_signing = parsed
        .extended_key_usage()
        .ok()
        .flatten()
        .is_some_and(|eku| eku.value.code_signing);
    if !code_signing {
        return Err(CertificateRefusal::NotCodeSigning);
    }
    let names = identities(&parsed);
    if !names.iter().any(|n| trust.identities.contains(n)) {
        return Err(CertificateRefusal::Identity {
            found: if names.is_empty() {
                "no email, URI or DNS name".into()
            } else {
                names
                    .iter()
                    .take(3)
                    .map(|n| crate::cosign_bundle::shown(n))
                    .collect::<Vec<_>>()
                    .join(", ")
            },
        });
    }
    CosignVerificationKey::try_from_der(parsed.public_key().raw)
        .map_err(|e| CertificateRefusal::KeyUnusable(e.to_string()))
}

/// What a path validation error means for the one who signed, in words.
fn path_problem(error: &webpki::Error) -> String {
    let at = |t: &UnixTime| {
        i64::try_from(t.as_secs())
            .ok()
            .and_then(|s| k8s_openapi::jiff::Timestamp::from_second(s).ok())
            .map_or_else(|| "?".to_string(), |t| t.to_string())
    };
    match error {
        webpki::Error::CertExpired { not_after, .. } => {
            format!("a certificate on the path expired at {}", at(not_after))
        }
        webpki::Error::CertNotValidYet { not_before, .. } => {
            format!("a certificate on the path is valid only from {}", at(not_before))
        }
        webpki::Error::UnknownIssuer => "no path to a listed root (if the signature does not carry the intermediate CA certificates, list them in spec.keys[].certificate.intermediates)".into(),
        webpki::Error::RequiredEkuNotFoundContext(_) => {
            "a certificate on the path does not allow code signing (extended key usage)".into()
        }
        webpki::Error::InvalidSignatureForPublicKey => "a certificate on the path is not signed by the CA it names (a look-alike CA with the same name as a listed one?)".into(),
        webpki::Error::CaUsedAsEndEntity => "the signing certificate is a CA certificate".into(),
        webpki::Error::UnsupportedSignatureAlgorithmContext(_)
        | webpki::Error::UnsupportedSignatureAlgorithmForPublicKeyContext(_) => {
            "a certificate on the path is signed with an algorithm Airlock does not verify (ECDSA P-256/P-384, Ed25519 and RSA 2048–8192 are supported)".into()
        }
        // Other variants may carry bytes of the certificates (written by whoever can push a
        // signature): only the variant's name is shown.
        other => {
            let debug = format!("{other:?}");
            let name: String = debug
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .take(60)
                .collect();
            format!("the path is invalid ({name})")
        }
    }
}

/// What identifies a root as a trust anchor: its subject and public key (what path validation
/// compares), not its DER: the same CA re-issued with another validity or serial is the same
/// anchor, for listing and for revocation. Hex of sha256; unreadable DER falls back to the DER's
/// own hash (such a root anchors nothing anyway).
pub fn anchor_id(root: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    match X509Certificate::from_der(root) {
        Ok((_, certificate)) => {
            hash.update(b"subject:");
            hash.update(certificate.subject().as_raw());
            hash.update(b"spki:");
            hash.update(certificate.public_key().raw);
        }
        Err(_) => hash.update(root),
    }
    hex::encode(hash.finalize())
}

/// The email addresses, URIs and DNS names of a certificate's Subject Alternative Name.
fn identities(certificate: &X509Certificate<'_>) -> Vec<String> {
    let Ok(Some(san)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::RFC822Name(n) | GeneralName::URI(n) | GeneralName::DNSName(n) => {
                Some((*n).to_string())
            }
            _ => None,
        })
        .collect()
}

/// The certificates of a sigstore bundle's verification material as DER, leaf first: empty
/// when it holds a public key hint instead (a key-signed bundle). Unreadable material is
/// "no certificate": the key check that follows fails on its own.
pub fn bundle_certificates(bundle_json: &[u8]) -> Vec<Vec<u8>> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Bundle {
        verification_material: Option<Material>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Material {
        certificate: Option<Raw>,
        x509_certificate_chain: Option<Chain>,
    }
    #[derive(serde::Deserialize)]
    struct Chain {
        #[serde(default)]
        certificates: Vec<Raw>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Raw {
        raw_bytes: String,
    }
    if bundle_json.len() > crate::cosign_bundle::MAX_BUNDLE_BYTES {
        return Vec::new();
    }
    let Some(material) = serde_json::from_slice::<Bundle>(bundle_json)
        .ok()
        .and_then(|b| b.verification_material)
    else {
        return Vec::new();
    };
    let raws = match (material.certificate, material.x509_certificate_chain) {
        (Some(leaf), _) => vec![leaf],
        (None, Some(chain)) => chain.certificates,
        (None, None) => Vec::new(),
    };
    raws.iter()
        .take(MAX_CERTIFICATES + 1)
        .filter_map(|r| crate::cosign_bundle::decode_base64(&r.raw_bytes))
        .collect()
}

#[cfg(test)]
pub(crate) mod fixtures {
    pub const MANIFEST: &[u8] = include_bytes!("testdata/cosign_certificate/sig.manifest.json");
    pub const PAYLOAD: &[u8] = include_bytes!("testdata/cosign_certificate/payload.json");
    pub const DIGEST: &str = include_str!("testdata/cosign_certificate/image-digest.txt");
    pub const BUNDLE: &[u8] = include_bytes!("testdata/cosign_certificate/bundle.json");
    pub const BUNDLE_DIGEST: &str =
        include_str!("testdata/cosign_certificate/bundle-image-digest.txt");
    pub const ROOT: &str = include_str!("testdata/cosign_certificate/root.pem");
    pub const INTERMEDIATE: &str = include_str!("testdata/cosign_certificate/inter.pem");
    pub const LEAF: &str = include_str!("testdata/cosign_certificate/leaf.pem");
    pub const IDENTITY: &str = "release@example.com";

    /// The one signature in [`MANIFEST`], with its certificate and chain.
    pub fn classic_signature() -> crate::cosign_classic::ClassicSignature {
        let manifest: serde_json::Value = serde_json::from_slice(MANIFEST).unwrap();
        let annotation = |name: &str| {
            manifest["layers"][0]["annotations"][name]
                .as_str()
                .map(str::to_string)
        };
        crate::cosign_classic::ClassicSignature {
            payload: PAYLOAD.to_vec(),
            signature: annotation(crate::cosign_classic::SIGNATURE_ANNOTATION).unwrap(),
            certificate: annotation(super::CERTIFICATE_ANNOTATION),
            chain: annotation(super::CHAIN_ANNOTATION),
        }
    }

    /// 2027-06-01: inside the fixture certificates' validity, whatever today is.
    pub fn while_valid() -> rustls_pki_types::UnixTime {
        rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_811_808_000))
    }

    /// The fixture signer: the fixture root, `identities`, the intermediate if `with_intermediate`.
    pub fn trust(identities: &[&str], with_intermediate: bool) -> super::CertificateTrust {
        super::CertificateTrust {
            roots: super::pem_certificates(ROOT).unwrap(),
            intermediates: if with_intermediate {
                super::pem_certificates(INTERMEDIATE).unwrap()
            } else {
                Vec::new()
            },
            identities: identities.iter().map(|s| s.to_string()).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        SanType,
    };

    use super::fixtures::*;
    use super::*;

    fn der(pem: &str) -> Vec<u8> {
        pem_certificates(pem).unwrap().remove(0)
    }

    fn at(year: u64) -> UnixTime {
        // Close enough to 1 January of `year` for validity checks a decade wide.
        UnixTime::since_unix_epoch(Duration::from_secs((year - 1970) * 31_556_952))
    }

    #[test]
    fn cosign_s_certificate_and_chain_speak_for_the_listed_identity() {
        let leaf = der(LEAF);
        let chain = pem_certificates(INTERMEDIATE).unwrap();
        // The chain as the signature carries it, the intermediate from the policy, or both.
        assert!(signing_key(&trust(&[IDENTITY], false), &leaf, &chain, while_valid()).is_ok());
        assert!(signing_key(&trust(&[IDENTITY], true), &leaf, &[], while_valid()).is_ok());
        // The URI of the SAN is an identity too; the subject's CN is not.
        let uri = "https://ci.example.com/release";
        assert!(signing_key(&trust(&[uri], true), &leaf, &[], while_valid()).is_ok());
        assert!(matches!(
            signing_key(&trust(&["release"], true), &leaf, &[], while_valid()),
            Err(CertificateRefusal::Identity { .. })
        ));
    }

    #[test]
    fn without_a_path_to_a_listed_root_or_outside_validity_nothing_speaks() {
        let leaf = der(LEAF);
        let chain = pem_certificates(INTERMEDIATE).unwrap();
        // No intermediate anywhere: no path.
        assert!(matches!(
            signing_key(&trust(&[IDENTITY], false), &leaf, &[], while_valid()),
            Err(CertificateRefusal::Chain(_))
        ));
        // Before and after the certificates' validity.
        for year in [2025, 2037] {
            assert!(matches!(
                signing_key(&trust(&[IDENTITY], true), &leaf, &chain, at(year)),
                Err(CertificateRefusal::Chain(_))
            ));
        }
        // A policy that lists only another CA.
        let other = Pki::new("Other Root");
        let stranger = CertificateTrust {
            roots: vec![other.root_der.clone()],
            intermediates: Vec::new(),
            identities: vec![IDENTITY.into()],
        };
        assert!(matches!(
            signing_key(&stranger, &leaf, &chain, while_valid()),
            Err(CertificateRefusal::Chain(_))
        ));
    }

    /// A root CA and the leaves the tests need, made with rcgen at test time.
    struct Pki {
        issuer: Issuer<'static, KeyPair>,
        root_der: Vec<u8>,
    }

    impl Pki {
        fn new(name: &str) -> Self {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let root = params.self_signed(&key).unwrap();
            Self {
                root_der: root.der().to_vec(),
                issuer: Issuer::new(params, key),
            }
        }

        fn trust(&self, identity: &str) -> CertificateTrust {
            CertificateTrust {
                roots: vec![self.root_der.clone()],
                intermediates: Vec::new(),
                identities: vec![identity.into()],
            }
        }

        /// A leaf naming `email`, with these extended key usages, a CA if `ca`.
        fn leaf(&self, email: &str, usages: Vec<ExtendedKeyUsagePurpose>, ca: bool) -> Vec<u8> {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.subject_alt_names = vec![SanType::Rfc822Name(email.try_into().unwrap())];
            params.extended_key_usages = usages;
            if ca {
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            }
            params.signed_by(&key, &self.issuer).unwrap().der().to_vec()
        }
    }

    fn now() -> UnixTime {
        UnixTime::now()
    }

    #[test]
    fn the_leaf_must_be_for_code_signing_and_no_ca() {
        let pki = Pki::new("Acme Root");
        let trust = pki.trust("dev@acme.test");
        let good = pki.leaf(
            "dev@acme.test",
            vec![ExtendedKeyUsagePurpose::CodeSigning],
            false,
        );
        assert!(signing_key(&trust, &good, &[], now()).is_ok());
        let no_eku = pki.leaf("dev@acme.test", vec![], false);
        assert_eq!(
            signing_key(&trust, &no_eku, &[], now()).err(),
            Some(CertificateRefusal::NotCodeSigning)
        );
        let server = pki.leaf(
            "dev@acme.test",
            vec![ExtendedKeyUsagePurpose::ServerAuth],
            false,
        );
        assert!(matches!(
            signing_key(&trust, &server, &[], now()),
            Err(CertificateRefusal::Chain(_))
        ));
        let ca = pki.leaf(
            "dev@acme.test",
            vec![ExtendedKeyUsagePurpose::CodeSigning],
            true,
        );
        assert!(matches!(
            signing_key(&trust, &ca, &[], now()),
            Err(CertificateRefusal::Chain(_))
        ));
    }

    #[test]
    fn a_leaf_of_an_intermediate_chains_through_the_presented_chain() {
        let root = Pki::new("Acme Root");
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Acme Signing CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::CodeSigning];
        let intermediate_der = params.signed_by(&key, &root.issuer).unwrap().der().to_vec();
        let intermediate = Pki {
            issuer: Issuer::new(params, key),
            root_der: intermediate_der.clone(),
        };
        let leaf = intermediate.leaf(
            "dev@acme.test",
            vec![ExtendedKeyUsagePurpose::CodeSigning],
            false,
        );
        let trust = root.trust("dev@acme.test");
        signing_key(
            &trust,
            &leaf,
            std::slice::from_ref(&intermediate_der),
            now(),
        )
        .unwrap();
        signing_key(
            &trust,
            &leaf,
            &[intermediate_der, root.root_der.clone()],
            now(),
        )
        .unwrap();
    }

    #[test]
    fn an_identity_is_compared_exactly() {
        let pki = Pki::new("Acme Root");
        let code = vec![ExtendedKeyUsagePurpose::CodeSigning];
        for (listed, in_certificate) in [
            ("dev@acme.test", "DEV@acme.test"),
            ("dev@acme.test", "dev@acme.test.evil"),
            ("dev@acme.test", "evil-dev@acme.test"),
        ] {
            let leaf = pki.leaf(in_certificate, code.clone(), false);
            assert!(
                matches!(
                    signing_key(&pki.trust(listed), &leaf, &[], now()),
                    Err(CertificateRefusal::Identity { .. })
                ),
                "{in_certificate} passed for {listed}"
            );
        }
    }

    #[test]
    fn a_leaf_of_another_ca_does_not_pass_with_the_trusted_root_s_name() {
        // A tenant's own CA named like the trusted one issues a leaf with the trusted identity.
        let trusted = Pki::new("Acme Root");
        let impostor = Pki::new("Acme Root");
        let leaf = impostor.leaf(
            "dev@acme.test",
            vec![ExtendedKeyUsagePurpose::CodeSigning],
            false,
        );
        assert_eq!(
            signing_key(
                &trusted.trust("dev@acme.test"),
                &leaf,
                std::slice::from_ref(&impostor.root_der),
                now()
            )
            .err()
            .map(|e| e.to_string()),
            Some("the signing certificate is not valid for code signing under a listed root: a certificate on the path is not signed by the CA it names (a look-alike CA with the same name as a listed one?)".into())
        );
    }

    #[test]
    fn a_root_is_known_by_subject_and_key_not_by_its_bytes() {
        let pki = Pki::new("Acme Root");
        // The same subject and key, re-issued (another serial and validity).
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Acme Root");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let reissued = params.self_signed(pki.issuer.key()).unwrap().der().to_vec();
        assert_ne!(reissued, pki.root_der);
        assert_eq!(anchor_id(&reissued), anchor_id(&pki.root_der));
        assert_ne!(
            anchor_id(&Pki::new("Acme Root").root_der),
            anchor_id(&pki.root_der)
        );
    }

    #[test]
    fn bad_input_is_named_and_never_panics() {
        let trust = trust(&[IDENTITY], true);
        for leaf in [&b""[..], b"not a certificate", &[0x30, 0x82, 0xff, 0xff]] {
            assert!(signing_key(&trust, leaf, &[], while_valid()).is_err());
        }
        let many = vec![der(INTERMEDIATE); MAX_CERTIFICATES];
        assert_eq!(
            signing_key(&trust, &der(LEAF), &many, while_valid()).err(),
            Some(CertificateRefusal::TooMany {
                count: MAX_CERTIFICATES + 1
            })
        );
        assert!(matches!(
            signing_key(
                &trust,
                &vec![0x30; MAX_CERTIFICATE_BYTES + 1],
                &[],
                while_valid()
            ),
            Err(CertificateRefusal::Unreadable(_))
        ));
        let bad_roots = CertificateTrust {
            roots: vec![b"junk".to_vec()],
            ..trust.clone()
        };
        assert!(matches!(
            signing_key(&bad_roots, &der(LEAF), &[], while_valid()),
            Err(CertificateRefusal::Roots(_))
        ));
        assert!(
            pem_certificates(&ROOT.repeat(MAX_CERTIFICATES + 1)).is_err(),
            "more than {MAX_CERTIFICATES} certificates in one field"
        );
        assert_eq!(
            pem_certificates("no pem here").unwrap(),
            Vec::<Vec<u8>>::new()
        );
    }

    #[test]
    fn a_bundle_gives_its_leaf_and_a_key_signed_bundle_none() {
        let certificates = bundle_certificates(BUNDLE);
        assert_eq!(certificates, vec![der(LEAF)]);
        assert!(bundle_certificates(crate::cosign_bundle::fixtures::SIGN).is_empty());
        assert!(bundle_certificates(b"{").is_empty());
    }
}
