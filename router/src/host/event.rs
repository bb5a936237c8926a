//! The rules of the `Emit` call: what an event type may look like and what a payload may be.
//! Where events go once checked is the adapter's concern.

use super::storage::compact_json;

/// Longest event type, in characters.
pub const MAX_EVENT_TYPE_CHARS: usize = 128;

/// Largest payload, in bytes as sent, unless configured otherwise: the size of a storage value.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 100 * 1024;

/// An event that passed the checks, ready to be stamped with the plugin and invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub event_type: String,
    /// The payload as sent without insignificant whitespace (see `storage` for why not reparsed).
    pub payload_json: String,
}

/// Why an event was refused. Nothing was emitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("the event type is empty; it is 1 to {max_chars} characters, e.g. \"order.created\"")]
    EmptyType { max_chars: usize },
    #[error(
        "the event type is {chars} characters long; event types are at most {max_chars} characters"
    )]
    TypeTooLong { chars: usize, max_chars: usize },
    #[error(
        "the event type has a character other than ASCII letters, digits and . _ - / at character {position}"
    )]
    TypeCharacter { position: usize },
    #[error(
        "the event payload is {bytes} bytes as sent; payloads are at most {max_bytes} bytes: send a smaller payload"
    )]
    PayloadTooLarge { bytes: usize, max_bytes: usize },
    #[error("the event payload is not one JSON document: {reason}")]
    PayloadNotJson { reason: String },
}

/// Checks an event: its type (1 to [`MAX_EVENT_TYPE_CHARS`] of ASCII letters, digits, `.`, `_`,
/// `-`, `/`: safe as a metric label or a routing key), then its payload's size as sent, then that
/// the payload is one JSON document.
pub fn check_event(
    event_type: &str,
    payload_json: &str,
    max_payload_bytes: usize,
) -> Result<Event, EventError> {
    if event_type.is_empty() {
        return Err(EventError::EmptyType {
            max_chars: MAX_EVENT_TYPE_CHARS,
        });
    }
    if let Some(i) = event_type
        .chars()
        .position(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(EventError::TypeCharacter { position: i + 1 });
    }
    // Only ASCII is left, so bytes are characters.
    if event_type.len() > MAX_EVENT_TYPE_CHARS {
        return Err(EventError::TypeTooLong {
            chars: event_type.len(),
            max_chars: MAX_EVENT_TYPE_CHARS,
        });
    }
    if payload_json.len() > max_payload_bytes {
        return Err(EventError::PayloadTooLarge {
            bytes: payload_json.len(),
            max_bytes: max_payload_bytes,
        });
    }
    let payload_json = compact_json(payload_json).map_err(|e| EventError::PayloadNotJson {
        reason: e.to_string(),
    })?;
    Ok(Event {
        event_type: event_type.to_string(),
        payload_json,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_event_keeps_its_type_and_its_payload_as_sent() {
        let e = check_event("orders/order.created_v-2", "{ \"total\": 1.10 }", 100).unwrap();
        assert_eq!(e.event_type, "orders/order.created_v-2");
        assert_eq!(e.payload_json, r#"{"total":1.10}"#);
    }

    #[test]
    fn bad_event_types_are_refused() {
        assert_eq!(
            check_event("", "1", 100),
            Err(EventError::EmptyType { max_chars: 128 })
        );
        assert_eq!(
            check_event(&"a".repeat(129), "1", 100),
            Err(EventError::TypeTooLong {
                chars: 129,
                max_chars: 128
            })
        );
        assert!(check_event(&"a".repeat(128), "1", 100).is_ok());
        for (bad, position) in [("a b", 2), ("ordér", 4), ("a\n", 2), ("x:y", 2)] {
            assert_eq!(
                check_event(bad, "1", 100),
                Err(EventError::TypeCharacter { position }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn payloads_must_be_json_within_the_size_limit() {
        let err = check_event("t", "[1,2,3]", 6).unwrap_err();
        assert_eq!(
            err,
            EventError::PayloadTooLarge {
                bytes: 7,
                max_bytes: 6
            }
        );
        assert!(err.to_string().contains("7 bytes"), "{err}");
        // Also what only a full parse refuses: an event no subscriber could read.
        for bad in ["", "{", "1 2", r#""\ud800""#, "1e400"] {
            assert!(
                matches!(
                    check_event("t", bad, 100),
                    Err(EventError::PayloadNotJson { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
