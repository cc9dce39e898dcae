//! Alerts: tells a human, in a Telegram chat or through a webhook, when the stack needs one.
//!
//! [`Tracker`] is the functional core: it turns snapshots (and a few discrete events) into
//! messages — one when an incident opens, one when it clears, deduplicated and
//! rate-limited — with no I/O. The shell ([`run`]) feeds it the supervisor's snapshots and
//! hands its messages to one sender task per channel, which retries with backoff. Senders
//! are fed with `try_send`: a dead channel never slows supervision.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use berth_config::{Alerts, Config};
use serde::Serialize;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::state::{Snapshot, State};
use crate::supervisor::Supervisor;

/// A condition must stay clear this long before its incident is resolved (no flapping
/// "resolved" for a service that is up for a moment between crashes).
pub const SETTLE: Duration = Duration::from_secs(10);
/// Messages waiting for a channel; beyond this the oldest are dropped (and counted).
const QUEUE: usize = 64;
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Firing,
    Resolved,
    Info,
}

/// One alert as delivered.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Message {
    /// What the incident is about (`service:bot`, `backup`, ...): same key, same incident.
    pub key: String,
    /// The kind of event (`crash_loop`, `service_down`, `backup_failed`, ...).
    pub event: String,
    pub service: Option<String>,
    pub status: Status,
    pub title: String,
    /// "What happened", "What berth did", "Look further" lines.
    pub lines: Vec<String>,
}

impl Message {
    fn new(key: &str, event: &str, service: Option<&str>, status: Status, title: String) -> Self {
        Message {
            key: key.to_string(),
            event: event.to_string(),
            service: service.map(str::to_string),
            status,
            title,
            lines: Vec::new(),
        }
    }

    fn line(mut self, l: impl Into<String>) -> Self {
        self.lines.push(l.into());
        self
    }

    /// The text as a person reads it.
    pub fn text(&self, project: &str) -> String {
        let mark = match self.status {
            Status::Firing => "🔴",
            Status::Resolved => "✅",
            Status::Info => "ℹ️",
        };
        let mut t = format!("{mark} berth {project}: {}", self.title);
        for l in &self.lines {
            t.push('\n');
            t.push_str(l);
        }
        t
    }
}

/// The settings the tracker needs, from `[alerts]` and `[backup]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    pub down_after: Duration,
    pub repeat_after: Duration,
    pub max_per_hour: u32,
    pub deploy_succeeded: bool,
}

impl Rules {
    pub fn new(a: &Alerts) -> Self {
        Rules {
            down_after: a.down_after,
            repeat_after: a.repeat_after,
            max_per_hour: a.max_per_hour,
            deploy_succeeded: a.deploy_succeeded,
        }
    }
}

/// A condition that holds now, with the words for its two messages.
struct Condition {
    firing: Message,
    resolved: String,
}

struct Incident {
    since: Instant,
    announced: bool,
    clear_since: Option<Instant>,
    resolved: String,
    event: String,
    service: Option<String>,
}

pub struct Tracker {
    rules: Rules,
    down_since: BTreeMap<String, Instant>,
    engine_lost: Option<Instant>,
    open: BTreeMap<String, Incident>,
    last_announced: BTreeMap<String, Instant>,
    sent: VecDeque<Instant>,
    held_back: u32,
    probe_restarts: BTreeMap<String, u32>,
    deploys_seen: BTreeMap<String, String>,
}

impl Tracker {
    /// `first` is the snapshot at start: deploys already on record are not news.
    pub fn new(rules: Rules, first: &Snapshot) -> Self {
        Tracker {
            rules,
            down_since: BTreeMap::new(),
            engine_lost: None,
            open: BTreeMap::new(),
            last_announced: BTreeMap::new(),
            sent: VecDeque::new(),
            held_back: 0,
            probe_restarts: first
                .services
                .iter()
                .map(|(n, s)| (n.clone(), s.probe_restarts))
                .collect(),
            deploys_seen: first
                .deploy
                .iter()
                .map(|(s, r)| (s.clone(), deploy_id(r)))
                .collect(),
        }
    }

    pub fn set_rules(&mut self, rules: Rules) {
        self.rules = rules;
    }

    /// Incidents currently open (announced or not).
    #[cfg(test)]
    pub fn open_incidents(&self) -> Vec<String> {
        self.open.keys().cloned().collect()
    }

    /// Everything worth telling since the last call.
    pub fn observe(&mut self, snap: &Snapshot, now: Instant) -> Vec<Message> {
        let mut out = Vec::new();
        for m in self.events(snap) {
            self.push_info(m, now, &mut out);
        }
        let conditions = self.conditions(snap, now);
        for (key, c) in &conditions {
            let inc = self.open.entry(key.clone()).or_insert_with(|| Incident {
                since: now,
                announced: false,
                clear_since: None,
                resolved: String::new(),
                event: c.firing.event.clone(),
                service: c.firing.service.clone(),
            });
            inc.clear_since = None;
            inc.resolved = c.resolved.clone();
            if inc.announced {
                continue;
            }
            // Back within `repeat_after` of its last message: say nothing until that
            // time has passed and it still holds.
            let quiet = self
                .last_announced
                .get(key)
                .is_some_and(|t| now.duration_since(*t) < self.rules.repeat_after);
            if !quiet && self.allow(now) {
                if let Some(inc) = self.open.get_mut(key) {
                    inc.announced = true;
                }
                self.last_announced.insert(key.clone(), now);
                out.push(self.with_held_back(c.firing.clone()));
            }
        }
        // Without the engine a service's state is unknown: its open incident stays open.
        let cleared: Vec<String> = self
            .open
            .keys()
            .filter(|k| !conditions.contains_key(*k))
            .filter(|k| snap.engine_connected || !k.starts_with("service:"))
            .cloned()
            .collect();
        for key in cleared {
            let Some(inc) = self.open.get_mut(&key) else {
                continue;
            };
            let clear_since = *inc.clear_since.get_or_insert(now);
            if now.duration_since(clear_since) < SETTLE {
                continue;
            }
            if !inc.announced {
                self.open.remove(&key);
                continue;
            }
            if !self.allow(now) {
                continue;
            }
            if let Some(inc) = self.open.remove(&key) {
                let lasted = clear_since.duration_since(inc.since);
                let m = Message::new(
                    &key,
                    &inc.event,
                    inc.service.as_deref(),
                    Status::Resolved,
                    inc.resolved.clone(),
                )
                .line(format!("It lasted {}.", human(lasted)));
                out.push(self.with_held_back(m));
            }
        }
        out
    }

    /// A one-off event from outside the snapshot (berth started after an unclean stop).
    pub fn event(&mut self, m: Message, now: Instant) -> Vec<Message> {
        let mut out = Vec::new();
        self.push_info(m, now, &mut out);
        out
    }

    fn push_info(&mut self, m: Message, now: Instant, out: &mut Vec<Message>) {
        // The same event for the same thing again soon (a probe that keeps failing) is
        // told once per `repeat_after`.
        let dedupe = m.event == "probe_restart";
        if dedupe
            && self
                .last_announced
                .get(&m.key)
                .is_some_and(|t| now.duration_since(*t) < self.rules.repeat_after)
        {
            return;
        }
        if self.allow(now) {
            if dedupe {
                self.last_announced.insert(m.key.clone(), now);
            }
            out.push(self.with_held_back(m));
        } else {
            self.held_back += 1;
        }
    }

    /// Whether one more message fits in the hourly budget (and counts it if so).
    fn allow(&mut self, now: Instant) -> bool {
        while self
            .sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= HOUR)
        {
            self.sent.pop_front();
        }
        if self.sent.len() >= self.rules.max_per_hour as usize {
            return false;
        }
        self.sent.push_back(now);
        true
    }

    fn with_held_back(&mut self, m: Message) -> Message {
        if self.held_back == 0 {
            return m;
        }
        let n = std::mem::take(&mut self.held_back);
        m.line(format!(
            "({n} other alert(s) were held back by the hourly limit; see berth status.)"
        ))
    }

    /// Discrete changes: probe restarts and finished deploys.
    fn events(&mut self, snap: &Snapshot) -> Vec<Message> {
        let mut out = Vec::new();
        for (name, st) in &snap.services {
            let before = self
                .probe_restarts
                .insert(name.clone(), st.probe_restarts)
                .unwrap_or(0);
            if st.probe_restarts > before {
                let why = st
                    .probe
                    .as_ref()
                    .and_then(|p| p.error.clone())
                    .unwrap_or_else(|| "no answer".into());
                out.push(
                    Message::new(
                        &format!("probe-restart:{name}"),
                        "probe_restart",
                        Some(name),
                        Status::Info,
                        format!("{name} was restarted: it failed its health probe"),
                    )
                    .line(format!(
                        "What happened: the probe failed repeatedly ({why})."
                    ))
                    .line("What berth did: stopped the container and started it again.")
                    .line(format!(
                        "Look further: berth status; berth logs {name} -n 50"
                    )),
                );
            }
        }
        for (svc, r) in &snap.deploy {
            let id = deploy_id(r);
            if self.deploys_seen.get(svc) == Some(&id) {
                continue;
            }
            self.deploys_seen.insert(svc.clone(), id);
            let reason = r.reason.clone().unwrap_or_default();
            let m = match r.outcome.as_str() {
                "deployed" if self.rules.deploy_succeeded => Message::new(
                    &format!("deploy:{svc}"),
                    "deploy_succeeded",
                    Some(svc),
                    Status::Info,
                    format!("{svc} now runs {}", r.image),
                )
                .line(format!(
                    "What happened: deployed in {} (previous {}).",
                    human(Duration::from_millis(r.duration_ms)),
                    r.previous_image
                ))
                .line(format!("Look further: berth status; berth rollback {svc}")),
                "rolled_back"
                    if reason != "berth rollback" && !reason.starts_with("berth rollback") =>
                {
                    Message::new(
                        &format!("deploy:{svc}"),
                        "deploy_rolled_back",
                        Some(svc),
                        Status::Info,
                        format!(
                            "the deploy of {} to {svc} failed and was rolled back",
                            r.image
                        ),
                    )
                    .line(format!("What happened: {reason}"))
                    .line(format!("What berth did: {} runs again.", r.previous_image))
                    .line(format!(
                        "Look further: berth status; berth logs {svc} -n 50"
                    ))
                }
                "failed" | "interrupted" | "aborted" => Message::new(
                    &format!("deploy:{svc}"),
                    &format!("deploy_{}", r.outcome),
                    Some(svc),
                    Status::Info,
                    format!("the deploy of {} to {svc} {}", r.image, r.outcome),
                )
                .line(format!("What happened: {reason}"))
                .line(match r.outcome.as_str() {
                    "aborted" => {
                        "What berth did: nothing changed; the old version runs.".to_string()
                    }
                    "interrupted" => {
                        "What berth did: undid it at start-up; the old version runs.".to_string()
                    }
                    _ => "What berth did: left the service to its normal restarts.".to_string(),
                })
                .line(format!(
                    "Look further: berth status; berth logs {svc} -n 50"
                )),
                _ => continue,
            };
            out.push(m);
        }
        out
    }

    /// The conditions that hold now, by incident key.
    fn conditions(&mut self, snap: &Snapshot, now: Instant) -> BTreeMap<String, Condition> {
        let mut out = BTreeMap::new();
        // Without the engine, services are not known to be down: the one incident is the
        // engine's, and a service's grace period starts over once it answers.
        if !snap.engine_connected {
            self.down_since.clear();
        }
        let services = snap.services.iter().filter(|_| snap.engine_connected);
        for (name, st) in services {
            let down = !st.is_healthy() && st.state != State::Stopped;
            if !down {
                self.down_since.remove(name);
                continue;
            }
            let since = *self.down_since.entry(name.clone()).or_insert(now);
            let for_long = now.duration_since(since) >= self.rules.down_after;
            if !st.crashloop && !for_long {
                continue;
            }
            let key = format!("service:{name}");
            let look = format!("Look further: berth status; berth logs {name} -n 50");
            let next = st
                .next_restart
                .and_then(|t| t.duration_since(SystemTime::now()).ok())
                .map(|d| format!(", next attempt in {}", human(d)))
                .unwrap_or_default();
            let firing = if st.crashloop {
                Message::new(
                    &key,
                    "crash_loop",
                    Some(name),
                    Status::Firing,
                    format!("{name} is in a crash loop"),
                )
                .line(format!(
                    "What happened: it keeps exiting ({} restarts so far{}).",
                    st.restarts,
                    if st.oom_kills > 0 {
                        format!(", {} out of memory", st.oom_kills)
                    } else {
                        String::new()
                    }
                ))
                .line(format!(
                    "What berth did: restarts it with growing backoff{next}."
                ))
                .line(look)
            } else {
                let what = match (&st.state, st.probe.as_ref().and_then(|p| p.error.clone())) {
                    (State::Running, Some(e)) => format!("running but failing its probe ({e})"),
                    (State::Pending, _) if !st.waiting_for.is_empty() => {
                        format!("waiting for {}", st.waiting_for.join(", "))
                    }
                    (s, _) => serde_json::to_value(s)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                };
                let did = if st.waiting_for.is_empty() {
                    format!("restarting it ({} restarts so far{next})", st.restarts)
                } else {
                    "starting it as soon as its dependencies are healthy".to_string()
                };
                Message::new(
                    &key,
                    "service_down",
                    Some(name),
                    Status::Firing,
                    format!("{name} is down"),
                )
                .line(format!(
                    "What happened: {what} for {}.",
                    human(now.duration_since(since))
                ))
                .line(format!("What berth did: {did}."))
                .line(look)
            };
            out.insert(
                key,
                Condition {
                    firing,
                    resolved: format!("{name} is healthy again"),
                },
            );
        }

        if snap.engine_connected {
            self.engine_lost = None;
        } else {
            let since = *self.engine_lost.get_or_insert(now);
            if now.duration_since(since) >= self.rules.down_after {
                out.insert("engine".into(), Condition {
                    firing: Message::new("engine", "engine_unreachable", None, Status::Firing,
                        "the Docker engine does not answer".into())
                        .line(format!("What happened: no answer for {}.", human(now.duration_since(since))))
                        .line("What berth did: reconnecting with backoff; containers keep running without it.")
                        .line("Look further: systemctl status docker; journalctl -u docker -n 50"),
                    resolved: "the Docker engine answers again".into(),
                });
            }
        }

        if let Some(e) = &snap.backup.last_error {
            out.insert("backup".into(), Condition {
                firing: Message::new("backup", "backup_failed", None, Status::Firing,
                    "the last backup failed".into())
                    .line(format!("What happened: {e}"))
                    .line("What berth did: kept every older backup intact; it tries again at the next scheduled time.")
                    .line("Look further: berth backups; journalctl -u berth -n 50"),
                resolved: "backups work again".into(),
            });
        }
        if let Some(e) = snap
            .backup
            .offsite
            .as_ref()
            .and_then(|o| o.last_error.as_ref())
        {
            out.insert(
                "offsite".into(),
                Condition {
                    firing: Message::new(
                        "offsite",
                        "offsite_failed",
                        None,
                        Status::Firing,
                        "copying backups off-site failed".into(),
                    )
                    .line(format!("What happened: {e}"))
                    .line("What berth did: kept the local backups; it retries with backoff.")
                    .line("Look further: berth status; journalctl -u berth -n 50"),
                    resolved: "off-site copies work again".into(),
                },
            );
        }
        if let (Some(age), Some(period)) =
            (snap.backup_stale(SystemTime::now()), snap.backup.period)
        {
            let what = match snap.backup.last_ok_at {
                Some(_) => format!("the newest backup is {} old", human(age)),
                None => format!("no backup in {}", human(age)),
            };
            out.insert(
                "backup-stale".into(),
                Condition {
                    firing: Message::new(
                        "backup-stale",
                        "backup_stale",
                        None,
                        Status::Firing,
                        "backups are stale".into(),
                    )
                    .line(format!(
                        "What happened: {what} (expected every {}).",
                        human(period)
                    ))
                    .line("What berth did: keeps trying on schedule.")
                    .line("Look further: berth backups; berth backup"),
                    resolved: "a fresh backup was taken".into(),
                },
            );
        }
        if let Some(e) = &snap.config.error {
            out.insert(
                "config".into(),
                Condition {
                    firing: Message::new(
                        "config",
                        "config_rejected",
                        None,
                        Status::Firing,
                        "the new config was rejected".into(),
                    )
                    .line(format!(
                        "What happened: {}",
                        e.lines().take(5).collect::<Vec<_>>().join("; ")
                    ))
                    .line("What berth did: kept running the previous config.")
                    .line("Look further: berth check"),
                    resolved: "the config was reloaded".into(),
                },
            );
        }
        if let Some(r) = &snap.resources
            && r.disk_used_ratio > crate::state::DISK_USED_DEGRADED
        {
            out.insert(
                "disk".into(),
                Condition {
                    firing: Message::new(
                        "disk",
                        "disk_full",
                        None,
                        Status::Firing,
                        format!("the disk is {:.0}% full", r.disk_used_ratio * 100.0),
                    )
                    .line(format!(
                        "What happened: {} free.",
                        bytesize::ByteSize(r.disk_free_bytes)
                    ))
                    .line("What berth did: nothing it can; backups may fail.")
                    .line("Look further: df -h; berth backups"),
                    resolved: "the disk has room again".into(),
                },
            );
        }
        out
    }
}

fn deploy_id(r: &crate::deploy::Record) -> String {
    format!("{}|{}|{}", r.at, r.image, r.outcome)
}

/// "1m 5s": short and readable (whole seconds).
fn human(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs().max(1))).to_string()
}

/// The secret values of the config, for scrubbing every outgoing text and error.
pub fn secrets(cfg: &Config) -> Vec<String> {
    let mut out: Vec<String> = cfg
        .services
        .values()
        .flat_map(|s| s.secrets())
        .map(str::to_string)
        .collect();
    if let Some(o) = cfg.backup.as_ref().and_then(|b| b.offsite.as_ref()) {
        out.push(o.access_key.value.clone());
        out.push(o.secret_key.value.clone());
    }
    if let Some(a) = &cfg.alerts {
        if let Some(t) = &a.telegram {
            out.push(t.token.value.clone());
        }
        if let Some(w) = &a.webhook
            && w.url.secret
        {
            out.push(w.url.value.clone());
        }
    }
    // Longest first, so a secret that contains another is scrubbed whole.
    out.retain(|s| s.len() >= 4);
    out.sort_by_key(|s| std::cmp::Reverse(s.len()));
    out.dedup();
    out
}

pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut t = text.to_string();
    for s in secrets {
        if t.contains(s.as_str()) {
            t = t.replace(s.as_str(), "***");
        }
    }
    t
}

/// How a channel is doing, for `/health`.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChannelStatus {
    pub ok: bool,
    pub sent: u64,
    pub failures: u64,
    pub dropped: u64,
    pub pending: usize,
    pub last_error: Option<String>,
}

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
    ) -> anyhow::Result<()> {
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
        let r = req.send().await.map_err(|e| {
            anyhow::anyhow!("{what}: {}", scrub(&e.without_url().to_string(), secrets))
        })?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            let body: String = body.chars().take(200).collect();
            anyhow::bail!("{what} answered {status}: {}", scrub(&body, secrets));
        }
        Ok(())
    }
}

pub fn http_client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// The sender task of one channel: delivers in order, retrying each message with
/// backoff (1 s doubling to 5 min) until it goes through.
async fn deliver(
    name: &'static str,
    channel: Channel,
    mut rx: mpsc::Receiver<Message>,
    sup: Arc<Supervisor>,
    project: String,
    secrets: Vec<String>,
) {
    let Ok(http) = http_client() else { return };
    while let Some(m) = rx.recv().await {
        let mut backoff = Duration::from_secs(1);
        loop {
            match channel.send(&http, &m, &project, &secrets).await {
                Ok(()) => {
                    info!(channel = name, key = %m.key, status = ?m.status, "alert sent");
                    sup.update_alert_channel(name, |c| {
                        c.ok = true;
                        c.sent += 1;
                        c.pending = rx.len();
                        c.last_error = None;
                    });
                    break;
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    warn!(channel = name, error = %e, retry_in = ?backoff, "alert not delivered");
                    sup.update_alert_channel(name, |c| {
                        c.ok = false;
                        c.failures += 1;
                        c.pending = rx.len() + 1;
                        c.last_error = Some(e);
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(300));
                }
            }
        }
    }
}

/// Queues of the running channels.
struct Outlets {
    alerts: Alerts,
    senders: Vec<(&'static str, mpsc::Sender<Message>)>,
}

impl Outlets {
    fn start(sup: &Arc<Supervisor>, cfg: &Config, alerts: &Alerts) -> Self {
        let secrets = secrets(cfg);
        let senders = Channel::all(alerts)
            .into_iter()
            .map(|(name, ch)| {
                let (tx, rx) = mpsc::channel(QUEUE);
                sup.update_alert_channel(name, |c| c.ok = true);
                tokio::spawn(deliver(
                    name,
                    ch,
                    rx,
                    sup.clone(),
                    cfg.supervisor.project.clone(),
                    secrets.clone(),
                ));
                (name, tx)
            })
            .collect();
        Outlets {
            alerts: alerts.clone(),
            senders,
        }
    }

    fn push(&self, sup: &Supervisor, m: &Message) {
        for (name, tx) in &self.senders {
            if tx.try_send(m.clone()).is_err() {
                sup.update_alert_channel(name, |c| c.dropped += 1);
            }
        }
    }
}

/// Watches the supervisor and sends alerts per `[alerts]` (re-read on every reload).
/// `unclean` is set when the previous berth did not stop cleanly.
pub async fn run(sup: Arc<Supervisor>, unclean: bool) {
    let mut rx = sup.snapshot();
    let first = rx.borrow().clone();
    let mut tracker: Option<Tracker> = None;
    let mut outlets: Option<Outlets> = None;
    let mut pending_unclean = unclean;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            r = rx.changed() => if r.is_err() { return },
        }
        let cfg = sup.config();
        let Some(alerts) = cfg.alerts.clone() else {
            outlets = None;
            sup.clear_alert_channels();
            continue;
        };
        if outlets.as_ref().is_none_or(|o| o.alerts != alerts) {
            sup.clear_alert_channels();
            outlets = Some(Outlets::start(&sup, &cfg, &alerts));
        }
        let rules = Rules::new(&alerts);
        let now = Instant::now();
        let t = tracker.get_or_insert_with(|| Tracker::new(rules.clone(), &first));
        t.set_rules(rules);
        let mut messages = Vec::new();
        if std::mem::take(&mut pending_unclean) {
            messages.extend(t.event(unclean_start(), now));
        }
        let snap = rx.borrow().clone();
        messages.extend(t.observe(&snap, now));
        if let Some(o) = &outlets {
            for m in &messages {
                o.push(&sup, m);
            }
        }
    }
}

fn unclean_start() -> Message {
    Message::new(
        "berth-start",
        "unclean_restart",
        None,
        Status::Info,
        "berth started after an unclean stop".into(),
    )
    .line("What happened: the previous berth did not stop cleanly (killed, crashed, or the host lost power).")
    .line("What berth did: adopted the running containers and brought the rest back.")
    .line("Look further: berth status; journalctl -u berth -b -1 -n 50")
}

/// The test message of `berth alert test`.
pub fn test_message() -> Message {
    Message::new("test", "test", None, Status::Info, "test alert".into())
        .line("If you read this, berth can reach you here.")
}

#[cfg(test)]
mod tests;
