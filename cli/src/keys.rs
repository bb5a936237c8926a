//! `airlockctl keygen`: a fresh ed25519 key pair for signing bundles, written as `NAME.key`
//! (PKCS#8 PEM, mode 0600) and `NAME.pub` (SPKI PEM). The private key is made and kept on this
//! machine; only the public key goes into a cluster's PluginTrustPolicy.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use airlock_bundle::signing::{self, SigningError};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::Args;

/// Suffix of the private key file.
pub const PRIVATE_SUFFIX: &str = ".key";
/// Suffix of the public key file.
pub const PUBLIC_SUFFIX: &str = ".pub";

/// Longest key name: `spec.keys[].name` of a PluginTrustPolicy allows 63 characters.
const MAX_NAME_LEN: usize = 63;

#[derive(Args, Debug)]
pub struct KeygenArgs {
    /// Name of the key pair: the files are NAME.key and NAME.pub, and the hint uses it as the
    /// key's name in the trust policy (letters, digits, `-`, `_`, `.`; at most 63).
    pub name: String,
    /// Directory to write the two files to (created if missing).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Replace NAME.key and NAME.pub if they exist. The old private key is gone afterwards:
    /// bundles signed with it verify only as long as policies keep trusting its public key.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    #[error(
        "`{0}` is not a usable key name; use 1-{MAX_NAME_LEN} letters, digits, `-`, `_` or `.`, \
         not starting with `.` (it becomes a file name and spec.keys[].name)"
    )]
    InvalidName(String),
    #[error(
        "{} already exists; keygen never overwrites a key by accident: pick another name or \
         --dir, or pass --force to replace it",
        .0.display()
    )]
    Exists(PathBuf),
    #[error("cannot write {}: {source}; check that the directory is writable", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Signing(#[from] SigningError),
}

/// What keygen wrote.
#[derive(Debug)]
pub struct Generated {
    pub name: String,
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    pub public_pem: String,
    /// Base64 of the raw 32-byte public key: the form `spec.keys[].ed25519` takes.
    pub public_raw_b64: String,
}

impl fmt::Display for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "wrote {} (private key, mode 0600: keep it on this machine, never commit or upload it)",
            self.private_path.display()
        )?;
        writeln!(f, "wrote {} (public key)", self.public_path.display())?;
        writeln!(f)?;
        write!(f, "{}", self.public_pem)?;
        writeln!(f)?;
        writeln!(
            f,
            "To trust bundles signed with this key, add it to a PluginTrustPolicy:"
        )?;
        writeln!(f)?;
        writeln!(f, "  spec:")?;
        writeln!(f, "    keys:")?;
        writeln!(f, "      - name: {}", self.name)?;
        writeln!(f, "        ed25519: {}", self.public_raw_b64)?;
        writeln!(f, "        trustLevel: Trusted")?;
        writeln!(f)?;
        write!(
            f,
            "Then sign bundles with `airlockctl sign --key {} <bundle.tar.gz>`.",
            self.private_path.display()
        )
    }
}

pub fn run(args: &KeygenArgs) -> Result<Generated, KeygenError> {
    if !is_key_name(&args.name) {
        return Err(KeygenError::InvalidName(args.name.clone()));
    }
    let private_path = args.dir.join(format!("{}{PRIVATE_SUFFIX}", args.name));
    let public_path = args.dir.join(format!("{}{PUBLIC_SUFFIX}", args.name));
    // Check both before writing either: a refusal must leave no half-made pair behind.
    if !args.force {
        for path in [&private_path, &public_path] {
            if path.symlink_metadata().is_ok() {
                return Err(KeygenError::Exists(path.clone()));
            }
        }
    }
    fs::create_dir_all(&args.dir).map_err(|source| KeygenError::Write {
        path: args.dir.clone(),
        source,
    })?;

    let (private_pem, public_pem) = signing::generate()?;
    let public_raw_b64 = B64.encode(signing::parse_public_key(&public_pem)?.to_bytes());

    write_new(&private_path, private_pem.as_bytes(), 0o600, args.force)?;
    write_new(&public_path, public_pem.as_bytes(), 0o644, args.force)?;
    Ok(Generated {
        name: args.name.clone(),
        private_path,
        public_path,
        public_pem,
        public_raw_b64,
    })
}

/// Creates `path` with `mode` from the start (the key is never readable by others, not even for
/// a moment). With `replace`, an existing file is removed first rather than truncated, so it
/// does not keep its old, possibly looser, permissions.
fn write_new(path: &Path, data: &[u8], mode: u32, replace: bool) -> Result<(), KeygenError> {
    let err = |source| KeygenError::Write {
        path: path.to_path_buf(),
        source,
    };
    if replace {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                KeygenError::Exists(path.to_path_buf())
            } else {
                err(e)
            }
        })?;
    file.write_all(data).map_err(err)?;
    // The umask may have removed bits but never adds any; set the mode exactly.
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.sync_all().map_err(err)
}

fn is_key_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_are_file_and_policy_safe() {
        assert!(is_key_name("release-2025"));
        assert!(is_key_name("alice_laptop.v2"));
        for bad in ["", ".hidden", "a/b", "../x", "with space", &"x".repeat(64)] {
            assert!(!is_key_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_hint_shows_the_raw_base64_key_for_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let out = run(&KeygenArgs {
            name: "ci".into(),
            dir: dir.path().join("keys"),
            force: false,
        })
        .unwrap();
        let text = out.to_string();
        assert!(text.contains("- name: ci"), "{text}");
        assert!(
            text.contains(&format!("ed25519: {}", out.public_raw_b64)),
            "{text}"
        );
        // The policy form parses back to the same key as the .pub file.
        let from_raw = signing::parse_public_key(&out.public_raw_b64).unwrap();
        let from_pem =
            signing::parse_public_key(&fs::read_to_string(&out.public_path).unwrap()).unwrap();
        assert_eq!(from_raw, from_pem);
    }
}
