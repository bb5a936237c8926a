//! Bundles as OCI artifacts: the one writer (`airlockctl bundle push`) and the one reader (the
//! operator's `spec.bundle.source.oci`, `airlockctl bundle pull`) of this format:
//!
//! ```json
//! { "schemaVersion": 2,
//!   "mediaType": "application/vnd.oci.image.manifest.v1+json",
//!   "artifactType": "application/vnd.airlock.bundle.v1",
//!   "config": { "mediaType": "application/vnd.oci.empty.v1+json", "size": 2,
//!               "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a" },
//!   "layers": [
//!     { "mediaType": "application/vnd.airlock.bundle.v1.tar+gzip", "digest": "<bundle digest>", ... },
//!     { "mediaType": "application/vnd.airlock.bundle.signature.v1", "digest": ..., ... } ] }
//! ```
//!
//! The second layer is there only when the bundle is signed. Every layer is size-checked before it
//! is downloaded and digest-checked after; every registry request has a deadline. Registries are
//! reached with the `RegistryAuth` the caller gives (anonymous, or credentials). A [`Client`]
//! remembers the first credentials it used per registry: use one client per credentials.

use std::fmt;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest};
pub use oci_client::secrets::RegistryAuth;
use oci_client::{Client, ParseError, Reference};

use crate::archive::digest;
pub use crate::bounded::{BoundedError, BoundedReader};

/// The manifest types a pull accepts (oci-client's list): OCI and Docker v2 manifests and
/// indexes.
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    OCI_IMAGE_MEDIA_TYPE,
    "application/vnd.oci.image.index.v1+json",
];

/// The largest manifest read: the distribution spec's 4 MiB, which registries accept at least.
/// A bundle artifact's manifest is under 1 KiB.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// `artifactType` of a bundle artifact.
pub const OCI_ARTIFACT_TYPE: &str = "application/vnd.airlock.bundle.v1";
/// Media type of layer 0, the bundle.
pub const OCI_BUNDLE_MEDIA_TYPE: &str = "application/vnd.airlock.bundle.v1.tar+gzip";
/// Media type of layer 1, the detached signature.
pub const OCI_SIGNATURE_MEDIA_TYPE: &str = "application/vnd.airlock.bundle.signature.v1";
/// Media type of the OCI empty descriptor, the config of an artifact that has none.
pub const OCI_EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Content of the OCI empty descriptor.
pub const OCI_EMPTY_CONTENT: &[u8] = b"{}";

/// What an Airlock artifact holds: its `artifactType`, the media type of layer 0 (its content)
/// and of layer 1 (the content's detached ed25519 signature, when there is one). Bundles and
/// catalog indexes are both such artifacts, read and written by the same code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// What it is, for messages: "bundle", "catalog index".
    pub name: &'static str,
    pub artifact_type: &'static str,
    pub content: &'static str,
    pub signature: &'static str,
    /// The command that pushes one, for messages.
    pub pushed_by: &'static str,
}

/// A plugin bundle.
pub const BUNDLE: Kind = Kind {
    name: "bundle",
    artifact_type: OCI_ARTIFACT_TYPE,
    content: OCI_BUNDLE_MEDIA_TYPE,
    signature: OCI_SIGNATURE_MEDIA_TYPE,
    pushed_by: "airlockctl bundle push",
};

/// A catalog index of signed plugins (`airlockctl catalog publish`).
pub const CATALOG: Kind = Kind {
    name: "catalog index",
    artifact_type: "application/vnd.airlock.catalog.v1",
    content: "application/vnd.airlock.catalog.v1+json",
    signature: "application/vnd.airlock.catalog.signature.v1",
    pushed_by: "airlockctl catalog publish",
};

/// A signature is 88 base64 characters and a newline; anything much larger is not one. The same
/// limit as a signature next to an HTTP or ConfigMap bundle.
pub const MAX_SIGNATURE_BYTES: u64 = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error(
        "`{reference}` is not a valid OCI reference ({source}); write REGISTRY/REPOSITORY:TAG, e.g. registry.example.com/plugins/hello:1.0.0"
    )]
    InvalidReference {
        reference: String,
        #[source]
        source: ParseError,
    },
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
    #[error(
        "{reference} is not an Airlock {} (artifactType {found}, expected {}); push one with `{}`",
        kind.name, kind.artifact_type, kind.pushed_by
    )]
    NotABundle {
        reference: String,
        found: String,
        kind: &'static Kind,
    },
    #[error(
        "{reference}: {problem}; push it again with `airlockctl bundle push` (a catalog index: `airlockctl catalog publish`)"
    )]
    Malformed { reference: String, problem: String },
    #[error("{reference}: the {what} layer {digest} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        reference: String,
        digest: String,
        size: i64,
        limit: u64,
    },
    #[error(
        "{reference}: layer {digest} is not what its digest says ({problem}); the artifact was changed or corrupted: push it again"
    )]
    DigestMismatch {
        reference: String,
        digest: String,
        problem: &'static str,
    },
}

impl OciError {
    /// This error in words that carry nothing a registry sent: what a status message may show
    /// about a registry a tenant named (the details go to the log). Error bodies and status codes
    /// would make a Plugin's status an oracle of what answers at an address.
    pub fn kind(&self) -> String {
        match self {
            OciError::Registry {
                action,
                reference,
                source,
            } => {
                format!("{action} {reference} failed: {}", registry_failure(source))
            }
            other => other.to_string(),
        }
    }

    /// Did the registry refuse access (401/403, or a token it would not give)?
    pub fn is_unauthorized(&self) -> bool {
        matches!(self, OciError::Registry { source, .. } if is_unauthorized(source))
    }

    /// Does the registry have no such repository or tag (a catalog index not published yet)?
    pub fn is_not_found(&self) -> bool {
        use OciDistributionError as E;
        match self {
            OciError::Registry { source, .. } => match source {
                E::ImageManifestNotFoundError(_) => true,
                E::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
                    matches!(
                        e.code,
                        oci_client::errors::OciErrorCode::ManifestUnknown
                            | oci_client::errors::OciErrorCode::NameUnknown
                    )
                }),
                E::ServerError { code, .. } => *code == 404,
                _ => false,
            },
            _ => false,
        }
    }
}

/// Did the registry refuse access (401/403, or a token it would not give)?
pub fn is_unauthorized(error: &OciDistributionError) -> bool {
    use OciDistributionError as E;
    match error {
        E::AuthenticationFailure(_) | E::UnauthorizedError { .. } => true,
        E::RegistryError { envelope, .. } => envelope.errors.iter().any(|e| {
            matches!(
                e.code,
                oci_client::errors::OciErrorCode::Unauthorized
                    | oci_client::errors::OciErrorCode::Denied
            )
        }),
        E::ServerError { code, .. } => *code == 401 || *code == 403,
        _ => false,
    }
}

/// What kind of failure a registry answer was, without its body (see [`OciError::kind`]).
pub fn registry_failure(error: &OciDistributionError) -> &'static str {
    use OciDistributionError as E;
    match error {
        E::AuthenticationFailure(_)
        | E::UnauthorizedError { .. }
        | E::RegistryTokenDecodeError(_) => "the registry refused access",
        E::ImageManifestNotFoundError(_) => "no such image or tag",
        E::RegistryError { envelope, .. }
            if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    oci_client::errors::OciErrorCode::ManifestUnknown
                        | oci_client::errors::OciErrorCode::NameUnknown
                )
            }) =>
        {
            "no such image or tag"
        }
        E::RegistryError { .. } | E::ServerError { .. } => "the registry answered with an error",
        E::RequestError(e) if e.is_timeout() => "the registry did not answer in time",
        E::RequestError(e) if e.is_connect() => "the connection to the registry failed",
        E::RequestError(_) | E::IoError(_) => "the request to the registry failed",
        _ => "the answer was not a valid registry answer",
    }
}

/// A registry client for bundle artifacts. `insecure`: `host:port` of registries reached over
/// plain HTTP (a local test registry).
pub fn client(insecure: Vec<String>) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(insecure),
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..Default::default()
    })
}

/// Parses an OCI reference, with an error that says how to write one.
pub fn parse_reference(text: &str) -> Result<Reference, OciError> {
    text.parse().map_err(|source| OciError::InvalidReference {
        reference: text.to_string(),
        source,
    })
}

/// `registry/repository[:tag]@digest`.
pub fn pinned(reference: &Reference, digest: &str) -> String {
    match reference.tag() {
        Some(tag) => format!(
            "{}/{}:{tag}@{digest}",
            reference.registry(),
            reference.repository()
        ),
        None => format!(
            "{}/{}@{digest}",
            reference.registry(),
            reference.repository()
        ),
    }
}

/// The artifact that represents a bundle in a registry.
pub struct Artifact {
    pub config: Config,
    pub layers: Vec<ImageLayer>,
    /// The manifest exactly as it is pushed.
    pub manifest_json: Vec<u8>,
    /// `sha256:` of [`Artifact::manifest_json`]: what the registry serves the artifact under.
    pub manifest_digest: String,
}

// `Config` has no `Debug`; the digest says all there is to say about the artifact.
impl fmt::Debug for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Artifact")
            .field("manifest_digest", &self.manifest_digest)
            .field("layers", &self.layers.len())
            .finish_non_exhaustive()
    }
}

/// Builds the artifact of `bundle` and its optional `signature` text. Pure; the manifest is
/// serialised here, once, so the printed digest is the digest of the bytes sent.
pub fn artifact(bundle: &[u8], signature: Option<&str>) -> Result<Artifact, serde_json::Error> {
    artifact_of(&BUNDLE, bundle, signature)
}

/// [`artifact`] of any [`Kind`]: `content` and its optional `signature` text.
pub fn artifact_of(
    kind: &Kind,
    content: &[u8],
    signature: Option<&str>,
) -> Result<Artifact, serde_json::Error> {
    let config = Config::new(OCI_EMPTY_CONTENT, OCI_EMPTY_MEDIA_TYPE.to_string(), None);
    let mut layers = vec![ImageLayer::new(
        content.to_vec(),
        kind.content.to_string(),
        None,
    )];
    if let Some(signature) = signature {
        layers.push(ImageLayer::new(
            signature.as_bytes().to_vec(),
            kind.signature.to_string(),
            None,
        ));
    }
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
    manifest.artifact_type = Some(kind.artifact_type.to_string());
    let manifest_json = serde_json::to_vec(&manifest)?;
    let manifest_digest = digest(&manifest_json);
    Ok(Artifact {
        config,
        layers,
        manifest_json,
        manifest_digest,
    })
}

/// Pushes `artifact` under `reference` (a tag). Returns the manifest digest.
pub async fn push(
    client: &Client,
    reference: &Reference,
    auth: &RegistryAuth,
    artifact: &Artifact,
) -> Result<String, OciError> {
    let shown = reference.whole();
    let registry_err = |action| {
        let shown = shown.clone();
        move |source| OciError::Registry {
            action,
            reference: shown,
            source,
        }
    };
    client
        .store_auth_if_needed(reference.resolve_registry(), auth)
        .await;
    for layer in &artifact.layers {
        client
            .push_blob(reference, layer.data.clone(), &layer.sha256_digest())
            .await
            .map_err(registry_err("pushing a layer to"))?;
    }
    client
        .push_blob(
            reference,
            artifact.config.data.clone(),
            &artifact.config.sha256_digest(),
        )
        .await
        .map_err(registry_err("pushing the config to"))?;
    let content_type = OCI_IMAGE_MEDIA_TYPE
        .parse()
        .map_err(|e| OciError::Malformed {
            reference: shown.clone(),
            problem: format!("invalid content type: {e}"),
        })?;
    client
        .push_manifest_raw(reference, artifact.manifest_json.clone(), content_type)
        .await
        .map_err(registry_err("pushing the manifest to"))?;
    Ok(artifact.manifest_digest.clone())
}

/// A bundle (or another [`Kind`]'s content) read from its artifact: both layers digest-checked.
#[derive(Debug)]
pub struct Pulled {
    /// The content: the bundle, or the catalog index.
    pub bundle: Vec<u8>,
    /// The signature layer's text, if the artifact has one.
    pub signature: Option<String>,
    /// The artifact's manifest digest.
    pub manifest_digest: String,
}

/// Reads the bundle artifact at `reference`: refuses anything that is not one, a manifest over
/// [`MAX_MANIFEST_BYTES`], a bundle layer over `max_bytes` before downloading it, and content
/// that does not match its digest. Each registry request must answer within `timeout`. Every
/// read is capped ([`BoundedReader`]): the registry may be a stranger's.
pub async fn pull(
    reader: &BoundedReader,
    reference: &Reference,
    auth: &RegistryAuth,
    max_bytes: u64,
    timeout: Duration,
) -> Result<Pulled, OciError> {
    pull_of(&BUNDLE, reader, reference, auth, max_bytes, timeout).await
}

/// [`pull`] of any [`Kind`].
pub async fn pull_of(
    kind: &'static Kind,
    reader: &BoundedReader,
    reference: &Reference,
    auth: &RegistryAuth,
    max_bytes: u64,
    timeout: Duration,
) -> Result<Pulled, OciError> {
    let shown = reference.whole();
    let (body, manifest_digest) = within(
        timeout,
        "pulling",
        &shown,
        reader.manifest(reference, auth, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_BYTES),
    )
    .await?
    .map_err(|error| match error {
        BoundedError::TooLarge { limit, .. } => OciError::Malformed {
            reference: shown.clone(),
            problem: format!("the manifest is larger than {limit} bytes"),
        },
        BoundedError::Registry(source) => OciError::Registry {
            action: "pulling",
            reference: shown.clone(),
            source,
        },
    })?;
    let manifest: OciManifest = serde_json::from_slice(&body).map_err(|e| OciError::Malformed {
        reference: shown.clone(),
        problem: format!("the manifest is not an OCI manifest ({e})"),
    })?;
    let OciManifest::Image(manifest) = manifest else {
        return Err(OciError::NotABundle {
            reference: shown,
            found: "(an image index)".to_string(),
            kind,
        });
    };
    let (bundle_layer, signature_layer) = layers_of(kind, &shown, &manifest)?;
    let bundle = download(
        reader,
        (reference, auth),
        bundle_layer,
        (kind.name, max_bytes),
        timeout,
    )
    .await?;
    let signature = match signature_layer {
        Some(layer) => {
            let limit = MAX_SIGNATURE_BYTES;
            let bytes = download(
                reader,
                (reference, auth),
                layer,
                ("signature", limit),
                timeout,
            )
            .await?;
            Some(String::from_utf8_lossy(&bytes).into_owned())
        }
        None => None,
    };
    Ok(Pulled {
        bundle,
        signature,
        manifest_digest,
    })
}

async fn within<T>(
    timeout: Duration,
    action: &'static str,
    reference: &str,
    request: impl Future<Output = T>,
) -> Result<T, OciError> {
    tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| OciError::Timeout {
            action,
            reference: reference.to_string(),
            timeout,
        })
}

/// Checks that `manifest` is a bundle artifact; returns its bundle and signature layers.
pub fn bundle_layers<'m>(
    reference: &str,
    manifest: &'m OciImageManifest,
) -> Result<(&'m OciDescriptor, Option<&'m OciDescriptor>), OciError> {
    layers_of(&BUNDLE, reference, manifest)
}

/// [`bundle_layers`] of any [`Kind`]: its content and signature layers.
pub fn layers_of<'m>(
    kind: &'static Kind,
    reference: &str,
    manifest: &'m OciImageManifest,
) -> Result<(&'m OciDescriptor, Option<&'m OciDescriptor>), OciError> {
    let found = manifest.artifact_type.as_deref().unwrap_or("(none)");
    if found != kind.artifact_type {
        return Err(OciError::NotABundle {
            reference: reference.to_string(),
            found: found.to_string(),
            kind,
        });
    }
    let malformed = |problem: String| OciError::Malformed {
        reference: reference.to_string(),
        problem,
    };
    let (bundle_layer, signature_layer) = match manifest.layers.as_slice() {
        [b] => (b, None),
        [b, s] => (b, Some(s)),
        other => {
            return Err(malformed(format!(
                "the artifact has {} layers; a {} artifact has the content and optionally its \
                 signature",
                other.len(),
                kind.name
            )));
        }
    };
    if bundle_layer.media_type != kind.content {
        return Err(malformed(format!(
            "layer 0 has media type {}, expected {}",
            bundle_layer.media_type, kind.content
        )));
    }
    if let Some(s) = signature_layer
        && s.media_type != kind.signature
    {
        return Err(malformed(format!(
            "layer 1 has media type {}, expected {}",
            s.media_type, kind.signature
        )));
    }
    Ok((bundle_layer, signature_layer))
}

/// Downloads one layer, at most `limit` bytes, and checks it against its descriptor's digest.
/// The read stops at the descriptor's size: a registry sending more is sending something else.
async fn download(
    reader: &BoundedReader,
    (reference, auth): (&Reference, &RegistryAuth),
    layer: &OciDescriptor,
    (what, limit): (&'static str, u64),
    timeout: Duration,
) -> Result<Vec<u8>, OciError> {
    let shown = reference.whole();
    let mismatch = |problem| OciError::DigestMismatch {
        reference: shown.clone(),
        digest: layer.digest.clone(),
        problem,
    };
    let Some(layer) = fetchable(layer) else {
        return Err(mismatch(
            "only sha256 layer digests (sha256:<64 lowercase hex digits>) are supported",
        ));
    };
    let size = match u64::try_from(layer.size) {
        Ok(size) if size <= limit => size,
        _ => {
            return Err(OciError::TooLarge {
                what,
                reference: shown.clone(),
                digest: layer.digest.clone(),
                size: layer.size,
                limit,
            });
        }
    };
    let read = reader.blob(reference, &layer.digest, auth, (what, size));
    within(timeout, "pulling a layer of", &shown, read)
        .await?
        .map_err(|error| match error {
            BoundedError::TooLarge { .. } => {
                mismatch("the registry sent more bytes than the layer's size")
            }
            BoundedError::Registry(OciDistributionError::DigestError(_)) => {
                mismatch("the content does not match the digest")
            }
            BoundedError::Registry(source) => OciError::Registry {
                action: "pulling a layer of",
                reference: shown.clone(),
                source,
            },
        })
}

/// Whether `digest` is exactly `sha256:` and 64 lowercase hex digits, the only digests Airlock
/// pins or fetches by.
pub fn is_sha256_digest(digest: &str) -> bool {
    digest.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// `layer` as it may be fetched: `None` unless its digest is [`is_sha256_digest`] (the digest
/// goes into the request path: anything else could name another path on the registry), and
/// without `urls` (oci-client tries those addresses when the registry fails: hosts the
/// manifest's writer chose, outside every registry check of the caller).
pub fn fetchable(layer: &OciDescriptor) -> Option<OciDescriptor> {
    is_sha256_digest(&layer.digest).then(|| OciDescriptor {
        urls: None,
        ..layer.clone()
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_registry_failure_shows_its_kind_never_what_the_server_sent() {
        let answer = OciDistributionError::ServerError {
            code: 500,
            url: "http://169.254.169.254/v2/x/manifests/latest".into(),
            message: "ami-id: secret-instance-data".into(),
        };
        let e = OciError::Registry {
            action: "resolving",
            reference: "169.254.169.254/x:latest".into(),
            source: answer,
        };
        let shown = e.kind();
        assert!(!shown.contains("secret"), "{shown}");
        assert!(!shown.contains("500"), "no status code either: {shown}");
        assert!(shown.contains("answered with an error"), "{shown}");
    }

    use serde_json::{Value, json};

    use super::*;

    const EMPTY_DIGEST: &str =
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";

    #[test]
    fn the_manifest_is_a_bundle_artifact_with_an_empty_config() {
        let bundle = b"pretend gzip";
        let a = artifact(bundle, Some("c2ln\n")).unwrap();
        let m: Value = serde_json::from_slice(&a.manifest_json).unwrap();
        assert_eq!(
            m,
            json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "artifactType": "application/vnd.airlock.bundle.v1",
                "config": {
                    "mediaType": "application/vnd.oci.empty.v1+json",
                    "digest": EMPTY_DIGEST,
                    "size": 2,
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.airlock.bundle.v1.tar+gzip",
                        "digest": digest(bundle),
                        "size": bundle.len(),
                    },
                    {
                        "mediaType": "application/vnd.airlock.bundle.signature.v1",
                        "digest": digest(b"c2ln\n"),
                        "size": 5,
                    },
                ],
            })
        );
        assert_eq!(a.manifest_digest, digest(&a.manifest_json));
    }

    #[test]
    fn an_unsigned_bundle_has_one_layer_and_reads_back() {
        let a = artifact(b"x", None).unwrap();
        let m: OciImageManifest = serde_json::from_slice(&a.manifest_json).unwrap();
        assert_eq!(m.layers.len(), 1);
        let (b, s) = bundle_layers("r", &m).unwrap();
        assert_eq!(b.digest, digest(b"x"));
        assert!(s.is_none());
    }

    #[test]
    fn other_artifacts_are_not_taken_for_bundles() {
        let a = artifact(b"x", Some("sig")).unwrap();
        let mut m: OciImageManifest = serde_json::from_slice(&a.manifest_json).unwrap();
        m.artifact_type = None;
        assert!(matches!(
            bundle_layers("r", &m),
            Err(OciError::NotABundle { .. })
        ));
        m.artifact_type = Some(OCI_ARTIFACT_TYPE.into());
        m.layers.swap(0, 1);
        let e = bundle_layers("r", &m).unwrap_err().to_string();
        assert!(e.contains("layer 0 has media type"), "{e}");
    }

    #[test]
    fn references_print_pinned_and_bad_ones_say_how_to_write_them() {
        let r = parse_reference("198.19.255.1:5000/test/bundle:dev").unwrap();
        assert_eq!(
            pinned(&r, "sha256:ab"),
            "198.19.255.1:5000/test/bundle:dev@sha256:ab"
        );
        let e = parse_reference("no spaces/in references:x").unwrap_err();
        assert!(e.to_string().contains("REGISTRY/REPOSITORY:TAG"), "{e}");
    }

    #[test]
    fn only_plain_sha256_layers_are_fetched_and_never_from_their_urls() {
        use super::{OciDescriptor, fetchable};
        let hex = "a".repeat(64);
        let layer = |digest: String| OciDescriptor {
            media_type: "application/octet-stream".into(),
            digest,
            size: 3,
            urls: Some(vec!["http://169.254.169.254/latest/meta-data".into()]),
            annotations: None,
            artifact_type: None,
        };
        let ok = fetchable(&layer(format!("sha256:{hex}"))).unwrap();
        assert_eq!(ok.urls, None);
        assert_eq!(ok.digest, format!("sha256:{hex}"));
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha256:/../../../team-b/x/blobs/{hex}"),
            format!("sha512:{}", "a".repeat(128)),
            format!("sha256:{hex}/../x"),
        ] {
            assert!(fetchable(&layer(bad.clone())).is_none(), "{bad}");
        }
    }
}
