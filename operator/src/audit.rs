//! The audit stream: one JSON record per lifecycle transition of a plugin (who, what, when, why,
//! digests, trust level), written as a line to the operator's stdout where log collectors pick it
//! up. Records are written before the status that reflects them, so a crash in between repeats a
//! record rather than losing one.

use std::sync::Arc;

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
        "stream": airlock_runtime::audit::STREAM,
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

/// Writes one record to the audit stream.
pub use airlock_runtime::audit::emit;

/// Where a reconcile hands its records: [`emit`] in the operator (see
/// [`crate::reconcile::Context::audit`]); tests collect them instead of printing them.
pub type Sink = Arc<dyn Fn(&serde_json::Value) + Send + Sync>;
