//! The deployer: health-gated deploys for a long-polling bot — image present, pre-deploy
//! backup, migration in a one-off container of the new image, stop the old container,
//! start the new one, wait for healthy, else roll back to the old container (kept stopped
//! as `<name>.previous`). With the default `stop-first` strategy there are never two
//! containers of the service running at once; `start-first` (for services that tolerate
//! overlap) starts the new one as `<name>.next` and stops the old once it is healthy.
//!
//! It owns the deploy state (`state_dir/deploys.json`): deployed images override the
//! file's `image` until the file's own `image` changes, so it also decides the config in
//! force and publishes it. A reload that changes an image queues a deploy of it, run by
//! [`Deployer::run`] one after the other.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use berth_config::{Config, Rollback, Service, Strategy};
use berth_core::deploy::{DeployState, Mark, Outcome, Override, Record, Role, Step, Trigger};
use berth_core::time::fmt_time;
use berth_engine::EngineError;
use futures::StreamExt as _;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::api::Meta;
use crate::hub::{Hold, Hub};
use crate::io::containers::{ensure_image, short, tail_logs};
use crate::io::{backup, off_runtime, spec, statefile};
use crate::progress;
use crate::tasks::backups::Backups;
use crate::tasks::gate;

mod keep;

/// How long a migration may run.
const MIGRATION_LIMIT: Duration = Duration::from_secs(600);

/// Whether a deploy that finds another one running is refused or waits its turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// `berth deploy`: a person asked; tell them at once.
    Refuse,
    /// A reload changed the image: it runs after whatever deploy is under way.
    Wait,
}

/// A deploy a reload asked for, with the hold that keeps the planner off the service
/// from the reload until the deploy ends.
struct Queued {
    service: String,
    image: String,
    _hold: Hold,
}

pub struct Deployer {
    hub: Arc<Hub>,
    backups: Arc<Backups>,
    state: Mutex<DeployState>,
    /// The file as loaded, before deployed images override it.
    file: Mutex<Arc<Config>>,
    /// One deploy or rollback at a time.
    lock: tokio::sync::Mutex<()>,
    /// One deploy, rollback or change per service at a time (changes of several
    /// services run side by side).
    services: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    queue: mpsc::UnboundedSender<Queued>,
    queued: Mutex<Option<mpsc::UnboundedReceiver<Queued>>>,
    /// (service, image) queued and not finished: a second reload does not queue them again.
    waiting: Mutex<BTreeSet<(String, String)>>,
    /// Set while deploys.json is damaged: berth changes no container (every service is
    /// held) and writes no state until a person fixes or removes the file and reloads.
    frozen: Mutex<Option<Frozen>>,
    /// Versions of the state: the newest written wins, whatever order the writes end in.
    version: AtomicU64,
    written: tokio::sync::Mutex<u64>,
    /// One change of `held.json` at a time (its set is read, changed and written whole).
    held: tokio::sync::Mutex<()>,
    /// The restarter, told to forget a service's crashes when `berth start` releases it.
    restarter: std::sync::OnceLock<crate::tasks::restarter::Restarter>,
}

struct Frozen {
    why: String,
    _hold: Hold,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The service's settings, or an error naming it.
fn service_config(cfg: &Config, service: &str) -> anyhow::Result<Service> {
    cfg.services
        .get(service)
        .cloned()
        .with_context(|| format!("no service {service:?} in the config"))
}

impl Deployer {
    /// `file` is the config file as loaded, `state` the deploy state found on disk (or
    /// why it could not be read); the hub already has the config in force
    /// ([`DeployState::apply`] of the two).
    pub fn new(
        hub: Arc<Hub>,
        backups: Arc<Backups>,
        file: Config,
        state: Result<DeployState, String>,
    ) -> Arc<Self> {
        let (queue, rx) = mpsc::unbounded_channel();
        let (state, frozen) = match state {
            Ok(s) => (s, None),
            Err(why) => {
                error!(error = %why, "berth's deploy state is damaged: changing no container until it is fixed or removed (then systemctl reload berth)");
                hub.update(|s| s.state_error = Some(why.clone()));
                let hold = hub.hold_watched(file.services.keys().cloned());
                (DeployState::default(), Some(Frozen { why, _hold: hold }))
            }
        };
        hub.update(|s| s.deploy = state.latest());
        Arc::new(Deployer {
            hub,
            backups,
            state: Mutex::new(state),
            file: Mutex::new(Arc::new(file)),
            lock: tokio::sync::Mutex::new(()),
            services: Mutex::new(BTreeMap::new()),
            queue,
            queued: Mutex::new(Some(rx)),
            waiting: Mutex::new(BTreeSet::new()),
            frozen: Mutex::new(frozen),
            version: AtomicU64::new(0),
            written: tokio::sync::Mutex::new(0),
            held: tokio::sync::Mutex::new(()),
            restarter: std::sync::OnceLock::new(),
        })
    }

    /// The restarter of this daemon (made after the deployer).
    pub fn set_restarter(&self, r: crate::tasks::restarter::Restarter) {
        let _ = self.restarter.set(r);
    }

    /// The service's own lock.
    fn service_lock(&self, service: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.services)
            .entry(service.to_string())
            .or_default()
            .clone()
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.hub.config()
    }

    fn state_dir(&self) -> std::path::PathBuf {
        self.hub.config().supervisor.state_dir.clone()
    }

    /// Why berth changes nothing now, if it does not.
    fn frozen(&self) -> anyhow::Result<()> {
        match &*lock(&self.frozen) {
            Some(f) => bail!(
                "berth's deploy state is damaged ({}): fix or remove the file, then reload berth",
                f.why
            ),
            None => Ok(()),
        }
    }

    /// Changes the deploy state and saves it (off the async workers, durably) before
    /// answering.
    async fn change<R>(&self, f: impl FnOnce(&mut DeployState) -> R) -> anyhow::Result<R> {
        self.frozen()?;
        let (r, copy, v) = {
            let mut d = lock(&self.state);
            let r = f(&mut d);
            (
                r,
                d.clone(),
                self.version.fetch_add(1, Ordering::SeqCst) + 1,
            )
        };
        let mut written = self.written.lock().await;
        if *written < v {
            let dir = self.state_dir();
            off_runtime(move || statefile::save_deploys(&dir, &copy)).await?;
            *written = v;
        }
        Ok(r)
    }

    /// Publishes the config in force: the file's, with deployed images in place.
    fn publish_config(&self) {
        let file = lock(&self.file).clone();
        let (cfg, _) = lock(&self.state).apply((*file).clone());
        self.hub.set_config(cfg);
    }

    /// SIGHUP (or `berth rotate-secret`): the file again. A file that does not validate,
    /// or that changes what only a restart can change, is refused whole and the running
    /// state kept.
    pub async fn reload_from(self: &Arc<Self>, path: &std::path::Path) -> Result<(), String> {
        let new = berth_config::load(path).map_err(|errs| errs.to_string())?;
        let refused = self.hub.config().supervisor.restart_needed(&new.supervisor);
        if !refused.is_empty() {
            return Err(format!(
                "{}: restart berth to change {}",
                path.display(),
                refused.join(", ")
            ));
        }
        self.reload(new).await?;
        info!(config = %path.display(), "reloaded config");
        Ok(())
    }

    /// Swaps in a new, already validated config file. Deployed images stay in place
    /// unless the file changed that service's image; such a change goes through the
    /// deploy flow (migration, health gate, rollback), so until it succeeds the running
    /// image stays in force and the service is held. While the deploy state is damaged,
    /// a reload first reads it again: refused if it is still unreadable.
    pub async fn reload(self: &Arc<Self>, file: Config) -> Result<(), String> {
        self.thaw().await?;
        let running = self.hub.config();
        let old_file = lock(&self.file).clone();
        let changed = match self.change(|d| d.reload(&old_file, &running, &file)).await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %format!("{e:#}"), "saving the deploy state");
                Vec::new()
            }
        };
        // Held from now on: the planner must not recreate them for the file's other
        // changes until their deploy is done.
        let holds: Vec<(String, Hold)> = changed
            .into_iter()
            .map(|s| (s.clone(), self.hub.hold([s])))
            .collect();
        *lock(&self.file) = Arc::new(file);
        self.publish_config();
        self.hub.update(|s| {
            s.config.generation += 1;
            s.config.loaded_at = SystemTime::now();
            s.config.error = None;
        });
        self.hub.request_reconcile();
        self.queue_pending(holds);
        Ok(())
    }

    /// After a damaged deploy state: reads it again, and if a person fixed or removed it,
    /// takes it and lets go of the services.
    async fn thaw(&self) -> Result<(), String> {
        if lock(&self.frozen).is_none() {
            return Ok(());
        }
        let dir = self.state_dir();
        let loaded = off_runtime(move || Ok(statefile::load_deploys(&dir)))
            .await
            .map_err(|e| e.to_string())?;
        match loaded {
            Ok(state) => {
                info!("the deploy state is readable again: berth manages the services again");
                self.hub.update(|s| {
                    s.state_error = None;
                    s.deploy = state.latest();
                });
                *lock(&self.state) = state;
                self.publish_config();
                // Dropping the freeze releases the hold: the next pass converges.
                lock(&self.frozen).take();
                Ok(())
            }
            Err(e) => Err(format!(
                "{e:#}: berth still changes no container; fix or remove the file, then reload"
            )),
        }
    }

    /// Queues the deploys of every pending override; `holds` are those already held.
    fn queue_pending(self: &Arc<Self>, mut holds: Vec<(String, Hold)>) {
        let pending = lock(&self.state).pending();
        for (service, image) in pending {
            if !lock(&self.waiting).insert((service.clone(), image.clone())) {
                continue;
            }
            let hold = match holds.iter().position(|(s, _)| *s == service) {
                Some(i) => holds.swap_remove(i).1,
                None => self.hub.hold([service.clone()]),
            };
            let _ = self.queue.send(Queued {
                service,
                image,
                _hold: hold,
            });
        }
    }

    /// Runs the deploys reloads queue, one after the other, until the daemon stops.
    pub async fn run(self: Arc<Self>) {
        let Some(mut rx) = lock(&self.queued).take() else {
            return;
        };
        while let Some(q) = rx.recv().await {
            info!(service = %q.service, image = %q.image, "the config changed the image: deploying it");
            if let Err(e) = self.deploy(&q.service, &q.image, true, Turn::Wait).await {
                error!(service = %q.service, image = %q.image, error = %format!("{e:#}"), "deploy after reload failed");
                // The old image stays, no longer pending.
                if let Err(e) = self.change(|d| d.settle(&q.service, &q.image)).await {
                    warn!(error = %format!("{e:#}"), "saving the deploy state");
                }
            }
            lock(&self.waiting).remove(&(q.service.clone(), q.image.clone()));
        }
    }

    /// Records a deployed image as the service's image from now on.
    async fn set_override(&self, service: &str, image: &str) -> anyhow::Result<()> {
        let file = lock(&self.file).clone();
        let file_image = file
            .services
            .get(service)
            .map(|s| s.image.clone())
            .unwrap_or_default();
        self.change(|d| {
            d.overrides.insert(
                service.to_string(),
                Override {
                    image: image.to_string(),
                    file_image,
                    pending: false,
                },
            )
        })
        .await?;
        self.publish_config();
        Ok(())
    }

    async fn record(&self, mut record: Record) -> anyhow::Result<()> {
        crate::redact::scrub_opt(&mut record.reason);
        let latest = self
            .change(|d| {
                d.finish(record);
                d.latest()
            })
            .await?;
        self.hub.update(|s| s.deploy = latest);
        Ok(())
    }

    /// `berth deploy SERVICE IMAGE`: Ok when the new image runs healthy; Err when the
    /// deploy was refused, aborted (old version untouched), rolled back (with why), or
    /// failed and left in place for a manual rollback (`deploy.rollback = "manual"`).
    pub async fn deploy(
        &self,
        service: &str,
        image: &str,
        backup: bool,
        turn: Turn,
    ) -> anyhow::Result<Record> {
        let _one = match turn {
            Turn::Refuse => match self.lock.try_lock() {
                Ok(g) => g,
                Err(_) => bail!("another deploy is running: wait for it to finish"),
            },
            Turn::Wait => self.lock.lock().await,
        };
        self.frozen()?;
        let service_lock = self.service_lock(service);
        let _this = service_lock.lock().await;
        self.not_kept_down(service)?;
        let hub = &self.hub;
        let cfg = hub.config();
        let svc = service_config(&cfg, service)?;
        // A rollback may restore only the backup this deploy takes: without one, the
        // "latest" could be last night's, restored over the live data.
        let restores = svc.deploy.restore_db_on_rollback && svc.deploy.rollback == Rollback::Auto;
        if restores && !(backup && cfg.backup.is_some()) {
            bail!(
                "{service} has deploy.restore_db_on_rollback, which restores the backup the deploy takes first: deploy without --no-backup{}",
                if cfg.backup.is_none() {
                    " and add a [backup] section"
                } else {
                    ""
                }
            );
        }
        // A deploy waits for a running backup, and no backup starts during it.
        let _backups = match self.backups.try_exclusive() {
            Some(g) => g,
            None => {
                info!(service, "deploy waits for the running backup to finish");
                progress::say("wait", "for the running backup to finish");
                self.backups.exclusive().await
            }
        };
        let started = Instant::now();
        let mut rec = Record {
            service: service.to_string(),
            image: image.to_string(),
            previous_image: svc.image.clone(),
            at: fmt_time(SystemTime::now()),
            outcome: Outcome::InFlight,
            trigger: Trigger::Deploy,
            duration_ms: 0,
            interruption_ms: None,
            reason: None,
            backup: None,
            restored: None,
            steps: Vec::new(),
        };
        // Until a container changes, a failure leaves everything as it was.
        let aborted = |rec: Record, e: &anyhow::Error| Record {
            outcome: Outcome::Aborted,
            duration_ms: started.elapsed().as_millis() as u64,
            reason: Some(format!("{e:#}")),
            ..rec
        };
        let pre = match self.prepare(&cfg, &svc, image, backup).await {
            Ok(pre) => pre,
            Err(e) => {
                self.record(aborted(rec, &e)).await?;
                return Err(e);
            }
        };
        rec.backup = pre.as_ref().map(|m| m.id.clone());

        // From here the service is held: nothing else restarts or recreates it.
        let hold = hub.hold([service]);
        let name = cfg.container_name(service);
        // The old container as the engine has it: the hub may not know it (a held service
        // is not adopted; a switch that failed half-way lost track of it).
        let old = match hub.engine.inspect_container(&name).await {
            Ok(d) => Some(d.id),
            Err(EngineError::NotFound { .. }) => None,
            Err(e) => {
                drop(hold);
                let e = anyhow::Error::from(e).context("looking up the running container");
                self.record(aborted(rec, &e)).await?;
                return Err(e);
            }
        };
        self.change(|d| d.in_flight = Some(rec.clone())).await?;
        let mut new_svc = svc.clone();
        new_svc.image = image.to_string();
        let previous_name = Role::Previous.name(&name);
        let (parked, had_previous) = self.park_previous(&name).await;
        let start_first = svc.deploy.strategy == Strategy::StartFirst;
        // When the old container stopped: the service is interrupted from then on.
        let mut stopped_at: Option<Instant> = None;
        let mut steps = Vec::new();
        let r = async {
            if start_first {
                // Overlap allowed: the new container must be healthy before the old stops.
                let next = Role::Next.name(&name);
                let _ = hub.engine.remove_container(&next, true).await;
                let mut spec = spec::container_spec(&cfg, &new_svc);
                spec.name = next.clone();
                let new_id = hub.engine.create_container(&spec).await?;
                if let Err(e) =
                    gate::start_and_wait(hub, &new_svc, &new_id, svc.deploy.health_timeout).await
                {
                    let _ = hub.remove_container(&new_id, true).await;
                    return Err(e);
                }
                if let Some(old) = &old {
                    hub.stop_container(old, svc.stop_grace_period).await?;
                    hub.engine.rename_container(old, &previous_name).await?;
                }
                hub.engine.rename_container(&new_id, &name).await?;
                return anyhow::Ok(new_id);
            }
            if let Some(old) = &old {
                hub.engine.rename_container(old, &previous_name).await?;
            }
            let new_id = hub
                .engine
                .create_container(&spec::container_spec(&cfg, &new_svc))
                .await?;
            // Stop-first: the old poller ends its poll before the new one starts.
            if let Some(old) = &old {
                progress::say(
                    "stop",
                    format!(
                        "the old {service} (it finishes its poll; up to {})",
                        humantime::format_duration(svc.stop_grace_period)
                    ),
                );
                steps.push(Mark::new("stop_requested", SystemTime::now()));
                // The new one starts as soon as the old one's process is gone (its `die`
                // event): the engine's stop returns only after its clean-up of the old
                // container (unmounts, network), 100–200 ms later on this path.
                let died = hub.when_dies(old);
                let stop = async {
                    let r = hub.stop_container(old, svc.stop_grace_period).await;
                    hub.died(old);
                    (r, SystemTime::now())
                };
                tokio::pin!(stop);
                let stopped = tokio::select! {
                    r = &mut stop => Some(r),
                    Ok(()) = died => None,
                };
                stopped_at = Some(Instant::now());
                progress::say("start", format!("{service} on {image}"));
                let timeout = svc.deploy.health_timeout;
                if let Some((r, at)) = stopped {
                    r?;
                    steps.push(Mark::new("stopped", at));
                    gate::start_and_wait_marked(hub, &new_svc, &new_id, timeout, &mut steps)
                        .await?;
                } else {
                    steps.push(Mark::new("died", SystemTime::now()));
                    // The stop's own answer still comes, while the new one starts.
                    let mut later = Vec::new();
                    let ((r, at), started) = tokio::join!(
                        stop,
                        gate::start_and_wait_marked(hub, &new_svc, &new_id, timeout, &mut later)
                    );
                    if let Err(e) = r {
                        warn!(service, error = %e, "stopping the old container (its process had already exited)");
                    }
                    steps.extend(later);
                    steps.push(Mark::new("stopped", at));
                    started?;
                }
                return anyhow::Ok(new_id);
            }
            progress::say("start", format!("{service} on {image}"));
            gate::start_and_wait_marked(
                hub,
                &new_svc,
                &new_id,
                svc.deploy.health_timeout,
                &mut steps,
            )
            .await?;
            anyhow::Ok(new_id)
        }
        .await;
        rec.steps = steps;
        let manual = svc.deploy.rollback == Rollback::Manual && !start_first;
        let finish = |mut rec: Record, outcome: Outcome, reason: Option<String>| {
            // When it ended: its pre-deploy backup is older.
            rec.at = fmt_time(SystemTime::now());
            rec.outcome = outcome;
            rec.reason = reason;
            rec.duration_ms = started.elapsed().as_millis() as u64;
            rec.interruption_ms = stopped_at.map(|t| t.elapsed().as_millis() as u64);
            rec
        };
        let rec = match r {
            Ok(new_id) => {
                info!(service, image, container = %short(&new_id), "deployed");
                if had_previous {
                    let _ = hub.engine.remove_container(&parked, true).await;
                }
                self.set_override(service, image).await?;
                finish(rec, Outcome::Deployed, None)
            }
            Err(e) if manual => {
                // `rollback = "manual"`: the new version stays (restarted as usual); the
                // old one waits as `.previous` for `berth rollback`.
                let reason = format!(
                    "{e:#}; deploy.rollback is \"manual\": run `berth rollback {service}` to go back to {}",
                    svc.image
                );
                warn!(service, image, error = %reason, "deploy failed; not rolling back");
                // The new container may never have started (the old one's stop failed).
                hub.lost_track(service);
                if had_previous {
                    let _ = hub.engine.remove_container(&parked, true).await;
                }
                self.set_override(service, image).await?;
                finish(rec, Outcome::Failed, Some(reason))
            }
            Err(e) => {
                let reason = format!("{e:#}");
                warn!(service, image, error = %reason, "deploy failed: rolling back");
                progress::say("rollback", format!("to {}: {reason}", svc.image));
                let restore = if restores { pre.as_ref() } else { None };
                let back = match (&old, start_first) {
                    // The old container never stopped: only its health needs confirming.
                    (Some(old), true) => {
                        gate::start_and_wait(hub, &svc, old, svc.deploy.health_timeout).await
                    }
                    _ => {
                        self.roll_back_to_previous(&cfg, &svc, &name, &previous_name, restore)
                            .await
                    }
                };
                if let Err(back) = back {
                    // Nothing healthy runs: leave the service to the reconciler.
                    hub.lost_track(service);
                    drop(hold);
                    let reason = format!("{reason}; the rollback failed too: {back:#}");
                    self.record(finish(rec, Outcome::Failed, Some(reason.clone())))
                        .await?;
                    bail!("{reason}");
                }
                if had_previous {
                    let _ = hub.engine.rename_container(&parked, &previous_name).await;
                }
                let mut rec = finish(rec, Outcome::RolledBack, Some(reason));
                if !start_first {
                    rec.restored = restore.map(|m| m.id.clone());
                }
                rec
            }
        };
        drop(hold);
        self.record(rec.clone()).await?;
        match (&rec.outcome, &rec.reason) {
            (Outcome::Deployed, _) => Ok(rec),
            (Outcome::RolledBack, Some(reason)) => {
                bail!("rolled back to {}: {reason}", rec.previous_image)
            }
            (_, reason) => bail!("{}", reason.clone().unwrap_or_default()),
        }
    }

    /// A change of a service's settings (a reload, the env file: anything but a deploy's
    /// image) applied the way a deploy applies an image: the old container (`old_id`,
    /// made with the settings that hash to `old_hash`) kept stopped as `.previous`, the
    /// new one health-gated within the service's `start_timeout`, and on failure the old
    /// one started again and the change rejected until the file changes the service once
    /// more. Always stop-first: never two containers on one data volume, never two
    /// pollers.
    pub async fn replace(&self, service: &str, old_id: &str, old_hash: &str) -> anyhow::Result<()> {
        self.frozen()?;
        let service_lock = self.service_lock(service);
        let Ok(_one) = service_lock.try_lock() else {
            bail!("a deploy of {service} is under way: the change follows it");
        };
        self.not_kept_down(service)?;
        let hub = &self.hub;
        let cfg = hub.config();
        let svc = service_config(&cfg, service)?;
        let new_hash = svc.spec_hash();
        // Planned before the lock was ours: a deploy or rollback may have settled it
        // since (the container now matches the config in force, or is another one).
        let now = hub.engine.inspect_container(old_id).await?;
        if now.labels.get(berth_core::LABEL_SPEC_HASH) == Some(&new_hash)
            || now.name != cfg.container_name(service)
        {
            return Ok(());
        }
        // The old container's own settings (probe, grace period), to bring it back with;
        // unknown (berth restarted since), it comes back gated on running alone.
        let old_svc = hub.settings_of(service, old_hash).unwrap_or_else(|| {
            let mut s = svc.clone();
            s.probe = None;
            s
        });
        let timeout = svc
            .probe
            .as_ref()
            .map_or(Duration::ZERO, |p| p.start_timeout);
        let started = Instant::now();
        let old_image = hub
            .engine
            .inspect_container(old_id)
            .await
            .map(|d| d.image)
            .unwrap_or_else(|_| old_svc.image.clone());
        let mut rec = Record {
            service: service.to_string(),
            image: svc.image.clone(),
            previous_image: old_image,
            at: fmt_time(SystemTime::now()),
            outcome: Outcome::InFlight,
            trigger: Trigger::Change,
            duration_ms: 0,
            interruption_ms: None,
            reason: None,
            backup: None,
            restored: None,
            steps: Vec::new(),
        };
        ensure_image(hub.engine.as_ref(), &cfg, &svc.image).await?;
        let hold = hub.hold([service]);
        self.change(|d| d.in_flight = Some(rec.clone())).await?;
        info!(service, from = old_hash, to = %new_hash, "changing the service: replacing its container, gated");
        let name = cfg.container_name(service);
        let previous_name = Role::Previous.name(&name);
        let (parked, had_previous) = self.park_previous(&name).await;
        let mut stopped_at = None;
        let r = async {
            hub.engine.rename_container(old_id, &previous_name).await?;
            let new_id = hub
                .engine
                .create_container(&spec::container_spec(&cfg, &svc))
                .await?;
            hub.stop_container(old_id, old_svc.stop_grace_period)
                .await?;
            stopped_at = Some(Instant::now());
            gate::start_and_wait(hub, &svc, &new_id, timeout).await?;
            anyhow::Ok(new_id)
        }
        .await;
        let mut finish = |outcome: Outcome, reason: Option<String>| {
            rec.at = fmt_time(SystemTime::now());
            rec.outcome = outcome;
            rec.reason = reason;
            rec.duration_ms = started.elapsed().as_millis() as u64;
            rec.interruption_ms = stopped_at.map(|t| t.elapsed().as_millis() as u64);
            rec.clone()
        };
        match r {
            Ok(new_id) => {
                info!(service, container = %short(&new_id), "changed");
                if had_previous {
                    let _ = hub.engine.remove_container(&parked, true).await;
                }
                hub.accept(service);
                drop(hold);
                self.record(finish(Outcome::Deployed, None)).await?;
                Ok(())
            }
            Err(e) => {
                let why = format!("{e:#}");
                warn!(service, error = %why, "the change failed: bringing the old container back");
                // Said before the old one is healthy again, so that dependants waiting on
                // it see the change was rejected.
                hub.reject(service, new_hash, old_svc.clone());
                let back = self
                    .roll_back_to_previous(&cfg, &old_svc, &name, &previous_name, None)
                    .await;
                if had_previous && back.is_ok() {
                    let _ = hub.engine.rename_container(&parked, &previous_name).await;
                }
                if back.is_err() {
                    hub.lost_track(service);
                }
                drop(hold);
                match back {
                    Ok(()) => {
                        let reason = format!("change to {service} rolled back: {why}");
                        self.record(finish(Outcome::RolledBack, Some(reason.clone())))
                            .await?;
                        bail!("{reason}")
                    }
                    Err(back) => {
                        let reason = format!(
                            "change to {service} failed: {why}; bringing the old container back failed too: {back:#}"
                        );
                        self.record(finish(Outcome::Failed, Some(reason.clone())))
                            .await?;
                        bail!("{reason}")
                    }
                }
            }
        }
    }

    /// The rollback target of the last deploy (`.previous`) is parked as
    /// `.previous-old` until the next switch succeeds, so a failed one leaves `berth
    /// rollback` where it was. Returns the parked name and whether there was one.
    async fn park_previous(&self, name: &str) -> (String, bool) {
        let parked = Role::Parked.name(name);
        let _ = self.hub.engine.remove_container(&parked, true).await;
        let had = self
            .hub
            .engine
            .rename_container(&Role::Previous.name(name), &parked)
            .await
            .is_ok();
        (parked, had)
    }

    /// The steps before any container changes: image present, pre-deploy backup (its
    /// metadata is returned), migration in a one-off container of the new image.
    async fn prepare(
        &self,
        cfg: &Config,
        svc: &Service,
        image: &str,
        backup: bool,
    ) -> anyhow::Result<Option<Meta>> {
        progress::say("image", image);
        ensure_image(self.hub.engine.as_ref(), cfg, image).await?;
        let mut pre = None;
        if backup && cfg.backup.is_some() {
            progress::say("backup", "before the deploy");
            // The caller holds the backup lock.
            let meta = self
                .backups
                .take(cfg)
                .await
                .context("pre-deploy backup failed; nothing was changed")?;
            info!(backup = %meta.id, "pre-deploy backup");
            pre = Some(meta);
        }
        if let Some(cmd) = &svc.deploy.migrate {
            progress::say("migrate", cmd.join(" "));
            let mut new_svc = svc.clone();
            new_svc.image = image.to_string();
            self.migrate(cfg, &new_svc, cmd).await?;
        }
        Ok(pre)
    }

    /// Runs the migration command in a one-off container of the new image, on the stack
    /// network with the service's environment. Any failure aborts the deploy.
    async fn migrate(&self, cfg: &Config, svc: &Service, cmd: &[String]) -> anyhow::Result<()> {
        let engine = self.hub.engine.as_ref();
        let mut spec = spec::container_spec(cfg, svc);
        spec.name = Role::Migrate.name(&cfg.container_name(&svc.name));
        spec.cmd = Some(cmd.to_vec());
        spec.ports.clear();
        // Not a service container: no service label, so the planner never adopts it.
        spec.labels.remove(berth_core::LABEL_SERVICE);
        spec.labels.remove(berth_core::LABEL_SPEC_HASH);
        let _ = engine.remove_container(&spec.name, true).await;
        let id = engine
            .create_container(&spec)
            .await
            .context("creating the migration container")?;
        let r = async {
            engine.start_container(&id).await?;
            // Its output, line by line, to whoever waits for the deploy.
            let mut output = engine.logs(&id, None, true);
            let follow = async move {
                while let Some(Ok(chunk)) = output.next().await {
                    let bytes = match chunk {
                        berth_engine::Output::Stdout(b) | berth_engine::Output::Stderr(b) => b,
                    };
                    for line in String::from_utf8_lossy(&bytes).lines() {
                        progress::say("migrate", line.to_string());
                    }
                }
            };
            let deadline = tokio::time::Instant::now() + MIGRATION_LIMIT;
            let done = async {
                loop {
                    let d = engine.inspect_container(&id).await?;
                    if !d.running
                        && d.finished_at
                            .as_deref()
                            .is_some_and(|f| !f.starts_with("0001"))
                    {
                        let code = d.exit_code.unwrap_or(-1);
                        if code == 0 {
                            return anyhow::Ok(());
                        }
                        let logs = tail_logs(engine, &id, 5).await;
                        bail!(
                            "migration {:?} failed (exit code {code}): {logs}",
                            cmd.join(" ")
                        );
                    }
                    if tokio::time::Instant::now() > deadline {
                        bail!(
                            "migration {:?} still running after 10 minutes",
                            cmd.join(" ")
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            };
            // The output runs beside the wait; it never holds the wait up.
            tokio::pin!(done);
            tokio::select! {
                biased;
                r = &mut done => r,
                () = follow => done.await,
            }
        }
        .await;
        let _ = engine.remove_container(&id, true).await;
        r.context("the old version is untouched")
    }

    /// Stops and removes the failed new container and starts the previous one again;
    /// with `restore`, restores that backup (this deploy's own) while neither runs.
    async fn roll_back_to_previous(
        &self,
        cfg: &Config,
        svc: &Service,
        name: &str,
        previous_name: &str,
        restore: Option<&Meta>,
    ) -> anyhow::Result<()> {
        let hub = &self.hub;
        if let Ok(new) = hub.engine.inspect_container(name).await {
            let _ = hub.stop_container(&new.id, svc.stop_grace_period).await;
            hub.remove_container(&new.id, true).await?;
        }
        let previous = hub
            .engine
            .inspect_container(previous_name)
            .await
            .context("no previous container to roll back to")?;
        hub.engine.rename_container(&previous.id, name).await?;
        if let Some(meta) = restore {
            warn!(service = %svc.name, backup = %meta.id, "rolling back: restoring the database from the pre-deploy backup");
            backup::restore_database(hub.engine.as_ref(), cfg, meta)
                .await
                .with_context(|| format!("restoring the pre-deploy backup {}", meta.id))?;
        }
        gate::start_and_wait(hub, svc, &previous.id, svc.deploy.health_timeout)
            .await
            .context("the previous version did not come back healthy")
    }

    /// `berth rollback SERVICE`: back to the previous container (instant: it exists,
    /// stopped); the current one becomes the new previous.
    /// With `restore_db`, the backup taken just before the current version was deployed
    /// is restored while neither version runs.
    pub async fn rollback(&self, service: &str, restore_db: bool) -> anyhow::Result<Record> {
        let Ok(_one) = self.lock.try_lock() else {
            bail!("a deploy is running: wait for it to finish");
        };
        self.frozen()?;
        let service_lock = self.service_lock(service);
        let _this = service_lock.lock().await;
        self.not_kept_down(service)?;
        let hub = &self.hub;
        let started = Instant::now();
        let cfg = hub.config();
        let svc = service_config(&cfg, service)?;
        let name = cfg.container_name(service);
        let previous_name = Role::Previous.name(&name);
        let previous = hub
            .engine
            .inspect_container(&previous_name)
            .await
            .with_context(|| format!("{service} has no previous version to roll back to"))?;
        let previous_image = previous.image.clone();
        // It joined its network holder's container of then: one made anew since cannot
        // take it in, and nothing may change (a database restored) before that is known.
        if let Some(h) = &svc.network_of {
            let holder = cfg.container_name(h);
            let holder_id = hub
                .engine
                .inspect_container(&holder)
                .await
                .ok()
                .map(|d| d.id);
            if !berth_core::plan::joins(previous.joined.as_deref(), &holder, holder_id.as_deref()) {
                bail!(
                    "{service}'s previous container cannot start: it joined a {h} container that is gone ({h} was made anew since); deploy its image instead: berth deploy {service} {previous_image}"
                );
            }
        }
        let (pre_deploy, _backups) = if restore_db {
            (
                Some(self.pre_deploy_backup(&cfg, service).await?),
                Some(self.backups.exclusive().await),
            )
        } else {
            (None, None)
        };
        // The data about to be replaced, so that the restore can be undone.
        let safety = match &pre_deploy {
            Some(_) => Some(self.backups.safety_backup(&cfg).await),
            None => None,
        };
        let record = |from: String, outcome: Outcome, interruption: Option<Duration>| Record {
            service: service.to_string(),
            image: previous_image.clone(),
            previous_image: from,
            at: fmt_time(SystemTime::now()),
            outcome,
            trigger: Trigger::Rollback,
            duration_ms: started.elapsed().as_millis() as u64,
            interruption_ms: interruption.map(|d| d.as_millis() as u64),
            reason: Some(match (&pre_deploy, &safety) {
                (Some(m), Some((Some(s), _))) => format!(
                    "berth rollback --restore-db (backup {}; the data it replaced is in backup {s})",
                    m.id
                ),
                (Some(m), Some((None, Some(e)))) => format!(
                    "berth rollback --restore-db (backup {}; no safety backup: {e})",
                    m.id
                ),
                (Some(m), _) => format!("berth rollback --restore-db (backup {})", m.id),
                (None, _) => "berth rollback".into(),
            }),
            backup: None,
            restored: pre_deploy.as_ref().map(|m| m.id.clone()),
            steps: Vec::new(),
        };
        let hold = hub.hold([service]);
        self.change(|d| d.in_flight = Some(record(svc.image.clone(), Outcome::InFlight, None)))
            .await?;
        let mut stopped_at = None;
        let r = async {
            let current = hub.engine.inspect_container(&name).await.ok();
            let parked = Role::RollingBack.name(&name);
            if let Some(c) = &current {
                hub.stop_container(&c.id, svc.stop_grace_period).await?;
                stopped_at = Some(Instant::now());
                hub.engine.rename_container(&c.id, &parked).await?;
            }
            hub.engine.rename_container(&previous.id, &name).await?;
            if let Some(meta) = &pre_deploy {
                info!(service, backup = %meta.id, "restoring the pre-deploy backup");
                backup::restore_database(hub.engine.as_ref(), &cfg, meta)
                    .await
                    .context("restoring the pre-deploy backup")?;
            }
            let mut back = svc.clone();
            back.image = previous_image.clone();
            gate::start_and_wait(hub, &back, &previous.id, svc.deploy.health_timeout).await?;
            if let Some(c) = &current {
                hub.engine.rename_container(&c.id, &previous_name).await?;
            }
            anyhow::Ok(current.map(|c| c.image).unwrap_or_default())
        }
        .await;
        let from = match r {
            Ok(from) => from,
            Err(e) => {
                hub.lost_track(service);
                drop(hold);
                let rec = record(
                    svc.image.clone(),
                    Outcome::Failed,
                    stopped_at.map(|t| t.elapsed()),
                );
                self.record(Record {
                    reason: Some(format!("berth rollback: {e:#}")),
                    ..rec
                })
                .await?;
                return Err(e);
            }
        };
        // The image in force changes before the hold ends: a pass in between would see
        // the old image's container under the new image's config and replace it.
        self.set_override(service, &previous_image).await?;
        drop(hold);
        let rec = record(from, Outcome::RolledBack, stopped_at.map(|t| t.elapsed()));
        self.record(rec.clone()).await?;
        Ok(rec)
    }

    /// The newest backup taken before the service's current version was deployed.
    async fn pre_deploy_backup(&self, cfg: &Config, service: &str) -> anyhow::Result<Meta> {
        let b = cfg
            .backup
            .as_ref()
            .context("--restore-db needs a [backup] section")?;
        let image = service_config(cfg, service)?.image;
        let deployed = lock(&self.state)
            .deployed(service, &image)
            .cloned()
            .with_context(|| {
                format!("no deploy of {image} on record to find its pre-deploy backup: pick one with `berth backups` and `berth restore`")
            })?;
        let dir = b.dir.clone();
        let all = off_runtime(move || backup::list(&dir)).await?;
        // The backup that deploy took, when it says; else the newest older than it.
        if let Some(id) = &deployed.backup {
            return all.into_iter().find(|m| &m.id == id).with_context(|| {
                format!("the pre-deploy backup {id} of {image} is gone (see `berth backups`)")
            });
        }
        all.into_iter()
            .rev()
            .find(|m| m.created_at <= deployed.at && m.verified != Some(false))
            .with_context(|| {
                format!(
                    "no backup older than the deploy of {image} ({})",
                    deployed.at
                )
            })
    }

    /// Undoes what a deploy or rollback interrupted by berth's death left behind
    /// ([`berth_core::deploy::recovery_steps`]), then queues the deploys a reload had
    /// asked for; keeps down what `berth stop` held. Runs once, before the first
    /// convergence.
    pub async fn recover(self: &Arc<Self>) -> anyhow::Result<()> {
        let flight = lock(&self.state).in_flight.clone();
        if let Some(flight) = flight {
            self.undo(flight).await?;
        }
        self.keep_held_down().await;
        self.queue_pending(Vec::new());
        Ok(())
    }

    async fn undo(&self, flight: Record) -> anyhow::Result<()> {
        let hub = &self.hub;
        let cfg = hub.config();
        let service = &flight.service;
        let name = cfg.container_name(service);
        let all = hub
            .engine
            .containers(berth_core::LABEL_PROJECT, &cfg.supervisor.project)
            .await?;
        let present: BTreeSet<String> = all.iter().map(|c| c.name.clone()).collect();
        let done = cfg
            .services
            .get(service)
            .is_some_and(|s| s.image == flight.image);
        warn!(service, image = %flight.image, "berth stopped during a deploy: undoing it");
        let id = |n: &str| all.iter().find(|c| c.name == n).map(|c| c.id.clone());
        for step in berth_core::deploy::recovery_steps(&name, &present, done) {
            info!(step = %step, "recovery");
            match &step {
                // By id where known: `die` events name containers by id.
                Step::Remove(n) => {
                    hub.remove_container(&id(n).unwrap_or_else(|| n.clone()), true)
                        .await?;
                }
                Step::Stop(n) => {
                    hub.stop_container(&id(n).unwrap_or_else(|| n.clone()), Duration::ZERO)
                        .await?;
                }
                Step::Rename { from, to } => hub.engine.rename_container(from, to).await?,
            }
        }
        self.record(Record {
            outcome: Outcome::Interrupted,
            reason: Some("berth stopped during the deploy; undone at start-up".into()),
            ..flight
        })
        .await
    }
}
