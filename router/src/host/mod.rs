//! The core of the host API (`airlock.host.v1.Host`): the callbacks a plugin makes while it
//! handles an invocation (log, its own key-value storage, emit an event), as pure rules with no
//! Kubernetes and no network in them.
//!
//! - [`permission`]: which permission each call needs, checked before anything else runs.
//! - [`log`]: log levels, message length and the per-plugin rate limit.
//! - [`storage`]: a plugin's key-value store, its limits and its persisted JSON form.
//! - [`event`]: what an emitted event may look like.
//! - [`rate`]: how often a plugin may write its storage and emit.
//!
//! The adapters come on top of this and own no rules: [`service`], the gRPC service (which learns
//! the caller's plugin from its mTLS certificate, calls [`permission::check`] then the matching
//! rule here, and turns a [`HostError`] into a status with [`HostError::code`]), and
//! [`kube_storage`], the Kubernetes persistence of each plugin's [`storage::Store`] (its
//! `PluginStorage` object, written with optimistic concurrency).

pub mod event;
pub mod kube_storage;
pub mod local;
pub mod log;
pub mod permission;
pub mod rate;
pub mod service;
pub mod storage;

// The paths the rest of the router (and its users) name: `host::HostService`,
// `host::KubeStorage`, `host::StorageBackend`, whichever module owns them.
pub use kube_storage::{KubeStorage, StorageBackend};

/// The largest host-call request the router decodes: the largest honest one is a storage value or
/// an event payload (100 KiB each at most) with its key, type and ids. Larger is
/// RESOURCE_EXHAUSTED before any of it is read into a request.
pub const MAX_HOST_MESSAGE_BYTES: usize = 256 * 1024;
pub use permission::{Denied, HostCall};
pub use service::{AuditStream, HostService, RecordSink};

/// Why a host call failed: everything a call can be refused for. The Display is the message the
/// plugin gets; none of them contains a value or payload the plugin sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    #[error(transparent)]
    Denied(#[from] Denied),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error(transparent)]
    Event(#[from] event::EventError),
    #[error(transparent)]
    LogLevel(#[from] log::BadLevel),
}

impl HostError {
    /// The gRPC code of this failure, as `host.proto` documents it per RPC: the one place host
    /// errors map to codes. Sizes and quotas are RESOURCE_EXHAUSTED (the request was well formed,
    /// the plugin is out of room); malformed keys, types, levels and JSON are INVALID_ARGUMENT.
    pub fn code(&self) -> tonic::Code {
        use event::EventError as E;
        use storage::StorageError as S;
        match self {
            Self::Denied(_) => tonic::Code::PermissionDenied,
            Self::Storage(
                S::ValueTooLarge { .. } | S::StorageFull { .. } | S::TooManyKeys { .. },
            )
            | Self::Event(E::PayloadTooLarge { .. }) => tonic::Code::ResourceExhausted,
            Self::Storage(
                S::EmptyKey { .. }
                | S::KeyTooLong { .. }
                | S::KeyControlCharacter { .. }
                | S::NotJson { .. },
            )
            | Self::Event(
                E::EmptyType { .. }
                | E::TypeTooLong { .. }
                | E::TypeCharacter { .. }
                | E::PayloadNotJson { .. },
            )
            | Self::LogLevel(_) => tonic::Code::InvalidArgument,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use tonic::Code;

    use super::storage::{Limits, Store};
    use super::*;

    fn put_error(store: &mut Store, key: &str, value: &str, limits: &Limits) -> HostError {
        store.put(key, value, limits).unwrap_err().into()
    }

    #[test]
    fn each_failure_has_the_code_host_proto_documents() {
        let limits = Limits {
            max_total_bytes: 10,
            max_keys: 1,
            ..Limits::default()
        };
        let mut store = Store::new();
        store.put("a", "1", &limits).unwrap();
        let denied: HostError = permission::check(HostCall::Emit, &BTreeSet::new())
            .unwrap_err()
            .into();
        assert_eq!(denied.code(), Code::PermissionDenied);

        let invalid = [
            put_error(&mut store, "", "1", &limits),
            put_error(&mut store, &"k".repeat(257), "1", &limits),
            put_error(&mut store, "a\tb", "1", &limits),
            put_error(&mut store, "a", "not json", &limits),
            event::check_event("", "1", 100).unwrap_err().into(),
            event::check_event("a b", "1", 100).unwrap_err().into(),
            event::check_event(&"a".repeat(129), "1", 100)
                .unwrap_err()
                .into(),
            event::check_event("t", "{", 100).unwrap_err().into(),
            log::Level::parse("loud").unwrap_err().into(),
        ];
        for e in invalid {
            assert_eq!(e.code(), Code::InvalidArgument, "{e}");
        }

        let exhausted = [
            put_error(&mut store, "a", &"1".repeat(102_401), &limits),
            put_error(&mut store, "a", "1234567890", &limits),
            put_error(&mut store, "b", "1", &limits),
            event::check_event("t", "[1,2]", 4).unwrap_err().into(),
        ];
        for e in exhausted {
            assert_eq!(e.code(), Code::ResourceExhausted, "{e}");
        }
    }

    #[test]
    fn the_message_is_the_underlying_errors() {
        let e: HostError = permission::check(HostCall::Log, &BTreeSet::new())
            .unwrap_err()
            .into();
        assert!(
            e.to_string()
                .starts_with("log needs the permission log; the plugin has no permissions"),
            "{e}"
        );
    }
}
