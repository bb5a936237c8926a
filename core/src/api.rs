//! The plugin API versions this Airlock serves (`Plugin.spec.pluginApiVersion` and the signed
//! manifest's `apiVersion` must both name one of them, and the same one), and how many calls a
//! plugin pod may run side by side.

/// The most plugin processes one pod runs side by side (`Plugin.spec.concurrency`, the trust
/// level's `maxConcurrency`, the shim's `--concurrency`): each has its own stdio and one call in
/// flight, and all share the pod's CPU, memory and process limits.
pub const MAX_CONCURRENCY: u32 = 64;

/// Supported plugin API versions, oldest first.
pub const SUPPORTED_PLUGIN_API_VERSIONS: &[u32] = &[1];

/// Whether `version` is served.
pub fn is_supported(version: u32) -> bool {
    SUPPORTED_PLUGIN_API_VERSIONS.contains(&version)
}

/// The supported versions as text for messages: "1" or "1, 2".
pub fn supported_list() -> String {
    SUPPORTED_PLUGIN_API_VERSIONS
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Host features beyond the permissions that this Airlock provides, which a plugin's manifest may
/// require (`requires`): a plugin that requires one Airlock does not provide (a newer plugin on an
/// older Airlock) is refused before it runs instead of failing at its first use of it.
///
/// - `config`: `Plugin.spec.config`, checked against the manifest's `configSchema`, handed to
///   `onLoad`.
/// - `liveConfig`: a new configuration delivered to a running plugin (`onConfigChange`) instead
///   of a rolling restart.
/// - `upgrade`: `onUpgrade {from, to}` with the plugin's storage, and downgrades refused over
///   storage a newer version wrote.
/// - `multiplexed`: one plugin process taking several calls at once (manifest `multiplexed`).
pub const HOST_FEATURES: &[&str] = &["config", "liveConfig", "upgrade", "multiplexed"];

/// Whether this Airlock provides the host feature `name`.
pub fn provides(name: &str) -> bool {
    HOST_FEATURES.contains(&name)
}

/// The plugin SDKs this Airlock knows, with the oldest version of each it still serves: a plugin
/// built with an older one speaks a protocol this Airlock no longer does. An SDK not listed (a
/// third party's) is not checked.
pub const SDKS: &[(&str, &str)] = &[("airlock-sdk", "0.1.0")];

/// The oldest version of the SDK `name` this Airlock serves, if it knows the SDK.
pub fn oldest_sdk(name: &str) -> Option<&'static str> {
    SDKS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// Plugin API versions still served but going away, each with the Airlock release that removes
/// it: a plugin that targets one runs, with a `Deprecated` condition and a Warning Event naming
/// that release. None yet: version 1 is the only one.
pub const DEPRECATED_PLUGIN_API_VERSIONS: &[(u32, &str)] = &[];

/// The Airlock release that removes plugin API version `version`, if `deprecated` (the list to
/// consult; [`DEPRECATED_PLUGIN_API_VERSIONS`] in production) says it is going away.
pub fn removed_in(version: u32, deprecated: &[(u32, &'static str)]) -> Option<&'static str> {
    deprecated
        .iter()
        .find(|(v, _)| *v == version)
        .map(|(_, release)| *release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_sdks_and_deprecations_are_looked_up_by_name() {
        assert!(provides("liveConfig") && !provides("kvWatch") && !provides("LiveConfig"));
        assert_eq!(oldest_sdk("airlock-sdk"), Some("0.1.0"));
        assert_eq!(oldest_sdk("someone-elses-sdk"), None);
        let going = [(1, "0.9.0")];
        assert_eq!(removed_in(1, &going), Some("0.9.0"));
        assert_eq!(removed_in(2, &going), None);
        assert_eq!(removed_in(1, DEPRECATED_PLUGIN_API_VERSIONS), None);
    }
}
