//! The admin socket: a unix socket (mode 0600) through which mutating CLI commands ask
//! the running daemon to act, so the daemon never fights what they do (it would restart a
//! bot that `restore` stopped). Plain HTTP/1.0 over the socket.

use std::path::Path;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::supervisor::Supervisor;

pub async fn bind(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    }
    // A socket left by a previous run that is not answering is stale.
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            anyhow::bail!("another berth is running: {} answers", path.display());
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| anyhow::anyhow!("cannot listen on admin socket {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

pub async fn serve(listener: tokio::net::UnixListener, sup: Arc<Supervisor>) -> anyhow::Result<()> {
    let app = Router::new()
        .route("/backup", post(backup))
        .route("/restore/{which}", post(restore))
        .route("/deploy", post(deploy))
        .route("/rollback/{service}", post(rollback))
        .route("/rollback/{service}/restore-db", post(rollback_restore_db))
        .with_state(sup);
    axum::serve(listener, app).await?;
    Ok(())
}

fn reply(r: anyhow::Result<Value>) -> (StatusCode, Json<Value>) {
    match r {
        Ok(v) => (StatusCode::OK, Json(json!({"ok": true, "result": v}))),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"ok": false, "error": format!("{e:#}")})),
        ),
    }
}

async fn backup(State(sup): State<Arc<Supervisor>>) -> (StatusCode, Json<Value>) {
    reply(sup.backup_now().await.map(|m| json!(m)))
}

async fn restore(
    State(sup): State<Arc<Supervisor>>,
    UrlPath(which): UrlPath<String>,
) -> (StatusCode, Json<Value>) {
    reply(sup.restore(&which).await.map(|m| json!(m)))
}

#[derive(serde::Deserialize)]
struct DeployRequest {
    service: String,
    image: String,
    backup: bool,
}

async fn deploy(
    State(sup): State<Arc<Supervisor>>,
    Json(req): Json<DeployRequest>,
) -> (StatusCode, Json<Value>) {
    reply(
        sup.deploy(
            &req.service,
            &req.image,
            req.backup,
            crate::deploy::Turn::Refuse,
        )
        .await
        .map(|r| json!(r)),
    )
}

async fn rollback(
    State(sup): State<Arc<Supervisor>>,
    UrlPath(service): UrlPath<String>,
) -> (StatusCode, Json<Value>) {
    reply(sup.rollback(&service, false).await.map(|r| json!(r)))
}

async fn rollback_restore_db(
    State(sup): State<Arc<Supervisor>>,
    UrlPath(service): UrlPath<String>,
) -> (StatusCode, Json<Value>) {
    reply(sup.rollback(&service, true).await.map(|r| json!(r)))
}

/// Asks the daemon. `None` when no daemon answers on the socket (work directly then).
pub async fn request(socket: &Path, method: &str, path: &str) -> Option<anyhow::Result<Value>> {
    request_with(socket, method, path, None).await
}

pub async fn request_with(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Option<anyhow::Result<Value>> {
    let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
    let r = async {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        s.write_all(
            format!(
                "{method} {path} HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        let text = String::from_utf8_lossy(&buf);
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: Value = serde_json::from_str(body)
            .map_err(|e| anyhow::anyhow!("the daemon answered something unexpected: {e}"))?;
        if v["ok"] == true {
            Ok(v["result"].clone())
        } else {
            Err(anyhow::anyhow!(
                "{}",
                v["error"].as_str().unwrap_or("failed")
            ))
        }
    };
    Some(r.await)
}
