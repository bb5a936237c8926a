//! Key-signed cosign signatures in cosign's classic format (`cosign sign --key`, cosign v2's
//! default; v3 with `--new-bundle-format=false`), offline: no Rekor, no Fulcio.
//!
//! cosign stores them as an image manifest under the tag `sha256-<hex of the image digest>.sig`
//! in the image's repository: one layer per signature, each layer a "simple signing" JSON payload
//! naming the image digest, its signature (base64, over the payload bytes) in the layer's
//! annotation `dev.cosignproject.cosign/signature`.
//!
//! [`find_signatures`] (IO) reads them with bounded, fail-closed registry reads: only a clean
//! "no such tag" means "no signatures" (the sigstore crate's client logs and drops every error
//! on this tag, so a registry failing on it reads as "unsigned"); [`verify_signature`] (pure)
//! says whether one of them is a signature of the image by a key.

use airlock_bundle::oci::{BoundedError, BoundedReader};
use oci_client::Reference;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor};
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use sigstore::crypto::{CosignVerificationKey, Signature};

use crate::cosign_bundle::{
    FetchProblem, Limits, bounded_error, decode_base64, fetch_layer, image_hex, is_not_found,
    shown, within,
};

/// The media type of a classic signature layer.
pub const SIMPLE_SIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The layer annotation that holds the signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// `critical.type` of a signed payload that signs an image.
pub const SIGNATURE_TYPE: &str = "cosign container image signature";
/// Docker's manifest type: cosign before v2 wrote the `.sig` manifest in it.
const DOCKER_MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// One signature as read from the registry, unverified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClassicSignature {
    /// The layer's bytes: what was signed.
    pub payload: Vec<u8>,
    /// The annotation's value: base64 of the signature.
    pub signature: String,
    /// The signing certificate (PEM) of a certificate-signed signature
    /// ([`crate::cosign_certificate::CERTIFICATE_ANNOTATION`]), untrusted until its path is.
    pub certificate: Option<String>,
    /// Its chain (PEM) ([`crate::cosign_certificate::CHAIN_ANNOTATION`]): path candidates only.
    pub chain: Option<String>,
}

/// Why a classic signature is not a signature of the image by the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureRefusal {
    #[error("the trusted key is unusable: {0}")]
    KeyUnusable(String),
    #[error("`{0}` is not an image digest (sha256:<64 lowercase hex digits>)")]
    BadImageDigest(String),
    #[error("the signature is not valid base64")]
    Base64,
    #[error("the signature does not verify with the trusted key")]
    SignatureInvalid,
    #[error("the signed payload is not cosign's simple signing JSON: {0}")]
    NotAPayload(String),
    #[error("the signed payload's type is {0}, not {SIGNATURE_TYPE:?}")]
    PayloadType(String),
    #[error("the signed payload is about {found}, not the image {expected}")]
    SubjectMismatch { expected: String, found: String },
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    #[serde(rename = "type")]
    kind: String,
    image: PayloadImage,
}

#[derive(Deserialize)]
struct PayloadImage {
    #[serde(rename = "docker-manifest-digest")]
    digest: String,
}

/// Checks that `sig` is a signature of `image_digest` (`sha256:<hex>`) by the key `key_pem` (a
/// PEM public key, as `cosign generate-key-pair` writes `cosign.pub`). The signature is checked
/// before anything in the payload is read. `critical.identity.docker-reference` is not checked,
/// as cosign does not: the digest names the image.
pub fn verify_signature(
    sig: &ClassicSignature,
    image_digest: &str,
    key_pem: &str,
) -> Result<(), SignatureRefusal> {
    let key = CosignVerificationKey::try_from_pem(key_pem.as_bytes())
        .map_err(|e| SignatureRefusal::KeyUnusable(e.to_string()))?;
    verify_signature_with_key(sig, image_digest, &key)
}

/// [`verify_signature`] with a key already read (from a policy or from a certificate).
pub fn verify_signature_with_key(
    sig: &ClassicSignature,
    image_digest: &str,
    key: &CosignVerificationKey,
) -> Result<(), SignatureRefusal> {
    image_hex(image_digest).ok_or_else(|| SignatureRefusal::BadImageDigest(shown(image_digest)))?;
    let raw = decode_base64(&sig.signature).ok_or(SignatureRefusal::Base64)?;
    key.verify_signature(Signature::Raw(&raw), &sig.payload)
        .map_err(|_| SignatureRefusal::SignatureInvalid)?;
    let payload: Payload = serde_json::from_slice(&sig.payload)
        .map_err(|e| SignatureRefusal::NotAPayload(shown(&e.to_string())))?;
    if payload.critical.kind != SIGNATURE_TYPE {
        return Err(SignatureRefusal::PayloadType(shown(&payload.critical.kind)));
    }
    if payload.critical.image.digest != image_digest {
        return Err(SignatureRefusal::SubjectMismatch {
            expected: image_digest.to_string(),
            found: shown(&payload.critical.image.digest),
        });
    }
    Ok(())
}

/// The `.sig` manifest, as much of it as matters here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<OciDescriptor>,
}

/// Every classic signature of `image_digest` in the repository of `repository_ref` (its tag or
/// digest is ignored), unverified, in the registry's order: check each with
/// [`verify_signature`]. Layers of another media type or without a signature annotation are
/// skipped (cosign skips them too).
///
/// An empty list means the registry cleanly said there is no `.sig` tag. Any other failure is
/// an error (fail closed), and so is a manifest with more than `limits.max_signatures` layers.
pub async fn find_signatures(
    reader: &BoundedReader,
    auth: &RegistryAuth,
    repository_ref: &Reference,
    image_digest: &str,
    limits: &Limits,
) -> Result<Vec<ClassicSignature>, FetchProblem> {
    let hex =
        image_hex(image_digest).ok_or_else(|| FetchProblem::BadImageDigest(shown(image_digest)))?;
    let registry = repository_ref.registry().to_string();
    let repository = repository_ref.repository().to_string();
    let at = Reference::with_tag(
        registry.clone(),
        repository.clone(),
        format!("sha256-{hex}.sig"),
    );
    let shown_tag = format!("{registry}/{repository}:sha256-{hex}.sig");
    let action = "fetching the signature tag";
    let answer = within(
        limits.request_timeout,
        action,
        &shown_tag,
        reader.manifest(
            &at,
            auth,
            &[OCI_IMAGE_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE],
            limits.max_manifest_bytes,
        ),
    )
    .await?;
    let body = match answer {
        Ok((body, _)) => body,
        Err(BoundedError::Registry(e)) if is_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(bounded_error(action, "signature manifest", &shown_tag)(e)),
    };
    let manifest: SignatureManifest =
        serde_json::from_slice(&body).map_err(|e| FetchProblem::Malformed {
            reference: shown_tag.clone(),
            problem: format!("not an image manifest: {}", shown(&e.to_string())),
        })?;
    if manifest.layers.len() > limits.max_signatures {
        return Err(FetchProblem::TooManySignatures {
            reference: shown_tag,
            count: manifest.layers.len(),
            limit: limits.max_signatures,
        });
    }
    let mut signatures = Vec::new();
    for layer in &manifest.layers {
        let Some((signature, annotations)) = signature_of(layer) else {
            continue;
        };
        let certificate = annotations
            .get(crate::cosign_certificate::CERTIFICATE_ANNOTATION)
            .cloned();
        let chain = annotations
            .get(crate::cosign_certificate::CHAIN_ANNOTATION)
            .cloned();
        let payload = fetch_layer(
            (reader, auth),
            &at,
            &shown_tag,
            layer,
            ("signed payload", limits.max_payload_bytes),
            limits.request_timeout,
        )
        .await?;
        signatures.push(ClassicSignature {
            payload,
            signature,
            certificate,
            chain,
        });
    }
    Ok(signatures)
}

/// The signature annotation of a simple signing layer, with all its annotations; `None` for
/// any other layer.
fn signature_of(
    layer: &OciDescriptor,
) -> Option<(String, &std::collections::BTreeMap<String, String>)> {
    if layer.media_type != SIMPLE_SIGNING_MEDIA_TYPE {
        return None;
    }
    let annotations = layer.annotations.as_ref()?;
    Some((annotations.get(SIGNATURE_ANNOTATION)?.clone(), annotations))
}

/// A signature cosign v2.6.4 made (`cosign sign --key cosign.key --tlog-upload=false
/// --new-bundle-format=false`) of the image whose digest is in image-digest.txt.
#[cfg(test)]
pub(crate) mod fixtures {
    pub const MANIFEST: &[u8] = include_bytes!("testdata/cosign_classic/sig.manifest.json");
    pub const PAYLOAD: &[u8] = include_bytes!("testdata/cosign_classic/payload.json");
    pub const KEY: &str = include_str!("testdata/cosign_classic/cosign.pub");
    pub const DIGEST: &str = include_str!("testdata/cosign_classic/image-digest.txt");

    /// The one signature in [`MANIFEST`].
    pub fn signature() -> super::ClassicSignature {
        let manifest: serde_json::Value = serde_json::from_slice(MANIFEST).unwrap();
        super::ClassicSignature {
            payload: PAYLOAD.to_vec(),
            signature: manifest["layers"][0]["annotations"][super::SIGNATURE_ANNOTATION]
                .as_str()
                .unwrap()
                .to_string(),
            certificate: None,
            chain: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::fixtures::{DIGEST, KEY, MANIFEST, PAYLOAD, signature};
    use super::*;
    use crate::cosign_bundle::fixtures::OTHER_KEY;
    use crate::test_registry::{fake_registry, route, sha};

    const OTHER_DIGEST: &str =
        "sha256:0000000000000000000000000000000000000000000000000000000000000001";

    #[test]
    fn a_real_cosign_signature_verifies() {
        assert_eq!(verify_signature(&signature(), DIGEST, KEY), Ok(()));
    }

    #[test]
    fn a_signature_by_another_key_does_not() {
        assert_eq!(
            verify_signature(&signature(), DIGEST, OTHER_KEY),
            Err(SignatureRefusal::SignatureInvalid)
        );
    }

    #[test]
    fn a_signature_of_another_image_does_not() {
        assert!(matches!(
            verify_signature(&signature(), OTHER_DIGEST, KEY),
            Err(SignatureRefusal::SubjectMismatch { .. })
        ));
    }

    #[test]
    fn a_payload_changed_under_the_signature_does_not_verify() {
        let mut sig = signature();
        sig.payload = String::from_utf8(PAYLOAD.to_vec())
            .unwrap()
            .replace(&DIGEST[7..], &OTHER_DIGEST[7..])
            .into_bytes();
        assert_eq!(
            verify_signature(&sig, OTHER_DIGEST, KEY),
            Err(SignatureRefusal::SignatureInvalid)
        );
    }

    #[test]
    fn bad_input_is_named_and_never_panics() {
        let mut sig = signature();
        sig.signature = "%%%".into();
        assert_eq!(
            verify_signature(&sig, DIGEST, KEY),
            Err(SignatureRefusal::Base64)
        );
        assert!(matches!(
            verify_signature(&signature(), DIGEST, "not a key"),
            Err(SignatureRefusal::KeyUnusable(_))
        ));
        assert!(matches!(
            verify_signature(&signature(), "sha256:ABC", KEY),
            Err(SignatureRefusal::BadImageDigest(_))
        ));
        for payload in [&b""[..], b"{", b"\xff\xfe", b"[]", b"{\"critical\":1}"] {
            let sig = ClassicSignature {
                payload: payload.to_vec(),
                ..signature()
            };
            assert_eq!(
                verify_signature(&sig, DIGEST, KEY),
                Err(SignatureRefusal::SignatureInvalid)
            );
        }
    }

    fn sig_tag_path(digest: &str) -> String {
        format!("/v2/repo/manifests/sha256-{}.sig", &digest[7..])
    }

    /// `/v2/`, the `.sig` manifest cosign wrote and its payload layer.
    fn cosign_signature() -> Vec<(String, u16, Vec<u8>)> {
        vec![
            route("/v2/".into(), 200, b"{}"),
            route(sig_tag_path(DIGEST), 200, MANIFEST),
            route(format!("/v2/repo/blobs/{}", sha(PAYLOAD)), 200, PAYLOAD),
        ]
    }

    async fn find(
        routes: Vec<(String, u16, Vec<u8>)>,
        limits: Limits,
    ) -> Result<Vec<ClassicSignature>, FetchProblem> {
        let addr = fake_registry(routes).await;
        let reader = BoundedReader::new(vec![addr.clone()]).unwrap();
        let reference: Reference = format!("{addr}/repo:v1").parse().unwrap();
        find_signatures(
            &reader,
            &RegistryAuth::Anonymous,
            &reference,
            DIGEST,
            &limits,
        )
        .await
    }

    #[tokio::test]
    async fn finds_cosigns_signature_under_the_sig_tag() {
        let found = find(cosign_signature(), Limits::default()).await.unwrap();
        assert_eq!(found, vec![signature()]);
        assert_eq!(verify_signature(&found[0], DIGEST, KEY), Ok(()));
    }

    #[tokio::test]
    async fn no_sig_tag_is_no_signatures() {
        let routes = vec![route("/v2/".into(), 200, b"{}")];
        assert_eq!(find(routes, Limits::default()).await.unwrap(), vec![]);
    }

    #[tokio::test]
    async fn a_failing_registry_is_an_error_not_unsigned() {
        for status in [500, 502, 403, 401, 429] {
            let mut routes = cosign_signature();
            routes[1].1 = status;
            routes[1].2 = b"{}".to_vec();
            let e = find(routes, Limits::default()).await.unwrap_err();
            assert!(
                matches!(e, FetchProblem::Registry { .. }),
                "{status}: {e:?}"
            );
        }
        // The manifest is there but its payload layer is not: not "no signatures" either.
        let mut routes = cosign_signature();
        routes.pop();
        let e = find(routes, Limits::default()).await.unwrap_err();
        assert!(matches!(e, FetchProblem::Registry { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_registry_that_never_answers_times_out() {
        let mut routes = cosign_signature();
        routes[1].1 = 0;
        let limits = Limits {
            request_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let e = find(routes, limits).await.unwrap_err();
        assert!(matches!(e, FetchProblem::Timeout { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn oversized_answers_are_refused_by_size() {
        let small = Limits {
            max_manifest_bytes: 100,
            ..Limits::default()
        };
        let e = find(cosign_signature(), small).await.unwrap_err();
        assert!(
            matches!(
                e,
                FetchProblem::Oversized {
                    what: "signature manifest",
                    limit: 100,
                    ..
                }
            ),
            "{e:?}"
        );

        let small = Limits {
            max_payload_bytes: 100,
            ..Limits::default()
        };
        let e = find(cosign_signature(), small).await.unwrap_err();
        assert!(
            matches!(
                e,
                FetchProblem::TooLarge {
                    what: "signed payload",
                    ..
                }
            ),
            "{e:?}"
        );

        // A layer that says it is small but is not: read only up to its declared size, then
        // refused as not the blob its digest names.
        let mut manifest: serde_json::Value = serde_json::from_slice(MANIFEST).unwrap();
        let big = vec![b' '; 200_000];
        manifest["layers"][0]["digest"] = sha(&big).into();
        manifest["layers"][0]["size"] = 250.into();
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let routes = vec![
            route("/v2/".into(), 200, b"{}"),
            route(sig_tag_path(DIGEST), 200, &manifest),
            route(format!("/v2/repo/blobs/{}", sha(&big)), 200, &big),
        ];
        let e = find(routes, Limits::default()).await.unwrap_err();
        assert!(matches!(e, FetchProblem::DigestMismatch { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn too_many_signatures_is_an_error_not_a_truncation() {
        let limits = Limits {
            max_signatures: 0,
            ..Limits::default()
        };
        let e = find(cosign_signature(), limits).await.unwrap_err();
        assert!(
            matches!(e, FetchProblem::TooManySignatures { count: 1, .. }),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_layer_not_matching_its_digest_is_refused() {
        let mut routes = cosign_signature();
        routes[2].2 = PAYLOAD.iter().map(|b| b.to_ascii_uppercase()).collect();
        let e = find(routes, Limits::default()).await.unwrap_err();
        assert!(matches!(e, FetchProblem::DigestMismatch { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn layers_of_other_kinds_are_skipped() {
        let mut manifest: serde_json::Value = serde_json::from_slice(MANIFEST).unwrap();
        manifest["layers"][0]["mediaType"] = "application/octet-stream".into();
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let mut routes = cosign_signature();
        routes[1].2 = manifest;
        assert_eq!(find(routes, Limits::default()).await.unwrap(), vec![]);
    }
}
