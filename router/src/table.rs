//! The router's view of the cluster, computed by a pure function: which Plugins can be called,
//! which of their pods are ready to answer (from their EndpointSlices: a pod that is starting or
//! terminating gets no call), and each hook's timeout, failure policy and priority. A Plugin that
//! cannot be called keeps a one-line reason, so a host application asking for it learns why.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use airlock_core::Hook;
pub use airlock_crds::plugin::AUTO_DISABLED_ANNOTATION;
use airlock_crds::plugin::{FailurePolicy, PluginPhase};
use airlock_crds::{Permission, Plugin};
use kube::ResourceExt;

use airlock_core::PluginKey;
use airlock_core::duration::duration_ms;
use airlock_core::names::child_name;

/// How one hook of one plugin is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HookRoute {
    pub timeout: Duration,
    pub failure_policy: FailurePolicy,
    pub priority: i32,
}

/// A Plugin the router can call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub plugin: PluginKey,
    pub uid: String,
    pub version: String,
    /// host:port of each ready pod of the plugin (never empty; sorted). Each call goes to one
    /// of them (`crate::grpc` balances them).
    pub endpoints: Vec<String>,
    pub hooks: BTreeMap<Hook, HookRoute>,
    /// Its trust level's auto-disable rules (`status.limits.autoDisable`); `None`: the router's.
    pub auto_disable: Option<airlock_crds::plugin::AutoDisablePolicy>,
    /// The verified bundle and plugin API version of each revision that may serve: a pod is
    /// called only once its shim said (`Handshake`) it runs one of them (`crate::grpc`). Empty:
    /// the status recorded none yet (written by an Airlock before this field), nothing checked.
    pub verified: Vec<VerifiedRevision>,
}

/// What the operator verified for one revision, as its record in `status.revisions` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedRevision {
    pub revision: String,
    /// `sha256:<hex>` of the bundle.
    pub bundle_digest: String,
    /// `apiVersion` of the bundle's manifest.
    pub plugin_api_version: u32,
}

/// Every Plugin the router knows, callable or not.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RouteTable {
    routes: BTreeMap<PluginKey, Arc<Route>>,
    /// Plugins that exist but cannot be called, with why.
    unroutable: BTreeMap<PluginKey, Unroutable>,
    /// Every Plugin not being deleted, callable or not: whom host API calls may come from.
    holders: BTreeMap<PluginKey, Holder>,
}

/// What the host API needs to know about a plugin that calls it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub uid: String,
    pub version: String,
    /// Its effective permissions (`status.permissions`, written by the controller).
    pub permissions: BTreeSet<Permission>,
    /// Its runtime limits (`status.limits`; the defaults until the controller wrote them).
    pub limits: airlock_crds::plugin::PluginLimits,
}

/// Whether `plugin` may call the host API: not being deleted, not disabled (by its spec or the
/// router) and not stopped by the controller (phase Quarantined).
fn may_call_host(plugin: &Plugin) -> bool {
    let quarantined = plugin
        .status
        .as_ref()
        .and_then(|s| s.phase)
        .is_some_and(|p| p == airlock_crds::plugin::PluginPhase::Quarantined);
    plugin.metadata.deletion_timestamp.is_none() && plugin.should_run() && !quarantined
}

impl RouteTable {
    /// The table for `plugins`, whose Services have the ready endpoints (`host:port`) in
    /// `endpoints` (keyed by namespace and Service name).
    pub fn build<'a>(
        plugins: impl IntoIterator<Item = &'a Plugin>,
        endpoints: &HashMap<(String, String), Vec<String>>,
    ) -> Self {
        let mut table = Self::default();
        for plugin in plugins {
            let key = PluginKey::new(plugin.namespace().unwrap_or_default(), plugin.name_any());
            // Only a plugin that may run may call the host API: a Quarantined or disabled one
            // loses it at once, also from a stolen identity of one of its pods.
            if may_call_host(plugin) {
                table.holders.insert(
                    key.clone(),
                    Holder {
                        uid: plugin.uid().unwrap_or_default(),
                        version: plugin.spec.version.clone(),
                        permissions: plugin
                            .status
                            .iter()
                            .flat_map(|s| s.permissions.iter().copied())
                            .collect(),
                        limits: plugin
                            .status
                            .as_ref()
                            .and_then(|s| s.limits.clone())
                            .unwrap_or_default(),
                    },
                );
            }
            match route(plugin, &key, endpoints) {
                Ok(r) => {
                    table.routes.insert(key, Arc::new(r));
                }
                Err(why) => {
                    table.unroutable.insert(key, why);
                }
            }
        }
        table
    }

    /// This table with `plugin` known but not routable for `why` (tests: a disabled plugin).
    #[cfg(test)]
    pub fn with_unroutable(mut self, plugin: PluginKey, why: &str) -> Self {
        self.routes.remove(&plugin);
        self.unroutable.insert(plugin, refuse(why.to_string()));
        self
    }

    /// A table of exactly these routes (tests, benchmarks).
    pub fn from_routes(routes: impl IntoIterator<Item = Route>) -> Self {
        Self {
            routes: routes
                .into_iter()
                .map(|r| (r.plugin.clone(), Arc::new(r)))
                .collect(),
            unroutable: BTreeMap::new(),
            holders: BTreeMap::new(),
        }
    }

    /// The plugin `key` as a caller of the host API; `None` when there is no such Plugin (or it is
    /// being deleted).
    pub fn holder(&self, key: &PluginKey) -> Option<&Holder> {
        self.holders.get(key)
    }

    /// The route to `key`, or why there is none.
    pub fn get(&self, key: &PluginKey) -> Result<Arc<Route>, Unroutable> {
        if let Some(r) = self.routes.get(key) {
            return Ok(r.clone());
        }
        Err(self.unroutable.get(key).cloned().unwrap_or_else(|| {
            refuse(format!(
                "there is no Plugin {key}; `kubectl get plugins -A` lists them"
            ))
        }))
    }

    /// The plugins that declare `hook`, optionally in one namespace, in the order pipelines and
    /// broadcasts use: ascending priority, then namespace, then name.
    pub fn subscribers(&self, hook: Hook, namespace: Option<&str>) -> Vec<(Arc<Route>, HookRoute)> {
        let mut out: Vec<_> = self
            .routes
            .values()
            .filter(|r| namespace.is_none_or(|ns| r.plugin.namespace == ns))
            .filter_map(|r| r.hooks.get(&hook).map(|h| (r.clone(), *h)))
            .collect();
        out.sort_by(|(a, ha), (b, hb)| (ha.priority, &a.plugin).cmp(&(hb.priority, &b.plugin)));
        out
    }

    /// Every Plugin of the table, callable or not (disabled, auto-disabled, not ready, being
    /// deleted): those the router still reports on.
    pub fn plugins(&self) -> impl Iterator<Item = &PluginKey> {
        self.routes.keys().chain(self.unroutable.keys())
    }

    /// Every callable plugin, optionally in one namespace, by namespace and name.
    pub fn routes(&self, namespace: Option<&str>) -> impl Iterator<Item = &Arc<Route>> {
        self.routes
            .values()
            .filter(move |r| namespace.is_none_or(|ns| r.plugin.namespace == ns))
    }
}

/// Why a Plugin cannot be called now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unroutable {
    /// What the caller is told: the cause and what to do.
    pub why: String,
    /// The plugin serves again by itself (its pods are starting): the caller should retry
    /// (gRPC UNAVAILABLE), where the others need a change first (NOT_FOUND).
    pub retry: bool,
}

/// A refusal that needs a change (to the Plugin, or a Plugin that does not exist).
fn refuse(why: String) -> Unroutable {
    Unroutable { why, retry: false }
}

/// The route to one Plugin, or the reason it has none (phrased for the caller).
fn route(
    plugin: &Plugin,
    key: &PluginKey,
    endpoints: &HashMap<(String, String), Vec<String>>,
) -> Result<Route, Unroutable> {
    if plugin.metadata.deletion_timestamp.is_some() {
        return Err(refuse(format!("Plugin {key} is being deleted")));
    }
    if !plugin.spec.enabled {
        return Err(refuse(format!(
            "Plugin {key} is disabled (spec.enabled: false); enable it to call it"
        )));
    }
    if let Some(why) = plugin.auto_disabled() {
        return Err(refuse(format!(
            "Plugin {key} was auto-disabled ({why}); after fixing it, {}",
            plugin.re_enable_hint()
        )));
    }
    let status = plugin.status.clone().unwrap_or_default();
    // Degraded with a last good revision: a newer revision is blocked or failed and the last good
    // one still serves. Without one, nothing serves. Deploying with an approved revision: pods are
    // being added or replaced (a scale, a deleted pod, a rolling update) and the ready ones serve
    // meanwhile — refusing every call until the last pod is ready would turn the loss of one pod
    // of three into an outage.
    let approved = [&status.current_revision, &status.last_good_revision]
        .into_iter()
        .flatten()
        .any(|rev| status.revisions.iter().any(|r| &r.revision == rev));
    match status.phase {
        Some(PluginPhase::Active) => {}
        Some(PluginPhase::Degraded) if status.last_good_revision.is_some() => {}
        Some(PluginPhase::Deploying) if approved => {}
        phase => {
            // Not looked at yet, or its first revision rolling out: the operator is at work,
            // the caller retries. The other phases need a change first.
            let retry = matches!(
                phase,
                None | Some(PluginPhase::Pending | PluginPhase::Deploying)
            );
            let phase = phase.map_or("Pending".to_string(), |p| format!("{p:?}"));
            return Err(Unroutable {
                why: format!(
                    "Plugin {key} is {phase}, not Active; `kubectl describe plugin -n {} {}` says why",
                    key.namespace, key.name
                ),
                retry,
            });
        }
    }
    let service = child_name(&key.name);
    let ready = endpoints
        .get(&(key.namespace.clone(), service))
        .filter(|e| !e.is_empty())
        .ok_or_else(|| Unroutable {
            why: format!(
                "Plugin {key} has no ready pod yet (starting, restarting or scaling up); retry shortly"
            ),
            retry: true,
        })?;
    let hooks = approved_hooks(&status);
    Ok(Route {
        plugin: key.clone(),
        uid: plugin.uid().unwrap_or_default(),
        version: plugin.spec.version.clone(),
        endpoints: ready.clone(),
        hooks,
        auto_disable: status.limits.as_ref().and_then(|l| l.auto_disable.clone()),
        verified: verified_revisions(&status),
    })
}

/// The verified bundle and API version of every revision the status keeps a record of (the
/// current and the last good one, and while a revision rolls out the one it replaced: pods of
/// each may serve). Empty when any of them lacks one — a record from before the fields: checking
/// only some revisions would refuse the pods of the others.
fn verified_revisions(status: &airlock_crds::plugin::PluginStatus) -> Vec<VerifiedRevision> {
    status
        .revisions
        .iter()
        .map(|r| {
            Some(VerifiedRevision {
                revision: r.revision.clone(),
                bundle_digest: r.bundle_digest.clone()?,
                plugin_api_version: r.plugin_api_version?,
            })
        })
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default()
}

/// The hooks of the revision that serves, as the controller approved them with it
/// (`status.revisions[].hooks` of `status.currentRevision`, else of `status.lastGoodRevision`);
/// never the spec's settings, which may be a spec the plan blocked (a timeout above the trust
/// level's maxTimeout, say).
///
/// A status written by an Airlock that recorded no hook settings routes the hooks it names
/// (`status.hooks`) at the CRD's defaults (200ms, Fail, priority 100) until the next reconcile
/// records them; the spec is never trusted for them.
///
/// While a Plugin is Deploying a new revision, the ready pods are of both revisions and a call
/// may land on either: only the hooks both revisions were approved with are routed, each with
/// the shorter of the two timeouts (within what either was approved with), the new revision's
/// failure policy and priority otherwise.
fn approved_hooks(status: &airlock_crds::plugin::PluginStatus) -> BTreeMap<Hook, HookRoute> {
    let record_of = |rev: &Option<String>| {
        rev.as_ref()
            .and_then(|rev| status.revisions.iter().find(|r| &r.revision == rev))
            .filter(|r| !r.hooks.is_empty())
    };
    let routes = |record: &airlock_crds::plugin::RevisionRecord| -> BTreeMap<Hook, HookRoute> {
        record
            .hooks
            .iter()
            .map(|h| {
                (
                    h.name,
                    HookRoute {
                        timeout: Duration::from_millis(duration_ms(&h.timeout).unwrap_or(200)),
                        failure_policy: h.failure_policy,
                        priority: h.priority,
                    },
                )
            })
            .collect()
    };
    let (current, last_good) = (
        record_of(&status.current_revision),
        record_of(&status.last_good_revision),
    );
    match (current, last_good) {
        (Some(new), Some(old))
            if status.phase == Some(PluginPhase::Deploying) && new.revision != old.revision =>
        {
            let old = routes(old);
            routes(new)
                .into_iter()
                .filter_map(|(hook, mut route)| {
                    let before = old.get(&hook)?;
                    route.timeout = route.timeout.min(before.timeout);
                    Some((hook, route))
                })
                .collect()
        }
        (Some(record), _) | (None, Some(record)) => routes(record),
        (None, None) => status
            .hooks
            .iter()
            .filter_map(|name| Hook::parse(name))
            .map(|hook| {
                (
                    hook,
                    HookRoute {
                        timeout: Duration::from_millis(200),
                        failure_policy: FailurePolicy::default(),
                        priority: 100,
                    },
                )
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::names::GRPC_PORT;
    use serde_json::json;

    fn plugin(ns: &str, name: &str, phase: &str, hooks: serde_json::Value) -> Plugin {
        let names: Vec<_> = hooks
            .as_array()
            .map(|a| a.iter().map(|h| h["name"].clone()).collect())
            .unwrap_or_default();
        serde_json::from_value(json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}")},
            "spec": {
                "version": "1.0.0",
                "image": "registry.test/p:1",
                "bundle": {"source": {"configMapRef": {"name": "b"}}},
                "pluginApiVersion": 1,
                "hooks": hooks,
            },
            "status": {
                "phase": phase,
                "hooks": names,
                "currentRevision": "r1",
                "revisions": [{"revision": "r1", "hooks": hooks}],
            },
        }))
        .expect("plugin")
    }

    /// Issue 12: a Quarantined or disabled plugin loses the host API at once — the key of one of
    /// its pods (stolen before it stopped) is worth nothing then.
    #[test]
    fn only_a_plugin_that_may_run_may_call_the_host_api() {
        let hooks = json!([{"name": "transform"}]);
        let active = plugin("t", "ok", "Active", hooks.clone());
        let quarantined = plugin("t", "q", "Quarantined", hooks.clone());
        let mut disabled = plugin("t", "d", "Disabled", hooks.clone());
        disabled.spec.enabled = false;
        let mut auto = plugin("t", "a", "Active", hooks.clone());
        auto.status.get_or_insert_default().auto_disabled = Some(
            airlock_crds::plugin::AutoDisabled::under(&auto, "5 timeouts"),
        );
        let table = RouteTable::build([&active, &quarantined, &disabled, &auto], &ips(&[]));
        assert!(table.holder(&PluginKey::new("t", "ok")).is_some());
        for name in ["q", "d", "a"] {
            assert!(table.holder(&PluginKey::new("t", name)).is_none(), "{name}");
        }
    }

    /// The router keeps reporting on every Plugin of the table (its metric series stay): a
    /// disabled or auto-disabled one is not callable but still listed; a deleted one is not.
    #[test]
    fn disabled_plugins_are_listed_but_not_routed() {
        let hooks = json!([{"name": "transform"}]);
        let mut disabled = plugin("t", "d", "Disabled", hooks.clone());
        disabled.spec.enabled = false;
        let mut auto = plugin("t", "a", "Active", hooks.clone());
        auto.status.get_or_insert_default().auto_disabled = Some(
            airlock_crds::plugin::AutoDisabled::under(&auto, "5 timeouts"),
        );
        let table = RouteTable::build([&disabled, &auto], &ips(&[]));
        assert_eq!(table.routes(None).count(), 0);
        let listed: Vec<&PluginKey> = table.plugins().collect();
        assert_eq!(
            listed,
            [&PluginKey::new("t", "a"), &PluginKey::new("t", "d")],
            "{listed:?}"
        );
    }

    /// One ready pod at `ip` for each (namespace, Service).
    fn ips(entries: &[(&str, &str, &str)]) -> HashMap<(String, String), Vec<String>> {
        entries
            .iter()
            .map(|(ns, svc, ip)| {
                (
                    (ns.to_string(), svc.to_string()),
                    vec![format!("{ip}:{GRPC_PORT}")],
                )
            })
            .collect()
    }

    fn svc(name: &str) -> String {
        child_name(name)
    }

    #[test]
    fn an_active_plugin_is_routed_to_its_ready_pods_with_its_hook_settings() {
        let p = plugin(
            "team",
            "fmt",
            "Active",
            json!([{"name": "transform", "timeout": "2s", "failurePolicy": "Ignore", "priority": 5}]),
        );
        let t = RouteTable::build([&p], &ips(&[("team", &svc("fmt"), "198.19.0.9")]));
        let r = t.get(&PluginKey::new("team", "fmt")).expect("route");
        assert_eq!(r.endpoints, vec![format!("198.19.0.9:{GRPC_PORT}")]);
        assert_eq!(
            r.hooks[&Hook::Transform],
            HookRoute {
                timeout: Duration::from_secs(2),
                failure_policy: FailurePolicy::Ignore,
                priority: 5
            }
        );
    }

    /// Issue 13: a plugin whose pods are all starting or terminating (an EndpointSlice with no
    /// ready endpoint) gets no call: the caller learns to retry instead of a connection error.
    #[test]
    fn an_active_plugin_without_a_ready_pod_is_not_routed() {
        let p = plugin("a", "p", "Active", json!([{"name": "transform"}]));
        let none_ready = HashMap::from([(("a".to_string(), svc("p")), Vec::new())]);
        let t = RouteTable::build([&p], &none_ready);
        let refused = t.get(&PluginKey::new("a", "p")).expect_err("no route");
        let why = &refused.why;
        assert!(
            why.contains("no ready pod yet") && why.contains("retry"),
            "{why}"
        );
        assert!(refused.retry, "the caller is told to retry");
    }

    #[test]
    fn plugins_that_cannot_be_called_say_why() {
        let hooks = json!([{"name": "transform"}]);
        let mut disabled = plugin("a", "off", "Disabled", hooks.clone());
        disabled.spec.enabled = false;
        // Deploying, nothing approved yet (a Deploying plugin with an approved revision serves).
        let mut deploying = plugin("a", "new", "Deploying", hooks.clone());
        deploying.status.as_mut().expect("status").revisions.clear();
        let mut auto = plugin("a", "bad", "Active", hooks.clone());
        auto.status.get_or_insert_default().auto_disabled = Some(
            airlock_crds::plugin::AutoDisabled::under(&auto, "5 consecutive timeouts"),
        );
        let never_served = plugin("a", "never", "Degraded", hooks.clone());
        let mut still_serving = plugin("a", "serving", "Degraded", hooks.clone());
        still_serving
            .status
            .as_mut()
            .expect("status")
            .last_good_revision = Some("r1".into());
        let pending = plugin("a", "pending", "Pending", hooks.clone());
        let no_service = plugin("a", "lonely", "Active", hooks);
        let t = RouteTable::build(
            [
                &disabled,
                &deploying,
                &auto,
                &never_served,
                &still_serving,
                &pending,
                &no_service,
            ],
            &ips(&[
                ("a", &svc("off"), "198.19.0.1"),
                ("a", &svc("new"), "198.19.0.2"),
                ("a", &svc("bad"), "198.19.0.3"),
                ("a", &svc("never"), "198.19.0.4"),
                ("a", &svc("serving"), "198.19.0.5"),
            ]),
        );
        assert!(
            t.get(&PluginKey::new("a", "serving")).is_ok(),
            "the last good revision serves"
        );
        let why = |n: &str| t.get(&PluginKey::new("a", n)).expect_err("no route").why;
        assert!(why("off").contains("spec.enabled: false"), "{}", why("off"));
        assert!(why("new").contains("is Deploying"), "{}", why("new"));
        assert!(why("bad").contains("auto-disabled (5 consecutive timeouts)"));
        assert!(why("bad").contains("spec.reEnable"));
        assert!(why("never").contains("is Degraded"), "{}", why("never"));
        let retry = |n: &str| t.get(&PluginKey::new("a", n)).expect_err("no route").retry;
        assert!(retry("new"), "a first rollout under way: retry");
        assert!(retry("pending"), "not looked at yet: retry");
        assert!(
            !retry("never") && !retry("off") && !retry("bad"),
            "these need a change first"
        );
        assert!(why("lonely").contains("no ready pod"), "{}", why("lonely"));
        assert!(why("ghost").contains("there is no Plugin a/ghost"));
    }

    /// Issue 12: the settings the router calls with are the approved ones. A tenant who raises
    /// a hook's timeout above the trust level's maxTimeout gets a blocked plan (Degraded, the
    /// old revision keeps serving) — and the calls keep the approved timeout, priority and
    /// failure policy, and no hook the spec adds.
    #[test]
    fn a_blocked_spec_does_not_change_how_hooks_are_called() {
        let mut p = plugin(
            "a",
            "p",
            "Active",
            json!([{"name": "transform", "timeout": "2s", "priority": 50}]),
        );
        p.spec.hooks = serde_json::from_value(json!([
            {"name": "transform", "timeout": "30s", "failurePolicy": "Ignore", "priority": 0},
            {"name": "onEvent"},
        ]))
        .expect("hooks");
        p.status.as_mut().expect("status").phase = Some(PluginPhase::Degraded);
        p.status.as_mut().expect("status").last_good_revision = Some("r1".into());
        let t = RouteTable::build([&p], &ips(&[("a", &svc("p"), "198.19.0.1")]));
        let r = t.get(&PluginKey::new("a", "p")).expect("route");
        assert_eq!(
            r.hooks,
            BTreeMap::from([(
                Hook::Transform,
                HookRoute {
                    timeout: Duration::from_secs(2),
                    failure_policy: FailurePolicy::Fail,
                    priority: 50
                }
            )])
        );
    }

    /// Issue 13: a Plugin Deploying an approved revision (one of its pods deleted, a scale up, a
    /// rolling update) keeps serving on its ready pods; one that has no approved revision yet is
    /// not routed, whatever pods exist.
    #[test]
    fn a_deploying_plugin_serves_on_its_ready_pods_once_a_revision_is_approved() {
        let mut p = plugin("a", "p", "Active", json!([{"name": "transform"}]));
        let status = p.status.as_mut().expect("status");
        status.phase = Some(PluginPhase::Deploying);
        status.current_revision = Some("r1".into());
        let endpoints = ips(&[("a", &svc("p"), "198.19.0.1")]);
        let t = RouteTable::build([&p], &endpoints);
        assert!(t.get(&PluginKey::new("a", "p")).is_ok(), "routed");

        let status = p.status.as_mut().expect("status");
        status.revisions.clear();
        let t = RouteTable::build([&p], &endpoints);
        assert!(
            t.get(&PluginKey::new("a", "p")).is_err(),
            "nothing approved"
        );
    }

    /// While a new revision rolls out, calls may land on pods of either revision: only hooks
    /// both were approved with are routed, at the shorter timeout.
    #[test]
    fn during_a_rollout_only_what_both_revisions_were_approved_with_is_routed() {
        let mut p = plugin(
            "a",
            "p",
            "Deploying",
            json!([{"name": "transform", "timeout": "2s", "priority": 5}, {"name": "onEvent"}]),
        );
        let status = p.status.as_mut().expect("status");
        status.current_revision = Some("r2".into());
        status.last_good_revision = Some("r1".into());
        status.revisions = vec![
            serde_json::from_value(json!({"revision": "r1", "hooks": [{"name": "transform", "timeout": "500ms", "priority": 9}]}))
                .expect("r1"),
            serde_json::from_value(json!({"revision": "r2", "hooks": [{"name": "transform", "timeout": "2s", "priority": 5}, {"name": "onEvent"}]}))
                .expect("r2"),
        ];
        let endpoints = ips(&[("a", &svc("p"), "198.19.0.1")]);
        let t = RouteTable::build([&p], &endpoints);
        let r = t.get(&PluginKey::new("a", "p")).expect("route");
        assert_eq!(
            r.hooks,
            BTreeMap::from([(
                Hook::Transform,
                HookRoute {
                    timeout: Duration::from_millis(500),
                    failure_policy: FailurePolicy::Fail,
                    priority: 5
                }
            )]),
            "onEvent only r2 declares is not routed; the timeout is r1's shorter one"
        );
        // Rolled out: the new revision's settings alone.
        p.status.as_mut().expect("status").phase = Some(PluginPhase::Active);
        let t = RouteTable::build([&p], &endpoints);
        let r = t.get(&PluginKey::new("a", "p")).expect("route");
        assert_eq!(r.hooks.len(), 2);
        assert_eq!(r.hooks[&Hook::Transform].timeout, Duration::from_secs(2));
    }

    /// Issue 17: a route carries what each revision that may serve was verified with (both, while
    /// one rolls out); a record from before the fields makes it check nothing rather than refuse
    /// the pods of the revision it could not name.
    #[test]
    fn a_route_carries_the_verified_bundle_of_each_revision_that_may_serve() {
        let digest = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let mut p = plugin("a", "p", "Deploying", json!([{"name": "transform"}]));
        let status = p.status.as_mut().expect("status");
        status.current_revision = Some("r2".into());
        status.last_good_revision = Some("r1".into());
        status.revisions = vec![
            serde_json::from_value(
                json!({"revision": "r1", "bundleDigest": digest('a'), "pluginApiVersion": 1}),
            )
            .expect("r1"),
            serde_json::from_value(
                json!({"revision": "r2", "bundleDigest": digest('b'), "pluginApiVersion": 1}),
            )
            .expect("r2"),
        ];
        let endpoints = ips(&[("a", &svc("p"), "198.19.0.1")]);
        let r = RouteTable::build([&p], &endpoints)
            .get(&PluginKey::new("a", "p"))
            .expect("route");
        let digests: Vec<&str> = r
            .verified
            .iter()
            .map(|v| v.bundle_digest.as_str())
            .collect();
        assert_eq!(digests, [digest('a'), digest('b')]);
        assert!(r.verified.iter().all(|v| v.plugin_api_version == 1));

        p.status.as_mut().expect("status").revisions[0].bundle_digest = None;
        let r = RouteTable::build([&p], &endpoints)
            .get(&PluginKey::new("a", "p"))
            .expect("route");
        assert!(r.verified.is_empty(), "{:?}", r.verified);
    }

    /// A status written before records carried hook settings: the hooks it names, at the CRD's
    /// defaults, whatever the spec says (the next reconcile records the approved settings).
    #[test]
    fn without_recorded_settings_the_named_hooks_are_called_at_the_defaults() {
        let mut p = plugin(
            "a",
            "p",
            "Active",
            json!([{"name": "transform", "timeout": "30s", "priority": 0}, {"name": "onEvent"}]),
        );
        let status = p.status.as_mut().expect("status");
        status.revisions.clear();
        status.hooks = vec!["transform".into()];
        let t = RouteTable::build([&p], &ips(&[("a", &svc("p"), "198.19.0.1")]));
        let r = t.get(&PluginKey::new("a", "p")).expect("route");
        assert_eq!(
            r.hooks,
            BTreeMap::from([(
                Hook::Transform,
                HookRoute {
                    timeout: Duration::from_millis(200),
                    failure_policy: FailurePolicy::Fail,
                    priority: 100
                }
            )])
        );
    }

    #[test]
    fn subscribers_come_in_priority_then_name_order_and_respect_the_namespace() {
        let p = |ns: &str, n: &str, prio: i32| {
            plugin(
                ns,
                n,
                "Active",
                json!([{"name": "transform", "priority": prio}]),
            )
        };
        let (a, b, c, d) = (
            p("x", "b", 10),
            p("x", "a", 10),
            p("x", "c", 1),
            p("y", "d", 0),
        );
        let t = RouteTable::build(
            [&a, &b, &c, &d],
            &ips(&[
                ("x", &svc("a"), "198.19.0.1"),
                ("x", &svc("b"), "198.19.0.2"),
                ("x", &svc("c"), "198.19.0.3"),
                ("y", &svc("d"), "198.19.0.4"),
            ]),
        );
        let order = |ns| {
            t.subscribers(Hook::Transform, ns)
                .iter()
                .map(|(r, _)| r.plugin.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(order(None), vec!["y/d", "x/c", "x/a", "x/b"]);
        assert_eq!(order(Some("x")), vec!["x/c", "x/a", "x/b"]);
        assert!(t.subscribers(Hook::OnEvent, None).is_empty());
    }
}
