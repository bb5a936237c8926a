//! Egress a tenant asks for cannot open what no plugin may reach (issue 12, point 6): the cloud
//! metadata endpoint (link-local), loopback and the cluster's own Pod and Service ranges (the
//! chart value clusterCidrs, which `e2e/helm-install.sh` sets to the local cluster's ranges). A
//! rule inside such a range is refused with its own reason; a broader one (0.0.0.0/0) is written
//! with those ranges excepted, so the NetworkPolicy cannot override the platform's.

use airlock_crds::Plugin;
use airlock_e2e::plugins::{active, condition, wait_plugin};
use airlock_e2e::router::{Fixture, in_fixture};
use anyhow::{Result, ensure};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use serde_json::json;

#[tokio::test]
async fn egress_to_the_metadata_endpoint_or_the_cluster_is_refused_and_broad_egress_excepts_them()
-> Result<()> {
    in_fixture("egress", &["log", "net:egress"], async |f: &Fixture| {
        let hooks = json!([{"name": "transform", "timeout": "2s"}]);
        let perms = json!(["log", "net:egress"]);
        let egress = |cidr: &str| json!({"network": {"egress": [{"cidr": cidr}]}});
        // The hostile plugin's signed manifest declares net:egress.
        for (name, cidr) in [
            ("metadata", "169.254.169.254/32"),
            ("services", "198.19.0.0/24"),
            ("pods", "198.18.0.0/24"),
        ] {
            f.apply(name, "hostile", hooks.clone(), perms.clone(), egress(cidr))
                .await?;
        }
        f.apply(
            "broad",
            "hostile",
            hooks.clone(),
            perms.clone(),
            egress("0.0.0.0/0"),
        )
        .await?;
        let api: Api<Plugin> = f.ns.api();
        for (name, range) in [
            ("metadata", "169.254.0.0/16"),
            ("services", "198.19.0.0/17"),
            ("pods", "198.18.0.0/16"),
        ] {
            let p = wait_plugin(
                &api,
                name,
                "PermissionsApproved=False reason EgressNotAllowed",
                |p| {
                    condition(p, "PermissionsApproved")
                        .is_some_and(|c| c.status == "False" && c.reason == "EgressNotAllowed")
                },
            )
            .await?;
            let message = condition(&p, "PermissionsApproved")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            ensure!(
                message.contains("spec.network.egress[0].cidr") && message.contains(range),
                "{name}: the refusal names the rule and the range {range}: {message}"
            );
            ensure!(
                f.ns.api::<NetworkPolicy>().get_opt(name).await?.is_none(),
                "{name}: nothing is rolled out for a refused rule"
            );
        }
        wait_plugin(&api, "broad", "phase Active", active).await?;
        let policy = f.ns.api::<NetworkPolicy>().get("broad").await?;
        let blocks: Vec<_> = policy
            .spec
            .and_then(|s| s.egress)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|rule| rule.to.unwrap_or_default())
            .filter_map(|peer| peer.ip_block)
            .collect();
        let broad = blocks
            .iter()
            .find(|b| b.cidr == "0.0.0.0/0")
            .ok_or_else(|| anyhow::anyhow!("no 0.0.0.0/0 rule in {blocks:?}"))?;
        let except = broad.except.clone().unwrap_or_default();
        for range in [
            "169.254.0.0/16",
            "127.0.0.0/8",
            "198.18.0.0/16",
            "198.19.0.0/17",
        ] {
            ensure!(
                except.iter().any(|e| e == range),
                "0.0.0.0/0 must except {range}: {except:?}"
            );
        }
        Ok(())
    })
    .await
}
