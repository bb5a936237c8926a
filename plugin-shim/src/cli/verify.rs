//! Re-verifying the bundle inside the pod before anything of it runs: its digest against
//! `--expect-digest`, its detached signature against `--public-key` (defense in depth: the operator
//! verified both already), then unpacking it — or, with `run --unpacked`, checking that the
//! read-only directory `airlock-shim unpack` filled holds exactly these bytes.

use std::fs;
use std::path::{Path, PathBuf};

use tracing::info;

use super::RunError;
use super::flags::{BundleArgs, RunArgs, UnpackArgs};
use airlock_bundle::{self as bundle, Manifest};

/// Files `unpack` writes into its destination.
pub const UNPACKED_BUNDLE_DIR: &str = "bundle";
pub const UNPACKED_DIGEST_FILE: &str = "digest";

/// The bundle's bytes, after checking its digest and (with both files) its signature.
fn read_verified(args: &BundleArgs) -> Result<Vec<u8>, RunError> {
    let bytes = fs::read(&args.bundle).map_err(|source| RunError::ReadBundle {
        path: args.bundle.clone(),
        source,
    })?;
    // Check the digest before unpacking anything.
    if let Some(expected) = args.expect_digest.as_deref() {
        let actual = bundle::digest(&bytes);
        if actual != expected {
            return Err(RunError::DigestMismatch {
                expected: expected.to_string(),
                actual,
            });
        }
    }
    // Defense in depth: the operator verified this signature; check it again before unpacking.
    if let (Some(sig_path), Some(key_path)) = (&args.signature, &args.public_key) {
        let unreadable = |path: &Path, reason: String| RunError::SignatureUnreadable {
            path: path.to_path_buf(),
            reason,
        };
        let read =
            |path: &Path| fs::read_to_string(path).map_err(|e| unreadable(path, e.to_string()));
        let signature = airlock_bundle::signing::parse_signature(&read(sig_path)?)
            .map_err(|e| unreadable(sig_path, e.to_string()))?;
        let key = airlock_bundle::signing::parse_public_key(&read(key_path)?)
            .map_err(|e| unreadable(key_path, e.to_string()))?;
        if !airlock_bundle::signing::verifies(&key, &bundle::digest(&bytes), &signature) {
            return Err(RunError::SignatureInvalid);
        }
        info!("bundle signature verified");
    }
    Ok(bytes)
}

/// Unpacks `bytes` into `dir`, replacing what an earlier run left there (an emptyDir outlives
/// container restarts).
fn unpack_into(bytes: &[u8], dir: &Path, max_bytes: u64) -> Result<bundle::Extracted, RunError> {
    if dir.exists() {
        fs::remove_dir_all(dir).map_err(|source| RunError::Workdir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    Ok(bundle::extract(bytes, dir, max_bytes)?)
}

/// `airlock-shim unpack`: verifies the bundle as `run` does and unpacks it into
/// DEST/bundle, with its digest in DEST/digest.
pub fn unpack(args: &UnpackArgs) -> Result<PathBuf, RunError> {
    let bytes = read_verified(&args.bundle)?;
    let extracted = unpack_into(
        &bytes,
        &args.dest.join(UNPACKED_BUNDLE_DIR),
        args.bundle.max_bundle_bytes,
    )?;
    extracted.manifest.check_api_version()?;
    let digest_file = args.dest.join(UNPACKED_DIGEST_FILE);
    fs::write(&digest_file, format!("{}\n", extracted.digest)).map_err(|source| {
        RunError::Workdir {
            path: digest_file,
            source,
        }
    })?;
    Ok(args.dest.join(UNPACKED_BUNDLE_DIR))
}

/// The bundle `run` starts the plugin from: its directory, manifest and digest. The bundle file
/// is verified first; then either the directory `unpack` filled (`--unpacked`) must hold the same
/// bytes, or the bundle is unpacked into WORKDIR/bundle.
pub(super) fn bundle_for_run(args: &RunArgs) -> Result<(PathBuf, Manifest, String), RunError> {
    let bytes = read_verified(&args.bundle)?;
    let ready = match &args.unpacked {
        // Unpacked by the init container (`airlock-shim unpack`) into a volume this container
        // mounts read-only: the plugin cannot change its own code. Same bytes, or nothing runs.
        Some(dir) => {
            let stored = fs::read_to_string(dir.join(UNPACKED_DIGEST_FILE)).map_err(|source| {
                RunError::Workdir {
                    path: dir.join(UNPACKED_DIGEST_FILE),
                    source,
                }
            })?;
            let digest = bundle::digest(&bytes);
            if stored.trim() != digest {
                return Err(RunError::DigestMismatch {
                    expected: digest,
                    actual: stored.trim().to_string(),
                });
            }
            let bundle_dir = dir.join(UNPACKED_BUNDLE_DIR);
            let yaml = fs::read_to_string(bundle_dir.join("plugin.yaml")).map_err(|source| {
                RunError::Workdir {
                    path: bundle_dir.join("plugin.yaml"),
                    source,
                }
            })?;
            (bundle_dir, Manifest::parse(&yaml)?, digest)
        }
        None => {
            let bundle_dir = args.workdir.join("bundle");
            let extracted = unpack_into(&bytes, &bundle_dir, args.bundle.max_bundle_bytes)?;
            (bundle_dir, extracted.manifest, extracted.digest)
        }
    };
    Ok(ready)
}
