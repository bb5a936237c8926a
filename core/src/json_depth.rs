//! How deep a JSON document nests, found without parsing it: the router refuses payloads nested
//! deeper than its limit before any plugin sees them, and the shim refuses anything deeper than
//! [`MAX_DEPTH`] itself (defence in depth: a plugin's parser must never meet a document that
//! reaches its recursion limit, which would crash the plugin process).

/// Deepest nesting a payload may have anywhere: a Rust-SDK plugin parses at most 127 levels
/// (serde_json's limit of 128 counts the outermost), and the request line it parses wraps the
/// payload in one more object.
pub const MAX_DEPTH: usize = 126;

/// Whether the JSON text `json` nests arrays and objects more than `limit` levels deep. One pass
/// over the bytes with a counter (no recursion, no allocation); stops at the first level past the
/// limit. Brackets inside strings do not count: a string ends at the first `"` not escaped by a
/// backslash. Working on bytes is exact for UTF-8: `"`, `\`, brackets and braces never occur
/// inside a multi-byte character.
pub fn nests_deeper_than(json: &[u8], limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for &b in json {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert!(!nests_deeper_than(br#"{"a":[1,{"b":[]}]}"#, 4));
        assert!(nests_deeper_than(br#"{"a":[1,{"b":[]}]}"#, 3));
        assert!(
            !nests_deeper_than(br#"["[[[[\"[[["]"#, 1),
            "brackets in strings"
        );
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(nests_deeper_than(deep.as_bytes(), MAX_DEPTH));
    }
}
