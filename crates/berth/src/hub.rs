//! The few handles every task shares, and nothing else: the engine, the config in force,
//! the snapshot they publish into, holds on services, the stops berth expects, and the
//! trigger for a convergence pass. No decisions live here.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use berth_config::{Config, Service};
use berth_core::snapshot::{Health, ServiceStatus, Snapshot, State};
use berth_core::{Held, Rejected};
use berth_engine::Engine;
use tokio::sync::{Notify, oneshot, watch};

/// The monotonic clock the daemon's decisions get as `now`: tokio's, so tests under
/// `tokio::time::pause()` move it.
pub fn mono_now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// A stop berth asked for is forgotten after this long if its `die` never came and nobody
/// said the stop answered (the longest grace period a stop may take).
const EXPECTED_STOP_TTL: Duration = Duration::from_secs(600);

/// How long after a stop answered its `die` may still be read from the event stream. The
/// engine sends the `die` before the stop answers, so only the stream's own lag counts;
/// a `die` later than this is a new one (a real crash), never this stop's.
pub const EXPECTED_STOP_SETTLE: Duration = Duration::from_secs(10);

pub struct Hub {
    pub engine: Arc<dyn Engine>,
    config: watch::Sender<Arc<Config>>,
    snap: watch::Sender<Snapshot>,
    holds: Mutex<BTreeMap<String, usize>>,
    /// Holds that still let a convergence pass observe and probe the service (a frozen
    /// deploy state): nothing is changed, but its status stays true.
    watched: Mutex<BTreeMap<String, usize>>,
    /// Services `berth stop` keeps down until `berth start` (persisted by the deployer in
    /// `state_dir`): held like an operation's, without an end.
    kept_down: Mutex<std::collections::BTreeSet<String>>,
    /// Containers berth itself is stopping or removing: their `die` is not a crash.
    /// Container id → until when its `die` counts as berth's own stop.
    expected_stops: Mutex<HashMap<String, Instant>>,
    /// Who waits for a container's `die` event (see [`Hub::when_dies`]).
    die_waiters: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    reconcile: Notify,
    /// The core loops' last sign of progress, and how long each may stay silent.
    beats: Mutex<BTreeMap<&'static str, (Instant, Duration)>>,
    /// Changes tried and rolled back: service → (the spec hash that failed, the settings
    /// of the container that serves on).
    rejected: Mutex<BTreeMap<String, (String, Service, Instant)>>,
    /// The configs in force before the current one (the newest last): the settings a
    /// running container was made with, when a change to them fails.
    history: Mutex<std::collections::VecDeque<Arc<Config>>>,
    /// How long each service took from its start to healthy the last time a convergence
    /// pass started it (kept in `state_dir`; `berth_core::start_order` reads it), and
    /// whether that changed since it was last saved.
    start_times: Mutex<(BTreeMap<String, Duration>, bool)>,
}

/// Configs kept in [`Hub::settings_of`]'s history.
const HISTORY: usize = 8;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent across a panic (single assignments).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// `cfg` is the config in force (the file's, deployed images in place).
    pub fn new(engine: Arc<dyn Engine>, cfg: Config) -> Arc<Self> {
        crate::redact::set(&cfg);
        let mut snap = Snapshot::new(SystemTime::now());
        snap.config.generation = 1;
        for (name, svc) in &cfg.services {
            snap.services
                .insert(name.clone(), ServiceStatus::new(&svc.image));
        }
        Arc::new(Hub {
            engine,
            config: watch::channel(Arc::new(cfg)).0,
            snap: watch::channel(snap).0,
            holds: Mutex::new(BTreeMap::new()),
            watched: Mutex::new(BTreeMap::new()),
            kept_down: Mutex::new(Default::default()),
            expected_stops: Mutex::new(HashMap::new()),
            die_waiters: Mutex::new(HashMap::new()),
            reconcile: Notify::new(),
            beats: Mutex::new(BTreeMap::new()),
            rejected: Mutex::new(BTreeMap::new()),
            history: Mutex::new(std::collections::VecDeque::new()),
            start_times: Mutex::new((BTreeMap::new(), false)),
        })
    }

    /// How long `service` took from its start to healthy the last time a pass started it.
    pub fn start_time(&self, service: &str) -> Option<Duration> {
        lock(&self.start_times).0.get(service).copied()
    }

    /// Notes how long `service` took from its start to healthy.
    pub fn learn_start_time(&self, service: &str, took: Duration) {
        let mut t = lock(&self.start_times);
        t.0.insert(service.to_string(), took);
        t.1 = true;
    }

    /// The times as read back from `state_dir` at start-up.
    pub fn set_start_times(&self, times: BTreeMap<String, Duration>) {
        *lock(&self.start_times) = (times, false);
    }

    /// A save of the times failed: the next pass tries again.
    pub fn start_times_unsaved(&self) {
        lock(&self.start_times).1 = true;
    }

    /// The times, if they changed since the last call (to be saved).
    pub fn changed_start_times(&self) -> Option<BTreeMap<String, Duration>> {
        let mut t = lock(&self.start_times);
        std::mem::take(&mut t.1).then(|| t.0.clone())
    }

    /// The config in force.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// Follows the config in force (reloads, deploys).
    pub fn config_changes(&self) -> watch::Receiver<Arc<Config>> {
        self.config.subscribe()
    }

    /// A new config in force; the snapshot follows its services.
    pub fn set_config(&self, cfg: Config) {
        crate::redact::set(&cfg);
        self.update(|s| {
            s.services.retain(|name, _| cfg.services.contains_key(name));
            for (name, svc) in &cfg.services {
                s.services
                    .entry(name.clone())
                    .or_insert_with(|| ServiceStatus::new(&svc.image))
                    .image = svc.image.clone();
            }
        });
        let old = self.config.send_replace(Arc::new(cfg));
        let mut h = lock(&self.history);
        h.push_back(old);
        while h.len() > HISTORY {
            h.pop_front();
        }
    }

    /// The settings of `service` whose container spec hashes to `hash`, from the config
    /// in force or one before it.
    pub fn settings_of(&self, service: &str, hash: &str) -> Option<Service> {
        let now = self.config();
        let h = lock(&self.history);
        std::iter::once(&now)
            .chain(h.iter().rev())
            .filter_map(|c| c.services.get(service))
            .find(|s| s.spec_hash() == hash)
            .cloned()
    }

    /// A change of `service` to spec `hash` was rolled back: the old container, made
    /// with `serving`, serves on (and is probed with its own settings) until the file
    /// changes the service again.
    pub fn reject(&self, service: &str, hash: String, serving: Service) {
        lock(&self.rejected).insert(service.to_string(), (hash, serving, mono_now()));
    }

    /// Whether a change of `service` was rejected at or after `since`.
    pub fn rejected_since(&self, service: &str, since: Instant) -> bool {
        lock(&self.rejected)
            .get(service)
            .is_some_and(|(_, _, at)| *at >= since)
    }

    /// A change went through: nothing of `service` is rejected any more.
    pub fn accept(&self, service: &str) {
        lock(&self.rejected).remove(service);
    }

    /// The rejected changes that still stand (the file still asks for them).
    pub fn rejected(&self) -> Rejected {
        let cfg = self.config();
        lock(&self.rejected)
            .iter()
            .filter(|(s, (hash, _, _))| {
                cfg.services
                    .get(*s)
                    .is_some_and(|svc| svc.spec_hash() == *hash)
            })
            .map(|(s, (hash, _, _))| (s.clone(), hash.clone()))
            .collect()
    }

    /// The settings of the service's running container: the config's, unless a change
    /// to them was rolled back, then the old ones (its probe, grace period, …).
    pub fn settings(&self, service: &str) -> Option<Service> {
        let cfg = self.config();
        let svc = cfg.services.get(service)?;
        match lock(&self.rejected).get(service) {
            Some((hash, old, _)) if *hash == svc.spec_hash() => Some(old.clone()),
            _ => Some(svc.clone()),
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snap.subscribe()
    }

    /// Reads the snapshot (never across an await).
    pub fn read<R>(&self, f: impl FnOnce(&Snapshot) -> R) -> R {
        f(&self.snap.borrow())
    }

    /// Changes the snapshot; whatever text it then holds is scrubbed of secrets (it is
    /// what `/health`, `status` and the alerts show).
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.snap.send_modify(|s| {
            f(s);
            scrub_snapshot(s);
        });
    }

    pub fn update_service(&self, name: &str, f: impl FnOnce(&mut ServiceStatus)) {
        self.update(|s| {
            if let Some(st) = s.services.get_mut(name) {
                f(st);
            }
        });
    }

    /// The container berth currently runs for `service`, if any.
    pub fn current_container(&self, service: &str) -> Option<String> {
        self.read(|s| s.services.get(service)?.container_id.clone())
    }

    /// A switch failed half-way: which container is the service's is no longer known.
    /// The one berth had is forgotten (it may now be a deploy's `.previous`, which no
    /// restart may bring back beside its successor) and a pass re-observes.
    pub fn lost_track(&self, service: &str) {
        self.update_service(service, |s| {
            s.container_id = None;
            s.state = State::Pending;
            s.health = Health::Unknown;
        });
        self.request_reconcile();
    }

    pub fn request_reconcile(&self) {
        self.reconcile.notify_one();
    }

    pub async fn reconcile_requested(&self) {
        self.reconcile.notified().await
    }

    /// Holds `services` until the returned guard drops: no convergence, restart or probe
    /// touches them meanwhile. Holds count: two owners holding one service both have to
    /// let go. Letting go asks for a convergence pass.
    pub fn hold<I, S>(self: &Arc<Self>, services: I) -> Hold
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hold_in(services, false)
    }

    /// Like [`Hub::hold`], but convergence passes still observe the services and probe
    /// them to a true status (they change nothing).
    pub fn hold_watched<I, S>(self: &Arc<Self>, services: I) -> Hold
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.hold_in(services, true)
    }

    fn hold_in<I, S>(self: &Arc<Self>, services: I, watched: bool) -> Hold
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let services: Vec<String> = services.into_iter().map(Into::into).collect();
        let mut h = lock(if watched { &self.watched } else { &self.holds });
        for s in &services {
            *h.entry(s.clone()).or_default() += 1;
        }
        Hold {
            hub: self.clone(),
            services,
            watched,
        }
    }

    pub fn held(&self) -> Held {
        let mut all = self.operated();
        all.extend(lock(&self.watched).keys().cloned());
        all
    }

    /// Services held by an operation under way or kept down (not only watched): their
    /// status is the holder's to write.
    pub fn operated(&self) -> Held {
        let mut all: Held = lock(&self.holds).keys().cloned().collect();
        all.extend(lock(&self.kept_down).iter().cloned());
        all
    }

    pub fn is_held(&self, service: &str) -> bool {
        lock(&self.holds).contains_key(service)
            || lock(&self.watched).contains_key(service)
            || lock(&self.kept_down).contains(service)
    }

    /// Keeps `service` down until [`Hub::release`]: no pass, restart or probe touches it.
    pub fn keep_down(&self, service: &str) {
        lock(&self.kept_down).insert(service.to_string());
    }

    /// Ends [`Hub::keep_down`]; whether it was kept down. Asks for a convergence pass.
    pub fn release(&self, service: &str) -> bool {
        let was = lock(&self.kept_down).remove(service);
        self.request_reconcile();
        was
    }

    pub fn kept_down(&self) -> std::collections::BTreeSet<String> {
        lock(&self.kept_down).clone()
    }

    /// A core loop shows progress; it must do so again within `budget`.
    pub fn beat(&self, task: &'static str, budget: Duration) {
        lock(&self.beats).insert(task, (mono_now(), budget));
    }

    /// The core loops silent for longer than their budget at `now`: while any is, the
    /// systemd watchdog is not pinged (a wedged loop behind a live process is a restart).
    pub fn stalled(&self, now: Instant) -> Vec<&'static str> {
        lock(&self.beats)
            .iter()
            .filter(|(_, (at, budget))| now.saturating_duration_since(*at) > *budget)
            .map(|(task, _)| *task)
            .collect()
    }

    /// berth is about to stop or remove container `id`: its `die` is no crash. Pair it
    /// with [`Hub::stop_answered`] once the engine has answered (or use
    /// [`Hub::stop_container`] / [`Hub::remove_container`], which do both).
    pub fn expect_stop(&self, id: &str) {
        let now = mono_now();
        let mut e = lock(&self.expected_stops);
        e.retain(|_, until| *until > now);
        e.insert(id.to_string(), now + EXPECTED_STOP_TTL);
    }

    /// The engine answered berth's stop or removal of `id`, done or failed: its `die`, if
    /// any, is already on the event stream. Without this a stop that never happened (the
    /// engine unreachable, the container already down) hid the container's next real
    /// crash for ten minutes (chaos soak, seed 42007927: PostgreSQL down, `/health` fine).
    pub fn stop_answered(&self, id: &str) {
        let settle = mono_now() + EXPECTED_STOP_SETTLE;
        if let Some(until) = lock(&self.expected_stops).get_mut(id) {
            *until = (*until).min(settle);
        }
    }

    /// Whether the `die` of `id` was expected (forgets it).
    pub fn take_expected_stop(&self, id: &str) -> bool {
        lock(&self.expected_stops)
            .remove(id)
            .is_some_and(|until| until > mono_now())
    }

    /// Stops container `id` as berth's own act: its `die` is no crash.
    pub async fn stop_container(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<(), berth_engine::EngineError> {
        self.expect_stop(id);
        let r = self.engine.stop_container(id, grace).await;
        self.stop_answered(id);
        r
    }

    /// Removes container `id` as berth's own act (forced: a running one is killed, and
    /// that `die` is no crash).
    pub async fn remove_container(
        &self,
        id: &str,
        force: bool,
    ) -> Result<(), berth_engine::EngineError> {
        self.expect_stop(id);
        let r = self.engine.remove_container(id, force).await;
        self.stop_answered(id);
        r
    }

    /// Resolves at the next `die` event of container `id` (full id), as the restarter
    /// reads the event stream: the moment its process is gone, before the engine's
    /// clean-up of it ends and a stop returns. Errs if [`Hub::died`] is told first by
    /// someone else dropping the wait (never resolving is possible: pair it with the stop).
    pub fn when_dies(&self, id: &str) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let mut waiters = lock(&self.die_waiters);
        // Waiters that gave up (a gate whose container became healthy) go, so the map
        // holds only live ones even for containers whose `die` is never seen.
        waiters.retain(|_, txs| {
            txs.retain(|t| !t.is_closed());
            !txs.is_empty()
        });
        waiters.entry(id.to_string()).or_default().push(tx);
        rx
    }

    /// Container `id` died (or is known stopped): wakes and forgets its waiters.
    pub fn died(&self, id: &str) {
        for tx in lock(&self.die_waiters).remove(id).unwrap_or_default() {
            let _ = tx.send(());
        }
    }
}

/// Every text of the snapshot that may quote a command's output.
fn scrub_snapshot(s: &mut Snapshot) {
    use crate::redact::scrub_opt;
    for st in s.services.values_mut() {
        if let Some(p) = st.probe.as_mut() {
            scrub_opt(&mut p.error);
        }
    }
    scrub_opt(&mut s.config.error);
    scrub_opt(&mut s.backup.last_error);
    if let Some(o) = s.backup.offsite.as_mut() {
        scrub_opt(&mut o.last_error);
    }
    for r in s.deploy.values_mut() {
        scrub_opt(&mut r.reason);
    }
    for c in s.alerts.values_mut() {
        scrub_opt(&mut c.last_error);
    }
    scrub_opt(&mut s.state_error);
}

/// A hold on some services; released on drop, whatever path the owner leaves by.
#[must_use = "a hold is released as soon as it is dropped"]
pub struct Hold {
    hub: Arc<Hub>,
    services: Vec<String>,
    watched: bool,
}

impl Drop for Hold {
    fn drop(&mut self) {
        {
            let mut h = lock(if self.watched {
                &self.hub.watched
            } else {
                &self.hub.holds
            });
            for s in &self.services {
                if let Some(n) = h.get_mut(s) {
                    *n -= 1;
                    if *n == 0 {
                        h.remove(s);
                    }
                }
            }
        }
        self.hub.request_reconcile();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Arc<Hub> {
        let cfg = berth_config::parse_str(
            std::path::Path::new("t.toml"),
            "[supervisor]\nproject = \"p\"\n[services.bot]\nimage = \"bot:1\"\n",
            &|_| None,
        )
        .expect("config");
        Hub::new(berth_engine::fake::FakeEngine::new(), cfg)
    }

    #[tokio::test]
    async fn holds_count_per_owner_and_end_on_drop() {
        let hub = hub();
        let a = hub.hold(["bot"]);
        let b = hub.hold(["bot", "db"]);
        assert!(hub.is_held("bot") && hub.is_held("db"));
        drop(a);
        assert!(hub.is_held("bot"), "the other owner still holds it");
        drop(b);
        assert!(hub.held().is_empty());
    }

    #[tokio::test]
    async fn a_hold_ends_when_its_owner_errs_out() {
        let hub = hub();
        let op = async {
            let _h = hub.hold(["bot"]);
            anyhow::bail!("failed half-way")
        };
        let r: anyhow::Result<()> = op.await;
        assert!(r.is_err());
        assert!(!hub.is_held("bot"));
    }

    /// Issue 15, item 8: a loop that stops showing progress stops the watchdog pings.
    #[tokio::test(start_paused = true)]
    async fn a_silent_core_loop_is_stalled_until_it_beats_again() {
        let hub = hub();
        assert!(hub.stalled(mono_now()).is_empty(), "nothing registered yet");
        hub.beat("reconciler", Duration::from_secs(60));
        hub.beat("restarter", Duration::from_secs(180));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(hub.stalled(mono_now()), vec!["reconciler"]);
        hub.beat("reconciler", Duration::from_secs(60));
        assert!(hub.stalled(mono_now()).is_empty());
        tokio::time::advance(Duration::from_secs(200)).await;
        assert_eq!(hub.stalled(mono_now()), vec!["reconciler", "restarter"]);
    }

    #[tokio::test(start_paused = true)]
    async fn expected_stops_are_forgotten_when_their_die_never_comes() {
        let hub = hub();
        hub.expect_stop("a");
        assert!(hub.take_expected_stop("a"));
        assert!(!hub.take_expected_stop("a"));
        hub.expect_stop("b");
        tokio::time::advance(EXPECTED_STOP_TTL + Duration::from_secs(1)).await;
        hub.expect_stop("c");
        assert!(!hub.take_expected_stop("b"), "pruned");
        assert!(hub.take_expected_stop("c"));
    }

    /// A stop that answered without a `die` (it failed, or the container was down) does
    /// not hide a crash that comes later.
    #[tokio::test(start_paused = true)]
    async fn an_expected_stop_ends_soon_after_the_stop_answered() {
        let hub = hub();
        hub.expect_stop("a");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(
            hub.take_expected_stop("a"),
            "a long grace period is still a stop"
        );
        hub.expect_stop("b");
        hub.stop_answered("b");
        tokio::time::advance(EXPECTED_STOP_SETTLE / 2).await;
        assert!(hub.take_expected_stop("b"), "the die read a little late");
        hub.expect_stop("c");
        hub.stop_answered("c");
        tokio::time::advance(EXPECTED_STOP_SETTLE + Duration::from_secs(1)).await;
        assert!(!hub.take_expected_stop("c"), "a later die is a crash");
    }
}
