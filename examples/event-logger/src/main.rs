//! event-logger: `onEvent` logs each event through the host API, counts the events in its
//! key-value storage and tries to announce them, and answers with what happened.
//!
//! It shows the host API from the plugin's side, including a refusal: the plugin declares `log`
//! and `storage:write` but not `events:emit`, so its `emit` fails with PERMISSION_DENIED — which it
//! reports in its answer rather than failing the event.
//!
//! Its configuration (`Plugin.spec.config`, checked against `configSchema` in `plugin.yaml`)
//! picks the log level and the prefix of each log line; it arrives in `onLoad` and, when it
//! changes, in `onConfigChange`, without a restart. `onUnload`, sent by the shim before the pod
//! stops, says so in the plugin's log. `onUpgrade` migrates the storage of an older version.

use airlock_sdk::{self as sdk, Host};
use serde_json::{Value, json};

fn main() -> std::io::Result<()> {
    let mut config = Config::default();
    sdk::run_with_host(
        move |host: &mut Host<'_>, hook: &str, payload: Value| match hook {
            "onLoad" | "onConfigChange" => {
                config = Config::from_payload(&payload);
                Ok(json!({}))
            }
            "onEvent" => on_event(host, &config, &payload),
            "onUpgrade" => on_upgrade(host, &payload),
            // The plugin is being stopped (disabled, upgraded, deleted or scaled down): its
            // last word goes to its log (stderr), which the shim forwards to the pod's log.
            "onUnload" => {
                eprintln!("event-logger: onUnload: the plugin is stopping");
                Ok(json!({}))
            }
            other => Err(format!("event-logger does not implement hook {other}")),
        },
    )
}

/// What `spec.config` sets (the shim already checked it against the signed `configSchema`).
#[derive(Debug, Clone, PartialEq)]
struct Config {
    /// The level of the host log line: `debug`, `info` (default) or `warn`.
    level: String,
    /// The start of each log line; default `event-logger`.
    prefix: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            level: "info".into(),
            prefix: "event-logger".into(),
        }
    }
}

impl Config {
    /// From the `{"config": {...}}` of `onLoad` and `onConfigChange`; unset fields keep their
    /// defaults.
    fn from_payload(payload: &Value) -> Self {
        let c = &payload["config"];
        let default = Self::default();
        let text = |key: &str, or: String| c[key].as_str().map(str::to_string).unwrap_or(or);
        Self {
            level: text("level", default.level),
            prefix: text("prefix", default.prefix),
        }
    }
}

/// `onUpgrade {from, to}`, sent by the shim once per pod of a new version when the storage was
/// last written by an older one. Before 1.1.0 the plugin's installers seeded the count as
/// `counter`; from 1.1.0 on it is `count`. A `counter` left over is added to `count` and removed,
/// and `upgradedFrom` records the version the data came from. Safe to run again (two new pods
/// at once, a retry after a crash): once `counter` is gone there is nothing to move.
fn on_upgrade(host: &mut Host<'_>, payload: &Value) -> Result<Value, String> {
    let storage = |e: sdk::HostError| format!("event-logger: migrating the storage failed: {e}");
    let from = payload["from"].as_str().unwrap_or("unknown").to_string();
    let to = payload["to"].as_str().unwrap_or("unknown");
    if let Some(legacy) = host.get("counter").map_err(storage)? {
        let count = host
            .get("count")
            .map_err(storage)?
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        let moved = legacy.as_u64().unwrap_or(0);
        host.put("count", &json!(count + moved)).map_err(storage)?;
        host.delete("counter").map_err(storage)?;
        eprintln!("event-logger: onUpgrade {from} → {to}: moved counter ({moved}) into count");
    }
    host.put("upgradedFrom", &json!(from)).map_err(storage)?;
    Ok(json!({}))
}

/// Logs the event, reads `greeting` and `count` (both set by the installer; a missing or
/// non-numeric `count` counts as 0), stores `count + 1` and tries to emit `event-logger.seen`.
/// A storage failure fails the event; the emit's outcome is part of the answer.
fn on_event(host: &mut Host<'_>, config: &Config, payload: &Value) -> Result<Value, String> {
    let kind = payload["type"].as_str().unwrap_or("unknown").to_string();
    let prefix = &config.prefix;
    // A line the host did not keep still goes to the container log (stderr).
    let logged = match host.log(&config.level, &format!("{prefix}: event of type {kind}")) {
        Ok(true) => true,
        Ok(false) => {
            eprintln!("event-logger: event of type {kind} (over the host's log rate limit)");
            false
        }
        Err(e) => {
            eprintln!("event-logger: event of type {kind} (host log failed: {e})");
            false
        }
    };
    let storage = |e: sdk::HostError| format!("event-logger: storage failed: {e}");
    let greeting = host
        .get("greeting")
        .map_err(storage)?
        .unwrap_or(Value::Null);
    let count = host
        .get("count")
        .map_err(storage)?
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
        + 1;
    host.put("count", &json!(count)).map_err(storage)?;
    let emit = match host.emit(
        "event-logger.seen",
        &json!({ "type": kind, "count": count }),
    ) {
        Ok(()) => "ok".to_string(),
        Err(e) => e.code,
    };
    Ok(json!({
        "logged": logged,
        "type": kind,
        "greeting": greeting,
        "count": count,
        "emit": emit,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `on_event` against scripted host-call results; returns the answer and the calls made.
    fn run(results: &[&str]) -> (Result<Value, String>, Vec<Value>) {
        run_with(&Config::default(), results)
    }

    /// [`run`] with `config`.
    fn run_with(config: &Config, results: &[&str]) -> (Result<Value, String>, Vec<Value>) {
        let results = results.join("\n") + "\n";
        let mut input = results.as_bytes();
        let mut output = Vec::new();
        let answer = on_event(
            &mut Host::new(&mut input, &mut output),
            config,
            &json!({"type": "deploy"}),
        );
        let calls = String::from_utf8(output)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (answer, calls)
    }

    #[test]
    fn counts_the_event_in_storage_and_reports_the_refused_emit() {
        let (answer, calls) = run(&[
            r#"{"callId":"c1","ok":true,"result":{"kept":true,"dropped":0}}"#,
            r#"{"callId":"c2","ok":true,"result":{"found":true,"value":"hello from the installer"}}"#,
            r#"{"callId":"c3","ok":true,"result":{"found":true,"value":41}}"#,
            r#"{"callId":"c4","ok":true,"result":{}}"#,
            r#"{"callId":"c5","ok":false,"code":"PERMISSION_DENIED","error":"emit needs events:emit"}"#,
        ]);
        assert_eq!(
            answer,
            Ok(json!({
                "logged": true, "type": "deploy", "greeting": "hello from the installer",
                "count": 42, "emit": "PERMISSION_DENIED",
            }))
        );
        let names: Vec<_> = calls.iter().map(|c| c["call"].clone()).collect();
        assert_eq!(
            names,
            ["log", "storage.get", "storage.get", "storage.put", "emit"]
        );
        assert_eq!(calls[3]["args"], json!({"key": "count", "value": 42}));
        assert_eq!(calls[4]["args"]["type"], "event-logger.seen");
    }

    #[test]
    fn a_missing_count_starts_at_one_and_a_storage_failure_fails_the_event() {
        let (answer, _) = run(&[
            r#"{"callId":"c1","ok":true,"result":{"kept":true,"dropped":0}}"#,
            r#"{"callId":"c2","ok":true,"result":{"found":false}}"#,
            r#"{"callId":"c3","ok":true,"result":{"found":false}}"#,
            r#"{"callId":"c4","ok":true,"result":{}}"#,
            r#"{"callId":"c5","ok":true,"result":{}}"#,
        ]);
        let answer = answer.unwrap();
        assert_eq!(answer["greeting"], Value::Null);
        assert_eq!(answer["count"], 1);
        assert_eq!(answer["emit"], "ok");

        let (answer, _) = run(&[
            r#"{"callId":"c1","ok":false,"code":"PERMISSION_DENIED","error":"no log"}"#,
            r#"{"callId":"c2","ok":false,"code":"UNAVAILABLE","error":"no host API"}"#,
        ]);
        let message = answer.unwrap_err();
        assert!(message.contains("UNAVAILABLE: no host API"), "{message}");
    }

    #[test]
    fn the_configuration_sets_the_log_level_and_prefix_and_defaults_stay() {
        let config = Config::from_payload(&json!({"config": {"level": "warn", "prefix": "audit"}}));
        let (_, calls) = run_with(
            &config,
            &[r#"{"callId":"c1","ok":false,"code":"UNAVAILABLE","error":"stop here"}"#],
        );
        assert_eq!(
            calls[0]["args"],
            json!({"level": "warn", "message": "audit: event of type deploy"})
        );
        assert_eq!(
            Config::from_payload(&json!({"config": {}})),
            Config::default()
        );
        assert_eq!(Config::from_payload(&json!({})), Config::default());
    }
}
