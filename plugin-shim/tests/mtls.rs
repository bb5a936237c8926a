//! The shim serving mutual TLS, as in a plugin pod: only the router's identity may invoke the
//! plugin; another plugin's certificate, no certificate and plain text are refused; the router can
//! tell it reached the plugin it meant; the kubelet's plain-text health port keeps working.

use std::time::Duration;

mod common;

use common::{Pki, Shim, assert_status, tgz, wait_health};

use airlock_core::identity::{ROUTER_IDENTITY, plugin_identity};
use airlock_plugin_shim::cli::RunArgs;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use airlock_proto::plugin::v1::{InvokeRequest, InvokeResponse};
use tokio::net::TcpListener;
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::health_check_response::ServingStatus;

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

/// Invokes the plugin as `client` (certificate, key) expecting to reach `expect`; the TLS
/// connection itself must succeed.
async fn invoke_as(
    addr: std::net::SocketAddr,
    ca_pem: &str,
    client: &(String, String),
    expect: &str,
) -> Result<InvokeResponse, tonic::Status> {
    let channel = tls_channel(addr, ca_pem, Some(client), expect)
        .await
        .expect("TLS with a certificate of the CA connects");
    PluginClient::new(channel)
        .invoke(invoke())
        .await
        .map(tonic::Response::into_inner)
}

/// Whether a call over `channel` is answered (not when connecting failed).
async fn answered(channel: Result<Channel, tonic::transport::Error>) -> bool {
    match channel {
        Ok(c) => PluginClient::new(c).invoke(invoke()).await.is_ok(),
        Err(_) => false,
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
    let bundle = tgz(&[
        (
            "plugin.yaml",
            "name: echo\nversion: 1.0.0\napiVersion: 1\nhooks: [transform]\n\
             permissions: []\nentryPoint: [python3, plugin.py]\n",
        ),
        ("plugin.py", PLUGIN),
    ]);
    let health_addr = free_port().await;
    let args = RunArgs {
        tls_dir: Some(tls_dir),
        health_listen: Some(health_addr),
        ..Shim::args(dir.path(), &bundle)
    };
    let shim = Shim::start(dir, args).await;
    let addr = shim.addr;

    // The kubelet's probe: plain text, no certificate, health only.
    wait_health(health_addr, ServingStatus::Serving).await;

    // The router, checking it reached the plugin it meant: answered.
    let router = pki.issue(ROUTER_IDENTITY);
    let answer = invoke_as(addr, &pki.ca_pem, &router, &me)
        .await
        .expect("the router's call is served");
    assert_eq!(answer.output_json, r#"{"hook": "transform"}"#);

    // Another plugin, with a certificate from the same CA: refused, and told why.
    let other = pki.issue(&plugin_identity("team-a", "other"));
    let err = invoke_as(addr, &pki.ca_pem, &other, &me)
        .await
        .expect_err("another plugin must not invoke this one");
    assert_status(&err, Code::PermissionDenied, "only from the Airlock router");

    // No client certificate: the handshake itself fails.
    let anonymous = tls_channel(addr, &pki.ca_pem, None, &me).await;
    assert!(
        !answered(anonymous).await,
        "a caller without a certificate was served"
    );

    // Plain text on the TLS port: no answer.
    let plain = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    assert!(!answered(plain).await, "a plain-text caller was served");

    // The router expecting a different plugin (a stale endpoint now used by someone else) finds
    // out during the handshake instead of invoking the wrong plugin.
    let someone_else = plugin_identity("team-a", "someone-else");
    let wrong = tls_channel(addr, &pki.ca_pem, Some(&router), &someone_else).await;
    assert!(
        !answered(wrong).await,
        "the router reached a plugin other than the one it meant"
    );

    shim.stop().await;
}
