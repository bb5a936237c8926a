//! Broadcasts and pipelines: which plugins they reach (one namespace, only those the caller may
//! call), in which order, under which budget and fan-out limits, and what a failed step does.

use super::*;
use std::collections::BTreeMap;

/// A hostile (or steered) plugin's output does not reach the next step: the step fails with
/// INTERNAL and its failure policy decides; the plugin's health is untouched.
#[tokio::test(start_paused = true)]
async fn a_pipeline_steps_output_is_held_to_the_payload_limits() {
    let s = setup(&[
        ("deep", Transform, 200, Ignore, 1),
        ("next", Transform, 200, Fail, 2),
    ]);
    s.behave("deep", Behaviour::Answer(nested(65)));
    let p = s.transform(r#"{"path":[]}"#, 0).await.expect("pipeline");
    assert_eq!(
        codes(&p.steps),
        vec![("deep", Code::Internal), ("next", Code::Ok)]
    );
    assert!(
        p.steps[0]
            .error
            .contains("output_json nests arrays and objects more than 64"),
        "{:?}",
        p.steps[0].error
    );
    // The skipped step's input passed on unchanged.
    assert_eq!(p.output, r#"{"path":["next"]}"#);
    assert_eq!(
        s.metric("airlock_router_refused_total{reason=\"output_too_deep\",rpc=\"transform\"}"),
        1
    );

    let s = setup(&[
        ("deep", Transform, 200, Fail, 1),
        ("next", Transform, 200, Fail, 2),
    ]);
    s.behave("deep", Behaviour::Answer(nested(65)));
    for _ in 0..5 {
        let e = s.transform("{}", 0).await.expect_err("fails");
        assert_eq!(e.code, Code::Internal);
        assert!(
            e.message.starts_with(
                "pipeline step ns/deep (priority 1, failurePolicy Fail) failed: its answer \
                 was not passed on: output_json nests"
            ),
            "{e}"
        );
    }
    assert_eq!(lock(&s.shims.calls).len(), 5, "next never ran");
    assert_eq!(
        s.breaker("deep"),
        "closed",
        "not counted against the plugin"
    );
}

/// A pipeline's budget is the caller's: a step cut short by it is not the plugin's timeout.
#[tokio::test(start_paused = true)]
async fn a_step_cut_short_by_the_pipeline_budget_is_the_callers_outcome() {
    let s = setup(&[("slow", Transform, 1000, Fail, 1)]);
    s.behave("slow", Behaviour::Hang);
    for _ in 0..5 {
        let e = s.transform("{}", 10).await.expect_err("budget spent");
        assert_eq!(e.code, Code::DeadlineExceeded);
    }
    assert_eq!(s.breaker("slow"), "closed");
    assert!(lock(&s.disabled.0).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_broadcast_shares_one_payload_among_its_subscribers() {
    let s = setup(&SUBSCRIBERS);
    s.broadcast("", r#"{"e":1}"#).await.expect("broadcast");
    let payloads = lock(&s.shims.payloads);
    assert_eq!(payloads.len(), 3);
    assert!(
        payloads.iter().all(|p| Arc::ptr_eq(p, &payloads[0])),
        "one payload, not a copy per subscriber"
    );
}

#[tokio::test(start_paused = true)]
async fn a_broadcast_over_the_fan_out_limits_is_refused_before_any_call() {
    let s = broadcast_limited_to(2);
    let e = s.broadcast("", "{}").await.expect_err("3 > 2 subscribers");
    assert_eq!(e.code, Code::FailedPrecondition);
    assert!(
        e.message.starts_with(
            "3 plugins you may call subscribe to onEvent in namespace ns; a broadcast reaches at \
             most 2"
        ),
        "{e}"
    );
    let s = broadcast_limited_to(3);
    let big = format!(r#"{{"x":"{}"}}"#, "x".repeat(326));
    let e = s.broadcast("", &big).await.expect_err("3 × 334 > 1000");
    assert_eq!(e.code, Code::FailedPrecondition);
    assert!(e.message.contains("makes 1002 bytes to send"), "{e}");
    assert!(!e.message.contains("xxx"), "no payload bytes: {e}");
    assert!(lock(&s.shims.calls).is_empty(), "nothing reached a plugin");
    assert_eq!(
        s.metric("airlock_router_refused_total{reason=\"broadcast_too_large\",rpc=\"broadcast\"}"),
        1
    );
    s.broadcast("", &format!(r#"{{"x":"{}"}}"#, "x".repeat(325)))
        .await
        .expect("3 × 333 = 999");
}

#[tokio::test(start_paused = true)]
async fn broadcast_reaches_every_subscriber_in_parallel_and_applies_failure_policies() {
    let s = setup(&[
        ("a", OnEvent, 1000, Fail, 1),
        ("b", OnEvent, 1000, Ignore, 2),
        ("c", OnEvent, 1000, Fail, 3),
        ("t", Transform, 1000, Fail, 1),
    ]);
    s.behave("a", Behaviour::Append(Duration::from_millis(300)));
    s.behave("b", Behaviour::Fail(Code::Aborted, Outcome::Answered));
    s.behave("c", Behaviour::Append(Duration::from_millis(300)));
    let started = tokio::time::Instant::now();
    let b = s.broadcast("", r#"{"e":1}"#).await.expect("broadcast");
    // Parallel: two 300 ms plugins take 300 ms, not 600.
    assert_eq!(started.elapsed(), Duration::from_millis(300));
    assert_eq!(
        codes(&b.results),
        vec![("a", Code::Ok), ("b", Code::Aborted), ("c", Code::Ok)]
    );
    assert!(!b.failed, "only an Ignore plugin failed");

    s.behave("c", Behaviour::Fail(Code::Unavailable, Outcome::Crash));
    let b = s.broadcast("onEvent", "{}").await.expect("broadcast");
    assert!(b.failed, "a Fail plugin failed");
}

#[tokio::test(start_paused = true)]
async fn a_pipeline_runs_in_priority_order_and_skips_ignored_failures() {
    let s = setup(&[
        ("third", Transform, 200, Fail, 30),
        ("first", Transform, 200, Fail, 10),
        ("second", Transform, 200, Ignore, 20),
    ]);
    s.behave("second", Behaviour::Fail(Code::Aborted, Outcome::Answered));
    let p = s.transform(r#"{"path":[]}"#, 0).await.expect("pipeline");
    assert_eq!(p.output, r#"{"path":["first","third"]}"#);
    assert_eq!(
        codes(&p.steps),
        vec![
            ("first", Code::Ok),
            ("second", Code::Aborted),
            ("third", Code::Ok)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_failing_fail_step_ends_the_pipeline_naming_the_plugin() {
    let s = setup(&[
        ("first", Transform, 200, Fail, 10),
        ("second", Transform, 200, Fail, 20),
    ]);
    s.behave("first", Behaviour::Fail(Code::Aborted, Outcome::Answered));
    let e = s.transform("{}", 0).await.expect_err("fails");
    assert_eq!(e.code, Code::Aborted);
    assert!(
        e.message.contains("pipeline step ns/first (priority 10"),
        "{e}"
    );
    assert_eq!(lock(&s.shims.calls).len(), 1, "second never ran");
}

#[tokio::test(start_paused = true)]
async fn the_pipeline_budget_shrinks_each_later_step() {
    let s = setup(&[
        ("a", Transform, 1000, Fail, 1),
        ("b", Transform, 1000, Ignore, 2),
    ]);
    s.behave("a", Behaviour::Append(Duration::from_millis(700)));
    let p = s.transform("{}", 900).await.expect("pipeline");
    let deadlines: Vec<_> = lock(&s.shims.calls)
        .iter()
        .map(|(n, d)| (n.clone(), *d))
        .collect();
    assert_eq!(
        deadlines,
        vec![
            ("a".into(), Duration::from_millis(900)),
            ("b".into(), Duration::from_millis(200))
        ]
    );
    assert_eq!(p.output, r#"{"path":["a","b"]}"#);
}

/// A route to `namespace`/`name` for `hook` (1 s timeout, policy Fail, `priority`).
fn route(namespace: &str, name: &str, hook: Hook, priority: i32) -> Route {
    Route {
        plugin: PluginKey::new(namespace, name),
        uid: format!("uid-{name}"),
        version: "1.0.0".into(),
        endpoints: vec!["198.19.0.1:50051".into()],
        hooks: BTreeMap::from([(
            hook,
            HookRoute {
                timeout: Duration::from_secs(1),
                failure_policy: Fail,
                priority,
            },
        )]),
        auto_disable: None,
        verified: Vec::new(),
    }
}

/// Issue 12: a broadcast and a pipeline cover one namespace. A broadcast reaches only the plugins
/// the caller may call there; the others are skipped (counted, never called), and the fan-out
/// limits count only the plugins called. A pipeline runs all of the namespace's transform plugins
/// or none: one the caller may not call stops it before any step runs. A plugin of another
/// namespace never runs, whatever its priority.
#[tokio::test(start_paused = true)]
async fn broadcasts_and_pipelines_cover_one_namespace_and_only_what_the_caller_may_call() {
    let s = broadcast_limited_to(2);
    s.router.update(RouteTable::from_routes([
        route("ns", "a", OnEvent, 1),
        route("ns", "b", OnEvent, 2),
        route("ns", "private", OnEvent, 3),
        route("other", "x", OnEvent, 0),
        route("ns", "t-granted", Transform, 20),
        route("ns", "t-private", Transform, 10),
        route("other", "t-other", Transform, 0),
    ]));
    let granted = |key: &PluginKey, _: Hook| key.namespace == "ns" && !key.name.contains("private");
    let scope = Scope {
        namespace: "ns",
        may_call: &granted,
    };
    // Three subscribers in ns and a limit of two: only the two the caller may call count.
    let b = s
        .router
        .broadcast("onEvent", "{}".into(), 0, String::new(), scope)
        .await
        .expect("broadcast");
    assert_eq!(codes(&b.results), vec![("a", Code::Ok), ("b", Code::Ok)]);
    assert_eq!((b.hook, b.skipped), (OnEvent, 1));
    // Issue: t-granted alone used to run, past t-private (say, a sanitiser) before it.
    let p = s
        .router
        .transform(r#"{"path":[]}"#.into(), 0, String::new(), scope)
        .await
        .expect("pipeline");
    assert!(p.steps.is_empty(), "no step ran");
    assert_eq!(p.output, r#"{"path":[]}"#, "the input, untouched");
    assert_eq!(p.ungranted, [PluginKey::new("ns", "t-private")]);
    let called: Vec<String> = lock(&s.shims.calls)
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(called, ["a", "b"]);
    // Every transform plugin of the namespace granted: the whole pipeline, in order.
    let transforms = |key: &PluginKey, hook: Hook| key.namespace == "ns" && hook == Transform;
    let all = Scope {
        namespace: "ns",
        may_call: &transforms,
    };
    let p = s
        .router
        .transform(r#"{"path":[]}"#.into(), 0, String::new(), all)
        .await
        .expect("pipeline");
    assert_eq!(p.output, r#"{"path":["t-private","t-granted"]}"#);
    assert!(p.ungranted.is_empty());

    // Nothing granted: nothing called, every subscriber skipped (the gRPC edge answers
    // PERMISSION_DENIED naming the missing binding).
    let nobody = |_: &PluginKey, _: Hook| false;
    let scope = Scope {
        namespace: "other",
        may_call: &nobody,
    };
    let b = s
        .router
        .broadcast("", "{}".into(), 0, String::new(), scope)
        .await
        .expect("an empty broadcast");
    assert!(b.results.is_empty());
    assert_eq!(b.skipped, 1);
    assert_eq!(lock(&s.shims.calls).len(), 4, "no new call");
}
