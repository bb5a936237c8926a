//! Installing Airlock's CRDs (generated from `airlock-crds`) into the cluster under test.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};

const MANAGER: &str = "airlock-e2e";

/// Installs (server-side applies) the CRDs and waits until they are Established.
pub async fn install(client: &Client) -> Result<()> {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    // Exactly what the chart installs and the operator keeps current (every served version,
    // the schema revision).
    for crd in airlock_crds::generate::crds() {
        let name = crd.metadata.name.clone().context("CRD has a name")?;
        crds.patch(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await
        .with_context(|| format!("applying CRD {name}"))?;
        let deadline = Instant::now() + crate::WAIT;
        loop {
            let c = crds.get(&name).await?;
            let established = c
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            if established {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "CRD {name} never became Established"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(())
}
