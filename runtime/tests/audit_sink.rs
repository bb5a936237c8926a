//! The audit sink against a real HTTP server on loopback (its own process: the sink is set up once
//! per process). What a consumer of the sink sees: each record POSTed as one structured-mode
//! CloudEvent; an event the sink keeps refusing with 5xx is tried four times, then dropped and
//! counted, and the events after it still arrive.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use airlock_runtime::audit;
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};

fn record(event: &str) -> Value {
    json!({
        "stream": audit::STREAM,
        "time": "2026-12-04T05:00:00Z",
        "actor": "airlock-operator",
        "plugin": {"namespace": "team-a", "name": "hello", "uid": "u1"},
        "event": event,
        "status": "True",
    })
}

#[tokio::test]
async fn records_arrive_as_cloudevents_and_a_refused_one_is_dropped_after_its_tries() {
    // (content type, body) of every POST; "Fail" events are answered 500.
    let seen: Arc<Mutex<Vec<(String, Value)>>> = Arc::default();
    let app = axum::Router::new().route(
        "/events",
        axum::routing::post({
            let seen = seen.clone();
            move |headers: HeaderMap, body: String| async move {
                let kind = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let event: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
                let fail = event["data"]["event"] == "Fail";
                seen.lock().unwrap().push((kind, event));
                if fail {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::ACCEPTED
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    audit::sink::start(&format!("http://{addr}/events?token=not-in-logs")).unwrap();
    audit::emit(&record("Fail"));
    audit::emit(&record("Ready"));

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while audit::sink::counts() != (1, 1) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "counts (dropped, delivered) = {:?}, seen {:?}",
            audit::sink::counts(),
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = seen.lock().unwrap();
    let fails = seen
        .iter()
        .filter(|(_, e)| e["data"]["event"] == "Fail")
        .count();
    assert_eq!(fails, audit::sink::ATTEMPTS as usize, "tried, then dropped");
    let (kind, ready) = seen
        .iter()
        .find(|(_, e)| e["data"]["event"] == "Ready")
        .expect("the record after the refused one arrives");
    assert_eq!(kind, "application/cloudevents+json");
    assert_eq!(ready["specversion"], "1.0");
    assert_eq!(ready["type"], "dev.airlock.audit.Ready");
    assert_eq!(
        ready["source"],
        "/apis/airlock.dev/v1alpha1/namespaces/team-a/plugins/hello"
    );
    assert_eq!(ready["data"], record("Ready"));
}
