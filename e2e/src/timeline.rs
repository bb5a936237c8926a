//! Where a control-plane bench's time went: for each Plugin (or each of the floor's workloads) the
//! moments its objects were created and became ready, read once from the API server after the run
//! (creation timestamps and condition transition times: nothing is polled while the bench runs, so
//! reading them costs the measured run nothing). `kwok-bench` prints them for Airlock's run and the
//! floor side by side, so a gap between the two shows which stage it sits in: the operator writing a
//! Plugin's Deployment, the cluster making it Available, or the operator reporting it Active.

use std::fmt::Write as _;
use std::time::SystemTime;

use airlock_crds::Plugin;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

/// Seconds from the run's start to each stage, one entry per object that reached it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stages {
    /// (name, seconds) in the order they are printed.
    pub stages: Vec<(&'static str, Vec<f64>)>,
    /// Per object, the wait between two stages (the time it spent in one step).
    pub waits: Vec<Wait>,
}

/// The wait of every object between two stages, and which object waited longest (to look it up
/// in the operator's log and audit stream).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Wait {
    pub name: &'static str,
    pub seconds: Vec<f64>,
    /// `namespace/name` of the object with the longest wait.
    pub slowest: Option<String>,
}

impl Wait {
    fn new(name: &'static str, waits: Vec<(f64, String)>) -> Wait {
        let slowest = waits
            .iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, who)| who.clone());
        Wait {
            name,
            seconds: waits.into_iter().map(|(s, _)| s).collect(),
            slowest,
        }
    }
}

/// Seconds from `start` to `t` (negative when `t` is earlier: a clock the API server reads
/// differently; one machine here, so only rounding to whole seconds).
fn since(start: SystemTime, t: &Time) -> f64 {
    let t: SystemTime = t.0.into();
    match t.duration_since(start) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// When the Deployment's `Available` condition last turned True.
fn available_at(d: &Deployment) -> Option<&Time> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Available" && c.status == "True")?
        .last_transition_time
        .as_ref()
}

/// When the Plugin's `Ready` condition last turned True (phase Active).
fn ready_at(p: &Plugin) -> Option<&Time> {
    p.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")
        .map(|c| &c.last_transition_time)
}

/// The Plugin that owns `d` (its controller reference), if any.
fn owner(d: &Deployment) -> Option<&str> {
    d.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "Plugin" && o.controller == Some(true))
        .map(|o| o.name.as_str())
}

/// Airlock's run: Plugin created → its Deployment written → Available → Plugin Active.
pub fn airlock(start: SystemTime, plugins: &[Plugin], deployments: &[Deployment]) -> Stages {
    let by_plugin: std::collections::HashMap<(String, &str), &Deployment> = deployments
        .iter()
        .filter_map(|d| Some(((d.namespace()?, owner(d)?), d)))
        .collect();
    let mut created = Vec::new();
    let mut written = Vec::new();
    let mut available = Vec::new();
    let mut active = Vec::new();
    let mut to_written = Vec::new();
    let mut to_active = Vec::new();
    for p in plugins {
        let Some(c) = p
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| since(start, t))
        else {
            continue;
        };
        created.push(c);
        let ns = p.namespace().unwrap_or_default();
        let name = p.name_any();
        let who = format!("{ns}/{name}");
        let d = by_plugin.get(&(ns, name.as_str()));
        let w = d.and_then(|d| d.metadata.creation_timestamp.as_ref());
        let w = w.map(|t| since(start, t));
        let a = d.and_then(|d| available_at(d)).map(|t| since(start, t));
        let r = ready_at(p).map(|t| since(start, t));
        if let Some(w) = w {
            written.push(w);
            to_written.push((w - c, who.clone()));
        }
        available.extend(a);
        active.extend(r);
        if let (Some(a), Some(r)) = (a, r) {
            to_active.push((r - a, who));
        }
    }
    Stages {
        stages: vec![
            ("Plugin created", created),
            ("Deployment written", written),
            ("Deployment Available", available),
            ("Plugin Active", active),
        ],
        waits: vec![
            Wait::new("created -> Deployment written", to_written),
            Wait::new("Available -> Plugin Active", to_active),
        ],
    }
}

/// The floor: each Deployment written → Available.
pub fn floor(start: SystemTime, deployments: &[Deployment]) -> Stages {
    let written = deployments
        .iter()
        .filter_map(|d| d.metadata.creation_timestamp.as_ref())
        .map(|t| since(start, t))
        .collect();
    let available = deployments
        .iter()
        .filter_map(available_at)
        .map(|t| since(start, t))
        .collect();
    Stages {
        stages: vec![
            ("Deployment written", written),
            ("Deployment Available", available),
        ],
        waits: Vec::new(),
    }
}

/// The `q`th quantile (0..=1) of `v` by nearest rank; None when empty.
fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1])
}

impl Stages {
    /// One line per stage and wait: how many reached it, p50 / p90 / last, in seconds.
    pub fn render(&self, title: &str) -> String {
        let mut out = format!("{title} (seconds from the first create: p50 / p90 / last)\n");
        let row = |out: &mut String, name: &str, v: &[f64]| {
            let q = |q| quantile(v, q).map_or("-".to_string(), |x| format!("{x:.0}"));
            let _ = writeln!(
                out,
                "  {name:<32} {:>6} objects  {:>5} / {:>5} / {:>5}",
                v.len(),
                q(0.5),
                q(0.9),
                q(1.0)
            );
        };
        for (name, v) in &self.stages {
            row(&mut out, name, v);
        }
        for w in &self.waits {
            row(&mut out, &format!("wait {}", w.name), &w.seconds);
            if let Some(who) = &w.slowest {
                let _ = writeln!(out, "    longest: {who}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    /// `s` (< 60) seconds after [`START`], as the API server writes a timestamp.
    fn at(_start: SystemTime, s: u64) -> String {
        assert!(s < 60);
        format!("2027-01-15T08:00:{s:02}Z")
    }
    /// 2027-01-15T08:00:00Z.
    const START: u64 = 1_800_000_000;

    #[test]
    fn each_plugin_is_followed_through_its_own_deployment() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(START);
        let plugin = |name: &str, created: u64, ready: Option<u64>| -> Plugin {
            let mut v = json!({
                "apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
                "metadata": {"name": name, "namespace": "ns", "creationTimestamp": at(start, created)},
                "spec": {"version": "1.0.0", "image": "r/i@sha256:00",
                    "bundle": {"source": {"configMapRef": {"name": "b"}}}, "pluginApiVersion": 1,
                    "hooks": []}
            });
            if let Some(r) = ready {
                v["status"] = json!({"conditions": [
                    {"type": "Ready", "status": "True", "reason": "Active", "message": "",
                     "lastTransitionTime": at(start, r)}]});
            }
            serde_json::from_value(v).unwrap()
        };
        let deployment = |owner: &str, created: u64, available: Option<u64>| -> Deployment {
            let mut v = json!({
                "metadata": {"name": owner, "namespace": "ns", "creationTimestamp": at(start, created),
                    "ownerReferences": [{"apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin",
                        "name": owner, "uid": "u", "controller": true}]}
            });
            if let Some(a) = available {
                v["status"] = json!({"conditions": [
                    {"type": "Available", "status": "False", "lastTransitionTime": at(start, created)},
                    {"type": "Available", "status": "True", "lastTransitionTime": at(start, a)}]});
            }
            serde_json::from_value(v).unwrap()
        };
        // a: the operator wrote its Deployment 4 s after the create, ready at 10, Active at 12;
        // b: Deployment at 20 (a wait of 19 s), not Available yet; c: no Deployment at all.
        let plugins = [
            plugin("a", 0, Some(12)),
            plugin("b", 1, None),
            plugin("c", 2, None),
        ];
        let deployments = [deployment("a", 4, Some(10)), deployment("b", 20, None)];
        let s = airlock(start, &plugins, &deployments);
        assert_eq!(s.stages[0].1, vec![0.0, 1.0, 2.0]);
        assert_eq!(s.stages[1].1, vec![4.0, 20.0]);
        assert_eq!(s.stages[2].1, vec![10.0]);
        assert_eq!(s.stages[3].1, vec![12.0]);
        assert_eq!(s.waits[0].seconds, vec![4.0, 19.0]);
        assert_eq!(s.waits[0].slowest.as_deref(), Some("ns/b"));
        assert_eq!(s.waits[1].seconds, vec![2.0]);
        assert_eq!(s.waits[1].slowest.as_deref(), Some("ns/a"));
        let text = s.render("airlock");
        assert!(
            text.contains("Deployment written                    2 objects      4 /    20 /    20"),
            "{text}"
        );
        assert!(text.contains("wait Available -> Plugin Active"), "{text}");
        assert!(text.contains("    longest: ns/b\n"), "{text}");

        let f = floor(start, &deployments);
        assert_eq!(f.stages[0].1, vec![4.0, 20.0]);
        assert_eq!(f.stages[1].1, vec![10.0]);
    }

    #[test]
    fn quantiles_by_nearest_rank_and_nothing_for_no_objects() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(5.0));
        assert_eq!(quantile(&v, 0.9), Some(9.0));
        assert_eq!(quantile(&v, 1.0), Some(10.0));
        assert_eq!(quantile(&[], 0.5), None);
        assert!(Stages::default().render("x").starts_with("x ("));
    }
}
