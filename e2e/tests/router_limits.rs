//! The router's limits against a hostile host application (issue 12): a payload nested 100,000
//! deep is refused at the router and never reaches (and crashes) the plugin; calls with a 1 ms
//! deadline against a slow hook are the caller's outcome and do not auto-disable the plugin; a
//! hook timeout the trust level does not allow never reaches the calls.
//! Airlock is installed by its Helm chart; nothing is mocked.

use std::time::Duration;

use airlock_core::names::PLUGIN_LABEL;
use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_e2e::plugins::{condition, ensure_phase, phase, wait_plugin};
use airlock_e2e::router::{self, Fixture, active, ensure_status, in_fixture};
use airlock_proto::router::v1::{InvokeRequest, InvokeResponse};
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use serde_json::json;
use tonic::{Code, Status};

/// What the shim logs each time it starts the plugin process (the first start included).
const PROCESS_STARTED: &str = "started the plugin process";

#[tokio::test]
async fn a_payload_nested_too_deep_is_refused_at_the_router_and_the_plugin_lives_on() -> Result<()>
{
    in_fixture("limits-depth", &["log"], async |f: &Fixture| {
        let hooks = json!([{"name": "transform", "timeout": "2s"}]);
        f.apply("hello", "hello", hooks, json!(["log"]), json!({}))
            .await?;
        f.wait_serving(&["hello"], "transform").await?;
        let before = Health::of(f, "hello").await?;

        // Built as text: a serde_json::Value this deep would overflow the test's own stack.
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let refused = invoke_raw(f, "hello", "transform", deep, 0)
            .await
            .err()
            .context("a 100,000-deep payload must be refused")?;
        ensure_status(&refused, Code::InvalidArgument, "payload_json")?;
        ensure_status(&refused, Code::InvalidArgument, "64 levels")?;
        ensure_status(&refused, Code::InvalidArgument, "flatten the document")?;
        // Just over the size limit (1 MiB less 4 KiB): refused by the router's own check.
        let over = json!({"blob": "x".repeat(1_044_480)}).to_string();
        let refused = invoke_raw(f, "hello", "transform", over, 0)
            .await
            .err()
            .context("a payload over --max-payload-bytes must be refused")?;
        ensure_status(
            &refused,
            Code::InvalidArgument,
            "payload_json is 1044491 bytes",
        )?;
        ensure!(
            !refused.message().contains("xxxx"),
            "no payload bytes in the message: {refused:?}"
        );
        // Far over it: the request is not even decoded (the limit plus 4 KiB of envelope).
        let big = json!({"blob": "x".repeat(2 << 20)}).to_string();
        let refused = invoke_raw(f, "hello", "transform", big, 0)
            .await
            .err()
            .context("a 2 MiB request must be refused")?;
        ensure!(
            refused.code() == Code::OutOfRange && !refused.message().contains("xxxx"),
            "a 2 MiB request: {refused:?}"
        );

        f.expect_greeting("hello", json!({"name": "still here"}), "hello, still here")
            .await
            .context("hello answers after the deep payload")?;
        let after = Health::of(f, "hello").await?;
        ensure!(
            after == before,
            "the plugin was neither restarted nor its process replaced: before {before:?}, after \
             {after:?}"
        );
        let metrics = router::metrics(&f.client).await?;
        for reason in ["payload_too_deep", "payload_too_large"] {
            let series =
                format!("airlock_router_refused_total{{reason=\"{reason}\",rpc=\"invoke\"}}");
            ensure!(
                router::counter_sum(&metrics, &series) >= 1.0,
                "the refusal is counted ({series})"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn calls_with_a_1ms_deadline_do_not_auto_disable_a_slow_plugin() -> Result<()> {
    in_fixture("limits-deadline", &["log"], async |f: &Fixture| {
        // crash-test's onEvent spins forever: slow whatever its deadline. Its transform throws,
        // which is an answer.
        let hooks = json!([
            {"name": "onLoad", "timeout": "1s"},
            {"name": "transform", "timeout": "2s"},
            {"name": "onEvent", "timeout": "2s"},
        ]);
        f.apply("crash-test", "crash-test", hooks, json!(["log"]), json!({}))
            .await?;
        f.wait_serving(&["crash-test"], "transform").await?;

        // Five consecutive timeouts auto-disable a plugin. One gRPC channel is one connection to
        // one router replica (whose breaker counts them); ten leave no doubt.
        let mut codes = Vec::new();
        for _ in 0..10 {
            let e = invoke_raw(f, "crash-test", "onEvent", "{}".into(), 1)
                .await
                .err()
                .context("onEvent never answers within 1 ms")?;
            codes.push(e.code());
        }
        ensure!(
            codes.iter().all(|c| *c == Code::DeadlineExceeded),
            "every call ran out of the caller's deadline: {codes:?}"
        );

        // An auto-disable is written at once; give it time to show if it were coming.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let plugin = f.ns.api::<Plugin>().get("crash-test").await?;
        let record = plugin.auto_disabled_record().cloned();
        ensure!(
            record.is_none() && active(&plugin),
            "crash-test is not auto-disabled: status.autoDisabled {record:?}, phase {:?}",
            phase(&plugin)
        );
        let breaker = f
            .listed()
            .await?
            .iter()
            .find(|p| p.plugin.as_ref().is_some_and(|r| r.name == "crash-test"))
            .map(|p| p.breaker.clone());
        ensure!(
            breaker.as_deref() == Some("closed"),
            "the caller's short deadlines did not open the breaker: {breaker:?}"
        );
        f.expect_failure("crash-test", "transform", json!({}), Code::Aborted, "")
            .await
            .context("crash-test still answers (its transform throws: an answer)")?;

        let metrics = router::metrics(&f.client).await?;
        let series = |result: &str| {
            format!(
                "airlock_hook_invocations_total{{hook=\"onEvent\",namespace=\"{}\",plugin=\"crash-test\",result=\"{result}\"}}",
                f.ns()
            )
        };
        ensure!(
            router::counter_sum(&metrics, &series("caller_deadline")) >= 10.0,
            "counted as the caller's outcome ({})",
            series("caller_deadline")
        );
        ensure!(
            router::counter_sum(&metrics, &series("timeout")) == 0.0,
            "not as plugin timeouts ({})",
            series("timeout")
        );
        Ok(())
    })
    .await
}

/// Issue 12: the router calls a hook with the settings approved with the revision that serves,
/// never with the spec's. A tenant raises a hook's timeout to 20 s (the CRD allows 30 s) where
/// the trust level allows 2 s: the plan blocks the spec, the old revision keeps serving — and
/// the router keeps calling it with 2 s and the approved priority. Before the fix the router
/// took the spec's settings at once (`table.rs` read `spec.hooks`), so the blocked spec set the
/// timeout of every call.
#[tokio::test]
async fn a_hook_timeout_above_the_trust_level_never_reaches_the_calls() -> Result<()> {
    in_fixture("limits-timeout", &["log"], async |f: &Fixture| {
        let hooks = json!([{"name": "transform", "timeout": "2s", "priority": 10}]);
        f.apply("hello", "hello", hooks, json!(["log"]), json!({}))
            .await?;
        f.wait_serving(&["hello"], "transform").await?;
        let routed = async || -> Result<(u32, i32)> {
            let listed = f.listed().await?;
            let hook = listed
                .iter()
                .filter(|p| p.plugin.as_ref().is_some_and(|r| r.name == "hello"))
                .flat_map(|p| p.hooks.iter())
                .find(|h| h.name == "transform")
                .context("the router lists hello's transform")?;
            Ok((hook.timeout_ms, hook.priority))
        };
        ensure!(routed().await? == (2000, 10), "approved settings routed");

        let api = f.ns.api::<Plugin>();
        api.patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"hooks": [
                {"name": "transform", "timeout": "20s", "priority": 0, "failurePolicy": "Ignore"}
            ]}})),
        )
        .await
        .context("raising the hook's timeout in the spec")?;
        let p = wait_plugin(
            &api,
            "hello",
            "PermissionsApproved=False TimeoutAboveTrustLevel",
            |p| {
                condition(p, "PermissionsApproved")
                    .is_some_and(|c| c.status == "False" && c.reason == "TimeoutAboveTrustLevel")
            },
        )
        .await?;
        ensure_phase(
            &p,
            PluginPhase::Degraded,
            "the approved revision keeps serving",
        )?;
        let message = condition(&p, "PermissionsApproved")
            .map(|c| c.message.clone())
            .unwrap_or_default();
        ensure!(
            message.contains("spec.hooks[transform].timeout 20s") && message.contains("lower it"),
            "the condition names the field and the fix: {message}"
        );
        // The router's watch has seen the new spec by now; give it a moment more to show a change.
        tokio::time::sleep(Duration::from_secs(2)).await;
        ensure!(
            routed().await? == (2000, 10),
            "the blocked spec's 20 s / priority 0 must not reach the calls: {:?}",
            routed().await?
        );
        f.expect_greeting("hello", json!({"name": "still"}), "hello, still")
            .await
            .context("hello keeps answering with the approved settings")?;
        Ok(())
    })
    .await
}

/// Invoke with the payload as text and the caller's `deadline_ms`.
async fn invoke_raw(
    f: &Fixture,
    name: &str,
    hook: &str,
    payload_json: String,
    deadline_ms: u32,
) -> Result<InvokeResponse, Status> {
    Ok(f.grpc
        .clone()
        .invoke(InvokeRequest {
            plugin: f.plugin_ref(name),
            hook: hook.into(),
            payload_json,
            deadline_ms,
            invocation_id: format!("e2e-limits-{name}-{hook}"),
        })
        .await?
        .into_inner())
}

/// How often a plugin's pods restarted, and its process was started by the shim (the first start
/// included): a payload that crashed the plugin would raise the second, one that crashed the
/// shim the first.
#[derive(Debug, PartialEq, Eq)]
struct Health {
    container_restarts: i32,
    process_starts: usize,
}

impl Health {
    async fn of(f: &Fixture, plugin: &str) -> Result<Self> {
        let pods = f.ns.api::<Pod>();
        let mut health = Self {
            container_restarts: 0,
            process_starts: 0,
        };
        for pod in pods
            .list(&ListParams::default().labels(&format!("{PLUGIN_LABEL}={plugin}")))
            .await?
            .items
        {
            health.container_restarts += pod
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map_or(0, |cs| cs.iter().map(|c| c.restart_count).sum());
            let name = pod.metadata.name.unwrap_or_default();
            let log = pods.logs(&name, &Default::default()).await?;
            health.process_starts += log.lines().filter(|l| l.contains(PROCESS_STARTED)).count();
        }
        Ok(health)
    }
}
