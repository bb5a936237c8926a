//! A plugin made with `airlockctl new --lang rust|go|python` passes its own test cases with
//! `run --test` on this machine and then, unchanged, gives the same answers through the router on
//! the cluster (issue 18): the same cases file, checked by the same checker
//! (`airlockctl::run::cases::check`), against the Plugin's answers and its `PluginStorage`.
//! Its image is built here the way its Containerfile says (the static binary alone; Python: a
//! runtime, the code in the bundle), pushed to the cluster's registry; its bundle is the
//! skeleton's `bundle/` directory packed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use airlock_crds::{Plugin, PluginStorage};
use airlockctl::run::cases::{Cases, Observed, check};
use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use airlock_e2e::artifacts::{Image, Layer, MUSL_TARGET};
use airlock_e2e::cli::airlockctl;
use airlock_e2e::images::{push, registry};
use airlock_e2e::install::images_env;
use airlock_e2e::plugins::{active, wait_plugin};
use airlock_e2e::router::{Fixture, in_fixture};

const PERMISSIONS: &[&str] = &["log", "storage:read", "storage:write", "events:emit"];

#[tokio::test]
async fn a_python_skeleton_answers_the_same_on_the_cluster() -> Result<()> {
    in_fixture("new-py", PERMISSIONS, async |f: &Fixture| {
        scenario(f, "python").await
    })
    .await
}

#[tokio::test]
async fn a_go_skeleton_answers_the_same_on_the_cluster() -> Result<()> {
    in_fixture("new-go", PERMISSIONS, async |f: &Fixture| {
        scenario(f, "go").await
    })
    .await
}

#[tokio::test]
async fn a_rust_skeleton_answers_the_same_on_the_cluster() -> Result<()> {
    in_fixture("new-rs", PERMISSIONS, async |f: &Fixture| {
        scenario(f, "rust").await
    })
    .await
}

fn run(dir: &Path, program: &Path, args: &[&str]) -> Result<std::process::Output> {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=mod -buildvcs=false")
        .env("CGO_ENABLED", "0")
        .output()
        .with_context(|| format!("running {} {}", program.display(), args.join(" ")))
}

/// The skeleton's plugin binary, built as its Containerfile builds it (static), or `None` for
/// Python (the code is in the bundle).
fn build(lang: &str, dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    let (program, args, binary): (&str, Vec<&str>, PathBuf) = match lang {
        "go" => (
            "go",
            vec!["build", "-trimpath", "-o", name, "."],
            dir.join(name),
        ),
        "rust" => (
            "cargo",
            vec![
                "build",
                "--offline",
                "-q",
                "--release",
                "--target",
                MUSL_TARGET,
            ],
            dir.join("target")
                .join(MUSL_TARGET)
                .join("release")
                .join(name),
        ),
        _ => return Ok(None),
    };
    let out = run(dir, Path::new(program), &args)?;
    ensure!(
        out.status.success(),
        "building the {lang} skeleton: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(Some(binary))
}

async fn scenario(f: &Fixture, lang: &str) -> Result<()> {
    let bin = airlockctl()?;
    let parent = tempfile::tempdir()?;
    let name = format!("e2e-{lang}-skeleton");
    let made = run(parent.path(), &bin, &["new", "--lang", lang, &name])?;
    ensure!(
        made.status.success(),
        "new: {}",
        String::from_utf8_lossy(&made.stderr)
    );
    let dir = parent.path().join(&name);
    let binary = build(lang, &dir, &name)?;

    // On this machine: every case passes.
    let mut args = vec!["run", "bundle", "--test", "cases.yaml"];
    let entry = binary.as_ref().map(|b| b.display().to_string());
    if let Some(entry) = &entry {
        args.extend(["--", entry.as_str()]);
    }
    let local = run(&dir, &bin, &args)?;
    ensure!(
        local.status.success(),
        "run --test of the {lang} skeleton: {}{}",
        String::from_utf8_lossy(&local.stdout),
        String::from_utf8_lossy(&local.stderr)
    );

    // The same skeleton on the cluster.
    let image = match &binary {
        Some(binary) => push(&Image {
            reference: format!("{}/e2e/{name}:{}", registry(), airlock_e2e::unique_suffix()),
            layer: Layer::binary(binary.clone()),
        })?,
        // The Python runtime the python-upper sample runs on (`make e2e-images`).
        None => images_env("AIRLOCK_PYTHON_UPPER_IMAGE")?,
    };
    let packed =
        airlock_bundle::pack::pack(&dir.join("bundle"), airlock_bundle::DEFAULT_MAX_BYTES)?;
    f.sandbox
        .put_bundle(&format!("{name}-bundle"), packed.bytes)
        .await?;
    let plugin = json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": name},
        "spec": {
            "version": "0.1.0",
            "image": image,
            "bundle": {"source": {"configMapRef": {"name": format!("{name}-bundle")}}},
            "pluginApiVersion": 1,
            "hooks": [{"name": "transform", "timeout": "2s"}, {"name": "onEvent", "timeout": "2s"}],
            "permissions": PERMISSIONS,
            "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
        }
    });
    let plugins = f.ns.api::<Plugin>();
    airlock_e2e::plugins::apply(&plugins, &plugin).await?;
    wait_plugin(&plugins, &name, "Active", active).await?;
    f.wait_serving(&[&name], "transform").await?;

    let cases = Cases::read(&dir.join("cases.yaml"))?;
    let storage = f.ns.api::<PluginStorage>();
    for case in &cases.cases {
        let result = f
            .invoke(&name, &case.hook, case.payload.clone())
            .await
            .map_err(|s| {
                (
                    airlockctl::invoke::code_name(s.code()),
                    s.message().to_string(),
                )
            });
        let stored: BTreeMap<String, Value> = storage
            .get_opt(&name)
            .await?
            .and_then(|s| s.status)
            .map(|s| {
                s.entries
                    .into_iter()
                    .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|v| (k, v)))
                    .collect()
            })
            .unwrap_or_default();
        // Emitted events are checked on this machine (run --test above); here the answers and
        // the storage the router keeps.
        let mut expect = case.expect.clone();
        expect.emitted = None;
        let observed = Observed {
            result,
            storage: stored,
            emitted: Vec::new(),
        };
        let wrong = check(&expect, &observed);
        ensure!(
            wrong.is_empty(),
            "{lang} skeleton, case {:?} through the router: {wrong:?}",
            case.name
        );
    }
    Ok(())
}
