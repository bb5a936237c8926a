//! The router's configuration: command-line flags (`airlock-router --help`), built directly by
//! tests.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

use crate::breaker::BreakerConfig;
use crate::dispatch::RouterConfig;

/// Airlock hook router: calls plugin hooks on behalf of host applications.
#[derive(Parser, Debug, Clone)]
#[command(version)]
pub struct Config {
    /// Address of the gRPC API (airlock.router.v1.HookRouter, health, reflection).
    #[arg(long, default_value = "0.0.0.0:50050")]
    pub grpc_addr: SocketAddr,
    /// Address of the host API (airlock.host.v1.Host) plugin shims call back on, over mutual TLS
    /// with the router's certificate (needs --tls-secret).
    #[arg(long, default_value = "0.0.0.0:50051")]
    pub host_addr: SocketAddr,
    /// Address of the HTTP endpoints /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Calls in flight per plugin (per router replica); more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, default_value_t = 16)]
    pub max_concurrency: usize,
    /// Consecutive failed calls that open a plugin's circuit breaker.
    #[arg(long, default_value_t = 5)]
    pub breaker_failures: u32,
    /// Seconds an open breaker refuses calls before one trial call.
    #[arg(long, default_value_t = 30)]
    pub breaker_cool_down_seconds: u64,
    /// Consecutive timeouts that auto-disable a plugin.
    #[arg(long, default_value_t = 5)]
    pub disable_after_timeouts: u32,
    /// Crashes within an hour that auto-disable a plugin.
    #[arg(long, default_value_t = 3)]
    pub disable_after_crashes: u32,
    /// Secret (in --namespace) with the router's mTLS client certificate: tls.crt, tls.key and
    /// the operator CA's ca.crt. The operator issues and renews it. Empty: plugins are called in
    /// plain text (only for a shim run by hand during development).
    #[arg(long, default_value = "airlock-router-tls")]
    pub tls_secret: String,
    /// The router's namespace (where --tls-secret is).
    #[arg(long, env = "POD_NAMESPACE", default_value = "airlock-system")]
    pub namespace: String,
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, env = "AIRLOCK_LOG_JSON")]
    pub log_json: bool,
}

impl Config {
    pub fn router_config(&self) -> RouterConfig {
        RouterConfig {
            breaker: BreakerConfig {
                open_after: self.breaker_failures.max(1),
                cool_down: Duration::from_secs(self.breaker_cool_down_seconds),
                disable_after_timeouts: self.disable_after_timeouts.max(1),
                disable_after_crashes: self.disable_after_crashes.max(1),
                ..BreakerConfig::default()
            },
            max_concurrency: self.max_concurrency.max(1),
        }
    }
}
