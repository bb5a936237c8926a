//! Airlock's vocabulary, shared by every crate and free of Kubernetes and gRPC libraries: the
//! words a Plugin's spec, its signed manifest, the router, the shim and the CLI must spell the
//! same way. One definition each:
//!
//! - [`Permission`] and [`Hook`]: what a plugin may do and which hooks it implements (CRD fields,
//!   `plugin.yaml`, trust levels, host-API checks);
//! - [`PluginKey`] and [`identity`]: which plugin, and its mTLS identity;
//! - [`FailureKind`]: what happened to a plugin process on a failed call (the `airlock-failure`
//!   trailer the shim sets and the router reads);
//! - [`grpc::code_name`]: gRPC status codes by their canonical names;
//! - [`api`]: the plugin API versions this Airlock serves;
//! - [`duration`]: the duration spellings the CRDs allow (`200ms`, `2s`);
//! - [`names`]: ports, labels and child-object names the control and data planes agree on;
//! - [`shard`]: which Plugins one Airlock release serves (the `airlock.dev/shard` label);
//! - [`rate::LineBudget`]: the token bucket behind every per-minute line limit;
//! - [`json_depth`]: how deep a JSON payload nests, without parsing it.

pub mod api;
pub mod duration;
pub mod failure;
pub mod grpc;
pub mod hook;
pub mod identity;
pub mod json_depth;
pub mod names;
pub mod permission;
pub mod plugin_key;
pub mod rate;
pub mod shard;
pub mod vocabulary;

pub use failure::FailureKind;
pub use hook::Hook;
pub use permission::Permission;
pub use plugin_key::PluginKey;
