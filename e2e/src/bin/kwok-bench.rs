//! `make bench` part 5: the control plane at 10,000 Plugins (`BENCH_KWOK_PLUGINS`, default
//! 10000) in 100 namespaces (`BENCH_KWOK_NAMESPACES`), every one enabled, its pods "running" on
//! KWOK's fake nodes (`airlock_e2e::kwok`: no container starts; the API server, scheduler,
//! controllers and Airlock are the real ones). It prints the time until every Plugin is Active,
//! the operator's API requests and writes per Plugin, its API writes per minute at steady state
//! against the same operator idle before the Plugins existed (goal: no more than idle, i.e. the
//! lease renewals), the operator's resident memory and CPU, and each router replica's memory with
//! every route loaded. It asserts nothing: numbers depend on the machine.

use std::time::{Duration, Instant};

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_e2e::TestNamespace;
use airlock_e2e::install::images_env;
use airlock_e2e::kwok::Kwok;
use airlock_e2e::operator_metrics::{Counts, env_number, leader_counts};
use airlock_e2e::plugins::phase;
use airlock_e2e::router::metrics as router_metrics;
use airlock_e2e::sandbox::put_bundle;
use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

/// Parallel creators, as in the controller bench.
const CREATORS: usize = 8;
/// Pods per fake node: the bench makes as many nodes as that needs (a real node's limit here is
/// 250 too).
const PODS_PER_NODE: usize = 250;
/// The longest the Plugins may take to become Active before the bench gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(3600);
/// Label of the bench's namespaces and Plugins (value: the run's suffix).
const BENCH_LABEL: &str = "airlock.dev/kwok-bench";

/// What the bench was asked for.
#[derive(Clone, Copy, Debug)]
struct Size {
    plugins: usize,
    namespaces: usize,
    steady: Duration,
}

#[tokio::main]
async fn main() -> Result<()> {
    let size = Size {
        plugins: env_number("BENCH_KWOK_PLUGINS", 10_000)? as usize,
        namespaces: env_number("BENCH_KWOK_NAMESPACES", 100)?.max(1) as usize,
        steady: Duration::from_secs(env_number("BENCH_STEADY_SECONDS", 60)?),
    };
    if size.plugins == 0 {
        return Ok(());
    }
    airlock_e2e::install::ensure_installed().await?;
    let client = airlock_e2e::client().await?;
    let nodes = size.plugins.div_ceil(PODS_PER_NODE);
    eprintln!("starting kwok with {nodes} fake nodes");
    let kwok = Kwok::start(&client, nodes, PODS_PER_NODE as u32).await?;
    let suffix = airlock_e2e::unique_suffix();
    let mut namespaces = Vec::new();
    // Interrupted (Ctrl-C, or SIGTERM from `timeout`): clean up all the same — a thousand
    // Plugins left behind keep the API server and kube-router busy for whatever runs next.
    let result = tokio::select! {
        r = bench(&client, size, &suffix, &mut namespaces) => r,
        _ = interrupted() => Err(anyhow::anyhow!("interrupted; cleaning up")),
    };
    if result.is_err() {
        eprintln!("{}", kwok.log_tail(40));
    }
    let cleanup = teardown(&client, &suffix, &namespaces).await;
    let stopped = kwok.stop().await;
    result.and(cleanup).and(stopped)
}

/// SIGINT or SIGTERM.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        // No handler: never interrupted from here (the signal's default action applies).
        _ => std::future::pending().await,
    }
}

async fn bench(
    client: &Client,
    size: Size,
    suffix: &str,
    namespaces: &mut Vec<TestNamespace>,
) -> Result<()> {
    let policy = policy_name(suffix);
    Api::<airlock_crds::PluginTrustPolicy>::all(client.clone())
        .patch(
            &policy,
            &PatchParams::apply("airlock-bench").force(),
            &Patch::Apply(&json!({
                "apiVersion": "airlock.dev/v1alpha1",
                "kind": "PluginTrustPolicy",
                "metadata": {"name": policy},
                "spec": {
                    "keys": [],
                    "namespaces": {"matchLabels": {BENCH_LABEL: suffix}},
                    "trustLevels": {"Untrusted": {
                        "allowUnsigned": true, "maxMemory": "64Mi", "maxCpu": "250m",
                        "maxTimeout": "2s", "permissions": ["log"]
                    }}
                }
            })),
        )
        .await
        .context("applying the bench's trust policy")?;

    eprintln!(
        "creating {} namespaces with the hello bundle",
        size.namespaces
    );
    let bundle = std::fs::read(images_env("AIRLOCK_HELLO_BUNDLE")?)?;
    let labels = [
        (BENCH_LABEL, suffix),
        ("pod-security.kubernetes.io/enforce", "restricted"),
        ("pod-security.kubernetes.io/enforce-version", "latest"),
    ];
    for _ in 0..size.namespaces {
        let ns = TestNamespace::create_annotated(
            client,
            "kwok",
            &labels,
            &Kwok::namespace_annotations(),
        )
        .await?;
        namespaces.push(ns.clone());
        put_bundle(&ns, "hello-bundle", bundle.clone(), None).await?;
    }
    expect_fake_nodes_only(&namespaces[0]).await?;

    eprintln!("floor: the operator idle for {}s", size.steady.as_secs());
    let idle0 = leader_counts(client).await?;
    tokio::time::sleep(size.steady).await;
    let idle1 = leader_counts(client).await?;
    let active_before = active_plugins(client).await?;

    eprintln!(
        "creating {} enabled Plugins across {} namespaces ({CREATORS} at a time)",
        size.plugins, size.namespaces
    );
    let image = images_env("AIRLOCK_HELLO_IMAGE")?;
    let before = leader_counts(client).await?;
    let t0 = Instant::now();
    let namespaces_ref = &*namespaces;
    futures::stream::iter(0..size.plugins)
        .map(|i| {
            let ns = &namespaces_ref[i % namespaces_ref.len()];
            let image = image.as_str();
            async move {
                let name = format!("bench-{i}");
                let plugin = hello_plugin(&name, image, suffix)?;
                ns.api::<Plugin>()
                    .create(&PostParams::default(), &plugin)
                    .await
                    .with_context(|| format!("creating Plugin {}/{name}", ns.name))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATORS)
        .try_collect::<()>()
        .await?;
    let created = t0.elapsed();
    eprintln!("created in {:.1} s", created.as_secs_f64());

    let mut last_report = Instant::now();
    loop {
        let active = active_plugins(client).await?.saturating_sub(active_before);
        if active >= size.plugins && all_active(client, suffix, size.plugins).await? {
            break;
        }
        if t0.elapsed() > SETTLE_LIMIT {
            bail!(
                "only {active} of {} Plugins became Active in {}s",
                size.plugins,
                SETTLE_LIMIT.as_secs()
            );
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "{:>6.0} s: {active} of {} Active",
                t0.elapsed().as_secs_f64(),
                size.plugins
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    let settled = t0.elapsed();
    let after = leader_counts(client).await?;
    let routers = router_figures(client).await?;
    eprintln!("steady state: watching for {}s", size.steady.as_secs());
    tokio::time::sleep(size.steady).await;
    let end = leader_counts(client).await?;
    print!(
        "{}",
        report(
            size,
            created,
            settled,
            (idle0, idle1),
            (before, after, end),
            &routers
        )
    );
    Ok(())
}

fn policy_name(suffix: &str) -> String {
    format!("airlock-bench-kwok-{suffix}")
}

/// The hello plugin, enabled, labelled as the bench's.
fn hello_plugin(name: &str, image: &str, suffix: &str) -> Result<Plugin> {
    serde_json::from_value(json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": name, "labels": {BENCH_LABEL: suffix}},
        "spec": {
            "version": "1.0.0",
            "image": image,
            "bundle": {"source": {"configMapRef": {"name": "hello-bundle"}}},
            "pluginApiVersion": 1,
            "hooks": [{"name": "transform", "timeout": "200ms"}],
            "permissions": ["log"],
            "resources": {"limits": {"cpu": "100m", "memory": "32Mi"}}
        }
    }))
    .context("building a Plugin")
}

/// Refuses to go on unless a pod created in the bench's namespaces gets the fake nodes' selector
/// and toleration (the API server's PodNodeSelector and PodTolerationRestriction admission
/// plugins, which `e2e/cluster/up.sh` enables): otherwise the bench's pods would be scheduled on
/// the real node and start real containers. Asked as a dry run: nothing is created.
async fn expect_fake_nodes_only(ns: &TestNamespace) -> Result<()> {
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "kwok-probe"},
        "spec": {
            "containers": [{"name": "c", "image": "none",
                "securityContext": {"allowPrivilegeEscalation": false, "runAsNonRoot": true,
                    "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}}]
        }
    }))?;
    let pod = ns
        .api::<Pod>()
        .create(
            &PostParams {
                dry_run: true,
                ..Default::default()
            },
            &probe,
        )
        .await
        .context("a dry-run pod in a bench namespace")?;
    let spec = pod.spec.unwrap_or_default();
    let selected = spec
        .node_selector
        .as_ref()
        .is_some_and(|s| s.get(airlock_e2e::kwok::LABEL).map(String::as_str) == Some("fake"));
    let tolerated = spec
        .tolerations
        .iter()
        .flatten()
        .any(|t| t.key.as_deref() == Some(airlock_e2e::kwok::LABEL));
    ensure!(
        selected && tolerated,
        "pods in the bench's namespaces are not confined to the fake nodes (node selector: \
         {selected}, toleration: {tolerated}): the API server needs the admission plugins \
         PodNodeSelector and PodTolerationRestriction (recreate the local cluster with \
         `make cluster-down cluster-up`)"
    );
    Ok(())
}

/// Plugins in phase Active, from the operator's `airlock_plugins` gauge (cheap at 10,000: no
/// list of every Plugin while they are being created).
async fn active_plugins(client: &Client) -> Result<usize> {
    let leader = airlock_e2e::operator_metrics::leader_metrics(client).await?;
    Ok(leader
        .lines()
        .filter(|l| l.starts_with("airlock_plugins{") && l.contains("phase=\"Active\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as usize)
}

/// Whether all `n` of the bench's Plugins read phase Active (one paged list; the gauge said so
/// first).
async fn all_active(client: &Client, suffix: &str, n: usize) -> Result<bool> {
    let api: Api<Plugin> = Api::all(client.clone());
    let mut params = ListParams::default()
        .labels(&format!("{BENCH_LABEL}={suffix}"))
        .limit(500);
    let mut active = 0;
    loop {
        let page = api.list(&params).await?;
        active += page
            .items
            .iter()
            .filter(|p| phase(p) == Some(PluginPhase::Active))
            .count();
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => break,
        }
    }
    Ok(active >= n)
}

/// Each router replica's resident memory and route table size.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct RouterFigures {
    rss_bytes: f64,
    plugins: f64,
    endpoints: f64,
}

async fn router_figures(client: &Client) -> Result<Vec<RouterFigures>> {
    Ok(parse_routers(&router_metrics(client).await?))
}

/// One [`RouterFigures`] per replica in the concatenated `/metrics` of every router pod (each
/// starts with its own `# HELP` block; a replica's `process_resident_memory_bytes` ends its part).
fn parse_routers(text: &str) -> Vec<RouterFigures> {
    let mut out = Vec::new();
    let mut current = RouterFigures::default();
    let value = |l: &str| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
    for line in text.lines() {
        if line.starts_with("airlock_router_routes{kind=\"plugins\"}") {
            current.plugins = value(line).unwrap_or_default();
        } else if line.starts_with("airlock_router_routes{kind=\"endpoints\"}") {
            current.endpoints = value(line).unwrap_or_default();
        } else if line.starts_with("process_resident_memory_bytes ") {
            current.rss_bytes = value(line).unwrap_or_default();
        } else if line.starts_with("# HELP airlock_kube_requests_total")
            && current != Default::default()
        {
            out.push(std::mem::take(&mut current));
        }
    }
    if current != RouterFigures::default() {
        out.push(current);
    }
    out
}

/// The printed report. `idle` is the floor (before, after an idle window); `run` is the counts
/// before the creates, once every Plugin is Active, and after the steady window.
fn report(
    size: Size,
    created: Duration,
    settled: Duration,
    idle: (Counts, Counts),
    run: (Counts, Counts, Counts),
    routers: &[RouterFigures],
) -> String {
    let n = size.plugins as f64;
    let per_minute = |writes: f64| writes * 60.0 / size.steady.as_secs_f64().max(1.0);
    let idle_writes = per_minute(idle.1.writes - idle.0.writes);
    let steady_writes = per_minute(run.2.writes - run.1.writes);
    let cpu = run.1.cpu_seconds - run.0.cpu_seconds;
    let steady_cpu = run.2.cpu_seconds - run.1.cpu_seconds;
    let mib = |b: f64| b / 1_048_576.0;
    let routers = routers
        .iter()
        .map(|r| {
            format!(
                "{:.1} MiB with {:.0} routes ({:.0} endpoints)",
                mib(r.rss_bytes),
                r.plugins,
                r.endpoints
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    format!(
        "\n== airlock control plane bench: {} enabled Plugins in {} namespaces on KWOK nodes ==\n\
         Plugins created in:            {:.1} s\n\
         time to all Active:            {:.1} s from the first create ({:.1} Plugins/s)\n\
         API requests per Plugin:       {:.1} (writes {:.1}); reconciles per Plugin: {:.1}\n\
         API writes/min, steady state:  {steady_writes:.1}   (floor, operator idle before: {idle_writes:.1})\n\
         operator RSS:                  {:.1} MiB (goal <= 256)\n\
         operator CPU:                  {cpu:.1} s until all Active ({:.2} ms per Plugin); {:.1}% of a core at steady state\n\
         router replicas:               {routers}\n",
        size.plugins,
        size.namespaces,
        created.as_secs_f64(),
        settled.as_secs_f64(),
        n / settled.as_secs_f64(),
        (run.1.requests - run.0.requests) / n,
        (run.1.writes - run.0.writes) / n,
        (run.1.reconciles - run.0.reconciles) / n,
        mib(run.2.rss_bytes),
        cpu * 1000.0 / n,
        steady_cpu * 100.0 / size.steady.as_secs_f64().max(1.0),
    )
}

/// Deletes the bench's namespaces (waits, bounded) and its trust policy.
async fn teardown(client: &Client, suffix: &str, namespaces: &[TestNamespace]) -> Result<()> {
    let t = Instant::now();
    for ns in namespaces {
        ns.delete().await?;
    }
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let ours = ListParams::default().labels(&format!("{BENCH_LABEL}={suffix}"));
    airlock_e2e::wait::until(
        "the bench's namespaces deleted",
        Duration::from_secs(1800),
        async || Ok(api.list(&ours).await?.items.len()),
        |n| *n == 0,
    )
    .await?;
    eprintln!(
        "teardown: {} namespaces deleted in {:.1} s",
        namespaces.len(),
        t.elapsed().as_secs_f64()
    );
    match Api::<airlock_crds::PluginTrustPolicy>::all(client.clone())
        .delete(&policy_name(suffix), &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_router_replica_is_read_from_its_own_part_of_the_metrics() {
        let one = |rss: u64, plugins: u64| {
            format!(
                "# HELP airlock_kube_requests_total Requests\n\
                 airlock_kube_requests_total{{method=\"GET\"}} 3\n\
                 airlock_router_routes{{kind=\"endpoints\"}} {}\n\
                 airlock_router_routes{{kind=\"plugins\"}} {plugins}\n\
                 process_resident_memory_bytes {rss}\n",
                plugins * 2
            )
        };
        let text = format!("{}{}", one(1_048_576, 10), one(2_097_152, 12));
        assert_eq!(
            parse_routers(&text),
            vec![
                RouterFigures {
                    rss_bytes: 1_048_576.0,
                    plugins: 10.0,
                    endpoints: 20.0
                },
                RouterFigures {
                    rss_bytes: 2_097_152.0,
                    plugins: 12.0,
                    endpoints: 24.0
                },
            ]
        );
    }

    #[test]
    fn the_report_states_time_per_plugin_costs_and_memory() {
        let at = |writes: f64, cpu: f64| Counts {
            requests: writes * 2.0,
            writes,
            rss_bytes: 100.0 * 1_048_576.0,
            reconciles: writes / 4.0,
            cpu_seconds: cpu,
        };
        let text = report(
            Size {
                plugins: 1000,
                namespaces: 10,
                steady: Duration::from_secs(60),
            },
            Duration::from_secs(20),
            Duration::from_secs(100),
            (at(0.0, 0.0), at(6.0, 1.0)),
            (at(10.0, 1.0), at(4010.0, 51.0), at(4016.0, 51.6)),
            &[RouterFigures {
                rss_bytes: 50.0 * 1_048_576.0,
                plugins: 1000.0,
                endpoints: 1000.0,
            }],
        );
        assert!(
            text.contains("1000 enabled Plugins in 10 namespaces"),
            "{text}"
        );
        assert!(
            text.contains("100.0 s from the first create (10.0 Plugins/s)"),
            "{text}"
        );
        assert!(
            text.contains(
                "API requests per Plugin:       8.0 (writes 4.0); reconciles per Plugin: 1.0"
            ),
            "{text}"
        );
        assert!(
            text.contains("steady state:  6.0   (floor, operator idle before: 6.0)"),
            "{text}"
        );
        assert!(
            text.contains("50.0 s until all Active (50.00 ms per Plugin); 1.0% of a core"),
            "{text}"
        );
        assert!(
            text.contains("50.0 MiB with 1000 routes (1000 endpoints)"),
            "{text}"
        );
    }
}
