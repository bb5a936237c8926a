//! The audit stream: one JSON record per lifecycle transition of a plugin (who, what, when, why,
//! digests, trust level), written as a CloudEvent line to the operator's stdout where log
//! collectors pick it up (and to the audit sink, see `airlock_runtime::audit`). Records are
//! written before the status that reflects them, so a crash in between repeats a record rather
//! than losing one; a status write that fails (the API server went away) is tried again without
//! its records, which the process remembers until the write succeeds.
//!
//! `actor` is who performed the transition (the operator); `initiator` is who last changed what
//! the operator acted on: the newest writer of the Plugin's spec in its `managedFields` (the field
//! manager the client named, e.g. `kubectl-client-side-apply`, `kustomize-controller`, the
//! operation and time). A field manager is chosen by the client, not authenticated (a tenant may
//! call itself anything, even `airlock-operator`), and managedFields are writable: the record
//! says what the object claims, the API server's own audit log says which user it was. Entries
//! dated in the future are not believed (they would otherwise win every later record).

use std::sync::Arc;

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginStatus;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde_json::json;

use crate::status::Transition;

/// Who performs the transitions Airlock records.
pub const ACTOR: &str = "airlock-operator";

/// The annotation under which the operator's cache of Plugins keeps the newest spec writer (the
/// cache drops `managedFields` to save memory). Never read from the API: [`keep_spec_writer`]
/// overwrites or removes whatever a tenant put there.
pub const CACHED_SPEC_WRITER: &str = "airlock.dev/cached-spec-writer";

/// How far ahead of the operator's clock a managedFields time may be (clock skew between the API
/// server and the operator).
const FUTURE_SKEW_SECONDS: i64 = 300;

/// The newest writer of the spec among `fields` (not through a subresource, not dated after
/// `now` + skew), as the `initiator` of audit records: `{manager, operation, time}`. Airlock
/// never writes a Plugin's spec (only its status and, once, its finalizers), so its own
/// managers need no exclusion.
pub fn spec_writer(fields: &[ManagedFieldsEntry], now: Timestamp) -> Option<serde_json::Value> {
    let latest = now.as_second().saturating_add(FUTURE_SKEW_SECONDS);
    fields
        .iter()
        .filter(|f| f.subresource.as_deref().unwrap_or("").is_empty())
        .filter(|f| f.time.as_ref().is_some_and(|t| t.0.as_second() <= latest))
        .filter(|f| {
            f.fields_v1
                .as_ref()
                .is_some_and(|v| v.0.get("f:spec").is_some())
        })
        .max_by_key(|f| f.time.as_ref().map(|t| t.0))
        .map(|f| {
            json!({
                "manager": f.manager,
                "operation": f.operation,
                "time": f.time.as_ref().map(|t| t.0.to_string()),
            })
        })
}

/// Keeps the newest spec writer of a Plugin in [`CACHED_SPEC_WRITER`] before its
/// `managedFields` are dropped from the cache; a value the object came with is replaced.
pub fn keep_spec_writer(plugin: &mut Plugin) {
    let writer = spec_writer(plugin.managed_fields(), Timestamp::now()).map(|w| w.to_string());
    let annotations = plugin.annotations_mut();
    match writer {
        Some(w) => {
            annotations.insert(CACHED_SPEC_WRITER.to_string(), w);
        }
        None => {
            annotations.remove(CACHED_SPEC_WRITER);
        }
    }
}

/// The initiator [`keep_spec_writer`] kept, or the one in the object's own `managedFields`.
fn initiator(plugin: &Plugin) -> serde_json::Value {
    if !plugin.managed_fields().is_empty() {
        return spec_writer(plugin.managed_fields(), Timestamp::now()).unwrap_or_default();
    }
    plugin
        .annotations()
        .get(CACHED_SPEC_WRITER)
        .and_then(|w| serde_json::from_str(w).ok())
        .unwrap_or_default()
}

/// Builds the record of one transition (pure, so tests can read it).
pub fn record(
    plugin: &Plugin,
    status: &PluginStatus,
    transition: &Transition,
    now: Timestamp,
) -> serde_json::Value {
    json!({
        "stream": airlock_runtime::audit::STREAM,
        "time": now.to_string(),
        "actor": ACTOR,
        "initiator": initiator(plugin),
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

/// Writes one record to the audit stream.
pub use airlock_runtime::audit::emit;

/// Where a reconcile hands its records: [`emit`] in the operator (see
/// [`crate::reconcile::Context::audit`]); tests collect them instead of printing them.
pub type Sink = Arc<dyn Fn(&serde_json::Value) + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, Time};

    fn entry(
        manager: &str,
        op: &str,
        sub: Option<&str>,
        at: i64,
        fields: serde_json::Value,
    ) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(op.into()),
            subresource: sub.map(Into::into),
            time: Some(Time(Timestamp::from_second(at).unwrap())),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    fn plugin() -> Plugin {
        serde_json::from_value(json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": "hello", "namespace": "t"},
            "spec": {
                "version": "1.0.0",
                "image": "r/p@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "bundle": {"source": {"configMapRef": {"name": "b"}}},
                "pluginApiVersion": 1,
            }
        }))
        .expect("a Plugin")
    }

    fn spec() -> serde_json::Value {
        json!({"f:spec": {"f:enabled": {}}})
    }

    #[test]
    fn the_initiator_is_the_newest_believable_spec_writer() {
        let fields = vec![
            entry("kubectl-client-side-apply", "Update", None, 100, spec()),
            entry("kustomize-controller", "Apply", None, 200, spec()),
            // Newer, but only labels: not a change of what the operator acts on.
            entry(
                "kubectl-label",
                "Update",
                None,
                300,
                json!({"f:metadata": {"f:labels": {}}}),
            ),
            // Newer, but a status subresource write.
            entry(
                "airlock-router",
                "Update",
                Some("status"),
                400,
                json!({"f:status": {}}),
            ),
            // A forged entry dated in the future (managedFields are writable) is not believed.
            entry("platform-admin", "Apply", None, 4_000_000_000, spec()),
        ];
        let w = spec_writer(&fields, Timestamp::from_second(1_000).unwrap()).unwrap();
        assert_eq!(w["manager"], "kustomize-controller");
        assert_eq!(w["operation"], "Apply");
        assert_eq!(w["time"], "1970-01-01T00:03:20Z");
    }

    /// A tenant cannot name the initiator by writing the cache's annotation themselves.
    #[test]
    fn a_tenants_own_spec_writer_annotation_never_survives_the_cache() {
        let mut p = plugin();
        p.annotations_mut().insert(
            CACHED_SPEC_WRITER.into(),
            r#"{"manager":"the-admin"}"#.into(),
        );
        p.metadata.managed_fields = Some(vec![entry("kubectl", "Apply", None, 100, spec())]);
        keep_spec_writer(&mut p);
        p.managed_fields_mut().clear();
        assert_eq!(initiator(&p)["manager"], "kubectl");
        // No spec writer at all: the tenant's value is removed, not kept.
        let mut q = plugin();
        q.annotations_mut().insert(
            CACHED_SPEC_WRITER.into(),
            r#"{"manager":"the-admin"}"#.into(),
        );
        q.metadata.managed_fields = Some(vec![entry(
            "kubectl-label",
            "Update",
            None,
            1,
            json!({"f:metadata": {}}),
        )]);
        keep_spec_writer(&mut q);
        q.managed_fields_mut().clear();
        assert!(initiator(&q).is_null());
        assert!(!q.annotations().contains_key(CACHED_SPEC_WRITER));
    }
}
