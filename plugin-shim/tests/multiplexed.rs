//! Multiplexed plugins (`multiplexed: true` in `plugin.yaml`), in-process end to end: the real
//! shim and a real threaded Python plugin ([`common::MUX_PLUGIN`]) that takes several requests at
//! once on one process and answers each when it is done.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

mod common;

use common::{MUX_PLUGIN, Shim, assert_status, mux_manifest, tgz, wait_health};

use airlock_plugin_shim::cli::RunArgs;
use airlock_proto::plugin::v1::InvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// A shim running [`MUX_PLUGIN`] with `--concurrency concurrency`, ready, and a client of it.
async fn mux_plugin(concurrency: u32) -> (Shim, PluginClient<Channel>) {
    mux_plugin_with("[transform]", concurrency).await
}

/// [`mux_plugin`] with `hooks`.
async fn mux_plugin_with(hooks: &str, concurrency: u32) -> (Shim, PluginClient<Channel>) {
    let dir = tempfile::tempdir().unwrap();
    let bundle = tgz(&[
        ("plugin.yaml", &mux_manifest(hooks)),
        ("plugin.py", MUX_PLUGIN),
    ]);
    let args = RunArgs {
        concurrency,
        ..Shim::args(dir.path(), &bundle)
    };
    let shim = Shim::start(dir, args).await;
    wait_health(shim.addr, ServingStatus::Serving).await;
    let client = shim.client().await;
    (shim, client)
}

/// Invokes `transform` with `payload` within `deadline_ms`: the plugin's output.
async fn transform(
    client: &PluginClient<Channel>,
    payload: Value,
    deadline_ms: u32,
) -> Result<Value, tonic::Status> {
    let r = client
        .clone()
        .invoke(InvokeRequest {
            hook: "transform".into(),
            payload_json: payload.to_string(),
            deadline_ms,
            invocation_id: String::new(),
        })
        .await?
        .into_inner();
    Ok(serde_json::from_str(&r.output_json).unwrap())
}

/// `payloads`, one `transform` call each, all at once: their results, in the same order.
async fn all_at_once(
    client: &PluginClient<Channel>,
    payloads: Vec<Value>,
    deadline_ms: u32,
) -> Vec<Result<Value, tonic::Status>> {
    futures::future::join_all(
        payloads
            .into_iter()
            .map(|p| async move { transform(client, p, deadline_ms).await }),
    )
    .await
}

fn pid_of(output: &Value) -> u64 {
    output["pid"]
        .as_u64()
        .expect("an answer with the plugin's pid")
}

#[tokio::test]
async fn one_process_takes_n_calls_at_once() {
    let (shim, client) = mux_plugin(4).await;
    // Four calls of 200 ms each: side by side they take about 200 ms, one after another 800.
    let started = Instant::now();
    let answers = all_at_once(&client, vec![json!({"sleep": 0.2}); 4], 5000).await;
    let took = started.elapsed();
    let pids: BTreeSet<u64> = answers
        .iter()
        .map(|a| pid_of(a.as_ref().expect("every call answers")))
        .collect();
    assert!(took < Duration::from_millis(600), "took {took:?}");
    assert_eq!(pids.len(), 1, "one process answered them all: {pids:?}");
    shim.stop().await;
}

#[tokio::test]
async fn calls_beyond_the_concurrency_wait_for_one_in_flight_to_finish() {
    let (shim, client) = mux_plugin(2).await;
    // Three calls of 300 ms, two at a time: the third starts when one of the first two is done.
    let started = Instant::now();
    let answers = all_at_once(&client, vec![json!({"sleep": 0.3}); 3], 5000).await;
    let took = started.elapsed();
    let pids: BTreeSet<u64> = answers
        .iter()
        .map(|a| pid_of(a.as_ref().expect("every call answers")))
        .collect();
    assert!(took >= Duration::from_millis(600), "took {took:?}");
    assert_eq!(pids.len(), 1, "{pids:?}");
    shim.stop().await;
}

#[tokio::test]
async fn answers_in_any_order_reach_their_callers() {
    let (shim, client) = mux_plugin(3).await;
    // The plugin holds the three requests until all came, then answers the last one first.
    let payloads = (0..3).map(|tag| json!({"gather": 3, "tag": tag})).collect();
    let answers = all_at_once(&client, payloads, 5000).await;
    for (tag, answer) in answers.iter().enumerate() {
        let out = answer.as_ref().expect("every call answers");
        assert_eq!(out["echo"]["tag"], json!(tag), "{out}");
        // Reverse order: the first to arrive was answered last.
        let (arrival, answered) = (out["arrival"].as_u64(), out["answered"].as_u64());
        assert_eq!(arrival.zip(answered).map(|(a, b)| a + b), Some(2), "{out}");
    }
    shim.stop().await;
}

#[tokio::test]
async fn a_late_call_kills_the_process_and_the_calls_in_flight_with_it_fail_at_once() {
    let (shim, client) = mux_plugin(3).await;
    let before = pid_of(&transform(&client, json!({}), 5000).await.unwrap());

    let started = Instant::now();
    let hang = transform(&client, json!({"meet": 3, "hang": true}), 1000);
    let slow = transform(&client, json!({"meet": 3, "sleep": 30}), 20_000);
    let slower = transform(&client, json!({"meet": 3, "sleep": 30}), 20_000);
    let (hang, slow, slower) = tokio::join!(hang, slow, slower);
    // The late call gets its deadline; the others learn why the process went away, at once.
    assert_status(&hang.unwrap_err(), Code::DeadlineExceeded, "1000 ms");
    for other in [slow, slower] {
        assert_status(
            &other.unwrap_err(),
            Code::Unavailable,
            "missed its deadline",
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // The next call runs on a new process.
    let after = pid_of(&transform(&client, json!({}), 5000).await.unwrap());
    assert_ne!(before, after);
    shim.stop().await;
}

#[tokio::test]
async fn protocol_violations_fail_the_call_and_replace_the_process() {
    let (shim, client) = mux_plugin(2).await;
    let mut pid = pid_of(&transform(&client, json!({}), 5000).await.unwrap());
    for (raw, says) in [
        (
            r#"{"id":"nobody","ok":true,"output":1}"#,
            "\"nobody\", which is not a request in flight",
        ),
        (
            r#"{"call":"log","callId":"c1","args":{"level":"info","message":"m"}}"#,
            "has no \"request\"",
        ),
    ] {
        let err = transform(&client, json!({ "raw": raw }), 5000)
            .await
            .unwrap_err();
        assert_status(&err, Code::Internal, says);
        let next = pid_of(&transform(&client, json!({}), 5000).await.unwrap());
        assert_ne!(next, pid, "the process was replaced after {raw}");
        pid = next;
    }
    shim.stop().await;
}

#[tokio::test]
async fn a_multiplexed_plugin_with_concurrency_1_takes_one_call_at_a_time() {
    let (shim, client) = mux_plugin(1).await;
    // Two calls that must meet cannot: the second is not sent before the first answered.
    let meet = vec![json!({"meet": 2}); 2];
    for answer in all_at_once(&client, meet, 1500).await {
        let err = answer.expect_err("two calls cannot meet with concurrency 1");
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err:?}");
    }
    shim.stop().await;
}

#[tokio::test]
async fn on_load_and_on_unload_run_once_for_the_one_process() {
    let (shim, client) = mux_plugin_with("[onLoad, onUnload, transform]", 2).await;
    let answers = all_at_once(&client, vec![json!({"meet": 2}); 2], 5000).await;
    let pids: BTreeSet<u64> = answers
        .iter()
        .map(|a| pid_of(a.as_ref().expect("both calls answer")))
        .collect();
    assert_eq!(pids.len(), 1, "{pids:?}");
    let lifecycle = shim.dir.path().join("work/bundle/lifecycle");
    let _dir = shim.stop().await;
    assert_eq!(
        std::fs::read_to_string(lifecycle).unwrap(),
        "onLoad onUnload ",
        "one onLoad and one onUnload, not one per call in flight"
    );
}
