//! The imperative shell: observe the engine, ask the planner, execute its actions with
//! health gating, probe, and react to engine events.
//!
//! Tasks: one converge loop (one convergence at a time), one event follower, one probe
//! loop per service. They share the [`Snapshot`] on a `watch` channel and a little
//! restart bookkeeping under a mutex.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use berth_config::{Config, Service};
use berth_engine::{ContainerDetails, Engine, EngineError};
use berth_plan::{Action, Held, LABEL_PROJECT, LABEL_SERVICE};
use futures::StreamExt;
use tokio::sync::{Notify, watch};
use tracing::{debug, error, info, warn};

use crate::probe;
use crate::spec;
use crate::state::{Health, ProbeView, ServiceStatus, Snapshot, State};

/// How often a starting service is probed until it first passes.
const FAST_PROBE: Duration = Duration::from_millis(100);
/// A full re-observe even when no event arrived, as a safety net.
const RESYNC: Duration = Duration::from_secs(30);
/// Restarts within this window that make a crash loop.
const CRASHLOOP_WINDOW: Duration = Duration::from_secs(600);
const CRASHLOOP_RESTARTS: usize = 5;

#[derive(Default)]
struct Restarts {
    /// Earliest time the next start may happen (backoff).
    not_before: Option<Instant>,
    /// Deaths in a row that came sooner than `reset_after` after a start.
    fast_failures: u32,
    recent: VecDeque<Instant>,
}

pub struct Supervisor {
    pub(crate) engine: Arc<dyn Engine>,
    /// The config in force: the file's, with deployed images in place.
    cfg: RwLock<Arc<Config>>,
    /// The file as loaded, before deployed images override it.
    file_cfg: RwLock<Arc<Config>>,
    deploys: Mutex<crate::deploy::DeployState>,
    pub(crate) deploy_lock: tokio::sync::Mutex<()>,
    snap: watch::Sender<Snapshot>,
    restarts: Mutex<BTreeMap<String, Restarts>>,
    /// Containers berth itself is stopping or removing: their `die` is not a crash.
    expected_stops: Mutex<HashSet<String>>,
    reconcile: Notify,
    /// Services held down on purpose (during a restore): never started or restarted.
    held: Mutex<Held>,
    /// One backup or restore at a time.
    pub(crate) backup_lock: tokio::sync::Mutex<()>,
    /// Wakes the off-site copier after a new backup.
    offsite_wake: Notify,
}

impl Supervisor {
    pub fn new(engine: Arc<dyn Engine>, file: Config) -> Arc<Self> {
        let mut deploys = crate::deploy::DeployState::load(&file.supervisor.state_dir);
        let (cfg, dropped) = deploys.apply(file.clone());
        if dropped {
            let _ = deploys.save(&file.supervisor.state_dir);
        }
        let mut snap = Snapshot::new();
        snap.config.generation = 1;
        snap.deploy = deploys.latest();
        snap.backup.period = backup_period(&cfg);
        for (name, svc) in &cfg.services {
            snap.services
                .insert(name.clone(), ServiceStatus::new(&svc.image));
        }
        Arc::new(Supervisor {
            engine,
            cfg: RwLock::new(Arc::new(cfg)),
            file_cfg: RwLock::new(Arc::new(file)),
            deploys: Mutex::new(deploys),
            deploy_lock: tokio::sync::Mutex::new(()),
            snap: watch::channel(snap).0,
            restarts: Mutex::new(BTreeMap::new()),
            expected_stops: Mutex::new(HashSet::new()),
            reconcile: Notify::new(),
            held: Mutex::new(Held::new()),
            backup_lock: tokio::sync::Mutex::new(()),
            offsite_wake: Notify::new(),
        })
    }

    pub fn config(&self) -> Arc<Config> {
        self.cfg
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    pub fn snapshot(&self) -> watch::Receiver<Snapshot> {
        self.snap.subscribe()
    }

    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.snap.send_modify(f);
    }

    pub(crate) fn update_service(&self, name: &str, f: impl FnOnce(&mut ServiceStatus)) {
        self.snap.send_modify(|s| {
            if let Some(st) = s.services.get_mut(name) {
                f(st);
            }
        });
    }

    /// Records a deployed image as the service's image from now on.
    pub(crate) fn set_override(&self, service: &str, image: &str) -> anyhow::Result<()> {
        let file = self
            .file_cfg
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let file_image = file
            .services
            .get(service)
            .map(|s| s.image.clone())
            .unwrap_or_default();
        let cfg = {
            let mut d = self
                .deploys
                .lock()
                .map_err(|_| anyhow::anyhow!("deploy state poisoned"))?;
            d.overrides.insert(
                service.to_string(),
                crate::deploy::Override {
                    image: image.to_string(),
                    file_image,
                    pending: false,
                },
            );
            d.save(&file.supervisor.state_dir)?;
            d.apply((*file).clone()).0
        };
        match self.cfg.write() {
            Ok(mut c) => *c = Arc::new(cfg),
            Err(p) => *p.into_inner() = Arc::new(cfg),
        }
        self.update_service(service, |s| s.image = image.to_string());
        Ok(())
    }

    pub(crate) fn record_deploy(&self, record: crate::deploy::Record) -> anyhow::Result<()> {
        let state_dir = self.config().supervisor.state_dir.clone();
        let latest = {
            let mut d = self
                .deploys
                .lock()
                .map_err(|_| anyhow::anyhow!("deploy state poisoned"))?;
            d.history.push(record);
            d.in_flight = None;
            let n = d.history.len();
            if n > 100 {
                d.history.drain(..n - 100);
            }
            d.save(&state_dir)?;
            d.latest()
        };
        self.update(|s| s.deploy = latest);
        Ok(())
    }

    pub(crate) fn update_alert_channel(
        &self,
        name: &str,
        f: impl FnOnce(&mut crate::alerts::ChannelStatus),
    ) {
        self.snap
            .send_modify(|s| f(s.alerts.entry(name.to_string()).or_default()));
    }

    pub(crate) fn clear_alert_channels(&self) {
        self.snap.send_if_modified(|s| {
            let had = !s.alerts.is_empty();
            s.alerts.clear();
            had
        });
    }

    /// Notes the deploy under way on disk before its first container changes.
    pub(crate) fn begin_deploy(&self, record: crate::deploy::Record) -> anyhow::Result<()> {
        let state_dir = self.config().supervisor.state_dir.clone();
        let mut d = self
            .deploys
            .lock()
            .map_err(|_| anyhow::anyhow!("deploy state poisoned"))?;
        d.in_flight = Some(record);
        d.save(&state_dir)
    }

    pub(crate) fn deploy_history(&self) -> Vec<crate::deploy::Record> {
        self.deploys
            .lock()
            .map(|d| d.history.clone())
            .unwrap_or_default()
    }

    /// The deploy a previous berth left unfinished, if any.
    pub(crate) fn take_in_flight(&self) -> anyhow::Result<Option<crate::deploy::Record>> {
        let d = self
            .deploys
            .lock()
            .map_err(|_| anyhow::anyhow!("deploy state poisoned"))?;
        Ok(d.in_flight.clone())
    }

    /// Deploys the images a reload changed (or a previous berth left pending), one after
    /// the other, each through the full deploy flow. A failed one keeps the old image in
    /// force until the file names another.
    pub fn deploy_pending(self: &Arc<Self>) {
        let pending: Vec<(String, String)> = match self.deploys.lock() {
            Ok(d) => d
                .overrides
                .iter()
                .filter(|(_, o)| o.pending)
                .map(|(s, o)| (s.clone(), o.file_image.clone()))
                .collect(),
            Err(_) => return,
        };
        for (service, image) in pending {
            // Held from now until its deploy ends (replace_config holds it even earlier).
            self.hold(&service, true);
            let sup = self.clone();
            tokio::spawn(async move {
                info!(service, image, "the config changed the image: deploying it");
                let r = sup
                    .deploy(&service, &image, true, crate::deploy::Turn::Wait)
                    .await;
                if let Err(e) = r {
                    error!(service, image, error = %format!("{e:#}"), "deploy after reload failed");
                    sup.settle_pending(&service, &image);
                }
                sup.hold(&service, false);
                sup.request_reconcile();
            });
        }
    }

    /// A reload's deploy failed: the old image stays, no longer pending.
    fn settle_pending(&self, service: &str, file_image: &str) {
        let state_dir = self.config().supervisor.state_dir.clone();
        if let Ok(mut d) = self.deploys.lock()
            && let Some(o) = d.overrides.get_mut(service)
            && o.pending
            && o.file_image == file_image
        {
            o.pending = false;
            if let Err(e) = d.save(&state_dir) {
                warn!(error = %format!("{e:#}"), "saving the deploy state");
            }
        }
    }

    pub(crate) fn hold(&self, service: &str, on: bool) {
        if let Ok(mut h) = self.held.lock() {
            if on {
                h.insert(service.to_string());
            } else {
                h.remove(service);
            }
        }
    }

    fn held(&self) -> Held {
        self.held.lock().map(|h| h.clone()).unwrap_or_default()
    }

    fn is_held(&self, service: &str) -> bool {
        self.held.lock().is_ok_and(|h| h.contains(service))
    }

    pub fn request_reconcile(&self) {
        self.reconcile.notify_one();
    }

    /// Swaps in a new, already validated config; the next convergence applies it.
    /// Deployed images stay in place unless the file changed that service's image; such a
    /// change goes through the deploy flow (migration, health gate, rollback), so until it
    /// succeeds the running image stays in force.
    pub fn replace_config(self: &Arc<Self>, file: Config) {
        let running = self.config();
        let old_file = self
            .file_cfg
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone());
        let cfg = match self.deploys.lock() {
            Ok(mut d) => {
                for (name, svc) in &file.services {
                    let (Some(was), Some(ran)) =
                        (old_file.services.get(name), running.services.get(name))
                    else {
                        continue;
                    };
                    if svc.image != was.image && svc.image != ran.image {
                        // Hands off until its deploy is done: the planner must not recreate
                        // it for the file's other changes in the meantime.
                        self.hold(name, true);
                        let pending = crate::deploy::Override {
                            image: ran.image.clone(),
                            file_image: svc.image.clone(),
                            pending: true,
                        };
                        d.overrides.insert(name.clone(), pending);
                    }
                }
                let (cfg, _) = d.apply(file.clone());
                if let Err(e) = d.save(&file.supervisor.state_dir) {
                    warn!(error = %format!("{e:#}"), "saving the deploy state");
                }
                cfg
            }
            Err(_) => file.clone(),
        };
        if let Ok(mut f) = self.file_cfg.write() {
            *f = Arc::new(file);
        }
        self.update(|s| {
            s.config.generation += 1;
            s.config.loaded_at = SystemTime::now();
            s.config.error = None;
            s.backup.period = backup_period(&cfg);
            s.services.retain(|name, _| cfg.services.contains_key(name));
            for (name, svc) in &cfg.services {
                let st = s
                    .services
                    .entry(name.clone())
                    .or_insert_with(|| ServiceStatus::new(&svc.image));
                st.image = svc.image.clone();
            }
        });
        match self.cfg.write() {
            Ok(mut c) => *c = Arc::new(cfg),
            Err(p) => *p.into_inner() = Arc::new(cfg),
        }
        self.request_reconcile();
        self.deploy_pending();
    }

    pub fn reload_failed(&self, error: String) {
        self.update(|s| s.config.error = Some(error));
    }

    /// Runs convergence whenever asked (events, reloads) and every [`RESYNC`]. `first_done`
    /// fires after the first pass that reached the engine (systemd's READY).
    pub async fn converge_loop(self: Arc<Self>, first_done: tokio::sync::oneshot::Sender<()>) {
        let mut first = Some(first_done);
        let mut recovered = false;
        let mut engine_answered = true;
        loop {
            if let Err(e) = self.engine.ping().await {
                // The event loop's reconnects ask for the next pass.
                if std::mem::replace(&mut engine_answered, false) {
                    warn!(error = %e, "engine unreachable; waiting for it");
                } else {
                    debug!(error = %e, "engine still unreachable");
                }
                self.update(|s| s.engine_connected = false);
            } else {
                engine_answered = true;
                if !recovered {
                    // Before anything starts: a deploy berth died in is undone first.
                    match self.recover_interrupted().await {
                        Ok(()) => {
                            recovered = true;
                            // Image changes a reload asked for and berth never finished.
                            self.deploy_pending();
                        }
                        Err(e) => {
                            error!(error = %format!("{e:#}"), "undoing an interrupted deploy")
                        }
                    }
                }
                if let Err(e) = self.converge().await {
                    error!(error = %format!("{e:#}"), "convergence failed");
                }
                if self.snap.borrow().engine_connected
                    && let Some(tx) = first.take()
                {
                    let _ = tx.send(());
                }
            }
            tokio::select! {
                _ = self.reconcile.notified() => {}
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    /// One pass: observe, plan, execute. Services start as soon as their dependencies are
    /// healthy; independent ones in parallel.
    pub async fn converge(self: &Arc<Self>) -> anyhow::Result<()> {
        let cfg = self.config();
        let observed = match spec::observe(self.engine.as_ref(), &cfg).await {
            Ok(o) => o,
            Err(e) => {
                self.update(|s| s.engine_connected = false);
                return Err(e).context("observing the engine");
            }
        };
        // What the engine shows wins over what berth last believed (events can be missed
        // while the engine was unreachable): a container berth thought running that is not
        // is reported as exited until this pass brings it back.
        let held = self.held();
        self.update(|s| {
            s.engine_connected = true;
            for (name, st) in s.services.iter_mut() {
                if st.state != State::Running || held.contains(name) {
                    continue;
                }
                let alive = observed
                    .containers
                    .iter()
                    .any(|c| c.running && Some(&c.id) == st.container_id.as_ref());
                if !alive {
                    st.state = State::Exited;
                    st.health = Health::Unhealthy;
                }
            }
        });
        let actions = berth_plan::plan(&cfg, &observed, &held);
        for a in &actions {
            info!(action = %a, service = a.service().unwrap_or(""), "plan");
        }
        let labels = spec::project_labels(&cfg);
        let mut per_service: BTreeMap<String, Vec<Action>> = BTreeMap::new();
        for a in actions {
            match &a {
                Action::CreateNetwork { name } => {
                    self.engine
                        .create_network(name, &labels)
                        .await
                        .with_context(|| format!("creating network {name}"))?
                }
                Action::CreateVolume { name } => self
                    .engine
                    .create_volume(name, &labels)
                    .await
                    .with_context(|| format!("creating volume {name}"))?,
                Action::RemoveContainer {
                    service, id, name, ..
                } => {
                    let grace = cfg
                        .services
                        .get(service)
                        .map_or(Duration::from_secs(10), |s| s.stop_grace_period);
                    self.stop_and_remove(id, grace)
                        .await
                        .with_context(|| format!("removing container {name}"))?;
                }
                Action::CreateContainer { service, .. } | Action::StartContainer { service } => {
                    per_service
                        .entry(service.clone())
                        .or_default()
                        .push(a.clone())
                }
            }
        }
        // Current containers, for services the plan leaves alone (adopted).
        let mut existing: BTreeMap<String, String> = BTreeMap::new();
        for c in &observed.containers {
            if cfg.services.contains_key(&c.service) {
                existing.insert(c.service.clone(), c.id.clone());
            }
        }
        // A service still in its restart backoff is not started in this pass (that would
        // hold up every other service); a timer asks for another pass when it is due.
        let now = Instant::now();
        let mut settled = BTreeSet::new();
        for (name, acts) in per_service.iter_mut() {
            let due = self.backoff_until(name).filter(|t| *t > now);
            if let Some(t) = due
                && acts
                    .iter()
                    .any(|a| matches!(a, Action::StartContainer { .. }))
            {
                acts.clear();
                settled.insert(name.clone());
                self.update_service(name, |s| {
                    s.next_restart = Some(SystemTime::now() + (t - now))
                });
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
                    this.request_reconcile();
                });
            }
        }
        // Services whose bring-up in this pass is over (or will not happen): a dependant
        // waiting on one of them that is not healthy gives up at once instead of waiting.
        let (done_tx, done_rx) = watch::channel(settled);
        let done_tx = Arc::new(done_tx);
        let ups = cfg.start_order().into_iter().map(|name| {
            let actions = per_service.remove(&name).unwrap_or_default();
            let id = existing.get(&name).cloned();
            let this = self.clone();
            let cfg = cfg.clone();
            let done_rx = done_rx.clone();
            let done_tx = done_tx.clone();
            async move {
                let r = this.bring_up(&cfg, &name, actions, id, done_rx).await;
                done_tx.send_modify(|d| {
                    d.insert(name.clone());
                });
                if let Err(e) = &r {
                    warn!(service = %name, error = %format!("{e:#}"), "service not up");
                }
                r
            }
        });
        let results = futures::future::join_all(ups).await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            let summary = self.snap.borrow().summary();
            anyhow::bail!("{failed} service(s) not up: {summary}");
        }
        Ok(())
    }

    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        self.expect_stop(id);
        self.engine
            .stop_container(id, grace)
            .await
            .or_else(ignore_not_found)?;
        self.engine
            .remove_container(id, true)
            .await
            .or_else(ignore_not_found)
    }

    pub(crate) fn expect_stop(&self, id: &str) {
        if let Ok(mut s) = self.expected_stops.lock() {
            s.insert(id.to_string());
        }
    }

    /// Waits for dependencies, runs the service's actions, and probes fast until healthy.
    async fn bring_up(
        &self,
        cfg: &Config,
        name: &str,
        actions: Vec<Action>,
        existing: Option<String>,
        done: watch::Receiver<BTreeSet<String>>,
    ) -> anyhow::Result<()> {
        let svc = &cfg.services[name];
        // A running container is left alone whatever its dependencies do: dependants of a
        // restarted service are not restarted.
        if !actions.is_empty() {
            self.wait_for_deps(svc, done).await?;
        }
        let mut id = existing;
        let mut started = false;
        for a in &actions {
            match a {
                Action::CreateContainer { .. } => {
                    let spec = spec::container_spec(cfg, svc);
                    ensure_image(self.engine.as_ref(), &svc.image).await?;
                    id = Some(self.engine.create_container(&spec).await?);
                    self.update_service(name, |s| {
                        s.container_id = id.clone();
                        s.state = State::Pending;
                    });
                }
                Action::StartContainer { .. } => {
                    let Some(cid) = id.as_deref() else {
                        anyhow::bail!("no container to start");
                    };
                    info!(service = %name, container = %short(cid), "starting");
                    self.engine.start_container(cid).await?;
                    started = true;
                }
                _ => {}
            }
        }
        let Some(id) = id else {
            anyhow::bail!("no container");
        };
        let details = self.engine.inspect_container(&id).await?;
        let ip = details.ips.get(&cfg.network_name()).copied();
        let already_healthy = {
            let snap = self.snap.borrow();
            snap.services.get(name).is_some_and(|s| {
                s.container_id.as_deref() == Some(&id)
                    && s.is_healthy()
                    && s.state == State::Running
            })
        };
        self.update_service(name, |s| {
            s.container_id = Some(id.clone());
            s.image = svc.image.clone();
            s.ip = ip;
            s.since = started_at(&details);
            if started {
                s.next_restart = None;
            }
            if !details.running {
                s.state = State::Exited;
            } else if !already_healthy {
                s.state = if started {
                    State::Starting
                } else {
                    State::Running
                };
                s.health = Health::Starting;
            }
        });
        if !details.running || already_healthy {
            return Ok(());
        }
        self.probe_until_healthy(svc, &details, ip).await
    }

    /// Waits until every dependency is healthy; fails as soon as one of them is settled
    /// for this pass without being healthy.
    async fn wait_for_deps(
        &self,
        svc: &Service,
        mut done: watch::Receiver<BTreeSet<String>>,
    ) -> anyhow::Result<()> {
        let mut snap = self.snap.subscribe();
        loop {
            let unhealthy: Vec<String> = {
                let s = snap.borrow_and_update();
                svc.depends_on
                    .iter()
                    .filter(|d| !s.services.get(*d).is_some_and(|st| st.is_healthy()))
                    .cloned()
                    .collect()
            };
            self.update_service(&svc.name, |s| s.waiting_for = unhealthy.clone());
            if unhealthy.is_empty() {
                return Ok(());
            }
            let given_up: Vec<&String> = {
                let d = done.borrow_and_update();
                unhealthy.iter().filter(|u| d.contains(*u)).collect()
            };
            if !given_up.is_empty() {
                let names: Vec<&str> = given_up.iter().map(|s| s.as_str()).collect();
                anyhow::bail!("waiting for {} to become healthy", names.join(", "));
            }
            tokio::select! {
                r = snap.changed() => r?,
                r = done.changed() => r?,
            }
        }
    }

    fn backoff_until(&self, name: &str) -> Option<Instant> {
        self.restarts
            .lock()
            .ok()
            .and_then(|r| r.get(name).and_then(|r| r.not_before))
    }

    /// Probes every [`FAST_PROBE`] until the first success or the start timeout.
    async fn probe_until_healthy(
        &self,
        svc: &Service,
        details: &ContainerDetails,
        ip: Option<std::net::IpAddr>,
    ) -> anyhow::Result<()> {
        let timeout = svc
            .probe
            .as_ref()
            .map_or(Duration::ZERO, |p| p.start_timeout);
        self.probe_until_healthy_within(svc, details, ip, timeout)
            .await
    }

    /// Probes every [`FAST_PROBE`] until the first success, the container's exit, or
    /// `timeout`.
    pub(crate) async fn probe_until_healthy_within(
        &self,
        svc: &Service,
        details: &ContainerDetails,
        ip: Option<std::net::IpAddr>,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let name = &svc.name;
        let Some(p) = &svc.probe else {
            self.update_service(name, |s| {
                s.state = State::Running;
                s.health = Health::Healthy;
            });
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        loop {
            let r = probe::run(self.engine.as_ref(), p, &details.id, ip).await;
            let gone = {
                let snap = self.snap.borrow();
                snap.services.get(name).is_none_or(|s| {
                    s.container_id.as_deref() != Some(&details.id)
                        || matches!(s.state, State::Exited | State::Stopped)
                })
            };
            if gone {
                anyhow::bail!("container exited while starting");
            }
            if r.ok {
                info!(service = %name, latency_ms = r.latency.as_millis() as u64, "healthy");
                self.update_service(name, |s| {
                    s.state = State::Running;
                    s.health = Health::Healthy;
                    s.probe = Some(ProbeView::from(&r));
                });
                return Ok(());
            }
            self.update_service(name, |s| s.probe = Some(ProbeView::from(&r)));
            if Instant::now() >= deadline {
                self.update_service(name, |s| {
                    s.state = State::Running;
                    s.health = Health::Unhealthy;
                });
                anyhow::bail!(
                    "not healthy within {}: {}",
                    humantime::format_duration(timeout),
                    r.error.unwrap_or_default()
                );
            }
            tokio::time::sleep(FAST_PROBE).await;
        }
    }

    /// Probes a running service at its interval; `failures` failures in a row restart it.
    pub async fn probe_loop(self: Arc<Self>, service: String) {
        let mut failures = 0u32;
        loop {
            let cfg = self.config();
            let Some(svc) = cfg.services.get(&service) else {
                return;
            };
            let Some(p) = svc.probe.clone() else { return };
            tokio::time::sleep(p.interval).await;
            let (id, ip, state) = {
                let snap = self.snap.borrow();
                match snap.services.get(&service) {
                    Some(s) => (s.container_id.clone(), s.ip, s.state),
                    None => return,
                }
            };
            let Some(id) = id else { continue };
            // A held service belongs to a deploy or restore in progress: hands off.
            if state != State::Running || self.is_held(&service) {
                failures = 0;
                continue;
            }
            let r = probe::run(self.engine.as_ref(), &p, &id, ip).await;
            failures = if r.ok { 0 } else { failures + 1 };
            if r.ok {
                self.refresh_crashloop(&service);
            }
            let health = if r.ok {
                Health::Healthy
            } else if failures >= p.failures {
                Health::Unhealthy
            } else {
                // A single failure does not make a service unhealthy yet.
                self.snap
                    .borrow()
                    .services
                    .get(&service)
                    .map_or(Health::Unknown, |s| s.health)
            };
            self.update_service(&service, |s| {
                if s.container_id.as_deref() == Some(&id) && s.state == State::Running {
                    s.probe = Some(ProbeView::from(&r));
                    s.health = health;
                }
            });
            // The container may have changed while the probe ran (deploy, restore), or died:
            // then the event path owns its restart, and a failure here is not the probe's.
            let still_running = self.snap.borrow().services.get(&service).is_some_and(|s| {
                s.container_id.as_deref() == Some(id.as_str()) && s.state == State::Running
            });
            if !still_running {
                failures = 0;
                continue;
            }
            // A container that died under the probe is the event path's to restart, even if
            // its `die` event has not been handled yet.
            let dead = failures >= p.failures
                && self
                    .engine
                    .inspect_container(&id)
                    .await
                    .is_ok_and(|d| !d.running);
            if dead {
                failures = 0;
                // Its `die` may have been missed (engine unreachable): a pass settles it.
                self.request_reconcile();
                continue;
            }
            if failures >= p.failures && !self.is_held(&service) {
                warn!(service = %service, failures, error = r.error.as_deref().unwrap_or(""), "probe failing: restarting");
                failures = 0;
                // A hung service is restarted at once: it did not crash-loop.
                self.record_restart(&service, svc.restart.reset_after, svc);
                self.update_service(&service, |s| s.probe_restarts += 1);
                self.expect_stop(&id);
                if let Err(e) = self.engine.stop_container(&id, svc.stop_grace_period).await {
                    warn!(service = %service, error = %e, "stopping unhealthy container");
                }
                self.update_service(&service, |s| {
                    if s.container_id.as_deref() == Some(id.as_str()) {
                        s.state = State::Exited;
                        s.health = Health::Unhealthy;
                    }
                });
                self.schedule_restart(service.clone(), id, Duration::ZERO, true);
            }
        }
    }

    /// The container berth currently runs for `service`, if any.
    pub(crate) fn current_container(&self, service: &str) -> Option<String> {
        self.snap
            .borrow()
            .services
            .get(service)
            .and_then(|s| s.container_id.clone())
    }

    /// Follows the engine's events; reconnects when the stream ends.
    pub async fn event_loop(self: Arc<Self>) {
        const EVENTS_RETRY: Duration = Duration::from_millis(200);
        let mut delay = EVENTS_RETRY;
        loop {
            let project = self.config().supervisor.project.clone();
            let mut events = self.engine.events(LABEL_PROJECT, &project);
            // An event stream that opened means the engine is back: re-observe.
            self.request_reconcile();
            while let Some(ev) = events.next().await {
                match ev {
                    Ok(ev) => {
                        delay = EVENTS_RETRY;
                        self.on_event(ev).await;
                    }
                    Err(e) => {
                        // Said once per outage; the retries that follow are debug.
                        if delay == EVENTS_RETRY {
                            warn!(error = %e, "engine event stream failed; reconnecting");
                        } else {
                            debug!(error = %e, "engine event stream failed; reconnecting");
                        }
                        break;
                    }
                }
            }
            self.update(|s| s.engine_connected = false);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn on_event(self: &Arc<Self>, ev: berth_engine::Event) {
        let Some(service) = ev.labels.get(LABEL_SERVICE).cloned() else {
            return;
        };
        debug!(service = %service, action = %ev.action, container = %short(&ev.container_id), "event");
        match ev.action.as_str() {
            "die" => {
                let expected = self
                    .expected_stops
                    .lock()
                    .map(|mut s| s.remove(&ev.container_id))
                    .unwrap_or(false);
                let current = self.current_container(&service);
                if expected || current.as_deref() != Some(ev.container_id.as_str()) {
                    return;
                }
                if self.is_held(&service) {
                    self.update_service(&service, |s| s.state = State::Stopped);
                    return;
                }
                let cfg = self.config();
                let Some(svc) = cfg.services.get(&service) else {
                    return;
                };
                // How long it ran, on the engine's clock: its StartedAt (kept in `since`)
                // to the event. Asking the engine instead would cost a round trip on the
                // restart path.
                let died =
                    SystemTime::UNIX_EPOCH + Duration::from_nanos(ev.time_nanos.max(0) as u64);
                let since = self
                    .snap
                    .borrow()
                    .services
                    .get(&service)
                    .and_then(|s| s.since);
                let since = match since {
                    Some(t) => Some(t),
                    None => self
                        .engine
                        .inspect_container(&ev.container_id)
                        .await
                        .ok()
                        .and_then(|d| started_at(&d)),
                };
                let uptime = since
                    .and_then(|s| died.duration_since(s).ok())
                    .unwrap_or_default();
                let delay = self.record_restart(&service, uptime, svc);
                warn!(
                    service = %service,
                    container = %short(&ev.container_id),
                    exit_code = ev.exit_code.unwrap_or(-1),
                    ran_ms = uptime.as_millis() as u64,
                    restart_in_ms = delay.as_millis() as u64,
                    "container died"
                );
                self.update_service(&service, |s| {
                    s.state = State::Exited;
                    s.health = Health::Unhealthy;
                    s.next_restart = Some(SystemTime::now() + delay);
                });
                let spec_current =
                    ev.labels.get(berth_plan::LABEL_SPEC_HASH) == Some(&svc.spec_hash());
                self.schedule_restart(service, ev.container_id, delay, spec_current);
            }
            "oom" => {
                warn!(service = %service, container = %short(&ev.container_id), "container ran out of memory");
                self.update_service(&service, |s| s.oom_kills += 1);
            }
            "destroy" => {
                let current = self.current_container(&service);
                if current.as_deref() == Some(ev.container_id.as_str()) {
                    self.update_service(&service, |s| {
                        s.container_id = None;
                        s.state = State::Pending;
                        s.health = Health::Unknown;
                    });
                    self.request_reconcile();
                }
            }
            _ => {}
        }
    }

    /// Starts the service's stopped container again after `delay`, without a full
    /// convergence pass (no listing, no planning): the fast path for crashes. Anything
    /// unexpected (config changed, container gone) is left to a convergence pass.
    fn schedule_restart(
        self: &Arc<Self>,
        service: String,
        id: String,
        delay: Duration,
        spec_current: bool,
    ) {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let still_down = this.snap.borrow().services.get(&service).is_some_and(|s| {
                s.container_id.as_deref() == Some(id.as_str()) && s.state == State::Exited
            });
            if !still_down || this.is_held(&service) {
                return;
            }
            let cfg = this.config();
            let Some(svc) = cfg.services.get(&service) else {
                return;
            };
            if !spec_current {
                this.request_reconcile();
                return;
            }
            info!(service = %service, container = %short(&id), "restarting");
            if let Err(e) = this.engine.start_container(&id).await {
                warn!(service = %service, error = %e, "restart failed; reconciling");
                this.request_reconcile();
                return;
            }
            let r = async {
                let details = this.engine.inspect_container(&id).await?;
                let ip = details.ips.get(&cfg.network_name()).copied();
                this.update_service(&service, |s| {
                    s.state = State::Starting;
                    s.health = Health::Starting;
                    s.since = started_at(&details);
                    s.ip = ip;
                    s.next_restart = None;
                });
                this.probe_until_healthy(svc, &details, ip).await
            };
            if let Err(e) = r.await {
                warn!(service = %service, error = %format!("{e:#}"), "not healthy after restart");
            }
        });
    }

    /// Counts a restart and returns the backoff before it: none after a long enough
    /// run, else `initial_backoff` doubling to `max_backoff`.
    fn record_restart(&self, service: &str, uptime: Duration, svc: &Service) -> Duration {
        let now = Instant::now();
        let Ok(mut all) = self.restarts.lock() else {
            return Duration::ZERO;
        };
        let r = all.entry(service.to_string()).or_default();
        let policy = &svc.restart;
        let delay = if uptime >= policy.reset_after {
            r.fast_failures = 0;
            Duration::ZERO
        } else {
            r.fast_failures += 1;
            let exp = r.fast_failures.saturating_sub(1).min(20);
            (policy.initial_backoff * 2u32.pow(exp)).min(policy.max_backoff)
        };
        r.not_before = Some(now + delay);
        r.recent.push_back(now);
        while r
            .recent
            .front()
            .is_some_and(|t| now.duration_since(*t) > CRASHLOOP_WINDOW)
        {
            r.recent.pop_front();
        }
        let crashloop = r.recent.len() >= CRASHLOOP_RESTARTS;
        drop(all);
        self.update_service(service, |s| {
            s.restarts += 1;
            s.crashloop = crashloop;
        });
        delay
    }

    /// Takes a backup now (waiting for one in progress) and records the outcome.
    pub async fn backup_now(&self) -> anyhow::Result<crate::backup::Meta> {
        let _one = self.backup_lock.lock().await;
        let cfg = self.config();
        info!("backup starting");
        let r = crate::backup::take(self.engine.as_ref(), &cfg).await;
        match &r {
            Ok(m) => {
                info!(backup = %m.id, size = m.size, sha256 = %m.sha256, "backup done");
                self.refresh_backups(&cfg, None);
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "backup failed");
                self.refresh_backups(&cfg, Some(format!("{e:#}")));
            }
        }
        r
    }

    /// Re-reads the backup folder into the snapshot; `error` is the last attempt's.
    pub fn refresh_backups(&self, cfg: &Config, error: Option<String>) {
        let Some(b) = &cfg.backup else { return };
        let all = crate::backup::list(&b.dir).unwrap_or_default();
        let last_ok = all.iter().rev().find(|m| m.verified != Some(false));
        let (at, size) = (last_ok.and_then(|m| m.created()), last_ok.map(|m| m.size));
        let ok = error.is_none();
        self.update(|s| {
            s.backup.count = all.len() as u64;
            s.backup.last_ok_at = at;
            s.backup.last_size_bytes = size;
            s.backup.last_error = error;
        });
        if ok {
            self.offsite_wake.notify_one();
        }
    }

    /// Services that depend on `service`, directly or not, dependants first.
    pub fn dependants(cfg: &Config, service: &str) -> Vec<String> {
        let order = cfg.start_order();
        let mut found = BTreeSet::new();
        // Start order puts every service after what it depends on.
        for name in &order {
            if cfg.services[name]
                .depends_on
                .iter()
                .any(|d| d == service || found.contains(d))
            {
                found.insert(name.clone());
            }
        }
        order
            .into_iter()
            .rev()
            .filter(|n| found.contains(n))
            .collect()
    }

    /// Restores a backup: holds and stops the dependants (the bot), replaces the
    /// database, releases them and waits until they are healthy again.
    pub async fn restore(self: &Arc<Self>, which: &str) -> anyhow::Result<crate::backup::Meta> {
        let _one = self.backup_lock.lock().await;
        let cfg = self.config();
        let b = cfg
            .backup
            .as_ref()
            .context("no [backup] section in the config")?;
        let meta = crate::backup::find(&b.dir, which)?;
        let deps = Self::dependants(&cfg, &b.service);
        info!(backup = %meta.id, stopping = %deps.join(","), "restore starting");
        if let Ok(mut h) = self.held.lock() {
            h.extend(deps.iter().cloned());
        }
        for d in &deps {
            if let (Some(id), Some(svc)) = (self.current_container(d), cfg.services.get(d)) {
                self.expect_stop(&id);
                self.engine
                    .stop_container(&id, svc.stop_grace_period)
                    .await
                    .or_else(ignore_not_found)?;
                self.update_service(d, |s| {
                    s.state = State::Stopped;
                    s.health = Health::Unknown;
                });
            }
        }
        let r = crate::backup::restore_database(self.engine.as_ref(), &cfg, &meta).await;
        if let Ok(mut h) = self.held.lock() {
            for d in &deps {
                h.remove(d);
            }
        }
        self.request_reconcile();
        r?;
        info!(backup = %meta.id, "database restored; starting dependants");
        let mut rx = self.snap.subscribe();
        let healthy = |s: &Snapshot| {
            deps.iter()
                .all(|d| s.services.get(d).is_some_and(|st| st.is_healthy()))
        };
        let ok = tokio::time::timeout(Duration::from_secs(180), rx.wait_for(healthy))
            .await
            .is_ok_and(|r| r.is_ok());
        if !ok {
            anyhow::bail!(
                "database restored from {}, but {} did not become healthy",
                meta.id,
                deps.join(", ")
            );
        }
        Ok(meta)
    }

    /// Runs backups on the configured schedule (local time). A run missed while berth or
    /// the server was down happens once at start-up.
    pub async fn backup_loop(self: Arc<Self>) {
        use chrono::Local;
        let Some(b) = self.config().backup.clone() else {
            return;
        };
        let cron = match b.schedule.cron() {
            Ok(c) => c,
            Err(e) => {
                error!(error = %e, "backup schedule cannot be evaluated; no scheduled backups");
                return;
            }
        };
        self.refresh_backups(&self.config(), None);
        let last = crate::backup::list(&b.dir)
            .ok()
            .and_then(|all| all.last().and_then(|m| m.created()));
        let now = Local::now();
        let missed = match (last, cron.find_previous_occurrence(&now, true)) {
            (Some(last), Ok(prev)) => SystemTime::from(prev) > last,
            (None, _) => false,
            _ => false,
        };
        if missed {
            info!("a scheduled backup was missed while berth was down: taking it now");
            let _ = self.backup_now().await;
        }
        loop {
            let now = Local::now();
            let Ok(next) = cron.find_next_occurrence(&now, false) else {
                return;
            };
            let wait = (next - now).to_std().unwrap_or_default();
            debug!(next = %next, "next scheduled backup");
            tokio::time::sleep(wait).await;
            let _ = self.backup_now().await;
        }
    }

    /// Copies backups off-site (`[backup.offsite]`) after each new one and every hour;
    /// a failure is reported in `/health` and retried with backoff (2 s doubling to 10 min).
    /// Local backups never wait for it.
    pub async fn offsite_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_secs(2);
        loop {
            let cfg = self.config();
            let target = cfg
                .backup
                .as_ref()
                .and_then(|b| Some((b.dir.clone(), b.offsite.clone()?)));
            let Some((dir, o)) = target else {
                self.update(|s| s.backup.offsite = None);
                tokio::select! {
                    _ = self.offsite_wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
                continue;
            };
            let mut st = self
                .snap
                .borrow()
                .backup
                .offsite
                .clone()
                .unwrap_or_default();
            let r = match crate::offsite::Store::new(&o) {
                Ok(store) => store.sync(&dir, &mut st).await,
                Err(e) => Err(e),
            };
            let wait = match r {
                Ok(()) => {
                    st.last_ok_at = Some(SystemTime::now());
                    st.last_error = None;
                    backoff = Duration::from_secs(2);
                    Duration::from_secs(3600)
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    warn!(error = %e, retry_in = ?backoff, "off-site copy failed");
                    st.last_error = Some(e);
                    let w = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(600));
                    w
                }
            };
            self.update(|s| s.backup.offsite = Some(st));
            tokio::select! {
                _ = self.offsite_wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// A crash loop ends when the restarts of the last ten minutes drop below the mark.
    fn refresh_crashloop(&self, service: &str) {
        let now = Instant::now();
        let looping = self.restarts.lock().ok().is_some_and(|mut all| {
            all.get_mut(service).is_some_and(|r| {
                while r
                    .recent
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > CRASHLOOP_WINDOW)
                {
                    r.recent.pop_front();
                }
                r.recent.len() >= CRASHLOOP_RESTARTS
            })
        });
        let was = self
            .snap
            .borrow()
            .services
            .get(service)
            .is_some_and(|s| s.crashloop);
        if was && !looping {
            info!(service = %service, "crash loop over");
            self.update_service(service, |s| s.crashloop = false);
        }
    }

    /// Samples disk, memory and load every ten seconds (off the async workers: statvfs
    /// can block on a sick filesystem).
    pub async fn resources_loop(self: Arc<Self>) {
        loop {
            let cfg = self.config();
            let dir = cfg
                .backup
                .as_ref()
                .map(|b| b.dir.clone())
                .filter(|d| d.exists())
                .unwrap_or_else(|| cfg.supervisor.state_dir.clone());
            if let Ok(r) = tokio::task::spawn_blocking(move || crate::resources::sample(&dir)).await
            {
                self.update(|s| s.resources = Some(r));
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    }

    /// Sends systemd a STATUS= line whenever the one-line summary changes.
    pub async fn status_loop(self: Arc<Self>) {
        let mut rx = self.snap.subscribe();
        let mut last = String::new();
        loop {
            let summary = rx.borrow_and_update().summary();
            if summary != last {
                crate::notify::status(&summary);
                last = summary;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// On shutdown with `on_stop = "stop"`: stop containers, dependants first.
    pub async fn stop_all(&self) {
        let cfg = self.config();
        let ids: BTreeMap<String, String> = self
            .snap
            .borrow()
            .services
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.container_id.clone()?)))
            .collect();
        for name in cfg.start_order().into_iter().rev() {
            if let (Some(id), Some(svc)) = (ids.get(&name), cfg.services.get(&name)) {
                info!(service = %name, "stopping");
                self.expect_stop(id);
                if let Err(e) = self.engine.stop_container(id, svc.stop_grace_period).await {
                    warn!(service = %name, error = %e, "stop failed");
                }
            }
        }
    }
}

/// The image is on this host, pulled from its registry if it was not.
/// Time between two scheduled backups (from the next two occurrences).
fn backup_period(cfg: &Config) -> Option<Duration> {
    let cron = cfg.backup.as_ref()?.schedule.cron().ok()?;
    let now = chrono::Local::now();
    let a = cron.find_next_occurrence(&now, false).ok()?;
    let b = cron.find_next_occurrence(&a, false).ok()?;
    (b - a).to_std().ok()
}

pub(crate) async fn ensure_image(engine: &dyn Engine, image: &str) -> anyhow::Result<()> {
    if engine.image_exists(image).await? {
        return Ok(());
    }
    info!(image, "pulling");
    let t = Instant::now();
    engine.pull_image(image).await.map_err(|e| {
        anyhow::anyhow!(
            "image {image} is not on this host and pulling it failed ({e}): check the name, `docker login` to a private registry, or `docker load` it"
        )
    })?;
    info!(image, ms = t.elapsed().as_millis() as u64, "pulled");
    Ok(())
}

fn ignore_not_found(e: EngineError) -> Result<(), EngineError> {
    if e.is_not_found() { Ok(()) } else { Err(e) }
}

pub(crate) fn started_at(d: &ContainerDetails) -> Option<SystemTime> {
    parse_time(d.started_at.as_deref())
}

/// The engine's RFC 3339 times; its zero time ("0001-01-01…") means never.
fn parse_time(t: Option<&str>) -> Option<SystemTime> {
    t.and_then(|t| humantime::parse_rfc3339_weak(t).ok())
}

pub fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}
