//! `GrpcHost`, the shim's client of the router's host API, against an in-process fake
//! `airlock.host.v1.Host`: each call's request fields and result, gRPC errors as the plugin sees
//! them, and mutual TLS as in a plugin pod (the shim's certificate, re-read when re-issued; only a
//! server with the router's identity).

use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;

use common::Pki;

use airlock_core::identity::{ROUTER_IDENTITY, plugin_identity};
use airlock_plugin_shim::host::{ClientTlsFiles, GrpcHost, HostCalls};
use airlock_proto::host::v1::host_server::{Host, HostServer};
use airlock_proto::host::v1::{
    DeleteRequest, DeleteResponse, EmitRequest, EmitResponse, GetRequest, GetResponse, ListRequest,
    ListResponse, LogRequest, LogResponse, PutRequest, PutResponse, WrittenByRequest,
    WrittenByResponse,
};
use airlock_sdk::protocol::{CallError, HostCallLine};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

/// One request the fake host received (Debug) and who sent it (certificate DNS names).
type Received = (String, Vec<String>);

/// What the fake host received.
#[derive(Debug, Default, Clone)]
struct Seen(Arc<Mutex<Vec<Received>>>);

impl Seen {
    fn record<T: std::fmt::Debug>(&self, request: &Request<T>) {
        let who = request
            .peer_certs()
            .map(|certs| airlock_tls::peer_identities(&certs))
            .unwrap_or_default();
        self.0
            .lock()
            .unwrap()
            .push((format!("{:?}", request.get_ref()), who));
    }

    fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

/// Answers like the router would, from a script: level `bad` is invalid, key `missing` is not
/// stored, key `denied` may not be written, key `old` existed, two pages of keys, and emit is
/// denied.
#[derive(Debug, Clone)]
struct FakeHost(Seen);

#[tonic::async_trait]
impl Host for FakeHost {
    async fn log(&self, request: Request<LogRequest>) -> Result<Response<LogResponse>, Status> {
        self.0.record(&request);
        if request.get_ref().level == "bad" {
            return Err(Status::invalid_argument(
                "level must be debug, info, warn or error",
            ));
        }
        Ok(Response::new(LogResponse {
            kept: false,
            dropped: 7,
        }))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        self.0.record(&request);
        Ok(Response::new(if request.get_ref().key == "missing" {
            GetResponse::default()
        } else {
            GetResponse {
                found: true,
                value_json: r#"{"total":1.10,"big":123456789012345678901234567890}"#.into(),
            }
        }))
    }

    async fn put(&self, request: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.0.record(&request);
        if request.get_ref().key == "denied" {
            return Err(Status::permission_denied(
                "storage.put needs the permission storage:write",
            ));
        }
        Ok(Response::new(PutResponse {}))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        self.0.record(&request);
        Ok(Response::new(DeleteResponse {
            existed: request.get_ref().key == "old",
        }))
    }

    async fn list(&self, request: Request<ListRequest>) -> Result<Response<ListResponse>, Status> {
        self.0.record(&request);
        Ok(Response::new(if request.get_ref().page_token.is_empty() {
            ListResponse {
                keys: vec!["a".into(), "b".into()],
                next_page_token: "p2".into(),
            }
        } else {
            ListResponse {
                keys: vec!["c".into()],
                next_page_token: String::new(),
            }
        }))
    }

    async fn written_by(
        &self,
        request: Request<WrittenByRequest>,
    ) -> Result<Response<WrittenByResponse>, Status> {
        self.0.record(&request);
        Ok(Response::new(WrittenByResponse {
            written_by: "1.9.0".into(),
        }))
    }

    async fn emit(&self, request: Request<EmitRequest>) -> Result<Response<EmitResponse>, Status> {
        self.0.record(&request);
        Err(Status::permission_denied(
            "emit needs the permission events:emit",
        ))
    }
}

/// Serves the fake on 127.0.0.1 (with `tls`: mutual TLS), returns its address and what it saw.
async fn serve(tls: Option<ServerTlsConfig>) -> (String, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let accepted = listener.accept().await.map(|(tcp, _)| tcp);
            if tx.send(accepted).await.is_err() {
                return;
            }
        }
    });
    let seen = Seen::default();
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).unwrap();
    }
    let router = server.add_service(HostServer::new(FakeHost(seen.clone())));
    tokio::spawn(router.serve_with_incoming(tokio_stream::wrappers::ReceiverStream::new(rx)));
    (addr, seen)
}

fn line(call: &str, args: Value) -> HostCallLine {
    HostCallLine {
        call: call.into(),
        call_id: "c1".into(),
        args: args.to_string(),
        request: None,
    }
}

async fn call(host: &GrpcHost, call: &str, args: Value) -> Result<Value, CallError> {
    host.call("inv-9", line(call, args))
        .await
        .map(|result| serde_json::from_str(&result).unwrap())
}

#[tokio::test]
async fn each_call_is_its_rpc_and_each_answer_a_result_line() {
    let (addr, seen) = serve(None).await;
    let host = GrpcHost::connect_lazy(&addr, None)
        .unwrap()
        .with_plugin_version("2.0.1");

    assert_eq!(
        call(&host, "log", json!({"level": "info", "message": "hi"})).await,
        Ok(json!({"kept": false, "dropped": 7}))
    );
    let err = call(&host, "log", json!({"level": "bad", "message": "hi"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, "INVALID_ARGUMENT");

    // The stored text reaches the plugin as it was stored.
    let got = host
        .call("inv-9", line("storage.get", json!({"key": "k"})))
        .await
        .unwrap();
    assert_eq!(
        got,
        r#"{"found":true,"value":{"total":1.10,"big":123456789012345678901234567890}}"#
    );
    assert_eq!(
        call(&host, "storage.get", json!({"key": "missing"})).await,
        Ok(json!({"found": false}))
    );

    // The value goes to the host as the plugin wrote it.
    let put = HostCallLine {
        call: "storage.put".into(),
        call_id: "c1".into(),
        args: r#"{"key":"k","value":{"total": 1.10}}"#.into(),
        request: None,
    };
    assert_eq!(host.call("inv-9", put).await, Ok("{}".to_string()));
    assert_eq!(
        call(&host, "storage.put", json!({"key": "denied", "value": 1})).await,
        Err(CallError {
            code: "PERMISSION_DENIED".into(),
            message: "storage.put needs the permission storage:write".into(),
        })
    );
    assert_eq!(
        call(&host, "storage.delete", json!({"key": "old"})).await,
        Ok(json!({"existed": true}))
    );
    assert_eq!(
        call(&host, "storage.list", json!({"prefix": "a"})).await,
        Ok(json!({"keys": ["a", "b"], "nextPageToken": "p2"}))
    );
    assert_eq!(
        call(
            &host,
            "storage.list",
            json!({"prefix": "a", "pageToken": "p2", "pageSize": 2})
        )
        .await,
        Ok(json!({"keys": ["c"], "nextPageToken": ""}))
    );
    assert_eq!(
        call(&host, "storage.writtenBy", json!({})).await,
        Ok(json!({"writtenBy": "1.9.0"}))
    );
    let err = call(&host, "emit", json!({"type": "seen", "payload": {"n": 1}}))
        .await
        .unwrap_err();
    assert_eq!(err.code, "PERMISSION_DENIED");

    let requests: Vec<String> = seen.take().into_iter().map(|(r, _)| r).collect();
    assert_eq!(
        requests,
        [
            r#"LogRequest { invocation_id: "inv-9", level: "info", message: "hi" }"#,
            r#"LogRequest { invocation_id: "inv-9", level: "bad", message: "hi" }"#,
            r#"GetRequest { invocation_id: "inv-9", key: "k" }"#,
            r#"GetRequest { invocation_id: "inv-9", key: "missing" }"#,
            r#"PutRequest { invocation_id: "inv-9", key: "k", value_json: "{\"total\": 1.10}", plugin_version: "2.0.1" }"#,
            r#"PutRequest { invocation_id: "inv-9", key: "denied", value_json: "1", plugin_version: "2.0.1" }"#,
            r#"DeleteRequest { invocation_id: "inv-9", key: "old", plugin_version: "2.0.1" }"#,
            r#"ListRequest { invocation_id: "inv-9", prefix: "a", page_token: "", page_size: 0 }"#,
            r#"ListRequest { invocation_id: "inv-9", prefix: "a", page_token: "p2", page_size: 2 }"#,
            r#"WrittenByRequest { invocation_id: "inv-9" }"#,
            r#"EmitRequest { invocation_id: "inv-9", event_type: "seen", payload_json: "{\"n\":1}" }"#,
        ]
    );

    // Unknown calls and malformed args never reach the host.
    let err = call(&host, "storage.drop", json!({})).await.unwrap_err();
    assert_eq!(err.code, "UNIMPLEMENTED");
    let err = call(&host, "storage.put", json!({"value": 1}))
        .await
        .unwrap_err();
    assert_eq!(err.code, "INVALID_ARGUMENT");
    assert!(seen.take().is_empty());
}

#[tokio::test]
async fn an_unreachable_host_api_is_unavailable_to_the_plugin() {
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap().to_string()
    };
    let host = GrpcHost::connect_lazy(&addr, None).unwrap();
    let err = call(&host, "log", json!({"level": "info", "message": "m"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, "UNAVAILABLE", "{err:?}");
}

/// A server that requires a client certificate from `pki`'s CA, serving as `identity`.
fn server_tls(pki: &Pki, identity: &str) -> ServerTlsConfig {
    let (cert, key) = pki.issue(identity);
    ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(&pki.ca_pem))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_the_shim_speaks_as_its_certificate_and_follows_a_reissue() {
    let pki = Pki::new();
    let (addr, seen) = serve(Some(server_tls(&pki, ROUTER_IDENTITY))).await;
    let dir = tempfile::tempdir().unwrap();
    let me = plugin_identity("team-a", "echo");
    pki.write_plugin_tls(dir.path(), &me);

    let host = GrpcHost::connect_lazy(&addr, Some(ClientTlsFiles::in_dir(dir.path())))
        .unwrap()
        .recheck_certificate_every(Duration::ZERO);
    call(&host, "storage.delete", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(seen.take()[0].1, [me.as_str()]);

    // Same certificate: the channel (and its connection) stays.
    call(&host, "storage.delete", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(seen.take()[0].1, [me.as_str()]);

    // The operator re-issues the certificate (here with a new name, to tell them apart): the
    // next call uses it.
    let renamed = plugin_identity("team-a", "echo-reissued");
    pki.write_plugin_tls(dir.path(), &renamed);
    call(&host, "storage.delete", json!({"key": "k"}))
        .await
        .unwrap();
    assert_eq!(seen.take()[0].1, [renamed.as_str()]);

    // A broken re-issue keeps the working channel.
    std::fs::write(dir.path().join("tls.crt"), "not a certificate").unwrap();
    call(&host, "storage.delete", json!({"key": "k"}))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_calls_only_a_server_with_the_router_identity() {
    let pki = Pki::new();
    let (addr, seen) = serve(Some(server_tls(
        &pki,
        &plugin_identity("team-a", "impostor"),
    )))
    .await;
    let dir = tempfile::tempdir().unwrap();
    pki.write_plugin_tls(dir.path(), &plugin_identity("team-a", "echo"));
    let host = GrpcHost::connect_lazy(&addr, Some(ClientTlsFiles::in_dir(dir.path()))).unwrap();
    let err = call(&host, "log", json!({"level": "info", "message": "secret"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, "UNAVAILABLE", "{err:?}");
    assert!(seen.take().is_empty());
}
