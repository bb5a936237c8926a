//! The in-pod runtime of an Airlock plugin (`airlock-shim`) and the SDK plugin authors link.
//! This crate never depends on `kube`: it only sees its bundle, its child process and gRPC.
//!
//! - [`protocol`]: the newline-delimited JSON spoken with the plugin process (always built).
//! - [`sdk`]: a plugin's side of that protocol in Rust (always built; `serde_json` only).
//! - With the default `runtime` feature, the shim itself: [`manifest`] (`plugin.yaml`),
//!   [`bundle`] (safe unpacking), [`child`] (the plugin process), [`sandbox`] (its seccomp filter and limits), [`reaper`] (orphans, as PID 1), [`server`] (gRPC),
//!   [`host`] (the plugin's host calls, forwarded to the router) and [`cli`].

pub mod protocol;
pub mod sdk;

#[cfg(feature = "runtime")]
pub mod bundle;
#[cfg(feature = "runtime")]
pub mod child;
#[cfg(feature = "runtime")]
pub mod cli;
#[cfg(feature = "runtime")]
pub mod host;
#[cfg(feature = "runtime")]
pub mod logs;
#[cfg(feature = "runtime")]
pub mod manifest;
#[cfg(feature = "runtime")]
pub mod reaper;
#[cfg(feature = "runtime")]
pub mod sandbox;
#[cfg(feature = "runtime")]
pub mod server;
#[cfg(feature = "runtime")]
pub mod signing;
#[cfg(feature = "runtime")]
pub mod telemetry;
#[cfg(feature = "runtime")]
pub mod tls;
