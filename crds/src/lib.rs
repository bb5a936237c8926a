//! Types of Airlock's custom resources (`Plugin`, `PluginTrustPolicy`, `PluginStorage`,
//! `PluginCallerBinding`) in the `airlock.dev` API
//! group, their schemas and the pure validation the controller and the API server share.
//!
//! Owns: the CRD schema. Generated YAML is written to `charts/airlock/crds/` by `crdgen`.

/// The API group of every Airlock resource.
pub const API_GROUP: &str = "airlock.dev";
/// The served and stored version of the Airlock resources.
pub const API_VERSION: &str = "v1alpha1";

pub mod caller_binding;
pub mod catalog;
pub mod generate;
pub mod plugin;
pub mod reference;
pub mod storage;
pub mod trust_policy;

pub use airlock_core::{Hook, Permission};
pub use caller_binding::{CallerSubject, PluginCallerBinding, PluginCallerBindingSpec};
pub use catalog::{CatalogKey, PluginCatalog, PluginCatalogSpec};
pub use plugin::{Plugin, PluginSpec, PluginStatus};
pub use storage::{PluginStorage, PluginStorageSpec, PluginStorageStatus};
pub use trust_policy::{PluginTrustPolicy, PluginTrustPolicySpec, TrustLevel};
