//! Hostile plugins, each contained and reported while the other plugins keep answering: a socket
//! opened without the egress permission (refused by the shim's seccomp filter), the network
//! reached with it (dropped by the NetworkPolicy), the service-account token read (none is
//! mounted), the root filesystem written (read-only), its own bundle rewritten (a read-only
//! mount), a 2 MiB answer (over the output limit), a log flood (rate-limited), a grandchild that
//! outlives a timeout (killed with the plugin), a fork bomb (stopped by the pod's pids limit), a
//! netlink socket, ptrace or process_vm_readv of the shim (refused by the shim's seccomp filters,
//! with or without egress), the shim's /proc files (closed: the shim is not dumpable) and its TLS
//! key (hidden by Landlock), and a caller that is not the router (refused by the shim's mutual
//! TLS). Everything runs on the local cluster through the router, as installed by the chart.

use std::time::Duration;

use airlock_core::identity::plugin_identity;
use airlock_e2e::install::NAMESPACE;
use airlock_e2e::plugins;
use airlock_e2e::router::{Fixture, ensure_status, in_fixture};
use airlock_proto::plugin::v1::InvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams};
use serde_json::{Value, json};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

#[tokio::test]
async fn hostile_plugins_are_contained_while_the_others_keep_answering() -> Result<()> {
    in_fixture("hostile", &["log", "net:egress"], scenario).await
}

async fn scenario(f: &Fixture) -> Result<()> {
    let hook = |timeout: &str| json!([{"name": "transform", "timeout": timeout}]);
    f.apply("hello", "hello", hook("1s"), json!(["log"]), json!({}))
        .await?;
    // Without net:egress: no network sockets at all.
    f.apply("hostile", "hostile", hook("2s"), json!(["log"]), json!({}))
        .await?;
    // With net:egress, allowed to one empty network only: sockets open, packets go nowhere else.
    f.apply(
        "hostile-net",
        "hostile",
        hook("2s"),
        json!(["log", "net:egress"]),
        json!({"network": {"egress": [{"cidr": "198.19.200.0/24", "ports": [{"port": 9}]}]}}),
    )
    .await?;
    f.wait_serving(&["hello", "hostile", "hostile-net"], "transform")
        .await?;
    let attack = |plugin: &'static str, payload: Value| async move {
        f.invoke(plugin, "transform", payload)
            .await
            .with_context(|| format!("{plugin}: the attack call itself failed"))
    };
    let hello_answers =
        || f.expect_greeting("hello", json!({"name": "bystander"}), "hello, bystander");

    // The registry on the node is a real, listening TCP service.
    let registry = json!({"attack": "socket", "target": "198.19.255.1:5000"});
    let out = attack("hostile", registry.clone()).await?;
    ensure!(
        out["socket"] == "PermissionDenied",
        "without net:egress the seccomp filter refuses the socket: {out}"
    );
    let out = attack("hostile-net", registry).await?;
    ensure!(
        out["socket"] != "ok" && out["socket"] != "PermissionDenied",
        "with net:egress the socket opens but the NetworkPolicy keeps the registry out of reach: {out}"
    );

    let out = attack("hostile", json!({"attack": "token"})).await?;
    ensure!(
        out["token"] == "NotFound",
        "no service-account token is mounted: {out}"
    );
    let out = attack("hostile", json!({"attack": "write-root"})).await?;
    ensure!(
        out["write"] == "ReadOnlyFilesystem",
        "the root filesystem is read-only: {out}"
    );
    // Its own code: unpacked and verified by the init container, mounted read-only.
    let out = attack("hostile", json!({"attack": "write-bundle"})).await?;
    ensure!(
        out["modify"] == "ReadOnlyFilesystem" && out["create"] == "ReadOnlyFilesystem",
        "the plugin cannot change its bundle: {out}"
    );

    // The shim's sandbox of the plugin process, the same with net:egress: an allowlist of socket
    // families (Unix, plus IPv4 and IPv6 with egress), no way into the shim (PID 1, the plugin's
    // parent, holding the pod's mTLS key), and the key's directory hidden.
    for plugin in ["hostile", "hostile-net"] {
        let out = attack(plugin, json!({"attack": "netlink"})).await?;
        ensure!(
            out["netlink"] == "PermissionDenied",
            "{plugin}: the seccomp filter refuses netlink sockets: {out}"
        );
        let out = attack(plugin, json!({"attack": "ptrace-shim"})).await?;
        ensure!(
            out["ptrace"] == "EPERM",
            "{plugin}: the seccomp filter refuses ptrace of the shim: {out}"
        );
        let out = attack(plugin, json!({"attack": "vm-read"})).await?;
        ensure!(
            out["vm-read"] == "EPERM",
            "{plugin}: the seccomp filter refuses process_vm_readv of the shim: {out}"
        );
        let out = attack(plugin, json!({"attack": "shim-environ"})).await?;
        ensure!(
            out["environ"] == "PermissionDenied",
            "{plugin}: the shim is not dumpable, its /proc files are closed to the plugin: {out}"
        );
        let out = attack(plugin, json!({"attack": "read-key"})).await?;
        ensure!(
            out["key"] == "PermissionDenied",
            "{plugin}: Landlock hides the shim's TLS key from the plugin: {out}"
        );
    }
    let log = plugin_log(f, "hostile").await?;
    ensure!(
        log.contains("the TLS directory is hidden from the plugin process"),
        "the shim reports at startup that Landlock hides its key"
    );
    hello_answers().await?;

    let output = json!({"attack": "output"});
    f.expect_failure("hostile", "transform", output, Code::ResourceExhausted, "")
        .await
        .context("a 2 MiB answer is over the 1 MiB output limit")?;
    hello_answers().await?;

    // Log flood: 5000 lines, of which the shim forwards at most its budget (100 a minute).
    let out = attack("hostile-net", json!({"attack": "log-flood"})).await?;
    ensure!(out["written"] == 5000, "{out}");
    let log = plugin_log(f, "hostile-net").await?;
    let forwarded = log
        .lines()
        .filter(|l| l.contains("flooding the log"))
        .count();
    ensure!(
        (1..=100).contains(&forwarded),
        "the shim forwarded {forwarded} of 5000 flood lines"
    );
    ensure!(
        log.contains("the plugin's log is over its rate limit; dropping lines"),
        "the drop is reported in the log"
    );

    // A grandchild in its own process group, then a hang: at the timeout the shim kills the
    // plugin and, as PID 1 of the container, everything the plugin left behind.
    let grandchild = json!({"attack": "grandchild"});
    f.expect_failure(
        "hostile",
        "transform",
        grandchild,
        Code::DeadlineExceeded,
        "",
    )
    .await
    .context("the grandchild attack hangs until its timeout")?;
    let out = attack("hostile", json!({"attack": "processes"})).await?;
    let processes: Vec<String> = serde_json::from_value(out["processes"].clone())?;
    ensure!(
        !processes.iter().any(|p| p.contains("linger")),
        "the grandchild died with the plugin; processes in the pod: {processes:?}"
    );

    // Fork bomb: the pod's pids limit stops it (or the memory limit kills the plugin first);
    // either way the node and the other plugins do not notice.
    let bomb = f
        .invoke("hostile-net", "transform", json!({"attack": "fork-bomb"}))
        .await;
    match &bomb {
        Ok(out) => ensure!(
            out["started"].as_u64().is_some_and(|n| n < 5000) && out["error"] != "none",
            "the fork bomb hit a limit: {out}"
        ),
        Err(e) => ensure!(
            matches!(
                e.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::Internal
            ),
            "the fork bomb killed only its own plugin: {e:?}"
        ),
    }
    hello_answers().await?;
    // The hostile plugins are still what they were: routed, and their pods running.
    ensure!(
        f.invoke("hostile", "transform", json!({"attack": "token"}))
            .await
            .is_ok(),
        "hostile keeps answering after its neighbour's fork bomb"
    );
    only_the_router_reaches_a_shim(f).await?;
    // The operator and router never restarted.
    let pods = Api::<Pod>::namespaced(f.client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await?;
    for pod in pods.items {
        let restarts: i32 = pod
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default()
            .iter()
            .map(|c| c.restart_count)
            .sum();
        ensure!(
            restarts == 0,
            "{} restarted {restarts} times",
            pod.metadata.name.unwrap_or_default()
        );
    }
    Ok(())
}

/// The shim of `hello` is called from the node, as something other than the router: refused unless
/// the caller presents the router's identity, and the router's own call fails if the pod is not
/// the plugin it meant.
async fn only_the_router_reaches_a_shim(f: &Fixture) -> Result<()> {
    let ns = f.ns();
    let request = || plugins::transform_request(json!({"name": "mtls"}).to_string(), "e2e-mtls");
    // The router's identity: served.
    let router = plugins::router_identity(&f.client).await?;
    let out = PluginClient::new(plugins::shim_channel(&f.client, ns, "hello", &router).await?)
        .invoke(request())
        .await
        .context("the router's identity is served")?
        .into_inner();
    ensure!(
        out.output_json.contains("hello, mtls"),
        "{}",
        out.output_json
    );

    // Another plugin's identity (hostile's own certificate, as if it had stolen its key):
    // refused by hello's shim, with the reason.
    let hostile = plugins::tls_files(&f.client, ns, "hostile-tls").await?;
    let err = PluginClient::new(plugins::shim_channel(&f.client, ns, "hello", &hostile).await?)
        .invoke(request())
        .await
        .err()
        .context("a plugin's certificate must not invoke another plugin")?;
    ensure_status(&err, Code::PermissionDenied, "only from the Airlock router")?;

    // Plain text, no certificate: nothing.
    let ip = plugins::service_ip(&f.client, ns, "hello").await?;
    let plain = Channel::from_shared(format!("http://{ip}:50051"))?;
    ensure!(
        refused(plain, request()).await,
        "a plain-text caller reached hello's shim"
    );

    // The router's identity, but expecting hostile at hello's address: the handshake fails, so a
    // stale route cannot run the wrong plugin.
    let wrong = Channel::from_shared(format!("https://{ip}:50051"))?
        .tls_config(router.client_config(&plugin_identity(ns, "hostile")))?;
    ensure!(
        refused(wrong, request()).await,
        "hello's shim passed for hostile"
    );
    Ok(())
}

/// Whether a call through `endpoint` goes unanswered: no connection within 2 s, or a failed call.
async fn refused(endpoint: Endpoint, request: InvokeRequest) -> bool {
    match endpoint
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
    {
        Err(_) => true,
        Ok(c) => PluginClient::new(c).invoke(request).await.is_err(),
    }
}

/// The container log of the plugin's pod (what `kubectl logs` shows), after a moment for the
/// shim to flush.
async fn plugin_log(f: &Fixture, plugin: &str) -> Result<String> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pods = f.ns.api::<Pod>();
    let pod = pods
        .list(&ListParams::default().labels(&format!("airlock.dev/plugin={plugin}")))
        .await?
        .items
        .into_iter()
        .find(|p| p.metadata.deletion_timestamp.is_none())
        .context("the plugin's pod")?;
    Ok(pods
        .logs(
            &pod.metadata.name.unwrap_or_default(),
            &LogParams {
                container: Some("plugin".into()),
                ..LogParams::default()
            },
        )
        .await?)
}
