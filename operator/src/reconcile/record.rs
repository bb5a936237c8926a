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

/// Audit records for every transition, an Event when there is something to tell
/// ([`status::event`]), then the status itself — only if it changed.
pub(super) async fn record_status(
    plugin: &Plugin,
    next: PluginStatus,
    ctx: &Context,
) -> Result<(), Error> {
    let uid = plugin.uid().unwrap_or_default();
    // status.autoDisabled is the router's: never part of what is compared or applied here.
    let prev = ctx
        .caches
        .last_written(&uid)
        .or_else(|| plugin.status.clone())
        .map(|s| PluginStatus {
            auto_disabled: None,
            ..s
        });
    if prev.as_ref() == Some(&next) {
        return Ok(());
    }
    let transitions = status::transitions(prev.as_ref(), &next);
    let told = ctx.caches.told(&uid);
    let told_before = told.clone().unwrap_or_else(|| prev.clone());
    let now = Timestamp::now();
    for t in &transitions {
        (ctx.audit)(&audit::record(plugin, &next, t, now));
    }
    let event = status::event(told_before.as_ref(), prev.as_ref(), &next).map(|t| Event {
        type_: if t.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: t.reason.clone(),
        note: Some(truncate(&t.message, 1000)),
        action: t.condition.clone(),
        secondary: None,
    });
    // The Event goes out beside the status write, not before it: one request's wait less per
    // status change. An Event is a courtesy (the status and the audit record carry the same
    // facts): a failure is logged, never retried.
    let publish = async {
        if let Some(event) = &event
            && let Err(e) = ctx.recorder.publish(event, &plugin.object_ref(&())).await
        {
            warn!(error = %e, "could not publish an Event");
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
    let ((), written) = tokio::join!(publish, write);
    written?;
    ctx.metrics.set_phase(plugin, &next);
    // Only what status::event compares is kept (a status with its revision records is
    // several KiB; at 1,000 Plugins that adds up in the operator's memory).
    let what_event_reads = |s: &PluginStatus| PluginStatus {
        phase: s.phase,
        conditions: s.conditions.clone(),
        current_revision: s.current_revision.clone(),
        ..Default::default()
    };
    if event.is_some() {
        ctx.caches.tell(&uid, Some(what_event_reads(&next)));
    } else if told.is_none() {
        // Untold progress: the next Event tells what changed since the status before it.
        ctx.caches.tell(&uid, prev.as_ref().map(what_event_reads));
    }
    ctx.caches.written(&uid, next);
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Deletion (the Plugin's delete event): its children go with it (garbage collection); the audit
/// record and Event say so, and everything remembered about it is dropped.
pub(super) async fn cleanup(plugin: &Plugin, ctx: &Context) {
    let status = plugin.status.clone().unwrap_or_default();
    let t = status::Transition {
        condition: "Deleted".into(),
        status: "True".into(),
        reason: "Deleted".into(),
        message: "the Plugin was deleted: its pods, Service, NetworkPolicy, ServiceAccount and bundle Secrets are removed".into(),
        warning: false,
    };
    (ctx.audit)(&audit::record(plugin, &status, &t, Timestamp::now()));
    let event = Event {
        type_: EventType::Normal,
        reason: "Deleted".into(),
        note: Some(t.message.clone()),
        action: "Delete".into(),
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
