//! The router's audit records (pure builders): a plugin it auto-disabled, a host-API call it
//! refused, a caller of the HookRouter API it refused. Written to the audit stream with [`airlock_runtime::audit::emit`], like the
//! operator's lifecycle records.

use airlock_core::PluginKey;
use k8s_openapi::jiff::Timestamp;
use serde_json::{Value, json};

use crate::callers::authz::ScopeWhy;
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

/// The record of a plugin pod the router refused to call after its handshake (pure): the pod
/// does not run what the operator verified (see `crate::grpc::handshake`).
pub fn handshake_mismatch(
    route: &Route,
    endpoint: &str,
    reason: &str,
    message: &str,
    actor: &str,
    now: Timestamp,
) -> Value {
    with(
        record(actor, now, &route.plugin, &route.uid, "HandshakeMismatch"),
        json!({
            "reason": "HandshakeMismatch",
            "mismatch": reason,
            "pod": endpoint,
            "message": message,
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

/// Longest text of a caller's choosing (names it sent, the message that quotes them) kept in an
/// audit record: a Kubernetes object name is at most 253 characters. The gRPC edge refuses longer
/// names already; this bounds a record whatever a future check forgets.
pub const MAX_FIELD_CHARS: usize = 253;
/// Longest message kept in an audit record (it quotes a few bounded names and the fix).
pub const MAX_MESSAGE_CHARS: usize = 2048;

/// `text`, cut to `max` characters (with `…` when cut).
fn bounded(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_string(),
    }
}

/// The record of a refused caller of the HookRouter API (pure): who (the ServiceAccount, when it
/// got that far), which call of what, why (`reason`), and the message the caller got. Never the
/// token: no [`Denial`] holds it. Every field of the caller's choosing is bounded.
pub fn caller_denied(
    rpc: Rpc,
    denial: &Denial,
    reason: &str,
    actor: &str,
    now: Timestamp,
) -> Value {
    let field = |s: &str| bounded(s, MAX_FIELD_CHARS);
    let target = match denial {
        Denial::Forbidden(d) => json!({
            "namespace": field(&d.namespace), "plugin": field(&d.plugin), "hook": field(&d.hook),
        }),
        Denial::OutOfScope(d) => {
            let mut target = json!({"namespace": field(&d.namespace), "hook": field(&d.hook)});
            if let ScopeWhy::Ungranted(plugins) = &d.why {
                target["plugins"] = plugins.iter().map(|p| field(p)).collect();
            }
            target
        }
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
        "caller": denial.caller().map(|c| field(&c.to_string())),
        "target": target,
        "message": bounded(&denial.to_string(), MAX_MESSAGE_CHARS),
    })
}

/// The summary of refusals of one class whose records were dropped over its budget (pure).
pub fn caller_denials_dropped(reason: &str, dropped: u64, actor: &str, now: Timestamp) -> Value {
    json!({
        "stream": airlock_runtime::audit::STREAM,
        "time": now.to_string(),
        "actor": actor,
        "event": "CallerDenialsNotAudited",
        "status": "True",
        "reason": reason,
        "dropped": dropped,
        "message": format!(
            "{dropped} denials of class {reason} not audited (over the budget of {} audit records \
             a minute per class and router replica); every denial is counted in \
             airlock_router_refused_total",
            crate::callers::audit_budget::AUDITED_PER_MINUTE
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::callers::CallerId;
    use crate::callers::authz::Denied;

    /// Issue (MEDIUM): names of any size went into audit records as sent.
    #[test]
    fn fields_of_the_callers_choosing_are_bounded() {
        let huge = "n".repeat(100_000);
        let denial = Denial::Forbidden(Box::new(Denied {
            caller: CallerId::new("a", "fe"),
            namespace: huge.clone(),
            plugin: huge.clone(),
            hook: huge.clone(),
            why: crate::callers::authz::Why::NotListed,
        }));
        let r = caller_denied(
            Rpc::Invoke,
            &denial,
            "PermissionDenied",
            "airlock-router",
            Timestamp::UNIX_EPOCH,
        );
        for f in ["namespace", "plugin", "hook"] {
            let v = r["target"][f].as_str().expect("a string");
            assert_eq!(v.chars().count(), MAX_FIELD_CHARS + 1, "{f}");
            assert!(v.ends_with('…'));
        }
        let message = r["message"].as_str().expect("a string");
        assert_eq!(message.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert_eq!(r["target"]["namespace"].as_str().map(str::len), Some(256));
        assert_eq!(bounded("short", MAX_FIELD_CHARS), "short");
    }

    #[test]
    fn a_refused_pod_is_recorded_with_the_plugin_the_pod_and_why() {
        let route = crate::table::Route {
            plugin: PluginKey::new("team", "fmt"),
            uid: "uid-1".into(),
            version: "1.2.0".into(),
            endpoints: vec![],
            hooks: Default::default(),
            auto_disable: None,
            verified: vec![],
        };
        let r = handshake_mismatch(
            &route,
            "198.19.0.9:50051",
            "bundle_digest",
            "pod 198.19.0.9:50051 of Plugin team/fmt runs bundle sha256:bb",
            "airlock-router",
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(r["event"], "HandshakeMismatch");
        assert_eq!(r["plugin"]["namespace"], "team");
        assert_eq!(r["plugin"]["uid"], "uid-1");
        assert_eq!(r["pod"], "198.19.0.9:50051");
        assert_eq!(r["mismatch"], "bundle_digest");
    }
}
