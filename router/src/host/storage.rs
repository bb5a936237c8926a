//! One plugin's key-value storage, in memory: the rules of `Get`, `Put`, `Delete` and `List` of
//! `airlock.host.v1.Host` and the accounting of its limits. Persisting a [`Store`] (as one
//! Kubernetes object per plugin) is the adapter's job; this module only defines its JSON form.
//!
//! Values are kept as the plugin sent them, apart from insignificant whitespace, which `put`
//! removes: the text is never parsed into numbers and printed again, so `1.10` stays `1.10` and an
//! integer beyond 64 bits is not rounded. Removing whitespace makes every stored value one line
//! (the shim ↔ plugin protocol is line based) and keeps pretty-printing from costing quota.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;

/// How much storage one plugin may use. [`Limits::default`] gives the defaults of the design.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in characters (Unicode scalar values), so the limit does not depend on the
    /// script a key is written in.
    pub max_key_chars: usize,
    /// Largest value, in bytes of JSON text as sent (before whitespace is removed), so a plugin
    /// can check the limit on its side without knowing how the host stores values.
    pub max_value_bytes: usize,
    /// Most bytes of storage: the bytes of every key plus the bytes of every stored value.
    pub max_total_bytes: usize,
    /// Most keys.
    pub max_keys: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_chars: 256,
            max_value_bytes: 100 * 1024,
            max_total_bytes: 1024 * 1024,
            max_keys: 1024,
        }
    }
}

/// Keys returned by [`Store::list`] when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Most keys [`Store::list`] returns at once; larger requests are cut to this.
pub const MAX_PAGE_SIZE: usize = 1000;

/// What a store holds, as counted against [`Limits`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes of every key plus bytes of every stored value.
    pub bytes: usize,
    pub keys: usize,
}

/// One page of [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Keys in ascending byte order.
    pub keys: Vec<String>,
    /// Where the next page starts (pass it as `after`); `None` on the last page. It is the last
    /// key of this page, so a page stays correct when keys are added or removed in between.
    pub next: Option<String>,
}

/// Why a `put` was refused. Nothing was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    #[error("the key is empty; keys are 1 to {max_chars} characters")]
    EmptyKey { max_chars: usize },
    #[error(
        "the key is {chars} characters long; keys are at most {max_chars} characters: use a shorter key"
    )]
    KeyTooLong { chars: usize, max_chars: usize },
    // The key itself is not repeated: it holds a control character that would garble a log line.
    #[error(
        "the key has a control character at character {position}; keys are text without control characters"
    )]
    KeyControlCharacter { position: usize },
    #[error(
        "the value is {bytes} bytes as sent; values are at most {max_bytes} bytes: store a smaller value or split it over several keys"
    )]
    ValueTooLarge { bytes: usize, max_bytes: usize },
    // serde_json's syntax errors name what was expected and where, never the input itself.
    #[error("the value is not one JSON document: {reason}")]
    NotJson { reason: String },
    #[error(
        "storage is full: the plugin uses {used_bytes} of {max_bytes} bytes (keys and values counted) and this put would bring it to {would_use_bytes}: delete keys or store smaller values"
    )]
    StorageFull {
        used_bytes: usize,
        would_use_bytes: usize,
        max_bytes: usize,
    },
    #[error(
        "storage is full: the plugin has {keys} of {max_keys} keys: delete keys before adding new ones (replacing a stored key is still possible)"
    )]
    TooManyKeys { keys: usize, max_keys: usize },
}

/// A plugin's storage: key → JSON value (compact text).
///
/// Serialises as one plain JSON object with the values embedded as JSON, e.g.
/// `{"orders/42":{"total":1.10},"seen":true}`, so the persisted object is readable and values cost
/// no escaping. Deserialising accepts the same form (and removes whitespace from values, so usage
/// is counted the same way as after `put`). It does not check limits: a store persisted under
/// larger limits loads as it is, and only further growth is refused.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(transparent)]
pub struct Store {
    // RawValue: the text is valid JSON by construction, and is serialised as is.
    values: BTreeMap<String, Box<RawValue>>,
}

impl Store {
    pub fn new() -> Self {
        Self::default()
    }

    /// The value stored under `key` (compact JSON text). A key that could never be stored (empty,
    /// too long) is simply not found: reading cannot break a limit.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(|v| v.get())
    }

    /// Stores `value_json` under `key`, replacing what the key held (whose bytes count as freed).
    ///
    /// Checks, in this order: the key (1 to `max_key_chars` characters, no control characters),
    /// the value's size as sent, that it is one JSON document, then the store's bytes and keys.
    pub fn put(
        &mut self,
        key: &str,
        value_json: &str,
        limits: &Limits,
    ) -> Result<(), StorageError> {
        check_key(key, limits)?;
        if value_json.len() > limits.max_value_bytes {
            return Err(StorageError::ValueTooLarge {
                bytes: value_json.len(),
                max_bytes: limits.max_value_bytes,
            });
        }
        let compact = compact_json(value_json).map_err(|e| StorageError::NotJson {
            reason: e.to_string(),
        })?;

        let usage = self.usage();
        let old = self.values.get(key);
        if old.is_none() && usage.keys >= limits.max_keys {
            return Err(StorageError::TooManyKeys {
                keys: usage.keys,
                max_keys: limits.max_keys,
            });
        }
        // Replacing a key frees its old entry first, so a value can always be swapped for one
        // of the same size.
        let freed = old.map_or(0, |old| key.len() + old.get().len());
        let would_use_bytes = usage.bytes - freed + key.len() + compact.len();
        if would_use_bytes > limits.max_total_bytes {
            return Err(StorageError::StorageFull {
                used_bytes: usage.bytes,
                would_use_bytes,
                max_bytes: limits.max_total_bytes,
            });
        }
        // Cannot fail (whitespace removed from valid JSON leaves valid JSON); mapped, not
        // unwrapped, because a panic here would take the router down.
        let value = RawValue::from_string(compact).map_err(|e| StorageError::NotJson {
            reason: e.to_string(),
        })?;
        self.values.insert(key.to_string(), value);
        Ok(())
    }

    /// Removes `key`; whether it was stored.
    pub fn delete(&mut self, key: &str) -> bool {
        self.values.remove(key).is_some()
    }

    /// Keys that start with `prefix`, in ascending byte order, after the key `after` (exclusive;
    /// `None` = from the start), at most `page_size` of them (0 = [`DEFAULT_PAGE_SIZE`], capped at
    /// [`MAX_PAGE_SIZE`]).
    pub fn list(&self, prefix: &str, after: Option<&str>, page_size: usize) -> Page {
        let page_size = match page_size {
            0 => DEFAULT_PAGE_SIZE,
            n => n.min(MAX_PAGE_SIZE),
        };
        // Keys with a prefix are one contiguous run in sorted order, starting at the prefix
        // itself; `after` can only move the start further into (or past) that run.
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        let mut keys: Vec<String> = self
            .values
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(k, _)| k)
            .take_while(|k| k.starts_with(prefix))
            .take(page_size + 1)
            .cloned()
            .collect();
        let next = if keys.len() > page_size {
            keys.truncate(page_size);
            keys.last().cloned()
        } else {
            None
        };
        Page { keys, next }
    }

    /// Bytes and keys stored, as counted against [`Limits`].
    pub fn usage(&self) -> Usage {
        Usage {
            bytes: self
                .values
                .iter()
                .map(|(k, v)| k.len() + v.get().len())
                .sum(),
            keys: self.values.len(),
        }
    }
}

impl Store {
    /// Every entry as text (key → compact JSON), the form `PluginStorage.spec.entries` persists.
    pub fn to_entries(&self) -> BTreeMap<String, String> {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), v.get().to_string()))
            .collect()
    }

    /// A store from persisted entries. An entry that is not JSON (edited by hand) is an error
    /// naming its key: dropping it would lose data at the next write.
    pub fn from_entries(entries: &BTreeMap<String, String>) -> Result<Self, String> {
        let values = entries
            .iter()
            .map(|(k, v)| {
                let compact =
                    compact_json(v).map_err(|e| format!("entry {k:?} is not JSON ({e})"))?;
                RawValue::from_string(compact)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| format!("entry {k:?} is not JSON ({e})"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { values })
    }
}

impl<'de> Deserialize<'de> for Store {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = BTreeMap::<String, Box<RawValue>>::deserialize(deserializer)?;
        let values = raw
            .into_iter()
            .map(|(k, v)| {
                let compact = compact_valid_json(v.get());
                RawValue::from_string(compact)
                    .map(|v| (k, v))
                    .map_err(serde::de::Error::custom)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { values })
    }
}

fn check_key(key: &str, limits: &Limits) -> Result<(), StorageError> {
    if key.is_empty() {
        return Err(StorageError::EmptyKey {
            max_chars: limits.max_key_chars,
        });
    }
    let chars = key.chars().count();
    if chars > limits.max_key_chars {
        return Err(StorageError::KeyTooLong {
            chars,
            max_chars: limits.max_key_chars,
        });
    }
    if let Some(i) = key.chars().position(char::is_control) {
        return Err(StorageError::KeyControlCharacter { position: i + 1 });
    }
    Ok(())
}

/// `text` without insignificant whitespace, if it is one JSON document.
pub(super) fn compact_json(text: &str) -> Result<String, serde_json::Error> {
    // A full parse, as every reader does (the SDKs parse call results and event payloads into
    // values): serde's IgnoredAny takes lone surrogate escapes ("\ud800") and numbers out of
    // range (1e400) that those readers refuse, so one plugin could store or emit a document
    // that breaks every plugin reading it (found by fuzz/host_api_args). The text is still kept
    // as sent (without insignificant whitespace), not printed back from the tree.
    serde_json::from_str::<serde_json::Value>(text)?;
    Ok(compact_valid_json(text))
}

/// Removes the whitespace between the tokens of `json`, which must be valid JSON. Only space, tab,
/// CR and LF are JSON whitespace, and outside strings nothing else can be removed; inside strings
/// (tracked through backslash escapes) every character is kept.
fn compact_valid_json(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(store: &mut Store, key: &str, value: &str) -> Result<(), StorageError> {
        store.put(key, value, &Limits::default())
    }

    /// The default limits but at most `bytes` bytes of storage.
    fn quota(bytes: usize) -> Limits {
        Limits {
            max_total_bytes: bytes,
            ..Limits::default()
        }
    }

    /// The default limits but at most `keys` keys.
    fn max_keys(keys: usize) -> Limits {
        Limits {
            max_keys: keys,
            ..Limits::default()
        }
    }

    #[test]
    fn the_defaults_are_the_documented_limits() {
        let l = Limits::default();
        assert_eq!(
            (
                l.max_key_chars,
                l.max_value_bytes,
                l.max_total_bytes,
                l.max_keys
            ),
            (256, 102_400, 1_048_576, 1024)
        );
    }

    #[test]
    fn a_value_is_kept_as_sent_without_insignificant_whitespace() {
        let mut s = Store::new();
        let sent = "{\n  \"n\": 1.10,\n  \"big\": 123456789012345678901234567890,\n  \"s\": \"a  b\\\" \\\\\" , \"t\" : [ 1 , 2 ]\n}";
        put(&mut s, "k", sent).unwrap();
        assert_eq!(
            s.get("k"),
            Some(r#"{"n":1.10,"big":123456789012345678901234567890,"s":"a  b\" \\","t":[1,2]}"#)
        );
        put(&mut s, "null", "null").unwrap();
        assert_eq!(s.get("null"), Some("null"));
        assert_eq!(s.get("missing"), None);
    }

    #[test]
    fn a_value_no_reader_could_parse_is_refused() {
        let mut s = Store::new();
        for unreadable in [r#""\ud800""#, r#"{"a": "\udfff x"}"#, "1e400", "[-1e999]"] {
            assert!(
                matches!(
                    s.put("k", unreadable, &Limits::default()),
                    Err(StorageError::NotJson { .. })
                ),
                "{unreadable} was stored"
            );
            assert!(serde_json::from_str::<serde_json::Value>(unreadable).is_err());
        }
        // A surrogate pair is one character, and a big integer is a number readers take.
        s.put(
            "k",
            r#"["\ud83d\ude00", 123456789012345678901234567890]"#,
            &Limits::default(),
        )
        .unwrap();
    }

    #[test]
    fn keys_are_1_to_256_characters_without_control_characters() {
        let mut s = Store::new();
        // 256 characters of 4 bytes each: the limit counts characters, not bytes.
        let wide = "🔑".repeat(256);
        put(&mut s, &wide, "1").unwrap();
        put(&mut s, "orders/42 (ünïcode, spaces)", "1").unwrap();

        let err = put(&mut s, &"k".repeat(257), "1").unwrap_err();
        assert_eq!(
            err,
            StorageError::KeyTooLong {
                chars: 257,
                max_chars: 256
            }
        );
        assert!(err.to_string().contains("257 characters"), "{err}");
        assert!(err.to_string().contains("at most 256"), "{err}");

        let err = put(&mut s, "", "1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the key is empty; keys are 1 to 256 characters"
        );
        for bad in ["a\nb", "a\u{0}", "a\u{7f}", "a\u{85}"] {
            let err = put(&mut s, bad, "1").unwrap_err();
            assert_eq!(
                err,
                StorageError::KeyControlCharacter { position: 2 },
                "{bad:?}"
            );
        }
        assert_eq!(s.usage().keys, 2);
    }

    #[test]
    fn values_over_the_limit_as_sent_are_refused_even_when_they_would_compact_below_it() {
        let mut s = Store::new();
        let exact = format!("\"{}\"", "x".repeat(102_400 - 2));
        put(&mut s, "exact", &exact).unwrap();

        // 102401 bytes as sent, but all of it padding around a small number.
        let padded = format!("{}1", " ".repeat(102_400));
        let err = put(&mut s, "padded", &padded).unwrap_err();
        assert_eq!(
            err,
            StorageError::ValueTooLarge {
                bytes: 102_401,
                max_bytes: 102_400
            }
        );
        assert!(err.to_string().contains("store a smaller value"), "{err}");
        assert_eq!(s.get("padded"), None);
    }

    #[test]
    fn a_value_must_be_one_json_document() {
        let mut s = Store::new();
        for bad in [
            "",
            "   ",
            "{",
            "1 2",
            "{\"a\":1}x",
            "'single'",
            "NaN",
            "{\"a\" 1}",
        ] {
            let err = put(&mut s, "k", bad).unwrap_err();
            assert!(
                matches!(err, StorageError::NotJson { .. }),
                "{bad:?}: {err:?}"
            );
            assert!(
                err.to_string()
                    .starts_with("the value is not one JSON document")
            );
        }
        assert_eq!(s.usage(), Usage::default());
    }

    #[test]
    fn usage_counts_key_and_stored_value_bytes() {
        let mut s = Store::new();
        put(&mut s, "ab", "{ \"x\" : 1 }").unwrap(); // 2 + 7 ({"x":1})
        put(&mut s, "ü", "true").unwrap(); // 2 + 4
        assert_eq!(s.usage(), Usage { bytes: 15, keys: 2 });
    }

    #[test]
    fn a_put_over_the_byte_quota_is_refused_with_the_usage() {
        let limits = quota(100);
        let mut s = Store::new();
        s.put("a", &format!("\"{}\"", "x".repeat(88)), &limits)
            .unwrap(); // 1 + 90 bytes
        s.put("b", "123456", &limits).unwrap(); // 1 + 6: 98 bytes
        let err = s.put("c", "12", &limits).unwrap_err(); // 1 + 2: 101 bytes
        assert_eq!(
            err,
            StorageError::StorageFull {
                used_bytes: 98,
                would_use_bytes: 101,
                max_bytes: 100,
            }
        );
        let text = err.to_string();
        assert!(text.contains("uses 98 of 100 bytes"), "{text}");
        assert!(text.contains("would bring it to 101"), "{text}");
        assert!(
            text.contains("delete keys or store smaller values"),
            "{text}"
        );
        assert_eq!(s.get("c"), None);
        // Exactly at the limit is allowed.
        s.put("c", "1", &limits).unwrap();
        assert_eq!(
            s.usage(),
            Usage {
                bytes: 100,
                keys: 3
            }
        );
    }

    #[test]
    fn replacing_a_key_counts_its_old_value_as_freed() {
        let limits = quota(100);
        let mut s = Store::new();
        let big = format!("\"{}\"", "x".repeat(97)); // 1 + 99 bytes: the store is full
        s.put("a", &big, &limits).unwrap();
        // Same size again, then smaller: both fit only because the old value is freed.
        s.put("a", &big, &limits).unwrap();
        s.put("a", "1", &limits).unwrap();
        assert_eq!(s.usage(), Usage { bytes: 2, keys: 1 });
        assert_eq!(s.get("a"), Some("1"));
    }

    #[test]
    fn the_key_limit_refuses_new_keys_but_not_replacements() {
        let limits = max_keys(2);
        let mut s = Store::new();
        s.put("a", "1", &limits).unwrap();
        s.put("b", "1", &limits).unwrap();
        let err = s.put("c", "1", &limits).unwrap_err();
        assert_eq!(
            err,
            StorageError::TooManyKeys {
                keys: 2,
                max_keys: 2
            }
        );
        assert!(err.to_string().contains("has 2 of 2 keys"), "{err}");
        s.put("b", "2", &limits).unwrap();
        assert!(s.delete("a"));
        s.put("c", "1", &limits).unwrap();
        assert_eq!(s.list("", None, 0).keys, ["b", "c"]);
    }

    #[test]
    fn delete_says_whether_the_key_existed_and_frees_its_bytes() {
        let mut s = Store::new();
        put(&mut s, "a", "[1,2,3]").unwrap();
        assert!(s.delete("a"));
        assert!(!s.delete("a"));
        assert!(!s.delete(""));
        assert_eq!(s.get("a"), None);
        assert_eq!(s.usage(), Usage::default());
    }

    #[test]
    fn list_pages_through_the_keys_with_a_prefix_in_order() {
        let mut s = Store::new();
        for k in ["a", "a/3", "a/1", "a/2", "a0", "b/1", "a/10", "Z"] {
            put(&mut s, k, "0").unwrap();
        }
        let first = s.list("a/", None, 2);
        assert_eq!(first.keys, ["a/1", "a/10"]);
        assert_eq!(first.next.as_deref(), Some("a/10"));
        // The run of keys with the prefix ends with this page, so it is the last one.
        let second = s.list("a/", first.next.as_deref(), 2);
        assert_eq!(
            second,
            Page {
                keys: vec!["a/2".into(), "a/3".into()],
                next: None
            }
        );
        assert_eq!(
            s.list("a/", None, 10),
            Page {
                keys: vec!["a/1".into(), "a/10".into(), "a/2".into(), "a/3".into()],
                next: None
            }
        );
        assert_eq!(
            s.list("", None, 0).keys,
            ["Z", "a", "a/1", "a/10", "a/2", "a/3", "a0", "b/1"]
        );
        assert!(s.list("c", None, 0).keys.is_empty());
        // A token before the prefix starts at the prefix, one past the run yields nothing.
        assert_eq!(s.list("b/", Some("a"), 0).keys, ["b/1"]);
        assert!(s.list("a/", Some("a/9"), 0).keys.is_empty());
    }

    #[test]
    fn a_key_added_between_pages_does_not_repeat_or_skip_keys() {
        let mut s = Store::new();
        for k in ["k1", "k3", "k5"] {
            put(&mut s, k, "0").unwrap();
        }
        let first = s.list("k", None, 2);
        assert_eq!(first.keys, ["k1", "k3"]);
        put(&mut s, "k2", "0").unwrap(); // before the token: not listed
        put(&mut s, "k4", "0").unwrap(); // after it: listed
        assert!(s.delete("k3")); // the token itself may go away
        assert_eq!(s.list("k", first.next.as_deref(), 2).keys, ["k4", "k5"]);
    }

    #[test]
    fn page_size_0_is_the_default_and_large_sizes_are_capped() {
        let mut s = Store::new();
        let limits = max_keys(2000);
        for i in 0..1500 {
            s.put(&format!("{i:04}"), "0", &limits).unwrap();
        }
        assert_eq!(s.list("", None, 0).keys.len(), DEFAULT_PAGE_SIZE);
        let capped = s.list("", None, 5000);
        assert_eq!(capped.keys.len(), MAX_PAGE_SIZE);
        assert_eq!(capped.next.as_deref(), Some("0999"));
    }

    #[test]
    fn a_store_serialises_as_a_plain_object_with_the_values_embedded() {
        let mut s = Store::new();
        put(&mut s, "orders/42", "{ \"total\": 1.10 }").unwrap();
        put(&mut s, "seen", "true").unwrap();
        put(&mut s, "text", "\"a \\\"quoted\\\" word\"").unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"orders/42":{"total":1.10},"seen":true,"text":"a \"quoted\" word"}"#
        );
        let back: Store = serde_json::from_str(&json).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
        assert_eq!(back.usage(), s.usage());
    }

    #[test]
    fn a_loaded_store_is_compacted_and_not_checked_against_limits() {
        // As someone might have written it by hand: pretty-printed, with a key over the limit.
        let long_key = "k".repeat(300);
        let text = format!("{{\n  \"a\": {{ \"x\" : [ 1, 2 ] }},\n  \"{long_key}\": 1\n}}");
        let s: Store = serde_json::from_str(&text).unwrap();
        assert_eq!(s.get("a"), Some(r#"{"x":[1,2]}"#));
        assert_eq!(s.get(&long_key), Some("1"));
        assert_eq!(
            s.usage(),
            Usage {
                bytes: 1 + 11 + 300 + 1,
                keys: 2
            }
        );
        assert!(serde_json::from_str::<Store>("[1]").is_err());
    }

    #[test]
    fn entries_round_trip_and_a_hand_edited_non_json_entry_is_named() {
        let mut store = Store::new();
        store
            .put("greeting", "\"hello\"", &Limits::default())
            .unwrap();
        store
            .put("n", "{ \"v\": 1.10 }", &Limits::default())
            .unwrap();
        let entries = store.to_entries();
        assert_eq!(entries["n"], "{\"v\":1.10}");
        let back = Store::from_entries(&entries).unwrap();
        assert_eq!(back.get("greeting"), Some("\"hello\""));
        assert_eq!(back.usage(), store.usage());
        let mut broken = entries;
        broken.insert("oops".into(), "not json".into());
        let err = Store::from_entries(&broken).unwrap_err();
        assert!(err.contains("\"oops\""), "{err}");
    }
}
