//! The duration spellings the CRDs allow: whole milliseconds (`200ms`) or seconds (`2s`).

/// "200ms" → 200, "2s" → 2000; `None` for any other spelling.
pub fn duration_ms(value: &str) -> Option<u64> {
    if let Some(ms) = value.strip_suffix("ms") {
        ms.parse().ok()
    } else if let Some(s) = value.strip_suffix('s') {
        s.parse::<u64>().ok().and_then(|s| s.checked_mul(1000))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_and_seconds_and_nothing_else() {
        assert_eq!(duration_ms("200ms"), Some(200));
        assert_eq!(duration_ms("2s"), Some(2000));
        assert_eq!(duration_ms("2m"), None);
        assert_eq!(duration_ms("1.5s"), None);
        assert_eq!(duration_ms(""), None);
        assert_eq!(duration_ms("99999999999999999999s"), None);
    }
}
