//! The router's configuration: command-line flags (`airlock-router --help`), built directly by
//! tests.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use clap::builder::RangedU64ValueParser;

use crate::breaker::BreakerConfig;
use crate::dispatch::RouterConfig;
use crate::dispatch::limits::{self, BroadcastLimits, PayloadLimits};

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
    /// Largest payload_json (and pipeline step output) passed to a plugin, in bytes; larger is
    /// refused with INVALID_ARGUMENT. At most the plugin protocol's 1 MiB line less 4 KiB for the
    /// request around it (the default), so every request line stays within what plugins are
    /// promised.
    #[arg(
        long,
        default_value_t = limits::DEFAULT_MAX_BYTES,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=limits::DEFAULT_MAX_BYTES as u64),
    )]
    pub max_payload_bytes: usize,
    /// Deepest nesting of arrays and objects in a payload_json (and pipeline step output) passed to
    /// a plugin; deeper is refused with INVALID_ARGUMENT. At most 126, the most the Rust SDK's
    /// parser takes.
    #[arg(
        long,
        default_value_t = limits::DEFAULT_MAX_DEPTH,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..=limits::MAX_DEPTH as u64),
    )]
    pub max_payload_depth: usize,
    /// Most plugins one Broadcast reaches; more subscribers the caller may call (in the one
    /// namespace a broadcast covers) and the broadcast is refused with FAILED_PRECONDITION before
    /// any plugin is called.
    #[arg(
        long,
        default_value_t = limits::DEFAULT_MAX_SUBSCRIBERS,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..),
    )]
    pub max_broadcast_subscribers: usize,
    /// Most bytes one Broadcast sends: payload bytes × subscribers (each call holds its own copy
    /// until sent); more and the broadcast is refused with FAILED_PRECONDITION. Size it well under
    /// the router's memory limit (the default, 16 MiB, fits a 128 Mi router).
    #[arg(
        long,
        default_value_t = limits::DEFAULT_MAX_BROADCAST_BYTES,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..),
    )]
    pub max_broadcast_bytes: usize,
    /// Audience the callers' ServiceAccount tokens must be issued for (checked with a TokenReview):
    /// `kubectl create token <sa> --audience <this>`, or a projected serviceAccountToken volume
    /// with this audience. A token for another audience (the API server's own included) is refused
    /// with UNAUTHENTICATED.
    #[arg(long, default_value = crate::callers::DEFAULT_AUDIENCE, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub caller_audience: String,
    /// Calls in flight per caller (ServiceAccount) and router replica; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(
        long,
        default_value_t = crate::callers::DEFAULT_MAX_CALLS_PER_CALLER,
        value_parser = RangedU64ValueParser::<usize>::new().range(1..),
    )]
    pub max_calls_per_caller: usize,
    /// Storage writes (put and delete) a plugin may make a minute on this replica; more are
    /// refused with RESOURCE_EXHAUSTED.
    #[arg(
        long,
        default_value_t = crate::host::rate::DEFAULT_STORAGE_WRITES_PER_MINUTE,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub max_storage_writes_per_minute: u32,
    /// Events a plugin may emit a minute on this replica; more are refused with
    /// RESOURCE_EXHAUSTED.
    #[arg(
        long,
        default_value_t = crate::host::rate::DEFAULT_EMITS_PER_MINUTE,
        value_parser = clap::value_parser!(u32).range(1..),
    )]
    pub max_emits_per_minute: u32,
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
    /// Also POST every audit record and plugin event (CloudEvents, JSON) to this http(s) URL;
    /// stdout keeps them either way. Empty: stdout only.
    #[arg(
        long,
        env = "AIRLOCK_AUDIT_SINK_URL",
        default_value = "",
        hide_env_values = true
    )]
    pub audit_sink_url: String,
    /// Seconds the router keeps serving after SIGTERM, reporting NOT_SERVING and not ready, before
    /// it stops taking connections and drains the calls in flight: the time the cluster needs to
    /// take the terminating pod out of the Service's endpoints, so that no caller connects to a
    /// closed port. Keep terminationGracePeriodSeconds above this plus the longest hook timeout.
    #[arg(long, env = "AIRLOCK_SHUTDOWN_DELAY_SECONDS", default_value_t = 5)]
    pub shutdown_delay_seconds: u64,
    /// Route only to the Plugins labelled airlock.dev/shard=<this>, the shard of the operator of
    /// the same release; empty (the default): only those without the label.
    #[arg(long, env = "AIRLOCK_SHARD", default_value = "")]
    pub shard: airlock_core::shard::Shard,
    /// Label the hook latency histogram (airlock_hook_duration_seconds) with each Plugin's
    /// `namespace` and name (`plugin`), so the slow plugin shows. Its cost is 15 series (13
    /// buckets with +Inf, _sum, _count) × hooks called (at most 4) × plugins, per router replica:
    /// 15 × 2 × 1,000 = 30,000 for 1,000 plugins called on two hooks each. false keeps both
    /// labels, empty, so queries still work (15 × hooks series); airlock_hook_invocations_total
    /// stays per plugin either way.
    #[arg(
        long,
        env = "AIRLOCK_METRICS_PER_PLUGIN",
        default_value_t = true,
        action = clap::ArgAction::Set,
    )]
    pub metrics_per_plugin: bool,
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
            payload: PayloadLimits {
                max_bytes: self.max_payload_bytes,
                max_depth: self.max_payload_depth,
            },
            broadcast: BroadcastLimits {
                max_subscribers: self.max_broadcast_subscribers,
                max_bytes: self.max_broadcast_bytes,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, clap::Error> {
        Config::try_parse_from(std::iter::once("airlock-router").chain(args.iter().copied()))
    }

    #[test]
    fn the_limit_flags_default_to_the_router_configs_defaults() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(config.router_config(), RouterConfig::default());
    }

    #[test]
    fn callers_need_a_token_for_the_routers_audience_by_default() {
        let config = parse(&[]).expect("defaults");
        assert_eq!(config.caller_audience, "airlock-router");
        assert_eq!(config.max_calls_per_caller, 64);
        let config =
            parse(&["--caller-audience=shop-router", "--max-calls-per-caller=8"]).expect("valid");
        assert_eq!(
            (config.caller_audience.as_str(), config.max_calls_per_caller),
            ("shop-router", 8)
        );
        for bad in ["--caller-audience=", "--max-calls-per-caller=0"] {
            assert!(parse(&[bad]).is_err(), "{bad} is refused");
        }
    }

    #[test]
    fn the_latency_histogram_is_per_plugin_unless_switched_off() {
        assert!(parse(&[]).expect("defaults").metrics_per_plugin);
        let config = parse(&["--metrics-per-plugin=false"]).expect("valid");
        assert!(!config.metrics_per_plugin);
        assert!(parse(&["--metrics-per-plugin=maybe"]).is_err());
    }

    #[test]
    fn limits_are_read_and_checked_at_start() {
        let config = parse(&[
            "--max-payload-bytes=65536",
            "--max-payload-depth=32",
            "--max-broadcast-subscribers=8",
            "--max-broadcast-bytes=1048576",
        ])
        .expect("valid");
        let rc = config.router_config();
        assert_eq!(
            (rc.payload, rc.broadcast),
            (
                PayloadLimits {
                    max_bytes: 65536,
                    max_depth: 32
                },
                BroadcastLimits {
                    max_subscribers: 8,
                    max_bytes: 1048576
                }
            )
        );
        for bad in [
            "--max-payload-bytes=0",
            // Over the protocol's line limit: plugins could be sent lines they may not read.
            "--max-payload-bytes=1048576",
            "--max-payload-depth=129",
            "--max-broadcast-subscribers=0",
            "--max-broadcast-bytes=0",
        ] {
            assert!(parse(&[bad]).is_err(), "{bad} is refused");
        }
    }
}
