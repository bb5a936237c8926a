//! `make e2e-images`: builds every image the e2e suite, `make demo` and `make bench` run, pushes
//! them to the cluster's registry, packs the sample bundles and writes `target/e2e/images.env`.
//! One tool for all test artifacts (see `airlock_e2e::artifacts`); no Docker engine needed.
//!
//! Environment: `AIRLOCK_E2E_REGISTRY` (default: the local cluster's registry), `CRANE` (default:
//! `crane` on PATH, which `make` puts there), `CARGO` (set by `cargo run`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use airlock_e2e::artifacts::{
    Bundle, IMAGE_PACKAGES, Image, ImagesEnv, Layer, MUSL_TARGET, Sample,
};
use airlock_e2e::images::{push, registry};
use airlock_e2e::install::workspace;
use anyhow::{Context, Result, bail};

/// Sample plugins whose image is a Rust binary of the same name, and whose bundle is their
/// `plugin.yaml`: (name, directory holding plugin.yaml, image repository).
const RUST_SAMPLES: &[(&str, &str, &str)] = &[
    ("hello", "examples/hello", "examples/hello:1.0.0"),
    (
        "data-formatter",
        "examples/data-formatter",
        "examples/data-formatter:1.0.0",
    ),
    (
        "event-logger",
        "examples/event-logger",
        "examples/event-logger:1.0.0",
    ),
    (
        "crash-test",
        "examples/crash-test",
        "examples/crash-test:1.0.0",
    ),
    ("hostile", "e2e/hostile", "airlock/e2e-hostile:dev"),
];

fn main() {
    if let Err(e) = run() {
        eprintln!("e2e-images: {e:#}");
        std::process::exit(1);
    }
}

struct Tool {
    root: PathBuf,
    out: PathBuf,
    registry: String,
    started: Instant,
}

impl Tool {
    fn log(&self, what: &str) {
        eprintln!("[{:4}s] {what}", self.started.elapsed().as_secs());
    }

    /// Runs a build command in `dir`, failing with its name when it fails.
    fn build(&self, what: &str, dir: &Path, cmd: &mut Command) -> Result<()> {
        self.log(&format!("building {what}"));
        let status = cmd
            .current_dir(dir)
            .status()
            .with_context(|| format!("starting the build of {what}"))?;
        if !status.success() {
            bail!("building {what} failed ({status}); its output is above");
        }
        Ok(())
    }

    /// Pushes `image` and returns its reference by digest.
    fn push(&self, image: &Image) -> Result<String> {
        let pushed = push(image)?;
        self.log(&format!("pushed {pushed}"));
        Ok(pushed)
    }

    /// Packs `bundle` into `target/e2e` and returns its path.
    fn pack(&self, bundle: &Bundle) -> Result<PathBuf> {
        let packed = bundle.pack()?;
        let path = self.out.join(&bundle.file);
        std::fs::write(&path, &packed.bytes)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    fn reference(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.registry)
    }
}

fn run() -> Result<()> {
    let root = workspace()
        .canonicalize()
        .context("finding the workspace")?;
    let tool = Tool {
        out: root.join("target/e2e"),
        registry: registry(),
        started: Instant::now(),
        root,
    };
    std::fs::create_dir_all(&tool.out)
        .with_context(|| format!("creating {}", tool.out.display()))?;

    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args([
        "build",
        "--quiet",
        "--release",
        "--locked",
        "--target",
        MUSL_TARGET,
    ]);
    for package in IMAGE_PACKAGES {
        build.args(["-p", package]);
    }
    tool.build("the static binaries", &tool.root, &mut build)?;
    let release = tool.root.join("target").join(MUSL_TARGET).join("release");
    let rust_binary = |name: &str| release.join(name);

    // The product: shim, and operator with the router beside it (one image, two commands), the
    // CA bundle for HTTPS registries.
    let shim_image = tool.push(&Image {
        reference: tool.reference("airlock/shim:dev"),
        layer: Layer::binary(rust_binary("airlock-shim")),
    })?;
    let operator_image = tool.push(&Image {
        reference: tool.reference("airlock/operator:dev"),
        layer: Layer::Binaries {
            binaries: vec![
                rust_binary("airlock-operator"),
                rust_binary("airlock-router"),
            ],
            ca: true,
        },
    })?;
    tool.push(&Image {
        reference: tool.reference("airlock/e2e-probe:dev"),
        layer: Layer::binary(rust_binary("airlock-e2e-probe")),
    })?;
    // A hello image whose plugin never starts (its entry point is the probe, not a plugin): an
    // upgrade to it cannot become ready, which the rollback test needs.
    let hello_broken_image = tool.reference("examples/hello:broken");
    tool.push(&Image {
        reference: hello_broken_image.clone(),
        layer: Layer::binary(rust_binary("airlock-e2e-probe")),
    })?;
    let mut env = ImagesEnv {
        shim_image,
        operator_image,
        hello_broken_image,
        samples: Vec::new(),
    };

    for &(name, dir, repository) in RUST_SAMPLES {
        let image = tool.reference(repository);
        tool.push(&Image {
            reference: image.clone(),
            layer: Layer::binary(rust_binary(name)),
        })?;
        let manifest = tool.root.join(dir).join("plugin.yaml");
        let bundle = tool.pack(&Bundle::from_files(
            &format!("{name}-bundle.tar.gz"),
            &[manifest],
        )?)?;
        env.samples.push(Sample {
            key: Sample::key_of(name),
            image,
            bundle,
        });
    }
    // crash-test whose onLoad exhausts memory: the same image, a bundle that says so.
    let mut oom = Bundle::from_files(
        "crash-test-oom-bundle.tar.gz",
        &[tool.root.join("examples/crash-test/plugin.yaml")],
    )?;
    oom.files.push((
        "crash-test.json".into(),
        b"{\"onLoad\": \"exhaust-memory\"}\n".to_vec(),
    ));
    env.samples.push(Sample {
        key: Sample::key_of("crash-test-oom"),
        image: tool.reference("examples/crash-test:1.0.0"),
        bundle: tool.pack(&oom)?,
    });

    // Examples in other languages: Go (a static binary) and Python (a runtime image; the code is
    // in the signed bundle).
    let scratch = tempfile::tempdir().context("creating a build directory")?;
    let go_binary = scratch.path().join("go-greeter");
    let mut go = Command::new("go");
    go.args(["build", "-trimpath", "-ldflags", "-s -w", "-o"])
        .arg(&go_binary)
        .arg(".")
        .env("CGO_ENABLED", "0")
        .env("GOFLAGS", "-buildvcs=false")
        .env("GOTOOLCHAIN", "local");
    let go_dir = tool.root.join("examples/go-greeter");
    tool.build("examples/go-greeter", &go_dir, &mut go)?;
    let image = tool.reference("examples/go-greeter:1.0.0");
    tool.push(&Image {
        reference: image.clone(),
        layer: Layer::binary(go_binary),
    })?;
    env.samples.push(Sample {
        key: Sample::key_of("go-greeter"),
        image,
        bundle: tool.pack(&Bundle::from_files(
            "go-greeter-bundle.tar.gz",
            &[go_dir.join("plugin.yaml")],
        )?)?,
    });

    let python_root = scratch.path().join("python-runtime");
    let mut python = Command::new(tool.root.join("e2e/python-runtime.sh"));
    python.arg(&python_root);
    tool.build("a Python runtime", &tool.root, &mut python)?;
    let image = tool.reference("examples/python-runtime:3");
    tool.push(&Image {
        reference: image.clone(),
        layer: Layer::Root(python_root),
    })?;
    let python_dir = tool.root.join("examples/python-upper");
    let python_files = [python_dir.join("plugin.yaml"), python_dir.join("plugin.py")];
    env.samples.push(Sample {
        key: Sample::key_of("python-upper"),
        image: image.clone(),
        bundle: tool.pack(&Bundle::from_files(
            "python-upper-bundle.tar.gz",
            &python_files,
        )?)?,
    });
    // python-upper without onConfigChange: a new configuration restarts it (a new revision).
    let mut restart = Bundle::from_files("python-upper-restart-bundle.tar.gz", &python_files)?;
    for (name, content) in &mut restart.files {
        if name == "plugin.yaml" {
            // Nor does it require live configuration changes, which it could not take.
            let manifest = String::from_utf8_lossy(content)
                .replace("onConfigChange, ", "")
                .replace("\nrequires: [liveConfig]\n", "\n");
            anyhow::ensure!(
                !manifest.contains("onConfigChange") && !manifest.contains("liveConfig"),
                "python-upper's plugin.yaml no longer lists onConfigChange and requires liveConfig as expected"
            );
            *content = manifest.into_bytes();
        }
    }
    env.samples.push(Sample {
        key: Sample::key_of("python-upper-restart"),
        image,
        bundle: tool.pack(&restart)?,
    });

    let path = tool.out.join("images.env");
    std::fs::write(&path, env.render()).with_context(|| format!("writing {}", path.display()))?;
    tool.log(&format!(
        "wrote {} and the sample bundles in {}",
        path.display(),
        tool.out.display()
    ));
    Ok(())
}
