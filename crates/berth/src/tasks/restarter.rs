//! The restarter: follows the engine's event stream and brings back what dies, after the
//! backoff the restart policy decides ([`berth_core::restart`]); restarts what the prober
//! reports hung. It owns every service's restart history and publishes the backoffs the
//! reconciler must respect.
//!
//! A restart is the fast path: the same container started again, no listing, no
//! planning. Anything unexpected (config changed, container gone) is left to a
//! convergence pass.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use berth_core::restart::RestartHistory;
use berth_core::snapshot::{Health, State};
use berth_core::{LABEL_PROJECT, LABEL_SERVICE, LABEL_SPEC_HASH};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::hub::{Hub, mono_now};
use crate::io::containers::{address, short, started_at};
use crate::tasks::gate;

const EVENTS_RETRY: Duration = Duration::from_millis(200);
/// The restarter shows progress at least this often while it waits…
const BEAT_EVERY: Duration = Duration::from_secs(10);
/// …and may be silent this long (an engine call on the event path can take the client's
/// whole request timeout).
const BEAT_BUDGET: Duration = Duration::from_secs(180);
/// A retry is one request to a local socket, and while the stream is down a container's
/// death goes unseen until it reopens (and re-observes): keep the gap short.
const EVENTS_RETRY_MAX: Duration = Duration::from_secs(1);

enum Msg {
    /// The prober found the service's container failing its probe: restart it.
    Unhealthy { service: String, id: String },
    /// The service passed its probe: a crash loop may be over.
    Healthy { service: String },
    /// A person started the service again (`berth start`): its crashes are history.
    Forget { service: String },
}

/// The handle: cheap to clone; the task ends when every handle is gone.
#[derive(Clone)]
pub struct Restarter {
    tx: mpsc::Sender<Msg>,
    backoffs: watch::Receiver<BTreeMap<String, Instant>>,
}

impl Restarter {
    pub fn start(hub: Arc<Hub>) -> (Restarter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(64);
        let (backoffs_tx, backoffs) = watch::channel(BTreeMap::new());
        let task = Task {
            hub,
            book: BTreeMap::new(),
            backoffs: backoffs_tx,
            restarts: JoinSet::new(),
        };
        (Restarter { tx, backoffs }, tokio::spawn(task.run(rx)))
    }

    /// When the service may start again, if it is in a restart backoff at `now`.
    pub fn backoff_until(&self, service: &str, now: Instant) -> Option<Instant> {
        self.backoffs
            .borrow()
            .get(service)
            .copied()
            .filter(|t| *t > now)
    }

    pub async fn unhealthy(&self, service: &str, id: &str) {
        let _ = self
            .tx
            .send(Msg::Unhealthy {
                service: service.into(),
                id: id.into(),
            })
            .await;
    }

    /// Forgets the service's crashes and backoff: it starts at once, and its next crash
    /// is a first one.
    pub async fn forget(&self, service: &str) {
        let _ = self
            .tx
            .send(Msg::Forget {
                service: service.into(),
            })
            .await;
    }

    pub async fn healthy(&self, service: &str) {
        let _ = self
            .tx
            .send(Msg::Healthy {
                service: service.into(),
            })
            .await;
    }
}

struct Task {
    hub: Arc<Hub>,
    book: BTreeMap<String, RestartHistory>,
    backoffs: watch::Sender<BTreeMap<String, Instant>>,
    /// Restarts waiting out their backoff or starting: joined, so a panic is not lost.
    restarts: JoinSet<()>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut delay = EVENTS_RETRY;
        let mut beat = tokio::time::interval(BEAT_EVERY);
        loop {
            self.hub.beat("restarter", BEAT_BUDGET);
            let project = self.hub.config().supervisor.project.clone();
            let mut events = self.hub.engine.events(LABEL_PROJECT, &project);
            // An event stream that opened means the engine is back: re-observe.
            self.hub.request_reconcile();
            loop {
                tokio::select! {
                    ev = events.next() => match ev {
                        Some(Ok(ev)) => {
                            delay = EVENTS_RETRY;
                            self.on_event(ev).await;
                        }
                        Some(Err(e)) => {
                            // Said once per outage; the retries that follow are debug.
                            if delay == EVENTS_RETRY {
                                warn!(error = %e, "engine event stream failed; reconnecting");
                            } else {
                                debug!(error = %e, "engine event stream failed; reconnecting");
                            }
                            break;
                        }
                        None => break,
                    },
                    msg = rx.recv() => match msg {
                        Some(m) => self.on_msg(m),
                        None => return,
                    },
                    Some(done) = self.restarts.join_next() => {
                        if let Err(e) = done && e.is_panic() {
                            std::panic::resume_unwind(e.into_panic());
                        }
                    }
                    _ = beat.tick() => self.hub.beat("restarter", BEAT_BUDGET),
                }
            }
            self.hub.update(|s| s.engine_connected = false);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(EVENTS_RETRY_MAX);
        }
    }

    fn on_msg(&mut self, m: Msg) {
        match m {
            Msg::Unhealthy { service, id } => {
                if self.hub.is_held(&service) {
                    return;
                }
                let cfg = self.hub.config();
                let Some(svc) = cfg.services.get(&service) else {
                    return;
                };
                // A hung service is restarted at once: it did not crash-loop.
                let d = self
                    .history(&service)
                    .on_probe_restart(&svc.restart, mono_now());
                self.publish_backoffs();
                self.hub.update_service(&service, |s| {
                    s.restarts += 1;
                    s.probe_restarts += 1;
                    s.crashloop = d.crashloop;
                });
                let hub = self.hub.clone();
                let grace = svc.stop_grace_period;
                self.restarts.spawn(async move {
                    if let Err(e) = hub.stop_container(&id, grace).await {
                        warn!(service = %service, error = %e, "stopping unhealthy container");
                    }
                    hub.update_service(&service, |s| {
                        if s.container_id.as_deref() == Some(id.as_str()) {
                            s.state = State::Exited;
                            s.health = Health::Unhealthy;
                        }
                    });
                    restart_after(hub, service, id, Duration::ZERO, true).await;
                });
            }
            Msg::Healthy { service } => {
                let over = self
                    .book
                    .get_mut(&service)
                    .is_some_and(|h| !h.crashloop(mono_now()));
                let was = self
                    .hub
                    .read(|s| s.services.get(&service).is_some_and(|s| s.crashloop));
                if was && over {
                    info!(service = %service, "crash loop over");
                    self.hub.update_service(&service, |s| s.crashloop = false);
                }
            }
            Msg::Forget { service } => {
                self.book.remove(&service);
                self.publish_backoffs();
                self.hub.update_service(&service, |s| {
                    s.crashloop = false;
                    s.next_restart = None;
                });
            }
        }
    }

    fn history(&mut self, service: &str) -> &mut RestartHistory {
        self.book.entry(service.to_string()).or_default()
    }

    fn publish_backoffs(&self) {
        let now = mono_now();
        let map: BTreeMap<String, Instant> = self
            .book
            .iter()
            .filter_map(|(s, h)| Some((s.clone(), h.backoff_until(now)?)))
            .collect();
        self.backoffs.send_replace(map);
    }

    async fn on_event(&mut self, ev: berth_engine::Event) {
        let Some(service) = ev.labels.get(LABEL_SERVICE).cloned() else {
            return;
        };
        debug!(service = %service, action = %ev.action, container = %short(&ev.container_id), "event");
        match ev.action.as_str() {
            "die" => {
                self.hub.died(&ev.container_id);
                self.on_die(service, ev).await
            }
            "oom" => {
                warn!(service = %service, container = %short(&ev.container_id), "container ran out of memory");
                self.hub.update_service(&service, |s| s.oom_kills += 1);
            }
            "destroy" => {
                // Checked and changed in one step: a deploy may make another container
                // the service's at any moment (reading first raced with it, and a
                // rollback then saw its container "exited while starting").
                let mut was_current = false;
                self.hub.update_service(&service, |s| {
                    if s.container_id.as_deref() == Some(ev.container_id.as_str()) {
                        was_current = true;
                        s.container_id = None;
                        s.state = State::Pending;
                        s.health = Health::Unknown;
                    }
                });
                if was_current {
                    self.hub.request_reconcile();
                }
            }
            _ => {}
        }
    }

    async fn on_die(&mut self, service: String, ev: berth_engine::Event) {
        let expected = self.hub.take_expected_stop(&ev.container_id);
        let current = self.hub.current_container(&service);
        if expected || current.as_deref() != Some(ev.container_id.as_str()) {
            return;
        }
        let id = ev.container_id.as_str();
        if self.hub.is_held(&service) {
            self.hub.update_service(&service, |s| {
                if s.container_id.as_deref() == Some(id) {
                    s.state = State::Stopped;
                }
            });
            return;
        }
        let Some(svc) = self.hub.settings(&service) else {
            return;
        };
        // How long it ran, on the engine's clock: its StartedAt (kept in `since`) to the
        // event. Asking the engine instead would cost a round trip on the restart path.
        let died = SystemTime::UNIX_EPOCH + Duration::from_nanos(ev.time_nanos.max(0) as u64);
        let since = match self
            .hub
            .read(|s| s.services.get(&service).and_then(|s| s.since))
        {
            Some(t) => Some(t),
            None => self
                .hub
                .engine
                .inspect_container(&ev.container_id)
                .await
                .ok()
                .and_then(|d| started_at(&d)),
        };
        let uptime = since
            .and_then(|s| died.duration_since(s).ok())
            .unwrap_or_default();
        let d = self
            .history(&service)
            .on_death(uptime, &svc.restart, mono_now());
        self.publish_backoffs();
        warn!(
            service = %service,
            container = %short(&ev.container_id),
            exit_code = ev.exit_code.unwrap_or(-1),
            ran_ms = uptime.as_millis() as u64,
            restart_in_ms = d.delay.as_millis() as u64,
            "container died"
        );
        self.hub.update_service(&service, |s| {
            s.restarts += 1;
            s.crashloop = d.crashloop;
            if s.container_id.as_deref() == Some(id) {
                s.state = State::Exited;
                s.health = Health::Unhealthy;
                s.next_restart = SystemTime::now().checked_add(d.delay);
            }
        });
        let spec_current = ev.labels.get(LABEL_SPEC_HASH) == Some(&svc.spec_hash());
        let hub = self.hub.clone();
        self.restarts.spawn(restart_after(
            hub,
            service,
            ev.container_id,
            d.delay,
            spec_current,
        ));
    }
}

/// Starts the service's stopped container again after `delay`, unless something else
/// took over meanwhile (a deploy, a restore, a pass that replaced it).
async fn restart_after(
    hub: Arc<Hub>,
    service: String,
    id: String,
    delay: Duration,
    spec_current: bool,
) {
    tokio::time::sleep(delay).await;
    let still_down = hub.read(|s| {
        s.services.get(&service).is_some_and(|s| {
            s.container_id.as_deref() == Some(id.as_str()) && s.state == State::Exited
        })
    });
    if !still_down || hub.is_held(&service) {
        return;
    }
    let cfg = hub.config();
    let Some(svc) = hub.settings(&service) else {
        return;
    };
    let svc = &svc;
    if !spec_current {
        hub.request_reconcile();
        return;
    }
    info!(service = %service, container = %short(&id), "restarting");
    let started = hub.engine.start_container(&id).await;
    // `berth stop` came while the start was on its way: it stays down.
    if started.is_ok() && hub.kept_down().contains(&service) {
        let _ = hub.stop_container(&id, svc.stop_grace_period).await;
        return;
    }
    if let Err(e) = started {
        warn!(service = %service, error = %e, "restart failed; reconciling");
        hub.request_reconcile();
        return;
    }
    let r = async {
        let details = hub.engine.inspect_container(&id).await?;
        // A deploy took the service over while the start was on its way: the container
        // may be its `.previous` now, which must not run beside its successor.
        if details.name != cfg.container_name(&service) {
            warn!(service = %service, container = %details.name, "restarted a container that is no longer the service's: stopping it");
            hub.stop_container(&id, svc.stop_grace_period).await?;
            return Ok(());
        }
        if hub.is_held(&service) {
            return Ok(());
        }
        let ip = address(hub.engine.as_ref(), &cfg, &service, &details).await;
        hub.update_service(&service, |s| {
            s.state = State::Starting;
            s.health = Health::Starting;
            s.since = started_at(&details);
            s.ip = ip;
            s.next_restart = None;
        });
        let timeout = svc
            .probe
            .as_ref()
            .map_or(Duration::ZERO, |p| p.start_timeout);
        // The containers in its network namespace lost their network with it: a pass
        // sees they started before it, and starts them again in the namespace it has now.
        if cfg
            .services
            .values()
            .any(|s| s.network_of.as_deref() == Some(service.as_str()))
        {
            hub.request_reconcile();
        }
        gate::until_healthy(&hub, svc, &details, ip, timeout).await
    };
    if let Err(e) = r.await {
        warn!(service = %service, error = %format!("{e:#}"), "not healthy after restart");
    }
}
