//! `berth backup`, `berth backups`, `berth restore`.

use anyhow::Context as _;
use berth_config::Config;

use crate::api::{Meta, RestoreRequest, Restored};
use crate::cmd::steps::Shown;
use crate::cmd::{confirm, connect};
use crate::io::backup;
use crate::serve::admin;

pub async fn backup_cmd(cfg: Config, quiet: bool) -> anyhow::Result<()> {
    let mut shown = Shown::new(quiet);
    let asked = admin::request_progress::<_, Meta>(
        &cfg.supervisor.admin_socket,
        "/backup",
        &(),
        &mut |s| shown.show(s),
    )
    .await;
    drop(shown);
    let meta = match asked {
        Some(r) => r?,
        None => backup::take(connect().await?.as_ref(), &cfg, backup::Retention::Apply).await?,
    };
    println!("{}", meta.id);
    Ok(())
}

pub fn backups_cmd(cfg: Config, json: bool) -> anyhow::Result<()> {
    let b = cfg
        .backup
        .as_ref()
        .context("no [backup] section in the config")?;
    let all = backup::list(&b.dir)?;
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|m| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                v["path"] = serde_json::Value::String(m.path(&b.dir).display().to_string());
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no backups in {}", b.dir.display());
    }
    for m in &all {
        let verified = match m.verified {
            Some(true) => "verified",
            Some(false) => "FAILED verification",
            None => "not verified",
        };
        println!(
            "{}  {}  {:>10}  sha256:{}  {verified}",
            m.id, m.created_at, m.size, m.sha256
        );
    }
    Ok(())
}

pub async fn restore_cmd(cfg: Config, which: String, yes: bool, quiet: bool) -> anyhow::Result<()> {
    let b = cfg
        .backup
        .as_ref()
        .context("no [backup] section in the config")?;
    let meta = backup::find(&b.dir, &which)?;
    let deps = berth_core::dependants(&cfg, &b.service);
    if !yes {
        confirm(
            &format!("restore replaces database {}", b.database),
            &format!(
                "Replace database {} with backup {} ({})? {} will be stopped meanwhile.",
                b.database,
                meta.id,
                meta.created_at,
                if deps.is_empty() {
                    "nothing".to_string()
                } else {
                    deps.join(", ")
                }
            ),
        )?;
    }
    let req = RestoreRequest {
        which: meta.id.clone(),
    };
    let mut shown = Shown::new(quiet);
    let asked = admin::request_progress::<_, Restored>(
        &cfg.supervisor.admin_socket,
        "/restore",
        &req,
        &mut |s| shown.show(s),
    )
    .await;
    drop(shown);
    let safety = match asked {
        Some(r) => {
            let r = r?;
            (r.safety, r.safety_error)
        }
        None => {
            // No daemon: nobody restarts what we stop, so stop and start by hand.
            let engine = connect().await?;
            let safety = match backup::take(engine.as_ref(), &cfg, backup::Retention::Defer).await {
                Ok(m) => (Some(m.id), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            for d in &deps {
                let grace = cfg.services[d].stop_grace_period;
                let _ = engine.stop_container(&cfg.container_name(d), grace).await;
            }
            let r = backup::restore_database(engine.as_ref(), &cfg, &meta).await;
            for d in deps.iter().rev() {
                let _ = engine.start_container(&cfg.container_name(d)).await;
            }
            r?;
            safety
        }
    };
    println!("restored {} ({})", meta.id, meta.created_at);
    match safety {
        (Some(id), _) => {
            println!("the data it replaced is in backup {id}: `berth restore {id}` undoes this")
        }
        (None, Some(e)) => println!("no safety backup of the replaced data could be taken: {e}"),
        (None, None) => {}
    }
    Ok(())
}
