//! Hooks through the router, as a host application calls them: the sample plugins
//! (data-formatter, event-logger, crash-test, hello) in all three modes — invoke one, broadcast an
//! event, a transform pipeline — crash-test's failure paths contained while the others keep
//! answering, auto-disable after repeated timeouts (status, Event, audit record, metric) and
//! re-enabling. Airlock is installed by its Helm chart; nothing is mocked.

use std::time::{Duration, Instant};

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_e2e::plugins::{auto_disable, condition, phase, re_enable, wait_plugin};
use airlock_e2e::router::{self, Fixture, active, in_fixture};
use airlock_e2e::wait;
use airlock_proto::router::v1::PluginResult;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tonic::Code;

#[tokio::test]
async fn hooks_through_the_router_and_a_misbehaving_plugin_contained() -> Result<()> {
    in_fixture("router", &["log", "read:data", "storage:write"], scenario).await
}

/// The same contract in three languages: the Rust SDK (hello), Go with only its standard library
/// (go-greeter) and Python whose code ships in the signed bundle (python-upper), each called
/// through the router.
#[tokio::test]
async fn plugins_in_rust_go_and_python_answer_through_the_router() -> Result<()> {
    in_fixture("languages", &["log"], async |f: &Fixture| {
        let transform = json!([{"name": "transform", "timeout": "2s"}]);
        let python =
            json!([{"name": "transform", "timeout": "2s"}, {"name": "onEvent", "timeout": "2s"}]);
        for (name, hooks) in [
            ("hello", &transform),
            ("go-greeter", &transform),
            ("python-upper", &python),
        ] {
            f.apply(name, name, hooks.clone(), json!(["log"]), json!({}))
                .await?;
        }
        f.wait_serving(&["hello", "go-greeter", "python-upper"], "transform")
            .await?;
        f.expect_greeting("hello", json!({"name": "rust"}), "hello, rust")
            .await?;
        f.expect_greeting(
            "go-greeter",
            json!({"name": "gopher"}),
            "hello from Go, gopher",
        )
        .await?;
        let out = f
            .invoke("python-upper", "transform", json!({"text": "snake"}))
            .await?;
        ensure!(out["text"] == "SNAKE", "python: {out}");
        f.expect_failure(
            "python-upper",
            "transform",
            json!({}),
            Code::Aborted,
            "needs a string",
        )
        .await
        .context("a Python exception is an error answer (python-upper needs a text)")
    })
    .await
}

async fn scenario(f: &Fixture) -> Result<()> {
    let api = f.ns.api::<Plugin>();
    for (name, hooks, permissions) in [
        (
            "hello",
            json!([{"name": "transform", "timeout": "1s", "priority": 100}]),
            json!(["log"]),
        ),
        (
            "data-formatter",
            json!([{"name": "transform", "timeout": "1s", "priority": 10}]),
            json!(["read:data", "log"]),
        ),
        (
            "event-logger",
            json!([{"name": "onEvent", "timeout": "1s"}]),
            json!(["log", "storage:write"]),
        ),
        (
            "crash-test",
            json!([
                {"name": "onLoad", "timeout": "1s"},
                {"name": "transform", "timeout": "1s", "failurePolicy": "Ignore", "priority": 50},
                {"name": "onEvent", "timeout": "300ms", "failurePolicy": "Ignore"},
            ]),
            json!(["log"]),
        ),
    ] {
        f.apply(name, name, hooks, permissions, json!({})).await?;
    }
    // crash-test's transform answers with an error, which is an answer.
    let transformers = ["hello", "data-formatter", "crash-test"];
    f.wait_serving(&transformers, "transform").await?;
    f.wait_serving(&["event-logger"], "onEvent").await?;

    // Invoke one plugin.
    f.expect_greeting("hello", json!({"name": "router"}), "hello, router")
        .await?;
    one_trace_across_router_and_shim(f).await?;
    f.expect_failure(
        "nobody",
        "transform",
        json!({}),
        Code::NotFound,
        "no Plugin",
    )
    .await
    .context("an unknown plugin")?;
    f.expect_failure(
        "hello",
        "onEvent",
        json!({}),
        Code::InvalidArgument,
        "it declares transform",
    )
    .await
    .context("an undeclared hook")?;

    // A transform pipeline in priority order: data-formatter (10) tidies, crash-test (50)
    // throws and is skipped (failurePolicy Ignore), hello (100) greets the tidied name.
    let pipeline = f
        .transform(json!({"name": "  Ada   Lovelace "}), 3000, "e2e-pipeline")
        .await?;
    let out: Value = serde_json::from_str(&pipeline.output_json)?;
    ensure!(
        out["greeting"] == "hello, Ada Lovelace",
        "pipeline output {out}"
    );
    let steps = outcomes(&pipeline.steps);
    ensure!(
        steps
            == [
                ("data-formatter", "OK"),
                ("crash-test", "ABORTED"),
                ("hello", "OK")
            ],
        "pipeline steps {steps:?}: {:?}; crash-test: {}",
        pipeline.steps,
        f.describe("crash-test").await
    );

    // Clients nobody here wrote: grpcurl (through server reflection) and Python grpcio, each with
    // the caller's token in its environment (as the README shows: never on a command line).
    let addr = router::address(&f.client).await?;
    let token = [("AIRLOCK_TOKEN", f.token.as_str())];
    let request = json!({
        "plugin": {"namespace": f.ns(), "name": "hello"},
        "hook": "transform",
        "payload_json": json!({"name": "grpcurl"}).to_string(),
    });
    let out = run(
        "grpcurl",
        &[
            "-plaintext",
            "-expand-headers",
            "-H",
            "authorization: Bearer ${AIRLOCK_TOKEN}",
            "-d",
            &request.to_string(),
            &addr,
            "airlock.router.v1.HookRouter/Invoke",
        ],
        &token,
    )?;
    let answer: Value = serde_json::from_str(&out)?;
    let output: Value = serde_json::from_str(answer["outputJson"].as_str().unwrap_or_default())?;
    ensure!(
        output["greeting"] == "hello, grpcurl",
        "grpcurl got {answer}"
    );
    let python = std::env::var("AIRLOCK_PYTHON").unwrap_or_else(|_| "python3".into());
    let client = airlock_e2e::install::workspace().join("examples/clients/python/router_client.py");
    let out = run(
        &python,
        &[
            &client.display().to_string(),
            "--router",
            &addr,
            "invoke",
            &format!("{}/hello", f.ns()),
            "transform",
            &json!({"name": "python"}).to_string(),
        ],
        &token,
    )?;
    let answer: Value = serde_json::from_str(&out)?;
    let output: Value = serde_json::from_str(answer["output_json"].as_str().unwrap_or_default())?;
    ensure!(output["greeting"] == "hello, python", "python got {answer}");

    // Broadcast an event: event-logger logs it; crash-test loops forever, is killed at 300 ms and
    // ignored (failurePolicy Ignore), so the broadcast as a whole did not fail.
    let started = Instant::now();
    let broadcast = f
        .broadcast("onEvent", json!({"type": "deploy"}), "e2e-broadcast")
        .await?;
    let took = started.elapsed();
    let results = outcomes(&broadcast.results);
    ensure!(
        results == [("crash-test", "DEADLINE_EXCEEDED"), ("event-logger", "OK")],
        "broadcast results {results:?}: {:?}",
        broadcast.results
    );
    ensure!(!broadcast.failed, "only an Ignore plugin failed");
    ensure!(
        took < Duration::from_secs(1),
        "the broadcast waited for the hung plugin only up to its timeout, took {took:?}"
    );
    let logged: Value = serde_json::from_str(
        &broadcast
            .results
            .iter()
            .find(|r| r.code == "OK")
            .context("event-logger result")?
            .output_json,
    )?;
    ensure!(logged["type"] == "deploy", "event-logger answered {logged}");

    // A crash in the middle of a call: the caller learns it, the shim restarts the process, the
    // other plugins never notice.
    let exit = json!({"mode": "exit"});
    f.expect_failure("crash-test", "transform", exit, Code::Unavailable, "")
        .await
        .context("crash-test's process exits during the call")?;
    f.expect_greeting("hello", json!({"name": "still here"}), "hello, still here")
        .await?;
    // crash-test is back: its transform throws again (an answer, which resets its failure count).
    f.expect_failure("crash-test", "transform", json!({}), Code::Aborted, "")
        .await
        .context("crash-test's transform throws after the restart")?;

    // Five consecutive timeouts auto-disable crash-test.
    let mut codes = Vec::new();
    for _ in 0..12 {
        let e = f
            .invoke_err("crash-test", "onEvent", json!({"type": "hang"}))
            .await
            .context("crash-test's onEvent never answers")?;
        codes.push(e.code());
        let p = api.get("crash-test").await?;
        if p.auto_disabled().is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let disabled = wait_plugin(&api, "crash-test", "auto-disabled", |p| {
        phase(p) == Some(PluginPhase::Disabled)
            && condition(p, "Ready").is_some_and(|c| c.reason == "AutoDisabled")
    })
    .await
    .with_context(|| format!("calls made: {codes:?}"))?;
    let why = disabled.auto_disabled().unwrap_or_default();
    ensure!(
        why == "5 consecutive timeouts",
        "status.autoDisabled: {:?}",
        disabled.auto_disabled_record()
    );
    ensure!(
        disabled
            .metadata
            .annotations
            .as_ref()
            .is_none_or(|a| !a.contains_key("airlock.dev/auto-disabled")),
        "nothing in the metadata a sync owns: {:?}",
        disabled.metadata.annotations
    );
    let ready = condition(&disabled, "Ready").context("Ready condition")?;
    ensure!(
        ready.message.contains("spec.reEnable"),
        "the status says how to re-enable: {}",
        ready.message
    );
    // Issue 14: a replace-style sync (the spec and metadata as they were applied) cannot clear
    // an auto-disable: status is not part of what a replace writes.
    for attempt in 1..=5 {
        let mut replaced = api.get("crash-test").await?;
        replaced.status = None;
        match api
            .replace("crash-test", &PostParams::default(), &replaced)
            .await
        {
            Ok(_) => break,
            // Changed in between (a status write): read again, as `kubectl replace` users do.
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < 5 => continue,
            Err(e) => return Err(e).context("replacing the Plugin as a replace-style sync does"),
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    ensure!(
        api.get("crash-test").await?.auto_disabled().is_some(),
        "a replace of the Plugin left it auto-disabled"
    );
    f.expect_failure(
        "crash-test",
        "transform",
        json!({}),
        Code::NotFound,
        "auto-disabled",
    )
    .await
    .context("an auto-disabled plugin is not routed")?;
    // Its pods are gone; the others still answer.
    let replicas =
        f.ns.api::<Deployment>()
            .get("crash-test")
            .await?
            .spec
            .and_then(|s| s.replicas);
    ensure!(
        replicas == Some(0),
        "an auto-disabled plugin runs no pods: {replicas:?}"
    );
    f.expect_greeting("hello", json!({}), "hello, world")
        .await?;
    // Event, audit record and metric.
    let events =
        f.ns.api::<Event>()
            .list(&ListParams::default())
            .await?
            .items;
    ensure!(
        events.iter().any(|e| {
            e.reason.as_deref() == Some("AutoDisabled")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("crash-test")
        }),
        "an AutoDisabled Event on crash-test"
    );
    let audit = router::router_audit(&f.client).await?;
    ensure!(
        audit.iter().any(|r| r["event"] == "AutoDisabled"
            && r["plugin"]["name"] == "crash-test"
            && r["plugin"]["namespace"] == f.ns()),
        "an AutoDisabled audit record"
    );
    let metrics = router::metrics(&f.client).await?;
    ensure!(
        router::counter_sum(&metrics, "airlock_plugins_auto_disabled_total") >= 1.0,
        "airlock_plugins_auto_disabled_total counted it"
    );
    let series = format!(
        "airlock_hook_invocations_total{{hook=\"onEvent\",namespace=\"{}\",plugin=\"crash-test\",result=\"timeout\"}}",
        f.ns()
    );
    ensure!(
        router::counter_sum(&metrics, &series) >= 5.0,
        "timeouts counted per plugin and hook ({series})"
    );

    // Re-enable, declaratively: a new spec.reEnable.
    re_enable(&api, "crash-test", "2026-12-01T10:00").await?;
    f.wait_routed(&["crash-test"]).await?;
    f.expect_failure("crash-test", "transform", json!({}), Code::Aborted, "")
        .await
        .context("the re-enabled crash-test's transform throws")?;

    // onLoad that exhausts memory: the plugin never becomes ready, is not routed, and the
    // others keep answering.
    f.apply(
        "crash-test-oom",
        "crash-test-oom",
        json!([{"name": "onLoad", "timeout": "2s"}, {"name": "transform"}]),
        json!(["log"]),
        json!({}),
    )
    .await?;
    let failed = wait_plugin(
        &api,
        "crash-test-oom",
        "not Ready after its deadline",
        |p| {
            condition(p, "Ready").is_some_and(|c| {
                c.status == "False"
                    && matches!(c.reason.as_str(), "ProgressDeadlineExceeded" | "RolledBack")
            })
        },
    )
    .await?;
    ensure!(
        !active(&failed),
        "an onLoad that never finishes is not Active"
    );
    f.expect_failure("crash-test-oom", "transform", json!({}), Code::NotFound, "")
        .await
        .context("a plugin that never became ready is not routed")?;
    f.expect_greeting("hello", json!({"name": "survivor"}), "hello, survivor")
        .await
}

/// Runs a client program with `env` added to its environment and returns its stdout; fails with
/// its stderr.
fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .with_context(|| {
            format!("running {program}: `make client-deps` builds grpcurl and the Python venv")
        })?;
    ensure!(
        out.status.success(),
        "{program} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// (plugin name, gRPC code) of each step of a pipeline or result of a broadcast, in order.
fn outcomes(results: &[PluginResult]) -> Vec<(&str, &str)> {
    results
        .iter()
        .map(|r| {
            let name = r.plugin.as_ref().map_or("", |p| p.name.as_str());
            (name, r.code.as_str())
        })
        .collect()
}

/// A host application's `traceparent` continues through the router into the shim (which hands
/// the plugin a span of its own): both log a span record with the caller's trace id and the
/// invocation id.
async fn one_trace_across_router_and_shim(f: &Fixture) -> Result<()> {
    let trace_id = "0af7651916cd43dd8448eb211c80319c";
    let mut req = tonic::Request::new(airlock_proto::router::v1::InvokeRequest {
        plugin: f.plugin_ref("hello"),
        hook: "transform".into(),
        payload_json: json!({"name": "trace"}).to_string(),
        deadline_ms: 0,
        invocation_id: "e2e-traced".into(),
    });
    req.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-b7ad6b7169203331-01").parse()?,
    );
    f.grpc.clone().invoke(req).await?;
    let pods = f.ns.api::<k8s_openapi::api::core::v1::Pod>();
    let what = format!("span records with trace id {trace_id} from the router and the shim");
    let found = async || {
        let router_spans = router::router_log_lines(&f.client, trace_id).await?;
        let router_ok = router_spans
            .iter()
            .any(|l| l.contains("span router.call") && l.contains("e2e-traced"));
        let mut shim_ok = false;
        for (_, log) in pod_logs(&pods, "hello").await? {
            shim_ok |= log.lines().any(|l| {
                l.contains("span shim.invoke") && l.contains(trace_id) && l.contains("e2e-traced")
            });
        }
        Ok([("router", router_ok), ("shim", shim_ok)])
    };
    let within = Duration::from_secs(30);
    wait::until(&what, within, found, |seen| seen.iter().all(|(_, ok)| *ok)).await?;
    Ok(())
}

/// Issue 13: a Plugin scales like a workload (the `scale` subresource `kubectl scale` and an HPA
/// use), and the router spreads
/// calls over the ready pods instead of one Service connection: after scaling hello to 3, calls
/// through the router land on more than one pod (each pod's shim logs the invocation ids it
/// served). Before, every call of a router replica went to the same pod.
#[tokio::test]
async fn a_scaled_plugin_gets_calls_on_every_ready_pod() -> Result<()> {
    in_fixture("scale", &["log"], async |f: &Fixture| {
        let hooks = json!([{"name": "transform", "timeout": "2s"}]);
        f.apply("hello", "hello", hooks, json!(["log"]), json!({}))
            .await?;
        f.wait_serving(&["hello"], "transform").await?;
        // What `kubectl scale plugin/hello --replicas=3` sends: a patch of the scale subresource.
        let api = f.ns.api::<Plugin>();
        api.patch_scale(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 3}})),
        )
        .await
        .context("scaling the Plugin through its scale subresource")?;
        let p = wait_plugin(&api, "hello", "3 ready pods in status.replicas", |p| {
            p.status.as_ref().and_then(|s| s.replicas) == Some(3) && active(p)
        })
        .await?;
        ensure!(
            p.status.as_ref().and_then(|s| s.selector.as_deref())
                == Some("airlock.dev/plugin=hello"),
            "the scale selector: {:?}",
            p.status.as_ref().map(|s| &s.selector)
        );
        // The router sees the three ready endpoints shortly after the pods are ready.
        tokio::time::sleep(Duration::from_secs(3)).await;
        for i in 0..30 {
            let request = airlock_proto::router::v1::InvokeRequest {
                plugin: f.plugin_ref("hello"),
                hook: "transform".into(),
                payload_json: json!({"name": "spread"}).to_string(),
                deadline_ms: 0,
                invocation_id: format!("e2e-spread-{i}"),
            };
            f.grpc.clone().invoke(request).await?;
        }
        let pods = f.ns.api::<k8s_openapi::api::core::v1::Pod>();
        let served = async || {
            let mut served = Vec::new();
            for (name, log) in pod_logs(&pods, "hello").await? {
                let calls = log
                    .lines()
                    .filter(|l| l.contains("span shim.invoke") && l.contains("e2e-spread-"))
                    .count();
                served.push((name, calls));
            }
            Ok(served)
        };
        let spread = wait::until(
            "the 30 calls in the shims' logs",
            Duration::from_secs(30),
            served,
            |s| s.iter().map(|(_, n)| n).sum::<usize>() >= 30,
        )
        .await?;
        ensure!(
            spread.iter().filter(|(_, n)| *n > 0).count() >= 2,
            "calls landed on one pod only: {spread:?}"
        );
        Ok(())
    })
    .await
}

/// Issue 13: a HorizontalPodAutoscaler drives a Plugin through its `scale` subresource, and the
/// operator follows. This cluster has no metrics API, so the HPA acts on its bounds only (a
/// Plugin below minReplicas is scaled up to it, one above maxReplicas down) — the same writes it
/// makes when a metrics adapter serves `airlock_router_calls_in_flight`.
#[tokio::test]
async fn a_horizontal_pod_autoscaler_scales_a_plugin() -> Result<()> {
    in_fixture("hpa", &["log"], async |f: &Fixture| {
        use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
        let hooks = json!([{"name": "transform", "timeout": "2s"}]);
        f.apply("hello", "hello", hooks, json!(["log"]), json!({}))
            .await?;
        f.wait_serving(&["hello"], "transform").await?;
        let hpas = f.ns.api::<HorizontalPodAutoscaler>();
        let hpa = |min: i32, max: i32| {
            json!({
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "hello"},
                "spec": {
                    "scaleTargetRef": {"apiVersion": "airlock.dev/v1alpha1", "kind": "Plugin", "name": "hello"},
                    "minReplicas": min,
                    "maxReplicas": max,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}],
                }
            })
        };
        let apply = PatchParams::apply("airlock-e2e").force();
        hpas.patch("hello", &apply, &Patch::Apply(hpa(2, 3))).await?;
        let api = f.ns.api::<Plugin>();
        let replicas = |n: i32| {
            move |p: &Plugin| {
                p.spec.replicas == n && p.status.as_ref().and_then(|s| s.replicas) == Some(n)
            }
        };
        let describe_hpa = async || {
            hpas.get("hello")
                .await
                .map(|h| format!("{:?}", h.status))
                .unwrap_or_else(|e| e.to_string())
        };
        if let Err(e) = wait_plugin(&api, "hello", "the HPA's minReplicas 2, ready", replicas(2)).await
        {
            anyhow::bail!("{e:#}; HPA status: {}", describe_hpa().await);
        }
        hpas.patch("hello", &apply, &Patch::Apply(hpa(1, 1))).await?;
        if let Err(e) = wait_plugin(&api, "hello", "the HPA's maxReplicas 1", replicas(1)).await {
            anyhow::bail!("{e:#}; HPA status: {}", describe_hpa().await);
        }
        // Still serving through it all.
        f.expect_greeting("hello", json!({}), "hello, world").await?;
        Ok(())
    })
    .await
}

/// Issue 13: `spec.concurrency: 2` runs two plugin processes in one pod, calls run side by side,
/// and a process killed for its timeout takes nothing else with it. In the pod the shim is PID 1,
/// where a kill used to signal every process of the container: a call in flight on the other
/// process would have died with it.
#[tokio::test]
async fn concurrent_processes_in_one_pod_and_a_timeout_kills_only_its_own() -> Result<()> {
    in_fixture("concurrency", &["log"], async |f: &Fixture| {
        let hooks = json!([
            {"name": "transform", "timeout": "2s"},
            {"name": "onEvent", "timeout": "500ms", "failurePolicy": "Ignore"},
        ]);
        f.apply(
            "pool",
            "crash-test",
            hooks,
            json!(["log"]),
            json!({"concurrency": 2}),
        )
        .await?;
        f.wait_serving(&["pool"], "transform").await?;
        let slow = |ms: u64| async move {
            f.invoke("pool", "transform", json!({"mode": "slow", "ms": ms}))
                .await
        };
        // Two slow calls at once are answered by two processes of the same pod.
        let (a, b) = tokio::join!(slow(1000), slow(1000));
        let (a, b) = (a?, b?);
        ensure!(
            a["host"] == b["host"] && a["pid"] != b["pid"],
            "two calls at once: {a} and {b}"
        );
        // One process sleeps through a call while the other spins in onEvent until it is killed
        // at 500 ms: the sleeping call still answers, from a process that was there before.
        let (long, spun) = tokio::join!(slow(1500), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            f.invoke_err("pool", "onEvent", json!({})).await
        });
        let spun = spun?;
        ensure!(spun.code() == Code::DeadlineExceeded, "onEvent: {spun:?}");
        let long = long.context("the call on the other process, while onEvent was killed")?;
        ensure!(
            long["pid"] == a["pid"] || long["pid"] == b["pid"],
            "the call ran on a process started meanwhile: {long} (before: {a}, {b})"
        );
        Ok(())
    })
    .await
}

/// Issue 13: each router replica counts the failures of its own calls, so both may reach the
/// auto-disable threshold together; the annotation is the shared truth, and the Plugin gets one
/// AutoDisabled Event from the router and one audit record, not one per replica.
#[tokio::test]
async fn router_replicas_at_the_threshold_together_disable_a_plugin_once() -> Result<()> {
    in_fixture("disable-once", &["log"], async |f: &Fixture| {
        let hooks = json!([
            {"name": "transform", "timeout": "2s"},
            {"name": "onEvent", "timeout": "300ms", "failurePolicy": "Ignore"},
        ]);
        // Two processes, so that each replica's call has one to itself: calls queued behind
        // another's timeout would be the caller's loss, not counted against the plugin.
        f.apply(
            "spin",
            "crash-test",
            hooks,
            json!(["log"]),
            json!({"concurrency": 2}),
        )
        .await?;
        f.wait_serving(&["spin"], "transform").await?;
        let bearer = airlock_e2e::callers::Bearer::token(&f.token)?;
        let replicas = router::connect_each_replica(&f.client, bearer).await?;
        ensure!(replicas.len() >= 2, "the chart runs two router replicas");
        // Every replica times out five times in a row, all at once.
        let drive = replicas.into_iter().map(|mut r| async move {
            let mut codes = Vec::new();
            for i in 0..5 {
                let request = airlock_proto::router::v1::InvokeRequest {
                    plugin: f.plugin_ref("spin"),
                    hook: "onEvent".into(),
                    payload_json: "{}".into(),
                    deadline_ms: 0,
                    invocation_id: format!("e2e-once-{i}"),
                };
                codes.push(r.invoke(request).await.err().map(|e| e.code()));
                // Time for the shim to replace the killed process, as between a host's calls.
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            codes
        });
        let codes = futures::future::join_all(drive).await;
        let api = f.ns.api::<Plugin>();
        wait_plugin(&api, "spin", "auto-disabled", |p| {
            phase(p) == Some(PluginPhase::Disabled)
        })
        .await
        .with_context(|| format!("codes per replica: {codes:?}"))?;
        // Give a replica that lost the race the time to (not) write its own records.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let records = router::router_audit(&f.client)
            .await?
            .into_iter()
            .filter(|r| {
                r["event"] == "AutoDisabled"
                    && r["plugin"]["name"] == "spin"
                    && r["plugin"]["namespace"] == f.ns()
            })
            .count();
        let events =
            f.ns.api::<Event>()
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .filter(|e| {
                    // The router's Events (the operator reports the phase change with its own).
                    e.reason.as_deref() == Some("AutoDisabled")
                        && e.reporting_controller.as_deref() == Some("airlock-router")
                        && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("spin")
                })
                .count();
        ensure!(
            records == 1 && events == 1,
            "one decision: {records} audit records, {events} Events (codes per replica: {codes:?})"
        );
        Ok(())
    })
    .await
}

/// `(pod name, log)` of each pod of the plugin `plugin` (an unreadable log reads as empty).
async fn pod_logs(
    pods: &kube::Api<k8s_openapi::api::core::v1::Pod>,
    plugin: &str,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let selector = format!("airlock.dev/plugin={plugin}");
    for pod in pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
    {
        let name = pod.metadata.name.unwrap_or_default();
        let log = pods
            .logs(&name, &Default::default())
            .await
            .unwrap_or_default();
        out.push((name, log));
    }
    Ok(out)
}

/// Issue 13: a caller of a plugin that is being enabled, scaled up, scaled down or re-enabled
/// after an auto-disable sees no failure but the router's own refusal while the plugin is off
/// (never a connection error to a pod that is not ready, never a call cut by a pod going away).
/// One caller calls without pause through it all; each step is judged on its own calls.
#[tokio::test]
async fn a_steady_stream_of_calls_survives_enable_scale_and_re_enable() -> Result<()> {
    in_fixture("steady", &["log"], async |f: &Fixture| {
        let hooks = json!([{"name": "transform", "timeout": "2s"}]);
        f.apply(
            "hello",
            "hello",
            hooks,
            json!(["log"]),
            json!({"enabled": false}),
        )
        .await?;
        let api = f.ns.api::<Plugin>();
        let p = wait_plugin(&api, "hello", "phase Disabled", |p| {
            phase(p) == Some(PluginPhase::Disabled)
        })
        .await?;
        // Issue 14: disabled by its spec is where the user wants it (kstatus Current).
        airlock_e2e::kstatus::expect("Disabled", &p, "Current")?;
        let step = std::sync::Mutex::new(Step::Enable);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let calls = std::sync::Mutex::new(Vec::<(Step, Result<(), String>)>::new());
        let set = |s: Step| *step.lock().expect("step") = s;
        let caller = async {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let current = *step.lock().expect("step");
                let request = airlock_proto::router::v1::InvokeRequest {
                    plugin: f.plugin_ref("hello"),
                    hook: "transform".into(),
                    payload_json: json!({"name": "steady"}).to_string(),
                    deadline_ms: 0,
                    invocation_id: format!("e2e-steady-{i}"),
                };
                let outcome = match f.grpc.clone().invoke(request).await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(format!("{:?}: {}", e.code(), e.message())),
                };
                calls.lock().expect("calls").push((current, outcome));
                i += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let steps = async {
            let result = async {
                let succeeded = |s: Step| {
                    let calls = &calls;
                    async move {
                        wait::until(
                            &format!("a successful call while {s:?}"),
                            airlock_e2e::WAIT,
                            async || {
                                Ok(calls
                                    .lock()
                                    .expect("calls")
                                    .iter()
                                    .filter(|(at, r)| *at == s && r.is_ok())
                                    .count())
                            },
                            |n| *n >= 50,
                        )
                        .await
                        .map(drop)
                    }
                };
                api.patch(
                    "hello",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": {"enabled": true}})),
                )
                .await?;
                wait_plugin(&api, "hello", "phase Active", active).await?;
                succeeded(Step::Enable).await?;

                set(Step::ScaleUp);
                scale(&api, 3).await?;
                // The new pods in the router's tables, and calls landing on them.
                tokio::time::sleep(Duration::from_secs(5)).await;
                succeeded(Step::ScaleUp).await?;

                set(Step::ScaleDown);
                scale(&api, 1).await?;
                // Until the two removed pods are gone.
                let pods = f.ns.api::<k8s_openapi::api::core::v1::Pod>();
                wait::until(
                    "one hello pod left",
                    airlock_e2e::WAIT,
                    async || Ok(pod_logs(&pods, "hello").await?.len()),
                    |n| *n == 1,
                )
                .await?;
                succeeded(Step::ScaleDown).await?;

                set(Step::AutoDisabled);
                // What the router writes when a plugin reaches its auto-disable threshold.
                auto_disable(&api, "hello", "5 consecutive timeouts (written by the e2e)").await?;
                let p = wait_plugin(&api, "hello", "auto-disabled", |p| {
                    phase(p) == Some(PluginPhase::Disabled)
                })
                .await?;
                // Issue 14: auto-disabled needs the user (kstatus Failed, Stalled says why).
                airlock_e2e::kstatus::expect("AutoDisabled", &p, "Failed")?;
                wait::until(
                    "the router to refuse calls to the auto-disabled plugin",
                    airlock_e2e::WAIT,
                    async || {
                        Ok(calls.lock().expect("calls").last().is_some_and(|(_, r)| {
                            r.as_ref().is_err_and(|e| e.contains("auto-disabled"))
                        }))
                    },
                    |refused| *refused,
                )
                .await?;

                set(Step::ReEnable);
                re_enable(&api, "hello", "steady-stream-1").await?;
                succeeded(Step::ReEnable).await?;
                anyhow::Ok(())
            }
            .await;
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            result
        };
        let ((), result) = tokio::join!(caller, steps);
        result?;
        let calls = calls.into_inner().expect("calls");
        let mut problems = Vec::new();
        for s in [
            Step::Enable,
            Step::ScaleUp,
            Step::ScaleDown,
            Step::AutoDisabled,
            Step::ReEnable,
        ] {
            let mine: Vec<&Result<(), String>> = calls
                .iter()
                .filter(|(at, _)| *at == s)
                .map(|(_, r)| r)
                .collect();
            let first_ok = mine.iter().position(|r| r.is_ok()).unwrap_or(mine.len());
            for (i, r) in mine.iter().enumerate() {
                let Err(e) = r else { continue };
                // While the plugin is off, the router refuses (and says why); nothing else fails.
                let refused = e.contains("is disabled")
                    || e.contains("auto-disabled")
                    || e.contains("not Active")
                    || e.contains("no ready pod yet");
                let allowed = match s {
                    Step::Enable | Step::ReEnable => refused && i < first_ok,
                    Step::AutoDisabled => refused,
                    Step::ScaleUp | Step::ScaleDown => false,
                };
                if !allowed {
                    problems.push(format!("{s:?}, call {i} of {}: {e}", mine.len()));
                }
            }
        }
        ensure!(
            problems.is_empty(),
            "{} of {} calls failed where none may: {problems:#?}",
            problems.len(),
            calls.len()
        );
        Ok(())
    })
    .await
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Enable,
    ScaleUp,
    ScaleDown,
    AutoDisabled,
    ReEnable,
}

/// `kubectl scale plugin/hello --replicas=n`, then waits until that many pods are ready.
async fn scale(api: &kube::Api<Plugin>, n: i32) -> Result<()> {
    api.patch_scale(
        "hello",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": n}})),
    )
    .await
    .context("scaling the Plugin through its scale subresource")?;
    wait_plugin(api, "hello", &format!("{n} ready pods"), |p| {
        p.status.as_ref().and_then(|s| s.replicas) == Some(n) && active(p)
    })
    .await
    .map(drop)
}
