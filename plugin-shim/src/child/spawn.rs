//! Starting the plugin process, and the handle that owns it.
//!
//! The entry point runs behind `airlock-shim sandbox-exec` when the spec has a sandbox (the
//! launcher applies the plugin's own sandbox, then execs it), with a clean environment, in the
//! bundle directory and in a process group of its own. [`Running`] holds its pipes; dropping it kills the whole group, so a process
//! the supervisor lets go of can never linger.

use std::collections::BTreeSet;
use std::io;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::BufReader;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::timeout;

use super::{ChildSpec, Exit, InvokeError};
use crate::logs::LogStats;
use crate::memory::MemoryCgroup;
use airlock_core::rate::LineBudget;

/// The only `PATH` the plugin process sees.
pub const CHILD_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

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

/// The process groups of a pool's live plugin processes (each process leads its own, so these
/// are also their pids). A process is added when it is spawned and removed when its handle is
/// dropped, both under the lock, so whoever holds it knows every live plugin process exactly.
#[derive(Debug, Default)]
pub(super) struct Groups(std::sync::Mutex<BTreeSet<i32>>);

impl Groups {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<i32>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with the live groups while none can be added or removed.
    pub(super) fn with_live<T>(&self, f: impl FnOnce(&BTreeSet<i32>) -> T) -> T {
        f(&self.lock())
    }
}

/// Starts the plugin process of `spec`: its entry point (behind the sandbox launcher when `spec`
/// has a sandbox), with a clean environment, in the bundle directory, in a process group of its
/// own (recorded in `groups`), its stderr forwarded to the shim's under `log_budget` (counted in
/// `log_stats`).
pub(super) fn spawn(
    spec: &ChildSpec,
    log_budget: &Arc<std::sync::Mutex<LineBudget>>,
    log_stats: &Arc<LogStats>,
    groups: &Arc<Groups>,
) -> Result<Running, InvokeError> {
    let spawn_err = |program: &str, source| InvokeError::Spawn {
        program: program.to_string(),
        source,
    };
    let Some(program) = spec.argv.first() else {
        return Err(spawn_err(
            "",
            io::Error::new(io::ErrorKind::InvalidInput, "the entry point is empty"),
        ));
    };
    // A relative path with a slash means "in the bundle"; std leaves its resolution against
    // the new working directory unspecified, so make it absolute.
    let resolved = if program.contains('/') && !program.starts_with('/') {
        spec.bundle_dir.join(program)
    } else {
        PathBuf::from(program)
    };
    let mut cmd = match &spec.sandbox {
        Some(sandbox) => {
            // The launcher execs the entry point after the fork; check it here so a missing
            // program is reported by name, as a direct spawn would.
            locate(&resolved).map_err(|e| spawn_err(program, e))?;
            let mut cmd = Command::new(&sandbox.launcher);
            // No process_group here: the launcher makes itself a session leader (setsid), which
            // a group leader cannot; its session's group id is its pid all the same.
            cmd.arg("sandbox-exec")
                .args(sandbox.spec.to_args())
                .arg("--")
                .arg(&resolved)
                .args(&spec.argv[1..]);
            cmd
        }
        None => {
            let mut cmd = Command::new(&resolved);
            cmd.args(&spec.argv[1..])
                // A group of its own, led by the child: killpg reaches everything it forks.
                .process_group(0);
            cmd
        }
    };
    cmd.env_clear()
        .env("PATH", CHILD_PATH)
        .env("AIRLOCK_BUNDLE_DIR", &spec.bundle_dir)
        .current_dir(&spec.bundle_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        // The plugin's log goes to the container log through the rate limit.
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Spawned and recorded under the lock: a kill of another process of the pool, which spares
    // the recorded groups only, can never catch this one in between.
    // Read before the process exists, so that only kills after its start can be its own.
    let memory = MemoryCgroup::of_container();
    let oom_kills_at_start = memory.as_ref().and_then(MemoryCgroup::oom_kills);
    let (mut child, pid) = {
        let mut live = groups.lock();
        let child = cmd.spawn().map_err(|e| spawn_err(program, e))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .unwrap_or(0);
        live.insert(pid);
        (child, pid)
    };
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(crate::logs::forward(
            stderr,
            tokio::io::stderr(),
            Arc::clone(log_budget),
            Arc::clone(log_stats),
        ));
    }
    let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
        // Never happens with piped stdio; the child dies with its handle (kill_on_drop).
        groups.lock().remove(&pid);
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
        groups: Arc::clone(groups),
        memory,
        oom_kills_at_start,
    })
}

/// A running plugin process.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) child: Child,
    /// Also the process group id.
    pub(super) pid: i32,
    pub(super) stdin: Option<ChildStdin>,
    pub(super) stdout: BufReader<ChildStdout>,
    groups: Arc<Groups>,
    /// The container's memory cgroup and its OOM kill count when the process started: a SIGKILL
    /// while the count rose is the kernel's, for memory.
    memory: Option<MemoryCgroup>,
    oom_kills_at_start: Option<u64>,
}

impl Running {
    /// `Some(how)` if the process has exited.
    pub(super) fn exited(&mut self) -> Option<Exit> {
        match self.child.try_wait() {
            Ok(Some(status)) => Some(self.ended(status)),
            Ok(None) => None,
            Err(e) => Some(Exit::Status(format!("unknown status: {e}"))),
        }
    }

    /// How it ended, waiting briefly: a process that closed stdout may still be exiting.
    pub(super) async fn exit_status(&mut self) -> Exit {
        match timeout(Duration::from_millis(200), self.child.wait()).await {
            Ok(Ok(status)) => self.ended(status),
            Ok(Err(e)) => Exit::Status(format!("unknown status: {e}")),
            Err(_) => Exit::Status("closed its stdout but is still running; killed".to_string()),
        }
    }

    /// An exit status told apart: a SIGKILL the shim did not send (it drops the handle when it
    /// kills) while the cgroup counted an OOM kill since the start is the kernel's, for memory.
    fn ended(&self, status: ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        let oom = status.signal() == Some(Signal::SIGKILL as i32)
            && self.memory.as_ref().is_some_and(|m| {
                m.oom_kills()
                    .zip(self.oom_kills_at_start)
                    .is_some_and(|(now, before)| now > before)
            });
        match (oom, &self.memory) {
            (true, Some(memory)) => Exit::OutOfMemory {
                limit: memory.limit_bytes(),
            },
            _ => Exit::Status(describe(status)),
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.pid <= 0 {
            return;
        }
        let mut live = self.groups.lock();
        live.remove(&self.pid);
        // The child leads its own group (its own session, made by the sandbox launcher; a group
        // of its own without one), so its pid is the group id; this also reaches every process
        // it forked that stayed in the group. The child itself too, in case it had not made its
        // session yet. ESRCH (already gone) is fine. tokio reaps the direct child in the
        // background (kill_on_drop).
        let _ = killpg(Pid::from_raw(self.pid), Signal::SIGKILL);
        let _ = nix::sys::signal::kill(Pid::from_raw(self.pid), Signal::SIGKILL);
        // A descendant that left the group (setsid) is not reached by killpg. As PID 1 of the
        // container's PID namespace, the shim is the only process that is not the plugin's.
        // Never anywhere else: outside a container that would mean the host's processes.
        if std::process::id() == 1 {
            if live.is_empty() {
                // No other plugin process: signalling every process (-1, which spares PID 1)
                // kills exactly the plugin's whole tree.
                let _ = nix::sys::signal::kill(Pid::from_raw(-1), Signal::SIGKILL);
            } else {
                // Other processes of the pool live on: kill every process outside their groups.
                // A detached helper of one of them dies too; it is the same plugin's code, and
                // leaving the group it was started in is not allowed. Each process of the pool
                // has a session of its own, so none can hide in another's group. Repeated until
                // a pass finds nothing: one pass is not atomic with a fork loop.
                for _ in 0..16 {
                    if kill_outside(&live) == 0 {
                        break;
                    }
                }
            }
        }
    }
}

/// SIGKILL to every process of this PID namespace except PID 1, the processes of `spare` and
/// the members of their process groups (a process just spawned may not have made its own
/// session yet); returns how many were signalled. A zombie holds nothing but its pid, which the
/// reaper frees.
fn kill_outside(spare: &BTreeSet<i32>) -> usize {
    crate::procfs::processes()
        .into_iter()
        .filter(|p| p.pid != 1 && p.state != 'Z')
        .filter(|p| !spare.contains(&p.pid) && !spare.contains(&p.group))
        .filter(|p| nix::sys::signal::kill(Pid::from_raw(p.pid), Signal::SIGKILL).is_ok())
        .count()
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
