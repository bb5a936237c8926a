//! Which Plugins one Airlock release serves, so that two releases (a canary beside the
//! production one, or one per team) can run in one cluster without both reconciling and routing
//! the same Plugins. As with Flux's controller sharding, a label on the object picks its release:
//! a release started with shard `canary` serves only the Plugins (and PluginTrustPolicies)
//! labelled `airlock.dev/shard: canary`; the release without a shard serves those without the
//! label. Each Plugin is therefore served by exactly one release, or — a label value no release
//! has — by none, which `kubectl get plugins -L airlock.dev/shard` shows.
//!
//! The children the operator creates for a Plugin copy its shard label, so each release's
//! watches of Deployments, Services, NetworkPolicies, ServiceAccounts and EndpointSlices see only
//! its own.

use std::fmt;
use std::str::FromStr;

use crate::names::MANAGED_BY_SELECTOR;

/// The label that assigns a Plugin, a PluginTrustPolicy or a child object to a shard.
pub const SHARD_LABEL: &str = "airlock.dev/shard";

/// A release's shard: `None` is the default release (objects without [`SHARD_LABEL`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shard(Option<String>);

/// Why a shard name was refused (it must be usable as a label value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidShard {
    pub value: String,
    pub reason: &'static str,
}

impl fmt::Display for InvalidShard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "shard {:?} {}: it is the value of the label {SHARD_LABEL} (at most 63 characters \
             of a-z, A-Z, 0-9, '-', '_', '.', beginning and ending with a letter or digit; \
             empty for the default release)",
            self.value, self.reason
        )
    }
}

impl std::error::Error for InvalidShard {}

impl FromStr for Shard {
    type Err = InvalidShard;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        if value.is_empty() {
            return Ok(Self(None));
        }
        let refuse = |reason| InvalidShard {
            value: value.to_string(),
            reason,
        };
        if value.len() > 63 {
            return Err(refuse("is longer than 63 characters"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(refuse("holds a character a label value cannot"));
        }
        let edge = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
        if !edge(value.bytes().next()) || !edge(value.bytes().last()) {
            return Err(refuse("does not begin and end with a letter or digit"));
        }
        Ok(Self(Some(value.to_string())))
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(name) => f.write_str(name),
            None => f.write_str("(default)"),
        }
    }
}

impl Shard {
    /// The shard's name; `None` for the default release.
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The label selector of the objects this shard serves.
    pub fn selector(&self) -> String {
        match &self.0 {
            Some(name) => format!("{SHARD_LABEL}={name}"),
            None => format!("!{SHARD_LABEL}"),
        }
    }

    /// The label selector of the objects Airlock created for the Plugins this shard serves.
    pub fn managed_selector(&self) -> String {
        format!("{MANAGED_BY_SELECTOR},{}", self.selector())
    }

    /// Whether an object with `shard_label` (the value of its [`SHARD_LABEL`], if any) is this
    /// shard's: what [`Shard::selector`] asks the API server, for objects read another way.
    pub fn serves(&self, shard_label: Option<&str>) -> bool {
        self.0.as_deref() == shard_label
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_release_serves_objects_without_the_label() {
        let shard: Shard = "".parse().unwrap();
        assert_eq!(shard.name(), None);
        assert_eq!(shard.selector(), "!airlock.dev/shard");
        assert_eq!(
            shard.managed_selector(),
            "app.kubernetes.io/managed-by=airlock,!airlock.dev/shard"
        );
        assert!(shard.serves(None));
        assert!(!shard.serves(Some("canary")));
    }

    #[test]
    fn a_named_shard_serves_only_its_label_value() {
        let shard: Shard = "canary".parse().unwrap();
        assert_eq!(shard.selector(), "airlock.dev/shard=canary");
        assert!(shard.serves(Some("canary")));
        assert!(!shard.serves(None));
        assert!(!shard.serves(Some("canary2")));
    }

    /// A name the API server would refuse as a label value would make every watch fail with a
    /// 400 in a loop; it is refused at start instead, naming the rule.
    #[test]
    fn a_name_that_is_no_label_value_is_refused_with_the_rule() {
        for bad in [
            "-canary",
            "canary.",
            "a b",
            "x=y",
            "a,b",
            &"a".repeat(64),
            "é",
        ] {
            let e = bad.parse::<Shard>().expect_err(bad);
            assert!(e.to_string().contains("airlock.dev/shard"), "{e}");
        }
        assert!("team-a_1.x".parse::<Shard>().is_ok());
        assert!("a".repeat(63).parse::<Shard>().is_ok());
    }
}
