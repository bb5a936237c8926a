//! Hooks through the router, as a host application calls them: the sample plugins
//! (data-formatter, event-logger, crash-test, hello) in all three modes — invoke one, broadcast an
//! event, a transform pipeline — crash-test's failure paths contained while the others keep
//! answering, auto-disable after repeated timeouts (status, Event, audit record, metric) and
//! re-enabling. Airlock is installed by its Helm chart; nothing is mocked.

use std::time::{Duration, Instant};

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_e2e::TestNamespace;
use airlock_e2e::install::images_env;
use airlock_e2e::plugins::{condition, phase, wait_plugin};
use airlock_e2e::router;
use airlock_proto::router::v1::hook_router_client::HookRouterClient;
use airlock_proto::router::v1::{
    BroadcastRequest, InvokeRequest, ListPluginsRequest, PluginRef, TransformRequest,
};
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;

const AUTO_DISABLED: &str = "airlock.dev/auto-disabled";

struct Fixture {
    client: Client,
    ns: TestNamespace,
    policy: String,
    grpc: HookRouterClient<Channel>,
}

impl Fixture {
    async fn new() -> Result<Self> {
        airlock_e2e::install::ensure_installed().await?;
        let client = airlock_e2e::client().await?;
        let suffix = airlock_e2e::unique_suffix();
        let ns = TestNamespace::create(
            &client,
            "router",
            &[
                ("airlock.dev/e2e-sandbox", suffix.as_str()),
                ("pod-security.kubernetes.io/enforce", "restricted"),
            ],
        )
        .await?;
        let policy = format!("e2e-router-{suffix}");
        let body = json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "PluginTrustPolicy",
            "metadata": {"name": policy},
            "spec": {
                "keys": [],
                "namespaces": {"matchLabels": {"airlock.dev/e2e-sandbox": suffix}},
                "trustLevels": {"Untrusted": {
                    "allowUnsigned": true, "maxMemory": "64Mi", "maxCpu": "250m",
                    "maxTimeout": "2s", "permissions": ["log", "read:data", "storage:write"]
                }}
            }
        });
        Api::<airlock_crds::PluginTrustPolicy>::all(client.clone())
            .patch(
                &policy,
                &PatchParams::apply("airlock-e2e").force(),
                &Patch::Apply(&body),
            )
            .await
            .context("applying the trust policy")?;
        let grpc = router::connect(&client).await?;
        Ok(Self {
            client,
            ns,
            policy,
            grpc,
        })
    }

    fn ns(&self) -> &str {
        &self.ns.name
    }

    /// A Plugin from the sample `sample` (image and bundle from `make e2e-images`), its bundle in a
    /// ConfigMap of its own.
    async fn apply(
        &self,
        name: &str,
        sample: &str,
        hooks: Value,
        permissions: Value,
    ) -> Result<()> {
        let key = sample.to_uppercase().replace('-', "_");
        let bundle = std::fs::read(images_env(&format!("AIRLOCK_{key}_BUNDLE"))?)?;
        let cm = ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{name}-bundle")),
                ..Default::default()
            },
            binary_data: Some([("bundle.tar.gz".to_string(), ByteString(bundle))].into()),
            ..Default::default()
        };
        self.ns
            .api::<ConfigMap>()
            .create(&PostParams::default(), &cm)
            .await?;
        let plugin = json!({
            "apiVersion": "airlock.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": name},
            "spec": {
                "version": "1.0.0",
                "image": images_env(&format!("AIRLOCK_{key}_IMAGE"))?,
                "bundle": {"source": {"configMapRef": {"name": format!("{name}-bundle")}}},
                "pluginApiVersion": 1,
                "hooks": hooks,
                "permissions": permissions,
                "resources": {"limits": {"cpu": "250m", "memory": "64Mi"}},
            }
        });
        self.ns
            .api::<Plugin>()
            .patch(
                name,
                &PatchParams::apply("airlock-e2e").force(),
                &Patch::Apply(&plugin),
            )
            .await
            .with_context(|| format!("applying Plugin {name}"))?;
        Ok(())
    }

    fn plugin_ref(&self, name: &str) -> Option<PluginRef> {
        Some(PluginRef {
            namespace: self.ns().into(),
            name: name.into(),
        })
    }

    async fn invoke(&self, name: &str, hook: &str, payload: Value) -> Result<Value, tonic::Status> {
        let answer = self
            .grpc
            .clone()
            .invoke(InvokeRequest {
                plugin: self.plugin_ref(name),
                hook: hook.into(),
                payload_json: payload.to_string(),
                deadline_ms: 0,
                invocation_id: format!("e2e-{name}-{hook}"),
            })
            .await?
            .into_inner();
        serde_json::from_str(&answer.output_json)
            .map_err(|e| tonic::Status::internal(format!("the output is not JSON: {e}")))
    }

    /// Waits until the router lists every one of `names` (its watch trails the status a little).
    async fn wait_routed(&self, names: &[&str]) -> Result<()> {
        let deadline = Instant::now() + airlock_e2e::WAIT;
        loop {
            let listed = self
                .grpc
                .clone()
                .list_plugins(ListPluginsRequest {
                    namespace: self.ns().into(),
                })
                .await?
                .into_inner();
            let have: Vec<String> = listed
                .plugins
                .iter()
                .filter_map(|p| p.plugin.as_ref().map(|r| r.name.clone()))
                .collect();
            if names.iter().all(|n| have.iter().any(|h| h == n)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the router lists {have:?}, expected {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Phase and Ready condition of a Plugin, for failure messages.
    async fn describe(&self, name: &str) -> String {
        match self.ns.api::<Plugin>().get(name).await {
            Ok(p) => format!(
                "phase {:?}, Ready {:?}",
                phase(&p),
                condition(&p, "Ready").map(|c| (
                    c.status.clone(),
                    c.reason.clone(),
                    c.message.clone()
                ))
            ),
            Err(e) => format!("cannot read it: {e}"),
        }
    }

    /// Waits until a call to `name` reaches its shim (any answer but UNAVAILABLE).
    async fn wait_reachable(&self, name: &str, hook: &str) -> Result<()> {
        let deadline = Instant::now() + airlock_e2e::WAIT;
        loop {
            match self.invoke(name, hook, json!({})).await {
                Err(e) if e.code() == Code::Unavailable => {
                    if Instant::now() > deadline {
                        bail!("{name} is still unreachable through the router: {e:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                _ => return Ok(()),
            }
        }
    }

    async fn teardown(self) -> Result<()> {
        self.ns.delete().await?;
        match Api::<airlock_crds::PluginTrustPolicy>::all(self.client.clone())
            .delete(&self.policy, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn active(p: &Plugin) -> bool {
    phase(p) == Some(PluginPhase::Active)
}

#[tokio::test]
async fn hooks_through_the_router_and_a_misbehaving_plugin_contained() -> Result<()> {
    let f = Fixture::new().await?;
    let result = scenario(&f).await;
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
    )
    .await?;
    f.apply(
        "data-formatter",
        "data-formatter",
        json!([{"name": "transform", "timeout": "1s", "priority": 10}]),
        json!(["read:data", "log"]),
    )
    .await?;
    f.apply(
        "event-logger",
        "event-logger",
        json!([{"name": "onEvent", "timeout": "1s"}]),
        json!(["log", "storage:write"]),
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
    let audit = router_audit(&f.client).await?;
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

/// Audit records the router pods wrote.
async fn router_audit(client: &Client) -> Result<Vec<Value>> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), airlock_e2e::install::NAMESPACE);
    let mut out = Vec::new();
    for pod in pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=airlock-router"))
        .await?
        .items
    {
        let name = pod.metadata.name.unwrap_or_default();
        let text = pods.logs(&name, &Default::default()).await?;
        out.extend(
            text.lines()
                .filter(|l| l.contains("\"airlock.audit\""))
                .filter_map(|l| serde_json::from_str::<Value>(l).ok()),
        );
    }
    Ok(out)
}
