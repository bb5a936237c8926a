//! The hook router: the one gRPC front door host applications call (`airlock.router.v1`).
//!
//! Built like the controller, core first: [`table`] (which plugins can be called, a pure
//! function of Plugins and Services), [`breaker`] (health accounting, pure), [`dispatch`]
//! (invoke, broadcast, pipeline; independent of gRPC and Kubernetes), [`callers`] (who may call:
//! authentication, authorization, per-caller bounds), then the edges: [`grpc`] (the served API
//! and the client of plugin shims) and [`cluster`] (watches, auto-disable).
//!
//! Every router replica serves on its own (no leader): each watches the cluster and keeps its own
//! breakers. An auto-disable is written to the Plugin, so every replica and the controller see it.

pub mod audit;
pub mod breaker;
pub mod callers;
pub mod cluster;
pub mod config;
pub mod dispatch;
pub mod grpc;
pub mod health_check;
pub mod health_report;
pub mod host;
pub mod invoke_check;
pub mod metrics;
pub mod server;
pub mod table;

pub use config::Config;
pub use server::{RouterError, SERVICE_NAME, run};
