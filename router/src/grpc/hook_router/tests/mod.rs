//! The HookRouter service in-process, behind its gate: a fake TokenReview (the API server's
//! answers from a table), fake shims, bindings handed to the gate as the watch would. What a
//! caller gets for each refusal, what is counted and audited, and that the token never shows.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;

use airlock_crds::PluginCallerBinding;
use serde_json::{Value, json};
use tonic::Code;
use tonic::metadata::MetadataMap;

use super::*;
use crate::callers::Bindings;
use crate::callers::authn::tests::{FakeReviewer, metadata};
use crate::dispatch::{Answer, CallFailure, CallRequest, Disabler, RouterConfig};
use crate::metrics::Metrics;
use crate::table::{HookRoute, Route, RouteTable};

/// Answers every call with `{"plugin": "<namespace>/<name>"}` after `delay`; counts the calls.
#[derive(Default)]
struct Shims {
    calls: Mutex<Vec<String>>,
    delay: Duration,
}

impl Caller for Arc<Shims> {
    fn call(
        &self,
        route: Arc<Route>,
        _request: CallRequest,
    ) -> impl Future<Output = Result<Answer, CallFailure>> + Send {
        let name = route.plugin.to_string();
        lock(&self.calls).push(name.clone());
        let delay = self.delay;
        async move {
            tokio::time::sleep(delay).await;
            Ok(Answer {
                output: json!({ "plugin": name }).to_string(),
                duration: delay,
            })
        }
    }
}

struct NoDisable;

impl Disabler for NoDisable {
    fn disable(&self, _: &Route, _: &str) {}
    fn health(&self, _: &airlock_core::PluginKey, _: &str, _: crate::health_report::HealthChange) {}
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

mod edge;
mod scope;

/// (namespace, name, hooks) of the Active plugins.
const PLUGINS: [(&str, &str, &[Hook]); 5] = [
    ("a", "x", &[Hook::OnEvent, Hook::Transform]),
    ("a", "y", &[Hook::OnEvent]),
    // A sanitiser every document of a's pipeline must go through.
    ("a", "s", &[Hook::Transform]),
    ("b", "z", &[Hook::OnEvent]),
    ("b", "t", &[Hook::Transform]),
];

/// The token of a/fe, and of b/fe (another ServiceAccount of the same name): JWTs for the router's
/// audience that expire in 2100 (the fake TokenReview decides whom they name).
const FE_A: &str = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiYWlybG9jay1yb3V0ZXIiXSwiZXhwIjo0MTAyNDQ0ODAwLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YTpmZSJ9.c2ln";
const FE_B: &str = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsiYWlybG9jay1yb3V0ZXIiXSwiZXhwIjo0MTAyNDQ0ODAwLCJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YjpmZSJ9.c2ln";

struct Setup {
    router: Arc<Router<Arc<Shims>>>,
    service: HookRouterService<Arc<Shims>>,
    gate: Arc<Gate>,
    reviewer: Arc<FakeReviewer>,
    shims: Arc<Shims>,
    metrics: Metrics,
    audit: Arc<Mutex<Vec<Value>>>,
}

fn setup_with(max_calls_per_caller: usize, delay: Duration) -> Setup {
    let metrics = Metrics::new().expect("metrics");
    let shims = Arc::new(Shims {
        delay,
        ..Shims::default()
    });
    let router = Arc::new(Router::new(
        shims.clone(),
        Arc::new(NoDisable),
        RouterConfig::default(),
        metrics.clone(),
    ));
    router.update(routes());
    let reviewer = Arc::new(FakeReviewer::default());
    reviewer.accept(FE_A, "system:serviceaccount:a:fe");
    reviewer.accept(FE_B, "system:serviceaccount:b:fe");
    let audit = Arc::new(Mutex::new(Vec::new()));
    let records = audit.clone();
    let gate = Arc::new(Gate::new(
        reviewer.clone(),
        "airlock-router".into(),
        max_calls_per_caller,
        metrics.clone(),
        Arc::new(move |r: &Value| lock(&records).push(r.clone())),
    ));
    Setup {
        router: router.clone(),
        service: HookRouterService::new(router, gate.clone()),
        gate,
        reviewer,
        shims,
        metrics,
        audit,
    }
}

/// The route table of [`PLUGINS`].
fn routes() -> RouteTable {
    RouteTable::from_routes(PLUGINS.iter().map(|(ns, name, hooks)| {
        Route {
            plugin: PluginKey::new(*ns, *name),
            uid: format!("uid-{name}"),
            version: "1.0.0".into(),
            endpoints: vec!["198.19.0.1:50051".into()],
            hooks: hooks
                .iter()
                .map(|h| {
                    (
                        *h,
                        HookRoute {
                            timeout: Duration::from_secs(1),
                            failure_policy: FailurePolicy::Fail,
                            priority: 100,
                        },
                    )
                })
                .collect::<BTreeMap<_, _>>(),
            auto_disable: None,
            verified: Vec::new(),
        }
    }))
}

fn setup() -> Setup {
    setup_with(64, Duration::ZERO)
}

/// A binding in `ns` (YAML flow of `spec`).
fn binding(ns: &str, spec: &str) -> PluginCallerBinding {
    serde_yaml::from_str(&format!(
        "apiVersion: airlock.dev/v1alpha1\nkind: PluginCallerBinding\nmetadata: {{name: grant, \
         namespace: {ns}}}\nspec: {spec}"
    ))
    .expect("a binding")
}

fn request<T>(message: T, auth: MetadataMap) -> Request<T> {
    let mut r = Request::new(message);
    *r.metadata_mut() = auth;
    r
}

fn invoke_request(ns: &str, name: &str, hook: &str) -> api::InvokeRequest {
    api::InvokeRequest {
        plugin: Some(api::PluginRef {
            namespace: ns.into(),
            name: name.into(),
        }),
        hook: hook.into(),
        payload_json: "{}".into(),
        deadline_ms: 0,
        invocation_id: String::new(),
    }
}

fn broadcast_request(namespace: &str) -> api::BroadcastRequest {
    api::BroadcastRequest {
        hook: "onEvent".into(),
        payload_json: "{}".into(),
        namespace: namespace.into(),
        ..api::BroadcastRequest::default()
    }
}

impl Setup {
    async fn invoke(
        &self,
        token: &str,
        (ns, name, hook): (&str, &str, &str),
    ) -> Result<api::InvokeResponse, Status> {
        self.service
            .invoke(request(invoke_request(ns, name, hook), metadata(token)))
            .await
            .map(Response::into_inner)
    }

    async fn broadcast(&self, token: &str, ns: &str) -> Result<Vec<String>, Status> {
        let b = self
            .service
            .broadcast(request(broadcast_request(ns), metadata(token)))
            .await?
            .into_inner();
        Ok(b.results
            .iter()
            .filter_map(|r| r.plugin.as_ref())
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect())
    }

    async fn transform(&self, token: &str, ns: &str) -> Result<api::TransformResponse, Status> {
        self.service
            .transform(request(
                api::TransformRequest {
                    payload_json: "{}".into(),
                    namespace: ns.into(),
                    ..api::TransformRequest::default()
                },
                metadata(token),
            ))
            .await
            .map(Response::into_inner)
    }

    fn grant(&self, bindings: &[PluginCallerBinding]) {
        self.gate.update_bindings(Bindings::new(bindings));
    }

    fn refused(&self, rpc: &str, reason: &str) -> u64 {
        let series = format!("airlock_router_refused_total{{reason=\"{reason}\",rpc=\"{rpc}\"}}");
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    fn calls(&self) -> Vec<String> {
        lock(&self.shims.calls).clone()
    }
}

fn ensure(status: &Status, code: Code, message: &str) {
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(message),
        "{message:?} not in {status:?}"
    );
}

#[tokio::test]
async fn a_call_without_a_token_is_unauthenticated_counted_and_audited() {
    let s = setup();
    let e = s
        .service
        .invoke(request(
            invoke_request("a", "x", "transform"),
            MetadataMap::new(),
        ))
        .await
        .expect_err("refused");
    ensure(&e, Code::Unauthenticated, "no caller identity");
    ensure(
        &e,
        Code::Unauthenticated,
        "kubectl create token <serviceaccount> -n <namespace> --audience airlock-router",
    );
    assert_eq!(s.refused("invoke", "unauthenticated"), 1);
    let audit = lock(&s.audit).clone();
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["event"], "CallerDenied");
    assert_eq!(audit[0]["reason"], "Unauthenticated");
    assert_eq!(audit[0]["caller"], Value::Null);
    assert!(s.calls().is_empty());
    // A token the API server does not accept for the router's audience: UNAUTHENTICATED too.
    let e = s
        .invoke("a-token-for-something-else", ("a", "x", "transform"))
        .await
        .expect_err("refused");
    ensure(
        &e,
        Code::Unauthenticated,
        "did not accept the token for the audience airlock-router",
    );
}

#[tokio::test(start_paused = true)]
async fn a_callers_token_is_reviewed_once_then_read_from_the_cache() {
    let s = setup();
    s.grant(&[binding(
        "a",
        "{callers: [{serviceAccount: fe}], plugins: ['*'], hooks: ['*']}",
    )]);
    for _ in 0..20 {
        s.invoke(FE_A, ("a", "x", "transform"))
            .await
            .expect("allowed");
    }
    assert_eq!(s.reviewer.reviews(), 1, "one TokenReview for 20 calls");
    assert_eq!(s.calls().len(), 20);
    let metrics = s.metrics.render();
    assert!(
        metrics.contains("airlock_router_token_reviews_total{result=\"authenticated\"} 1"),
        "{metrics}"
    );
}

/// Default deny; a binding in the caller's namespace naming another namespace's plugin grants
/// nothing; the target namespace's binding does, for the ServiceAccount of the namespace it names.
#[tokio::test]
async fn only_a_binding_of_the_target_namespace_lets_a_caller_in() {
    let s = setup();
    let e = s
        .invoke(FE_A, ("a", "x", "transform"))
        .await
        .expect_err("denied");
    ensure(
        &e,
        Code::PermissionDenied,
        "system:serviceaccount:a:fe may not call hook transform of Plugin a/x",
    );
    ensure(
        &e,
        Code::PermissionDenied,
        "create a PluginCallerBinding in namespace a listing serviceAccount fe of namespace a",
    );
    s.grant(&[binding(
        "a",
        "{callers: [{serviceAccount: fe}], plugins: [x, z], hooks: ['*']}",
    )]);
    s.invoke(FE_A, ("a", "x", "transform"))
        .await
        .expect("granted in a");
    let e = s
        .invoke(FE_A, ("b", "z", "onEvent"))
        .await
        .expect_err("a's binding says nothing of b");
    ensure(
        &e,
        Code::PermissionDenied,
        "create a PluginCallerBinding in namespace b",
    );
    // Not even whether a plugin exists: denied before the lookup.
    let e = s
        .invoke(FE_A, ("b", "nothing-here", "onEvent"))
        .await
        .expect_err("denied");
    assert_eq!(e.code(), Code::PermissionDenied);

    s.grant(&[
        binding(
            "a",
            "{callers: [{serviceAccount: fe}], plugins: [x, z], hooks: ['*']}",
        ),
        binding(
            "b",
            "{callers: [{serviceAccount: fe, namespace: a}], plugins: [z], hooks: [onEvent]}",
        ),
    ]);
    let out = s
        .invoke(FE_A, ("b", "z", "onEvent"))
        .await
        .expect("granted by b");
    assert_eq!(out.output_json, r#"{"plugin":"b/z"}"#);
    // b's own fe is not a's fe.
    let e = s
        .invoke(FE_B, ("b", "z", "onEvent"))
        .await
        .expect_err("another caller");
    assert_eq!(e.code(), Code::PermissionDenied);
    assert_eq!(s.calls(), ["a/x", "b/z"]);
    assert_eq!(s.refused("invoke", "forbidden"), 4);
    let audit = lock(&s.audit).clone();
    let last = audit.last().expect("records");
    assert_eq!(last["caller"], "system:serviceaccount:b:fe");
    assert_eq!(
        last["target"],
        json!({"namespace": "b", "plugin": "z", "hook": "onEvent"})
    );
}

#[tokio::test]
async fn the_listing_shows_only_what_the_caller_may_call() {
    let s = setup();
    s.grant(&[
        binding(
            "a",
            "{callers: [{serviceAccount: fe}], plugins: [x], hooks: [transform]}",
        ),
        binding(
            "b",
            "{callers: [{serviceAccount: fe, namespace: a}], plugins: ['*'], hooks: ['*']}",
        ),
    ]);
    let listed = s
        .service
        .list_plugins(request(api::ListPluginsRequest::default(), metadata(FE_A)))
        .await
        .expect("list")
        .into_inner()
        .plugins;
    let seen: Vec<(String, Vec<String>)> = listed
        .iter()
        .map(|p| {
            let r = p.plugin.clone().unwrap_or_default();
            (
                format!("{}/{}", r.namespace, r.name),
                p.hooks.iter().map(|h| h.name.clone()).collect(),
            )
        })
        .collect();
    let expected: Vec<(String, Vec<String>)> = vec![
        ("a/x".into(), vec!["transform".into()]),
        ("b/t".into(), vec!["transform".into()]),
        ("b/z".into(), vec!["onEvent".into()]),
    ];
    assert_eq!(seen, expected);
}

#[tokio::test(start_paused = true)]
async fn calls_over_the_per_caller_limit_are_resource_exhausted() {
    let s = setup_with(2, Duration::from_millis(100));
    s.grant(&[
        binding(
            "a",
            "{callers: [{serviceAccount: fe}], plugins: ['*'], hooks: ['*']}",
        ),
        binding(
            "b",
            "{callers: [{serviceAccount: fe}], plugins: ['*'], hooks: ['*']}",
        ),
    ]);
    let call = || s.invoke(FE_A, ("a", "x", "transform"));
    let (one, two, three, other) = tokio::join!(
        call(),
        call(),
        call(),
        s.invoke(FE_B, ("b", "t", "transform"))
    );
    let codes: Vec<Code> = [one, two, three]
        .into_iter()
        .map(|r| r.map_or_else(|e| e.code(), |_| Code::Ok))
        .collect();
    assert_eq!(
        codes.iter().filter(|c| **c == Code::Ok).count(),
        2,
        "{codes:?}"
    );
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
    other.expect("another caller has its own slots");
    assert_eq!(s.refused("invoke", "caller_concurrency"), 1);
    let audit = lock(&s.audit).clone();
    assert_eq!(
        audit.last().map(|r| r["reason"].clone()),
        Some(json!("CallerConcurrency"))
    );
    // The slots came back.
    call().await.expect("free again");
}

/// Captures every log line (all levels) while alive.
struct Logs {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Logs {
    fn capture() -> Self {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_writer(move || Writer(writer.clone()))
            .finish();
        Self {
            buffer,
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.buffer)).into_owned()
    }
}

struct Writer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Writer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        lock(&self.0).extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Tokens go to the API server and nowhere else: not into statuses, log lines or audit records,
/// whatever happens to them (refused, unreviewable, forbidden, accepted).
#[tokio::test]
async fn the_token_never_shows_in_a_status_a_log_line_or_an_audit_record() {
    let logs = Logs::capture();
    let s = setup();
    let bad = "eyJhbGciOiJSUzI1NiJ9.YmFkLXRva2VuLXNlY3JldA.c2lnbmF0dXJl";
    let mut statuses = Vec::new();
    statuses.push(
        s.invoke(bad, ("a", "x", "transform"))
            .await
            .expect_err("refused"),
    );
    s.reviewer
        .down
        .store(true, std::sync::atomic::Ordering::SeqCst);
    statuses.push(
        s.invoke(FE_A, ("a", "x", "transform"))
            .await
            .expect_err("unavailable"),
    );
    s.reviewer
        .down
        .store(false, std::sync::atomic::Ordering::SeqCst);
    statuses.push(
        s.invoke(FE_A, ("a", "x", "transform"))
            .await
            .expect_err("forbidden"),
    );
    s.grant(&[binding(
        "a",
        "{callers: [{serviceAccount: fe}], plugins: ['*'], hooks: ['*']}",
    )]);
    s.invoke(FE_A, ("a", "x", "transform"))
        .await
        .expect("allowed");
    let mut with_two = metadata(FE_A);
    with_two.append(
        "authorization",
        format!("Bearer {bad}").parse().expect("ascii"),
    );
    statuses.push(
        s.service
            .invoke(request(invoke_request("a", "x", "transform"), with_two))
            .await
            .expect_err("two tokens"),
    );
    assert_eq!(
        statuses.iter().map(Status::code).collect::<Vec<_>>(),
        [
            Code::Unauthenticated,
            Code::Unavailable,
            Code::PermissionDenied,
            Code::Unauthenticated
        ]
    );
    let audit = serde_json::to_string(&*lock(&s.audit)).expect("json");
    let logged = logs.text();
    assert!(
        logged.contains("cannot authenticate a caller"),
        "the unavailable review is logged: {logged}"
    );
    for token in [bad, FE_A, "YmFkLXRva2VuLXNlY3JldA"] {
        for status in &statuses {
            assert!(
                !format!("{status:?}").contains(token),
                "{token} in {status:?}"
            );
        }
        assert!(
            !audit.contains(token),
            "{token} in the audit records {audit}"
        );
        assert!(!logged.contains(token), "{token} in the logs {logged}");
    }
}
