//! Kubernetes Events both binaries publish.

/// Longest Event note the API server accepts, in bytes (`events.k8s.io/v1`: 1 KiB).
pub const MAX_NOTE_BYTES: usize = 1024;

/// `text` as an Event note: cut on a character boundary (with `…`) to fit [`MAX_NOTE_BYTES`], so
/// that a long message (names, digests, a plugin's own words) never makes the API server refuse
/// the whole Event.
pub fn note(text: &str) -> String {
    if text.len() <= MAX_NOTE_BYTES {
        return text.to_string();
    }
    let mut end = MAX_NOTE_BYTES - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_note_fits_the_api_servers_limit_on_a_character_boundary() {
        assert_eq!(note("short"), "short");
        let exact = "x".repeat(MAX_NOTE_BYTES);
        assert_eq!(note(&exact), exact);
        for long in [
            "x".repeat(5000),
            "é".repeat(3000),
            format!("x{}", "€".repeat(800)),
        ] {
            let n = note(&long);
            assert!(n.len() <= MAX_NOTE_BYTES, "{}", n.len());
            assert!(n.ends_with('…'));
            assert!(long.starts_with(n.trim_end_matches('…')));
        }
    }
}
