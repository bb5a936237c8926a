//! The in-pod runtime of an Airlock plugin, the `airlock-shim` binary. This crate never depends
//! on `kube`: it only sees its bundle, its child process and gRPC. The library exists for the
//! binary and its tests; plugin authors depend on `airlock-sdk`, other crates on `airlock-bundle`
//! and `airlock-tls`.
//!
//! - [`cli`]: the subcommands (`unpack`, `run`, `sandbox-exec`) and their flags;
//! - [`child`]: the plugin process (spawn, supervision, the stdio exchange);
//! - [`sandbox`]: its seccomp filters, the TLS directory hidden with Landlock, limits;
//!   [`reaper`]: orphans, as PID 1;
//! - [`server`]: the gRPC plugin API; [`host`]: the plugin's host calls, forwarded to the router;
//! - [`config`]: the plugin's configuration file, checked against its signed schema and watched;
//! - [`logs`]: the plugin's stderr under a rate limit; [`telemetry`]: the shim's own logs.

// The shim holds the pod's mTLS key next to an untrusted process: every system call it makes goes
// through a safe wrapper (std, nix, seccompiler, landlock), and the plugin's sandbox is applied by
// a re-exec rather than by code between fork and exec.
#![forbid(unsafe_code)]

pub mod child;
pub mod cli;
pub mod config;
pub mod host;
pub mod logs;
pub mod memory;
mod procfs;
pub mod reaper;
pub mod sandbox;
pub mod server;
pub mod telemetry;
