//! The snapshot the supervisor publishes on a `watch` channel: `/health`, `/metrics` and
//! `status` read it; nothing that reads it waits on Docker or a database.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::probe::ProbeResult;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// No container yet, or waiting for dependencies.
    Pending,
    Starting,
    Running,
    /// The container exited; a restart is scheduled.
    Exited,
    /// Held down on purpose with `berth stop`.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    Unhealthy,
    Starting,
    Unknown,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStatus {
    pub state: State,
    pub health: Health,
    pub image: String,
    pub container_id: Option<String>,
    pub restarts: u32,
    /// Restarts because the health probe kept failing (a subset of `restarts`).
    pub probe_restarts: u32,
    /// Times the engine killed the container for running out of memory.
    pub oom_kills: u32,
    pub crashloop: bool,
    #[serde(serialize_with = "rfc3339_opt")]
    pub since: Option<SystemTime>,
    /// When a container in restart backoff is due to start again.
    #[serde(
        serialize_with = "rfc3339_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub next_restart: Option<SystemTime>,
    pub probe: Option<ProbeView>,
    /// Dependencies this service is waiting for, if any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<String>,
    #[serde(skip)]
    pub ip: Option<IpAddr>,
}

impl ServiceStatus {
    pub fn new(image: &str) -> Self {
        ServiceStatus {
            state: State::Pending,
            health: Health::Unknown,
            image: image.to_string(),
            container_id: None,
            restarts: 0,
            probe_restarts: 0,
            oom_kills: 0,
            crashloop: false,
            since: None,
            next_restart: None,
            probe: None,
            waiting_for: Vec::new(),
            ip: None,
        }
    }

    /// Healthy for `depends_on` gating and the overall status: passing its probe, or
    /// running when it has none.
    pub fn is_healthy(&self) -> bool {
        self.health == Health::Healthy
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ProbeView {
    pub ok: bool,
    pub latency_ms: f64,
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
    pub error: Option<String>,
}

impl From<&ProbeResult> for ProbeView {
    fn from(r: &ProbeResult) -> Self {
        ProbeView {
            ok: r.ok,
            latency_ms: (r.latency.as_secs_f64() * 1e4).round() / 10.0,
            at: r.at,
            error: r.error.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    pub generation: u64,
    #[serde(serialize_with = "rfc3339")]
    pub loaded_at: SystemTime,
    pub error: Option<String>,
}

/// Host figures for the filesystem that holds state and backups.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Resources {
    pub disk_free_bytes: u64,
    pub disk_used_ratio: f64,
    pub mem_available_bytes: u64,
    pub load1: f64,
}

/// Backups so far (filled in by the backup scheduler).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackupStatus {
    #[serde(serialize_with = "rfc3339_opt")]
    pub last_ok_at: Option<SystemTime>,
    pub age_s: Option<u64>,
    pub last_error: Option<String>,
    pub count: u64,
    #[serde(skip)]
    pub last_size_bytes: Option<u64>,
    /// Set by `to_json`: see [`Snapshot::backup_stale`].
    pub stale: bool,
    /// Time between two scheduled backups, when there is a schedule.
    #[serde(skip)]
    pub period: Option<Duration>,
    /// Copies in S3-compatible storage, when `[backup.offsite]` is set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offsite: Option<crate::offsite::OffsiteStatus>,
}

/// Disk use above this makes the status `degraded`.
pub const DISK_USED_DEGRADED: f64 = 0.9;

#[derive(Debug, Clone)]
pub struct Snapshot {
    pub started_at: SystemTime,
    pub config: ConfigStatus,
    pub engine_connected: bool,
    pub services: BTreeMap<String, ServiceStatus>,
    pub resources: Option<Resources>,
    pub backup: BackupStatus,
    /// The latest deploy of each service.
    pub deploy: BTreeMap<String, crate::deploy::Record>,
    /// Alert channels and how their deliveries go.
    pub alerts: BTreeMap<String, crate::alerts::ChannelStatus>,
}

impl Snapshot {
    pub fn new() -> Self {
        Snapshot {
            started_at: SystemTime::now(),
            config: ConfigStatus {
                generation: 0,
                loaded_at: SystemTime::now(),
                error: None,
            },
            engine_connected: false,
            services: BTreeMap::new(),
            resources: None,
            backup: BackupStatus::default(),
            deploy: BTreeMap::new(),
            alerts: BTreeMap::new(),
        }
    }

    pub fn all_healthy(&self) -> bool {
        self.services
            .values()
            .all(|s| s.is_healthy() || s.state == State::Stopped)
    }

    /// `ok`, `degraded` (healthy but something needs attention) or `down`.
    pub fn overall(&self) -> &'static str {
        if !self.all_healthy() || !self.engine_connected {
            "down"
        } else if self.attention().is_some() {
            "degraded"
        } else {
            "ok"
        }
    }

    /// What needs attention while every service is healthy, if anything.
    pub fn attention(&self) -> Option<String> {
        // Up between crashes is not fine: until the loop is over (fewer restarts in the
        // window) the stack is degraded rather than flipping between down and ok.
        let looping: Vec<&str> = self
            .services
            .iter()
            .filter(|(_, s)| s.crashloop)
            .map(|(n, _)| n.as_str())
            .collect();
        if !looping.is_empty() {
            return Some(format!("crash loop: {}", looping.join(", ")));
        }
        if let Some(e) = &self.config.error {
            return Some(format!(
                "config reload rejected: {}",
                e.lines().next().unwrap_or("")
            ));
        }
        if let Some(r) = &self.resources
            && r.disk_used_ratio > DISK_USED_DEGRADED
        {
            return Some(format!("disk {:.0}% full", r.disk_used_ratio * 100.0));
        }
        if let Some(e) = &self.backup.last_error {
            return Some(format!("last backup failed: {e}"));
        }
        if let Some(age) = self.backup_stale(SystemTime::now()) {
            return Some(match self.backup.last_ok_at {
                Some(_) => format!("backups stale: the newest is {} old", human_secs(age)),
                None => format!("backups stale: none in {}", human_secs(age)),
            });
        }
        None
    }

    /// How old the newest backup is (or how long berth has run without one) when that is
    /// over 1.5× the schedule's period. `/health` and the alerts both judge by this.
    pub fn backup_stale(&self, now: SystemTime) -> Option<Duration> {
        let limit = self.backup.period?.mul_f64(1.5);
        let since = self.backup.last_ok_at.unwrap_or(self.started_at);
        let age = now.duration_since(since).unwrap_or_default();
        (age > limit).then_some(age)
    }

    /// One line for systemd's STATUS= and logs.
    pub fn summary(&self) -> String {
        let healthy = self.services.values().filter(|s| s.is_healthy()).count();
        let mut line = format!(
            "{}: {healthy}/{} services healthy",
            self.overall(),
            self.services.len()
        );
        let bad: Vec<String> = self
            .services
            .iter()
            .filter(|(_, s)| !s.is_healthy() && s.state != State::Stopped)
            .map(|(n, s)| {
                format!(
                    "{n} {}",
                    serde_json::to_value(s.state)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                )
            })
            .collect();
        if !bad.is_empty() {
            line.push_str(&format!(" ({})", bad.join(", ")));
        }
        if !self.engine_connected {
            line.push_str("; engine unreachable");
        }
        if let Some(a) = self.attention() {
            line.push_str("; ");
            line.push_str(&a);
        }
        line
    }

    /// The `/health` document (DESIGN §5).
    pub fn to_json(&self) -> serde_json::Value {
        let now = SystemTime::now();
        let uptime = now
            .duration_since(self.started_at)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut backup = self.backup.clone();
        backup.age_s = backup
            .last_ok_at
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| d.as_secs());
        backup.stale = self.backup_stale(now).is_some();
        serde_json::json!({
            "status": self.overall(),
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": uptime,
            "engine": if self.engine_connected { "connected" } else { "unreachable" },
            "config": self.config,
            "services": self.services,
            "backup": backup,
            "resources": self.resources,
            "deploy": self.deploy,
            "alerts": self.alerts,
        })
    }
}

/// A whole-second duration, e.g. "1day 2h 3m 4s".
fn human_secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

pub fn fmt_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&fmt_time(*t))
}

pub(crate) fn rfc3339_opt<S: serde::Serializer>(
    t: &Option<SystemTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => rfc3339(t, s),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(crashloop: bool) -> ServiceStatus {
        let mut s = ServiceStatus::new("bot:1");
        s.state = State::Running;
        s.health = Health::Healthy;
        s.crashloop = crashloop;
        s
    }

    #[test]
    fn overall_status() {
        let mut snap = Snapshot::new();
        snap.engine_connected = true;
        snap.services.insert("db".into(), running(false));
        assert_eq!(snap.overall(), "ok");

        // Up for a moment between crashes: degraded, named.
        snap.services.insert("bot".into(), running(true));
        assert_eq!(snap.overall(), "degraded");
        assert_eq!(snap.attention().as_deref(), Some("crash loop: bot"));
        // Down between those moments.
        if let Some(b) = snap.services.get_mut("bot") {
            b.state = State::Exited;
            b.health = Health::Unhealthy;
        }
        assert_eq!(snap.overall(), "down");

        snap.services.insert("bot".into(), running(false));
        snap.backup.last_error = Some("disk full".into());
        assert_eq!(snap.overall(), "degraded");
        snap.engine_connected = false;
        assert_eq!(snap.overall(), "down");
    }

    #[test]
    fn a_backup_older_than_its_limit_is_stale() {
        let mut snap = Snapshot::new();
        snap.engine_connected = true;
        let now = snap.started_at + Duration::from_secs(7200);
        assert_eq!(snap.backup_stale(now), None, "no schedule, never stale");
        snap.backup.period = Some(Duration::from_secs(2400));
        assert_eq!(
            snap.backup_stale(now),
            Some(Duration::from_secs(7200)),
            "none since the start"
        );
        snap.backup.last_ok_at = Some(now - Duration::from_secs(3000));
        assert_eq!(snap.backup_stale(now), None);
        snap.backup.last_ok_at = Some(now - Duration::from_secs(3601));
        assert_eq!(snap.backup_stale(now), Some(Duration::from_secs(3601)));
        snap.backup.last_ok_at = Some(SystemTime::now() - Duration::from_secs(3601));
        assert_eq!(
            snap.attention()
                .map(|a| a.starts_with("backups stale: the newest is")),
            Some(true)
        );
    }
}
