//! Properties of the router's route table (`RouteTable::build`), over arbitrary sets of Plugins
//! (issue 16): whatever the phases, flags, endpoints and hooks, a plugin that may not be called
//! never gets a route, a routed plugin has a ready pod, every Plugin the table saw answers a
//! caller (a route or a reason), pipelines come in priority order, and the input order does not
//! matter.

// Helpers outside `#[test]` functions build fixtures; a failed expectation is a failed test.
#![allow(clippy::expect_used)]

use std::collections::HashMap;

use airlock_core::{Hook, PluginKey};
use airlock_crds::Plugin;
use airlock_crds::plugin::AUTO_DISABLED_ANNOTATION;
use airlock_router::table::RouteTable;
use proptest::prelude::*;
use serde_json::json;

/// What a generated Plugin is made of.
#[derive(Debug, Clone)]
struct Shape {
    namespace: &'static str,
    phase: Option<&'static str>,
    enabled: bool,
    deleting: bool,
    auto_disabled: bool,
    /// None: no EndpointSlice seen; Some(0): one without ready pods.
    ready_pods: Option<usize>,
    /// (hook, priority, timeout) of the approved revision.
    hooks: Vec<(&'static str, i32, &'static str)>,
    /// Whether status names the revision (current, last good) the record has.
    current: bool,
    last_good: bool,
}

fn shape() -> impl Strategy<Value = Shape> {
    let hook = (
        proptest::sample::select(vec!["onLoad", "onUnload", "transform", "onEvent"]),
        -5i32..5,
        proptest::sample::select(vec!["200ms", "1s", "junk", "50ms"]),
    );
    (
        proptest::sample::select(vec!["team-a", "team-b"]),
        proptest::option::of(proptest::sample::select(vec![
            "Pending",
            "Deploying",
            "Active",
            "Degraded",
            "Failed",
            "Disabled",
            "Quarantined",
        ])),
        any::<bool>(),
        proptest::bool::weighted(0.15),
        proptest::bool::weighted(0.15),
        proptest::option::of(0usize..3),
        proptest::collection::vec(hook, 0..4),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                namespace,
                phase,
                enabled,
                deleting,
                auto_disabled,
                ready_pods,
                hooks,
                current,
                last_good,
            )| {
                Shape {
                    namespace,
                    phase,
                    enabled,
                    deleting,
                    auto_disabled,
                    ready_pods,
                    hooks,
                    current,
                    last_good,
                }
            },
        )
}

fn plugin(i: usize, s: &Shape) -> Plugin {
    let mut hooks: Vec<_> = s
        .hooks
        .iter()
        .map(|(name, priority, timeout)| {
            json!({"name": name, "timeout": timeout, "failurePolicy": "Fail", "priority": priority})
        })
        .collect();
    // One entry per hook name, as the CRD requires.
    hooks.dedup_by(|a, b| a["name"] == b["name"]);
    let mut annotations = serde_json::Map::new();
    if s.auto_disabled {
        annotations.insert(AUTO_DISABLED_ANNOTATION.into(), json!("crashes"));
    }
    let mut metadata = json!({
        "name": format!("p{i}"), "namespace": s.namespace, "uid": format!("uid-{i}"),
        "annotations": annotations,
    });
    if s.deleting {
        metadata["deletionTimestamp"] = json!("2026-12-02T00:00:00Z");
        metadata["finalizers"] = json!(["airlock.dev/cleanup"]);
    }
    let mut status = json!({
        "revisions": [{"revision": "r1", "hooks": hooks}],
    });
    if let Some(phase) = s.phase {
        status["phase"] = json!(phase);
    }
    if s.current {
        status["currentRevision"] = json!("r1");
    }
    if s.last_good {
        status["lastGoodRevision"] = json!("r1");
    }
    serde_json::from_value(json!({
        "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
        "metadata": metadata,
        "spec": {
            "version": "1.0.0", "image": "reg.example/p@sha256:0", "enabled": s.enabled,
            "bundle": {"source": {"configMapRef": {"name": "b"}}},
            "pluginApiVersion": 1, "hooks": [], "permissions": [],
            "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}}
        },
        "status": status,
    }))
    .expect("a Plugin")
}

/// Ready `host:port`s by (namespace, Service name), as `RouteTable::build` takes them.
type Endpoints = HashMap<(String, String), Vec<String>>;

/// The Plugins and their Services' ready endpoints.
fn cluster(shapes: &[Shape]) -> (Vec<Plugin>, Endpoints) {
    let plugins: Vec<Plugin> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| plugin(i, s))
        .collect();
    let endpoints = shapes
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let pods = s.ready_pods?;
            let service = airlock_core::names::child_name(&format!("p{i}"));
            let addresses = (0..pods).map(|n| format!("10.0.{i}.{n}:50051")).collect();
            Some(((s.namespace.to_string(), service), addresses))
        })
        .collect();
    (plugins, endpoints)
}

fn key(i: usize, s: &Shape) -> PluginKey {
    PluginKey::new(s.namespace, format!("p{i}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn only_a_plugin_that_may_serve_gets_a_route(shapes in proptest::collection::vec(shape(), 0..12)) {
        let (plugins, endpoints) = cluster(&shapes);
        let table = RouteTable::build(&plugins, &endpoints);
        for (i, s) in shapes.iter().enumerate() {
            match table.get(&key(i, s)) {
                Ok(route) => {
                    prop_assert!(s.enabled && !s.deleting && !s.auto_disabled, "{s:?}");
                    prop_assert!(
                        matches!(s.phase, Some("Active" | "Degraded" | "Deploying")),
                        "{s:?}"
                    );
                    prop_assert!(s.phase != Some("Degraded") || s.last_good, "{s:?}");
                    prop_assert!(s.phase != Some("Deploying") || s.current || s.last_good, "{s:?}");
                    prop_assert!(!route.endpoints.is_empty(), "a route without a ready pod");
                    prop_assert_eq!(route.endpoints.len(), s.ready_pods.unwrap_or(0));
                }
                // Every Plugin the table saw answers with why, never "there is no Plugin".
                Err(refused) => {
                    prop_assert!(!refused.why.contains("there is no Plugin"), "{refused:?}");
                    // "Retry" only for a plugin switched on that serves once a pod is ready, or
                    // that the operator has not finished with yet (not looked at, or its first
                    // revision rolling out); always for the latter.
                    let switched_on = s.enabled && !s.deleting && !s.auto_disabled;
                    let operator_at_work = matches!(s.phase, None | Some("Pending" | "Deploying"));
                    if refused.retry {
                        prop_assert!(
                            switched_on && (s.ready_pods.unwrap_or(0) == 0 || operator_at_work),
                            "{s:?}: {refused:?}"
                        );
                    }
                    if switched_on && matches!(s.phase, None | Some("Pending")) {
                        prop_assert!(refused.retry, "not looked at yet: {s:?}: {refused:?}");
                    }
                }
            }
            // The host API: never a plugin being deleted, disabled or quarantined.
            if table.holder(&key(i, s)).is_some() {
                prop_assert!(s.enabled && !s.deleting && !s.auto_disabled, "{s:?}");
                prop_assert!(s.phase != Some("Quarantined"), "{s:?}");
            }
        }
    }

    #[test]
    fn subscribers_are_the_routed_plugins_with_the_hook_in_priority_order(
        shapes in proptest::collection::vec(shape(), 0..12),
        namespace in proptest::option::of(proptest::sample::select(vec!["team-a", "team-b"])),
    ) {
        let (plugins, endpoints) = cluster(&shapes);
        let table = RouteTable::build(&plugins, &endpoints);
        for hook in [Hook::OnLoad, Hook::OnUnload, Hook::Transform, Hook::OnEvent] {
            let subscribers = table.subscribers(hook, namespace);
            let order: Vec<_> = subscribers
                .iter()
                .map(|(r, h)| (h.priority, r.plugin.clone()))
                .collect();
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(&order, &sorted);
            let expected = table
                .routes(namespace)
                .filter(|r| r.hooks.contains_key(&hook))
                .count();
            prop_assert_eq!(subscribers.len(), expected);
            prop_assert!(subscribers.iter().all(|(r, _)| namespace.is_none_or(|ns| r.plugin.namespace == ns)));
        }
    }

    #[test]
    fn the_order_plugins_are_seen_in_does_not_matter(shapes in proptest::collection::vec(shape(), 0..12)) {
        let (plugins, endpoints) = cluster(&shapes);
        let reversed: Vec<Plugin> = plugins.iter().rev().cloned().collect();
        prop_assert_eq!(
            RouteTable::build(&plugins, &endpoints),
            RouteTable::build(&reversed, &endpoints)
        );
    }
}

#[test]
fn a_plugin_the_table_never_saw_is_named_as_unknown() {
    let table = RouteTable::build(&[], &HashMap::new());
    let why = table
        .get(&PluginKey::new("ns", "ghost"))
        .expect_err("no route");
    assert!(why.why.contains("there is no Plugin ns/ghost"), "{why:?}");
    assert!(!why.retry, "a Plugin that does not exist is not retried");
}
