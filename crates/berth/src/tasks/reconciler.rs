//! The reconciler: observe the engine, ask the planner ([`berth_core::plan`]), carry out
//! its actions with health gating. One pass at a time, whenever asked (events, reloads,
//! holds released) and every [`RESYNC`]. Services start as soon as their dependencies
//! are healthy, independent ones in parallel; a dependant whose dependency cannot come
//! up in this pass gives up at once instead of waiting.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use berth_config::{Config, Service};
use berth_core::deploy::Role;
use berth_core::snapshot::{Health, State};
use berth_core::{Action, LABEL_SERVICE, start_order};
use berth_engine::EngineError;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::hub::{Hub, mono_now};
use crate::io::containers::{address, ensure_image, ignore_not_found, short, started_at};
use crate::io::{off_runtime, spec, statefile};
use crate::tasks::deployer::Deployer;
use crate::tasks::gate;
use crate::tasks::restarter::Restarter;

/// A full re-observe even when nothing asked for one, as a safety net.
pub const RESYNC: Duration = Duration::from_secs(30);
/// Room in a pass for pulls and engine calls beyond the services' start timeouts.
const PASS_SLACK: Duration = Duration::from_secs(600);
/// The name the reconciler's heartbeat goes by.
const BEAT: &str = "reconciler";

/// What the bring-ups of one pass share.
struct Pass<'a> {
    cfg: &'a Config,
    /// Services whose bring-up in this pass is over.
    done: watch::Receiver<BTreeSet<String>>,
    /// Services with work in this pass.
    busy: &'a BTreeSet<String>,
    /// Services whose container this pass replaces.
    replaced: &'a BTreeSet<String>,
    started: std::time::Instant,
    /// The service whose start goes first (`berth_core::start_order`), and whether its
    /// start has returned.
    lead: Option<String>,
    lead_started: watch::Sender<bool>,
    /// The others wait for the lead's start until then at the latest (one deadline for
    /// the pass: a service waits before its create and again before its start).
    lead_until: tokio::time::Instant,
}

pub struct Reconciler {
    hub: Arc<Hub>,
    restarter: Restarter,
    deployer: Arc<Deployer>,
}

impl Reconciler {
    pub fn new(hub: Arc<Hub>, restarter: Restarter, deployer: Arc<Deployer>) -> Self {
        Reconciler {
            hub,
            restarter,
            deployer,
        }
    }

    /// Runs convergence until the daemon stops. `first_done` fires after the first pass
    /// that reached the engine (systemd's READY). Before that first pass, a deploy berth
    /// died in is undone.
    pub async fn run(self, first_done: tokio::sync::oneshot::Sender<()>) {
        let hub = &self.hub;
        let mut first = Some(first_done);
        let mut recovered = false;
        let mut engine_answered = true;
        loop {
            hub.beat(BEAT, self.budget());
            if let Err(e) = hub.engine.ping().await {
                // The restarter's reconnects ask for the next pass.
                if std::mem::replace(&mut engine_answered, false) {
                    warn!(error = %e, "engine unreachable; waiting for it");
                } else {
                    debug!(error = %e, "engine still unreachable");
                }
                hub.update(|s| s.engine_connected = false);
            } else {
                engine_answered = true;
                if !recovered {
                    match self.deployer.recover().await {
                        Ok(()) => recovered = true,
                        Err(e) => {
                            error!(error = %format!("{e:#}"), "undoing an interrupted deploy")
                        }
                    }
                }
                if let Err(e) = self.converge().await {
                    error!(error = %format!("{e:#}"), "convergence failed");
                }
                if hub.read(|s| s.engine_connected)
                    && let Some(tx) = first.take()
                {
                    let _ = tx.send(());
                }
            }
            tokio::select! {
                _ = hub.reconcile_requested() => {}
                _ = tokio::time::sleep(RESYNC) => {}
            }
        }
    }

    /// How long a loop iteration may take: a pass waits for services to come up (each
    /// within its start timeout, along dependency chains), and may pull images.
    fn budget(&self) -> Duration {
        let starts: Duration = self
            .hub
            .config()
            .services
            .values()
            .filter_map(|s| s.probe.as_ref().map(|p| p.start_timeout))
            .sum();
        RESYNC + starts + PASS_SLACK
    }

    /// One pass: observe, plan, execute.
    pub async fn converge(&self) -> anyhow::Result<()> {
        let hub = &self.hub;
        let cfg = hub.config();
        // Held before or after the look: a deploy that let go meanwhile may have renamed
        // what was observed (a `.next` that is now the service's own).
        let held_before = hub.held();
        let observed = match spec::observe(hub.engine.as_ref(), &cfg).await {
            Ok(o) => o,
            Err(e) => {
                hub.update(|s| s.engine_connected = false);
                return Err(e).context("observing the engine");
            }
        };
        // What the engine shows wins over what berth last believed (events can be missed
        // while the engine was unreachable): a container berth thought running that is not
        // is reported as exited until this pass brings it back.
        let mut held = hub.held();
        held.extend(held_before);
        hub.update(|s| {
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
        let actions = berth_core::plan(&cfg, &observed, &held, &hub.rejected());
        let operated = hub.operated();
        let pass_started = mono_now();
        for a in &actions {
            info!(action = %a, service = a.service().unwrap_or(""), "plan");
        }
        let labels = spec::project_labels(&cfg);
        let mut per_service: BTreeMap<String, Vec<Action>> = BTreeMap::new();
        let mut removed = BTreeSet::new();
        // The network and the volumes at once: none needs another, and every container
        // needs them.
        let (infra, actions): (Vec<Action>, Vec<Action>) = actions.into_iter().partition(|a| {
            matches!(
                a,
                Action::CreateNetwork { .. } | Action::CreateVolume { .. }
            )
        });
        futures::future::try_join_all(infra.iter().map(|a| async {
            match a {
                Action::CreateNetwork { name } => hub
                    .engine
                    .create_network(name, &labels)
                    .await
                    .with_context(|| format!("creating network {name}")),
                Action::CreateVolume { name } => hub
                    .engine
                    .create_volume(name, &labels)
                    .await
                    .with_context(|| format!("creating volume {name}")),
                _ => Ok(()),
            }
        }))
        .await?;
        for a in actions {
            match &a {
                Action::CreateNetwork { .. } | Action::CreateVolume { .. } => {}
                Action::RemoveContainer {
                    service,
                    id,
                    name,
                    reason,
                } => {
                    let grace = reason.stop_grace(
                        cfg.services
                            .get(service)
                            .map_or(Duration::from_secs(10), |s| s.stop_grace_period),
                    );
                    self.stop_and_remove(id, grace)
                        .await
                        .with_context(|| format!("removing container {name}"))?;
                    removed.insert(id.clone());
                }
                // Part of the service's bring-up (before its start), so that a slow stop
                // holds up that service only.
                Action::StopContainer { service, .. } if cfg.services.contains_key(service) => {
                    per_service
                        .entry(service.clone())
                        .or_default()
                        .push(a.clone())
                }
                Action::StopContainer { id, name, .. } => self
                    .stop_kept(id, Duration::from_secs(10))
                    .await
                    .with_context(|| format!("stopping container {name}"))?,
                Action::CreateContainer { service, .. }
                | Action::StartContainer { service }
                | Action::ReplaceContainer { service, .. } => per_service
                    .entry(service.clone())
                    .or_default()
                    .push(a.clone()),
            }
        }
        // Current containers, for services the plan leaves alone (adopted).
        let mut existing: BTreeMap<String, String> = BTreeMap::new();
        for c in &observed.containers {
            if cfg.services.contains_key(&c.service) && !removed.contains(&c.id) {
                existing.insert(c.service.clone(), c.id.clone());
            }
        }
        // A service still in its restart backoff is not started in this pass (that would
        // hold up every other service); a timer asks for another pass when it is due.
        let now = mono_now();
        let mut settled = BTreeSet::new();
        for (name, acts) in per_service.iter_mut() {
            let due = self.restarter.backoff_until(name, now);
            if let Some(t) = due
                && acts
                    .iter()
                    .any(|a| matches!(a, Action::StartContainer { .. }))
            {
                // A kept container running beside it is still stopped.
                acts.retain(|a| matches!(a, Action::StopContainer { .. }));
                settled.insert(name.clone());
                hub.update_service(name, |s| {
                    s.next_restart = SystemTime::now().checked_add(t - now)
                });
                let hub = hub.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(tokio::time::Instant::from_std(t)).await;
                    hub.request_reconcile();
                });
            }
        }
        // Services with work in this pass: a dependant waits for it to be over.
        let busy: BTreeSet<String> = per_service
            .iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(s, _)| s.clone())
            .collect();
        let replaced: BTreeSet<String> = per_service
            .iter()
            .filter(|(_, a)| {
                a.iter()
                    .any(|a| matches!(a, Action::ReplaceContainer { .. }))
            })
            .map(|(s, _)| s.clone())
            .collect();
        let lead = {
            let healthy =
                |d: &String| hub.read(|s| s.services.get(d).is_some_and(|st| st.is_healthy()));
            let starting: BTreeMap<String, Option<Duration>> = per_service
                .iter()
                .filter(|(name, acts)| {
                    !operated.contains(*name)
                        && acts
                            .iter()
                            .any(|a| matches!(a, Action::StartContainer { .. }))
                        && cfg.services.get(*name).is_some_and(|s| {
                            s.depends_on.iter().all(|d| !busy.contains(d) && healthy(d))
                        })
                })
                .map(|(name, _)| (name.clone(), hub.start_time(name)))
                .collect();
            start_order::lead(&starting)
        };
        if let Some(l) = &lead {
            info!(service = %l, took_ms = hub.start_time(l).map_or(0, |t| t.as_millis() as u64), "starts first: it took longest to come up last time");
        }
        // Services whose bring-up in this pass is over (or will not happen): a dependant
        // waiting on one of them that is not healthy gives up at once instead of waiting.
        let (done_tx, done_rx) = watch::channel(settled);
        let done_tx = Arc::new(done_tx);
        let pass = Pass {
            cfg: &cfg,
            done: done_rx,
            busy: &busy,
            replaced: &replaced,
            started: pass_started,
            lead,
            lead_started: watch::channel(false).0,
            lead_until: tokio::time::Instant::now() + start_order::LEAD_WAIT,
        };
        let pass = &pass;
        let ups = cfg.start_order().into_iter().map(|name| {
            let actions = per_service.remove(&name).unwrap_or_default();
            let id = existing.get(&name).cloned();
            let done_tx = done_tx.clone();
            // A held service is its holder's: not even its status is this pass's to
            // write (it read a container mid-switch as exited, and a deploy's rollback
            // then saw "container exited while starting").
            let mine = !operated.contains(&name);
            async move {
                if !mine {
                    done_tx.send_modify(|d| {
                        d.insert(name.clone());
                    });
                    return Ok(());
                }
                let r = self.bring_up(pass, &name, actions, id).await;
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
        if let Some(times) = hub.changed_start_times() {
            let dir = cfg.supervisor.state_dir.clone();
            if let Err(e) = off_runtime(move || statefile::save_start_times(&dir, &times)).await {
                warn!(error = %format!("{e:#}"), "saving the start times");
                hub.start_times_unsaved();
            }
        }
        let failed = results.iter().filter(|r| r.is_err()).count();
        if failed > 0 {
            let summary = hub.read(|s| s.summary(SystemTime::now()));
            anyhow::bail!("{failed} service(s) not up: {summary}");
        }
        Ok(())
    }

    /// Stops a deploy's kept container found running outside a hold, once the engine
    /// confirms it still is one (a deploy may have made it the service's since the look).
    async fn stop_kept(&self, id: &str, grace: Duration) -> anyhow::Result<()> {
        let hub = &self.hub;
        let d = match hub.engine.inspect_container(id).await {
            Ok(d) => d,
            Err(EngineError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        let service = d.labels.get(LABEL_SERVICE).cloned().unwrap_or_default();
        let kept = Role::is_kept(&hub.config().container_name(&service), &d.name);
        if !d.running || !kept || hub.is_held(&service) {
            return Ok(());
        }
        warn!(service = %service, container = %d.name, "a deploy's kept container is running outside a deploy: stopping it");
        hub.stop_container(id, grace)
            .await
            .or_else(ignore_not_found)?;
        Ok(())
    }

    /// Stops a service's container that runs in a network namespace its holder no longer
    /// has (it is started again, after the holder, in the one it has then).
    async fn stop_joiner(&self, service: &str, id: &str, grace: Duration) -> anyhow::Result<()> {
        let hub = &self.hub;
        if hub.is_held(service) {
            return Ok(());
        }
        warn!(service = %service, container = %short(id), "its network holder's namespace is gone: stopping it, to start it in the holder's new one");
        hub.stop_container(id, grace)
            .await
            .or_else(ignore_not_found)?;
        hub.update_service(service, |s| {
            if s.container_id.as_deref() == Some(id) {
                s.state = State::Exited;
                s.health = Health::Unhealthy;
            }
        });
        Ok(())
    }

    async fn stop_and_remove(&self, id: &str, grace: Duration) -> Result<(), EngineError> {
        self.hub
            .stop_container(id, grace)
            .await
            .or_else(ignore_not_found)?;
        self.hub
            .remove_container(id, true)
            .await
            .or_else(ignore_not_found)
    }

    /// Waits for dependencies, runs the service's actions, and probes fast until healthy.
    async fn bring_up(
        &self,
        pass: &Pass<'_>,
        name: &str,
        actions: Vec<Action>,
        existing: Option<String>,
    ) -> anyhow::Result<()> {
        let hub = &self.hub;
        let cfg = pass.cfg;
        // The settings the service's container was made with (the old ones, when a
        // change to them was rolled back).
        let svc = &hub
            .settings(name)
            .unwrap_or_else(|| cfg.services[name].clone());
        let mut actions = actions;
        while let Some(Action::StopContainer {
            id,
            name: container,
            reason,
            ..
        }) = actions.first()
        {
            let grace = reason.stop_grace(svc.stop_grace_period);
            let stopped = match reason {
                berth_core::Reason::NetworkHolder { .. } => self.stop_joiner(name, id, grace).await,
                _ => self.stop_kept(id, grace).await,
            };
            stopped.with_context(|| format!("stopping container {container}"))?;
            actions.remove(0);
        }
        let mut id = existing;
        let mut created_early = false;
        // A new container is made while its dependencies come up (once the pass's lead has
        // started), so only its start waits for them (on this engine a create is 50–150 ms
        // of a cold start's critical path).
        // Not in a namespace whose holder this pass replaces: it would join the old one.
        let holder_replaced = cfg.services[name]
            .network_of
            .as_ref()
            .is_some_and(|h| pass.replaced.contains(h));
        let create_first = matches!(actions.first(), Some(Action::CreateContainer { .. }));
        if create_first {
            // Creates compete with the lead's create and start in the engine too
            // (measured: five creates at once took 111 ms before the lead's start).
            after_lead(pass, name).await;
        }
        if create_first && !hub.is_held(name) && !holder_replaced {
            let new = &cfg.services[name];
            ensure_image(hub.engine.as_ref(), cfg, &new.image).await?;
            id = Some(
                hub.engine
                    .create_container(&spec::container_spec(cfg, new))
                    .await?,
            );
            hub.update_service(name, |s| {
                s.container_id = id.clone();
                s.state = State::Pending;
            });
            actions.remove(0);
            created_early = true;
        }
        // A running container is left alone whatever its dependencies do: dependants of a
        // restarted service are not restarted.
        if !actions.is_empty() {
            self.wait_for_deps(svc, pass.done.clone(), pass.busy)
                .await?;
        }
        if let Some(Action::ReplaceContainer { id, reason, .. }) = actions.first() {
            let from = match reason {
                berth_core::Reason::SpecChanged { from, .. } => from.as_str(),
                _ => "",
            };
            // A dependency's change was just rolled back: this one (made to go with it)
            // waits for the next change of the file.
            if let Some(dep) = svc
                .depends_on
                .iter()
                .find(|d| hub.rejected_since(d, pass.started))
            {
                warn!(service = %name, dependency = %dep, "not changed: the change to its dependency was rolled back");
                let new = &cfg.services[name];
                let old = hub.settings_of(name, from).unwrap_or_else(|| new.clone());
                hub.reject(name, new.spec_hash(), old);
                return Ok(());
            }
            return self.deployer.replace(name, id, from).await;
        }
        let svc = if actions
            .iter()
            .any(|a| matches!(a, Action::CreateContainer { .. }))
            || created_early
        {
            &cfg.services[name]
        } else {
            svc
        };
        let mut started = None;
        for a in &actions {
            // Held since the pass was planned (a `berth stop`, a deploy that began while
            // this pass waited for dependencies): the holder's now, not this pass's.
            if hub.is_held(name) {
                return Ok(());
            }
            match a {
                Action::CreateContainer { .. } => {
                    let spec = spec::container_spec(cfg, svc);
                    ensure_image(hub.engine.as_ref(), cfg, &svc.image).await?;
                    id = Some(hub.engine.create_container(&spec).await?);
                    hub.update_service(name, |s| {
                        s.container_id = id.clone();
                        s.state = State::Pending;
                    });
                }
                Action::StartContainer { .. } => {
                    let Some(cid) = id.as_deref() else {
                        anyhow::bail!("no container to start");
                    };
                    after_lead(pass, name).await;
                    // A `berth stop` or a deploy may have taken it while it waited.
                    if hub.is_held(name) {
                        return Ok(());
                    }
                    info!(service = %name, container = %short(cid), "starting");
                    let began = tokio::time::Instant::now();
                    let r = hub.engine.start_container(cid).await;
                    if pass.lead.as_deref() == Some(name) {
                        pass.lead_started.send_replace(true);
                    }
                    r?;
                    started = Some(began);
                }
                _ => {}
            }
        }
        let Some(id) = id else {
            anyhow::bail!("no container");
        };
        let details = hub.engine.inspect_container(&id).await?;
        let ip = address(hub.engine.as_ref(), cfg, name, &details).await;
        let already_healthy = hub.read(|snap| {
            snap.services
                .get(name)
                .is_some_and(|s| s.runs(&id) && s.is_healthy())
        });
        hub.update_service(name, |s| {
            s.container_id = Some(id.clone());
            // What runs, as the engine says (an adopted container may predate the file).
            s.image = if details.image.is_empty() {
                svc.image.clone()
            } else {
                details.image.clone()
            };
            s.ip = ip;
            s.since = started_at(&details);
            if started.is_some() {
                s.next_restart = None;
            }
            if !details.running {
                s.state = State::Exited;
            } else if !already_healthy {
                s.state = if started.is_some() {
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
        let timeout = svc
            .probe
            .as_ref()
            .map_or(Duration::ZERO, |p| p.start_timeout);
        gate::until_healthy(hub, svc, &details, ip, timeout).await?;
        if let Some(began) = started {
            hub.learn_start_time(name, began.elapsed());
        }
        Ok(())
    }

    /// Waits until every dependency is healthy and done with its own work in this pass
    /// (`busy`); fails as soon as one of them is settled for this pass without being
    /// healthy.
    async fn wait_for_deps(
        &self,
        svc: &Service,
        mut done: watch::Receiver<BTreeSet<String>>,
        busy: &BTreeSet<String>,
    ) -> anyhow::Result<()> {
        let mut snap = self.hub.subscribe();
        loop {
            let unhealthy: Vec<String> = {
                let s = snap.borrow_and_update();
                let d = done.borrow();
                svc.depends_on
                    .iter()
                    .filter(|dep| {
                        !s.services.get(*dep).is_some_and(|st| st.is_healthy())
                            || (busy.contains(*dep) && !d.contains(*dep))
                    })
                    .cloned()
                    .collect()
            };
            // Only a real change is published: this loop wakes on every change itself.
            let known = self.hub.read(|s| {
                s.services
                    .get(&svc.name)
                    .is_none_or(|st| st.waiting_for == unhealthy)
            });
            if !known {
                self.hub
                    .update_service(&svc.name, |s| s.waiting_for = unhealthy.clone());
            }
            if unhealthy.is_empty() {
                return Ok(());
            }
            let given_up: Vec<&str> = {
                let d = done.borrow_and_update();
                unhealthy
                    .iter()
                    .filter(|u| d.contains(*u))
                    .map(String::as_str)
                    .collect()
            };
            if !given_up.is_empty() {
                anyhow::bail!("waiting for {} to become healthy", given_up.join(", "));
            }
            tokio::select! {
                r = snap.changed() => r?,
                r = done.changed() => r?,
            }
        }
    }
}

/// Waits until the pass's lead has started (or its bring-up ended without a start), at
/// most until `LEAD_WAIT` after the pass began; at once for the lead itself or when there
/// is none.
async fn after_lead(pass: &Pass<'_>, name: &str) {
    let Some(lead) = pass.lead.as_deref().filter(|l| *l != name) else {
        return;
    };
    let mut started = pass.lead_started.subscribe();
    let mut done = pass.done.clone();
    let wait = async {
        loop {
            if *started.borrow_and_update() || done.borrow_and_update().contains(lead) {
                return;
            }
            tokio::select! {
                r = started.changed() => if r.is_err() { return },
                r = done.changed() => if r.is_err() { return },
            }
        }
    };
    let _ = tokio::time::timeout_at(pass.lead_until, wait).await;
}
