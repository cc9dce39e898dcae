//! `/health` and `/metrics` on the loopback address. Both bodies are rendered from the
//! snapshot at most once per change or second (for `uptime_s`), and only when someone
//! asks; a request otherwise clones the rendered bytes. It never waits on Docker or a
//! database.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use berth_core::snapshot::Snapshot;

#[derive(Clone)]
struct Rendered {
    health_code: StatusCode,
    health: Bytes,
    metrics: Bytes,
}

fn render(s: &Snapshot) -> Rendered {
    let now = std::time::SystemTime::now();
    let doc = s.to_doc(now);
    Rendered {
        health_code: if s.all_healthy() && s.engine_connected {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        health: Bytes::from(serde_json::to_string(&doc).unwrap_or_default()),
        metrics: Bytes::from(crate::serve::metrics::render(s, now)),
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

struct Cache {
    snap: watch::Receiver<Snapshot>,
    at: Instant,
    rendered: Rendered,
}

type Shared = Arc<Mutex<Cache>>;

/// The rendered bodies, fresh to the second.
fn current(cache: &Shared) -> Rendered {
    let mut c = cache.lock().unwrap_or_else(|p| p.into_inner());
    if c.snap.has_changed().unwrap_or(false) || c.at.elapsed() >= Duration::from_secs(1) {
        let r = render(&c.snap.borrow_and_update());
        c.rendered = r;
        c.at = Instant::now();
    }
    c.rendered.clone()
}

pub async fn serve(
    listener: tokio::net::TcpListener,
    mut snap: watch::Receiver<Snapshot>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let rendered = render(&snap.borrow_and_update());
    let cache: Shared = Arc::new(Mutex::new(Cache {
        snap,
        at: Instant::now(),
        rendered,
    }));
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(cache);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

async fn health(State(cache): State<Shared>) -> impl IntoResponse {
    let r = current(&cache);
    (
        r.health_code,
        [(header::CONTENT_TYPE, "application/json")],
        r.health,
    )
}

async fn metrics(State(cache): State<Shared>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        current(&cache).metrics,
    )
}
