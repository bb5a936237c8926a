//! `make chaos` (issue 16): Airlock's promises while its own pods fail around the callers, on the
//! local cluster. Each scenario is bounded in rounds and time, prints what it measured and a
//! verdict, and the process exits non-zero when any scenario failed. `CHAOS_SCENARIOS` picks
//! scenarios (comma-separated; default all); the suite's smoke (`e2e/tests/chaos_smoke.rs`) runs
//! one round of each.
//!
//! - `router-pod-deleted`: host applications call a plugin through the router Service from
//!   `CHAOS_WORKERS` connections (default 8) while router pods go one at a time (`CHAOS_ROUNDS`,
//!   default 5; the chart runs two replicas): deleted with their grace period (a drain, a rolling
//!   update) in odd rounds, killed without one (a node failure) in even rounds. Promise: a caller
//!   sees at most the one call it had in flight on that pod fail, and its calls succeed again once
//!   the replacement is Ready; none fails while no pod is going; the plugin is not auto-disabled;
//!   no router container restarts. A call tonic never sent (its connection had the router's
//!   GOAWAY) is sent again at once, as gRPC's transparent retry does, and counted.
//! - `operator-leader-killed`: `CHAOS_PLUGINS` Plugins (default 100, every tenth one running) are
//!   created, upgraded, disabled and deleted while the operator's leader is killed without grace
//!   `CHAOS_KILLS` times (default 20) at random moments. Promise: every Plugin converges to what its
//!   spec says, exactly one of each child for each running Plugin and none left of deleted ones;
//!   at the CloudEvents sink (when the e2e's runs), every surviving Plugin's final phase has its
//!   audit record and no transition is recorded twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use airlock_crds::Plugin;
use airlock_e2e::callers::Bearer;
use airlock_e2e::install::NAMESPACE;
use airlock_e2e::router::{Fixture, connect_with, in_fixture};
use airlock_e2e::sandbox::{Sandbox, in_sandbox};
use airlock_proto::router::v1::{InvokeRequest, PluginRef};
use anyhow::{Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use serde_json::json;
use tokio::sync::Mutex;

const ROUTER_SELECTOR: &str = "app.kubernetes.io/name=airlock-router";

#[tokio::main]
async fn main() -> Result<()> {
    let wanted = std::env::var("CHAOS_SCENARIOS").unwrap_or_default();
    let wants = |name: &str| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == name);
    let mut verdicts: Vec<(&str, Result<String>)> = Vec::new();
    if wants("router-pod-deleted") {
        let outcome = in_fixture("chaos-router", &["log"], router_pod_deleted).await;
        verdicts.push(("router-pod-deleted", outcome.map(|()| String::new())));
    }
    if wants("operator-leader-killed") {
        let outcome = in_sandbox("chaos-operator", &["log"], operator_leader_killed).await;
        verdicts.push(("operator-leader-killed", outcome.map(|()| String::new())));
    }
    println!("== airlock chaos: verdicts ==");
    let mut failed = 0;
    for (name, verdict) in &verdicts {
        match verdict {
            Ok(_) => println!("{name}: PASS"),
            Err(e) => {
                failed += 1;
                println!("{name}: FAIL: {e:#}");
            }
        }
    }
    ensure!(
        !verdicts.is_empty(),
        "no scenario named in CHAOS_SCENARIOS={wanted}"
    );
    ensure!(failed == 0, "{failed} chaos scenario(s) failed");
    Ok(())
}

/// One call's outcome, as a caller saw it.
#[derive(Debug)]
struct Outcome {
    worker: usize,
    at: Duration,
    took: Duration,
    error: Option<String>,
    /// The first try was never sent and was sent again ([`never_sent`]).
    unsent: bool,
}

/// Whether a failed call never left the client: hyper dropped it unsent because its connection
/// was closing (a graceful GOAWAY). Safe to send again whatever the call does.
fn never_sent(status: &tonic::Status) -> bool {
    let mut cause = std::error::Error::source(status);
    while let Some(c) = cause {
        if c.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        cause = c.source();
    }
    false
}

async fn router_pod_deleted(f: &Fixture) -> Result<()> {
    let rounds = airlock_e2e::env_count("CHAOS_ROUNDS", 5);
    let workers = airlock_e2e::env_count("CHAOS_WORKERS", 8);
    let hooks = json!([{"name": "transform", "timeout": "2s"}]);
    f.apply("hello", "hello", hooks, json!(["log"]), json!({}))
        .await?;
    f.wait_serving(&["hello"], "transform").await?;
    let pods: Api<Pod> = Api::namespaced(f.client.clone(), NAMESPACE);
    let restarts_before = airlock_e2e::router::router_restarts(&f.client).await?;

    println!(
        "== chaos router-pod-deleted: {workers} callers, {rounds} router pods deleted one at a time =="
    );
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::<Outcome>::new()));
    let mut tasks = Vec::new();
    for w in 0..workers {
        // One connection each: the Service balances connections, so both replicas get callers.
        let mut grpc = connect_with(&f.client, Bearer::token(&f.token)?).await?;
        let (stop, outcomes) = (stop.clone(), outcomes.clone());
        let plugin = Some(PluginRef {
            namespace: f.ns().into(),
            name: "hello".into(),
        });
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let at = started.elapsed();
                let call = Instant::now();
                let request = InvokeRequest {
                    plugin: plugin.clone(),
                    hook: "transform".into(),
                    payload_json: json!({"name": format!("w{w}-{n}")}).to_string(),
                    deadline_ms: 5000,
                    invocation_id: format!("chaos-w{w}-{n}"),
                };
                let mut answer = grpc.invoke(request.clone()).await;
                // A call the client never sent: tonic's connection had received the router's
                // graceful GOAWAY, and hyper dropped the request unsent (Canceled, "connection
                // closed"). gRPC's transparent retry (grpc-go, grpc-java) sends such a call
                // again at once; tonic does not, so this caller does, once, and counts it.
                let unsent = matches!(&answer, Err(s) if never_sent(s));
                if unsent {
                    answer = grpc.invoke(request).await;
                }
                let error = match answer {
                    Ok(a) if a.get_ref().output_json.contains(&format!("w{w}-{n}")) => None,
                    Ok(a) => Some(format!("wrong output {}", a.get_ref().output_json)),
                    Err(s) => Some(format!("{:?}: {} [{}]", s.code(), s.message(), chain(&s))),
                };
                outcomes.lock().await.push(Outcome {
                    worker: w,
                    at,
                    took: call.elapsed(),
                    error,
                    unsent,
                });
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut windows = Vec::new();
    for round in 1..=rounds {
        let mut running: Vec<String> = pods
            .list(&ListParams::default().labels(ROUTER_SELECTOR))
            .await?
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| p.metadata.name)
            .collect();
        running.sort();
        ensure!(
            running.len() >= 2,
            "the router runs {} pod(s): this scenario needs two (router.replicas)",
            running.len()
        );
        let name = running[round % running.len()].clone();
        let from = started.elapsed();
        // Odd rounds: deleted as a drain or a rolling update does (SIGTERM, grace period);
        // even rounds: killed (no grace), as a node failure does.
        let killed = round % 2 == 0;
        let grace = DeleteParams {
            grace_period_seconds: killed.then_some(0),
            ..Default::default()
        };
        pods.delete(&name, &grace).await?;
        let back = wait_routers_ready(&f.client, &name).await?;
        // Calls keep going a little after the replacement is Ready: late effects show too.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let to = started.elapsed();
        windows.push((round, name, killed, from, to, back));
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let outcomes = outcomes.lock().await;
    let total = outcomes.len();
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "{:>5}  {:<40} {:<7} {:>8} {:>8} {:>9} {:>12}",
        "round", "router pod", "how", "calls", "failed", "p99 ms", "replaced in"
    );
    // The promise: a caller sees at most the call it had in flight on the pod fail, once per
    // round; every caller's calls succeed again once the replacement is Ready.
    let mut broken = Vec::new();
    for (round, name, killed, from, to, back) in &windows {
        let inside: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.at >= *from && o.at < *to)
            .collect();
        let mut took: Vec<Duration> = inside.iter().map(|o| o.took).collect();
        took.sort();
        let p99 = took
            .get(((took.len() as f64 - 1.0) * 0.99).round() as usize)
            .copied()
            .unwrap_or_default();
        let mut per_worker: BTreeMap<usize, usize> = BTreeMap::new();
        for o in inside.iter().filter(|o| o.error.is_some()) {
            *per_worker.entry(o.worker).or_default() += 1;
        }
        if let Some((w, n)) = per_worker.iter().find(|(_, n)| **n > 1) {
            broken.push(format!("round {round}: caller {w} saw {n} failed calls"));
        }
        for w in 0..workers {
            let last = inside.iter().rfind(|o| o.worker == w);
            if last.is_some_and(|o| o.error.is_some()) {
                broken.push(format!(
                    "round {round}: caller {w} was still failing at its end"
                ));
            }
        }
        println!(
            "{round:>5}  {name:<40} {:<7} {:>8} {:>8} {:>9.1} {:>11.1}s",
            if *killed { "killed" } else { "deleted" },
            inside.len(),
            inside.iter().filter(|o| o.error.is_some()).count(),
            p99.as_secs_f64() * 1000.0,
            back.as_secs_f64()
        );
    }
    let failures: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    let outside = failures
        .iter()
        .filter(|o| {
            !windows
                .iter()
                .any(|(_, _, _, from, to, _)| o.at >= *from && o.at < *to)
        })
        .count();
    if outside > 0 {
        broken.push(format!(
            "{outside} calls failed while no router pod was going"
        ));
    }
    let mut by_error: BTreeMap<&str, usize> = BTreeMap::new();
    for o in &failures {
        *by_error
            .entry(o.error.as_deref().unwrap_or(""))
            .or_default() += 1;
    }
    let unsent = outcomes.iter().filter(|o| o.unsent).count();
    println!(
        "calls: {total} in {elapsed:.0}s ({:.0}/s), failed: {}; sent again because tonic had not sent them (GOAWAY): {unsent}",
        total as f64 / elapsed,
        failures.len()
    );
    for (error, n) in &by_error {
        println!("  {n} × {error}");
    }

    let plugin = f.ns.api::<Plugin>().get("hello").await?;
    let disabled = plugin.auto_disabled_record().is_some();
    let restarts = airlock_e2e::router::router_restarts(&f.client).await? - restarts_before;
    println!("auto-disabled: {disabled}, router container restarts: {restarts}");
    if !broken.is_empty() || disabled || restarts > 0 {
        bail!(
            "{}; auto-disabled {disabled}, router restarts {restarts}",
            broken.join("; ")
        );
    }
    Ok(())
}

/// The causes under a failed call's status, for the report.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = Vec::new();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push(format!("{c:?}"));
        cause = c.source();
    }
    out.join(" <- ")
}

/// Waits until `deleted` is gone and the router Deployment has all its replicas Ready again;
/// returns how long that took.
async fn wait_routers_ready(client: &kube::Client, deleted: &str) -> Result<Duration> {
    let started = Instant::now();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    loop {
        let d = deployments.get("airlock-router").await?;
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        // Counted from the pods, not the Deployment's status, which lags a pod killed without
        // grace (its object is gone at once).
        let ready = pods
            .list(&ListParams::default().labels(ROUTER_SELECTOR))
            .await?
            .items
            .iter()
            .filter(|p| p.metadata.name.as_deref() != Some(deleted))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            })
            .count();
        let gone = pods.get_opt(deleted).await?.is_none();
        if gone && ready >= usize::try_from(want).unwrap_or(1) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > Duration::from_secs(180) {
            bail!("the router Deployment did not have {want} Ready replicas again within 180s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// What a chaos Plugin's spec asks for at the end, by its index.
fn running(i: usize) -> bool {
    // Every tenth runs; half of those are disabled again in the third step.
    i.is_multiple_of(10) && !i.is_multiple_of(20)
}

fn deleted(i: usize) -> bool {
    i % 3 == 1
}

async fn operator_leader_killed(s: &Sandbox) -> Result<()> {
    let count = airlock_e2e::env_count("CHAOS_PLUGINS", 100);
    let kills = airlock_e2e::env_count("CHAOS_KILLS", 20);
    println!(
        "== chaos operator-leader-killed: {count} Plugins created, upgraded, disabled and deleted while the operator's leader is killed {kills} times =="
    );
    s.with_hello_bundle().await?;
    let plugins: Api<Plugin> = s.ns.api();
    let started = Instant::now();
    let done = Arc::new(AtomicBool::new(false));
    let killer = tokio::spawn(kill_leaders(s.client.clone(), kills, done.clone()));
    let name = |i: usize| format!("p{i:03}");
    let manifest = |i: usize, memory: &str, enabled: bool| -> Result<serde_json::Value> {
        let mut p = s.hello(&name(i))?;
        p["spec"]["enabled"] = json!(enabled);
        p["spec"]["resources"]["limits"]["memory"] = json!(memory);
        Ok(p)
    };
    // 1. Created: every tenth enabled.
    for i in 0..count {
        s.apply(&manifest(i, "32Mi", i.is_multiple_of(10))?).await?;
    }
    // 2. Upgraded: a new memory limit, so the running ones roll out a new revision.
    for i in 0..count {
        s.apply(&manifest(i, "48Mi", i.is_multiple_of(10))?).await?;
    }
    // 3. Half of the running ones disabled.
    for i in (0..count).filter(|i| i.is_multiple_of(20)) {
        s.apply(&manifest(i, "48Mi", false)?).await?;
    }
    // 4. A third deleted.
    for i in (0..count).filter(|i| deleted(*i)) {
        plugins.delete(&name(i), &DeleteParams::default()).await?;
    }
    let changed = started.elapsed();

    // Converged: each remaining Plugin observed its last spec and is in the phase it asks for;
    // the deleted ones are gone. Watched while the kills go on (when it first holds) and after
    // the last one (it must still hold, or come back).
    let waiting = async || -> Result<Vec<String>> {
        let list = plugins.list(&ListParams::default()).await?.items;
        let mut waiting = Vec::new();
        for p in &list {
            let i: usize = p.name_any()[1..].parse().unwrap_or(usize::MAX);
            let status = p.status.clone().unwrap_or_default();
            let want = if running(i) {
                airlock_crds::plugin::PluginPhase::Active
            } else {
                airlock_crds::plugin::PluginPhase::Disabled
            };
            if deleted(i)
                || status.observed_generation != p.metadata.generation
                || status.phase != Some(want)
            {
                waiting.push(format!("{} ({:?})", p.name_any(), status.phase));
            }
        }
        Ok(waiting)
    };
    let mut first_converged = None;
    while !killer.is_finished() {
        if first_converged.is_none() && waiting().await?.is_empty() {
            first_converged = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let killed = killer.await??;
    let last_kill = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let deadline = Instant::now() + Duration::from_secs(600);
    let converged = loop {
        let waiting = waiting().await?;
        if waiting.is_empty() {
            break started.elapsed();
        }
        if Instant::now() > deadline {
            bail!(
                "{} Plugins did not converge within 600s of the last kill: {}",
                waiting.len(),
                waiting.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };

    // Children: one of each for every running Plugin, none for the others (a disabled plugin
    // keeps no pods; a deleted one nothing at all, once garbage collection ran).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let problems = child_problems(s, count).await?;
        if problems.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "children wrong 120s after convergence: {}",
                problems.join("; ")
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "changes applied in {:.1}s; every Plugin first converged at {} with leaders still being killed; {killed} leaders killed, the last at {:.1}s; converged again {:.1}s after it",
        changed.as_secs_f64(),
        first_converged.map_or("(not before the last kill)".to_string(), |t| format!(
            "{:.1}s",
            t.as_secs_f64()
        )),
        last_kill.as_secs_f64(),
        (converged.saturating_sub(last_kill)).as_secs_f64()
    );
    ensure!(
        killed == kills,
        "only {killed} of {kills} leaders were killed"
    );
    audit_records(s, count).await
}

/// The audit stream's promise under leader kills, read from the CloudEvents sink the e2e runs
/// (`e2e/event-sink`; helm-install.sh points Airlock at it when it runs): every surviving Plugin's
/// final phase was recorded, and each transition once — a record repeated back to back for one
/// Plugin (same uid, event, status and reason) is a transition recorded twice.
async fn audit_records(s: &Sandbox, count: usize) -> Result<()> {
    const SINK: &str = "http://198.19.255.1:8099/events";
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "10", SINK])
        .output()?;
    if !out.status.success() {
        println!(
            "audit records: not counted (no CloudEvents sink at {SINK}: e2e/cluster/collector.sh, then e2e/helm-install.sh)"
        );
        return Ok(());
    }
    let events: Vec<serde_json::Value> =
        serde_json::from_slice::<Option<Vec<serde_json::Value>>>(&out.stdout)?.unwrap_or_default();
    let prefix = format!(
        "/apis/airlock.dev/v1alpha1/namespaces/{}/plugins/",
        s.ns.name
    );
    let mut by_plugin: BTreeMap<String, Vec<(String, String, String, String)>> = BTreeMap::new();
    for e in &events {
        let Some(name) = e["source"].as_str().and_then(|s| s.strip_prefix(&prefix)) else {
            continue;
        };
        if !e["type"]
            .as_str()
            .is_some_and(|t| t.starts_with("dev.airlock.audit."))
        {
            continue;
        }
        let d = &e["data"];
        let field = |k: &str| d[k].as_str().unwrap_or_default().to_string();
        by_plugin.entry(name.to_string()).or_default().push((
            d["plugin"]["uid"].as_str().unwrap_or_default().to_string(),
            field("event"),
            field("status"),
            field("reason"),
        ));
    }
    let records: usize = by_plugin.values().map(Vec::len).sum();
    let mut repeated = Vec::new();
    for (name, list) in &by_plugin {
        for pair in list.windows(2) {
            if pair[0] == pair[1] {
                repeated.push(format!("{name}: {} {} {}", pair[1].1, pair[1].2, pair[1].3));
            }
        }
    }
    let mut lost = Vec::new();
    for i in (0..count).filter(|i| !deleted(*i)) {
        let name = format!("p{i:03}");
        let want = if running(i) { "Active" } else { "Disabled" };
        let recorded = by_plugin
            .get(&name)
            .is_some_and(|l| l.iter().any(|r| r.1 == "Phase" && r.3 == want));
        if !recorded {
            lost.push(format!("{name} ({want})"));
        }
    }
    println!(
        "audit records at the sink: {records} for {} Plugins; transitions recorded twice: {}; final phases not recorded: {}",
        by_plugin.len(),
        repeated.len(),
        lost.len()
    );
    ensure!(
        lost.is_empty(),
        "final phases without an audit record: {}",
        lost.join(", ")
    );
    ensure!(
        repeated.is_empty(),
        "transitions recorded twice: {}",
        repeated.join("; ")
    );
    Ok(())
}

/// What is wrong with the children of the chaos Plugins: duplicates, leftovers, missing ones.
async fn child_problems(s: &Sandbox, count: usize) -> Result<Vec<String>> {
    let by_plugin = |kind: &str, items: Vec<BTreeMap<String, String>>| {
        let mut n: BTreeMap<String, usize> = BTreeMap::new();
        for labels in items {
            if let Some(p) = labels.get("airlock.dev/plugin") {
                *n.entry(p.clone()).or_default() += 1;
            }
        }
        (kind.to_string(), n)
    };
    let lp = ListParams::default().labels("app.kubernetes.io/managed-by=airlock");
    let labels_of = |m: &kube::api::ObjectMeta| m.labels.clone().unwrap_or_default();
    let counted = [
        by_plugin(
            "Deployment",
            s.ns.api::<Deployment>()
                .list(&lp)
                .await?
                .items
                .iter()
                .map(|d| labels_of(&d.metadata))
                .collect(),
        ),
        by_plugin(
            "Pod",
            s.ns.api::<Pod>()
                .list(&lp)
                .await?
                .items
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
                .map(|p| labels_of(&p.metadata))
                .collect(),
        ),
    ];
    let mut problems = Vec::new();
    for i in 0..count {
        let name = format!("p{i:03}");
        for (kind, n) in &counted {
            let have = n.get(&name).copied().unwrap_or(0);
            let want = match kind.as_str() {
                "Deployment" => usize::from(!deleted(i) && i.is_multiple_of(10)),
                _ => usize::from(!deleted(i) && running(i)),
            };
            // A disabled plugin may keep its Deployment scaled to zero.
            let ok = if kind == "Deployment" && !running(i) && !deleted(i) {
                have <= 1
            } else {
                have == want
            };
            if !ok {
                problems.push(format!("{name}: {have} {kind}(s), want {want}"));
            }
        }
    }
    Ok(problems)
}

/// Kills the operator's leader (the holder of its Lease) `kills` times without grace, each after
/// a new leader took over and a random 1–6 s more; returns how many it killed.
async fn kill_leaders(client: kube::Client, kills: usize, done: Arc<AtomicBool>) -> Result<usize> {
    use k8s_openapi::api::coordination::v1::Lease;
    let leases: Api<Lease> = Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client, NAMESPACE);
    let mut killed = 0;
    let mut last: Option<String> = None;
    let mut seed = std::process::id() as u64;
    while killed < kills && !done.load(Ordering::Relaxed) {
        // xorshift: a spread of moments, no dependency for it.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        tokio::time::sleep(Duration::from_millis(1000 + seed % 5000)).await;
        let holder = leases
            .get_opt("airlock-operator")
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity);
        let Some(holder) = holder.filter(|h| Some(h) != last.as_ref()) else {
            continue;
        };
        if pods.get_opt(&holder).await?.is_none() {
            continue;
        }
        pods.delete(
            &holder,
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..Default::default()
            },
        )
        .await?;
        killed += 1;
        last = Some(holder);
    }
    Ok(killed)
}
