//! `airlockctl bundle push` and `bundle pull`: a bundle (and its signature) as an OCI artifact in
//! an image registry, in the format the operator reads ([`airlock_plugin_shim::bundle`]'s
//! `OCI_*` constants):
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
//! The second layer is there only when the bundle is signed. Registries are reached anonymously.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_plugin_shim::bundle::{
    self, BundleError, DEFAULT_MAX_BYTES, OCI_ARTIFACT_TYPE, OCI_BUNDLE_MEDIA_TYPE,
    OCI_SIGNATURE_MEDIA_TYPE,
};
use airlock_plugin_shim::signing::{self, SigningError};
use clap::Args;
use futures::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::errors::OciDistributionError;
use oci_client::manifest::{OCI_IMAGE_MEDIA_TYPE, OciDescriptor, OciImageManifest, OciManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, ParseError, Reference};

use crate::signing::default_signature_path;

/// Media type of the OCI empty descriptor, the config of an artifact that has none.
pub const OCI_EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// Content of the OCI empty descriptor.
pub const OCI_EMPTY_CONTENT: &[u8] = b"{}";

/// A signature is 88 base64 characters and a newline; anything much larger is not one.
const MAX_SIGNATURE_BYTES: u64 = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// HOST:PORT of a registry to reach over plain HTTP instead of HTTPS, e.g. a local test
    /// registry. Repeat for several.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure: Vec<String>,
}

#[derive(Args, Debug)]
pub struct PushArgs {
    /// The bundle to push (from `airlockctl bundle pack`).
    pub bundle: PathBuf,
    /// Where to push it: REGISTRY/REPOSITORY:TAG, e.g. registry.example.com/plugins/hello:1.0.0.
    pub reference: String,
    /// The bundle's signature, pushed as the artifact's second layer. Default: BUNDLE.sig if it
    /// exists; without one the bundle is pushed unsigned.
    #[arg(long)]
    pub signature: Option<PathBuf>,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Largest bundle, packed or unpacked, in bytes (as the operator's --max-bundle-bytes).
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
}

#[derive(Args, Debug)]
pub struct PullArgs {
    /// The artifact to pull: REGISTRY/REPOSITORY:TAG or REGISTRY/REPOSITORY@sha256:...
    pub reference: String,
    /// Where to write the bundle; its signature, if the artifact has one, goes to OUTPUT.sig.
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Largest bundle to download, in bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("cannot read {what} {}: {source}; check the path", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the bundle {} is refused by the check the operator runs: {source}; pack it again with \
         `airlockctl bundle pack`",
        path.display()
    )]
    Refused {
        path: PathBuf,
        #[source]
        source: BundleError,
    },
    #[error("{}: {source}", path.display())]
    Signature {
        path: PathBuf,
        #[source]
        source: SigningError,
    },
    #[error("cannot create a temporary directory to check the bundle in: {0}; check TMPDIR")]
    Scratch(#[source] io::Error),
    #[error(
        "`{reference}` is not an image reference ({source}); write REGISTRY/REPOSITORY:TAG, e.g. \
         registry.example.com/plugins/hello:1.0.0"
    )]
    InvalidReference {
        reference: String,
        #[source]
        source: ParseError,
    },
    #[error(
        "`{0}` names a digest; a push needs a tag (REGISTRY/REPOSITORY:TAG): the digest is the \
         registry's answer, printed after the push"
    )]
    PushToDigest(String),
    #[error(
        "{action} {reference} failed: {source}; check the reference and that the registry is \
         reachable and allows anonymous access (for a plain-HTTP registry pass \
         --insecure-registry {registry})"
    )]
    Registry {
        action: &'static str,
        reference: String,
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error(
        "{reference} is not an Airlock bundle (artifactType {found}, expected \
         {OCI_ARTIFACT_TYPE}); push bundles with `airlockctl bundle push`"
    )]
    NotABundle { reference: String, found: String },
    #[error("{reference}: {problem}; push it again with `airlockctl bundle push`")]
    Malformed { reference: String, problem: String },
    #[error("{reference}: reading layer {digest}: {source}")]
    Download {
        reference: String,
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {}: {source}; check that its directory exists and is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
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
    let config = Config::new(OCI_EMPTY_CONTENT, OCI_EMPTY_MEDIA_TYPE.to_string(), None);
    let mut layers = vec![ImageLayer::new(
        bundle.to_vec(),
        OCI_BUNDLE_MEDIA_TYPE.to_string(),
        None,
    )];
    if let Some(signature) = signature {
        layers.push(ImageLayer::new(
            signature.as_bytes().to_vec(),
            OCI_SIGNATURE_MEDIA_TYPE.to_string(),
            None,
        ));
    }
    let mut manifest = OciImageManifest::build(&layers, &config, None);
    manifest.media_type = Some(OCI_IMAGE_MEDIA_TYPE.to_string());
    manifest.artifact_type = Some(OCI_ARTIFACT_TYPE.to_string());
    let manifest_json = serde_json::to_vec(&manifest)?;
    let manifest_digest = bundle::digest(&manifest_json);
    Ok(Artifact {
        config,
        layers,
        manifest_json,
        manifest_digest,
    })
}

/// What `bundle push` did.
#[derive(Debug)]
pub struct PushReport {
    /// `REFERENCE@sha256:...`
    pub pinned: String,
    pub bundle_digest: String,
    pub signed: Option<PathBuf>,
}

impl fmt::Display for PushReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pushed {}", self.pinned)?;
        writeln!(f, "bundle digest: {}", self.bundle_digest)?;
        match &self.signed {
            Some(path) => write!(f, "signature: {} (layer 1)", path.display()),
            None => write!(
                f,
                "signature: none (unsigned: only trust levels with allowUnsigned will run it)"
            ),
        }
    }
}

pub async fn push(args: &PushArgs) -> Result<PushReport, OciError> {
    let reference = parse_reference(&args.reference)?;
    if reference.digest().is_some() {
        return Err(OciError::PushToDigest(args.reference.clone()));
    }
    let bytes = fs::read(&args.bundle).map_err(|source| OciError::Read {
        what: "the bundle",
        path: args.bundle.clone(),
        source,
    })?;
    // Publish only what the operator accepts.
    let scratch = tempfile::tempdir().map_err(OciError::Scratch)?;
    let extracted = bundle::extract(&bytes, scratch.path(), args.max_bytes).map_err(|source| {
        OciError::Refused {
            path: args.bundle.clone(),
            source,
        }
    })?;

    let signature_path = match &args.signature {
        Some(path) => Some(path.clone()),
        None => Some(default_signature_path(&args.bundle)).filter(|p| p.exists()),
    };
    let signature = match &signature_path {
        Some(path) => {
            let text = fs::read_to_string(path).map_err(|source| OciError::Read {
                what: "the signature",
                path: path.clone(),
                source,
            })?;
            // Refuse to publish something that is not a signature at all.
            signing::parse_signature(&text).map_err(|source| OciError::Signature {
                path: path.clone(),
                source,
            })?;
            Some(text)
        }
        None => None,
    };

    let artifact = artifact(&bytes, signature.as_deref()).map_err(|e| OciError::Malformed {
        reference: args.reference.clone(),
        problem: format!("cannot serialise the manifest: {e}"),
    })?;
    let client = client(&args.registry);
    let registry_err = |action| {
        let shown = args.reference.clone();
        let registry = reference_registry(&reference);
        move |source| OciError::Registry {
            action,
            reference: shown,
            registry,
            source,
        }
    };
    client
        .store_auth_if_needed(reference.resolve_registry(), &RegistryAuth::Anonymous)
        .await;
    for layer in &artifact.layers {
        client
            .push_blob(&reference, layer.data.clone(), &layer.sha256_digest())
            .await
            .map_err(registry_err("pushing a layer to"))?;
    }
    client
        .push_blob(
            &reference,
            artifact.config.data.clone(),
            &artifact.config.sha256_digest(),
        )
        .await
        .map_err(registry_err("pushing the config to"))?;
    let content_type = OCI_IMAGE_MEDIA_TYPE
        .parse()
        .map_err(|e| OciError::Malformed {
            reference: args.reference.clone(),
            problem: format!("invalid content type: {e}"),
        })?;
    client
        .push_manifest_raw(&reference, artifact.manifest_json.clone(), content_type)
        .await
        .map_err(registry_err("pushing the manifest to"))?;

    Ok(PushReport {
        pinned: format!("{}@{}", args.reference, artifact.manifest_digest),
        bundle_digest: extracted.digest,
        signed: signature_path,
    })
}

/// What `bundle pull` did.
#[derive(Debug)]
pub struct PullReport {
    pub pinned: String,
    pub output: PathBuf,
    pub bundle_digest: String,
    pub signature: Option<PathBuf>,
    /// A signature file from before that did not belong to the pulled bundle and was removed.
    pub removed_stale: Option<PathBuf>,
}

impl fmt::Display for PullReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "pulled {}", self.pinned)?;
        writeln!(
            f,
            "wrote {} (bundle digest {})",
            self.output.display(),
            self.bundle_digest
        )?;
        match (&self.signature, &self.removed_stale) {
            (Some(sig), _) => write!(f, "wrote {}", sig.display())?,
            (None, Some(stale)) => write!(
                f,
                "the artifact is unsigned; removed the old {}",
                stale.display()
            )?,
            (None, None) => write!(f, "the artifact is unsigned")?,
        }
        if self.signature.is_some() {
            write!(
                f,
                "\nnext: airlockctl verify --key <NAME.pub> {}",
                self.output.display()
            )?;
        }
        Ok(())
    }
}

pub async fn pull(args: &PullArgs) -> Result<PullReport, OciError> {
    let reference = parse_reference(&args.reference)?;
    let client = client(&args.registry);
    let (manifest, manifest_digest) = client
        .pull_manifest(&reference, &RegistryAuth::Anonymous)
        .await
        .map_err(|source| OciError::Registry {
            action: "pulling",
            reference: args.reference.clone(),
            registry: reference_registry(&reference),
            source,
        })?;
    let OciManifest::Image(manifest) = manifest else {
        return Err(OciError::NotABundle {
            reference: args.reference.clone(),
            found: "(an image index)".to_string(),
        });
    };
    let (bundle_layer, signature_layer) = bundle_layers(&args.reference, &manifest)?;

    let bytes = download(
        &client,
        &reference,
        &args.reference,
        bundle_layer,
        args.max_bytes,
    )
    .await?;
    let signature = match signature_layer {
        Some(layer) => Some(
            download(
                &client,
                &reference,
                &args.reference,
                layer,
                MAX_SIGNATURE_BYTES,
            )
            .await?,
        ),
        None => None,
    };

    let write = |path: &Path, data: &[u8]| {
        crate::files::write_atomically(path, data, 0o644).map_err(|source| OciError::Write {
            path: path.to_path_buf(),
            source,
        })
    };
    write(&args.output, &bytes)?;
    let signature_path = default_signature_path(&args.output);
    let mut removed_stale = None;
    match &signature {
        Some(sig) => write(&signature_path, sig)?,
        // A signature left from an earlier pull would be taken for this bundle's.
        None => match fs::remove_file(&signature_path) {
            Ok(()) => removed_stale = Some(signature_path.clone()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(OciError::Write {
                    path: signature_path,
                    source,
                });
            }
        },
    }
    Ok(PullReport {
        pinned: pinned(&reference, &manifest_digest),
        output: args.output.clone(),
        bundle_digest: bundle::digest(&bytes),
        signature: signature.map(|_| signature_path),
        removed_stale,
    })
}

/// Checks that `manifest` is a bundle artifact; returns its bundle and signature layers.
fn bundle_layers<'m>(
    reference: &str,
    manifest: &'m OciImageManifest,
) -> Result<(&'m OciDescriptor, Option<&'m OciDescriptor>), OciError> {
    let found = manifest.artifact_type.as_deref().unwrap_or("(none)");
    if found != OCI_ARTIFACT_TYPE {
        return Err(OciError::NotABundle {
            reference: reference.to_string(),
            found: found.to_string(),
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
                "the artifact has {} layers; a bundle artifact has the bundle and optionally its \
                 signature",
                other.len()
            )));
        }
    };
    if bundle_layer.media_type != OCI_BUNDLE_MEDIA_TYPE {
        return Err(malformed(format!(
            "layer 0 has media type {}, expected {OCI_BUNDLE_MEDIA_TYPE}",
            bundle_layer.media_type
        )));
    }
    if let Some(s) = signature_layer
        && s.media_type != OCI_SIGNATURE_MEDIA_TYPE
    {
        return Err(malformed(format!(
            "layer 1 has media type {}, expected {OCI_SIGNATURE_MEDIA_TYPE}",
            s.media_type
        )));
    }
    Ok((bundle_layer, signature_layer))
}

/// Downloads one layer, at most `limit` bytes, and checks it against its descriptor's digest.
async fn download(
    client: &Client,
    reference: &Reference,
    shown: &str,
    layer: &OciDescriptor,
    limit: u64,
) -> Result<Vec<u8>, OciError> {
    let err = |source| OciError::Download {
        reference: shown.to_string(),
        digest: layer.digest.clone(),
        source,
    };
    let too_large = || {
        err(io::Error::other(format!(
            "the layer is larger than the limit of {limit} bytes (see --max-bytes)"
        )))
    };
    if !layer.digest.starts_with("sha256:") {
        return Err(err(io::Error::other(
            "only sha256 layer digests are supported",
        )));
    }
    if u64::try_from(layer.size).map_or(true, |size| size > limit) {
        return Err(too_large());
    }
    let mut stream = client
        .pull_blob_stream(reference, layer)
        .await
        .map_err(|source| OciError::Registry {
            action: "pulling a layer of",
            reference: shown.to_string(),
            registry: reference_registry(reference),
            source,
        })?;
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.map_err(err)?);
        if data.len() as u64 > limit {
            return Err(too_large());
        }
    }
    if bundle::digest(&data) != layer.digest {
        return Err(err(io::Error::other(
            "the content does not match its digest",
        )));
    }
    Ok(data)
}

fn client(args: &RegistryArgs) -> Client {
    Client::new(ClientConfig {
        protocol: ClientProtocol::HttpsExcept(args.insecure.clone()),
        connect_timeout: Some(CONNECT_TIMEOUT),
        read_timeout: Some(READ_TIMEOUT),
        ..Default::default()
    })
}

fn parse_reference(text: &str) -> Result<Reference, OciError> {
    text.parse().map_err(|source| OciError::InvalidReference {
        reference: text.to_string(),
        source,
    })
}

fn reference_registry(reference: &Reference) -> String {
    reference.resolve_registry().to_string()
}

/// `registry/repository[:tag]@digest`.
fn pinned(reference: &Reference, digest: &str) -> String {
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

#[cfg(test)]
mod tests {
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
                        "digest": bundle::digest(bundle),
                        "size": bundle.len(),
                    },
                    {
                        "mediaType": "application/vnd.airlock.bundle.signature.v1",
                        "digest": bundle::digest(b"c2ln\n"),
                        "size": 5,
                    },
                ],
            })
        );
        assert_eq!(a.manifest_digest, bundle::digest(&a.manifest_json));
    }

    #[test]
    fn an_unsigned_bundle_has_one_layer_and_reads_back() {
        let a = artifact(b"x", None).unwrap();
        let m: OciImageManifest = serde_json::from_slice(&a.manifest_json).unwrap();
        assert_eq!(m.layers.len(), 1);
        let (b, s) = bundle_layers("r", &m).unwrap();
        assert_eq!(b.digest, bundle::digest(b"x"));
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
    fn references_need_a_tag_to_push_and_print_pinned() {
        let r = parse_reference("198.19.255.1:5000/test/bundle:dev").unwrap();
        assert_eq!(
            pinned(&r, "sha256:ab"),
            "198.19.255.1:5000/test/bundle:dev@sha256:ab"
        );
        assert!(matches!(
            parse_reference("no spaces/in references:x"),
            Err(OciError::InvalidReference { .. })
        ));
    }
}
