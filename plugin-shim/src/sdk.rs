//! The Rust SDK for plugin authors: a plugin is a function from `(hook, payload)` to an output or
//! an error message.
//!
//! ```no_run
//! use serde_json::{Value, json};
//!
//! fn main() -> std::io::Result<()> {
//!     airlock_plugin_shim::sdk::run(|hook: &str, payload: Value| match hook {
//!         "transform" => Ok(json!({ "upper": payload["text"].as_str().unwrap_or("").to_uppercase() })),
//!         other => Err(format!("unsupported hook {other}")),
//!     })
//! }
//! ```
//!
//! Depend on the crate without default features to get only this module and [`crate::protocol`]
//! (`serde_json` is the only dependency then):
//! `airlock-plugin-shim = { version = "...", default-features = false }`.
//!
//! Log with `eprintln!` (stderr is the plugin's log); never print to stdout, which carries the
//! answers.

use std::io::{self, BufRead, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};

use serde_json::Value;

use crate::protocol;

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
pub fn serve<R, W, F>(input: R, mut output: W, mut handler: F) -> io::Result<()>
where
    R: BufRead,
    W: Write,
    F: FnMut(&str, Value) -> Result<Value, String>,
{
    for line in input.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        output.write_all(handle_line(&line, &mut handler).as_bytes())?;
        output.flush()?;
    }
    Ok(())
}

/// The answer line (newline included) to one request line.
pub fn handle_line<F>(line: &str, handler: &mut F) -> String
where
    F: FnMut(&str, Value) -> Result<Value, String>,
{
    match protocol::parse_request(line) {
        Ok(request) => {
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
        // Without an id the shim cannot match this answer; it will restart the plugin, which is
        // the right outcome for a request this SDK cannot read.
        Err(e) => protocol::encode_response("", &Err(format!("unreadable request: {e}"))),
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
}
