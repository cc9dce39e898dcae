//! A stand-in for the Telegram Bot API, for the demo and tests.
//!
//! Speaks the real paths (`/bot<TOKEN>/METHOD`, GET or POST, query, form or JSON
//! parameters) and shapes for `getUpdates`, `getMe`, `sendMessage`, `deleteWebhook` and
//! `getWebhookInfo`. Like Telegram, a `getUpdates` that arrives while another is open ends
//! the open one with HTTP 409 (counted as a conflict). Control endpoints under
//! `/_control/` queue updates and expose what the bot sent and every poll it made;
//! `/_control/stats` is a small summary (conflicts, the offset the bot confirmed, when this
//! process started) for samplers that read it many times a second.
//!
//! `UPDATE_IDS=clock` starts update ids at the wall clock in milliseconds instead of
//! 100001, so ids keep growing across restarts of this process, as Telegram's do (a bot
//! that kept its offset would otherwise never see the updates of a restarted fake).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::{Notify, oneshot};

#[derive(Default)]
struct Inner {
    next_update_id: i64,
    next_message_id: i64,
    updates: VecDeque<Value>,
    sent: Vec<Value>,
    polls: Vec<Value>,
    conflicts: u64,
    /// The poll currently open, and how to end it with a conflict.
    open: Option<(u64, oneshot::Sender<()>)>,
    next_poll: u64,
    /// The highest `offset` a `getUpdates` sent: every update below it is confirmed.
    confirmed: i64,
    /// Added to the update counter: 100000, or the start time in ms (`UPDATE_IDS=clock`).
    id_base: i64,
    started_ms: u64,
}

#[derive(Clone, Default)]
struct App {
    inner: Arc<Mutex<Inner>>,
    new_update: Arc<Notify>,
}

impl App {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn now_s() -> u64 {
    now_ms() / 1000
}

const BOT_USER: fn() -> Value = || {
    json!({"id": 7000000001i64, "is_bot": true, "first_name": "Demo Bot", "username": "berth_demo_bot",
           "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false})
};

fn ok(result: Value) -> Response {
    axum::Json(json!({"ok": true, "result": result})).into_response()
}

fn fail(code: StatusCode, description: &str) -> Response {
    (
        code,
        axum::Json(json!({"ok": false, "error_code": code.as_u16(), "description": description})),
    )
        .into_response()
}

/// Parameters from the query string, a form body or a JSON body, as Telegram accepts.
fn params(
    query: HashMap<String, String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> HashMap<String, Value> {
    let mut out: HashMap<String, Value> = query
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ctype.starts_with("application/json") {
        if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(body) {
            out.extend(m);
        }
    } else if ctype.starts_with("application/x-www-form-urlencoded")
        && let Ok(pairs) = serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
    {
        out.extend(pairs.into_iter().map(|(k, v)| (k, Value::String(v))));
    }
    out
}

fn int(p: &HashMap<String, Value>, k: &str) -> Option<i64> {
    match p.get(k)? {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

async fn api(
    State(app): State<App>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path((bot, method)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = bot.strip_prefix("bot").filter(|t| !t.is_empty()) else {
        return fail(StatusCode::NOT_FOUND, "Not Found");
    };
    let p = params(query, &headers, &body);
    match method.to_ascii_lowercase().as_str() {
        "getme" => ok(BOT_USER()),
        "deletewebhook" => ok(json!(true)),
        "getwebhookinfo" => {
            let pending = app.lock().updates.len();
            ok(json!({"url": "", "has_custom_certificate": false, "pending_update_count": pending}))
        }
        "sendmessage" => send_message(&app, &p, short(token)),
        "getupdates" => get_updates(&app, &p, format!("{}/{}", peer.ip(), short(token))).await,
        _ => fail(StatusCode::NOT_FOUND, "Not Found: method not found"),
    }
}

fn short(token: &str) -> &str {
    // Identify the client without recording the whole token.
    token.split(':').next().unwrap_or("")
}

fn send_message(app: &App, p: &HashMap<String, Value>, bot: &str) -> Response {
    let Some(chat_id) = int(p, "chat_id") else {
        return fail(StatusCode::BAD_REQUEST, "Bad Request: chat_id is empty");
    };
    let Some(text) = p
        .get("text")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty())
    else {
        return fail(
            StatusCode::BAD_REQUEST,
            "Bad Request: message text is empty",
        );
    };
    let mut g = app.lock();
    g.next_message_id += 1;
    let msg = json!({
        "message_id": g.next_message_id,
        "from": BOT_USER(),
        "chat": {"id": chat_id, "type": "private", "first_name": "Tester"},
        "date": now_s(),
        "text": text,
    });
    g.sent
        .push(json!({"chat_id": chat_id, "text": text, "bot": bot}));
    ok(msg)
}

async fn get_updates(app: &App, p: &HashMap<String, Value>, client: String) -> Response {
    let offset = int(p, "offset").unwrap_or(0);
    let timeout = Duration::from_secs(int(p, "timeout").unwrap_or(0).clamp(0, 50) as u64);
    let limit = int(p, "limit").unwrap_or(100).clamp(1, 100) as usize;
    let start_ms = now_ms();
    let (id, cancelled, index) = {
        let mut g = app.lock();
        // An offset confirms every update before it.
        if offset > 0 {
            g.confirmed = g.confirmed.max(offset);
            g.updates
                .retain(|u| u["update_id"].as_i64().unwrap_or(0) >= offset);
        }
        if let Some((_, cancel)) = g.open.take() {
            let _ = cancel.send(());
        }
        g.next_poll += 1;
        let id = g.next_poll;
        let (tx, rx) = oneshot::channel();
        g.open = Some((id, tx));
        // Recorded when it starts (end_ms null while open), so a test sees a poll at once.
        g.polls.push(
            json!({"client": client, "start_ms": start_ms, "end_ms": null, "conflict": false}),
        );
        (id, rx, g.polls.len() - 1)
    };
    let deadline = tokio::time::Instant::now() + timeout;
    tokio::pin!(cancelled);
    let result = loop {
        let notified = app.new_update.notified();
        let ready: Vec<Value> = {
            let g = app.lock();
            g.updates
                .iter()
                .filter(|u| u["update_id"].as_i64().unwrap_or(0) >= offset)
                .take(limit)
                .cloned()
                .collect()
        };
        if !ready.is_empty() {
            break Some(ready);
        }
        tokio::select! {
            _ = &mut cancelled => break None,
            _ = notified => {}
            _ = tokio::time::sleep_until(deadline) => break Some(Vec::new()),
        }
    };
    let mut g = app.lock();
    if g.open.as_ref().is_some_and(|(open, _)| *open == id) {
        g.open = None;
    }
    let conflict = result.is_none();
    if conflict {
        g.conflicts += 1;
    }
    if let Some(p) = g.polls.get_mut(index) {
        p["end_ms"] = json!(now_ms());
        p["conflict"] = json!(conflict);
    }
    drop(g);
    match result {
        Some(updates) => ok(Value::Array(updates)),
        None => fail(
            StatusCode::CONFLICT,
            "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
        ),
    }
}

async fn control_updates(State(app): State<App>, axum::Json(body): axum::Json<Value>) -> Response {
    let Some(chat_id) = body["chat_id"].as_i64() else {
        return (StatusCode::BAD_REQUEST, "chat_id (integer) is required").into_response();
    };
    let text = body["text"].as_str().unwrap_or("/start").to_string();
    let mut g = app.lock();
    g.next_update_id += 1;
    g.next_message_id += 1;
    let mut message = json!({
        "message_id": g.next_message_id,
        "date": now_s(),
        "chat": {"id": chat_id, "type": "private", "first_name": "Tester"},
        "from": {"id": chat_id, "is_bot": false, "first_name": "Tester", "language_code": "en"},
        "text": text,
    });
    if text.starts_with('/') {
        let len = text
            .split_whitespace()
            .next()
            .map_or(0, |c| c.encode_utf16().count());
        message["entities"] = json!([{"type": "bot_command", "offset": 0, "length": len}]);
    }
    let update = json!({"update_id": g.id_base + g.next_update_id, "message": message});
    g.updates.push_back(update.clone());
    drop(g);
    app.new_update.notify_waiters();
    axum::Json(update).into_response()
}

async fn control_sent(State(app): State<App>) -> Response {
    axum::Json(json!({"messages": app.lock().sent})).into_response()
}

async fn control_polls(State(app): State<App>) -> Response {
    let g = app.lock();
    axum::Json(json!({"polls": g.polls, "conflicts": g.conflicts})).into_response()
}

async fn control_stats(State(app): State<App>) -> Response {
    let g = app.lock();
    axum::Json(json!({
        "started_ms": g.started_ms,
        "conflicts": g.conflicts,
        "confirmed": g.confirmed,
        "polls": g.polls.len(),
        "open": g.open.is_some(),
        "queued": g.updates.len(),
        // When the oldest update not yet confirmed was queued (unix seconds), if any.
        "oldest_queued_s": g.updates.iter().filter_map(|u| u["message"]["date"].as_u64()).min(),
        "sent": g.sent.len(),
    }))
    .into_response()
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::var("LISTEN").unwrap_or_else(|_| "0.0.0.0:8081".into());
    let app = App::default();
    {
        let mut g = app.lock();
        g.started_ms = now_ms();
        g.id_base = if std::env::var("UPDATE_IDS").is_ok_and(|v| v == "clock") {
            g.started_ms as i64
        } else {
            100000
        };
    }
    let router = Router::new()
        .route("/_control/updates", post(control_updates))
        .route("/_control/sent", get(control_sent))
        .route("/_control/polls", get(control_polls))
        .route("/_control/stats", get(control_stats))
        .route("/healthz", get(|| async { "ok" }))
        .route("/{bot}/{method}", get(api).post(api))
        .with_state(app);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("fake-telegram listening on {listen}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        term.recv().await;
    })
    .await?;
    Ok(())
}
