//! What this process last applied to each child object, so that a reconcile of an unchanged
//! Plugin sends nothing to the API server.
//!
//! Server-side apply of an unchanged object is a no-op for the object but still a write request:
//! with a periodic requeue and a thousand Plugins that is a steady stream of PATCHes. A child is
//! re-applied only when the desired state changed (its hash differs from the one we applied) or
//! the object changed since we applied it (its fingerprint in the watch cache differs from the
//! one the API server returned to us) — so drift made by someone else is still repaired.
//!
//! The memory is per process: a new leader applies every child once, then goes quiet.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::Serialize;

/// What identifies the state of an object as the API server stores it.
///
/// A Deployment's `resourceVersion` moves with every status update its controller writes, so for
/// it the spec's `generation` is the fingerprint; other children have no status that moves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of(kind: &str, meta: &ObjectMeta) -> Self {
        match kind {
            "Deployment" => Fingerprint(format!("generation={}", meta.generation.unwrap_or(-1))),
            _ => Fingerprint(format!(
                "resourceVersion={}",
                meta.resource_version.as_deref().unwrap_or("")
            )),
        }
    }
}

/// Hash of a desired object as it would be sent. Only compared within this process.
pub fn desired_hash<T: Serialize>(desired: &T) -> u64 {
    let mut h = DefaultHasher::new();
    // Serialization of our own builders' output cannot fail; an empty hash only costs a re-apply.
    serde_json::to_vec(desired).unwrap_or_default().hash(&mut h);
    h.finish()
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Child {
    kind: String,
    name: String,
}

/// Per child of one Plugin: what this process applied and what the API server answered.
#[derive(Debug, Clone)]
struct Record {
    desired_hash: u64,
    fingerprint: Fingerprint,
    /// The resourceVersion of the answer: the watch event carrying the same version is the echo
    /// of this process's own write, which needs no reconcile.
    resource_version: Option<String>,
}

type PluginChildren = HashMap<Child, Record>;

/// Per Plugin (by uid), what was applied to its children.
#[derive(Debug, Default)]
pub struct Applied {
    inner: Mutex<HashMap<String, PluginChildren>>,
}

impl Applied {
    /// True when `desired_hash` was applied by this process and the object still looks the way
    /// the API server returned it (`current` is the fingerprint in the watch cache).
    pub fn is_current(
        &self,
        plugin_uid: &str,
        kind: &str,
        name: &str,
        desired_hash: u64,
        current: &Fingerprint,
    ) -> bool {
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let child = Child {
            kind: kind.into(),
            name: name.into(),
        };
        map.get(plugin_uid)
            .and_then(|children| children.get(&child))
            .is_some_and(|r| r.desired_hash == desired_hash && &r.fingerprint == current)
    }

    /// Records that `desired_hash` was applied to the child and the API server answered with
    /// `result` (its metadata).
    pub fn record(
        &self,
        plugin_uid: &str,
        kind: &str,
        name: &str,
        desired_hash: u64,
        result: &ObjectMeta,
    ) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(plugin_uid.to_string()).or_default().insert(
            Child {
                kind: kind.into(),
                name: name.into(),
            },
            Record {
                desired_hash,
                fingerprint: Fingerprint::of(kind, result),
                resource_version: result.resource_version.clone(),
            },
        );
    }

    /// True when the child `kind`/`name` of the Plugin `plugin_uid`, as a watch event shows it
    /// (`resource_version`), is exactly what this process's last apply left: the echo of its own
    /// write. Anything else — a status written by the Deployment controller, an edit, a deletion
    /// (which carries a new version) — is not.
    pub fn is_own_write(
        &self,
        plugin_uid: &str,
        kind: &str,
        name: &str,
        resource_version: Option<&str>,
    ) -> bool {
        let Some(rv) = resource_version else {
            return false;
        };
        let map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let child = Child {
            kind: kind.into(),
            name: name.into(),
        };
        map.get(plugin_uid)
            .and_then(|children| children.get(&child))
            .is_some_and(|r| r.resource_version.as_deref() == Some(rv))
    }

    /// The child was deleted: the next apply of it is a real one.
    pub fn forget_child(&self, plugin_uid: &str, kind: &str, name: &str) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(children) = map.get_mut(plugin_uid) {
            children.remove(&Child {
                kind: kind.into(),
                name: name.into(),
            });
        }
    }

    /// Keeps only the Plugins whose uid `alive` accepts.
    pub fn retain(&self, alive: &dyn Fn(&str) -> bool) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|uid, _| alive(uid));
    }

    /// The Plugin is gone: so are its children.
    pub fn forget(&self, plugin_uid: &str) {
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(plugin_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(rv: &str, generation: i64) -> ObjectMeta {
        ObjectMeta {
            resource_version: Some(rv.into()),
            generation: Some(generation),
            ..Default::default()
        }
    }

    #[test]
    fn nothing_applied_yet_means_apply() {
        let fp = Fingerprint::of("Service", &meta("5", 1));
        assert!(!Applied::default().is_current("u", "Service", "p", 1, &fp));
    }

    #[test]
    fn a_child_is_skipped_only_while_its_desired_state_and_the_object_are_unchanged() {
        // (kind, what we applied and the server answered, then what we want and the watch
        // shows, skipped?); each side is (desired hash, resourceVersion, generation).
        let cases = [
            // The same desired state over the object we left.
            ("Service", (7, "5", 1), (7, "5", 1), true),
            // A changed desired state is applied.
            ("Service", (7, "5", 1), (8, "5", 1), false),
            // An object edited by someone else is repaired.
            ("NetworkPolicy", (7, "5", 1), (7, "6", 1), false),
            // The deployment controller wrote status: new resourceVersion, same generation.
            ("Deployment", (7, "5", 2), (7, "9", 2), true),
            // Someone scaled it: the generation moved.
            ("Deployment", (7, "5", 2), (7, "10", 3), false),
        ];
        for (kind, (hash, rv, generation), (want, seen_rv, seen_generation), skipped) in cases {
            let a = Applied::default();
            a.record("u", kind, "p", hash, &meta(rv, generation));
            let seen = Fingerprint::of(kind, &meta(seen_rv, seen_generation));
            assert_eq!(
                a.is_current("u", kind, "p", want, &seen),
                skipped,
                "{kind}: applied {hash} at {rv}/{generation}, then {want} at {seen_rv}/{seen_generation}"
            );
        }
    }

    #[test]
    fn forgetting_a_plugin_forgets_its_children_only() {
        let a = Applied::default();
        let fp = Fingerprint::of("Service", &meta("5", 1));
        a.record("u1", "Service", "p", 7, &meta("5", 1));
        a.record("u2", "Service", "p", 7, &meta("5", 1));
        a.forget("u1");
        assert!(!a.is_current("u1", "Service", "p", 7, &fp));
        assert!(a.is_current("u2", "Service", "p", 7, &fp));
    }

    #[test]
    fn only_the_exact_version_this_process_wrote_is_its_own_write() {
        let a = Applied::default();
        a.record("u", "Deployment", "p", 7, &meta("5", 2));
        // The watch event of our own apply.
        assert!(a.is_own_write("u", "Deployment", "p", Some("5")));
        // The Deployment controller's status update, someone's edit, a deletion: new versions.
        assert!(!a.is_own_write("u", "Deployment", "p", Some("6")));
        // Another child, another Plugin, an object without a version.
        assert!(!a.is_own_write("u", "Service", "p", Some("5")));
        assert!(!a.is_own_write("u2", "Deployment", "p", Some("5")));
        assert!(!a.is_own_write("u", "Deployment", "p", None));
    }
}
