//! Why the operator or the router could not start or stopped serving: the failures both binaries
//! share. Each binary's own error wraps this one and adds what only it can fail at (leader
//! election, a gRPC endpoint), so a message reads the same whichever binary prints it.

use std::fmt::Display;
use std::net::SocketAddr;
use std::process::ExitCode;

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

/// How the binary `name` exits once its run ended with `result`: success, or the error on stderr
/// after the binary's name, and failure.
pub fn exit_code(name: &str, result: Result<(), impl Display>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_that_ended_with_an_error_exits_with_failure() {
        assert_eq!(exit_code("bin", Ok::<(), String>(())), ExitCode::SUCCESS);
        let failed = StartError::Config("no cluster".into());
        assert_eq!(exit_code("bin", Err(failed)), ExitCode::FAILURE);
    }
}
