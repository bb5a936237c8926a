//! event-logger: `onEvent` writes each event it receives to its log (stderr, which the shim
//! forwards) and answers with what it logged.

use serde_json::{Value, json};

fn main() -> std::io::Result<()> {
    let mut seen: u64 = 0;
    airlock_plugin_shim::sdk::run(move |hook: &str, payload: Value| match hook {
        "onEvent" => {
            seen += 1;
            let kind = payload["type"].as_str().unwrap_or("unknown").to_string();
            eprintln!("event-logger: event #{seen} of type {kind}");
            Ok(json!({"logged": true, "type": kind, "seen": seen}))
        }
        other => Err(format!("event-logger does not implement hook {other}")),
    })
}
