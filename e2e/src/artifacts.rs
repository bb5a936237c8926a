//! The artifacts the e2e suite, `make demo` and `make bench` run: container images, signed-off
//! bundles and `target/e2e/images.env`, which names them. One tool makes all three: the
//! `e2e-images` binary (`make e2e-images`). This module holds what it is made of, apart from the
//! processes it runs, so unit tests can check it.
//!
//! There is no Docker engine on the machines Airlock is tested on: an image is one deterministic
//! layer (a static binary, or a directory) appended to scratch with `crane`, and the same input
//! gives the same digest, so a rebuild that changed nothing is not pulled again.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// The static target every image binary is built for.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The crates whose static binaries go into images.
pub const IMAGE_PACKAGES: &[&str] = &[
    "airlock-e2e-probe",
    "airlock-e2e-hostile",
    "airlock-plugin-shim",
    "airlock-operator",
    "airlock-router",
    "airlock-example-hello",
    "airlock-example-data-formatter",
    "airlock-example-event-logger",
    "airlock-example-crash-test",
];

/// Where the host's CA bundle is, and where an image that talks HTTPS finds it.
pub const CA_BUNDLE: &str = "etc/ssl/certs/ca-certificates.crt";

/// Who every image runs as: nobody, never root (Pod Security "restricted").
pub const IMAGE_USER: &str = "65534:65534";

/// The one layer of an image.
#[derive(Clone, Debug, PartialEq)]
pub enum Layer {
    /// Static binaries at the image root, the first one the entry point (`/<its file name>`);
    /// with `ca`, the host's CA bundle too (for clients of HTTPS registries).
    Binaries { binaries: Vec<PathBuf>, ca: bool },
    /// A directory as the image root, no entry point (the plugin's bundle names the program).
    Root(PathBuf),
}

impl Layer {
    pub fn binary(path: PathBuf) -> Self {
        Layer::Binaries {
            binaries: vec![path],
            ca: false,
        }
    }

    /// The entry point the image config gets, if any.
    pub fn entrypoint(&self) -> Option<String> {
        match self {
            Layer::Binaries { binaries, .. } => binaries
                .first()
                .and_then(|b| b.file_name())
                .map(|n| format!("/{}", n.to_string_lossy())),
            Layer::Root(_) => None,
        }
    }

    /// The layer as an uncompressed tar: entries in name order, owned by root, fixed times
    /// (tar's deterministic mode for files, 0 for directories) and modes 0755 (executables,
    /// directories) or 0644, so the digest depends on the content only.
    pub fn tar(&self) -> Result<Vec<u8>> {
        let mut files: Vec<(PathBuf, PathBuf)> = Vec::new();
        match self {
            Layer::Binaries { binaries, ca } => {
                for bin in binaries {
                    let name = bin.file_name().with_context(|| {
                        format!("{} names no file: point at a binary", bin.display())
                    })?;
                    // The file itself, not a link to it (the layer keeps links as links).
                    let file = fs::canonicalize(bin)
                        .with_context(|| format!("reading {}", bin.display()))?;
                    files.push((PathBuf::from(name), file));
                }
                if *ca {
                    let host = fs::canonicalize(Path::new("/").join(CA_BUNDLE)).context(
                        "reading the host's CA bundle (apt-get install ca-certificates)",
                    )?;
                    files.push((PathBuf::from(CA_BUNDLE), host));
                }
            }
            Layer::Root(dir) => walk(dir, Path::new(""), &mut files)?,
        }
        files.sort();
        let mut tar = tar::Builder::new(Vec::new());
        tar.mode(tar::HeaderMode::Deterministic);
        tar.follow_symlinks(false);
        let mut dirs = std::collections::BTreeSet::new();
        for (name, source) in &files {
            // Parent directories first, once each, as `tar` itself writes them.
            let parents: Vec<&Path> = name.ancestors().skip(1).collect();
            for parent in parents.into_iter().rev() {
                if !parent.as_os_str().is_empty() && dirs.insert(parent.to_path_buf()) {
                    append_dir(&mut tar, parent)?;
                }
            }
            let meta = fs::symlink_metadata(source)
                .with_context(|| format!("reading {}", source.display()))?;
            if meta.is_dir() {
                if dirs.insert(name.clone()) {
                    append_dir(&mut tar, name)?;
                }
            } else {
                tar.append_path_with_name(source, name)
                    .with_context(|| format!("adding {} to the layer", source.display()))?;
            }
        }
        tar.into_inner().context("finishing the layer")
    }
}

/// A directory entry: mode 0755, owned by root, time 0 (the host's own directory may be
/// anything).
fn append_dir(tar: &mut tar::Builder<Vec<u8>>, name: &Path) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    tar.append_data(&mut header, name, io::empty())
        .with_context(|| format!("adding directory {}", name.display()))
}

/// Every entry below `dir` (directories too, so empty ones survive), as (name in the layer,
/// path on disk). Symlinks stay symlinks.
fn walk(dir: &Path, prefix: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let name = prefix.join(entry.file_name());
        let path = entry.path();
        let is_dir = entry.file_type()?.is_dir();
        out.push((name.clone(), path.clone()));
        if is_dir {
            walk(&path, &name, out)?;
        }
    }
    Ok(())
}

/// One image: where it is pushed and its layer.
#[derive(Clone, Debug)]
pub struct Image {
    /// `registry/repository:tag`.
    pub reference: String,
    pub layer: Layer,
}

/// One bundle: the files packed (by the packer `airlockctl bundle pack` uses) and its file name
/// in `target/e2e`.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub file: String,
    /// (name in the bundle, content).
    pub files: Vec<(String, Vec<u8>)>,
}

impl Bundle {
    /// A bundle of files read from disk, each under its own file name.
    pub fn from_files(file: &str, paths: &[PathBuf]) -> Result<Self> {
        let files = paths
            .iter()
            .map(|p| {
                let name = p
                    .file_name()
                    .with_context(|| format!("{} names no file", p.display()))?;
                let bytes = fs::read(p).with_context(|| format!("reading {}", p.display()))?;
                Ok((name.to_string_lossy().into_owned(), bytes))
            })
            .collect::<Result<_>>()?;
        Ok(Bundle {
            file: file.to_string(),
            files,
        })
    }

    /// The packed bundle, checked as the operator checks bundles.
    pub fn pack(&self) -> Result<airlock_bundle::pack::Packed> {
        let dir = tempfile::tempdir().context("creating a directory to pack in")?;
        for (name, bytes) in &self.files {
            fs::write(dir.path().join(name), bytes)
                .with_context(|| format!("writing {name} to pack"))?;
        }
        airlock_bundle::pack::pack(dir.path(), airlock_bundle::DEFAULT_MAX_BYTES)
            .with_context(|| format!("packing {}", self.file))
    }
}

/// A sample plugin the tests run: its image and bundle under one `images.env` key.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// `AIRLOCK_<KEY>_IMAGE` and `AIRLOCK_<KEY>_BUNDLE`.
    pub key: String,
    pub image: String,
    pub bundle: PathBuf,
}

impl Sample {
    /// The `images.env` key of a sample named like a directory (`crash-test` → `CRASH_TEST`).
    pub fn key_of(name: &str) -> String {
        name.to_ascii_uppercase().replace('-', "_")
    }
}

/// `target/e2e/images.env`: `KEY=value` lines a shell sources and [`crate::install::images_env`]
/// reads.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ImagesEnv {
    /// The shim and operator images by digest: what the chart installs must be exactly what was
    /// built.
    pub shim_image: String,
    pub operator_image: String,
    /// An image of the hello plugin whose plugin never starts, for the rollback test.
    pub hello_broken_image: String,
    pub samples: Vec<Sample>,
}

impl ImagesEnv {
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut line = |k: &str, v: &str| {
            // A value is a reference or a path; neither may break the `KEY=value` line.
            debug_assert!(!v.contains(['\n', ' ', '"', '\'', '$']), "{k}={v}");
            let _ = writeln!(out, "{k}={v}");
        };
        line("AIRLOCK_SHIM_IMAGE", &self.shim_image);
        line("AIRLOCK_OPERATOR_IMAGE", &self.operator_image);
        line("AIRLOCK_HELLO_BROKEN_IMAGE", &self.hello_broken_image);
        for s in &self.samples {
            line(&format!("AIRLOCK_{}_IMAGE", s.key), &s.image);
            line(
                &format!("AIRLOCK_{}_BUNDLE", s.key),
                &s.bundle.to_string_lossy(),
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One layer entry as a container runtime sees it.
    #[derive(Debug, PartialEq)]
    struct Entry {
        name: String,
        kind: tar::EntryType,
        owner: (u64, u64),
        link: Option<String>,
    }

    fn entry(name: &str, kind: tar::EntryType, link: Option<&str>) -> Entry {
        Entry {
            name: name.into(),
            kind,
            owner: (0, 0),
            link: link.map(str::to_string),
        }
    }

    fn entries(layer: &[u8]) -> Vec<Entry> {
        let mut archive = tar::Archive::new(layer);
        let mut out = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let link = e.link_name().unwrap();
            out.push(Entry {
                name: e.path().unwrap().to_string_lossy().into_owned(),
                kind: e.header().entry_type(),
                owner: (e.header().uid().unwrap(), e.header().gid().unwrap()),
                link: link.map(|l| l.to_string_lossy().into_owned()),
            });
        }
        out
    }

    #[test]
    fn a_binary_layer_is_the_same_bytes_whatever_the_file_times() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("hello");
        fs::write(&bin, b"\x7fELF pretend").unwrap();
        let layer = Layer::binary(bin.clone());
        let first = layer.tar().unwrap();
        // Same content, new modification time: same layer, same digest.
        fs::File::options()
            .write(true)
            .open(&bin)
            .unwrap()
            .set_modified(std::time::UNIX_EPOCH + std::time::Duration::from_secs(86_400))
            .unwrap();
        assert_eq!(layer.tar().unwrap(), first);
        assert_eq!(
            entries(&first),
            [entry("hello", tar::EntryType::Regular, None)]
        );
        assert_eq!(layer.entrypoint().as_deref(), Some("/hello"));
    }

    #[test]
    fn a_root_layer_keeps_the_tree_in_name_order_with_symlinks_as_links() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("usr/bin")).unwrap();
        fs::create_dir_all(dir.path().join("usr/lib/empty")).unwrap();
        fs::write(dir.path().join("usr/bin/python3.13"), b"interp").unwrap();
        std::os::unix::fs::symlink("python3.13", dir.path().join("usr/bin/python3")).unwrap();
        let layer = Layer::Root(dir.path().to_path_buf());
        assert_eq!(layer.entrypoint(), None);
        use tar::EntryType::{Directory, Regular, Symlink};
        assert_eq!(
            entries(&layer.tar().unwrap()),
            [
                entry("usr", Directory, None),
                entry("usr/bin", Directory, None),
                entry("usr/bin/python3", Symlink, Some("python3.13")),
                entry("usr/bin/python3.13", Regular, None),
                entry("usr/lib", Directory, None),
                entry("usr/lib/empty", Directory, None),
            ]
        );
    }

    #[test]
    fn a_layer_of_a_missing_binary_names_it() {
        let err = Layer::binary(PathBuf::from("/nonexistent/airlock-shim"))
            .tar()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("/nonexistent/airlock-shim"),
            "{err:#}"
        );
    }

    #[test]
    fn a_bundle_is_packed_and_checked_like_airlockctl_packs_it() {
        let manifest =
            fs::read(crate::install::workspace().join("examples/hello/plugin.yaml")).unwrap();
        let bundle = Bundle {
            file: "hello-bundle.tar.gz".into(),
            files: vec![("plugin.yaml".into(), manifest.clone())],
        };
        let packed = bundle.pack().unwrap();
        assert_eq!(packed.manifest.name, "hello");
        // Reproducible: the same files give the same digest.
        assert_eq!(bundle.pack().unwrap().digest, packed.digest);
        // A bundle the operator would refuse is refused here too, not written.
        let bad = Bundle {
            file: "bad.tar.gz".into(),
            files: vec![("plugin.yaml".into(), b"name: [".to_vec())],
        };
        let err = bad.pack().unwrap_err();
        assert!(format!("{err:#}").contains("bad.tar.gz"), "{err:#}");
    }

    #[test]
    fn images_env_names_every_sample_image_and_bundle() {
        let env = ImagesEnv {
            shim_image: "r/airlock/shim@sha256:aa".into(),
            operator_image: "r/airlock/operator@sha256:bb".into(),
            hello_broken_image: "r/examples/hello:broken".into(),
            samples: vec![Sample {
                key: Sample::key_of("crash-test-oom"),
                image: "r/examples/crash-test:1.0.0".into(),
                bundle: PathBuf::from("/t/crash-test-oom-bundle.tar.gz"),
            }],
        };
        assert_eq!(
            env.render(),
            "AIRLOCK_SHIM_IMAGE=r/airlock/shim@sha256:aa\n\
             AIRLOCK_OPERATOR_IMAGE=r/airlock/operator@sha256:bb\n\
             AIRLOCK_HELLO_BROKEN_IMAGE=r/examples/hello:broken\n\
             AIRLOCK_CRASH_TEST_OOM_IMAGE=r/examples/crash-test:1.0.0\n\
             AIRLOCK_CRASH_TEST_OOM_BUNDLE=/t/crash-test-oom-bundle.tar.gz\n"
        );
    }
}
