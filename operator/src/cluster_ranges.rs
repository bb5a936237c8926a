//! The cluster's own address ranges, which no plugin may reach through `spec.network.egress`:
//! what the chart value `clusterCidrs` lists, and what the operator finds at start — the Service
//! ranges (`ServiceCIDR` objects), each node's Pod range and each node's own addresses (a broad
//! rule such as 0.0.0.0/0 must not open the kubelets and whatever else listens on the nodes). An
//! admin who forgets `clusterCidrs` is still covered; nodes added later count from the next start.

use std::net::IpAddr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::api::ListParams;
use kube::{Api, Client};

/// The ranges `nodes` and `service_cidrs` occupy (pure), unmerged. Text that does not parse is
/// skipped: the API server validated it, and a range we cannot read we cannot except either.
pub fn ranges(nodes: &[Node], service_cidrs: &[ServiceCIDR]) -> Vec<IpNet> {
    let services = service_cidrs
        .iter()
        .flat_map(|s| s.spec.iter().flat_map(|spec| spec.cidrs.iter().flatten()))
        .filter_map(|c| c.parse::<IpNet>().ok());
    let pods = nodes.iter().flat_map(|n| {
        let spec = n.spec.as_ref();
        spec.and_then(|s| s.pod_cidrs.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(spec.and_then(|s| s.pod_cidr.clone()))
            .filter_map(|c| c.parse::<IpNet>().ok())
    });
    let addresses = nodes.iter().flat_map(|n| {
        n.status
            .iter()
            .flat_map(|s| s.addresses.iter().flatten())
            .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .map(IpNet::from)
    });
    services.chain(pods).chain(addresses).collect()
}

/// `configured` and `found`, merged into the fewest ranges that cover the same addresses.
pub fn merged(configured: &[IpNet], found: &[IpNet]) -> Vec<IpNet> {
    let all: Vec<IpNet> = configured.iter().chain(found).copied().collect();
    IpNet::aggregate(&all)
}

/// Lists the nodes and Service ranges: the cluster's ranges as [`ranges`] reads them.
pub async fn discover(client: &Client) -> Result<Vec<IpNet>, kube::Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    let services = Api::<ServiceCIDR>::all(client.clone())
        .list(&ListParams::default())
        .await?
        .items;
    Ok(ranges(&nodes, &services))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn service_ranges_pod_ranges_and_node_addresses_are_the_clusters_own() {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": "n1"},
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:1::/64"]},
            "status": {"addresses": [
                {"type": "InternalIP", "address": "192.168.5.10"},
                {"type": "Hostname", "address": "n1"},
                {"type": "ExternalIP", "address": "203.0.113.7"},
            ]},
        }))
        .expect("node");
        let services: ServiceCIDR = serde_json::from_value(json!({
            "metadata": {"name": "kubernetes"},
            "spec": {"cidrs": ["10.96.0.0/12", "fd00:2::/108"]},
        }))
        .expect("servicecidr");
        let found = ranges(&[node], &[services]);
        for want in [
            "10.96.0.0/12",
            "fd00:2::/108",
            "10.244.1.0/24",
            "fd00:1::/64",
            "192.168.5.10/32",
            "203.0.113.7/32",
        ] {
            assert!(
                found.contains(&want.parse().expect("net")),
                "{want} in {found:?}"
            );
        }
        // The configured ranges stay, and what they cover is not listed twice.
        let all = merged(&["10.244.0.0/16".parse().expect("net")], &found);
        assert!(
            all.contains(&"10.244.0.0/16".parse().expect("net")),
            "{all:?}"
        );
        assert!(
            !all.contains(&"10.244.1.0/24".parse().expect("net")),
            "{all:?}"
        );
    }
}
