//! Callers of the hook router are authenticated and authorized (issue 12, point 1). Before, any
//! pod could invoke any namespace's plugins and a Broadcast without a namespace reached every
//! tenant's. Now:
//! - no token, a token for another audience, or a made-up one: UNAUTHENTICATED, saying how to get
//!   a token;
//! - a ServiceAccount of namespace A without a PluginCallerBinding: PERMISSION_DENIED calling A's
//!   plugin, allowed once A's tenant binds it;
//! - A's caller cannot reach B's plugin — not with a binding A's tenant writes in A naming B's
//!   plugin — until B's tenant grants it, and then only A's ServiceAccount, not B's of the same
//!   name;
//! - a Broadcast from A reaches only A's plugins that A granted it, never B's plugin subscribed to
//!   the same hook;
//! - each refusal is counted in `airlock_router_refused_total` and audited, and no token shows in
//!   the router's logs.
//!
//! The bindings are written by each namespace's tenant (a ServiceAccount bound to the built-in
//! `edit` ClusterRole there, `airlock_e2e::tenant`): what any namespace editor can do. Airlock is
//! installed by its Helm chart; nothing is mocked.

use airlock_crds::PluginCallerBinding;
use airlock_e2e::callers::{self, Bearer, RouterClient, Subject};
use airlock_e2e::router::{self, CALLER, Fixture, ensure_status, in_fixture};
use airlock_e2e::tenant::Tenant;
use airlock_e2e::wait;
use airlock_proto::router::v1::{
    BroadcastRequest, InvokeRequest, InvokeResponse, ListPluginsRequest, PluginRef,
};
use anyhow::{Context, Result, ensure};
use serde_json::json;
use tonic::{Code, Status};

/// The sandboxes' trust policy allows what event-logger asks for.
const PERMISSIONS: [&str; 3] = ["log", "read:data", "storage:write"];

/// The ServiceAccount the attacks call as: a host application of namespace A.
const FRONTEND: &str = "frontend";

async fn invoke(
    c: &RouterClient,
    ns: &str,
    name: &str,
    hook: &str,
) -> Result<InvokeResponse, Status> {
    Ok(c.clone()
        .invoke(InvokeRequest {
            plugin: Some(PluginRef {
                namespace: ns.into(),
                name: name.into(),
            }),
            hook: hook.into(),
            payload_json: json!({"type": "e2e-callers"}).to_string(),
            deadline_ms: 0,
            invocation_id: format!("e2e-callers-{name}"),
        })
        .await?
        .into_inner())
}

/// The call must fail with `code` and a message containing `message`.
async fn refused(
    c: &RouterClient,
    (ns, name, hook): (&str, &str, &str),
    code: Code,
    message: &str,
) -> Result<()> {
    match invoke(c, ns, name, hook).await {
        Ok(out) => anyhow::bail!("{ns}/{name} {hook} answered {out:?}, but must be refused"),
        Err(status) => ensure_status(&status, code, message),
    }
}

/// Waits until the router lets the call through (its watch of the bindings trails their writes).
async fn until_allowed(c: &RouterClient, (ns, name, hook): (&str, &str, &str)) -> Result<()> {
    wait::until(
        &format!("the router to let the call of {ns}/{name} {hook} through"),
        airlock_e2e::WAIT,
        async || Ok(invoke(c, ns, name, hook).await.map_err(|s| s.code())),
        Result::is_ok,
    )
    .await
    .map(drop)
}

/// Sum over the router replicas of `airlock_router_refused_total{reason, rpc}`.
async fn refusals(f: &Fixture, reason: &str, rpc: &str) -> Result<f64> {
    let metrics = router::metrics(&f.client).await?;
    Ok(router::counter_sum(
        &metrics,
        &format!("airlock_router_refused_total{{reason=\"{reason}\",rpc=\"{rpc}\"}}"),
    ))
}

#[tokio::test]
async fn a_caller_without_a_token_for_the_routers_audience_is_unauthenticated() -> Result<()> {
    in_fixture("callers-authn", &PERMISSIONS, async |f: &Fixture| {
        let hooks = json!([{"name": "transform", "timeout": "2s"}]);
        f.apply("hello", "hello", hooks, json!(["log"]), json!({}))
            .await?;
        f.wait_serving(&["hello"], "transform").await?;
        let before = refusals(f, "unauthenticated", "invoke").await?;
        let call = (f.ns(), "hello", "transform");

        let anonymous = router::connect_with(&f.client, Bearer::none()).await?;
        refused(
            &anonymous,
            call,
            Code::Unauthenticated,
            "no caller identity",
        )
        .await?;
        refused(
            &anonymous,
            call,
            Code::Unauthenticated,
            "kubectl create token <serviceaccount> -n <namespace> --audience airlock-router",
        )
        .await
        .context("the refusal says how to get a token")?;
        let listed = anonymous
            .clone()
            .list_plugins(ListPluginsRequest::default())
            .await
            .err()
            .context("an anonymous caller lists nothing")?;
        ensure_status(&listed, Code::Unauthenticated, "no caller identity")?;

        // The fixture's own ServiceAccount (bound to every plugin here), but tokens for another
        // audience, or for the API server's own (a pod's automounted token): not for the router.
        let mut tokens = Vec::new();
        for audiences in [&["not-airlock"][..], &[][..]] {
            let token = callers::token(&f.client, f.ns(), CALLER, audiences).await?;
            let caller = router::connect_with(&f.client, Bearer::token(&token)?).await?;
            refused(
                &caller,
                call,
                Code::Unauthenticated,
                "did not accept the token for the audience airlock-router",
            )
            .await
            .with_context(|| format!("a token for {audiences:?}"))?;
            tokens.push(token);
        }
        let forged =
            router::connect_with(&f.client, Bearer::token("eyJhbGciOiJub25lIn0.e30.")?).await?;
        refused(
            &forged,
            call,
            Code::Unauthenticated,
            "the caller's token is refused",
        )
        .await?;

        // The fixture's caller, with the right token, still gets its answer.
        f.expect_greeting("hello", json!({"name": "caller"}), "hello, caller")
            .await?;
        let after = refusals(f, "unauthenticated", "invoke").await?;
        ensure!(
            after >= before + 5.0,
            "every refusal is counted: {before} then {after}"
        );
        let audit = router::router_audit(&f.client).await?;
        ensure!(
            audit.iter().any(|r| r["event"] == "CallerDenied"
                && r["reason"] == "Unauthenticated"
                && r["rpc"] == "invoke"),
            "an audit record CallerDenied/Unauthenticated"
        );
        tokens.push(f.token.clone());
        for token in &tokens {
            ensure!(
                router::router_log_lines(&f.client, token).await?.is_empty(),
                "a caller's token is in the router's log"
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
async fn callers_reach_only_what_the_plugins_namespace_grants_them() -> Result<()> {
    in_fixture("callers-a", &PERMISSIONS, async |a: &Fixture| {
        in_fixture("callers-b", &PERMISSIONS, async |b: &Fixture| {
            namespaces_grant_their_own_plugins(a, b).await
        })
        .await
    })
    .await
}

async fn namespaces_grant_their_own_plugins(a: &Fixture, b: &Fixture) -> Result<()> {
    let on_event = || json!([{"name": "onEvent", "timeout": "2s"}]);
    let perms = || json!(["log", "storage:write"]);
    for name in ["a-events", "a-private"] {
        a.apply(name, "event-logger", on_event(), perms(), json!({}))
            .await?;
    }
    b.apply("b-events", "event-logger", on_event(), perms(), json!({}))
        .await?;
    a.wait_serving(&["a-events", "a-private"], "onEvent")
        .await?;
    b.wait_serving(&["b-events"], "onEvent").await?;
    let (ans, bns) = (a.ns(), b.ns());
    let tenant_a = tenant_of(a).await?;
    let tenant_b = tenant_of(b).await?;
    let forbidden_before = refusals(a, "forbidden", "invoke").await?;

    // (b) A's frontend, no binding: denied on A's own plugin, naming what to create.
    let frontend = callers::connect_as(&a.client, ans, FRONTEND).await?;
    refused(
        &frontend,
        (ans, "a-events", "onEvent"),
        Code::PermissionDenied,
        &format!(
            "create a PluginCallerBinding in namespace {ans} listing serviceAccount {FRONTEND} of \
             namespace {ans}"
        ),
    )
    .await
    .context("default deny")?;
    // A's tenant grants it a-events' onEvent.
    let bindings_a = tenant_a.api::<PluginCallerBinding>();
    callers::bind(
        &bindings_a,
        FRONTEND,
        &[Subject::local(FRONTEND)],
        &["a-events"],
        &["onEvent"],
    )
    .await?;
    until_allowed(&frontend, (ans, "a-events", "onEvent")).await?;
    refused(
        &frontend,
        (ans, "a-private", "onEvent"),
        Code::PermissionDenied,
        "not this plugin",
    )
    .await
    .context("the binding names a-events only")?;

    // (d) A Broadcast without a namespace is A's, and reaches only what A granted: a-events, not
    // a-private, and never B's b-events subscribed to the same hook.
    let broadcast = |namespace: &str| BroadcastRequest {
        hook: "onEvent".into(),
        payload_json: json!({"type": "e2e-callers"}).to_string(),
        deadline_ms: 0,
        invocation_id: "e2e-callers-broadcast".into(),
        namespace: namespace.into(),
    };
    let reached: Vec<String> = frontend
        .clone()
        .broadcast(broadcast(""))
        .await?
        .into_inner()
        .results
        .iter()
        .filter_map(|r| {
            r.plugin
                .as_ref()
                .map(|p| format!("{}/{}", p.namespace, p.name))
        })
        .collect();
    ensure!(
        reached == [format!("{ans}/a-events")],
        "the broadcast reached {reached:?}"
    );
    let e = frontend
        .clone()
        .broadcast(broadcast(bns))
        .await
        .err()
        .context("a broadcast into B, which grants nothing")?;
    // Refused on B's bindings alone, before the route table is read: the answer says nothing
    // of B's subscribers (not how many, nor whether there are any).
    ensure_status(
        &e,
        Code::PermissionDenied,
        &format!(
            "may call no plugin of namespace {bns}: no PluginCallerBinding in that namespace \
             lists the caller"
        ),
    )?;
    ensure!(
        !e.message().contains("subscribed"),
        "the refusal hints at B's subscribers: {e:?}"
    );
    let listed: Vec<String> = frontend
        .clone()
        .list_plugins(ListPluginsRequest::default())
        .await?
        .into_inner()
        .plugins
        .iter()
        .filter_map(|p| {
            p.plugin
                .as_ref()
                .map(|r| format!("{}/{}", r.namespace, r.name))
        })
        .collect();
    ensure!(
        listed == [format!("{ans}/a-events")],
        "the listing shows what the caller may call, and only that: {listed:?}"
    );

    // (c) B's plugin: denied. A's tenant writes a binding in A naming b-events (and a-private, to
    // see when the router has it): a-private opens, b-events stays shut.
    let to_b = (bns, "b-events", "onEvent");
    refused(
        &frontend,
        to_b,
        Code::PermissionDenied,
        &format!("namespace {bns}"),
    )
    .await?;
    callers::bind(
        &bindings_a,
        "reach-b",
        &[Subject::local(FRONTEND), Subject::of(ans, FRONTEND)],
        &["b-events", "a-private"],
        &["*"],
    )
    .await?;
    until_allowed(&frontend, (ans, "a-private", "onEvent")).await?;
    refused(
        &frontend,
        to_b,
        Code::PermissionDenied,
        &format!(
            "create a PluginCallerBinding in namespace {bns} listing serviceAccount {FRONTEND} of \
             namespace {ans}"
        ),
    )
    .await
    .context("a binding in A grants nothing in B")?;

    // B's tenant grants A's frontend: through. B's own frontend is someone else: still denied.
    callers::bind(
        &tenant_b.api::<PluginCallerBinding>(),
        "from-a",
        &[Subject::of(ans, FRONTEND)],
        &["b-events"],
        &["onEvent"],
    )
    .await?;
    until_allowed(&frontend, to_b).await?;
    let b_frontend = callers::connect_as(&b.client, bns, FRONTEND).await?;
    refused(
        &b_frontend,
        to_b,
        Code::PermissionDenied,
        &format!("system:serviceaccount:{bns}:{FRONTEND}"),
    )
    .await
    .context("the same ServiceAccount name in B is not A's")?;

    // (e) Counted and audited, naming the caller and the target.
    let forbidden_after = refusals(a, "forbidden", "invoke").await?;
    ensure!(
        forbidden_after >= forbidden_before + 4.0,
        "invoke refusals counted: {forbidden_before} then {forbidden_after}"
    );
    ensure!(
        refusals(a, "forbidden", "broadcast").await? >= 1.0,
        "the broadcast into B counted"
    );
    let audit = router::router_audit(&a.client).await?;
    let caller = format!("system:serviceaccount:{ans}:{FRONTEND}");
    ensure!(
        audit.iter().any(|r| r["event"] == "CallerDenied"
            && r["reason"] == "PermissionDenied"
            && r["caller"] == caller.as_str()
            && r["target"]["namespace"] == bns
            && r["target"]["plugin"] == "b-events"),
        "an audit record of {caller} refused b-events"
    );
    Ok(())
}

/// The tenant of `f`'s namespace, once the API server lets it write PluginCallerBindings there
/// (the chart's airlock-plugin-editor, aggregated into `edit`).
async fn tenant_of(f: &Fixture) -> Result<Tenant> {
    let tenant = Tenant::of(&f.sandbox).await?;
    wait::until(
        &format!(
            "{} to be allowed to create plugincallerbindings",
            tenant.user
        ),
        airlock_e2e::WAIT,
        async || {
            tenant
                .may("create", "airlock.dev", "plugincallerbindings")
                .await
        },
        |allowed| *allowed,
    )
    .await
    .context("is the chart installed with rbac.aggregateToEdit=true (airlock-plugin-editor)?")?;
    Ok(tenant)
}
