//! `airlock-router health`: asks a router's gRPC health service whether it serves, and fails
//! unless it does. For `helm test` and for people at a terminal: the operator image holds no other
//! gRPC client, and grpcurl exits 0 on a NOT_SERVING answer.

use std::time::Duration;

use tonic::transport::Endpoint;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::server::SERVICE_NAME;

/// Flags of `airlock-router health`.
#[derive(clap::Args, Debug, Clone)]
pub struct HealthArgs {
    /// The router's gRPC address, HOST:PORT (plain text: health answers without a caller token),
    /// e.g. airlock-router.airlock-system.svc:50050.
    #[arg(long, value_name = "HOST:PORT")]
    pub addr: String,
    /// The service asked about; "" asks about the server as a whole.
    #[arg(long, default_value = SERVICE_NAME)]
    pub service: String,
    /// Seconds to wait for the answer, connecting included.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    pub timeout_seconds: u64,
}

/// Why `airlock-router health` failed; each says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("--addr {addr} is not HOST:PORT: {source}")]
    Address {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "no answer from {addr} within {seconds}s: {message} (is the router running and its Service's port right? kubectl get pods,svc -l app.kubernetes.io/component=router)"
    )]
    Unreachable {
        addr: String,
        seconds: u64,
        message: String,
    },
    #[error(
        "{service} at {addr} is {status}, not SERVING (the router serves once its route table and caller bindings are loaded: see its log)"
    )]
    NotServing {
        addr: String,
        service: String,
        status: String,
    },
}

/// A plain-text gRPC endpoint for a router's `HOST:PORT` whose connecting and each call take at
/// most `timeout` (the `health` and `invoke` subcommands).
pub(crate) fn plain_endpoint(
    addr: &str,
    timeout: Duration,
) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(timeout)
        .timeout(timeout))
}

/// Asks once; `Ok` only when the answer is SERVING.
pub async fn check(args: &HealthArgs) -> Result<(), HealthError> {
    let timeout = Duration::from_secs(args.timeout_seconds.max(1));
    let endpoint = plain_endpoint(&args.addr, timeout).map_err(|source| HealthError::Address {
        addr: args.addr.clone(),
        source,
    })?;
    let unreachable = |message: String| HealthError::Unreachable {
        addr: args.addr.clone(),
        seconds: timeout.as_secs(),
        message,
    };
    let asked = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| unreachable(crate::server::chain(&e)))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: args.service.clone(),
            })
            .await
            .map_err(|s| unreachable(format!("{}: {}", s.code(), s.message())))
    };
    let answer = tokio::time::timeout(timeout, asked)
        .await
        .map_err(|_| unreachable("timed out".into()))??
        .into_inner();
    let status = ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown);
    if status == ServingStatus::Serving {
        println!("{} at {}: SERVING", args.service, args.addr);
        Ok(())
    } else {
        Err(HealthError::NotServing {
            addr: args.addr.clone(),
            service: args.service.clone(),
            status: status.as_str_name().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn health_server(status: tonic_health::ServingStatus) -> String {
        let (reporter, service) = tonic_health::server::health_reporter();
        reporter.set_service_status(SERVICE_NAME, status).await;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        addr
    }

    fn args(addr: String) -> HealthArgs {
        HealthArgs {
            addr,
            service: SERVICE_NAME.into(),
            timeout_seconds: 2,
        }
    }

    #[tokio::test]
    async fn a_serving_router_passes() {
        let addr = health_server(tonic_health::ServingStatus::Serving).await;
        check(&args(addr)).await.expect("SERVING");
    }

    /// grpcurl would exit 0 here; `helm test` must fail.
    #[tokio::test]
    async fn a_router_not_serving_fails_and_says_so() {
        let addr = health_server(tonic_health::ServingStatus::NotServing).await;
        let e = check(&args(addr)).await.expect_err("NOT_SERVING fails");
        assert!(e.to_string().contains("NOT_SERVING"), "{e}");
    }

    #[tokio::test]
    async fn nothing_listening_fails_with_what_to_check() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().to_string()
        };
        let e = check(&args(addr)).await.expect_err("nobody answers");
        assert!(e.to_string().contains("no answer from"), "{e}");
    }
}
