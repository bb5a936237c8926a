//! The reconcile of one Plugin, top-down: fetch → verify → plan → ownership → apply → status. Each
//! step owns its output type: [`crate::plan::Fetched`] (or a [`crate::status::FetchFailure`] whose
//! [`crate::status::RunningRevision`] says what happens to what runs), [`crate::plan::Plan`], the
//! objects in the way ([`crate::ownership::NotOwned`]), [`crate::status::Rollout`], then the next
//! [`airlock_crds::plugin::PluginStatus`].

use std::collections::BTreeMap;
use std::time::Duration;

use airlock_crds::{Plugin, PluginTrustPolicy};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use tracing::info;

use super::watches::Watches;
use super::{Context, Error, apply, ownership, record};
use crate::plan::{self, Plan};
use crate::status::{self, Outcome};
use crate::{fetch, policy, trust};

/// One reconcile of `plugin`: fetch → verify → plan → ownership → apply → status.
pub(super) async fn run(
    plugin: &Plugin,
    ctx: &Context,
    watches: &Watches,
) -> Result<Action, Error> {
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let client = &ctx.client;

    // 1. Fetch: namespace labels and policies from the watch caches, then the bundle and image
    //    (2. verify happens inside: signatures are checked before the bundle is parsed).
    let ns_labels: BTreeMap<String, String> = ctx
        .namespaces
        .get(&ObjectRef::new(&ns))
        .map(|n| n.labels().clone())
        .unwrap_or_default();
    // Deciding with an empty policy cache would block every plugin for a moment: wait for it
    // (at once after the first list; a list that takes longer is retried, not waited on).
    let mut listed = watches.policies_listed.clone();
    let ready = tokio::time::timeout(Duration::from_secs(10), listed.wait_for(|l| *l));
    if !matches!(ready.await, Ok(Ok(_))) {
        info!("the trust policy cache is not filled yet; retrying in 5s");
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let policies: Vec<PluginTrustPolicy> = watches
        .policies
        .state()
        .iter()
        .map(|p| p.as_ref().clone())
        .collect();
    let governing = policy::governing(&policies, &ns_labels);
    let keys = trust::trusted_keys(&governing, &policies);
    let fetched = fetch::fetch(client, &ctx.registry, plugin, &keys, ctx.max_bundle_bytes).await;

    let (next, requeue) = match &fetched {
        Err(failure) => {
            if failure.running == status::RunningRevision::Quarantined {
                apply::quarantine(plugin, ctx, watches).await?;
            }
            (
                status::next_status(plugin, Outcome::FetchFailed(failure), status::now()),
                Duration::from_secs(30),
            )
        }
        Ok(fetched) => {
            // 3. Plan (pure), under the limits of the trust level the signer earned.
            let level = fetched
                .signed_by
                .as_ref()
                .map(|(_, l)| *l)
                .unwrap_or(airlock_crds::TrustLevel::Untrusted);
            let limits = policy::limits(&governing, level).map(|mut l| {
                l.cluster_cidrs = ctx.build.cluster_cidrs.clone();
                l
            });
            let plan = plan::plan(plugin, fetched, limits.as_ref());
            // 3b. Ownership: an object the revision would write that exists and is not this
            //     Plugin's (someone's NetworkPolicy named like the Plugin) stops the revision
            //     whole: nothing is applied, the status names the object.
            let not_owned = match &plan.rollout {
                Some(rollout) => ownership::not_owned(plugin, rollout, ctx, watches).await?,
                None => Vec::new(),
            };
            if !not_owned.is_empty() {
                let next = status::next_status(
                    plugin,
                    Outcome::NotOwned(&plan, &not_owned),
                    status::now(),
                );
                (next, crate::ownership::recheck_after(&not_owned))
            } else {
                // 4. Apply: the revision's children (the plugin's identity first), or a rollback.
                let applied = match &plan.rollout {
                    Some(rollout) => Some(apply::roll_out(plugin, rollout, ctx, watches).await?),
                    None => None,
                };
                let next = status::next_status(
                    plugin,
                    Outcome::Planned(&plan, applied.as_ref()),
                    status::now(),
                );
                (next, requeue_after(&plan, applied.as_ref()))
            }
        }
    };
    // 5. Status, Events and audit records, from what was applied.
    record::record_status(plugin, next, ctx).await?;
    Ok(Action::requeue(requeue))
}

fn requeue_after(plan: &Plan, applied: Option<&status::Rollout>) -> Duration {
    match (plan.rollout.as_ref(), applied) {
        // Changes of the owned Deployment wake us up; this is only a safety net.
        (Some(_), Some(a)) if a.ready_replicas < a.desired_replicas => Duration::from_secs(15),
        (Some(_), _) => Duration::from_secs(300),
        // Blocked: the user must change something; spec and policy changes wake us up.
        (None, _) => Duration::from_secs(300),
    }
}
