//! The status step: conditions written with server-side apply only when they changed, one audit
//! record per transition and an Event per outcome ([`status::event`]); and the record of a
//! deletion.

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginStatus;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use super::{Context, Error};
use crate::build::FIELD_MANAGER;
use crate::{audit, status};
use airlock_core::shard::SHARD_LABEL;

/// Audit records for every transition, an Event when there is something to tell
/// ([`status::event`]), then the status itself — only if it changed or its last write failed.
pub(super) async fn record_status(
    plugin: &Plugin,
    next: PluginStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let uid = plugin.uid().unwrap_or_default();
    // status.autoDisabled and status.health are the router's: never part of what is compared
    // or applied here.
    let prev = ctx
        .caches
        .last_written(&uid)
        .or_else(|| plugin.status.clone())
        .map(|s| PluginStatus {
            auto_disabled: None,
            health: None,
            ..s
        });
    let next = PluginStatus {
        auto_disabled: None,
        health: None,
        ..next
    };
    // What the audit stream already has: a status recorded before a write that failed (the API
    // server went away) is not recorded again when the write is tried again. Its write is tried
    // again even when the status to write is the one written before it: the failed write may
    // have landed all the same (its answer lost), and the audit stream is brought back from the
    // status it recorded.
    let unwritten = ctx.caches.recorded_unwritten(&uid);
    if unwritten.is_none() && prev.as_ref() == Some(&next) {
        return Ok(());
    }
    let recorded = unwritten.or_else(|| prev.clone());
    let transitions = status::transitions(recorded.as_ref(), &next);
    let told = ctx.caches.told(&uid);
    let told_before = told.clone().unwrap_or_else(|| prev.clone());
    let now = Timestamp::now();
    for t in &transitions {
        (ctx.audit)(&audit::record(plugin, &next, t, now));
    }
    ctx.caches.recorded(&uid, what_event_reads(&next));
    let event = status::event(told_before.as_ref(), recorded.as_ref(), &next).map(|t| Event {
        type_: if t.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: t.reason.clone(),
        note: Some(airlock_runtime::events::note(&t.message)),
        action: t.condition.clone(),
        secondary: None,
    });
    // The Event goes out beside the status write, not before it: one request's wait less per
    // status change. An Event is a courtesy (the status and the audit record carry the same
    // facts): a failure is logged.
    let publish = async {
        match &event {
            Some(event) => match ctx.recorder.publish(event, &plugin.object_ref(&())).await {
                Ok(()) => true,
                Err(e) => {
                    warn!(error = %e, "could not publish an Event");
                    false
                }
            },
            None => false,
        }
    };
    if !transitions.is_empty() {
        info!(phase = ?next.phase, "status changed");
    }
    let ns = plugin.namespace().ok_or(Error::NoNamespace)?;
    let patch = json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "Plugin",
        "status": next,
    });
    let api = Api::<Plugin>::namespaced(ctx.client.clone(), &ns);
    let (name, params, patch) = (
        plugin.name_any(),
        PatchParams::apply(FIELD_MANAGER).force(),
        Patch::Apply(&patch),
    );
    let write = api.patch_status(&name, &params, &patch);
    let (published, written) = tokio::join!(publish, write);
    // An Event is out once published, whether or not the status write beside it succeeded: a
    // retried write does not tell it again. One that could not be published is told again only
    // with that retried write (a courtesy: once the status stands, it is not retried).
    if published || (event.is_some() && written.is_ok()) {
        ctx.caches.tell(&uid, Some(what_event_reads(&next)));
    } else if event.is_none() && told.is_none() {
        // Untold progress: the next Event tells what changed since the status before it.
        ctx.caches.tell(&uid, prev.as_ref().map(what_event_reads));
    }
    written?;
    ctx.metrics.set_phase(plugin, &next);
    ctx.caches.written(&uid, next);
    Ok(())
}

/// What the status's Events and audit records compare ([`status::event`],
/// [`status::transitions`]): a status with its revision records is several KiB, and at 1,000
/// Plugins what is kept per Plugin adds up in the operator's memory.
fn what_event_reads(s: &PluginStatus) -> PluginStatus {
    PluginStatus {
        phase: s.phase,
        conditions: s.conditions.clone(),
        current_revision: s.current_revision.clone(),
        ..Default::default()
    }
}

/// Reason of the record made when a Plugin leaves this release's shard.
const SHARD_CHANGED: &str = "ShardChanged";

/// `Some(its shard label now)` when the Plugin behind a delete event still exists (same uid, not
/// being deleted) in a shard this release does not serve; `None` when it is gone — or cannot be
/// read, which is then taken as the deletion the event says.
async fn moved_to(plugin: &Plugin, ctx: &Context) -> Option<Option<String>> {
    let api: Api<Plugin> = Api::namespaced(ctx.client.clone(), &plugin.namespace()?);
    let now = match api.get_opt(&plugin.name_any()).await {
        Ok(now) => now?,
        Err(e) => {
            warn!(error = %e, "could not read the Plugin back after its delete event; recording a deletion");
            return None;
        }
    };
    if now.uid() != plugin.uid() || now.meta().deletion_timestamp.is_some() {
        return None;
    }
    let label = now.labels().get(SHARD_LABEL).cloned();
    (!ctx.shard.serves(label.as_deref())).then_some(label)
}

/// The Plugin's delete event: either it was deleted (its children go with it, by garbage
/// collection) or it was relabelled into another release's shard (the watch selects by the
/// label, so it leaves as a delete); the audit record and Event say which, and everything
/// remembered about it is dropped either way.
pub(super) async fn cleanup(plugin: &Plugin, ctx: &Context) {
    let status = plugin.status.clone().unwrap_or_default();
    let t = match moved_to(plugin, ctx).await {
        None => status::Transition {
            condition: "Deleted".into(),
            status: "True".into(),
            reason: "Deleted".into(),
            message: "the Plugin was deleted: its pods, Service, NetworkPolicy, ServiceAccount and bundle Secrets are removed".into(),
            warning: false,
        },
        Some(shard) => status::Transition {
            condition: "Shard".into(),
            status: "True".into(),
            reason: SHARD_CHANGED.into(),
            message: format!(
                "the Plugin's label {SHARD_LABEL} is now {}: the Airlock release of that shard serves it from now on, not this one (shard {})",
                shard.map_or("absent".to_string(), |s| format!("{s:?}")),
                ctx.shard
            ),
            warning: false,
        },
    };
    (ctx.audit)(&audit::record(plugin, &status, &t, Timestamp::now()));
    let event = Event {
        type_: EventType::Normal,
        reason: t.reason.clone(),
        note: Some(t.message.clone()),
        action: if t.reason == SHARD_CHANGED {
            "Release".into()
        } else {
            "Delete".into()
        },
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &plugin.object_ref(&())).await {
        warn!(error = %e, "could not publish an Event");
    }
    // Everything remembered about this Plugin goes with it (by uid).
    let uid = plugin.uid().unwrap_or_default();
    ctx.metrics.forget(plugin);
    ctx.caches.forget(&uid);
    ctx.registry.forget(&uid);
}
