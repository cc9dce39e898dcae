//! Alert incidents: [`Tracker`] turns snapshots (and a few discrete events) into
//! messages — one when an incident opens, one when it clears, deduplicated and
//! rate-limited. It reads no clock: every call takes `now` (monotonic, for durations)
//! and `wall` (for the times a snapshot carries).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use berth_config::Alerts;
use serde::{Deserialize, Serialize};

use crate::deploy::{Outcome, Record, Trigger};
use crate::snapshot::{DISK_USED_DEGRADED, Snapshot, State};
use crate::time::human;

/// A condition must stay clear this long before its incident is resolved (no flapping
/// "resolved" for a service that is up for a moment between crashes).
pub const SETTLE: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub fn new(
        key: &str,
        event: &str,
        service: Option<&str>,
        status: Status,
        title: String,
    ) -> Self {
        Message {
            key: key.to_string(),
            event: event.to_string(),
            service: service.map(str::to_string),
            status,
            title,
            lines: Vec::new(),
        }
    }

    pub fn line(mut self, l: impl Into<String>) -> Self {
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
    pub fn observe(&mut self, snap: &Snapshot, now: Instant, wall: SystemTime) -> Vec<Message> {
        let mut out = Vec::new();
        for m in self.events(snap) {
            self.push_info(m, now, &mut out);
        }
        let conditions = self.conditions(snap, now, wall);
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
            let m = match r.outcome {
                Outcome::Deployed if self.rules.deploy_succeeded => Message::new(
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
                // `berth rollback` is what a person asked for: no news.
                Outcome::RolledBack if r.trigger != Trigger::Rollback => Message::new(
                    &format!("deploy:{svc}"),
                    "deploy_rolled_back",
                    Some(svc),
                    Status::Info,
                    match r.trigger {
                        Trigger::Change => format!("the change to {svc} was rolled back"),
                        _ => format!(
                            "the deploy of {} to {svc} failed and was rolled back",
                            r.image
                        ),
                    },
                )
                .line(format!("What happened: {reason}"))
                .line(match &r.restored {
                    Some(b) => format!(
                        "What berth did: {} runs again, and the database was restored from backup {b}, taken just before the deploy.",
                        r.previous_image
                    ),
                    None => format!("What berth did: {} runs again.", r.previous_image),
                })
                .line(format!(
                    "Look further: berth status; berth logs {svc} -n 50"
                )),
                Outcome::Failed | Outcome::Interrupted | Outcome::Aborted => Message::new(
                    &format!("deploy:{svc}"),
                    &format!("deploy_{}", r.outcome),
                    Some(svc),
                    Status::Info,
                    match r.trigger {
                        Trigger::Change => format!("the change to {svc} {}", r.outcome),
                        _ => format!("the deploy of {} to {svc} {}", r.image, r.outcome),
                    },
                )
                .line(format!("What happened: {reason}"))
                .line(match r.outcome {
                    Outcome::Aborted => "What berth did: nothing changed; the old version runs.",
                    Outcome::Interrupted => {
                        "What berth did: undid it at start-up; the old version runs."
                    }
                    _ => "What berth did: left the service to its normal restarts.",
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
    fn conditions(
        &mut self,
        snap: &Snapshot,
        now: Instant,
        wall: SystemTime,
    ) -> BTreeMap<String, Condition> {
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
                .and_then(|t| t.duration_since(wall).ok())
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
                    (s, _) => s.to_string(),
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
        if let (Some(age), Some(period)) = (snap.backup_stale(wall), snap.backup.period) {
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
        if let Some(e) = &snap.state_error {
            out.insert(
                "state".into(),
                Condition {
                    firing: Message::new(
                        "state",
                        "state_damaged",
                        None,
                        Status::Firing,
                        "berth's deploy state is damaged".into(),
                    )
                    .line(format!("What happened: {e}"))
                    .line("What berth did: kept a copy aside and holds every service as it is: no restart, no recreate, no deploy.")
                    .line("Look further: journalctl -u berth -n 50; fix or remove the file, then systemctl reload berth"),
                    resolved: "berth's deploy state is readable again".into(),
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
            && r.disk_used_ratio > DISK_USED_DEGRADED
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

fn deploy_id(r: &Record) -> String {
    format!("{}|{}|{}", r.at, r.image, r.outcome)
}

pub fn unclean_start() -> Message {
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

/// Attempts at delivering one message before it is given up.
pub const DELIVERY_ATTEMPTS: u32 = 8;
const DELIVERY_RETRY_FIRST: Duration = Duration::from_secs(1);
const DELIVERY_RETRY_MAX: Duration = Duration::from_secs(300);

/// What to do after attempt number `attempt` (1, 2, …) of delivering a message failed,
/// with the HTTP status the receiver answered, if it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redelivery {
    /// Try again after this long.
    After(Duration),
    /// Drop this message and go on with the next: a 4xx will not change by retrying (but
    /// 408 and 429), and no message may block the queue for ever.
    GiveUp,
}

pub fn redelivery(attempt: u32, status: Option<u16>) -> Redelivery {
    let permanent = status.is_some_and(|s| (400..500).contains(&s) && s != 408 && s != 429);
    if permanent || attempt >= DELIVERY_ATTEMPTS {
        return Redelivery::GiveUp;
    }
    let exp = attempt.saturating_sub(1).min(16);
    Redelivery::After((DELIVERY_RETRY_FIRST * (1 << exp)).min(DELIVERY_RETRY_MAX))
}

#[cfg(test)]
mod tests;
