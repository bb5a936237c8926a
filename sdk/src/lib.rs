//! The Rust SDK for plugin authors: a plugin is a function from `(hook, payload)` to an output or
//! an error message.
//!
//! ```no_run
//! use serde_json::{Value, json};
//!
//! fn main() -> std::io::Result<()> {
//!     airlock_sdk::run(|hook: &str, payload: Value| match hook {
//!         "transform" => Ok(json!({ "upper": payload["text"].as_str().unwrap_or("").to_uppercase() })),
//!         other => Err(format!("unsupported hook {other}")),
//!     })
//! }
//! ```
//!
//! A handler that calls back its host (log through the router, its key-value storage, emit an
//! event; `PROTOCOL.md`, "Host calls") takes a [`Host`] too, with [`run_with_host`]:
//!
//! ```no_run
//! use serde_json::json;
//!
//! fn main() -> std::io::Result<()> {
//!     airlock_sdk::run_with_host(|host, hook, payload| match hook {
//!         "onEvent" => {
//!             let seen = host.get("seen").map_err(|e| e.to_string())?;
//!             let seen = seen.and_then(|v| v.as_u64()).unwrap_or(0) + 1;
//!             host.put("seen", &json!(seen)).map_err(|e| e.to_string())?;
//!             Ok(json!({ "seen": seen, "type": payload["type"] }))
//!         }
//!         other => Err(format!("unsupported hook {other}")),
//!     })
//! }
//! ```
//!
//! A multiplexed plugin (`multiplexed: true` in `plugin.yaml`; `PROTOCOL.md`, "Multiplexed
//! plugins") takes several requests at once on one process: [`run_multiplexed`] and
//! [`run_multiplexed_with_host`] run each on a thread of its own, so the handler is
//! `Fn + Send + Sync`:
//!
//! ```no_run
//! use serde_json::json;
//!
//! fn main() -> std::io::Result<()> {
//!     airlock_sdk::run_multiplexed_with_host(8, |host, hook, payload| match hook {
//!         "transform" => {
//!             let count = host.get("count").map_err(|e| e.to_string())?;
//!             Ok(json!({ "echo": payload, "count": count.unwrap_or(0.into()) }))
//!         }
//!         other => Err(format!("unsupported hook {other}")),
//!     })
//! }
//! ```
//!
//! The crate depends on `serde_json` alone. [`protocol`] is the wire format itself (the shim uses
//! the same module), for authors who want the lines without the run loop.
//!
//! Log with `eprintln!` (stderr is the plugin's log) or [`Host::log`]; never print to stdout,
//! which carries the answers and host calls.

use std::fmt;
use std::io::{self, BufRead, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::{Value, json};

mod multiplexed;
pub mod protocol;

pub use crate::multiplexed::{
    run_multiplexed, run_multiplexed_with_host, serve_multiplexed_with_host,
};
use crate::protocol::{MAX_HOST_CALLS, calls};

/// This SDK's name, for `sdk: {name: airlock-sdk, version: ...}` in `plugin.yaml`: the operator
/// refuses a plugin built with a version older than its Airlock serves (`SdkNotSupported`).
pub const NAME: &str = "airlock-sdk";
/// This SDK's version, for `plugin.yaml`'s `sdk.version`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Answers requests from the shim until it closes stdin, calling `handler` for each one.
///
/// An `Err(message)` from the handler becomes an error answer with that message (the caller
/// sees gRPC ABORTED). A panic in the handler is turned into an error answer too, so the process
/// keeps serving — when the plugin is built with `panic = "unwind"` (Rust's default). Built with
/// `panic = "abort"` the process dies instead; the shim restarts it and the router counts a
/// crash (three in an hour auto-disable the plugin). Return `Err` for expected failures. Returns when stdin ends (the shim is stopping the plugin) or on an IO error.
pub fn run<F>(handler: F) -> io::Result<()>
where
    F: FnMut(&str, Value) -> Result<Value, String>,
{
    let stdin = io::stdin();
    let stdout = io::stdout();
    serve(stdin.lock(), stdout.lock(), handler)
}

/// [`run`] over any reader and writer, for tests.
pub fn serve<R, W, F>(input: R, output: W, mut handler: F) -> io::Result<()>
where
    R: BufRead,
    W: Write,
    F: FnMut(&str, Value) -> Result<Value, String>,
{
    serve_with_host(
        input,
        output,
        |_host: &mut Host<'_>, hook: &str, payload: Value| handler(hook, payload),
    )
}

/// [`run`] for a handler that makes host calls: it gets a [`Host`] for the request it handles.
pub fn run_with_host<F>(handler: F) -> io::Result<()>
where
    F: FnMut(&mut Host<'_>, &str, Value) -> Result<Value, String>,
{
    let stdin = io::stdin();
    let stdout = io::stdout();
    serve_with_host(stdin.lock(), stdout.lock(), handler)
}

/// [`run_with_host`] over any reader and writer, for tests.
pub fn serve_with_host<R, W, F>(mut input: R, mut output: W, mut handler: F) -> io::Result<()>
where
    R: BufRead,
    W: Write,
    F: FnMut(&mut Host<'_>, &str, Value) -> Result<Value, String>,
{
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line.trim().is_empty() {
            continue;
        }
        let answer = {
            // The host calls go through the same pipes, in between the request and its answer.
            let mut host = Host::new(&mut input, &mut output);
            handle_line(&line, &mut |hook: &str, payload: Value| {
                handler(&mut host, hook, payload)
            })
        };
        output.write_all(answer.as_bytes())?;
        output.flush()?;
    }
}

/// The answer line (newline included) to one request line.
pub fn handle_line<F>(line: &str, handler: &mut F) -> String
where
    F: FnMut(&str, Value) -> Result<Value, String>,
{
    match protocol::parse_request(line) {
        Ok(request) => answer(request, handler),
        Err(e) => unreadable(&e),
    }
}

/// The answer line to `request`: the handler's result, or its panic as an error answer.
fn answer<F>(request: protocol::Request, handler: &mut F) -> String
where
    F: FnMut(&str, Value) -> Result<Value, String>,
{
    let result = catch_unwind(AssertUnwindSafe(|| handler(&request.hook, request.payload)))
        .unwrap_or_else(|panic| {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(format!("the plugin panicked: {message}"))
        });
    protocol::encode_response(&request.id, &result)
}

/// The answer line to a request line this SDK cannot read. Without an id the shim cannot match
/// it; it will restart the plugin, which is the right outcome for such a request.
fn unreadable(e: &protocol::ProtocolError) -> String {
    protocol::encode_response("", &Err(format!("unreadable request: {e}")))
}

/// Why a host call failed: the `code` and `error` of the result line, or a failure of the SDK
/// to make the call (`UNAVAILABLE` when the pipes to the shim are broken, `INTERNAL` when the
/// result makes no sense, `RESOURCE_EXHAUSTED` past [`MAX_HOST_CALLS`] calls in one request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostError {
    /// The gRPC code name, e.g. `PERMISSION_DENIED`, `INVALID_ARGUMENT`, `RESOURCE_EXHAUSTED`.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for HostError {}

impl HostError {
    fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_string(),
            message: message.into(),
        }
    }
}

/// The plugin's host, while it handles one request: each method writes one host call on stdout
/// and waits for its result on stdin (synchronously; the time counts against the request's
/// deadline). A failed call is an `Err` for the handler to decide on; the plugin keeps running.
pub struct Host<'a> {
    link: Link<'a>,
    calls: u32,
}

/// How a [`Host`] reaches the shim.
enum Link<'a> {
    /// One request at a time: the call's result is the next line of stdin.
    Stdio {
        input: &'a mut dyn BufRead,
        output: &'a mut dyn Write,
    },
    /// Several requests in flight ([`run_multiplexed_with_host`]): calls name their request and
    /// one reader thread hands each result to the call with its `callId`.
    Shared {
        request: &'a str,
        mux: &'a (dyn multiplexed::Calls + 'a),
    },
}

impl fmt::Debug for Host<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Host").field("calls", &self.calls).finish()
    }
}

impl<'a> Host<'a> {
    /// A host that writes calls to `output` and reads their results from `input`: the shim's end
    /// of stdout and stdin. [`serve_with_host`] makes one per request; a test of a handler can
    /// make one over in-memory buffers.
    pub fn new(input: &'a mut dyn BufRead, output: &'a mut dyn Write) -> Self {
        Self {
            link: Link::Stdio { input, output },
            calls: 0,
        }
    }

    /// Makes the host call `call` with `args` (a JSON object) and returns its `result`. The
    /// methods below are this with the arguments and result of each call.
    pub fn call(&mut self, call: &str, args: Value) -> Result<Value, HostError> {
        if self.calls >= MAX_HOST_CALLS {
            // The shim would kill the plugin for one more; refuse it here instead.
            return Err(HostError::new(
                "RESOURCE_EXHAUSTED",
                format!("a plugin may make at most {MAX_HOST_CALLS} host calls per request"),
            ));
        }
        self.calls += 1;
        let (input, output) = match &mut self.link {
            Link::Stdio { input, output } => (input, output),
            Link::Shared { request, mux } => return mux.call(request, call, &args),
        };
        let call_id = format!("c{}", self.calls);
        let broken = |e: io::Error| {
            HostError::new(
                "UNAVAILABLE",
                format!("cannot talk to the shim over stdin/stdout: {e}"),
            )
        };
        output
            .write_all(protocol::encode_host_call(call, &call_id, &args).as_bytes())
            .and_then(|()| output.flush())
            .map_err(broken)?;
        let mut line = String::new();
        if input.read_line(&mut line).map_err(broken)? == 0 {
            return Err(HostError::new(
                "UNAVAILABLE",
                "stdin closed while waiting for the result of a host call",
            ));
        }
        let result = protocol::parse_call_result(&line).map_err(|e| {
            HostError::new(
                "INTERNAL",
                format!("unreadable result of host call {call}: {e}"),
            )
        })?;
        if result.call_id != call_id {
            return Err(HostError::new(
                "INTERNAL",
                format!(
                    "the result of host call {call_id} came with callId {:?}",
                    result.call_id
                ),
            ));
        }
        result.result.map_err(|e| HostError {
            code: e.code,
            message: e.message,
        })
    }

    /// Writes `message` to the router's log at `level` (`debug`, `info`, `warn`, `error`).
    /// Returns whether the line was kept: false when the plugin is over its log rate limit.
    /// Needs the permission `log`.
    pub fn log(&mut self, level: &str, message: &str) -> Result<bool, HostError> {
        let result = self.call(calls::LOG, json!({ "level": level, "message": message }))?;
        Ok(result["kept"].as_bool().unwrap_or(true))
    }

    /// The value stored under `key`, `None` if there is none. Needs `storage:read` or
    /// `storage:write`.
    pub fn get(&mut self, key: &str) -> Result<Option<Value>, HostError> {
        let mut result = self.call(calls::STORAGE_GET, json!({ "key": key }))?;
        Ok(match result["found"].as_bool() {
            Some(true) => Some(result["value"].take()),
            _ => None,
        })
    }

    /// Stores `value` under `key`, replacing what it held. Needs `storage:write`.
    pub fn put(&mut self, key: &str, value: &Value) -> Result<(), HostError> {
        self.call(calls::STORAGE_PUT, json!({ "key": key, "value": value }))
            .map(drop)
    }

    /// Removes `key`; whether it was stored. Needs `storage:write`.
    pub fn delete(&mut self, key: &str) -> Result<bool, HostError> {
        let result = self.call(calls::STORAGE_DELETE, json!({ "key": key }))?;
        Ok(result["existed"].as_bool().unwrap_or(false))
    }

    /// Every stored key that starts with `prefix`, in ascending order (one host call per page of
    /// 1000). Needs `storage:read` or `storage:write`.
    pub fn list(&mut self, prefix: &str) -> Result<Vec<String>, HostError> {
        let mut keys = Vec::new();
        let mut page_token = String::new();
        loop {
            let result = self.call(
                calls::STORAGE_LIST,
                json!({ "prefix": prefix, "pageToken": page_token, "pageSize": 1000 }),
            )?;
            let page = result["keys"].as_array().ok_or_else(|| {
                HostError::new("INTERNAL", "the result of storage.list has no keys")
            })?;
            keys.extend(page.iter().filter_map(Value::as_str).map(str::to_string));
            match result["nextPageToken"].as_str() {
                Some(next) if !next.is_empty() => page_token = next.to_string(),
                _ => return Ok(keys),
            }
        }
    }

    /// `storage.writtenBy`: the plugin version that last wrote this plugin's storage, `None`
    /// when none is recorded (nothing written yet). What `onUpgrade`'s `from` comes from.
    pub fn written_by(&mut self) -> Result<Option<String>, HostError> {
        let result = self.call(calls::STORAGE_WRITTEN_BY, json!({}))?;
        Ok(result["writtenBy"].as_str().map(str::to_string))
    }

    /// Emits an event of `event_type` (e.g. `order.created`) with `payload`. Needs
    /// `events:emit`.
    pub fn emit(&mut self, event_type: &str, payload: &Value) -> Result<(), HostError> {
        self.call(
            calls::EMIT,
            json!({ "type": event_type, "payload": payload }),
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn answers_each_request_with_its_id_until_input_ends() {
        let input = concat!(
            r#"{"id":"1","hook":"transform","payload":{"n":1},"deadlineMs":200}"#,
            "\n\n",
            r#"{"id":"2","hook":"onEvent","payload":null,"deadlineMs":200}"#,
            "\n",
            r#"{"id":"3","hook":"transform","payload":{"n":"boom"},"deadlineMs":200}"#,
            "\n",
        );
        let mut out = Vec::new();
        serve(input.as_bytes(), &mut out, |hook, payload| match hook {
            "transform" => match payload["n"].as_i64() {
                Some(n) => Ok(json!({ "n": n + 1 })),
                None => panic!("n is not a number"),
            },
            other => Err(format!("no {other}")),
        })
        .unwrap();
        let answers: Vec<_> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| protocol::parse_response(l).unwrap())
            .collect();
        assert_eq!(answers.len(), 3);
        assert_eq!(answers[0].id, "1");
        assert_eq!(answers[0].result, Ok(r#"{"n":2}"#.to_string()));
        assert_eq!(answers[1].result, Err("no onEvent".to_string()));
        let Err(message) = &answers[2].result else {
            panic!("{:?}", answers[2])
        };
        assert!(message.contains("panicked: n is not a number"), "{message}");
    }

    /// Requests and host-call results as the shim would write them, and what the plugin wrote.
    fn lines(out: Vec<u8>) -> Vec<Value> {
        String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn a_handler_makes_host_calls_between_request_and_answer() {
        let input = [
            r#"{"id":"1","hook":"onEvent","payload":{"type":"deploy"},"deadlineMs":200}"#,
            r#"{"callId":"c1","ok":true,"result":{"kept":true,"dropped":0}}"#,
            r#"{"callId":"c2","ok":true,"result":{"found":true,"value":{"n":41}}}"#,
            r#"{"callId":"c3","ok":true,"result":{"found":false}}"#,
            r#"{"callId":"c4","ok":true,"result":{}}"#,
            r#"{"callId":"c5","ok":true,"result":{"existed":true}}"#,
            r#"{"callId":"c6","ok":false,"code":"PERMISSION_DENIED","error":"emit needs events:emit"}"#,
            // The next request starts counting calls again.
            r#"{"id":"2","hook":"onEvent","payload":{},"deadlineMs":200}"#,
            r#"{"callId":"c1","ok":true,"result":{"keys":["a","b"],"nextPageToken":"p2"}}"#,
            r#"{"callId":"c2","ok":true,"result":{"keys":["c"],"nextPageToken":""}}"#,
            "",
        ]
        .join("\n");
        let mut out = Vec::new();
        serve_with_host(input.as_bytes(), &mut out, |host, _hook, payload| {
            if payload.get("type").is_none() {
                return Ok(json!({ "keys": host.list("").map_err(|e| e.to_string())? }));
            }
            let kept = host.log("info", "seen").map_err(|e| e.to_string())?;
            let n = host.get("n").map_err(|e| e.to_string())?;
            let missing = host.get("missing").map_err(|e| e.to_string())?;
            host.put("n", &json!(42)).map_err(|e| e.to_string())?;
            let existed = host.delete("old").map_err(|e| e.to_string())?;
            let emit = host.emit("seen", &json!({"a": 1})).unwrap_err();
            Ok(json!({
                "kept": kept, "n": n, "missing": missing, "existed": existed,
                "emit": emit.code, "why": emit.to_string(),
            }))
        })
        .unwrap();
        let written = lines(out);
        assert_eq!(
            written,
            vec![
                json!({"call": "log", "callId": "c1", "args": {"level": "info", "message": "seen"}}),
                json!({"call": "storage.get", "callId": "c2", "args": {"key": "n"}}),
                json!({"call": "storage.get", "callId": "c3", "args": {"key": "missing"}}),
                json!({"call": "storage.put", "callId": "c4", "args": {"key": "n", "value": 42}}),
                json!({"call": "storage.delete", "callId": "c5", "args": {"key": "old"}}),
                json!({"call": "emit", "callId": "c6", "args": {"type": "seen", "payload": {"a": 1}}}),
                json!({"id": "1", "ok": true, "output": {
                    "kept": true, "n": {"n": 41}, "missing": null, "existed": true,
                    "emit": "PERMISSION_DENIED", "why": "PERMISSION_DENIED: emit needs events:emit",
                }}),
                json!({"call": "storage.list", "callId": "c1",
                       "args": {"prefix": "", "pageToken": "", "pageSize": 1000}}),
                json!({"call": "storage.list", "callId": "c2",
                       "args": {"prefix": "", "pageToken": "p2", "pageSize": 1000}}),
                json!({"id": "2", "ok": true, "output": {"keys": ["a", "b", "c"]}}),
            ]
        );
    }

    #[test]
    fn a_broken_or_closed_stdin_is_an_error_for_the_handler_not_a_panic() {
        // stdin ends in the middle of a call.
        let input = r#"{"id":"1","hook":"t","payload":{},"deadlineMs":200}"#.to_string() + "\n";
        let mut out = Vec::new();
        serve_with_host(input.as_bytes(), &mut out, |host, _, _| {
            Err(host.get("k").unwrap_err().to_string())
        })
        .unwrap();
        let written = lines(out);
        assert_eq!(written.len(), 2);
        assert!(
            written[1]["error"]
                .as_str()
                .unwrap()
                .starts_with("UNAVAILABLE: "),
            "{}",
            written[1]
        );

        // A result for another call, and one that is not JSON.
        for result in [r#"{"callId":"c9","ok":true,"result":{}}"#, "garbage"] {
            let mut input = result.as_bytes();
            let mut out = Vec::new();
            let err = Host::new(&mut input, &mut out)
                .put("k", &json!(1))
                .unwrap_err();
            assert_eq!(err.code, "INTERNAL", "{result}: {err}");
        }
    }

    #[test]
    fn the_sdk_refuses_more_host_calls_than_the_shim_allows() {
        let results: String = (1..=MAX_HOST_CALLS)
            .map(|n| format!("{{\"callId\":\"c{n}\",\"ok\":true,\"result\":{{}}}}\n"))
            .collect();
        let mut input = results.as_bytes();
        let mut out = Vec::new();
        let mut host = Host::new(&mut input, &mut out);
        for _ in 0..MAX_HOST_CALLS {
            host.emit("e", &Value::Null).unwrap();
        }
        let err = host.emit("e", &Value::Null).unwrap_err();
        assert_eq!(err.code, "RESOURCE_EXHAUSTED");
        assert_eq!(lines(out).len(), MAX_HOST_CALLS as usize);
    }
}
