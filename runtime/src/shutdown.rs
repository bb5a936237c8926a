//! The signal to stop: SIGTERM (the kubelet) or SIGINT (a terminal). Servers stop taking new
//! calls and drain the ones in flight when it resolves.

/// Resolves on the first SIGTERM or SIGINT.
pub async fn signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            // Without a SIGTERM handler, SIGINT still stops the process.
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: draining calls in flight");
}
