//! [`Supervisor`] for a multiplexed plugin (`multiplexed: true`, concurrency N > 1): ONE process
//! with up to N calls in flight ([`MuxProcess`]). Calls beyond N wait for a permit within their
//! deadline, as pool calls wait for a free process. The process is started on demand (`onLoad`
//! first, alone), replaced at once when a call misses its deadline or the process breaks the
//! protocol, replaced on the next call after a crash, with the crash backoff of a pool process.
//! A call that misses its deadline gets DEADLINE_EXCEEDED; the kill fails every other call in
//! flight on the process at once, with the reason. At shutdown the calls in flight finish, then
//! `onUnload` runs alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::{Instant, timeout, timeout_at};
use tracing::{debug, info, warn};

use super::{CrashBackoff, Reconfigured, Supervisor, backoff, timed_out};
use crate::child::mux::{Fault, MuxProcess};
use crate::child::spawn;
use crate::child::{Answer, Exit, InvokeError};
use airlock_core::Hook;
use airlock_sdk::protocol;

/// The one process of a multiplexed plugin and what belongs to it.
#[derive(Debug)]
pub(super) struct MuxSlot {
    /// Most calls in flight: the supervisor's permits.
    concurrency: u32,
    /// Locked to look at the process or to start one, never for a whole call.
    process: Arc<Mutex<Option<Arc<MuxProcess>>>>,
    /// Consecutive crashes and when the next start may happen.
    crashes: std::sync::Mutex<CrashBackoff>,
    starts: AtomicU64,
}

impl MuxSlot {
    pub(super) fn new(concurrency: usize) -> Self {
        Self {
            concurrency: u32::try_from(concurrency).unwrap_or(u32::MAX),
            process: Arc::default(),
            crashes: std::sync::Mutex::default(),
            starts: AtomicU64::new(0),
        }
    }

    /// Starts of the process after its first.
    pub(super) fn restarts(&self) -> u64 {
        self.starts.load(Ordering::Relaxed).saturating_sub(1)
    }

    fn crashes(&self) -> std::sync::MutexGuard<'_, CrashBackoff> {
        self.crashes.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One invocation, as [`Supervisor::invoke`] got it.
#[derive(Debug)]
pub(super) struct Call<'a> {
    pub(super) hook: &'a str,
    pub(super) payload_json: &'a str,
    pub(super) invocation_id: &'a str,
    pub(super) deadline: Duration,
    pub(super) traceparent: Option<&'a str>,
}

/// Runs lifecycle `hook` with `payload_json` on `process` within `limit`, as request `id`. The
/// caller makes sure nothing else is in flight.
async fn alone(
    process: &MuxProcess,
    id: &str,
    hook: Hook,
    payload_json: &str,
    limit: Duration,
) -> Result<(), InvokeError> {
    let line = |id: &str| {
        protocol::encode_request(id, hook.as_str(), payload_json, limit.as_millis() as u64)
    };
    // Writing counts against the limit too: a plugin that does not read blocks the write.
    let exchange = async { process.send(id, line).await?.await.map_err(|_| dropped()) };
    match timeout(limit, exchange).await {
        Err(_) => Err(InvokeError::Timeout(limit)),
        Ok(Ok(Ok(Ok(_)))) => Ok(()),
        Ok(Ok(Ok(Err(message)))) => Err(InvokeError::Plugin(message)),
        Ok(Ok(Err(e)) | Err(e)) => Err(e),
    }
}

/// The outcome of a request was dropped unsent: only when its process handle is gone.
fn dropped() -> InvokeError {
    InvokeError::Exited {
        status: "the plugin process was stopped".to_string(),
    }
}

impl Supervisor {
    fn mux_slot(&self) -> Result<&MuxSlot, InvokeError> {
        self.mux.as_ref().ok_or_else(|| InvokeError::Exited {
            status: "the plugin is not multiplexed".to_string(),
        })
    }

    fn set_mux_ready(&self, ready: bool) {
        self.ready
            .send_if_modified(|now| std::mem::replace(now, ready) != ready);
    }

    pub(super) async fn warm_up_multiplexed(&self, mux: &MuxSlot) -> Result<(), InvokeError> {
        let mut slot = mux.process.lock().await;
        self.ensure_multiplexed(mux, &mut slot, self.spec.on_load)
            .await?;
        if !self.spec.on_load {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if let Some(process) = slot.as_ref()
                && let Some(fault) = process.fault()
            {
                self.set_mux_ready(false);
                return Err(fault);
            }
            self.set_mux_ready(true);
        }
        Ok(())
    }

    /// [`Supervisor::invoke`] for a multiplexed plugin.
    pub(super) async fn invoke_multiplexed(
        self: &Arc<Self>,
        call: Call<'_>,
    ) -> Result<Answer, InvokeError> {
        let mux = self.mux_slot()?;
        let deadline = call.deadline;
        let until = Instant::now() + deadline;
        let _permit = timeout_at(until, self.permits.acquire())
            .await
            .map_err(|_| InvokeError::QueueTimeout(deadline))?
            .map_err(|_| InvokeError::Exited {
                status: "the shim is shutting down".into(),
            })?;
        let process = self.multiplexed_process(until, deadline).await?;
        let started = Instant::now();
        let line = |id: &str| {
            let left = until.saturating_duration_since(Instant::now());
            protocol::encode_traced_request(
                id,
                call.hook,
                call.payload_json,
                left.as_millis() as u64,
                call.traceparent,
            )
        };
        // Writing the request is under the deadline too: a plugin that does not read blocks it.
        let exchange = async {
            let outcome = process.send(call.invocation_id, line).await?;
            outcome.await.map_err(|_| dropped())
        };
        let result = match timeout_at(until, exchange).await {
            Err(_) => {
                // A late plugin is killed; the calls in flight with this one go with it.
                process.kill(Fault::Exited(Exit::Status(format!(
                    "killed by the shim because request {:?} missed its deadline of {} ms",
                    call.invocation_id,
                    deadline.as_millis()
                ))));
                Err(timed_out(
                    deadline,
                    until.saturating_duration_since(started),
                ))
            }
            Ok(Ok(Ok(Ok(output)))) => Ok(Answer {
                output,
                duration: started.elapsed(),
            }),
            Ok(Ok(Ok(Err(message)))) => Err(InvokeError::Plugin(message)),
            Ok(Ok(Err(e)) | Err(e)) => Err(e),
        };
        // Any answer, even an error one, shows the process works.
        if matches!(result, Ok(_) | Err(InvokeError::Plugin(_))) {
            *mux.crashes() = CrashBackoff::default();
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
                // Start the replacement now, so the next call does not pay for the start.
                self.restart_multiplexed();
            }
            tracing::Span::current().record("restarts", self.restarts());
        }
        result
    }

    /// The running, loaded process, started if needed. A start runs in a task of its own (see
    /// `running_by`): if it outlasts this call's deadline, it completes for the calls after it.
    async fn multiplexed_process(
        self: &Arc<Self>,
        until: Instant,
        deadline: Duration,
    ) -> Result<Arc<MuxProcess>, InvokeError> {
        let mux = self.mux_slot()?;
        let mut slot = timeout_at(until, Arc::clone(&mux.process).lock_owned())
            .await
            .map_err(|_| InvokeError::QueueTimeout(deadline))?;
        if let Some(process) = slot.as_ref()
            && process.ended().is_none()
        {
            return Ok(Arc::clone(process));
        }
        let this = Arc::clone(self);
        let start = tokio::spawn(async move {
            let mux = this.mux_slot()?;
            this.ensure_multiplexed(mux, &mut slot, true).await
        });
        match timeout_at(until, start).await {
            Err(_) => Err(InvokeError::QueueTimeout(deadline)),
            Ok(Err(join)) => Err(InvokeError::Exited {
                status: format!("the start task failed: {join}"),
            }),
            Ok(Ok(started)) => started,
        }
    }

    /// Replaces the process in the background (after it was killed).
    fn restart_multiplexed(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let Ok(mux) = this.mux_slot() else { return };
            let mut slot = mux.process.lock().await;
            if let Err(e) = this.ensure_multiplexed(mux, &mut slot, true).await {
                warn!(error = %e, "restarting the plugin process failed; retrying on the next call");
            }
        });
    }

    /// Makes sure `slot` holds a running, loaded process, starting one if there is none or the
    /// last one ended (a crash counts for the backoff). A new process is reported ready if
    /// `mark_ready`; a failed start always reports the plugin not ready.
    async fn ensure_multiplexed(
        &self,
        mux: &MuxSlot,
        slot: &mut Option<Arc<MuxProcess>>,
        mark_ready: bool,
    ) -> Result<Arc<MuxProcess>, InvokeError> {
        if let Some(process) = slot.as_ref()
            && let Some(crashed) = process.ended()
        {
            if crashed {
                warn!(
                    pid = process.pid,
                    "the plugin process exited; restarting it"
                );
                self.mux_crashed(mux);
            }
            *slot = None;
        }
        if let Some(process) = slot.as_ref() {
            return Ok(Arc::clone(process));
        }
        let state = *mux.crashes();
        if let Some(at) = state.not_before
            && Instant::now() < at
        {
            return Err(InvokeError::Backoff {
                crashes: state.crashes,
                retry_in: at - Instant::now(),
            });
        }
        match self.start_multiplexed(mux).await {
            Ok(process) => {
                let process = Arc::new(process);
                *slot = Some(Arc::clone(&process));
                if mark_ready {
                    self.set_mux_ready(true);
                }
                Ok(process)
            }
            Err(e) => {
                self.mux_crashed(mux);
                self.set_mux_ready(false);
                Err(e)
            }
        }
    }

    fn mux_crashed(&self, mux: &MuxSlot) {
        let mut state = mux.crashes();
        state.crashes = state.crashes.saturating_add(1);
        state.not_before = Some(Instant::now() + backoff(state.crashes));
    }

    /// Spawns the process and, if it has one, runs its `onLoad` hook (alone) within the lifecycle
    /// timeout; a failed `onLoad` drops (kills) the new process.
    async fn start_multiplexed(&self, mux: &MuxSlot) -> Result<MuxProcess, InvokeError> {
        let (mut gate, pending) = self.upgrade_gate().await?;
        let running = spawn::spawn(&self.spec, &self.log_budget, &self.log_stats, &self.groups)?;
        let n = self.starts.fetch_add(1, Ordering::Relaxed);
        let restarts = mux.starts.fetch_add(1, Ordering::Relaxed);
        info!(
            pid = running.pid,
            restarts,
            in_flight = mux.concurrency,
            "started the multiplexed plugin process"
        );
        let process = MuxProcess::start(running, self.spec.host.clone());
        if self.spec.on_load {
            let id = format!("onload-{}", n + 1);
            let payload = self.lifecycle_payload();
            alone(
                &process,
                &id,
                Hook::OnLoad,
                &payload,
                self.spec.lifecycle_timeout,
            )
            .await
            .map_err(|e| InvokeError::LoadFailed(Box::new(e)))?;
        }
        if let (Some(payload), Some(state)) = (pending, gate.as_mut()) {
            let id = format!("onupgrade-{}", n + 1);
            alone(
                &process,
                &id,
                Hook::OnUpgrade,
                &payload,
                self.spec.lifecycle_timeout,
            )
            .await
            .map_err(|e| InvokeError::UpgradeFailed(Box::new(e)))?;
            info!(upgrade = %payload, "the plugin's onUpgrade hook completed");
            **state = super::Upgrade::Settled;
        }
        Ok(process)
    }

    /// [`Supervisor::reconfigure`] for a multiplexed plugin: waits until no call is in flight
    /// (each ends by its deadline) and holds new ones back while the process takes the new
    /// configuration in `onConfigChange` alone, or is restarted to load it.
    pub(super) async fn reconfigure_multiplexed(
        &self,
        mux: &MuxSlot,
        n: u64,
        payload: &str,
    ) -> Reconfigured {
        let mut outcome = Reconfigured::default();
        // Closed: the shim is stopping; there is no process to give it to.
        let Ok(_all) = self.permits.acquire_many(mux.concurrency).await else {
            return outcome;
        };
        let mut slot = mux.process.lock().await;
        let Some(process) = slot.clone().filter(|p| p.ended().is_none()) else {
            // Not running: its next start gets the new configuration.
            return outcome;
        };
        if self.spec.on_config_change {
            let id = format!("config-{n}");
            let limit = self.spec.lifecycle_timeout;
            match alone(&process, &id, Hook::OnConfigChange, payload, limit).await {
                Ok(()) => {
                    outcome.changed = 1;
                    return outcome;
                }
                Err(e) => warn!(
                    error = %e,
                    "the plugin's onConfigChange hook failed; restarting the process with the new configuration"
                ),
            }
        }
        process.kill(Fault::Exited(Exit::Status(
            "stopped by the shim to load its new configuration".to_string(),
        )));
        *slot = None;
        outcome.restarted = 1;
        if let Err(e) = self.ensure_multiplexed(mux, &mut slot, true).await {
            outcome.failed = 1;
            warn!(error = %e, "restarting the plugin process with its new configuration failed; retrying on the next call");
        }
        outcome
    }

    /// [`Supervisor::shutdown`] for a multiplexed plugin: the calls in flight finish (each by its
    /// deadline), then `onUnload` runs alone, then stdin is closed and the process given a moment
    /// to exit before its group is killed.
    pub(super) async fn shutdown_multiplexed(&self, mux: &MuxSlot) {
        let all = self.permits.acquire_many(mux.concurrency).await;
        // No invocation starts from here on.
        self.permits.close();
        let process = mux.process.lock().await.take();
        self.set_mux_ready(false);
        let Some(process) = process else {
            return;
        };
        if self.spec.on_unload && process.ended().is_none() {
            match alone(
                &process,
                "onunload",
                Hook::OnUnload,
                "{}",
                self.spec.lifecycle_timeout,
            )
            .await
            {
                Ok(()) => info!("the plugin's onUnload hook completed"),
                Err(e) => warn!(error = %e, "the plugin's onUnload hook failed"),
            }
        }
        if !process.close(Duration::from_millis(500)).await {
            debug!("the plugin did not exit after its stdin closed; killing it");
        }
        process.kill(Fault::Exited(Exit::Status(
            "stopped by the shim".to_string(),
        )));
        drop(all);
    }
}
