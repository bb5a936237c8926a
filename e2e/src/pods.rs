//! Pods built from the probe image, and bounded waits on their phase and logs.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, LogParams, PostParams};
use serde_json::json;

use crate::TestNamespace;

/// A probe pod: non-root, no privilege escalation, all capabilities dropped, the given seccomp
/// profile (`None` = leave it to the kubelet default), `args` passed to the probe.
pub fn probe_pod(
    name: &str,
    image: &str,
    args: &[&str],
    seccomp: Option<serde_json::Value>,
) -> Result<Pod> {
    let mut security = json!({
        "runAsNonRoot": true,
        "runAsUser": 65534,
        "runAsGroup": 65534,
        "allowPrivilegeEscalation": false,
        "capabilities": {"drop": ["ALL"]},
    });
    if let Some(profile) = seccomp {
        security["seccompProfile"] = profile;
    }
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 1,
            "containers": [{
                "name": "probe",
                "image": image,
                "imagePullPolicy": "Always",
                "args": args,
                "securityContext": security,
                "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
            }],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        }
    });
    serde_json::from_value(pod).context("building the probe pod")
}

/// Sets a label on a pod spec before it is created.
pub fn with_label(mut pod: Pod, key: &str, value: &str) -> Pod {
    pod.metadata
        .labels
        .get_or_insert_with(Default::default)
        .insert(key.into(), value.into());
    pod
}

pub async fn create(ns: &TestNamespace, pod: &Pod) -> Result<Pod> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    ns.api::<Pod>()
        .create(&PostParams::default(), pod)
        .await
        .with_context(|| format!("creating pod {name} in {}", ns.name))
}

/// Polls `check` on the pod until it returns `Some`, failing with the pod's state after [`crate::WAIT`].
pub async fn wait_pod<T>(
    api: &Api<Pod>,
    name: &str,
    what: &str,
    mut check: impl FnMut(&Pod) -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + crate::WAIT;
    loop {
        let pod = api
            .get(name)
            .await
            .with_context(|| format!("reading pod {name}"))?;
        if let Some(v) = check(&pod) {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!(
                "pod {name}: timed out waiting for {what}; status: {}",
                serde_json::to_string(&pod.status).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

/// Waits until the pod has run to completion successfully.
pub async fn wait_succeeded(ns: &TestNamespace, name: &str) -> Result<Pod> {
    let api = ns.api::<Pod>();
    let pod = wait_pod(&api, name, "completion", |p| {
        matches!(phase(p), "Succeeded" | "Failed").then(|| p.clone())
    })
    .await?;
    if phase(&pod) != "Succeeded" {
        bail!(
            "pod {name} failed: {}; log: {}",
            serde_json::to_string(&pod.status).unwrap_or_default(),
            logs(ns, name).await.unwrap_or_default()
        );
    }
    Ok(pod)
}

/// Waits until the pod is Running and returns its IP.
pub async fn wait_running(ns: &TestNamespace, name: &str) -> Result<String> {
    let api = ns.api::<Pod>();
    wait_pod(&api, name, "Running with an IP", |p| {
        let ip = p.status.as_ref()?.pod_ip.clone()?;
        (phase(p) == "Running").then_some(ip)
    })
    .await
}

pub async fn logs(ns: &TestNamespace, name: &str) -> Result<String> {
    ns.api::<Pod>()
        .logs(name, &LogParams::default())
        .await
        .with_context(|| format!("reading the log of pod {name}"))
}

/// Runs a probe to completion and returns its log.
pub async fn run_to_completion(ns: &TestNamespace, pod: &Pod) -> Result<String> {
    let name = pod.metadata.name.clone().unwrap_or_default();
    create(ns, pod).await?;
    wait_succeeded(ns, &name).await?;
    logs(ns, &name).await
}

/// Waits until the last line the pod logged satisfies `want` (the pod reports a state
/// periodically, e.g. `watch-connect`) and returns that line.
pub async fn wait_last_log_line(
    ns: &TestNamespace,
    name: &str,
    what: &str,
    want: impl Fn(&str) -> bool,
) -> Result<String> {
    let api = ns.api::<Pod>();
    let params = LogParams {
        tail_lines: Some(1),
        ..Default::default()
    };
    let deadline = Instant::now() + crate::WAIT;
    let mut last = String::new();
    loop {
        if let Ok(text) = api.logs(name, &params).await {
            last = text.trim().to_string();
            if want(&last) {
                return Ok(last);
            }
        }
        if Instant::now() > deadline {
            bail!("pod {name}: timed out waiting for {what}; last log line: {last:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The names of the pods selected by `labels` that are not being deleted, sorted.
pub async fn live_pod_names(api: &Api<Pod>, labels: &str) -> Result<Vec<String>> {
    let mut names: Vec<String> = api
        .list(&ListParams::default().labels(labels))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect();
    names.sort();
    Ok(names)
}

/// Container restarts of the pods selected by `labels` in `namespace` (summed over the pods that
/// exist now).
pub async fn container_restarts(
    client: &kube::Client,
    namespace: &str,
    labels: &str,
) -> Result<i32> {
    Ok(Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(labels))
        .await?
        .items
        .iter()
        .flat_map(|p| {
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
        })
        .map(|c| c.restart_count)
        .sum())
}

/// The running containers of the pods selected by `labels` in `namespace`, each as
/// `pod (uid) container: containerID`. Two snapshots differ when a pod was replaced or a
/// container restarted, even where a restart count would not show it (a new pod starts at 0).
pub async fn containers(
    client: &kube::Client,
    namespace: &str,
    labels: &str,
) -> Result<std::collections::BTreeSet<String>> {
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(labels))
        .await?
        .items;
    Ok(pods
        .iter()
        .flat_map(|p| {
            let pod = format!(
                "{} ({})",
                p.metadata.name.as_deref().unwrap_or_default(),
                p.metadata.uid.as_deref().unwrap_or_default()
            );
            p.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .map(move |c| {
                    format!(
                        "{pod} {}: {}",
                        c.name,
                        c.container_id.as_deref().unwrap_or("(none)")
                    )
                })
        })
        .collect())
}
