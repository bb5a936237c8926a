//! `make bench` part 5: the control plane at 10,000 Plugins (`BENCH_KWOK_PLUGINS`, default
//! 10000) in 100 namespaces (`BENCH_KWOK_NAMESPACES`), every one enabled, its pods "running" on
//! KWOK's fake nodes (`airlock_e2e::kwok`: no container starts; the API server, scheduler,
//! controllers and Airlock are the real ones). It prints the time until every Plugin is Active,
//! the operator's API requests and writes per Plugin, its API writes per minute at steady state
//! against the same operator idle before the Plugins existed (goal: no more than idle, i.e. the
//! lease renewals), the operator's resident memory and CPU, and each router replica's memory with
//! every route loaded. Then the floor, on the same cluster emptied again: the objects Airlock
//! wrote for one Plugin, written directly for as many Plugins with the same concurrency, until
//! every Deployment is Available — Airlock's time is printed as a ratio to it
//! (`BENCH_KWOK_FLOOR=0`: not measured). It asserts nothing: numbers depend on the machine.

use std::time::{Duration, Instant, SystemTime};

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_e2e::TestNamespace;
use airlock_e2e::install::images_env;
use airlock_e2e::kwok::Kwok;
use airlock_e2e::operator_metrics::{Counts, env_number, leader_counts};
use airlock_e2e::plugins::phase;
use airlock_e2e::router::metrics as router_metrics;
use airlock_e2e::sandbox::put_bundle;
use airlock_e2e::timeline;
use anyhow::{Context, Result, bail, ensure};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
};
use kube::{Api, Client};
use serde_json::{Value, json};

/// Parallel creators, as in the controller bench.
const CREATORS: usize = 8;
/// Pods per fake node: the bench makes as many nodes as that needs (a real node's limit here is
/// 250 too).
const PODS_PER_NODE: usize = 250;
/// The longest the Plugins may take to become Active (or the floor's Deployments Available)
/// before the bench gives up: an hour, or 0.75 s per Plugin when that is longer (10,000 Plugins
/// on this 2-core VM need ≈ 1 h at the 2.7 Plugins/s measured at 1,000).
fn settle_limit(plugins: usize) -> Duration {
    Duration::from_secs(3600).max(Duration::from_millis(750) * plugins as u32)
}
/// Label of the bench's namespaces and Plugins (value: the run's suffix).
const BENCH_LABEL: &str = "airlock.dev/kwok-bench";
/// Label of the floor's objects (value: the run's suffix).
const FLOOR_LABEL: &str = "airlock.dev/kwok-bench-floor";

/// What the bench was asked for.
#[derive(Clone, Copy, Debug)]
struct Size {
    plugins: usize,
    namespaces: usize,
    steady: Duration,
    /// Whether the floor is measured too (`BENCH_KWOK_FLOOR`, default 1): at 10,000 Plugins it
    /// doubles a run of over an hour, and the floor ratio's goal is set at 1,000.
    floor: bool,
}

#[tokio::main]
async fn main() -> Result<()> {
    let size = Size {
        plugins: env_number("BENCH_KWOK_PLUGINS", 10_000)? as usize,
        namespaces: env_number("BENCH_KWOK_NAMESPACES", 100)?.max(1) as usize,
        steady: Duration::from_secs(env_number("BENCH_STEADY_SECONDS", 60)?),
        floor: env_number("BENCH_KWOK_FLOOR", 1)? != 0,
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
    let cleanup = teardown(&client, &suffix, &mut namespaces).await;
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
    let started = SystemTime::now();
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
        if t0.elapsed() > settle_limit(size.plugins) {
            bail!(
                "only {active} of {} Plugins became Active in {}s",
                size.plugins,
                settle_limit(size.plugins).as_secs()
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
    let stages = timeline::airlock(
        started,
        &list_all::<Plugin>(client, &format!("{BENCH_LABEL}={suffix}")).await?,
        &list_all::<Deployment>(client, "app.kubernetes.io/managed-by=airlock").await?,
    );
    eprintln!("steady state: watching for {}s", size.steady.as_secs());
    tokio::time::sleep(size.steady).await;
    let end = leader_counts(client).await?;
    let templates = children_of(&namespaces[0], "bench-0").await?;

    // The floor runs on an empty cluster, as Airlock's run did: its Plugins go first.
    eprintln!("deleting the Plugins' namespaces before the floor");
    teardown_namespaces(client, suffix, namespaces).await?;
    let (floor, floor_stages) = if size.floor {
        let (took, stages) = floor(client, size, suffix, &templates, namespaces).await?;
        (Some(took), Some(stages))
    } else {
        (None, None)
    };
    print!(
        "{}",
        report(
            size,
            created,
            (settled, floor),
            (idle0, idle1),
            (before, after, end),
            &routers
        )
    );
    // Where each run's time went, stage by stage: a gap between the two sits in one of them.
    print!("{}", stages.render("Airlock, stage by stage"));
    if let Some(f) = floor_stages {
        print!("{}", f.render("floor, stage by stage"));
    }
    Ok(())
}

/// The kinds of object Airlock writes for a Plugin, each with the step the floor writes it in —
/// the operator's steps: its Secrets one after the other, then what the pods need around them at
/// once, the workload last.
fn child_kinds() -> [(ApiResource, u8); 5] {
    [
        (
            ApiResource::erase::<k8s_openapi::api::core::v1::Secret>(&()),
            0,
        ),
        (
            ApiResource::erase::<k8s_openapi::api::core::v1::ServiceAccount>(&()),
            1,
        ),
        (
            ApiResource::erase::<k8s_openapi::api::core::v1::Service>(&()),
            1,
        ),
        (
            ApiResource::erase::<k8s_openapi::api::networking::v1::NetworkPolicy>(&()),
            1,
        ),
        (ApiResource::erase::<Deployment>(&()), 2),
    ]
}

/// One object Airlock wrote for a Plugin, as the floor writes it.
struct Child {
    kind: ApiResource,
    /// The floor writes step by step; the objects of one step at once.
    step: u8,
    template: Value,
}

/// What Airlock wrote for the Plugin `plugin` (the objects it owns), as creatable templates: no
/// server-set fields, no owner (the floor has no Plugin), no cluster IP (each Service gets its
/// own).
async fn children_of(ns: &TestNamespace, plugin: &str) -> Result<Vec<Child>> {
    let mut out = Vec::new();
    for (kind, step) in child_kinds() {
        let api: Api<DynamicObject> = Api::namespaced_with(ns.client.clone(), &ns.name, &kind);
        for obj in api.list(&ListParams::default()).await?.items {
            let owned = obj
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Plugin" && o.name == plugin);
            if owned {
                out.push(Child {
                    kind: kind.clone(),
                    step,
                    template: template(serde_json::to_value(&obj)?),
                });
            }
        }
    }
    ensure!(
        out.iter().any(|c| c.kind.kind == "Deployment"),
        "Airlock wrote no Deployment for Plugin {}/{plugin}: nothing to measure the floor with",
        ns.name
    );
    Ok(out)
}

/// `obj` without what the API server sets or what ties it to its Plugin.
fn template(mut obj: Value) -> Value {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "generation",
            "managedFields",
            "ownerReferences",
        ] {
            meta.remove(field);
        }
        if let Some(a) = meta.get_mut("annotations").and_then(Value::as_object_mut) {
            a.remove("deployment.kubernetes.io/revision");
        }
    }
    if let Some(spec) = obj.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
    }
    if let Some(o) = obj.as_object_mut() {
        o.remove("status");
    }
    obj
}

/// `template` for the `i`th copy: every mention of the template's Plugin and namespace renamed
/// (object names, selectors, labels), marked with the floor's label.
fn copy_of(template: &Value, from: (&str, &str), to: (&str, &str), suffix: &str) -> Result<Value> {
    // Whole quoted names and name prefixes only ("bench-0" also starts "bench-0-tls"); a longer
    // Plugin name such as "bench-01" never occurs in bench-0's objects.
    let text = serde_json::to_string(template)?
        .replace(from.1, to.1)
        .replace(from.0, to.0);
    let mut obj: Value = serde_json::from_str(&text)?;
    obj["metadata"]["labels"][FLOOR_LABEL] = Value::from(suffix);
    Ok(obj)
}

/// The floor: Airlock's objects for `size.plugins` Plugins written directly, with the creators'
/// concurrency, into fresh namespaces; returns the time from the first write until every
/// Deployment is Available (what "Active" waits for in Airlock's run), and its stages.
async fn floor<'a>(
    client: &Client,
    size: Size,
    suffix: &str,
    templates: &'a [Child],
    namespaces: &mut Vec<TestNamespace>,
) -> Result<(Duration, timeline::Stages)> {
    let template_ns = templates[0].template["metadata"]["namespace"]
        .as_str()
        .context("a template without a namespace")?
        .to_string();
    for _ in 0..size.namespaces {
        let ns = TestNamespace::create_annotated(
            client,
            "kwok-floor",
            &[(BENCH_LABEL, suffix)],
            &Kwok::namespace_annotations(),
        )
        .await?;
        namespaces.push(ns);
    }
    eprintln!(
        "floor: writing the same {} objects per Plugin for {} Plugins directly ({CREATORS} at a time)",
        templates.len(),
        size.plugins
    );
    let t0 = Instant::now();
    let started = SystemTime::now();
    let namespaces_ref = &*namespaces;
    let template_ns = template_ns.as_str();
    futures::stream::iter(0..size.plugins)
        .map(|i| {
            let ns = &namespaces_ref[i % namespaces_ref.len()];
            async move {
                let name = &format!("floor-{i}");
                let write = |c: &'a Child| async move {
                    let obj = copy_of(
                        &c.template,
                        (template_ns, "bench-0"),
                        (&ns.name, name),
                        suffix,
                    )?;
                    let obj: DynamicObject = serde_json::from_value(obj)?;
                    Api::<DynamicObject>::namespaced_with(client.clone(), &ns.name, &c.kind)
                        .create(&PostParams::default(), &obj)
                        .await
                        .with_context(|| format!("creating {} {}/{name}", c.kind.kind, ns.name))?;
                    anyhow::Ok(())
                };
                // As the operator: the Secrets one after the other, then each later step's
                // objects at once.
                for step in 0..=2 {
                    let of_step = templates.iter().filter(|c| c.step == step);
                    if step == 0 {
                        for c in of_step {
                            write(c).await?;
                        }
                    } else {
                        futures::future::try_join_all(of_step.map(write)).await?;
                    }
                }
                anyhow::Ok(())
            }
        })
        .buffer_unordered(CREATORS)
        .try_collect::<()>()
        .await?;
    eprintln!("floor: written in {:.1} s", t0.elapsed().as_secs_f64());
    let ours = format!("{FLOOR_LABEL}={suffix}");
    let mut last_report = Instant::now();
    loop {
        let available = available_deployments(client, &ours).await?;
        if available >= size.plugins {
            let took = t0.elapsed();
            let stages = timeline::floor(started, &list_all::<Deployment>(client, &ours).await?);
            return Ok((took, stages));
        }
        if t0.elapsed() > settle_limit(size.plugins) {
            bail!(
                "floor: only {available} of {} Deployments became Available in {}s",
                size.plugins,
                settle_limit(size.plugins).as_secs()
            );
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            eprintln!(
                "{:>6.0} s: {available} of {} Deployments Available",
                t0.elapsed().as_secs_f64(),
                size.plugins
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Every `K` in the cluster matching `selector` (a paged list).
async fn list_all<K>(client: &Client, selector: &str) -> Result<Vec<K>>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::all(client.clone());
    let mut params = ListParams::default().labels(selector).limit(500);
    let mut out = Vec::new();
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(token) if !token.is_empty() => params = params.continue_token(&token),
            _ => return Ok(out),
        }
    }
}

/// Deployments matching `selector` with every wanted replica available (one paged list).
async fn available_deployments(client: &Client, selector: &str) -> Result<usize> {
    let deployments = list_all::<Deployment>(client, selector).await?;
    Ok(deployments
        .iter()
        .filter(|d| {
            let wanted = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let ready = d.status.as_ref().and_then(|s| s.available_replicas);
            ready.unwrap_or(0) >= wanted
        })
        .count())
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
    let plugins = list_all::<Plugin>(client, &format!("{BENCH_LABEL}={suffix}")).await?;
    let active = plugins
        .iter()
        .filter(|p| phase(p) == Some(PluginPhase::Active))
        .count();
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
    (settled, floor): (Duration, Option<Duration>),
    idle: (Counts, Counts),
    run: (Counts, Counts, Counts),
    routers: &[RouterFigures],
) -> String {
    let n = size.plugins as f64;
    let per_minute = |writes: f64| writes * 60.0 / size.steady.as_secs_f64().max(1.0);
    let idle_writes = per_minute(idle.1.writes - idle.0.writes);
    let steady_writes = per_minute(run.2.writes - run.1.writes);
    // Where steady-state writes go, when there are any beyond the lease renewals.
    let steady_kinds = run.2.writes_per_plugin_by_kind(&run.1, 1.0);
    let steady_kinds = if steady_writes > idle_writes * 2.0 && !steady_kinds.is_empty() {
        format!("; in the window: {steady_kinds}")
    } else {
        String::new()
    };
    let cpu = run.1.cpu_seconds - run.0.cpu_seconds;
    let steady_cpu = run.2.cpu_seconds - run.1.cpu_seconds;
    let mib = |b: f64| b / 1_048_576.0;
    let floor = floor.map_or("not measured (BENCH_KWOK_FLOOR=0)".to_string(), |floor| {
        format!(
            "{:.1} s until every Deployment is Available; Airlock / floor = {:.2} (goal <= 1.3)",
            floor.as_secs_f64(),
            settled.as_secs_f64() / floor.as_secs_f64().max(0.001)
        )
    });
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
         floor, same objects written:   {floor}\n\
         API requests per Plugin:       {:.1} (writes {:.1}); reconciles per Plugin: {:.1}\n\
         writes per Plugin, by kind:    {}\n\
         API writes/min, steady state:  {steady_writes:.1}   (floor, operator idle before: {idle_writes:.1}){steady_kinds}\n\
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
        run.1.writes_per_plugin_by_kind(&run.0, n),
        mib(run.2.rss_bytes),
        cpu * 1000.0 / n,
        steady_cpu * 100.0 / size.steady.as_secs_f64().max(1.0),
    )
}

/// Deletes `namespaces` and waits (bounded) until none of the run's namespaces is left.
async fn teardown_namespaces(
    client: &Client,
    suffix: &str,
    namespaces: &mut Vec<TestNamespace>,
) -> Result<()> {
    let t = Instant::now();
    for ns in namespaces.iter() {
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
    namespaces.clear();
    Ok(())
}

/// Deletes the bench's namespaces (waits, bounded) and its trust policy.
async fn teardown(
    client: &Client,
    suffix: &str,
    namespaces: &mut Vec<TestNamespace>,
) -> Result<()> {
    teardown_namespaces(client, suffix, namespaces).await?;
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
            writes_by: [
                ("PATCH plugins/status".to_string(), writes * 0.75),
                ("POST events".to_string(), writes * 0.25),
            ]
            .into(),
            rss_bytes: 100.0 * 1_048_576.0,
            reconciles: writes / 4.0,
            cpu_seconds: cpu,
        };
        let text = report(
            Size {
                plugins: 1000,
                namespaces: 10,
                steady: Duration::from_secs(60),
                floor: true,
            },
            Duration::from_secs(20),
            (Duration::from_secs(100), Some(Duration::from_secs(80))),
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
            text.contains("80.0 s until every Deployment is Available; Airlock / floor = 1.25"),
            "{text}"
        );
        assert!(
            text.contains(
                "API requests per Plugin:       8.0 (writes 4.0); reconciles per Plugin: 1.0"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "writes per Plugin, by kind:    PATCH plugins/status 3.0, POST events 1.0\n"
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

    #[test]
    fn a_run_without_the_floor_says_so_and_large_runs_may_settle_longer() {
        let size = Size {
            plugins: 10_000,
            namespaces: 100,
            steady: Duration::from_secs(60),
            floor: false,
        };
        let text = report(
            size,
            Duration::from_secs(400),
            (Duration::from_secs(3700), None),
            (Counts::default(), Counts::default()),
            (Counts::default(), Counts::default(), Counts::default()),
            &[],
        );
        assert!(
            text.contains("floor, same objects written:   not measured (BENCH_KWOK_FLOOR=0)"),
            "{text}"
        );
        assert_eq!(settle_limit(1000), Duration::from_secs(3600));
        assert_eq!(settle_limit(10_000), Duration::from_secs(7500));
    }

    #[test]
    fn a_floor_copy_is_renamed_everywhere_and_keeps_nothing_the_server_set() {
        let obj = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {
                "name": "bench-0", "namespace": "airlock-e2e-kwok-a1",
                "uid": "u", "resourceVersion": "7", "managedFields": [],
                "ownerReferences": [{"kind": "Plugin", "name": "bench-0"}],
                "labels": {"airlock.dev/plugin": "bench-0"},
                "annotations": {"deployment.kubernetes.io/revision": "1", "keep": "me"}
            },
            "spec": {"selector": {"matchLabels": {"airlock.dev/plugin": "bench-0"}},
                     "template": {"spec": {"serviceAccountName": "bench-0-sa"}}},
            "status": {"availableReplicas": 1}
        });
        let copy = copy_of(
            &template(obj),
            ("airlock-e2e-kwok-a1", "bench-0"),
            ("airlock-e2e-kwok-floor-b2", "floor-7"),
            "run1",
        )
        .unwrap();
        assert_eq!(
            copy,
            json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {
                    "name": "floor-7", "namespace": "airlock-e2e-kwok-floor-b2",
                    "labels": {"airlock.dev/plugin": "floor-7", FLOOR_LABEL: "run1"},
                    "annotations": {"keep": "me"}
                },
                "spec": {"selector": {"matchLabels": {"airlock.dev/plugin": "floor-7"}},
                         "template": {"spec": {"serviceAccountName": "floor-7-sa"}}}
            })
        );
        let service = template(json!({"kind": "Service", "metadata": {"name": "x"},
            "spec": {"clusterIP": "10.0.0.1", "clusterIPs": ["10.0.0.1"], "ports": []}}));
        assert_eq!(service["spec"], json!({"ports": []}));
    }
}
