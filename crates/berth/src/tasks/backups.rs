//! The backup task: scheduled backups (re-planned whenever the config in force changes),
//! backups on demand, restores. One backup or restore runs at a time; a deploy takes the
//! same lock for its pre-deploy backup.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use berth_config::Config;
use berth_core::schedule;
use berth_core::snapshot::{Health, State};
use chrono::Local;
use tokio::sync::{Mutex, MutexGuard, Notify};
use tracing::{debug, error, info, warn};

use crate::api::{Meta, Restored};
use crate::hub::Hub;
use crate::io::backup::{self, Retention};
use crate::io::containers::ignore_not_found;
use crate::io::off_runtime;

/// How long a restore waits for the services it stopped to be healthy again.
const RESTORED_HEALTHY_WITHIN: Duration = Duration::from_secs(180);

pub struct Backups {
    hub: Arc<Hub>,
    /// One backup or restore at a time.
    lock: Mutex<()>,
    /// Wakes the off-site copier after a new backup.
    offsite_wake: Arc<Notify>,
}

impl Backups {
    pub fn new(hub: Arc<Hub>, offsite_wake: Arc<Notify>) -> Arc<Self> {
        Arc::new(Backups {
            hub,
            lock: Mutex::new(()),
            offsite_wake,
        })
    }

    /// The backup lock, when nobody holds it.
    pub fn try_exclusive(&self) -> Option<MutexGuard<'_, ()>> {
        self.lock.try_lock().ok()
    }

    /// The backup lock, waiting for a backup or restore under way.
    pub async fn exclusive(&self) -> MutexGuard<'_, ()> {
        self.lock.lock().await
    }

    /// Takes a backup now (waiting for one in progress) and records the outcome.
    pub async fn backup_now(&self) -> anyhow::Result<Meta> {
        let _one = self.lock.lock().await;
        self.take(&self.hub.config()).await
    }

    /// Takes a backup; the caller holds [`Self::exclusive`].
    pub async fn take(&self, cfg: &Config) -> anyhow::Result<Meta> {
        self.take_with(cfg, Retention::Apply).await
    }

    async fn take_with(&self, cfg: &Config, retention: Retention) -> anyhow::Result<Meta> {
        info!("backup starting");
        let r = backup::take(self.hub.engine.as_ref(), cfg, retention).await;
        if r.is_err() {
            self.sweep(cfg).await;
        }
        match &r {
            Ok(m) => {
                info!(backup = %m.id, size = m.size, sha256 = %m.sha256, "backup done");
                self.refresh(cfg, None).await;
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "backup failed");
                self.refresh(cfg, Some(format!("{e:#}"))).await;
            }
        }
        r
    }

    /// Removes incomplete backup files (the caller holds [`Self::exclusive`]).
    async fn sweep(&self, cfg: &Config) {
        let Some(b) = &cfg.backup else { return };
        let dir = b.dir.clone();
        if let Err(e) = off_runtime(move || backup::sweep(&dir)).await {
            warn!(error = %format!("{e:#}"), "removing incomplete backup files");
        }
    }

    /// Re-reads the backup folder into the snapshot; `error` is the last attempt's.
    /// Returns when the newest backup (verified or not) was taken.
    pub async fn refresh(&self, cfg: &Config, error: Option<String>) -> Option<SystemTime> {
        let Some(b) = &cfg.backup else { return None };
        let dir = b.dir.clone();
        // Listing reads and parses every metadata file: off the async workers.
        let all = off_runtime(move || backup::list(&dir))
            .await
            .unwrap_or_default();
        let last_ok = all.iter().rev().find(|m| m.verified != Some(false));
        let (at, size) = (last_ok.and_then(|m| m.created()), last_ok.map(|m| m.size));
        let ok = error.is_none();
        self.hub.update(|s| {
            s.backup.count = all.len() as u64;
            s.backup.last_ok_at = at;
            s.backup.last_size_bytes = size;
            s.backup.last_error = error;
        });
        if ok {
            self.offsite_wake.notify_one();
        }
        all.last().and_then(|m| m.created())
    }

    /// Takes a backup of the data a restore is about to replace, so the restore can be
    /// undone; the caller holds [`Self::exclusive`]. A failure is said, not fatal: the
    /// restore is often wanted because the live data is broken.
    pub async fn safety_backup(&self, cfg: &Config) -> (Option<String>, Option<String>) {
        match self.take_with(cfg, Retention::Defer).await {
            Ok(m) => {
                info!(backup = %m.id, "safety backup of the data being replaced: `berth restore {}` undoes the restore", m.id);
                (Some(m.id), None)
            }
            Err(e) => {
                warn!(error = %format!("{e:#}"), "no safety backup before the restore; restoring anyway");
                (None, Some(format!("{e:#}")))
            }
        }
    }

    /// Restores a backup: takes a safety backup of the current data, holds and stops the
    /// dependants (the bot), replaces the database, releases them and waits until they
    /// are healthy again.
    pub async fn restore(&self, which: &str) -> anyhow::Result<Restored> {
        let _one = self.lock.lock().await;
        let hub = &self.hub;
        let cfg = hub.config();
        let b = cfg
            .backup
            .as_ref()
            .context("no [backup] section in the config")?;
        let meta = {
            let (dir, which) = (b.dir.clone(), which.to_string());
            off_runtime(move || backup::find(&dir, &which)).await?
        };
        let (safety, safety_error) = self.safety_backup(&cfg).await;
        let deps = berth_core::dependants(&cfg, &b.service);
        info!(backup = %meta.id, stopping = %deps.join(","), "restore starting");
        let r = {
            let _hold = hub.hold(deps.iter().cloned());
            async {
                for d in &deps {
                    if let (Some(id), Some(svc)) = (hub.current_container(d), cfg.services.get(d)) {
                        hub.stop_container(&id, svc.stop_grace_period)
                            .await
                            .or_else(ignore_not_found)?;
                        hub.update_service(d, |s| {
                            s.state = State::Stopped;
                            s.health = Health::Unknown;
                        });
                    }
                }
                backup::restore_database(hub.engine.as_ref(), &cfg, &meta).await
            }
            .await
        };
        r?;
        info!(backup = %meta.id, "database restored; starting dependants");
        let mut rx = hub.subscribe();
        let healthy = |s: &berth_core::snapshot::Snapshot| {
            deps.iter()
                .all(|d| s.services.get(d).is_some_and(|st| st.is_healthy()))
        };
        let ok = tokio::time::timeout(RESTORED_HEALTHY_WITHIN, rx.wait_for(healthy))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ok {
            anyhow::bail!(
                "database restored from {}, but {} did not become healthy",
                meta.id,
                deps.join(", ")
            );
        }
        Ok(Restored {
            backup: meta,
            safety,
            safety_error,
        })
    }

    /// Runs backups on the configured schedule (local time), re-planned whenever the
    /// config in force changes. A run missed while berth or the server was down happens
    /// once at start-up.
    pub async fn run(self: Arc<Self>) {
        let mut changes = self.hub.config_changes();
        let mut started = false;
        loop {
            let cfg = changes.borrow_and_update().clone();
            let cron = match cfg.backup.as_ref().map(|b| b.schedule.cron()) {
                None => None,
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    error!(error = %e, "backup schedule cannot be evaluated; no scheduled backups");
                    None
                }
            };
            let period = cron
                .as_ref()
                .and_then(|c| schedule::period(c, &Local::now()));
            self.hub.update(|s| s.backup.period = period);
            let Some(cron) = cron else {
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            };
            if !std::mem::replace(&mut started, true) {
                {
                    // What a backup killed with berth left behind.
                    let _one = self.lock.lock().await;
                    self.sweep(&cfg).await;
                }
                let newest = self.refresh(&cfg, None).await;
                if schedule::missed(&cron, newest, &Local::now()) {
                    info!("a scheduled backup was missed while berth was down: taking it now");
                    let _ = self.backup_now().await;
                }
            }
            let Some((next, wait)) = schedule::next_run(&cron, &Local::now()) else {
                if changes.changed().await.is_err() {
                    return;
                }
                continue;
            };
            debug!(next = %next, "next scheduled backup");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    let _ = self.backup_now().await;
                }
                r = changes.changed() => if r.is_err() { return },
            }
        }
    }
}
