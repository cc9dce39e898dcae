//! `/metrics`: the snapshot in the Prometheus text format (version 0.0.4).
//!
//! Names follow Prometheus conventions (`promtool check metrics` passes): base units as
//! suffixes (`_seconds`, `_bytes`, `_ratio`), counters end in `_total` (in `# TYPE` too),
//! times are Unix seconds (`_timestamp_seconds`), yes/no facts are 0/1 gauges and a state
//! is one series per value (1 for the current one). The rules and the dashboard of
//! `deployment/monitoring/` read these names; `tests/tests/monitoring.rs` checks that
//! every name they use is one of the literals in this file.

use std::fmt::Write as _;
use std::time::SystemTime;

use berth_core::deploy::Trigger;
use berth_core::snapshot::{Overall, Snapshot, State};

/// One metric family: its samples, each with its labels.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
    samples: Vec<(Vec<(&'static str, String)>, f64)>,
}

#[derive(Clone, Copy)]
enum Kind {
    Gauge,
    Counter,
}

impl Family {
    fn new(name: &'static str, kind: Kind, help: &'static str) -> Self {
        debug_assert_eq!(
            name.ends_with("_total"),
            matches!(kind, Kind::Counter),
            "{name}: counters, and only they, end in _total"
        );
        Family {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    fn gauge(name: &'static str, help: &'static str) -> Self {
        Self::new(name, Kind::Gauge, help)
    }

    fn counter(name: &'static str, help: &'static str) -> Self {
        Self::new(name, Kind::Counter, help)
    }

    /// A family of one unlabelled sample.
    fn single(name: &'static str, help: &'static str, value: f64) -> Self {
        let mut f = Self::gauge(name, help);
        f.add(Vec::new(), value);
        f
    }

    fn add(&mut self, labels: Vec<(&'static str, String)>, value: f64) {
        self.samples.push((labels, value));
    }

    /// `# HELP`, `# TYPE` and the samples; nothing for a family without samples.
    fn write(&self, out: &mut String) {
        if self.samples.is_empty() {
            return;
        }
        let kind = match self.kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        let _ = writeln!(out, "# HELP {} {}", self.name, escape_help(self.help));
        let _ = writeln!(out, "# TYPE {} {kind}", self.name);
        for (labels, value) in &self.samples {
            out.push_str(self.name);
            if !labels.is_empty() {
                out.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    let _ = write!(out, "{k}=\"{}\"", escape_label(v));
                }
                out.push('}');
            }
            let _ = writeln!(out, " {}", number(*value));
        }
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value as the text format spells it.
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_string()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// Unix seconds; 0 for none.
fn unix(t: Option<SystemTime>) -> f64 {
    t.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn service(name: &str) -> Vec<(&'static str, String)> {
    vec![("service", name.to_string())]
}

const STATES: [State; 5] = [
    State::Pending,
    State::Starting,
    State::Running,
    State::Exited,
    State::Stopped,
];

const OVERALL: [Overall; 3] = [Overall::Ok, Overall::Degraded, Overall::Down];

/// The families, in the order they are written. `now` judges what depends on the time
/// (the overall status, a stale backup), as `/health` does.
fn families(s: &Snapshot, now: SystemTime) -> Vec<Family> {
    let mut out = Vec::new();

    let mut info = Family::gauge("berth_build_info", "berth's version (always 1)");
    info.add(
        vec![("version", env!("CARGO_PKG_VERSION").to_string())],
        1.0,
    );
    out.push(info);
    out.push(Family::single(
        "berth_start_time_seconds",
        "Unix time berth started",
        unix(Some(s.started_at)),
    ));
    let mut status = Family::gauge(
        "berth_status",
        "The stack's overall status, as /health says it (1 for the current one)",
    );
    let current = s.overall(now);
    for o in OVERALL {
        status.add(vec![("status", o.to_string())], flag(o == current));
    }
    out.push(status);
    out.push(Family::single(
        "berth_engine_connected",
        "Whether berth can reach the container engine",
        flag(s.engine_connected),
    ));
    out.push(Family::single(
        "berth_config_generation",
        "Config generation (1 at start, +1 per accepted reload)",
        s.config.generation as f64,
    ));
    out.push(Family::single(
        "berth_config_reload_rejected",
        "Whether the last reload was rejected (the previous config stays in force)",
        flag(s.config.error.is_some()),
    ));
    out.push(Family::single(
        "berth_state_damaged",
        "Whether berth's deploy state could not be read (it changes no container until fixed)",
        flag(s.state_error.is_some()),
    ));

    let mut up = Family::gauge(
        "berth_service_up",
        "Whether the service's container is running",
    );
    let mut healthy = Family::gauge(
        "berth_service_healthy",
        "Whether the service passes its probe (or runs, without one)",
    );
    let mut state = Family::gauge(
        "berth_service_state",
        "The service's state (1 for the current one; stopped: held down on purpose)",
    );
    let mut held = Family::gauge(
        "berth_service_held",
        "Whether the service is kept down on purpose (berth stop, until berth start)",
    );
    let mut restarts = Family::counter(
        "berth_service_restarts_total",
        "Restarts berth made of the service",
    );
    let mut probe_restarts = Family::counter(
        "berth_service_probe_restarts_total",
        "Restarts of the service because its probe kept failing",
    );
    let mut crashloop = Family::gauge(
        "berth_service_crashloop",
        "Whether the service is crash-looping (5 restarts in 10 minutes)",
    );
    let mut oom = Family::counter(
        "berth_service_oom_kills_total",
        "Out-of-memory kills of the service's container",
    );
    let mut probe_ok = Family::gauge(
        "berth_probe_success",
        "Whether the service's last probe passed",
    );
    let mut probe_time = Family::gauge(
        "berth_probe_duration_seconds",
        "Duration of the service's last probe",
    );
    for (name, st) in &s.services {
        let l = service(name);
        up.add(l.clone(), flag(st.state == State::Running));
        healthy.add(l.clone(), flag(st.is_healthy()));
        for x in STATES {
            state.add(
                vec![("service", name.clone()), ("state", x.to_string())],
                flag(st.state == x),
            );
        }
        held.add(l.clone(), flag(st.held));
        restarts.add(l.clone(), f64::from(st.restarts));
        probe_restarts.add(l.clone(), f64::from(st.probe_restarts));
        crashloop.add(l.clone(), flag(st.crashloop));
        oom.add(l.clone(), f64::from(st.oom_kills));
        if let Some(p) = &st.probe {
            probe_ok.add(l.clone(), flag(p.ok));
            probe_time.add(l, p.latency_ms / 1000.0);
        }
    }
    out.extend([
        up,
        healthy,
        state,
        held,
        restarts,
        probe_restarts,
        crashloop,
        oom,
        probe_ok,
        probe_time,
    ]);

    let b = &s.backup;
    out.push(Family::single(
        "berth_backup_last_success_timestamp_seconds",
        "Unix time of the last successful backup (0: none yet)",
        unix(b.last_ok_at),
    ));
    out.push(Family::single(
        "berth_backup_failing",
        "Whether the last backup failed",
        flag(b.last_error.is_some()),
    ));
    out.push(Family::single(
        "berth_backup_stale",
        "Whether the newest backup is older than 1.5 times the schedule's period",
        flag(s.backup_stale(now).is_some()),
    ));
    if let Some(p) = b.period {
        out.push(Family::single(
            "berth_backup_period_seconds",
            "Time between two scheduled backups",
            p.as_secs_f64(),
        ));
    }
    out.push(Family::single(
        "berth_backups",
        "Backups kept in the backup folder",
        b.count as f64,
    ));
    out.push(Family::single(
        "berth_backup_size_bytes",
        "Size of the last successful backup",
        b.last_size_bytes.unwrap_or(0) as f64,
    ));
    if let Some(o) = &b.offsite {
        out.push(Family::single(
            "berth_offsite_last_success_timestamp_seconds",
            "Unix time of the last successful off-site pass (0: none yet)",
            unix(o.last_ok_at),
        ));
        out.push(Family::single(
            "berth_offsite_failing",
            "Whether the last off-site pass failed",
            flag(o.last_error.is_some()),
        ));
        out.push(Family::single(
            "berth_offsite_pending",
            "Local backups not yet copied off-site",
            o.pending as f64,
        ));
        out.push(Family::single(
            "berth_offsite_backups",
            "Backups in the off-site bucket after the last pass",
            o.count as f64,
        ));
    }

    if let Some(r) = &s.resources {
        out.push(Family::single(
            "berth_disk_free_bytes",
            "Free space on the filesystem of berth's state and backups",
            r.disk_free_bytes as f64,
        ));
        out.push(Family::single(
            "berth_disk_used_ratio",
            "Used fraction of the filesystem of berth's state and backups",
            r.disk_used_ratio,
        ));
        out.push(Family::single(
            "berth_memory_available_bytes",
            "Memory available on the host",
            r.mem_available_bytes as f64,
        ));
        out.push(Family::single(
            "berth_load1",
            "The host's load average over one minute",
            r.load1,
        ));
    }

    let mut deploy_at = Family::gauge(
        "berth_deploy_last_timestamp_seconds",
        "Unix time of the service's latest deploy, rollback or change",
    );
    let mut deploy_outcome = Family::gauge(
        "berth_deploy_last_outcome",
        "The outcome of the service's latest deploy, rollback or change (always 1)",
    );
    for (name, r) in &s.deploy {
        let at = berth_core::time::parse_time(&r.at);
        deploy_at.add(service(name), unix(at));
        let trigger = match r.trigger {
            Trigger::Deploy => "deploy",
            Trigger::Rollback => "rollback",
            Trigger::Change => "change",
        };
        deploy_outcome.add(
            vec![
                ("service", name.clone()),
                ("outcome", r.outcome.to_string()),
                ("trigger", trigger.to_string()),
            ],
            1.0,
        );
    }
    out.extend([deploy_at, deploy_outcome]);

    let mut sent = Family::counter("berth_alerts_sent_total", "Alerts delivered, by channel");
    let mut failures = Family::counter(
        "berth_alert_delivery_failures_total",
        "Failed alert delivery attempts, by channel",
    );
    let mut dropped = Family::counter(
        "berth_alerts_dropped_total",
        "Alerts dropped because the channel's queue was full",
    );
    let mut channel_ok = Family::gauge(
        "berth_alert_channel_ok",
        "Whether the channel's last delivery went through",
    );
    for (name, c) in &s.alerts {
        let l = vec![("channel", name.clone())];
        sent.add(l.clone(), c.sent as f64);
        failures.add(l.clone(), c.failures as f64);
        dropped.add(l.clone(), c.dropped as f64);
        channel_ok.add(l, flag(c.ok));
    }
    out.extend([sent, failures, dropped, channel_ok]);
    out
}

pub fn render(s: &Snapshot, now: SystemTime) -> String {
    let mut out = String::new();
    for f in families(s, now) {
        f.write(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use berth_core::snapshot::{ChannelStatus, OffsiteStatus, ProbeView, Resources, ServiceStatus};

    use super::*;

    fn t(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn snapshot() -> Snapshot {
        let mut s = Snapshot::new(t(1_000));
        s.engine_connected = true;
        s.config.generation = 2;
        let mut web = ServiceStatus::new("web:1");
        web.state = State::Running;
        web.health = berth_core::snapshot::Health::Healthy;
        web.restarts = 3;
        web.probe = Some(ProbeView::new(
            true,
            Duration::from_millis(12),
            t(1_500),
            None,
        ));
        s.services.insert("web".into(), web);
        let mut db = ServiceStatus::new("db:1");
        db.state = State::Exited;
        db.crashloop = true;
        s.services.insert("d\"b\\\n".into(), db);
        s.backup.last_ok_at = Some(t(1_200));
        s.backup.period = Some(Duration::from_secs(100));
        s.backup.last_error = Some("disk full".into());
        s.backup.offsite = Some(OffsiteStatus {
            pending: 2,
            ..Default::default()
        });
        s.resources = Some(Resources {
            disk_free_bytes: 5,
            disk_used_ratio: 0.25,
            mem_available_bytes: 7,
            load1: 0.5,
        });
        s.deploy.insert(
            "web".into(),
            berth_core::deploy::Record {
                service: "web".into(),
                image: "web:2".into(),
                previous_image: "web:1".into(),
                at: "1970-01-01T00:25:00Z".into(),
                outcome: berth_core::deploy::Outcome::RolledBack,
                trigger: Trigger::Deploy,
                duration_ms: 1,
                interruption_ms: None,
                reason: None,
                backup: None,
                restored: None,
                steps: Vec::new(),
            },
        );
        s.alerts.insert(
            "webhook".into(),
            ChannelStatus {
                ok: true,
                sent: 4,
                ..Default::default()
            },
        );
        s
    }

    #[test]
    fn renders_each_fact_with_conventional_names() {
        let text = render(&snapshot(), t(2_000));
        for want in [
            "# TYPE berth_service_restarts_total counter",
            "berth_service_restarts_total{service=\"web\"} 3",
            "berth_service_up{service=\"web\"} 1",
            "berth_service_held{service=\"web\"} 0",
            "berth_service_state{service=\"web\",state=\"running\"} 1",
            "berth_service_state{service=\"web\",state=\"exited\"} 0",
            "berth_service_crashloop{service=\"d\\\"b\\\\\\n\"} 1",
            "berth_probe_success{service=\"web\"} 1",
            "berth_probe_duration_seconds{service=\"web\"} 0.012",
            "berth_backup_last_success_timestamp_seconds 1200",
            "berth_backup_failing 1",
            "berth_backup_stale 1",
            "berth_backup_period_seconds 100",
            "berth_offsite_pending 2",
            "berth_disk_used_ratio 0.25",
            "berth_status{status=\"down\"} 1",
            "berth_status{status=\"ok\"} 0",
            "berth_alerts_sent_total{channel=\"webhook\"} 4",
            "berth_start_time_seconds 1000",
            "berth_config_generation 2",
            "berth_deploy_last_timestamp_seconds{service=\"web\"} 1500",
            "berth_deploy_last_outcome{service=\"web\",outcome=\"rolled_back\",trigger=\"deploy\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == want),
                "missing {want:?} in\n{text}"
            );
        }
        // No OpenMetrics leftovers: the body is the 0.0.4 text format.
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn every_family_has_help_and_type_before_its_samples() {
        let text = render(&snapshot(), t(2_000));
        let mut typed = BTreeSet::new();
        let mut helped = BTreeSet::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                helped.insert(rest.split(' ').next().unwrap_or("").to_string());
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let (name, kind) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
                assert_eq!(name.ends_with("_total"), kind == "counter", "{l}");
                typed.insert(name.to_string());
            } else {
                let name = l.split(['{', ' ']).next().unwrap_or("");
                assert!(typed.contains(name) && helped.contains(name), "{l}");
            }
        }
    }

    #[test]
    fn numbers_are_spelled_as_the_format_wants() {
        assert_eq!(number(1.0), "1");
        assert_eq!(number(0.0), "0");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(f64::NEG_INFINITY), "-Inf");
        assert_eq!(number(1_700_000_000.25), "1700000000.25");
    }
}
