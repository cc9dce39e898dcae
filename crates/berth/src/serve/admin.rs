//! The admin socket: a unix socket (mode 0600) through which mutating CLI commands ask
//! the running daemon to act, so the daemon never fights what they do (it would restart a
//! bot that `restore` stopped). Plain HTTP/1.0 over the socket; bodies are the types of
//! [`crate::api`].
//!
//! Each operation runs in a task of its own: a client that disconnects mid-deploy drops
//! only the wait for the answer, never the deploy.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::post;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt};

use crate::api::{
    ChannelTest, DeployRequest, Reply, Restarted, RestoreRequest, RollbackRequest, ServiceRequest,
};
use crate::progress::{self, Step};
use crate::tasks::backups::Backups;
use crate::tasks::deployer::{Deployer, Turn};
use berth_core::snapshot::ServiceStatus;

/// What the admin socket acts on.
#[derive(Clone)]
pub struct Admin {
    pub backups: Arc<Backups>,
    pub deployer: Arc<Deployer>,
    /// The config file, for `/reload`.
    pub config: std::path::PathBuf,
}

pub async fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    // A socket left by a previous run that is not answering is stale; anything else at
    // that path is not berth's to remove.
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            anyhow::bail!(
                "admin socket {} exists and is not a socket: berth will not replace it",
                path.display()
            );
        }
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("another berth is running: {} answers", path.display());
        }
        std::fs::remove_file(path)
            .map_err(|e| anyhow::anyhow!("removing stale socket {}: {e}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on admin socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: tokio::net::UnixListener, admin: Admin) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/backup", post(backup))
        .route("/restore", post(restore))
        .route("/deploy", post(deploy))
        .route("/rollback", post(rollback))
        .route("/reload", post(reload))
        .route("/stop", post(stop))
        .route("/start", post(start))
        .route("/restart", post(restart))
        .route("/alert-test", post(alert_test))
        .with_state(admin);
    axum::serve(listener, app).await?;
    Ok(())
}

type Answer<T> = (StatusCode, Json<Reply<T>>);

/// The request header that asks for the operation's steps as they happen.
pub const PROGRESS_HEADER: &str = "x-berth-progress";

/// Runs `op` in its own task and answers with its outcome.
async fn detached<T, F>(op: F) -> Answer<T>
where
    T: Send + 'static,
    F: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    let r = match tokio::spawn(op).await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("the operation failed inside berth: {e}")),
    };
    let code = if r.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (code, Json(Reply::from_result(r)))
}

/// Like [`detached`]; when the client asked (`X-Berth-Progress`), the answer is JSON
/// lines: `{"progress": Step}` as the operation says them, then its `Reply`. The
/// operation runs on if the client goes away.
async fn streamed<T, F>(headers: HeaderMap, op: F) -> Response
where
    T: Serialize + Send + 'static,
    F: Future<Output = anyhow::Result<T>> + Send + 'static,
{
    if !headers.contains_key(PROGRESS_HEADER) {
        return detached(op).await.into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Step>(256);
    let task = tokio::spawn(progress::scoped(tx, op));
    let steps = futures::stream::unfold(rx, |mut rx| async move {
        let step = rx.recv().await?;
        let line = serde_json::json!({ "progress": step }).to_string() + "\n";
        Some((Ok::<_, std::convert::Infallible>(line), rx))
    });
    let last = futures::stream::once(async move {
        let r = match task.await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("the operation failed inside berth: {e}")),
        };
        Ok(serde_json::to_string(&Reply::from_result(r)).unwrap_or_default() + "\n")
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(futures::StreamExt::chain(steps, last)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn backup(State(a): State<Admin>, headers: HeaderMap) -> Response {
    streamed(headers, async move { a.backups.backup_now().await }).await
}

async fn restore(
    State(a): State<Admin>,
    headers: HeaderMap,
    Json(req): Json<RestoreRequest>,
) -> Response {
    streamed(headers, async move { a.backups.restore(&req.which).await }).await
}

async fn deploy(
    State(a): State<Admin>,
    headers: HeaderMap,
    Json(req): Json<DeployRequest>,
) -> Response {
    streamed(headers, async move {
        a.deployer
            .deploy(&req.service, &req.image, req.backup, Turn::Refuse)
            .await
    })
    .await
}

async fn rollback(
    State(a): State<Admin>,
    headers: HeaderMap,
    Json(req): Json<RollbackRequest>,
) -> Response {
    streamed(headers, async move {
        a.deployer.rollback(&req.service, req.restore_db).await
    })
    .await
}

async fn stop(State(a): State<Admin>, Json(req): Json<ServiceRequest>) -> Answer<ServiceStatus> {
    detached(async move { a.deployer.stop_service(&req.service).await }).await
}

async fn start(State(a): State<Admin>, Json(req): Json<ServiceRequest>) -> Answer<ServiceStatus> {
    detached(async move { a.deployer.start_service(&req.service).await }).await
}

async fn restart(State(a): State<Admin>, Json(req): Json<ServiceRequest>) -> Answer<Restarted> {
    detached(async move {
        let (status, down_ms) = a.deployer.restart_service(&req.service).await?;
        Ok(Restarted { status, down_ms })
    })
    .await
}

/// `berth alert test`, sent from the daemon's own process.
async fn alert_test(State(a): State<Admin>) -> Answer<Vec<ChannelTest>> {
    let cfg = a.deployer.config();
    detached(async move { crate::tasks::alerts::send_test(&cfg).await }).await
}

/// Reads the config file again, as SIGHUP does; answers whether it was taken.
async fn reload(State(a): State<Admin>) -> Answer<bool> {
    detached(async move {
        a.deployer
            .reload_from(&a.config)
            .await
            .map(|()| true)
            .map_err(|e| anyhow::anyhow!("{e}"))
    })
    .await
}

/// Asks the daemon: POSTs `body` to `path`. `None` when no daemon answers on the socket
/// (work directly then).
pub async fn request<B: Serialize, T: DeserializeOwned>(
    socket: &Path,
    path: &str,
    body: &B,
) -> Option<anyhow::Result<T>> {
    request_progress(socket, path, body, &mut |_| {}).await
}

/// Like [`request`], with each step of the operation handed to `shown` as it happens.
pub async fn request_progress<B: Serialize, T: DeserializeOwned>(
    socket: &Path,
    path: &str,
    body: &B,
    shown: &mut dyn FnMut(&Step),
) -> Option<anyhow::Result<T>> {
    let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
    let r = async {
        let body = serde_json::to_string(body)?;
        s.write_all(
            format!(
                "POST {path} HTTP/1.0\r\nContent-Type: application/json\r\n{PROGRESS_HEADER}: 1\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
        let mut lines = tokio::io::BufReader::new(s).lines();
        // The status line and headers, up to the blank line.
        while let Some(l) = lines.next_line().await? {
            if l.is_empty() {
                break;
            }
        }
        #[derive(serde::Deserialize)]
        struct Line {
            progress: Step,
        }
        while let Some(l) = lines.next_line().await? {
            if let Ok(p) = serde_json::from_str::<Line>(&l) {
                shown(&p.progress);
                continue;
            }
            let reply: Reply<T> = serde_json::from_str(&l)
                .map_err(|e| anyhow::anyhow!("the daemon answered something unexpected: {e}"))?;
            return reply.into_result();
        }
        anyhow::bail!("the daemon closed the connection before the outcome: see berth status")
    };
    Some(r.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, item 6: only a stale socket is replaced.
    #[tokio::test]
    async fn the_admin_socket_path_deletes_nothing_but_a_stale_socket() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("precious");
        std::fs::write(&file, "keep me").expect("write");
        let e = bind(&file).await.expect_err("a regular file is refused");
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");

        let sock = dir.path().join("admin.sock");
        let live = bind(&sock).await.expect("bind");
        let e = bind(&sock)
            .await
            .expect_err("a live socket is another berth");
        assert!(e.to_string().contains("another berth is running"), "{e}");
        drop(live);
        bind(&sock).await.expect("a stale socket is replaced");
    }
}
