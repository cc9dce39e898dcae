//! `/health` (and later `/metrics`) on the loopback address, answered from the snapshot.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::state::Snapshot;

pub async fn bind(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    // Validation already refused anything but loopback; check again at the socket.
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "refusing to serve /health on {addr}: not loopback"
    );
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for /health: {e}"))
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    snap: watch::Receiver<Snapshot>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let app = Router::new().route("/health", get(health)).with_state(snap);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn health(State(snap): State<watch::Receiver<Snapshot>>) -> impl IntoResponse {
    let (code, body) = {
        let s = snap.borrow();
        let code = if s.all_healthy() && s.engine_connected {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (code, s.to_json().to_string())
    };
    (code, [(header::CONTENT_TYPE, "application/json")], body)
}
