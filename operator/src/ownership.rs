//! Ownership step of the reconcile pipeline (pure): may this Plugin write an object of the name
//! its child would have?
//!
//! Children are named like their Plugin and applied with server-side apply and `force`, with a
//! controller owner reference. Applied over an object someone else made, that would replace its
//! fields (a NetworkPolicy `default-deny` losing its pod selector to a Plugin named
//! `default-deny`) and make it the Plugin's, so deleting the Plugin would garbage-collect it.
//! Whoever may create a Plugin in a namespace could so take over any object there of the kinds
//! the operator writes. The rule: an object is written only when it is absent or controlled by
//! this very Plugin (by uid); otherwise nothing of the revision is applied and the status says
//! which object is in the way and what to do.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// Reason of `Ready=False` while an object the Plugin would write is not its own.
pub const OBJECT_NOT_OWNED: &str = "ObjectNotOwned";

/// When a Plugin blocked by an earlier Plugin's leftovers looks again: the garbage collector
/// usually removes them within seconds, and the watched kinds wake the reconcile sooner still.
pub const RECHECK_GARBAGE_COLLECTION: Duration = Duration::from_secs(10);
/// When a Plugin blocked by someone else's object looks again: someone must act (rename the
/// Plugin, or move the object away), and a removed object that the watches do not see (one not
/// labelled as Airlock's) is noticed within this bound.
pub const RECHECK_FOREIGN: Duration = Duration::from_secs(30);

/// Whose an existing object is, as far as the Plugin about to write it is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// There is no such object: the Plugin may create it.
    Absent,
    /// A controller owner reference names this Plugin's uid: the Plugin made it.
    Ours,
    /// Anything else: not to be written.
    Foreign(Owner),
}

/// Who holds an object that is not the Plugin's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// No controller owner reference: made by a person or a tool.
    Nobody,
    /// An earlier Plugin of the same name (another uid), deleted since: Kubernetes' garbage
    /// collector removes the object shortly (a Plugin of that name can only exist again once the
    /// earlier one is gone).
    EarlierPlugin { name: String, uid: String },
    /// The controller is another object.
    Other { kind: String, name: String },
    /// Not told: the API server refused the write for what the existing object is (a Secret of
    /// another type, or an immutable one), before anyone said whose it is; the operator may not
    /// read Secrets outside its namespace to find out.
    Unknown,
}

/// Decides whose `existing` is for the Plugin `plugin_name` with uid `plugin_uid`.
pub fn ownership(existing: Option<&ObjectMeta>, plugin_name: &str, plugin_uid: &str) -> Ownership {
    let Some(meta) = existing else {
        return Ownership::Absent;
    };
    let refs = meta.owner_references.as_deref().unwrap_or_default();
    // A Plugin always has a uid on the API server; an empty one must never match an empty one.
    let ours = |o: &OwnerReference| !plugin_uid.is_empty() && o.uid == plugin_uid;
    let earlier = |o: &OwnerReference| is_plugin(o) && o.name == plugin_name && !ours(o);
    let earlier_plugin = |o: &OwnerReference| {
        Ownership::Foreign(Owner::EarlierPlugin {
            name: o.name.clone(),
            uid: o.uid.clone(),
        })
    };
    match refs.iter().find(|o| o.controller == Some(true)) {
        Some(c) if ours(c) => Ownership::Ours,
        Some(c) if earlier(c) => earlier_plugin(c),
        Some(c) => Ownership::Foreign(Owner::Other {
            kind: c.kind.clone(),
            name: c.name.clone(),
        }),
        // Only loose references, all to earlier Plugins of this name: the collector removes it
        // too once they are gone (it keeps an object while any one owner is alive).
        None => match refs.first() {
            Some(first) if refs.iter().all(earlier) => earlier_plugin(first),
            _ => Ownership::Foreign(Owner::Nobody),
        },
    }
}

fn is_plugin(o: &OwnerReference) -> bool {
    o.kind == "Plugin" && o.api_version.starts_with("airlock.dev/")
}

/// An object a revision would write that is not the Plugin's: nothing of the revision is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NotOwned {
    /// `NetworkPolicy`, `Secret`, ...
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub owner: Owner,
}

impl NotOwned {
    /// What is in the way, and what to do: for the status, the Event and the audit record.
    pub fn message(&self) -> String {
        let Self {
            kind,
            namespace,
            name,
            owner,
        } = self;
        let what_to_do = format!(
            "rename the Plugin or delete/rename the existing {kind} {name} if it is not in use"
        );
        match owner {
            Owner::Nobody => format!(
                "{kind} {namespace}/{name} already exists and was not created by this Plugin (it \
                 has no controller owner); Airlock does not take over objects it did not create: \
                 {what_to_do}"
            ),
            Owner::Other {
                kind: owner_kind,
                name: owner_name,
            } => format!(
                "{kind} {namespace}/{name} already exists and is controlled by {owner_kind} \
                 {owner_name}, not by this Plugin; Airlock does not take over objects it did not \
                 create: {what_to_do}"
            ),
            Owner::Unknown => format!(
                "{kind} {namespace}/{name} already exists and is not this Plugin's (its type or \
                 immutability differs from what Airlock writes); Airlock does not take over \
                 objects it did not create: {what_to_do}"
            ),
            Owner::EarlierPlugin { name: plugin, uid } => format!(
                "{kind} {namespace}/{name} still belongs to an earlier Plugin {plugin} (uid {uid}) \
                 that was deleted; Kubernetes' garbage collector removes it shortly and this \
                 Plugin is then rolled out without anything to do. If it stays: {what_to_do}"
            ),
        }
    }
}

/// The message of `Ready=False` for every object in the way, in the order they were looked at
/// (always the same: an unchanged world gives an unchanged message, hence no status write).
pub fn message(objects: &[NotOwned]) -> String {
    objects
        .iter()
        .map(NotOwned::message)
        .collect::<Vec<_>>()
        .join("; ")
}

/// When a Plugin blocked by `objects` looks again (changes of the watched kinds wake it earlier).
pub fn recheck_after(objects: &[NotOwned]) -> Duration {
    let all_collected_soon = objects
        .iter()
        .all(|o| matches!(o.owner, Owner::EarlierPlugin { .. }));
    if all_collected_soon {
        RECHECK_GARBAGE_COLLECTION
    } else {
        RECHECK_FOREIGN
    }
}

/// The Secret `namespace/name` the API server refused a write to because of what the existing
/// one is (a 422 naming an immutable field: another type, or `immutable: true` with other
/// data). Airlock's own Secrets never change type and its immutable ones never change data, so
/// such a Secret is not the Plugin's. Validation runs before admission policies, so this comes
/// instead of [`secret_refusal`] for such Secrets.
pub fn secret_invalid(message: &str, namespace: &str, name: &str) -> Option<NotOwned> {
    invalid("Secret", message, namespace, name)
}

/// [`secret_invalid`] for the kind `kind` (a ConfigMap of a plugin's configuration is immutable
/// too).
pub fn invalid(kind: &str, message: &str, namespace: &str, name: &str) -> Option<NotOwned> {
    message.contains("field is immutable").then(|| NotOwned {
        kind: kind.into(),
        namespace: namespace.into(),
        name: name.into(),
        owner: Owner::Unknown,
    })
}

/// What the chart's ValidatingAdmissionPolicy `<release>-operator-secrets` puts at the start of
/// its message when it refuses the operator a Secret that is not the Plugin's. The operator may
/// not read Secrets outside its own namespace, so the API server checks ownership at the write,
/// atomically, and tells who holds the object: this marker, then each owner reference of the
/// existing Secret as `kind|apiVersion|name|uid|c` (`c` for the controller) separated by `,`.
pub const SECRET_NOT_OWNED_MARKER: &str = "airlock-not-owned:";

/// The name of that policy, which the API server puts in each of its refusals.
pub const SECRET_POLICY: &str = "airlock-operator-secrets";

/// The policy that does the same for the ConfigMaps of plugins' configurations
/// (`<release>-operator-configmaps`), with the same marker.
pub const CONFIG_MAP_POLICY: &str = "airlock-operator-configmaps";

/// The Secret `namespace/name` a write to was refused by that policy, as an object in the way:
/// `None` when `message` is not the policy's refusal.
pub fn secret_refusal(
    message: &str,
    namespace: &str,
    name: &str,
    plugin_name: &str,
    plugin_uid: &str,
) -> Option<NotOwned> {
    let target = Refused {
        kind: "Secret",
        policy: SECRET_POLICY,
        namespace,
        name,
    };
    refusal(target, message, plugin_name, plugin_uid)
}

/// An object a write to was refused, and the policy that may have refused it (e.g. a ConfigMap
/// of a plugin's configuration and [`CONFIG_MAP_POLICY`]).
#[derive(Debug, Clone, Copy)]
pub struct Refused<'a> {
    pub kind: &'static str,
    pub policy: &'static str,
    pub namespace: &'a str,
    pub name: &'a str,
}

/// [`secret_refusal`] for any kind and policy.
pub fn refusal(
    target: Refused<'_>,
    message: &str,
    plugin_name: &str,
    plugin_uid: &str,
) -> Option<NotOwned> {
    let Refused {
        kind: object_kind,
        policy,
        namespace,
        name,
    } = target;
    let Some((_, rest)) = message.split_once(SECRET_NOT_OWNED_MARKER) else {
        // The policy's refusal without its list: the API server drops a message expression
        // whose result it cannot use (a tenant can put a newline into an owner reference's
        // name). Still the policy's answer: not the Plugin's, owner not told.
        return message.contains(policy).then(|| NotOwned {
            kind: object_kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            owner: Owner::Unknown,
        });
    };
    // The message ends with the list (the API server may append nothing after it, but a word
    // that is not a reference ends it).
    let refs: Vec<OwnerReference> = rest
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .split(',')
        .filter_map(|r| {
            let f: Vec<&str> = r.split('|').collect();
            let [kind, api_version, name, uid, controller] = f.as_slice() else {
                return None;
            };
            Some(OwnerReference {
                kind: (*kind).into(),
                api_version: (*api_version).into(),
                name: (*name).into(),
                uid: (*uid).into(),
                controller: Some(*controller == "c"),
                ..Default::default()
            })
        })
        .collect();
    let meta = ObjectMeta {
        owner_references: (!refs.is_empty()).then_some(refs),
        ..Default::default()
    };
    let owner = match ownership(Some(&meta), plugin_name, plugin_uid) {
        Ownership::Foreign(owner) => owner,
        // Refused although it names this Plugin as controller: nothing we can tell apart from
        // someone else's object; say so rather than retry in a loop.
        Ownership::Ours | Ownership::Absent => Owner::Nobody,
    };
    Some(NotOwned {
        kind: object_kind.into(),
        namespace: namespace.into(),
        name: name.into(),
        owner,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "uid-now";

    fn owner_ref(kind: &str, name: &str, uid: &str, controller: Option<bool>) -> OwnerReference {
        OwnerReference {
            api_version: if kind == "Plugin" {
                "airlock.dev/v1alpha1".into()
            } else {
                "apps/v1".into()
            },
            kind: kind.into(),
            name: name.into(),
            uid: uid.into(),
            controller,
            block_owner_deletion: Some(true),
        }
    }

    fn owned_by(refs: Vec<OwnerReference>) -> ObjectMeta {
        ObjectMeta {
            name: Some("hello".into()),
            namespace: Some("plugins".into()),
            owner_references: Some(refs),
            ..Default::default()
        }
    }

    /// An object whose one owner is `kind` `name` with `uid`, its controller or not.
    fn one_owner(
        kind: &str,
        name: &str,
        uid: &str,
        controller: Option<bool>,
    ) -> Option<ObjectMeta> {
        Some(owned_by(vec![owner_ref(kind, name, uid, controller)]))
    }

    /// An object controlled by something alive that is not this Plugin.
    fn other(kind: &str, name: &str) -> Ownership {
        Ownership::Foreign(Owner::Other {
            kind: kind.into(),
            name: name.into(),
        })
    }

    #[test]
    fn only_a_controller_reference_to_this_plugins_uid_makes_an_object_ours() {
        let earlier = || Owner::EarlierPlugin {
            name: "hello".into(),
            uid: "uid-before".into(),
        };
        let cases: Vec<(&str, Option<ObjectMeta>, Ownership)> = vec![
            ("no object", None, Ownership::Absent),
            (
                "made by this Plugin",
                one_owner("Plugin", "hello", UID, Some(true)),
                Ownership::Ours,
            ),
            (
                "made by someone (the attack: a NetworkPolicy named like the Plugin)",
                Some(ObjectMeta::default()),
                Ownership::Foreign(Owner::Nobody),
            ),
            (
                "an empty owner list",
                Some(owned_by(vec![])),
                Ownership::Foreign(Owner::Nobody),
            ),
            (
                "a loose reference to this Plugin is not control",
                one_owner("Plugin", "hello", UID, None),
                Ownership::Foreign(Owner::Nobody),
            ),
            (
                "controlled by a Deployment",
                one_owner("Deployment", "web", "uid-web", Some(true)),
                other("Deployment", "web"),
            ),
            (
                "controlled by another Plugin (a name collision across kinds)",
                one_owner("Plugin", "other", "uid-o", Some(true)),
                other("Plugin", "other"),
            ),
            (
                "left by a deleted Plugin of the same name",
                one_owner("Plugin", "hello", "uid-before", Some(true)),
                Ownership::Foreign(earlier()),
            ),
            (
                "loosely owned by a deleted Plugin of the same name only",
                one_owner("Plugin", "hello", "uid-before", None),
                Ownership::Foreign(earlier()),
            ),
            (
                "loosely owned by a deleted Plugin and something alive: not collected",
                Some(owned_by(vec![
                    owner_ref("Plugin", "hello", "uid-before", None),
                    owner_ref("Deployment", "web", "uid-web", None),
                ])),
                Ownership::Foreign(Owner::Nobody),
            ),
        ];
        for (case, meta, want) in cases {
            assert_eq!(ownership(meta.as_ref(), "hello", UID), want, "{case}");
        }
    }

    #[test]
    fn a_plugin_without_a_uid_owns_nothing() {
        let meta = owned_by(vec![owner_ref("Plugin", "hello", "", Some(true))]);
        assert_ne!(ownership(Some(&meta), "hello", ""), Ownership::Ours);
    }

    fn in_the_way(name: &str, owner: Owner) -> NotOwned {
        NotOwned {
            kind: "NetworkPolicy".into(),
            namespace: "team-a".into(),
            name: name.into(),
            owner,
        }
    }

    #[test]
    fn the_message_names_the_object_and_says_what_to_do() {
        let m = message(&[in_the_way("default-deny", Owner::Nobody)]);
        for part in [
            "NetworkPolicy team-a/default-deny",
            "rename the Plugin or delete/rename the existing NetworkPolicy default-deny if it is not in use",
        ] {
            assert!(m.contains(part), "{part:?} in {m:?}");
        }
        let m = message(&[in_the_way(
            "hello",
            Owner::EarlierPlugin {
                name: "hello".into(),
                uid: "uid-before".into(),
            },
        )]);
        for part in ["earlier Plugin hello (uid uid-before)", "garbage collector"] {
            assert!(m.contains(part), "{part:?} in {m:?}");
        }
    }

    #[test]
    fn leftovers_of_an_earlier_plugin_are_looked_at_again_sooner() {
        let earlier = in_the_way(
            "hello",
            Owner::EarlierPlugin {
                name: "hello".into(),
                uid: "u".into(),
            },
        );
        let foreign = in_the_way("hello", Owner::Nobody);
        assert_eq!(
            recheck_after(std::slice::from_ref(&earlier)),
            RECHECK_GARBAGE_COLLECTION
        );
        assert_eq!(recheck_after(&[earlier, foreign]), RECHECK_FOREIGN);
    }

    /// The policy's refusals as the API server words them (`ValidatingAdmissionPolicy '…' with
    /// binding '…' denied request: <message>`), parsed back into who holds the Secret.
    #[test]
    fn a_refused_secret_write_names_who_holds_the_secret() {
        let denied = |list: &str| {
            format!(
                "secrets \"hello-tls\" is forbidden: ValidatingAdmissionPolicy 'airlock-operator-secrets' \
                 with binding 'airlock-operator-secrets' denied request: {SECRET_NOT_OWNED_MARKER}{list}"
            )
        };
        let refused = |list: &str| {
            secret_refusal(&denied(list), "t", "hello-tls", "hello", "uid-2").expect("refusal")
        };
        assert_eq!(refused("").owner, Owner::Nobody);
        assert_eq!(
            refused("Deployment|apps/v1|web|u9|c").owner,
            Owner::Other {
                kind: "Deployment".into(),
                name: "web".into()
            }
        );
        assert_eq!(
            refused("Plugin|airlock.dev/v1alpha1|hello|uid-1|c").owner,
            Owner::EarlierPlugin {
                name: "hello".into(),
                uid: "uid-1".into()
            }
        );
        let n = refused("Plugin|airlock.dev/v1alpha1|hello|uid-1|");
        assert_eq!(
            (n.kind.as_str(), n.namespace.as_str(), n.name.as_str()),
            ("Secret", "t", "hello-tls")
        );
        assert!(
            secret_refusal("secrets is forbidden: RBAC", "t", "x", "hello", "uid-2").is_none(),
            "another refusal is not an ownership answer"
        );
        // The policy's refusal without its list (the API server dropped the message expression).
        let bare = "secrets \"hello-tls\" is forbidden: ValidatingAdmissionPolicy 'airlock-operator-secrets' with binding 'airlock-operator-secrets' denied request: failed expression: oldObject == null";
        assert_eq!(
            secret_refusal(bare, "t", "hello-tls", "hello", "uid-2").map(|n| n.owner),
            Some(Owner::Unknown)
        );
        // A Secret of another type is refused by validation, before the policy says whose it is.
        let n = secret_invalid(
            "Secret \"hello-tls\" is invalid: type: Invalid value: \"kubernetes.io/tls\": field is immutable",
            "t",
            "hello-tls",
        )
        .expect("not ours");
        assert_eq!(n.owner, Owner::Unknown);
        assert!(
            n.message().contains("Secret t/hello-tls already exists"),
            "{}",
            n.message()
        );
        assert!(secret_invalid("Secret \"x\" is invalid: metadata.name", "t", "x").is_none());
    }
}
