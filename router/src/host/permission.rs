//! Which permission each host call needs, and the check every call passes before it runs. The
//! permission names are those of `airlock_crds::Permission`; the call names are the protocol's
//! (`airlock_plugin_shim::protocol::calls`), so a plugin author sees the same words in the
//! manifest, in the stdio protocol and in a denial.

use std::collections::BTreeSet;
use std::fmt;

use airlock_core::Permission;
use airlock_sdk::protocol::calls;

/// A call a plugin makes to its host (one RPC of `airlock.host.v1.Host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostCall {
    Log,
    Get,
    Put,
    Delete,
    List,
    WrittenBy,
    Emit,
}

impl HostCall {
    pub const ALL: [HostCall; 7] = [
        Self::Log,
        Self::Get,
        Self::Put,
        Self::Delete,
        Self::List,
        Self::WrittenBy,
        Self::Emit,
    ];

    /// The call's name in the stdio protocol, in denials, audit records and metric labels:
    /// "log", "storage.get", "storage.put", "storage.delete", "storage.list",
    /// "storage.writtenBy", "emit".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => calls::LOG,
            Self::Get => calls::STORAGE_GET,
            Self::Put => calls::STORAGE_PUT,
            Self::Delete => calls::STORAGE_DELETE,
            Self::List => calls::STORAGE_LIST,
            Self::WrittenBy => calls::STORAGE_WRITTEN_BY,
            Self::Emit => calls::EMIT,
        }
    }

    /// The call named `name` (see [`HostCall::as_str`]); `None` for a name this host does not
    /// know, which the caller answers with UNIMPLEMENTED rather than treating as a broken plugin.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }
}

impl fmt::Display for HostCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The permissions that allow `call`: holding any one of them is enough. Reading storage is
/// allowed by `storage:write` too, since a plugin that may overwrite a key learns nothing new by
/// reading it.
pub fn required(call: HostCall) -> &'static [Permission] {
    match call {
        HostCall::Log => &[Permission::Log],
        HostCall::Get | HostCall::List | HostCall::WrittenBy => {
            &[Permission::StorageRead, Permission::StorageWrite]
        }
        HostCall::Put | HostCall::Delete => &[Permission::StorageWrite],
        HostCall::Emit => &[Permission::EventsEmit],
    }
}

/// Whether a plugin whose effective permissions are `effective` may make `call`.
pub fn check(call: HostCall, effective: &BTreeSet<Permission>) -> Result<(), Denied> {
    if required(call).iter().any(|p| effective.contains(p)) {
        Ok(())
    } else {
        Err(Denied {
            call,
            has: effective.iter().copied().collect(),
        })
    }
}

/// A host call the plugin's effective permissions do not allow. Its Display is what the plugin
/// (and the audit log) sees: the call, the permission it needs, and what the plugin has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub call: HostCall,
    /// The plugin's effective permissions, in their canonical order.
    pub has: Vec<Permission>,
}

impl fmt::Display for Denied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let needed = required(self.call)
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(" or ");
        write!(f, "{} needs the permission {needed}; ", self.call)?;
        if self.has.is_empty() {
            f.write_str("the plugin has no permissions")?;
        } else {
            let has = self
                .has
                .iter()
                .map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            write!(f, "the plugin has {has}")?;
        }
        // Effective = declared in the signed manifest ∩ approved in the Plugin ∩ allowed by the
        // trust level; the fix is on the platform side, not in the plugin's code.
        f.write_str(
            " (to allow it, the plugin's manifest must declare it, Plugin spec.permissions approve it and its trust level allow it)",
        )
    }
}

impl std::error::Error for Denied {}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ps: &[Permission]) -> BTreeSet<Permission> {
        ps.iter().copied().collect()
    }

    #[test]
    fn call_names_are_the_protocol_names_and_parse_back() {
        let names: Vec<&str> = HostCall::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(
            names,
            [
                "log",
                "storage.get",
                "storage.put",
                "storage.delete",
                "storage.list",
                "storage.writtenBy",
                "emit"
            ]
        );
        assert_eq!(names, calls::ALL);
        for call in HostCall::ALL {
            assert_eq!(HostCall::from_name(call.as_str()), Some(call));
        }
        assert_eq!(HostCall::from_name("storage.drop"), None);
        assert_eq!(HostCall::from_name("Log"), None);
    }

    #[test]
    fn each_call_needs_its_permission() {
        use Permission::*;
        let allowed = |call, ps: &[Permission]| check(call, &set(ps)).is_ok();
        assert!(allowed(HostCall::Log, &[Log]));
        assert!(!allowed(
            HostCall::Log,
            &[StorageRead, StorageWrite, EventsEmit]
        ));
        assert!(allowed(HostCall::Emit, &[EventsEmit]));
        assert!(!allowed(HostCall::Emit, &[Log, NetEgress, ReadData]));
        for read in [HostCall::Get, HostCall::List] {
            assert!(allowed(read, &[StorageRead]));
            assert!(allowed(read, &[StorageWrite]), "write includes read");
            assert!(!allowed(read, &[Log, ReadData]));
        }
        for write in [HostCall::Put, HostCall::Delete] {
            assert!(allowed(write, &[StorageWrite]));
            assert!(
                !allowed(write, &[StorageRead]),
                "read does not include write"
            );
        }
        for call in HostCall::ALL {
            assert!(!allowed(call, &[]));
        }
    }

    #[test]
    fn a_denial_names_the_call_the_permission_needed_and_the_plugins_permissions() {
        let err = check(
            HostCall::Put,
            &set(&[Permission::StorageRead, Permission::Log]),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(
                "storage.put needs the permission storage:write; the plugin has log, storage:read"
            ),
            "{text}"
        );

        let text = check(HostCall::List, &BTreeSet::new())
            .unwrap_err()
            .to_string();
        assert!(
            text.starts_with(
                "storage.list needs the permission storage:read or storage:write; the plugin has no permissions"
            ),
            "{text}"
        );
    }
}
