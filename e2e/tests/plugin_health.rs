//! Failure bookkeeping on the cluster (issue 17): a plugin process that outgrows its memory limit
//! is killed by the kernel; the shim tells that kill from other crashes (the cgroup's OOM count),
//! the caller's error names the limit and the fix, the router counts it in `status.health` as
//! `oom` and publishes a Warning Event that names the limit, and the next answered call brings the
//! consecutive count back to 0 while the totals stay.

use std::time::Duration;

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginHealth;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::events::v1::Event;
use serde_json::json;
use tonic::Code;

use airlock_e2e::plugins::{wait_plugin, warned};
use airlock_e2e::router::{Fixture, ensure_status, in_fixture};

const NAME: &str = "crash-test";
/// The memory limit the fixture gives every plugin (`resources.limits.memory: 64Mi`).
const LIMIT: &str = "64Mi";

#[tokio::test]
async fn an_out_of_memory_kill_is_counted_and_explained_with_the_memory_limit() -> Result<()> {
    in_fixture("health", &["log"], scenario).await
}

/// The trust level decides which failures auto-disable: with `crashKinds: [oom]` and
/// `afterCrashes: 2`, two crashes of another kind leave the plugin running (the router's default
/// rule, 3 of crash or oom, would have disabled it at the first oom after them), and the second
/// out-of-memory kill auto-disables it.
#[tokio::test]
async fn the_trust_level_decides_which_failures_auto_disable() -> Result<()> {
    in_fixture("autodisable", &["log"], counted_kinds).await
}

async fn counted_kinds(f: &Fixture) -> Result<()> {
    f.sandbox
        .set_limits(json!({"autoDisable": {"afterCrashes": 2, "crashKinds": ["oom"]}}))
        .await?;
    apply(f).await?;
    let plugins = f.ns.api::<Plugin>();
    wait_plugin(
        &plugins,
        NAME,
        "status.limits.autoDisable from the trust level",
        |p| {
            p.status
                .as_ref()
                .and_then(|s| s.limits.as_ref())
                .and_then(|l| l.auto_disable.as_ref())
                .is_some_and(|a| a.after_crashes == Some(2))
        },
    )
    .await?;
    f.wait_serving(&[NAME], "transform").await?;

    // One call after another, each after the shim's crash backoff (250 ms, doubling) is over.
    let fail = |payload: serde_json::Value, code: Code, message: &'static str| async move {
        tokio::time::sleep(Duration::from_secs(3)).await;
        f.expect_failure(NAME, "transform", payload, code, message)
            .await
    };
    for _ in 0..2 {
        fail(json!({"mode": "exit"}), Code::Unavailable, "exited").await?;
    }
    fail(
        json!({"mode": "exhaust-memory"}),
        Code::Unavailable,
        "out of memory",
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let p = plugins.get(NAME).await?;
    ensure!(
        p.auto_disabled().is_none(),
        "crashes of a kind the trust level does not count leave the plugin running: {:?}",
        p.status
    );
    fail(
        json!({"mode": "exhaust-memory"}),
        Code::Unavailable,
        "out of memory",
    )
    .await?;
    let disabled = wait_plugin(&plugins, NAME, "auto-disabled by the second oom", |p| {
        p.auto_disabled().is_some()
    })
    .await?;
    let why = disabled.auto_disabled().unwrap_or_default().to_string();
    ensure!(
        why.contains("2 crashes"),
        "the reason names the rule met: {why}"
    );
    let counted = wait_plugin(&plugins, NAME, "status.health with both kinds", |p| {
        health(p).is_some_and(|h| h.failures.oom >= 2 && h.failures.crash >= 2)
    })
    .await?;
    ensure!(
        health(&counted).is_some_and(|h| h.failures.timeout == 0),
        "{:?}",
        health(&counted)
    );
    Ok(())
}

/// crash-test with its transform (within the sandbox's maxTimeout).
async fn apply(f: &Fixture) -> Result<()> {
    f.apply(
        NAME,
        NAME,
        json!([{"name": "transform", "timeout": "2s"}]),
        json!(["log"]),
        json!({}),
    )
    .await
}

fn health(p: &Plugin) -> Option<&PluginHealth> {
    p.status.as_ref()?.health.as_ref()
}

async fn scenario(f: &Fixture) -> Result<()> {
    apply(f).await?;
    f.wait_serving(&[NAME], "transform").await?;

    let status = f
        .invoke_err(NAME, "transform", json!({"mode": "exhaust-memory"}))
        .await?;
    ensure_status(
        &status,
        Code::Unavailable,
        &format!("out of memory at the container's memory limit of {LIMIT}"),
    )
    .context("the caller learns the plugin ran out of memory, and at which limit")?;
    ensure!(
        status.message().contains("spec.resources.limits.memory"),
        "the error says what to do: {}",
        status.message()
    );

    let plugins = f.ns.api::<Plugin>();
    let counted = wait_plugin(&plugins, NAME, "status.health counting the oom", |p| {
        health(p).is_some_and(|h| h.failures.oom >= 1)
    })
    .await?;
    let h = health(&counted).context("status.health")?;
    let last = h
        .last_failure
        .as_ref()
        .context("status.health.lastFailure")?;
    ensure!(
        last.kind == "oom" && last.message.contains(LIMIT) && h.consecutive_failures >= 1,
        "the last failure is the oom, with its limit: {h:?}"
    );
    ensure!(
        h.failures.crash == 0 && h.failures.timeout == 0,
        "an out-of-memory kill is not counted as another kind: {h:?}"
    );

    let events = f.ns.api::<Event>();
    let mut told = false;
    for _ in 0..30 {
        told = warned(&events, NAME, "OutOfMemory", LIMIT).await?;
        if told {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ensure!(told, "a Warning Event OutOfMemory names the limit {LIMIT}");

    // A fresh process answers the next call (crash-test's transform throws: an answer, ABORTED):
    // the consecutive count is 0 again, the totals stay.
    f.expect_failure(NAME, "transform", json!({}), Code::Aborted, "throws")
        .await
        .context("the plugin answers again after the oom")?;
    wait_plugin(
        &plugins,
        NAME,
        "status.health back to 0 consecutive failures",
        |p| health(p).is_some_and(|h| h.consecutive_failures == 0 && h.failures.oom >= 1),
    )
    .await?;
    Ok(())
}
