//! Why the operator or the router could not start or stopped serving: the failures both binaries
//! share. Each binary's own error wraps this one and adds what only it can fail at (leader
//! election, a gRPC endpoint), so a message reads the same whichever binary prints it.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("configuration: {0}")]
    Config(String),
    #[error(
        "cannot reach the Kubernetes API ({0}); check the in-cluster service account or KUBECONFIG"
    )]
    Kube(#[from] kube::Error),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("HTTP endpoint on {addr}: {source}; check that the port is free (--http-addr)")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}
