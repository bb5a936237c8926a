//! The plugin's Service: a stable address for the router on the shim's gRPC port.

use airlock_crds::Plugin;
use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::{GRPC_PORT, labels};

pub fn service(plugin: &Plugin) -> Service {
    let value = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": labels::child_metadata(plugin),
        "spec": {
            "type": "ClusterIP",
            "selector": labels::selector(plugin),
            "ports": [{
                "name": "grpc",
                "port": GRPC_PORT,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "grpc",
            }],
        },
    });
    serde_json::from_value(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::test_support::*;

    #[test]
    fn selects_the_plugin_pods_on_the_grpc_port() {
        let s = service(&plugin(HELLO)).spec.expect("spec");
        assert_eq!(s.selector.expect("selector")[labels::PLUGIN_LABEL], "hello");
        let port = &s.ports.expect("ports")[0];
        assert_eq!(port.port, GRPC_PORT);
        assert_eq!(port.app_protocol.as_deref(), Some("grpc"));
    }
}
