//! The router's audit records (pure builders): a plugin it auto-disabled, a host-API call it
//! refused, a caller of the HookRouter API it refused. Written to the audit stream with [`airlock_runtime::audit::emit`], like the
//! operator's lifecycle records.

use airlock_core::PluginKey;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::callers::gate::{Denial, Rpc};
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

/// The record of a refused caller of the HookRouter API (pure): who (the ServiceAccount, when it
/// got that far), which call of what, why (`reason`), and the message the caller got. Never the
/// token: no [`Denial`] holds it.
pub fn caller_denied(
    rpc: Rpc,
    denial: &Denial,
    reason: &str,
    actor: &str,
    now: Timestamp,
) -> Value {
    let target = match denial {
        Denial::Forbidden(d) => json!({
            "namespace": d.namespace, "plugin": d.plugin, "hook": d.hook,
        }),
        Denial::NoneGranted(n) => json!({
            "namespace": n.namespace, "hook": n.hook, "subscribers": n.subscribers,
        }),
        Denial::Authn(_) | Denial::Busy(_) => Value::Null,
    };
    json!({
        "stream": airlock_runtime::audit::STREAM,
        "time": now.to_string(),
        "actor": actor,
        "event": "CallerDenied",
        "status": "True",
        "reason": reason,
        "rpc": rpc.as_str(),
        "caller": denial.caller().map(ToString::to_string),
        "target": target,
        "message": denial.to_string(),
    })
}
