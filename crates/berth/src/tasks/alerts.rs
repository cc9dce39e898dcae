//! The alerts task: feeds the snapshots to the [`Tracker`] and hands its messages to one
//! sender task per channel (Telegram Bot API, webhook), each with a bounded queue and
//! retries. Senders are fed with `try_send`: a dead channel never slows supervision. A
//! reload that changes `[alerts]` ends the old senders and starts new ones.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use berth_config::{Alerts, Config};
use berth_core::alerts::{Message, Redelivery, Rules, Tracker, redelivery, unclean_start};
use berth_core::secrets::scrub;
use berth_core::snapshot::ChannelStatus;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::api::ChannelTest;
use crate::hub::{Hub, mono_now};

/// Messages waiting for a channel; beyond this new ones are dropped (and counted).
const QUEUE: usize = 64;

/// One place alerts go.
#[derive(Debug, Clone, PartialEq)]
pub enum Channel {
    Telegram {
        api_base: String,
        token: String,
        chat_id: String,
    },
    Webhook {
        url: String,
    },
}

impl Channel {
    pub fn all(a: &Alerts) -> Vec<(&'static str, Channel)> {
        let mut out = Vec::new();
        if let Some(t) = &a.telegram {
            out.push((
                "telegram",
                Channel::Telegram {
                    api_base: t.api_base.clone(),
                    token: t.token.value.clone(),
                    chat_id: t.chat_id.clone(),
                },
            ));
        }
        if let Some(w) = &a.webhook {
            out.push((
                "webhook",
                Channel::Webhook {
                    url: w.url.value.clone(),
                },
            ));
        }
        out
    }

    /// Delivers one message; the error names no secret.
    pub async fn send(
        &self,
        http: &reqwest::Client,
        m: &Message,
        project: &str,
        secrets: &[String],
    ) -> Result<(), SendError> {
        let text = scrub(&m.text(project), secrets);
        let (req, what) = match self {
            Channel::Telegram {
                api_base,
                token,
                chat_id,
            } => (
                http.post(format!("{api_base}/bot{token}/sendMessage"))
                    .json(&serde_json::json!({
                        "chat_id": chat_id,
                        "text": text,
                        "disable_web_page_preview": true,
                    })),
                "the Telegram Bot API",
            ),
            Channel::Webhook { url } => (
                // Slack reads `text`, Discord `content`, ntfy `message`/`title`.
                http.post(url).json(&serde_json::json!({
                    "text": text,
                    "content": text,
                    "message": text,
                    "title": scrub(&format!("berth {project}: {}", m.title), secrets),
                    "project": project,
                    "key": m.key,
                    "event": m.event,
                    "status": m.status,
                    "service": m.service,
                })),
                "the webhook",
            ),
        };
        let r = req.send().await.map_err(|e| SendError {
            status: None,
            message: format!("{what}: {}", scrub(&e.without_url().to_string(), secrets)),
        })?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            return Err(SendError {
                status: Some(status.as_u16()),
                message: format!("{what} answered {status}: {}", scrub(&body, secrets)),
            });
        }
        Ok(())
    }
}

/// A failed delivery: what went wrong (no secret in it), and the receiver's status.
#[derive(Debug)]
pub struct SendError {
    pub status: Option<u16>,
    pub message: String,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SendError {}

pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// Sends the test message to every channel of `[alerts]`, from this process (the daemon
/// answers `berth alert test` with it, so its own sandbox and network path are tried).
pub async fn send_test(cfg: &Config) -> anyhow::Result<Vec<ChannelTest>> {
    let a = cfg.alerts.as_ref().ok_or_else(|| {
        anyhow::anyhow!(
            "no [alerts] section in the config: add telegram = {{ chat_id = ... }} or webhook = {{ url = ... }}"
        )
    })?;
    let http = http_client()?;
    let secrets = crate::redact::secrets();
    let msg = berth_core::alerts::test_message();
    let mut out = Vec::new();
    for (name, ch) in Channel::all(a) {
        let r = ch
            .send(&http, &msg, &cfg.supervisor.project, &secrets)
            .await;
        out.push(ChannelTest {
            channel: name.to_string(),
            error: r.err().map(|e| e.to_string()),
        });
    }
    Ok(out)
}

/// The sender task of one channel: delivers in order, retrying each message with
/// backoff as [`redelivery`] says; a message given up is counted as dropped.
async fn deliver(
    name: &'static str,
    channel: Channel,
    mut rx: mpsc::Receiver<Message>,
    hub: Arc<Hub>,
    project: String,
) {
    let Ok(http) = http_client() else { return };
    while let Some(m) = rx.recv().await {
        let mut attempt = 0;
        loop {
            attempt += 1;
            // The secrets of the config in force now (rebuilt on every reload).
            match channel
                .send(&http, &m, &project, &crate::redact::secrets())
                .await
            {
                Ok(()) => {
                    info!(channel = name, key = %m.key, status = ?m.status, "alert sent");
                    update_channel(&hub, name, |c| {
                        c.ok = true;
                        c.sent += 1;
                        c.pending = rx.len();
                        c.last_error = None;
                    });
                    break;
                }
                Err(e) => {
                    let next = redelivery(attempt, e.status);
                    let e = e.to_string();
                    update_channel(&hub, name, |c| {
                        c.ok = false;
                        c.failures += 1;
                        c.pending = rx.len() + usize::from(next != Redelivery::GiveUp);
                        c.last_error = Some(e.clone());
                        c.dropped += u64::from(next == Redelivery::GiveUp);
                    });
                    match next {
                        Redelivery::After(d) => {
                            warn!(channel = name, error = %e, retry_in = ?d, "alert not delivered");
                            tokio::time::sleep(d).await;
                        }
                        Redelivery::GiveUp => {
                            warn!(channel = name, error = %e, attempts = attempt, key = %m.key, "alert given up");
                            break;
                        }
                    }
                }
            }
        }
    }
}

fn update_channel(hub: &Hub, name: &str, f: impl FnOnce(&mut ChannelStatus)) {
    hub.update(|s| f(s.alerts.entry(name.to_string()).or_default()));
}

fn clear_channels(hub: &Hub) {
    hub.update(|s| s.alerts.clear());
}

/// The running channels: their queues, and their sender tasks (ended when this drops).
struct Outlets {
    alerts: Alerts,
    senders: Vec<(&'static str, mpsc::Sender<Message>)>,
    tasks: JoinSet<()>,
}

impl Outlets {
    fn start(hub: &Arc<Hub>, cfg: &Config, alerts: &Alerts) -> Self {
        let mut tasks = JoinSet::new();
        let senders = Channel::all(alerts)
            .into_iter()
            .map(|(name, ch)| {
                let (tx, rx) = mpsc::channel(QUEUE);
                update_channel(hub, name, |c| c.ok = true);
                tasks.spawn(deliver(
                    name,
                    ch,
                    rx,
                    hub.clone(),
                    cfg.supervisor.project.clone(),
                ));
                (name, tx)
            })
            .collect();
        Outlets {
            alerts: alerts.clone(),
            senders,
            tasks,
        }
    }

    fn push(&self, hub: &Hub, m: &Message) {
        for (name, tx) in &self.senders {
            if tx.try_send(m.clone()).is_err() {
                update_channel(hub, name, |c| c.dropped += 1);
            }
        }
    }
}

/// Watches the snapshot and sends alerts per `[alerts]` (re-read on every change of the
/// config in force). `unclean` is set when the previous berth did not stop cleanly.
pub async fn run(hub: Arc<Hub>, unclean: bool) {
    let mut rx = hub.subscribe();
    let first = rx.borrow().clone();
    let mut tracker: Option<Tracker> = None;
    let mut outlets: Option<Outlets> = None;
    let mut pending_unclean = unclean;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = rx.changed() => if r.is_err() { return },
            Some(done) = async {
                match outlets.as_mut() {
                    Some(o) => o.tasks.join_next().await,
                    None => std::future::pending().await,
                }
            } => {
                if let Err(e) = done && e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
        let cfg = hub.config();
        let Some(alerts) = cfg.alerts.clone() else {
            if outlets.take().is_some() {
                clear_channels(&hub);
            }
            continue;
        };
        if outlets.as_ref().is_none_or(|o| o.alerts != alerts) {
            // The old senders end here, before the new ones report.
            drop(outlets.take());
            clear_channels(&hub);
            outlets = Some(Outlets::start(&hub, &cfg, &alerts));
        }
        let rules = Rules::new(&alerts);
        let now = mono_now();
        let wall = SystemTime::now();
        let t = tracker.get_or_insert_with(|| Tracker::new(rules.clone(), &first));
        t.set_rules(rules);
        let mut messages = Vec::new();
        if std::mem::take(&mut pending_unclean) {
            messages.extend(t.event(unclean_start(), now));
        }
        let snap = rx.borrow().clone();
        messages.extend(t.observe(&snap, now, wall));
        if let Some(o) = &outlets {
            for m in &messages {
                o.push(&hub, m);
            }
        }
    }
}
