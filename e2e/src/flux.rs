//! A real GitOps pipeline for the e2e: Flux's source-controller and kustomize-controller (built
//! from the Go module proxy by `e2e/cluster/build.sh flux`) run as children of the test, on the
//! host, against the cluster under test with its admin kubeconfig.
//!
//! A "commit" is an OCI artifact in the local registry: a gzipped tarball of YAML manifests pushed
//! as the only layer of an image ([`push_commit`]). An `OCIRepository` follows the tag, a
//! `Kustomization` applies what it fetched ([`Pipeline`]), and the assertion is always what Flux
//! itself reports: the Kustomization's `Ready` condition and `lastAppliedRevision`
//! ([`wait_kustomization`]), and what kustomize-controller says each server-side apply changed
//! ([`Flux::applies`] from its log — every apply, `unchanged` included — and
//! [`change_event_counts`] from its Events, which client-go throttles).
//!
//! One set of controllers runs at a time on a machine ([`Flux::start`] holds a file lock while
//! they live): they watch all namespaces, so two sets would both reconcile every Kustomization.
//! Flux's objects carry finalizers only a running controller removes; [`Flux::finish`] deletes
//! them while the controllers still run (and a later run finalizes what a killed one left behind).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::TestNamespace;
use crate::images::{crane, registry};
use crate::wait;

/// The tag every commit is pushed to; the `OCIRepository` follows it.
pub const TAG: &str = "latest";
/// Field manager of what the tests apply themselves (CRDs, sources, Kustomizations).
pub const FIELD_MANAGER: &str = "airlock-e2e";
/// The annotation that asks a Flux controller to reconcile now (what `flux reconcile` sets).
pub const REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";
/// The message kustomize-controller logs after each server-side apply, with the action taken on
/// every object (`internal/controller/kustomization_controller.go`, `apply`).
const APPLY_LOG_MESSAGE: &str = "server-side apply completed";
/// How long [`Flux::start`] waits for another run's controllers to stop.
const LOCK_WAIT: Duration = Duration::from_secs(900);

/// The two controllers, with the variable of `e2e/cluster/versions.env` that pins each.
const SOURCE_CONTROLLER: (&str, &str) = ("source-controller", "FLUX_SOURCE_CONTROLLER_VERSION");
const KUSTOMIZE_CONTROLLER: (&str, &str) =
    ("kustomize-controller", "FLUX_KUSTOMIZE_CONTROLLER_VERSION");

/// `OCIRepository`, source.toolkit.fluxcd.io/v1.
pub fn oci_repository_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("source.toolkit.fluxcd.io", "v1", "OCIRepository"),
        "ocirepositories",
    )
}

/// `Kustomization`, kustomize.toolkit.fluxcd.io/v1.
pub fn kustomization_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("kustomize.toolkit.fluxcd.io", "v1", "Kustomization"),
        "kustomizations",
    )
}

/// Where a Flux controller's binary is: on `PATH` when the Makefile puts it there, else in the
/// build cache where `e2e/cluster/build.sh` leaves it
/// (`${AIRLOCK_CACHE:-~/.cache/airlock}/bin/<name>-<version>/<name>`, the version from
/// `e2e/cluster/versions.env`). Its CRDs are in `crds/` next to it.
pub fn controller_binary(name: &str, version_key: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
    {
        return Ok(path);
    }
    let version = versions_env(version_key)?;
    let cache = std::env::var_os("AIRLOCK_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/airlock")))
        .context("neither AIRLOCK_CACHE nor HOME is set")?;
    let path = cache.join(format!("bin/{name}-{version}/{name}"));
    ensure!(
        path.is_file(),
        "{name} {version} is not built: run `make tools` (e2e/cluster/build.sh; looked on PATH and at {})",
        path.display()
    );
    Ok(path)
}

/// A value of `e2e/cluster/versions.env`, the file the Makefile and the cluster scripts read.
fn versions_env(key: &str) -> Result<String> {
    let path = crate::install::workspace().join("e2e/cluster/versions.env");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('"').to_string())
        .with_context(|| format!("{key} missing from {}", path.display()))
}

/// Installs (server-side apply, so it is idempotent and concurrent runs agree) the CRDs of both
/// controllers, as built next to their binaries, and waits until the API server serves them.
pub async fn install_crds(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for (name, version_key) in [SOURCE_CONTROLLER, KUSTOMIZE_CONTROLLER] {
        let dir = controller_binary(name, version_key)?
            .parent()
            .context("a binary has a directory")?
            .join("crds");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.retain(|p| p.extension().is_some_and(|e| e == "yaml"));
        files.sort();
        ensure!(!files.is_empty(), "no CRDs in {}", dir.display());
        for file in files {
            let text = std::fs::read_to_string(&file)?;
            let crd: CustomResourceDefinition = serde_yaml::from_str(&text)
                .with_context(|| format!("parsing {}", file.display()))?;
            let crd_name = crd.name_any();
            crds.patch(
                &crd_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .with_context(|| format!("applying {}", file.display()))?;
            names.push(crd_name);
        }
    }
    for name in names {
        wait::until(
            &format!("CRD {name} established"),
            crate::WAIT,
            async || Ok(crds.get(&name).await?),
            |crd| {
                crd.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| {
                        c.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            },
        )
        .await?;
    }
    Ok(())
}

/// One controller process; killed (and reaped) on drop.
#[derive(Debug)]
struct Controller {
    name: &'static str,
    child: Child,
    log: PathBuf,
    health_port: u16,
}

impl Drop for Controller {
    fn drop(&mut self) {
        // Killing an exited child fails harmlessly; wait reaps it either way.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Flux's source-controller and kustomize-controller, running against the cluster under test
/// until this is finished or dropped.
pub struct Flux {
    pub client: Client,
    /// The controllers' runtime namespace (`RUNTIME_NAMESPACE`); they watch all namespaces.
    pub runtime: TestNamespace,
    /// Holds the controllers' logs and source-controller's artifact storage; kept on failure.
    dir: tempfile::TempDir,
    /// Declared before `_lock`: fields drop in order, so the controllers die before the lock goes.
    controllers: Vec<Controller>,
    /// The machine-wide lock of [`Flux::start`]; released when the file closes.
    _lock: File,
}

impl std::fmt::Debug for Flux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flux")
            .field("runtime", &self.runtime)
            .field("dir", &self.dir.path())
            .field("controllers", &self.controllers)
            .finish()
    }
}

impl Flux {
    /// Installs Flux's CRDs, creates a runtime namespace, starts both controllers and waits until
    /// both report ready on their health endpoint. Waits first (bounded) for any other Flux of the
    /// e2e on this machine to stop.
    pub async fn start(client: &Client) -> Result<Self> {
        let lock = lock_machine().await?;
        install_crds(client).await?;
        let source_bin = controller_binary(SOURCE_CONTROLLER.0, SOURCE_CONTROLLER.1)?;
        let kustomize_bin = controller_binary(KUSTOMIZE_CONTROLLER.0, KUSTOMIZE_CONTROLLER.1)?;
        let runtime = TestNamespace::create(client, "flux", &[]).await?;
        let dir = tempfile::Builder::new()
            .prefix("airlock-e2e-flux-")
            .tempdir()?;
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let storage_addr = format!("127.0.0.1:{}", free_port()?);

        let mut flux = Self {
            client: client.clone(),
            runtime,
            dir,
            controllers: Vec::new(),
            _lock: lock,
        };
        let started = async {
            // source-controller serves the artifacts it fetched over HTTP on --storage-addr and
            // writes --storage-adv-addr into each artifact's URL: kustomize-controller, on the
            // same host, downloads from there.
            let storage_args = [
                format!("--storage-path={}", storage.display()),
                format!("--storage-addr={storage_addr}"),
                format!("--storage-adv-addr={storage_addr}"),
            ];
            flux.spawn(SOURCE_CONTROLLER.0, &source_bin, &storage_args)?;
            flux.spawn(KUSTOMIZE_CONTROLLER.0, &kustomize_bin, &[])?;
            for i in 0..flux.controllers.len() {
                flux.wait_ready(i).await?;
            }
            anyhow::Ok(())
        }
        .await;
        match started {
            Ok(()) => Ok(flux),
            Err(err) => {
                let tails = flux.log_tails(40);
                let _ = flux.finish_inner(true).await;
                Err(err.context(tails))
            }
        }
    }

    /// Starts one controller with the flags both share, its output (stdout and stderr, JSON log
    /// lines) into `<dir>/<name>.log`.
    fn spawn(&mut self, name: &'static str, bin: &Path, extra: &[String]) -> Result<()> {
        let health_port = free_port()?;
        let log = self.dir.path().join(format!("{name}.log"));
        let out = File::create(&log)?;
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .unwrap_or_else(|| crate::LOCAL_CLUSTER_KUBECONFIG.into());
        let child = Command::new(bin)
            .args([
                // The defaults, spelled out: one instance, every namespace, JSON logs.
                "--enable-leader-election=false".to_string(),
                "--watch-all-namespaces=true".to_string(),
                "--log-encoding=json".to_string(),
                "--log-level=info".to_string(),
                format!("--metrics-addr=127.0.0.1:{}", free_port()?),
                format!("--health-addr=127.0.0.1:{health_port}"),
            ])
            .args(extra)
            // controller-runtime reads the kubeconfig from KUBECONFIG (these binaries have no
            // --kubeconfig flag).
            .env("KUBECONFIG", kubeconfig)
            .env("RUNTIME_NAMESPACE", &self.runtime.name)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        self.controllers.push(Controller {
            name,
            child,
            log,
            health_port,
        });
        Ok(())
    }

    /// Waits until controller `i` answers `/readyz` with 200, failing at once if it exits.
    async fn wait_ready(&mut self, i: usize) -> Result<()> {
        let name = self.controllers[i].name;
        let port = self.controllers[i].health_port;
        let controllers = &mut self.controllers;
        wait::until(
            &format!("{name} ready on 127.0.0.1:{port}/readyz"),
            crate::WAIT,
            async || {
                if let Some(status) = controllers[i].child.try_wait()? {
                    bail!("{name} exited ({status})");
                }
                Ok(http_status(port, "/readyz").await)
            },
            |status| *status == Some(200),
        )
        .await?;
        Ok(())
    }

    /// The last `lines` lines of each controller's log, for a failure report.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for c in &self.controllers {
            let text = std::fs::read_to_string(&c.log).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!(
                "--- last {lines} lines of {} ---\n",
                c.log.display()
            ));
            for line in &all[all.len().saturating_sub(lines)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// Ends a test that used Flux: deletes every Kustomization and OCIRepository in `namespaces`
    /// while the controllers still run (they hold finalizers), stops the controllers, deletes the
    /// runtime namespace. When `outcome` is an error, prints the tail of the controllers' logs
    /// and keeps the log directory. Returns `outcome`, or else the first cleanup error.
    pub async fn finish(self, namespaces: &[&str], outcome: Result<()>) -> Result<()> {
        let mut cleanup = Ok(());
        for ns in namespaces {
            let deleted = self.delete_flux_objects(ns).await;
            cleanup = cleanup.and(deleted);
        }
        let failed = outcome.is_err() || cleanup.is_err();
        if failed {
            eprintln!("{}", self.log_tails(60));
        }
        let stopped = self.finish_inner(failed).await;
        outcome.and(cleanup).and(stopped)
    }

    /// Stops the controllers, deletes the runtime namespace, keeps the log directory if asked.
    async fn finish_inner(mut self, keep_logs: bool) -> Result<()> {
        self.controllers.clear();
        let deleted = self.runtime.delete().await;
        if keep_logs {
            let dir = self.dir.keep();
            eprintln!("Flux's logs and storage are kept in {}", dir.display());
        }
        deleted
    }

    /// Deletes the Kustomizations, then the OCIRepositories of `ns` and waits until they are
    /// gone (kustomize-controller prunes what they applied). If a finalizer is still there after
    /// the wait, it is removed so that the namespace can go, and the error says so.
    pub async fn delete_flux_objects(&self, ns: &str) -> Result<()> {
        let mut stuck = Vec::new();
        for resource in [kustomization_resource(), oci_repository_resource()] {
            let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, &resource);
            api.delete_collection(&DeleteParams::background(), &ListParams::default())
                .await
                .with_context(|| format!("deleting the {}s of {ns}", resource.kind))?;
            let gone = wait::until(
                &format!("the {}s of {ns} gone", resource.kind),
                crate::WAIT,
                async || Ok(api.list(&ListParams::default()).await?.items.len()),
                |n| *n == 0,
            )
            .await;
            if let Err(err) = gone {
                for obj in api.list(&ListParams::default()).await?.items {
                    api.patch(
                        &obj.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
                    )
                    .await?;
                }
                stuck.push(format!("{err:#}"));
            }
        }
        ensure!(
            stuck.is_empty(),
            "Flux did not finalize its objects (finalizers removed by force): {stuck:?}"
        );
        Ok(())
    }

    /// Every server-side apply of Kustomization `ns/name` that kustomize-controller logged since
    /// it started, oldest first. An apply lists every object of the revision with the action
    /// taken: `created`, `configured` (the object differed from Git: new content or drift),
    /// `unchanged`, … — the same sets the controller turns into its Events (without `unchanged`).
    pub fn applies(&self, ns: &str, name: &str) -> Result<Vec<Apply>> {
        let c = self
            .controllers
            .iter()
            .find(|c| c.name == KUSTOMIZE_CONTROLLER.0)
            .context("kustomize-controller is not running")?;
        let text = std::fs::read_to_string(&c.log)?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|l| l["msg"] == APPLY_LOG_MESSAGE)
            .filter(|l| l["Kustomization"]["namespace"] == ns && l["Kustomization"]["name"] == name)
            .map(|l| Apply {
                at: l["ts"].to_string().trim_matches('"').to_string(),
                revision: l["revision"].as_str().unwrap_or_default().to_string(),
                actions: l["output"]
                    .as_object()
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect())
    }

    /// Watches Kustomization `ns/name` for `over` and fails if any server-side apply in that time
    /// changed an object (drift corrected, or a new revision), or if fewer than `min_applies`
    /// applies happened (a pipeline that stopped reconciling must not pass for a quiet one).
    /// The controller's log is the witness; a new change-set Event ([`change_event_counts`])
    /// fails too, but Events alone would miss changes (client-go throttles them).
    /// Returns the applies seen.
    pub async fn expect_no_drift(
        &self,
        ns: &str,
        name: &str,
        over: Duration,
        min_applies: usize,
    ) -> Result<Vec<Apply>> {
        let before = self.applies(ns, name)?.len();
        let events_before = change_event_counts(&self.client, ns, name).await?;
        tokio::time::sleep(over).await;
        let applies: Vec<Apply> = self.applies(ns, name)?.split_off(before);
        let changed: Vec<&Apply> = applies.iter().filter(|a| !a.changed().is_empty()).collect();
        ensure!(
            changed.is_empty(),
            "Flux changed objects of {ns}/{name} within {over:?}: {changed:#?}"
        );
        ensure!(
            applies.len() >= min_applies,
            "only {} applies of {ns}/{name} within {over:?}, expected at least {min_applies}",
            applies.len()
        );
        let events = change_event_counts(&self.client, ns, name).await?;
        ensure!(
            events == events_before,
            "Flux recorded changes to {ns}/{name} within {over:?}: {events:#?}, \
             before {events_before:#?}"
        );
        Ok(applies)
    }

    /// For a window in which new commits land: the applies of Kustomization `ns/name` after the
    /// first `since` ([`Flux::applies`]) must change nothing unless they apply a revision other
    /// than the apply before them (a commit or a revert: its changes are the commit's). Any change
    /// by a re-apply of the same revision is drift: an object moved away from Git in between
    /// (another field manager wrote a field Flux applied) and Flux put it back. Fails naming those
    /// applies; returns the first apply of each new revision, to check what each commit changed.
    pub fn expect_changes_only_on_new_revisions(
        &self,
        ns: &str,
        name: &str,
        since: usize,
    ) -> Result<Vec<Apply>> {
        let all = self.applies(ns, name)?;
        ensure!(
            since <= all.len(),
            "only {} applies of {ns}/{name}, asked for those after {since}",
            all.len()
        );
        let previous = since.checked_sub(1).map(|i| all[i].revision.as_str());
        let (new_revisions, drifted) = split_by_revision(previous, &all[since..]);
        ensure!(
            drifted.is_empty(),
            "Flux changed objects of {ns}/{name} re-applying a revision it had applied already \
             (drift corrected): {drifted:#?}"
        );
        Ok(new_revisions)
    }
}

/// Splits `applies` (oldest first; `previous` is the revision of the apply before them) into the
/// first apply of each new revision and the re-applies of a revision that changed something.
fn split_by_revision(previous: Option<&str>, applies: &[Apply]) -> (Vec<Apply>, Vec<Apply>) {
    let mut previous = previous;
    let (mut new_revisions, mut drifted) = (Vec::new(), Vec::new());
    for a in applies {
        if previous == Some(a.revision.as_str()) {
            if !a.changed().is_empty() {
                drifted.push(a.clone());
            }
        } else {
            new_revisions.push(a.clone());
        }
        previous = Some(&a.revision);
    }
    (new_revisions, drifted)
}

/// One server-side apply of a Kustomization, as kustomize-controller logged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apply {
    /// When, as the controller's log says (`ts`).
    pub at: String,
    /// The source revision applied, `latest@sha256:…`.
    pub revision: String,
    /// `Kind/namespace/name` → the action taken (`created`, `configured`, `unchanged`, …).
    pub actions: BTreeMap<String, String>,
}

impl Apply {
    /// The objects this apply changed, with the action: all but `unchanged` and `skipped`
    /// (kustomize-controller's own `HasChanged`).
    pub fn changed(&self) -> BTreeMap<&str, &str> {
        self.actions
            .iter()
            .filter(|(_, a)| !matches!(a.as_str(), "unchanged" | "skipped"))
            .map(|(k, a)| (k.as_str(), a.as_str()))
            .collect()
    }
}

/// Takes the machine-wide Flux lock, waiting (bounded) while another test holds it.
async fn lock_machine() -> Result<File> {
    let path = std::env::temp_dir().join("airlock-e2e-flux.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    wait::found(
        &format!(
            "the Flux lock {} (another e2e Flux running)",
            path.display()
        ),
        LOCK_WAIT,
        async || match file.try_lock() {
            Ok(()) => Ok(Some(())),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => Err(e.into()),
        },
    )
    .await?;
    Ok(file)
}

/// A TCP port free on 127.0.0.1 right now (the OS picks it; it is released for the child).
pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The status code of `GET path` on 127.0.0.1:`port`, or `None` while nothing answers.
pub(crate) async fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace().nth(1)?.parse().ok()
}

/// A fresh repository in the test registry for one pipeline's commits.
pub fn repository(name: &str) -> String {
    format!(
        "{}/airlock-e2e/gitops-{name}-{}",
        registry(),
        crate::unique_suffix()
    )
}

/// The revision Flux reports for `digest` pushed to [`TAG`] (`<tag>@<digest>`).
pub fn revision(digest: &str) -> String {
    format!("{TAG}@{digest}")
}

/// Pushes a "commit": the files (path in the tree, content) as one gzipped tarball, the only
/// layer of an otherwise empty OCI image tagged [`TAG`] in `repository` (source-controller
/// extracts the first layer). Returns the manifest digest. The tarball is reproducible (fixed
/// modes and times), so pushing the same files again is the same digest: a revert.
pub fn push_commit(repository: &str, files: &[(&str, &str)]) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let layer = dir.path().join("commit.tar.gz");
    write_tarball(&layer, files)?;
    let target = format!("{repository}:{TAG}");
    crane(&[
        "append",
        "--oci-empty-base",
        "-f",
        &layer.display().to_string(),
        "-t",
        &target,
    ])?;
    crane(&["digest", &target])
}

/// Points [`TAG`] of `repository` at an earlier commit again (`git revert` of what came after).
pub fn checkout(repository: &str, digest: &str) -> Result<()> {
    crane(&["tag", &format!("{repository}@{digest}"), TAG])?;
    Ok(())
}

fn write_tarball(path: &Path, files: &[(&str, &str)]) -> Result<()> {
    let gz = flate2::write::GzEncoder::new(File::create(path)?, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, content) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, content.as_bytes())
            .with_context(|| format!("adding {name} to the commit"))?;
    }
    tar.into_inner()?.finish()?.flush()?;
    Ok(())
}

/// An `OCIRepository` following [`TAG`] of a repository and a `Kustomization` applying it, both
/// named `name` in `namespace`. The defaults reconcile often and fail fast, for tests.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub namespace: String,
    pub name: String,
    pub repository: String,
    /// `spec.interval` of both (also the Kustomization's `retryInterval`).
    pub interval: String,
    /// The Kustomization's `spec.timeout` (apply, health checks).
    pub timeout: String,
    /// `spec.targetNamespace`: where manifests without a namespace land; `None` keeps theirs.
    pub target_namespace: Option<String>,
    /// Merged over the Kustomization's spec (e.g. `healthCheckExprs`, `wait: false`).
    pub kustomization_spec: Value,
}

impl Pipeline {
    /// A pipeline in `namespace` whose manifests land in `namespace`.
    pub fn new(namespace: &str, name: &str, repository: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
            repository: repository.to_string(),
            interval: "10s".into(),
            timeout: "30s".into(),
            target_namespace: Some(namespace.to_string()),
            kustomization_spec: json!({}),
        }
    }

    /// Applies (server-side) the OCIRepository and the Kustomization.
    pub async fn apply(&self, client: &Client) -> Result<()> {
        let source = json!({
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "OCIRepository",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": {
                "url": format!("oci://{}", self.repository),
                "ref": {"tag": TAG},
                // The local registry is plain HTTP.
                "insecure": true,
                "interval": self.interval,
            },
        });
        let mut spec = json!({
            "sourceRef": {"kind": "OCIRepository", "name": self.name},
            "path": "./",
            "prune": true,
            // Health of everything applied, by kstatus, as Flux users set it.
            "wait": true,
            "interval": self.interval,
            "retryInterval": self.interval,
            "timeout": self.timeout,
        });
        if let Some(target) = &self.target_namespace {
            spec["targetNamespace"] = json!(target);
        }
        merge(&mut spec, &self.kustomization_spec);
        let kustomization = json!({
            "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
            "kind": "Kustomization",
            "metadata": {"name": self.name, "namespace": self.namespace},
            "spec": spec,
        });
        for (resource, object) in [
            (oci_repository_resource(), source),
            (kustomization_resource(), kustomization),
        ] {
            let api: Api<DynamicObject> =
                Api::namespaced_with(client.clone(), &self.namespace, &resource);
            api.patch(
                &self.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&object),
            )
            .await
            .with_context(|| format!("applying {} {}", resource.kind, self.name))?;
        }
        Ok(())
    }

    /// Asks both controllers to reconcile now (what `flux reconcile kustomization --with-source`
    /// does) and returns the token; `status.lastHandledReconcileAt` of each says when it has.
    pub async fn reconcile_now(&self, client: &Client) -> Result<String> {
        // One token for both, so that either's lastHandledReconcileAt can be compared with it.
        let token = format!("e2e-{}", crate::unique_suffix());
        for resource in [oci_repository_resource(), kustomization_resource()] {
            request_reconcile(client, &resource, &self.namespace, &self.name, &token).await?;
        }
        Ok(token)
    }

    /// Waits until the Kustomization satisfies `done` (see [`wait_kustomization`]).
    pub async fn wait(
        &self,
        client: &Client,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        wait_kustomization(client, &self.namespace, &self.name, what, done).await
    }
}

/// `patch` merged into `base`, objects key by key (JSON merge patch without deletions).
fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

/// Sets `reconcile.fluxcd.io/requestedAt` on a Flux object to `token` (a new value each time:
/// the controller reconciles when it changes, and copies it to `status.lastHandledReconcileAt`
/// once done).
pub async fn request_reconcile(
    client: &Client,
    resource: &ApiResource,
    ns: &str,
    name: &str,
    token: &str,
) -> Result<()> {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, resource);
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {REQUESTED_AT: token}}})),
    )
    .await
    .with_context(|| format!("requesting a reconcile of {} {ns}/{name}", resource.kind))?;
    Ok(())
}

/// What a wait prints when it times out: the object's status, not its managed fields.
struct Status(Value);

impl std::fmt::Debug for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0["status"])
    }
}

/// Waits (within [`crate::WAIT`]) until Kustomization `ns/name` satisfies `done` and returns it
/// as JSON. A Kustomization not there yet is `null`. On timeout the error says `what` and the
/// last status seen.
pub async fn wait_kustomization(
    client: &Client,
    ns: &str,
    name: &str,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &kustomization_resource());
    let seen = wait::until(
        &format!("Kustomization {ns}/{name}: {what}"),
        crate::WAIT,
        async || {
            Ok(Status(match api.get_opt(name).await? {
                Some(k) => serde_json::to_value(k)?,
                None => Value::Null,
            }))
        },
        |k| done(&k.0),
    )
    .await?;
    Ok(seen.0)
}

/// Condition `type_` of a Flux object.
pub fn condition<'a>(object: &'a Value, type_: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
}

/// `(status, reason, message)` of the Ready condition, empty strings when absent.
pub fn ready(object: &Value) -> (String, String, String) {
    let c = condition(object, "Ready");
    let field = |f: &str| {
        c.and_then(|c| c[f].as_str())
            .unwrap_or_default()
            .to_string()
    };
    (field("status"), field("reason"), field("message"))
}

/// Whether Flux has seen the object's current spec (`observedGeneration` is written with Ready).
fn observed(object: &Value) -> bool {
    object["metadata"]["generation"].as_i64().is_some()
        && object["status"]["observedGeneration"] == object["metadata"]["generation"]
}

/// Ready=True with `revision` applied: Flux's "this commit is live and healthy".
pub fn ready_at(revision: &str) -> impl Fn(&Value) -> bool {
    let revision = revision.to_string();
    move |k| {
        observed(k)
            && ready(k).0 == "True"
            && k["status"]["lastAppliedRevision"] == revision.as_str()
    }
}

/// Ready=False after attempting `revision`: Flux's "this commit failed".
pub fn failed_at(revision: &str) -> impl Fn(&Value) -> bool {
    let revision = revision.to_string();
    move |k| ready(k).0 == "False" && k["status"]["lastAttemptedRevision"] == revision.as_str()
}

/// The Events kustomize-controller recorded for Kustomization `ns/name` (the changes of each
/// apply that changed something, as `Kind/ns/name action` lines; failures as Warnings): what
/// `kubectl events --for kustomization/<name>` shows. Repeated identical messages are one Event
/// whose `count` grows.
pub async fn kustomization_events(client: &Client, ns: &str, name: &str) -> Result<Vec<Event>> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let selector = format!("involvedObject.kind=Kustomization,involvedObject.name={name}");
    Ok(events
        .list(&ListParams::default().fields(&selector))
        .await?
        .items)
}

/// The change sets among [`kustomization_events`], message → how often it was recorded
/// (`count`), to see which changes a reconcile added. A change-set Event (one per apply that
/// changed something, and one per garbage collection) has a line `Kind/namespace/name action` per
/// changed object; every other Event is left out — notably "Reconciliation finished in …", which
/// kustomize-controller records after every successful reconcile, changes or not.
///
/// Events show that a change happened, never that none did: client-go's event correlator (the
/// controller-runtime default) lets 25 Normal Events per object through, then one per 5 minutes
/// (whatever their reason or message), so with a 10s interval the "Reconciliation finished"
/// Events use up the budget in about 4 minutes and later change sets are dropped. For "no drift
/// over N minutes" read [`Flux::applies`].
pub async fn change_event_counts(
    client: &Client,
    ns: &str,
    name: &str,
) -> Result<BTreeMap<String, i32>> {
    let mut counts = BTreeMap::new();
    for e in kustomization_events(client, ns, name).await? {
        let message = e.message.unwrap_or_default();
        if is_change_set(&message) {
            *counts.entry(message).or_default() += e.count.unwrap_or(1);
        }
    }
    Ok(counts)
}

/// Whether every line of `message` is `Kind/[namespace/]name action`, an action of Flux's SSA
/// (`fluxcd/pkg/ssa`: created, configured, unchanged, deleted, skipped, unknown).
fn is_change_set(message: &str) -> bool {
    !message.is_empty()
        && message.lines().all(|line| {
            line.rsplit_once(' ').is_some_and(|(id, action)| {
                !id.contains(' ')
                    && (2..=3).contains(&id.split('/').count())
                    && matches!(
                        action,
                        "created" | "configured" | "unchanged" | "deleted" | "skipped" | "unknown"
                    )
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_is_reproducible() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        let files = [("cm.yaml", "kind: ConfigMap\n"), ("sub/x.yaml", "x: 1\n")];
        write_tarball(&a, &files)?;
        write_tarball(&b, &files)?;
        ensure!(
            std::fs::read(&a)? == std::fs::read(&b)?,
            "two tarballs differ"
        );
        let mut names = Vec::new();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(File::open(&a)?));
        for entry in archive.entries()? {
            names.push(entry?.path()?.display().to_string());
        }
        ensure!(names == ["cm.yaml", "sub/x.yaml"], "{names:?}");
        Ok(())
    }

    #[test]
    fn the_kustomization_spec_is_merged_key_by_key() {
        let mut spec = json!({"wait": true, "a": {"b": 1, "c": 2}});
        merge(&mut spec, &json!({"wait": false, "a": {"c": 3}, "d": [1]}));
        assert_eq!(
            spec,
            json!({"wait": false, "a": {"b": 1, "c": 3}, "d": [1]})
        );
    }

    #[test]
    fn readiness_is_read_from_flux_conditions() {
        let k = json!({
            "metadata": {"generation": 2},
            "status": {
                "observedGeneration": 2,
                "lastAppliedRevision": "latest@sha256:a",
                "lastAttemptedRevision": "latest@sha256:b",
                "conditions": [{"type": "Ready", "status": "False",
                                "reason": "ReconciliationFailed", "message": "boom"}],
            },
        });
        assert!(failed_at("latest@sha256:b")(&k));
        assert!(!ready_at("latest@sha256:a")(&k));
        assert_eq!(ready(&k).1, "ReconciliationFailed");
    }

    #[test]
    fn change_sets_are_told_from_other_events() {
        assert!(is_change_set(
            "ConfigMap/ns/a created\nConfigMap/ns/b configured"
        ));
        assert!(is_change_set("Namespace/plugins configured"));
        assert!(!is_change_set(
            "Reconciliation finished in 151ms, next run in 10s"
        ));
        assert!(!is_change_set("Health check passed in 24ms"));
        assert!(!is_change_set(""));
    }

    #[test]
    fn only_a_new_revision_may_change_objects() {
        let apply = |revision: &str, action: &str| Apply {
            at: String::new(),
            revision: revision.to_string(),
            actions: [("Plugin/a/hello".to_string(), action.to_string())].into(),
        };
        let applies = [
            apply("c", "unchanged"),
            apply("e", "configured"),
            apply("e", "unchanged"),
            apply("e", "configured"),
            apply("c", "configured"),
        ];
        let (new_revisions, drifted) = split_by_revision(Some("c"), &applies);
        assert_eq!(new_revisions, [applies[1].clone(), applies[4].clone()]);
        assert_eq!(drifted, [applies[3].clone()]);
        let (new_revisions, drifted) = split_by_revision(None, &applies[..1]);
        assert_eq!((new_revisions.len(), drifted.len()), (1, 0));
    }

    #[test]
    fn an_apply_changed_only_what_was_not_unchanged() {
        let apply = Apply {
            at: String::new(),
            revision: String::new(),
            actions: [
                ("ConfigMap/a/x".to_string(), "configured".to_string()),
                ("ConfigMap/a/y".to_string(), "unchanged".to_string()),
            ]
            .into(),
        };
        assert_eq!(apply.changed(), [("ConfigMap/a/x", "configured")].into());
    }
}
