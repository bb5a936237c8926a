//! The hooks a plugin can implement (plugin API version 1): the same names in `plugin.yaml`,
//! `Plugin.spec.hooks[].name`, the stdio protocol and the router's API.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Hook {
    /// Called once when the plugin starts.
    #[serde(rename = "onLoad")]
    OnLoad,
    /// Called once before the plugin stops.
    #[serde(rename = "onUnload")]
    OnUnload,
    /// Transforms a JSON document; plugins run as a pipeline in priority order.
    #[serde(rename = "transform")]
    Transform,
    /// Receives an event broadcast to every subscribed plugin.
    #[serde(rename = "onEvent")]
    OnEvent,
}

impl Hook {
    /// Every hook, in documentation order.
    pub const ALL: [Hook; 4] = [Self::OnLoad, Self::OnUnload, Self::Transform, Self::OnEvent];

    /// The spelling in manifests, specs and calls.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnLoad => "onLoad",
            Self::OnUnload => "onUnload",
            Self::Transform => "transform",
            Self::OnEvent => "onEvent",
        }
    }

    /// The hook spelled `text` (exact, case-sensitive).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == text)
    }
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_parse_and_display_agree_for_every_hook() {
        for h in Hook::ALL {
            assert_eq!(
                serde_json::to_string(&h).unwrap_or_default(),
                format!("\"{h}\"")
            );
            assert_eq!(Hook::parse(h.as_str()), Some(h));
        }
        assert_eq!(Hook::parse("onSave"), None);
    }
}
