//! `airlockctl sign` and `airlockctl verify`: detached ed25519 signatures of bundles, in the one
//! format the operator and the shim check ([`airlock_bundle::signing`]). The signature of
//! `x.tar.gz` lives beside it as `x.tar.gz.sig`, as it does in ConfigMaps and OCI artifacts.

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use airlock_bundle::Manifest;
use airlock_bundle::signing::{self, SigningError};
use airlock_bundle::{self as bundle, BundleError, DEFAULT_MAX_BYTES, SIGNATURE_SUFFIX};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;

use crate::files::{self, FileError};

/// `verify`: the signature verifies and the bundle is accepted.
pub const EXIT_VALID: u8 = 0;
/// `verify`: the signature does not verify under any of the keys.
pub const EXIT_NOT_SIGNED: u8 = 1;
/// `verify`: the command line, a file or the bundle is unusable; nothing was verified.
pub const EXIT_UNUSABLE: u8 = 2;

/// `<BUNDLE>.sig`: where a bundle's signature is unless told otherwise.
pub fn default_signature_path(bundle: &Path) -> PathBuf {
    let mut path = OsString::from(bundle.as_os_str());
    path.push(SIGNATURE_SUFFIX);
    PathBuf::from(path)
}

#[derive(Args, Debug)]
pub struct SignArgs {
    /// The private key: NAME.key from `airlockctl keygen` (or any ed25519 PKCS#8 PEM key, e.g.
    /// from `openssl genpkey -algorithm ed25519`). It is read here and sent nowhere.
    #[arg(long)]
    pub key: PathBuf,
    /// The bundle to sign (from `airlockctl bundle pack`).
    pub bundle: PathBuf,
    /// Where to write the signature. Default: BUNDLE.sig.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("{}: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: SigningError,
    },
}

/// What `sign` did.
#[derive(Debug)]
pub struct Signed {
    pub bundle: PathBuf,
    pub signature_path: PathBuf,
    pub digest: String,
    /// Base64 of the raw public key that verifies the signature.
    pub public_raw_b64: String,
}

impl fmt::Display for Signed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "wrote {}", self.signature_path.display())?;
        writeln!(f, "digest: {}", self.digest)?;
        writeln!(f, "public key (ed25519): {}", self.public_raw_b64)?;
        write!(
            f,
            "next: airlockctl verify --key <NAME.pub> {}",
            self.bundle.display()
        )
    }
}

pub fn sign(args: &SignArgs) -> Result<Signed, SignError> {
    let key_text = files::read_to_string(&args.key, "the private key")?;
    warn_if_readable_by_others(&args.key);
    let key = signing::parse_private_key(&key_text).map_err(|source| SignError::Key {
        path: args.key.clone(),
        source,
    })?;
    let bytes = files::read(&args.bundle, "the bundle")?;
    let digest = bundle::digest(&bytes);
    let signature = signing::sign(&key, &digest);
    let signature_path = args
        .output
        .clone()
        .unwrap_or_else(|| default_signature_path(&args.bundle));
    files::write_atomically(&signature_path, format!("{signature}\n").as_bytes(), 0o644)?;
    Ok(Signed {
        bundle: args.bundle.clone(),
        signature_path,
        digest,
        public_raw_b64: B64.encode(key.verifying_key().to_bytes()),
    })
}

/// A private key others can read is as good as published; say so, but do not refuse: the file
/// system (or a secrets mount) may be the user's business.
fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        eprintln!(
            "airlockctl: warning: {} is readable by other users; `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// A public key to check the signature against: NAME.pub from `airlockctl keygen`, or a file
    /// holding the base64 of a trust policy's `spec.keys[].ed25519`. Repeat for several keys; the
    /// first that verifies is reported.
    #[arg(long = "key", value_name = "KEY", required = true)]
    pub keys: Vec<PathBuf>,
    /// The bundle to verify.
    pub bundle: PathBuf,
    /// The signature. Default: BUNDLE.sig.
    #[arg(long)]
    pub signature: Option<PathBuf>,
    /// Largest bundle, packed or unpacked, in bytes (as the operator's --max-bundle-bytes).
    #[arg(long, default_value_t = DEFAULT_MAX_BYTES)]
    pub max_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error(
        "there is no signature at {}; sign the bundle with `airlockctl sign`, or pass \
         --signature",
        .0.display()
    )]
    NoSignature(PathBuf),
    #[error("{}: {source}", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: SigningError,
    },
    #[error("{}: {source}", path.display())]
    Signature {
        path: PathBuf,
        #[source]
        source: SigningError,
    },
    #[error(
        "the signature does NOT verify for bundle {digest} under any of the keys tried ({}): the \
         bundle changed after it was signed, or it was signed with another key",
        tried.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NotSigned { digest: String, tried: Vec<PathBuf> },
    #[error(
        "the signature verifies (key {}), but the bundle {digest} is refused by the check the \
         operator runs: {source}; fix the plugin directory, pack and sign it again",
        key.display()
    )]
    Refused {
        key: PathBuf,
        digest: String,
        #[source]
        source: BundleError,
    },
    #[error("cannot create a temporary directory to unpack the bundle into: {0}; check TMPDIR")]
    Scratch(#[source] io::Error),
}

impl VerifyError {
    /// The exit code documented in `airlockctl verify --help`.
    pub fn exit_code(&self) -> u8 {
        match self {
            VerifyError::NotSigned { .. } => EXIT_NOT_SIGNED,
            _ => EXIT_UNUSABLE,
        }
    }
}

/// A bundle whose signature verified and which the operator's check accepts.
#[derive(Debug)]
pub struct Verified {
    /// The key file that verified the signature.
    pub key: PathBuf,
    pub digest: String,
    pub manifest: Manifest,
}

impl fmt::Display for Verified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = &self.manifest;
        let join = |items: Vec<&str>| {
            if items.is_empty() {
                "(none)".to_string()
            } else {
                items.join(", ")
            }
        };
        writeln!(f, "signature:   valid, signed by {}", self.key.display())?;
        writeln!(f, "digest:      {}", self.digest)?;
        writeln!(f, "name:        {}", m.name)?;
        writeln!(f, "version:     {}", m.version)?;
        writeln!(f, "apiVersion:  {}", m.api_version)?;
        writeln!(
            f,
            "hooks:       {}",
            join(m.hooks.iter().map(|h| h.as_str()).collect())
        )?;
        writeln!(
            f,
            "permissions: {}",
            join(m.permissions.iter().map(|p| p.as_str()).collect())
        )?;
        writeln!(f, "entryPoint:  {}", m.entry_point.join(" "))?;
        write!(
            f,
            "imageDigest: {}",
            m.image_digest
                .as_deref()
                .unwrap_or("(none: the bundle runs with whatever image the Plugin names)")
        )
    }
}

pub fn verify(args: &VerifyArgs) -> Result<Verified, VerifyError> {
    let mut keys = Vec::with_capacity(args.keys.len());
    for path in &args.keys {
        let text = files::read_to_string(path, "the public key")?;
        let key = signing::parse_public_key(&text).map_err(|source| VerifyError::Key {
            path: path.clone(),
            source,
        })?;
        keys.push((path.clone(), key));
    }

    let signature_path = args
        .signature
        .clone()
        .unwrap_or_else(|| default_signature_path(&args.bundle));
    let signature_text = match files::read_to_string(&signature_path, "the signature") {
        Err(FileError::Read { path, source, .. })
            if source.kind() == io::ErrorKind::NotFound && args.signature.is_none() =>
        {
            return Err(VerifyError::NoSignature(path));
        }
        read => read?,
    };
    let signature =
        signing::parse_signature(&signature_text).map_err(|source| VerifyError::Signature {
            path: signature_path.clone(),
            source,
        })?;

    let bytes = files::read(&args.bundle, "the bundle")?;
    let digest = bundle::digest(&bytes);

    // The signature first: a tampered bundle is "not signed" (exit 1) even when the tampering
    // also broke the archive.
    let Some(key) = signing::signer(&keys, &digest, &signature).cloned() else {
        return Err(VerifyError::NotSigned {
            digest,
            tried: args.keys.clone(),
        });
    };

    let scratch = tempfile::tempdir().map_err(VerifyError::Scratch)?;
    let extracted = bundle::extract(&bytes, scratch.path(), args.max_bytes).map_err(|source| {
        VerifyError::Refused {
            key: key.clone(),
            digest: digest.clone(),
            source,
        }
    })?;
    Ok(Verified {
        key,
        digest: extracted.digest,
        manifest: extracted.manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_signature_is_beside_the_bundle() {
        assert_eq!(
            default_signature_path(Path::new("out/hello.tar.gz")),
            Path::new("out/hello.tar.gz.sig")
        );
    }

    #[test]
    fn only_a_failed_signature_is_exit_code_1() {
        let not_signed = VerifyError::NotSigned {
            digest: "sha256:00".into(),
            tried: vec![PathBuf::from("a.pub"), PathBuf::from("b.pub")],
        };
        assert_eq!(not_signed.exit_code(), EXIT_NOT_SIGNED);
        assert!(not_signed.to_string().contains("a.pub, b.pub"));
        assert_eq!(
            VerifyError::NoSignature(PathBuf::from("x.sig")).exit_code(),
            EXIT_UNUSABLE
        );
    }
}
