//! Status step of the reconcile pipeline (pure): from the plan and what the cluster reports about
//! the applied Deployment, the next `Plugin.status` — kstatus-compatible conditions with
//! `observedGeneration`, CamelCase reasons and messages that say what to do — and the list of
//! transitions that deserve an Event and an audit record.
//!
//! A condition keeps its `lastTransitionTime` while its status does not change, so re-running a
//! reconcile on an unchanged world produces an identical status and the controller writes nothing.

use airlock_crds::Plugin;
use airlock_crds::plugin::{PluginPhase, PluginStatus, RevisionRecord};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use crate::ownership::{self, NotOwned, OBJECT_NOT_OWNED};
use crate::plan::{Plan, Verdict};
use crate::running::Stop;

pub const VERIFIED: &str = "Verified";
pub const PERMISSIONS_APPROVED: &str = "PermissionsApproved";
pub const COMPATIBLE: &str = "Compatible";
pub const READY: &str = "Ready";
/// kstatus' abnormal-true conditions (what Flux health checks, `kubectl wait`, kpt and Config Sync
/// read): present only while true, derived from the phase and `Ready` by [`kstatus`].
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
/// Present (True) only while the plugin targets a plugin API version that is going away: it
/// runs, and the message names the Airlock release that removes the version (a Warning Event
/// tells it once).
pub const DEPRECATED: &str = "Deprecated";

/// What the cluster says about the plugin's Deployment after the apply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollout {
    pub revision: String,
    pub desired_replicas: i32,
    pub ready_replicas: i32,
    pub updated_replicas: i32,
    /// Pods of every revision (old ones linger during a rollout).
    pub total_replicas: i32,
    pub available_replicas: i32,
    /// The Deployment controller has seen the current spec.
    pub observed: bool,
    /// `Progressing=False, reason ProgressDeadlineExceeded`.
    pub deadline_exceeded: bool,
    /// Set when `revision` is the last good one, re-applied because this newer revision failed.
    pub rolled_back_from: Option<String>,
    /// [`crate::running::template_digest`] of the Deployment's pod template.
    pub template_digest: Option<String>,
    /// Why a revision that missed its deadline was not rolled back (when it was not).
    pub no_rollback: Option<String>,
    /// When the reconcile must look again although nothing may change meanwhile (a stopped
    /// plugin's NetworkPolicy and Service, removed once no pod can be left).
    pub recheck_after: Option<std::time::Duration>,
    /// The Deployment's `progressDeadlineSeconds`: also how long pods of a revision that already
    /// served may stay unready before it is a problem ([`PODS_NOT_READY`]).
    pub progress_deadline: Option<std::time::Duration>,
}

impl Rollout {
    /// A revision of a Plugin that does not run and never ran: it has no Deployment.
    pub fn nothing_runs(revision: &str) -> Self {
        Self {
            revision: revision.to_string(),
            observed: true,
            ..Default::default()
        }
    }

    /// The Deployment has seen its spec and reports no pod at all.
    pub fn at_zero(&self) -> bool {
        self.observed && self.desired_replicas == 0 && self.total_replicas == 0
    }
}

/// Why a reconcile could not get as far as a plan (fetching the bundle or image failed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchFailure {
    pub condition: &'static str,
    pub reason: &'static str,
    pub message: String,
    /// What the failure does to a revision already running.
    pub running: RunningRevision,
}

/// Now, to the second: what a condition's `lastTransitionTime` can hold (`metav1.Time` has second
/// precision). A status computed with sub-second times never equals the one read back, and each
/// reconcile would write it again.
pub fn now() -> Timestamp {
    let now = Timestamp::now();
    Timestamp::from_second(now.as_second()).unwrap_or(now)
}

/// Reasons of failures that say "not now" rather than "no": the API server, a registry or a bundle
/// server did not answer (or not in time), or the operator could not inspect the bundle. The
/// reconcile retries them; a Plugin without a revision that ran stays `Pending` rather than the
/// terminal-looking `Failed` (which tells automation to give up, and which 431 of 1,000 Plugins
/// showed in a creation burst that only slowed the API server down).
/// A registry that refuses access, or granted credentials not there yet, wait for an admin's
/// grant or Secret, which no watch reports: retried too.
pub const RETRIED_REASONS: [&str; 7] = [
    "BundleUnreadable",
    "RegistryUnavailable",
    "RegistryTimeout",
    "ImageUnresolvable",
    "BundleInspectionFailed",
    crate::registry_auth::UNAUTHORIZED,
    crate::registry_auth::CREDENTIALS_UNAVAILABLE,
];

impl FetchFailure {
    /// Whether the failure is retried rather than a verdict ([`RETRIED_REASONS`]).
    pub fn is_retried(&self) -> bool {
        RETRIED_REASONS.contains(&self.reason)
    }

    /// A failure of the `Verified` condition that leaves what runs alone.
    pub fn verified(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            condition: VERIFIED,
            reason,
            message: message.into(),
            running: RunningRevision::KeepsServing,
        }
    }
}

/// What a failure to fetch or verify the current spec does to the revision already running.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RunningRevision {
    /// It keeps serving (phase Degraded): the failure concerns the new spec only.
    #[default]
    KeepsServing,
    /// Its signer was revoked: it is scaled to zero (phase Quarantined).
    Quarantined,
}

#[derive(Clone, Copy, Debug)]
pub enum Outcome<'a> {
    /// Image or bundle could not be fetched or read.
    FetchFailed(&'a FetchFailure),
    /// A plan was made; `rollout` is the applied Deployment's state when the plan rolled out.
    Planned(&'a Plan, Option<&'a Rollout>),
    /// A plan was made, but objects it would write are not the Plugin's: nothing was applied.
    NotOwned(&'a Plan, &'a [NotOwned]),
}

/// One change worth telling the user about (Event + audit record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub condition: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    pub warning: bool,
}

pub fn next_status(plugin: &Plugin, outcome: Outcome<'_>, now: Timestamp) -> PluginStatus {
    let prev = plugin.status.clone().unwrap_or_default();
    let generation = plugin.metadata.generation;
    let mut status = PluginStatus {
        observed_generation: generation,
        image_digest: prev.image_digest.clone(),
        bundle_digest: prev.bundle_digest.clone(),
        trust_level: prev.trust_level.clone(),
        signer: prev.signer.clone(),
        current_revision: prev.current_revision.clone(),
        replicas: prev.replicas,
        selector: Some(format!(
            "{}={}",
            airlock_core::names::PLUGIN_LABEL,
            plugin.metadata.name.as_deref().unwrap_or_default()
        )),
        last_good_revision: prev.last_good_revision.clone(),
        failed_revision: prev.failed_revision.clone(),
        hooks: prev.hooks.clone(),
        permissions: prev.permissions.clone(),
        limits: prev.limits.clone(),
        revisions: prev.revisions.clone(),
        certificate: prev.certificate.clone(),
        ..Default::default()
    };
    let mut set = |ty: &str, ok: bool, reason: &str, message: String| {
        status.conditions.push(condition(
            &prev.conditions,
            ty,
            ok,
            reason,
            message,
            generation,
            now,
        ));
    };
    let phase;
    match outcome {
        Outcome::FetchFailed(f) => {
            set(f.condition, false, f.reason, f.message.clone());
            // What the last plan said of the plugin's API version still holds: a failed fetch
            // changed no bundle (and the warning is not told again when the fetch succeeds).
            if let Some(c) = prev.conditions.iter().find(|c| c.type_ == DEPRECATED) {
                set(DEPRECATED, true, &c.reason, c.message.clone());
            }
            // An earlier revision that was rolled out keeps running untouched — unless its signer
            // was revoked, which scales it to zero.
            let (phase_now, suffix) = match &prev.last_good_revision {
                _ if f.running == RunningRevision::Quarantined => {
                    status.permissions.clear();
                    status.replicas = Some(0);
                    (PluginPhase::Quarantined, String::new())
                }
                _ if switched_off(plugin).is_some() => (PluginPhase::Disabled, String::new()),
                Some(good) => (
                    PluginPhase::Degraded,
                    format!(" (revision {good} keeps serving)"),
                ),
                None if f.is_retried() => (PluginPhase::Pending, String::new()),
                None => (PluginPhase::Failed, String::new()),
            };
            // Switched off: Ready says so (Verified carries the failure); the pipeline scales
            // to zero whatever the fetch said.
            match switched_off(plugin).filter(|_| phase_now == PluginPhase::Disabled) {
                Some((ok, reason, message)) => set(READY, ok, reason, message),
                None => set(READY, false, f.reason, format!("{}{suffix}", f.message)),
            }
            phase = phase_now;
        }
        Outcome::Planned(plan, _) | Outcome::NotOwned(plan, _) => {
            let rollout = match outcome {
                Outcome::Planned(_, rollout) => rollout,
                _ => None,
            };
            for (ty, verdict) in [
                (COMPATIBLE, &plan.compatible),
                (VERIFIED, &plan.verified),
                (PERMISSIONS_APPROVED, &plan.permissions_approved),
            ] {
                match verdict {
                    Verdict::Ok { reason, message } => set(ty, true, reason, message.clone()),
                    Verdict::Blocked { reason, message } => set(ty, false, reason, message.clone()),
                }
            }
            if let Some(message) = &plan.deprecated {
                set(
                    DEPRECATED,
                    true,
                    crate::compat::DEPRECATED_PLUGIN_API_VERSION,
                    message.clone(),
                );
            }
            let blocked = [&plan.compatible, &plan.verified, &plan.permissions_approved]
                .into_iter()
                .find_map(|v| match v {
                    Verdict::Blocked { reason, message } => Some((*reason, message.clone())),
                    Verdict::Ok { .. } => None,
                })
                .or_else(|| match outcome {
                    // The verdicts stay True: the plan is good, the objects are in the way.
                    Outcome::NotOwned(_, objects) => {
                        Some((OBJECT_NOT_OWNED, ownership::message(objects)))
                    }
                    _ => None,
                });
            match (blocked, plan.rollout.as_ref(), rollout) {
                (Some((reason, message)), _, _) => {
                    // Nothing new is applied; what ran before keeps running.
                    match (&prev.last_good_revision, plugin.should_run()) {
                        (Some(good), true) => {
                            set(
                                READY,
                                false,
                                reason,
                                format!(
                                    "not rolled out: {message} (revision {good} keeps serving)"
                                ),
                            );
                            phase = PluginPhase::Degraded;
                        }
                        _ if switched_off(plugin).is_some() => {
                            // Nothing runs (the pipeline scales to zero); the verdicts above
                            // say what is wrong with the spec.
                            if let Some((ok, reason, message)) = switched_off(plugin) {
                                set(READY, ok, reason, message);
                            }
                            phase = PluginPhase::Disabled;
                        }
                        _ => {
                            set(READY, false, reason, format!("not rolled out: {message}"));
                            // In the way only of an earlier Plugin of the same name, which the
                            // garbage collector removes shortly (a delete and re-create, as GitOps
                            // does): in progress, not a verdict.
                            let collected_soon = matches!(
                                outcome,
                                Outcome::NotOwned(_, objects) if !objects.is_empty()
                                    && objects.iter().all(|o| matches!(o.owner, ownership::Owner::EarlierPlugin { .. }))
                            ) && [
                                &plan.compatible,
                                &plan.verified,
                                &plan.permissions_approved,
                            ]
                            .iter()
                            .all(|v| matches!(v, Verdict::Ok { .. }));
                            phase = if collected_soon {
                                PluginPhase::Pending
                            } else {
                                PluginPhase::Failed
                            };
                        }
                    }
                }
                (None, Some(planned), Some(applied)) => {
                    status.image_digest = Some(planned.image_digest.clone());
                    status.bundle_digest = Some(planned.bundle_digest.clone());
                    status.trust_level = Some(format!("{:?}", plan.trust_level));
                    status.signer = plan.signer.clone();
                    status.current_revision = Some(applied.revision.clone());
                    status.replicas = Some(applied.ready_replicas);
                    status.hooks = plugin
                        .spec
                        .hooks
                        .iter()
                        .map(|h| h.name.as_str().to_string())
                        .collect();
                    status.permissions = planned.permissions.iter().copied().collect();
                    status.limits = Some(planned.limits.clone());
                    if let Some(record) = plan
                        .record
                        .as_ref()
                        .filter(|_| applied.revision == planned.revision)
                    {
                        remember(&mut status.revisions, record.clone());
                    }
                    phase = ready(plugin, applied, &mut status, &prev, generation, now);
                }
                (None, _, _) => {
                    set(READY, false, "Pending", "waiting for the rollout".into());
                    phase = PluginPhase::Pending;
                }
            }
        }
    }
    status.phase = Some(phase);
    if phase == PluginPhase::Disabled {
        // No pods run: nothing may call the host API as this plugin (a stolen identity neither).
        status.permissions.clear();
        status.replicas = Some(0);
    }
    // Records of the revisions the status still names; the others cannot come back. While a
    // revision rolls out, also the latest one it replaced: a spec changed again mid-rollout
    // leaves that revision's ready pods serving (neither current nor last good) until the
    // Deployment scales them down, and the router calls only pods of a recorded revision.
    let named = [&status.current_revision, &status.last_good_revision];
    let is_named = |r: &RevisionRecord| {
        named
            .iter()
            .any(|n| n.as_deref() == Some(r.revision.as_str()))
    };
    let replaced = (status.phase == Some(PluginPhase::Deploying))
        .then(|| status.revisions.iter().rev().find(|r| !is_named(r)))
        .flatten()
        .map(|r| r.revision.clone());
    status
        .revisions
        .retain(|r| is_named(r) || replaced.as_ref() == Some(&r.revision));
    kstatus(&mut status, &prev, generation, now);
    status
}

/// The one Kubernetes Event a status write gets, if any: the changes from `told` (the status the
/// last Event described, or the previous status when none is known) to `next`. Its headline
/// (reason, type of action) is the change of `Ready` — what a user asks first: does it serve, and
/// if not, why — else the phase's, else the first change; its note says the headline's message,
/// then every other change. Warning when any change is one.
///
/// Progress alone is not told: a status whose `Ready` is False for a [`NORMAL_PROGRESS`] reason
/// without a warning (verifying, pods starting) gets no Event, and the next Event (Active, or what
/// went wrong) tells everything since `told`, the verification included. So does a `Ready` that
/// dips and comes back (pods marked NotReady for a second while their node's lease was late):
/// nothing changed since the last Event, nothing is told. A new revision serving is told, with
/// the revision it replaced. At 1,000 Plugins Events were 2 of the 15 writes each Plugin cost on
/// the way to Active, and a readiness dip cost 2 more; the audit stream keeps one record per
/// transition either way.
pub fn event(
    told: Option<&PluginStatus>,
    prev: Option<&PluginStatus>,
    next: &PluginStatus,
) -> Option<Transition> {
    let progress = |s: &PluginStatus| {
        s.conditions
            .iter()
            .find(|c| c.type_ == READY)
            .is_some_and(|c| c.status == "False" && NORMAL_PROGRESS.contains(&c.reason.as_str()))
    };
    match told_since(told, next) {
        // The same failure as the last Event, after an untold new attempt (a second upgrade
        // rolled back like the first): the attempt's outcome is told all the same.
        None if !progress(next) && prev.is_some_and(progress) => told_since(prev, next),
        told => told,
    }
}

/// [`event`] against `told` alone.
fn told_since(told: Option<&PluginStatus>, next: &PluginStatus) -> Option<Transition> {
    let ready = next.conditions.iter().find(|c| c.type_ == READY);
    let transitions = transitions(told, next);
    let progress_only = ready
        .is_some_and(|c| c.status == "False" && NORMAL_PROGRESS.contains(&c.reason.as_str()))
        && !transitions.iter().any(|t| t.warning);
    if progress_only {
        return None;
    }
    let revision = told
        .and_then(|t| t.current_revision.as_deref())
        .zip(next.current_revision.as_deref())
        .filter(|(before, now)| before != now)
        .map(|(before, now)| format!("revision {before} -> {now}"));
    // A new revision serving where the old one did changes no condition: it is told all the same.
    let serving = revision.as_ref().zip(ready).map(|(_, ready)| Transition {
        condition: READY.into(),
        status: ready.status.clone(),
        reason: ready.reason.clone(),
        message: ready.message.clone(),
        warning: ready.status == "False" && !NORMAL_PROGRESS.contains(&ready.reason.as_str()),
    });
    let headline = transitions
        .iter()
        .find(|t| t.condition == READY)
        .or(serving.as_ref())
        .or_else(|| transitions.iter().find(|t| t.condition == "Phase"))
        .or_else(|| transitions.first())?;
    let mut note = vec![headline.message.clone()];
    note.extend(revision);
    note.extend(
        transitions
            .iter()
            .filter(|t| !std::ptr::eq(*t, headline))
            .map(|t| {
                if t.condition == "Phase" {
                    t.message.clone()
                } else {
                    format!("{}={} ({}): {}", t.condition, t.status, t.reason, t.message)
                }
            }),
    );
    Some(Transition {
        condition: headline.condition.clone(),
        status: headline.status.clone(),
        reason: headline.reason.clone(),
        message: note.join("; "),
        warning: headline.warning || transitions.iter().any(|t| t.warning),
    })
}

/// Reasons of `Ready=False` that are the normal course of a rollout, not a problem: no Warning,
/// and no Event of their own ([`event`]).
pub const NORMAL_PROGRESS: [&str; 2] = ["Pending", "Deploying"];

/// What a status means to kstatus: Airlock is still working on it, or it cannot go on without a
/// change from the user, or neither (the plugin is where its spec asks: Active, or disabled by
/// `spec.enabled: false`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// `Reconciling=True`: a rollout, a first verification, or a retried failure ("not now").
    Reconciling,
    /// `Stalled=True`: blocked verification, a revoked key, a missing policy, a rollback, a missed
    /// progress deadline, auto-disabled — each needs the user to change something.
    Stalled,
    Settled,
}

/// [`Progress`] of a status, from its phase and the reason of `Ready`.
pub fn progress(status: &PluginStatus) -> Progress {
    let ready_reason = status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| c.reason.as_str());
    let retried = ready_reason.is_some_and(|r| RETRIED_REASONS.contains(&r));
    match status.phase {
        None | Some(PluginPhase::Pending | PluginPhase::Deploying) => Progress::Reconciling,
        Some(PluginPhase::Active) => Progress::Settled,
        Some(PluginPhase::Disabled) if ready_reason == Some("AutoDisabled") => Progress::Stalled,
        Some(PluginPhase::Disabled) => Progress::Settled,
        // The last good revision serves while the new spec waits for a registry: not a verdict.
        Some(PluginPhase::Degraded) if retried => Progress::Reconciling,
        Some(PluginPhase::Degraded | PluginPhase::Failed | PluginPhase::Quarantined) => {
            Progress::Stalled
        }
    }
}

/// Sets `Reconciling` or `Stalled` (reason and message those of `Ready`, which says what to do) and
/// removes the one that does not hold: kstatus reads a Plugin whose `Ready` is False as in
/// progress forever, unless `Stalled` says it failed.
fn kstatus(
    status: &mut PluginStatus,
    prev: &PluginStatus,
    generation: Option<i64>,
    now: Timestamp,
) {
    status
        .conditions
        .retain(|c| c.type_ != RECONCILING && c.type_ != STALLED);
    let ty = match progress(status) {
        Progress::Reconciling => RECONCILING,
        Progress::Stalled => STALLED,
        Progress::Settled => return,
    };
    let (reason, message) = status
        .conditions
        .iter()
        .find(|c| c.type_ == READY)
        .map(|c| (c.reason.clone(), c.message.clone()))
        .unwrap_or_else(|| ("Pending".into(), "the operator has not decided yet".into()));
    status.conditions.push(condition(
        &prev.conditions,
        ty,
        true,
        &reason,
        message,
        generation,
        now,
    ));
}

/// The status a Plugin gets the first time the operator sees it, before anything is fetched:
/// kstatus reads an object without a status as Current, so a Plugin must never be left without
/// one while its verification runs.
pub fn first_sight(plugin: &Plugin, now: Timestamp) -> PluginStatus {
    let generation = plugin.metadata.generation;
    let mut status = PluginStatus {
        observed_generation: generation,
        phase: Some(PluginPhase::Pending),
        conditions: vec![condition(
            &[],
            READY,
            false,
            "Pending",
            "the operator is verifying the plugin's image and bundle".into(),
            generation,
            now,
        )],
        ..Default::default()
    };
    kstatus(&mut status, &PluginStatus::default(), generation, now);
    status
}

/// Adds or replaces the record of `record.revision`, keeping a template digest already recorded
/// for it (the digest is only known once the revision ran).
fn remember(records: &mut Vec<RevisionRecord>, mut record: RevisionRecord) {
    if let Some(old) = records.iter_mut().find(|r| r.revision == record.revision) {
        record.template_digest = record.template_digest.or(old.template_digest.take());
        *old = record;
    } else {
        records.push(record);
    }
}

/// The running revision may not run under today's policies ([`crate::running::check`]): it was
/// scaled to zero. Unless the reconcile replaced it with a revision that passes, the status says
/// so: phase Quarantined, `Ready=False` with the stop's reason, no permissions.
pub fn stopped(
    plugin: &Plugin,
    mut status: PluginStatus,
    stop: &Stop,
    now: Timestamp,
) -> PluginStatus {
    let prev = plugin.status.clone().unwrap_or_default();
    status.conditions.retain(|c| c.type_ != READY);
    status.conditions.push(condition(
        &prev.conditions,
        READY,
        false,
        stop.reason,
        stop.message.clone(),
        plugin.metadata.generation,
        now,
    ));
    status.replicas = Some(0);
    status.permissions.clear();
    status.phase = Some(PluginPhase::Quarantined);
    kstatus(&mut status, &prev, plugin.metadata.generation, now);
    status
}

/// `Ready` (status, reason, message) of a Plugin switched off by its spec or by the router's
/// auto-disable: phase Disabled, whatever the fetch, the verification or the rollout say — the
/// kill switch must not wait for a registry.
fn switched_off(plugin: &Plugin) -> Option<(bool, &'static str, String)> {
    if let Some(why) = plugin.auto_disabled() {
        Some((
            false,
            "AutoDisabled",
            format!(
                "the router auto-disabled the plugin ({why}): no pods run, storage is kept. Fix the plugin, then {}",
                plugin.re_enable_hint()
            ),
        ))
    } else if !plugin.spec.enabled {
        Some((
            true,
            "Disabled",
            "spec.enabled is false: no pods run; storage and status are kept".to_string(),
        ))
    } else {
        None
    }
}

fn ready(
    plugin: &Plugin,
    applied: &Rollout,
    status: &mut PluginStatus,
    prev: &PluginStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> PluginPhase {
    let (ok, reason, message, phase) = if let Some((ok, reason, message)) = switched_off(plugin) {
        (ok, reason, message, PluginPhase::Disabled)
    } else if let Some(failed) = &applied.rolled_back_from {
        status.failed_revision = Some(failed.clone());
        (
            false,
            "RolledBack",
            format!(
                "revision {failed} did not become ready within its progress deadline and was rolled back; revision {} keeps serving. Fix the plugin (see the failed pod's events and logs) and change the spec to try again",
                applied.revision
            ),
            PluginPhase::Degraded,
        )
    } else if applied.deadline_exceeded {
        (
            false,
            "ProgressDeadlineExceeded",
            format!(
                "revision {} did not become ready within its progress deadline; check the plugin pod's events and logs{}",
                applied.revision,
                applied
                    .no_rollback
                    .as_ref()
                    .map(|why| format!(" ({why})"))
                    .unwrap_or_default()
            ),
            PluginPhase::Degraded,
        )
    } else if rollout_complete(applied) {
        status.last_good_revision = Some(applied.revision.clone());
        // What a rollback to this revision may re-apply: a ReplicaSet with this very template.
        if let Some(record) = status
            .revisions
            .iter_mut()
            .find(|r| r.revision == applied.revision)
            && record.template_digest.is_none()
        {
            record.template_digest = applied.template_digest.clone();
        }
        status.failed_revision = None;
        (
            true,
            "Active",
            format!(
                "revision {} is serving on {} pod(s)",
                applied.revision, applied.ready_replicas
            ),
            PluginPhase::Active,
        )
    } else if let Some(deadline) = unready_past_deadline(applied, prev, now) {
        (
            false,
            PODS_NOT_READY,
            format!(
                "revision {} served, but only {}/{} pod(s) have been ready for longer than the progress deadline ({}s): its pods crash or fail their readiness probe; see `kubectl -n {} describe pods -l {}={}` and the pods' logs",
                applied.revision,
                applied.ready_replicas,
                applied.desired_replicas,
                deadline.as_secs(),
                plugin.metadata.namespace.as_deref().unwrap_or_default(),
                airlock_core::names::PLUGIN_LABEL,
                plugin.metadata.name.as_deref().unwrap_or_default(),
            ),
            PluginPhase::Deploying,
        )
    } else {
        (
            false,
            "Deploying",
            format!(
                "revision {}: {}/{} pod(s) ready",
                applied.revision, applied.ready_replicas, applied.desired_replicas
            ),
            PluginPhase::Deploying,
        )
    };
    status.conditions.push(condition(
        &prev.conditions,
        READY,
        ok,
        reason,
        message,
        generation,
        now,
    ));
    phase
}

/// `Ready=False` reason of a revision that already served whose pods have not all been ready for
/// longer than the progress deadline (a crash loop after a completed rollout). The Deployment
/// controller applies no deadline to a rollout it completed, and progress gets no Event
/// ([`event`]): without this, such a plugin would say "Deploying" for ever and tell no one.
pub const PODS_NOT_READY: &str = "PodsNotReady";

/// The deadline, when the revision that served (the last good one) has been unready since the
/// previous status for longer than it.
fn unready_past_deadline(
    applied: &Rollout,
    prev: &PluginStatus,
    now: Timestamp,
) -> Option<std::time::Duration> {
    let deadline = applied.progress_deadline?;
    if prev.last_good_revision.as_deref() != Some(applied.revision.as_str()) {
        return None;
    }
    let since = prev
        .conditions
        .iter()
        .find(|c| c.type_ == READY && c.status == "False")
        .filter(|c| c.reason == "Deploying" || c.reason == PODS_NOT_READY)?
        .last_transition_time
        .0;
    // A transition time ahead of this clock (another replica's skew) counts as just now.
    let unready = now.duration_since(since);
    (!unready.is_negative() && unready.unsigned_abs() >= deadline).then_some(deadline)
}

/// The same test as `kubectl rollout status`: the controller saw the current spec, every pod runs
/// the new template, no pod of an older revision is left, and the new ones are available. Counting
/// ready pods alone would call a broken revision good while the old pod still answers.
fn rollout_complete(r: &Rollout) -> bool {
    r.observed
        && r.updated_replicas >= r.desired_replicas
        && r.total_replicas <= r.updated_replicas
        && r.available_replicas >= r.desired_replicas
}

/// The condition `ty`, keeping its lastTransitionTime from `prev` while its status is unchanged.
pub(crate) fn condition(
    prev: &[Condition],
    ty: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: Timestamp,
) -> Condition {
    let status = if ok { "True" } else { "False" }.to_string();
    let last_transition_time = prev
        .iter()
        .find(|c| c.type_ == ty && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(now));
    Condition {
        type_: ty.into(),
        status,
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time,
    }
}

/// Conditions whose status or reason changed, and a phase change; each gets an Event and an audit
/// record. Message-only changes (e.g. a ready-pod count) are not transitions. `Reconciling` and
/// `Stalled` restate `Ready` for kstatus and are not told twice. A condition turning False is a
/// Warning, unless it only says that the normal work goes on ([`NORMAL_PROGRESS`]).
pub fn transitions(prev: Option<&PluginStatus>, next: &PluginStatus) -> Vec<Transition> {
    let mut out = Vec::new();
    for c in next
        .conditions
        .iter()
        .filter(|c| c.type_ != RECONCILING && c.type_ != STALLED)
    {
        let before = prev.and_then(|p| p.conditions.iter().find(|o| o.type_ == c.type_));
        if before.is_none_or(|b| b.status != c.status || b.reason != c.reason) {
            out.push(Transition {
                condition: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
                warning: (c.status == "False" && !NORMAL_PROGRESS.contains(&c.reason.as_str()))
                    || (c.type_ == DEPRECATED && c.status == "True"),
            });
        }
    }
    let prev_phase = prev.and_then(|p| p.phase);
    if prev_phase != next.phase
        && let Some(phase) = next.phase
    {
        out.push(Transition {
            condition: "Phase".into(),
            status: format!("{phase:?}"),
            reason: format!("{phase:?}"),
            message: format!(
                "phase {} -> {phase:?}",
                prev_phase.map_or("none".to_string(), |p| format!("{p:?}"))
            ),
            warning: matches!(phase, PluginPhase::Failed | PluginPhase::Degraded),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::{HELLO, plugin};
    use crate::plan::Verdict;

    fn ok_plan() -> Plan {
        Plan {
            deprecated: None,
            compatible: Verdict::Ok {
                reason: "Compatible",
                message: "ok".into(),
            },
            verified: Verdict::Ok {
                reason: "UnsignedAllowed",
                message: "ok".into(),
            },
            permissions_approved: Verdict::Ok {
                reason: "Approved",
                message: "ok".into(),
            },
            trust_level: airlock_crds::TrustLevel::Untrusted,
            signer: Some("dev/alice".into()),
            rollout: Some(crate::build::test_support::rollout()),
            record: Some(RevisionRecord {
                revision: "r1a2b3c4d".into(),
                bundle_signer: Some("sha256:b".into()),
                ..Default::default()
            }),
        }
    }

    fn applied(ready: i32) -> Rollout {
        Rollout {
            revision: "r1a2b3c4d".into(),
            desired_replicas: 1,
            ready_replicas: ready,
            updated_replicas: 1,
            total_replicas: 1,
            available_replicas: ready,
            observed: true,
            deadline_exceeded: false,
            rolled_back_from: None,
            template_digest: Some("sha256:t".into()),
            no_rollback: None,
            recheck_after: None,
            progress_deadline: None,
        }
    }

    /// Issue 17: a plugin API version going away: the plugin runs (Active), with a `Deprecated`
    /// condition naming the release that removes it, told once as a Warning Event; the condition
    /// goes when the plugin no longer targets it.
    #[test]
    fn a_deprecated_api_version_runs_with_a_warning_condition_told_once() {
        let t0 = Timestamp::from_second(1_000_000).expect("time");
        let mut p = plugin(HELLO);
        let active = next_status(&p, Outcome::Planned(&ok_plan(), Some(&applied(1))), t0);
        p.status = Some(active.clone());
        let going = Plan {
            deprecated: crate::compat::deprecation(1, &[(1, "0.9.0")]),
            ..ok_plan()
        };
        let warned = next_status(&p, Outcome::Planned(&going, Some(&applied(1))), t0);
        assert_eq!(warned.phase, Some(PluginPhase::Active), "it still runs");
        let c = cond(&warned, DEPRECATED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", crate::compat::DEPRECATED_PLUGIN_API_VERSION)
        );
        assert!(
            c.message.contains("removed in Airlock 0.9.0"),
            "{}",
            c.message
        );
        let told = event(Some(&active), Some(&active), &warned).expect("an Event");
        assert!(told.warning && told.message.contains("0.9.0"), "{told:?}");
        p.status = Some(warned.clone());
        let again = next_status(&p, Outcome::Planned(&going, Some(&applied(1))), t0);
        assert_eq!(
            event(Some(&warned), Some(&warned), &again),
            None,
            "told once"
        );
        // A registry hiccup in between keeps it (no second Warning when the fetch works again).
        let failed = next_status(
            &p,
            Outcome::FetchFailed(&FetchFailure::verified("RegistryUnavailable", "retrying")),
            t0,
        );
        assert_eq!(cond(&failed, DEPRECATED).message, c.message);
        p.status = Some(again);
        let rebuilt = next_status(&p, Outcome::Planned(&ok_plan(), Some(&applied(1))), t0);
        assert!(!rebuilt.conditions.iter().any(|c| c.type_ == DEPRECATED));
    }

    /// Pods of a revision that served and then stopped being ready (a crash loop after the
    /// rollout completed): Deploying — progress, no Event — until the progress deadline has
    /// passed since they stopped, then `PodsNotReady`, a Warning Event that says where to look.
    /// A revision rolling out for the first time is left to the Deployment's own deadline.
    #[test]
    fn a_served_revision_unready_past_the_deadline_is_told_as_a_warning() {
        let t0 = Timestamp::from_second(1_000_000).expect("time");
        let later = |s: i64| Timestamp::from_second(1_000_000 + s).expect("time");
        let deadline = |ready| Rollout {
            progress_deadline: Some(std::time::Duration::from_secs(120)),
            ..applied(ready)
        };
        let mut p = plugin(HELLO);
        let active = next_status(&p, Outcome::Planned(&ok_plan(), Some(&deadline(1))), t0);
        assert_eq!(cond(&active, READY).reason, "Active");
        p.status = Some(active.clone());
        let dipped = next_status(
            &p,
            Outcome::Planned(&ok_plan(), Some(&deadline(0))),
            later(10),
        );
        assert_eq!(cond(&dipped, READY).reason, "Deploying");
        assert_eq!(event(Some(&active), Some(&active), &dipped), None);
        p.status = Some(dipped.clone());
        let within = next_status(
            &p,
            Outcome::Planned(&ok_plan(), Some(&deadline(0))),
            later(129),
        );
        assert_eq!(
            cond(&within, READY).reason,
            "Deploying",
            "not yet 120 s unready"
        );
        let past = next_status(
            &p,
            Outcome::Planned(&ok_plan(), Some(&deadline(0))),
            later(130),
        );
        let ready = cond(&past, READY);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", PODS_NOT_READY)
        );
        assert!(ready.message.contains("0/1 pod(s)"), "{}", ready.message);
        assert!(
            ready.message.contains("airlock.dev/plugin=hello"),
            "{}",
            ready.message
        );
        assert_eq!(past.phase, Some(PluginPhase::Deploying));
        assert_eq!(progress(&past), Progress::Reconciling);
        let e = event(Some(&active), Some(&dipped), &past).expect("an Event");
        assert!(e.warning, "{e:?}");
        assert_eq!(e.reason, PODS_NOT_READY);
        // It stays so (no new Event) and recovers with an Active Event.
        p.status = Some(past.clone());
        let still = next_status(
            &p,
            Outcome::Planned(&ok_plan(), Some(&deadline(0))),
            later(400),
        );
        assert_eq!(cond(&still, READY).reason, PODS_NOT_READY);
        assert_eq!(event(Some(&past), Some(&past), &still), None);
        p.status = Some(still.clone());
        let back = next_status(
            &p,
            Outcome::Planned(&ok_plan(), Some(&deadline(1))),
            later(401),
        );
        assert_eq!(cond(&back, READY).reason, "Active");
        assert!(
            !event(Some(&still), Some(&still), &back)
                .expect("an Event")
                .warning
        );

        // A first rollout that takes long is not this: the Deployment's deadline tells it.
        let mut fresh = plugin(HELLO);
        let starting = next_status(&fresh, Outcome::Planned(&ok_plan(), Some(&deadline(0))), t0);
        fresh.status = Some(starting);
        let slow = next_status(
            &fresh,
            Outcome::Planned(&ok_plan(), Some(&deadline(0))),
            later(500),
        );
        assert_eq!(cond(&slow, READY).reason, "Deploying");
    }

    fn cond<'a>(s: &'a PluginStatus, ty: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == ty)
            .expect("condition")
    }

    /// The status after a good plan rolled out and the Deployment reports `applied`.
    fn after_rollout(p: &Plugin, applied: &Rollout) -> PluginStatus {
        next_status(
            p,
            Outcome::Planned(&ok_plan(), Some(applied)),
            Timestamp::UNIX_EPOCH,
        )
    }

    /// A Plugin whose revision `rgood` was rolled out and became ready before.
    fn served_before() -> Plugin {
        let mut p = plugin(HELLO);
        p.status = Some(PluginStatus {
            last_good_revision: Some("rgood".into()),
            ..Default::default()
        });
        p
    }

    /// Ready is False for `reason`, with a message containing each of `says`.
    fn assert_not_ready(s: &PluginStatus, reason: &str, says: &[&str]) {
        let r = cond(s, READY);
        assert_eq!((r.status.as_str(), r.reason.as_str()), ("False", reason));
        for part in says {
            assert!(r.message.contains(part), "{part:?} in {:?}", r.message);
        }
    }

    #[test]
    fn ready_pods_make_the_plugin_active_and_the_revision_good() {
        let s = after_rollout(&plugin(HELLO), &applied(1));
        assert_eq!(s.phase, Some(PluginPhase::Active));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(cond(&s, READY).observed_generation, Some(3));
        assert_eq!(s.last_good_revision.as_deref(), Some("r1a2b3c4d"));
        assert_eq!(s.hooks, vec!["transform".to_string()]);
        // Issue 14: the signer as a field (a printer column), not only inside a message.
        assert_eq!(s.signer.as_deref(), Some("dev/alice"));
        // The effective permissions, which the host API checks calls against.
        assert_eq!(s.permissions, vec![airlock_crds::Permission::Log]);
    }

    /// Issue 13: the `scale` subresource reads the ready pods and their selector from the status
    /// (what `kubectl scale` and a HorizontalPodAutoscaler use).
    #[test]
    fn the_status_carries_the_ready_pods_and_their_selector_for_scaling() {
        let p = plugin(HELLO);
        let s = after_rollout(&p, &applied(0));
        assert_eq!(s.replicas, Some(0));
        assert_eq!(s.selector.as_deref(), Some("airlock.dev/plugin=hello"));
        let s = after_rollout(&p, &applied(1));
        assert_eq!(s.replicas, Some(1));
    }

    #[test]
    fn an_unchanged_world_gives_an_identical_status() {
        let mut p = plugin(HELLO);
        let first = after_rollout(&p, &applied(1));
        p.status = Some(first.clone());
        let later = Timestamp::from_second(1_000_000).expect("valid");
        let plan = ok_plan();
        let second = next_status(&p, Outcome::Planned(&plan, Some(&applied(1))), later);
        assert_eq!(first, second, "no write, no hot loop");
        assert!(transitions(Some(&first), &second).is_empty());
    }

    /// Issue 13: an API server or registry that does not answer is not a verdict. A new Plugin
    /// stays Pending (Ready=False with the reason, a Warning Event), never the terminal-looking
    /// Failed; a refusal stays Failed.
    #[test]
    fn a_failure_that_is_retried_leaves_a_new_plugin_pending_and_a_refusal_fails_it() {
        let p = plugin(HELLO);
        for reason in RETRIED_REASONS {
            let f = FetchFailure::verified(
                reason,
                "reading ConfigMap plugins/hello-bundle: no response (retrying)",
            );
            let s = next_status(&p, Outcome::FetchFailed(&f), Timestamp::UNIX_EPOCH);
            assert_eq!(s.phase, Some(PluginPhase::Pending), "{reason}");
            assert_not_ready(&s, reason, &["(retrying)"]);
            assert!(
                transitions(None, &s)
                    .iter()
                    .any(|t| t.condition == READY && t.warning),
                "{reason}: still a Warning Event"
            );
        }
        let refused = FetchFailure::verified(
            "BundleNotFound",
            "ConfigMap plugins/hello-bundle does not exist",
        );
        let s = next_status(&p, Outcome::FetchFailed(&refused), Timestamp::UNIX_EPOCH);
        assert_eq!(s.phase, Some(PluginPhase::Failed));
    }

    #[test]
    fn a_blocked_plan_is_failed_and_says_why() {
        let p = plugin(HELLO);
        let mut plan = ok_plan();
        plan.permissions_approved = Verdict::Blocked {
            reason: "NotDeclaredBySigner",
            message: "spec.permissions asks for storage:write ...".into(),
        };
        plan.rollout = None;
        let s = next_status(&p, Outcome::Planned(&plan, None), Timestamp::UNIX_EPOCH);
        assert_eq!(s.phase, Some(PluginPhase::Failed));
        let c = cond(&s, PERMISSIONS_APPROVED);
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "NotDeclaredBySigner")
        );
        assert_not_ready(&s, "NotDeclaredBySigner", &["spec.permissions"]);
        let t = transitions(None, &s);
        assert!(
            t.iter()
                .any(|t| t.condition == PERMISSIONS_APPROVED && t.warning)
        );
    }

    #[test]
    fn an_object_in_the_way_blocks_the_rollout_says_which_and_stays_quiet_when_unchanged() {
        let p = plugin(HELLO);
        let in_the_way = [NotOwned {
            kind: "NetworkPolicy".into(),
            namespace: "plugins".into(),
            name: "hello".into(),
            owner: crate::ownership::Owner::Nobody,
        }];
        let plan = ok_plan();
        let s = next_status(
            &p,
            Outcome::NotOwned(&plan, &in_the_way),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(s.phase, Some(PluginPhase::Failed));
        assert_eq!(cond(&s, VERIFIED).status, "True", "the plan itself is good");
        assert_not_ready(
            &s,
            OBJECT_NOT_OWNED,
            &[
                "not rolled out",
                "NetworkPolicy plugins/hello",
                "delete/rename the existing NetworkPolicy hello",
            ],
        );
        assert_eq!(s.current_revision, None, "nothing was rolled out");
        assert!(
            transitions(None, &s)
                .iter()
                .any(|t| t.reason == OBJECT_NOT_OWNED && t.warning),
            "a Warning Event and an audit record"
        );

        // Looked at again later, nothing changed: the same status, no transition, no write.
        let mut seen = p.clone();
        seen.status = Some(s.clone());
        let later = Timestamp::from_second(1_000_000).expect("valid");
        let again = next_status(&seen, Outcome::NotOwned(&plan, &in_the_way), later);
        assert_eq!(again, s);
        assert!(transitions(Some(&s), &again).is_empty());

        // What ran before keeps running, and the status says so.
        let s = next_status(
            &served_before(),
            Outcome::NotOwned(&plan, &in_the_way),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(s.phase, Some(PluginPhase::Degraded));
        assert_not_ready(&s, OBJECT_NOT_OWNED, &["rgood keeps serving"]);
    }

    #[test]
    fn disabled_is_ready_with_no_pods() {
        let mut p = plugin(HELLO);
        p.spec.enabled = false;
        let mut a = applied(0);
        a.desired_replicas = 0;
        let s = after_rollout(&p, &a);
        assert_eq!(s.phase, Some(PluginPhase::Disabled));
        assert_eq!(cond(&s, READY).status, "True");
        assert_eq!(cond(&s, READY).reason, "Disabled");
        assert!(
            s.permissions.is_empty(),
            "a disabled plugin holds no host API permission"
        );
    }

    #[test]
    fn a_revision_that_rolls_out_is_recorded_with_its_template_once_ready() {
        let deploying = after_rollout(&plugin(HELLO), &applied(0));
        let rec = &deploying.revisions[0];
        assert_eq!(rec.revision, "r1a2b3c4d");
        assert_eq!(rec.bundle_signer.as_deref(), Some("sha256:b"));
        assert_eq!(
            rec.template_digest, None,
            "not ready yet: no template to go back to"
        );
        let ready = after_rollout(&plugin(HELLO), &applied(1));
        assert_eq!(
            ready.revisions[0].template_digest.as_deref(),
            Some("sha256:t")
        );
    }

    /// The current and the last good revision keep their records; while a revision rolls out,
    /// so does the latest one it replaced (a spec changed again mid-rollout: its ready pods still
    /// serve, and the router calls only pods of a recorded revision); once the rollout is over,
    /// only the two.
    #[test]
    fn the_current_the_last_good_and_while_rolling_out_the_replaced_revision_keep_records() {
        let mut p = plugin(HELLO);
        let mut prev = after_rollout(&p, &applied(1));
        for r in ["rgood", "rmid"] {
            prev.revisions.push(RevisionRecord {
                revision: r.into(),
                ..Default::default()
            });
        }
        prev.last_good_revision = Some("rgood".into());
        p.status = Some(prev);
        let mut a = applied(0);
        a.template_digest = Some("sha256:new".into());
        let plan = ok_plan();
        let s = next_status(&p, Outcome::Planned(&plan, Some(&a)), Timestamp::now());
        assert_eq!(s.phase, Some(PluginPhase::Deploying));
        let kept: Vec<&str> = s.revisions.iter().map(|r| r.revision.as_str()).collect();
        assert_eq!(kept, ["r1a2b3c4d", "rgood", "rmid"]);
        assert_eq!(
            s.revisions[0].template_digest.as_deref(),
            Some("sha256:t"),
            "the template recorded when it was ready is kept"
        );

        p.status = Some(s);
        let done = next_status(
            &p,
            Outcome::Planned(&plan, Some(&applied(1))),
            Timestamp::now(),
        );
        assert_eq!(done.phase, Some(PluginPhase::Active));
        let kept: Vec<&str> = done.revisions.iter().map(|r| r.revision.as_str()).collect();
        assert_eq!(
            kept,
            ["r1a2b3c4d"],
            "rolled out: the last good is the current one"
        );
    }

    #[test]
    fn a_stopped_revision_is_quarantined_without_permissions() {
        let mut p = plugin(HELLO);
        let active = after_rollout(&p, &applied(1));
        assert!(!active.permissions.is_empty());
        p.status = Some(active.clone());
        let stop = Stop {
            reason: crate::trust::KEY_REVOKED,
            message: "revision r1a2b3c4d was signed by a revoked key".into(),
        };
        let s = stopped(&p, active, &stop, Timestamp::now());
        assert_eq!(s.phase, Some(PluginPhase::Quarantined));
        assert!(s.permissions.is_empty());
        assert_not_ready(&s, "KeyRevoked", &["revoked key"]);
        assert_eq!(s.conditions.iter().filter(|c| c.type_ == READY).count(), 1);
    }

    #[test]
    fn auto_disabled_is_not_ready_and_says_how_to_re_enable() {
        let mut p = plugin(HELLO);
        p.status.get_or_insert_default().auto_disabled = Some(
            airlock_crds::plugin::AutoDisabled::under(&p, "5 consecutive timeouts"),
        );
        let mut a = applied(0);
        a.desired_replicas = 0;
        let s = after_rollout(&p, &a);
        assert_eq!(s.phase, Some(PluginPhase::Disabled));
        assert_not_ready(
            &s,
            "AutoDisabled",
            &[
                "(5 consecutive timeouts)",
                "spec.reEnable",
                "kubectl patch plugin",
            ],
        );
        assert_eq!(
            s.auto_disabled, None,
            "the router's record is never part of the status the controller applies"
        );
        assert!(
            transitions(None, &s)
                .iter()
                .any(|t| t.reason == "AutoDisabled" && t.warning)
        );
    }

    #[test]
    fn a_rolled_back_revision_is_degraded_names_both_revisions_and_is_remembered() {
        let mut a = applied(1);
        a.revision = "rgood".into();
        a.rolled_back_from = Some("rbad".into());
        let s = after_rollout(&served_before(), &a);
        assert_eq!(s.phase, Some(PluginPhase::Degraded));
        assert_not_ready(&s, "RolledBack", &["rbad", "rgood"]);
        assert_eq!(s.failed_revision.as_deref(), Some("rbad"));
        assert_eq!(s.current_revision.as_deref(), Some("rgood"));
    }

    #[test]
    fn a_fetch_failure_after_a_good_rollout_is_degraded_not_failed() {
        let f = FetchFailure::verified("ImageUnresolvable", "could not resolve");
        let s = next_status(
            &served_before(),
            Outcome::FetchFailed(&f),
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(s.phase, Some(PluginPhase::Degraded));
        assert_not_ready(&s, "ImageUnresolvable", &["rgood keeps serving"]);
    }

    #[test]
    fn a_revoked_signer_quarantines_what_runs_and_nothing_else_does() {
        let p = served_before();
        let failure = |running| FetchFailure {
            condition: VERIFIED,
            reason: crate::trust::KEY_REVOKED,
            message: "revoked".into(),
            running,
        };
        let revoked = failure(RunningRevision::Quarantined);
        let s = next_status(&p, Outcome::FetchFailed(&revoked), Timestamp::UNIX_EPOCH);
        assert_eq!(s.phase, Some(PluginPhase::Quarantined));
        // The decision is the typed verdict, not the reason's spelling.
        let blocked = failure(RunningRevision::KeepsServing);
        let s = next_status(&p, Outcome::FetchFailed(&blocked), Timestamp::UNIX_EPOCH);
        assert_eq!(s.phase, Some(PluginPhase::Degraded));
    }

    #[test]
    fn an_old_ready_pod_does_not_make_a_new_revision_good() {
        // Mid-rollout: the new pod exists (updated 1) but is not ready; the old pod still serves.
        let mid = Rollout {
            ready_replicas: 1,
            available_replicas: 1,
            updated_replicas: 1,
            total_replicas: 2,
            ..applied(1)
        };
        let s = after_rollout(&plugin(HELLO), &mid);
        assert_eq!(s.phase, Some(PluginPhase::Deploying));
        assert_eq!(s.last_good_revision, None);
    }

    #[test]
    fn a_missed_deadline_is_degraded() {
        let mut a = applied(0);
        a.deadline_exceeded = true;
        let s = after_rollout(&plugin(HELLO), &a);
        assert_eq!(s.phase, Some(PluginPhase::Degraded));
        assert_not_ready(&s, "ProgressDeadlineExceeded", &["r1a2b3c4d"]);
    }

    /// Issue 14: what kstatus reads from each situation (`Reconciling` / `Stalled`, present only
    /// while True, restating `Ready`'s reason); the e2e checks the same table with the cli-utils
    /// library itself.
    #[test]
    fn kstatus_conditions_say_in_progress_or_stalled_with_the_reason() {
        let p = plugin(HELLO);
        let fetch = |reason: &'static str| {
            next_status(
                &p,
                Outcome::FetchFailed(&FetchFailure::verified(reason, "why")),
                Timestamp::UNIX_EPOCH,
            )
        };
        let mut revoked = FetchFailure::verified("KeyRevoked", "revoked");
        revoked.running = RunningRevision::Quarantined;
        let mut off = plugin(HELLO);
        off.spec.enabled = false;
        let mut auto = plugin(HELLO);
        auto.status.get_or_insert_default().auto_disabled = Some(
            airlock_crds::plugin::AutoDisabled::under(&auto, "5 timeouts"),
        );
        let mut rolled_back = applied(1);
        rolled_back.rolled_back_from = Some("rbad".into());
        let mut deadline = applied(0);
        deadline.deadline_exceeded = true;
        /// (condition, reason) expected besides Ready, if any.
        type Abnormal = Option<(&'static str, &'static str)>;
        let cases: Vec<(&str, PluginStatus, Abnormal)> = vec![
            ("Active", after_rollout(&p, &applied(1)), None),
            (
                "Deploying",
                after_rollout(&p, &applied(0)),
                Some((RECONCILING, "Deploying")),
            ),
            ("Disabled", after_rollout(&off, &applied(0)), None),
            (
                "AutoDisabled",
                after_rollout(&auto, &applied(0)),
                Some((STALLED, "AutoDisabled")),
            ),
            (
                "NoTrustPolicy",
                fetch(crate::plan::NO_TRUST_POLICY),
                Some((STALLED, "NoTrustPolicy")),
            ),
            (
                "ImageNotSigned",
                fetch("ImageNotSigned"),
                Some((STALLED, "ImageNotSigned")),
            ),
            (
                "KeyRevoked",
                next_status(
                    &served_before(),
                    Outcome::FetchFailed(&revoked),
                    Timestamp::UNIX_EPOCH,
                ),
                Some((STALLED, "KeyRevoked")),
            ),
            (
                "RolledBack",
                after_rollout(&p, &rolled_back),
                Some((STALLED, "RolledBack")),
            ),
            (
                "ProgressDeadlineExceeded",
                after_rollout(&p, &deadline),
                Some((STALLED, "ProgressDeadlineExceeded")),
            ),
            (
                "registry down, new Plugin",
                fetch("RegistryUnavailable"),
                Some((RECONCILING, "RegistryUnavailable")),
            ),
            (
                "registry down, the last good revision serves",
                next_status(
                    &served_before(),
                    Outcome::FetchFailed(&FetchFailure::verified("RegistryUnavailable", "why")),
                    Timestamp::UNIX_EPOCH,
                ),
                Some((RECONCILING, "RegistryUnavailable")),
            ),
            (
                "first sight",
                first_sight(&p, Timestamp::UNIX_EPOCH),
                Some((RECONCILING, "Pending")),
            ),
        ];
        for (what, status, expected) in cases {
            let abnormal: Vec<(&str, &str, &str)> = status
                .conditions
                .iter()
                .filter(|c| c.type_ == RECONCILING || c.type_ == STALLED)
                .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
                .collect();
            let expected: Vec<(&str, &str, &str)> =
                expected.into_iter().map(|(t, r)| (t, "True", r)).collect();
            assert_eq!(abnormal, expected, "{what}");
            assert_eq!(status.observed_generation, Some(3), "{what}");
        }
    }

    /// Issue 14: a rollout in progress is told with Normal Events; a blocked Plugin with Warnings;
    /// `Reconciling` and `Stalled` add no Events of their own.
    #[test]
    fn only_problems_are_warnings_and_kstatus_conditions_are_not_told_twice() {
        let p = plugin(HELLO);
        let deploying = after_rollout(&p, &applied(0));
        let t = transitions(None, &deploying);
        assert!(t.iter().all(|t| !t.warning), "{t:?}");
        assert!(
            t.iter()
                .all(|t| t.condition != RECONCILING && t.condition != STALLED)
        );
        let mut plan = ok_plan();
        plan.verified = Verdict::Blocked {
            reason: "ImageNotSigned",
            message: "no signature".into(),
        };
        plan.rollout = None;
        let blocked = next_status(&p, Outcome::Planned(&plan, None), Timestamp::UNIX_EPOCH);
        let t = transitions(Some(&deploying), &blocked);
        assert!(t.iter().any(|t| t.condition == READY && t.warning), "{t:?}");
        assert!(
            t.iter()
                .all(|t| t.condition != RECONCILING && t.condition != STALLED)
        );
    }

    /// An Event per outcome: progress (verifying, pods starting) is not told; the Event that
    /// follows tells everything since the last one, headed by Ready, Warning if any change is one.
    #[test]
    fn an_outcome_is_one_event_headed_by_ready_and_progress_is_not_told() {
        let p = plugin(HELLO);
        let pending = first_sight(&p, Timestamp::UNIX_EPOCH);
        assert_eq!(event(None, None, &pending), None, "verifying is not told");
        let deploying = after_rollout(&p, &applied(0));
        assert!(transitions(None, &deploying).len() > 1);
        assert_eq!(
            event(None, None, &deploying),
            None,
            "pods starting is not told"
        );
        assert_eq!(event(Some(&pending), None, &deploying), None);

        // Active: told once, with what the untold statuses changed (the verification).
        let active = after_rollout(&p, &applied(1));
        let e = event(None, None, &active).expect("an Event");
        assert_eq!((e.condition.as_str(), e.reason.as_str()), (READY, "Active"));
        assert!(!e.warning, "{e:?}");
        for part in [
            "is serving on 1 pod(s)",
            "Verified=True",
            "phase none -> Active",
        ] {
            assert!(e.message.contains(part), "{part:?} in {}", e.message);
        }
        assert!(
            event(Some(&pending), None, &active)
                .expect("an Event")
                .message
                .contains("phase Pending -> Active")
        );
        // Told against what was told last, not the status just before: a readiness dip
        // (Active -> Deploying -> Active, same revision) tells nothing at all.
        assert_eq!(event(Some(&active), None, &deploying), None);
        assert_eq!(
            event(Some(&active), None, &active),
            None,
            "no change, no Event"
        );

        // A new revision serving where the old one did: told, naming both.
        let mut upgraded = active.clone();
        upgraded.current_revision = Some("r9e8d7c6b".into());
        let e = event(Some(&active), None, &upgraded).expect("an Event");
        assert_eq!(e.reason, "Active");
        assert!(
            e.message.contains("revision r1a2b3c4d -> r9e8d7c6b"),
            "{}",
            e.message
        );

        // What went wrong is told at once, as a Warning, even from an untold rollout.
        let mut plan = ok_plan();
        plan.verified = Verdict::Blocked {
            reason: "ImageNotSigned",
            message: "no signature".into(),
        };
        plan.rollout = None;
        let blocked = next_status(&p, Outcome::Planned(&plan, None), Timestamp::UNIX_EPOCH);
        let e = event(Some(&deploying), None, &blocked).expect("an Event");
        assert_eq!(e.reason, "ImageNotSigned");
        assert!(e.warning);

        // The same failure again after an untold new attempt: told again, as a Warning
        // (attack review: a second rolled-back upgrade was told nothing).
        assert_eq!(event(Some(&blocked), None, &blocked), None, "nothing new");
        let e = event(Some(&blocked), Some(&deploying), &blocked).expect("an Event");
        assert_eq!(e.reason, "ImageNotSigned");
        assert!(e.warning, "{e:?}");

        // A new revision that failed where the last told one had failed the same way: the
        // revision change heads the Event, a Warning all the same.
        let mut failed_again = blocked.clone();
        failed_again.current_revision = Some("r9e8d7c6b".into());
        let mut failed_before = blocked.clone();
        failed_before.current_revision = Some("r1a2b3c4d".into());
        let e = event(Some(&failed_before), None, &failed_again).expect("an Event");
        assert_eq!(e.reason, "ImageNotSigned");
        assert!(e.warning, "{e:?}");
    }

    /// Issue 16: the status planner under any sequence of what reconciles can see — fetch and
    /// verification failures (retried or verdicts, a revoked signer), a plan blocked by its
    /// verification, rollouts ready or not, past their deadline or rolled back — with the Plugin
    /// enabled and disabled in between. What a user and the router rely on must hold after
    /// every step, whatever came before.
    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// What one reconcile saw.
        #[derive(Clone, Debug)]
        enum Seen {
            FetchFailed {
                reason: &'static str,
                revoked: bool,
            },
            Blocked,
            RolledOut {
                ready: i32,
                deadline_exceeded: bool,
                rolled_back: bool,
            },
        }

        /// Retried reasons and verdicts alike.
        const REASONS: [&str; 10] = [
            RETRIED_REASONS[0],
            RETRIED_REASONS[1],
            RETRIED_REASONS[2],
            RETRIED_REASONS[3],
            RETRIED_REASONS[4],
            RETRIED_REASONS[5],
            RETRIED_REASONS[6],
            "ImageNotSigned",
            "ImageSignatureUntrusted",
            "KeyRevoked",
        ];

        fn seen() -> impl Strategy<Value = Seen> {
            prop_oneof![
                (prop::sample::select(&REASONS[..]), any::<bool>())
                    .prop_map(|(reason, revoked)| Seen::FetchFailed { reason, revoked }),
                Just(Seen::Blocked),
                (0..=1i32, any::<bool>(), any::<bool>()).prop_map(
                    |(ready, deadline_exceeded, rolled_back)| Seen::RolledOut {
                        ready,
                        deadline_exceeded,
                        rolled_back,
                    }
                ),
            ]
        }

        fn step(p: &Plugin, seen: &Seen, now: Timestamp) -> PluginStatus {
            match seen {
                Seen::FetchFailed { reason, revoked } => {
                    let f = FetchFailure {
                        condition: VERIFIED,
                        reason,
                        message: "what failed (retrying)".into(),
                        running: if *revoked {
                            RunningRevision::Quarantined
                        } else {
                            RunningRevision::KeepsServing
                        },
                    };
                    next_status(p, Outcome::FetchFailed(&f), now)
                }
                Seen::Blocked => {
                    let mut plan = ok_plan();
                    plan.verified = Verdict::Blocked {
                        reason: "ImageSignatureUntrusted",
                        message: "signed by no trusted key".into(),
                    };
                    next_status(p, Outcome::Planned(&plan, None), now)
                }
                Seen::RolledOut {
                    ready,
                    deadline_exceeded,
                    rolled_back,
                } => {
                    let applied = Rollout {
                        ready_replicas: *ready,
                        available_replicas: *ready,
                        deadline_exceeded: *deadline_exceeded,
                        rolled_back_from: rolled_back.then(|| "rbad".to_string()),
                        ..applied(1)
                    };
                    next_status(p, Outcome::Planned(&ok_plan(), Some(&applied)), now)
                }
            }
        }

        proptest! {
            #[test]
            fn every_status_transition_keeps_the_promises(
                steps in prop::collection::vec((seen(), any::<bool>(), any::<bool>()), 1..12)
            ) {
                let mut p = plugin(HELLO);
                let mut t = 1_000_000;
                for (seen, enabled, edited) in steps {
                    // A spec change between two reconciles (enabled flipped or not): a new
                    // generation every condition must describe.
                    if edited || p.spec.enabled != enabled {
                        p.metadata.generation = Some(p.metadata.generation.unwrap_or(0) + 1);
                    }
                    p.spec.enabled = enabled;
                    t += 7;
                    let now = Timestamp::from_second(t).expect("time");
                    let prev = p.status.clone().unwrap_or_default();
                    let next = step(&p, &seen, now);

                    // The same world seen again later writes nothing (no hot loop, no Event).
                    let mut again = p.clone();
                    again.status = Some(next.clone());
                    let later = Timestamp::from_second(t + 3).expect("time");
                    prop_assert_eq!(&step(&again, &seen, later), &next);

                    // The kill switch holds whatever the registry or the rollout say: nothing
                    // runs or may call the host API as a disabled plugin (nor a quarantined one).
                    if !p.spec.enabled || next.phase == Some(PluginPhase::Quarantined) {
                        prop_assert!(next.permissions.is_empty(), "{:?}", next);
                        prop_assert_eq!(next.replicas, Some(0), "{:?}", next);
                    }
                    if !p.spec.enabled {
                        prop_assert!(
                            matches!(next.phase, Some(PluginPhase::Disabled | PluginPhase::Quarantined)),
                            "{:?}", next
                        );
                    }
                    if let Seen::FetchFailed { reason, revoked } = &seen {
                        // A revoked signer stops what runs, whatever else is true.
                        if *revoked {
                            prop_assert_eq!(next.phase, Some(PluginPhase::Quarantined));
                        } else if !p.spec.enabled {
                            // Switched off as asked, the registry down or not.
                            prop_assert_eq!(next.phase, Some(PluginPhase::Disabled));
                        } else if prev.last_good_revision.is_some() {
                            // What served keeps serving through a failure of the new spec.
                            prop_assert_eq!(next.phase, Some(PluginPhase::Degraded));
                        } else if RETRIED_REASONS.contains(reason) {
                            // "Not now" is never the terminal-looking Failed.
                            prop_assert_eq!(next.phase, Some(PluginPhase::Pending));
                        }
                    }
                    // A revision that served is never forgotten.
                    if prev.last_good_revision.is_some() {
                        prop_assert!(next.last_good_revision.is_some());
                    }
                    // Ready=True means serving (or disabled as asked); Active means Ready.
                    let ready = next.conditions.iter().find(|c| c.type_ == READY);
                    let ready_true = ready.is_some_and(|c| c.status == "True");
                    if ready_true {
                        prop_assert!(
                            matches!(next.phase, Some(PluginPhase::Active | PluginPhase::Disabled)),
                            "{:?}", next
                        );
                    }
                    if next.phase == Some(PluginPhase::Active) {
                        prop_assert!(ready_true, "{:?}", next);
                    }
                    // Every condition describes this generation; its transition time moves only
                    // when its status does.
                    prop_assert_eq!(next.observed_generation, p.metadata.generation);
                    for c in &next.conditions {
                        prop_assert_eq!(c.observed_generation, p.metadata.generation);
                        if let Some(old) = prev.conditions.iter().find(|o| o.type_ == c.type_)
                            && old.status == c.status
                        {
                            prop_assert_eq!(&old.last_transition_time, &c.last_transition_time);
                        }
                    }
                    // Records only of revisions the status still names.
                    for r in &next.revisions {
                        prop_assert!(
                            next.current_revision.as_deref() == Some(r.revision.as_str())
                                || next.last_good_revision.as_deref() == Some(r.revision.as_str())
                        );
                    }
                    p.status = Some(next);
                }
            }
        }
    }
}
