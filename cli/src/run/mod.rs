//! `run DIR|BUNDLE`: a plugin on the author's machine, as its pod runs it. The bundle is packed
//! (from a directory) and checked as the operator and the shim check it; the shim itself
//! ([`airlock_plugin_shim::cli::run`]) starts the plugin in the pod's sandbox (its seccomp filter,
//! limits and process rules, through this binary's `sandbox-exec`) and serves it on a loopback
//! port; the plugin's host calls go in-process to the router's own host API
//! ([`airlock_router::host::local`]): the same permission checks, limits and answers, with
//! storage in memory or a file, log lines and emitted events on the terminal. Then one hook call
//! (`run DIR HOOK --payload ...`) or a file of test cases (`run DIR --test cases.yaml`).

pub mod cases;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_bundle::{DEFAULT_MAX_BYTES, Manifest};
use airlock_plugin_shim::host::InProcessHost;
use airlock_proto::plugin::v1::InvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use airlock_router::host::RecordSink;
use airlock_router::host::local::{FileStorage, LocalPlugin, local_host};
use clap::Args;
use serde::Serialize;
use serde_json::Value;
use tokio::net::TcpListener;
use tonic::transport::Channel;

use crate::invoke::{Answer, InvokeError, PayloadArgs};
use crate::output::{Output, PrintError, print};
use cases::{Cases, CasesError, ExpectEvent, Observed};

/// How long the plugin may take to start (its process, onLoad, onUpgrade) before `run` gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The deadline of a call that sets none: the router's default hook timeout is the Plugin's
/// `spec.hooks[].timeout`; an author's machine gets a generous one.
const DEFAULT_DEADLINE_MS: u32 = 2000;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The plugin: a directory with plugin.yaml at its root (packed as `bundle pack` packs it),
    /// or a bundle file.
    pub plugin: PathBuf,
    /// The hook to call once, e.g. transform. Without it, give --test.
    #[arg(required_unless_present = "test")]
    pub hook: Option<String>,
    #[command(flatten)]
    pub payload: PayloadArgs,
    /// A file of test cases to run instead of one call (see the help above for its format).
    #[arg(long, value_name = "CASES", conflicts_with_all = ["hook", "payload", "payload_file"])]
    pub test: Option<PathBuf>,
    /// The plugin's configuration, what `Plugin.spec.config` would hold: a JSON or YAML file with
    /// one object, checked against the manifest's configSchema.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Keep the plugin's storage in this JSON file ({"writtenBy": ..., "data": {key: value}}),
    /// read at start and written after each change. Default: in memory, empty (or as --test's
    /// file seeds it).
    #[arg(long, value_name = "FILE")]
    pub storage: Option<PathBuf>,
    /// Grant only these permissions (what a Plugin's spec.permissions approves), comma-separated
    /// or repeated. Default: every permission the manifest declares except net:egress, which
    /// lets the plugin open sockets from this machine and is granted only by name.
    #[arg(long, value_delimiter = ',', value_name = "PERMISSION")]
    pub grant: Option<Vec<String>>,
    /// Deadline of each call in milliseconds.
    #[arg(long, default_value_t = DEFAULT_DEADLINE_MS)]
    pub deadline_ms: u32,
    /// How to print: table (default), json or yaml.
    #[arg(long, short = 'o', value_enum, default_value_t)]
    pub output: Output,
    /// The plugin's entry point on this machine, after `--` (e.g. -- target/debug/hello), when
    /// the manifest's entryPoint is a path in the image. A relative program is taken from the
    /// current directory.
    #[arg(last = true, value_name = "ENTRY_POINT")]
    pub entry_point: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("reading the bundle {}: {source}", .path.display())]
    ReadBundle {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", .path.display())]
    Bundle {
        path: PathBuf,
        source: airlock_bundle::BundleError,
    },
    #[error(transparent)]
    Pack(#[from] airlock_bundle::pack::PackError),
    #[error("the work directory: {0}")]
    Workdir(std::io::Error),
    #[error(
        "--grant {0}: the manifest does not declare it, so the operator would refuse it (NotDeclaredBySigner); declare it in plugin.yaml or leave it out"
    )]
    NotDeclared(String),
    #[error("reading the configuration {}: {reason}", .path.display())]
    Config { path: PathBuf, reason: String },
    #[error(transparent)]
    Storage(#[from] airlock_router::host::local::FileStorageError),
    #[error(transparent)]
    Cases(#[from] CasesError),
    #[error("the local host API: {0}")]
    Host(#[from] airlock_router::host::local::LocalError),
    #[error("cannot listen on a loopback port: {0}")]
    Listen(std::io::Error),
    #[error("the shim stopped: {0}")]
    Shim(String),
    #[error(
        "the plugin did not become ready within {}s: its log above says why (a missing program? pass its path after --)",
        START_TIMEOUT.as_secs()
    )]
    NotReady,
    #[error(transparent)]
    Invoke(#[from] InvokeError),
    #[error(transparent)]
    Print(#[from] PrintError),
    #[error("{failed} of {total} test case(s) failed")]
    Failed { failed: usize, total: usize },
}

impl RunError {
    /// A call's failure keeps `invoke`'s exit codes; failed cases are 1; bad input 2.
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Invoke(e) => e.exit_code(),
            RunError::Bundle { .. }
            | RunError::ReadBundle { .. }
            | RunError::Pack(_)
            | RunError::NotDeclared(_)
            | RunError::Config { .. }
            | RunError::Storage(_)
            | RunError::Cases(_) => 2,
            _ => 1,
        }
    }
}

/// Where the local host API's records go: emitted events printed and kept for the case being
/// checked, denials printed. All on stderr: stdout is the report.
#[derive(Debug, Default)]
struct Terminal {
    emitted: Mutex<Vec<ExpectEvent>>,
}

impl RecordSink for Terminal {
    fn audit(&self, record: &Value) {
        eprintln!(
            "[host] {}: {}",
            record["reason"].as_str().unwrap_or("audit"),
            record["message"].as_str().unwrap_or_default()
        );
    }

    fn event(&self, line: String) {
        let event: Value = serde_json::from_str(&line).unwrap_or_default();
        let data = &event["data"];
        // The CloudEvent type is dev.airlock.plugin.<the plugin's type>.
        let event_type = event["type"]
            .as_str()
            .unwrap_or_default()
            .trim_start_matches("dev.airlock.plugin.")
            .to_string();
        eprintln!("[emit] {event_type} {}", data["payload"]);
        self.emitted
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(ExpectEvent {
                event_type,
                payload: Some(data["payload"].clone()),
            });
    }
}

impl Terminal {
    fn take(&self) -> Vec<ExpectEvent> {
        std::mem::take(&mut *self.emitted.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The bundle file to run and its manifest: `plugin` packed into `work` if it is a directory.
fn bundle_of(plugin: &Path, work: &Path) -> Result<(PathBuf, Manifest), RunError> {
    let bundle_error = |source| RunError::Bundle {
        path: plugin.to_path_buf(),
        source,
    };
    if plugin.is_dir() {
        let packed = airlock_bundle::pack::pack(plugin, DEFAULT_MAX_BYTES)?;
        let path = work.join("bundle.tar.gz");
        std::fs::write(&path, &packed.bytes).map_err(RunError::Workdir)?;
        return Ok((path, packed.manifest));
    }
    let bytes = std::fs::read(plugin).map_err(|source| RunError::ReadBundle {
        path: plugin.to_path_buf(),
        source,
    })?;
    let extracted = airlock_bundle::extract(&bytes, &work.join("manifest"), DEFAULT_MAX_BYTES)
        .map_err(bundle_error)?;
    Ok((plugin.to_path_buf(), extracted.manifest))
}

/// The permissions granted: `grant` (each must be declared), or all the manifest declares but
/// `net:egress`: a plugin reaches the network from this machine only when the author says so.
pub fn granted(manifest: &Manifest, grant: Option<&[String]>) -> Result<Vec<String>, RunError> {
    let declared: Vec<String> = manifest.permissions.iter().map(|p| p.to_string()).collect();
    let Some(grant) = grant else {
        return Ok(declared.into_iter().filter(|p| p != "net:egress").collect());
    };
    grant
        .iter()
        .map(|p| {
            let p = p.trim().to_string();
            if declared.contains(&p) {
                Ok(p)
            } else {
                Err(RunError::NotDeclared(p))
            }
        })
        .collect()
}

/// A configuration file (JSON or YAML, one object) as JSON.
fn read_config(path: &Path) -> Result<Value, RunError> {
    let failed = |reason: String| RunError::Config {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| failed(e.to_string()))?;
    let value: Value = serde_yaml::from_str(&text).map_err(|e| failed(e.to_string()))?;
    if !value.is_object() {
        return Err(failed(
            "it must hold one object, as Plugin.spec.config does".into(),
        ));
    }
    Ok(value)
}

/// `program` made absolute against the current directory when it is a relative path (the shim
/// would take it as relative to the bundle).
fn local_entry_point(entry: &[String]) -> Vec<String> {
    let mut entry = entry.to_vec();
    if let Some(program) = entry.first_mut()
        && program.contains('/')
        && !program.starts_with('/')
        && let Ok(cwd) = std::env::current_dir()
    {
        *program = cwd.join(&*program).display().to_string();
    }
    entry
}

/// The shim's own flags for this run, as the operator would give them for the same Plugin.
fn shim_args(
    bundle: &Path,
    work: &Path,
    manifest: &Manifest,
    permissions: &[String],
    config: Option<&Path>,
    entry_point: &[String],
) -> Result<airlock_plugin_shim::cli::RunArgs, RunError> {
    let mut argv: Vec<String> = vec![
        "airlock-shim".into(),
        "run".into(),
        "--bundle".into(),
        bundle.display().to_string(),
        "--workdir".into(),
        work.join("shim").display().to_string(),
        // Lifecycle hooks get what they get in the pod.
        "--lifecycle-timeout-ms".into(),
        "5000".into(),
        "--drain-delay-ms".into(),
        "0".into(),
    ];
    if permissions.iter().any(|p| p == "net:egress") {
        argv.push("--allow-network".into());
    }
    if manifest.upgrades_storage() && !permissions.iter().any(|p| p == "storage:write") {
        argv.push("--no-upgrade".into());
    }
    if let Some(config) = config {
        argv.extend(["--config-file".into(), config.display().to_string()]);
    }
    if !entry_point.is_empty() {
        argv.push("--".into());
        argv.extend(local_entry_point(entry_point));
    }
    let cli = <airlock_plugin_shim::cli::Cli as clap::Parser>::try_parse_from(&argv)
        .map_err(|e| RunError::Shim(e.to_string()))?;
    match cli.command {
        airlock_plugin_shim::cli::Command::Run(args) => Ok(*args),
        _ => Err(RunError::Shim("not a run command".into())),
    }
}

/// One test case's result, for `-o json`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaseResult {
    pub name: String,
    pub passed: bool,
    pub elapsed_ms: u64,
    /// Why it failed, one line per difference.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub wrong: Vec<String>,
}

/// The plugin's host `log` lines (target airlock::plugin) and the shim's warnings on stderr;
/// RUST_LOG says otherwise.
fn log_to_terminal() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("warn,airlock::plugin=info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

/// Runs the plugin, the call or the cases, and stops it.
pub async fn run(args: RunArgs) -> Result<String, RunError> {
    log_to_terminal();
    let work = tempfile::tempdir().map_err(RunError::Workdir)?;
    let (bundle, manifest) = bundle_of(&args.plugin, work.path())?;
    let permissions = granted(&manifest, args.grant.as_deref())?;
    let cases = args.test.as_deref().map(Cases::read).transpose()?;

    let config = match (&args.config, cases.as_ref().and_then(|c| c.config.clone())) {
        (Some(path), _) => Some(read_config(path)?),
        (None, from_cases) => from_cases,
    };
    let config_file = match &config {
        Some(value) => {
            let path = work.path().join("config.json");
            std::fs::write(&path, value.to_string()).map_err(RunError::Workdir)?;
            Some(path)
        }
        None => None,
    };

    let storage = Arc::new(match &args.storage {
        Some(path) => FileStorage::in_file(path)?,
        None => FileStorage::in_memory(),
    });
    if let Some(cases) = &cases
        && (!cases.storage.is_empty() || cases.written_by.is_some())
    {
        storage.seed(&cases.storage, cases.written_by.as_deref())?;
    }
    let terminal = Arc::new(Terminal::default());
    let host = local_host(
        &LocalPlugin {
            name: manifest.name.clone(),
            version: manifest.version.to_string(),
            plugin_api_version: manifest.api_version,
            permissions: permissions.clone(),
        },
        storage.clone(),
        terminal.clone(),
    )?;

    let mut shim = shim_args(
        &bundle,
        work.path(),
        &manifest,
        &permissions,
        config_file.as_deref(),
        &args.entry_point,
    )?;
    shim.host_calls = Some(Arc::new(InProcessHost::new(
        host,
        &manifest.version.to_string(),
    )));
    // The plugin process is started behind this very binary's `sandbox-exec`, as the shim
    // starts it behind its own in the pod.
    shim.sandbox.sandbox_launcher = Some(std::env::current_exe().map_err(RunError::Workdir)?);
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(RunError::Listen)?;
    let addr = listener.local_addr().map_err(RunError::Listen)?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(airlock_plugin_shim::cli::run(shim, listener, async {
        let _ = stopped.await;
    }));

    let result = async {
        let channel = ready(&format!("http://{addr}"), &served).await?;
        let mut client = PluginClient::new(channel);
        match &cases {
            None => one_call(&args, &mut client).await,
            Some(cases) => test_cases(&args, cases, &mut client, &storage, &terminal).await,
        }
    }
    .await;
    let _ = stop.send(());
    // The shim drains, sends onUnload if the plugin has it, and stops the plugin.
    match served.await {
        Ok(Err(e)) if result.is_ok() => return Err(RunError::Shim(e.to_string())),
        _ => {}
    }
    result
}

/// A channel to the shim once it reports the plugin ready (gRPC health SERVING).
async fn ready(
    address: &str,
    served: &tokio::task::JoinHandle<Result<(), airlock_plugin_shim::cli::RunError>>,
) -> Result<Channel, RunError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let started = Instant::now();
    while started.elapsed() < START_TIMEOUT {
        if served.is_finished() {
            return Err(RunError::Shim(
                "it stopped before the plugin was ready; its log above says why".into(),
            ));
        }
        if let Ok(channel) = Channel::from_shared(address.to_string())
            .map_err(|e| RunError::Shim(e.to_string()))?
            .connect()
            .await
        {
            let status = HealthClient::new(channel.clone())
                .check(HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status);
            if status.is_ok_and(|s| s == ServingStatus::Serving as i32) {
                return Ok(channel);
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(RunError::NotReady)
}

/// Calls `hook` with `payload`: the output, or the failure as a code name and message.
async fn call(
    client: &mut PluginClient<Channel>,
    hook: &str,
    payload: String,
    deadline_ms: u32,
) -> Result<(Value, String), tonic::Status> {
    let answer = client
        .invoke(InvokeRequest {
            hook: hook.to_string(),
            payload_json: payload,
            deadline_ms,
            invocation_id: format!("run-{}", std::process::id()),
        })
        .await?
        .into_inner();
    let output =
        serde_json::from_str(&answer.output_json).unwrap_or(Value::String(answer.output_json));
    Ok((output, answer.invocation_id))
}

async fn one_call(args: &RunArgs, client: &mut PluginClient<Channel>) -> Result<String, RunError> {
    let hook = args.hook.clone().unwrap_or_default();
    let payload = args.payload.read()?;
    let started = Instant::now();
    let (output, invocation_id) = call(client, &hook, payload, args.deadline_ms)
        .await
        .map_err(InvokeError::from)?;
    let answer = Answer {
        plugin: args.plugin.display().to_string(),
        hook,
        invocation_id,
        elapsed_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        output,
    };
    Ok(print(&answer, args.output, |a| {
        serde_json::to_string_pretty(&a.output).unwrap_or_default()
    })?)
}

async fn test_cases(
    args: &RunArgs,
    cases: &Cases,
    client: &mut PluginClient<Channel>,
    storage: &FileStorage,
    terminal: &Terminal,
) -> Result<String, RunError> {
    let mut results = Vec::new();
    for case in &cases.cases {
        terminal.take();
        let started = Instant::now();
        let result = call(
            client,
            &case.hook,
            case.payload.to_string(),
            args.deadline_ms,
        )
        .await
        .map(|(output, _)| output)
        .map_err(|s| (crate::invoke::code_name(s.code()), s.message().to_string()));
        let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let observed = Observed {
            result,
            storage: storage.values(),
            emitted: terminal.take(),
        };
        let wrong = cases::check(&case.expect, &observed);
        results.push(CaseResult {
            name: case.name.clone(),
            passed: wrong.is_empty(),
            elapsed_ms,
            wrong,
        });
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    let report = print(&results, args.output, |results| cases_table(results))?;
    if failed > 0 {
        // The report is the useful part of a failure: print it before the error.
        println!("{report}");
        return Err(RunError::Failed {
            failed,
            total: results.len(),
        });
    }
    Ok(report)
}

fn cases_table(results: &[CaseResult]) -> String {
    let mut out = String::new();
    for r in results {
        let verdict = if r.passed { "ok  " } else { "FAIL" };
        out.push_str(&format!("{verdict} {} ({} ms)\n", r.name, r.elapsed_ms));
        for line in &r.wrong {
            out.push_str(&format!("     {line}\n"));
        }
    }
    let passed = results.iter().filter(|r| r.passed).count();
    out.push_str(&format!("{passed} of {} passed", results.len()));
    out
}

/// Key → JSON value of what `storage` holds now (values that are not JSON are left out: the
/// store never holds one).
trait Values {
    fn values(&self) -> BTreeMap<String, Value>;
}

impl Values for FileStorage {
    fn values(&self) -> BTreeMap<String, Value> {
        self.snapshot()
            .0
            .into_iter()
            .filter_map(|(k, v)| serde_json::from_str(&v).ok().map(|v| (k, v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(permissions: &str) -> Manifest {
        Manifest::parse(&format!(
            "name: t\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\npermissions: {permissions}\nentryPoint: [/t]\n"
        ))
        .expect("manifest")
    }

    #[test]
    fn only_declared_permissions_can_be_granted() {
        let m = manifest("[log, storage:read, net:egress]");
        assert_eq!(
            granted(&m, None).unwrap(),
            ["log", "storage:read"],
            "net:egress only when granted by name"
        );
        assert_eq!(
            granted(&m, Some(&["net:egress".into()])).unwrap(),
            ["net:egress"]
        );
        assert_eq!(granted(&m, Some(&["log".into()])).unwrap(), ["log"]);
        let e = granted(&m, Some(&["events:emit".into()])).unwrap_err();
        assert!(e.to_string().contains("NotDeclaredBySigner"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn the_shim_gets_the_flags_the_operator_would_give() {
        let dir = tempfile::tempdir().unwrap();
        let m = manifest("[log, net:egress]");
        let args = shim_args(
            Path::new("/b.tar.gz"),
            dir.path(),
            &m,
            &["net:egress".into()],
            None,
            &["bin/plugin".into(), "--flag".into()],
        )
        .unwrap();
        assert!(args.sandbox.allow_network, "net:egress granted");
        assert!(
            Path::new(&args.entry_point[0]).is_absolute(),
            "a relative program is the author's, not the bundle's: {:?}",
            args.entry_point
        );
        assert_eq!(args.entry_point[1], "--flag");
        let closed = shim_args(Path::new("/b"), dir.path(), &m, &[], None, &[]).unwrap();
        assert!(!closed.sandbox.allow_network);
        assert!(closed.entry_point.is_empty(), "the manifest's entryPoint");
    }
}
