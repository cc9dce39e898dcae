//! `/health` and `/metrics` on the loopback address. Both bodies are rendered from the
//! snapshot by one task, when it changes and once a second (for `uptime_s`); a request
//! only clones the rendered bytes, so it never waits on Docker, a database or a lock
//! that the supervisor holds.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::state::Snapshot;

#[derive(Clone)]
struct Rendered {
    health_code: StatusCode,
    health: Bytes,
    metrics: Bytes,
}

fn render(s: &Snapshot) -> Rendered {
    Rendered {
        health_code: if s.all_healthy() && s.engine_connected {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        health: Bytes::from(s.to_json().to_string()),
        metrics: Bytes::from(crate::metrics::render(s)),
    }
}

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
    mut snap: watch::Receiver<Snapshot>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (tx, rx) = watch::channel(render(&snap.borrow_and_update()));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                r = snap.changed() => if r.is_err() { return },
                _ = tick.tick() => {}
            }
            let r = render(&snap.borrow_and_update());
            if tx.send(r).is_err() {
                return;
            }
        }
    });
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(rx);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn health(State(r): State<watch::Receiver<Rendered>>) -> impl IntoResponse {
    let r = r.borrow().clone();
    (
        r.health_code,
        [(header::CONTENT_TYPE, "application/json")],
        r.health,
    )
}

async fn metrics(State(r): State<watch::Receiver<Rendered>>) -> impl IntoResponse {
    let body = r.borrow().metrics.clone();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
}
