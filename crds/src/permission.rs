//! Permissions a plugin can hold. The same names appear in the signed manifest, in
//! `Plugin.spec.permissions`, in trust levels and in the host API's checks.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
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
    pub const ALL: [Permission; 6] = [
        Self::Log,
        Self::StorageRead,
        Self::StorageWrite,
        Self::ReadData,
        Self::EventsEmit,
        Self::NetEgress,
    ];

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
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
