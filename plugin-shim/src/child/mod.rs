//! The plugin process: starting it, talking to it (see [`airlock_sdk::protocol`]) and replacing
//! it.
//!
//! Owns a pool of child processes (`--concurrency`, one by default), each with one invocation in
//! flight at a time — or, for a plugin whose manifest says `multiplexed: true`, one process with
//! up to `--concurrency` invocations in flight, answered by id in any order. Each child runs the manifest's entry point with a clean environment (`PATH`
//! and `AIRLOCK_BUNDLE_DIR` only), in the bundle directory, in a process group of its own so that
//! everything it forks can be killed with it. A child that misses its deadline, answers with more
//! than the output limit or breaks the protocol is killed (SIGKILL to its whole group, never the
//! others') and replaced right away; a child that exited by itself is replaced on the next call
//! it gets. Every replacement is counted, crash backoff is per child. Publishes whether the
//! plugin is ready (at least one child started and answered) on a watch channel.
//!
//! While a request is in flight, the plugin may make host calls (see [`crate::host`]): each one is
//! handed to the configured [`HostCalls`] with the request's id and its result written back on the
//! plugin's stdin, until the answer comes. The request's deadline covers them all.
//!
//! This module holds what callers see ([`ChildSpec`], [`Answer`], [`InvokeError`]); the work is
//! split by concern, each module owning one:
//!
//! - `spawn`: starting the sandboxed process and the handle that kills its group when dropped;
//! - `supervisor`: [`Supervisor`], which hands each invocation to a free process of the pool,
//!   restarts processes with backoff and publishes readiness;
//! - `exchange`: one request on the process's stdio, with the host calls it makes until it
//!   answers;
//! - `mux`: a multiplexed process, its requests and host calls in flight side by side.

mod exchange;
mod mux;
mod spawn;
mod supervisor;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::host::HostCalls;
use crate::sandbox::SandboxSpec;
use airlock_sdk::protocol::MAX_LINE_BYTES;

// The public paths (`child::Supervisor`, `child::CHILD_PATH`, ...), whichever module owns them.
pub use spawn::CHILD_PATH;
pub use supervisor::{MAX_BACKOFF, Reconfigured, Supervisor, backoff};

/// How to start the plugin process.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    /// The entry point: program and arguments. A program with a `/` in it that is not absolute is
    /// relative to the bundle directory; a bare name is looked up in [`CHILD_PATH`].
    pub argv: Vec<String>,
    /// The unpacked bundle: the child's working directory and `AIRLOCK_BUNDLE_DIR`.
    pub bundle_dir: PathBuf,
    /// Whether to send `onLoad` after each start (and only then report ready).
    pub on_load: bool,
    /// What each new process gets in `onLoad`: its configuration (and secrets).
    /// [`Supervisor::reconfigure`] replaces it.
    pub load_payload: LoadPayload,
    /// Whether the plugin takes a new configuration in `onConfigChange` while it runs (else its
    /// processes are restarted to get it).
    pub on_config_change: bool,
    /// Whether to send `onUnload` before stopping.
    pub on_unload: bool,
    /// The plugin's (verified) version when it declares `onUpgrade`: the first process this
    /// shim starts gets `onUpgrade {from, to}` when the storage was last written by an older one.
    pub on_upgrade: Option<semver::Version>,
    /// How long `onLoad` and `onUnload` may take.
    pub lifecycle_timeout: Duration,
    /// The plugin process's own sandbox, applied by `airlock-shim sandbox-exec` in front of the
    /// entry point. `None` runs the entry point directly (unit tests of the supervisor).
    pub sandbox: Option<Sandbox>,
    /// Lines of the plugin's stderr forwarded per minute; the rest are dropped and counted.
    pub log_lines_per_minute: u32,
    /// Where the plugin's host calls go. `None`: every call fails with UNAVAILABLE (the plugin
    /// is told, and goes on).
    pub host: Option<Arc<dyn HostCalls>>,
    /// The manifest's `multiplexed`: with a concurrency above 1, run one process with that many
    /// requests in flight instead of that many processes.
    pub multiplexed: bool,
}

/// The payload of `onLoad` and `onConfigChange`: `{"config": {...}}`, with `"secrets": {...}`
/// when the Plugin gives the plugin secrets. Compact JSON of an object, checked. Its `Debug`
/// shows its size only: it may hold secret values.
#[derive(Clone, PartialEq, Eq)]
pub struct LoadPayload(Arc<str>);

impl LoadPayload {
    /// `{"config": <config>}` (compact JSON of an object) with `secrets` (name → value) if any.
    pub fn new(config: &str, secrets: &std::collections::BTreeMap<String, String>) -> Self {
        let text = match secrets.is_empty() {
            true => format!(r#"{{"config":{config}}}"#),
            false => format!(
                r#"{{"config":{config},"secrets":{}}}"#,
                serde_json::to_string(secrets).unwrap_or_else(|_| "{}".into())
            ),
        };
        Self(Arc::from(text))
    }

    /// The JSON text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for LoadPayload {
    /// No configuration: `{"config":{}}`.
    fn default() -> Self {
        Self::new("{}", &Default::default())
    }
}

impl std::fmt::Debug for LoadPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LoadPayload({} bytes)", self.0.len())
    }
}

/// The sandbox of the plugin process and the executable that applies it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub spec: SandboxSpec,
    /// The `airlock-shim` executable (in the pod: the running shim itself).
    pub launcher: PathBuf,
}

/// The answer to one invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The plugin's output: JSON text exactly as the plugin wrote it, on one line.
    pub output: String,
    /// Time from writing the request to reading the answer.
    pub duration: Duration,
}

/// How a plugin process ended, as far as the shim can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// It exited, was killed, or is gone for a reason the shim knows (a description).
    Status(String),
    /// The kernel killed it at the container's memory limit (bytes, when known): see
    /// [`crate::memory`].
    OutOfMemory { limit: Option<u64> },
}

impl Exit {
    /// The error of a call the process was in when it ended.
    pub fn error(&self) -> InvokeError {
        match self {
            Exit::Status(status) => InvokeError::Exited {
                status: status.clone(),
            },
            Exit::OutOfMemory { limit } => InvokeError::OutOfMemory { limit: *limit },
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Status(status) => f.write_str(status),
            Exit::OutOfMemory { limit } => {
                write!(
                    f,
                    "killed by the kernel: out of memory at {}",
                    limit_text(*limit)
                )
            }
        }
    }
}

/// "the container's memory limit of 64Mi", or what is known without it.
fn limit_text(limit: Option<u64>) -> String {
    match limit {
        Some(bytes) => format!(
            "the container's memory limit of {}",
            crate::memory::quantity(bytes)
        ),
        None => "the container's memory limit".to_string(),
    }
}

impl InvokeError {
    /// The memory limit the plugin process ran out of, if that is how this call failed (also
    /// inside a failed `onLoad` or `onUpgrade`).
    pub fn out_of_memory(&self) -> Option<Option<u64>> {
        match self {
            InvokeError::OutOfMemory { limit } => Some(*limit),
            InvokeError::LoadFailed(inner) | InvokeError::UpgradeFailed(inner) => {
                inner.out_of_memory()
            }
            _ => None,
        }
    }
}

/// Why an invocation produced no output.
#[derive(Debug, thiserror::Error)]
pub enum InvokeError {
    /// The plugin did not answer in time; it was killed and is being replaced.
    #[error(
        "the plugin did not answer within {} ms; its processes were killed and it is being restarted",
        .0.as_millis()
    )]
    Timeout(Duration),
    /// The deadline passed before the plugin was free to take the call.
    #[error(
        "the deadline of {} ms passed before the plugin could take the call (a previous call or \
         a start of the plugin process was still in progress)",
        .0.as_millis()
    )]
    QueueTimeout(Duration),
    /// The plugin did not answer in the time left after the call waited for a previous call or a
    /// restart: it was killed, but the timeout is not all its own (a caller could otherwise make
    /// a healthy plugin time out by making it restart first).
    #[error(
        "the plugin did not answer within the {} ms left of the call's {} ms deadline after it \
         waited for a previous call or a start of the plugin process; its processes were killed \
         and it is being restarted",
        .had.as_millis(),
        .deadline.as_millis()
    )]
    ShortenedTimeout {
        /// The call's deadline.
        deadline: Duration,
        /// What was left of it when the plugin got the request.
        had: Duration,
    },
    /// The entry point could not be started.
    #[error("the plugin process could not be started ({program}): {source}")]
    Spawn {
        /// The program that was started.
        program: String,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// The plugin process is gone.
    #[error("the plugin process exited ({status}); it will be restarted on the next call")]
    Exited {
        /// Exit status, as far as it is known.
        status: String,
    },
    /// The kernel killed the plugin process at the container's memory limit.
    #[error(
        "the plugin process was killed by the kernel: out of memory at {}; it will be restarted \
         on the next call. Raise spec.resources.limits.memory (within the trust level's \
         maximum) or make the plugin use less",
        limit_text(*.limit)
    )]
    OutOfMemory {
        /// The container's memory limit in bytes, when it could be read.
        limit: Option<u64>,
    },
    /// `onLoad` failed, so the new process is not used.
    #[error("the plugin's onLoad hook failed: {0}")]
    LoadFailed(Box<InvokeError>),
    /// `onUpgrade` failed (or the storage's version could not be asked for), so the new
    /// process is not used: it would serve data it did not migrate.
    #[error("the plugin's onUpgrade hook failed: {0}")]
    UpgradeFailed(Box<InvokeError>),
    /// The plugin keeps crashing: it is not started again before its backoff ends.
    #[error(
        "the plugin crashed {crashes} times in a row; it is started again in {} ms",
        .retry_in.as_millis()
    )]
    Backoff {
        /// Consecutive crashes (exits and failed starts) so far.
        crashes: u32,
        /// Time left before the next start.
        retry_in: Duration,
    },
    /// The plugin answered `"ok": false`.
    #[error("{0}")]
    Plugin(String),
    /// The plugin's answer was over the limit; it was killed and is being replaced.
    #[error("the plugin's answer is larger than {MAX_LINE_BYTES} bytes; it is being restarted")]
    OutputTooLarge,
    /// The plugin broke the protocol; it was killed and is being replaced.
    #[error("the plugin broke the shim protocol ({0}); it is being restarted")]
    Protocol(String),
}
