//! The router's host API argument handling (`airlock_router::host`): call names, log levels and
//! messages, `Emit`'s event type and payload (`event::check_event`), and the storage a plugin
//! drives with `storage.put/get/delete/list` (`storage::Store`), including the persisted form
//! (`to_entries`/`from_entries`, serde).
//!
//! Input: one operation per line: `p<key>\t<json>` put, `g<key>` get, `d<key>` delete,
//! `l<prefix>\t<after>\t<page>` list, `e<type>\t<json>` emit, `L<level>\t<message>` log,
//! `c<name>` call name. Small limits, so every limit is reached.
#![no_main]

use std::collections::BTreeMap;

use airlock_router::host::HostCall;
use airlock_router::host::event::{MAX_EVENT_TYPE_CHARS, check_event};
use airlock_router::host::log::{Level, MAX_MESSAGE_BYTES, cut_message};
use airlock_router::host::storage::{DEFAULT_PAGE_SIZE, Limits, MAX_PAGE_SIZE, Store};
use libfuzzer_sys::fuzz_target;

const LIMITS: Limits = Limits {
    max_key_chars: 16,
    max_value_bytes: 256,
    max_total_bytes: 1024,
    max_keys: 8,
};

/// What every reader (the SDKs) can parse: a full parse, not just the syntax (lone surrogate
/// escapes and out-of-range numbers pass a syntax check; this target found the router storing
/// and emitting them).
fn is_json(text: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut store = Store::new();
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    for line in text.split('\n').take(64) {
        let mut chars = line.chars();
        let Some(op) = chars.next() else { continue };
        let arg = chars.as_str();
        let mut fields = arg.splitn(3, '\t');
        let (a, b, c) = (
            fields.next().unwrap_or(""),
            fields.next().unwrap_or(""),
            fields.next().unwrap_or(""),
        );
        match op {
            'p' => match store.put(a, b, &LIMITS) {
                Ok(()) => {
                    let stored = store.get(a).expect("a stored key is found").to_string();
                    assert!(is_json(&stored), "stored value is not JSON: {stored:?}");
                    assert!(stored.len() <= b.len());
                    model.insert(a.to_string(), stored);
                }
                Err(_) => {}
            },
            'g' => assert_eq!(store.get(a), model.get(a).map(String::as_str)),
            'd' => assert_eq!(store.delete(a), model.remove(a).is_some()),
            'l' => {
                let page_size = c.parse::<usize>().unwrap_or(0);
                let after = (!b.is_empty()).then_some(b);
                let page = store.list(a, after, page_size);
                let cap = if page_size == 0 {
                    DEFAULT_PAGE_SIZE
                } else {
                    page_size.min(MAX_PAGE_SIZE)
                };
                assert!(page.keys.len() <= cap);
                assert!(page.keys.windows(2).all(|w| w[0] < w[1]), "list is sorted");
                for k in &page.keys {
                    assert!(k.starts_with(a));
                    assert!(model.contains_key(k));
                    if let Some(after) = after {
                        assert!(k.as_str() > after);
                    }
                }
                if let Some(next) = &page.next {
                    assert_eq!(Some(next), page.keys.last());
                }
            }
            'e' => {
                if let Ok(event) = check_event(a, b, 512) {
                    assert!(!event.event_type.is_empty());
                    assert!(event.event_type.len() <= MAX_EVENT_TYPE_CHARS);
                    assert!(is_json(&event.payload_json));
                    assert!(event.payload_json.len() <= b.len());
                }
            }
            'L' => {
                if let Ok(level) = Level::parse(a) {
                    assert_eq!(Level::parse(level.as_str()), Ok(level));
                }
                let cut = cut_message(b);
                assert!(cut.len() <= MAX_MESSAGE_BYTES);
                assert!(b.starts_with(cut));
            }
            _ => {
                if let Some(call) = HostCall::from_name(arg) {
                    assert_eq!(call.as_str(), arg);
                }
            }
        }
        let usage = store.usage();
        assert!(usage.keys <= LIMITS.max_keys, "{usage:?}");
        assert!(usage.bytes <= LIMITS.max_total_bytes, "{usage:?}");
    }
    // The persisted forms give the same store back.
    let entries = store.to_entries();
    assert_eq!(entries, model);
    let reloaded = Store::from_entries(&entries).expect("persisted entries load");
    assert_eq!(reloaded.to_entries(), entries);
    let json = serde_json::to_string(&store).expect("store serialises");
    let back: Store = serde_json::from_str(&json).expect("serialised store loads");
    assert_eq!(back.to_entries(), entries);
});
