//! The wire format between the shim and the plugin process: newline-delimited JSON over the
//! plugin's stdin (requests) and stdout (responses), one request in flight at a time. The plugin's
//! stderr is its log. `PROTOCOL.md` in this crate is the reference for plugin authors; this module
//! is the only code that reads or writes these lines, for both the shim and the Rust SDK.
//!
//! ```text
//! shim → plugin  {"id":"inv-1","hook":"transform","payload":{"a":1},"deadlineMs":200}
//! plugin → shim  {"id":"inv-1","ok":true,"output":{"a":2}}
//! plugin → shim  {"id":"inv-1","ok":false,"error":"field a is missing"}
//! ```
//!
//! It depends on `serde_json` only, so the SDK stays light. Unknown fields are ignored on both
//! sides, so either side can add fields later.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Largest line either side may send, newline excluded: 1 MiB.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// A request line as a plugin receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The invocation id; the response must carry the same one.
    pub id: String,
    /// The hook to run, e.g. `transform`.
    pub hook: String,
    /// The hook's input.
    pub payload: Value,
    /// Milliseconds the plugin has before the shim kills it.
    pub deadline_ms: u64,
}

/// A response line as the shim receives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    /// The invocation id of the request this answers.
    pub id: String,
    /// `Ok(output)` for `"ok": true`, with the output as the plugin wrote it (JSON text; a
    /// missing `output` is `null`), `Err(message)` otherwise.
    pub result: Result<String, String>,
}

/// A line that does not follow the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(String);

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProtocolError {}

/// Encodes a request line (with its trailing newline).
///
/// `payload_json` must already be valid JSON; this is the shim's hot path, so the payload is
/// spliced in as text rather than parsed and re-serialised (which would also round large numbers).
/// Newlines in valid JSON can only be insignificant whitespace (inside strings they must be
/// escaped), so replacing them with spaces keeps the document and makes it one line.
pub fn encode_request(id: &str, hook: &str, payload_json: &str, deadline_ms: u64) -> String {
    let payload = payload_json.replace(['\n', '\r'], " ");
    format!(
        "{{\"id\":{},\"hook\":{},\"payload\":{payload},\"deadlineMs\":{deadline_ms}}}\n",
        Value::from(id),
        Value::from(hook),
    )
}

/// Parses a request line (a trailing newline is allowed).
pub fn parse_request(line: &str) -> Result<Request, ProtocolError> {
    let mut obj = parse_object(line, "request")?;
    Ok(Request {
        id: take_string(&mut obj, "id")?,
        hook: take_string(&mut obj, "hook")?,
        payload: obj.remove("payload").unwrap_or(Value::Null),
        deadline_ms: obj.get("deadlineMs").and_then(Value::as_u64).unwrap_or(0),
    })
}

/// Encodes a response line (with its trailing newline).
pub fn encode_response(id: &str, result: &Result<Value, String>) -> String {
    let mut obj = Map::new();
    obj.insert("id".into(), Value::from(id));
    match result {
        Ok(output) => {
            obj.insert("ok".into(), Value::Bool(true));
            obj.insert("output".into(), output.clone());
        }
        Err(message) => {
            obj.insert("ok".into(), Value::Bool(false));
            obj.insert("error".into(), Value::from(message.as_str()));
        }
    }
    // serde_json escapes control characters in strings, so this is always a single line.
    format!("{}\n", Value::Object(obj))
}

/// Parses a response line (a trailing newline is allowed).
///
/// The output is kept as text rather than parsed into a [`Value`], so the shim passes on exactly
/// what the plugin wrote (a `Value` would round integers beyond 64 bits and long decimals).
pub fn parse_response(line: &str) -> Result<Response, ProtocolError> {
    let mut fields: BTreeMap<String, Box<RawValue>> =
        serde_json::from_str(line.trim_end_matches(['\n', '\r']))
            .map_err(|e| ProtocolError(format!("response line is not a JSON object: {e}")))?;
    let id = match fields
        .get("id")
        .map(|raw| serde_json::from_str::<String>(raw.get()))
    {
        Some(Ok(id)) => id,
        Some(Err(_)) => return Err(ProtocolError("\"id\" must be a string".to_string())),
        None => return Err(ProtocolError("\"id\" is missing".to_string())),
    };
    let ok = fields
        .get("ok")
        .and_then(|raw| serde_json::from_str::<bool>(raw.get()).ok());
    let result = match ok {
        Some(true) => Ok(fields
            .remove("output")
            .map_or_else(|| "null".to_string(), |raw| raw.get().to_string())),
        Some(false) => Err(match fields.remove("error") {
            Some(raw) => {
                serde_json::from_str::<String>(raw.get()).unwrap_or_else(|_| raw.get().to_string())
            }
            None => "the plugin reported an error without a message".to_string(),
        }),
        None => {
            return Err(ProtocolError(
                "response needs \"ok\": true or false".to_string(),
            ));
        }
    };
    Ok(Response { id, result })
}

fn parse_object(line: &str, what: &str) -> Result<Map<String, Value>, ProtocolError> {
    match serde_json::from_str::<Value>(line.trim_end_matches(['\n', '\r'])) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(_) => Err(ProtocolError(format!("{what} line must be a JSON object"))),
        Err(e) => Err(ProtocolError(format!("{what} line is not JSON: {e}"))),
    }
}

fn take_string(obj: &mut Map<String, Value>, key: &str) -> Result<String, ProtocolError> {
    match obj.remove(key) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(ProtocolError(format!("\"{key}\" must be a string"))),
        None => Err(ProtocolError(format!("\"{key}\" is missing"))),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn pretty_printed_payload_becomes_one_line_and_keeps_its_value() {
        let payload = "{\n  \"text\": \"a\\nb\",\n  \"big\": 123456789012345678901234567890\n}";
        let line = encode_request("inv-\"1\"", "transform", payload, 200);
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        assert!(line.ends_with('\n'));
        // Numbers are passed through as text, not rounded through f64.
        assert!(line.contains("123456789012345678901234567890"), "{line}");
        let req = parse_request(&line).unwrap();
        assert_eq!(req.id, "inv-\"1\"");
        assert_eq!(req.hook, "transform");
        assert_eq!(req.payload["text"], json!("a\nb"));
        assert_eq!(req.deadline_ms, 200);
    }

    #[test]
    fn response_round_trip_ok_and_error() {
        let ok = encode_response("x", &Ok(json!({"multi\nline": "v\n"})));
        assert_eq!(ok.matches('\n').count(), 1, "{ok}");
        let parsed = parse_response(&ok).unwrap();
        assert_eq!(parsed.id, "x");
        let output: Value = serde_json::from_str(&parsed.result.unwrap()).unwrap();
        assert_eq!(output, json!({"multi\nline": "v\n"}));
        let err = encode_response("y", &Err("boom".into()));
        assert_eq!(parse_response(&err).unwrap().result, Err("boom".into()));
    }

    #[test]
    fn responses_that_break_the_protocol_are_rejected() {
        assert!(parse_response("hello from print()").is_err());
        assert!(parse_response("[1,2]").is_err());
        assert!(parse_response(r#"{"ok":true,"output":1}"#).is_err());
        assert!(parse_response(r#"{"id":"a","output":1}"#).is_err());
        assert!(parse_response(r#"{"id":7,"ok":true}"#).is_err());
        // A missing output is null; extra fields are ignored.
        let r = parse_response(r#"{"id":"a","ok":true,"extra":1}"#).unwrap();
        assert_eq!(r.result, Ok("null".to_string()));
        // Outputs are passed on exactly as written.
        let r = parse_response(
            r#"{"id":"a","ok":true,"output":{"n": 1.10, "big": 123456789012345678901234567890}}"#,
        )
        .unwrap();
        assert_eq!(
            r.result,
            Ok(r#"{"n": 1.10, "big": 123456789012345678901234567890}"#.to_string())
        );
    }
}
