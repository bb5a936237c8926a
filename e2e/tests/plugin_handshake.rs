//! Negotiation on the cluster (issue 17): the router asks each plugin pod what it runs
//! (`Handshake`) before its first call, and calls only pods that run the bundle the operator
//! verified for a revision that may serve.
//!
//! The attack: a pod with plugin `hello`'s labels and its TLS Secret (readable in the namespace,
//! so the router's mTLS identity check passes) that runs another plugin's verified bundle. The
//! chart's admission policies keep a tenant from creating it; a cluster admin (this test) or a
//! cluster with `admission.pluginIsolation=false` can. It joins `hello`'s Service, yet no call
//! reaches it: each call is answered by hello's own pod, and the router reports the pod once per
//! replica — a Warning Event `HandshakeMismatch` naming the pod's bundle, the metric
//! `airlock_router_handshake_refusals_total{reason="bundle_digest"}` and an audit record.

use std::collections::BTreeMap;
use std::time::Duration;

use airlock_crds::Plugin;
use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, PostParams};
use serde_json::json;

use airlock_e2e::plugins::{wait_plugin, warned};
use airlock_e2e::router::{Fixture, counter_sum, in_fixture, metrics, router_audit};

const HELLO: &str = "hello";
const OTHER: &str = "formatter";
const IMPOSTOR: &str = "hello-impostor";

#[tokio::test]
async fn a_pod_that_does_not_run_the_verified_bundle_gets_no_call() -> Result<()> {
    in_fixture("handshake", &["log"], scenario).await
}

fn transform() -> serde_json::Value {
    json!([{"name": "transform", "timeout": "2s"}])
}

async fn scenario(f: &Fixture) -> Result<()> {
    f.apply(HELLO, "hello", transform(), json!(["log"]), json!({}))
        .await?;
    f.apply(
        OTHER,
        "data-formatter",
        transform(),
        json!(["log"]),
        json!({}),
    )
    .await?;
    f.wait_serving(&[HELLO, OTHER], "transform").await?;
    let plugins = f.ns.api::<Plugin>();
    let digest_of = |p: &Plugin| {
        p.status
            .as_ref()
            .and_then(|s| s.bundle_digest.clone())
            .unwrap_or_default()
    };
    let hello = wait_plugin(&plugins, HELLO, "a verified bundle recorded", |p| {
        p.status.as_ref().is_some_and(|s| {
            s.revisions
                .iter()
                .any(|r| r.bundle_digest.is_some() && r.plugin_api_version == Some(1))
        })
    })
    .await?;
    let other_digest = digest_of(&plugins.get(OTHER).await?);
    ensure!(
        !other_digest.is_empty() && other_digest != digest_of(&hello),
        "two different verified bundles: {other_digest} vs {}",
        digest_of(&hello)
    );

    // The impostor: the formatter's pod (its image, its verified bundle, its shim arguments),
    // with hello's labels (minus the ReplicaSet's hash: no ReplicaSet adopts it) and hello's TLS
    // Secret.
    let pods = f.ns.api::<Pod>();
    let first_pod = |name: &'static str| {
        let pods = pods.clone();
        async move {
            pods.list(&ListParams::default().labels(&format!("airlock.dev/plugin={name}")))
                .await?
                .items
                .into_iter()
                .next()
                .with_context(|| format!("a pod of {name}"))
        }
    };
    let hello_pod = first_pod(HELLO).await?;
    let other_pod = first_pod(OTHER).await?;
    let mut labels: BTreeMap<String, String> =
        hello_pod.metadata.labels.clone().unwrap_or_default();
    labels.remove("pod-template-hash");
    let mut spec = other_pod.spec.clone().context("the formatter pod's spec")?;
    spec.node_name = None;
    for volume in spec.volumes.iter_mut().flatten() {
        if let Some(secret) = volume.secret.as_mut().filter(|_| volume.name == "tls") {
            secret.secret_name = Some(format!("{HELLO}-tls"));
        }
    }
    let impostor = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some(IMPOSTOR.into()),
            labels: Some(labels),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    };
    pods.create(&PostParams::default(), &impostor)
        .await
        .context("creating the impostor pod as the cluster admin")?;
    airlock_e2e::wait::until(
        "the impostor pod ready (and so in hello's Service)",
        Duration::from_secs(120),
        async || Ok(pods.get(IMPOSTOR).await?.status),
        |status| {
            status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        },
    )
    .await?;

    // Calls until every router replica met the impostor (the metric counts one per replica
    // that connected to it); each one answered by hello's own code.
    let prefix = format!(
        "airlock_router_handshake_refusals_total{{namespace=\"{}\",plugin=\"{HELLO}\",reason=\"bundle_digest\"}}",
        f.ns()
    );
    let mut refused = 0.0;
    for i in 0..300 {
        f.expect_greeting(
            HELLO,
            json!({"name": format!("call {i}")}),
            &format!("hello, call {i}"),
        )
        .await
        .with_context(|| format!("call {i} to hello with the impostor in its Service"))?;
        if i % 20 == 19 {
            refused = counter_sum(&metrics(&f.client).await?, &prefix);
            if refused >= 1.0 {
                break;
            }
        }
    }
    ensure!(
        refused >= 1.0,
        "no router replica refused the impostor after 300 calls ({prefix} = {refused})"
    );

    let events = f.ns.api::<Event>();
    let mut told = false;
    for _ in 0..30 {
        told = warned(&events, HELLO, "HandshakeMismatch", &other_digest).await?;
        if told {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    ensure!(
        told,
        "a Warning Event HandshakeMismatch on hello names the impostor's bundle {other_digest}"
    );
    let audit = router_audit(&f.client).await?;
    ensure!(
        audit.iter().any(|r| {
            r["event"] == "HandshakeMismatch"
                && r["plugin"]["namespace"] == f.ns()
                && r["plugin"]["name"] == HELLO
                && r["mismatch"] == "bundle_digest"
        }),
        "an audit record HandshakeMismatch for hello"
    );
    Ok(())
}
