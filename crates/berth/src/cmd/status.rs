//! `berth status`: the daemon's `/health` document as a table (or as it is, `--json`);
//! with no daemon, what the engine alone can tell.

use std::fmt::Write as _;
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use berth_config::Config;
use berth_core::snapshot::{HealthDoc, Overall};

use crate::cmd::connect;
use crate::cmd::deploy::interruption;

pub async fn status(cfg: Config, json: bool) -> ExitCode {
    let url = format!("http://{}/health", cfg.supervisor.health_listen);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let body = match client.get(&url).send().await {
        Ok(r) => r.text().await.ok(),
        Err(_) => None,
    };
    let Some(body) = body else {
        eprintln!(
            "berth daemon is not answering at {url}: is `berth run` (the berth service) running?"
        );
        engine_only_status(&cfg).await;
        return ExitCode::from(3);
    };
    let doc: HealthDoc = match serde_json::from_str(&body) {
        Ok(d) => d,
        Err(e) => {
            eprintln!(
                "error: {url} answered a document this berth cannot read ({e}); is the daemon the same version as this CLI?"
            );
            return ExitCode::from(1);
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
    } else {
        print!("{}", table(&doc, SystemTime::now()));
    }
    if doc.status == Overall::Down {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// "3h 2m 1s" since `t`, or "-".
fn ago(t: Option<SystemTime>, now: SystemTime) -> String {
    t.and_then(|t| now.duration_since(t).ok())
        .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
        .unwrap_or_else(|| "-".into())
}

/// The `berth status` table.
fn table(doc: &HealthDoc, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "status: {}   engine: {}   config generation {}",
        doc.status, doc.engine, doc.config.generation
    );
    if let Some(e) = &doc.config.error {
        let _ = writeln!(out, "config reload rejected: {e}");
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:<9} {:<10} {:>8}  {:<14} IMAGE",
        "SERVICE", "STATE", "HEALTH", "RESTARTS", "UPTIME"
    );
    for (name, s) in &doc.services {
        let mut health = s.health.to_string();
        if s.crashloop {
            health.push_str(" (crash loop)");
        }
        let _ = writeln!(
            out,
            "{:<12} {:<9} {:<10} {:>8}  {:<14} {}",
            name,
            if s.held {
                "held".to_string()
            } else {
                s.state.to_string()
            },
            health,
            s.restarts,
            ago(s.since, now),
            s.image,
        );
        if s.held {
            let _ = writeln!(
                out,
                "{:<12} held down on purpose by berth stop: berth start {name}",
                ""
            );
        }
        if let Some(err) = s.probe.as_ref().and_then(|p| p.error.as_ref()) {
            let _ = writeln!(out, "{:<12} probe: {err}", "");
        }
    }
    let b = &doc.backup;
    let _ = match b.last_ok_at {
        Some(t) => writeln!(
            out,
            "\nbackup: last ok {} ({} ago), {} kept",
            berth_core::time::fmt_time(t),
            ago(Some(t), now),
            b.count
        ),
        None => writeln!(out, "\nbackup: none yet"),
    };
    if let Some(e) = &b.last_error {
        let _ = writeln!(out, "backup: last attempt failed: {e}");
    }
    if let Some(o) = &b.offsite {
        let state = match &o.last_error {
            Some(e) => format!("failing: {e}"),
            None => format!(
                "{} copies, last pass {}",
                o.count,
                o.last_ok_at
                    .map(berth_core::time::fmt_time)
                    .unwrap_or_else(|| "not yet".into())
            ),
        };
        let _ = writeln!(out, "off-site: {state}, {} pending", o.pending);
    }
    for (name, c) in &doc.alerts {
        let state = match &c.last_error {
            Some(e) if !c.ok => format!("failing: {e}"),
            _ => "ok".to_string(),
        };
        let _ = writeln!(out, "alerts: {name} {state} ({} sent)", c.sent);
    }
    for (svc, d) in &doc.deploy {
        let _ = writeln!(
            out,
            "deploy: {svc} {} (previous {}) at {}: {}{}",
            d.image,
            if d.previous_image.is_empty() {
                "-"
            } else {
                &d.previous_image
            },
            d.at,
            d.outcome,
            interruption(d)
        );
        if let Some(reason) = &d.reason {
            let _ = writeln!(out, "  reason: {reason}");
        }
    }
    out
}

/// What the engine alone can tell when the daemon does not answer.
async fn engine_only_status(cfg: &Config) {
    let engine = match connect().await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("and the engine cannot be asked either: {e:#}");
            return;
        }
    };
    match engine
        .containers(berth_core::LABEL_PROJECT, &cfg.supervisor.project)
        .await
    {
        Ok(list) => {
            println!(
                "containers of project {} (from the engine):",
                cfg.supervisor.project
            );
            for name in cfg.services.keys() {
                let c = list
                    .iter()
                    .find(|c| c.labels.get(berth_core::LABEL_SERVICE) == Some(name));
                let state = match c {
                    Some(c) if c.running => "running",
                    Some(_) => "stopped",
                    None => "no container",
                };
                println!("  {name:<12} {state}");
            }
        }
        Err(e) => eprintln!("engine: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_core::snapshot::{Health, ServiceStatus, Snapshot, State};

    #[test]
    fn the_table_reads_the_typed_document() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let mut snap = Snapshot::new(t0);
        snap.engine_connected = true;
        let mut bot = ServiceStatus::new("bot:2");
        bot.state = State::Running;
        bot.health = Health::Healthy;
        bot.restarts = 3;
        bot.since = Some(t0);
        snap.services.insert("bot".into(), bot);
        let now = t0 + Duration::from_secs(125);
        let text = table(&snap.to_doc(now), now);
        assert!(
            text.starts_with("status: ok   engine: connected   config generation 0"),
            "{text}"
        );
        assert!(
            text.contains("bot          running   healthy           3  2m 5s"),
            "{text}"
        );
        assert!(text.contains("backup: none yet"), "{text}");
    }
}
