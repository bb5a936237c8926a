//! The router's payload handling (`airlock_router::dispatch::limits`): the size, depth and JSON
//! checks every `payload_json` and `output_json` passes before a plugin sees it, the depth scan
//! (`airlock_core::json_depth`), and the fan-out check of a broadcast. The router's promise
//! checked here: a document it passes on parses in the plugin's SDK inside the request line.
//!
//! Input: a byte choosing the limits, then the document.
#![no_main]

use airlock_core::json_depth::nests_deeper_than;
use airlock_router::dispatch::limits::{
    BroadcastLimits, Field, PayloadLimits, check, check_fan_out,
};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&knob, rest)) = data.split_first() else {
        return;
    };
    let Ok(json) = std::str::from_utf8(rest) else {
        return;
    };
    let limits = match knob % 4 {
        0 => PayloadLimits::default(),
        1 => PayloadLimits {
            max_bytes: 64,
            max_depth: 2,
        },
        2 => PayloadLimits {
            max_bytes: 4096,
            max_depth: usize::from(knob >> 2),
        },
        _ => PayloadLimits {
            max_bytes: usize::MAX,
            max_depth: airlock_core::json_depth::MAX_DEPTH,
        },
    };
    let field = if knob & 0x80 == 0 {
        Field::PayloadJson
    } else {
        Field::OutputJson
    };
    let checked = check(json, field, &limits);
    if let Err(e) = &checked {
        let _ = (e.reason(), e.to_string());
    }
    if checked.is_ok() {
        assert!(json.len() <= limits.max_bytes);
        let value: Value = serde_json::from_str(json).expect("a passed document is JSON");
        assert!(
            depth(&value) <= limits.max_depth,
            "depth {} passed",
            depth(&value)
        );
        // The plugin's SDK parses it inside the request line the shim writes.
        let line = airlock_sdk::protocol::encode_request("inv", "transform", json, 100);
        let request = airlock_sdk::protocol::parse_request(&line)
            .expect("a document the router passed breaks the plugin's request parse");
        assert_eq!(request.payload, value);
    }
    // The byte scan is at least as deep as the parsed document, on every JSON document.
    if let Ok(value) = serde_json::from_str::<Value>(json) {
        // Only a lower bound: with duplicate keys the parsed value keeps the last one, so a
        // deeper earlier duplicate is seen by the scan and not by the tree (the scan refusing
        // more is the safe side; found by this target).
        let d = depth(&value);
        if d > 0 {
            assert!(
                nests_deeper_than(json.as_bytes(), d - 1),
                "scan not as deep as {d}"
            );
        }
    }
    let broadcast = BroadcastLimits::default();
    let subscribers = usize::from(knob);
    let ok = check_fan_out(
        airlock_core::Hook::Transform,
        "ns",
        json.len(),
        subscribers,
        &broadcast,
    );
    assert_eq!(
        ok.is_ok(),
        subscribers <= broadcast.max_subscribers
            && json.len().saturating_mul(subscribers) <= broadcast.max_bytes
    );
});
