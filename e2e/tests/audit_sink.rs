//! Issue 15: audit records as CloudEvents, pushed to an HTTP sink. Airlock is installed by its
//! chart with `audit.sinkUrl` pointing at the e2e's receiver, built on the CloudEvents Go SDK
//! (`e2e/event-sink`, started by `e2e/cluster/collector.sh`), which refuses anything that is not a
//! valid CloudEvent 1.0. A Plugin's lifecycle (operator) and a refused host call (router) must
//! arrive there, each with its id, source, type, time and schema, the record as data, and the
//! operator's records naming who last changed the spec (`initiator`, from managedFields).

use std::time::Duration;

use airlock_e2e::router::{Fixture, in_fixture};
use airlock_e2e::wait;
use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

const SINK: &str = "http://198.19.255.1:8099/events";

/// Every event the sink accepted so far.
fn received() -> Result<Vec<Value>> {
    let out = std::process::Command::new("curl")
        .args(["-sf", "--max-time", "10", SINK])
        .output()
        .context("running curl")?;
    if !out.status.success() {
        bail!(
            "the audit sink receiver does not answer at {SINK}: start it with \
             e2e/cluster/collector.sh and reinstall Airlock with e2e/helm-install.sh (make e2e does both)"
        );
    }
    let events: Option<Vec<Value>> =
        serde_json::from_slice(&out.stdout).context("the sink's event list")?;
    Ok(events.unwrap_or_default())
}

fn about<'a>(events: &'a [Value], source: &str, kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["source"] == source && e["type"] == kind)
        .collect()
}

#[tokio::test]
async fn audit_records_reach_the_sink_as_cloudevents() -> Result<()> {
    received()?;
    in_fixture(
        "audit-sink",
        &["log", "storage:write"],
        async |f: &Fixture| {
            f.apply(
                "event-logger",
                "event-logger",
                json!([{"name": "onEvent", "timeout": "2s"}]),
                json!(["log", "storage:write"]),
                json!({}),
            )
            .await?;
            f.wait_serving(&["event-logger"], "onEvent").await?;
            // Its emit is refused (no events:emit): the router audits that.
            let out = f
                .invoke("event-logger", "onEvent", json!({"type": "order.created"}))
                .await?;
            ensure!(out["emit"] == "PERMISSION_DENIED", "{out}");

            let source = format!(
                "/apis/airlock.dev/v1alpha1/namespaces/{}/plugins/event-logger",
                f.ns.name
            );
            let events = wait::until(
                "the operator's Ready record and the router's HostCallDenied record at the sink",
                Duration::from_secs(60),
                async || received(),
                |events| {
                    !about(events, &source, "dev.airlock.audit.Ready").is_empty()
                        && !about(events, &source, "dev.airlock.audit.HostCallDenied").is_empty()
                },
            )
            .await?;
            let ready = about(&events, &source, "dev.airlock.audit.Ready");
            let ready = ready.last().unwrap();
            for (attr, want) in [
                ("specversion", json!("1.0")),
                ("datacontenttype", json!("application/json")),
                ("dataschema", json!("urn:airlock:audit:v1")),
                ("subject", json!(format!("{}/event-logger", f.ns.name))),
            ] {
                ensure!(ready[attr] == want, "{attr} of {ready:#}");
            }
            ensure!(
                ready["id"].as_str().is_some_and(|i| i.len() == 32) && ready["time"].is_string(),
                "{ready:#}"
            );
            // The SDK re-encodes extensions and data; the record is there as written.
            let data = &ready["data"];
            ensure!(
                data["actor"] == "airlock-operator" && data["plugin"]["name"] == "event-logger",
                "{data:#}"
            );
            ensure!(
                data["initiator"]["manager"] == "airlock-e2e"
                    && data["initiator"]["operation"] == "Apply",
                "who applied the Plugin (its field manager): {data:#}"
            );
            let denied = about(&events, &source, "dev.airlock.audit.HostCallDenied");
            ensure!(
                denied.iter().any(|e| e["data"]["call"] == "emit"),
                "the router's record of the refused emit: {denied:#?}"
            );
            // Every event has its own id.
            let mut ids: Vec<_> = events.iter().filter_map(|e| e["id"].as_str()).collect();
            let n = ids.len();
            ids.sort_unstable();
            ids.dedup();
            ensure!(ids.len() == n, "ids repeat among {n} events");
            Ok(())
        },
    )
    .await
}
