//! What reaches the HookRouter service at all: names checked before authorization, request bodies
//! read only after admission and only up to the payload limit, and the warnings of a flood.

use airlock_proto::router::v1::hook_router_client::HookRouterClient;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::{Channel, Endpoint};

use super::*;
use crate::callers::audit_budget::{SUMMARY_EVERY, WARNINGS_PER_MINUTE};
use crate::dispatch::limits::DEFAULT_MAX_BYTES;

/// Issue (MEDIUM): namespaces and plugin names of any size went into authorization, audit records
/// and the refusal's grpc-message, as sent.
#[tokio::test]
async fn names_are_checked_before_authorization_and_never_echoed() {
    let s = setup();
    let huge = "N".repeat(10_000);
    let e = s
        .invoke(FE_A, (&huge, "x", "transform"))
        .await
        .expect_err("refused");
    ensure(
        &e,
        Code::InvalidArgument,
        "plugin.namespace must be a namespace name: a DNS label of at most 63 characters",
    );
    let long_name = "n".repeat(254);
    for name in [long_name.as_str(), "Not_A_Name", "a/b"] {
        let e = s
            .invoke(FE_A, ("a", name, "transform"))
            .await
            .expect_err("refused");
        ensure(
            &e,
            Code::InvalidArgument,
            "plugin.name must be a Plugin name: a DNS subdomain of at most 253 characters",
        );
        assert!(!e.message().contains(name), "{e:?}");
    }
    let e = s.broadcast(FE_A, &huge).await.expect_err("refused");
    ensure(
        &e,
        Code::InvalidArgument,
        "namespace must be a namespace name",
    );
    let e = s.transform(FE_A, "a.b").await.expect_err("refused");
    ensure(
        &e,
        Code::InvalidArgument,
        "namespace must be a namespace name",
    );
    let e = s
        .service
        .list_plugins(request(
            api::ListPluginsRequest {
                namespace: huge.clone(),
            },
            metadata(FE_A),
        ))
        .await
        .expect_err("refused");
    ensure(
        &e,
        Code::InvalidArgument,
        "namespace must be a namespace name",
    );
    // A hook of the caller's making is not quoted back either.
    let hook = "h".repeat(100_000);
    let e = s
        .invoke(FE_A, ("a", "x", &hook))
        .await
        .expect_err("refused");
    ensure(
        &e,
        Code::InvalidArgument,
        "the hook (100000 bytes) is not a hook",
    );
    let statuses = format!("{e:?}");
    assert!(!statuses.contains("NNNN") && !statuses.contains("hhhh"));
    assert!(
        lock(&s.audit).is_empty(),
        "nothing got as far as authorization"
    );
    assert!(s.calls().is_empty());
}

/// Issue (MEDIUM): the UNAVAILABLE path logged a warning for every request.
#[tokio::test(start_paused = true)]
async fn a_flood_of_tokens_that_cannot_be_checked_logs_a_few_warnings_a_minute() {
    let logs = Logs::capture();
    let s = setup();
    s.reviewer
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..100 {
        let e = s
            .invoke(FE_A, ("a", "x", "transform"))
            .await
            .expect_err("down");
        assert_eq!(e.code(), Code::Unavailable);
    }
    assert_eq!(s.refused("invoke", "token_review_unavailable"), 100);
    assert_eq!(
        logs.text().matches("cannot authenticate a caller").count(),
        WARNINGS_PER_MINUTE as usize
    );
    tokio::time::advance(SUMMARY_EVERY).await;
    s.gate.flush_audit();
    let suppressed = 100 - WARNINGS_PER_MINUTE;
    assert!(
        logs.text().contains(&format!(
            "{suppressed} more warnings about callers' tokens the router could not check were \
             suppressed"
        )),
        "{}",
        logs.text()
    );
    assert!(
        lock(&s.audit).is_empty(),
        "not the caller's doing: not audited"
    );
}

/// The router's HookRouter service on a loopback port, as `server::run` serves it.
async fn serve(s: &Setup) -> HookRouterClient<Channel> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a port");
    let addr = listener.local_addr().expect("its address");
    let service = super::super::server(s.router.clone(), s.gate.clone(), DEFAULT_MAX_BYTES);
    tokio::spawn(
        crate::server::grpc_server()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("an endpoint")
        .connect()
        .await
        .expect("connected");
    HookRouterClient::new(channel)
}

fn invoke_with(payload_json: String, token: Option<&str>) -> Request<api::InvokeRequest> {
    let message = api::InvokeRequest {
        payload_json,
        ..invoke_request("a", "x", "transform")
    };
    request(message, token.map(metadata).unwrap_or_default())
}

/// Issue (HIGH): tonic read and decoded a whole request (up to 4 MiB) before the gate in the
/// handler ran, for callers without a token too.
#[tokio::test]
async fn a_request_body_is_read_only_after_admission_and_only_up_to_the_payload_limit() {
    let s = setup();
    s.grant(&[binding(
        "a",
        "{callers: [{serviceAccount: fe}], plugins: ['*'], hooks: ['*']}",
    )]);
    let mut client = serve(&s).await;
    let big = format!(r#"{{"blob":"{}"}}"#, "x".repeat(2 << 20));

    // No token: refused on the headers; the 2 MiB body was never decoded (else OUT_OF_RANGE).
    let e = client
        .invoke(invoke_with(big.clone(), None))
        .await
        .expect_err("no token");
    ensure(&e, Code::Unauthenticated, "no caller identity");
    assert_eq!(s.refused("invoke", "unauthenticated"), 1);
    assert_eq!(lock(&s.audit).len(), 1, "audited by the gate, as before");

    // Admitted, but larger than any valid request: not decoded.
    let e = client
        .invoke(invoke_with(big, Some(FE_A)))
        .await
        .expect_err("too large");
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");

    // Just over the payload limit, within the envelope: decoded, and refused by the payload
    // check with its own message.
    let over = format!(r#""{}""#, "x".repeat(DEFAULT_MAX_BYTES - 1));
    let e = client
        .invoke(invoke_with(over, Some(FE_A)))
        .await
        .expect_err("over the payload limit");
    ensure(
        &e,
        Code::InvalidArgument,
        &format!("payload_json is {} bytes", DEFAULT_MAX_BYTES + 1),
    );

    // And a caller with a token and a sensible request is answered, through the same edge.
    let out = client
        .invoke(invoke_with("{}".into(), Some(FE_A)))
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(out.output_json, r#"{"plugin":"a/x"}"#);
    assert_eq!(s.reviewer.reviews(), 1);
}
