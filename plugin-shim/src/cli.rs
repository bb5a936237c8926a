//! The `airlock-shim` command line: `install` (init container: copy the shim into a shared
//! volume) and `run` (plugin container: unpack the bundle, start the plugin, serve gRPC until
//! SIGTERM). Flags are plain structs so tests build them directly and call [`run`].

use std::fs;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use crate::child::{ChildSpec, Sandbox, Supervisor};
use crate::host::{ClientTlsFiles, GrpcHost, HostApiError, HostCalls};
use crate::sandbox::SandboxSpec;
use crate::server::{self, PluginService, ServeError};
use airlock_bundle::manifest::{ManifestError, is_sha256_digest};
use airlock_bundle::{self as bundle, BundleError};
use airlock_core::Hook;

/// The in-pod runtime of an Airlock plugin.
///
/// It unpacks the plugin's verified bundle, runs the plugin's entry point as a child process and
/// serves the `airlock.plugin.v1.Plugin` gRPC API (plus health and reflection) in front of it.
#[derive(Debug, Parser)]
#[command(name = "airlock-shim", version, about, long_about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy this executable to DEST with mode 0755 (for an init container filling an emptyDir).
    Install(InstallArgs),
    /// Verify the bundle (digest, signature) and unpack it into DEST/bundle, its digest in
    /// DEST/digest: an init container does this so that the plugin container can mount DEST
    /// read-only (`run --unpacked DEST`).
    Unpack(UnpackArgs),
    /// Unpack the bundle, start the plugin and serve gRPC until SIGTERM.
    // Boxed: by far the largest variant (clippy::large_enum_variant).
    Run(Box<RunArgs>),
    /// (Internal) Apply the plugin process's sandbox, then run ENTRY_POINT in place of this
    /// process. `run` starts the plugin this way.
    #[command(hide = true)]
    SandboxExec(SandboxExecArgs),
}

/// Flags of `airlock-shim sandbox-exec` (and the sandbox part of `run`).
#[derive(Debug, Clone, Args)]
pub struct SandboxArgs {
    /// Let the plugin open network sockets (its effective permissions include net:egress).
    /// Without it, creating IPv4/IPv6/packet sockets fails with EACCES.
    #[arg(long)]
    pub allow_network: bool,
    /// Most files the plugin process may have open.
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub max_open_files: u64,
    /// Most processes (and threads) of the plugin's user (RLIMIT_NPROC). Only where plugins do not
    /// share a user id; the pod's pids limit bounds fork bombs in general.
    #[arg(long, value_name = "N")]
    pub max_processes: Option<u64>,
    /// The airlock-shim executable that applies the sandbox; default: this one. (Tests that run
    /// the shim in-process point it at the built binary.)
    #[arg(long, value_name = "PATH", hide = true)]
    pub sandbox_launcher: Option<PathBuf>,
}

impl SandboxArgs {
    pub fn spec(&self) -> SandboxSpec {
        SandboxSpec {
            allow_network: self.allow_network,
            max_open_files: self.max_open_files,
            max_processes: self.max_processes,
        }
    }
}

/// Flags of `airlock-shim sandbox-exec`.
#[derive(Debug, Clone, Args)]
pub struct SandboxExecArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "ENTRY_POINT")]
    pub entry_point: Vec<String>,
}

/// Flags of `airlock-shim unpack`.
#[derive(Debug, Clone, Args)]
pub struct UnpackArgs {
    /// The plugin bundle: a gzipped tar with plugin.yaml at its root.
    #[arg(long, value_name = "PATH")]
    pub bundle: PathBuf,
    /// Where to unpack (DEST/bundle, DEST/digest).
    #[arg(long, value_name = "DEST")]
    pub dest: PathBuf,
    /// Largest bundle accepted, both packed and unpacked, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = bundle::DEFAULT_MAX_BYTES)]
    pub max_bundle_bytes: u64,
    /// Refuse unless the bundle's digest is this one (sha256:<64 hex>).
    #[arg(long, value_name = "DIGEST", value_parser = parse_digest)]
    pub expect_digest: Option<String>,
    /// Detached ed25519 signature of the bundle; with `--public-key` it must verify.
    #[arg(long, value_name = "FILE", requires = "public_key")]
    pub signature: Option<PathBuf>,
    /// Public key (SPKI PEM or base64) the signature must verify under.
    #[arg(long, value_name = "FILE", requires = "signature")]
    pub public_key: Option<PathBuf>,
}

/// Flags of `airlock-shim install`.
#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Where to put the shim: a file path, or an existing directory (the file is then
    /// DEST/airlock-shim). Replaced atomically if present.
    pub dest: PathBuf,
}

/// Flags of `airlock-shim run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The plugin bundle: a gzipped tar with plugin.yaml at its root.
    #[arg(long, value_name = "PATH")]
    pub bundle: PathBuf,

    /// A writable directory for the shim. The bundle is unpacked into WORKDIR/bundle (replacing
    /// what an earlier run left there), which is the plugin's working directory and
    /// AIRLOCK_BUNDLE_DIR.
    #[arg(long, value_name = "DIR")]
    pub workdir: PathBuf,

    /// Address to serve gRPC on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// A directory `airlock-shim unpack` filled (mounted read-only): run the bundle from there
    /// instead of unpacking it into WORKDIR. Its digest must be the one of --bundle.
    #[arg(long, value_name = "DIR")]
    pub unpacked: Option<PathBuf>,

    /// Directory with the shim's TLS identity (tls.crt, tls.key) and the CA (ca.crt): the plugin
    /// API is then served over mutual TLS to the Airlock router only. Without it the API is plain
    /// text, for local development.
    #[arg(long, value_name = "DIR")]
    pub tls_dir: Option<PathBuf>,

    /// Also serve plain-text gRPC health (and nothing else) on this address, for the kubelet's
    /// probes.
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,

    /// Largest bundle accepted, both packed and unpacked, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = bundle::DEFAULT_MAX_BYTES)]
    pub max_bundle_bytes: u64,

    /// Refuse to start unless the bundle's digest is this one (sha256:<64 hex>).
    #[arg(long, value_name = "DIGEST", value_parser = parse_digest)]
    pub expect_digest: Option<String>,

    /// Detached ed25519 signature of the bundle (`airlockctl sign` output). With
    /// `--public-key`, the shim refuses to run a bundle whose signature does not verify.
    #[arg(long, value_name = "FILE", requires = "public_key")]
    pub signature: Option<PathBuf>,

    /// Public key (SPKI PEM or base64) the signature must verify under.
    #[arg(long, value_name = "FILE", requires = "signature")]
    pub public_key: Option<PathBuf>,

    /// Deadline for invocations that do not set one, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub default_deadline_ms: u32,

    /// How long the plugin's onLoad and onUnload hooks may take, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub lifecycle_timeout_ms: u32,

    /// Lines of the plugin's log (stderr) forwarded per minute; more are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_log_lines_per_minute: u32,

    /// The router's host API (HOST:PORT), where the plugin's host calls (log, storage, emit) are
    /// forwarded. With --tls-dir the connection is mutual TLS with the shim's own certificate
    /// (tls.crt, tls.key), to a server with the router's identity from the same CA (ca.crt).
    /// Without it, every host call fails with UNAVAILABLE.
    #[arg(long, value_name = "ADDR")]
    pub host_api: Option<String>,

    /// Host calls handled in-process instead of over --host-api (tests).
    #[arg(skip)]
    pub host_calls: Option<Arc<dyn HostCalls>>,

    #[command(flatten)]
    pub sandbox: SandboxArgs,

    /// The plugin's entry point (program and arguments), after `--`. Empty: the manifest's
    /// entryPoint.
    #[arg(last = true, value_name = "ENTRY_POINT")]
    pub entry_point: Vec<String>,
}

fn parse_digest(s: &str) -> Result<String, String> {
    let d = s.to_ascii_lowercase();
    if is_sha256_digest(&d) {
        Ok(d)
    } else {
        Err("expected sha256: followed by 64 hex digits".to_string())
    }
}

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The shim cannot find its own executable, which applies the plugin's sandbox.
    #[error("cannot find this executable (/proc/self/exe) to sandbox the plugin with: {0}")]
    CurrentExe(#[source] io::Error),
    /// The bundle file could not be read.
    #[error("cannot read the bundle {}: {source}", path.display())]
    ReadBundle {
        /// The bundle path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `--expect-digest` did not match.
    #[error("the bundle's digest is {actual}, not the expected {expected}; refusing to run it")]
    DigestMismatch {
        /// The digest that was expected.
        expected: String,
        /// The bundle's digest.
        actual: String,
    },
    /// `--signature` / `--public-key` could not be read or parsed.
    #[error("cannot use the bundle signature {}: {reason}", path.display())]
    SignatureUnreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The bundle's signature does not verify under the given key.
    #[error(
        "the bundle's signature does not verify under the signer's key: the bundle was changed after it was verified; refusing to run it"
    )]
    SignatureInvalid,
    /// The work directory could not be prepared.
    #[error("cannot prepare the work directory {}: {source}", path.display())]
    Workdir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `install` could not write the shim.
    #[error("cannot install the shim at {}: {source}", path.display())]
    Install {
        /// The destination.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The bundle was refused.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The manifest cannot be served by this shim.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The TLS identity could not be loaded.
    #[error("cannot serve mutual TLS: {0}")]
    Tls(#[from] airlock_tls::TlsError),
    /// The host API client could not be set up.
    #[error(transparent)]
    HostApi(#[from] HostApiError),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Signal handlers could not be installed.
    #[error("cannot install the SIGTERM handler: {0}")]
    Signals(#[source] io::Error),
    /// The async runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Entry point of the binary: parses flags, runs, and turns errors into a logged message and
/// exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SandboxExec(args) = &cli.command {
        // Only returns on failure; stderr is the plugin's log, where this belongs.
        let Err(e) = crate::sandbox::exec(&args.sandbox.spec(), &args.entry_point);
        eprintln!("airlock-shim sandbox-exec: {e}");
        return ExitCode::from(126);
    }
    crate::telemetry::init();
    let result = match cli.command {
        Command::Install(args) => install(&args.dest).map(|path| {
            info!(path = %path.display(), "installed airlock-shim");
        }),
        Command::Unpack(args) => unpack(&args).map(|path| {
            info!(path = %path.display(), "unpacked the bundle");
        }),
        Command::Run(args) => run_blocking(*args),
        Command::SandboxExec(_) => Ok(()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = %e, "airlock-shim failed");
            ExitCode::FAILURE
        }
    }
}

/// Copies the running executable (`/proc/self/exe`) to `dest` with mode 0755, atomically
/// (written beside it, then renamed). Returns the path written.
pub fn install(dest: &Path) -> Result<PathBuf, RunError> {
    let dest = if dest.is_dir() {
        dest.join("airlock-shim")
    } else {
        dest.to_path_buf()
    };
    let err = |source| RunError::Install {
        path: dest.clone(),
        source,
    };
    let name = dest.file_name().ok_or_else(|| {
        err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a file path",
        ))
    })?;
    let tmp = dest.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // /proc/self/exe still opens when the file on disk was replaced since the shim started.
    fs::copy("/proc/self/exe", &tmp).map_err(err)?;
    let done = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))
        .and_then(|()| fs::rename(&tmp, &dest));
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(err(e));
    }
    Ok(dest)
}

fn run_blocking(args: RunArgs) -> Result<(), RunError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // A plugin pod gets a fraction of a core; two workers are plenty for one plugin.
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(RunError::Runtime)?;
    runtime.block_on(async {
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|source| RunError::Listen {
                addr: args.listen,
                source,
            })?;
        let shutdown = shutdown_signal().map_err(RunError::Signals)?;
        run(args, listener, shutdown).await
    })
}

/// Files `unpack` writes into its destination.
pub const UNPACKED_BUNDLE_DIR: &str = "bundle";
pub const UNPACKED_DIGEST_FILE: &str = "digest";

/// The bundle's bytes, after checking its digest and (with both files) its signature.
fn read_verified(
    bundle: &Path,
    expect_digest: Option<&str>,
    signature: Option<&Path>,
    public_key: Option<&Path>,
) -> Result<Vec<u8>, RunError> {
    let bytes = fs::read(bundle).map_err(|source| RunError::ReadBundle {
        path: bundle.to_path_buf(),
        source,
    })?;
    // Check the digest before unpacking anything.
    if let Some(expected) = expect_digest {
        let actual = bundle::digest(&bytes);
        if actual != expected {
            return Err(RunError::DigestMismatch {
                expected: expected.to_string(),
                actual,
            });
        }
    }
    // Defense in depth: the operator verified this signature; check it again before unpacking.
    if let (Some(sig_path), Some(key_path)) = (signature, public_key) {
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
    let bytes = read_verified(
        &args.bundle,
        args.expect_digest.as_deref(),
        args.signature.as_deref(),
        args.public_key.as_deref(),
    )?;
    let extracted = unpack_into(
        &bytes,
        &args.dest.join(UNPACKED_BUNDLE_DIR),
        args.max_bundle_bytes,
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

/// SIGTERM (the kubelet stopping the pod) or SIGINT.
fn shutdown_signal() -> io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = int.recv() => info!("SIGINT: shutting down"),
        }
    })
}

/// `airlock-shim run` on an already bound listener, until `shutdown` resolves: unpacks and checks
/// the bundle, starts the plugin and serves gRPC; then drains in-flight calls and stops the
/// plugin (`onUnload` if it has one).
///
/// A plugin that cannot be started does not stop the shim: health says NOT_SERVING (so the pod
/// is not ready and the reason is in the log) and every call tries to start it again.
pub async fn run(
    args: RunArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    // TLS and the health port first: a pod without its certificate should say so at once.
    let tls = match &args.tls_dir {
        Some(dir) => Some(airlock_tls::ServerTls::from_dir(dir)?),
        None => {
            warn!("no --tls-dir: serving the plugin API in plain text to any caller");
            None
        }
    };
    let host = host_calls(&args)?;
    let health = match args.health_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| RunError::Listen { addr, source })?,
        ),
        None => None,
    };
    let bytes = read_verified(
        &args.bundle,
        args.expect_digest.as_deref(),
        args.signature.as_deref(),
        args.public_key.as_deref(),
    )?;
    let (bundle_dir, manifest, digest) = match &args.unpacked {
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
            (bundle_dir, airlock_bundle::Manifest::parse(&yaml)?, digest)
        }
        None => {
            let bundle_dir = args.workdir.join("bundle");
            let extracted = unpack_into(&bytes, &bundle_dir, args.max_bundle_bytes)?;
            (bundle_dir, extracted.manifest, extracted.digest)
        }
    };
    manifest.check_api_version()?;
    info!(
        plugin = %manifest.name,
        version = %manifest.version,
        %digest,
        read_only = args.unpacked.is_some(),
        "the bundle is ready"
    );

    let argv = if args.entry_point.is_empty() {
        manifest.entry_point.clone()
    } else {
        args.entry_point.clone()
    };
    let supervisor = Supervisor::new(ChildSpec {
        argv,
        bundle_dir,
        on_load: manifest.hooks.contains(&Hook::OnLoad),
        on_unload: manifest.hooks.contains(&Hook::OnUnload),
        lifecycle_timeout: Duration::from_millis(u64::from(args.lifecycle_timeout_ms)),
        log_lines_per_minute: args.max_log_lines_per_minute,
        host,
        sandbox: Some(Sandbox {
            spec: args.sandbox.spec(),
            launcher: match &args.sandbox.sandbox_launcher {
                Some(p) => p.clone(),
                None => std::env::current_exe().map_err(RunError::CurrentExe)?,
            },
        }),
    });
    let service = PluginService::new(
        supervisor.clone(),
        manifest,
        digest,
        Duration::from_millis(u64::from(args.default_deadline_ms)),
    );

    // Start the plugin while the server comes up; keep trying, with backoff, until it runs.
    let warm = supervisor.clone();
    let warm_up = tokio::spawn(async move {
        let mut backoff = Duration::from_millis(500);
        loop {
            match warm.warm_up().await {
                Ok(()) => {
                    info!("the plugin is ready");
                    break;
                }
                Err(e) => {
                    warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "the plugin is not ready");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    });

    // As PID 1 of the container the shim inherits whatever the plugin forked and left behind.
    let reaper =
        crate::reaper::inherits_orphans().then(|| crate::reaper::spawn(supervisor.clone()));

    let listeners = server::Listeners {
        grpc: listener,
        tls,
        health,
    };
    let served = server::serve(service, listeners, shutdown).await;
    warm_up.abort();
    if let Some(reaper) = reaper {
        reaper.abort();
    }
    supervisor.shutdown().await;
    info!(restarts = supervisor.restarts(), "stopped");
    Ok(served?)
}

/// Where the plugin's host calls go: `--host-api` (over mutual TLS with `--tls-dir`), or nowhere.
fn host_calls(args: &RunArgs) -> Result<Option<Arc<dyn HostCalls>>, RunError> {
    if let Some(host) = &args.host_calls {
        return Ok(Some(Arc::clone(host)));
    }
    let Some(addr) = &args.host_api else {
        info!("no --host-api: the plugin's host calls fail with UNAVAILABLE");
        return Ok(None);
    };
    let tls = args.tls_dir.as_deref().map(ClientTlsFiles::in_dir);
    if tls.is_none() {
        warn!(%addr, "no --tls-dir: calling the host API in plain text, as no plugin in particular");
    }
    Ok(Some(Arc::new(GrpcHost::connect_lazy(addr, tls)?)))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn cli_is_consistent_and_parses_the_entry_point_after_dashes() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "airlock-shim",
            "run",
            "--bundle",
            "/b.tgz",
            "--workdir",
            "/w",
            "--expect-digest",
            &format!("sha256:{}", "AB".repeat(32)),
            "--",
            "python3",
            "main.py",
            "--flag",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.entry_point, ["python3", "main.py", "--flag"]);
        assert_eq!(args.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(args.max_bundle_bytes, 1024 * 1024);
        assert_eq!(
            args.expect_digest,
            Some(format!("sha256:{}", "ab".repeat(32)))
        );
        assert_eq!(args.host_api, None);
        let cli = Cli::try_parse_from([
            "airlock-shim",
            "run",
            "--bundle",
            "b",
            "--workdir",
            "w",
            "--host-api",
            "198.19.0.10:50051",
        ])
        .unwrap();
        let Command::Run(args) = cli.command else {
            panic!("not run")
        };
        assert_eq!(args.host_api.as_deref(), Some("198.19.0.10:50051"));
        assert!(args.host_calls.is_none());
        assert!(
            Cli::try_parse_from([
                "airlock-shim",
                "run",
                "--bundle",
                "b",
                "--workdir",
                "w",
                "--expect-digest",
                "md5:x"
            ])
            .is_err()
        );
    }

    #[test]
    fn install_copies_an_executable_into_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = install(dir.path()).unwrap();
        assert_eq!(path, dir.path().join("airlock-shim"));
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(meta.len(), fs::metadata("/proc/self/exe").unwrap().len());
        // No temporary file left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
