//! `new --lang rust|go|python NAME`: a plugin skeleton that builds, passes its own test cases
//! with `run --test`, and has its image recipe (Containerfile) and its signed-bundle recipe
//! (README). The templates are the files under `sdk/templates/`, compiled into this binary with
//! the SDK of this Airlock (copied into the skeleton: the SDKs are not published to a registry),
//! so a skeleton is made offline and always matches the CLI that made it. [`files`] is pure.

use std::fmt;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};

/// The language of a skeleton.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Lang {
    Rust,
    Go,
    Python,
}

#[derive(Args, Debug)]
pub struct NewArgs {
    /// The plugin's name: a DNS label (lowercase letters, digits, `-`), as plugin.yaml needs.
    pub name: String,
    /// The language.
    #[arg(long, value_enum)]
    pub lang: Lang,
    /// Where to create it (must not exist, or be empty). Default: ./NAME.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum NewError {
    #[error(
        "{0:?} is not a plugin name: use lowercase letters, digits and `-`, starting with a letter and ending with a letter or digit, at most 63 (a DNS label, as plugin.yaml needs)"
    )]
    BadName(String),
    #[error("{} exists and is not empty; choose another --dir or remove it", .0.display())]
    Exists(PathBuf),
    #[error("writing {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The SDK versions the skeletons name in plugin.yaml's `sdk`.
const RUST_SDK_VERSION: &str = airlock_sdk_version();
const GO_SDK_VERSION: &str = "0.1.0";
const PYTHON_SDK_VERSION: &str = "0.1.0";

const fn airlock_sdk_version() -> &'static str {
    // The Rust SDK is this workspace's crate, at the workspace's version.
    env!("CARGO_PKG_VERSION")
}

const SCHEMA: &str = include_str!("../../sdk/plugin.schema.json");

/// A template file: its path in the skeleton and its text, with `{{name}}` and `{{sdk_version}}`.
type Template = (&'static str, &'static str);

const PYTHON: &[Template] = &[
    (
        "bundle/plugin.yaml",
        include_str!("../../sdk/templates/python/bundle/plugin.yaml"),
    ),
    (
        "bundle/plugin.py",
        include_str!("../../sdk/templates/python/bundle/plugin.py"),
    ),
    (
        "bundle/airlock_sdk.py",
        include_str!("../../sdk/python/airlock_sdk.py"),
    ),
    (
        "cases.yaml",
        include_str!("../../sdk/templates/python/cases.yaml"),
    ),
    (
        "Containerfile",
        include_str!("../../sdk/templates/python/Containerfile"),
    ),
    (
        "README.md",
        include_str!("../../sdk/templates/python/README.md"),
    ),
];

const GO: &[Template] = &[
    (
        "bundle/plugin.yaml",
        include_str!("../../sdk/templates/go/bundle/plugin.yaml"),
    ),
    (
        "main.go",
        include_str!("../../sdk/templates/go/main.go.tmpl"),
    ),
    ("go.mod", include_str!("../../sdk/templates/go/go.mod.tmpl")),
    (
        "third_party/airlock-sdk/go.mod",
        include_str!("../../sdk/go/go.mod"),
    ),
    (
        "third_party/airlock-sdk/airlock.go",
        include_str!("../../sdk/go/airlock.go"),
    ),
    (
        "cases.yaml",
        include_str!("../../sdk/templates/go/cases.yaml"),
    ),
    (
        "Containerfile",
        include_str!("../../sdk/templates/go/Containerfile"),
    ),
    (
        "README.md",
        include_str!("../../sdk/templates/go/README.md"),
    ),
];

const RUST: &[Template] = &[
    (
        "bundle/plugin.yaml",
        include_str!("../../sdk/templates/rust/bundle/plugin.yaml"),
    ),
    (
        "Cargo.toml",
        include_str!("../../sdk/templates/rust/Cargo.toml.tmpl"),
    ),
    (
        "src/main.rs",
        include_str!("../../sdk/templates/rust/main.rs.tmpl"),
    ),
    (
        "third_party/airlock-sdk/Cargo.toml",
        include_str!("../../sdk/templates/rust/sdk-Cargo.toml.tmpl"),
    ),
    (
        "third_party/airlock-sdk/src/lib.rs",
        include_str!("../../sdk/src/lib.rs"),
    ),
    (
        "third_party/airlock-sdk/src/multiplexed.rs",
        include_str!("../../sdk/src/multiplexed.rs"),
    ),
    (
        "third_party/airlock-sdk/src/protocol.rs",
        include_str!("../../sdk/src/protocol.rs"),
    ),
    (
        "cases.yaml",
        include_str!("../../sdk/templates/rust/cases.yaml"),
    ),
    (
        "Containerfile",
        include_str!("../../sdk/templates/rust/Containerfile"),
    ),
    (
        "README.md",
        include_str!("../../sdk/templates/rust/README.md"),
    ),
];

/// Whether `name` is a DNS label (what the manifest parser accepts as a name).
fn is_dns_label(name: &str) -> bool {
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| ok(c) || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.ends_with(ok)
}

/// Whether `path` is one of the SDK's own sources, copied as it is (only the templates have
/// placeholders; a source may well contain `{{`).
fn is_sdk_source(path: &str) -> bool {
    path.starts_with("third_party/airlock-sdk/src")
        || path.ends_with("airlock_sdk.py")
        || path.ends_with("airlock.go")
}

/// The skeleton's files (path in the skeleton, text) for `lang` and `name`.
pub fn files(lang: Lang, name: &str) -> Result<Vec<(PathBuf, String)>, NewError> {
    if !is_dns_label(name) {
        return Err(NewError::BadName(name.to_string()));
    }
    let (templates, sdk_version) = match lang {
        Lang::Rust => (RUST, RUST_SDK_VERSION),
        Lang::Go => (GO, GO_SDK_VERSION),
        Lang::Python => (PYTHON, PYTHON_SDK_VERSION),
    };
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{sdk_version}}", sdk_version)
    };
    let mut out: Vec<(PathBuf, String)> = templates
        .iter()
        .map(|(path, text)| {
            let text = if is_sdk_source(path) {
                text.to_string()
            } else {
                fill(text)
            };
            (PathBuf::from(path), text)
        })
        .collect();
    out.push((PathBuf::from("plugin.schema.json"), SCHEMA.to_string()));
    Ok(out)
}

/// What `new` made.
#[derive(Debug)]
pub struct NewReport {
    pub dir: PathBuf,
    pub name: String,
    pub lang: Lang,
    pub files: usize,
}

impl fmt::Display for NewReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let dir = self.dir.display();
        writeln!(f, "created {dir} ({} files)", self.files)?;
        let test = match self.lang {
            Lang::Rust => format!(
                "cd {dir} && cargo build && kubectl airlock run bundle --test cases.yaml -- target/debug/{}",
                self.dir
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            ),
            Lang::Go => {
                let name = self
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default();
                format!(
                    "cd {dir} && go build -o {name} . && kubectl airlock run bundle --test cases.yaml -- ./{name}"
                )
            }
            Lang::Python => format!("cd {dir} && kubectl airlock run bundle --test cases.yaml"),
        };
        write!(
            f,
            "next: {test}\n      then README.md: the image and the signed bundle"
        )
    }
}

fn empty_or_missing(dir: &Path) -> bool {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => entries.next().is_none(),
        Err(_) => !dir.exists(),
    }
}

/// Writes the skeleton.
pub fn run(args: &NewArgs) -> Result<NewReport, NewError> {
    let files = files(args.lang, &args.name)?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(&args.name));
    if !empty_or_missing(&dir) {
        return Err(NewError::Exists(dir));
    }
    for (path, text) in &files {
        let path = dir.join(path);
        let write = |path: &Path| -> std::io::Result<()> {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(path, text)
        };
        write(&path).map_err(|source| NewError::Write {
            path: path.clone(),
            source,
        })?;
    }
    Ok(NewReport {
        dir,
        name: args.name.clone(),
        lang: args.lang,
        files: files.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_skeleton_names_the_plugin_everywhere_and_leaves_no_placeholder() {
        for lang in [Lang::Rust, Lang::Go, Lang::Python] {
            let files = files(lang, "my-plugin").expect("files");
            for (path, text) in &files {
                let copied = path.to_str().is_some_and(is_sdk_source);
                assert!(
                    copied || !text.contains("{{"),
                    "{lang:?} {}: a placeholder is left",
                    path.display()
                );
            }
            let manifest = &files
                .iter()
                .find(|(p, _)| p == Path::new("bundle/plugin.yaml"))
                .expect("a manifest")
                .1;
            let parsed = airlock_bundle::Manifest::parse(manifest).expect("the manifest parses");
            assert_eq!(parsed.name, "my-plugin");
            assert!(parsed.sdk.is_some(), "{lang:?} names its SDK");
            assert!(files.iter().any(|(p, _)| p == Path::new("cases.yaml")));
            assert!(files.iter().any(|(p, _)| p == Path::new("Containerfile")));
            let cases = &files
                .iter()
                .find(|(p, _)| p == Path::new("cases.yaml"))
                .expect("cases")
                .1;
            crate::run::cases::Cases::parse(cases).expect("the cases parse");
        }
    }

    #[test]
    fn a_name_yaml_would_read_as_a_number_stays_a_string() {
        for lang in [Lang::Rust, Lang::Go, Lang::Python] {
            let files = files(lang, "true").expect("files");
            let text = |p: &str| &files.iter().find(|(f, _)| f == Path::new(p)).expect(p).1;
            let manifest = airlock_bundle::Manifest::parse(text("bundle/plugin.yaml"));
            assert_eq!(manifest.expect("parses").name, "true", "{lang:?}");
            let cases = crate::run::cases::Cases::parse(text("cases.yaml")).expect("cases");
            assert_eq!(
                cases.cases[0].expect.output.as_ref().expect("output")["plugin"],
                "true"
            );
        }
    }

    #[test]
    fn a_name_that_is_not_a_dns_label_is_refused() {
        for bad in ["My-Plugin", "-x", "x-", "", "a_b", "123", &"x".repeat(64)] {
            let e = files(Lang::Go, bad).expect_err(bad);
            assert!(e.to_string().contains("DNS label"), "{e}");
        }
    }

    #[test]
    fn a_directory_with_files_is_not_written_over() {
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("keep"), "x").expect("write");
        let e = run(&NewArgs {
            name: "p".into(),
            lang: Lang::Python,
            dir: Some(dir.path().to_path_buf()),
        })
        .expect_err("not empty");
        assert!(matches!(e, NewError::Exists(_)));
    }
}
