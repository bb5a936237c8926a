//! The operator killed mid-rollout: every operator pod deleted as soon as it has started on a
//! Plugin. It disrupts the whole cluster's control plane for Airlock, so it is a test binary of its
//! own (cargo runs test binaries one after another): no other test runs beside it.

use airlock_crds::Plugin;
use airlock_e2e::plugins::{active, invoke, wait_plugin};
use airlock_e2e::sandbox::{self, Sandbox};
use anyhow::{Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, DeleteParams, ListParams};

#[tokio::test]
async fn killing_the_operator_mid_rollout_converges_without_duplicates() -> Result<()> {
    sandbox::in_sandbox("restart", &["log"], async |s: &Sandbox| {
        s.with_hello_bundle().await?;
        let plugins: Api<Plugin> = s.ns.api();
        s.apply(&s.hello("survivor")?).await?;
        // As soon as the operator has started on it, kill every operator pod.
        wait_plugin(
            &plugins,
            "survivor",
            "the rollout to start",
            airlock_e2e::plugins::seen_by_operator,
        )
        .await?;
        let operators: Api<Pod> =
            Api::namespaced(s.client.clone(), airlock_e2e::install::NAMESPACE);
        let lp = ListParams::default().labels("app.kubernetes.io/name=airlock-operator");
        for pod in operators.list(&lp).await?.items {
            let name = pod.metadata.name.unwrap_or_default();
            operators
                .delete(
                    &name,
                    &DeleteParams {
                        grace_period_seconds: Some(0),
                        ..Default::default()
                    },
                )
                .await?;
        }
        wait_plugin(
            &plugins,
            "survivor",
            "phase Active after the restart",
            active,
        )
        .await?;
        let out = invoke(&s.client, &s.ns.name, "survivor").await?;
        ensure!(out["greeting"] == "hello, airlock", "output {out}");

        // Exactly one of each child, whatever happened in between.
        let by_plugin = ListParams::default().labels("airlock.dev/plugin=survivor");
        let ns = &s.ns;
        let counts = [
            ("Deployment", ns.count::<Deployment>(&by_plugin).await?),
            ("Service", ns.count::<Service>(&by_plugin).await?),
            (
                "NetworkPolicy",
                ns.count::<NetworkPolicy>(&by_plugin).await?,
            ),
            (
                "ServiceAccount",
                ns.count::<ServiceAccount>(&by_plugin).await?,
            ),
            (
                "bundle Secret",
                ns.count::<Secret>(&by_plugin.clone().fields("type=airlock.dev/bundle"))
                    .await?,
            ),
            (
                "TLS Secret",
                ns.count::<Secret>(&by_plugin.clone().fields("type=kubernetes.io/tls"))
                    .await?,
            ),
        ];
        for (kind, n) in counts {
            ensure!(n == 1, "{n} {kind} objects for one plugin");
        }
        // The Active transition was recorded (Event; the audit record is written just before it).
        let events: Api<k8s_openapi::api::events::v1::Event> = s.ns.api();
        let active = events
            .list(&ListParams::default())
            .await?
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("survivor"))
            .any(|e| e.reason.as_deref() == Some("Active"));
        ensure!(active, "no Event records the plugin becoming Active");
        Ok(())
    })
    .await
}
