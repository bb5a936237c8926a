//! A Plugin from `kubectl apply` to a sandboxed pod whose hook answers, and its lifecycle:
//! disable/enable, an unsupported plugin API version, delete. The operator runs as a process on
//! the host with the admin kubeconfig (the Helm chart that runs it in-cluster under its own RBAC
//! is not written yet); everything else is the real cluster, registry and images.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use airlock_crds::Plugin;
use airlock_crds::plugin::PluginPhase;
use airlock_e2e::TestNamespace;
use airlock_proto::plugin::v1::InvokeRequest;
use airlock_proto::plugin::v1::plugin_client::PluginClient;
use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `target/e2e/images.env`, written by `make e2e-images`.
fn images_env(key: &str) -> Result<String> {
    let path = workspace().join("target/e2e/images.env");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("reading {}: run `make e2e-images` first", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_string))
        .with_context(|| format!("{key} missing from {}", path.display()))
}

/// The operator as a child process; killed when dropped.
struct Operator(Child);

impl Operator {
    fn start(metrics_port: u16) -> Result<Self> {
        let bin = workspace().join("target/debug/airlock-operator");
        ensure!(
            bin.exists(),
            "{} is missing: run `cargo build -p airlock-operator`",
            bin.display()
        );
        let mut cmd = Command::new(bin);
        cmd.arg("--shim-image")
            .arg(images_env("AIRLOCK_SHIM_IMAGE")?)
            .arg("--insecure-registry")
            .arg(airlock_e2e::images::registry())
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{metrics_port}"))
            .arg("--progress-deadline-seconds")
            .arg("60")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if std::env::var_os("KUBECONFIG").is_none() {
            cmd.env("KUBECONFIG", airlock_e2e::LOCAL_CLUSTER_KUBECONFIG);
        }
        Ok(Self(cmd.spawn().context("starting the operator")?))
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_plugin(
    api: &Api<Plugin>,
    name: &str,
    what: &str,
    check: impl Fn(&Plugin) -> bool,
) -> Result<Plugin> {
    let deadline = Instant::now() + airlock_e2e::WAIT;
    loop {
        let p = api.get(name).await?;
        if check(&p) {
            return Ok(p);
        }
        if Instant::now() > deadline {
            bail!(
                "Plugin {name}: timed out waiting for {what}; status: {}",
                serde_json::to_string(&p.status).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn phase(p: &Plugin) -> Option<PluginPhase> {
    p.status.as_ref().and_then(|s| s.phase)
}

fn condition<'a>(
    p: &'a Plugin,
    ty: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    p.status.as_ref()?.conditions.iter().find(|c| c.type_ == ty)
}

/// Calls `transform` on the plugin through its Service.
async fn invoke(client: &Client, ns: &str, name: &str) -> Result<serde_json::Value> {
    let svc = Api::<Service>::namespaced(client.clone(), ns)
        .get(name)
        .await?;
    let ip = svc
        .spec
        .and_then(|s| s.cluster_ip)
        .context("the plugin Service has a cluster IP")?;
    // kube-router programs a new pod's firewall chain a moment after the pod starts; until then
    // connections may be refused. Retry for a bounded time.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut grpc = loop {
        match PluginClient::connect(format!("http://{ip}:50051")).await {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("connecting to the plugin's gRPC port"),
        }
    };
    let answer = grpc
        .invoke(InvokeRequest {
            hook: "transform".into(),
            payload_json: json!({"name": "airlock"}).to_string(),
            deadline_ms: 2000,
            invocation_id: "e2e-1".into(),
        })
        .await
        .context("invoking transform")?
        .into_inner();
    Ok(serde_json::from_str(&answer.output_json)?)
}

async fn running_pods(client: &Client, ns: &str, plugin: &str) -> Result<usize> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("airlock.dev/plugin={plugin}")))
        .await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .count())
}

#[tokio::test]
async fn a_plugin_becomes_active_in_a_restricted_namespace_and_follows_its_lifecycle() -> Result<()>
{
    let client = airlock_e2e::client().await?;
    airlock_e2e::crds::install(&client).await?;
    let suffix = airlock_e2e::unique_suffix();
    let sandbox_label = ("airlock.dev/e2e-sandbox", suffix.as_str());
    let ns = TestNamespace::create(
        &client,
        "plugin",
        &[
            sandbox_label,
            ("pod-security.kubernetes.io/enforce", "restricted"),
            ("pod-security.kubernetes.io/enforce-version", "latest"),
        ],
    )
    .await?;
    let policy_name = format!("e2e-sandbox-{suffix}");
    let operator = Operator::start(18081)?;
    let outcome = lifecycle(&client, &ns, &policy_name, sandbox_label).await;
    // Delete the namespace while the operator runs, so its finalizers are honoured.
    let cleanup = async {
        ns.delete().await?;
        let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
        let deadline = Instant::now() + airlock_e2e::WAIT;
        while nss.get_opt(&ns.name).await?.is_some() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Api::<airlock_crds::PluginTrustPolicy>::all(client.clone())
            .delete(&policy_name, &DeleteParams::default())
            .await
            .map(|_| ())
            .or_else(|e| match e {
                kube::Error::Api(s) if s.code == 404 => Ok(()),
                e => Err(e),
            })?;
        anyhow::Ok(())
    }
    .await;
    drop(operator);
    outcome?;
    cleanup
}

async fn lifecycle(
    client: &Client,
    ns: &TestNamespace,
    policy_name: &str,
    (label_key, label_value): (&str, &str),
) -> Result<()> {
    let pp = PatchParams::apply("airlock-e2e").force();
    let policy = json!({
        "apiVersion": "airlock.dev/v1alpha1",
        "kind": "PluginTrustPolicy",
        "metadata": {"name": policy_name},
        "spec": {
            "keys": [],
            "namespaces": {"matchLabels": {label_key: label_value}},
            "trustLevels": {"Untrusted": {
                "allowUnsigned": true, "maxMemory": "64Mi", "maxCpu": "250m",
                "maxTimeout": "2s", "permissions": ["log"]
            }}
        }
    });
    Api::<airlock_crds::PluginTrustPolicy>::all(client.clone())
        .patch(policy_name, &pp, &Patch::Apply(&policy))
        .await
        .context("applying the trust policy")?;

    let bundle = std::fs::read(images_env("AIRLOCK_HELLO_BUNDLE")?)?;
    let cm = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("hello-bundle".into()),
            ..Default::default()
        },
        binary_data: Some([("bundle.tar.gz".to_string(), ByteString(bundle))].into()),
        ..Default::default()
    };
    ns.api::<ConfigMap>()
        .create(&PostParams::default(), &cm)
        .await?;

    let manifest = std::fs::read_to_string(workspace().join("examples/hello-plugin.yaml"))?;
    let mut plugin: serde_json::Value = serde_yaml_value(&manifest)?;
    plugin["spec"]["image"] = json!(images_env("AIRLOCK_HELLO_IMAGE")?);
    let plugins: Api<Plugin> = ns.api();
    plugins
        .patch("hello", &pp, &Patch::Apply(&plugin))
        .await
        .context("applying examples/hello-plugin.yaml")?;

    // Active, with a real pod that the restricted namespace admitted, and the hook answers.
    let p = wait_plugin(&plugins, "hello", "phase Active", |p| {
        phase(p) == Some(PluginPhase::Active)
    })
    .await?;
    let ready = condition(&p, "Ready").context("Ready condition")?;
    ensure!(ready.status == "True", "Ready is {}", ready.status);
    ensure!(
        p.status
            .as_ref()
            .and_then(|s| s.image_digest.clone())
            .is_some_and(|d| d.starts_with("sha256:")),
        "the image digest is recorded"
    );
    ensure!(
        running_pods(client, &ns.name, "hello").await? == 1,
        "one plugin pod"
    );
    let out = invoke(client, &ns.name, "hello").await?;
    ensure!(
        out["greeting"] == "hello, airlock",
        "unexpected hook output {out}"
    );

    // Disable: no pods, Disabled; enable: back to Active and answering.
    plugins
        .patch("hello", &pp, &Patch::Apply(&with_enabled(&plugin, false)))
        .await?;
    wait_plugin(&plugins, "hello", "phase Disabled", |p| {
        phase(p) == Some(PluginPhase::Disabled)
    })
    .await?;
    let deadline = Instant::now() + airlock_e2e::WAIT;
    while running_pods(client, &ns.name, "hello").await? > 0 {
        ensure!(
            Instant::now() < deadline,
            "pods still running after disable"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(
        ns.api::<Deployment>().get_opt("hello").await?.is_some(),
        "a disabled plugin keeps its Deployment (scaled to zero)"
    );
    plugins
        .patch("hello", &pp, &Patch::Apply(&with_enabled(&plugin, true)))
        .await?;
    wait_plugin(&plugins, "hello", "phase Active again", |p| {
        phase(p) == Some(PluginPhase::Active)
    })
    .await?;
    let out = invoke(client, &ns.name, "hello").await?;
    ensure!(
        out["greeting"] == "hello, airlock",
        "after re-enable: {out}"
    );

    // An API version this Airlock cannot host: Compatible=False, nothing rolled out.
    let mut future = plugin.clone();
    future["metadata"]["name"] = json!("from-the-future");
    future["spec"]["pluginApiVersion"] = json!(2);
    plugins
        .patch("from-the-future", &pp, &Patch::Apply(&future))
        .await?;
    let p = wait_plugin(&plugins, "from-the-future", "Compatible=False", |p| {
        condition(p, "Compatible").is_some_and(|c| c.status == "False")
    })
    .await?;
    let c = condition(&p, "Compatible").context("Compatible")?;
    ensure!(
        c.reason == "UnsupportedPluginApiVersion",
        "reason {}",
        c.reason
    );
    ensure!(
        c.message.contains("spec.pluginApiVersion"),
        "message {}",
        c.message
    );
    ensure!(
        ns.api::<Deployment>()
            .get_opt("from-the-future")
            .await?
            .is_none(),
        "nothing is rolled out for an incompatible plugin"
    );

    // Delete: every child goes.
    plugins.delete("hello", &DeleteParams::default()).await?;
    let deadline = Instant::now() + airlock_e2e::WAIT;
    loop {
        let left = [
            ns.api::<Deployment>().get_opt("hello").await?.is_some(),
            ns.api::<Service>().get_opt("hello").await?.is_some(),
            ns.api::<NetworkPolicy>().get_opt("hello").await?.is_some(),
            ns.api::<k8s_openapi::api::core::v1::ServiceAccount>()
                .get_opt("hello")
                .await?
                .is_some(),
            !ns.api::<Secret>()
                .list(&ListParams::default().labels("airlock.dev/plugin=hello"))
                .await?
                .items
                .is_empty(),
            plugins.get_opt("hello").await?.is_some(),
        ];
        if left.iter().all(|l| !l) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "children left after delete (deployment, service, netpol, sa, secrets, plugin): {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let _ = plugins
        .delete("from-the-future", &DeleteParams::default())
        .await;
    Ok(())
}

fn with_enabled(plugin: &serde_json::Value, enabled: bool) -> serde_json::Value {
    let mut p = plugin.clone();
    p["spec"]["enabled"] = json!(enabled);
    p
}

fn serde_yaml_value(text: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_yaml::from_str(text).context("parsing YAML")?;
    Ok(v)
}
