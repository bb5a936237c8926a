//! The names a caller sends (namespaces, plugin names), checked before anything else reads them
//! (pure). They go into authorization, audit records and the messages of refusals: unchecked, a
//! caller could make each of those as large as its request. Kubernetes names are short and of a
//! known alphabet; anything else names nothing, so it is refused (INVALID_ARGUMENT) with a message
//! that names the field and the rule, never the value.

use tonic::Status;

/// Longest namespace name: a DNS label (RFC 1123).
pub const MAX_NAMESPACE_CHARS: usize = 63;
/// Longest object name: a DNS subdomain (RFC 1123).
pub const MAX_NAME_CHARS: usize = 253;

/// A name that cannot be a Kubernetes namespace or object name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error(
        "{field} must be a namespace name: a DNS label of at most 63 characters, lower-case \
         letters, digits and '-', starting and ending with a letter or digit"
    )]
    Namespace { field: &'static str },
    #[error(
        "{field} must be a Plugin name: a DNS subdomain of at most 253 characters, lower-case \
         letters, digits, '-' and '.', each '.'-separated part starting and ending with a letter \
         or digit"
    )]
    Name { field: &'static str },
}

impl From<InvalidName> for Status {
    fn from(e: InvalidName) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// `value` of the request's `field` as a namespace name.
pub fn namespace(field: &'static str, value: &str) -> Result<(), InvalidName> {
    (value.len() <= MAX_NAMESPACE_CHARS && label(value))
        .then_some(())
        .ok_or(InvalidName::Namespace { field })
}

/// `value` of the request's `field` as an object (Plugin) name.
pub fn name(field: &'static str, value: &str) -> Result<(), InvalidName> {
    (value.len() <= MAX_NAME_CHARS && value.split('.').all(label))
        .then_some(())
        .ok_or(InvalidName::Name { field })
}

/// Non-empty, lower-case alphanumerics and '-', starting and ending with an alphanumeric.
fn label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    matches!((bytes.first(), bytes.last()), (Some(&f), Some(&l)) if alnum(f) && alnum(l))
        && bytes.iter().all(|&b| alnum(b) || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_dns_labels() {
        for ok in ["a", "team-a", "a1", "0", &"n".repeat(63)] {
            assert_eq!(namespace("namespace", ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Team",
            "-a",
            "a-",
            "a.b",
            "a_b",
            "ä",
            "a b",
            &"n".repeat(64),
        ] {
            assert_eq!(
                namespace("namespace", bad),
                Err(InvalidName::Namespace { field: "namespace" }),
                "{bad}"
            );
        }
    }

    #[test]
    fn plugin_names_are_dns_subdomains() {
        for ok in ["x", "event-logger", "a.b-c.d", &"n".repeat(253)] {
            assert_eq!(name("plugin.name", ok), Ok(()), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "A", "a/b", "a.-b", &"n".repeat(254)] {
            assert!(name("plugin.name", bad).is_err(), "{bad}");
        }
        let e = Status::from(InvalidName::Name {
            field: "plugin.name",
        });
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("plugin.name must be a Plugin name"));
    }
}
