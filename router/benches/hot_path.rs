//! `make bench` part 2b: the router's own cost per call, in one process with no cluster and no
//! network but loopback, so that a profiler sees only Airlock's code and the gRPC stack it uses.
//!
//! Three paths, each N sequential calls of a 1 KiB JSON payload (`BENCH_HOT_PATH_CALLS`, default
//! 20,000), timed (p50) and charged the process's CPU time (user + system, `/proc/self/stat`):
//! - **floor**: a bare tonic client calling an echo `airlock.plugin.v1.Plugin` server (one gRPC
//!   hop; the same services and codecs the router and the shim use);
//! - **router**: a HookRouter client with a caller's token → the router's service as the binary
//!   serves it (admission from the headers, the token checked against the cache, the binding, the
//!   route table, breaker, limits, metrics, the span record) → its [`GrpcCaller`] → the same echo
//!   server (two hops);
//! - the difference, per call: the router's CPU and latency beyond its two hops' floor.
//!
//! Plain text on both hops (the cluster's router → shim hop is mutual TLS: the `router-bench` of
//! `make bench` measures that). Prints, asserts nothing. Run under `perf record` to see where the
//! router's own microseconds go (`e2e/bench.sh` prints the command).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use airlock_core::PluginKey;
use airlock_crds::plugin::FailurePolicy;
use airlock_proto::plugin::v1 as plugin;
use airlock_proto::router::v1 as router_api;
use airlock_router::callers::review::ReviewUnavailable;
use airlock_router::callers::{Bindings, Gate, TokenReviewer};
use airlock_router::dispatch::{Disabler, Router, RouterConfig};
use airlock_router::grpc::GrpcCaller;
use airlock_router::metrics::Metrics;
use airlock_router::table::{HookRoute, Route, RouteTable};
use futures::future::BoxFuture;
use k8s_openapi::api::authentication::v1::{TokenReviewStatus, UserInfo};
use tonic::{Request, Response, Status};

/// A ServiceAccount token for the audience airlock-router that expires in 2100: passes the
/// router's local pre-check; [`Reviewer`] accepts it once (then it is cached, as in a cluster).
const TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiYWlybG9jay1yb3V0ZXIiXSwiZXhwIjo0MTAyNDQ0ODAwLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YTpmZSJ9.c2ln";
const AUDIENCE: &str = "airlock-router";

struct Reviewer;

impl TokenReviewer for Reviewer {
    fn review<'a>(
        &'a self,
        _token: &'a str,
        audience: &'a str,
    ) -> BoxFuture<'a, Result<TokenReviewStatus, ReviewUnavailable>> {
        Box::pin(async move {
            Ok(TokenReviewStatus {
                authenticated: Some(true),
                audiences: Some(vec![audience.to_string()]),
                user: Some(UserInfo {
                    username: Some("system:serviceaccount:a:fe".into()),
                    ..UserInfo::default()
                }),
                error: None,
            })
        })
    }
}

struct NoDisable;

impl Disabler for NoDisable {
    fn disable(&self, _: &Route, _: &str) {}
    fn health(
        &self,
        _: &airlock_core::PluginKey,
        _: &str,
        _: airlock_router::health_report::HealthChange,
    ) {
    }
}

/// The shim's side of one hop, without the plugin process: answers with the payload.
struct Echo;

#[tonic::async_trait]
impl plugin::plugin_server::Plugin for Echo {
    async fn handshake(
        &self,
        _: Request<plugin::HandshakeRequest>,
    ) -> Result<Response<plugin::HandshakeResponse>, Status> {
        Err(Status::unimplemented("not measured"))
    }

    async fn invoke(
        &self,
        request: Request<plugin::InvokeRequest>,
    ) -> Result<Response<plugin::InvokeResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(plugin::InvokeResponse {
            output_json: r.payload_json,
            duration_ms: 0,
            invocation_id: r.invocation_id,
        }))
    }
}

/// CPU time of this process so far (user + system), from `/proc/self/stat`.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) end with ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the state field here.
    let hz = 100; // USER_HZ on Linux.
    Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz)
}

fn payload() -> String {
    let words: Vec<String> = (0..60).map(|i| format!("  word{i:02}  ")).collect();
    serde_json::json!({"name": "  bench  ", "text": words.join(" "), "n": 1}).to_string()
}

type Error = Box<dyn std::error::Error + Send + Sync>;

/// p50 of the calls' latencies and CPU per call over `n` sequential calls of `call` (after
/// `n / 10` calls of warm-up).
async fn measure<F, Fut>(n: usize, mut call: F) -> Result<(Duration, Duration), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Status>>,
{
    for _ in 0..n / 10 {
        call().await?;
    }
    let mut took = Vec::with_capacity(n);
    let cpu0 = cpu_time();
    for _ in 0..n {
        let t = Instant::now();
        call().await?;
        took.push(t.elapsed());
    }
    let cpu = cpu_time().saturating_sub(cpu0);
    took.sort();
    Ok((took[n / 2], cpu / n as u32))
}

/// Accepted connections with TCP_NODELAY, as the shim and the router binary serve them (Nagle
/// would hold each answer's last small write for the client's delayed ACK, ≈ 40 ms a call).
fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

async fn serve_echo() -> Result<String, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(plugin::plugin_server::PluginServer::new(Echo))
            .serve_with_incoming(incoming(listener)),
    );
    Ok(addr)
}

/// The router as the binary serves it (its gRPC server, the admission layer and the service),
/// with one plugin `a/echo` whose only pod is the echo server at `shim`.
async fn serve_router(shim: &str) -> Result<String, Error> {
    let metrics = Metrics::new()?;
    let router = Arc::new(Router::new(
        Arc::new(GrpcCaller::plain()),
        Arc::new(NoDisable),
        RouterConfig::default(),
        metrics.clone(),
    ));
    router.update(RouteTable::from_routes([Route {
        plugin: PluginKey::new("a", "echo"),
        uid: "uid-echo".into(),
        version: "1.0.0".into(),
        endpoints: vec![shim.to_string()],
        hooks: BTreeMap::from([(
            airlock_core::Hook::Transform,
            HookRoute {
                timeout: Duration::from_secs(2),
                failure_policy: FailurePolicy::Fail,
                priority: 100,
            },
        )]),
        auto_disable: None,
        verified: Vec::new(),
    }]));
    let gate = Arc::new(Gate::new(
        Arc::new(Reviewer),
        AUDIENCE.into(),
        64,
        metrics,
        Arc::new(|_: &serde_json::Value| {}),
    ));
    let binding: airlock_crds::PluginCallerBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "PluginCallerBinding",
        "metadata": {"name": "grant", "namespace": "a"},
        "spec": {"callers": [{"serviceAccount": "fe"}], "plugins": ["*"], "hooks": ["*"]}
    }))?;
    gate.update_bindings(Bindings::new([&binding]));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    let service = airlock_router::grpc::hook_router(router, gate, 1 << 20);
    tokio::spawn(
        airlock_router::server::grpc_server()
            .add_service(service)
            .serve_with_incoming(incoming(listener)),
    );
    Ok(addr)
}

/// How the process logs (`BENCH_HOT_PATH_LOG`): what the router binary does (`background`, the
/// default: JSON lines written by a background thread), what it did before (`blocking`: each line
/// written to stderr by the thread that logs) or no subscriber at all (`none`). The router logs a
/// span record per call, so this is part of its hot path. Lines go to stderr: redirect it.
fn init_logs() -> (String, Option<airlock_runtime::telemetry::LogGuard>) {
    let mode = std::env::var("BENCH_HOT_PATH_LOG").unwrap_or_else(|_| "background".into());
    let guard = match mode.as_str() {
        "none" => None,
        "blocking" => {
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
                .with_writer(std::io::stderr)
                .json()
                .init();
            None
        }
        _ => Some(airlock_runtime::telemetry::init_tracing(
            true,
            "airlock-router-bench",
        )),
    };
    (mode, guard)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let (logs, _guard) = init_logs();
    // `cargo bench` passes --bench; nothing else is read from the command line.
    let n: usize = std::env::var("BENCH_HOT_PATH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(20_000);
    let shim = serve_echo().await?;
    let router = serve_router(&shim).await?;
    let payload = payload();

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{shim}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let echo = plugin::plugin_client::PluginClient::new(channel);
    let (floor_p50, floor_cpu) = measure(n, || {
        let mut echo = echo.clone();
        let payload = payload.clone();
        async move {
            echo.invoke(plugin::InvokeRequest {
                hook: "transform".into(),
                payload_json: payload,
                deadline_ms: 2000,
                invocation_id: "bench".into(),
            })
            .await
            .map(drop)
        }
    })
    .await?;

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{router}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {TOKEN}").parse()?;
    let client = router_api::hook_router_client::HookRouterClient::with_interceptor(
        channel,
        move |mut r: Request<()>| {
            r.metadata_mut().insert("authorization", bearer.clone());
            Ok(r)
        },
    );
    let (router_p50, router_cpu) = measure(n, || {
        let mut client = client.clone();
        let payload = payload.clone();
        async move {
            client
                .invoke(router_api::InvokeRequest {
                    plugin: Some(router_api::PluginRef {
                        namespace: "a".into(),
                        name: "echo".into(),
                    }),
                    hook: "transform".into(),
                    payload_json: payload,
                    deadline_ms: 0,
                    invocation_id: String::new(),
                })
                .await
                .map(drop)
        }
    })
    .await?;

    let micros = |d: Duration| d.as_secs_f64() * 1e6;
    let own_cpu = micros(router_cpu) - 2.0 * micros(floor_cpu);
    let own_latency = micros(router_p50) - 2.0 * micros(floor_p50);
    println!(
        "\n== airlock router hot path, in one process ({n} sequential calls, 1 KiB, plain text, logs: {logs}) ==\n\
         floor: one bare gRPC hop       p50 {:>7.1} µs   CPU {:>7.1} µs per call\n\
         through the router (2 hops)    p50 {:>7.1} µs   CPU {:>7.1} µs per call\n\
         the router beyond its 2 hops   p50 {own_latency:>7.1} µs   CPU {own_cpu:>7.1} µs per call \
         (x{:.2} the floor's CPU for the whole path)\n",
        micros(floor_p50),
        micros(floor_cpu),
        micros(router_p50),
        micros(router_cpu),
        micros(router_cpu) / micros(floor_cpu).max(f64::MIN_POSITIVE),
    );
    Ok(())
}
