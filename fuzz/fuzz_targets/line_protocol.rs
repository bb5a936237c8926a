//! The shim <-> plugin stdio line protocol (`airlock_sdk::protocol`, used by the shim's
//! `child::exchange` and `child::mux`), both directions:
//! - plugin -> shim: answers and host-call lines (`parse_stdout_line`, `parse_response`);
//! - shim -> plugin: requests and host-call results (`parse_request`, `parse_call_result`), as the
//!   SDK in the plugin reads them;
//! and the round trips encode -> parse for fields taken from the input.
//!
//! Input: the whole input is one line for the parsers; for the round trips its first line is an
//! id, the second a name, the rest a JSON document.
#![no_main]

use airlock_core::json_depth::{MAX_DEPTH, nests_deeper_than};
use airlock_sdk::protocol::{self, CallError, StdoutLine};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fn value(text: &str) -> Value {
    serde_json::from_str(text).expect("the text the protocol handed on is JSON")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // What a plugin writes on its stdout, as the shim reads it.
    let stdout = protocol::parse_stdout_line(text);
    let response = protocol::parse_response(text);
    if let Ok(StdoutLine::Response(r)) = &stdout {
        assert_eq!(
            response.as_ref().ok(),
            Some(r),
            "a line with an id is an answer"
        );
    }
    if let Ok(StdoutLine::HostCall(call)) = &stdout {
        assert!(call.args.starts_with('{'));
    }
    // What the shim writes on the plugin's stdin, as the SDK reads it.
    let _ = protocol::parse_request(text);
    let _ = protocol::parse_call_result(text);

    // Round trips.
    let mut lines = text.splitn(3, '\n');
    let (id, name, doc) = (
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
        lines.next().unwrap_or(""),
    );
    // Only documents the router passes on (it refuses deeper ones before any plugin sees them).
    if nests_deeper_than(doc.as_bytes(), MAX_DEPTH) {
        return;
    }
    let Ok(doc_value) = serde_json::from_str::<Value>(doc) else {
        return;
    };

    // shim -> plugin: a request.
    let line = protocol::encode_traced_request(id, name, doc, 1234, Some(name));
    assert_eq!(
        line.matches('\n').count(),
        1,
        "a request is one line: {line:?}"
    );
    let request = protocol::parse_request(&line).expect("an encoded request parses");
    assert_eq!(request.id, id);
    assert_eq!(request.hook, name);
    assert_eq!(request.payload, doc_value);
    assert_eq!(request.deadline_ms, 1234);
    assert_eq!(request.traceparent.as_deref(), Some(name));

    // shim -> plugin: a host-call result, ok and failed.
    let line = protocol::encode_call_result(id, &Ok(doc.to_string()));
    let result = protocol::parse_call_result(&line).expect("an encoded call result parses");
    assert_eq!(result.call_id, id);
    assert_eq!(result.result.as_ref().ok(), Some(&doc_value));
    let error = CallError {
        code: name.to_string(),
        message: doc.to_string(),
    };
    let line = protocol::encode_call_result(id, &Err(error.clone()));
    let result = protocol::parse_call_result(&line).expect("an encoded call error parses");
    assert_eq!(result.result.err(), Some(error));

    // What a value is after one more print and parse (serde_json's float parsing is not exactly
    // round-trip without its `float_roundtrip` feature): what an answer's output and a host
    // call's args must equal.
    let reprinted: Value = value(&doc_value.to_string());

    // plugin -> shim: an answer, ok and failed.
    let line = protocol::encode_response(id, &Ok(doc_value.clone()));
    let answer = protocol::parse_response(&line).expect("an encoded answer parses");
    assert_eq!(answer.id, id);
    let output = answer.result.expect("ok answer");
    assert_eq!(value(&output), reprinted);
    let line = protocol::encode_response(id, &Err(doc.to_string()));
    let answer = protocol::parse_response(&line).expect("an encoded error answer parses");
    assert_eq!(answer.result, Err(doc.to_string()));

    // plugin -> shim: a host call (args are an object).
    if doc_value.is_object() {
        for request in [None, Some(id)] {
            let line = protocol::encode_request_host_call(request, name, id, &doc_value);
            match protocol::parse_stdout_line(&line) {
                Ok(StdoutLine::HostCall(call)) => {
                    assert_eq!(call.call, name);
                    assert_eq!(call.call_id, id);
                    assert_eq!(call.request.as_deref(), request);
                    assert_eq!(value(&call.args), reprinted);
                }
                other => panic!("an encoded host call parsed as {other:?}"),
            }
        }
    }
});
