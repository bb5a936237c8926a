//! The status of each `PluginTrustPolicy`: what it governs now (namespaces, Plugins), whether its
//! keys can be read, and where another policy's most-restrictive merge makes its keys untrusted.
//! [`status_of`] is the pure computation; [`maintain`] keeps the statuses current on the leader
//! (every [`EVERY`], writing only the ones that changed).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use airlock_crds::trust_policy::PluginTrustPolicyStatus;
use airlock_crds::{Plugin, PluginTrustPolicy};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, ResourceExt};
use serde_json::json;
use tracing::warn;

use crate::build::FIELD_MANAGER;
use crate::policy::selects;

/// How often the statuses are recomputed (namespaces, Plugins and policies come and go).
pub const EVERY: Duration = Duration::from_secs(15);

/// At most this many conflicts are listed (the schema's bound).
const MAX_CONFLICTS: usize = 16;

/// The cluster as the statuses see it.
#[derive(Debug, Default)]
pub struct Cluster {
    pub policies: Vec<PluginTrustPolicy>,
    /// Namespace → its labels.
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Namespace → Plugins in it.
    pub plugins: BTreeMap<String, i32>,
}

impl Cluster {
    fn governed_by(&self, policy: &PluginTrustPolicy) -> BTreeSet<&str> {
        self.namespaces
            .iter()
            .filter(|(_, labels)| selects(policy.spec.namespaces.as_ref(), labels))
            .map(|(ns, _)| ns.as_str())
            .collect()
    }
}

/// A key's identity for the merge: its material, not its name (as [`crate::trust`] compares).
fn materials(policy: &PluginTrustPolicy) -> BTreeMap<String, &str> {
    let mut out = BTreeMap::new();
    for k in &policy.spec.keys {
        if let Some(m) = &k.ed25519 {
            out.insert(format!("ed25519:{}", m.trim()), k.name.as_str());
        }
        if let Some(m) = &k.cosign {
            out.insert(
                format!("cosign:{}", m.split_whitespace().collect::<String>()),
                k.name.as_str(),
            );
        }
    }
    out
}

/// Keys of `policy` that cannot be read, naming the field.
fn key_problems(policy: &PluginTrustPolicy) -> Vec<String> {
    let prefix = format!("PluginTrustPolicy {} ", policy.name_any());
    crate::trust::trusted_keys(&[policy], std::slice::from_ref(policy))
        .problems
        .into_iter()
        .filter(|p| p.starts_with(&prefix) && p.contains("spec.keys["))
        .collect()
}

/// The status `policy` should have in `cluster`; `prev` keeps each condition's transition time.
pub fn status_of(
    policy: &PluginTrustPolicy,
    cluster: &Cluster,
    prev: Option<&PluginTrustPolicyStatus>,
    now: Timestamp,
) -> PluginTrustPolicyStatus {
    let generation = policy.metadata.generation;
    let governed = cluster.governed_by(policy);
    let plugins: i32 = governed
        .iter()
        .map(|ns| cluster.plugins.get(*ns).copied().unwrap_or(0))
        .sum();
    let mine = materials(policy);
    let mut conflicts = Vec::new();
    for other in &cluster.policies {
        if other.name_any() == policy.name_any() {
            continue;
        }
        let shared: Vec<&str> = cluster
            .governed_by(other)
            .intersection(&governed)
            .copied()
            .collect();
        let Some(first) = shared.first() else {
            continue;
        };
        let theirs = materials(other);
        let untrusted: BTreeSet<&str> = mine
            .iter()
            .filter(|(m, _)| !theirs.contains_key(*m))
            .map(|(_, name)| *name)
            .collect();
        if untrusted.is_empty() {
            continue;
        }
        let more = match shared.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        conflicts.push(format!(
            "PluginTrustPolicy {} also governs namespace {first}{more} and does not list {}: a key is trusted only where every governing policy lists it, so plugins signed by it do not run there",
            other.name_any(),
            untrusted.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    conflicts.truncate(MAX_CONFLICTS);
    let problems = key_problems(policy);
    let key_count = policy.spec.keys.iter().filter(|k| !k.revoked).count();
    let (ok, reason, message) = match problems.is_empty() {
        true => (
            true,
            "Valid",
            format!(
                "governs {} namespaces and {plugins} plugins with {key_count} keys",
                governed.len()
            ),
        ),
        false => (
            false,
            "InvalidKey",
            format!(
                "{}; plugins signed by that key do not run until it is fixed",
                problems.join("; ")
            ),
        ),
    };
    let prev = prev.map(|p| p.conditions.as_slice()).unwrap_or_default();
    let condition = |ty: &str, status: bool| {
        crate::status::condition(prev, ty, status, reason, message.clone(), generation, now)
    };
    let mut conditions = vec![condition("Ready", ok)];
    if !ok {
        // kstatus: only a change of the policy fixes it.
        conditions.push(condition("Stalled", true));
    }
    PluginTrustPolicyStatus {
        observed_generation: generation,
        conditions,
        key_count: Some(i32::try_from(key_count).unwrap_or(i32::MAX)),
        namespaces: Some(i32::try_from(governed.len()).unwrap_or(i32::MAX)),
        plugins: Some(plugins),
        conflicts,
    }
}

/// Keeps every policy's status current, on the leader, after the caches are listed; writes (with
/// server-side apply) only statuses that changed.
pub async fn maintain(
    client: kube::Client,
    shard: airlock_core::shard::Shard,
    policies: Store<PluginTrustPolicy>,
    plugins: Store<Plugin>,
    namespaces: Store<kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Namespace>>,
    listed: [tokio::sync::watch::Receiver<bool>; 2],
) {
    // Counting against caches not listed yet would write wrong numbers.
    for mut l in listed {
        if l.wait_for(|l| *l).await.is_err() {
            return;
        }
    }
    let api: Api<PluginTrustPolicy> = Api::all(client);
    let mut every = tokio::time::interval(EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let mut cluster = Cluster {
            // This release's policies only: another release counts its own Plugins into its own.
            policies: policies
                .state()
                .iter()
                .filter(|p| crate::policy::in_shard(p, &shard))
                .map(|p| (**p).clone())
                .collect(),
            namespaces: namespaces
                .state()
                .iter()
                .map(|n| (n.name_any(), n.labels().clone()))
                .collect(),
            plugins: BTreeMap::new(),
        };
        for p in plugins.state() {
            *cluster
                .plugins
                .entry(p.namespace().unwrap_or_default())
                .or_default() += 1;
        }
        for policy in &cluster.policies {
            let prev = policy.status.as_ref();
            let next = status_of(policy, &cluster, prev, Timestamp::now());
            if prev == Some(&next) {
                continue;
            }
            let patch = json!({
                "apiVersion": "airlock.dev/v1alpha1",
                "kind": "PluginTrustPolicy",
                "status": next,
            });
            if let Err(e) = api
                .patch_status(
                    &policy.name_any(),
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(&patch),
                )
                .await
            {
                warn!(policy = %policy.name_any(), error = %e, "could not write the trust policy's status");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(
        name: &str,
        selector: serde_json::Value,
        keys: serde_json::Value,
    ) -> PluginTrustPolicy {
        let mut p: PluginTrustPolicy = serde_json::from_value(json!({
            "apiVersion": "airlock.dev/v1alpha1", "kind": "PluginTrustPolicy",
            "metadata": {"name": name, "generation": 3},
            "spec": {"keys": keys, "namespaces": selector},
        }))
        .expect("policy");
        p.metadata.generation = Some(3);
        p
    }

    const KEY_A: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

    fn cluster(policies: Vec<PluginTrustPolicy>) -> Cluster {
        let label = |team: &str| BTreeMap::from([("team".to_string(), team.to_string())]);
        Cluster {
            policies,
            namespaces: BTreeMap::from([
                ("a1".into(), label("a")),
                ("a2".into(), label("a")),
                ("b1".into(), label("b")),
            ]),
            plugins: BTreeMap::from([("a1".into(), 2), ("a2".into(), 1), ("b1".into(), 5)]),
        }
    }

    #[test]
    fn a_policy_says_what_it_governs() {
        let p = policy(
            "team-a",
            json!({"matchLabels": {"team": "a"}}),
            json!([{"name": "k", "ed25519": KEY_A, "trustLevel": "Trusted"},
                   {"name": "old", "ed25519": KEY_A, "trustLevel": "Trusted", "revoked": true}]),
        );
        let c = cluster(vec![p.clone()]);
        let s = status_of(&p, &c, None, Timestamp::UNIX_EPOCH);
        assert_eq!(
            (s.namespaces, s.plugins, s.key_count),
            (Some(2), Some(3), Some(1))
        );
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.conditions.len(), 1);
        assert_eq!(
            (
                s.conditions[0].type_.as_str(),
                s.conditions[0].status.as_str()
            ),
            ("Ready", "True")
        );
        assert!(s.conflicts.is_empty());
        // Computed again, it is the same (nothing is written then).
        assert_eq!(status_of(&p, &c, Some(&s), Timestamp::now()), s);
    }

    #[test]
    fn an_unreadable_key_stalls_the_policy_naming_the_field() {
        let p = policy(
            "bad",
            json!({}),
            json!([{"name": "k", "ed25519": "not base64!", "trustLevel": "Trusted"}]),
        );
        let s = status_of(&p, &cluster(vec![p.clone()]), None, Timestamp::UNIX_EPOCH);
        let types: Vec<(&str, &str, &str)> = s
            .conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
            .collect();
        assert_eq!(
            types,
            [
                ("Ready", "False", "InvalidKey"),
                ("Stalled", "True", "InvalidKey")
            ]
        );
        assert!(
            s.conditions[0].message.contains("spec.keys[0].ed25519"),
            "{}",
            s.conditions[0].message
        );
    }

    #[test]
    fn a_broad_policy_that_does_not_list_a_key_is_a_conflict_where_both_govern() {
        let narrow = policy(
            "team-a",
            json!({"matchLabels": {"team": "a"}}),
            json!([{"name": "team-key", "ed25519": KEY_A, "trustLevel": "Trusted"}]),
        );
        let broad = policy("everyone", json!({}), json!([]));
        let c = cluster(vec![narrow.clone(), broad.clone()]);
        let s = status_of(&narrow, &c, None, Timestamp::UNIX_EPOCH);
        assert_eq!(s.conflicts.len(), 1, "{:?}", s.conflicts);
        let said = &s.conflicts[0];
        assert!(
            said.contains("everyone")
                && said.contains("a1 and 1 more")
                && said.contains("team-key"),
            "{said}"
        );
        // The broad one lists nothing the narrow one lacks: no conflict on its side.
        assert!(
            status_of(&broad, &c, None, Timestamp::UNIX_EPOCH)
                .conflicts
                .is_empty()
        );
        // Disjoint namespaces: no conflict.
        let other = policy("team-b", json!({"matchLabels": {"team": "b"}}), json!([]));
        let c = cluster(vec![narrow.clone(), other]);
        assert!(
            status_of(&narrow, &c, None, Timestamp::UNIX_EPOCH)
                .conflicts
                .is_empty()
        );
    }
}
