//! The shim serving mutual TLS, as in a plugin pod: only the router's identity may invoke the
//! plugin; another plugin's certificate, no certificate and plain text are refused; the router can
//! tell it reached the plugin it meant; the kubelet's plain-text health port keeps working.

use std::time::Duration;

mod common;

use common::{Pki, tgz};

use airlock_core::identity::{ROUTER_IDENTITY, plugin_identity};
use airlock_plugin_shim::cli::{self, BundleArgs, RunArgs};
use airlock_proto::plugin::v1::InvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PLUGIN: &str = r#"
import json, sys
for line in sys.stdin:
    req = json.loads(line)
    print(json.dumps({"id": req["id"], "ok": True, "output": {"hook": req["hook"]}}), flush=True)
"#;

async fn free_port() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

async fn tls_channel(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: Option<&(String, String)>,
    expect: &str,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name(expect);
    if let Some((cert, key)) = client {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
}

fn invoke() -> InvokeRequest {
    InvokeRequest {
        hook: "transform".into(),
        payload_json: "{}".into(),
        deadline_ms: 5000,
        invocation_id: "mtls-1".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_router_may_invoke_a_plugin_over_mutual_tls() {
    let pki = Pki::new();
    let me = plugin_identity("team-a", "echo");
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir(&tls_dir).unwrap();
    pki.write_plugin_tls(&tls_dir, &me);
    let bundle = dir.path().join("bundle.tar.gz");
    std::fs::write(
        &bundle,
        tgz(&[
            (
                "plugin.yaml",
                "name: echo\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\n\
                 permissions: []\nentryPoint: [python3, plugin.py]\n",
            ),
            ("plugin.py", PLUGIN),
        ]),
    )
    .unwrap();
    let health_addr = free_port().await;
    let args = RunArgs {
        bundle: BundleArgs {
            bundle,
            max_bundle_bytes: 1024 * 1024,
            expect_digest: None,
            signature: None,
            public_key: None,
        },
        workdir: dir.path().join("work"),
        listen: "127.0.0.1:0".parse().unwrap(),
        tls_dir: Some(tls_dir),
        unpacked: None,
        health_listen: Some(health_addr),
        default_deadline_ms: 5000,
        lifecycle_timeout_ms: 5000,
        max_log_lines_per_minute: 100,
        host_api: None,
        host_calls: None,
        sandbox: common::sandbox(),
        entry_point: Vec::new(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(cli::run(args, listener, async {
        let _ = stopped.await;
    }));

    // The kubelet's probe: plain text, no certificate, health only.
    let mut health = None;
    for _ in 0..100 {
        if let Ok(c) = Channel::from_shared(format!("http://{health_addr}"))
            .unwrap()
            .connect()
            .await
        {
            let status = HealthClient::new(c)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .map(|r| r.into_inner().status)
                .ok();
            if status == Some(ServingStatus::Serving as i32) {
                health = Some(());
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        health.is_some(),
        "the plain-text health port never said SERVING"
    );

    // The router, checking it reached the plugin it meant: answered.
    let router = pki.issue(ROUTER_IDENTITY);
    let channel = tls_channel(addr, &pki.ca_pem, Some(&router), &me)
        .await
        .expect("the router connects");
    let answer = PluginClient::new(channel)
        .invoke(invoke())
        .await
        .expect("the router's call is served")
        .into_inner();
    assert_eq!(answer.output_json, r#"{"hook": "transform"}"#);

    // Another plugin, with a certificate from the same CA: refused, and told why.
    let other = pki.issue(&plugin_identity("team-a", "other"));
    let channel = tls_channel(addr, &pki.ca_pem, Some(&other), &me)
        .await
        .expect("TLS with another plugin's certificate connects");
    let err = PluginClient::new(channel)
        .invoke(invoke())
        .await
        .expect_err("another plugin must not invoke this one");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains("only from the Airlock router"),
        "{err:?}"
    );

    // No client certificate: the handshake itself fails.
    let refused = match tls_channel(addr, &pki.ca_pem, None, &me).await {
        Err(_) => true,
        Ok(c) => PluginClient::new(c).invoke(invoke()).await.is_err(),
    };
    assert!(refused, "a caller without a certificate was served");

    // Plain text on the TLS port: no answer.
    let plain = match Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
    {
        Err(_) => true,
        Ok(c) => PluginClient::new(c).invoke(invoke()).await.is_err(),
    };
    assert!(plain, "a plain-text caller was served");

    // The router expecting a different plugin (a stale endpoint now used by someone else) finds
    // out during the handshake instead of invoking the wrong plugin.
    let wrong = match tls_channel(
        addr,
        &pki.ca_pem,
        Some(&router),
        &plugin_identity("team-a", "someone-else"),
    )
    .await
    {
        Err(_) => true,
        Ok(c) => PluginClient::new(c).invoke(invoke()).await.is_err(),
    };
    assert!(
        wrong,
        "the router reached a plugin other than the one it meant"
    );

    let _ = stop.send(());
    task.await.unwrap().unwrap();
}
