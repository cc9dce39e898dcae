//! `berth offsite list`, `berth offsite fetch`, `berth offsite keygen`.

use std::path::PathBuf;

use anyhow::Context as _;
use berth_config::{Config, Offsite};

use crate::io::crypt::Key;
use crate::io::s3::Store;

fn offsite(cfg: &Config) -> anyhow::Result<&Offsite> {
    cfg.backup
        .as_ref()
        .and_then(|b| b.offsite.as_ref())
        .with_context(|| format!("no [backup.offsite] section in {}", cfg.path.display()))
}

pub async fn list(cfg: Config) -> anyhow::Result<()> {
    let o = offsite(&cfg)?;
    let store = Store::new(o, &cfg.supervisor.project)?;
    let copies = store.list().await?;
    let complete: Vec<_> = copies.values().filter(|l| l.complete()).collect();
    if complete.is_empty() {
        println!("no copies in bucket {} under {}", o.bucket, store.folder());
    }
    for l in complete {
        println!(
            "{}  {:>12} bytes  {}",
            l.id,
            l.size(),
            if l.encrypted() { "encrypted" } else { "plain" }
        );
    }
    Ok(())
}

pub async fn fetch(cfg: Config, which: String, dir: Option<PathBuf>) -> anyhow::Result<()> {
    let o = offsite(&cfg)?;
    let into_backups = dir.is_none();
    let dir = match dir {
        Some(d) => d,
        None => cfg
            .backup
            .as_ref()
            .map(|b| b.dir.clone())
            .context("no [backup] section")?,
    };
    let store = Store::new(o, &cfg.supervisor.project)?;
    let meta = store.fetch(&which, &dir).await?;
    println!(
        "fetched {} ({}) into {}",
        meta.id,
        meta.created_at,
        dir.display()
    );
    if into_backups {
        println!(
            "restore it with `berth restore {}` (soon: the next scheduled backup's retention may remove an old one)",
            meta.id
        );
    } else {
        println!(
            "the dump is {} (pg_restore custom format)",
            meta.path(&dir).display()
        );
    }
    Ok(())
}

pub fn keygen() -> anyhow::Result<()> {
    let (secret, public) = Key::generate();
    println!("# berth offsite keygen: public key {public}");
    println!("BACKUP_ENCRYPTION_KEY={secret}");
    eprintln!(
        "Keep a copy of this key away from this server (a password manager): the encrypted copies cannot be read without it."
    );
    Ok(())
}
