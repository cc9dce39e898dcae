//! `berth backup`, `berth backups`, `berth restore`.

use anyhow::Context as _;
use berth_config::Config;

use crate::api::{Meta, RestoreRequest};
use crate::cmd::connect;
use crate::io::backup;
use crate::serve::admin;

pub async fn backup_cmd(cfg: Config) -> anyhow::Result<()> {
    let meta = match admin::request::<_, Meta>(&cfg.supervisor.admin_socket, "/backup", &()).await {
        Some(r) => r?,
        None => backup::take(connect().await?.as_ref(), &cfg).await?,
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

pub async fn restore_cmd(cfg: Config, which: String, yes: bool) -> anyhow::Result<()> {
    let b = cfg
        .backup
        .as_ref()
        .context("no [backup] section in the config")?;
    let meta = backup::find(&b.dir, &which)?;
    let deps = berth_core::dependants(&cfg, &b.service);
    if !yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "restore replaces database {}: confirm with --yes",
                b.database
            );
        }
        print!(
            "Replace database {} with backup {} ({})? {} will be stopped meanwhile. [y/N] ",
            b.database,
            meta.id,
            meta.created_at,
            if deps.is_empty() {
                "nothing".to_string()
            } else {
                deps.join(", ")
            }
        );
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            anyhow::bail!("not restored");
        }
    }
    let req = RestoreRequest {
        which: meta.id.clone(),
    };
    match admin::request::<_, Meta>(&cfg.supervisor.admin_socket, "/restore", &req).await {
        Some(r) => {
            r?;
        }
        None => {
            // No daemon: nobody restarts what we stop, so stop and start by hand.
            let engine = connect().await?;
            for d in &deps {
                let grace = cfg.services[d].stop_grace_period;
                let _ = engine.stop_container(&cfg.container_name(d), grace).await;
            }
            let r = backup::restore_database(engine.as_ref(), &cfg, &meta).await;
            for d in deps.iter().rev() {
                let _ = engine.start_container(&cfg.container_name(d)).await;
            }
            r?;
        }
    }
    println!("restored {} ({})", meta.id, meta.created_at);
    Ok(())
}
