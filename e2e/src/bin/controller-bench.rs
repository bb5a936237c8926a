//! `make bench` part 4: the controller at scale. N disabled Plugins (`BENCH_PLUGINS`, default
//! 1000) are created in one namespace at once; it prints the time until every one reports phase
//! Disabled, the Kubernetes API requests per Plugin, the operator's API writes per minute at
//! steady state against the same operator idle before the Plugins existed (the floor, measured in
//! the same run; goal: no more writes than idle), and the operator's resident memory. The time to
//! steady state is compared with the API server's own speed, measured in the same run: the same
//! number of clients creating the same Plugins with the operator scaled to zero (deleted before it
//! comes back), then every write the operator made for them at the rate the API server accepts
//! small ConfigMaps from those clients.
//! Counts come from the operator's own request counter (`airlock_kube_requests_total`) on the
//! leader (the standby reconciles nothing). It asserts nothing: numbers depend on the machine.

use std::time::{Duration, Instant};

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_e2e::install::{NAMESPACE, images_env};
use airlock_e2e::operator_metrics::{Counts, LEASE, env_number, leader_counts};
use airlock_e2e::plugins::phase;
use airlock_e2e::sandbox::Sandbox;
use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client, ResourceExt};
use serde_json::json;

/// Parallel creators: enough that the API server, not the bench, is what limits creation.
const CREATORS: usize = 8;
/// ConfigMaps written to measure the API server's write rate (fewer if there are fewer Plugins).
const FLOOR_WRITES: usize = 500;
/// The longest the Plugins may take to settle before the bench gives up.
const SETTLE_LIMIT: Duration = Duration::from_secs(1800);
/// Marks what the floor measurements create, so that exactly that is deleted after them.
const FLOOR_LABEL: &str = "airlock.dev/bench-floor";

#[tokio::main]
async fn main() -> Result<()> {
    let plugins = env_number("BENCH_PLUGINS", 1000)? as usize;
    let steady = Duration::from_secs(env_number("BENCH_STEADY_SECONDS", 60)?);
    if plugins == 0 {
        return Ok(());
    }
    let sandbox = Sandbox::new("bench-controller", &["log"]).await?;
    sandbox.with_hello_bundle().await?;
    let result = bench(&sandbox, plugins, steady).await;
    // Deleting 1000 Plugins takes a while: the namespace waits for their finalizers.
    let cleanup = sandbox.teardown().await;
    result.and(cleanup)
}

fn disabled_plugin(name: &str, image: &str) -> Result<Plugin> {
    serde_json::from_value(json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "Plugin",
        "metadata": {"name": name},
        "spec": {
            "enabled": false,
            "version": "1.0.0",
            "image": image,
            "bundle": {"source": {"configMapRef": {"name": "hello-bundle"}}},
            "pluginApiVersion": 1,
            "hooks": [{"name": "transform"}],
            "permissions": ["log"]
        }
    }))
    .context("building a Plugin")
}

async fn bench(sandbox: &Sandbox, n: usize, steady: Duration) -> Result<()> {
    let client = airlock_e2e::client().await?;
    let api: Api<Plugin> = Api::namespaced(client.clone(), sandbox.ns());
    let image = images_env("AIRLOCK_HELLO_IMAGE")?;

    eprintln!("floor: the operator idle for {}s", steady.as_secs());
    let idle0 = leader_counts(&client).await?;
    tokio::time::sleep(steady).await;
    let idle1 = leader_counts(&client).await?;

    let floor_writes = FLOOR_WRITES.min(n.max(20));
    eprintln!(
        "floor: the API server's write rate ({floor_writes} ConfigMaps, {CREATORS} at a time)"
    );
    let config_maps: Api<k8s_openapi::api::core::v1::ConfigMap> =
        Api::namespaced(client.clone(), sandbox.ns());
    let t = Instant::now();
    futures::stream::iter(0..floor_writes)
        .map(|i| {
            let config_maps = config_maps.clone();
            async move {
                let cm = serde_json::from_value(json!({
                    "metadata": {"name": format!("floor-{i}"), "labels": {FLOOR_LABEL: "true"}},
                    "data": {"n": i.to_string()},
                }))?;
                config_maps
                    .create(&PostParams::default(), &cm)
                    .await
                    .with_context(|| format!("creating ConfigMap floor-{i}"))?;
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATORS)
        .try_collect::<()>()
        .await?;
    let floor_rate = floor_writes as f64 / t.elapsed().as_secs_f64();
    // Only the floor's: the Plugins' bundle ConfigMap is in the same namespace.
    config_maps
        .delete_collection(
            &Default::default(),
            &ListParams::default().labels(FLOOR_LABEL),
        )
        .await?;
    eprintln!(
        "floor: the API server accepting the {n} Plugins alone (the operator scaled to zero)"
    );
    let plugins_alone = plugins_alone(&client, &api, n, &image).await?;

    eprintln!("creating {n} disabled Plugins ({CREATORS} at a time)");
    let before = leader_counts(&client).await?;
    let t0 = Instant::now();
    create_plugins(&api, n, "bench", &image, None).await?;
    let created = t0.elapsed();

    loop {
        let list = api.list(&ListParams::default()).await?;
        let disabled = list
            .items
            .iter()
            .filter(|p| phase(p) == Some(PluginPhase::Disabled))
            .count();
        if disabled >= n {
            break;
        }
        if t0.elapsed() > SETTLE_LIMIT {
            bail!(
                "only {disabled} of {n} Plugins reached phase Disabled in {}s",
                SETTLE_LIMIT.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let settled = t0.elapsed();
    let after = leader_counts(&client).await?;
    eprintln!("steady state: watching for {}s", steady.as_secs());
    tokio::time::sleep(steady).await;
    let end = leader_counts(&client).await?;

    print!(
        "{}",
        report(
            n,
            created,
            settled,
            steady,
            Floor {
                write_rate: floor_rate,
                plugins_alone
            },
            (idle0, idle1),
            (before, after, end)
        )
    );
    Ok(())
}

/// How long the API server takes to accept `n` Plugins from [`CREATORS`] clients with nothing
/// reacting to them: the operator is scaled to zero meanwhile, and the Plugins deleted (no
/// finalizer holds them) before it comes back.
async fn plugins_alone(
    client: &Client,
    api: &Api<Plugin>,
    n: usize,
    image: &str,
) -> Result<Duration> {
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::namespaced(client.clone(), NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let operators = ListParams::default().labels("app.kubernetes.io/name=airlock-operator");
    let replicas = deployments
        .get_scale(LEASE)
        .await?
        .spec
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let scale = |n: i32| {
        let deployments = deployments.clone();
        async move {
            deployments
                .patch_scale(
                    LEASE,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(json!({"spec": {"replicas": n}})),
                )
                .await
        }
    };
    scale(0).await?;
    let result = async {
        // Gone, or finished: a pod that exited (phase Succeeded or Failed, e.g. after an
        // eviction) is not deleted by its ReplicaSet and would be waited for for ever.
        let t = Instant::now();
        loop {
            let running = pods
                .list(&operators)
                .await?
                .items
                .iter()
                .filter(|p| {
                    !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                })
                .count();
            if running == 0 {
                break;
            }
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "{running} operator pod(s) still running 120s after scaling the operator to zero"
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let t = Instant::now();
        create_plugins(api, n, "floor", image, Some(FLOOR_LABEL)).await?;
        let took = t.elapsed();
        let floor = ListParams::default().labels(FLOOR_LABEL);
        api.delete_collection(&Default::default(), &floor).await?;
        while !api.list(&floor).await?.items.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::Ok(took)
    }
    .await;
    scale(replicas).await?;
    // The new leader answers before the measured run starts.
    leader_counts(client).await?;
    result
}

/// Creates `n` disabled Plugins `<prefix>-<i>` from [`CREATORS`] clients at once, each with the
/// label `label` (value `true`) if given.
async fn create_plugins(
    api: &Api<Plugin>,
    n: usize,
    prefix: &str,
    image: &str,
    label: Option<&str>,
) -> Result<()> {
    futures::stream::iter(0..n)
        .map(|i| async move {
            let name = format!("{prefix}-{i}");
            let mut plugin = disabled_plugin(&name, image)?;
            if let Some(label) = label {
                plugin.labels_mut().insert(label.into(), "true".into());
            }
            api.create(&PostParams::default(), &plugin)
                .await
                .with_context(|| format!("creating Plugin {name}"))?;
            anyhow::Ok(())
        })
        .buffer_unordered(CREATORS)
        .try_collect::<()>()
        .await
}

/// The API server's own speed, measured in the same run.
#[derive(Clone, Copy, Debug)]
struct Floor {
    /// Small ConfigMaps per second from [`CREATORS`] clients.
    write_rate: f64,
    /// The Plugins created with nothing reacting to them.
    plugins_alone: Duration,
}

/// The printed report. `idle` is the floor (before, after an idle window); `run` is the counts
/// before the creates, once settled, and after the steady window.
fn report(
    n: usize,
    created: Duration,
    settled: Duration,
    steady: Duration,
    floor: Floor,
    idle: (Counts, Counts),
    run: (Counts, Counts, Counts),
) -> String {
    let per_minute = |writes: f64| writes * 60.0 / steady.as_secs_f64();
    let idle_writes = per_minute(idle.1.writes - idle.0.writes);
    let steady_writes = per_minute(run.2.writes - run.1.writes);
    let ratio = if idle_writes > 0.0 {
        format!("{:.1}", steady_writes / idle_writes)
    } else {
        "n/a".to_string()
    };
    let n_f = n as f64;
    // The Plugins as the API server accepts them alone, then every write the operator made for
    // them at the API server's write rate.
    let operator_writes = run.1.writes - run.0.writes;
    let floor_rate = floor.write_rate;
    let alone = floor.plugins_alone.as_secs_f64();
    let floor = alone + operator_writes / floor_rate.max(f64::MIN_POSITIVE);
    format!(
        "\n== airlock controller bench: {n} disabled Plugins ==\n\
         Plugins created in:            {:.1} s\n\
         time to steady state:          {:.1} s from the first create ({:.1} Plugins/s)\n\
         API server floor:              the {n} Plugins alone {alone:.1} s, then the operator's {operator_writes:.0} writes at {floor_rate:.0} writes/s: {floor:.1} s; steady state x{:.2} (goal <= x1.3)\n\
         API requests per Plugin:       {:.1} (writes {:.1}); reconciles per Plugin: {:.1}\n\
         writes per Plugin, by kind:    {}\n\
         API writes/min, steady state:  {steady_writes:.1}   (floor, no Plugins: {idle_writes:.1}; ratio {ratio})\n\
         operator RSS:                  {:.1} MiB\n",
        created.as_secs_f64(),
        settled.as_secs_f64(),
        n_f / settled.as_secs_f64(),
        settled.as_secs_f64() / floor,
        (run.1.requests - run.0.requests) / n_f,
        (run.1.writes - run.0.writes) / n_f,
        (run.1.reconciles - run.0.reconciles) / n_f,
        run.1.writes_per_plugin_by_kind(&run.0, n_f),
        run.2.rss_bytes / 1_048_576.0,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_compares_steady_writes_with_the_idle_floor() {
        let at = |writes: f64| Counts {
            requests: writes * 2.0,
            writes,
            writes_by: [("PATCH plugins/status".to_string(), writes)].into(),
            rss_bytes: 50.0 * 1_048_576.0,
            reconciles: writes / 2.0,
            cpu_seconds: 0.0,
        };
        let text = report(
            1000,
            Duration::from_secs(10),
            Duration::from_secs(50),
            Duration::from_secs(60),
            Floor {
                write_rate: 100.0,
                plugins_alone: Duration::from_secs(10),
            },
            (at(0.0), at(2.0)),
            (at(10.0), at(3010.0), at(3014.0)),
        );
        assert!(text.contains("(20.0 Plugins/s)"), "{text}");
        // The 1000 Plugins alone in 10 s, then 3000 operator writes at 100 writes/s: 40 s;
        // settled in 50 s.
        assert!(
            text.contains("the 1000 Plugins alone 10.0 s, then the operator's 3000 writes at 100 writes/s: 40.0 s; steady state x1.25"),
            "{text}"
        );
        assert!(
            text.contains(
                "API requests per Plugin:       6.0 (writes 3.0); reconciles per Plugin: 1.5"
            ),
            "{text}"
        );
        assert!(
            text.contains("writes per Plugin, by kind:    PATCH plugins/status 3.0\n"),
            "{text}"
        );
        assert!(
            text.contains("steady state:  4.0   (floor, no Plugins: 2.0; ratio 2.0)"),
            "{text}"
        );
        assert!(
            text.contains("operator RSS:                  50.0 MiB"),
            "{text}"
        );
    }
}
