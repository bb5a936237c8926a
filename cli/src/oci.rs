//! `airlockctl bundle push` and `bundle pull`: a bundle (and its signature) as an OCI artifact in
//! an image registry, written and read by [`airlock_bundle::oci`], the same code the operator reads
//! `spec.bundle.source.oci` with. Registries are reached with the credentials `docker login`
//! (or `crane auth login`, `cosign login`) stored for them in the docker config
//! (`$DOCKER_CONFIG/config.json`, default `~/.docker/config.json`, credential helpers included);
//! anonymously when it has none.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

use airlock_bundle::oci::{self, OciError as ArtifactError};
use airlock_bundle::signing::{self, SigningError};
use airlock_bundle::{self as bundle, BundleError, DEFAULT_MAX_BYTES};
use clap::Args;

use crate::files::{self, FileError};
use crate::signing::default_signature_path;

/// How long one registry request may take before the command gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

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
    #[error(transparent)]
    File(#[from] FileError),
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
        "`{0}` names a digest; a push needs a tag (REGISTRY/REPOSITORY:TAG): the digest is the \
         registry's answer, printed after the push"
    )]
    PushToDigest(String),
    #[error(
        "{source}; check the reference, that the registry is reachable and that the docker config has credentials for {registry} if it is private (`docker login {registry}`; for a plain-HTTP registry pass --insecure-registry {registry})"
    )]
    Registry {
        registry: String,
        #[source]
        source: ArtifactError,
    },
    #[error("{problem} (docker config {}); fix it with `docker login {registry}` (or `crane auth login`), or remove the entry to go anonymous", path.display())]
    Credentials {
        registry: String,
        path: PathBuf,
        problem: String,
    },
    #[error(transparent)]
    Artifact(ArtifactError),
    #[error("the HTTP client could not start ({0}); check the system's TLS setup")]
    Client(String),
    #[error("cannot serialise the artifact manifest: {0}")]
    Manifest(#[source] serde_json::Error),
}

impl From<ArtifactError> for OciError {
    /// Registry trouble gets the hint about reachability and --insecure-registry; an artifact
    /// that is not a bundle says so on its own.
    fn from(e: ArtifactError) -> Self {
        let registry = match &e {
            ArtifactError::Registry { reference, .. }
            | ArtifactError::Timeout { reference, .. } => Some(
                reference
                    .split('/')
                    .next()
                    .unwrap_or(reference.as_str())
                    .to_string(),
            ),
            _ => None,
        };
        match registry {
            Some(registry) => OciError::Registry {
                registry,
                source: e,
            },
            None => OciError::Artifact(e),
        }
    }
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
    let reference = oci::parse_reference(&args.reference)?;
    if reference.digest().is_some() {
        return Err(OciError::PushToDigest(args.reference.clone()));
    }
    let bytes = files::read(&args.bundle, "the bundle")?;
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
            let text = files::read_to_string(path, "the signature")?;
            // Refuse to publish something that is not a signature at all.
            signing::parse_signature(&text).map_err(|source| OciError::Signature {
                path: path.clone(),
                source,
            })?;
            Some(text)
        }
        None => None,
    };

    let artifact = oci::artifact(&bytes, signature.as_deref()).map_err(OciError::Manifest)?;
    let client = oci::client(args.registry.insecure.clone());
    let auth = registry_auth(reference.registry())?;
    let digest = oci::push(&client, &reference, &auth, &artifact).await?;
    Ok(PushReport {
        pinned: format!("{}@{digest}", args.reference),
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
    pub signature: PulledSignature,
}

/// What `bundle pull` did about OUTPUT.sig.
#[derive(Debug)]
pub enum PulledSignature {
    /// Wrote the artifact's signature there.
    Wrote(PathBuf),
    /// The artifact is unsigned; removed a signature file from before, which did not belong to
    /// the pulled bundle.
    RemovedStale(PathBuf),
    /// The artifact is unsigned, and there was no signature file.
    Unsigned,
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
        match &self.signature {
            PulledSignature::Wrote(sig) => write!(
                f,
                "wrote {}\nnext: airlockctl verify --key <NAME.pub> {}",
                sig.display(),
                self.output.display()
            ),
            PulledSignature::RemovedStale(stale) => write!(
                f,
                "the artifact is unsigned; removed the old {}",
                stale.display()
            ),
            PulledSignature::Unsigned => write!(f, "the artifact is unsigned"),
        }
    }
}

pub async fn pull(args: &PullArgs) -> Result<PullReport, OciError> {
    let reference = oci::parse_reference(&args.reference)?;
    let reader = oci::BoundedReader::new(args.registry.insecure.clone())
        .map_err(|e| OciError::Client(e.to_string()))?;
    let auth = registry_auth(reference.registry())?;
    let pulled = oci::pull(&reader, &reference, &auth, args.max_bytes, REQUEST_TIMEOUT).await?;
    let (bytes, signature) = (pulled.bundle, pulled.signature);

    files::write_atomically(&args.output, &bytes, 0o644)?;
    let signature_path = default_signature_path(&args.output);
    let signature = match &signature {
        Some(sig) => {
            files::write_atomically(&signature_path, sig.as_bytes(), 0o644)?;
            PulledSignature::Wrote(signature_path)
        }
        // A signature left from an earlier pull would be taken for this bundle's.
        None if files::remove_if_present(&signature_path)? => {
            PulledSignature::RemovedStale(signature_path)
        }
        None => PulledSignature::Unsigned,
    };
    Ok(PullReport {
        pinned: oci::pinned(&reference, &pulled.manifest_digest),
        output: args.output.clone(),
        bundle_digest: bundle::digest(&bytes),
        signature,
    })
}

/// Pulls an artifact of `kind` at `reference` with the docker config's credentials: its content
/// (at most `max_bytes`), its signature if any, and the reference pinned by digest. `None` when
/// the registry has no such repository or tag.
pub async fn pull_kind(
    kind: &'static oci::Kind,
    reference: &str,
    registry: &RegistryArgs,
    max_bytes: u64,
) -> Result<Option<(oci::Pulled, String)>, OciError> {
    let parsed = oci::parse_reference(reference)?;
    let reader = oci::BoundedReader::new(registry.insecure.clone())
        .map_err(|e| OciError::Client(e.to_string()))?;
    let auth = registry_auth(parsed.registry())?;
    match oci::pull_of(kind, &reader, &parsed, &auth, max_bytes, REQUEST_TIMEOUT).await {
        Ok(pulled) => {
            let pinned = oci::pinned(&parsed, &pulled.manifest_digest);
            Ok(Some((pulled, pinned)))
        }
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Pushes `content` and its `signature` as an artifact of `kind` to `reference` (a tag); the
/// reference pinned by digest.
pub async fn push_kind(
    kind: &oci::Kind,
    reference: &str,
    registry: &RegistryArgs,
    content: &[u8],
    signature: &str,
) -> Result<String, OciError> {
    let parsed = oci::parse_reference(reference)?;
    if parsed.digest().is_some() {
        return Err(OciError::PushToDigest(reference.to_string()));
    }
    let artifact = oci::artifact_of(kind, content, Some(signature)).map_err(OciError::Manifest)?;
    let client = oci::client(registry.insecure.clone());
    let auth = registry_auth(parsed.registry())?;
    let digest = oci::push(&client, &parsed, &auth, &artifact).await?;
    Ok(oci::pinned(&parsed, &digest))
}

/// Where the docker config is: `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`.
fn docker_config_path() -> Option<PathBuf> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
    };
    Some(dir.join("config.json"))
}

/// The credentials the docker config holds for `registry`; anonymous when there is no config or
/// no entry for it. A config that cannot be used is an error, not a silent anonymous request.
fn registry_auth(registry: &str) -> Result<oci::RegistryAuth, OciError> {
    let Some(path) = docker_config_path() else {
        return Ok(oci::RegistryAuth::Anonymous);
    };
    match std::fs::read(&path) {
        Ok(config) => auth_from_config(&config, registry, &path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(oci::RegistryAuth::Anonymous),
        Err(e) => Err(OciError::Credentials {
            registry: registry.to_string(),
            path,
            problem: format!("cannot read it: {e}"),
        }),
    }
}

fn auth_from_config(
    config: &[u8],
    registry: &str,
    path: &std::path::Path,
) -> Result<oci::RegistryAuth, OciError> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let problem = |problem: String| OciError::Credentials {
        registry: registry.to_string(),
        path: path.to_path_buf(),
        problem,
    };
    match docker_credential::get_credential_from_reader(config, registry) {
        Ok(DockerCredential::UsernamePassword(user, password)) => {
            Ok(oci::RegistryAuth::Basic(user, password))
        }
        Ok(DockerCredential::IdentityToken(_)) => Err(problem(format!(
            "the entry for {registry} holds an identity token, which airlockctl cannot use; log in with a user name and password (or access token)"
        ))),
        Err(E::NoCredentialConfigured) => Ok(oci::RegistryAuth::Anonymous),
        // A helper's stdout may hold a credential: only its name and stderr are shown.
        Err(E::HelperFailure { helper, stderr, .. }) => Err(problem(format!(
            "the credential helper docker-credential-{helper} failed: {}",
            stderr.trim()
        ))),
        Err(e) => Err(problem(format!(
            "its entry for {registry} is unusable: {e}"
        ))),
    }
}

#[cfg(test)]
mod credential_tests {
    use super::*;

    fn auth(config: &str, registry: &str) -> Result<oci::RegistryAuth, OciError> {
        auth_from_config(
            config.as_bytes(),
            registry,
            std::path::Path::new("config.json"),
        )
    }

    #[test]
    fn the_docker_config_entry_of_the_registry_is_used_and_others_go_anonymous() {
        // "robot:s3cret"
        let config = r#"{"auths":{"reg.example:5001":{"auth":"cm9ib3Q6czNjcmV0"}}}"#;
        match auth(config, "reg.example:5001") {
            Ok(oci::RegistryAuth::Basic(user, password)) => {
                assert_eq!((user.as_str(), password.as_str()), ("robot", "s3cret"));
            }
            other => panic!("expected Basic, got {other:?}"),
        }
        assert!(matches!(
            auth(config, "other.example"),
            Ok(oci::RegistryAuth::Anonymous)
        ));
    }

    #[test]
    fn an_unusable_entry_is_an_error_that_shows_no_secret() {
        let config = r#"{"auths":{"reg.example":{"auth":"!!not-base64-s3cret"}}}"#;
        let e = auth(config, "reg.example").expect_err("refused");
        let text = e.to_string();
        assert!(text.contains("docker login reg.example"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
        let token = r#"{"auths":{"reg.example":{"identitytoken":"tok-s3cret"}}}"#;
        let text = auth(token, "reg.example").expect_err("refused").to_string();
        assert!(
            text.contains("identity token") && !text.contains("tok-s3cret"),
            "{text}"
        );
    }
}
