//! How the CLI reaches the router: at the address `--router` (or `AIRLOCK_ROUTER`) names, or, by
//! default, through a port-forward it opens itself with the caller's kubeconfig to a ready pod
//! behind the router's Service, and which closes when the command exits. Users outside the
//! cluster network need no `kubectl port-forward` running beside them; what they need is what
//! `kubectl port-forward` needs: `create` on `pods/portforward` (and `list` on EndpointSlices) in
//! the Airlock namespace.
//!
//! The pod is picked by [`ready_endpoint`] from the Service's EndpointSlices (ready, not
//! terminating, backed by a Pod), a pure function the tests call directly.

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

/// The name of the router Service's port that serves hook calls (the chart's `grpc`).
pub const PORT_NAME: &str = "grpc";

/// The router Service a port-forward goes to, NAMESPACE/NAME (the chart's default).
pub const DEFAULT_SERVICE: &str = "airlock-system/airlock-router";

/// A pod and the port on it that serves hook calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPort {
    pub pod: String,
    pub port: u16,
}

#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    #[error("--router-service {0:?} is not NAMESPACE/NAME (e.g. airlock-system/airlock-router)")]
    BadService(String),
    #[error(
        "cannot reach the cluster to port-forward to the router ({0}); check the kubeconfig (KUBECONFIG, `kubectl config current-context`), or pass --router with an address the router is reachable at"
    )]
    Config(String),
    #[error(
        "listing the endpoints of Service {service}: {source}; you need `list` on endpointslices in its namespace (or pass --router)"
    )]
    Endpoints {
        service: String,
        source: kube::Error,
    },
    #[error(
        "no ready pod serves port {PORT_NAME:?} of Service {service}: is Airlock installed there (`helm status -n <namespace> airlock`)? Pass --router-service NAMESPACE/NAME for another release, or --router with an address"
    )]
    NoReadyPod { service: String },
}

/// The first ready, not terminating endpoint of `slices` that is a Pod, with the port named
/// [`PORT_NAME`] of its slice. `None` when no pod can take a call now.
pub fn ready_endpoint(slices: &[EndpointSlice]) -> Option<PodPort> {
    slices.iter().find_map(|slice| {
        let port = slice
            .ports
            .as_deref()?
            .iter()
            .find(|p| p.name.as_deref() == Some(PORT_NAME))?
            .port?;
        let port = u16::try_from(port).ok()?;
        slice.endpoints.iter().find_map(|e| {
            let conditions = e.conditions.as_ref()?;
            // `ready` unset means ready (the API's documented default); a terminating pod is
            // draining and would cut the call.
            let ready = conditions.ready != Some(false) && conditions.terminating != Some(true);
            let target = e.target_ref.as_ref()?;
            let pod = target.name.clone()?;
            (ready && target.kind.as_deref() == Some("Pod")).then_some(PodPort { pod, port })
        })
    })
}

/// NAMESPACE/NAME of a Service.
pub fn parse_service(text: &str) -> Result<(String, String), ReachError> {
    match text.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(ReachError::BadService(text.to_string())),
    }
}

/// A channel to the router through a port-forward to a ready pod of `service` (NAMESPACE/NAME).
/// Each connection the channel opens is a new port-forward stream through the API server.
pub async fn port_forward(service: &str) -> Result<(Channel, PodPort), ReachError> {
    let (namespace, name) = parse_service(service)?;
    let config = kube::Config::infer()
        .await
        .map_err(|e| ReachError::Config(e.to_string()))?;
    let client = Client::try_from(config).map_err(|e| ReachError::Config(e.to_string()))?;
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &namespace);
    let listed = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={name}")))
        .await
        .map_err(|source| ReachError::Endpoints {
            service: service.to_string(),
            source,
        })?;
    let target = ready_endpoint(&listed.items).ok_or_else(|| ReachError::NoReadyPod {
        service: service.to_string(),
    })?;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let (pod, port) = (target.pod.clone(), target.port);
    let connector = tower::service_fn(move |_: Uri| {
        let (pods, pod) = (pods.clone(), pod.clone());
        async move {
            let mut forwarder = pods.portforward(&pod, &[port]).await?;
            let stream = forwarder
                .take_stream(port)
                .ok_or_else(|| format!("the port-forward to pod {pod} gave no stream"))?;
            // The forwarder's task keeps pumping the stream after it is dropped.
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(stream))
        }
    });
    // The authority is only a name for the router's logs; the connector decides where bytes go.
    let endpoint = Endpoint::from_shared(format!("http://{name}.{namespace}.svc:{port}"))
        .map_err(|_| ReachError::BadService(service.to_string()))?;
    let channel = endpoint
        .connect_with_connector(connector)
        .await
        .map_err(|e| ReachError::Config(crate::invoke::causes(&e)))?;
    Ok((channel, target))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    use super::*;

    fn endpoint(pod: &str, ready: Option<bool>, terminating: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec!["198.18.0.9".into()],
            conditions: Some(EndpointConditions {
                ready,
                terminating,
                serving: None,
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(pod.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(endpoints: Vec<Endpoint>, ports: &[(&str, i32)]) -> EndpointSlice {
        EndpointSlice {
            address_type: "IPv4".into(),
            endpoints,
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port)| EndpointPort {
                        name: Some((*name).into()),
                        port: Some(*port),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn only_a_ready_pod_that_is_not_terminating_is_picked_with_the_grpc_port() {
        let slices = [slice(
            vec![
                endpoint("old", Some(true), Some(true)),
                endpoint("starting", Some(false), None),
                endpoint("ready", Some(true), Some(false)),
            ],
            &[("http-metrics", 8080), ("grpc", 50050)],
        )];
        assert_eq!(
            ready_endpoint(&slices),
            Some(PodPort {
                pod: "ready".into(),
                port: 50050
            })
        );
    }

    #[test]
    fn no_pod_without_a_ready_one_or_a_grpc_port() {
        let none_ready = [slice(
            vec![endpoint("starting", Some(false), None)],
            &[("grpc", 50050)],
        )];
        assert_eq!(ready_endpoint(&none_ready), None);
        let no_grpc = [slice(
            vec![endpoint("ready", Some(true), None)],
            &[("host-api", 50051)],
        )];
        assert_eq!(ready_endpoint(&no_grpc), None);
        let mut not_a_pod = endpoint("ready", Some(true), None);
        not_a_pod.target_ref = None;
        assert_eq!(
            ready_endpoint(&[slice(vec![not_a_pod], &[("grpc", 50050)])]),
            None
        );
    }

    #[test]
    fn the_service_is_namespace_slash_name() {
        assert_eq!(
            parse_service("airlock-system/airlock-router").expect("ok"),
            ("airlock-system".to_string(), "airlock-router".to_string())
        );
        for bad in ["airlock-router", "/x", "x/", "a/b/c"] {
            let e = parse_service(bad).expect_err(bad);
            assert!(e.to_string().contains("NAMESPACE/NAME"), "{e}");
        }
    }
}
