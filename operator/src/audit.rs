//! The audit stream: one JSON record per lifecycle transition of a plugin (who, what, when, why,
//! digests, trust level), written as a line to the operator's stdout where log collectors pick it
//! up. Records are written before the status that reflects them, so a crash in between repeats a
//! record rather than losing one.

use std::io::Write;

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginStatus;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::json;

use crate::status::Transition;

/// Who performs the transitions Airlock records.
pub const ACTOR: &str = "airlock-operator";

/// Builds the record of one transition (pure, so tests can read it).
pub fn record(
    plugin: &Plugin,
    status: &PluginStatus,
    transition: &Transition,
    now: Timestamp,
) -> serde_json::Value {
    json!({
        "stream": "airlock.audit",
        "time": now.to_string(),
        "actor": ACTOR,
        "plugin": {
            "namespace": plugin.namespace(),
            "name": plugin.name_any(),
            "uid": plugin.uid(),
            "generation": plugin.metadata.generation,
        },
        "event": transition.condition,
        "status": transition.status,
        "reason": transition.reason,
        "message": transition.message,
        "imageDigest": status.image_digest,
        "bundleDigest": status.bundle_digest,
        "trustLevel": status.trust_level,
        "revision": status.current_revision,
    })
}

/// The record of a plugin the router auto-disabled (pure).
pub fn auto_disabled(
    route: &crate::router::table::Route,
    reason: &str,
    actor: &str,
    now: Timestamp,
) -> serde_json::Value {
    json!({
        "stream": "airlock.audit",
        "time": now.to_string(),
        "actor": actor,
        "plugin": {
            "namespace": route.plugin.namespace,
            "name": route.plugin.name,
            "uid": route.uid,
        },
        "event": "AutoDisabled",
        "status": "True",
        "reason": "AutoDisabled",
        "message": format!("auto-disabled after {reason}; calls are refused and its pods scaled to zero until an admin re-enables it"),
        "version": route.version,
    })
}

/// The record of a host API call the router refused for a missing permission (pure).
pub fn host_call_denied(
    plugin: &crate::router::table::PluginKey,
    holder: &crate::router::table::Holder,
    denied: &crate::host::Denied,
    invocation_id: &str,
    actor: &str,
    now: Timestamp,
) -> serde_json::Value {
    json!({
        "stream": "airlock.audit",
        "time": now.to_string(),
        "actor": actor,
        "plugin": {
            "namespace": plugin.namespace,
            "name": plugin.name,
            "uid": holder.uid,
        },
        "event": "HostCallDenied",
        "status": "True",
        "reason": "PermissionDenied",
        "call": denied.call.as_str(),
        "permissions": holder.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
        "invocationId": invocation_id,
        "message": denied.to_string(),
        "version": holder.version,
    })
}

/// Writes one record as a single line. Stdout is line-buffered per write here, so concurrent
/// reconciles never interleave within a record.
pub fn emit(record: &serde_json::Value) {
    let line = format!("{record}\n");
    let mut out = std::io::stdout().lock();
    // The audit stream is stdout; if it is gone there is nowhere left to report to.
    let _ = out.write_all(line.as_bytes());
    let _ = out.flush();
}
