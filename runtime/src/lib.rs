//! Plumbing shared by the two binaries that talk to Kubernetes, the operator (control plane) and
//! the router (data plane), so neither depends on the other:
//!
//! - [`error::StartError`]: why a binary could not start, the failures both binaries share, and
//!   [`exit_code`], how a binary exits once its run ended;
//! - [`kube_client`]: the Kubernetes client with a response timeout and counted requests;
//! - [`metrics`]: the series every such binary exports;
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`telemetry`]: logs to stderr;
//! - [`audit`]: the audit stream;
//! - [`secrets`]: reading Secret values as text;
//! - [`shutdown`]: stop on SIGTERM or SIGINT.

pub mod audit;
pub mod error;
pub mod events;
pub mod http;
pub mod kube_client;
pub mod metrics;
pub mod secrets;
pub mod shutdown;
pub mod telemetry;
pub mod watch;

pub use error::{StartError, exit_code};
