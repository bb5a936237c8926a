//! Hooks through the router, as a host application calls them: the sample plugins
//! (data-formatter, event-logger, crash-test, hello) in all three modes — invoke one, broadcast an
//! event, a transform pipeline — crash-test's failure paths contained while the others keep
//! answering, auto-disable after repeated timeouts (status, Event, audit record, metric) and
//! re-enabling. Airlock is installed by its Helm chart; nothing is mocked.

use std::time::{Duration, Instant};

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_e2e::plugins::{condition, phase, wait_plugin};
use airlock_e2e::router::{self, Fixture, active};
use airlock_proto::router::v1::{BroadcastRequest, TransformRequest};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::{Value, json};
use tonic::Code;

const AUTO_DISABLED: &str = "airlock.dev/auto-disabled";

#[tokio::test]
async fn hooks_through_the_router_and_a_misbehaving_plugin_contained() -> Result<()> {
    let f = Fixture::new("router", &["log", "read:data", "storage:write"]).await?;
    let result = scenario(&f).await;
    let cleanup = f.teardown().await;
    result.and(cleanup)
}

/// The same contract in three languages: the Rust SDK (hello), Go with only its standard library
/// (go-greeter) and Python whose code ships in the signed bundle (python-upper), each called
/// through the router.
#[tokio::test]
async fn plugins_in_rust_go_and_python_answer_through_the_router() -> Result<()> {
    let f = Fixture::new("languages", &["log"]).await?;
    let result = async {
        let transform = json!([{"name": "transform", "timeout": "2s"}]);
        f.apply(
            "hello",
            "hello",
            transform.clone(),
            json!(["log"]),
            json!({}),
        )
        .await?;
        f.apply(
            "go-greeter",
            "go-greeter",
            transform.clone(),
            json!(["log"]),
            json!({}),
        )
        .await?;
        f.apply(
            "python-upper",
            "python-upper",
            json!([{"name": "transform", "timeout": "2s"}, {"name": "onEvent", "timeout": "2s"}]),
            json!(["log"]),
            json!({}),
        )
        .await?;
        let api = f.ns.api::<Plugin>();
        let all = ["hello", "go-greeter", "python-upper"];
        for name in all {
            wait_plugin(&api, name, "phase Active", active).await?;
        }
        f.wait_routed(&all).await?;
        for name in all {
            f.wait_reachable(name, "transform").await?;
        }
        let out = f
            .invoke("hello", "transform", json!({"name": "rust"}))
            .await?;
        ensure!(out["greeting"] == "hello, rust", "rust: {out}");
        let out = f
            .invoke("go-greeter", "transform", json!({"name": "gopher"}))
            .await?;
        ensure!(out["greeting"] == "hello from Go, gopher", "go: {out}");
        let out = f
            .invoke("python-upper", "transform", json!({"text": "snake"}))
            .await?;
        ensure!(out["text"] == "SNAKE", "python: {out}");
        let err = f
            .invoke("python-upper", "transform", json!({}))
            .await
            .err()
            .context("the call succeeded but must fail: python-upper needs a text")?;
        ensure!(
            err.code() == Code::Aborted && err.message().contains("needs a string"),
            "a Python exception is an error answer: {err:?}"
        );
        anyhow::Ok(())
    }
    .await;
    let cleanup = f.teardown().await;
    result.and(cleanup)
}

async fn scenario(f: &Fixture) -> Result<()> {
    let api = f.ns.api::<Plugin>();
    f.apply(
        "hello",
        "hello",
        json!([{"name": "transform", "timeout": "1s", "priority": 100}]),
        json!(["log"]),
        json!({}),
    )
    .await?;
    f.apply(
        "data-formatter",
        "data-formatter",
        json!([{"name": "transform", "timeout": "1s", "priority": 10}]),
        json!(["read:data", "log"]),
        json!({}),
    )
    .await?;
    f.apply(
        "event-logger",
        "event-logger",
        json!([{"name": "onEvent", "timeout": "1s"}]),
        json!(["log", "storage:write"]),
        json!({}),
    )
    .await?;
    f.apply(
        "crash-test",
        "crash-test",
        json!([
            {"name": "onLoad", "timeout": "1s"},
            {"name": "transform", "timeout": "1s", "failurePolicy": "Ignore", "priority": 50},
            {"name": "onEvent", "timeout": "300ms", "failurePolicy": "Ignore"},
        ]),
        json!(["log"]),
        json!({}),
    )
    .await?;
    let all = ["hello", "data-formatter", "event-logger", "crash-test"];
    for name in all {
        wait_plugin(&api, name, "phase Active", active).await?;
    }
    f.wait_routed(&all).await?;
    // The helm upgrade at the start may have replaced the router pods: plugin pods admit them
    // once kube-router has programmed the new pods into their NetworkPolicy (seconds). Wait
    // until every plugin answers through the router (crash-test's transform answers with an
    // error, which is an answer).
    for (name, hook) in [
        ("hello", "transform"),
        ("data-formatter", "transform"),
        ("event-logger", "onEvent"),
        ("crash-test", "transform"),
    ] {
        f.wait_reachable(name, hook).await?;
    }

    // Invoke one plugin.
    let out = f
        .invoke("hello", "transform", json!({"name": "router"}))
        .await?;
    ensure!(out["greeting"] == "hello, router", "hello answered {out}");
    one_trace_across_router_and_shim(f).await?;
    let missing = f
        .invoke("nobody", "transform", json!({}))
        .await
        .err()
        .context("the call succeeded but must fail: no such plugin")?;
    ensure!(
        missing.code() == Code::NotFound && missing.message().contains("no Plugin"),
        "unknown plugin: {missing:?}"
    );
    let wrong_hook = f
        .invoke("hello", "onEvent", json!({}))
        .await
        .err()
        .context("the call succeeded but must fail: undeclared hook")?;
    ensure!(
        wrong_hook.code() == Code::InvalidArgument
            && wrong_hook.message().contains("it declares transform"),
        "undeclared hook: {wrong_hook:?}"
    );

    // A transform pipeline in priority order: data-formatter (10) tidies, crash-test (50)
    // throws and is skipped (failurePolicy Ignore), hello (100) greets the tidied name.
    let pipeline = f
        .grpc
        .clone()
        .transform(TransformRequest {
            payload_json: json!({"name": "  Ada   Lovelace "}).to_string(),
            deadline_ms: 3000,
            invocation_id: "e2e-pipeline".into(),
            namespace: f.ns().into(),
        })
        .await?
        .into_inner();
    let out: Value = serde_json::from_str(&pipeline.output_json)?;
    ensure!(
        out["greeting"] == "hello, Ada Lovelace",
        "pipeline output {out}"
    );
    let steps: Vec<(String, String)> = pipeline
        .steps
        .iter()
        .map(|s| {
            (
                s.plugin
                    .as_ref()
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                s.code.clone(),
            )
        })
        .collect();
    ensure!(
        steps
            == vec![
                ("data-formatter".to_string(), "OK".to_string()),
                ("crash-test".to_string(), "ABORTED".to_string()),
                ("hello".to_string(), "OK".to_string()),
            ],
        "pipeline steps {steps:?}: {:?}; crash-test: {}",
        pipeline.steps,
        f.describe("crash-test").await
    );

    // Clients nobody here wrote: grpcurl (through server reflection) and Python grpcio.
    let addr = router::address(&f.client).await?;
    let request = json!({
        "plugin": {"namespace": f.ns(), "name": "hello"},
        "hook": "transform",
        "payload_json": json!({"name": "grpcurl"}).to_string(),
    });
    let out = run(
        "grpcurl",
        &[
            "-plaintext",
            "-d",
            &request.to_string(),
            &addr,
            "airlock.router.v1.HookRouter/Invoke",
        ],
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
    )?;
    let answer: Value = serde_json::from_str(&out)?;
    let output: Value = serde_json::from_str(answer["output_json"].as_str().unwrap_or_default())?;
    ensure!(output["greeting"] == "hello, python", "python got {answer}");

    // Broadcast an event: event-logger logs it; crash-test loops forever, is killed at 300 ms and
    // ignored (failurePolicy Ignore), so the broadcast as a whole did not fail.
    let started = Instant::now();
    let broadcast = f
        .grpc
        .clone()
        .broadcast(BroadcastRequest {
            hook: "onEvent".into(),
            payload_json: json!({"type": "deploy"}).to_string(),
            deadline_ms: 0,
            invocation_id: "e2e-broadcast".into(),
            namespace: f.ns().into(),
        })
        .await?
        .into_inner();
    let took = started.elapsed();
    let results: Vec<(String, String)> = broadcast
        .results
        .iter()
        .map(|r| {
            (
                r.plugin
                    .as_ref()
                    .map(|p| p.name.clone())
                    .unwrap_or_default(),
                r.code.clone(),
            )
        })
        .collect();
    ensure!(
        results
            == vec![
                ("crash-test".to_string(), "DEADLINE_EXCEEDED".to_string()),
                ("event-logger".to_string(), "OK".to_string()),
            ],
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
    let crash = f
        .invoke("crash-test", "transform", json!({"mode": "exit"}))
        .await
        .err()
        .context("the call succeeded but must fail: the process exits")?;
    ensure!(crash.code() == Code::Unavailable, "crash: {crash:?}");
    ensure!(
        f.invoke("hello", "transform", json!({"name": "still here"}))
            .await?["greeting"]
            == "hello, still here"
    );
    // crash-test is back: its transform throws again (an answer, which resets its failure count).
    let thrown = f
        .invoke("crash-test", "transform", json!({}))
        .await
        .err()
        .context("the call succeeded but must fail: throws")?;
    ensure!(
        thrown.code() == Code::Aborted,
        "after the restart: {thrown:?}"
    );

    // Five consecutive timeouts auto-disable crash-test.
    let mut codes = Vec::new();
    for _ in 0..12 {
        let e = f
            .invoke("crash-test", "onEvent", json!({"type": "hang"}))
            .await
            .err()
            .context("the call succeeded but must fail: onEvent never answers")?;
        codes.push(e.code());
        let p = api.get("crash-test").await?;
        if p.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(AUTO_DISABLED))
        {
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
    let why = disabled
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUTO_DISABLED))
        .cloned()
        .unwrap_or_default();
    ensure!(why == "5 consecutive timeouts", "annotation: {why:?}");
    let ready = condition(&disabled, "Ready").context("Ready condition")?;
    ensure!(
        ready.message.contains("kubectl annotate plugin"),
        "the status says how to re-enable: {}",
        ready.message
    );
    let refused = f
        .invoke("crash-test", "transform", json!({}))
        .await
        .err()
        .context("the call succeeded but must fail: not routed")?;
    ensure!(
        refused.code() == Code::NotFound && refused.message().contains("auto-disabled"),
        "{refused:?}"
    );
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
    ensure!(f.invoke("hello", "transform", json!({})).await?["greeting"] == "hello, world");
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
        "airlock_hook_invocations_total{{hook=\"onEvent\",plugin=\"{}/crash-test\",result=\"timeout\"}}",
        f.ns()
    );
    ensure!(
        router::counter_sum(&metrics, &series) >= 5.0,
        "timeouts counted per plugin and hook ({series})"
    );

    // Re-enable: the documented admin action is removing the annotation.
    api.patch(
        "crash-test",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"annotations": {AUTO_DISABLED: null}}})),
    )
    .await?;
    wait_plugin(&api, "crash-test", "Active again", active).await?;
    f.wait_routed(&["crash-test"]).await?;
    let thrown = f
        .invoke("crash-test", "transform", json!({}))
        .await
        .err()
        .context("the call succeeded but must fail: throws")?;
    ensure!(thrown.code() == Code::Aborted, "re-enabled: {thrown:?}");

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
    let refused = f
        .invoke("crash-test-oom", "transform", json!({}))
        .await
        .err()
        .context("the call succeeded but must fail: not routed")?;
    ensure!(refused.code() == Code::NotFound, "{refused:?}");
    ensure!(
        f.invoke("hello", "transform", json!({"name": "survivor"}))
            .await?["greeting"]
            == "hello, survivor"
    );
    Ok(())
}

/// Runs a client program and returns its stdout; fails with its stderr.
fn run(program: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(program)
        .args(args)
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
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let router_spans = router::router_log_lines(&f.client, trace_id).await?;
        let router_ok = router_spans
            .iter()
            .any(|l| l.contains("span router.call") && l.contains("e2e-traced"));
        let pods = f.ns.api::<k8s_openapi::api::core::v1::Pod>();
        let mut shim_ok = false;
        for pod in pods
            .list(&ListParams::default().labels("airlock.dev/plugin=hello"))
            .await?
            .items
        {
            let name = pod.metadata.name.unwrap_or_default();
            let log = pods
                .logs(&name, &Default::default())
                .await
                .unwrap_or_default();
            shim_ok |= log.lines().any(|l| {
                l.contains("span shim.invoke") && l.contains(trace_id) && l.contains("e2e-traced")
            });
        }
        if router_ok && shim_ok {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "span records with trace id {trace_id}: router {router_ok}, shim {shim_ok}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
