//! What the router refuses before it calls any plugin (pure): a JSON document too large or nested
//! too deeply, and a broadcast that would fan out too far.
//!
//! Payload limits are checked at the door on every request's `payload_json` (Invoke, Broadcast,
//! Transform) and on every pipeline step's `output_json` (the next step's input: a hostile plugin
//! must not be able to crash the plugin after it).
//!
//! Why the router checks the depth itself: it used to validate a payload with
//! `serde_json::from_str::<IgnoredAny>`, which skips values iteratively and so has *no* recursion
//! limit; a 100,000-deep array went through and the plugin's own parser (serde_json's `Value`,
//! limit 128; Python's recursion limit, ...) failed on it: a caller-caused failure counted
//! against the plugin. The depth is counted by a byte scan, without recursion, so no document can
//! exhaust the router's own stack either.

use airlock_core::Hook;
use airlock_sdk::protocol::MAX_LINE_BYTES;

/// Room left in a protocol line for the request envelope around the payload (`id` of up to 256
/// bytes, which JSON escaping can grow six-fold, the hook, `deadlineMs`, `traceparent`).
pub const ENVELOPE_BYTES: usize = 4096;

/// Largest payload by default: the plugin protocol's line limit (1 MiB, `MAX_LINE_BYTES`) less
/// the envelope, so every request line the shim writes stays within the 1 MiB `PROTOCOL.md`
/// promises plugins. A plugin's answer is held to the same 1 MiB, so any output a plugin can give
/// (but the last few KiB) fits as the next pipeline step's input.
pub const DEFAULT_MAX_BYTES: usize = MAX_LINE_BYTES - ENVELOPE_BYTES;

/// Deepest nesting by default: well under what plugin runtimes parse (serde_json's `Value` in
/// the Rust SDK stops at 128, Python at about 1,000, Go at 10,000), with room for a transform
/// that wraps its input in a level or two.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Deepest nesting that may be configured (the shim refuses anything deeper itself).
pub use airlock_core::json_depth::MAX_DEPTH;

/// The limits, from the router's flags (`--max-payload-bytes`, `--max-payload-depth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    pub max_bytes: usize,
    pub max_depth: usize,
}

impl Default for PayloadLimits {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// Which document broke a limit: the field of the message it came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// A request's `payload_json`.
    PayloadJson,
    /// A pipeline step's `output_json`, on its way to the next step.
    OutputJson,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PayloadJson => "payload_json",
            Self::OutputJson => "output_json",
        }
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a document is not passed to a plugin. The messages name the field, the limit and the fix;
/// never the document's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error(
        "{field} is {bytes} bytes; the router passes at most {limit} bytes to a plugin \
         (--max-payload-bytes): send a smaller document, or pass bulk data by reference (a URL \
         or storage key) instead of inline"
    )]
    TooLarge {
        field: Field,
        bytes: usize,
        limit: usize,
    },
    #[error(
        "{field} nests arrays and objects more than {limit} levels deep; the router passes at \
         most {limit} levels to a plugin (--max-payload-depth): flatten the document"
    )]
    TooDeep { field: Field, limit: usize },
    // The position only: the payload never goes into errors or logs.
    #[error("{field} is not a JSON document (line {line}, column {column})")]
    NotJson {
        field: Field,
        line: usize,
        column: usize,
    },
}

impl PayloadError {
    /// The metric label of this refusal (`reason` of `airlock_router_refused_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge {
                field: Field::PayloadJson,
                ..
            } => "payload_too_large",
            Self::TooDeep {
                field: Field::PayloadJson,
                ..
            } => "payload_too_deep",
            Self::NotJson {
                field: Field::PayloadJson,
                ..
            } => "payload_not_json",
            Self::TooLarge {
                field: Field::OutputJson,
                ..
            } => "output_too_large",
            Self::TooDeep {
                field: Field::OutputJson,
                ..
            } => "output_too_deep",
            Self::NotJson {
                field: Field::OutputJson,
                ..
            } => "output_not_json",
        }
    }
}

/// Most plugins one broadcast reaches, by default.
pub const DEFAULT_MAX_SUBSCRIBERS: usize = 64;

/// Most bytes one broadcast sends by default (payload bytes × subscribers): 16 MiB. Each
/// subscriber's call holds its own copy of the payload at the gRPC edge (the request message,
/// then its encoded frame, until sent: the copies are per HTTP/2 stream and cannot be shared),
/// so one broadcast holds up to about twice this: a quarter of the chart's 128 Mi router. Small
/// events (a few KiB) still reach all [`DEFAULT_MAX_SUBSCRIBERS`]; a 1 MiB payload reaches 16.
pub const DEFAULT_MAX_BROADCAST_BYTES: usize = 16 * 1024 * 1024;

/// How far one broadcast may fan out, from the router's flags (`--max-broadcast-subscribers`,
/// `--max-broadcast-bytes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastLimits {
    pub max_subscribers: usize,
    /// Payload bytes × subscribers.
    pub max_bytes: usize,
}

impl Default for BroadcastLimits {
    fn default() -> Self {
        Self {
            max_subscribers: DEFAULT_MAX_SUBSCRIBERS,
            max_bytes: DEFAULT_MAX_BROADCAST_BYTES,
        }
    }
}

/// Why a broadcast was refused as a whole (no plugin called). FAILED_PRECONDITION, not
/// RESOURCE_EXHAUSTED: the same request fails the same way until the caller narrows it (a smaller
/// payload) or the admin raises the limit, whereas RESOURCE_EXHAUSTED from the
/// router means "busy, retry later" (the per-plugin concurrency limit) and clients retry it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FanOutError {
    #[error(
        "{subscribers} plugins you may call subscribe to {} in namespace {namespace}; a broadcast \
         reaches at most {limit} (--max-broadcast-subscribers): ask the admin to raise the limit",
        .hook.as_str()
    )]
    TooManySubscribers {
        hook: Hook,
        namespace: String,
        subscribers: usize,
        limit: usize,
    },
    #[error(
        "payload_json of {payload_bytes} bytes to {subscribers} subscribers of {} in namespace \
         {namespace} makes {} bytes to send; a broadcast sends at most {limit} \
         (--max-broadcast-bytes, payload bytes times subscribers): send a smaller payload",
        .hook.as_str(), .payload_bytes.saturating_mul(*.subscribers)
    )]
    TooManyBytes {
        hook: Hook,
        namespace: String,
        payload_bytes: usize,
        subscribers: usize,
        limit: usize,
    },
}

impl FanOutError {
    /// The metric label of this refusal (`reason` of `airlock_router_refused_total`).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooManySubscribers { .. } => "too_many_subscribers",
            Self::TooManyBytes { .. } => "broadcast_too_large",
        }
    }
}

/// Whether a broadcast of `payload_bytes` to `subscribers` plugins of `hook` in `namespace` stays
/// within `limits`.
pub fn check_fan_out(
    hook: Hook,
    namespace: &str,
    payload_bytes: usize,
    subscribers: usize,
    limits: &BroadcastLimits,
) -> Result<(), FanOutError> {
    let namespace = namespace.to_string();
    if subscribers > limits.max_subscribers {
        return Err(FanOutError::TooManySubscribers {
            hook,
            namespace,
            subscribers,
            limit: limits.max_subscribers,
        });
    }
    if payload_bytes.saturating_mul(subscribers) > limits.max_bytes {
        return Err(FanOutError::TooManyBytes {
            hook,
            namespace,
            payload_bytes,
            subscribers,
            limit: limits.max_bytes,
        });
    }
    Ok(())
}

/// Whether `json`, the `field` of a message, may be passed to a plugin under `limits`: the size
/// first (cheap, and bounds the work after it), then the depth (a byte scan, so no document can
/// reach a parser's recursion limit), then a full parse as the plugin's SDK will parse it.
/// `IgnoredAny` is not enough for the last step: it skips `\u` escapes and number ranges
/// unchecked, so `["\ud800"]` or `[1e400]` passed here and broke the plugin's parser.
pub fn check(json: &str, field: Field, limits: &PayloadLimits) -> Result<(), PayloadError> {
    if json.len() > limits.max_bytes {
        return Err(PayloadError::TooLarge {
            field,
            bytes: json.len(),
            limit: limits.max_bytes,
        });
    }
    if airlock_core::json_depth::nests_deeper_than(json.as_bytes(), limits.max_depth) {
        return Err(PayloadError::TooDeep {
            field,
            limit: limits.max_depth,
        });
    }
    // Depth is at most MAX_DEPTH here, under serde_json's own recursion limit.
    serde_json::from_str::<serde_json::Value>(json).map_err(|e| PayloadError::NotJson {
        field,
        line: e.line(),
        column: e.column(),
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use airlock_core::json_depth::nests_deeper_than;

    const LIMITS: PayloadLimits = PayloadLimits {
        max_bytes: 1000,
        max_depth: 3,
    };

    fn nested(depth: usize) -> String {
        format!("{}{}", "[".repeat(depth), "]".repeat(depth))
    }

    /// A refusal's message names every one of `parts`.
    fn assert_says(refusal: &impl std::fmt::Display, parts: &[&str]) {
        let text = refusal.to_string();
        for part in parts {
            assert!(text.contains(part), "{part:?} in {text}");
        }
    }

    #[test]
    fn the_defaults_keep_a_request_line_within_the_protocols_line_limit() {
        assert_eq!(DEFAULT_MAX_BYTES, 1024 * 1024 - 4096);
        // The largest envelope: an id of 256 control characters, each escaped as \u00XX.
        let id = "\u{1}".repeat(256);
        let line = airlock_sdk::protocol::encode_traced_request(
            &id,
            "transform",
            &format!("\"{}\"", "x".repeat(DEFAULT_MAX_BYTES - 2)),
            u64::from(u32::MAX),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        assert!(line.len() - 1 <= MAX_LINE_BYTES, "{} bytes", line.len());
    }

    #[test]
    fn documents_a_plugins_parser_would_reject_are_refused_here() {
        let limits = PayloadLimits::default();
        // A lone surrogate escape and a number out of f64 range: valid to IgnoredAny, not to the
        // SDK's parser.
        for json in [r#"["\ud800"]"#, "[1e400]", r#"{"a": 1,}"#, "[1, 2"] {
            assert!(
                matches!(
                    check(json, Field::PayloadJson, &limits),
                    Err(PayloadError::NotJson { .. })
                ),
                "{json}"
            );
        }
        assert!(check(r#"["\ud83d\ude00", 1e300]"#, Field::PayloadJson, &limits).is_ok());
    }

    #[test]
    fn a_payload_at_the_deepest_configurable_depth_parses_inside_a_request_line() {
        // What a Rust-SDK plugin parses: the request line wraps the payload in an object.
        let payload = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
        let limits = PayloadLimits {
            max_depth: MAX_DEPTH,
            ..PayloadLimits::default()
        };
        assert!(check(&payload, Field::PayloadJson, &limits).is_ok());
        let line =
            airlock_sdk::protocol::encode_traced_request("id", "transform", &payload, 1000, None);
        assert!(
            serde_json::from_str::<serde_json::Value>(line.trim_end()).is_ok(),
            "the plugin could not parse a request at depth {MAX_DEPTH}"
        );
        let deeper = format!("[{payload}]");
        let line =
            airlock_sdk::protocol::encode_traced_request("id", "transform", &deeper, 1000, None);
        assert!(
            serde_json::from_str::<serde_json::Value>(line.trim_end()).is_err(),
            "MAX_DEPTH could be one higher"
        );
    }

    #[test]
    fn depth_is_counted_across_arrays_and_objects_and_not_inside_strings() {
        for (json, deepest) in [
            ("1", 0),
            ("[]", 1),
            (r#"{"a":[{"b":1}]}"#, 3),
            (r#"[[],[],[[]]]"#, 3),
            // Brackets in strings, an escaped quote and an escaped backslash before a quote.
            (r#"["[[[[", "\"[[[[", "\\", [[]]]"#, 3),
            (r#"{"{{{{":"}}}}","k":{"x":"é[ü{"}}"#, 2),
        ] {
            assert!(!nests_deeper_than(json.as_bytes(), deepest), "{json}");
            assert!(
                deepest == 0 || nests_deeper_than(json.as_bytes(), deepest - 1),
                "{json} is {deepest} deep"
            );
        }
    }

    #[test]
    fn a_document_within_the_limits_passes() {
        check(r#"{"a":[[1]]}"#, Field::PayloadJson, &LIMITS).expect("3 levels");
        check(&nested(3), Field::PayloadJson, &LIMITS).expect("3 levels");
    }

    #[test]
    fn too_deep_too_large_and_not_json_are_refused_naming_the_field_limit_and_fix() {
        let e = check(&nested(4), Field::PayloadJson, &LIMITS).expect_err("too deep");
        assert_eq!(
            e,
            PayloadError::TooDeep {
                field: Field::PayloadJson,
                limit: 3
            }
        );
        assert_says(
            &e,
            &["payload_json", "3 levels", "--max-payload-depth", "flatten"],
        );
        assert_eq!(e.reason(), "payload_too_deep");

        let big = format!("\"{}\"", "x".repeat(1000));
        let e = check(&big, Field::OutputJson, &LIMITS).expect_err("too large");
        assert_says(
            &e,
            &[
                "output_json is 1002 bytes",
                "at most 1000",
                "--max-payload-bytes",
            ],
        );
        assert_eq!(e.reason(), "output_too_large");

        let e = check(r#"{"secret": tru"#, Field::PayloadJson, &LIMITS).expect_err("not JSON");
        assert!(
            e.to_string()
                .starts_with("payload_json is not a JSON document (line 1"),
            "{e}"
        );
        assert!(!e.to_string().contains("secret"), "no payload bytes: {e}");
    }

    #[test]
    fn a_broadcast_is_bounded_by_its_subscribers_and_by_payload_times_subscribers() {
        let limits = BroadcastLimits {
            max_subscribers: 4,
            max_bytes: 1000,
        };
        check_fan_out(Hook::OnEvent, "shop", 250, 4, &limits).expect("4 × 250 = 1000");
        let e = check_fan_out(Hook::OnEvent, "shop", 10, 5, &limits).expect_err("5 > 4");
        assert_eq!(e.reason(), "too_many_subscribers");
        assert_says(
            &e,
            &[
                "5 plugins you may call subscribe to onEvent in namespace shop",
                "at most 4",
                "--max-broadcast-subscribers",
            ],
        );
        let e = check_fan_out(Hook::OnEvent, "shop", 251, 4, &limits).expect_err("1004 > 1000");
        assert_eq!(e.reason(), "broadcast_too_large");
        assert_says(
            &e,
            &[
                "payload_json of 251 bytes to 4 subscribers of onEvent in namespace shop",
                "1004 bytes",
                "at most 1000",
                "--max-broadcast-bytes",
            ],
        );
        // No overflow, whatever the numbers.
        check_fan_out(
            Hook::OnEvent,
            "shop",
            usize::MAX,
            2,
            &BroadcastLimits::default(),
        )
        .expect_err("refused");
    }

    /// The attack of the review: refused by the scan, without recursion (a recursive parser would
    /// need a stack frame per level).
    #[test]
    fn a_100000_deep_document_is_refused_without_recursing() {
        let e = check(
            &nested(100_000),
            Field::PayloadJson,
            &PayloadLimits::default(),
        )
        .expect_err("refused");
        assert_eq!(
            e,
            PayloadError::TooDeep {
                field: Field::PayloadJson,
                limit: 64
            }
        );
        // And an unterminated one: refused by the scan before any parser sees it.
        let e = check(
            &"[".repeat(100_000),
            Field::PayloadJson,
            &PayloadLimits::default(),
        )
        .expect_err("refused");
        assert!(matches!(e, PayloadError::TooDeep { .. }), "{e}");
    }
}
