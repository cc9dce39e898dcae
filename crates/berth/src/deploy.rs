//! Health-gated deploys for a long-polling bot: present image, pre-deploy backup,
//! migration in a one-off container of the new image, stop the old container, start the
//! new one, wait for healthy, else roll back to the old container (kept stopped as
//! `<name>.previous`). With the default `stop-first` strategy there are never two
//! containers of the service running at once; `start-first` (for services that tolerate
//! overlap) starts the new one as `<name>.next` and stops the old once it is healthy.
//!
//! Deployed images are recorded in `state_dir/deploys.json` and override the file's
//! `image` until the file's own `image` changes.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use berth_config::{Config, Strategy};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::spec;
use crate::state::{Health, State};
use crate::supervisor::{Supervisor, short};

/// Suffix of the stopped container kept as the instant rollback target.
pub const PREVIOUS: &str = ".previous";
/// Suffix of the older rollback target while a deploy runs (`.previous-old`).
const PARKED: &str = "-old";
/// Suffix of a start-first deploy's new container until the old one is stopped.
pub const NEXT: &str = ".next";
/// Suffix of the current container while `berth rollback` brings the previous one back.
pub const ROLLING_BACK: &str = ".rolling-back";

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Override {
    pub image: String,
    /// The file's `image` when the deploy happened: when the file changes it, the file wins.
    pub file_image: String,
    /// A reload changed the file's image and its deploy has not finished: the old image
    /// stays in force until the deploy succeeds (resumed after a restart of berth).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub service: String,
    pub image: String,
    pub previous_image: String,
    pub at: String,
    pub outcome: String,
    pub duration_ms: u64,
    /// How long the service had no running container: old stopped → new healthy (or, on
    /// failure, the old one healthy again). None when the old one never stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeployState {
    pub overrides: BTreeMap<String, Override>,
    pub history: Vec<Record>,
    /// The deploy under way, written before the first container changes: found here at
    /// start-up, it was interrupted (berth killed) and is recorded as such.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<Record>,
}

impl DeployState {
    fn path(state_dir: &Path) -> std::path::PathBuf {
        state_dir.join("deploys.json")
    }

    pub fn load(state_dir: &Path) -> DeployState {
        std::fs::read_to_string(Self::path(state_dir))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, state_dir: &Path) -> anyhow::Result<()> {
        let path = Self::path(state_dir);
        let tmp = state_dir.join(".deploys.json.partial");
        std::fs::write(&tmp, serde_json::to_string_pretty(self)?)
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    /// The file's config with deployed images in place; overrides the file has moved past
    /// are dropped (returns whether any was).
    pub fn apply(&mut self, mut cfg: Config) -> (Config, bool) {
        let before = self.overrides.len();
        self.overrides.retain(|svc, o| {
            cfg.services
                .get(svc)
                .is_some_and(|s| s.image == o.file_image)
        });
        for (svc, o) in &self.overrides {
            if let Some(s) = cfg.services.get_mut(svc) {
                s.image = o.image.clone();
            }
        }
        let dropped = self.overrides.len() != before;
        (cfg, dropped)
    }

    /// The latest record per service, for /health.
    pub fn latest(&self) -> BTreeMap<String, Record> {
        let mut out = BTreeMap::new();
        for r in &self.history {
            out.insert(r.service.clone(), r.clone());
        }
        out
    }
}

/// The service's settings, or an error naming it.
fn service_config(cfg: &Config, service: &str) -> anyhow::Result<berth_config::Service> {
    cfg.services
        .get(service)
        .cloned()
        .with_context(|| format!("no service {service:?} in the config"))
}

/// Whether a deploy that finds another one running is refused or waits its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// `berth deploy`: a person asked; tell them at once.
    Refuse,
    /// A reload changed the image: it runs after whatever deploy is under way.
    Wait,
}

impl Supervisor {
    /// `berth deploy SERVICE IMAGE`: Ok when the new image runs healthy; Err when the
    /// deploy was refused, aborted (old version untouched) or rolled back (with why).
    pub async fn deploy(
        self: &Arc<Self>,
        service: &str,
        image: &str,
        backup: bool,
        turn: Turn,
    ) -> anyhow::Result<Record> {
        let _one = match turn {
            Turn::Refuse => match self.deploy_lock.try_lock() {
                Ok(g) => g,
                Err(_) => bail!("another deploy is running: wait for it to finish"),
            },
            Turn::Wait => self.deploy_lock.lock().await,
        };
        // A deploy waits for a running backup, and no backup starts during it.
        let _backups = match self.backup_lock.try_lock() {
            Ok(g) => g,
            Err(_) => {
                info!(service, "deploy waits for the running backup to finish");
                self.backup_lock.lock().await
            }
        };
        let started = Instant::now();
        let cfg = self.config();
        let svc = service_config(&cfg, service)?;
        let record =
            |outcome: &str, interruption: Option<Duration>, reason: Option<String>| Record {
                service: service.to_string(),
                image: image.to_string(),
                previous_image: svc.image.clone(),
                at: crate::state::fmt_time(SystemTime::now()),
                outcome: outcome.to_string(),
                duration_ms: started.elapsed().as_millis() as u64,
                interruption_ms: interruption.map(|d| d.as_millis() as u64),
                reason,
            };
        // Until a container changes, a failure leaves everything as it was.
        if let Err(e) = self.prepare(&cfg, &svc, image, backup).await {
            self.record_deploy(record("aborted", None, Some(format!("{e:#}"))))?;
            return Err(e);
        }

        // From here the service is held: the supervisor neither restarts nor recreates it.
        self.hold(service, true);
        self.begin_deploy(record("in_flight", None, None))?;
        let mut new_svc = svc.clone();
        new_svc.image = image.to_string();
        let name = cfg.container_name(service);
        let previous_name = format!("{name}{PREVIOUS}");
        let old = self.current_container(service);
        // The rollback target of the last deploy is parked until this one succeeds, so a
        // failed deploy leaves `berth rollback` where it was.
        let parked = format!("{previous_name}{PARKED}");
        let _ = self.engine.remove_container(&parked, true).await;
        let had_previous = self
            .engine
            .rename_container(&previous_name, &parked)
            .await
            .is_ok();
        let start_first = svc.deploy.strategy == Strategy::StartFirst;
        // When the old container stopped: the service is interrupted from then on.
        let mut stopped_at: Option<Instant> = None;
        let r = async {
            if start_first {
                // Overlap allowed: the new container must be healthy before the old stops.
                let next = format!("{name}{NEXT}");
                let _ = self.engine.remove_container(&next, true).await;
                let mut spec = spec::container_spec(&cfg, &new_svc);
                spec.name = next.clone();
                let new_id = self.engine.create_container(&spec).await?;
                if let Err(e) = self
                    .start_and_wait(&cfg, &new_svc, &new_id, svc.deploy.health_timeout)
                    .await
                {
                    self.expect_stop(&new_id);
                    let _ = self.engine.remove_container(&new_id, true).await;
                    return Err(e);
                }
                if let Some(old) = &old {
                    self.expect_stop(old);
                    self.engine
                        .stop_container(old, svc.stop_grace_period)
                        .await?;
                    self.engine.rename_container(old, &previous_name).await?;
                }
                self.engine.rename_container(&new_id, &name).await?;
                return anyhow::Ok(new_id);
            }
            if let Some(old) = &old {
                self.engine.rename_container(old, &previous_name).await?;
            }
            let new_id = self
                .engine
                .create_container(&spec::container_spec(&cfg, &new_svc))
                .await?;
            // Stop-first: the old poller ends its poll before the new one starts.
            if let Some(old) = &old {
                self.expect_stop(old);
                self.engine
                    .stop_container(old, svc.stop_grace_period)
                    .await?;
                stopped_at = Some(Instant::now());
            }
            self.start_and_wait(&cfg, &new_svc, &new_id, svc.deploy.health_timeout)
                .await?;
            anyhow::Ok(new_id)
        }
        .await;
        let (outcome, reason) = match r {
            Ok(new_id) => {
                info!(service, image, container = %short(&new_id), "deployed");
                if had_previous {
                    let _ = self.engine.remove_container(&parked, true).await;
                }
                self.set_override(service, image)?;
                ("deployed", None)
            }
            Err(e) => {
                let reason = format!("{e:#}");
                warn!(service, image, error = %reason, "deploy failed: rolling back");
                let back = match (&old, start_first) {
                    // The old container never stopped: only its health needs confirming.
                    (Some(old), true) => {
                        self.start_and_wait(&cfg, &svc, old, svc.deploy.health_timeout)
                            .await
                    }
                    _ => {
                        self.roll_back_to_previous(&cfg, &svc, &name, &previous_name)
                            .await
                    }
                };
                if let Err(back) = back {
                    // Nothing healthy runs: leave the service to the supervisor's restarts.
                    self.hold(service, false);
                    self.request_reconcile();
                    let reason = format!("{reason}; the rollback failed too: {back:#}");
                    self.record_deploy(record(
                        "failed",
                        stopped_at.map(|t| t.elapsed()),
                        Some(reason.clone()),
                    ))?;
                    bail!("{reason}");
                }
                if had_previous {
                    let _ = self.engine.rename_container(&parked, &previous_name).await;
                }
                ("rolled_back", Some(reason))
            }
        };
        let rec = record(outcome, stopped_at.map(|t| t.elapsed()), reason.clone());
        self.hold(service, false);
        self.request_reconcile();
        self.record_deploy(rec.clone())?;
        match reason {
            None => Ok(rec),
            Some(reason) => bail!("rolled back to {}: {reason}", rec.previous_image),
        }
    }

    /// The steps before any container changes: image present, pre-deploy backup,
    /// migration in a one-off container of the new image.
    async fn prepare(
        &self,
        cfg: &Config,
        svc: &berth_config::Service,
        image: &str,
        backup: bool,
    ) -> anyhow::Result<()> {
        crate::supervisor::ensure_image(self.engine.as_ref(), image).await?;
        if backup && cfg.backup.is_some() {
            let meta = crate::backup::take(self.engine.as_ref(), cfg)
                .await
                .context("pre-deploy backup failed; nothing was changed")?;
            info!(backup = %meta.id, "pre-deploy backup");
            self.refresh_backups(cfg, None);
        }
        if let Some(cmd) = &svc.deploy.migrate {
            let mut new_svc = svc.clone();
            new_svc.image = image.to_string();
            self.migrate(cfg, &new_svc, cmd).await?;
        }
        Ok(())
    }

    /// Runs the migration command in a one-off container of the new image, on the stack
    /// network with the service's environment. Any failure aborts the deploy.
    async fn migrate(
        &self,
        cfg: &Config,
        svc: &berth_config::Service,
        cmd: &[String],
    ) -> anyhow::Result<()> {
        let mut spec = spec::container_spec(cfg, svc);
        spec.name = format!("{}-migrate", cfg.container_name(&svc.name));
        spec.cmd = Some(cmd.to_vec());
        spec.ports.clear();
        // Not a service container: no service label, so the planner never adopts it.
        spec.labels.remove(berth_plan::LABEL_SERVICE);
        spec.labels.remove(berth_plan::LABEL_SPEC_HASH);
        let _ = self.engine.remove_container(&spec.name, true).await;
        let id = self
            .engine
            .create_container(&spec)
            .await
            .context("creating the migration container")?;
        let r = async {
            self.engine.start_container(&id).await?;
            let deadline = Instant::now() + Duration::from_secs(600);
            loop {
                let d = self.engine.inspect_container(&id).await?;
                if !d.running
                    && d.finished_at
                        .as_deref()
                        .is_some_and(|f| !f.starts_with("0001"))
                {
                    let code = d.exit_code.unwrap_or(-1);
                    if code == 0 {
                        return anyhow::Ok(());
                    }
                    let logs = self.tail_logs(&id).await;
                    bail!(
                        "migration {:?} failed (exit code {code}): {logs}",
                        cmd.join(" ")
                    );
                }
                if Instant::now() > deadline {
                    bail!(
                        "migration {:?} still running after 10 minutes",
                        cmd.join(" ")
                    );
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        .await;
        let _ = self.engine.remove_container(&id, true).await;
        r.context("the old version is untouched")
    }

    async fn tail_logs(&self, id: &str) -> String {
        use futures::StreamExt;
        let mut s = self.engine.logs(id, Some(5), false);
        let mut out = Vec::new();
        while let Some(Ok(chunk)) = s.next().await {
            match chunk {
                berth_engine::Output::Stdout(b) | berth_engine::Output::Stderr(b) => out.extend(b),
            }
        }
        String::from_utf8_lossy(&out).trim().replace('\n', " | ")
    }

    /// Starts a container of the service and waits until it passes its probe.
    async fn start_and_wait(
        &self,
        cfg: &Config,
        svc: &berth_config::Service,
        id: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        self.update_service(&svc.name, |s| {
            s.container_id = Some(id.to_string());
            s.image = svc.image.clone();
            s.state = State::Starting;
            s.health = Health::Starting;
        });
        self.engine.start_container(id).await?;
        let details = self.engine.inspect_container(id).await?;
        let ip = details.ips.get(&cfg.network_name()).copied();
        self.update_service(&svc.name, |s| {
            s.ip = ip;
            s.since = crate::supervisor::started_at(&details);
        });
        self.probe_until_healthy_within(svc, &details, ip, timeout)
            .await
    }

    /// Stops and removes the failed new container and starts the previous one again.
    async fn roll_back_to_previous(
        &self,
        cfg: &Config,
        svc: &berth_config::Service,
        name: &str,
        previous_name: &str,
    ) -> anyhow::Result<()> {
        if let Ok(new) = self.engine.inspect_container(name).await {
            self.expect_stop(&new.id);
            let _ = self
                .engine
                .stop_container(&new.id, svc.stop_grace_period)
                .await;
            self.engine.remove_container(&new.id, true).await?;
        }
        let previous = self
            .engine
            .inspect_container(previous_name)
            .await
            .context("no previous container to roll back to")?;
        self.engine.rename_container(&previous.id, name).await?;
        if svc.deploy.restore_db_on_rollback
            && let Some(b) = &cfg.backup
            && let Ok(meta) = crate::backup::find(&b.dir, "latest")
        {
            crate::backup::restore_database(self.engine.as_ref(), cfg, &meta)
                .await
                .context("restoring the pre-deploy backup")?;
        }
        self.start_and_wait(cfg, svc, &previous.id, svc.deploy.health_timeout)
            .await
            .context("the previous version did not come back healthy")
    }

    /// `berth rollback SERVICE`: back to the previous container (instant: it exists,
    /// stopped); the current one becomes the new previous.
    /// With `restore_db`, the backup taken just before the current version was deployed
    /// is restored while neither version runs.
    pub async fn rollback(
        self: &Arc<Self>,
        service: &str,
        restore_db: bool,
    ) -> anyhow::Result<Record> {
        let Ok(_one) = self.deploy_lock.try_lock() else {
            bail!("a deploy is running: wait for it to finish");
        };
        let started = Instant::now();
        let cfg = self.config();
        let svc = service_config(&cfg, service)?;
        let (pre_deploy, _backups) = if restore_db {
            (
                Some(self.pre_deploy_backup(&cfg, service)?),
                Some(self.backup_lock.lock().await),
            )
        } else {
            (None, None)
        };
        let name = cfg.container_name(service);
        let previous_name = format!("{name}{PREVIOUS}");
        let previous = self
            .engine
            .inspect_container(&previous_name)
            .await
            .with_context(|| format!("{service} has no previous version to roll back to"))?;
        let previous_image = previous.image.clone();
        let record = |from: String, outcome: &str, interruption: Option<Duration>| Record {
            service: service.to_string(),
            image: previous_image.clone(),
            previous_image: from,
            at: crate::state::fmt_time(SystemTime::now()),
            outcome: outcome.into(),
            duration_ms: started.elapsed().as_millis() as u64,
            interruption_ms: interruption.map(|d| d.as_millis() as u64),
            reason: Some(match &pre_deploy {
                Some(m) => format!("berth rollback --restore-db (backup {})", m.id),
                None => "berth rollback".into(),
            }),
        };
        self.hold(service, true);
        self.begin_deploy(record(svc.image.clone(), "in_flight", None))?;
        let mut stopped_at = None;
        let r = async {
            let current = self.engine.inspect_container(&name).await.ok();
            let parked = format!("{name}{ROLLING_BACK}");
            if let Some(c) = &current {
                self.expect_stop(&c.id);
                self.engine
                    .stop_container(&c.id, svc.stop_grace_period)
                    .await?;
                stopped_at = Some(Instant::now());
                self.engine.rename_container(&c.id, &parked).await?;
            }
            self.engine.rename_container(&previous.id, &name).await?;
            if let Some(meta) = &pre_deploy {
                info!(service, backup = %meta.id, "restoring the pre-deploy backup");
                crate::backup::restore_database(self.engine.as_ref(), &cfg, meta)
                    .await
                    .context("restoring the pre-deploy backup")?;
            }
            let mut back = svc.clone();
            back.image = previous_image.clone();
            self.start_and_wait(&cfg, &back, &previous.id, svc.deploy.health_timeout)
                .await?;
            if let Some(c) = &current {
                self.engine.rename_container(&c.id, &previous_name).await?;
            }
            anyhow::Ok(current.map(|c| c.image).unwrap_or_default())
        }
        .await;
        self.hold(service, false);
        self.request_reconcile();
        let from = match r {
            Ok(from) => from,
            Err(e) => {
                let rec = record(svc.image.clone(), "failed", stopped_at.map(|t| t.elapsed()));
                self.record_deploy(Record {
                    reason: Some(format!("berth rollback: {e:#}")),
                    ..rec
                })?;
                return Err(e);
            }
        };
        self.set_override(service, &previous_image)?;
        let rec = record(from, "rolled_back", stopped_at.map(|t| t.elapsed()));
        self.record_deploy(rec.clone())?;
        Ok(rec)
    }

    /// The newest backup taken before the service's current version was deployed.
    fn pre_deploy_backup(
        &self,
        cfg: &Config,
        service: &str,
    ) -> anyhow::Result<crate::backup::Meta> {
        let b = cfg
            .backup
            .as_ref()
            .context("--restore-db needs a [backup] section")?;
        let image = service_config(cfg, service)?.image;
        let deployed = self
            .deploy_history()
            .into_iter()
            .rev()
            .find(|r| r.service == service && r.outcome == "deployed" && r.image == image)
            .with_context(|| {
                format!("no deploy of {image} on record to find its pre-deploy backup: pick one with `berth backups` and `berth restore`")
            })?;
        crate::backup::list(&b.dir)?
            .into_iter()
            .rev()
            .find(|m| m.created_at <= deployed.at && m.verified != Some(false))
            .with_context(|| {
                format!(
                    "no backup older than the deploy of {image} ({})",
                    deployed.at
                )
            })
    }

    /// Undoes what a deploy or rollback interrupted by berth's death left behind, before
    /// the first convergence: at most one container per service runs, under the service's
    /// name, and the rollback target is where the last finished deploy left it.
    pub async fn recover_interrupted(&self) -> anyhow::Result<()> {
        let Some(flight) = self.take_in_flight()? else {
            return Ok(());
        };
        let cfg = self.config();
        let service = &flight.service;
        let name = cfg.container_name(service);
        let all = self
            .engine
            .containers(berth_plan::LABEL_PROJECT, &cfg.supervisor.project)
            .await?;
        let find = |suffix: &str| {
            let n = format!("{name}{suffix}");
            all.iter().find(|c| c.name == n).map(|c| c.id.clone())
        };
        let previous = format!("{name}{PREVIOUS}");
        let done = cfg
            .services
            .get(service)
            .is_some_and(|s| s.image == flight.image);
        warn!(service, image = %flight.image, "berth stopped during a deploy: undoing it");
        let _ = self
            .engine
            .remove_container(&format!("{name}-migrate"), true)
            .await;
        if let Some(next) = find(NEXT) {
            self.expect_stop(&next);
            self.engine.remove_container(&next, true).await?;
        }
        if let Some(rolling) = find(ROLLING_BACK) {
            // `berth rollback` had parked the current container: it stays current.
            if let Some(main) = find("") {
                self.expect_stop(&main);
                self.engine.stop_container(&main, Duration::ZERO).await?;
                self.engine.rename_container(&main, &previous).await?;
            }
            self.engine.rename_container(&rolling, &name).await?;
        } else if !done && let Some(prev) = find(PREVIOUS) {
            // The old container comes back under its name; the new one (if created) goes.
            if let Some(main) = find("") {
                self.expect_stop(&main);
                self.engine.remove_container(&main, true).await?;
            }
            self.engine.rename_container(&prev, &name).await?;
            if let Some(parked) = find(&format!("{PREVIOUS}{PARKED}")) {
                self.engine.rename_container(&parked, &previous).await?;
            }
        } else if find(PREVIOUS).is_none()
            && let Some(parked) = find(&format!("{PREVIOUS}{PARKED}"))
        {
            self.engine.rename_container(&parked, &previous).await?;
        }
        self.record_deploy(Record {
            outcome: "interrupted".into(),
            reason: Some("berth stopped during the deploy; undone at start-up".into()),
            ..flight
        })
    }
}
