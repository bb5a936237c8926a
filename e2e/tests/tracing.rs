//! Issue 15: traces in a real OpenTelemetry backend. Airlock is installed by its chart with
//! `tracing.otlpEndpoint` pointing at the e2e's Jaeger (OTLP/gRPC, built from the Go module
//! proxy, `e2e/cluster/collector.sh`); a host application's call through the router must arrive
//! there as one trace holding the router's, the shim's and the plugin's spans, each the child of
//! the one before; a caller that says "not sampled" leaves no trace; the operator's reconciles
//! arrive as spans of their own service.

use std::time::Duration;

use airlock_e2e::router::{Fixture, in_fixture};
use airlock_e2e::traces::{self, Span};
use airlock_e2e::wait;
use airlock_proto::router::v1::InvokeRequest;
use airlock_proto::trace::TraceContext;
use anyhow::{Context, Result, ensure};
use serde_json::json;

/// The batch processor sends every 5 s; the collector stores at once.
const ARRIVAL: Duration = Duration::from_secs(60);

async fn call(f: &Fixture, traceparent: &str, invocation_id: &str) -> Result<()> {
    let mut req = tonic::Request::new(InvokeRequest {
        plugin: f.plugin_ref("hello"),
        hook: "transform".into(),
        payload_json: json!({"name": "otlp"}).to_string(),
        deadline_ms: 0,
        invocation_id: invocation_id.into(),
    });
    req.metadata_mut()
        .insert("traceparent", traceparent.parse()?);
    f.grpc
        .clone()
        .invoke(req)
        .await
        .with_context(|| format!("invoking hello ({invocation_id})"))?;
    Ok(())
}

fn one<'a>(spans: &'a [Span], name: &str) -> Result<&'a Span> {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    ensure!(
        found.len() == 1,
        "expected one {name} span, got {}: {spans:#?}",
        found.len()
    );
    Ok(found[0])
}

#[tokio::test]
async fn one_invocation_is_one_trace_in_the_collector() -> Result<()> {
    // Fails (not skips) when the collector is not there: the suite's install points at it.
    traces::trace(&TraceContext::root().trace_id())?;
    in_fixture("tracing", &["log"], async |f: &Fixture| {
        let hooks = json!([{"name": "transform", "timeout": "2s"}]);
        f.apply("hello", "hello", hooks, json!(["log"]), json!({}))
            .await?;
        f.wait_serving(&["hello"], "transform").await?;

        // A caller that does not sample: nothing of its call may be exported.
        let unsampled = TraceContext::root();
        call(
            f,
            &format!("00-{}-{}-00", unsampled.trace_id(), unsampled.span_id()),
            "e2e-otlp-unsampled",
        )
        .await?;
        // The caller's span, as a host application's tracer would send it.
        let caller = TraceContext::root();
        call(f, &caller.traceparent(), "e2e-otlp").await?;

        let names = [
            "airlock.router.v1.HookRouter/Invoke",
            "router.call",
            "shim.invoke",
            "plugin.invoke",
        ];
        let spans = wait::until(
            &format!(
                "trace {} with the router's, shim's and plugin's spans in Jaeger",
                caller.trace_id()
            ),
            ARRIVAL,
            async || traces::trace(&caller.trace_id()),
            |spans| names.iter().all(|n| spans.iter().any(|s| &s.name == n)),
        )
        .await?;
        let serve = one(&spans, names[0])?;
        let router_call = one(&spans, names[1])?;
        let shim = one(&spans, names[2])?;
        let plugin = one(&spans, names[3])?;
        // One chain: caller → router (server) → router's call to the pod → shim → plugin process.
        ensure!(
            serve.parents == [caller.span_id()],
            "the router's span continues the caller's: {serve:?}"
        );
        ensure!(
            router_call.parents == [serve.span_id.clone()],
            "{router_call:?}"
        );
        ensure!(shim.parents == [router_call.span_id.clone()], "{shim:?}");
        ensure!(plugin.parents == [shim.span_id.clone()], "{plugin:?}");
        for (span, service) in [
            (serve, "airlock-router"),
            (router_call, "airlock-router"),
            (shim, "airlock-shim"),
            (plugin, "airlock-shim"),
        ] {
            ensure!(
                span.service == service,
                "{} should come from {service}: {span:?}",
                span.name
            );
        }
        let plugin_key = format!("{}/hello", f.ns.name);
        for span in [router_call, shim, plugin] {
            ensure!(
                span.tags.get("airlock.invocation_id").map(String::as_str) == Some("e2e-otlp")
                    && span.tags.get("airlock.plugin") == Some(&plugin_key)
                    && span.tags.get("airlock.hook").map(String::as_str) == Some("transform"),
                "{} names the invocation, the plugin and the hook: {:?}",
                span.name,
                span.tags
            );
        }
        // Exported in order by one batch processor: the unsampled call came first.
        let leaked = traces::trace(&unsampled.trace_id())?;
        ensure!(
            leaked.is_empty(),
            "a call its caller did not sample was exported: {leaked:#?}"
        );

        // The operator's reconcile of this Plugin, from its own service.
        let ns = f.ns.name.clone();
        wait::until(
            &format!("a reconcile span of {ns}/hello from airlock-operator"),
            ARRIVAL,
            async || traces::find("airlock-operator", "reconcile", 200),
            |spans| {
                spans.iter().any(|s| {
                    s.tags.get("plugin").map(String::as_str) == Some("hello")
                        && s.tags.get("namespace") == Some(&ns)
                })
            },
        )
        .await?;
        Ok(())
    })
    .await
}
