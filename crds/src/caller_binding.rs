//! The `PluginCallerBinding` resource (namespaced): which ServiceAccounts may call which plugins
//! of this namespace, and which of their hooks, through the hook router.
//!
//! The router denies by default: a host application (identified by its ServiceAccount token) may
//! call hook H of Plugin P in namespace N only if a PluginCallerBinding *in namespace N* lists it
//! and matches P and H. A binding speaks only for its own namespace — it has no field that names
//! another namespace's plugins — so whoever may write bindings in N (the namespace's owner, through
//! the `edit`/`admin` aggregation of the chart) decides who calls N's plugins, and a call across
//! namespaces happens only where the *target* namespace grants it.

use kube::{CustomResource, KubeSchema};
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use airlock_core::Hook;

/// What `plugins` and `hooks` use for "every one".
pub const ANY: &str = "*";

/// Grants ServiceAccounts the right to call hooks of this namespace's plugins through the router.
// Two printer columns of the same type repeat `type_ = "string"`, which clippy mistakes for a
// duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "airlock.dev",
    version = "v1alpha1",
    kind = "PluginCallerBinding",
    plural = "plugincallerbindings",
    doc = "Grants workloads (ServiceAccounts) of a namespace the right to call that namespace's plugins through the Airlock router, on the plugins and hooks listed.",
    shortname = "pcb",
    category = "airlock",
    namespaced,
    printcolumn(name = "Plugins", type_ = "string", json_path = ".spec.plugins"),
    printcolumn(name = "Hooks", type_ = "string", json_path = ".spec.hooks"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PluginCallerBindingSpec {
    /// The ServiceAccounts that may call. A caller proves who it is with a token of its
    /// ServiceAccount for the router's audience (`airlock-router` by default).
    #[schemars(length(min = 1, max = 100))]
    pub callers: Vec<CallerSubject>,
    /// Names of Plugins in this namespace the callers may call, or `*` for all of them (also those
    /// created later).
    #[schemars(schema_with = "plugin_selectors")]
    pub plugins: Vec<String>,
    /// Hooks the callers may call on those plugins (onLoad, onUnload, transform, onEvent), or `*`
    /// for all of them.
    #[schemars(schema_with = "hook_selectors")]
    pub hooks: Vec<String>,
}

/// One ServiceAccount allowed to call.
#[skip_serializing_none]
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CallerSubject {
    /// Name of the ServiceAccount.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub service_account: String,
    /// Namespace of the ServiceAccount. Default: the binding's own namespace. Naming another
    /// namespace lets a workload there call this namespace's plugins; it grants nothing in that
    /// other namespace.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub namespace: Option<String>,
}

/// `plugins`: 1–100 Plugin names (DNS labels) or `*`.
fn plugin_selectors(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": 100,
        "items": {
            "type": "string",
            "maxLength": 63,
            "pattern": r"^(\*|[a-z0-9]([-a-z0-9]*[a-z0-9])?)$",
        },
    })
}

/// `hooks`: the hook names of the plugin API (from [`Hook::ALL`], so the list is written once) or
/// `*`.
fn hook_selectors(_: &mut SchemaGenerator) -> Schema {
    let names: Vec<&str> = std::iter::once(ANY)
        .chain(Hook::ALL.iter().map(|h| h.as_str()))
        .collect();
    json_schema!({
        "type": "array",
        "minItems": 1,
        "maxItems": names.len(),
        "items": {"type": "string", "enum": names},
    })
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    use super::*;

    #[test]
    fn a_binding_reads_as_the_docs_write_it() {
        let binding: PluginCallerBinding = serde_yaml::from_str(
            r#"
apiVersion: airlock.dev/v1alpha1
kind: PluginCallerBinding
metadata: {name: frontend, namespace: team-b}
spec:
  callers:
  - serviceAccount: frontend
    namespace: team-a
  - serviceAccount: batch
  plugins: ["*"]
  hooks: [transform, onEvent]
"#,
        )
        .expect("parses");
        assert_eq!(
            binding.spec.callers,
            vec![
                CallerSubject {
                    service_account: "frontend".into(),
                    namespace: Some("team-a".into())
                },
                CallerSubject {
                    service_account: "batch".into(),
                    namespace: None
                },
            ]
        );
        assert_eq!(binding.spec.plugins, ["*"]);
        assert_eq!(binding.spec.hooks, ["transform", "onEvent"]);
    }

    #[test]
    fn the_schema_allows_only_hook_names_or_the_wildcard() {
        let crd = serde_json::to_value(PluginCallerBinding::crd()).expect("serialises");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            spec["properties"]["hooks"]["items"]["enum"],
            serde_json::json!([
                "*",
                "onLoad",
                "onUnload",
                "onConfigChange",
                "onUpgrade",
                "transform",
                "onEvent"
            ])
        );
        assert_eq!(
            spec["required"],
            serde_json::json!(["callers", "hooks", "plugins"])
        );
        assert_eq!(crd["spec"]["scope"], "Namespaced");
    }
}
