//! The plugin's configuration (`spec.config`, checked) in a ConfigMap its pods mount, where the
//! shim reads it (`airlock-shim run --config-file`) and hands it to the plugin.
//!
//! Two kinds, by what the plugin can take ([`PluginConfig::live`]):
//! - restarted on change (the default): `<plugin>-config-<10 hex of the digest>`, immutable, one
//!   per configuration. The name is in the pod template, so a new configuration is a new
//!   revision rolled out like any other, and a rollback to the last good revision mounts the
//!   configuration it ran with (its ConfigMap is still there: like bundle Secrets they go with the
//!   Plugin).
//! - live (`onConfigChange` declared): `<plugin>-config`, changed in place; the kubelet updates
//!   the mounted file and the shim passes the change to the running plugin without a restart.

use std::collections::BTreeMap;

use airlock_crds::Plugin;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::{PluginConfig, child_name, labels};

/// Key of the configuration in the ConfigMap (and file name in the pod).
pub const CONFIG_KEY: &str = "config.json";

/// Where the ConfigMap is mounted in the plugin container.
pub const CONFIG_DIR: &str = "/var/run/airlock/config";

/// Where `spec.configSecrets` are mounted in the plugin container: one file per secret, named as
/// the plugin knows it (`airlock-shim run --config-secrets-dir`).
pub const SECRETS_DIR: &str = "/var/run/airlock/secrets";

/// `app.kubernetes.io/component` of a configuration ConfigMap: the chart's admission policy lets
/// the operator write only ConfigMaps with this label that a Plugin controls.
pub const CONFIG_COMPONENT: &str = "plugin-config";

/// The ConfigMap's name for `config` of plugin `plugin_name`.
pub fn config_map_name(plugin_name: &str, config: &PluginConfig) -> String {
    let base = format!("{}-config", child_name(plugin_name));
    match config.live {
        true => base,
        false => format!("{base}-{}", &config.digest[..config.digest.len().min(10)]),
    }
}

pub fn config_map(plugin: &Plugin, config: &PluginConfig) -> ConfigMap {
    let mut labels = labels::common(plugin);
    labels.insert(
        "app.kubernetes.io/component".into(),
        CONFIG_COMPONENT.into(),
    );
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(config_map_name(&plugin.name_any(), config)),
            namespace: plugin.namespace(),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                "airlock.dev/config-digest".to_string(),
                format!("sha256:{}", config.digest),
            )])),
            owner_references: Some(labels::owner(plugin)),
            ..Default::default()
        },
        immutable: (!config.live).then_some(true),
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_string(),
            config.json.clone(),
        )])),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::{HELLO, plugin};

    fn config(live: bool) -> PluginConfig {
        PluginConfig {
            json: r#"{"greeting":"hi"}"#.into(),
            digest: "0123456789abcdef".repeat(4),
            live,
        }
    }

    #[test]
    fn a_restarted_plugins_configuration_is_immutable_and_named_by_digest() {
        let cm = config_map(&plugin(HELLO), &config(false));
        assert_eq!(cm.metadata.name.as_deref(), Some("hello-config-0123456789"));
        assert_eq!(cm.immutable, Some(true));
        assert_eq!(
            cm.data.unwrap()[CONFIG_KEY],
            r#"{"greeting":"hi"}"#,
            "the plugin gets the JSON as checked"
        );
        let labels = cm.metadata.labels.unwrap();
        assert_eq!(labels["app.kubernetes.io/component"], CONFIG_COMPONENT);
        assert_eq!(labels["airlock.dev/plugin"], "hello");
        let owner = &cm.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("Plugin", Some(true))
        );
    }

    #[test]
    fn a_live_plugins_configuration_keeps_one_name_and_can_change() {
        let cm = config_map(&plugin(HELLO), &config(true));
        assert_eq!(cm.metadata.name.as_deref(), Some("hello-config"));
        assert_eq!(cm.immutable, None);
    }
}
