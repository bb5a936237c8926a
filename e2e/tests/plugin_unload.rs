//! `onUnload` on the cluster (issue 17): when a Plugin is disabled and when it is deleted, the
//! shim of each of its pods sends `onUnload` to the plugin before the pod stops. event-logger
//! answers it with a line in its log; the test follows each pod's log (as `kubectl logs -f`
//! would) from before the change until the container exits, and looks for the plugin's line and
//! the shim's record that the hook completed.

use std::time::Duration;

use airlock_crds::Plugin;
use anyhow::{Context, Result, ensure};
use futures::{AsyncBufReadExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, LogParams};
use serde_json::json;
use tokio::task::JoinHandle;

use airlock_e2e::plugins::set_enabled;
use airlock_e2e::router::{Fixture, in_fixture};

const NAME: &str = "event-logger";
/// What event-logger writes to its log in `onUnload`.
const PLUGIN_LINE: &str = "event-logger: onUnload";
/// What the shim logs once the plugin answered `onUnload`.
const SHIM_LINE: &str = "the plugin's onUnload hook completed";
/// The pod's stop: the shim drains, runs onUnload (its lifecycle timeout), and exits well within
/// the pod's termination grace period.
const STOPPED_WITHIN: Duration = Duration::from_secs(120);

#[tokio::test]
async fn the_plugin_hears_on_unload_when_it_is_disabled_and_when_it_is_deleted() -> Result<()> {
    in_fixture("unload", &["log", "storage:write"], scenario).await
}

async fn scenario(f: &Fixture) -> Result<()> {
    let hooks = json!([{"name": "onEvent", "timeout": "2s"}]);
    f.apply(
        NAME,
        NAME,
        hooks,
        json!(["log", "storage:write"]),
        json!({}),
    )
    .await?;
    f.wait_serving(&[NAME], "onEvent").await?;
    let plugins = f.ns.api::<Plugin>();

    let logs = follow_pods(f).await?;
    set_enabled(&plugins, NAME, false).await?;
    expect_unloaded(logs, "disabled").await?;

    set_enabled(&plugins, NAME, true).await?;
    f.wait_serving(&[NAME], "onEvent").await?;
    let logs = follow_pods(f).await?;
    plugins.delete(NAME, &DeleteParams::default()).await?;
    expect_unloaded(logs, "deleted").await
}

/// Follows the plugin container's log of each of the plugin's running pods, from now until the
/// container exits; each task ends with what was logged.
async fn follow_pods(f: &Fixture) -> Result<Vec<(String, JoinHandle<Result<String>>)>> {
    let pods = f.ns.api::<Pod>();
    let running =
        airlock_e2e::pods::live_pod_names(&pods, &format!("airlock.dev/plugin={NAME}")).await?;
    ensure!(!running.is_empty(), "{NAME} has a running pod");
    let mut followed = Vec::new();
    for pod in running {
        let params = LogParams {
            container: Some("plugin".into()),
            follow: true,
            // Only what comes from now on (the start's lines are of no interest).
            since_seconds: Some(1),
            ..LogParams::default()
        };
        let stream = pods
            .log_stream(&pod, &params)
            .await
            .with_context(|| format!("following the log of pod {pod}"))?;
        let task = tokio::spawn(async move {
            let mut lines = stream.lines();
            let mut seen = String::new();
            while let Some(line) = lines.try_next().await? {
                seen.push_str(&line);
                seen.push('\n');
            }
            Ok(seen)
        });
        followed.push((pod, task));
    }
    Ok(followed)
}

/// Each followed pod's log, once its container exited, shows that the plugin got `onUnload`
/// and answered it.
async fn expect_unloaded(
    followed: Vec<(String, JoinHandle<Result<String>>)>,
    when: &str,
) -> Result<()> {
    for (pod, task) in followed {
        let log = tokio::time::timeout(STOPPED_WITHIN, task)
            .await
            .with_context(|| {
                format!("pod {pod} did not stop within {STOPPED_WITHIN:?} of being {when}")
            })???;
        ensure!(
            log.contains(PLUGIN_LINE) && log.contains(SHIM_LINE),
            "pod {pod}, {when}: the plugin's {PLUGIN_LINE:?} and the shim's {SHIM_LINE:?} in its last log:\n{log}"
        );
    }
    Ok(())
}
