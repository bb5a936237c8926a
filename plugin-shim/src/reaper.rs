//! Reaping orphans. In a pod the shim is usually PID 1 of its container, so every process the
//! plugin forked and left behind becomes the shim's child when its parent dies (for instance when
//! a timeout kills the plugin's process group). Nobody else waits for those; unreaped they stay
//! zombies and use up the pod's PID limit. This task reaps them.
//!
//! The live plugin processes must not be reaped here: tokio waits for them and needs their exit
//! status. The supervisor's record of live processes is locked while reaping, and every start of
//! a plugin process is recorded under that lock, so the live processes are known exactly.

use std::sync::Arc;
use std::time::Duration;

use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::Pid;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, warn};

use crate::child::Supervisor;

/// Whether this process inherits orphans: PID 1, or a child subreaper.
pub fn inherits_orphans() -> bool {
    std::process::id() == 1 || nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}

/// Reaps orphaned zombies whenever a child exits (SIGCHLD) and every few seconds, for as long as
/// the returned task runs.
pub fn spawn(supervisor: Arc<Supervisor>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut sigchld = match signal(SignalKind::child()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot watch SIGCHLD; reaping orphans every 2 s only");
                None
            }
        };
        loop {
            match sigchld.as_mut() {
                Some(s) => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), s.recv()).await;
                }
                None => tokio::time::sleep(Duration::from_secs(2)).await,
            }
            let reaped = supervisor.with_live_pids(reap_orphans);
            if reaped > 0 {
                debug!(reaped, "reaped orphaned processes");
            }
        }
    })
}

/// Reaps every exited child except those in `keep`; returns how many.
fn reap_orphans(keep: &std::collections::BTreeSet<i32>) -> usize {
    let mut reaped = 0;
    loop {
        // Look without reaping (WNOWAIT) first, so the current plugin process is left for tokio.
        let peek = waitid(
            Id::All,
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT,
        );
        let pid = match peek {
            Ok(WaitStatus::StillAlive) | Err(_) => return reaped,
            Ok(status) => match status.pid() {
                Some(pid) => pid,
                None => return reaped,
            },
        };
        if keep.contains(&pid.as_raw()) {
            // A plugin process itself exited: tokio reaps it, but only when that process is
            // next looked at (its next call), and until then it hides every other exited child
            // from this wait. Reap the others by pid.
            return reaped + reap_zombies_except(keep);
        }
        match waitpid(Pid::from_raw(pid.as_raw()), Some(WaitPidFlag::WNOHANG)) {
            Ok(_) => reaped += 1,
            Err(_) => return reaped,
        }
    }
}

/// Reaps, by pid, every zombie child of this process that is not in `keep` (found in `/proc`);
/// returns how many.
fn reap_zombies_except(keep: &std::collections::BTreeSet<i32>) -> usize {
    let me = std::process::id() as i32;
    crate::procfs::processes()
        .into_iter()
        .filter(|p| p.state == 'Z' && p.parent == me && !keep.contains(&p.pid))
        .filter(|p| {
            matches!(
                waitpid(Pid::from_raw(p.pid), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::Exited(..) | WaitStatus::Signaled(..))
            )
        })
        .count()
}
