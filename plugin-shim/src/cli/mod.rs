//! The `airlock-shim` command line: `install` (init container: copy the shim into a shared
//! volume), `unpack` (init container: verify the bundle and unpack it for a read-only mount) and
//! `run` (plugin container: unpack the bundle, start the plugin, serve gRPC until SIGTERM).
//! Flags are plain structs so tests build them directly and call [`run()`].
//!
//! This module parses the command line, hands each subcommand to the module that owns it and
//! turns its error into the exit code:
//!
//! - `flags`: the clap structs of every subcommand;
//! - `verify`: the bundle's digest and signature checked again, and its unpacking;
//! - `run`: the shim's main loop (the plugin's supervisor and the gRPC server);
//! - `install`: copying the shim into the shared volume.

mod flags;
mod install;
mod run;
mod verify;

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info};

use crate::host::HostApiError;
use crate::server::ServeError;
use airlock_bundle::BundleError;
use airlock_bundle::manifest::ManifestError;

// The public paths (`cli::RunArgs`, `cli::run`, ...) used by the binary and the tests, whichever
// module owns them.
pub use flags::{
    BundleArgs, Cli, Command, InstallArgs, RunArgs, SandboxArgs, SandboxExecArgs, UnpackArgs,
};
pub use install::install;
pub use run::run;
pub use verify::{UNPACKED_BUNDLE_DIR, UNPACKED_DIGEST_FILE, unpack};

/// Why `run` stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The kernel cannot keep the plugin process from the TLS directory.
    #[error(
        "this kernel cannot hide {} from the plugin process (it needs Linux 5.19 or later with Landlock enabled), so the plugin could read the shim's private key; refusing to start. Run plugins on nodes with Landlock, or accept the risk with --allow-readable-key (chart value shim.allowReadableKey=true)",
        dir.display()
    )]
    KeyNotHidden {
        /// The TLS directory.
        dir: PathBuf,
    },
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
    /// The shim could not make itself non-dumpable.
    #[error(
        "cannot keep the shim's memory from the plugin (prctl PR_SET_DUMPABLE): {0}; the shim does not run without it"
    )]
    Dumpable(#[source] nix::Error),
    /// The TLS directory cannot be hidden from the plugin.
    #[error(transparent)]
    HideKey(#[from] crate::sandbox::HideError),
    /// The async runtime could not be built.
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),
    /// The server failed.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// The plugin's configuration (`--config-file`) cannot be used.
    #[error(
        "{0}; the plugin is not started with a configuration its signed configSchema refuses (fix spec.config of the Plugin)"
    )]
    Config(#[from] crate::config::ConfigFileError),
    /// The verified manifest's `configSchema` does not compile (the manifest check should have
    /// refused it).
    #[error(
        "the configSchema of the plugin's signed manifest is not usable: {0}; fix it, re-pack and re-sign the bundle"
    )]
    ConfigSchema(String),
}

/// Entry point of the binary: parses flags, runs, and turns errors into a logged message and
/// exit code 1.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::SandboxExec(args) = &cli.command {
        // Only returns on failure; stderr is the plugin's log, where this belongs.
        let Err(e) = crate::sandbox::exec(&args.spec(), &args.entry_point);
        eprintln!("airlock-shim sandbox-exec: {e}");
        return ExitCode::from(126);
    }
    let _logs = crate::telemetry::init();
    let result = match cli.command {
        Command::Install(args) => install(&args.dest).map(|path| {
            info!(path = %path.display(), "installed airlock-shim");
        }),
        Command::Unpack(args) => unpack(&args).map(|path| {
            info!(path = %path.display(), "unpacked the bundle");
        }),
        Command::Run(args) => run::run_blocking(*args),
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
