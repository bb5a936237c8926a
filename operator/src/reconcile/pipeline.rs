//! The reconcile of one Plugin, top-down: fetch → verify → plan → ownership → apply → status. Each
//! step owns its output type: [`crate::plan::Fetched`] (or a [`crate::status::FetchFailure`] whose
//! [`crate::status::RunningRevision`] says what happens to what runs), [`crate::plan::Plan`], the
//! objects in the way ([`crate::ownership::NotOwned`]), [`crate::status::Rollout`], then the next
//! [`airlock_crds::plugin::PluginStatus`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use airlock_crds::{Plugin, PluginStorage, PluginTrustPolicy};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::{info, warn};

use super::watches::Watches;
use super::{Context, Error, apply, certificates, ownership, record};
use crate::plan::{self, NO_TRUST_POLICY, Plan};
use crate::status::{self, Outcome};
use crate::{fetch, policy, running, trust};
use airlock_crds::plugin::RevisionRecord;

/// Why a revision is scaled to zero by a revoked signer or today's policies (logged).
const NOT_ALLOWED_ANY_MORE: &str = "the running revision may not run any more";
/// Why a switched-off Plugin (spec.enabled: false, auto-disabled) is scaled to zero (logged).
const SWITCHED_OFF: &str = "the plugin is switched off";

/// One reconcile of `plugin`: fetch → verify → plan → ownership → apply → status.
pub(super) async fn run(
    plugin: &Plugin,
    ctx: &Context,
    watches: &Watches,
) -> Result<Action, Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;
    let namespace = ctx.namespaces.get(&ObjectRef::new(&ns));
    if namespace
        .as_ref()
        .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    {
        // The namespace goes with everything in it, and refuses every create meanwhile (children,
        // Events): writing would only fail and retry. The Plugin's own deletion follows.
        return Ok(Action::await_change());
    }

    // 1. Fetch: namespace labels and policies from the watch caches, then the bundle and image
    //    (2. verify happens inside: signatures are checked before the bundle is parsed).
    let ns_labels: BTreeMap<String, String> =
        namespace.map(|n| n.labels().clone()).unwrap_or_default();
    // Deciding with an empty policy cache would block every plugin for a moment: wait for it
    // (at once after the first list; a list that takes longer is retried, not waited on).
    // The same for the Deployments: what runs is judged by them.
    for (what, listed) in [
        ("trust policy", &watches.policies_listed),
        ("Deployment", &watches.deployments_listed),
    ] {
        let mut listed = listed.clone();
        let ready = tokio::time::timeout(Duration::from_secs(10), listed.wait_for(|l| *l));
        if !matches!(ready.await, Ok(Ok(_))) {
            info!("the {what} cache is not filled yet; retrying in 5s");
            return Ok(Action::requeue(Duration::from_secs(5)));
        }
    }
    let policies: Vec<PluginTrustPolicy> = watches
        .policies
        .state()
        .iter()
        .map(|p| p.as_ref().clone())
        .collect();
    // Trust from this release's shard only; revocations from every policy of the cluster.
    let governing = policy::governing(&policies, &ns_labels, &ctx.shard);
    let keys = trust::trusted_keys(&governing, &policies);
    // Nothing is downloaded for a namespace no policy governs: a tenant cannot make the operator
    // fetch (or unpack) anything before an admin decided what may run there.
    let fetched = if governing.is_empty() {
        Err(status::FetchFailure::verified(
            NO_TRUST_POLICY,
            format!(
                "no PluginTrustPolicy governs namespace {ns}; nothing was downloaded. Apply one that selects it (see examples/trust-policy.yaml)"
            ),
        ))
    } else {
        let grants = crate::registry_auth::grants(&governing, &policies);
        let inputs = fetch::Inputs {
            client,
            registry: &ctx.registry,
            config_maps: &watches.bundle_config_maps,
            keys: &keys,
            grants: &grants,
            max_bundle_bytes: ctx.max_bundle_bytes,
        };
        fetch::fetch(&inputs, plugin).await
    };
    let judge = |record: &RevisionRecord| {
        running::check(
            record,
            &keys,
            |level| policy::limits(&governing, level),
            &ctx.build.cluster_cidrs,
        )
    };
    // 3. Plan (pure), under the limits of the trust level the signer earned.
    let planned = fetched.as_ref().map(|f| {
        let limits = policy::limits(&governing, signed_level(f)).map(|mut l| {
            l.cluster_cidrs = ctx.build.cluster_cidrs.clone();
            l
        });
        plan::plan(plugin, f, limits.as_ref())
    });
    // 3'. A rollout below the version that last wrote the plugin's storage is refused (the
    //     older code may misread what the newer one stored), unless the Plugin allows it.
    let planned = match planned {
        Ok(plan) if !plugin.spec.allow_downgrade && plan.rolls_out_new_revision(plugin) => {
            // A failed read blocks only the new revision, never the rest of the reconcile (a
            // kill switch or a revocation below must still act).
            let verdict = match storage_written_by(plugin, ctx, &ns).await {
                Ok(written_by) => plan::downgrade(plugin, written_by.as_deref()),
                Err(e) => Some(plan::storage_unreadable(plugin, &e.to_string())),
            };
            Ok(match verdict {
                Some(refused) => plan.refuse(refused),
                None => plan,
            })
        }
        other => other,
    };
    // 3a. What runs, judged under today's policies whatever the fetch said: a revoked or
    //     no-longer-allowed revision is stopped (below, once it is known whether another one
    //     replaces it): a tenant who breaks the spec first must not keep it running. The plan's
    //     record of the same revision is the fresher one.
    let planned_record = planned.as_ref().ok().and_then(|p| p.record.as_ref());
    let stop = running_records(plugin, planned_record)
        .into_iter()
        .find_map(|r| judge(&r).map(|stop| (r.revision, stop)));
    let stopped = stop.as_ref().map(|(r, _)| r.as_str());
    let mut rolled_out = false;
    // Whether this reconcile already scaled the Plugin's Deployment to zero.
    let mut scaled_to_zero = false;

    // Whether nothing of the spec is applied and what ran before goes on serving.
    let mut serves_as_before = false;
    let (next, requeue) = match planned {
        Err(failure) => {
            if failure.running == status::RunningRevision::Quarantined {
                apply::quarantine(plugin, ctx, watches, NOT_ALLOWED_ANY_MORE).await?;
                scaled_to_zero = true;
            } else {
                serves_as_before = true;
            }
            (
                status::next_status(plugin, Outcome::FetchFailed(failure), status::now()),
                Duration::from_secs(30),
            )
        }
        Ok(plan) => {
            // 3b. Ownership: an object the revision would write that exists and is not this
            //     Plugin's (someone's NetworkPolicy named like the Plugin) stops the revision
            //     whole: nothing is applied, the status names the object.
            // A Plugin that does not run and never ran writes no child (crate::stopped): nothing
            // to look at.
            let mut not_owned = match &plan.rollout {
                Some(_) if apply::writes_children(plugin, watches) => {
                    ownership::not_owned(plugin, ctx, watches).await?
                }
                _ => Vec::new(),
            };
            let mut applied = None;
            if not_owned.is_empty() {
                // 4. Apply: the revision's children (the plugin's identity first), or a rollback.
                // A revision just stopped is not rolled out again by the same reconcile. Its
                // Secrets go first, and the API server refuses one that is not the Plugin's
                // (they are not read beforehand): then nothing else is written.
                if let Some(rollout) = plan
                    .rollout
                    .as_ref()
                    .filter(|r| stopped != Some(r.revision.as_str()))
                {
                    rolled_out = true;
                    match apply::roll_out(plugin, rollout, ctx, watches, &judge).await {
                        Ok(a) => applied = Some(a),
                        Err(Error::NotOwned(secret)) => {
                            rolled_out = false;
                            not_owned.push(secret);
                        }
                        Err(e) => {
                            // The kill switch holds when the stopped revision cannot be
                            // applied: what runs stops while the error is retried.
                            if !plugin.should_run()
                                && let Err(stop) =
                                    apply::quarantine(plugin, ctx, watches, SWITCHED_OFF).await
                            {
                                tracing::warn!(error = %stop, "could not scale the switched-off plugin to zero");
                            }
                            return Err(e);
                        }
                    }
                }
            }
            // Blocked, or an object in the way: nothing of the revision was applied.
            serves_as_before = plan.rollout.is_none() || !not_owned.is_empty();
            if !not_owned.is_empty() {
                let next = status::next_status(
                    plugin,
                    Outcome::NotOwned(&plan, &not_owned),
                    status::now(),
                );
                (next, crate::ownership::recheck_after(&not_owned))
            } else {
                let next = status::next_status(
                    plugin,
                    Outcome::Planned(&plan, applied.as_ref()),
                    status::now(),
                );
                (next, requeue_after(&plan, applied.as_ref()))
            }
        }
    };
    // A stopped revision's pods stop now: only its ReplicaSets when another revision was just
    // rolled out (its old pods would otherwise serve until the new ones are ready), else the
    // whole Deployment. Unless a revision that passes replaced it, the status says so.
    let mut next = next;
    if let Some((revision, stop)) = &stop {
        info!(%revision, reason = stop.reason, "a revision that may not run any more is stopped");
        if rolled_out {
            apply::stop_revision(plugin, revision, ctx, watches).await?;
        } else {
            apply::quarantine(plugin, ctx, watches, NOT_ALLOWED_ANY_MORE).await?;
            scaled_to_zero = true;
        }
        let current = next.current_revision.as_deref() == Some(revision.as_str());
        if !current && next.last_good_revision.as_deref() == Some(revision.as_str()) {
            // Never again a revision to return to.
            next.last_good_revision = None;
            next.revisions.retain(|r| &r.revision != revision);
        }
        if current || !rolled_out {
            next = status::stopped(plugin, next, stop, status::now());
        }
    }
    // What keeps serving keeps a valid certificate: a spec that cannot be rolled out for longer
    // than two thirds of the certificate's lifetime must not stop the running revision at its
    // end. Only a revision this operator rolled out counts (its status, which tenants cannot
    // write, names it), never a Deployment a tenant made to look like the Plugin's: a Plugin
    // never verified gets no certificate. A failed renewal is retried at the next look, the
    // status written meanwhile.
    let rolled_out_before = plugin
        .status
        .as_ref()
        .is_some_and(|s| s.current_revision.is_some());
    if serves_as_before
        && rolled_out_before
        && stop.is_none()
        && plugin.should_run()
        && apply::asks_for_pods(plugin, watches)
        && let Err(e) = certificates::renew_certificate(plugin, ctx, watches).await
    {
        warn!(error = %e, "could not renew the certificate of the plugin that keeps serving; retrying at the next look");
    }
    // The kill switch (spec.enabled: false, the router's auto-disable) holds whatever the
    // registry, the verification or the objects in the way said: with no rollout to set zero
    // replicas, what runs is scaled to zero here (a no-op once it is).
    if !plugin.should_run() && !rolled_out && !scaled_to_zero {
        apply::quarantine(plugin, ctx, watches, SWITCHED_OFF).await?;
    }
    // The certificate this process issued or kept, for the next operator to keep.
    if let Some(record) = ctx
        .caches
        .certificate_record(&plugin.uid().unwrap_or_default())
    {
        next.certificate = Some(record);
    }
    // 5. Status, Events and audit records, from what was applied.
    record::record_status(plugin, next, ctx).await?;
    // Back in time to renew the certificate of a running plugin, a second after it comes due
    // (one already due was renewed above or failed to be: the usual look retries it, never a
    // tight loop).
    let uid = plugin.uid().unwrap_or_default();
    let renewal = plugin
        .should_run()
        .then(|| ctx.caches.certificate_renewal_in(&uid, Instant::now()))
        .flatten()
        .filter(|r| !r.is_zero())
        .map_or(requeue, |r| requeue.min(r + Duration::from_secs(1)));
    Ok(Action::requeue(renewal))
}

/// The trust level the fetched revision's signers earned.
fn signed_level(fetched: &plan::Fetched) -> airlock_crds::TrustLevel {
    fetched
        .signed_by
        .as_ref()
        .map(|s| s.level)
        .unwrap_or(airlock_crds::TrustLevel::Untrusted)
}

/// The plugin version that last wrote `plugin`'s storage (PluginStorage `status.writtenBy`);
/// `None` when it has no storage or none was recorded (written before versions were recorded).
async fn storage_written_by(
    plugin: &Plugin,
    ctx: &Context,
    ns: &str,
) -> Result<Option<String>, Error> {
    let storage = kube::Api::<PluginStorage>::namespaced(ctx.client.clone(), ns)
        .get_opt(&plugin.name_any())
        .await?;
    Ok(storage.and_then(|s| s.status).and_then(|s| s.written_by))
}

/// The records of the revisions whose pods may run: the current one (`planned` when the plan
/// of the current spec made that same revision: the fresher record) and the last good one,
/// whose pods serve while a newer revision is not ready. A revision rolled out by an Airlock
/// that kept no records has none (the next successful fetch records it).
fn running_records(plugin: &Plugin, planned: Option<&RevisionRecord>) -> Vec<RevisionRecord> {
    let Some(status) = plugin.status.as_ref() else {
        return Vec::new();
    };
    let recorded = |revision: &str| {
        planned
            .filter(|r| r.revision == revision)
            .or_else(|| status.revisions.iter().find(|r| r.revision == revision))
            .cloned()
    };
    let mut out: Vec<RevisionRecord> = status
        .current_revision
        .iter()
        .filter_map(|r| recorded(r))
        .collect();
    if let Some(good) = status
        .last_good_revision
        .as_deref()
        .filter(|g| status.current_revision.as_deref() != Some(*g))
        .and_then(recorded)
    {
        out.push(good);
    }
    out
}

/// How often a plugin whose pods are not all ready is looked at besides its Deployment's events.
const NOT_READY_RECHECK: Duration = Duration::from_secs(120);

fn requeue_after(plan: &Plan, applied: Option<&status::Rollout>) -> Duration {
    if let Some(at) = applied.and_then(|a| a.recheck_after) {
        return at;
    }
    match (plan.rollout.as_ref(), applied) {
        // Changes of the owned Deployment wake us up (its pods becoming ready, its progress
        // deadline passing): this is only a safety net. It was 15 s: at 1,000 Plugins rolling
        // out at once those polls alone asked for ≈ 65 reconciles/s, several times what the
        // operator could run, and new Plugins waited behind them for minutes (KWOK bench,
        // 2026-12-02: ≈ 19 reconciles per Plugin, 416 of 1,000 without a status after 11 min).
        // Pods of a revision that served and stay unready are told once the progress deadline
        // has passed (status::PODS_NOT_READY): nothing else wakes us then.
        (Some(_), Some(a)) if a.ready_replicas < a.desired_replicas => {
            a.progress_deadline.map_or(NOT_READY_RECHECK, |d| {
                (d + Duration::from_secs(1)).min(NOT_READY_RECHECK)
            })
        }
        (Some(_), _) => Duration::from_secs(300),
        // Blocked: the user must change something; spec and policy changes wake us up.
        (None, _) => Duration::from_secs(300),
    }
}
