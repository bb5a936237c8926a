//! Detached ed25519 signatures of bundles: the one format the operator, the shim and `airlockctl`
//! share.
//!
//! What is signed is not the raw tar.gz but the text `airlock-bundle-v1\n<digest>` where
//! `<digest>` is the bundle's `sha256:<hex>` ([`crate::digest`]). Signing the digest means
//! a verifier that already checked the digest needs nothing else; the prefix keeps an Airlock
//! bundle signature from being valid for anything else signed with the same key.
//!
//! Formats (all text, so they fit in ConfigMaps, Secrets, OCI layers and trust policies):
//! - private key: PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), what `openssl genpkey -algorithm
//!   ed25519` writes;
//! - public key: SPKI PEM (`-----BEGIN PUBLIC KEY-----`), or the bare base64 of its 32 bytes;
//! - signature: base64 of the 64 signature bytes, one line.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Domain separation: see the module docs.
const CONTEXT: &str = "airlock-bundle-v1\n";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error(
        "the private key is not an ed25519 PKCS#8 PEM key ({0}); create one with `airlockctl keygen`"
    )]
    PrivateKey(String),
    #[error(
        "the public key is neither an ed25519 SPKI PEM key nor the base64 of 32 bytes ({0}); use the .pub file `airlockctl keygen` wrote"
    )]
    PublicKey(String),
    #[error(
        "the signature is not the base64 of 64 bytes ({0}); sign the bundle again with `airlockctl sign`"
    )]
    MalformedSignature(String),
    #[error("the random number generator failed: {0}")]
    Random(String),
}

/// A fresh key pair: `(private PKCS#8 PEM, public SPKI PEM)`.
pub fn generate() -> Result<(String, String), SigningError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| SigningError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| SigningError::PrivateKey(e.to_string()))?
        .to_string();
    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| SigningError::PublicKey(e.to_string()))?;
    Ok((private, public))
}

pub fn parse_private_key(pem: &str) -> Result<SigningKey, SigningError> {
    SigningKey::from_pkcs8_pem(pem.trim()).map_err(|e| SigningError::PrivateKey(e.to_string()))
}

/// Parses an SPKI PEM public key or the bare base64 of its 32 bytes.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, SigningError> {
    let text = text.trim();
    if text.starts_with("-----BEGIN") {
        return VerifyingKey::from_public_key_pem(text)
            .map_err(|e| SigningError::PublicKey(e.to_string()));
    }
    let bytes = B64
        .decode(text)
        .map_err(|e| SigningError::PublicKey(e.to_string()))?;
    let raw: [u8; 32] = bytes
        .try_into()
        .map_err(|b: Vec<u8>| SigningError::PublicKey(format!("{} bytes, not 32", b.len())))?;
    VerifyingKey::from_bytes(&raw).map_err(|e| SigningError::PublicKey(e.to_string()))
}

/// The public key of a private key, as SPKI PEM.
pub fn public_key_pem(key: &SigningKey) -> Result<String, SigningError> {
    key.verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| SigningError::PublicKey(e.to_string()))
}

/// Signs the bundle with this digest; returns the signature text.
pub fn sign(key: &SigningKey, bundle_digest: &str) -> String {
    let sig = key.sign(message(bundle_digest).as_bytes());
    B64.encode(sig.to_bytes())
}

pub fn parse_signature(text: &str) -> Result<Signature, SigningError> {
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| SigningError::MalformedSignature(e.to_string()))?;
    let raw: [u8; 64] = bytes.try_into().map_err(|b: Vec<u8>| {
        SigningError::MalformedSignature(format!("{} bytes, not 64", b.len()))
    })?;
    Ok(Signature::from_bytes(&raw))
}

/// Does `signature` sign the bundle with this digest under `key`? Strict verification: no
/// malleable or small-order-key signatures.
pub fn verifies(key: &VerifyingKey, bundle_digest: &str, signature: &Signature) -> bool {
    key.verify_strict(message(bundle_digest).as_bytes(), signature)
        .is_ok()
}

/// The first of `keys` (name, key) that signed the bundle, if any.
pub fn signer<'a, N>(
    keys: &'a [(N, VerifyingKey)],
    bundle_digest: &str,
    signature: &Signature,
) -> Option<&'a N> {
    keys.iter()
        .find(|(_, k)| verifies(k, bundle_digest, signature))
        .map(|(n, _)| n)
}

fn message(bundle_digest: &str) -> String {
    format!("{CONTEXT}{bundle_digest}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    fn pair() -> (SigningKey, VerifyingKey) {
        let (private, public) = generate().expect("keygen");
        (
            parse_private_key(&private).expect("private"),
            parse_public_key(&public).expect("public"),
        )
    }

    #[test]
    fn a_signature_verifies_under_its_key_only() {
        let (sk, vk) = pair();
        let (_, other) = pair();
        let sig = parse_signature(&sign(&sk, DIGEST)).expect("parse");
        assert!(verifies(&vk, DIGEST, &sig));
        assert!(!verifies(&other, DIGEST, &sig));
        let keys = vec![("other", other), ("mine", vk)];
        assert_eq!(signer(&keys, DIGEST, &sig), Some(&"mine"));
    }

    #[test]
    fn a_signature_does_not_cover_another_bundle() {
        let (sk, vk) = pair();
        let sig = parse_signature(&sign(&sk, DIGEST)).expect("parse");
        let other = DIGEST.replace("01", "02");
        assert!(!verifies(&vk, &other, &sig));
    }

    #[test]
    fn the_public_key_is_accepted_as_pem_or_bare_base64() {
        let (sk, vk) = pair();
        let pem = public_key_pem(&sk).expect("pem");
        assert_eq!(parse_public_key(&pem).expect("pem"), vk);
        let bare = B64.encode(vk.to_bytes());
        assert_eq!(parse_public_key(&bare).expect("bare"), vk);
    }

    #[test]
    fn malformed_inputs_are_errors_not_panics() {
        assert!(matches!(
            parse_signature("not base64!"),
            Err(SigningError::MalformedSignature(_))
        ));
        assert!(matches!(
            parse_signature(&B64.encode([1u8; 10])),
            Err(SigningError::MalformedSignature(_))
        ));
        assert!(matches!(
            parse_public_key("AAAA"),
            Err(SigningError::PublicKey(_))
        ));
        assert!(matches!(
            parse_private_key("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"),
            Err(SigningError::PrivateKey(_))
        ));
    }

    #[test]
    fn openssl_style_keys_are_read() {
        // `openssl genpkey -algorithm ed25519` output (RFC 8410 test key).
        let pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let sk = parse_private_key(pem).expect("openssl key");
        let sig = parse_signature(&sign(&sk, DIGEST)).expect("sig");
        assert!(verifies(&sk.verifying_key(), DIGEST, &sig));
    }
}
