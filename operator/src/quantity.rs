//! Just enough of Kubernetes quantities to compare a plugin's CPU and memory with the caps of
//! its trust level: CPU in millicores, memory in bytes.
//!
//! The reading follows the API server's `resource.ParseQuantity`
//! (k8s.io/apimachinery/pkg/api/resource/quantity.go) and is exact: integers only, never a
//! float, rounded up like `Quantity.MilliValue` (CPU) and `Quantity.Value` (memory), and an
//! error rather than a wrapped or saturated number when the result does not fit in a `u64`.
//!
//! No crate is used: kube_quantity 0.9 reads numbers through f64, rejects 1Ei, truncates 1.5Ki
//! to 1024 and overflows unchecked; k8s_quantity_parser is unmaintained and integer-only.
//!
//! The grammar, as documented in quantity.go:
//!
//! ```text
//! <quantity>        ::= <signedNumber><suffix>
//! <signedNumber>    ::= <number> | <sign><number>
//! <sign>            ::= "+" | "-"
//! <number>          ::= <digits> | <digits>.<digits> | <digits>. | .<digits>
//! <suffix>          ::= <binarySI> | <decimalExponent> | <decimalSI>
//! <binarySI>        ::= Ki | Mi | Gi | Ti | Pi | Ei
//! <decimalSI>       ::= n | u | m | "" | k | M | G | T | P | E
//! <decimalExponent> ::= "e" <sign>? <digits> | "E" <sign>? <digits>
//! ```
//!
//! So "1." and ".5" are valid (the API server's scanner accepts both; "1.G" is even kept on
//! purpose, see the TODO in `parseQuantityString`), "1K", "1e3Mi" and "1e" are not, and "1E" is
//! one exa (10^18), not an exponent. Where this module departs from the API server, it refuses
//! what the API server would accept, never the reverse, except for surrounding whitespace:
//!
//! - surrounding whitespace is trimmed, although the API server refuses it; values the API
//!   server has already validated never carry any;
//! - a number without a digit ("", ".", "+", "m", "Mi", "e3") is refused, as the grammar says,
//!   while the API server's scanner reads it as 0;
//! - a negative value is refused, since caps are ≥ 0 ("-0" is 0);
//! - a value beyond `u64` is refused, where the API server caps binary-suffixed values at
//!   2^63 - 1 ("16Ei");
//! - a decimal exponent of magnitude [`MAX_EXP`] or more is refused: the API server keeps an
//!   exponent's low 32 bits ("1e4294967296" is 1 there, "1e-4294967287" is 10^9);
//! - more than [`MAX_LEN`] characters are refused (quantities are short in practice).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{value:?} is not a {kind} quantity (examples: {examples})")]
pub struct QuantityError {
    pub value: String,
    pub kind: &'static str,
    pub examples: &'static str,
}

/// "250m" → 250, "1" → 1000, "0.5" → 500, "0.1m" → 1 (rounded up, like `MilliValue`).
pub fn cpu_millis(value: &str) -> Result<u64, QuantityError> {
    parse(value, "CPU", "250m, 1, 0.5", 3)
}

/// "64Mi" → 67108864, "1G" → 1e9, "1000" → 1000, "1.5Ki" → 1536, "0.5" → 1 (rounded up, like
/// `Value`).
pub fn memory_bytes(value: &str) -> Result<u64, QuantityError> {
    parse(value, "memory", "64Mi, 1Gi, 500M", 0)
}

/// `value`, whose CPU is `millis` ([`cpu_millis`]), as the pod is given it: unchanged when it is
/// plain ([`is_plain`]), else the millicores read here ("0.5" → "500m", "2e-1" → "200m"). What
/// the kubelet enforces is then what the caps were checked against, whatever another parser
/// would make of fractions and exponents; plain values stay as written, so the pod template (and
/// the revision) of a usual Plugin does not change.
pub fn cpu_for_pod(value: &str, millis: u64) -> String {
    if is_plain(value) {
        value.trim().to_string()
    } else {
        format!("{millis}m")
    }
}

/// [`cpu_for_pod`] for memory: `value` unchanged when plain, else its bytes ("1.5Ki" → "1536").
pub fn memory_for_pod(value: &str, bytes: u64) -> String {
    if is_plain(value) {
        value.trim().to_string()
    } else {
        bytes.to_string()
    }
}

/// Digits with at most one suffix (no sign, fraction or exponent, not n or u): a form every
/// quantity parser reads alike, as a whole number of units.
fn is_plain(value: &str) -> bool {
    let value = value.trim();
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    digits > 0
        && digits <= MAX_LEN
        && matches!(
            &value[digits..],
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        )
}

/// The longest quantity read, after trimming; longer ones are refused.
const MAX_LEN: usize = 64;

/// Decimal exponents of this magnitude or more are refused. The API server reads an exponent as
/// an int64 and then keeps its low 32 bits, so "1e-4294967287" is 10^9 there: read here as a
/// tiny number rounded up to 1 byte, it passed a 1 GiB cap while the pod got 1 GB — a tenant's
/// way past its trust level's caps (attack review, 2026-12-03). Refusing every large exponent
/// keeps this parser on the strict side of the API server's: such a Plugin is refused with the
/// field named, never read smaller than Kubernetes reads it. With at most [`MAX_LEN`] digits,
/// no value this side of the bound needs more (it overflows a `u64`, or rounds up to 1).
const MAX_EXP: i64 = 10_000;

/// The trimmed `value` read in units of 10^-`unit_exp` (3: millis, 0: ones), or the error naming
/// the `kind` of quantity it should be.
fn parse(
    value: &str,
    kind: &'static str,
    examples: &'static str,
    unit_exp: i64,
) -> Result<u64, QuantityError> {
    read(value.trim(), unit_exp).ok_or_else(|| QuantityError {
        value: value.into(),
        kind,
        examples,
    })
}

/// `s` in units of 10^-`unit_exp`, rounded up; `None` if it is not a quantity, is negative or
/// does not fit in a `u64`.
fn read(s: &str, unit_exp: i64) -> Option<u64> {
    if s.len() > MAX_LEN {
        return None;
    }
    let (negative, rest) = sign(s.as_bytes());
    let (int, rest) = digits(rest);
    let (frac, rest) = match rest.split_first() {
        Some((b'.', rest)) => digits(rest),
        _ => (&[][..], rest),
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let (exp10, shift) = suffix(rest)?;
    let amount = scaled(int, frac, exp10 + unit_exp, shift)?;
    (amount == 0 || !negative).then_some(amount)
}

/// Whether `b` starts with a minus, and `b` without its sign.
fn sign(b: &[u8]) -> (bool, &[u8]) {
    match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, b),
    }
}

/// The leading ASCII digits of `b`, and the rest.
fn digits(b: &[u8]) -> (&[u8], &[u8]) {
    let n = b.iter().take_while(|c| c.is_ascii_digit()).count();
    b.split_at_checked(n).unwrap_or((b, &[]))
}

/// The power of ten and the power of two a suffix multiplies by.
fn suffix(s: &[u8]) -> Option<(i64, u32)> {
    const DECIMAL: [(&[u8], i64); 10] = [
        (b"n", -9),
        (b"u", -6),
        (b"m", -3),
        (b"", 0),
        (b"k", 3),
        (b"M", 6),
        (b"G", 9),
        (b"T", 12),
        (b"P", 15),
        (b"E", 18),
    ];
    const BINARY: [(&[u8], u32); 6] = [
        (b"Ki", 10),
        (b"Mi", 20),
        (b"Gi", 30),
        (b"Ti", 40),
        (b"Pi", 50),
        (b"Ei", 60),
    ];
    if let Some(&(_, exp10)) = DECIMAL.iter().find(|(name, _)| *name == s) {
        return Some((exp10, 0));
    }
    if let Some(&(_, shift)) = BINARY.iter().find(|(name, _)| *name == s) {
        return Some((0, shift));
    }
    // A decimal exponent: "e" or "E", an optional sign, then digits only.
    let exponent = s.strip_prefix(b"e").or_else(|| s.strip_prefix(b"E"))?;
    let (negative, exponent) = sign(exponent);
    if exponent.is_empty() || !exponent.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let magnitude = exponent.iter().fold(0, |acc: i64, d| {
        (acc * 10 + i64::from(d - b'0')).min(MAX_EXP)
    });
    if magnitude >= MAX_EXP {
        return None;
    }
    Some((if negative { -magnitude } else { magnitude }, 0))
}

/// ⌈`int`.`frac` × 10^`exp10` × 2^`shift`⌉, or `None` beyond `u64`.
fn scaled(int: &[u8], frac: &[u8], exp10: i64, shift: u32) -> Option<u64> {
    // All the digits as one integer D, its leading zeros dropped: the value is
    // D × 10^(exp10 - frac.len()) × 2^shift.
    let all = || int.iter().chain(frac).map(|d| u128::from(d - b'0'));
    let zeros = all().take_while(|&d| d == 0).count();
    let n = int.len() + frac.len() - zeros;
    if n == 0 {
        return Some(0);
    }
    // Digits of D before the point once scaled (negative: zeros after the point before D).
    // D's first digit is not 0, so the value is at least 10^(point - 1), beyond u64 once
    // point > 20, and below 10^point × 2^60 < 10^(point + 19), below 1 (rounded up to 1) once
    // point < -19. In between, every loop below runs at most 64 + 19 times.
    let point = i64::try_from(n).ok()? + exp10 - i64::try_from(frac.len()).ok()?;
    if point > 20 {
        return None;
    }
    if point < -19 {
        return Some(1);
    }
    let multiplier = 1_u128 << shift;
    let whole_digits = usize::try_from(point.max(0)).ok()?;
    let zeros_before = usize::try_from((-point).max(0)).ok()?;

    // The whole part, padded with zeros when the point lies beyond D's last digit: < 10^20.
    let mut whole: u128 = 0;
    for d in all()
        .skip(zeros)
        .chain(std::iter::repeat(0))
        .take(whole_digits)
    {
        whole = whole.checked_mul(10)?.checked_add(d)?;
    }
    // ⌈fraction × multiplier⌉ by long multiplication from the last digit: the carry out of the
    // digits after the point is the floor, and any digit left below the point rounds up.
    let fraction = all().skip(zeros + whole_digits).collect::<Vec<_>>();
    let mut carry: u128 = 0;
    let mut rest = false;
    for d in fraction
        .iter()
        .rev()
        .copied()
        .chain(std::iter::repeat_n(0, zeros_before))
    {
        let product = d.checked_mul(multiplier)?.checked_add(carry)?;
        rest |= product % 10 != 0;
        carry = product / 10;
    }
    let total = whole
        .checked_mul(multiplier)?
        .checked_add(carry)?
        .checked_add(u128::from(rest))?;
    u64::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pod gets plain values as written and everything else as the exact value the caps were
    /// checked against.
    #[test]
    fn the_pod_gets_plain_values_as_written_and_others_as_read() {
        for (given, pod) in [
            ("250m", "250m"),
            ("2", "2"),
            (" 1 ", "1"),
            ("0.5", "500m"),
            ("2e-1", "200m"),
            ("1e-4", "1m"),
            ("+1", "1000m"),
            ("100000u", "100m"),
        ] {
            let millis = cpu_millis(given).expect(given);
            assert_eq!(cpu_for_pod(given, millis), pod, "CPU {given:?}");
        }
        for (given, pod) in [
            ("64Mi", "64Mi"),
            ("1G", "1G"),
            ("1000", "1000"),
            ("1.5Ki", "1536"),
            ("1e3", "1000"),
            ("0.5Gi", "536870912"),
            ("1e3Ki", "1e3Ki"),
        ] {
            match memory_bytes(given) {
                Ok(bytes) => assert_eq!(memory_for_pod(given, bytes), pod, "memory {given:?}"),
                Err(_) => assert_eq!(given, "1e3Ki", "only the invalid form fails"),
            }
        }
    }

    #[test]
    fn cpu_in_millicores() {
        for (value, millis) in [
            ("250m", 250),
            ("1", 1000),
            ("0.5", 500),
            (" 2 ", 2000),
            ("1.5", 1500),
            ("0.1m", 1),
            ("0.0001", 1),
            ("1n", 1),
            ("1e3", 1_000_000),
            ("1E3", 1_000_000),
            ("1e+3", 1_000_000),
            ("1e-3", 1),
            ("1E-3", 1),
            ("1.5m", 2),
            ("1.0m", 1),
            ("+1", 1000),
            ("1.", 1000),
            (".5", 500),
            ("1.e3", 1_000_000),
            (".5e1", 5000),
            ("0.0005", 1),
            ("0.0015", 2),
            ("0.001", 1),
            ("0.002", 2),
            ("2000m", 2000),
            ("000250m", 250),
            ("1e03", 1_000_000),
            ("100e-2", 1000),
            ("0.000000001", 1),
            ("0.0000000000000000000000001", 1),
            ("1e-9999", 1),
        ] {
            assert_eq!(cpu_millis(value), Ok(millis), "{value:?}");
        }
    }

    #[test]
    fn every_suffix_in_millicores() {
        const P: u64 = 1_000_000_000_000_000;
        for (value, millis) in [
            ("1n", 1),
            ("1000000n", 1),
            ("1000001n", 2),
            ("1u", 1),
            ("1000u", 1),
            ("1001u", 2),
            ("1m", 1),
            ("1", 1000),
            ("1k", 1_000_000),
            ("1M", 1_000_000_000),
            ("1G", 1_000_000_000_000),
            ("1T", 1_000 * 1_000_000_000_000),
            ("1P", 1000 * P),
            ("0.001E", 1000 * P),
            ("1Ki", 1024 * 1000),
            ("1Mi", (1 << 20) * 1000),
            ("1Gi", (1 << 30) * 1000),
            ("1Ti", (1 << 40) * 1000),
            ("1Pi", (1 << 50) * 1000),
            ("16Pi", (1 << 54) * 1000),
            ("0.001Ei", 1 << 60),
            ("0.0001Ki", 103),
            ("0.000001Ki", 2),
            ("0.0000001Ki", 1),
            ("1.5Ki", 1_536_000),
        ] {
            assert_eq!(cpu_millis(value), Ok(millis), "{value:?}");
        }
        // 10^21 and 2^60 × 1000 millicores do not fit in a u64.
        for value in ["1E", "1Ei", "17Pi", "1e20"] {
            assert!(cpu_millis(value).is_err(), "{value:?}");
        }
    }

    #[test]
    fn cpu_at_the_edge_of_u64() {
        assert_eq!(cpu_millis("18446744073709551615m"), Ok(u64::MAX));
        assert_eq!(cpu_millis("18446744073709551.615"), Ok(u64::MAX));
        assert_eq!(cpu_millis("18446744073709551.6149"), Ok(u64::MAX));
        assert!(cpu_millis("18446744073709551616m").is_err());
        assert!(cpu_millis("18446744073709551.6151").is_err());
        assert!(cpu_millis("18446744073709552").is_err());
        assert!(cpu_millis("1e16").is_ok());
        assert!(cpu_millis("1e17").is_err());
    }

    #[test]
    fn exact_fractions_in_millicores() {
        for cores in [0_u64, 1, 7, 99, 12_345] {
            for millis in [0_u64, 1, 9, 10, 99, 100, 250, 999] {
                let value = format!("{cores}.{millis:03}");
                assert_eq!(cpu_millis(&value), Ok(cores * 1000 + millis), "{value:?}");
                let value = format!("{cores}.{millis:03}1");
                assert_eq!(
                    cpu_millis(&value),
                    Ok(cores * 1000 + millis + 1),
                    "{value:?}"
                );
            }
        }
    }

    #[test]
    fn memory_in_bytes() {
        for (value, bytes) in [
            ("64Mi", 64 << 20),
            ("1G", 1_000_000_000),
            ("1000", 1000),
            ("1Gi", 1 << 30),
            ("500M", 500_000_000),
            ("1.5Ki", 1536),
            ("1.5Gi", 1_610_612_736),
            ("0.5Ki", 512),
            ("0.0001Ki", 1),
            ("1.0000001Ki", 1025),
            ("0.5", 1),
            ("1m", 1),
            ("1.5", 2),
            ("2.0", 2),
            ("128974848", 128_974_848),
            ("129e6", 129_000_000),
            ("129M", 129_000_000),
            ("123Mi", 128_974_848),
            ("1e19", 10_000_000_000_000_000_000),
            ("18446744073709551615", u64::MAX),
            ("15Ei", 15 << 60),
            ("1e-9999", 1),
            (" 64Mi\n", 64 << 20),
        ] {
            assert_eq!(memory_bytes(value), Ok(bytes), "{value:?}");
        }
        for value in [
            "64MiB",
            "",
            "99999999999Ti",
            "16Ei",
            "18446744073709551616",
            "1e20",
            "18446744073709551615.1",
        ] {
            assert!(memory_bytes(value).is_err(), "{value:?}");
        }
        assert_eq!(
            memory_bytes("64MiB").map_err(|e| e.to_string()),
            Err(r#""64MiB" is not a memory quantity (examples: 64Mi, 1Gi, 500M)"#.to_string())
        );
    }

    #[test]
    fn every_suffix_in_bytes() {
        for (value, bytes) in [
            ("1n", 1),
            ("1u", 1),
            ("1m", 1),
            ("1000m", 1),
            ("1001m", 2),
            ("1", 1),
            ("1k", 1_000),
            ("1M", 1_000_000),
            ("1G", 1_000_000_000),
            ("1T", 1_000_000_000_000),
            ("1P", 1_000_000_000_000_000),
            ("1E", 1_000_000_000_000_000_000),
            ("1Ki", 1 << 10),
            ("1Mi", 1 << 20),
            ("1Gi", 1 << 30),
            ("1Ti", 1 << 40),
            ("1Pi", 1 << 50),
            ("1Ei", 1 << 60),
        ] {
            assert_eq!(memory_bytes(value), Ok(bytes), "{value:?}");
        }
    }

    #[test]
    fn zero_in_any_form() {
        for value in [
            "0", "-0", "+0", "0.0", "-0.0", "0.", ".0", "000", "0m", "-0Mi", "0Ei", "0E", "0e9",
            "0e9999", "-0e-5",
        ] {
            assert_eq!(cpu_millis(value), Ok(0), "{value:?}");
            assert_eq!(memory_bytes(value), Ok(0), "{value:?}");
        }
    }

    #[test]
    fn refused_by_both() {
        for value in [
            "lots",
            "-1",
            "-1m",
            "-0.0001",
            "-1e-999",
            "NaN",
            "inf",
            "-inf",
            "infinity",
            "K",
            "1K",
            "1Kb",
            "1ki",
            "1KI",
            "1mi",
            "1Kib",
            "1e3Mi",
            "1e3m",
            "1Mie3",
            "+-1",
            "-+1",
            "--1",
            "++1",
            "1-",
            "1+",
            "1.2.3",
            "",
            " ",
            "+",
            "-",
            "m",
            "Mi",
            "E",
            ".",
            "-.",
            ".m",
            "e3",
            "1e",
            "1E+",
            "1e+",
            "1e-",
            "1e3.5",
            "1e1e1",
            "1ee3",
            "1e 3",
            "0x10",
            "1 Mi",
            "1,5",
            "1_000",
            "١",
            "1١",
            "１",
            "1e999999999",
            "1e99999999999999999999999999",
            "1e21",
            // The API server keeps an exponent's low 32 bits: these are 10^9 and 10^9 there.
            "1e-4294967287",
            "1e-8589934583",
            "1e-10000",
            "0e10000",
            "1e-999999999",
        ] {
            assert!(cpu_millis(value).is_err(), "{value:?}");
            assert!(memory_bytes(value).is_err(), "{value:?}");
        }
    }

    #[test]
    fn length_is_bounded() {
        let longest = format!("1.{}", "0".repeat(MAX_LEN - 2));
        assert_eq!(cpu_millis(&longest), Ok(1000));
        assert_eq!(memory_bytes(&longest), Ok(1));
        let longer = format!("{longest}0");
        assert!(cpu_millis(&longer).is_err());
        assert!(memory_bytes(&longer).is_err());
        // Trimmed first: surrounding whitespace does not count.
        assert_eq!(memory_bytes(&format!("  {longest}  ")), Ok(1));
    }

    /// Exponents are bounded before any arithmetic (a loop per exponent unit would hang here),
    /// and a large one is refused, never read smaller than the API server reads it.
    #[test]
    fn huge_exponents_are_refused() {
        assert!(memory_bytes("1e999999999").is_err());
        assert!(cpu_millis("9e9223372036854775807").is_err());
        assert!(memory_bytes("1e-9223372036854775808").is_err());
        assert!(
            memory_bytes("8e-4294967286").is_err(),
            "80 GB for the API server"
        );
        assert!(
            cpu_millis("1e-4294967293").is_err(),
            "1000 cores for the API server"
        );
    }

    #[test]
    fn the_error_names_the_value_as_given() {
        assert_eq!(
            cpu_millis(" 1.5x ").map_err(|e| e.to_string()),
            Err(r#"" 1.5x " is not a CPU quantity (examples: 250m, 1, 0.5)"#.to_string())
        );
        assert_eq!(
            memory_bytes("-1"),
            Err(QuantityError {
                value: "-1".into(),
                kind: "memory",
                examples: "64Mi, 1Gi, 500M",
            })
        );
    }
}
