//! The flags of every `airlock-shim` subcommand, as clap structs. Plain data, so that tests build
//! them directly (`RunArgs { .. }`) and call [`super::run()`]; acting on them is left to where
//! they are used (`verify` for the bundle's, `run` for the rest).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::host::HostCalls;
use crate::sandbox::SandboxSpec;
use airlock_bundle as bundle;
use airlock_bundle::manifest::is_sha256_digest;

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
    /// Let the plugin open IPv4 and IPv6 sockets (its effective permissions include net:egress).
    /// Without it, only Unix sockets open; any other family fails with EACCES.
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
    /// The sandbox these flags describe, hiding no directory (`run` adds its `--tls-dir`).
    pub fn spec(&self) -> SandboxSpec {
        SandboxSpec {
            allow_network: self.allow_network,
            max_open_files: self.max_open_files,
            max_processes: self.max_processes,
            hidden_dir: None,
        }
    }
}

/// Flags of `airlock-shim sandbox-exec`.
#[derive(Debug, Clone, Args)]
pub struct SandboxExecArgs {
    #[command(flatten)]
    pub sandbox: SandboxArgs,
    /// A directory the plugin may open nothing beneath (the shim's TLS identity), hidden with
    /// Landlock where the kernel has it. `run` passes its --tls-dir.
    #[arg(long, value_name = "DIR")]
    pub hide_dir: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(last = true, required = true, value_name = "ENTRY_POINT")]
    pub entry_point: Vec<String>,
}

impl SandboxExecArgs {
    /// The sandbox these flags describe.
    pub fn spec(&self) -> SandboxSpec {
        SandboxSpec {
            hidden_dir: self.hide_dir.clone(),
            ..self.sandbox.spec()
        }
    }
}

/// The bundle and how to verify it: the same flags for `unpack` and `run`, which both check
/// it before anything in it is used.
#[derive(Debug, Clone, Args)]
pub struct BundleArgs {
    /// The plugin bundle: a gzipped tar with plugin.yaml at its root.
    #[arg(long, value_name = "PATH")]
    pub bundle: PathBuf,
    /// Largest bundle accepted, both packed and unpacked, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = bundle::DEFAULT_MAX_BYTES)]
    pub max_bundle_bytes: u64,
    /// Refuse unless the bundle's digest is this one (sha256:<64 hex>).
    #[arg(long, value_name = "DIGEST", value_parser = parse_digest)]
    pub expect_digest: Option<String>,
    /// Detached ed25519 signature of the bundle (`airlockctl sign` output). With
    /// `--public-key`, a bundle whose signature does not verify is refused.
    #[arg(long, value_name = "FILE", requires = "public_key")]
    pub signature: Option<PathBuf>,
    /// Public key (SPKI PEM or base64) the signature must verify under.
    #[arg(long, value_name = "FILE", requires = "signature")]
    pub public_key: Option<PathBuf>,
}

/// Flags of `airlock-shim unpack`.
#[derive(Debug, Clone, Args)]
pub struct UnpackArgs {
    #[command(flatten)]
    pub bundle: BundleArgs,
    /// Where to unpack (DEST/bundle, DEST/digest).
    #[arg(long, value_name = "DEST")]
    pub dest: PathBuf,
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
    #[command(flatten)]
    pub bundle: BundleArgs,

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

    /// Run even where the kernel cannot hide --tls-dir from the plugin process (no Landlock, or
    /// only its first ABI): the plugin can then read the shim's private key and call the host API
    /// as this plugin from anywhere. Without it the shim refuses to start there.
    #[arg(long)]
    pub allow_readable_key: bool,

    /// Also serve plain-text gRPC health (and nothing else) on this address, for the kubelet's
    /// probes.
    #[arg(long, value_name = "ADDR")]
    pub health_listen: Option<SocketAddr>,

    /// Deadline for invocations that do not set one, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 200)]
    pub default_deadline_ms: u32,

    /// How long the plugin's onLoad and onUnload hooks may take, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 5000)]
    pub lifecycle_timeout_ms: u32,

    /// After SIGTERM, how long the shim still takes new calls before it drains and stops, in
    /// milliseconds: the kubelet signals the pod about when the EndpointSlice marks it
    /// terminating, and a router that has not seen that update yet still sends calls here
    /// (stopping at once turned them into failed calls on every scale-down). Must stay well
    /// under the pod's termination grace period (15 s), which also covers the drain and
    /// onUnload.
    #[arg(long, value_name = "MS", default_value_t = 3000,
          value_parser = clap::value_parser!(u32).range(0..=8000))]
    pub drain_delay_ms: u32,

    /// Plugin processes that take calls side by side, each one call at a time (each sandboxed,
    /// restarted and backed off on its own; all share this container's CPU and memory). For a
    /// plugin whose manifest says `multiplexed: true`: one process with up to N calls in flight.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=i64::from(airlock_core::api::MAX_CONCURRENCY)))]
    pub concurrency: u32,

    /// Lines of the plugin's log (stderr) forwarded per minute; more are dropped and counted.
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub max_log_lines_per_minute: u32,

    /// The router's host API (HOST:PORT), where the plugin's host calls (log, storage, emit) are
    /// forwarded. With --tls-dir the connection is mutual TLS with the shim's own certificate
    /// (tls.crt, tls.key), to a server with the router's identity from the same CA (ca.crt).
    /// Without it, every host call fails with UNAVAILABLE.
    #[arg(long, value_name = "ADDR")]
    pub host_api: Option<String>,

    /// The plugin's configuration (`Plugin.spec.config`): a file with a JSON object, checked
    /// against the signed manifest's `configSchema` and handed to the plugin in `onLoad`. Read
    /// again every 2 s: a change the schema accepts goes to the running plugin in
    /// `onConfigChange` (or restarts its processes when it has no such hook); one it refuses is
    /// logged and not passed on. Without it the plugin gets `{}`.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// The plugin's secrets (`Plugin.spec.configSecrets`): a directory with one file per secret,
    /// named as the plugin knows it. Handed to the plugin with its configuration
    /// (`"secrets": {name: value}`), read again every 2 s like --config-file; never logged.
    #[arg(long, value_name = "DIR")]
    pub config_secrets_dir: Option<PathBuf>,

    /// Never send `onUpgrade`, though the manifest declares it: the plugin holds neither storage
    /// permission, so it has nothing it may migrate (and the host would refuse the question of
    /// which version wrote its storage). The operator passes it for such a plugin.
    #[arg(long)]
    pub no_upgrade: bool,

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

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    /// `airlock-shim run --bundle b --workdir w` followed by `extra`, parsed.
    fn parse_run(extra: &[&str]) -> Result<Box<RunArgs>, clap::Error> {
        let required = ["airlock-shim", "run", "--bundle", "b", "--workdir", "w"];
        let cli = Cli::try_parse_from(required.iter().chain(extra))?;
        match cli.command {
            Command::Run(args) => Ok(args),
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn cli_is_consistent_and_parses_the_entry_point_after_dashes() {
        Cli::command().debug_assert();
        let digest = format!("sha256:{}", "AB".repeat(32));
        let args = parse_run(&[
            "--expect-digest",
            &digest,
            "--",
            "python3",
            "main.py",
            "--flag",
        ])
        .unwrap();
        assert_eq!(args.entry_point, ["python3", "main.py", "--flag"]);
        assert_eq!(args.listen, "0.0.0.0:50051".parse().unwrap());
        assert_eq!(args.bundle.max_bundle_bytes, 1024 * 1024);
        assert_eq!(
            args.bundle.expect_digest,
            Some(format!("sha256:{}", "ab".repeat(32)))
        );
        assert_eq!(args.host_api, None);

        let args = parse_run(&["--host-api", "198.19.0.10:50051"]).unwrap();
        assert_eq!(args.host_api.as_deref(), Some("198.19.0.10:50051"));
        assert!(args.host_calls.is_none());

        assert!(parse_run(&["--expect-digest", "md5:x"]).is_err());
    }
}
