//! [`FakeEngine`]: an in-memory [`Engine`] for fast unit tests of the daemon's async shells.
//!
//! Compiled only with the `fake` feature; the daemon takes it in its dev-dependencies
//! (`berth-engine = { workspace = true, features = ["fake"] }`). A test scripts the engine's
//! state (networks, volumes, images, containers), drives the code under test, and then
//! asserts on the call log ([`FakeEngine::calls`]) and on the state. Calls can be made to
//! fail ([`FakeEngine::inject_error`], [`FakeEngine::set_unreachable`]) and containers to
//! die ([`FakeEngine::crash`], [`FakeEngine::oom`]).
//!
//! Its clock is tokio's: timestamps are a base [`SystemTime`] plus the
//! [`tokio::time::Instant`] elapsed since the fake was made, so under
//! `tokio::time::pause()` a test moves `StartedAt`, `FinishedAt` and event times with
//! `tokio::time::advance`, and a five-minute backoff runs in microseconds.
//!
//! # What it mimics (where the daemon cares)
//! - Lookups by full id, by name (with or without the leading `/`), or by a unique id
//!   prefix; an unknown container is [`EngineError::NotFound`], an ambiguous prefix an
//!   [`EngineError::Api`] error.
//! - Docker's answers: a taken name on create or rename is a `Conflict` API error; a missing
//!   image or network on create is `NotFound`; starting a running container or stopping a
//!   stopped one succeeds and changes nothing (Docker's 304); removing a running container
//!   needs `force`; exec needs a running container.
//! - Container state as `docker inspect` reports it: status `created`/`running`/`exited`,
//!   RFC 3339 times with nanoseconds (`0001-01-01T00:00:00Z` until first started), the exit
//!   code (0 until a run ends), a pid and an IP (172.30.x.y, a fresh one per start) on the
//!   container's network only while it runs, `OOMKilled`, restart policy `no`.
//! - Events, to streams subscribed with a matching label: `create`, `start`, `die` (with
//!   `exitCode`), `stop`, `oom`, `rename` (with `oldName`) and `destroy`. Like Docker's, an
//!   event's attributes are the container's labels plus `image` and `name`.
//!
//! # What it does not
//! - No processes and no waiting: `stop_container` ends the container at once whatever the
//!   grace period (exit code 0, or the one set with [`FakeEngine::set_stop_exit_code`]).
//! - No `kill`, `health_status` or `exec_*` events; no healthchecks, no restart policies, no
//!   ports actually bound, no IP reuse, no subnets per network.
//! - Logs are a scripted list: `follow` does not wait for new lines.
//! - Image references are compared after adding `:latest` to an untagged name and dropping
//!   `docker.io/` and `library/`; no digests are resolved.
//! - An event stream subscribes when `events` is called, not when first polled.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use crate::{
    ContainerDetails, ContainerSpec, ContainerSummary, Engine, EngineError, Event, ExecResult,
    ExecStream, Output, Result,
};

/// Docker's zero time, reported as `StartedAt`/`FinishedAt` of a container never started or
/// never stopped.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";

/// One call of an [`Engine`] method, with its arguments as the caller passed them (a name,
/// an id or an id prefix). `exec_exit_code` is not recorded: it is the second half of the
/// exec recorded as [`Call::Exec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Ping,
    Networks,
    CreateNetwork { name: String },
    Volumes,
    CreateVolume { name: String },
    Containers,
    CreateContainer { name: String, image: String },
    Start { id: String },
    Stop { id: String, grace: Duration },
    Remove { id: String, force: bool },
    Rename { id: String, new_name: String },
    Inspect { id: String },
    ImageExists { image: String },
    Pull { image: String },
    Events,
    Exec { id: String, cmd: Vec<String> },
    Logs { id: String },
}

/// The kind of a [`Call`], without its arguments: what [`CallMatch`] selects on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    Ping,
    Networks,
    CreateNetwork,
    Volumes,
    CreateVolume,
    Containers,
    CreateContainer,
    Start,
    Stop,
    Remove,
    Rename,
    Inspect,
    ImageExists,
    Pull,
    Events,
    Exec,
    Logs,
}

impl Call {
    pub fn kind(&self) -> CallKind {
        match self {
            Call::Ping => CallKind::Ping,
            Call::Networks => CallKind::Networks,
            Call::CreateNetwork { .. } => CallKind::CreateNetwork,
            Call::Volumes => CallKind::Volumes,
            Call::CreateVolume { .. } => CallKind::CreateVolume,
            Call::Containers => CallKind::Containers,
            Call::CreateContainer { .. } => CallKind::CreateContainer,
            Call::Start { .. } => CallKind::Start,
            Call::Stop { .. } => CallKind::Stop,
            Call::Remove { .. } => CallKind::Remove,
            Call::Rename { .. } => CallKind::Rename,
            Call::Inspect { .. } => CallKind::Inspect,
            Call::ImageExists { .. } => CallKind::ImageExists,
            Call::Pull { .. } => CallKind::Pull,
            Call::Events => CallKind::Events,
            Call::Exec { .. } => CallKind::Exec,
            Call::Logs { .. } => CallKind::Logs,
        }
    }

    /// What the call is about: a container (name or id as passed, the name for a create),
    /// a network, a volume or an image. None for listings, ping and events.
    pub fn target(&self) -> Option<&str> {
        match self {
            Call::CreateNetwork { name }
            | Call::CreateVolume { name }
            | Call::CreateContainer { name, .. } => Some(name),
            Call::Start { id }
            | Call::Stop { id, .. }
            | Call::Remove { id, .. }
            | Call::Rename { id, .. }
            | Call::Inspect { id }
            | Call::Exec { id, .. }
            | Call::Logs { id } => Some(id),
            Call::ImageExists { image } | Call::Pull { image } => Some(image),
            Call::Ping | Call::Networks | Call::Volumes | Call::Containers | Call::Events => None,
        }
    }

    fn is_about_a_container(&self) -> bool {
        matches!(
            self.kind(),
            CallKind::Start
                | CallKind::Stop
                | CallKind::Remove
                | CallKind::Rename
                | CallKind::Inspect
                | CallKind::Exec
                | CallKind::Logs
        )
    }
}

/// Which calls an injected error answers: one kind, optionally only for one target, for the
/// next N matching calls or for all of them.
///
/// A target matches the call's argument as passed, or, for calls about a container, any
/// name, id or id prefix of the same container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallMatch {
    kind: CallKind,
    target: Option<String>,
    /// Matching calls left to fail; None: all of them.
    remaining: Option<usize>,
}

impl CallMatch {
    /// The next matching call only.
    pub fn once(kind: CallKind) -> Self {
        Self::times(kind, 1)
    }

    /// The next `n` matching calls.
    pub fn times(kind: CallKind, n: usize) -> Self {
        CallMatch {
            kind,
            target: None,
            remaining: Some(n),
        }
    }

    /// Every matching call, until [`FakeEngine::clear_errors`].
    pub fn always(kind: CallKind) -> Self {
        CallMatch {
            kind,
            target: None,
            remaining: None,
        }
    }

    /// Only calls about `target` (a container's name or id, a network, volume or image).
    pub fn on(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
}

/// A container's state in the fake, as [`FakeEngine::container`] hands it out.
#[derive(Debug, Clone, PartialEq)]
pub struct FakeContainer {
    /// 64 hex digits.
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// Of the last run; 0 until a run ends and again once started.
    pub exit_code: i64,
    /// RFC 3339 with nanoseconds; [`ZERO_TIME`] until first started.
    pub started_at: String,
    /// RFC 3339 with nanoseconds; [`ZERO_TIME`] until first ended.
    pub finished_at: String,
    /// IP address on its network, by network name, while it runs.
    pub ips: BTreeMap<String, IpAddr>,
    /// The spec it was created from.
    pub spec: ContainerSpec,
    /// The container whose network namespace it joins (`spec.join`): its id if one had
    /// that name at create, else the name, as Docker keeps it.
    pub joined: Option<String>,
    /// While it runs.
    pub pid: Option<i64>,
    pub oom_killed: bool,
    /// Published ports while it runs: (host ip, host port, container port/proto); a host
    /// port of 0 in the spec gets one from 32768 up.
    pub published: Vec<(String, String, String)>,
}

impl FakeContainer {
    /// `created`, `running` or `exited`, as Docker's `State.Status`.
    pub fn status(&self) -> &'static str {
        if self.running {
            "running"
        } else if self.started_at == ZERO_TIME {
            "created"
        } else {
            "exited"
        }
    }

    fn details(&self) -> ContainerDetails {
        ContainerDetails {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            labels: self.labels.clone(),
            running: self.running,
            status: self.status().to_string(),
            exit_code: Some(self.exit_code),
            oom_killed: self.oom_killed,
            pid: self.pid,
            started_at: Some(self.started_at.clone()),
            finished_at: Some(self.finished_at.clone()),
            ips: self.ips.clone(),
            joined: self.joined.clone(),
            restart_policy: Some("no".to_string()),
            published: self.published.clone(),
        }
    }

    fn summary(&self) -> ContainerSummary {
        ContainerSummary {
            id: self.id.clone(),
            name: self.name.clone(),
            image: self.image.clone(),
            labels: self.labels.clone(),
            running: self.running,
            joined: self.joined.clone(),
        }
    }
}

/// An exec the fake ran, as [`FakeEngine::execs`] hands it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeExec {
    pub exec_id: String,
    pub container_id: String,
    pub cmd: Vec<String>,
    pub exit_code: i64,
    /// Everything written to the exec's `input` so far.
    pub stdin: Vec<u8>,
}

/// Answers an exec not found in the table set with [`FakeEngine::script_exec`]; None falls
/// back to exit code 0 and no output.
type ExecHandler = Arc<dyn Fn(&FakeContainer, &[String]) -> Option<ExecResult> + Send + Sync>;

/// An in-memory [`Engine`] with scripted state, a call log and injected failures; see the
/// [module documentation](self).
pub struct FakeEngine {
    base: SystemTime,
    epoch: tokio::time::Instant,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Source of ids, pids and host ports; never reused.
    serial: u64,
    /// IP addresses handed out so far; never reused.
    ips_given: u32,
    calls: Vec<Call>,
    /// In creation order.
    containers: Vec<FakeContainer>,
    networks: BTreeMap<String, BTreeMap<String, String>>,
    volumes: BTreeMap<String, BTreeMap<String, String>>,
    /// Normalised references.
    images: BTreeSet<String>,
    unreachable: bool,
    faults: Vec<(CallMatch, EngineError)>,
    subscribers: Vec<Subscriber>,
    /// (container name or id, program) → result.
    exec_table: BTreeMap<(String, String), ExecResult>,
    exec_handler: Option<ExecHandler>,
    execs: Vec<ExecRecord>,
    /// Container name or id → its log.
    logs: BTreeMap<String, Vec<Output>>,
    /// Container name or id → exit code on stop.
    stop_exit_codes: BTreeMap<String, i64>,
    /// How long a stop takes to answer after the container's `die` (the engine's clean-up).
    stop_cleanup: Duration,
    /// How long an exec takes to answer (a probe of a hung or vanished container).
    exec_delay: Duration,
    /// Container name → how long its start takes to answer (a slow or hung start).
    start_delays: BTreeMap<String, Duration>,
}

struct Subscriber {
    label: String,
    value: String,
    tx: mpsc::UnboundedSender<Result<Event>>,
}

struct ExecRecord {
    exec_id: String,
    container_id: String,
    cmd: Vec<String>,
    exit_code: i64,
    stdin: Arc<Mutex<Vec<u8>>>,
}

/// Why a lookup found no single container.
enum Lookup {
    Missing,
    Ambiguous,
}

impl FakeEngine {
    /// An empty engine (no networks, volumes, images or containers) whose clock starts at
    /// the current wall-clock time.
    pub fn new() -> Arc<Self> {
        Self::new_at(SystemTime::now())
    }

    /// An empty engine whose clock reads `base` now and moves with tokio's clock.
    pub fn new_at(base: SystemTime) -> Arc<Self> {
        Arc::new(FakeEngine {
            base,
            epoch: tokio::time::Instant::now(),
            state: Mutex::default(),
        })
    }

    /// The fake's clock: the base time plus tokio time elapsed since the fake was made.
    pub fn now(&self) -> SystemTime {
        self.base + self.epoch.elapsed()
    }

    // ---- scripted state -------------------------------------------------------------

    /// Adds a network (kept as it is if one has that name).
    pub fn add_network(&self, name: &str, labels: &[(&str, &str)]) {
        self.lock()
            .networks
            .entry(name.to_string())
            .or_insert_with(|| to_labels(labels));
    }

    /// Adds a volume (kept as it is if one has that name).
    pub fn add_volume(&self, name: &str, labels: &[(&str, &str)]) {
        self.lock()
            .volumes
            .entry(name.to_string())
            .or_insert_with(|| to_labels(labels));
    }

    /// Makes `image` present.
    pub fn add_image(&self, image: &str) {
        self.lock().images.insert(normalise_image(image));
    }

    /// Adds a container as if it existed before the test (an adopted one): no event, no
    /// call recorded, its image made present, its network not checked. Fails as
    /// `create_container` would on a bad or taken name; returns its id.
    pub fn add_container(&self, spec: ContainerSpec, running: bool) -> Result<String> {
        let now = self.now();
        let mut st = self.lock();
        let what = format!("create container {}", spec.name);
        let name = st.free_name(&spec.name, &what)?;
        st.images.insert(normalise_image(&spec.image));
        let idx = st.insert(name, spec);
        if running {
            st.run(idx, now);
        }
        Ok(st.containers[idx].id.clone())
    }

    /// Makes `stop_container` answer `d` after the container's `die` event, as the engine
    /// does once it has cleaned the container up (unmounts, network).
    pub fn set_stop_cleanup(&self, d: Duration) {
        self.lock().stop_cleanup = d;
    }

    /// Makes the starts of the container with this name answer only after `d` (the
    /// container runs at once), as a slow start does.
    pub fn set_start_delay(&self, name: &str, d: Duration) {
        self.lock().start_delays.insert(name.to_string(), d);
    }

    /// Makes every exec answer only after `d`, as a probe of a hung container does.
    pub fn set_exec_delay(&self, d: Duration) {
        self.lock().exec_delay = d;
    }

    /// Makes `stop_container` end this container (name or full id) with `code` (e.g. 143
    /// for a process that dies of SIGTERM) instead of 0.
    pub fn set_stop_exit_code(&self, container: &str, code: i64) {
        self.lock()
            .stop_exit_codes
            .insert(container.to_string(), code);
    }

    /// Answers execs in this container (name or full id) whose first word is `program`.
    pub fn script_exec(&self, container: &str, program: &str, result: ExecResult) {
        self.lock()
            .exec_table
            .insert((container.to_string(), program.to_string()), result);
    }

    /// Answers execs the [`script_exec`](Self::script_exec) table does not; returning None
    /// falls back to exit code 0 and no output. Called without the fake's lock held, so it
    /// may call the fake.
    pub fn set_exec_handler(
        &self,
        handler: impl Fn(&FakeContainer, &[String]) -> Option<ExecResult> + Send + Sync + 'static,
    ) {
        self.lock().exec_handler = Some(Arc::new(handler));
    }

    /// The log of this container (name or full id): `logs` yields these chunks.
    pub fn set_logs(&self, container: &str, lines: Vec<Output>) {
        self.lock().logs.insert(container.to_string(), lines);
    }

    // ---- failures and happenings ----------------------------------------------------

    /// Makes every call fail with [`EngineError::Unreachable`] (calls are still recorded),
    /// or answer again. Going unreachable ends open event streams with that error, as a
    /// lost connection does.
    pub fn set_unreachable(&self, unreachable: bool) {
        let mut st = self.lock();
        st.unreachable = unreachable;
        if unreachable {
            for s in st.subscribers.drain(..) {
                let _ = s.tx.send(Err(unreachable_error()));
            }
        }
    }

    /// Answers the calls `matcher` selects with `error` instead of acting. The call is still
    /// recorded. Matchers are tried in the order they were injected; the first that matches
    /// answers.
    pub fn inject_error(&self, matcher: CallMatch, error: EngineError) {
        self.lock().faults.push((matcher, error));
    }

    /// Drops every injected error.
    pub fn clear_errors(&self) {
        self.lock().faults.clear();
    }

    /// Ends every open event stream, as a dockerd restart does.
    pub fn close_event_streams(&self) {
        self.lock().subscribers.clear();
    }

    /// Open event streams (those not dropped or closed): lets a test wait until the code
    /// under test has subscribed.
    pub fn event_subscribers(&self) -> usize {
        let mut st = self.lock();
        st.subscribers.retain(|s| !s.tx.is_closed());
        st.subscribers.len()
    }

    /// The container's main process exits with `exit_code` on its own: a `die` event, no
    /// `stop`. NotFound for an unknown container, an API error if it is not running.
    pub fn crash(&self, container: &str, exit_code: i64) -> Result<()> {
        let now = self.now();
        let mut st = self.lock();
        let idx = st.running_one(container, &format!("crash {container}"))?;
        st.end(idx, exit_code, now);
        st.emit(idx, "die", Some(exit_code), now);
        Ok(())
    }

    /// The container is killed for lack of memory: `oom`, then `die` with 137, and
    /// `OOMKilled` set. NotFound for an unknown container, an API error if it is not
    /// running.
    pub fn oom(&self, container: &str) -> Result<()> {
        let now = self.now();
        let mut st = self.lock();
        let idx = st.running_one(container, &format!("oom {container}"))?;
        st.emit(idx, "oom", None, now);
        st.end(idx, 137, now);
        st.containers[idx].oom_killed = true;
        st.emit(idx, "die", Some(137), now);
        Ok(())
    }

    // ---- inspection -----------------------------------------------------------------

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The container with this name, id or unique id prefix.
    pub fn container(&self, name_or_id: &str) -> Option<FakeContainer> {
        let st = self.lock();
        let idx = st.lookup(name_or_id).ok()?;
        Some(st.containers[idx].clone())
    }

    /// Every container, in creation order.
    pub fn all_containers(&self) -> Vec<FakeContainer> {
        self.lock().containers.clone()
    }

    /// The running containers, in creation order.
    pub fn running_containers(&self) -> Vec<FakeContainer> {
        let st = self.lock();
        st.containers
            .iter()
            .filter(|c| c.running)
            .cloned()
            .collect()
    }

    /// Names of the networks.
    pub fn network_names(&self) -> BTreeSet<String> {
        self.lock().networks.keys().cloned().collect()
    }

    /// Names of the volumes.
    pub fn volume_names(&self) -> BTreeSet<String> {
        self.lock().volumes.keys().cloned().collect()
    }

    /// Whether `image` is present.
    pub fn has_image(&self, image: &str) -> bool {
        self.lock().images.contains(&normalise_image(image))
    }

    /// Every exec so far, in order.
    pub fn execs(&self) -> Vec<FakeExec> {
        let st = self.lock();
        st.execs
            .iter()
            .map(|e| FakeExec {
                exec_id: e.exec_id.clone(),
                container_id: e.container_id.clone(),
                cmd: e.cmd.clone(),
                exit_code: e.exit_code,
                stdin: lock(&e.stdin).clone(),
            })
            .collect()
    }

    // ---- plumbing -------------------------------------------------------------------

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Records `call`, answers it with the engine's unreachability or an injected error if
    /// there is one, else with `act`.
    fn op<T>(
        &self,
        call: Call,
        act: impl FnOnce(&mut State, SystemTime) -> Result<T>,
    ) -> Result<T> {
        let now = self.now();
        let mut st = self.lock();
        st.calls.push(call.clone());
        if st.unreachable {
            return Err(unreachable_error());
        }
        if let Some(e) = st.take_fault(&call) {
            return Err(e);
        }
        act(&mut st, now)
    }
}

impl State {
    fn next_serial(&mut self) -> u64 {
        self.serial += 1;
        self.serial
    }

    /// The container a caller means by `key`, the way Docker resolves it: full id, then
    /// name, then unique id prefix.
    fn lookup(&self, key: &str) -> std::result::Result<usize, Lookup> {
        if key.is_empty() {
            return Err(Lookup::Missing);
        }
        if let Some(i) = self.containers.iter().position(|c| c.id == key) {
            return Ok(i);
        }
        let name = key.strip_prefix('/').unwrap_or(key);
        if let Some(i) = self.containers.iter().position(|c| c.name == name) {
            return Ok(i);
        }
        let mut prefixed = self
            .containers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.id.starts_with(key));
        match (prefixed.next(), prefixed.next()) {
            (Some((i, _)), None) => Ok(i),
            (Some(_), Some(_)) => Err(Lookup::Ambiguous),
            (None, _) => Err(Lookup::Missing),
        }
    }

    /// [`lookup`](Self::lookup) with the errors the Docker engine gives.
    fn find(&self, key: &str, what: &str) -> Result<usize> {
        self.lookup(key).map_err(|e| match e {
            Lookup::Missing => EngineError::NotFound {
                what: what.to_string(),
            },
            Lookup::Ambiguous => EngineError::Api {
                what: what.to_string(),
                message: format!("multiple IDs found with provided prefix: {key}"),
            },
        })
    }

    fn running_one(&self, key: &str, what: &str) -> Result<usize> {
        let idx = self.find(key, what)?;
        if !self.containers[idx].running {
            return Err(EngineError::Api {
                what: what.to_string(),
                message: format!("Container {} is not running", self.containers[idx].id),
            });
        }
        Ok(idx)
    }

    /// The first injected error matching `call`, used up by one.
    fn take_fault(&mut self, call: &Call) -> Option<EngineError> {
        let i = self.faults.iter().position(|(m, _)| {
            m.kind == call.kind() && m.remaining != Some(0) && self.target_matches(m, call)
        })?;
        let (m, e) = &mut self.faults[i];
        let error = clone_error(e);
        if let Some(n) = &mut m.remaining {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.faults.remove(i);
            }
        }
        Some(error)
    }

    fn target_matches(&self, m: &CallMatch, call: &Call) -> bool {
        let Some(target) = &m.target else {
            return true;
        };
        let Some(arg) = call.target() else {
            return false;
        };
        if target == arg {
            return true;
        }
        call.is_about_a_container()
            && matches!(
                (self.lookup(target), self.lookup(arg)),
                (Ok(a), Ok(b)) if a == b
            )
    }

    /// `name` if it is a valid name no container has; a generated one if empty.
    fn free_name(&mut self, name: &str, what: &str) -> Result<String> {
        if name.is_empty() {
            return Ok(format!("fake_{}", self.next_serial()));
        }
        let name = name.strip_prefix('/').unwrap_or(name);
        if !valid_name(name) {
            return Err(EngineError::Api {
                what: what.to_string(),
                message: format!(
                    "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
                ),
            });
        }
        if let Some(other) = self.containers.iter().find(|c| c.name == name) {
            return Err(EngineError::Api {
                what: what.to_string(),
                message: format!(
                    "Conflict. The container name \"/{name}\" is already in use by container \
                     \"{}\". You have to remove (or rename) that container to be able to \
                     reuse that name.",
                    other.id
                ),
            });
        }
        Ok(name.to_string())
    }

    /// Adds a created (not started) container; returns its index.
    fn insert(&mut self, name: String, spec: ContainerSpec) -> usize {
        let id = hex_id(self.next_serial());
        self.containers.push(FakeContainer {
            id,
            name,
            image: spec.image.clone(),
            labels: spec.labels.clone(),
            running: false,
            exit_code: 0,
            started_at: ZERO_TIME.to_string(),
            finished_at: ZERO_TIME.to_string(),
            ips: BTreeMap::new(),
            joined: None,
            spec,
            pid: None,
            oom_killed: false,
            published: Vec::new(),
        });
        self.containers.len() - 1
    }

    /// Starts the container: pid, IP, published ports, times (no event).
    fn run(&mut self, idx: usize, now: SystemTime) {
        let pid = 1000 + self.next_serial() as i64;
        let mut ephemeral = 32768 + self.next_serial() % 28000;
        let ip = self.containers[idx].spec.network.is_some().then(|| {
            let n = self.ips_given;
            self.ips_given += 1;
            // 172.30.0.2, .3, … .254, then 172.30.1.2, …
            IpAddr::V4(Ipv4Addr::new(
                172,
                30,
                (n / 253 % 256) as u8,
                (n % 253 + 2) as u8,
            ))
        });
        let c = &mut self.containers[idx];
        c.running = true;
        c.exit_code = 0;
        c.oom_killed = false;
        c.started_at = rfc3339_nanos(now);
        c.pid = Some(pid);
        c.ips = c
            .spec
            .network
            .iter()
            .zip(ip)
            .map(|((net, _), ip)| (net.clone(), ip))
            .collect();
        c.published = c
            .spec
            .ports
            .iter()
            .map(|p| {
                let host_port = if p.host_port == 0 {
                    ephemeral += 1;
                    ephemeral.to_string()
                } else {
                    p.host_port.to_string()
                };
                (
                    p.host_ip.to_string(),
                    host_port,
                    format!("{}/{}", p.container_port, p.protocol),
                )
            })
            .collect();
        c.published.sort();
    }

    /// Ends the container's run with `exit_code` (no event).
    fn end(&mut self, idx: usize, exit_code: i64, now: SystemTime) {
        let c = &mut self.containers[idx];
        c.running = false;
        c.exit_code = exit_code;
        c.finished_at = rfc3339_nanos(now);
        c.pid = None;
        c.ips.clear();
        c.published.clear();
    }

    /// Sends an event about the container to the streams whose label it carries.
    fn emit(&mut self, idx: usize, action: &str, exit_code: Option<i64>, now: SystemTime) {
        self.emit_with(idx, action, exit_code, now, &[]);
    }

    fn emit_with(
        &mut self,
        idx: usize,
        action: &str,
        exit_code: Option<i64>,
        now: SystemTime,
        extra: &[(&str, &str)],
    ) {
        let c = &self.containers[idx];
        let mut attributes = c.labels.clone();
        attributes.insert("image".into(), c.image.clone());
        attributes.insert("name".into(), c.name.clone());
        if let Some(code) = exit_code {
            attributes.insert("exitCode".into(), code.to_string());
        }
        for (k, v) in extra {
            attributes.insert((*k).to_string(), (*v).to_string());
        }
        let event = Event {
            container_id: c.id.clone(),
            action: action.to_string(),
            labels: attributes,
            exit_code,
            time_nanos: unix_nanos(now),
        };
        let labels = &c.labels;
        self.subscribers.retain(|s| {
            if labels.get(&s.label) == Some(&s.value) {
                s.tx.send(Ok(event.clone())).is_ok()
            } else {
                !s.tx.is_closed()
            }
        });
    }

    /// A value from a table keyed by container name or full id.
    fn by_container<'a, K: Ord, V>(
        table: &'a BTreeMap<K, V>,
        c: &FakeContainer,
        key: impl Fn(&str) -> K,
    ) -> Option<&'a V> {
        table.get(&key(&c.name)).or_else(|| table.get(&key(&c.id)))
    }
}

#[async_trait]
impl Engine for FakeEngine {
    async fn ping(&self) -> Result<()> {
        self.op(Call::Ping, |_, _| Ok(()))
    }

    async fn networks(&self, label: &str, value: &str) -> Result<BTreeSet<String>> {
        self.op(Call::Networks, |st, _| {
            Ok(st
                .networks
                .iter()
                .filter(|(_, l)| has_label(l, label, value))
                .map(|(n, _)| n.clone())
                .collect())
        })
    }

    async fn create_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let call = Call::CreateNetwork {
            name: name.to_string(),
        };
        self.op(call, |st, _| {
            // Like DockerEngine: an existing network of that name is kept.
            st.networks
                .entry(name.to_string())
                .or_insert_with(|| labels.clone());
            Ok(())
        })
    }

    async fn volumes(&self, label: &str, value: &str) -> Result<BTreeSet<String>> {
        self.op(Call::Volumes, |st, _| {
            Ok(st
                .volumes
                .iter()
                .filter(|(_, l)| has_label(l, label, value))
                .map(|(n, _)| n.clone())
                .collect())
        })
    }

    async fn create_volume(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let call = Call::CreateVolume {
            name: name.to_string(),
        };
        self.op(call, |st, _| {
            // Docker answers a create of an existing volume with that volume.
            st.volumes
                .entry(name.to_string())
                .or_insert_with(|| labels.clone());
            Ok(())
        })
    }

    async fn containers(&self, label: &str, value: &str) -> Result<Vec<ContainerSummary>> {
        self.op(Call::Containers, |st, _| {
            // Docker lists the newest first.
            Ok(st
                .containers
                .iter()
                .rev()
                .filter(|c| has_label(&c.labels, label, value))
                .map(FakeContainer::summary)
                .collect())
        })
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        let call = Call::CreateContainer {
            name: spec.name.clone(),
            image: spec.image.clone(),
        };
        self.op(call, |st, now| {
            let what = format!("create container {}", spec.name);
            let name = st.free_name(&spec.name, &what)?;
            let missing = |thing: String| EngineError::NotFound {
                what: format!("{what}: {thing}"),
            };
            if !st.images.contains(&normalise_image(&spec.image)) {
                return Err(missing(format!("no such image {}", spec.image)));
            }
            if let Some((net, _)) = &spec.network
                && !st.networks.contains_key(net)
            {
                return Err(missing(format!("network {net}")));
            }
            // Like Docker: the joined container's id is kept if one has the name now,
            // else the name (looked up again at each start).
            let joined = spec.join.as_ref().map(|c| match st.lookup(c) {
                Ok(j) => st.containers[j].id.clone(),
                Err(_) => c.clone(),
            });
            let idx = st.insert(name, spec.clone());
            st.containers[idx].joined = joined;
            st.emit(idx, "create", None, now);
            Ok(st.containers[idx].id.clone())
        })
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let call = Call::Start { id: id.to_string() };
        let delay = {
            let st = self.lock();
            st.lookup(id)
                .ok()
                .and_then(|i| st.start_delays.get(&st.containers[i].name).copied())
                .unwrap_or_default()
        };
        self.op(call, |st, now| {
            let idx = st.find(id, &format!("start container {id}"))?;
            if let Some(j) = st.containers[idx].joined.clone()
                && !st.lookup(&j).is_ok_and(|h| st.containers[h].running)
            {
                return Err(EngineError::Api {
                    what: format!("start container {id}"),
                    message: format!("cannot join network of a non running container: {j}"),
                });
            }
            if !st.containers[idx].running {
                st.run(idx, now);
                st.emit(idx, "start", None, now);
            }
            Ok(())
        })?;
        tokio::time::sleep(delay).await;
        Ok(())
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let call = Call::Stop {
            id: id.to_string(),
            grace,
        };
        self.op(call, |st, now| {
            let idx = st.find(id, &format!("stop container {id}"))?;
            if !st.containers[idx].running {
                return Ok(());
            }
            let code =
                State::by_container(&st.stop_exit_codes, &st.containers[idx], str::to_string)
                    .copied()
                    .unwrap_or(0);
            st.end(idx, code, now);
            st.emit(idx, "die", Some(code), now);
            st.emit(idx, "stop", None, now);
            Ok(())
        })?;
        let cleanup = self.lock().stop_cleanup;
        if !cleanup.is_zero() {
            tokio::time::sleep(cleanup).await;
        }
        Ok(())
    }

    async fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let call = Call::Remove {
            id: id.to_string(),
            force,
        };
        self.op(call, |st, now| {
            let what = format!("remove container {id}");
            let idx = st.find(id, &what)?;
            if st.containers[idx].running {
                if !force {
                    return Err(EngineError::Api {
                        what,
                        message: format!(
                            "cannot remove container \"/{}\": container is running: stop the \
                             container before removing or force remove",
                            st.containers[idx].name
                        ),
                    });
                }
                st.end(idx, 137, now);
                st.emit(idx, "die", Some(137), now);
            }
            st.emit(idx, "destroy", None, now);
            st.containers.remove(idx);
            Ok(())
        })
    }

    async fn rename_container(&self, id: &str, new_name: &str) -> Result<()> {
        let call = Call::Rename {
            id: id.to_string(),
            new_name: new_name.to_string(),
        };
        self.op(call, |st, now| {
            let what = format!("rename container {id}");
            let idx = st.find(id, &what)?;
            let old = st.containers[idx].name.clone();
            if new_name.strip_prefix('/').unwrap_or(new_name) == old {
                return Err(EngineError::Api {
                    what,
                    message: "Renaming a container with the same name as its current name".into(),
                });
            }
            if new_name.is_empty() {
                return Err(EngineError::Api {
                    what,
                    message: "Neither old nor new names may be empty".into(),
                });
            }
            let new = st.free_name(new_name, &what)?;
            st.containers[idx].name = new;
            st.emit_with(idx, "rename", None, now, &[("oldName", &format!("/{old}"))]);
            Ok(())
        })
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerDetails> {
        let call = Call::Inspect { id: id.to_string() };
        self.op(call, |st, _| {
            let idx = st.find(id, &format!("container {id}"))?;
            Ok(st.containers[idx].details())
        })
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        let call = Call::ImageExists {
            image: image.to_string(),
        };
        self.op(call, |st, _| {
            Ok(st.images.contains(&normalise_image(image)))
        })
    }

    async fn build_image(
        &self,
        _context: Vec<u8>,
        spec: &crate::BuildSpec,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<()> {
        let call = Call::Pull {
            image: spec.tag.clone(),
        };
        progress(format!("Successfully tagged {}", spec.tag));
        self.op(call, |st, _| {
            st.images.insert(normalise_image(&spec.tag));
            Ok(())
        })
    }

    async fn pull_image(
        &self,
        image: &str,
        _auth: Option<&crate::RegistryAuth>,
        _progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<()> {
        let call = Call::Pull {
            image: image.to_string(),
        };
        self.op(call, |st, _| {
            st.images.insert(normalise_image(image));
            Ok(())
        })
    }

    fn events(&self, label: &str, value: &str) -> BoxStream<'static, Result<Event>> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let subscriber = Subscriber {
            label: label.to_string(),
            value: value.to_string(),
            tx,
        };
        let subscribed = self.op(Call::Events, |st, _| {
            st.subscribers.push(subscriber);
            Ok(())
        });
        match subscribed {
            Ok(()) => futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed(),
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        }
    }

    async fn exec_stream(&self, id: &str, cmd: &[String], stdin: bool) -> Result<ExecStream> {
        let call = Call::Exec {
            id: id.to_string(),
            cmd: cmd.to_vec(),
        };
        let what = format!("exec in {id}");
        let program = cmd
            .first()
            .and_then(|c| c.split_whitespace().next())
            .unwrap_or_default()
            .to_string();
        let (container, scripted, handler, delay) = self.op(call, |st, _| {
            let idx = st.running_one(id, &what)?;
            let c = st.containers[idx].clone();
            let scripted =
                State::by_container(&st.exec_table, &c, |k| (k.to_string(), program.clone()))
                    .cloned();
            Ok((c, scripted, st.exec_handler.clone(), st.exec_delay))
        })?;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        // The handler runs without the lock: it may call the fake.
        let result = scripted
            .or_else(|| handler.and_then(|h| h(&container, cmd)))
            .unwrap_or(ExecResult {
                exit_code: 0,
                stdout: Vec::new(),
                stderr: Vec::new(),
            });
        let input = Arc::new(Mutex::new(Vec::new()));
        let exec_id = {
            let mut st = self.lock();
            let exec_id = hex_id(st.next_serial());
            st.execs.push(ExecRecord {
                exec_id: exec_id.clone(),
                container_id: container.id.clone(),
                cmd: cmd.to_vec(),
                exit_code: result.exit_code,
                stdin: input.clone(),
            });
            exec_id
        };
        let mut output = Vec::new();
        if !result.stdout.is_empty() {
            output.push(Ok(Output::Stdout(result.stdout)));
        }
        if !result.stderr.is_empty() {
            output.push(Ok(Output::Stderr(result.stderr)));
        }
        Ok(ExecStream {
            exec_id,
            output: futures::stream::iter(output).boxed(),
            input: stdin.then(|| Box::pin(StdinRecorder(input)) as Pin<Box<_>>),
        })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<i64> {
        let st = self.lock();
        if st.unreachable {
            return Err(unreachable_error());
        }
        st.execs
            .iter()
            .find(|e| e.exec_id == exec_id)
            .map(|e| e.exit_code)
            .ok_or_else(|| EngineError::NotFound {
                what: format!("exec {exec_id}"),
            })
    }

    fn logs(
        &self,
        id: &str,
        tail: Option<u64>,
        _follow: bool,
    ) -> BoxStream<'static, Result<Output>> {
        let call = Call::Logs { id: id.to_string() };
        let lines = self.op(call, |st, _| {
            let idx = st.find(id, &format!("logs of {id}"))?;
            let lines = State::by_container(&st.logs, &st.containers[idx], str::to_string)
                .cloned()
                .unwrap_or_default();
            let skip = match tail {
                Some(n) => lines
                    .len()
                    .saturating_sub(usize::try_from(n).unwrap_or(usize::MAX)),
                None => 0,
            };
            Ok(lines.into_iter().skip(skip).map(Ok).collect::<Vec<_>>())
        });
        match lines {
            Ok(lines) => futures::stream::iter(lines).boxed(),
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        }
    }
}

/// An exec's standard input: keeps what is written for [`FakeEngine::execs`].
struct StdinRecorder(Arc<Mutex<Vec<u8>>>);

impl tokio::io::AsyncWrite for StdinRecorder {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        lock(&self.0).extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A poisoned lock (a panic elsewhere while it was held) still guards consistent data: every
/// change under it is a handful of plain assignments.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unreachable_error() -> EngineError {
    EngineError::Unreachable("fake engine: connection refused".into())
}

/// `EngineError` is not `Clone`; an injected error is answered more than once.
fn clone_error(e: &EngineError) -> EngineError {
    match e {
        EngineError::Unreachable(m) => EngineError::Unreachable(m.clone()),
        EngineError::NotFound { what } => EngineError::NotFound { what: what.clone() },
        EngineError::Api { what, message } => EngineError::Api {
            what: what.clone(),
            message: message.clone(),
        },
    }
}

fn to_labels(labels: &[(&str, &str)]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn has_label(labels: &BTreeMap<String, String>, label: &str, value: &str) -> bool {
    labels.get(label).is_some_and(|v| v == value)
}

/// Docker's rule: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `redis`, `redis:latest` and `docker.io/library/redis:latest` are one image.
fn normalise_image(image: &str) -> String {
    let (name, tag) = crate::split_reference(image);
    let name = name.strip_prefix("docker.io/").unwrap_or(&name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    if tag.is_empty() {
        name.to_string()
    } else {
        format!("{name}:{tag}")
    }
}

/// A random-looking, deterministic 64-hex-digit id (splitmix64 of the serial).
fn hex_id(serial: u64) -> String {
    let mut x = serial.wrapping_mul(0x2545_f491_4f6c_dd1d);
    (0..4)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("{:016x}", z ^ (z >> 31))
        })
        .collect()
}

fn unix_nanos(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `2026-11-28T02:00:00.123456789Z`, as Docker writes `StartedAt` (times before 1970 are
/// written as 1970).
fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_nanos()
    )
}

/// Days since 1970-01-01 → (year, month, day) in the proleptic Gregorian calendar (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = "berth.stack";

    /// 2026-11-28T02:00:00Z
    fn base() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_831_200)
    }

    fn spec(name: &str, labelled: bool) -> ContainerSpec {
        let mut labels = BTreeMap::from([("berth.service".to_string(), name.to_string())]);
        if labelled {
            labels.insert(STACK.into(), "prod".into());
        }
        ContainerSpec {
            name: name.into(),
            image: "bot:1".into(),
            labels,
            network: Some(("berth".into(), vec![name.into()])),
            ..Default::default()
        }
    }

    fn fake() -> Arc<FakeEngine> {
        let f = FakeEngine::new_at(base());
        f.add_image("bot:1");
        f.add_network("berth", &[(STACK, "prod")]);
        f
    }

    fn actions(events: &[Event]) -> Vec<(&str, Option<i64>)> {
        events
            .iter()
            .map(|e| (e.action.as_str(), e.exit_code))
            .collect()
    }

    /// Everything the stream holds now, and whether it has ended.
    fn drain(s: &mut BoxStream<'static, Result<Event>>) -> (Vec<Event>, bool) {
        let mut got = Vec::new();
        loop {
            match futures::FutureExt::now_or_never(s.next()) {
                Some(Some(e)) => got.push(e.expect("event")),
                Some(None) => return (got, true),
                None => return (got, false),
            }
        }
    }

    #[test]
    fn times_are_written_like_docker() {
        assert_eq!(rfc3339_nanos(base()), "2026-11-28T02:00:00.000000000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_800_000_000, 123_456_789);
        assert_eq!(rfc3339_nanos(t), "2027-01-15T08:00:00.123456789Z");
        assert_eq!(
            rfc3339_nanos(SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn ids_look_like_docker_ids() {
        let a = hex_id(1);
        assert_eq!(a.len(), 64);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        );
        assert_ne!(a[..12], hex_id(2)[..12]);
    }

    #[tokio::test(start_paused = true)]
    async fn create_start_stop_rename_remove_round_trip() {
        let f = fake();
        // What the daemon holds.
        let _: Arc<dyn Engine> = f.clone();
        let id = f.create_container(&spec("bot", true)).await.unwrap();
        let created = f.container("bot").unwrap();
        assert_eq!(
            (created.id.as_str(), created.status()),
            (id.as_str(), "created")
        );
        assert_eq!(created.started_at, ZERO_TIME);

        f.start_container("bot").await.unwrap();
        let d = f.inspect_container(&id).await.unwrap();
        assert!(d.running);
        assert_eq!(d.status, "running");
        assert_eq!(
            d.started_at.as_deref(),
            Some("2026-11-28T02:00:00.000000000Z")
        );
        assert_eq!(d.finished_at.as_deref(), Some(ZERO_TIME));
        assert!(d.pid.is_some());
        assert_eq!(
            d.ips,
            BTreeMap::from([("berth".into(), "172.30.0.2".parse().unwrap())])
        );
        assert_eq!(f.running_containers().len(), 1);

        f.stop_container(&id, Duration::from_secs(10))
            .await
            .unwrap();
        let d = f.inspect_container("bot").await.unwrap();
        assert_eq!(
            (d.running, d.status.as_str(), d.exit_code),
            (false, "exited", Some(0))
        );
        assert!(d.ips.is_empty() && d.pid.is_none());
        assert_ne!(d.finished_at.as_deref(), Some(ZERO_TIME));

        f.rename_container("bot", "bot-old").await.unwrap();
        assert!(f.container("bot").is_none());
        assert_eq!(f.container("bot-old").map(|c| c.id), Some(id.clone()));
        f.remove_container("bot-old", false).await.unwrap();
        assert!(f.container(&id).is_none());
        assert!(f.all_containers().is_empty());

        assert_eq!(
            f.calls(),
            vec![
                Call::CreateContainer {
                    name: "bot".into(),
                    image: "bot:1".into()
                },
                Call::Start { id: "bot".into() },
                Call::Inspect { id: id.clone() },
                Call::Stop {
                    id: id.clone(),
                    grace: Duration::from_secs(10)
                },
                Call::Inspect { id: "bot".into() },
                Call::Rename {
                    id: "bot".into(),
                    new_name: "bot-old".into()
                },
                Call::Remove {
                    id: "bot-old".into(),
                    force: false
                },
            ]
        );
        f.clear_calls();
        assert!(f.calls().is_empty());
    }

    #[tokio::test]
    async fn docker_refusals() {
        let f = fake();
        f.create_container(&spec("bot", true)).await.unwrap();
        let e = f.create_container(&spec("bot", true)).await.unwrap_err();
        assert!(
            matches!(&e, EngineError::Api { message, .. }
                if message.starts_with("Conflict. The container name \"/bot\" is already in use")),
            "{e}"
        );
        let mut other = spec("other", true);
        other.image = "absent:1".into();
        assert!(f.create_container(&other).await.unwrap_err().is_not_found());
        other.image = "bot:1".into();
        other.network = Some(("nowhere".into(), vec![]));
        assert!(f.create_container(&other).await.unwrap_err().is_not_found());
        assert!(
            f.start_container("nobody")
                .await
                .unwrap_err()
                .is_not_found()
        );
        assert!(f.inspect_container("").await.unwrap_err().is_not_found());

        f.start_container("bot").await.unwrap();
        assert!(matches!(
            f.remove_container("bot", false).await,
            Err(EngineError::Api { .. })
        ));
        f.create_container(&spec("web", true)).await.unwrap();
        assert!(matches!(
            f.rename_container("web", "bot").await,
            Err(EngineError::Api { .. })
        ));

        assert!(!f.image_exists("redis").await.unwrap());
        f.pull_image("redis", None, &|_| {}).await.unwrap();
        assert!(f.image_exists("redis:latest").await.unwrap());
        assert!(f.has_image("docker.io/library/redis:latest"));
    }

    #[tokio::test]
    async fn events_arrive_in_order_with_labels_and_only_for_the_label() {
        let f = fake();
        let id = f.create_container(&spec("bot", true)).await.unwrap();
        f.create_container(&spec("stranger", false)).await.unwrap();
        let mut events = f.events(STACK, "prod");
        assert_eq!(f.event_subscribers(), 1);

        f.start_container("stranger").await.unwrap();
        f.start_container("bot").await.unwrap();
        f.stop_container("bot", Duration::from_secs(5))
            .await
            .unwrap();
        // Already stopped: Docker's 304, no event.
        f.stop_container("bot", Duration::from_secs(5))
            .await
            .unwrap();
        f.remove_container("bot", false).await.unwrap();

        let (got, ended) = drain(&mut events);
        assert!(!ended);
        assert_eq!(
            actions(&got),
            vec![
                ("start", None),
                ("die", Some(0)),
                ("stop", None),
                ("destroy", None)
            ]
        );
        for e in &got {
            assert_eq!(e.container_id, id);
            assert_eq!(e.labels.get(STACK).map(String::as_str), Some("prod"));
            assert_eq!(
                e.labels.get("berth.service").map(String::as_str),
                Some("bot")
            );
            assert_eq!(e.labels.get("name").map(String::as_str), Some("bot"));
        }
        assert_eq!(got[1].labels.get("exitCode").map(String::as_str), Some("0"));

        f.close_event_streams();
        assert_eq!(drain(&mut events), (vec![], true));
        assert_eq!(f.event_subscribers(), 0);
    }

    #[tokio::test]
    async fn force_remove_kills_then_destroys() {
        let f = fake();
        f.add_container(spec("bot", true), true).unwrap();
        f.set_stop_exit_code("bot", 143);
        let mut events = f.events(STACK, "prod");
        f.remove_container("bot", true).await.unwrap();
        let (got, _) = drain(&mut events);
        assert_eq!(actions(&got), vec![("die", Some(137)), ("destroy", None)]);
    }

    #[tokio::test]
    async fn stop_exit_code_can_be_scripted() {
        let f = fake();
        f.add_container(spec("bot", true), true).unwrap();
        f.set_stop_exit_code("bot", 143);
        f.stop_container("bot", Duration::ZERO).await.unwrap();
        assert_eq!(f.container("bot").map(|c| c.exit_code), Some(143));
    }

    #[tokio::test]
    async fn lookup_by_name_id_or_unique_prefix() {
        let f = fake();
        let id = f.add_container(spec("bot", true), false).unwrap();
        let other = f.add_container(spec("db", true), false).unwrap();
        let prefix = (1..=id.len())
            .map(|n| &id[..n])
            .find(|p| !other.starts_with(p))
            .unwrap();
        for key in [id.as_str(), "bot", "/bot", &id[..12], prefix] {
            assert_eq!(f.inspect_container(key).await.unwrap().id, id, "{key}");
            assert_eq!(f.container(key).map(|c| c.id), Some(id.clone()), "{key}");
        }
        assert!(
            f.inspect_container("nope")
                .await
                .unwrap_err()
                .is_not_found()
        );
        assert!(f.container("nope").is_none());
        // One hex digit both ids share, if any, is ambiguous.
        let shared = (b'0'..=b'9')
            .chain(b'a'..=b'f')
            .map(|b| (b as char).to_string())
            .find(|p| id.starts_with(p.as_str()) && other.starts_with(p.as_str()));
        if let Some(p) = shared {
            assert!(matches!(
                f.inspect_container(&p).await,
                Err(EngineError::Api { .. })
            ));
        }
    }

    #[tokio::test]
    async fn injected_error_answers_one_start_of_one_container_once() {
        let f = fake();
        let bot = f.add_container(spec("bot", true), false).unwrap();
        f.add_container(spec("db", true), false).unwrap();
        f.inject_error(
            CallMatch::once(CallKind::Start).on("bot"),
            EngineError::Api {
                what: "start container bot".into(),
                message: "injected".into(),
            },
        );
        f.start_container("db").await.unwrap();
        // Matched through the id although the matcher names the container.
        let e = f.start_container(&bot).await.unwrap_err();
        assert!(matches!(&e, EngineError::Api { message, .. } if message == "injected"));
        assert!(!f.container("bot").unwrap().running);
        f.start_container("bot").await.unwrap();
        assert!(f.container("bot").unwrap().running);
        assert_eq!(
            f.calls(),
            vec![
                Call::Start { id: "db".into() },
                Call::Start { id: bot.clone() },
                Call::Start { id: "bot".into() },
            ]
        );

        f.inject_error(
            CallMatch::always(CallKind::Ping),
            EngineError::Unreachable("down".into()),
        );
        for _ in 0..3 {
            assert!(f.ping().await.unwrap_err().is_unreachable());
        }
        f.clear_errors();
        f.ping().await.unwrap();

        f.inject_error(
            CallMatch::times(CallKind::Pull, 2),
            EngineError::Api {
                what: "pulling x".into(),
                message: "timeout".into(),
            },
        );
        assert!(f.pull_image("x", None, &|_| {}).await.is_err());
        assert!(f.pull_image("x", None, &|_| {}).await.is_err());
        f.pull_image("x", None, &|_| {}).await.unwrap();
    }

    #[tokio::test]
    async fn unreachable_fails_every_call_and_ends_event_streams() {
        let f = fake();
        let mut events = f.events(STACK, "prod");
        f.set_unreachable(true);
        let item = events.next().await.expect("an error before the end");
        assert!(item.unwrap_err().is_unreachable());
        assert!(events.next().await.is_none());

        assert!(f.ping().await.unwrap_err().is_unreachable());
        assert!(
            f.containers(STACK, "prod")
                .await
                .unwrap_err()
                .is_unreachable()
        );
        let mut again = f.events(STACK, "prod");
        assert!(again.next().await.unwrap().unwrap_err().is_unreachable());
        assert!(again.next().await.is_none());

        f.set_unreachable(false);
        f.ping().await.unwrap();
        assert_eq!(
            f.calls(),
            vec![
                Call::Events,
                Call::Ping,
                Call::Containers,
                Call::Events,
                Call::Ping
            ]
        );
    }

    #[tokio::test]
    async fn crash_and_oom_die_without_stop() {
        let f = fake();
        f.add_container(spec("bot", true), true).unwrap();
        f.add_container(spec("db", true), true).unwrap();
        let mut events = f.events(STACK, "prod");
        f.crash("bot", 3).unwrap();
        f.oom("db").unwrap();
        let (got, _) = drain(&mut events);
        assert_eq!(
            actions(&got),
            vec![("die", Some(3)), ("oom", None), ("die", Some(137))]
        );
        let bot = f.container("bot").unwrap();
        assert_eq!(
            (bot.running, bot.exit_code, bot.oom_killed),
            (false, 3, false)
        );
        let db = f.inspect_container("db").await.unwrap();
        assert_eq!((db.exit_code, db.oom_killed), (Some(137), true));
        assert!(f.crash("bot", 1).is_err(), "not running");
        assert!(f.crash("nobody", 1).unwrap_err().is_not_found());
        // Starting again clears the last run's outcome.
        f.start_container("db").await.unwrap();
        let db = f.inspect_container("db").await.unwrap();
        assert_eq!((db.exit_code, db.oom_killed), (Some(0), false));
    }

    #[tokio::test(start_paused = true)]
    async fn paused_time_moves_the_clock() {
        let f = fake();
        f.add_container(spec("bot", true), false).unwrap();
        let mut events = f.events(STACK, "prod");
        tokio::time::advance(Duration::from_millis(1500)).await;
        f.start_container("bot").await.unwrap();
        tokio::time::advance(Duration::from_secs(90)).await;
        f.crash("bot", 1).unwrap();

        let bot = f.container("bot").unwrap();
        assert_eq!(bot.started_at, "2026-11-28T02:00:01.500000000Z");
        assert_eq!(bot.finished_at, "2026-11-28T02:01:31.500000000Z");
        let (got, _) = drain(&mut events);
        let nanos = |s: u64, ms: u64| unix_nanos(base() + Duration::from_millis(s * 1000 + ms));
        assert_eq!(got[0].time_nanos, nanos(1, 500));
        assert_eq!(got[1].time_nanos, nanos(91, 500));
        assert_eq!(f.now(), base() + Duration::from_millis(91_500));
    }

    #[tokio::test]
    async fn exec_answers_from_the_table_the_handler_or_the_default() {
        let f = fake();
        f.add_container(spec("db", true), true).unwrap();
        f.add_container(spec("bot", true), false).unwrap();
        f.script_exec(
            "db",
            "pg_isready",
            ExecResult {
                exit_code: 2,
                stdout: b"no response\n".to_vec(),
                stderr: Vec::new(),
            },
        );
        f.set_exec_handler(|c, cmd| {
            (cmd[0] == "pg_dump").then(|| ExecResult {
                exit_code: 0,
                stdout: format!("-- dump of {}\n", c.name).into_bytes(),
                stderr: b"warning\n".to_vec(),
            })
        });
        let cmd = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();

        let r = f.exec("db", &cmd("pg_isready -U x")).await.unwrap();
        assert_eq!(
            (r.exit_code, r.stdout.as_slice()),
            (2, &b"no response\n"[..])
        );
        let r = f.exec("db", &cmd("pg_dump app")).await.unwrap();
        assert_eq!(
            (r.exit_code, r.stdout.as_slice(), r.stderr.as_slice()),
            (0, &b"-- dump of db\n"[..], &b"warning\n"[..])
        );
        let r = f.exec("db", &cmd("true")).await.unwrap();
        assert_eq!(
            r,
            ExecResult {
                exit_code: 0,
                stdout: vec![],
                stderr: vec![]
            }
        );
        assert!(matches!(
            f.exec("bot", &cmd("true")).await,
            Err(EngineError::Api { .. })
        ));

        let mut s = f.exec_stream("db", &cmd("psql"), true).await.unwrap();
        let mut input = s.input.take().expect("stdin asked for");
        tokio::io::AsyncWriteExt::write_all(&mut input, b"SELECT 1;")
            .await
            .unwrap();
        tokio::io::AsyncWriteExt::shutdown(&mut input)
            .await
            .unwrap();
        assert_eq!(f.exec_exit_code(&s.exec_id).await.unwrap(), 0);
        let last = f.execs().pop().unwrap();
        assert_eq!((last.cmd, last.stdin), (cmd("psql"), b"SELECT 1;".to_vec()));
        assert!(f.exec_exit_code("nope").await.unwrap_err().is_not_found());

        let execs = f
            .calls()
            .into_iter()
            .filter(|c| c.kind() == CallKind::Exec)
            .count();
        assert_eq!(execs, 5);
    }

    #[tokio::test]
    async fn logs_are_scripted_and_tailed() {
        let f = fake();
        let id = f.add_container(spec("bot", true), true).unwrap();
        let line = |s: &str| Output::Stdout(format!("{s}\n").into_bytes());
        assert!(f.logs("bot", None, false).next().await.is_none());
        f.set_logs(
            &id,
            vec![line("a"), line("b"), Output::Stderr(b"c\n".to_vec())],
        );
        let all: Vec<_> = f.logs("bot", None, true).collect().await;
        assert_eq!(all.len(), 3);
        let tail: Vec<_> = f
            .logs("bot", Some(2), false)
            .map(|o| o.unwrap())
            .collect()
            .await;
        assert_eq!(tail, vec![line("b"), Output::Stderr(b"c\n".to_vec())]);
        let missing: Vec<_> = f.logs("nobody", None, false).collect().await;
        assert!(missing[0].as_ref().unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn listings_filter_by_label() {
        let f = fake();
        f.add_volume("pgdata", &[(STACK, "prod")]);
        f.add_volume("scratch", &[]);
        f.create_volume("more", &BTreeMap::from([(STACK.into(), "prod".into())]))
            .await
            .unwrap();
        f.create_network("berth", &BTreeMap::new()).await.unwrap();
        f.add_container(spec("bot", true), true).unwrap();
        f.add_container(spec("stranger", false), true).unwrap();
        f.add_container(spec("db", true), false).unwrap();

        let vols = f.volumes(STACK, "prod").await.unwrap();
        assert_eq!(vols, BTreeSet::from(["more".into(), "pgdata".into()]));
        let nets = f.networks(STACK, "prod").await.unwrap();
        assert_eq!(nets, BTreeSet::from(["berth".into()]));
        let list = f.containers(STACK, "prod").await.unwrap();
        let names: Vec<_> = list.iter().map(|c| (c.name.as_str(), c.running)).collect();
        assert_eq!(names, vec![("db", false), ("bot", true)]);
    }
}
