//! `make bench` part 3: the cost of the router. The same 1 KiB JSON `transform` (data-formatter)
//! is called directly on the plugin's shim and through the router, sequentially (latency p50/p99)
//! and from 8 concurrent callers (throughput), then a three-plugin pipeline through the router.
//! Prints the ratios; it asserts nothing (numbers depend on the machine).
//!
//! Calls through the router are a host application's: the fixture's ServiceAccount with a token
//! for the router's audience, granted by a PluginCallerBinding (`airlock_e2e::router::Fixture`).
//! So the via-router p50 includes the identity check; the report counts the TokenReviews the
//! router made meanwhile, which shows that the check costs a hash and a cache lookup per call, not
//! a round trip to the API server (issue 12 wants it to add at most 10 % to the p50: compare with
//! the figure in the README from before).

use std::future::Future;
use std::time::{Duration, Instant};

use airlock_e2e::plugins::transform_request;
use airlock_e2e::router::{Fixture, in_fixture};
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use airlock_proto::router::v1::{InvokeRequest, TransformRequest};
use anyhow::{Result, ensure};
use serde_json::json;

/// Sequential calls per path (`BENCH_ROUTER_CALLS`, default 2000; the suite's smoke uses few).
static SEQUENTIAL: std::sync::LazyLock<usize> =
    std::sync::LazyLock::new(|| airlock_e2e::env_count("BENCH_ROUTER_CALLS", 2000));
const PIPELINE_CALLS: usize = 500;
const CONCURRENCY: usize = 8;
/// Each throughput window (`BENCH_ROUTER_SECONDS`, default 10).
static THROUGHPUT_WINDOW: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
    Duration::from_secs(airlock_e2e::env_count("BENCH_ROUTER_SECONDS", 10) as u64)
});

#[tokio::main]
async fn main() -> Result<()> {
    in_fixture("bench-router", &["log", "read:data"], bench).await
}

fn payload() -> String {
    // ~1 KiB of JSON with strings for data-formatter to tidy.
    let words: Vec<String> = (0..60).map(|i| format!("  word{i:02}  ")).collect();
    json!({"name": "  bench  ", "text": words.join(" "), "n": 1}).to_string()
}

struct Stats {
    p50: Duration,
    p99: Duration,
    per_second: f64,
    /// Calls made in all (warm-up, sequential and concurrent).
    calls: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Sequential latency, then throughput from CONCURRENCY callers over THROUGHPUT_WINDOW.
async fn measure<F, Fut>(call: F) -> Result<Stats>
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    for _ in 0..200 {
        call().await?;
    }
    let mut took = Vec::with_capacity(*SEQUENTIAL);
    for _ in 0..*SEQUENTIAL {
        let t = Instant::now();
        call().await?;
        took.push(t.elapsed());
    }
    took.sort();
    let until = Instant::now() + *THROUGHPUT_WINDOW;
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < until {
                    call().await?;
                    n += 1;
                }
                anyhow::Ok(n)
            })
        })
        .collect();
    let mut total = 0;
    for w in workers {
        total += w.await??;
    }
    Ok(Stats {
        p50: percentile(&took, 0.50),
        p99: percentile(&took, 0.99),
        per_second: total as f64 / THROUGHPUT_WINDOW.as_secs_f64(),
        calls: 200 + *SEQUENTIAL as u64 + total,
    })
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

async fn bench(f: &Fixture) -> Result<()> {
    let hook = |prio: i32| json!([{"name": "transform", "timeout": "2s", "priority": prio}]);
    let perms = json!(["read:data", "log"]);
    for (name, prio) in [("fmt-a", 10), ("fmt-b", 20), ("fmt-c", 30)] {
        f.apply(name, "data-formatter", hook(prio), perms.clone(), json!({}))
            .await?;
    }
    f.wait_serving(&["fmt-a", "fmt-b", "fmt-c"], "transform")
        .await?;
    let ns = f.ns.name.clone();

    // Direct: the plugin's Service from the node, as the router reaches it (mutual TLS with the
    // router's identity).
    let router_id = airlock_e2e::plugins::router_identity(&f.client).await?;
    let shim = PluginClient::new(
        airlock_e2e::plugins::shim_channel(&f.client, &ns, "fmt-a", &router_id).await?,
    );
    let shim_cpu = airlock_e2e::floors::cpu_of("airlock-shim");
    let direct = measure(move || {
        let mut shim = shim.clone();
        async move {
            let out = shim.invoke(transform_request(payload(), "bench")).await?;
            ensure!(out.get_ref().output_json.contains("formattedBy"));
            Ok(())
        }
    })
    .await?;
    let shim_cpu = airlock_e2e::floors::cpu_of("airlock-shim").saturating_sub(shim_cpu);

    let reviews_before = token_reviews(f).await?;
    let router_cpu = airlock_e2e::floors::cpu_of("airlock-router");
    let router = f.grpc.clone();
    let ns_one = ns.clone();
    let routed = measure(move || {
        let mut router = router.clone();
        let ns = ns_one.clone();
        async move {
            let out = router
                .invoke(InvokeRequest {
                    plugin: Some(airlock_proto::router::v1::PluginRef {
                        namespace: ns,
                        name: "fmt-a".into(),
                    }),
                    hook: "transform".into(),
                    payload_json: payload(),
                    deadline_ms: 2000,
                    invocation_id: "bench".into(),
                })
                .await?;
            ensure!(out.get_ref().output_json.contains("formattedBy"));
            Ok(())
        }
    })
    .await?;
    let router_cpu = airlock_e2e::floors::cpu_of("airlock-router").saturating_sub(router_cpu);

    let mut router = f.grpc.clone();
    let mut took = Vec::with_capacity(PIPELINE_CALLS);
    for _ in 0..PIPELINE_CALLS {
        let t = Instant::now();
        let out = router
            .transform(TransformRequest {
                payload_json: payload(),
                deadline_ms: 3000,
                invocation_id: "bench-pipeline".into(),
                namespace: ns.clone(),
            })
            .await?
            .into_inner();
        ensure!(out.steps.len() == 3 && out.steps.iter().all(|s| s.code == "OK"));
        took.push(t.elapsed());
    }
    took.sort();
    let reviews = token_reviews(f).await? - reviews_before;
    let floors = floors().await?;

    println!(
        "\nrouter bench: 1 KiB JSON transform (data-formatter), {} sequential calls, then {CONCURRENCY} concurrent callers for {}s",
        *SEQUENTIAL,
        THROUGHPUT_WINDOW.as_secs()
    );
    println!("  {:<22} {:>10} {:>10} {:>14}", "", "p50", "p99", "calls/s");
    for (name, s) in [
        ("floor: bare tonic echo", &floors.echo),
        ("direct to shim", &direct),
        ("via router", &routed),
    ] {
        println!(
            "  {:<22} {:>10} {:>10} {:>14.0}",
            name,
            ms(s.p50),
            ms(s.p99),
            s.per_second
        );
    }
    println!(
        "  {:<22} {:>10} {:>10}",
        "floor: pipe round trip",
        ms(floors.pipe_p50),
        ms(floors.pipe_p99)
    );
    let one_hop = floors.echo.p50 + floors.pipe_p50;
    let two_hops = floors.echo.p50 * 2 + floors.pipe_p50;
    println!(
        "  direct / floor (one gRPC hop + one pipe round trip, {}): x{:.2}; via router / floor \
         (two hops + one pipe round trip, {}): x{:.2} (goal <= x1.5)",
        ms(one_hop),
        direct.p50.as_secs_f64() / one_hop.as_secs_f64(),
        ms(two_hops),
        routed.p50.as_secs_f64() / two_hops.as_secs_f64()
    );
    let per_call = |cpu: Duration, calls: u64| cpu.as_secs_f64() * 1e6 / calls as f64;
    let hop = floors.echo_cpu_per_call.as_secs_f64() * 1e6;
    println!(
        "  router overhead at p50 (via router minus direct): {:.0} us (goal <= 150 us); CPU per \
         call: router {:.0} us (goal <= 60 us; x{:.2} one bare gRPC hop's {hop:.0} us, client \
         and server), shim {:.0} us (x{:.2}) (all replicas and shims on the node, from /proc)",
        (routed.p50.as_secs_f64() - direct.p50.as_secs_f64()) * 1e6,
        per_call(router_cpu, routed.calls),
        per_call(router_cpu, routed.calls) / hop,
        per_call(shim_cpu, direct.calls),
        per_call(shim_cpu, direct.calls) / hop,
    );
    println!(
        "  router/direct: p50 x{:.2}, p99 x{:.2}, throughput x{:.2}",
        routed.p50.as_secs_f64() / direct.p50.as_secs_f64(),
        routed.p99.as_secs_f64() / direct.p99.as_secs_f64(),
        routed.per_second / direct.per_second
    );
    println!(
        "  via-router p50 with caller identity (token and binding checked on every call): {}; \
         TokenReviews the router made during all the routed calls: {reviews:.0} (the rest were \
         answered from its cache)",
        ms(routed.p50)
    );
    println!(
        "  3-plugin pipeline via router ({PIPELINE_CALLS} calls): p50 {}, p99 {} (x{:.2} a single routed call at p50)",
        ms(percentile(&took, 0.50)),
        ms(percentile(&took, 0.99)),
        percentile(&took, 0.50).as_secs_f64() / routed.p50.as_secs_f64()
    );
    io_bound(f).await
}

/// Each call of the I/O-bound plugin sleeps this long.
const IO_SLEEP_MS: u64 = 5;
/// Callers at once: more than 3 pods × 4 processes can take, so every process stays busy, and
/// no more than a router replica lets in flight to one plugin (chart value
/// `router.maxConcurrency`, 16), past which calls are refused at once and refused callers would
/// spin.
const IO_CALLERS: usize = 16;

/// What IO_CALLERS callers got through the router from the I/O-bound plugin in THROUGHPUT_WINDOW.
#[derive(Debug, Default)]
struct Spread {
    per_second: f64,
    /// Answers by pod name.
    by_pod: std::collections::BTreeMap<String, u64>,
    /// Failed calls by gRPC code.
    failed: std::collections::BTreeMap<String, u64>,
}

/// One call of the slow plugin through the router: the pod and process that answered.
async fn slow_call(
    router: &mut airlock_e2e::callers::RouterClient,
    ns: &str,
) -> Result<(String, u64), tonic::Status> {
    let out = router
        .invoke(InvokeRequest {
            plugin: Some(airlock_proto::router::v1::PluginRef {
                namespace: ns.into(),
                name: "slow".into(),
            }),
            hook: "transform".into(),
            payload_json: json!({"mode": "slow", "ms": IO_SLEEP_MS}).to_string(),
            deadline_ms: 2000,
            invocation_id: "bench-io".into(),
        })
        .await?
        .into_inner();
    let v: serde_json::Value = serde_json::from_str(&out.output_json)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    Ok((
        v["host"].as_str().unwrap_or_default().to_string(),
        v["pid"].as_u64().unwrap_or_default(),
    ))
}

/// IO_CALLERS callers for THROUGHPUT_WINDOW; `meanwhile` runs alongside (e.g. deletes a pod).
async fn spread(f: &Fixture, meanwhile: impl Future<Output = Result<()>>) -> Result<Spread> {
    let until = Instant::now() + *THROUGHPUT_WINDOW;
    let workers: Vec<_> = (0..IO_CALLERS)
        .map(|_| {
            let mut router = f.grpc.clone();
            let ns = f.ns().to_string();
            tokio::spawn(async move {
                let mut s = Spread::default();
                while Instant::now() < until {
                    match slow_call(&mut router, &ns).await {
                        Ok((host, _)) => *s.by_pod.entry(host).or_default() += 1,
                        Err(e) => *s.failed.entry(format!("{:?}", e.code())).or_default() += 1,
                    }
                }
                s
            })
        })
        .collect();
    meanwhile.await?;
    let mut all = Spread::default();
    for w in workers {
        let s = w.await?;
        for (k, n) in s.by_pod {
            *all.by_pod.entry(k).or_default() += n;
        }
        for (k, n) in s.failed {
            *all.failed.entry(k).or_default() += n;
        }
    }
    all.per_second = all.by_pod.values().sum::<u64>() as f64 / THROUGHPUT_WINDOW.as_secs_f64();
    Ok(all)
}

/// Waits until `n` calls at once through the router reach `pods` pods and `processes` distinct
/// (pod, pid) pairs: the rollout or scale is done and the router routes to every new endpoint.
async fn wait_spread(f: &Fixture, pods: usize, processes: usize) -> Result<()> {
    let what = format!("{pods} pods and {processes} processes answering through the router");
    airlock_e2e::wait::until(
        &what,
        airlock_e2e::WAIT,
        async || {
            let calls = (0..processes * 3).map(|_| {
                let mut router = f.grpc.clone();
                let ns = f.ns().to_string();
                async move { slow_call(&mut router, &ns).await.ok() }
            });
            let seen: std::collections::BTreeSet<(String, u64)> = futures::future::join_all(calls)
                .await
                .into_iter()
                .flatten()
                .collect();
            let hosts: std::collections::BTreeSet<&String> = seen.iter().map(|(h, _)| h).collect();
            Ok((hosts.len(), seen.len()))
        },
        |(h, p)| *h == pods && *p >= processes,
    )
    .await
    .map(drop)
}

/// The I/O-bound plugin (crash-test in slow mode: each call sleeps IO_SLEEP_MS): calls/s with one
/// process, with `spec.concurrency: 4`, and with 3 replicas of that, the share of each pod, and
/// what a pod deleted under load costs the callers.
async fn io_bound(f: &Fixture) -> Result<()> {
    use airlock_crds::Plugin;
    use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
    // The tests' sandbox caps plugins at 250m of CPU; this bench wants the CPU to be no limit.
    f.sandbox.set_limits(json!({"maxCpu": "1"})).await?;
    let hooks = json!([{"name": "transform", "timeout": "2s"}]);
    let resources = json!({"resources": {"limits": {"cpu": "1", "memory": "64Mi"}}});
    f.apply("slow", "crash-test", hooks, json!(["log"]), resources)
        .await?;
    f.wait_serving(&["slow"], "transform").await?;
    wait_spread(f, 1, 1).await?;
    let one = spread(f, async { Ok(()) }).await?;

    let plugins: Api<Plugin> = f.ns.api();
    let patch = |spec: serde_json::Value| Patch::Merge(json!({"spec": spec}));
    plugins
        .patch(
            "slow",
            &PatchParams::default(),
            &patch(json!({"concurrency": 4})),
        )
        .await?;
    wait_spread(f, 1, 4).await?;
    let four = spread(f, async { Ok(()) }).await?;

    plugins
        .patch_scale(
            "slow",
            &PatchParams::default(),
            &patch(json!({"replicas": 3})),
        )
        .await?;
    wait_spread(f, 3, 12).await?;
    let three = spread(f, async { Ok(()) }).await?;

    // A pod deleted in the middle of a window.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = f.ns.api();
    let victim = pods
        .list(&ListParams::default().labels("airlock.dev/plugin=slow"))
        .await?
        .items
        .into_iter()
        .find_map(|p| p.metadata.name)
        .ok_or_else(|| anyhow::anyhow!("no pod of the slow plugin"))?;
    let delete = async {
        tokio::time::sleep(*THROUGHPUT_WINDOW / 2).await;
        pods.delete(&victim, &DeleteParams::default()).await?;
        Ok(())
    };
    let deleted = spread(f, delete).await?;

    println!(
        "\nI/O-bound plugin (each call sleeps {IO_SLEEP_MS} ms; crash-test slow mode, CPU limit 1), \
         {IO_CALLERS} callers through the router for {}s each",
        THROUGHPUT_WINDOW.as_secs()
    );
    let share = |s: &Spread| {
        let mean = s.by_pod.values().sum::<u64>() as f64 / s.by_pod.len().max(1) as f64;
        s.by_pod
            .values()
            .map(|n| format!("{:+.0}%", (*n as f64 / mean - 1.0) * 100.0))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for (name, s) in [
        ("1 pod, concurrency 1", &one),
        ("1 pod, concurrency 4", &four),
        ("3 pods, concurrency 4", &three),
    ] {
        println!(
            "  {name:<22} {:>8.0} calls/s  pods {}  share vs mean: {}  failed: {:?}",
            s.per_second,
            s.by_pod.len(),
            share(s),
            s.failed
        );
    }
    println!(
        "  concurrency 4 / 1: x{:.2} (goal >= x3.5); 3 pods / 1 pod at concurrency 4: x{:.2} \
         (goal >= x3, each pod within 15% of the mean share)",
        four.per_second / one.per_second,
        three.per_second / four.per_second
    );
    println!(
        "  a pod deleted mid-window (3 pods, concurrency 4): {:.0} calls/s, failed calls {:?} \
         (at most 4 were in flight on it)",
        deleted.per_second, deleted.failed
    );
    Ok(())
}

struct Floors {
    echo: Stats,
    /// CPU of one bare gRPC call, client and server together.
    echo_cpu_per_call: Duration,
    pipe_p50: Duration,
    pipe_p99: Duration,
}

/// The floors of this machine, measured like the paths above: a bare tonic echo (one gRPC hop)
/// and a pipe round trip to a child that does nothing.
async fn floors() -> Result<Floors> {
    let echo = airlock_e2e::floors::tonic_echo().await?;
    // The echo's client and server both run in this process: its CPU is one hop's, both ends.
    let cpu = airlock_e2e::floors::cpu_of_self();
    let echo = measure(move || {
        let mut echo = echo.clone();
        async move {
            let out = echo.invoke(transform_request(payload(), "floor")).await?;
            ensure!(!out.get_ref().output_json.is_empty());
            Ok(())
        }
    })
    .await?;
    let echo_cpu = airlock_e2e::floors::cpu_of_self().saturating_sub(cpu);
    let mut pipe = airlock_e2e::floors::PipeEcho::start()?;
    let line = payload();
    for _ in 0..200 {
        pipe.round_trip(&line).await?;
    }
    let mut took = Vec::with_capacity(*SEQUENTIAL);
    for _ in 0..*SEQUENTIAL {
        took.push(pipe.round_trip(&line).await?);
    }
    took.sort();
    Ok(Floors {
        echo_cpu_per_call: echo_cpu / u32::try_from(echo.calls).unwrap_or(u32::MAX).max(1),
        echo,
        pipe_p50: percentile(&took, 0.50),
        pipe_p99: percentile(&took, 0.99),
    })
}

/// TokenReviews the router replicas made so far (all results).
async fn token_reviews(f: &Fixture) -> Result<f64> {
    let metrics = airlock_e2e::router::metrics(&f.client).await?;
    Ok(airlock_e2e::router::counter_sum(
        &metrics,
        "airlock_router_token_reviews_total",
    ))
}
