//! Key-signed cosign signatures in the sigstore bundle format (`cosign sign --new-bundle-format`,
//! the default of cosign v3), offline: no Rekor, no Fulcio.
//!
//! cosign stores such a signature as an OCI artifact that refers to the image (`subject`): an
//! image manifest whose `artifactType` is `application/vnd.dev.sigstore.bundle.v0.3+json` and
//! whose one layer is the bundle JSON. The bundle holds a DSSE envelope around an in-toto
//! Statement naming the image digest, with predicate type `https://sigstore.dev/cosign/sign/v1`.
//! Registries list the artifacts that refer to an image through the referrers API, or, when they
//! have none, in an OCI index under the tag `sha256-<hex of the image digest>`.
//!
//! [`find_bundles`] (IO) fetches the bundle JSON of every such artifact; [`verify_bundle`] (pure)
//! says whether one of them is a signature of the image by a key. Only the `cosign/sign/v1`
//! predicate counts: `cosign verify --key` also accepts attestations (SBOMs, provenance, anything
//! the key holder attested) as signatures, Airlock does not.

use std::collections::BTreeMap;
use std::time::Duration;

use airlock_bundle::oci::{BoundedError, BoundedReader};
use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use oci_client::Reference;
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::manifest::{OCI_IMAGE_INDEX_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor};
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;
use sigstore::crypto::{CosignVerificationKey, Signature};

/// The only predicate type that makes a bundle a signature of its subject.
pub const SIGN_PREDICATE_TYPE: &str = "https://sigstore.dev/cosign/sign/v1";
/// The DSSE payload type of an in-toto Statement.
pub const IN_TOTO_PAYLOAD_TYPE: &str = "application/vnd.in-toto+json";
/// The media type cosign gives the bundles it writes.
pub const BUNDLE_MEDIA_TYPE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
/// A key-signed bundle is under 1 KiB; anything this large is not one of cosign's.
pub const MAX_BUNDLE_BYTES: usize = 64 * 1024;
/// The decoded DSSE payload, the Statement.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// in-toto Statement types: cosign writes v1 for signatures (`cosign sign`), v0.1 for
/// attestations (`cosign attest`); both mean the same subject/predicate layout.
const STATEMENT_TYPES: [&str; 2] = [
    "https://in-toto.io/Statement/v1",
    "https://in-toto.io/Statement/v0.1",
];

/// Strings taken from a bundle are shown at most this long: a refusal ends up in a Plugin's
/// status, and the bundle is written by whoever can push to the repository.
const SHOWN_CHARS: usize = 80;

/// Why a bundle is not a signature of the image by the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleRefusal {
    #[error("the trusted key is unusable: {0}")]
    KeyUnusable(String),
    #[error("`{0}` is not an image digest (sha256:<64 lowercase hex digits>)")]
    BadImageDigest(String),
    #[error("the bundle is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("not a sigstore bundle: {0}")]
    NotABundle(String),
    #[error("unsupported sigstore bundle media type {0} (supported: sigstore bundle v0.1 to v0.3)")]
    UnsupportedMediaType(String),
    #[error(
        "the bundle signs a message digest (messageSignature), not a DSSE envelope; cosign signs images with DSSE"
    )]
    MessageSignature,
    #[error("the DSSE payload type is {0}, not {IN_TOTO_PAYLOAD_TYPE}")]
    PayloadType(String),
    #[error("the DSSE payload is {size} bytes, over the limit of {limit}")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("the DSSE {0} is not valid base64")]
    Base64(&'static str),
    #[error("the DSSE envelope has {0} signatures; a cosign signature has exactly one")]
    SignatureCount(usize),
    #[error("the signature does not verify with the trusted key")]
    SignatureInvalid,
    #[error("the signed payload is not an in-toto Statement: {0}")]
    NotAStatement(String),
    #[error("the signed Statement type is {0}, not in-toto Statement v1 or v0.1")]
    StatementType(String),
    #[error(
        "the signed Statement has predicate type {0}, not {SIGN_PREDICATE_TYPE}: an attestation, not a signature"
    )]
    PredicateType(String),
    #[error("the signed Statement is about {found}, not the image {expected}")]
    SubjectMismatch { expected: String, found: String },
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Bundle {
    media_type: Option<String>,
    dsse_envelope: Option<Envelope>,
    message_signature: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    payload: String,
    #[serde(default)]
    payload_type: String,
    #[serde(default)]
    signatures: Vec<EnvelopeSignature>,
}

// `keyid` is ignored like `verificationMaterial.publicKey.hint`: both are claims of the bundle's
// writer about which key signed; only the signature check decides.
#[derive(Deserialize)]
struct EnvelopeSignature {
    #[serde(default)]
    sig: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Statement {
    #[serde(rename = "_type")]
    statement_type: String,
    #[serde(default)]
    subject: Vec<Subject>,
    predicate_type: String,
}

#[derive(Deserialize)]
struct Subject {
    #[serde(default)]
    digest: BTreeMap<String, String>,
}

/// Checks that `bundle_json` is a signature of `image_digest` (`sha256:<hex>`) by the key
/// `key_pem` (a PEM public key, as `cosign generate-key-pair` writes `cosign.pub`).
///
/// The signature is checked before anything in the signed payload is read.
pub fn verify_bundle(
    bundle_json: &[u8],
    image_digest: &str,
    key_pem: &str,
) -> Result<(), BundleRefusal> {
    let key = CosignVerificationKey::try_from_pem(key_pem.as_bytes())
        .map_err(|e| BundleRefusal::KeyUnusable(e.to_string()))?;
    verify_bundle_with_key(bundle_json, image_digest, &key)
}

/// [`verify_bundle`] with a key already read (from a policy or from a certificate).
pub fn verify_bundle_with_key(
    bundle_json: &[u8],
    image_digest: &str,
    key: &CosignVerificationKey,
) -> Result<(), BundleRefusal> {
    let image_hex = image_hex(image_digest)
        .ok_or_else(|| BundleRefusal::BadImageDigest(shown(image_digest)))?;
    if bundle_json.len() > MAX_BUNDLE_BYTES {
        return Err(BundleRefusal::TooLarge {
            size: bundle_json.len(),
            limit: MAX_BUNDLE_BYTES,
        });
    }
    let bundle: Bundle = serde_json::from_slice(bundle_json)
        .map_err(|e| BundleRefusal::NotABundle(shown(&e.to_string())))?;
    let media_type = bundle
        .media_type
        .ok_or_else(|| BundleRefusal::NotABundle("no mediaType".into()))?;
    if bundle_version(&media_type).is_none() {
        return Err(BundleRefusal::UnsupportedMediaType(shown(&media_type)));
    }
    if bundle.message_signature.is_some() {
        return Err(BundleRefusal::MessageSignature);
    }
    let envelope = bundle
        .dsse_envelope
        .ok_or_else(|| BundleRefusal::NotABundle("no dsseEnvelope".into()))?;
    if envelope.payload_type != IN_TOTO_PAYLOAD_TYPE {
        return Err(BundleRefusal::PayloadType(shown(&envelope.payload_type)));
    }
    // Refuse before decoding: the base64 text alone bounds the decoded size.
    if envelope.payload.len() / 4 * 3 > MAX_PAYLOAD_BYTES {
        return Err(BundleRefusal::PayloadTooLarge {
            size: envelope.payload.len() / 4 * 3,
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    let payload = decode_base64(&envelope.payload).ok_or(BundleRefusal::Base64("payload"))?;
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(BundleRefusal::PayloadTooLarge {
            size: payload.len(),
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    // One signature: with several, "which one verified" would become a policy question (any?
    // all?) that cosign never raises, since it writes exactly one.
    let [signature] = envelope.signatures.as_slice() else {
        return Err(BundleRefusal::SignatureCount(envelope.signatures.len()));
    };
    let signature = decode_base64(&signature.sig).ok_or(BundleRefusal::Base64("signature"))?;
    key.verify_signature(
        Signature::Raw(&signature),
        &pae(&envelope.payload_type, &payload),
    )
    .map_err(|_| BundleRefusal::SignatureInvalid)?;

    let statement: Statement = serde_json::from_slice(&payload)
        .map_err(|e| BundleRefusal::NotAStatement(shown(&e.to_string())))?;
    if !STATEMENT_TYPES.contains(&statement.statement_type.as_str()) {
        return Err(BundleRefusal::StatementType(shown(
            &statement.statement_type,
        )));
    }
    if statement.predicate_type != SIGN_PREDICATE_TYPE {
        return Err(BundleRefusal::PredicateType(shown(
            &statement.predicate_type,
        )));
    }
    let names_image = statement
        .subject
        .iter()
        .any(|s| s.digest.get("sha256").map(String::as_str) == Some(image_hex));
    if !names_image {
        let found: Vec<String> = statement
            .subject
            .iter()
            .filter_map(|s| s.digest.get("sha256"))
            .take(3)
            .map(|hex| format!("sha256:{}", shown(hex)))
            .collect();
        return Err(BundleRefusal::SubjectMismatch {
            expected: image_digest.to_string(),
            found: if found.is_empty() {
                "no sha256 digest".into()
            } else {
                found.join(", ")
            },
        });
    }
    Ok(())
}

/// DSSE's pre-authentication encoding, what the signature is over.
fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {payload_type} {} ",
        payload_type.len(),
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

/// DSSE allows standard and URL-safe base64; protobuf JSON writers may drop the padding.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let config =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    GeneralPurpose::new(&base64::alphabet::STANDARD, config)
        .decode(text)
        .or_else(|_| GeneralPurpose::new(&base64::alphabet::URL_SAFE, config).decode(text))
        .ok()
}

/// The minor version of a sigstore bundle media type, in either of the spellings the bundle
/// specification defines; `None` for anything else, including versions after 0.3 (unknown
/// semantics are refused, not guessed).
fn bundle_version(media_type: &str) -> Option<u8> {
    let version = media_type
        .strip_prefix("application/vnd.dev.sigstore.bundle.v0.")
        .and_then(|rest| rest.strip_suffix("+json"))
        .or_else(|| {
            media_type.strip_prefix("application/vnd.dev.sigstore.bundle+json;version=0.")
        })?;
    match version {
        "1" => Some(1),
        "2" => Some(2),
        "3" => Some(3),
        _ => None,
    }
}

/// The hex of `sha256:<64 lowercase hex>`.
pub(crate) fn image_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

/// `text` quoted, cut to [`SHOWN_CHARS`] characters.
pub(crate) fn shown(text: &str) -> String {
    match text.char_indices().nth(SHOWN_CHARS) {
        Some((end, _)) => format!("{:?}…", &text[..end]),
        None => format!("{text:?}"),
    }
}

/// Bounds on what [`find_bundles`] and [`crate::cosign_classic::find_signatures`] fetch.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Artifacts that may refer to one image; more is an error, not a truncation, so that a
    /// signature is never silently left unread.
    pub max_referrers: usize,
    /// A referrers index, or a manifest of one of the artifacts.
    pub max_manifest_bytes: u64,
    /// A bundle layer.
    pub max_bundle_bytes: u64,
    /// Signatures under an image's classic `.sig` tag (each `cosign sign` adds one); more is an
    /// error, like too many referrers.
    pub max_signatures: usize,
    /// The signed payload of a classic signature (a few hundred bytes as cosign writes it).
    pub max_payload_bytes: u64,
    /// Each registry request.
    pub request_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_referrers: 16,
            max_manifest_bytes: 64 * 1024,
            max_bundle_bytes: MAX_BUNDLE_BYTES as u64,
            max_signatures: 32,
            max_payload_bytes: MAX_PAYLOAD_BYTES as u64,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Why the bundles of an image could not be read. Every one is fail-closed: the caller must not
/// take it for "no bundles".
#[derive(Debug, thiserror::Error)]
pub enum FetchProblem {
    #[error("`{0}` is not an image digest (sha256:<64 lowercase hex digits>)")]
    BadImageDigest(String),
    #[error("{action} {reference} failed: {source}")]
    Registry {
        action: &'static str,
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("{action} {reference}: no answer from the registry within {}s", timeout.as_secs())]
    Timeout {
        action: &'static str,
        reference: String,
        timeout: Duration,
    },
    #[error("{reference}: {problem}")]
    Malformed { reference: String, problem: String },
    #[error(
        "{reference}: {count} artifacts refer to the image, over the limit of {limit}; remove old signatures and attestations"
    )]
    TooManyReferrers {
        reference: String,
        count: usize,
        limit: usize,
    },
    #[error(
        "{reference}: {count} signatures, over the limit of {limit}; re-sign the image once (cosign sign --key … after cosign clean --type signature)"
    )]
    TooManySignatures {
        reference: String,
        count: usize,
        limit: usize,
    },
    #[error("{reference}: the {what} {digest} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        reference: String,
        digest: String,
        size: i64,
        limit: u64,
    },
    #[error("{reference}: blob {digest} is not what its digest says")]
    DigestMismatch { reference: String, digest: String },
    /// Counted while reading: the read stopped at the limit.
    #[error("{reference}: the registry's {what} is larger than {limit} bytes")]
    Oversized {
        what: &'static str,
        reference: String,
        limit: u64,
    },
}

impl FetchProblem {
    /// This problem in words that carry nothing a registry sent (see
    /// `airlock_bundle::oci::OciError::kind`): for a Plugin's status.
    pub fn kind(&self) -> String {
        match self {
            FetchProblem::Registry {
                action,
                reference,
                source,
            } => format!(
                "{action} {reference} failed: {}",
                airlock_bundle::oci::registry_failure(source)
            ),
            // The parser's message may quote the registry's answer.
            FetchProblem::Malformed { reference, .. } => {
                format!("{reference}: the registry's answer is not what cosign writes")
            }
            other => other.to_string(),
        }
    }
}

/// A manifest of an artifact that refers to the image, as much of it as matters here.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ArtifactManifest {
    artifact_type: Option<String>,
    config: Option<OciDescriptor>,
    #[serde(default)]
    layers: Vec<OciDescriptor>,
    subject: Option<OciDescriptor>,
}

/// The bundle JSON of every sigstore bundle artifact that refers to `image_digest` in the
/// repository of `repository_ref` (its tag or digest is ignored). Bundles are returned unverified,
/// in the registry's order: check each with [`verify_bundle`].
///
/// An empty list means the registry cleanly said there is nothing: no referrers (or a referrers
/// API answering 404) and a 404 for the fallback tag. Any other registry failure is an error.
pub async fn find_bundles(
    reader: &BoundedReader,
    auth: &RegistryAuth,
    repository_ref: &Reference,
    image_digest: &str,
    limits: &Limits,
) -> Result<Vec<Vec<u8>>, FetchProblem> {
    if image_hex(image_digest).is_none() {
        return Err(FetchProblem::BadImageDigest(shown(image_digest)));
    }
    let registry = repository_ref.registry().to_string();
    let repository = repository_ref.repository().to_string();
    let subject = Reference::with_digest(
        registry.clone(),
        repository.clone(),
        image_digest.to_string(),
    );
    let shown_subject = format!("{registry}/{repository}@{image_digest}");
    let timeout = limits.request_timeout;

    let action = "listing the artifacts referring to";
    let listed = within(
        timeout,
        action,
        &shown_subject,
        reader.referrers(&subject, auth, limits.max_manifest_bytes),
    )
    .await?
    .map_err(bounded_error(action, "referrers list", &shown_subject))?;
    let listed = match listed {
        Some(body) => {
            let index: oci_client::manifest::OciImageIndex = serde_json::from_slice(&body)
                .map_err(|e| FetchProblem::Malformed {
                    reference: shown_subject.clone(),
                    problem: format!(
                        "the referrers list is not an OCI image index: {}",
                        shown(&e.to_string())
                    ),
                })?;
            index.manifests
        }
        None => Vec::new(),
    };
    let entries = if listed.is_empty() {
        // No referrers API (404), or nothing listed by it (a registry may keep cosign's
        // fallback tag only): the tag `sha256-<hex>` is asked, where only a 404 means "none".
        match fallback_index(reader, auth, &subject, limits).await? {
            Some(entries) => entries,
            None => return Ok(Vec::new()),
        }
    } else {
        listed
    };
    if entries.len() > limits.max_referrers {
        return Err(FetchProblem::TooManyReferrers {
            reference: shown_subject,
            count: entries.len(),
            limit: limits.max_referrers,
        });
    }

    let mut bundles = Vec::new();
    for entry in entries {
        // artifactType of an index entry is not trusted to say what the manifest is (cosign
        // writes `application/vnd.oci.empty.v1+json` there): every listed manifest is read.
        let shown_manifest = format!("{registry}/{repository}@{}", shown(&entry.digest));
        // The digest goes into the request path: exactly sha256:<64 hex>, or the entry is
        // skipped (it could name another path on the registry).
        if entry.media_type != OCI_IMAGE_MEDIA_TYPE || image_hex(&entry.digest).is_none() {
            tracing::debug!(manifest = %shown_manifest, media_type = %entry.media_type, "skipping a referrer that is not an OCI image manifest");
            continue;
        }
        if u64::try_from(entry.size).map_or(true, |size| size > limits.max_manifest_bytes) {
            return Err(FetchProblem::TooLarge {
                what: "manifest",
                reference: shown_subject,
                digest: entry.digest,
                size: entry.size,
                limit: limits.max_manifest_bytes,
            });
        }
        let at = Reference::with_digest(registry.clone(), repository.clone(), entry.digest.clone());
        let action = "fetching a referring manifest";
        // The reader checks the body against the digest of a by-digest reference.
        let (body, _) = within(
            timeout,
            action,
            &shown_manifest,
            reader.manifest(
                &at,
                auth,
                &[OCI_IMAGE_MEDIA_TYPE],
                limits.max_manifest_bytes,
            ),
        )
        .await?
        .map_err(bounded_error(action, "manifest", &shown_manifest))?;
        let manifest: ArtifactManifest =
            serde_json::from_slice(&body).map_err(|e| FetchProblem::Malformed {
                reference: shown_manifest.clone(),
                problem: format!("not an OCI image manifest: {}", shown(&e.to_string())),
            })?;
        let Some(layer) = bundle_layer(&manifest, image_digest) else {
            continue;
        };
        bundles.push(
            fetch_layer(
                (reader, auth),
                &at,
                &shown_manifest,
                layer,
                ("bundle layer", limits.max_bundle_bytes),
                limits.request_timeout,
            )
            .await?,
        );
    }
    Ok(bundles)
}

/// The bundle layer of a sigstore bundle artifact about `image_digest`; `None` for any other
/// artifact (an SBOM, a Notation signature, a bundle about another image).
fn bundle_layer<'m>(
    manifest: &'m ArtifactManifest,
    image_digest: &str,
) -> Option<&'m OciDescriptor> {
    let artifact_type = manifest
        .artifact_type
        .as_deref()
        .or(manifest.config.as_ref().map(|c| c.media_type.as_str()))?;
    bundle_version(artifact_type)?;
    if manifest.subject.as_ref().map(|s| s.digest.as_str()) != Some(image_digest) {
        return None;
    }
    match manifest.layers.as_slice() {
        [layer] if bundle_version(&layer.media_type).is_some() => Some(layer),
        _ => None,
    }
}

/// The referrers index under the tag `sha256-<hex>`: `None` when the registry says there is no
/// such tag.
async fn fallback_index(
    reader: &BoundedReader,
    auth: &RegistryAuth,
    subject: &Reference,
    limits: &Limits,
) -> Result<Option<Vec<oci_client::manifest::ImageIndexEntry>>, FetchProblem> {
    let digest = subject.digest().unwrap_or_default();
    let tag = digest.replacen(':', "-", 1);
    let at = Reference::with_tag(
        subject.registry().to_string(),
        subject.repository().to_string(),
        tag,
    );
    let shown_tag = format!(
        "{}/{}:{}",
        at.registry(),
        at.repository(),
        at.tag().unwrap_or_default()
    );
    let action = "fetching the referrers tag";
    let answer = within(
        limits.request_timeout,
        action,
        &shown_tag,
        reader.manifest(
            &at,
            auth,
            &[OCI_IMAGE_INDEX_MEDIA_TYPE],
            limits.max_manifest_bytes,
        ),
    )
    .await?;
    let body = match answer {
        Ok((body, _)) => body,
        Err(BoundedError::Registry(e)) if is_not_found(&e) => return Ok(None),
        Err(e) => return Err(bounded_error(action, "referrers index", &shown_tag)(e)),
    };
    let index: oci_client::manifest::OciImageIndex =
        serde_json::from_slice(&body).map_err(|e| FetchProblem::Malformed {
            reference: shown_tag.clone(),
            problem: format!("not an OCI image index: {}", shown(&e.to_string())),
        })?;
    // Something else under the tag (an image someone tagged so) is not a "no": it may hide the
    // index a signer meant to write.
    if index.media_type.as_deref() != Some(OCI_IMAGE_INDEX_MEDIA_TYPE) {
        return Err(FetchProblem::Malformed {
            reference: shown_tag,
            problem: "the referrers tag holds something other than an OCI image index".into(),
        });
    }
    Ok(Some(index.manifests))
}

/// The blob `layer` of the manifest at `at`, read up to `limit` bytes and checked against its
/// digest. `what` names it in errors. The read stops at the descriptor's size: a registry that
/// sends more is sending something else.
pub(crate) async fn fetch_layer(
    (reader, auth): (&BoundedReader, &RegistryAuth),
    at: &Reference,
    shown_manifest: &str,
    layer: &OciDescriptor,
    (what, limit): (&'static str, u64),
    timeout: Duration,
) -> Result<Vec<u8>, FetchProblem> {
    let Some(layer) = airlock_bundle::oci::fetchable(layer) else {
        return Err(FetchProblem::Malformed {
            reference: shown_manifest.to_string(),
            problem: format!("the {what}'s digest is not sha256:<64 lowercase hex digits>"),
        });
    };
    let size = match u64::try_from(layer.size) {
        Ok(size) if size <= limit => size,
        _ => {
            return Err(FetchProblem::TooLarge {
                what,
                reference: shown_manifest.to_string(),
                digest: shown(&layer.digest),
                size: layer.size,
                limit,
            });
        }
    };
    let mismatch = || FetchProblem::DigestMismatch {
        reference: shown_manifest.to_string(),
        digest: shown(&layer.digest),
    };
    let action = "fetching a layer of";
    within(
        timeout,
        action,
        shown_manifest,
        reader.blob(at, &layer.digest, auth, (what, size)),
    )
    .await?
    .map_err(|e| match e {
        // More than the descriptor's size, or other bytes: not the blob the digest names.
        BoundedError::TooLarge { .. }
        | BoundedError::Registry(OciDistributionError::DigestError(_)) => mismatch(),
        BoundedError::Registry(source) => FetchProblem::Registry {
            action,
            reference: shown_manifest.to_string(),
            source,
        },
    })
}

/// A [`BoundedReader`] error while doing `action` on `reference`; `what` names an oversized
/// answer.
pub(crate) fn bounded_error(
    action: &'static str,
    what: &'static str,
    reference: &str,
) -> impl FnOnce(BoundedError) -> FetchProblem {
    let reference = reference.to_string();
    move |error| match error {
        BoundedError::TooLarge { limit, .. } => FetchProblem::Oversized {
            what,
            reference,
            limit,
        },
        BoundedError::Registry(source) => FetchProblem::Registry {
            action,
            reference,
            source,
        },
    }
}

/// A clean "no such manifest": a 404, or an error body whose every code says "unknown".
pub(crate) fn is_not_found(error: &OciDistributionError) -> bool {
    match error {
        OciDistributionError::ImageManifestNotFoundError(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 404,
        OciDistributionError::RegistryError { envelope, .. } => {
            !envelope.errors.is_empty()
                && envelope.errors.iter().all(|e| {
                    matches!(
                        e.code,
                        OciErrorCode::ManifestUnknown
                            | OciErrorCode::NameUnknown
                            | OciErrorCode::NotFound
                    )
                })
        }
        _ => false,
    }
}

pub(crate) async fn within<T>(
    timeout: Duration,
    action: &'static str,
    reference: &str,
    request: impl Future<Output = T>,
) -> Result<T, FetchProblem> {
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| FetchProblem::Timeout {
            action,
            reference: reference.to_string(),
            timeout,
        })
}

/// Bundles made by cosign v2.6.4 (`sign` / `attest --type https://example.com/other`, both with
/// `--new-bundle-format`, by the key cosign.pub); other.pub is another key pair's.
#[cfg(test)]
pub(crate) mod fixtures {
    pub const SIGN: &[u8] = include_bytes!("testdata/cosign_bundle/sign.bundle.json");
    pub const ATTEST_OTHER: &[u8] =
        include_bytes!("testdata/cosign_bundle/attest-other.bundle.json");
    pub const KEY: &str = include_str!("testdata/cosign_bundle/cosign.pub");
    pub const OTHER_KEY: &str = include_str!("testdata/cosign_bundle/other.pub");
    pub const DIGEST: &str = include_str!("testdata/cosign_bundle/image-digest.txt");
}

#[cfg(test)]
mod tests {
    use super::fixtures::{ATTEST_OTHER, DIGEST, KEY, OTHER_KEY, SIGN};
    use super::*;
    use crate::test_registry::{fake_registry, route, sha};
    use sha2::{Digest as _, Sha256};
    const SIGN_MANIFEST: &[u8] = include_bytes!("testdata/cosign_bundle/sign.manifest.json");
    const FALLBACK_INDEX: &[u8] = include_bytes!("testdata/cosign_bundle/fallback.index.json");
    const ANOTHER_DIGEST: &str =
        "sha256:0000000000000000000000000000000000000000000000000000000000000000";

    fn digest() -> &'static str {
        DIGEST.trim()
    }

    fn bundle_value() -> serde_json::Value {
        serde_json::from_slice(SIGN).unwrap()
    }

    fn with(change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut v = bundle_value();
        change(&mut v);
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn a_real_cosign_signature_verifies() {
        assert_eq!(verify_bundle(SIGN, digest(), KEY), Ok(()));
    }

    #[test]
    fn a_signature_by_another_key_does_not() {
        assert_eq!(
            verify_bundle(SIGN, digest(), OTHER_KEY),
            Err(BundleRefusal::SignatureInvalid)
        );
    }

    #[test]
    fn a_signature_of_another_image_does_not() {
        assert!(matches!(
            verify_bundle(SIGN, ANOTHER_DIGEST, KEY),
            Err(BundleRefusal::SubjectMismatch { .. })
        ));
    }

    #[test]
    fn an_attestation_by_the_same_key_is_not_a_signature() {
        assert_eq!(
            verify_bundle(ATTEST_OTHER, digest(), KEY),
            Err(BundleRefusal::PredicateType(
                "\"https://example.com/other\"".into()
            ))
        );
        // It is a valid attestation: only its predicate type is wrong.
        assert_eq!(
            verify_bundle(ATTEST_OTHER, digest(), OTHER_KEY),
            Err(BundleRefusal::SignatureInvalid)
        );
    }

    #[test]
    fn a_payload_swapped_under_the_signature_does_not_verify() {
        let attest: serde_json::Value = serde_json::from_slice(ATTEST_OTHER).unwrap();
        let forged = with(|v| {
            v["dsseEnvelope"]["payload"] = attest["dsseEnvelope"]["payload"].clone();
        });
        assert_eq!(
            verify_bundle(&forged, digest(), KEY),
            Err(BundleRefusal::SignatureInvalid)
        );
    }

    #[test]
    fn the_payload_type_is_signed_too() {
        // A different payload type changes the PAE: the same signature no longer verifies even
        // if the refusal of the type itself were skipped.
        let signed = bundle_value();
        let payload = decode_base64(signed["dsseEnvelope"]["payload"].as_str().unwrap()).unwrap();
        assert_ne!(
            pae("application/json", &payload),
            pae(IN_TOTO_PAYLOAD_TYPE, &payload)
        );
        let changed = with(|v| v["dsseEnvelope"]["payloadType"] = "application/json".into());
        assert_eq!(
            verify_bundle(&changed, digest(), KEY),
            Err(BundleRefusal::PayloadType("\"application/json\"".into()))
        );
    }

    #[test]
    fn pae_is_dsse_v1() {
        assert_eq!(pae("t", b"ab c"), b"DSSEv1 1 t 4 ab c".to_vec());
    }

    #[test]
    fn truncated_json_is_not_a_bundle() {
        for end in [0, 1, SIGN.len() / 2, SIGN.len() - 1] {
            assert!(
                matches!(
                    verify_bundle(&SIGN[..end], digest(), KEY),
                    Err(BundleRefusal::NotABundle(_))
                ),
                "cut at {end}"
            );
        }
        // No prefix of a real bundle is accepted, nor panics.
        for end in 0..SIGN.len() {
            assert!(verify_bundle(&SIGN[..end], digest(), KEY).is_err());
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut inputs: Vec<Vec<u8>> = vec![
            vec![0xff; 100],
            b"null".to_vec(),
            b"[]".to_vec(),
            b"{\"mediaType\":1}".to_vec(),
            b"{\"mediaType\":\"application/vnd.dev.sigstore.bundle.v0.3+json\",\"dsseEnvelope\":null}".to_vec(),
            b"{\"mediaType\":\"application/vnd.dev.sigstore.bundle.v0.3+json\",\"dsseEnvelope\":{}}".to_vec(),
        ];
        // Every single-byte corruption of the real bundle.
        for i in 0..SIGN.len() {
            let mut b = SIGN.to_vec();
            b[i] ^= 0x55;
            inputs.push(b);
        }
        for input in inputs {
            let _ = verify_bundle(&input, digest(), KEY);
        }
    }

    #[test]
    fn huge_inputs_are_refused_by_size() {
        let big = vec![b' '; MAX_BUNDLE_BYTES + 1];
        assert!(matches!(
            verify_bundle(&big, digest(), KEY),
            Err(BundleRefusal::TooLarge { .. })
        ));
        let long_payload = with(|v| v["dsseEnvelope"]["payload"] = "QUFB".repeat(10_000).into());
        assert!(matches!(
            verify_bundle(&long_payload, digest(), KEY),
            Err(BundleRefusal::PayloadTooLarge { .. })
        ));
    }

    #[test]
    fn bad_base64_is_named() {
        let bad_payload = with(|v| v["dsseEnvelope"]["payload"] = "@@@@".into());
        assert_eq!(
            verify_bundle(&bad_payload, digest(), KEY),
            Err(BundleRefusal::Base64("payload"))
        );
        let bad_sig = with(|v| v["dsseEnvelope"]["signatures"][0]["sig"] = "no!".into());
        assert_eq!(
            verify_bundle(&bad_sig, digest(), KEY),
            Err(BundleRefusal::Base64("signature"))
        );
        let garbage_sig = with(|v| v["dsseEnvelope"]["signatures"][0]["sig"] = "AAAA".into());
        assert_eq!(
            verify_bundle(&garbage_sig, digest(), KEY),
            Err(BundleRefusal::SignatureInvalid)
        );
    }

    #[test]
    fn exactly_one_signature() {
        let none = with(|v| v["dsseEnvelope"]["signatures"] = serde_json::json!([]));
        assert_eq!(
            verify_bundle(&none, digest(), KEY),
            Err(BundleRefusal::SignatureCount(0))
        );
        let two = with(|v| {
            let s = v["dsseEnvelope"]["signatures"][0].clone();
            v["dsseEnvelope"]["signatures"] = serde_json::json!([s.clone(), s]);
        });
        assert_eq!(
            verify_bundle(&two, digest(), KEY),
            Err(BundleRefusal::SignatureCount(2))
        );
    }

    #[test]
    fn media_types() {
        for (media_type, version) in [
            ("application/vnd.dev.sigstore.bundle.v0.3+json", Some(3)),
            (
                "application/vnd.dev.sigstore.bundle+json;version=0.3",
                Some(3),
            ),
            (
                "application/vnd.dev.sigstore.bundle+json;version=0.1",
                Some(1),
            ),
            ("application/vnd.dev.sigstore.bundle.v0.2+json", Some(2)),
            ("application/vnd.dev.sigstore.bundle.v0.4+json", None),
            ("application/vnd.dev.sigstore.bundle.v0.3+jsonx", None),
            ("application/vnd.oci.empty.v1+json", None),
        ] {
            assert_eq!(bundle_version(media_type), version, "{media_type}");
        }
        let v04 = with(|v| v["mediaType"] = "application/vnd.dev.sigstore.bundle.v0.4+json".into());
        assert!(matches!(
            verify_bundle(&v04, digest(), KEY),
            Err(BundleRefusal::UnsupportedMediaType(_))
        ));
        // The same signature in the other spelling of v0.3 still verifies.
        let v03 = with(|v| {
            v["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.3".into()
        });
        assert_eq!(verify_bundle(&v03, digest(), KEY), Ok(()));
        let untyped = with(|v| {
            v.as_object_mut().unwrap().remove("mediaType");
        });
        assert!(matches!(
            verify_bundle(&untyped, digest(), KEY),
            Err(BundleRefusal::NotABundle(_))
        ));
    }

    #[test]
    fn a_message_signature_is_refused() {
        let message = with(|v| {
            v["messageSignature"] = serde_json::json!({
                "messageDigest": {"algorithm": "SHA2_256", "digest": "AAAA"},
                "signature": "AAAA"
            });
            v.as_object_mut().unwrap().remove("dsseEnvelope");
        });
        assert_eq!(
            verify_bundle(&message, digest(), KEY),
            Err(BundleRefusal::MessageSignature)
        );
    }

    #[test]
    fn bad_keys_and_digests_are_named() {
        assert!(matches!(
            verify_bundle(SIGN, digest(), "not a key"),
            Err(BundleRefusal::KeyUnusable(_))
        ));
        for bad in [
            "",
            "sha256:",
            "sha512:abc",
            &digest().to_uppercase(),
            &format!("{}0", digest()),
        ] {
            assert!(matches!(
                verify_bundle(SIGN, bad, KEY),
                Err(BundleRefusal::BadImageDigest(_))
            ));
        }
    }

    #[test]
    fn shown_strings_are_cut() {
        let long = "é".repeat(1000);
        let s = shown(&long);
        assert!(s.chars().count() < SHOWN_CHARS + 5);
        assert_eq!(shown("a\"b"), "\"a\\\"b\"");
    }

    #[test]
    fn cosigns_manifest_is_a_bundle_artifact_about_the_image() {
        let manifest: ArtifactManifest = serde_json::from_slice(SIGN_MANIFEST).unwrap();
        let layer = bundle_layer(&manifest, digest()).unwrap();
        assert_eq!(
            layer.digest,
            format!("sha256:{}", hex::encode(Sha256::digest(SIGN)))
        );
        assert!(bundle_layer(&manifest, ANOTHER_DIGEST).is_none());
    }

    #[test]
    fn other_artifacts_are_not_bundles() {
        let mut v: serde_json::Value = serde_json::from_slice(SIGN_MANIFEST).unwrap();
        v["artifactType"] = "application/spdx+json".into();
        let sbom: ArtifactManifest = serde_json::from_value(v.clone()).unwrap();
        assert!(bundle_layer(&sbom, digest()).is_none());
        v["artifactType"] = BUNDLE_MEDIA_TYPE_V03.into();
        let layer = v["layers"][0].clone();
        v["layers"] = serde_json::json!([layer.clone(), layer]);
        let two_layers: ArtifactManifest = serde_json::from_value(v).unwrap();
        assert!(bundle_layer(&two_layers, digest()).is_none());
    }

    #[test]
    fn cosigns_fallback_index_parses() {
        let index: oci_client::manifest::OciImageIndex =
            serde_json::from_slice(FALLBACK_INDEX).unwrap();
        assert_eq!(index.manifests.len(), 2);
        assert_eq!(
            index.media_type.as_deref(),
            Some(OCI_IMAGE_INDEX_MEDIA_TYPE)
        );
    }

    #[test]
    fn only_a_clean_not_found_means_none() {
        use oci_client::errors::{OciEnvelope, OciError};
        let envelope = |code| OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: String::new(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: String::new(),
        };
        let server = |code| OciDistributionError::ServerError {
            code,
            url: String::new(),
            message: String::new(),
        };
        assert!(is_not_found(&envelope(OciErrorCode::ManifestUnknown)));
        assert!(is_not_found(&server(404)));
        assert!(!is_not_found(&envelope(OciErrorCode::Denied)));
        assert!(!is_not_found(&envelope(OciErrorCode::Unauthorized)));
        assert!(!is_not_found(&envelope(OciErrorCode::Toomanyrequests)));
        assert!(!is_not_found(&server(403)));
        assert!(!is_not_found(&server(500)));
        assert!(!is_not_found(&OciDistributionError::UnauthorizedError {
            url: String::new()
        }));
        assert!(!is_not_found(&OciDistributionError::RegistryError {
            envelope: OciEnvelope { errors: vec![] },
            url: String::new(),
        }));
    }

    const ATTEST_MANIFEST: &[u8] =
        include_bytes!("testdata/cosign_bundle/attest-other.manifest.json");

    /// `/v2/`, and the two manifests and bundle layers cosign wrote, but no referrers listing.
    fn cosign_artifacts() -> Vec<(String, u16, Vec<u8>)> {
        vec![
            route("/v2/".into(), 200, b"{}"),
            route(
                format!("/v2/repo/manifests/{}", sha(SIGN_MANIFEST)),
                200,
                SIGN_MANIFEST,
            ),
            route(
                format!("/v2/repo/manifests/{}", sha(ATTEST_MANIFEST)),
                200,
                ATTEST_MANIFEST,
            ),
            route(format!("/v2/repo/blobs/{}", sha(SIGN)), 200, SIGN),
            route(
                format!("/v2/repo/blobs/{}", sha(ATTEST_OTHER)),
                200,
                ATTEST_OTHER,
            ),
        ]
    }

    fn fallback_path() -> String {
        format!("/v2/repo/manifests/{}", digest().replace(':', "-"))
    }

    async fn find(
        routes: Vec<(String, u16, Vec<u8>)>,
        limits: Limits,
    ) -> Result<Vec<Vec<u8>>, FetchProblem> {
        let addr = fake_registry(routes).await;
        let reader = BoundedReader::new(vec![addr.clone()]).unwrap();
        let reference: Reference = format!("{addr}/repo:1").parse().unwrap();
        find_bundles(
            &reader,
            &RegistryAuth::Anonymous,
            &reference,
            digest(),
            &limits,
        )
        .await
    }

    #[tokio::test]
    async fn finds_cosigns_bundles_under_the_fallback_tag() {
        let mut routes = cosign_artifacts();
        routes.push(route(fallback_path(), 200, FALLBACK_INDEX));
        let found = find(routes, Limits::default()).await.unwrap();
        assert_eq!(found, vec![SIGN.to_vec(), ATTEST_OTHER.to_vec()]);
        assert_eq!(verify_bundle(&found[0], digest(), KEY), Ok(()));
    }

    #[tokio::test]
    async fn finds_cosigns_bundles_through_the_referrers_api() {
        let mut routes = cosign_artifacts();
        routes.push(route(
            format!("/v2/repo/referrers/{}", digest()),
            200,
            FALLBACK_INDEX,
        ));
        let found = find(routes, Limits::default()).await.unwrap();
        assert_eq!(found, vec![SIGN.to_vec(), ATTEST_OTHER.to_vec()]);
    }

    #[tokio::test]
    async fn no_referrers_and_no_tag_is_none() {
        let found = find(cosign_artifacts(), Limits::default()).await.unwrap();
        assert!(found.is_empty());
    }

    #[tokio::test]
    async fn a_refused_fallback_tag_is_an_error_not_none() {
        let mut routes = cosign_artifacts();
        routes.push(route(
            fallback_path(),
            403,
            br#"{"errors":[{"code":"DENIED","message":"no"}]}"#,
        ));
        let err = find(routes, Limits::default()).await.unwrap_err();
        assert!(
            matches!(
                err,
                FetchProblem::Registry {
                    action: "fetching the referrers tag",
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.kind().contains("no\""), "{}", err.kind());
    }

    #[tokio::test]
    async fn an_oversized_referrers_list_is_an_error_not_none() {
        let mut routes = cosign_artifacts();
        let huge = vec![b' '; 200 * 1024];
        routes.push(route(
            format!("/v2/repo/referrers/{}", digest()),
            200,
            &huge,
        ));
        routes.push(route(fallback_path(), 200, FALLBACK_INDEX));
        let err = find(routes, Limits::default()).await.unwrap_err();
        assert!(
            matches!(
                err,
                FetchProblem::Oversized {
                    what: "referrers list",
                    limit: 65536,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_failing_referrers_api_is_an_error() {
        let mut routes = cosign_artifacts();
        routes.push(route(
            format!("/v2/repo/referrers/{}", digest()),
            500,
            b"oops",
        ));
        routes.push(route(fallback_path(), 200, FALLBACK_INDEX));
        let err = find(routes, Limits::default()).await.unwrap_err();
        assert!(matches!(err, FetchProblem::Registry { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_missing_listed_manifest_is_an_error() {
        let mut routes: Vec<_> = cosign_artifacts()
            .into_iter()
            .filter(|(p, ..)| !p.ends_with(&sha(ATTEST_MANIFEST)))
            .collect();
        routes.push(route(fallback_path(), 200, FALLBACK_INDEX));
        let err = find(routes, Limits::default()).await.unwrap_err();
        assert!(matches!(err, FetchProblem::Registry { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_tampered_bundle_layer_is_refused() {
        let mut routes: Vec<_> = cosign_artifacts()
            .into_iter()
            .filter(|(p, ..)| !p.ends_with(&sha(SIGN)))
            .collect();
        let mut tampered = SIGN.to_vec();
        tampered[10] ^= 1;
        routes.push(route(
            format!("/v2/repo/blobs/{}", sha(SIGN)),
            200,
            &tampered,
        ));
        routes.push(route(fallback_path(), 200, FALLBACK_INDEX));
        let err = find(routes, Limits::default()).await.unwrap_err();
        assert!(matches!(err, FetchProblem::DigestMismatch { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_silent_registry_times_out() {
        let mut routes = cosign_artifacts();
        routes.push(route(fallback_path(), 0, b""));
        let limits = Limits {
            request_timeout: Duration::from_millis(300),
            ..Limits::default()
        };
        let err = find(routes, limits).await.unwrap_err();
        assert!(matches!(err, FetchProblem::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn too_many_referrers_is_an_error() {
        let mut index: serde_json::Value = serde_json::from_slice(FALLBACK_INDEX).unwrap();
        let entry = index["manifests"][0].clone();
        index["manifests"] = serde_json::Value::Array(vec![entry; 17]);
        let mut routes = cosign_artifacts();
        routes.push(route(
            fallback_path(),
            200,
            &serde_json::to_vec(&index).unwrap(),
        ));
        let err = find(routes, Limits::default()).await.unwrap_err();
        assert!(
            matches!(err, FetchProblem::TooManyReferrers { count: 17, .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_image_under_the_fallback_tag_is_an_error() {
        let mut routes = cosign_artifacts();
        routes.push(route(fallback_path(), 200, SIGN_MANIFEST));
        assert!(find(routes, Limits::default()).await.is_err());
    }

    /// Signs a fresh image in the local registry of `make cluster-up` (198.19.255.1:5000, or
    /// `AIRLOCK_TEST_REGISTRY`) with cosign's new bundle format and finds exactly that signature;
    /// an unsigned image has no bundles. Needs `cosign` (v2.6+) and `crane` on PATH, as
    /// `/tmp/e2eenv.sh` or the e2e environment puts them.
    #[tokio::test]
    #[ignore = "needs the local registry of `make cluster-up`, cosign and crane"]
    async fn finds_and_verifies_a_signature_in_the_local_registry() {
        let registry = std::env::var("AIRLOCK_TEST_REGISTRY")
            .unwrap_or_else(|_| "198.19.255.1:5000".to_string());
        let dir = tempfile::tempdir().unwrap();
        let run = |program: &str, args: &[&str]| {
            let out = std::process::Command::new(program)
                .args(args)
                .current_dir(dir.path())
                .env("COSIGN_PASSWORD", "")
                .output()
                .unwrap_or_else(|e| panic!("running {program}: {e}"));
            assert!(
                out.status.success(),
                "{program} {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        let unique = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            .to_string();
        // A one-file image unique to this run: its referrers are this test's alone.
        std::fs::create_dir(dir.path().join("layer")).unwrap();
        std::fs::write(dir.path().join("layer/run"), &unique).unwrap();
        run("tar", &["-cf", "layer.tar", "-C", "layer", "run"]);
        let signed = format!("{registry}/cosign-bundle-test/signed:{unique}");
        let unsigned = format!("{registry}/cosign-bundle-test/unsigned:{unique}");
        for image in [&signed, &unsigned] {
            run(
                "crane",
                &["append", "--insecure", "-f", "layer.tar", "-t", image],
            );
        }
        let digest = run("crane", &["digest", "--insecure", &signed]);
        assert_eq!(run("crane", &["digest", "--insecure", &unsigned]), digest);

        run("cosign", &["generate-key-pair"]);
        // cosign's new-bundle code path ignores --allow-http-registry (v2.6.4) but speaks plain
        // HTTP to localhost: sign through a loopback forwarder.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = registry.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        let via_loopback = format!("localhost:{port}/cosign-bundle-test/signed@{digest}");
        let cosign = |args: &'static [&'static str]| {
            let via_loopback = via_loopback.clone();
            let dir = dir.path().to_path_buf();
            async move {
                let mut full: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                full.push(via_loopback);
                let out = tokio::process::Command::new("cosign")
                    .args(&full)
                    .current_dir(dir)
                    .env("COSIGN_PASSWORD", "")
                    .output()
                    .await
                    .unwrap();
                assert!(
                    out.status.success(),
                    "cosign {full:?}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        };
        cosign(&[
            "sign",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--new-bundle-format",
            "-y",
        ])
        .await;
        std::fs::write(dir.path().join("p.json"), "{}").unwrap();
        cosign(&[
            "attest",
            "--key",
            "cosign.key",
            "--tlog-upload=false",
            "--new-bundle-format",
            "--predicate",
            "p.json",
            "--type",
            "https://example.com/other",
            "-y",
        ])
        .await;
        let key = std::fs::read_to_string(dir.path().join("cosign.pub")).unwrap();

        let reader = BoundedReader::new(vec![registry.clone()]).unwrap();
        let auth = RegistryAuth::Anonymous;
        let limits = Limits::default();
        let found = find_bundles(&reader, &auth, &signed.parse().unwrap(), &digest, &limits)
            .await
            .unwrap();
        assert_eq!(found.len(), 2, "the signature and the attestation");
        let verdicts: Vec<_> = found
            .iter()
            .map(|b| verify_bundle(b, &digest, &key))
            .collect();
        assert_eq!(
            verdicts.iter().filter(|v| v.is_ok()).count(),
            1,
            "{verdicts:?}"
        );
        assert!(
            verdicts
                .iter()
                .any(|v| matches!(v, Err(BundleRefusal::PredicateType(_))))
        );

        let none = find_bundles(&reader, &auth, &unsigned.parse().unwrap(), &digest, &limits)
            .await
            .unwrap();
        assert!(none.is_empty());
    }
}
