//! The router's core against fake shims: deadlines, failure policies, pipelines, broadcasts,
//! breakers, auto-disable, concurrency and the payload and fan-out limits.

use super::*;
use crate::health_report::HealthChange;
use std::collections::BTreeMap;

/// What a fake plugin does with a call.
#[derive(Clone)]
enum Behaviour {
    /// Answers with its name appended to the payload's "path" array, after `delay`.
    Append(Duration),
    /// Answers with this output at once.
    Answer(String),
    /// Fails with this code and health outcome.
    Fail(Code, Outcome),
    /// Never answers.
    Hang,
}

#[derive(Default)]
struct FakeShims {
    behaviour: Mutex<HashMap<String, Behaviour>>,
    calls: Mutex<Vec<(String, Duration)>>,
    /// The payload of every call, as handed over (to see whether it was shared).
    payloads: Mutex<Vec<Arc<String>>>,
}

impl Caller for Arc<FakeShims> {
    fn call(
        &self,
        route: Arc<Route>,
        request: CallRequest,
    ) -> impl Future<Output = Result<Answer, CallFailure>> + Send {
        let name = route.plugin.name.clone();
        lock(&self.calls).push((name.clone(), request.deadline));
        lock(&self.payloads).push(Arc::clone(&request.payload));
        let b = lock(&self.behaviour)
            .get(&name)
            .cloned()
            .unwrap_or(Behaviour::Append(Duration::ZERO));
        async move {
            match b {
                Behaviour::Append(delay) => {
                    tokio::time::sleep(delay).await;
                    let mut v: serde_json::Value =
                        serde_json::from_str(&request.payload).expect("json");
                    v["path"]
                        .as_array_mut()
                        .map(|a| a.push(name.clone().into()))
                        .unwrap_or_else(|| v["path"] = serde_json::json!([name]));
                    Ok(Answer {
                        output: v.to_string(),
                        duration: delay,
                    })
                }
                Behaviour::Answer(output) => Ok(Answer {
                    output,
                    duration: Duration::ZERO,
                }),
                Behaviour::Fail(code, outcome) => Err(CallFailure {
                    code,
                    message: format!("{name} failed"),
                    outcome,
                }),
                Behaviour::Hang => {
                    std::future::pending::<()>().await;
                    unreachable!()
                }
            }
        }
    }
}

#[derive(Default)]
struct RecordingDisabler(
    Mutex<Vec<(String, String)>>,
    Mutex<Vec<(String, HealthChange)>>,
);

impl Disabler for RecordingDisabler {
    fn disable(&self, route: &Route, reason: &str) {
        lock(&self.0).push((route.plugin.to_string(), reason.to_string()));
    }
    fn health(&self, plugin: &PluginKey, _: &str, change: HealthChange) {
        lock(&self.1).push((plugin.to_string(), change));
    }
}

struct Setup {
    router: Router<Arc<FakeShims>>,
    shims: Arc<FakeShims>,
    disabled: Arc<RecordingDisabler>,
}

/// The tests' configuration: the breaker opens after 3 failures, 2 calls per plugin.
fn config() -> RouterConfig {
    RouterConfig {
        breaker: BreakerConfig {
            open_after: 3,
            ..BreakerConfig::default()
        },
        max_concurrency: 2,
        ..RouterConfig::default()
    }
}

/// Plugins in namespace "ns": (name, hook, timeout ms, policy, priority).
fn setup(plugins: &[(&str, Hook, u64, FailurePolicy, i32)]) -> Setup {
    setup_with(config(), plugins)
}

/// Three subscribers of onEvent, all of policy Fail: "a", "b" and "c", in this order.
const SUBSCRIBERS: [(&str, Hook, u64, FailurePolicy, i32); 3] = [
    ("a", OnEvent, 1000, Fail, 1),
    ("b", OnEvent, 1000, Fail, 2),
    ("c", OnEvent, 1000, Fail, 3),
];

/// The [`SUBSCRIBERS`], with a broadcast allowed to reach at most `max_subscribers` of them
/// and to send at most 1000 bytes in all.
fn broadcast_limited_to(max_subscribers: usize) -> Setup {
    let broadcast = BroadcastLimits {
        max_subscribers,
        max_bytes: 1000,
    };
    setup_with(
        RouterConfig {
            broadcast,
            ..config()
        },
        &SUBSCRIBERS,
    )
}

/// [`setup`] with `config`.
fn setup_with(config: RouterConfig, plugins: &[(&str, Hook, u64, FailurePolicy, i32)]) -> Setup {
    let shims = Arc::new(FakeShims::default());
    let disabled = Arc::new(RecordingDisabler::default());
    let router = Router::new(
        shims.clone(),
        disabled.clone(),
        config,
        Metrics::new().expect("metrics"),
    );
    let routes = plugins.iter().map(|(name, hook, ms, fp, prio)| Route {
        plugin: PluginKey::new("ns", *name),
        uid: format!("uid-{name}"),
        version: "1.0.0".into(),
        endpoints: vec!["198.19.0.1:50051".into()],
        hooks: BTreeMap::from([(
            *hook,
            HookRoute {
                timeout: Duration::from_millis(*ms),
                failure_policy: *fp,
                priority: *prio,
            },
        )]),
        auto_disable: None,
        verified: Vec::new(),
    });
    router.update(RouteTable::from_routes(routes));
    Setup {
        router,
        shims,
        disabled,
    }
}

impl Setup {
    /// `hook` of the plugin ns/`name` with `payload`, with no deadline of the caller's and no
    /// invocation id.
    async fn invoke(
        &self,
        name: &str,
        hook: &str,
        payload: &str,
    ) -> Result<(Answer, String), RouteError> {
        let key = PluginKey::new("ns", name);
        self.router
            .invoke(&key, hook, payload.into(), 0, String::new())
            .await
    }

    /// The pipeline of namespace "ns" over `payload` within `budget_ms` (0: no deadline of the
    /// caller's), for a caller who may call every plugin.
    async fn transform(&self, payload: &str, budget_ms: u32) -> Result<Pipeline, RouteError> {
        self.router
            .transform(payload.into(), budget_ms, String::new(), EVERY_PLUGIN)
            .await
    }

    /// `hook` broadcast to every subscriber in namespace "ns", for a caller who may call every
    /// plugin.
    async fn broadcast(&self, hook: &str, payload: &str) -> Result<Broadcast, RouteError> {
        self.router
            .broadcast(hook, payload.into(), 0, String::new(), EVERY_PLUGIN)
            .await
    }

    /// `hook` of the plugin ns/`name` with `payload` under the caller's `deadline_ms`.
    async fn invoke_within(
        &self,
        name: &str,
        hook: &str,
        payload: &str,
        deadline_ms: u32,
    ) -> Result<(Answer, String), RouteError> {
        let key = PluginKey::new("ns", name);
        self.router
            .invoke(&key, hook, payload.into(), deadline_ms, String::new())
            .await
    }

    /// The breaker state the router lists for ns/`name`.
    fn breaker(&self, name: &str) -> &'static str {
        self.router
            .list(None)
            .iter()
            .find(|l| l.route.plugin.name == name)
            .map_or("not listed", |l| l.breaker)
    }

    /// The value of the metric series `series` (name and labels), 0 when absent.
    fn metric(&self, series: &str) -> u64 {
        let text = self.router.metrics.render();
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0)
    }

    /// From now on the fake plugin `name` answers with `b`.
    fn behave(&self, name: &str, b: Behaviour) {
        lock(&self.shims.behaviour).insert(name.into(), b);
    }
}

fn anything(_: &PluginKey, _: Hook) -> bool {
    true
}

/// Namespace "ns", every plugin in it.
const EVERY_PLUGIN: Scope<'static> = Scope {
    namespace: "ns",
    may_call: &anything,
};

/// Who answered what, in order.
fn codes(steps: &[StepResult]) -> Vec<(&str, Code)> {
    steps
        .iter()
        .map(|r| (r.plugin.name.as_str(), r.code))
        .collect()
}

use FailurePolicy::{Fail, Ignore};
use Hook::{OnEvent, Transform};

#[tokio::test(start_paused = true)]
async fn invoke_passes_the_smaller_of_hook_timeout_and_caller_deadline() {
    let s = setup(&[("a", Transform, 200, Fail, 1)]);
    let key = PluginKey::new("ns", "a");
    let (answer, id) = s
        .router
        .invoke(&key, "transform", "{}".into(), 0, "inv-1".into())
        .await
        .expect("answer");
    assert_eq!(answer.output, r#"{"path":["a"]}"#);
    assert_eq!(id, "inv-1");
    s.router
        .invoke(&key, "transform", "{}".into(), 50, String::new())
        .await
        .expect("answer");
    let deadlines: Vec<_> = lock(&s.shims.calls).iter().map(|(_, d)| *d).collect();
    assert_eq!(
        deadlines,
        vec![Duration::from_millis(200), Duration::from_millis(50)]
    );
}

#[tokio::test(start_paused = true)]
async fn invoke_refuses_bad_input_and_unknown_plugins_with_a_reason() {
    let s = setup(&[("a", Transform, 200, Fail, 1)]);
    let invalid = [
        ("transform", "{", "not a JSON document"),
        ("onEvent", "{}", "it declares transform"),
        ("bogus", "{}", "callers call transform or onEvent"),
        ("onConfigChange", "{}", "lifecycle hook"),
        (
            "onUpgrade",
            "{\"from\":\"0.1.0\",\"to\":\"9.9.9\"}",
            "lifecycle hook",
        ),
    ];
    for (hook, payload, reason) in invalid {
        let e = s.invoke("a", hook, payload).await.expect_err("refused");
        assert_eq!(e.code, Code::InvalidArgument, "{hook} {payload}: {e}");
        assert!(e.message.contains(reason), "{e}");
    }
    let e = s
        .invoke("zz", "transform", "{}")
        .await
        .expect_err("refused");
    assert_eq!(e.code, Code::NotFound, "{e}");
    assert!(lock(&s.shims.calls).is_empty(), "nothing reached a plugin");
}

/// `depth` nested arrays: `[[[...]]]`.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The review's attack. Before the depth check the router passed it on (its `IgnoredAny`
/// parse has no recursion limit) and the plugin's own parse failed: here the fake plugin's
/// `serde_json::Value` parse panicked with "recursion limit exceeded" at column 128.
#[tokio::test(start_paused = true)]
async fn a_payload_nested_100000_deep_is_refused_before_any_plugin_is_called() {
    let s = setup(&[("a", Transform, 200, Fail, 1), ("e", OnEvent, 200, Fail, 1)]);
    let deep = nested(100_000);
    let e = s
        .invoke("a", "transform", &deep)
        .await
        .expect_err("refused");
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert_eq!(
        e.message,
        "payload_json nests arrays and objects more than 64 levels deep; the router passes \
         at most 64 levels to a plugin (--max-payload-depth): flatten the document"
    );
    let e = s.broadcast("onEvent", &deep).await.expect_err("refused");
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    let e = s.transform(&deep, 0).await.expect_err("refused");
    assert_eq!(e.code, Code::InvalidArgument, "{e}");
    assert!(lock(&s.shims.calls).is_empty(), "nothing reached a plugin");
    for rpc in ["invoke", "broadcast", "transform"] {
        let series =
            format!("airlock_router_refused_total{{reason=\"payload_too_deep\",rpc=\"{rpc}\"}}");
        assert_eq!(s.metric(&series), 1, "{series}");
    }
    // 64 levels pass.
    s.invoke("a", "transform", &format!("{{\"x\":{}}}", nested(63)))
        .await
        .expect("64 levels");
}

#[tokio::test(start_paused = true)]
async fn a_payload_over_the_size_limit_is_refused_naming_field_limit_and_fix() {
    let s = setup_with(
        RouterConfig {
            payload: PayloadLimits {
                max_bytes: 100,
                max_depth: 64,
            },
            ..config()
        },
        &[("a", Transform, 200, Fail, 1)],
    );
    let big = format!("{{\"secret\":\"{}\"}}", "s".repeat(100));
    let e = s.invoke("a", "transform", &big).await.expect_err("refused");
    assert_eq!(e.code, Code::InvalidArgument);
    for part in [
        "payload_json is 113 bytes",
        "at most 100 bytes",
        "--max-payload-bytes",
        "send a smaller document",
    ] {
        assert!(e.message.contains(part), "{e}");
    }
    assert!(!e.message.contains("secret"), "no payload bytes: {e}");
    assert!(lock(&s.shims.calls).is_empty(), "nothing reached a plugin");
    assert_eq!(
        s.metric("airlock_router_refused_total{reason=\"payload_too_large\",rpc=\"invoke\"}"),
        1
    );
}

/// An auto-disabled (or disabled) plugin has no breaker: its `airlock_breaker_open` series goes
/// when it leaves the routes (before, it read 1 for as long as the plugin stayed disabled),
/// its call counters stay (why it was disabled), and a re-enabled plugin starts closed.
#[tokio::test(start_paused = true)]
async fn a_disabled_plugin_has_no_open_breaker_and_comes_back_closed() {
    let s = setup(&[("slow", Transform, 1000, Fail, 1)]);
    s.behave("slow", Behaviour::Hang);
    for _ in 0..3 {
        s.invoke("slow", "transform", "{}")
            .await
            .expect_err("timeout");
    }
    assert_eq!(s.breaker("slow"), "open");
    let series = "airlock_breaker_open{namespace=\"ns\",plugin=\"slow\"}";
    assert_eq!(s.metric(series), 1);

    let table = s.router.table();
    let routes: Vec<Route> = table.routes(None).map(|r| (**r).clone()).collect();
    s.router.update(
        RouteTable::from_routes(routes.clone())
            .with_unroutable(PluginKey::new("ns", "slow"), "auto-disabled"),
    );
    let text = s.router.metrics.render();
    assert!(!text.contains(series), "{text}");
    assert!(
        s.metric("airlock_hook_invocations_total{hook=\"transform\",namespace=\"ns\",plugin=\"slow\",result=\"timeout\"}") >= 3,
        "the evidence stays: {text}"
    );

    s.router.update(RouteTable::from_routes(routes));
    assert_eq!(s.breaker("slow"), "closed");
}

/// Issue 12: five calls with `deadline_ms: 1` to a slow plugin are the caller's outcome (the
/// breaker stays closed, nothing is auto-disabled), while five real hook timeouts still open
/// the breaker and auto-disable it.
#[tokio::test(start_paused = true)]
async fn the_callers_short_deadline_is_not_counted_against_the_plugin() {
    let s = setup(&[("slow", Transform, 1000, Fail, 1)]);
    s.behave("slow", Behaviour::Hang);
    for _ in 0..5 {
        let e = s
            .invoke_within("slow", "transform", "{}", 1)
            .await
            .expect_err("the caller's deadline runs out");
        assert_eq!(e.code, Code::DeadlineExceeded);
        assert!(
            e.message.contains(
                "no answer within 1 ms (the caller's deadline, shorter than the hook's \
                 timeout of 1000 ms)"
            ),
            "{e}"
        );
    }
    // What the shim answers when it kills the plugin at (or queues past) a 1 ms deadline.
    for outcome in [Outcome::Timeout, Outcome::Unreachable] {
        s.behave("slow", Behaviour::Fail(Code::DeadlineExceeded, outcome));
        s.invoke_within("slow", "transform", "{}", 1)
            .await
            .expect_err("timeout");
    }
    assert_eq!(s.breaker("slow"), "closed");
    assert!(lock(&s.disabled.0).is_empty(), "not auto-disabled");
    assert_eq!(
        s.metric(
            "airlock_hook_invocations_total{hook=\"transform\",namespace=\"ns\",plugin=\"slow\",result=\"caller_deadline\"}"
        ),
        7
    );
    // Still restarts: the shim kills a plugin at whatever deadline it was given (the five
    // calls the router gave up on, and the one the shim reported as a timeout).
    assert_eq!(
        s.metric("airlock_plugin_restarts_total{namespace=\"ns\",plugin=\"slow\"}"),
        6
    );

    // The hook's own timeout (no deadline, or one no shorter than the timeout): the plugin's.
    s.behave("slow", Behaviour::Hang);
    for (i, deadline_ms) in [0, 1000, 5000, 0, 0].into_iter().enumerate() {
        if i >= 3 {
            // The breaker opened after 3; a trial call after each cool-down.
            tokio::time::advance(Duration::from_secs(31)).await;
        }
        let e = s
            .invoke_within("slow", "transform", "{}", deadline_ms)
            .await
            .expect_err("timeout");
        assert!(e.message.contains("(the hook's timeout)"), "{e}");
    }
    assert_eq!(s.breaker("slow"), "open");
    assert_eq!(
        *lock(&s.disabled.0),
        vec![("ns/slow".to_string(), "5 consecutive timeouts".to_string())]
    );
}

#[test]
fn a_deadline_is_the_callers_only_when_shorter_than_the_hooks_timeout() {
    let timeout = Duration::from_millis(100);
    let ms = Duration::from_millis;
    assert_eq!(Deadline::of(timeout, None), Deadline::Hook(timeout));
    assert_eq!(
        Deadline::of(timeout, Some(ms(100))),
        Deadline::Hook(timeout)
    );
    assert_eq!(
        Deadline::of(timeout, Some(ms(500))),
        Deadline::Hook(timeout)
    );
    assert_eq!(Deadline::of(timeout, Some(ms(1))), Deadline::Caller(ms(1)));
}

#[tokio::test(start_paused = true)]
async fn a_hanging_plugin_times_out_at_its_hook_timeout() {
    let s = setup(&[("slow", Transform, 100, Fail, 1)]);
    s.behave("slow", Behaviour::Hang);
    let started = tokio::time::Instant::now();
    let e = s
        .invoke("slow", "transform", "{}")
        .await
        .expect_err("timeout");
    assert_eq!(e.code, Code::DeadlineExceeded);
    assert!(
        e.message
            .starts_with("Plugin ns/slow: no answer within 100 ms"),
        "{e}"
    );
    assert_eq!(
        started.elapsed(),
        Duration::from_millis(100) + NETWORK_GRACE
    );
}

#[tokio::test(start_paused = true)]
async fn repeated_failures_open_the_breaker_and_timeouts_auto_disable() {
    let s = setup(&[
        ("bad", Transform, 100, Fail, 1),
        ("good", Transform, 100, Fail, 2),
    ]);
    s.behave(
        "bad",
        Behaviour::Fail(Code::DeadlineExceeded, Outcome::Timeout),
    );
    for _ in 0..3 {
        s.invoke("bad", "transform", "{}").await.expect_err("fails");
    }
    let e = s
        .invoke("bad", "transform", "{}")
        .await
        .expect_err("breaker open");
    assert_eq!(e.code, Code::Unavailable);
    assert!(e.message.contains("circuit breaker is open"), "{e}");
    assert_eq!(
        lock(&s.shims.calls).len(),
        3,
        "the open breaker made no call"
    );
    let listed = s.router.list(None);
    assert_eq!(listed[0].breaker, "open");
    assert_eq!(listed[1].breaker, "closed");

    // Two more timeouts (trial calls after cool-downs) make five: auto-disabled, once.
    for _ in 0..2 {
        tokio::time::advance(Duration::from_secs(31)).await;
        s.invoke("bad", "transform", "{}").await.expect_err("fails");
    }
    assert_eq!(
        *lock(&s.disabled.0),
        vec![("ns/bad".to_string(), "5 consecutive timeouts".to_string())]
    );
    let text = s.router.metrics.render();
    assert!(
        text.contains("airlock_plugin_restarts_total{namespace=\"ns\",plugin=\"bad\"} 5"),
        "{text}"
    );
    assert!(
        text.contains("airlock_breaker_open{namespace=\"ns\",plugin=\"bad\"} 1"),
        "{text}"
    );
    // The other plugin never noticed.
    s.invoke("good", "transform", "{}")
        .await
        .expect("good answers");
}

/// Issue 17: status.health learns each counted failure with its kind and the consecutive count,
/// and the first answer after failures; not answers in general (the hot path), nor a caller's own
/// short deadline, nor an unreachable pod.
#[tokio::test(start_paused = true)]
async fn counted_failures_and_the_recovery_reach_the_health_record() {
    let s = setup(&[("p", Transform, 1000, Fail, 1)]);
    s.invoke("p", "transform", "{}").await.expect("answers");
    s.behave(
        "p",
        Behaviour::Fail(Code::Unavailable, Outcome::OutOfMemory),
    );
    s.invoke("p", "transform", "{}").await.expect_err("oom");
    s.behave(
        "p",
        Behaviour::Fail(Code::Unavailable, Outcome::Unreachable),
    );
    s.invoke("p", "transform", "{}")
        .await
        .expect_err("unreachable");
    s.behave("p", Behaviour::Fail(Code::Internal, Outcome::Protocol));
    s.invoke("p", "transform", "{}")
        .await
        .expect_err("protocol");
    // Three failures opened the breaker: the trial call after the cool-down answers.
    s.behave("p", Behaviour::Append(Duration::ZERO));
    tokio::time::advance(Duration::from_secs(31)).await;
    s.invoke("p", "transform", "{}").await.expect("answers");
    s.invoke("p", "transform", "{}").await.expect("answers");
    // An error answer after a failure is a recovery too: the plugin answered.
    s.behave(
        "p",
        Behaviour::Fail(Code::DeadlineExceeded, Outcome::Timeout),
    );
    s.invoke("p", "transform", "{}").await.expect_err("timeout");
    s.behave("p", Behaviour::Fail(Code::Aborted, Outcome::Answered));
    s.invoke("p", "transform", "{}")
        .await
        .expect_err("an error answer");
    let failed = |kind, consecutive| HealthChange::Failed {
        kind,
        message: "p failed".to_string(),
        consecutive,
    };
    let seen: Vec<HealthChange> = lock(&s.disabled.1).iter().map(|(_, c)| c.clone()).collect();
    assert_eq!(
        seen,
        vec![
            failed(airlock_core::failure::FailureKind::OutOfMemory, 1),
            // The unreachable call is a breaker failure (consecutive 2) but not counted.
            failed(airlock_core::failure::FailureKind::Protocol, 3),
            HealthChange::Recovered,
            failed(airlock_core::failure::FailureKind::Timeout, 1),
            HealthChange::Recovered,
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_trial_call_abandoned_by_its_caller_does_not_wedge_the_breaker() {
    let s = setup(&[("flaky", Transform, 1000, Fail, 1)]);
    s.behave(
        "flaky",
        Behaviour::Fail(Code::Unavailable, Outcome::Unreachable),
    );
    for _ in 0..3 {
        let _ = s.invoke("flaky", "transform", "{}").await;
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    // The trial call hangs and its caller gives up: the future is dropped mid-call.
    s.behave("flaky", Behaviour::Hang);
    let abandoned = tokio::time::timeout(
        Duration::from_millis(10),
        s.invoke("flaky", "transform", "{}"),
    )
    .await;
    assert!(abandoned.is_err(), "the caller gave up");
    // The next caller gets the trial instead of "a trial call is in flight" forever.
    s.behave("flaky", Behaviour::Append(Duration::ZERO));
    s.invoke("flaky", "transform", "{}")
        .await
        .expect("the next trial runs and closes the breaker");
    assert_eq!(s.router.list(None)[0].breaker, "closed");
}

#[tokio::test(start_paused = true)]
async fn calls_beyond_the_concurrency_limit_are_refused() {
    let s = setup(&[("busy", Transform, 1000, Fail, 1)]);
    s.behave("busy", Behaviour::Append(Duration::from_millis(500)));
    let (a, b, c) = tokio::join!(
        s.invoke("busy", "transform", "{}"),
        s.invoke("busy", "transform", "{}"),
        s.invoke("busy", "transform", "{}")
    );
    let codes: Vec<_> = [a, b, c]
        .into_iter()
        .map(|r| r.map(|_| Code::Ok).unwrap_or_else(|e| e.code))
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == Code::Ok).count(), 2);
    assert!(codes.contains(&Code::ResourceExhausted), "{codes:?}");
}

#[tokio::test(start_paused = true)]
async fn calls_in_flight_are_counted_per_plugin_while_they_run() {
    let s = setup(&[
        ("slow", Transform, 1000, Fail, 1),
        ("idle", Transform, 1000, Fail, 1),
    ]);
    s.behave("slow", Behaviour::Append(Duration::from_millis(500)));
    let series = "airlock_router_calls_in_flight{namespace=\"ns\",plugin=\"slow\"}";
    let watch = async {
        // Both calls have started (paused time moves only when every task waits).
        tokio::time::sleep(Duration::from_millis(100)).await;
        let during = s.metric(series);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        (during, s.metric(series))
    };
    let (a, b, (during, after)) = tokio::join!(
        s.invoke("slow", "transform", "{}"),
        s.invoke("slow", "transform", "{}"),
        watch
    );
    assert!(a.is_ok() && b.is_ok());
    assert_eq!(during, 2, "two calls in flight");
    assert_eq!(after, 0, "none once they answered");
    assert_eq!(
        s.metric("airlock_router_calls_in_flight{namespace=\"ns\",plugin=\"idle\"}"),
        0
    );
}

mod fan_out;
