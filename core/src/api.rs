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
