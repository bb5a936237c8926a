//! HTTP endpoints: `/metrics` (Prometheus), `/healthz` (the process runs), `/readyz` (connected
//! to the API server and reconciling).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

use prometheus::{Registry, TextEncoder};

/// [`serve`], failing with the error a binary reports (the port, and what to check).
pub async fn serve_or_fail(
    addr: SocketAddr,
    registry: Registry,
    ready: Arc<AtomicBool>,
) -> Result<(), crate::StartError> {
    serve(addr, registry, ready)
        .await
        .map_err(|source| crate::StartError::Http { addr, source })
}

pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    ready: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(move || async move { render(&registry) }))
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || async move {
                if ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ready")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app).await
}

/// The registry in Prometheus' text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Text encoding of registered metrics cannot fail for these metric types.
    let _ = TextEncoder::new().encode_utf8(&registry.gather(), &mut out);
    out
}
