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
    let err = || QuantityError {
        value: value.into(),
        kind: "CPU",
        examples: "250m, 1, 0.5",
    };
    let v = value.trim();
    if let Some(m) = v.strip_suffix('m') {
        return m.parse::<u64>().map_err(|_| err());
    }
    let f: f64 = v.parse().map_err(|_| err())?;
    if !(f.is_finite() && f >= 0.0) {
        return Err(err());
    }
    Ok((f * 1000.0).round() as u64)
}

/// "64Mi" → 67108864, "1G" → 1e9, "1000" → 1000.
pub fn memory_bytes(value: &str) -> Result<u64, QuantityError> {
    let err = || QuantityError {
        value: value.into(),
        kind: "memory",
        examples: "64Mi, 1Gi, 500M",
    };
    let v = value.trim();
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
    for (suffix, factor) in SUFFIXES {
        if let Some(num) = v.strip_suffix(suffix) {
            if suffix.is_empty() && num.chars().any(|c| c.is_ascii_alphabetic()) {
                return Err(err());
            }
            let n: u64 = num.parse().map_err(|_| err())?;
            return n.checked_mul(factor).ok_or_else(err);
        }
    }
    Err(err())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(cpu_millis("250m"), Ok(250));
        assert_eq!(cpu_millis("1"), Ok(1000));
        assert_eq!(cpu_millis("0.5"), Ok(500));
        assert!(cpu_millis("lots").is_err());
    }

    #[test]
    fn memory() {
        assert_eq!(memory_bytes("64Mi"), Ok(64 << 20));
        assert_eq!(memory_bytes("1G"), Ok(1_000_000_000));
        assert_eq!(memory_bytes("1000"), Ok(1000));
        assert!(memory_bytes("64MiB").is_err());
        assert!(memory_bytes("").is_err());
    }
}
