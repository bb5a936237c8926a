//! The wire format between the shim and the plugin process: newline-delimited JSON over the
//! plugin's stdin (requests) and stdout (responses), one request in flight at a time (several,
//! answered by `id` in any order, for a multiplexed plugin; its host calls name their `request`).
//! The plugin's stderr is its log. `PROTOCOL.md` in this crate is the reference for plugin
//! authors; this module is the only code that reads or writes these lines, for both the shim and
//! the Rust SDK.
//!
//! ```text
//! shim → plugin  {"id":"inv-1","hook":"transform","payload":{"a":1},"deadlineMs":200}
//! plugin → shim  {"id":"inv-1","ok":true,"output":{"a":2}}
//! plugin → shim  {"id":"inv-1","ok":false,"error":"field a is missing"}
//! ```
//!
//! While it handles a request, a plugin may also write host calls on its stdout (the callbacks of
//! `airlock.host.v1.Host`), each answered on its stdin before the plugin goes on: the shim reads
//! them with [`parse_stdout_line`] and answers with [`encode_call_result`]; the SDK writes them with
//! [`encode_host_call`] and reads the result with [`parse_call_result`]. At most
//! [`MAX_HOST_CALLS`] per request:
//!
//! ```text
//! plugin → shim  {"call":"storage.put","callId":"c1","args":{"key":"k","value":{"n":1}}}
//! shim → plugin  {"callId":"c1","ok":true,"result":{}}
//! shim → plugin  {"callId":"c1","ok":false,"code":"PERMISSION_DENIED","error":"..."}
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

/// Most host calls a plugin may make while it handles one request. The shim treats one more as a
/// broken protocol (the request fails, the process is replaced): a plugin looping on host calls
/// must not hold its invocation, and the host, until the deadline.
pub const MAX_HOST_CALLS: u32 = 64;

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
    /// W3C trace context of the plugin's span (`00-<trace id>-<span id>-<flags>`), to continue
    /// the trace in the plugin's own logs or calls.
    pub traceparent: Option<String>,
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

/// The host calls a plugin can make: the `call` of a host-call line. This is the one list of their
/// names; the host's permission checks and denials use the same ones.
pub mod calls {
    /// Write a log line (args `level`, `message`).
    pub const LOG: &str = "log";
    /// Read a key of the plugin's storage (args `key`).
    pub const STORAGE_GET: &str = "storage.get";
    /// Store a JSON value under a key (args `key`, `value`).
    pub const STORAGE_PUT: &str = "storage.put";
    /// Remove a key (args `key`).
    pub const STORAGE_DELETE: &str = "storage.delete";
    /// List keys by prefix, one page at a time (args `prefix`, `pageToken`, `pageSize`).
    pub const STORAGE_LIST: &str = "storage.list";
    /// The plugin version that last wrote the plugin's storage (no args).
    pub const STORAGE_WRITTEN_BY: &str = "storage.writtenBy";
    /// Emit an event to the host (args `type`, `payload`).
    pub const EMIT: &str = "emit";
    /// Every call, in the order of the RPCs of `airlock.host.v1.Host`.
    pub const ALL: [&str; 7] = [
        LOG,
        STORAGE_GET,
        STORAGE_PUT,
        STORAGE_DELETE,
        STORAGE_LIST,
        STORAGE_WRITTEN_BY,
        EMIT,
    ];
}

/// A host call as the shim receives it on the plugin's stdout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCallLine {
    /// The call's name, one of [`calls::ALL`] for this version. Not checked here: an unknown
    /// call is answered with an error, it does not break the protocol.
    pub call: String,
    /// The plugin's id for this call; the result carries the same one.
    pub call_id: String,
    /// The call's arguments: a JSON object as the plugin wrote it (`{}` when left out), kept as
    /// text so a stored value is passed on without rounding.
    pub args: String,
    /// The `id` of the request the call is made for. A multiplexed plugin (several requests in
    /// flight on one process) must name it; a plugin with one request at a time may leave it out.
    pub request: Option<String>,
}

/// A line the plugin wrote on its stdout while handling a request.
#[derive(Debug, Clone, PartialEq)]
pub enum StdoutLine {
    /// The answer to the request (it has an `id`).
    Response(Response),
    /// A host call (it has a `call` and no `id`).
    HostCall(HostCallLine),
}

/// Why a host call failed, as the plugin is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallError {
    /// The gRPC code name of the failure, e.g. `PERMISSION_DENIED`, `RESOURCE_EXHAUSTED`.
    pub code: String,
    /// What went wrong and what to do, for the plugin's author.
    pub message: String,
}

/// The result of a host call as the plugin receives it on its stdin.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    /// The `callId` of the call this answers.
    pub call_id: String,
    /// The call's `result` (`{}` when the shim left it out) or why the call failed.
    pub result: Result<Value, CallError>,
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
    encode_traced_request(id, hook, payload_json, deadline_ms, None)
}

/// [`encode_request`] with the W3C `traceparent` of the plugin's span, when there is a trace.
pub fn encode_traced_request(
    id: &str,
    hook: &str,
    payload_json: &str,
    deadline_ms: u64,
    traceparent: Option<&str>,
) -> String {
    let payload = payload_json.replace(['\n', '\r'], " ");
    let trace = traceparent
        .map(|t| format!(",\"traceparent\":{}", Value::from(t)))
        .unwrap_or_default();
    format!(
        "{{\"id\":{},\"hook\":{},\"payload\":{payload},\"deadlineMs\":{deadline_ms}{trace}}}\n",
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
        traceparent: obj
            .get("traceparent")
            .and_then(Value::as_str)
            .map(str::to_string),
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
    let fields = raw_fields(line)
        .map_err(|e| ProtocolError(format!("response line is not a JSON object: {e}")))?;
    response_from_fields(fields)
}

/// Parses a line of the plugin's stdout (a trailing newline is allowed): the answer to the
/// request, or a host call made while handling it.
///
/// A line with an `id` is an answer, parsed exactly as [`parse_response`] does, even if it also
/// has a `call`: answers written before host calls existed keep their meaning. A line with a
/// `call` and no `id` is a host call.
pub fn parse_stdout_line(line: &str) -> Result<StdoutLine, ProtocolError> {
    let fields = raw_fields(line)
        .map_err(|e| ProtocolError(format!("stdout line is not a JSON object: {e}")))?;
    if fields.contains_key("id") {
        response_from_fields(fields).map(StdoutLine::Response)
    } else if fields.contains_key("call") {
        host_call_from_fields(fields).map(StdoutLine::HostCall)
    } else {
        Err(ProtocolError(
            "a stdout line needs \"id\" (an answer) or \"call\" (a host call)".to_string(),
        ))
    }
}

/// Encodes the result of a host call (with its trailing newline): `Ok(result_json)` or the error.
///
/// `result_json` must already be valid JSON; it is spliced in as text, like a request's payload
/// (see [`encode_request`]), so a stored value reaches the plugin exactly as it was stored.
pub fn encode_call_result(call_id: &str, result: &Result<String, CallError>) -> String {
    match result {
        Ok(result_json) => format!(
            "{{\"callId\":{},\"ok\":true,\"result\":{}}}\n",
            Value::from(call_id),
            result_json.replace(['\n', '\r'], " "),
        ),
        Err(e) => {
            let mut obj = Map::new();
            obj.insert("callId".into(), Value::from(call_id));
            obj.insert("ok".into(), Value::Bool(false));
            obj.insert("code".into(), Value::from(e.code.as_str()));
            obj.insert("error".into(), Value::from(e.message.as_str()));
            format!("{}\n", Value::Object(obj))
        }
    }
}

/// Encodes a host call line (with its trailing newline), as a plugin writes it on its stdout.
pub fn encode_host_call(call: &str, call_id: &str, args: &Value) -> String {
    encode_request_host_call(None, call, call_id, args)
}

/// [`encode_host_call`] naming the `request` it is made for, as a multiplexed plugin must.
pub fn encode_request_host_call(
    request: Option<&str>,
    call: &str,
    call_id: &str,
    args: &Value,
) -> String {
    let mut obj = Map::new();
    obj.insert("call".into(), Value::from(call));
    obj.insert("callId".into(), Value::from(call_id));
    if let Some(request) = request {
        obj.insert("request".into(), Value::from(request));
    }
    obj.insert("args".into(), args.clone());
    format!("{}\n", Value::Object(obj))
}

/// Parses the result of a host call (a trailing newline is allowed), as a plugin reads it on its
/// stdin.
pub fn parse_call_result(line: &str) -> Result<CallResult, ProtocolError> {
    let mut obj = parse_object(line, "host call result")?;
    let call_id = take_string(&mut obj, "callId")?;
    let result = match obj.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(obj
            .remove("result")
            .unwrap_or_else(|| Value::Object(Map::new()))),
        Some(false) => Err(CallError {
            code: match obj.remove("code") {
                Some(Value::String(code)) => code,
                _ => "UNKNOWN".to_string(),
            },
            message: match obj.remove("error") {
                Some(Value::String(message)) => message,
                _ => "the host call failed without a message".to_string(),
            },
        }),
        None => {
            return Err(ProtocolError(
                "host call result needs \"ok\": true or false".to_string(),
            ));
        }
    };
    Ok(CallResult { call_id, result })
}

type RawFields = BTreeMap<String, Box<RawValue>>;

/// The top-level fields of a JSON object line, values kept as text.
fn raw_fields(line: &str) -> Result<RawFields, serde_json::Error> {
    serde_json::from_str(line.trim_end_matches(['\n', '\r']))
}

fn response_from_fields(mut fields: RawFields) -> Result<Response, ProtocolError> {
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

fn host_call_from_fields(mut fields: RawFields) -> Result<HostCallLine, ProtocolError> {
    let string = |fields: &RawFields, key: &str| match fields
        .get(key)
        .map(|raw| serde_json::from_str::<String>(raw.get()))
    {
        Some(Ok(s)) => Ok(s),
        Some(Err(_)) => Err(ProtocolError(format!("\"{key}\" must be a string"))),
        None => Err(ProtocolError(format!(
            "\"{key}\" is missing from the host call"
        ))),
    };
    let call = string(&fields, "call")?;
    let call_id = string(&fields, "callId")?;
    let request = if fields.contains_key("request") {
        Some(string(&fields, "request")?)
    } else {
        None
    };
    let args = match fields.remove("args") {
        None => "{}".to_string(),
        // A raw value holds exactly the value's text, so an object starts with its brace.
        Some(raw) if raw.get().starts_with('{') => raw.get().to_string(),
        Some(_) => {
            return Err(ProtocolError(
                "\"args\" of a host call must be a JSON object".to_string(),
            ));
        }
    };
    Ok(HostCallLine {
        call,
        call_id,
        args,
        request,
    })
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
        assert_eq!(req.traceparent, None);
        let traced = encode_traced_request("i", "transform", "{}", 5, Some("00-ab-cd-01"));
        assert_eq!(
            parse_request(&traced).unwrap().traceparent.as_deref(),
            Some("00-ab-cd-01")
        );
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
    fn a_stdout_line_is_an_answer_or_a_host_call() {
        let line = r#"{"call":"storage.put","callId":"c1","args":{"key":"k","value":{"n": 1.10, "big": 123456789012345678901234567890}}}"#;
        assert_eq!(
            parse_stdout_line(&format!("{line}\n")).unwrap(),
            StdoutLine::HostCall(HostCallLine {
                call: "storage.put".into(),
                call_id: "c1".into(),
                // The arguments are passed on as written: no rounding, no reformatting.
                args: r#"{"key":"k","value":{"n": 1.10, "big": 123456789012345678901234567890}}"#
                    .into(),
                request: None,
            })
        );
        // Arguments may be left out; unknown calls and extra fields are not a protocol error.
        assert_eq!(
            parse_stdout_line(r#"{"callId":"c2","call":"storage.drop","extra":1}"#).unwrap(),
            StdoutLine::HostCall(HostCallLine {
                call: "storage.drop".into(),
                call_id: "c2".into(),
                args: "{}".into(),
                request: None,
            })
        );
        assert_eq!(
            parse_stdout_line(r#"{"id":"inv-1","ok":true,"output":{"a":2}}"#).unwrap(),
            StdoutLine::Response(Response {
                id: "inv-1".into(),
                result: Ok(r#"{"a":2}"#.into()),
            })
        );
        // A multiplexed plugin names the request a call is made for.
        let line = encode_request_host_call(Some("inv-2"), "log", "c3", &json!({"level": "info"}));
        let StdoutLine::HostCall(call) = parse_stdout_line(&line).unwrap() else {
            panic!("{line} is not a host call")
        };
        assert_eq!(call.request.as_deref(), Some("inv-2"));
        assert_eq!(call.call_id, "c3");
        // An "id" makes it an answer, whatever else the line has.
        assert!(matches!(
            parse_stdout_line(r#"{"id":"inv-1","ok":false,"error":"e","call":"log"}"#).unwrap(),
            StdoutLine::Response(Response { result: Err(_), .. })
        ));
    }

    #[test]
    fn stdout_lines_parse_answers_exactly_as_parse_response_does() {
        for line in [
            r#"{"id":"a","ok":true,"extra":1}"#,
            r#"{"id":"a","ok":true,"output":{"n": 1.10}}"#,
            r#"{"id":"a","ok":false}"#,
            r#"{"id":"a","ok":false,"error":{"not":"a string"}}"#,
            r#"{"id":"a","output":1}"#,
            r#"{"id":7,"ok":true}"#,
        ] {
            assert_eq!(
                parse_stdout_line(line).map(|l| match l {
                    StdoutLine::Response(r) => r,
                    StdoutLine::HostCall(c) => panic!("{line} parsed as {c:?}"),
                }),
                parse_response(line),
                "{line}"
            );
        }
    }

    #[test]
    fn stdout_lines_that_break_the_protocol_are_rejected() {
        for (line, why) in [
            ("hello from print()", "not a JSON object"),
            ("[1,2]", "not a JSON object"),
            (
                r#"{"ok":true,"output":1}"#,
                "needs \"id\" (an answer) or \"call\"",
            ),
            (r#"{"call":"log","args":{}}"#, "\"callId\" is missing"),
            (
                r#"{"call":"log","callId":7}"#,
                "\"callId\" must be a string",
            ),
            (
                r#"{"call":["log"],"callId":"c"}"#,
                "\"call\" must be a string",
            ),
            (
                r#"{"call":"log","callId":"c","request":7}"#,
                "\"request\" must be a string",
            ),
            (
                r#"{"call":"log","callId":"c","args":[1]}"#,
                "must be a JSON object",
            ),
            (
                r#"{"call":"log","callId":"c","args":null}"#,
                "must be a JSON object",
            ),
            (
                r#"{"call":"log","callId":"c","args":"{}"}"#,
                "must be a JSON object",
            ),
        ] {
            let err = parse_stdout_line(line).unwrap_err().to_string();
            assert!(err.contains(why), "{line}: {err}");
        }
    }

    #[test]
    fn call_results_are_one_line_and_carry_the_call_id() {
        let ok = encode_call_result(
            "c\"1",
            &Ok("{\n \"found\": true,\n \"value\": 123456789012345678901234567890\n}".into()),
        );
        assert_eq!(ok.matches('\n').count(), 1, "{ok}");
        assert!(ok.ends_with('\n'));
        assert!(ok.contains("123456789012345678901234567890"), "{ok}");
        let v: Value = serde_json::from_str(&ok).unwrap();
        assert_eq!(v["callId"], json!("c\"1"));
        assert_eq!(v["ok"], json!(true));
        assert_eq!(v["result"]["found"], json!(true));

        let err = encode_call_result(
            "c2",
            &Err(CallError {
                code: "PERMISSION_DENIED".into(),
                message: "storage.put needs the permission storage:write;\nthe plugin has log"
                    .into(),
            }),
        );
        assert_eq!(err.matches('\n').count(), 1, "{err}");
        let v: Value = serde_json::from_str(&err).unwrap();
        assert_eq!(
            v,
            json!({
                "callId": "c2",
                "ok": false,
                "code": "PERMISSION_DENIED",
                "error": "storage.put needs the permission storage:write;\nthe plugin has log",
            })
        );
    }

    #[test]
    fn host_calls_and_their_results_round_trip() {
        let line = encode_host_call(
            "storage.put",
            "c\"1",
            &json!({"key": "a\nb", "value": {"n": 1}}),
        );
        assert_eq!(line.matches('\n').count(), 1, "{line}");
        let StdoutLine::HostCall(call) = parse_stdout_line(&line).unwrap() else {
            panic!("{line} is not a host call")
        };
        assert_eq!(call.call, "storage.put");
        assert_eq!(call.call_id, "c\"1");
        let args: Value = serde_json::from_str(&call.args).unwrap();
        assert_eq!(args, json!({"key": "a\nb", "value": {"n": 1}}));

        let ok = encode_call_result("c1", &Ok(r#"{"found":true,"value":[1]}"#.into()));
        assert_eq!(
            parse_call_result(&ok).unwrap(),
            CallResult {
                call_id: "c1".into(),
                result: Ok(json!({"found": true, "value": [1]})),
            }
        );
        let denied = CallError {
            code: "PERMISSION_DENIED".into(),
            message: "no".into(),
        };
        let err = encode_call_result("c2", &Err(denied.clone()));
        assert_eq!(parse_call_result(&err).unwrap().result, Err(denied));
        // A result may be left out; an error without code or message still reads as an error.
        assert_eq!(
            parse_call_result(r#"{"callId":"c3","ok":true}"#)
                .unwrap()
                .result,
            Ok(json!({}))
        );
        assert_eq!(
            parse_call_result(r#"{"callId":"c4","ok":false}"#)
                .unwrap()
                .result
                .unwrap_err()
                .code,
            "UNKNOWN"
        );
        for bad in [
            "nope",
            r#"{"ok":true}"#,
            r#"{"callId":"c","result":{}}"#,
            r#"{"callId":1,"ok":true}"#,
        ] {
            assert!(parse_call_result(bad).is_err(), "{bad}");
        }
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
