//! Fake nodes for benches at a scale this machine cannot run containers for: KWOK (Kubernetes
//! WithOut Kubelet, sigs.k8s.io/kwok, built by `e2e/cluster/build.sh kwok`) runs on the host
//! against the local cluster and plays the kubelet of the nodes [`Kwok::start`] creates: it keeps
//! their leases, and moves the pods scheduled onto them through the same states a kubelet would
//! (an IP, Running, Ready) without starting anything. Everything else — the API server, the
//! scheduler, the Deployment, ReplicaSet and EndpointSlice controllers, Airlock — is real.
//!
//! Only a bench's own pods may land there: the fake nodes carry the taint [`TAINT`], and the
//! bench's namespaces carry the annotations of [`Kwok::namespace_annotations`], read by the API
//! server's PodNodeSelector and PodTolerationRestriction admission plugins (enabled by
//! `e2e/cluster/up.sh`): every pod created in them gets the fake nodes' selector and a toleration
//! of the taint. No pod of another namespace tolerates it, so a fake node left behind by a killed
//! bench can never receive a real workload.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Client};
use serde_json::json;

use crate::flux::{controller_binary, free_port, http_status};
use crate::wait;

/// Label (and taint key) of every fake node; kwok manages the nodes with this label only.
pub const LABEL: &str = "airlock.dev/kwok";
/// `LABEL=fake`: the selector of the fake nodes.
pub const SELECTOR: &str = "airlock.dev/kwok=fake";
/// The taint of the fake nodes: only pods of namespaces annotated by the bench tolerate it.
pub const TAINT: &str = "airlock.dev/kwok=fake:NoSchedule";
/// Pod IPs kwok hands out (inside the benchmarking range, apart from the real node's pods,
/// 198.18.0.0/24). Nothing sends traffic to them.
const POD_CIDR: &str = "198.18.128.0/17";
/// The address the fake nodes report (nothing listens there; the API server never needs it for
/// what the bench does).
const NODE_IP: &str = "198.19.254.1";

/// A running kwok and the fake nodes it manages. [`Kwok::stop`] deletes the nodes and stops it;
/// dropped without it, the process is killed and the nodes deleted without waiting.
pub struct Kwok {
    client: Client,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
    /// How many fake nodes there are.
    pub nodes: usize,
}

impl std::fmt::Debug for Kwok {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kwok")
            .field("nodes", &self.nodes)
            .field("log", &self.log)
            .finish()
    }
}

impl Kwok {
    /// Starts kwok and creates `nodes` fake nodes with room for `pods_per_node` pods each, then
    /// waits until every one is Ready (kwok's heartbeat). Fake nodes of an earlier run that was
    /// killed are deleted first.
    pub async fn start(client: &Client, nodes: usize, pods_per_node: u32) -> Result<Self> {
        ensure!(nodes > 0, "at least one fake node is needed");
        let bin = controller_binary("kwok", "KWOK_VERSION")?;
        // How fake nodes and pods behave: the stages `e2e/cluster/build.sh kwok` put next to it.
        let stages = bin.with_file_name("stages.yaml");
        ensure!(
            stages.is_file(),
            "{} is missing: run `make tools` (e2e/cluster/build.sh kwok writes it)",
            stages.display()
        );
        delete_nodes(client).await?;
        let dir = tempfile::Builder::new()
            .prefix("airlock-bench-kwok-")
            .tempdir()?;
        // A kubelet reports its pods Ready again when its node is back; kwok's stages do not
        // (their pod-ready stage needs phase Pending). Should a fake node's lease renewal come
        // late (a creation burst), the node lifecycle controller marks every pod on it
        // NotReady, and without this stage they would stay so.
        let ready_again = dir.path().join("pod-ready-again.yaml");
        std::fs::write(&ready_again, POD_READY_AGAIN)?;
        let log = dir.path().join("kwok.log");
        let out = File::create(&log)?;
        let health_port = free_port()?;
        let kubeconfig = std::env::var_os("KUBECONFIG")
            .unwrap_or_else(|| crate::LOCAL_CLUSTER_KUBECONFIG.into());
        let child = Command::new(&bin)
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .arg("--config")
            .arg(&stages)
            .arg("--config")
            .arg(&ready_again)
            .args([
                "--manage-all-nodes=false".to_string(),
                format!("--manage-nodes-with-label-selector={SELECTOR}"),
                "--manage-nodes-with-annotation-selector=".to_string(),
                format!("--cidr={POD_CIDR}"),
                format!("--node-ip={NODE_IP}"),
                format!("--server-address=127.0.0.1:{health_port}"),
                // Node leases, as a kubelet renews them. kwok renews none by default, and the
                // stages' node heartbeat comes every 10 minutes: ≈ 50 s after its creation the
                // node lifecycle controller took each fake node for gone and marked every pod on
                // it NotReady — every Plugin went Active → Deploying → Active at once (2 status
                // writes each, 350 writes/min at 100 Plugins), and after 5 minutes the
                // `unreachable` taint would evict the pods.
                "--node-lease-duration-seconds=40".to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut kwok = Self {
            client: client.clone(),
            child: Some(child),
            log,
            _dir: dir,
            nodes,
        };
        let started = async {
            kwok.wait_healthy(health_port).await?;
            let api: Api<Node> = Api::all(client.clone());
            for i in 0..nodes {
                api.create(&PostParams::default(), &fake_node(i, pods_per_node)?)
                    .await
                    .with_context(|| format!("creating fake node {}", node_name(i)))?;
            }
            wait::until(
                &format!("{nodes} fake nodes Ready"),
                crate::WAIT,
                async || {
                    let list = api.list(&ListParams::default().labels(SELECTOR)).await?;
                    Ok(list.items.iter().filter(|n| node_ready(n)).count())
                },
                |ready| *ready >= nodes,
            )
            .await?;
            anyhow::Ok(())
        }
        .await;
        match started {
            Ok(()) => Ok(kwok),
            Err(err) => {
                let tail = kwok.log_tail(40);
                let _ = kwok.stop().await;
                Err(err.context(tail))
            }
        }
    }

    /// The namespace annotations that put every pod of the namespace on the fake nodes (node
    /// selector) and let it stay there (a toleration of [`TAINT`]).
    pub fn namespace_annotations() -> [(&'static str, &'static str); 2] {
        [
            ("scheduler.alpha.kubernetes.io/node-selector", SELECTOR),
            (
                "scheduler.alpha.kubernetes.io/defaultTolerations",
                r#"[{"key":"airlock.dev/kwok","operator":"Equal","value":"fake","effect":"NoSchedule"}]"#,
            ),
        ]
    }

    /// The last `lines` lines of kwok's log, for a failure report.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        format!(
            "--- last {lines} lines of {} ---\n{}",
            self.log.display(),
            all[all.len().saturating_sub(lines)..].join("\n")
        )
    }

    /// Deletes the fake nodes (waits until they are gone) and stops kwok. Delete the bench's
    /// namespaces first, while kwok still runs: it is what finishes the deletion of their pods.
    pub async fn stop(mut self) -> Result<()> {
        let deleted = delete_nodes(&self.client).await;
        self.kill();
        deleted
    }

    async fn wait_healthy(&mut self, port: u16) -> Result<()> {
        let child = self.child.as_mut().context("kwok is not running")?;
        wait::until(
            &format!("kwok healthy on 127.0.0.1:{port}/healthz"),
            crate::WAIT,
            async || {
                if let Some(status) = child.try_wait()? {
                    bail!("kwok exited ({status})");
                }
                Ok(http_status(port, "/healthz").await)
            },
            |status| *status == Some(200),
        )
        .await?;
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Kwok {
    fn drop(&mut self) {
        if self.child.is_none() {
            return;
        }
        self.kill();
        // Never panic here, and need no runtime: kubectl, without waiting.
        let mut kubectl = Command::new("kubectl");
        if std::env::var_os("KUBECONFIG").is_none() {
            kubectl.env("KUBECONFIG", crate::LOCAL_CLUSTER_KUBECONFIG);
        }
        let _ = kubectl
            .args(["delete", "nodes", "-l", SELECTOR, "--wait=false"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A kwok stage: a running pod marked NotReady (by the node lifecycle controller, should its
/// fake node's lease be late) is Ready again a second later, as a kubelet would report it.
const POD_READY_AGAIN: &str = r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: airlock-pod-ready-again
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'In'
      values: ['False']
  delay:
    durationMilliseconds: 1000
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastProbeTime: null
        lastTransitionTime: {{ $now | Quote }}
        message: ''
        reason: ''
        status: "True"
        type: Ready
"#;

fn node_name(i: usize) -> String {
    format!("airlock-kwok-{i}")
}

/// Fake node `i`: labelled and tainted as fake, with room for `pods` pods and far more CPU and
/// memory than the bench's pods ask for (only the pod count limits how many fit).
fn fake_node(i: usize, pods: u32) -> Result<Node> {
    let name = node_name(i);
    let resources = json!({"cpu": "1000", "memory": "4Ti", "pods": pods.to_string()});
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                LABEL: "fake",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
            "annotations": {"node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": [{"key": LABEL, "value": "fake", "effect": "NoSchedule"}]},
        "status": {"capacity": resources, "allocatable": resources},
    }))
    .context("building a fake node")
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Deletes every fake node and waits until they are gone.
async fn delete_nodes(client: &Client) -> Result<()> {
    let api: Api<Node> = Api::all(client.clone());
    let fake = ListParams::default().labels(SELECTOR);
    api.delete_collection(&DeleteParams::default(), &fake)
        .await
        .context("deleting the fake nodes")?;
    wait::until(
        "the fake nodes gone",
        Duration::from_secs(120),
        async || Ok(api.list(&fake).await?.items.len()),
        |n| *n == 0,
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The taint the nodes carry is the one the namespaces' default toleration names, and the
    /// node selector the namespaces put on pods selects the nodes' label: a bench pod can land
    /// on a fake node, and (the taint) nothing else can.
    #[test]
    fn bench_namespaces_tolerate_exactly_the_fake_nodes_taint() {
        let node = fake_node(3, 250).unwrap();
        assert_eq!(node.metadata.name.as_deref(), Some("airlock-kwok-3"));
        let taint = &node.spec.as_ref().unwrap().taints.as_ref().unwrap()[0];
        assert_eq!(
            format!(
                "{}={}:{}",
                taint.key,
                taint.value.as_deref().unwrap(),
                taint.effect
            ),
            TAINT
        );
        let [(selector_key, selector), (tolerations_key, tolerations)] =
            Kwok::namespace_annotations();
        assert_eq!(selector_key, "scheduler.alpha.kubernetes.io/node-selector");
        let (k, v) = selector.split_once('=').unwrap();
        assert_eq!(node.metadata.labels.as_ref().unwrap()[k], v);
        assert_eq!(
            tolerations_key,
            "scheduler.alpha.kubernetes.io/defaultTolerations"
        );
        let t: Vec<k8s_openapi::api::core::v1::Toleration> =
            serde_json::from_str(tolerations).unwrap();
        assert_eq!(t[0].key.as_deref(), Some(taint.key.as_str()));
        assert_eq!(t[0].value, taint.value);
        assert_eq!(t[0].effect.as_deref(), Some(taint.effect.as_str()));
        let capacity = node.status.unwrap().capacity.unwrap();
        assert_eq!(capacity["pods"].0, "250");
    }
}
