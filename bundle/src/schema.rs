//! The JSON Schema of `plugin.yaml`, for editors (`# yaml-language-server: $schema=...`): made
//! from [`PluginYaml`], whose fields mirror what [`crate::Manifest::parse`] accepts, with the hook,
//! permission and API-version lists taken from `airlock_core` (one list for the parser and the
//! schema). `bundle/tests/plugin_schema.rs` keeps the committed file, the parser's fields and the
//! examples in step with it.

use airlock_core::api::SUPPORTED_PLUGIN_API_VERSIONS;
use airlock_core::{Hook, Permission};
use schemars::JsonSchema;
use serde_json::{Value, json};

/// Where the schema is committed, from the workspace root.
pub const SCHEMA_FILE: &str = "sdk/plugin.schema.json";

/// `plugin.yaml`: the signed manifest at the root of a plugin bundle.
#[allow(dead_code)] // Only its schema is used; the parser reads the YAML itself.
#[derive(JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(
    title = "plugin.yaml",
    description = "The signed manifest at the root of an Airlock plugin bundle (sdk/PROTOCOL.md)."
)]
struct PluginYaml {
    /// The plugin's name: a DNS label (lowercase letters, digits and `-`, at most 63).
    #[schemars(regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"), length(max = 63))]
    name: String,
    /// The plugin's version, a semantic version (1.2.3). Airlock refuses a downgrade below the
    /// version that last wrote the plugin's storage.
    version: String,
    /// The plugin API version the plugin targets.
    api_version: u32,
    /// The hooks the plugin implements, each once.
    hooks: Vec<String>,
    /// The permissions the plugin asks for, each once; a Plugin's spec.permissions and its trust
    /// level decide which it gets.
    #[serde(default)]
    permissions: Vec<String>,
    /// The command that starts the plugin process: a program (looked up in PATH, or relative to
    /// the bundle directory when it has a `/`) and its arguments.
    #[schemars(length(min = 1))]
    entry_point: Vec<String>,
    /// Binds the bundle to one image: `sha256:` and 64 lowercase hex digits.
    #[schemars(regex(pattern = r"^sha256:[0-9a-f]{64}$"))]
    image_digest: Option<String>,
    /// One process takes several calls at once and answers them by id (default false).
    multiplexed: Option<bool>,
    /// The JSON Schema a Plugin's spec.config must match.
    config_schema: Option<serde_json::Map<String, Value>>,
    /// What the plugin cannot run without: permissions it declares, and host features
    /// (config, liveConfig, upgrade, multiplexed).
    #[schemars(length(max = 16))]
    requires: Option<Vec<String>>,
    /// The SDK the plugin was built with.
    sdk: Option<SdkYaml>,
}

/// The SDK the plugin was built with.
#[allow(dead_code)]
#[derive(JsonSchema)]
#[serde(deny_unknown_fields)]
struct SdkYaml {
    /// The SDK's name, e.g. airlock-sdk.
    name: String,
    /// Its version, a semantic version.
    version: String,
}

/// The schema, as committed in [`SCHEMA_FILE`].
pub fn plugin_yaml_schema() -> Value {
    let mut schema = serde_json::to_value(schemars::schema_for!(PluginYaml)).unwrap_or_default();
    let names = |items: Vec<&str>| Value::from(items);
    let properties = &mut schema["properties"];
    properties["hooks"]["items"] =
        json!({"enum": names(Hook::ALL.iter().map(|h| h.as_str()).collect())});
    properties["hooks"]["uniqueItems"] = json!(true);
    properties["permissions"]["items"] =
        json!({"enum": names(Permission::ALL.iter().map(|p| p.as_str()).collect())});
    properties["permissions"]["uniqueItems"] = json!(true);
    properties["apiVersion"]["enum"] = json!(SUPPORTED_PLUGIN_API_VERSIONS);
    properties["requires"]["uniqueItems"] = json!(true);
    schema
}
