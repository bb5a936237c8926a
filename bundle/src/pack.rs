//! Packing: a plugin directory (with `plugin.yaml` at its root) to a reproducible bundle
//! (gzipped tar). `airlockctl bundle pack` and the e2e tooling both pack through [`pack`].
//!
//! Reproducible means the bytes depend only on the paths, contents and execute bits of the files:
//! entries are sorted by path with each directory before its contents, times, owners and group
//! names are zeroed, modes are 0755 (directories, executables) or 0644, and the gzip header has
//! no time or file name. Packing the same tree twice, on any machine with the same `airlockctl`,
//! gives the same digest, so a signature can be checked against a rebuild from source.
//!
//! Before anything is written, the bundle is unpacked with the very function the operator and
//! the shim use ([`crate::extract`]): what `pack` writes is what the cluster
//! accepts.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::archive::{self as bundle, BundleError, MANIFEST_FILE};
use crate::manifest::{Manifest, ManifestError};
use flate2::{Compression, GzBuilder};

/// The gzip level: fixed, since the level changes the bytes and so the digest.
const GZIP_LEVEL: u32 = 9;
/// "Unknown" operating system in the gzip header, the same on every platform.
const GZIP_OS_UNKNOWN: u8 = 255;

/// Beginnings of files that hold private keys; such a file is never packed.
const PRIVATE_KEY_MARKERS: &[&[u8]] = &[
    b"-----BEGIN PRIVATE KEY-----",
    b"-----BEGIN ENCRYPTED PRIVATE KEY-----",
    b"-----BEGIN OPENSSH PRIVATE KEY-----",
    b"-----BEGIN RSA PRIVATE KEY-----",
    b"-----BEGIN EC PRIVATE KEY-----",
];

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {}: {source}; check that it exists and is readable", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} is not a directory; pass the plugin's directory (the one holding {MANIFEST_FILE})", .0.display())]
    NotADirectory(PathBuf),
    #[error("{} has no {MANIFEST_FILE}; a bundle needs its manifest at the root of the directory", .0.display())]
    MissingManifest(PathBuf),
    #[error("{} is not UTF-8 text; save it as UTF-8", .0.display())]
    ManifestNotUtf8(PathBuf),
    #[error("{}: {source}", path.display())]
    Manifest {
        path: PathBuf,
        #[source]
        source: ManifestError,
    },
    #[error(
        "{} is a {kind}; bundles may contain only regular files and directories: remove it or \
         replace it with a copy of what it points to",
        path.display()
    )]
    Unsupported { path: PathBuf, kind: &'static str },
    #[error("{} has a name that is not UTF-8; rename it", .0.display())]
    NonUtf8Name(PathBuf),
    #[error(
        "{} looks like a private key; never put keys in a bundle (it is published): move it out \
         of the plugin directory",
        .0.display()
    )]
    PrivateKey(PathBuf),
    #[error(
        "the files in {} add up to more than {limit} bytes (at {}); the operator refuses larger \
         bundles: remove what the plugin does not need, or raise --max-bytes together with the \
         operator's --max-bundle-bytes",
        dir.display(),
        at.display()
    )]
    TooLarge {
        dir: PathBuf,
        at: PathBuf,
        limit: u64,
    },
    #[error(
        "{} has more than {} entries; a bundle may have at most that many",
        .0.display(),
        bundle::MAX_ENTRIES
    )]
    TooManyEntries(PathBuf),
    #[error(
        "the output {} is inside the plugin directory {}; it would end up in the next bundle: \
         write it elsewhere, e.g. -o ../bundle.tar.gz",
        output.display(),
        dir.display()
    )]
    OutputInsideBundle { output: PathBuf, dir: PathBuf },
    #[error("building the archive: {0}")]
    Archive(#[source] io::Error),
    #[error(
        "the packed bundle is refused by the same check the operator runs: {0}; fix the \
         directory and pack again"
    )]
    Refused(#[source] BundleError),
    #[error("cannot create a temporary directory to check the bundle in: {0}; check TMPDIR")]
    Scratch(#[source] io::Error),
}

/// A bundle that was packed and checked.
#[derive(Debug)]
pub struct Packed {
    pub bytes: Vec<u8>,
    pub digest: String,
    pub manifest: Manifest,
    /// Regular files in the bundle.
    pub files: usize,
}

/// Packs `dir` into a bundle in memory and checks it as the operator would.
pub fn pack(dir: &Path, max_bytes: u64) -> Result<Packed, PackError> {
    let meta = fs::metadata(dir).map_err(|source| PackError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(PackError::NotADirectory(dir.to_path_buf()));
    }

    let mut entries = Vec::new();
    let mut total = 0u64;
    walk(dir, Path::new(""), max_bytes, &mut entries, &mut total)?;

    // The manifest first: its errors are the ones an author most needs to see, and naming the
    // file is clearer than the generic bundle error.
    let manifest_path = dir.join(MANIFEST_FILE);
    let manifest_text = entries
        .iter()
        .find_map(|e| match e {
            Entry::File { rel, data, .. } if rel == MANIFEST_FILE => Some(data),
            _ => None,
        })
        .ok_or_else(|| PackError::MissingManifest(dir.to_path_buf()))?;
    let manifest_text = std::str::from_utf8(manifest_text)
        .map_err(|_| PackError::ManifestNotUtf8(manifest_path.clone()))?;
    Manifest::parse(manifest_text).map_err(|source| PackError::Manifest {
        path: manifest_path,
        source,
    })?;

    let bytes = archive(&entries).map_err(PackError::Archive)?;
    let files = entries
        .iter()
        .filter(|e| matches!(e, Entry::File { .. }))
        .count();

    // The operator's own check, on exactly these bytes.
    let scratch = tempfile::tempdir().map_err(PackError::Scratch)?;
    let extracted =
        bundle::extract(&bytes, scratch.path(), max_bytes).map_err(PackError::Refused)?;
    Ok(Packed {
        digest: extracted.digest,
        manifest: extracted.manifest,
        bytes,
        files,
    })
}

/// One entry of the archive, path relative to the bundle root with `/` separators.
#[derive(Debug)]
enum Entry {
    Dir {
        rel: String,
    },
    File {
        rel: String,
        data: Vec<u8>,
        exec: bool,
    },
}

/// Collects the tree under `root/rel` depth first, each directory's children sorted by name, so
/// every directory comes before its contents and the order does not depend on the file system.
fn walk(
    root: &Path,
    rel: &Path,
    max_bytes: u64,
    out: &mut Vec<Entry>,
    total: &mut u64,
) -> Result<(), PackError> {
    let dir = root.join(rel);
    let read_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| PackError::Read { path, source }
    };
    let mut names = fs::read_dir(&dir)
        .map_err(read_err(&dir))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(read_err(&dir))?;
    names.sort();
    for name in names {
        let child_rel = rel.join(&name);
        let path = root.join(&child_rel);
        let Some(rel_str) = child_rel.to_str().map(str::to_owned) else {
            return Err(PackError::NonUtf8Name(path));
        };
        if out.len() >= bundle::MAX_ENTRIES {
            return Err(PackError::TooManyEntries(root.to_path_buf()));
        }
        let meta = fs::symlink_metadata(&path).map_err(read_err(&path))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            out.push(Entry::Dir { rel: rel_str });
            walk(root, &child_rel, max_bytes, out, total)?;
        } else if kind.is_file() {
            *total = total.saturating_add(meta.len());
            if *total > max_bytes {
                return Err(PackError::TooLarge {
                    dir: root.to_path_buf(),
                    at: child_rel,
                    limit: max_bytes,
                });
            }
            let data = fs::read(&path).map_err(read_err(&path))?;
            if PRIVATE_KEY_MARKERS
                .iter()
                .any(|m| data.trim_ascii_start().starts_with(m))
            {
                return Err(PackError::PrivateKey(path));
            }
            out.push(Entry::File {
                rel: rel_str,
                data,
                exec: meta.permissions().mode() & 0o111 != 0,
            });
        } else {
            let kind = if kind.is_symlink() {
                "symbolic link"
            } else if kind.is_fifo() {
                "FIFO"
            } else if kind.is_socket() {
                "socket"
            } else if kind.is_char_device() || kind.is_block_device() {
                "device node"
            } else {
                "special file"
            };
            return Err(PackError::Unsupported { path, kind });
        }
    }
    Ok(())
}

/// The gzipped tar of `entries`, in their order, with every varying header field fixed.
fn archive(entries: &[Entry]) -> io::Result<Vec<u8>> {
    let gz = GzBuilder::new()
        .mtime(0)
        .operating_system(GZIP_OS_UNKNOWN)
        .write(Vec::new(), Compression::new(GZIP_LEVEL));
    let mut tar = tar::Builder::new(gz);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_username("")?;
        header.set_groupname("")?;
        match entry {
            Entry::Dir { rel } => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                header.set_size(0);
                tar.append_data(&mut header, rel, io::empty())?;
            }
            Entry::File { rel, data, exec } => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(if *exec { 0o755 } else { 0o644 });
                header.set_size(data.len() as u64);
                tar.append_data(&mut header, rel, data.as_slice())?;
            }
        }
    }
    tar.into_inner()?.finish()
}

/// Refuses an output path inside the directory being packed (it would be packed next time).
/// Refuses an `output` inside `dir`: the next pack would include the previous bundle.
pub fn refuse_output_inside(dir: &Path, output: &Path) -> Result<(), PackError> {
    let Ok(dir_abs) = fs::canonicalize(dir) else {
        return Ok(()); // reported by `pack` with the path
    };
    let parent = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let (Ok(parent_abs), Some(file)) = (fs::canonicalize(parent), output.file_name()) else {
        return Ok(()); // reported when writing
    };
    if parent_abs.join(file).starts_with(&dir_abs) {
        return Err(PackError::OutputInsideBundle {
            output: output.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;
    use crate::DEFAULT_MAX_BYTES;

    const MANIFEST: &str = "name: hello\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\n\
        permissions: [log]\nentryPoint: [./bin/hello]\n";

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(MANIFEST_FILE), MANIFEST).unwrap();
        fs::create_dir(dir.path().join("bin")).unwrap();
        fs::write(dir.path().join("bin/hello"), b"#!/bin/sh\necho hi\n").unwrap();
        fs::set_permissions(
            dir.path().join("bin/hello"),
            fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        fs::write(dir.path().join("a-file"), b"data").unwrap();
        fs::set_permissions(dir.path().join("a-file"), fs::Permissions::from_mode(0o600)).unwrap();
        dir
    }

    /// (path, type, mode, mtime, uid, gid, username, groupname) of every entry.
    type Row = (String, u8, u32, u64, u64, u64, Vec<u8>, Vec<u8>);

    fn headers(bytes: &[u8]) -> Vec<Row> {
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(bytes));
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let h = e.header();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    h.entry_type().as_byte(),
                    h.mode().unwrap(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    h.gid().unwrap(),
                    h.username_bytes().unwrap_or_default().to_vec(),
                    h.groupname_bytes().unwrap_or_default().to_vec(),
                )
            })
            .collect()
    }

    #[test]
    fn entries_are_sorted_with_fixed_metadata() {
        let dir = tree();
        let packed = pack(dir.path(), DEFAULT_MAX_BYTES).unwrap();
        let rows = headers(&packed.bytes);
        let paths: Vec<_> = rows.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(paths, ["a-file", "bin", "bin/hello", "plugin.yaml"]);
        let modes: Vec<_> = rows.iter().map(|r| r.2).collect();
        assert_eq!(modes, [0o644, 0o755, 0o755, 0o644]);
        for row in &rows {
            assert_eq!((row.3, row.4, row.5), (0, 0, 0), "{row:?}");
            assert!(row.6.is_empty() && row.7.is_empty(), "{row:?}");
        }
        assert_eq!(packed.files, 3);
        assert_eq!(packed.manifest.name, "hello");
    }

    #[test]
    fn the_gzip_header_has_no_time_and_no_name() {
        let dir = tree();
        let bytes = pack(dir.path(), DEFAULT_MAX_BYTES).unwrap().bytes;
        let mut gz = flate2::read::GzDecoder::new(bytes.as_slice());
        let mut sink = Vec::new();
        gz.read_to_end(&mut sink).unwrap();
        let header = gz.header().unwrap();
        assert_eq!(header.mtime(), 0);
        assert_eq!(header.filename(), None);
        assert_eq!(header.operating_system(), GZIP_OS_UNKNOWN);
        // FLG byte: no FNAME, FCOMMENT or FEXTRA.
        assert_eq!(bytes[3], 0);
    }

    #[test]
    fn long_and_nested_paths_round_trip() {
        let dir = tree();
        let deep = dir.path().join("d".repeat(60)).join("e".repeat(60));
        fs::create_dir_all(&deep).unwrap();
        fs::write(deep.join("f".repeat(90)), b"x").unwrap();
        let packed = pack(dir.path(), DEFAULT_MAX_BYTES).unwrap();
        let paths: Vec<_> = headers(&packed.bytes).into_iter().map(|r| r.0).collect();
        assert!(
            paths.contains(&format!(
                "{}/{}/{}",
                "d".repeat(60),
                "e".repeat(60),
                "f".repeat(90)
            )),
            "{paths:?}"
        );
    }

    #[test]
    fn refuses_what_the_operator_would_refuse_or_should_not_publish() {
        let dir = tree();
        fs::write(dir.path().join(MANIFEST_FILE), "name: hello\nhook: [x]\n").unwrap();
        let e = pack(dir.path(), DEFAULT_MAX_BYTES).unwrap_err().to_string();
        assert!(
            e.contains("plugin.yaml") && e.contains("did you mean `hooks`"),
            "{e}"
        );

        let dir = tree();
        fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
        let e = pack(dir.path(), DEFAULT_MAX_BYTES).unwrap_err();
        assert!(matches!(e, PackError::MissingManifest(_)), "{e}");

        let dir = tree();
        fs::write(
            dir.path().join("dev.key"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let e = pack(dir.path(), DEFAULT_MAX_BYTES).unwrap_err();
        assert!(
            matches!(e, PackError::PrivateKey(ref p) if p.ends_with("dev.key")),
            "{e}"
        );

        let dir = tree();
        fs::write(dir.path().join("big"), vec![0u8; 2000]).unwrap();
        let e = pack(dir.path(), 1000).unwrap_err();
        assert!(matches!(e, PackError::TooLarge { limit: 1000, .. }), "{e}");
    }

    #[test]
    fn refuses_sockets_naming_the_path() {
        let dir = tree();
        let sock = dir.path().join("bin/control.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let e = pack(dir.path(), DEFAULT_MAX_BYTES).unwrap_err();
        assert!(
            matches!(e, PackError::Unsupported { ref path, kind: "socket" } if *path == sock),
            "{e}"
        );
    }

    #[test]
    fn refuses_an_output_inside_the_directory() {
        let dir = tree();
        let e = refuse_output_inside(dir.path(), &dir.path().join("bin/out.tar.gz")).unwrap_err();
        assert!(matches!(e, PackError::OutputInsideBundle { .. }), "{e}");
        let outside = tempfile::tempdir().unwrap();
        refuse_output_inside(dir.path(), &outside.path().join("out.tar.gz")).unwrap();
    }
}
