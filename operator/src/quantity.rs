//! Just enough of Kubernetes quantities to compare a plugin's CPU and memory with the caps of
//! its trust level: CPU in millicores, memory in bytes.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{value:?} is not a {kind} quantity (examples: {examples})")]
pub struct QuantityError {
    pub value: String,
    pub kind: &'static str,
    pub examples: &'static str,
}

/// "250m" → 250, "1" → 1000, "0.5" → 500.
pub fn cpu_millis(value: &str) -> Result<u64, QuantityError> {
    parse(value, "CPU", "250m, 1, 0.5", |v| {
        if let Some(m) = v.strip_suffix('m') {
            return m.parse().ok();
        }
        let cores: f64 = v.parse().ok()?;
        (cores.is_finite() && cores >= 0.0).then(|| (cores * 1000.0).round() as u64)
    })
}

/// "64Mi" → 67108864, "1G" → 1e9, "1000" → 1000.
pub fn memory_bytes(value: &str) -> Result<u64, QuantityError> {
    const SUFFIXES: [(&str, u64); 10] = [
        ("Ki", 1 << 10),
        ("Mi", 1 << 20),
        ("Gi", 1 << 30),
        ("Ti", 1 << 40),
        ("k", 1_000),
        ("K", 1_000),
        ("M", 1_000_000),
        ("G", 1_000_000_000),
        ("T", 1_000_000_000_000),
        ("", 1),
    ];
    parse(value, "memory", "64Mi, 1Gi, 500M", |v| {
        let (suffix, number, factor) = SUFFIXES
            .iter()
            .find_map(|&(suffix, factor)| Some((suffix, v.strip_suffix(suffix)?, factor)))?;
        // Only the empty suffix matched, yet there are letters: a unit this parser does not know.
        if suffix.is_empty() && number.chars().any(|c| c.is_ascii_alphabetic()) {
            return None;
        }
        number.parse::<u64>().ok()?.checked_mul(factor)
    })
}

/// `read` of the trimmed `value`, or the error naming the `kind` of quantity it should be.
fn parse(
    value: &str,
    kind: &'static str,
    examples: &'static str,
    read: impl FnOnce(&str) -> Option<u64>,
) -> Result<u64, QuantityError> {
    read(value.trim()).ok_or_else(|| QuantityError {
        value: value.into(),
        kind,
        examples,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_in_millicores() {
        for (value, millis) in [("250m", 250), ("1", 1000), ("0.5", 500), (" 2 ", 2000)] {
            assert_eq!(cpu_millis(value), Ok(millis), "{value:?}");
        }
        for value in ["lots", "-1", "1.5m", "NaN"] {
            assert!(cpu_millis(value).is_err(), "{value:?}");
        }
    }

    #[test]
    fn memory_in_bytes() {
        for (value, bytes) in [("64Mi", 64 << 20), ("1G", 1_000_000_000), ("1000", 1000)] {
            assert_eq!(memory_bytes(value), Ok(bytes), "{value:?}");
        }
        for value in ["64MiB", "", "1.5Gi", "99999999999Ti"] {
            assert!(memory_bytes(value).is_err(), "{value:?}");
        }
        assert_eq!(
            memory_bytes("64MiB").map_err(|e| e.to_string()),
            Err(r#""64MiB" is not a memory quantity (examples: 64Mi, 1Gi, 500M)"#.to_string())
        );
    }
}
