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

const SEQUENTIAL: usize = 2000;
const PIPELINE_CALLS: usize = 500;
const CONCURRENCY: usize = 8;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(10);

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
    let mut took = Vec::with_capacity(SEQUENTIAL);
    for _ in 0..SEQUENTIAL {
        let t = Instant::now();
        call().await?;
        took.push(t.elapsed());
    }
    took.sort();
    let until = Instant::now() + THROUGHPUT_WINDOW;
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
    let direct = measure(move || {
        let mut shim = shim.clone();
        async move {
            let out = shim.invoke(transform_request(payload(), "bench")).await?;
            ensure!(out.get_ref().output_json.contains("formattedBy"));
            Ok(())
        }
    })
    .await?;

    let reviews_before = token_reviews(f).await?;
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

    println!(
        "\nrouter bench: 1 KiB JSON transform (data-formatter), {SEQUENTIAL} sequential calls, then {CONCURRENCY} concurrent callers for {}s",
        THROUGHPUT_WINDOW.as_secs()
    );
    println!("  {:<14} {:>10} {:>10} {:>14}", "", "p50", "p99", "calls/s");
    for (name, s) in [("direct to shim", &direct), ("via router", &routed)] {
        println!(
            "  {:<14} {:>10} {:>10} {:>14.0}",
            name,
            ms(s.p50),
            ms(s.p99),
            s.per_second
        );
    }
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
    Ok(())
}

/// TokenReviews the router replicas made so far (all results).
async fn token_reviews(f: &Fixture) -> Result<f64> {
    let metrics = airlock_e2e::router::metrics(&f.client).await?;
    Ok(airlock_e2e::router::counter_sum(
        &metrics,
        "airlock_router_token_reviews_total",
    ))
}
