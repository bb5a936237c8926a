//! Signature and key formats: Airlock's own ed25519 bundle signatures
//! (`airlock_bundle::signing`) and the operator's cosign readers (`cosign_bundle::verify_bundle`,
//! `cosign_classic::verify_signature`, `cosign_certificate::{pem_certificates,
//! bundle_certificates, signing_key}`), fed what a registry or a policy could hold.
//!
//! Input: a selector byte, then the case's bytes; text parts are separated by NUL.
#![no_main]

use airlock_operator::cosign_bundle::verify_bundle;
use airlock_operator::cosign_certificate::{
    CertificateTrust, bundle_certificates, pem_certificates, signing_key,
};
use airlock_operator::cosign_classic::{ClassicSignature, verify_signature};
use libfuzzer_sys::fuzz_target;

const BUNDLE_KEY: &str = include_str!("../../operator/src/testdata/cosign_bundle/cosign.pub");
const BUNDLE_DIGEST: &str =
    include_str!("../../operator/src/testdata/cosign_bundle/image-digest.txt");
const CLASSIC_KEY: &str = include_str!("../../operator/src/testdata/cosign_classic/cosign.pub");
const CLASSIC_DIGEST: &str =
    include_str!("../../operator/src/testdata/cosign_classic/image-digest.txt");
const ROOT: &str = include_str!("../../operator/src/testdata/cosign_certificate/root.pem");
/// 2027-06-01, inside the fixture certificates' validity (as the operator's tests use).
const NOW_SECS: u64 = 1_811_808_000;

fn parts(data: &[u8]) -> Vec<&str> {
    data.split(|&b| b == 0)
        .map(|p| std::str::from_utf8(p).unwrap_or(""))
        .collect()
}

fn part<'a>(parts: &[&'a str], i: usize) -> &'a str {
    parts.get(i).copied().unwrap_or("")
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 6 {
        // A sigstore bundle (the new format) under the fixture key, or under a key from the input.
        0 => {
            let _ = verify_bundle(rest, BUNDLE_DIGEST.trim(), BUNDLE_KEY);
        }
        1 => {
            let p = parts(rest);
            let key = part(&p, 0);
            let digest = part(&p, 1);
            let bundle = p.get(2..).map(|r| r.join("\0")).unwrap_or_default();
            let _ = verify_bundle(bundle.as_bytes(), digest, key);
        }
        // A classic `.sig` signature: payload NUL signature [NUL certificate [NUL chain]].
        2 => {
            let mut it = rest.splitn(4, |&b| b == 0);
            let payload = it.next().unwrap_or_default().to_vec();
            let text = |b: Option<&[u8]>| b.map(|b| String::from_utf8_lossy(b).into_owned());
            let signature = text(it.next()).unwrap_or_default();
            let sig = ClassicSignature {
                payload,
                signature,
                certificate: text(it.next()),
                chain: text(it.next()),
            };
            let _ = verify_signature(&sig, CLASSIC_DIGEST.trim(), CLASSIC_KEY);
        }
        // Certificates in PEM (policy fields, annotations) and in a bundle's material.
        3 => {
            if let Ok(text) = std::str::from_utf8(rest)
                && let Ok(certs) = pem_certificates(text)
            {
                assert!(certs.len() <= airlock_operator::cosign_certificate::MAX_CERTIFICATES);
            }
            let _ = bundle_certificates(rest);
        }
        // A leaf certificate (DER) and its presented chain (DER, length-prefixed) against the
        // fixture root: path building, validity, EKU, SAN.
        4 => {
            if rest.len() < 2 {
                return;
            }
            let n = usize::from(u16::from_le_bytes([rest[0], rest[1]]));
            let rest = &rest[2..];
            let (leaf, chain) = rest.split_at(n.min(rest.len()));
            let presented: Vec<Vec<u8>> = if chain.is_empty() {
                Vec::new()
            } else {
                vec![chain.to_vec()]
            };
            let Ok(roots) = pem_certificates(ROOT) else {
                return;
            };
            let trust = CertificateTrust {
                roots,
                intermediates: Vec::new(),
                identities: vec!["release@example.com".to_string()],
            };
            let now = rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(
                NOW_SECS,
            ));
            let _ = signing_key(&trust, leaf, &presented, now);
        }
        // Airlock's ed25519 formats: public key NUL signature NUL digest [NUL private key].
        _ => {
            use airlock_bundle::signing;
            let p = parts(rest);
            let key = signing::parse_public_key(part(&p, 0));
            let sig = signing::parse_signature(part(&p, 1));
            if let (Ok(key), Ok(sig)) = (&key, &sig) {
                let _ = signing::verifies(key, part(&p, 2), sig);
                let keys = [("k", *key)];
                let _ = signing::signer(&keys, part(&p, 2), sig);
            }
            if let Ok(private) = signing::parse_private_key(part(&p, 3)) {
                // A key parsed from its text signs what its public half verifies.
                let digest = part(&p, 2);
                let sig = signing::sign(&private, digest);
                let public = signing::public_key_pem(&private).expect("public key PEM");
                let public = signing::parse_public_key(&public).expect("own public key");
                let sig = signing::parse_signature(&sig).expect("own signature");
                assert!(signing::verifies(&public, digest, &sig));
            }
        }
    }
});
