//! The audit stream and the plugins' events stream, as CloudEvents 1.0 (JSON, structured mode):
//! one event per line on stdout, where log collectors pick it up, and, when an HTTP sink is
//! configured ([`sink::start`]), POSTed there too.
//!
//! The operator writes a record per lifecycle transition of a plugin, the router one per
//! auto-disable and per refused call; each builds its records (pure) and hands them to [`emit`],
//! which wraps them: `data` is the record, `type` is `dev.airlock.audit.<event>`, `source` the
//! Plugin's API path, `id` a digest of the event (time included: two records are two events),
//! `dataschema` the record's schema version, and the
//! extension `stream` says which stream (`airlock.audit` or `airlock.events`). Events a plugin
//! emits through the host API are wrapped by [`plugin_event`]: their type is always under
//! `dev.airlock.plugin.`, so a plugin cannot pass its events off as Airlock's audit records.

use std::io::Write;

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// The `stream` extension (and the record field) of audit records.
pub const STREAM: &str = "airlock.audit";

/// The `stream` extension of events plugins emit.
pub const EVENTS_STREAM: &str = "airlock.events";

/// The schema of an audit record (`data`): bumped when a field changes meaning.
pub const AUDIT_SCHEMA: &str = "urn:airlock:audit:v1";

/// The schema of a plugin's event envelope (`data`: `invocationId` and the plugin's `payload`).
pub const EVENTS_SCHEMA: &str = "urn:airlock:events:v1";

/// The `type` prefix of audit records and of plugins' events.
pub const AUDIT_TYPE_PREFIX: &str = "dev.airlock.audit.";
pub const PLUGIN_TYPE_PREFIX: &str = "dev.airlock.plugin.";

/// A Plugin's API path, the `source` of the events about it.
pub fn plugin_source(namespace: &str, name: &str) -> String {
    format!("/apis/airlock.dev/v1alpha1/namespaces/{namespace}/plugins/{name}")
}

/// A CloudEvent in structured JSON mode; `data` is serialized as given (a plugin's payload keeps
/// its numbers as written).
#[derive(serde::Serialize)]
struct CloudEvent<'a, D: serde::Serialize> {
    specversion: &'static str,
    id: String,
    source: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    time: &'a Value,
    datacontenttype: &'static str,
    dataschema: &'static str,
    stream: &'static str,
    data: D,
}

/// The CloudEvent around `data`, as one JSON line (without the newline): its id is the digest of
/// the event's stream, type, source, time and data.
fn envelope<D: serde::Serialize>(
    stream: &'static str,
    kind: String,
    source: String,
    subject: Option<String>,
    time: &Value,
    schema: &'static str,
    data: D,
) -> String {
    let data_json = serde_json::to_string(&data).unwrap_or_default();
    let mut digest = Sha256::new();
    let time_text = time.to_string();
    for part in [stream, &kind, &source, &time_text, &data_json] {
        // Length-prefixed: no two different events hash the same parts.
        digest.update((part.len() as u64).to_be_bytes());
        digest.update(part.as_bytes());
    }
    let id: String = digest.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    serde_json::to_string(&CloudEvent {
        specversion: "1.0",
        id,
        source,
        kind,
        subject,
        time,
        datacontenttype: "application/json",
        dataschema: schema,
        stream,
        data,
    })
    // Serializing strings, a Value and RawValues cannot fail.
    .unwrap_or_default()
}

/// The CloudEvent of one audit record (what the operator's and router's builders make).
pub fn audit_event(record: &Value) -> String {
    let event = record["event"].as_str().unwrap_or("Unknown");
    let plugin = &record["plugin"];
    let (source, subject) = match (plugin["namespace"].as_str(), plugin["name"].as_str()) {
        (Some(ns), Some(name)) => (plugin_source(ns, name), Some(format!("{ns}/{name}"))),
        _ => (
            format!("/airlock/{}", record["actor"].as_str().unwrap_or("unknown")),
            None,
        ),
    };
    envelope(
        STREAM,
        format!("{AUDIT_TYPE_PREFIX}{event}"),
        source,
        subject,
        &record["time"],
        AUDIT_SCHEMA,
        record,
    )
}

/// The CloudEvent of an event the plugin `namespace`/`name` emitted through the host API:
/// `type` is `dev.airlock.plugin.<the plugin's type>`, `source` the Plugin, `data` the
/// invocation id and the payload exactly as the plugin sent it (no re-encoding of numbers).
pub fn plugin_event(
    namespace: &str,
    name: &str,
    uid: &str,
    invocation_id: &str,
    event_type: &str,
    payload: &serde_json::value::RawValue,
    time: &str,
) -> String {
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Data<'a> {
        plugin: Value,
        invocation_id: &'a str,
        payload: &'a serde_json::value::RawValue,
    }
    envelope(
        EVENTS_STREAM,
        format!("{PLUGIN_TYPE_PREFIX}{event_type}"),
        plugin_source(namespace, name),
        Some(format!("{namespace}/{name}")),
        &Value::String(time.to_string()),
        EVENTS_SCHEMA,
        Data {
            plugin: json!({"namespace": namespace, "name": name, "uid": uid}),
            invocation_id,
            payload,
        },
    )
}

/// Writes one audit record, as a CloudEvent, to stdout and offers it to the HTTP sink.
pub fn emit(record: &Value) {
    write(audit_event(record), sink::Share::Audit);
}

/// Writes one event a plugin emitted (a JSON line from [`plugin_event`]) to stdout and offers it
/// to the HTTP sink, within the plugins' share of its queue.
pub fn publish(line: String) {
    write(line, sink::Share::PluginEvents);
}

/// Writes one CloudEvent line to stdout (locked for the write, so concurrent writers never
/// interleave within a line) and offers it to the HTTP sink.
fn write(mut line: String, share: sink::Share) {
    line.push('\n');
    {
        let mut out = std::io::stdout().lock();
        // The audit stream is stdout; if it is gone there is nowhere left to report to.
        let _ = out.write_all(line.as_bytes());
        let _ = out.flush();
    }
    line.pop();
    sink::offer(line, share);
}

/// The optional HTTP sink: every event POSTed as `application/cloudevents+json`.
///
/// Stdout stays the record: the sink is a copy for consumers that want events pushed. Events wait
/// in a bounded queue ([`QUEUE`] events, [`QUEUED_BYTES`]); a full queue (the sink slower than Airlock, or down) drops the
/// newest and counts it, a failed POST is retried with backoff a few times and then dropped and
/// counted — never a growing backlog in the operator or the router.
pub mod sink {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::mpsc;

    /// Events that may wait for the sink.
    pub const QUEUE: usize = 1024;

    /// Bytes of events that may wait for the sink: a plugin's event can be 100 KiB, so the count
    /// alone would let a plugin emitting while the sink is down hold ≈ 100 MiB of the router.
    pub const QUEUED_BYTES: usize = 4 * 1024 * 1024;

    /// Tries per event (the first and retries).
    pub const ATTEMPTS: u32 = 4;

    static SENDER: OnceLock<mpsc::Sender<String>> = OnceLock::new();
    static DROPPED: AtomicU64 = AtomicU64::new(0);
    static DELIVERED: AtomicU64 = AtomicU64::new(0);
    static QUEUED: AtomicUsize = AtomicUsize::new(0);
    static METRIC: OnceLock<prometheus::IntCounterVec> = OnceLock::new();

    /// Counts deliveries and drops into `events` too (`airlock_audit_sink_events_total`).
    pub(crate) fn count_into(events: prometheus::IntCounterVec) {
        let _ = METRIC.set(events);
    }

    fn count(result: &str) -> u64 {
        if let Some(m) = METRIC.get() {
            m.with_label_values(&[result]).inc();
        }
        let counter = if result == "delivered" {
            &DELIVERED
        } else {
            &DROPPED
        };
        counter.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Why the sink could not be started.
    #[derive(Debug, thiserror::Error)]
    pub enum SinkError {
        #[error(
            "--audit-sink-url {0:?} is not an http:// or https:// URL; give the URL events are \
             POSTed to, e.g. https://events.example/airlock, or leave it empty"
        )]
        Url(String),
        #[error("building the HTTP client of the audit sink: {0}")]
        Client(String),
    }

    /// Events dropped (queue full or every try failed) and delivered since the start.
    pub fn counts() -> (u64, u64) {
        (
            DROPPED.load(Ordering::Relaxed),
            DELIVERED.load(Ordering::Relaxed),
        )
    }

    /// Whose events: plugins' events may fill half the queue only, so that a plugin emitting
    /// while the sink is slow never keeps Airlock's own audit records out of it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Share {
        Audit,
        PluginEvents,
    }

    impl Share {
        fn bytes(self) -> usize {
            match self {
                Self::Audit => QUEUED_BYTES,
                Self::PluginEvents => QUEUED_BYTES / 2,
            }
        }

        fn room(self, free_slots: usize) -> bool {
            match self {
                Self::Audit => free_slots > 0,
                Self::PluginEvents => free_slots > QUEUE / 2,
            }
        }
    }

    pub(super) fn offer(line: String, share: Share) {
        let Some(tx) = SENDER.get() else { return };
        let len = line.len();
        let queued = share.room(tx.capacity()) && admit(&QUEUED, len, share.bytes()) && {
            let sent = tx.try_send(line).is_ok();
            if !sent {
                QUEUED.fetch_sub(len, Ordering::AcqRel);
            }
            sent
        };
        if !queued {
            let n = count("dropped");
            if n.is_power_of_two() {
                tracing::warn!(
                    dropped = n,
                    "the audit sink's queue is full; events dropped (stdout still has them)"
                );
            }
        }
    }

    /// Counts `len` more bytes as queued unless that passes `limit`.
    fn admit(queued: &AtomicUsize, len: usize, limit: usize) -> bool {
        queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q + len <= limit).then_some(q + len)
            })
            .is_ok()
    }

    /// Starts POSTing every event to `url` (inside the Tokio runtime, once). The URL's path and
    /// query are never logged (they may carry a token).
    pub fn start(url: &str) -> Result<(), SinkError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| SinkError::Url(redact(url)))?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(SinkError::Url(redact(url)));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            // A sink answers; it does not send Airlock's events elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| SinkError::Client(e.to_string()))?;
        let (tx, mut rx) = mpsc::channel::<String>(QUEUE);
        if SENDER.set(tx).is_err() {
            return Ok(());
        }
        let host = parsed.host_str().unwrap_or_default().to_string();
        tracing::info!(%host, "audit records and plugin events are also POSTed to the audit sink");
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                QUEUED.fetch_sub(line.len(), Ordering::AcqRel);
                if deliver(&client, &parsed, line).await {
                    count("delivered");
                } else {
                    let n = count("dropped");
                    tracing::warn!(%host, dropped = n, "the audit sink did not take an event after {ATTEMPTS} tries; dropped (stdout still has it)");
                }
            }
        });
        Ok(())
    }

    async fn deliver(client: &reqwest::Client, url: &reqwest::Url, line: String) -> bool {
        let mut backoff = Duration::from_millis(200);
        for attempt in 1..=ATTEMPTS {
            let sent = client
                .post(url.clone())
                .header("content-type", "application/cloudevents+json")
                .body(line.clone())
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return true,
                // A 4xx other than 408/429 will not change on a retry.
                Ok(r)
                    if r.status().is_client_error()
                        && !matches!(r.status().as_u16(), 408 | 429) =>
                {
                    tracing::warn!(
                        status = r.status().as_u16(),
                        "the audit sink refused an event"
                    );
                    return false;
                }
                _ if attempt < ATTEMPTS => {
                    tokio::time::sleep(backoff).await;
                    backoff *= 4;
                }
                _ => {}
            }
        }
        false
    }

    /// `scheme://host[:port]` of a URL, without path, query or user info (for errors).
    fn redact(url: &str) -> String {
        match reqwest::Url::parse(url) {
            Ok(u) => format!(
                "{}://{}{}",
                u.scheme(),
                u.host_str().unwrap_or(""),
                u.port().map(|p| format!(":{p}")).unwrap_or_default()
            ),
            Err(_) => "(not a URL)".to_string(),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_queue_is_bounded_in_bytes() {
            let q = AtomicUsize::new(0);
            let event = 100 * 1024;
            let plugins = Share::PluginEvents.bytes();
            let admitted = (0..QUEUE).take_while(|_| admit(&q, event, plugins)).count();
            assert_eq!(admitted, plugins / event);
            assert!(!admit(&q, event, plugins));
            // Plugins' events filled their half: audit records still get in.
            assert!(admit(&q, event, Share::Audit.bytes()));
            // Room again once the sender took some.
            q.fetch_sub(2 * event, Ordering::AcqRel);
            assert!(admit(&q, event, plugins));
            assert!(Share::Audit.room(1) && !Share::PluginEvents.room(QUEUE / 2));
        }

        #[test]
        fn a_bad_url_is_refused_without_echoing_its_secrets() {
            for bad in [
                "ftp://events.example/x?token=s3cret",
                "not a url s3cret",
                "mailto:s3cret@events.example",
            ] {
                let e = start(bad).unwrap_err().to_string();
                assert!(!e.contains("s3cret"), "{e}");
                assert!(e.contains("--audit-sink-url"), "{e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Value {
        json!({
            "stream": STREAM,
            "time": "2026-12-04T04:00:00Z",
            "actor": "airlock-operator",
            "plugin": {"namespace": "team-a", "name": "hello", "uid": "u1"},
            "event": "Ready",
            "status": "True",
        })
    }

    #[test]
    fn an_audit_record_is_a_cloudevent_with_the_record_as_data() {
        let e: Value = serde_json::from_str(&audit_event(&record())).unwrap();
        assert_eq!(e["specversion"], "1.0");
        assert_eq!(e["type"], "dev.airlock.audit.Ready");
        assert_eq!(
            e["source"],
            "/apis/airlock.dev/v1alpha1/namespaces/team-a/plugins/hello"
        );
        assert_eq!(e["subject"], "team-a/hello");
        assert_eq!(e["time"], "2026-12-04T04:00:00Z");
        assert_eq!(e["dataschema"], AUDIT_SCHEMA);
        assert_eq!(e["stream"], STREAM);
        assert_eq!(e["data"], record());
        assert_eq!(e["id"].as_str().unwrap().len(), 32);
        // The same record (written again after a crash) is the same event; another is not.
        let id = |r: &Value| serde_json::from_str::<Value>(&audit_event(r)).unwrap()["id"].clone();
        assert_eq!(id(&record()), e["id"]);
        let mut later = record();
        later["time"] = json!("2026-12-04T04:00:01Z");
        assert_ne!(id(&later), e["id"]);
    }

    #[test]
    fn a_record_about_no_plugin_comes_from_its_actor() {
        let e: Value = serde_json::from_str(&audit_event(&json!({"stream": STREAM, "time": "t", "actor": "airlock-router", "event": "CallerDenialsDropped"}))).unwrap();
        assert_eq!(e["source"], "/airlock/airlock-router");
        assert!(e.get("subject").is_none());
    }

    /// A plugin chooses its event's type; it cannot make it look like an audit record.
    #[test]
    fn a_plugin_cannot_pass_its_event_off_as_an_audit_record() {
        let payload = serde_json::value::RawValue::from_string(r#"{"n":1.50}"#.into()).unwrap();
        let line = plugin_event(
            "team-a",
            "evil",
            "u2",
            "inv-1",
            "dev.airlock.audit.Ready",
            &payload,
            "2026-12-04T04:00:00Z",
        );
        // The payload as the plugin wrote it.
        assert!(line.contains(r#""payload":{"n":1.50}"#), "{line}");
        let e: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(e["type"], "dev.airlock.plugin.dev.airlock.audit.Ready");
        assert!(!e["type"].as_str().unwrap().starts_with(AUDIT_TYPE_PREFIX));
        assert_eq!(e["stream"], EVENTS_STREAM);
        assert_eq!(e["dataschema"], EVENTS_SCHEMA);
        assert_eq!(
            e["source"],
            "/apis/airlock.dev/v1alpha1/namespaces/team-a/plugins/evil"
        );
        assert_eq!(e["data"]["invocationId"], "inv-1");
        assert_eq!(e["data"]["plugin"]["name"], "evil");
        assert_eq!(e["data"]["payload"]["n"], 1.5);
    }
}
