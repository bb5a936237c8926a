//! The hooks a plugin can implement (plugin API version 1): the same names in `plugin.yaml`,
//! `Plugin.spec.hooks[].name`, the stdio protocol and the router's API.

crate::vocabulary! {
    pub enum Hook {
        /// Called once when the plugin starts.
        OnLoad = "onLoad",
        /// Called once before the plugin stops.
        OnUnload = "onUnload",
        /// Called with the new `spec.config` when it changes, instead of a restart (the plugin
        /// declares it when it can take a new configuration while running).
        OnConfigChange = "onConfigChange",
        /// Called once per pod of a new version, with `{from, to}`, when the storage was last
        /// written by an older version: the plugin migrates its data (its host calls are open).
        OnUpgrade = "onUpgrade",
        /// Transforms a JSON document; plugins run as a pipeline in priority order.
        Transform = "transform",
        /// Receives an event broadcast to every subscribed plugin.
        OnEvent = "onEvent",
    }
}

impl Hook {
    /// The plugin's lifecycle (start, configuration, upgrade, stop): its shim calls these and nobody else.
    /// A caller that could send `onConfigChange` would configure the plugin past the Plugin's
    /// checked `spec.config`; one that could send `onLoad`/`onUnload` would reset its state.
    pub fn is_lifecycle(self) -> bool {
        matches!(
            self,
            Hook::OnLoad | Hook::OnUnload | Hook::OnConfigChange | Hook::OnUpgrade
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_parse_and_display_agree_for_every_hook() {
        for &h in Hook::ALL {
            assert_eq!(
                serde_json::to_string(&h).unwrap_or_default(),
                format!("\"{h}\"")
            );
            assert_eq!(Hook::parse(h.as_str()), Some(h));
        }
        assert_eq!(Hook::parse("onSave"), None);
    }
}
