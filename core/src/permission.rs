//! Permissions a plugin can hold. The same names appear in the signed manifest, in
//! `Plugin.spec.permissions`, in trust levels and in the host API's checks.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub enum Permission {
    /// Write log lines through the host (rate-limited).
    #[serde(rename = "log")]
    Log,
    /// Read the plugin's own key-value storage.
    #[serde(rename = "storage:read")]
    StorageRead,
    /// Write the plugin's own key-value storage.
    #[serde(rename = "storage:write")]
    StorageWrite,
    /// Read the data documents the host passes to hooks beyond the payload.
    #[serde(rename = "read:data")]
    ReadData,
    /// Emit events to the host.
    #[serde(rename = "events:emit")]
    EventsEmit,
    /// Open network connections to the destinations in spec.network.egress.
    #[serde(rename = "net:egress")]
    NetEgress,
}

impl Permission {
    /// Every permission, in documentation order.
    pub const ALL: [Permission; 6] = [
        Self::Log,
        Self::StorageRead,
        Self::StorageWrite,
        Self::ReadData,
        Self::EventsEmit,
        Self::NetEgress,
    ];

    /// The spelling in manifests, specs, denials and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::StorageRead => "storage:read",
            Self::StorageWrite => "storage:write",
            Self::ReadData => "read:data",
            Self::EventsEmit => "events:emit",
            Self::NetEgress => "net:egress",
        }
    }

    /// The permission spelled `text` (exact, case-sensitive).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_parse_and_display_agree_for_every_permission() {
        for p in Permission::ALL {
            let json = serde_json::to_string(&p).unwrap_or_default();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        assert_eq!(Permission::parse("Log"), None);
    }
}
