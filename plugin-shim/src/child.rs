//! The plugin process: starting it, talking to it (see [`crate::protocol`]) and replacing it.
//!
//! Owns exactly one child process at a time. The child runs the manifest's entry point with a
//! clean environment (`PATH` and `AIRLOCK_BUNDLE_DIR` only), in the bundle directory, in a
//! process group of its own so that everything it forks can be killed with it. Invocations are
//! serialised (one in flight per child). A child that misses its deadline, answers with more than
//! the output limit or breaks the protocol is killed (SIGKILL to the whole group) and replaced
//! right away; a child that exited by itself is replaced on the next call. Every replacement is
//! counted. Publishes whether the plugin is ready (started and answered) on a watch channel.
//!
//! While a request is in flight, the plugin may make host calls (see [`crate::host`]): each one is
//! handed to the configured [`HostCalls`] with the request's id and its result written back on the
//! plugin's stdin, until the answer comes. The request's deadline covers them all.

use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use crate::host::HostCalls;
use crate::logs::LogStats;
use crate::sandbox::SandboxSpec;
use airlock_core::Hook;
use airlock_core::rate::LineBudget;
use airlock_sdk::protocol::{self, MAX_HOST_CALLS, MAX_LINE_BYTES, StdoutLine};

/// The only `PATH` the plugin process sees.
pub const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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
    /// Whether to send `onUnload` before stopping.
    pub on_unload: bool,
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
}

/// The sandbox of the plugin process and the executable that applies it.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pub spec: SandboxSpec,
    /// The `airlock-shim` executable (in the pod: the running shim itself).
    pub launcher: PathBuf,
}

/// The executable `program` names: itself when it has a `/`, else found in [`CHILD_PATH`].
fn locate(program: &std::path::Path) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return if executable(program) {
            Ok(program.to_path_buf())
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not an executable file", program.display()),
            ))
        };
    }
    CHILD_PATH
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| executable(p))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not in {CHILD_PATH}", program.display()),
            )
        })
}

/// The answer to one invocation.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The plugin's output: JSON text exactly as the plugin wrote it, on one line.
    pub output: String,
    /// Time from writing the request to reading the answer.
    pub duration: Duration,
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
    /// `onLoad` failed, so the new process is not used.
    #[error("the plugin's onLoad hook failed: {0}")]
    LoadFailed(Box<InvokeError>),
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

/// Restart backoff after crashes: the first restart is immediate, then 250 ms, doubling up to
/// [`MAX_BACKOFF`]; an answer from the plugin resets it.
#[derive(Debug, Default, Clone, Copy)]
struct CrashBackoff {
    crashes: u32,
    not_before: Option<Instant>,
}

/// Longest wait between two starts of a crashing plugin.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The wait before the start that follows the `crashes`-th consecutive crash.
pub fn backoff(crashes: u32) -> Duration {
    match crashes {
        0 | 1 => Duration::ZERO,
        n => (Duration::from_millis(250) * 2u32.saturating_pow((n - 2).min(16))).min(MAX_BACKOFF),
    }
}

#[cfg(test)]
mod backoff_tests {
    use super::*;

    #[test]
    fn the_first_restart_is_immediate_then_the_wait_doubles_up_to_the_cap() {
        let waits: Vec<u128> = (1..=9).map(|n| backoff(n).as_millis()).collect();
        assert_eq!(
            waits,
            vec![0, 250, 500, 1000, 2000, 4000, 8000, 10000, 10000]
        );
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}

/// The lock on the plugin process slot, held for a whole invocation.
type Slot = OwnedMutexGuard<Option<Running>>;

/// Runs invocations on the plugin process, starting and replacing it as needed.
#[derive(Debug)]
pub struct Supervisor {
    spec: ChildSpec,
    /// Consecutive crashes and when the next start may happen (guarded by the slot lock's holder;
    /// a std mutex because it is never held across an await).
    crashes: std::sync::Mutex<CrashBackoff>,
    /// Shared by every process of this plugin: a restart does not refill it.
    log_budget: Arc<std::sync::Mutex<LineBudget>>,
    log_stats: Arc<LogStats>,
    slot: Arc<Mutex<Option<Running>>>,
    starts: AtomicU64,
    ready: watch::Sender<bool>,
}

impl Supervisor {
    /// A supervisor that has not started the plugin yet; see [`Supervisor::warm_up`].
    pub fn new(spec: ChildSpec) -> Arc<Self> {
        Arc::new(Self {
            crashes: std::sync::Mutex::default(),
            log_budget: Arc::new(std::sync::Mutex::new(LineBudget::new(
                spec.log_lines_per_minute,
                Instant::now().into_std(),
            ))),
            log_stats: Arc::default(),
            spec,
            slot: Arc::new(Mutex::new(None)),
            starts: AtomicU64::new(0),
            ready: watch::Sender::new(false),
        })
    }

    /// Whether the plugin started and answered (`onLoad`, when it has one). Changes when the
    /// plugin is restarted.
    pub fn subscribe_ready(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    /// Plugin log lines forwarded and dropped (over the rate limit) so far.
    pub fn log_lines(&self) -> (u64, u64) {
        (
            self.log_stats.forwarded.load(Ordering::Relaxed),
            self.log_stats.dropped.load(Ordering::Relaxed),
        )
    }

    /// How many times the plugin process was started again after the first start.
    pub fn restarts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Starts the plugin if it is not running. Without an `onLoad` hook there is nothing to ask
    /// it, so it counts as started once it is still running after a short grace period.
    pub async fn warm_up(&self) -> Result<(), InvokeError> {
        let mut slot = self.slot.lock().await;
        self.ensure_running(&mut slot, self.spec.on_load).await?;
        if !self.spec.on_load {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(running) = slot.as_mut()
                && let Some(status) = running.exited()
            {
                *slot = None;
                self.ready.send_replace(false);
                return Err(InvokeError::Exited { status });
            }
            self.ready.send_replace(true);
        }
        Ok(())
    }

    /// Runs `hook` on `payload_json` (valid JSON) within `deadline` from now, queueing and a
    /// plugin (re)start included.
    ///
    /// Callers must not drop this future before it finishes (run it in its own task): a request
    /// abandoned between write and read would leave its answer for the next call.
    /// `traceparent` (the plugin's span) is passed on to the plugin in its request line.
    #[tracing::instrument(level = "debug", skip(self, payload_json), fields(restarts))]
    pub async fn invoke(
        self: &Arc<Self>,
        hook: &str,
        payload_json: &str,
        invocation_id: &str,
        deadline: Duration,
        traceparent: Option<&str>,
    ) -> Result<Answer, InvokeError> {
        let until = Instant::now() + deadline;
        let slot = timeout_at(until, Arc::clone(&self.slot).lock_owned())
            .await
            .map_err(|_| InvokeError::QueueTimeout(deadline))?;
        let mut slot = self.running_by(slot, until, deadline).await?;
        let result = self
            .exchange_on(
                &mut slot,
                protocol::encode_traced_request(
                    invocation_id,
                    hook,
                    payload_json,
                    until.saturating_duration_since(Instant::now()).as_millis() as u64,
                    traceparent,
                ),
                invocation_id,
                until,
                deadline,
            )
            .await;
        // Any answer, even an error one, shows the process works.
        if matches!(result, Ok(_) | Err(InvokeError::Plugin(_))) {
            *self.crashes.lock().unwrap_or_else(|e| e.into_inner()) = CrashBackoff::default();
        }
        if let Err(e) = &result {
            let killed = matches!(
                e,
                InvokeError::Timeout(_) | InvokeError::OutputTooLarge | InvokeError::Protocol(_)
            );
            if killed {
                // Dropping the handle kills the process group. Start the replacement now, in the
                // background, so the next call does not pay for the start; it takes the lock, so
                // calls queue behind it rather than seeing a half-started plugin.
                *slot = None;
                drop(slot);
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let mut slot = this.slot.lock().await;
                    if let Err(e) = this.ensure_running(&mut slot, true).await {
                        warn!(error = %e, "restarting the plugin failed; retrying on the next call");
                    }
                });
            }
            tracing::Span::current().record("restarts", self.restarts());
        }
        result
    }

    /// Returns the lock with a running, loaded plugin in it, starting one if needed. A start
    /// runs in a task of its own with the lifecycle timeout: if it outlasts this call's deadline,
    /// the call fails with DEADLINE_EXCEEDED but the start completes for the calls after it
    /// (otherwise a plugin with a slow onLoad could never be restarted by short calls).
    async fn running_by(
        self: &Arc<Self>,
        mut slot: Slot,
        until: Instant,
        deadline: Duration,
    ) -> Result<Slot, InvokeError> {
        if slot
            .as_mut()
            .is_some_and(|running| running.exited().is_none())
        {
            return Ok(slot);
        }
        let this = Arc::clone(self);
        let start = tokio::spawn(async move {
            let started = this.ensure_running(&mut slot, true).await.map(|_| ());
            (slot, started)
        });
        match timeout_at(until, start).await {
            Err(_) => Err(InvokeError::QueueTimeout(deadline)),
            Ok(Err(join)) => Err(InvokeError::Exited {
                status: format!("the start task failed: {join}"),
            }),
            Ok(Ok((_, Err(e)))) => Err(e),
            Ok(Ok((slot, Ok(())))) => Ok(slot),
        }
    }

    /// Sends the request `line` (for `invocation_id`) and waits for its answer until `until`.
    async fn exchange_on(
        &self,
        slot: &mut Option<Running>,
        line: String,
        invocation_id: &str,
        until: Instant,
        deadline: Duration,
    ) -> Result<Answer, InvokeError> {
        let running = slot.as_mut().ok_or_else(|| InvokeError::Exited {
            status: "not running".to_string(),
        })?;
        let started = Instant::now();
        let host = self.spec.host.as_deref();
        let exchanged = match timeout_at(until, running.exchange(&line, invocation_id, host)).await
        {
            Ok(exchanged) => exchanged,
            Err(_) => return Err(InvokeError::Timeout(deadline)),
        };
        let duration = started.elapsed();
        match exchanged {
            Ok(Ok(output)) => Ok(Answer { output, duration }),
            Ok(Err(message)) => Err(InvokeError::Plugin(message)),
            Err(ExchangeError::Closed) => {
                let status = running.exit_status().await;
                *slot = None;
                self.crashed();
                Err(InvokeError::Exited { status })
            }
            Err(ExchangeError::Fatal(e)) => Err(e),
        }
    }

    /// Makes sure a plugin process is running and loaded, starting one if there is none or the
    /// last one exited. A new process is reported ready if `mark_ready`; a failed start always
    /// reports not ready.
    async fn ensure_running<'a>(
        &self,
        slot: &'a mut Option<Running>,
        mark_ready: bool,
    ) -> Result<&'a mut Running, InvokeError> {
        if let Some(running) = slot.as_mut()
            && let Some(status) = running.exited()
        {
            warn!(%status, "the plugin process exited; restarting it");
            *slot = None;
            self.crashed();
        }
        if slot.is_none() {
            let state = *self.crashes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(at) = state.not_before
                && Instant::now() < at
            {
                return Err(InvokeError::Backoff {
                    crashes: state.crashes,
                    retry_in: at - Instant::now(),
                });
            }
            let started = self.start().await;
            if started.is_err() {
                self.crashed();
            }
            match started {
                Ok(running) => {
                    *slot = Some(running);
                    if mark_ready {
                        self.ready.send_replace(true);
                    }
                }
                Err(e) => {
                    self.ready.send_replace(false);
                    return Err(e);
                }
            }
        }
        slot.as_mut().ok_or_else(|| InvokeError::Exited {
            status: "not running".to_string(),
        })
    }

    /// Counts a crash (an exit the shim did not cause, or a failed start) and sets when the next
    /// start may happen.
    fn crashed(&self) {
        let mut state = self.crashes.lock().unwrap_or_else(|e| e.into_inner());
        state.crashes = state.crashes.saturating_add(1);
        state.not_before = Some(Instant::now() + backoff(state.crashes));
    }

    /// Spawns the plugin process and, if it has one, runs its `onLoad` hook within the
    /// lifecycle timeout.
    async fn start(&self) -> Result<Running, InvokeError> {
        let mut running = self.spawn()?;
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        info!(
            pid = running.pid,
            restarts = n,
            "started the plugin process"
        );
        if self.spec.on_load {
            let limit = self.spec.lifecycle_timeout;
            let id = format!("onload-{}", n + 1);
            let line = protocol::encode_request(
                &id,
                Hook::OnLoad.as_str(),
                "{}",
                limit.as_millis() as u64,
            );
            let host = self.spec.host.as_deref();
            let loaded = match timeout(limit, running.exchange(&line, &id, host)).await {
                Err(_) => Err(InvokeError::Timeout(limit)),
                Ok(Ok(Ok(_))) => Ok(()),
                Ok(Ok(Err(message))) => Err(InvokeError::Plugin(message)),
                Ok(Err(ExchangeError::Closed)) => Err(InvokeError::Exited {
                    status: running.exit_status().await,
                }),
                Ok(Err(ExchangeError::Fatal(e))) => Err(e),
            };
            // A failed onLoad drops (kills) the new process.
            loaded.map_err(|e| InvokeError::LoadFailed(Box::new(e)))?;
        }
        Ok(running)
    }

    fn spawn(&self) -> Result<Running, InvokeError> {
        let spawn_err = |program: &str, source| InvokeError::Spawn {
            program: program.to_string(),
            source,
        };
        let Some(program) = self.spec.argv.first() else {
            return Err(spawn_err(
                "",
                io::Error::new(io::ErrorKind::InvalidInput, "the entry point is empty"),
            ));
        };
        // A relative path with a slash means "in the bundle"; std leaves its resolution against
        // the new working directory unspecified, so make it absolute.
        let resolved = if program.contains('/') && !program.starts_with('/') {
            self.spec.bundle_dir.join(program)
        } else {
            PathBuf::from(program)
        };
        let mut cmd = match &self.spec.sandbox {
            Some(sandbox) => {
                // The launcher execs the entry point after the fork; check it here so a missing
                // program is reported by name, as a direct spawn would.
                locate(&resolved).map_err(|e| spawn_err(program, e))?;
                let mut cmd = Command::new(&sandbox.launcher);
                cmd.arg("sandbox-exec")
                    .args(sandbox.spec.to_args())
                    .arg("--")
                    .arg(&resolved)
                    .args(&self.spec.argv[1..]);
                cmd
            }
            None => {
                let mut cmd = Command::new(&resolved);
                cmd.args(&self.spec.argv[1..]);
                cmd
            }
        };
        cmd.env_clear()
            .env("PATH", CHILD_PATH)
            .env("AIRLOCK_BUNDLE_DIR", &self.spec.bundle_dir)
            .current_dir(&self.spec.bundle_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            // The plugin's log goes to the container log through the rate limit.
            .stderr(Stdio::piped())
            // A group of its own, led by the child: killpg reaches everything it forks.
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| spawn_err(program, e))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or(0);
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(crate::logs::forward(
                stderr,
                tokio::io::stderr(),
                Arc::clone(&self.log_budget),
                Arc::clone(&self.log_stats),
            ));
        }
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(spawn_err(
                program,
                io::Error::other("the child's stdin/stdout pipes are missing"),
            ));
        };
        Ok(Running {
            child,
            pid,
            stdin: Some(stdin),
            stdout: BufReader::new(stdout),
        })
    }

    /// Runs `f` with the pid of the current plugin process (if any) while no process can be
    /// started or replaced. An exited plugin process is reaped (by tokio) first.
    pub(crate) async fn with_current_pid<T>(&self, f: impl FnOnce(Option<i32>) -> T) -> T {
        let mut slot = self.slot.lock().await;
        let pid = slot.as_mut().map(|running| {
            let _ = running.exited();
            running.pid
        });
        f(pid)
    }

    /// Stops the plugin: `onUnload` (if declared, within the lifecycle timeout), then closes its
    /// stdin and gives it a moment to exit before killing its process group.
    pub async fn shutdown(&self) {
        let mut slot = self.slot.lock().await;
        self.ready.send_replace(false);
        let Some(mut running) = slot.take() else {
            return;
        };
        if self.spec.on_unload && running.exited().is_none() {
            let line = protocol::encode_request(
                "onunload",
                Hook::OnUnload.as_str(),
                "{}",
                self.spec.lifecycle_timeout.as_millis() as u64,
            );
            match timeout(
                self.spec.lifecycle_timeout,
                running.exchange(&line, "onunload", self.spec.host.as_deref()),
            )
            .await
            {
                Ok(Ok(Ok(_))) => debug!("onUnload done"),
                Ok(Ok(Err(message))) => warn!(%message, "the plugin's onUnload hook failed"),
                Ok(Err(e)) => warn!(error = %e.describe(), "the plugin's onUnload hook failed"),
                Err(_) => warn!("the plugin's onUnload hook timed out"),
            }
        }
        running.stdin = None;
        if timeout(Duration::from_millis(500), running.child.wait())
            .await
            .is_err()
        {
            debug!("the plugin did not exit after its stdin closed; killing it");
        }
        // Dropping `running` kills whatever is left of the group.
    }
}

/// A running plugin process.
#[derive(Debug)]
struct Running {
    child: Child,
    /// Also the process group id.
    pid: i32,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

#[derive(Debug)]
enum ExchangeError {
    /// stdin or stdout closed: the process is (about to be) gone.
    Closed,
    /// The answer is unusable; the process must be replaced.
    Fatal(InvokeError),
}

impl ExchangeError {
    fn describe(&self) -> String {
        match self {
            ExchangeError::Closed => "the plugin process exited".to_string(),
            ExchangeError::Fatal(e) => e.to_string(),
        }
    }
}

impl Running {
    /// Writes one request line and reads lines until the answer for `id`, answering the host
    /// calls the plugin makes meanwhile through `host` (with `id` as their invocation id).
    async fn exchange(
        &mut self,
        line: &str,
        id: &str,
        host: Option<&dyn HostCalls>,
    ) -> Result<Result<String, String>, ExchangeError> {
        self.write_line(line).await?;
        let mut calls = 0u32;
        loop {
            let text = self.read_line().await?;
            let call = match protocol::parse_stdout_line(&text) {
                Ok(StdoutLine::Response(response)) if response.id == id => {
                    return Ok(response.result);
                }
                Ok(StdoutLine::Response(response)) => {
                    return Err(ExchangeError::Fatal(InvokeError::Protocol(format!(
                        "answered id {:?} to request {id:?}",
                        response.id
                    ))));
                }
                Ok(StdoutLine::HostCall(call)) => call,
                Err(e) => {
                    return Err(ExchangeError::Fatal(InvokeError::Protocol(format!(
                        "{e}; stdout is for answers and host calls only, write logs to stderr"
                    ))));
                }
            };
            calls += 1;
            if calls > MAX_HOST_CALLS {
                return Err(ExchangeError::Fatal(InvokeError::Protocol(format!(
                    "more than {MAX_HOST_CALLS} host calls while handling request {id:?}"
                ))));
            }
            let (name, call_id) = (call.call.clone(), call.call_id.clone());
            let result = match host {
                _ if !protocol::calls::ALL.contains(&name.as_str()) => {
                    Err(crate::host::unimplemented(&name))
                }
                Some(host) => host.call(id, call).await,
                None => Err(crate::host::not_configured()),
            };
            match &result {
                Ok(_) => debug!(invocation = id, call = %name, call_id, "host call done"),
                Err(e) => {
                    debug!(invocation = id, call = %name, call_id, code = %e.code, "host call failed");
                }
            }
            self.write_line(&protocol::encode_call_result(&call_id, &result))
                .await?;
        }
    }

    /// Writes one line (newline included) to the plugin's stdin.
    async fn write_line(&mut self, line: &str) -> Result<(), ExchangeError> {
        let stdin = self.stdin.as_mut().ok_or(ExchangeError::Closed)?;
        // A write error is a closed pipe (EPIPE): the child is gone.
        stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|_| ExchangeError::Closed)?;
        stdin.flush().await.map_err(|_| ExchangeError::Closed)
    }

    /// Reads one line (newline included) of the plugin's stdout.
    async fn read_line(&mut self) -> Result<String, ExchangeError> {
        let mut buf = Vec::new();
        (&mut self.stdout)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|_| ExchangeError::Closed)?;
        if buf.last() != Some(&b'\n') {
            return Err(if buf.len() > MAX_LINE_BYTES {
                ExchangeError::Fatal(InvokeError::OutputTooLarge)
            } else {
                // EOF, possibly after part of a line.
                ExchangeError::Closed
            });
        }
        String::from_utf8(buf).map_err(|_| {
            ExchangeError::Fatal(InvokeError::Protocol("the answer is not UTF-8".into()))
        })
    }

    /// `Some(status)` if the process has exited.
    fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(describe(status)),
            Ok(None) => None,
            Err(e) => Some(format!("unknown status: {e}")),
        }
    }

    /// The exit status, waiting briefly: a process that closed stdout may still be exiting.
    async fn exit_status(&mut self) -> String {
        match timeout(Duration::from_millis(200), self.child.wait()).await {
            Ok(Ok(status)) => describe(status),
            Ok(Err(e)) => format!("unknown status: {e}"),
            Err(_) => "closed its stdout but is still running; killed".to_string(),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.pid > 0 {
            // The child leads its own group (process_group(0)), so its pid is the group id; this
            // also reaches every process it forked that stayed in the group. ESRCH (already gone)
            // is fine. tokio reaps the direct child in the background (kill_on_drop).
            let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
            // A descendant that left the group (setsid) is not reached by killpg. As PID 1 of
            // the container's PID namespace, the shim is the only process that is not the
            // plugin's, so signalling every process (-1, which spares PID 1) kills exactly the
            // plugin's whole tree. Never anywhere else: outside a container -1 means the host.
            if std::process::id() == 1 {
                let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
            }
        }
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => match Signal::try_from(signal) {
            Ok(s) => format!("killed by {s}"),
            Err(_) => format!("killed by signal {signal}"),
        },
        _ => status.to_string(),
    }
}
