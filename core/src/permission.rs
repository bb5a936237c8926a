//! Permissions a plugin can hold. The same names appear in the signed manifest, in
//! `Plugin.spec.permissions`, in trust levels and in the host API's checks.

crate::vocabulary! {
    pub enum Permission {
        /// Write log lines through the host (rate-limited).
        Log = "log",
        /// Read the plugin's own key-value storage.
        StorageRead = "storage:read",
        /// Write the plugin's own key-value storage.
        StorageWrite = "storage:write",
        /// Read the data documents the host passes to hooks beyond the payload.
        ReadData = "read:data",
        /// Emit events to the host.
        EventsEmit = "events:emit",
        /// Open network connections to the destinations in spec.network.egress.
        NetEgress = "net:egress",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_parse_and_display_agree_for_every_permission() {
        for &p in Permission::ALL {
            let json = serde_json::to_string(&p).unwrap_or_default();
            assert_eq!(json, format!("\"{p}\""));
            assert_eq!(Permission::parse(p.as_str()), Some(p));
        }
        assert_eq!(Permission::parse("Log"), None);
    }
}
