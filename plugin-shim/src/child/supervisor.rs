//! [`Supervisor`]: runs invocations on a pool of plugin processes (`--concurrency`, one by
//! default), one invocation at a time on each, and keeps each process there: started on demand
//! (with `onLoad`, when the plugin has one), replaced after a crash, a missed deadline or a
//! protocol breach, with a growing backoff while it keeps crashing — all per process, so one
//! misbehaving call costs the others nothing. Publishes whether the plugin is ready (at least one
//! process is), and stops every process (`onUnload`) at shutdown.
//!
//! Starting a process is [`super::spawn`]; one request on its stdio is [`super::exchange`]. A
//! multiplexed plugin (one process, several requests in flight) is run by `multiplexed`.

mod multiplexed;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{Mutex, MutexGuard, OwnedMutexGuard, Semaphore, watch};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::exchange::ExchangeError;
use super::spawn::{self, Groups, Running};
use super::{Answer, ChildSpec, InvokeError, LoadPayload};
use crate::logs::LogStats;
use airlock_core::Hook;
use airlock_core::rate::LineBudget;
use airlock_sdk::protocol;

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

/// Time a call may lose before the plugin gets it (taking the slot, encoding the request) and
/// still count a timeout as the plugin's own.
const QUEUE_TOLERANCE: Duration = Duration::from_millis(2);

/// The error of a call whose plugin did not answer by the end of `deadline`, having `had` of it:
/// the plugin's own timeout only if it had (nearly) all of it.
fn timed_out(deadline: Duration, had: Duration) -> InvokeError {
    if had + QUEUE_TOLERANCE >= deadline {
        InvokeError::Timeout(deadline)
    } else {
        InvokeError::ShortenedTimeout { deadline, had }
    }
}

#[cfg(test)]
mod timeout_tests {
    use super::*;

    #[test]
    fn a_timeout_is_the_plugins_own_only_when_it_had_the_whole_deadline() {
        let deadline = Duration::from_millis(2000);
        assert!(matches!(
            timed_out(deadline, Duration::from_millis(1999)),
            InvokeError::Timeout(_)
        ));
        // It waited 1.5 s for a restart a caller provoked: not counted against the plugin.
        let e = timed_out(deadline, Duration::from_millis(500));
        assert!(matches!(e, InvokeError::ShortenedTimeout { .. }), "{e:?}");
        assert_eq!(
            crate::server::failure_kind(&e),
            airlock_core::failure::FailureKind::QueueTimeout
        );
        assert_eq!(
            crate::server::status_of(&e).code(),
            tonic::Code::DeadlineExceeded
        );
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

/// The lock on one plugin process slot, held for a whole invocation.
type Slot = OwnedMutexGuard<Option<Running>>;

/// One process of the pool and what belongs to it alone: a crash or a timeout of this process
/// backs off and restarts this one only.
#[derive(Debug, Default)]
struct Member {
    /// Consecutive crashes and when the next start may happen (guarded by the slot lock's
    /// holder; a std mutex because it is never held across an await).
    crashes: std::sync::Mutex<CrashBackoff>,
    slot: Arc<Mutex<Option<Running>>>,
    /// Started (and loaded) and not known to have failed since.
    ready: AtomicBool,
    starts: AtomicU64,
}

/// Runs invocations on a pool of plugin processes, starting and replacing each as needed.
#[derive(Debug)]
pub struct Supervisor {
    spec: ChildSpec,
    /// Shared by every process of this plugin: neither a restart nor a second process refills it.
    log_budget: Arc<std::sync::Mutex<LineBudget>>,
    log_stats: Arc<LogStats>,
    members: Vec<Member>,
    /// Members no invocation holds, the most recently released last (so a light load keeps
    /// using the same, warm processes).
    idle: std::sync::Mutex<Vec<usize>>,
    /// One permit per entry of `idle`: an invocation waits here, in arrival order, for a free
    /// process.
    permits: Semaphore,
    /// Process groups of the live plugin processes (what a kill must spare).
    groups: Arc<Groups>,
    /// Starts of any process so far; names `onLoad` requests.
    starts: AtomicU64,
    /// What a new process gets in `onLoad` (starts as `spec.load_payload`).
    config: std::sync::Mutex<LoadPayload>,
    /// Configuration changes so far; names `onConfigChange` requests.
    reconfigs: AtomicU64,
    ready: watch::Sender<bool>,
    /// For a multiplexed plugin with a concurrency above 1: its one process, which takes every
    /// call (`members` is then empty; `permits` still bounds the calls in flight).
    mux: Option<multiplexed::MuxSlot>,
    /// Where this shim stands with `onUpgrade`. Held from before the first process's `onLoad`
    /// until its `onUpgrade` succeeded, so no process of this pod writes (and so stamps this
    /// version over the older one) or serves before the storage is migrated.
    upgrade: Mutex<Upgrade>,
}

/// Where a shim stands with `onUpgrade`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Upgrade {
    /// Not decided yet: the host is asked before the first process loads.
    Unasked,
    /// Owed, with this payload: the next process start runs it before it serves.
    Owed(String),
    /// Ran, or nothing to migrate.
    Settled,
}

/// What [`Supervisor::reconfigure`] did, for the log.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reconfigured {
    /// Processes that took the new configuration in `onConfigChange`.
    pub changed: usize,
    /// Processes restarted to load it (no `onConfigChange`, or it failed).
    pub restarted: usize,
    /// Of those, processes that did not start again (retried on the next call).
    pub failed: usize,
}

/// An idle member taken by one invocation; given back when dropped (also when the invocation's
/// future is dropped early).
struct Lease<'a> {
    supervisor: &'a Supervisor,
    index: usize,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.supervisor
            .idle
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.index);
        self.supervisor.permits.add_permits(1);
    }
}

impl Supervisor {
    /// A supervisor of `processes` plugin processes (at least one) that has not started any yet;
    /// see [`Supervisor::warm_up`]. For a multiplexed plugin (`spec.multiplexed`), `processes`
    /// above 1 means one process with that many calls in flight instead.
    pub fn new(spec: ChildSpec, processes: usize) -> Arc<Self> {
        let concurrency = processes.max(1);
        let mux =
            (spec.multiplexed && concurrency > 1).then(|| multiplexed::MuxSlot::new(concurrency));
        let processes = if mux.is_some() { 0 } else { concurrency };
        let config = std::sync::Mutex::new(spec.load_payload.clone());
        Arc::new(Self {
            log_budget: Arc::new(std::sync::Mutex::new(LineBudget::new(
                spec.log_lines_per_minute,
                Instant::now().into_std(),
            ))),
            log_stats: Arc::default(),
            spec,
            members: (0..processes).map(|_| Member::default()).collect(),
            // Reversed: the first process is the first one taken.
            idle: std::sync::Mutex::new((0..processes).rev().collect()),
            permits: Semaphore::new(concurrency),
            groups: Arc::default(),
            starts: AtomicU64::new(0),
            config,
            reconfigs: AtomicU64::new(0),
            ready: watch::Sender::new(false),
            mux,
            upgrade: Mutex::new(Upgrade::Unasked),
        })
    }

    /// How many plugin processes run invocations side by side.
    pub fn processes(&self) -> usize {
        if self.mux.is_some() {
            1
        } else {
            self.members.len()
        }
    }

    /// Whether the plugin is ready: at least one of its processes started and answered
    /// (`onLoad`, when it has one). Changes when processes are restarted.
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

    /// How many times a plugin process was started again after its first start (over all
    /// processes of the pool).
    pub fn restarts(&self) -> u64 {
        let mux = self.mux.as_ref().map_or(0, multiplexed::MuxSlot::restarts);
        self.members
            .iter()
            .map(|m| m.starts.load(Ordering::Relaxed).saturating_sub(1))
            .sum::<u64>()
            + mux
    }

    fn set_ready(&self, index: usize, ready: bool) {
        self.members[index].ready.store(ready, Ordering::Relaxed);
        let any = self.members.iter().any(|m| m.ready.load(Ordering::Relaxed));
        self.ready
            .send_if_modified(|now| std::mem::replace(now, any) != any);
    }

    /// Starts every process that is not running, side by side. Without an `onLoad` hook there
    /// is nothing to ask a process, so it counts as started once it is still running after a
    /// short grace period. Fails with the first failure; the processes that did start stay.
    pub async fn warm_up(&self) -> Result<(), InvokeError> {
        if let Some(mux) = &self.mux {
            return self.warm_up_multiplexed(mux).await;
        }
        let started =
            futures::future::join_all((0..self.members.len()).map(|i| self.warm_up_one(i))).await;
        started.into_iter().collect()
    }

    async fn warm_up_one(&self, index: usize) -> Result<(), InvokeError> {
        let mut slot = self.members[index].slot.lock().await;
        self.ensure_running(index, &mut slot, self.spec.on_load)
            .await?;
        if !self.spec.on_load {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(running) = slot.as_mut()
                && let Some(status) = running.exited()
            {
                *slot = None;
                self.set_ready(index, false);
                return Err(status.error());
            }
            self.set_ready(index, true);
        }
        Ok(())
    }

    /// Takes an idle member, preferring one whose process is running and not being restarted.
    /// The caller holds a permit, so there is one.
    fn lease(&self) -> Lease<'_> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let usable = |&i: &usize| {
            let member = &self.members[i];
            member.ready.load(Ordering::Relaxed) && member.slot.try_lock().is_ok()
        };
        let at = idle
            .iter()
            .rposition(usable)
            .unwrap_or(idle.len().saturating_sub(1));
        let index = idle.remove(at);
        Lease {
            supervisor: self,
            index,
        }
    }

    /// Runs `hook` on `payload_json` (valid JSON) within `deadline` from now, on the first free
    /// process, queueing and a plugin (re)start included.
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
        if self.mux.is_some() {
            let call = multiplexed::Call {
                hook,
                payload_json,
                invocation_id,
                deadline,
                traceparent,
            };
            return self.invoke_multiplexed(call).await;
        }
        let until = Instant::now() + deadline;
        let permit = timeout_at(until, self.permits.acquire())
            .await
            .map_err(|_| InvokeError::QueueTimeout(deadline))?
            .map_err(|_| InvokeError::Exited {
                status: "the shim is shutting down".into(),
            })?;
        // The lease, not the permit, gives the process back (with its permit).
        permit.forget();
        let lease = self.lease();
        let index = lease.index;
        let member = &self.members[index];
        let slot = timeout_at(until, Arc::clone(&member.slot).lock_owned())
            .await
            .map_err(|_| InvokeError::QueueTimeout(deadline))?;
        let mut slot = self.running_by(index, slot, until, deadline).await?;
        let result = self
            .exchange_on(
                index,
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
            *member.crashes.lock().unwrap_or_else(|e| e.into_inner()) = CrashBackoff::default();
        }
        if let Err(e) = &result {
            let killed = matches!(
                e,
                InvokeError::Timeout(_)
                    | InvokeError::ShortenedTimeout { .. }
                    | InvokeError::OutputTooLarge
                    | InvokeError::Protocol(_)
            );
            if killed {
                // Dropping the handle kills the process group. Start the replacement now, in the
                // background, so the next call does not pay for the start; it takes the lock, so
                // calls queue behind it rather than seeing a half-started plugin.
                *slot = None;
                drop(slot);
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let mut slot = this.members[index].slot.lock().await;
                    if let Err(e) = this.ensure_running(index, &mut slot, true).await {
                        warn!(error = %e, process = index, "restarting the plugin process failed; retrying on the next call");
                    }
                });
            }
            tracing::Span::current().record("restarts", self.restarts());
        }
        drop(lease);
        result
    }

    /// Returns the lock with a running, loaded process in it, starting one if needed. A start
    /// runs in a task of its own with the lifecycle timeout: if it outlasts this call's deadline,
    /// the call fails with DEADLINE_EXCEEDED but the start completes for the calls after it
    /// (otherwise a plugin with a slow onLoad could never be restarted by short calls).
    async fn running_by(
        self: &Arc<Self>,
        index: usize,
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
            let started = this
                .ensure_running(index, &mut slot, true)
                .await
                .map(|_| ());
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

    /// Sends the request `line` (for `invocation_id`) to process `index` and waits for its answer
    /// until `until`.
    async fn exchange_on(
        &self,
        index: usize,
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
            Err(_) => {
                return Err(timed_out(
                    deadline,
                    until.saturating_duration_since(started),
                ));
            }
        };
        let duration = started.elapsed();
        match exchanged {
            Ok(Ok(output)) => Ok(Answer { output, duration }),
            Ok(Err(message)) => Err(InvokeError::Plugin(message)),
            Err(ExchangeError::Closed) => {
                let status = running.exit_status().await;
                *slot = None;
                self.crashed(index);
                Err(status.error())
            }
            Err(ExchangeError::Fatal(e)) => Err(e),
        }
    }

    /// Makes sure process `index` is running and loaded, starting one if there is none or the
    /// last one exited. A new process is reported ready if `mark_ready`; a failed start always
    /// reports it not ready.
    async fn ensure_running<'a>(
        &self,
        index: usize,
        slot: &'a mut Option<Running>,
        mark_ready: bool,
    ) -> Result<&'a mut Running, InvokeError> {
        if let Some(running) = slot.as_mut()
            && let Some(status) = running.exited()
        {
            warn!(%status, process = index, "the plugin process exited; restarting it");
            *slot = None;
            self.crashed(index);
        }
        if slot.is_none() {
            let state = *self.members[index]
                .crashes
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(at) = state.not_before
                && Instant::now() < at
            {
                return Err(InvokeError::Backoff {
                    crashes: state.crashes,
                    retry_in: at - Instant::now(),
                });
            }
            let started = self.start(index).await;
            if started.is_err() {
                self.crashed(index);
            }
            match started {
                Ok(running) => {
                    *slot = Some(running);
                    if mark_ready {
                        self.set_ready(index, true);
                    }
                }
                Err(e) => {
                    self.set_ready(index, false);
                    return Err(e);
                }
            }
        }
        slot.as_mut().ok_or_else(|| InvokeError::Exited {
            status: "not running".to_string(),
        })
    }

    /// Counts a crash of process `index` (an exit the shim did not cause, or a failed start)
    /// and sets when its next start may happen.
    fn crashed(&self, index: usize) {
        let mut state = self.members[index]
            .crashes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        state.crashes = state.crashes.saturating_add(1);
        state.not_before = Some(Instant::now() + backoff(state.crashes));
    }

    /// Spawns plugin process `index` and, if it has one, runs its `onLoad` hook within the
    /// lifecycle timeout.
    async fn start(&self, index: usize) -> Result<Running, InvokeError> {
        // Decided before a process is spawned: a host that cannot answer costs no process.
        let (mut gate, pending) = self.upgrade_gate().await?;
        let mut running =
            spawn::spawn(&self.spec, &self.log_budget, &self.log_stats, &self.groups)?;
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        let restarts = self.members[index].starts.fetch_add(1, Ordering::Relaxed);
        info!(
            pid = running.pid,
            process = index,
            restarts,
            "started the plugin process"
        );
        if self.spec.on_load {
            let id = format!("onload-{}", n + 1);
            let payload = self.lifecycle_payload();
            // A failed onLoad drops (kills) the new process.
            self.lifecycle(&mut running, &id, Hook::OnLoad, &payload)
                .await
                .map_err(|e| InvokeError::LoadFailed(Box::new(e)))?;
        }
        if let (Some(payload), Some(state)) = (pending, gate.as_mut()) {
            let id = format!("onupgrade-{}", n + 1);
            self.lifecycle(&mut running, &id, Hook::OnUpgrade, &payload)
                .await
                .map_err(|e| InvokeError::UpgradeFailed(Box::new(e)))?;
            info!(upgrade = %payload, "the plugin's onUpgrade hook completed");
            **state = Upgrade::Settled;
        }
        Ok(running)
    }

    /// The `onUpgrade` this shim still owes, decided once (before the first `onLoad`, whose
    /// writes would be stamped with this version and hide an older one): the payload
    /// `{"from": ..., "to": ...}` when the plugin declares the hook and its storage was last
    /// written by an older version (the router's `storage.writtenBy`). Returns the lock, held
    /// only while one is owed, so that the caller runs it before any other process of this pod
    /// loads; a failed `onUpgrade` leaves it owed, for the next start.
    pub(super) async fn upgrade_gate(
        &self,
    ) -> Result<(Option<MutexGuard<'_, Upgrade>>, Option<String>), InvokeError> {
        let mut state = self.upgrade.lock().await;
        if matches!(*state, Upgrade::Unasked) {
            *state = self.ask_upgrade().await?;
        }
        Ok(match &*state {
            Upgrade::Owed(payload) => {
                let payload = payload.clone();
                (Some(state), Some(payload))
            }
            Upgrade::Unasked | Upgrade::Settled => (None, None),
        })
    }

    /// Asks the host which version last wrote the storage and decides whether `onUpgrade` is
    /// owed. Nothing to migrate: no `onUpgrade` declared (or no storage permission declared),
    /// never written, written by this version or a newer one (a rollback the Plugin allowed).
    async fn ask_upgrade(&self) -> Result<Upgrade, InvokeError> {
        let (Some(to), Some(host)) = (&self.spec.on_upgrade, self.spec.host.as_deref()) else {
            return Ok(Upgrade::Settled);
        };
        let line = protocol::HostCallLine {
            call: protocol::calls::STORAGE_WRITTEN_BY.into(),
            call_id: "onupgrade".into(),
            args: "{}".into(),
            request: None,
        };
        // Serving unmigrated data is worse than not serving yet: an answer that is not a
        // version fails the start, which is retried (the pod stays unready; a rollout that
        // cannot finish is rolled back). A refusal too: the manifest declares a storage
        // permission (else on_upgrade is None), so the router lags (a re-enable) or the
        // Plugin's permissions were narrowed; both are the operator's to resolve.
        let failed = |why: String| {
            InvokeError::UpgradeFailed(Box::new(InvokeError::Plugin(format!(
                "asking the host which version last wrote the storage failed: {why}"
            ))))
        };
        let limit = self.spec.lifecycle_timeout;
        let answer = match timeout(limit, host.call("onupgrade", line)).await {
            Err(_) => return Err(failed(format!("no answer within {} ms", limit.as_millis()))),
            Ok(Err(e)) => return Err(failed(format!("{}: {}", e.code, e.message))),
            Ok(Ok(answer)) => answer,
        };
        let from = serde_json::from_str::<serde_json::Value>(&answer)
            .ok()
            .and_then(|v| v["writtenBy"].as_str().map(str::to_string));
        let Some(from) = from else {
            return Ok(Upgrade::Settled);
        };
        match semver::Version::parse(&from) {
            // Precedence: build metadata (`+b1`) is not a newer version.
            Ok(older) if older.cmp_precedence(to).is_lt() => Ok(Upgrade::Owed(
                serde_json::json!({"from": from, "to": to.to_string()}).to_string(),
            )),
            Ok(_) => Ok(Upgrade::Settled),
            Err(e) => {
                warn!(written_by = %from, error = %e, "the storage's writtenBy is not a version; onUpgrade is not sent");
                Ok(Upgrade::Settled)
            }
        }
    }

    /// Runs lifecycle `hook` with `payload_json` on `running` (which nothing else uses) within
    /// the lifecycle timeout, as request `id`.
    async fn lifecycle(
        &self,
        running: &mut Running,
        id: &str,
        hook: Hook,
        payload_json: &str,
    ) -> Result<(), InvokeError> {
        let limit = self.spec.lifecycle_timeout;
        let line =
            protocol::encode_request(id, hook.as_str(), payload_json, limit.as_millis() as u64);
        let host = self.spec.host.as_deref();
        match timeout(limit, running.exchange(&line, id, host)).await {
            Err(_) => Err(InvokeError::Timeout(limit)),
            Ok(Ok(Ok(_))) => Ok(()),
            Ok(Ok(Err(message))) => Err(InvokeError::Plugin(message)),
            Ok(Err(ExchangeError::Closed)) => Err(running.exit_status().await.error()),
            Ok(Err(ExchangeError::Fatal(e))) => Err(e),
        }
    }

    /// The payload of `onLoad` and `onConfigChange`: the current configuration.
    fn lifecycle_payload(&self) -> String {
        let payload = self
            .config
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        payload.as_str().to_string()
    }

    /// Hands a new configuration (already checked) to the plugin.
    /// Every process started from now on gets it in `onLoad`. Each running process gets it in
    /// `onConfigChange`, one process at a time between its calls, when the plugin declares that
    /// hook; it is restarted (so `onLoad` gives it the new one) when the plugin does not, or when
    /// the hook fails or times out — never left running with the old configuration.
    pub async fn reconfigure(self: &Arc<Self>, config: LoadPayload) -> Reconfigured {
        *self.config.lock().unwrap_or_else(|e| e.into_inner()) = config;
        let payload = self.lifecycle_payload();
        let n = self.reconfigs.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(mux) = &self.mux {
            return self.reconfigure_multiplexed(mux, n, &payload).await;
        }
        let mut outcome = Reconfigured::default();
        for index in 0..self.members.len() {
            let mut slot = self.members[index].slot.lock().await;
            let Some(running) = slot.as_mut() else {
                // Not running: its next start gets the new configuration.
                continue;
            };
            if running.exited().is_some() {
                // Exited: the next call restarts it (counting the crash), with the new one.
                continue;
            }
            if self.spec.on_config_change {
                let id = format!("config-{n}-{index}");
                match self
                    .lifecycle(running, &id, Hook::OnConfigChange, &payload)
                    .await
                {
                    Ok(()) => {
                        outcome.changed += 1;
                        continue;
                    }
                    Err(e) => warn!(
                        error = %e,
                        process = index,
                        "the plugin's onConfigChange hook failed; restarting the process with the new configuration"
                    ),
                }
            }
            // Dropping the handle kills the process group; the new process loads the new one.
            *slot = None;
            outcome.restarted += 1;
            if let Err(e) = self.ensure_running(index, &mut slot, true).await {
                outcome.failed += 1;
                warn!(error = %e, process = index, "restarting the plugin process with its new configuration failed; retrying on the next call");
            }
        }
        outcome
    }

    /// Runs `f` with the pids of the live plugin processes while no process can be started or
    /// let go of.
    pub(crate) fn with_live_pids<T>(
        &self,
        f: impl FnOnce(&std::collections::BTreeSet<i32>) -> T,
    ) -> T {
        self.groups.with_live(f)
    }

    /// Stops every process: `onUnload` (if declared, within the lifecycle timeout), then closes
    /// its stdin and gives it a moment to exit before killing its process group.
    pub async fn shutdown(&self) {
        if let Some(mux) = &self.mux {
            return self.shutdown_multiplexed(mux).await;
        }
        // No invocation starts from here on.
        self.permits.close();
        futures::future::join_all((0..self.members.len()).map(|i| self.stop_one(i))).await;
    }

    async fn stop_one(&self, index: usize) {
        let mut slot = self.members[index].slot.lock().await;
        self.set_ready(index, false);
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
                // Info: the one line that shows on the cluster that the plugin was told.
                Ok(Ok(Ok(_))) => info!(process = index, "the plugin's onUnload hook completed"),
                Ok(Ok(Err(message))) => {
                    warn!(%message, process = index, "the plugin's onUnload hook failed")
                }
                Ok(Err(e)) => {
                    warn!(error = %e.describe(), process = index, "the plugin's onUnload hook failed")
                }
                Err(_) => warn!(process = index, "the plugin's onUnload hook timed out"),
            }
        }
        running.stdin = None;
        if timeout(Duration::from_millis(500), running.child.wait())
            .await
            .is_err()
        {
            debug!(
                process = index,
                "the plugin did not exit after its stdin closed; killing it"
            );
        }
        // Dropping `running` kills whatever is left of the group.
    }
}
