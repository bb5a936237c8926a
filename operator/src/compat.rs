//! What a plugin's signed manifest requires (`requires`, `sdk`) checked against this Airlock and
//! against what the plugin is granted, and whether its plugin API version is going away: the
//! `Compatible` condition's checks beyond the API version (pure; [`crate::plan`] calls them), and
//! the text of the `Deprecated` warning.
//!
//! A requirement refused here is a plugin that would otherwise start and fail at its first use of
//! what it lacks (a `PERMISSION_DENIED` storage call in the middle of a hook, a configuration
//! never delivered): refused before anything runs, with a condition that names it.

use std::collections::BTreeSet;

use airlock_bundle::manifest::{Manifest, Requirement};
use airlock_core::{Permission, api};

use crate::plan::Verdict;

/// `Compatible=False` reason: the manifest requires what this Airlock does not provide or the
/// plugin is not granted.
pub const REQUIREMENT_NOT_MET: &str = "RequirementNotMet";
/// `Compatible=False` reason: built with an SDK older than this Airlock serves.
pub const SDK_NOT_SUPPORTED: &str = "SdkNotSupported";
/// The `Deprecated` condition's reason.
pub const DEPRECATED_PLUGIN_API_VERSION: &str = "DeprecatedPluginApiVersion";

/// This Airlock's version, for messages.
const AIRLOCK_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The requirements of `manifest` that are not met, as a blocked `Compatible` verdict; `None`
/// when all are. `approved` is `Plugin.spec.permissions`; `allowed` what its trust level allows
/// (`None` without a governing PluginTrustPolicy: nothing is granted then and
/// `PermissionsApproved` says why, so only host features are checked).
pub fn unmet(
    manifest: &Manifest,
    approved: &BTreeSet<Permission>,
    allowed: Option<&BTreeSet<Permission>>,
) -> Option<Verdict> {
    let mut missing = Vec::new();
    let features: Vec<&str> = manifest
        .requires
        .iter()
        .filter_map(|r| match r {
            Requirement::Feature(f) if !api::provides(f) => Some(f.as_str()),
            _ => None,
        })
        .collect();
    if !features.is_empty() {
        missing.push(format!(
            "the host feature(s) {} that this Airlock ({AIRLOCK_VERSION}) does not provide (it provides {}): upgrade Airlock, or use a version of the plugin that does not require them",
            features.join(", "),
            api::HOST_FEATURES.join(", ")
        ));
    }
    // `upgrade` is this Airlock's only for a plugin granted what a migration writes with (the
    // manifest parser made sure it declares it): without it, onUpgrade is never sent.
    let upgrade = manifest
        .requires
        .iter()
        .any(|r| matches!(r, Requirement::Feature(f) if f == "upgrade"))
        .then_some(Permission::StorageWrite);
    let permissions = manifest
        .requires
        .iter()
        .filter_map(|r| match r {
            Requirement::Permission(p) => Some(*p),
            Requirement::Feature(_) => None,
        })
        .chain(upgrade)
        .collect::<BTreeSet<_>>();
    for p in permissions {
        let allowed_here = allowed.map(|a| a.contains(&p));
        match (approved.contains(&p), allowed_here) {
            // No policy, granted, or asked for but not allowed (PermissionsApproved says that).
            (_, None) | (true, Some(_)) => {}
            (false, Some(true)) => missing.push(format!(
                "the permission {p}, which spec.permissions does not approve: add {p} to spec.permissions (its trust level allows it)"
            )),
            (false, Some(false)) => missing.push(format!(
                "the permission {p}, which its trust level does not allow: an admin must allow {p} for that trust level in the PluginTrustPolicy, or use a plugin that does not require it"
            )),
        }
    }
    (!missing.is_empty()).then(|| {
        Verdict::blocked(
            REQUIREMENT_NOT_MET,
            format!(
                "the signed manifest requires {}",
                missing.join("; and it requires ")
            ),
        )
    })
}

/// A blocked `Compatible` verdict when the manifest says it was built with an SDK older than
/// this Airlock serves; `None` when it is recent enough, not said, or an SDK Airlock does not
/// know.
pub fn sdk_support(manifest: &Manifest) -> Option<Verdict> {
    let sdk = manifest.sdk.as_ref()?;
    let oldest = semver::Version::parse(api::oldest_sdk(&sdk.name)?).ok()?;
    (sdk.version < oldest).then(|| {
        Verdict::blocked(
            SDK_NOT_SUPPORTED,
            format!(
                "the plugin was built with {} {}, older than this Airlock ({AIRLOCK_VERSION}) serves (from {oldest}): rebuild it with {} {oldest} or newer and sign the new bundle",
                sdk.name, sdk.version, sdk.name
            ),
        )
    })
}

/// The `Deprecated` condition's message when the plugin API version `version` is going away
/// according to `deprecated` ([`api::DEPRECATED_PLUGIN_API_VERSIONS`] in production).
pub fn deprecation(version: u32, deprecated: &[(u32, &'static str)]) -> Option<String> {
    let release = api::removed_in(version, deprecated)?;
    let newer = api::SUPPORTED_PLUGIN_API_VERSIONS
        .iter()
        .filter(|v| **v > version && api::removed_in(**v, deprecated).is_none())
        .max();
    let instead = newer.map_or_else(
        || "a plugin API version that is not deprecated".to_string(),
        |v| format!("plugin API version {v}"),
    );
    Some(format!(
        "the plugin targets plugin API version {version}, which is deprecated and will be removed in Airlock {release}: rebuild it for {instead} before upgrading Airlock to {release}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(extra: &str) -> Manifest {
        Manifest::parse(&format!(
            "name: p\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\npermissions: [log, storage:write]\nentryPoint: [/p]\n{extra}"
        ))
        .expect("manifest")
    }

    fn set(ps: &[Permission]) -> BTreeSet<Permission> {
        ps.iter().copied().collect()
    }

    fn message(v: Option<Verdict>) -> String {
        match v {
            Some(Verdict::Blocked { reason, message }) => {
                assert_eq!(reason, REQUIREMENT_NOT_MET);
                message
            }
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_required_feature_this_airlock_lacks_is_named_with_what_it_provides() {
        let m = manifest("requires: [config, kvWatch]");
        let all = set(Permission::ALL);
        let msg = message(unmet(&m, &BTreeSet::new(), Some(&all)));
        assert!(
            msg.contains("kvWatch")
                && !msg.contains("feature(s) config")
                && msg.contains("liveConfig")
                && msg.contains("upgrade Airlock"),
            "{msg}"
        );
        assert_eq!(
            unmet(
                &manifest("requires: [config, multiplexed]"),
                &BTreeSet::new(),
                None
            ),
            None
        );
    }

    #[test]
    fn a_required_permission_must_be_approved_and_allowed() {
        let m = manifest("requires: [storage:write]");
        let all = set(Permission::ALL);
        let log_only = set(&[Permission::Log]);
        let write = set(&[Permission::StorageWrite]);

        let msg = message(unmet(&m, &BTreeSet::new(), Some(&all)));
        assert!(
            msg.contains("spec.permissions does not approve")
                && msg.contains("add storage:write to spec.permissions"),
            "{msg}"
        );
        let msg = message(unmet(&m, &BTreeSet::new(), Some(&log_only)));
        assert!(
            msg.contains("trust level does not allow") && msg.contains("PluginTrustPolicy"),
            "{msg}"
        );
        assert_eq!(
            unmet(&m, &write, Some(&log_only)),
            None,
            "asked for but not allowed: PermissionsApproved=False says it, once"
        );
        assert_eq!(unmet(&m, &write, Some(&all)), None, "granted");
        assert_eq!(
            unmet(&m, &BTreeSet::new(), None),
            None,
            "no policy: PermissionsApproved says it"
        );
        assert_eq!(
            unmet(&manifest(""), &BTreeSet::new(), Some(&log_only)),
            None
        );
    }

    /// Issue 17 (review): `upgrade` is provided only to a plugin granted storage:write (else its
    /// shim never sends onUpgrade).
    #[test]
    fn requiring_upgrade_needs_storage_write_granted() {
        let m = Manifest::parse(
            "name: p\nversion: 1.0.0\napiVersion: 1\nhooks: [onUpgrade]\npermissions: [log, storage:write]\nentryPoint: [/p]\nrequires: [upgrade]",
        )
        .expect("manifest");
        let all = set(Permission::ALL);
        let msg = message(unmet(&m, &set(&[Permission::Log]), Some(&all)));
        assert!(
            msg.contains("add storage:write to spec.permissions"),
            "{msg}"
        );
        assert_eq!(
            unmet(&m, &set(&[Permission::StorageWrite]), Some(&all)),
            None
        );
    }

    #[test]
    fn an_sdk_older_than_served_is_refused_and_unknown_sdks_pass() {
        let old = manifest("sdk: {name: airlock-sdk, version: 0.0.9}");
        match sdk_support(&old) {
            Some(Verdict::Blocked { reason, message }) => {
                assert_eq!(reason, SDK_NOT_SUPPORTED);
                assert!(
                    message.contains("airlock-sdk 0.0.9") && message.contains("from 0.1.0"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            sdk_support(&manifest("sdk: {name: airlock-sdk, version: 0.1.0}")),
            None
        );
        assert_eq!(
            sdk_support(&manifest("sdk: {name: go-airlock, version: 0.0.1}")),
            None
        );
        assert_eq!(sdk_support(&manifest("")), None);
    }

    #[test]
    fn a_deprecated_api_version_names_the_release_that_removes_it() {
        let msg = deprecation(1, &[(1, "0.9.0")]).expect("deprecated");
        assert!(
            msg.contains("plugin API version 1") && msg.contains("removed in Airlock 0.9.0"),
            "{msg}"
        );
        assert_eq!(deprecation(1, &[]), None);
        assert_eq!(deprecation(1, api::DEPRECATED_PLUGIN_API_VERSIONS), None);
    }
}
