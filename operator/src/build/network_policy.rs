//! The plugin's NetworkPolicy: ingress only from the router's pods on the gRPC port; egress denied
//! unless the plugin holds `net:egress`, and then only to the destinations its spec lists.

use airlock_crds::{Permission, Plugin};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

use super::{BuildConfig, GRPC_PORT, HOST_API_PORT, Rollout, labels};

pub fn network_policy(plugin: &Plugin, rollout: &Rollout, config: &BuildConfig) -> NetworkPolicy {
    let router_labels: serde_json::Map<String, Value> = config
        .router_pod_labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut egress: Vec<Value> = if rollout.permissions.contains(&Permission::NetEgress) {
        plugin
            .spec
            .network
            .iter()
            .flat_map(|n| n.egress.iter())
            .map(|rule| {
                let ports: Vec<Value> = rule
                    .ports
                    .iter()
                    .map(|p| json!({"protocol": "TCP", "port": p.port}))
                    .collect();
                // NetworkPolicies are additive: a broad rule must not open what no plugin may
                // reach (the plan refuses rules that lie entirely inside such a range).
                let except =
                    crate::egress::except(&rule.cidr, &crate::egress::never(&config.cluster_cidrs));
                let mut block = json!({"cidr": rule.cidr});
                if !except.is_empty() {
                    block["except"] = json!(except);
                }
                let mut r = json!({"to": [{"ipBlock": block}]});
                if !ports.is_empty() {
                    r["ports"] = Value::Array(ports);
                }
                r
            })
            .collect()
    } else {
        Vec::new()
    };
    // The shim (not the plugin: its seccomp filter has no sockets without net:egress) calls the
    // host API on the router's pods.
    if config.host_api.is_some() {
        egress.push(json!({
            "to": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": config.router_namespace}},
                "podSelector": {"matchLabels": router_labels.clone()},
            }],
            "ports": [{"protocol": "TCP", "port": HOST_API_PORT}],
        }));
    }
    let value = json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": labels::child_metadata(plugin),
        "spec": {
            "podSelector": {"matchLabels": labels::selector(plugin)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{
                "from": [{
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": config.router_namespace}},
                    "podSelector": {"matchLabels": router_labels},
                }],
                "ports": [{"protocol": "TCP", "port": GRPC_PORT}],
            }],
        },
    });
    let mut value = value;
    // With policyType Egress listed, no egress rule means all egress is denied. An empty list is
    // not sent: the API server stores it as absent, so every apply of `egress: []` would be a
    // change, a watch event and another reconcile — a loop found by `make bench`.
    if !egress.is_empty() {
        value["spec"]["egress"] = Value::Array(egress);
    }
    serde_json::from_value(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::networking::v1::{NetworkPolicyPeer, NetworkPolicyPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::build::test_support::*;

    /// `peer` selects the router's pods (by the configured labels) in the router's namespace.
    fn assert_is_the_router(peer: &NetworkPolicyPeer) {
        let labels = |selector: &Option<LabelSelector>| {
            selector
                .clone()
                .and_then(|s| s.match_labels)
                .unwrap_or_default()
        };
        assert_eq!(
            labels(&peer.pod_selector).get("app.kubernetes.io/name"),
            Some(&"airlock-router".to_string()),
            "{peer:?}"
        );
        assert_eq!(
            labels(&peer.namespace_selector).get("kubernetes.io/metadata.name"),
            Some(&"airlock-system".to_string()),
            "{peer:?}"
        );
    }

    /// The port of a rule that opens exactly one.
    fn only_port(ports: &Option<Vec<NetworkPolicyPort>>) -> IntOrString {
        let ports = ports.clone().unwrap_or_default();
        assert_eq!(ports.len(), 1, "{ports:?}");
        ports[0].port.clone().expect("a port number")
    }

    const WITH_EGRESS: &str = r#"
apiVersion: airlock.dev/v1alpha1
kind: Plugin
metadata: {name: fetcher, namespace: plugins}
spec:
  version: 1.0.0
  image: 198.19.255.1:5000/acme/fetcher:1.0.0
  bundle: {source: {configMapRef: {name: fetcher-bundle}}}
  pluginApiVersion: 1
  permissions: [net:egress]
  network: {egress: [{cidr: 198.18.4.0/24, ports: [{port: 443}]}]}
"#;

    #[test]
    fn only_the_router_may_connect_and_egress_is_denied_by_default() {
        let np = network_policy(&plugin(HELLO), &rollout(), &config());
        let spec = np.spec.expect("spec");
        assert_eq!(
            spec.policy_types,
            Some(vec!["Ingress".to_string(), "Egress".to_string()])
        );
        assert!(
            spec.egress.clone().unwrap_or_default().is_empty(),
            "no egress rule = all egress denied"
        );
        let ingress = &spec.ingress.expect("ingress")[0];
        assert_is_the_router(&ingress.from.clone().expect("from")[0]);
        assert_eq!(only_port(&ingress.ports), IntOrString::Int(GRPC_PORT));
    }

    #[test]
    fn with_a_host_api_the_pod_may_reach_the_routers_host_port_and_nothing_else() {
        let mut cfg = config();
        cfg.host_api = Some("198.19.0.10:50051".into());
        let spec = network_policy(&plugin(HELLO), &rollout(), &cfg)
            .spec
            .expect("spec");
        let egress = spec.egress.expect("egress");
        assert_eq!(egress.len(), 1, "{egress:?}");
        let peer = &egress[0].to.clone().expect("to")[0];
        assert!(
            peer.ip_block.is_none(),
            "router pods by label, not an address range"
        );
        assert_is_the_router(peer);
        assert_eq!(only_port(&egress[0].ports), IntOrString::Int(HOST_API_PORT));
    }

    #[test]
    fn denied_egress_is_not_sent_as_an_empty_list() {
        // The API server stores `egress: []` as absent; sending it makes every apply a change
        // and every change another reconcile.
        let np = network_policy(&plugin(HELLO), &rollout(), &config());
        let json = serde_json::to_value(&np).expect("serialises");
        assert!(json["spec"].get("egress").is_none(), "{json}");
    }

    #[test]
    fn egress_is_opened_only_with_the_permission_and_only_to_listed_destinations() {
        let p = plugin(WITH_EGRESS);
        let mut granted = rollout();
        granted.permissions = [Permission::NetEgress].into_iter().collect();
        let spec = network_policy(&p, &granted, &config()).spec.expect("spec");
        let egress = spec.egress.expect("egress");
        assert_eq!(egress.len(), 1);
        let to = &egress[0].to.clone().expect("to")[0];
        assert_eq!(to.ip_block.clone().expect("ipBlock").cidr, "198.18.4.0/24");
        assert_eq!(only_port(&egress[0].ports), IntOrString::Int(443));

        // Same spec, but the permission was not granted (signed manifest or trust level lack it).
        let spec = network_policy(&p, &rollout(), &config())
            .spec
            .expect("spec");
        assert!(spec.egress.unwrap_or_default().is_empty());
        assert!(
            spec.policy_types
                .unwrap_or_default()
                .contains(&"Egress".to_string())
        );
    }

    #[test]
    fn a_broad_egress_rule_excepts_link_local_loopback_and_the_cluster() {
        let p = plugin(&WITH_EGRESS.replace("198.18.4.0/24", "0.0.0.0/0"));
        let mut granted = rollout();
        granted.permissions = [Permission::NetEgress].into_iter().collect();
        let spec = network_policy(&p, &granted, &config()).spec.expect("spec");
        let block = spec.egress.expect("egress")[0].to.clone().expect("to")[0]
            .ip_block
            .clone()
            .expect("ipBlock");
        assert_eq!(block.cidr, "0.0.0.0/0");
        assert_eq!(
            block.except.unwrap_or_default(),
            ["169.254.0.0/16", "127.0.0.0/8", "10.96.0.0/12"],
            "the metadata endpoint, loopback and the cluster's range (config) stay closed"
        );
    }
}
