//! Plugin bundles: a gzipped tar with `plugin.yaml` at its root and the plugin's files beside it.
//!
//! The bundle is signed by its author, but the shim unpacks it with the assumption that it is
//! hostile anyway: only regular files and directories with relative, `..`-free paths are
//! unpacked; links, devices and anything else are refused, as are bundles that are (or unpack to)
//! more than the size limit, so a bundle cannot write outside its directory or fill the disk.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, ManifestError};

/// Name of the manifest at the root of every bundle.
pub const MANIFEST_FILE: &str = "plugin.yaml";

/// Default limit for both the bundle file and the sum of the files it unpacks to: 1 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024;

/// In a ConfigMap (or next to a bundle file or URL), the signature of `<key>` is at `<key>.sig`.
pub const SIGNATURE_SUFFIX: &str = ".sig";

/// Most entries a bundle may have; each costs an inode even when empty.
pub const MAX_ENTRIES: usize = 10_000;

/// An unpacked bundle.
#[derive(Debug, Clone)]
pub struct Extracted {
    /// `sha256:<hex>` of the bundle file as given (the gzipped tar).
    pub digest: String,
    /// The parsed, validated `plugin.yaml`.
    pub manifest: Manifest,
}

/// Why a bundle was refused.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The gzipped bundle itself is over the limit.
    #[error("bundle is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// Size of the bundle file.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The files in the bundle add up to more than the limit (or the archive stream is longer
    /// than such a bundle can be).
    #[error("bundle unpacks to more than the limit of {limit} bytes (at `{path}`)")]
    UnpackedTooLarge {
        /// The entry at which the limit was crossed.
        path: String,
        /// The limit.
        limit: u64,
    },
    /// More than [`MAX_ENTRIES`] entries.
    #[error("bundle has more than {MAX_ENTRIES} entries")]
    TooManyEntries,
    /// An absolute path.
    #[error("bundle entry `{path}` has an absolute path; bundle paths must be relative")]
    AbsolutePath {
        /// The entry's path.
        path: String,
    },
    /// A path with `..`.
    #[error("bundle entry `{path}` contains `..`; bundle paths must stay inside the bundle")]
    ParentDir {
        /// The entry's path.
        path: String,
    },
    /// A symbolic link.
    #[error(
        "bundle entry `{path}` is a symbolic link; bundles may contain only files and directories"
    )]
    Symlink {
        /// The entry's path.
        path: String,
    },
    /// A hard link.
    #[error("bundle entry `{path}` is a hard link; bundles may contain only files and directories")]
    HardLink {
        /// The entry's path.
        path: String,
    },
    /// A character or block device.
    #[error(
        "bundle entry `{path}` is a device node; bundles may contain only files and directories"
    )]
    Device {
        /// The entry's path.
        path: String,
    },
    /// A FIFO, sparse file or other entry type.
    #[error("bundle entry `{path}` is a {kind}; bundles may contain only files and directories")]
    UnsupportedEntry {
        /// The entry's path.
        path: String,
        /// The tar entry type.
        kind: String,
    },
    /// The same path twice.
    #[error("bundle entry `{path}` appears more than once")]
    DuplicateEntry {
        /// The entry's path.
        path: String,
    },
    /// No `plugin.yaml` at the root.
    #[error("bundle has no `{MANIFEST_FILE}` at its root")]
    MissingManifest,
    /// `plugin.yaml` is not UTF-8.
    #[error("`{MANIFEST_FILE}` is not UTF-8 text")]
    ManifestNotUtf8,
    /// `plugin.yaml` was rejected.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The destination already has files in it.
    #[error("cannot unpack into `{dir}`: it is not empty")]
    DestinationNotEmpty {
        /// The destination directory.
        dir: PathBuf,
    },
    /// Not a gzipped tar, or truncated.
    #[error("bundle is not a valid gzipped tar: {0}")]
    Archive(#[source] io::Error),
    /// Writing the unpacked files failed.
    #[error("cannot unpack `{path}` into {dir}: {source}", dir = .dir.display())]
    Write {
        /// The entry's path.
        path: String,
        /// The destination directory.
        dir: PathBuf,
        /// The IO error.
        #[source]
        source: io::Error,
    },
}

impl BundleError {
    /// A CamelCase reason for status conditions: each way a bundle can be refused has its own.
    pub fn reason(&self) -> &'static str {
        match self {
            BundleError::TooLarge { .. } | BundleError::UnpackedTooLarge { .. } => "BundleTooLarge",
            BundleError::TooManyEntries => "BundleTooManyEntries",
            BundleError::AbsolutePath { .. } | BundleError::ParentDir { .. } => "BundleUnsafePath",
            BundleError::Symlink { .. } | BundleError::HardLink { .. } => "BundleContainsLink",
            BundleError::Device { .. } | BundleError::UnsupportedEntry { .. } => {
                "BundleContainsSpecialFile"
            }
            BundleError::DuplicateEntry { .. } => "BundleDuplicateEntry",
            BundleError::MissingManifest => "ManifestMissing",
            BundleError::ManifestNotUtf8 | BundleError::Manifest(_) => "InvalidManifest",
            BundleError::Archive(_) => "InvalidBundleArchive",
            BundleError::DestinationNotEmpty { .. } | BundleError::Write { .. } => {
                "BundleInspectionFailed"
            }
        }
    }
}

/// `sha256:<64 lowercase hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Unpacks a bundle (gzipped tar) into `dest_dir`, which must be empty or not exist yet, and
/// returns its digest and manifest. `max_bytes` bounds both the bundle and the sum of the file
/// sizes it unpacks to.
///
/// On error, `dest_dir` may hold part of the bundle; callers throw it away.
pub fn extract(bundle: &[u8], dest_dir: &Path, max_bytes: u64) -> Result<Extracted, BundleError> {
    let size = bundle.len() as u64;
    if size > max_bytes {
        return Err(BundleError::TooLarge {
            size,
            limit: max_bytes,
        });
    }
    let digest = digest(bundle);
    prepare_dest(dest_dir)?;

    // Bound the decompressed stream too, not only the declared file sizes: a gzip bomb of tar
    // headers or padding would otherwise be inflated in full. Headers and padding cost at most
    // 1.5 KiB per entry (header, PAX/long-name header, padding).
    let stream_limit = max_bytes.saturating_add(MAX_ENTRIES as u64 * 1536);
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bundle).take(stream_limit));
    let mut total: u64 = 0;
    let mut seen = HashSet::new();
    let mut manifest_text = None;
    let entries = archive.entries().map_err(BundleError::Archive)?;
    for (index, entry) in entries.enumerate() {
        if index >= MAX_ENTRIES {
            return Err(BundleError::TooManyEntries);
        }
        let mut entry = entry.map_err(BundleError::Archive)?;
        let shown = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if kind.is_pax_global_extensions() {
            // Metadata for the archive as a whole (written by `git archive`); nothing to unpack.
            continue;
        }
        let rel = safe_relative_path(&shown)?;
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => return Err(BundleError::Symlink { path: shown }),
            tar::EntryType::Link => return Err(BundleError::HardLink { path: shown }),
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(BundleError::Device { path: shown });
            }
            other => {
                return Err(BundleError::UnsupportedEntry {
                    path: shown,
                    kind: entry_kind(other),
                });
            }
        }
        let Some(rel) = rel else {
            continue; // `./` itself
        };
        if !seen.insert(rel.clone()) {
            return Err(BundleError::DuplicateEntry { path: shown });
        }
        let target = dest_dir.join(&rel);
        let write_err = |source| BundleError::Write {
            path: shown.clone(),
            dir: dest_dir.to_path_buf(),
            source,
        };
        if kind == tar::EntryType::Directory {
            fs::create_dir_all(&target).map_err(write_err)?;
            continue;
        }

        total = total.saturating_add(entry.size());
        if total > max_bytes {
            return Err(BundleError::UnpackedTooLarge {
                path: shown,
                limit: max_bytes,
            });
        }
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(write_err)?;
        }
        // Keep only the owner/group/other rwx bits (no setuid, setgid, sticky), and never make a
        // file writable by group or others.
        let mode = entry.header().mode().unwrap_or(0o644) & 0o755;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode | 0o600)
            .open(&target)
            .map_err(write_err)?;
        let is_manifest = rel == Path::new(MANIFEST_FILE);
        if is_manifest {
            let mut text = Vec::new();
            entry.read_to_end(&mut text).map_err(BundleError::Archive)?;
            io::Write::write_all(&mut file, &text).map_err(write_err)?;
            manifest_text = Some(text);
        } else {
            io::copy(&mut entry, &mut file).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof
                    || e.kind() == io::ErrorKind::InvalidData
                {
                    BundleError::Archive(e)
                } else {
                    write_err(e)
                }
            })?;
        }
        fs::set_permissions(&target, fs::Permissions::from_mode(mode)).map_err(write_err)?;
    }
    if archive.into_inner().limit() == 0 {
        // The stream was cut at the limit; whatever it held beyond is more than a bundle may be.
        return Err(BundleError::UnpackedTooLarge {
            path: "(archive stream)".to_string(),
            limit: max_bytes,
        });
    }

    let text = manifest_text.ok_or(BundleError::MissingManifest)?;
    let text = String::from_utf8(text).map_err(|_| BundleError::ManifestNotUtf8)?;
    let manifest = Manifest::parse(&text)?;
    Ok(Extracted { digest, manifest })
}

/// The entry's path relative to the bundle root with `.` components removed; `None` for the root
/// itself.
fn safe_relative_path(path: &str) -> Result<Option<PathBuf>, BundleError> {
    let mut rel = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(BundleError::ParentDir {
                    path: path.to_string(),
                });
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(BundleError::AbsolutePath {
                    path: path.to_string(),
                });
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

fn prepare_dest(dir: &Path) -> Result<(), BundleError> {
    let write_err = |source| BundleError::Write {
        path: String::new(),
        dir: dir.to_path_buf(),
        source,
    };
    fs::create_dir_all(dir).map_err(write_err)?;
    if fs::read_dir(dir).map_err(write_err)?.next().is_some() {
        return Err(BundleError::DestinationNotEmpty {
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

fn entry_kind(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Fifo => "FIFO".to_string(),
        tar::EntryType::GNUSparse => "sparse file".to_string(),
        other => format!("tar entry of type {:?}", other.as_byte() as char),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    pub(crate) const MANIFEST: &str = "name: echo\nversion: 0.1.0\napiVersion: 1\n\
        hooks: [transform]\nentryPoint: [python3, main.py]\n";

    /// What a test bundle entry is.
    pub(crate) enum Item<'a> {
        File(&'a str, &'a [u8], u32),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Device(&'a str),
        Fifo(&'a str),
    }

    /// Builds a gzipped tar in memory. Paths are written into the header bytes directly, so
    /// entries the `tar` crate's safe setters refuse (`..`, absolute) can be made too.
    pub(crate) fn bundle(items: &[Item<'_>]) -> Vec<u8> {
        let mut b = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        for item in items {
            let mut h = tar::Header::new_gnu();
            let (path, kind, data, mode): (&str, _, &[u8], u32) = match item {
                Item::File(p, d, m) => (p, tar::EntryType::Regular, d, *m),
                Item::Dir(p) => (p, tar::EntryType::Directory, b"", 0o755),
                Item::Symlink(p, t) | Item::HardLink(p, t) => {
                    h.set_link_name(t).unwrap();
                    let kind = if matches!(item, Item::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    (p, kind, b"", 0o777)
                }
                Item::Device(p) => (p, tar::EntryType::Char, b"", 0o666),
                Item::Fifo(p) => (p, tar::EntryType::Fifo, b"", 0o644),
            };
            let name = &mut h.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    fn extract_err(items: &[Item<'_>]) -> BundleError {
        let dir = tempfile::tempdir().unwrap();
        let e = extract(&bundle(items), dir.path(), DEFAULT_MAX_BYTES).unwrap_err();
        // Nothing may have been written outside the destination.
        assert!(!dir.path().parent().unwrap().join("escaped").exists());
        e
    }

    #[test]
    fn extracts_files_keeps_exec_bit_and_returns_digest_and_manifest() {
        let tgz = bundle(&[
            Item::File("./plugin.yaml", MANIFEST.as_bytes(), 0o644),
            Item::Dir("./lib/"),
            Item::File("./lib/run.sh", b"#!/bin/sh\n", 0o4777),
            Item::File("main.py", b"print()", 0o644),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let out = extract(&tgz, &dir.path().join("b"), DEFAULT_MAX_BYTES).unwrap();
        assert_eq!(out.digest, digest(&tgz));
        assert!(out.digest.starts_with("sha256:") && out.digest.len() == 7 + 64);
        assert_eq!(out.manifest.name, "echo");
        let run = dir.path().join("b/lib/run.sh");
        assert_eq!(fs::read(&run).unwrap(), b"#!/bin/sh\n");
        // setuid and world-write are dropped, exec kept.
        let mode = fs::metadata(&run).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        assert_eq!(
            fs::read_to_string(dir.path().join("b/main.py")).unwrap(),
            "print()"
        );
    }

    #[test]
    fn refuses_parent_dir_entries() {
        let e = extract_err(&[
            Item::File("plugin.yaml", MANIFEST.as_bytes(), 0o644),
            Item::File("../escaped", b"x", 0o644),
        ]);
        assert!(
            matches!(e, BundleError::ParentDir { ref path } if path == "../escaped"),
            "{e}"
        );
        let e = extract_err(&[Item::File("lib/../../escaped", b"x", 0o644)]);
        assert!(matches!(e, BundleError::ParentDir { .. }), "{e}");
    }

    #[test]
    fn refuses_absolute_paths() {
        let e = extract_err(&[Item::File("/tmp/escaped", b"x", 0o644)]);
        assert!(matches!(e, BundleError::AbsolutePath { ref path } if path == "/tmp/escaped"));
    }

    #[test]
    fn refuses_links_devices_and_fifos() {
        let e = extract_err(&[Item::Symlink("plugin.yaml", "/etc/passwd")]);
        assert!(matches!(e, BundleError::Symlink { .. }), "{e}");
        let e = extract_err(&[Item::HardLink("x", "/etc/shadow")]);
        assert!(matches!(e, BundleError::HardLink { .. }), "{e}");
        let e = extract_err(&[Item::Device("null")]);
        assert!(matches!(e, BundleError::Device { .. }), "{e}");
        let e = extract_err(&[Item::Fifo("pipe")]);
        assert!(matches!(e, BundleError::UnsupportedEntry { ref kind, .. } if kind == "FIFO"));
    }

    #[test]
    fn each_kind_of_refusal_has_its_own_condition_reason() {
        let cases = [
            (
                extract_err(&[Item::File("/tmp/escaped", b"x", 0o644)]),
                "BundleUnsafePath",
            ),
            (
                extract_err(&[Item::File("../escaped", b"x", 0o644)]),
                "BundleUnsafePath",
            ),
            (
                extract_err(&[Item::Symlink("plugin.yaml", "/etc/passwd")]),
                "BundleContainsLink",
            ),
            (
                extract_err(&[Item::Device("null")]),
                "BundleContainsSpecialFile",
            ),
            (
                extract_err(&[Item::Fifo("pipe")]),
                "BundleContainsSpecialFile",
            ),
            (
                extract_err(&[Item::File("main.py", b"x", 0o644)]),
                "ManifestMissing",
            ),
            (
                extract_err(&[Item::File("plugin.yaml", b"name: [", 0o644)]),
                "InvalidManifest",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(e.reason(), want, "{e}");
        }
    }

    #[test]
    fn refuses_bundles_over_the_limit_packed_or_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        // Compresses to a few KiB but unpacks to 2 MiB.
        let zeros = vec![0u8; 2 * 1024 * 1024];
        let tgz = bundle(&[
            Item::File("plugin.yaml", MANIFEST.as_bytes(), 0o644),
            Item::File("big.bin", &zeros, 0o644),
        ]);
        assert!((tgz.len() as u64) < DEFAULT_MAX_BYTES);
        let e = extract(&tgz, &dir.path().join("a"), DEFAULT_MAX_BYTES).unwrap_err();
        assert!(matches!(e, BundleError::UnpackedTooLarge { ref path, .. } if path == "big.bin"));
        // The packed size counts too.
        let e = extract(&tgz, &dir.path().join("b"), 100).unwrap_err();
        assert!(matches!(e, BundleError::TooLarge { limit: 100, .. }), "{e}");
    }

    #[test]
    fn needs_a_valid_manifest_at_the_root() {
        let e = extract_err(&[Item::File("sub/plugin.yaml", MANIFEST.as_bytes(), 0o644)]);
        assert!(matches!(e, BundleError::MissingManifest), "{e}");
        let e = extract_err(&[Item::File("plugin.yaml", b"name: x\nbogus: 1\n", 0o644)]);
        assert!(
            matches!(e, BundleError::Manifest(ManifestError::UnknownField { .. })),
            "{e}"
        );
        let e = extract_err(&[
            Item::File("plugin.yaml", MANIFEST.as_bytes(), 0o644),
            Item::File("./plugin.yaml", b"name: evil\n", 0o644),
        ]);
        assert!(matches!(e, BundleError::DuplicateEntry { .. }), "{e}");
    }

    #[test]
    fn refuses_garbage_and_non_empty_destinations() {
        let dir = tempfile::tempdir().unwrap();
        let e = extract(b"not gzip at all", dir.path(), DEFAULT_MAX_BYTES).unwrap_err();
        assert!(matches!(e, BundleError::Archive(_)), "{e}");
        fs::write(dir.path().join("old"), b"x").unwrap();
        let tgz = bundle(&[Item::File("plugin.yaml", MANIFEST.as_bytes(), 0o644)]);
        let e = extract(&tgz, dir.path(), DEFAULT_MAX_BYTES).unwrap_err();
        assert!(matches!(e, BundleError::DestinationNotEmpty { .. }), "{e}");
    }
}
