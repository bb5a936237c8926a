//! The router's audit records (pure builders): a plugin it auto-disabled, a host-API call it
//! refused. Written to the audit stream with [`airlock_runtime::audit::emit`], like the
//! operator's lifecycle records.

use airlock_core::PluginKey;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::host::Denied;
use crate::table::{Holder, Route};

pub use airlock_runtime::audit::emit;

/// The fields every record of the router has: who acted on which plugin, when, and what.
fn record(actor: &str, now: Timestamp, plugin: &PluginKey, uid: &str, event: &str) -> Value {
    json!({
        "stream": airlock_runtime::audit::STREAM,
        "time": now.to_string(),
        "actor": actor,
        "plugin": {"namespace": plugin.namespace, "name": plugin.name, "uid": uid},
        "event": event,
        "status": "True",
    })
}

/// Adds `fields` to `record`.
fn with(mut record: Value, fields: Value) -> Value {
    if let (Some(r), Value::Object(f)) = (record.as_object_mut(), fields) {
        r.extend(f);
    }
    record
}

/// The record of a plugin the router auto-disabled (pure).
pub fn auto_disabled(route: &Route, reason: &str, actor: &str, now: Timestamp) -> Value {
    with(
        record(actor, now, &route.plugin, &route.uid, "AutoDisabled"),
        json!({
            "reason": "AutoDisabled",
            "message": format!("auto-disabled after {reason}; calls are refused and its pods scaled to zero until an admin re-enables it"),
            "version": route.version,
        }),
    )
}

/// The record of a host API call the router refused for a missing permission (pure).
pub fn host_call_denied(
    plugin: &PluginKey,
    holder: &Holder,
    denied: &Denied,
    invocation_id: &str,
    actor: &str,
    now: Timestamp,
) -> Value {
    with(
        record(actor, now, plugin, &holder.uid, "HostCallDenied"),
        json!({
            "reason": "PermissionDenied",
            "call": denied.call.as_str(),
            "permissions": holder.permissions.iter().map(|p| p.as_str()).collect::<Vec<_>>(),
            "invocationId": invocation_id,
            "message": denied.to_string(),
            "version": holder.version,
        }),
    )
}
