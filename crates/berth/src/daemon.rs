//! `berth run`: the daemon's start-up, its tasks, signals, and shutdown.
//!
//! Start-up builds the shared [`Hub`] with the config in force (the file plus deployed
//! images), starts one task per job and waits. Every task is joined: if one ends or
//! panics, berth exits non-zero so that systemd restarts it (and adoption takes over).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use berth_config::Config;
use berth_core::deploy::DeployState;
use berth_engine::{DockerEngine, Engine};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::hub::{Hub, mono_now};
use crate::io::statefile;
use crate::notify;
use crate::serve::{admin, http};
use crate::tasks::backups::Backups;
use crate::tasks::deployer::Deployer;
use crate::tasks::reconciler::Reconciler;
use crate::tasks::restarter::Restarter;
use crate::tasks::{alerts, offsite, prober, resources};

/// How long the HTTP server gets to finish its answers at shutdown.
const HTTP_DRAIN: Duration = Duration::from_secs(2);

/// The signals the daemon answers, registered before anything else is done: until a
/// handler is in place, a SIGHUP (reload) kills the process, its default action.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must be called inside the runtime (tokio's signal driver).
    pub fn register() -> anyhow::Result<Self> {
        let reg = |kind: SignalKind| signal(kind).context("installing a signal handler");
        Ok(Self {
            term: reg(SignalKind::terminate())?,
            int: reg(SignalKind::interrupt())?,
            hup: reg(SignalKind::hangup())?,
        })
    }
}

pub async fn run(file: Config, path: PathBuf, signals: Signals) -> anyhow::Result<()> {
    info!(config = %file.path.display(), project = %file.supervisor.project, services = file.services.len(), "berth starting");
    for w in &file.warnings {
        warn!(warning = %w, "config");
    }
    let state_dir = file.supervisor.state_dir.clone();
    statefile::private_dir(&state_dir)?;
    let listener = http::bind(file.supervisor.health_listen).await?;
    let Signals {
        mut term,
        mut int,
        mut hup,
    } = signals;

    // Connects on first use: while the engine is down berth still serves /health and
    // alerts, and converges as soon as it answers.
    let engine: Arc<dyn Engine> = Arc::new(DockerEngine::lazy(&DockerEngine::default_socket()));
    let admin_path = file.supervisor.admin_socket.clone();
    let admin_listener = admin::bind(&admin_path).await?;
    // Present while berth runs; found at start-up, the last berth did not stop cleanly.
    let marker = state_dir.join("running");
    let unclean = marker.exists();
    if unclean {
        info!("the previous berth did not stop cleanly");
    }
    statefile::write_atomic(&marker, std::process::id().to_string().as_bytes())?;

    // A damaged deploys.json is kept (and a copy set aside): berth then changes no
    // container until a person fixes or removes it, rather than recreating the bot on
    // the file's old image.
    let (mut deploys, damaged) = match statefile::load_deploys(&state_dir) {
        Ok(d) => (d, None),
        Err(e) => {
            let why = match statefile::keep_damaged(&state_dir, SystemTime::now()) {
                Ok(copy) => format!("{e:#} (a copy is kept as {})", copy.display()),
                Err(c) => format!("{e:#} (no copy could be kept: {c:#})"),
            };
            (DeployState::default(), Some(why))
        }
    };
    let (cfg, dropped) = deploys.apply(file.clone());
    if dropped
        && damaged.is_none()
        && let Err(e) = statefile::save_deploys(&state_dir, &deploys)
    {
        warn!(error = %format!("{e:#}"), "saving the deploy state");
    }
    let hub = Hub::new(engine, cfg);
    // Only an ordering hint for starts: a damaged file is reported and forgotten.
    match statefile::load_start_times(&state_dir) {
        Ok(t) => hub.set_start_times(t),
        Err(e) => warn!(error = %format!("{e:#}"), "reading the start times"),
    }
    let offsite_wake = Arc::new(Notify::new());
    let backups = Backups::new(hub.clone(), offsite_wake.clone());
    let deployer = Deployer::new(
        hub.clone(),
        backups.clone(),
        file,
        damaged.map_or(Ok(deploys), Err),
    );
    // What `berth stop` held stays held: the first convergence must not start it.
    deployer.restore_held();
    let (restarter, restarter_task) = Restarter::start(hub.clone());
    deployer.set_restarter(restarter.clone());
    let reconciler = Reconciler::new(hub.clone(), restarter.clone(), deployer.clone());

    let (shutdown_tx, mut shutdown_rx) = tokio::sync::watch::channel(false);
    let (first_tx, mut first_rx) = tokio::sync::oneshot::channel();
    let mut tasks: JoinSet<&'static str> = JoinSet::new();
    tasks.spawn(named("reconciler", reconciler.run(first_tx)));
    tasks.spawn(joined("restarter", restarter_task));
    tasks.spawn(joined("prober", prober::start(hub.clone(), restarter)));
    tasks.spawn(named("deployer", deployer.clone().run()));
    tasks.spawn(named("backups", backups.clone().run()));
    tasks.spawn(named(
        "off-site copies",
        offsite::run(hub.clone(), offsite_wake),
    ));
    tasks.spawn(named("resources", resources::run(hub.clone())));
    tasks.spawn(named("alerts", alerts::run(hub.clone(), unclean)));
    tasks.spawn(named("status", status_loop(hub.clone())));
    let admin = admin::Admin {
        backups: backups.clone(),
        deployer: deployer.clone(),
        config: path.clone(),
    };
    tasks.spawn(async move {
        if let Err(e) = admin::serve(admin_listener, admin).await {
            error!(error = %e, "admin socket failed");
        }
        "admin socket"
    });
    let mut http_shutdown = shutdown_rx.clone();
    let snapshots = hub.subscribe();
    let http = tokio::spawn(http::serve(listener, snapshots, async move {
        let _ = http_shutdown.wait_for(|s| *s).await;
    }));

    let mut ready = false;
    let mut wedged = false;
    let watchdog = notify::watchdog_interval();
    let mut wd_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let summary = |hub: &Hub| hub.read(|s| s.summary(SystemTime::now()));
    let outcome = loop {
        tokio::select! {
            _ = &mut first_rx, if !ready => {
                ready = true;
                let summary = summary(&hub);
                info!(status = %summary, "first convergence done");
                notify::ready(&summary);
            }
            _ = wd_tick.tick(), if watchdog.is_some() => {
                // Pinged only while every core loop shows progress: a wedged loop in a
                // live process gets berth restarted by systemd.
                let stalled = hub.stalled(mono_now());
                if stalled.is_empty() {
                    notify::watchdog();
                    wedged = false;
                } else if !std::mem::replace(&mut wedged, true) {
                    error!(tasks = %stalled.join(", "), "no progress: not pinging the systemd watchdog");
                }
            }
            _ = hup.recv() => {
                notify::reloading();
                if let Err(e) = deployer.reload_from(&path).await {
                    error!(error = %e, "reload rejected; keeping the running config");
                    hub.update(|s| s.config.error = Some(e));
                }
                notify::ready(&summary(&hub));
            }
            Some(ended) = tasks.join_next() => {
                // A core task never ends while berth runs: supervising without it would
                // be a lie. Exit non-zero so systemd restarts berth.
                break match ended {
                    Ok(name) => Err(anyhow::anyhow!("the {name} task stopped unexpectedly")),
                    Err(e) if e.is_panic() => Err(anyhow::anyhow!("a task panicked: {}", panic_text(e.into_panic()))),
                    Err(e) => Err(anyhow::anyhow!("a task was cancelled: {e}")),
                };
            }
            _ = term.recv() => break Ok(()),
            _ = int.recv() => break Ok(()),
        }
    };
    info!("stopping");
    notify::stopping();
    tasks.shutdown().await;
    if outcome.is_ok() && hub.config().supervisor.on_stop == berth_config::OnStop::Stop {
        stop_all(&hub).await;
    }
    let _ = shutdown_tx.send(true);
    let _ = shutdown_rx.borrow_and_update();
    let _ = tokio::time::timeout(HTTP_DRAIN, http).await;
    let _ = std::fs::remove_file(&admin_path);
    if outcome.is_ok() {
        // Only a clean stop clears the marker: after a crash the next start says so.
        let _ = std::fs::remove_file(&marker);
        info!("stopped");
    }
    outcome
}

/// A task's future that answers its name when it ends.
async fn named(name: &'static str, f: impl std::future::Future<Output = ()>) -> &'static str {
    let f = std::pin::pin!(f);
    tokio::select! {
        _ = f => {}
        _ = fault_panic(name) => {}
    }
    name
}

/// Fault injection for the fault cases, in debug builds only: `BERTH_FAULT_PANIC=<task>`
/// makes that task panic two seconds after start. Release builds never panic here.
async fn fault_panic(task: &str) {
    if cfg!(debug_assertions) && std::env::var("BERTH_FAULT_PANIC").is_ok_and(|t| t == task) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        panic!("BERTH_FAULT_PANIC: the {task} task panics on purpose");
    }
    std::future::pending::<()>().await
}

/// A task spawned elsewhere, joined under its name; its panic is passed on.
async fn joined(name: &'static str, h: tokio::task::JoinHandle<()>) -> &'static str {
    if let Err(e) = h.await
        && let Ok(p) = e.try_into_panic()
    {
        std::panic::resume_unwind(p);
    }
    name
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Sends systemd a STATUS= line whenever the one-line summary changes.
async fn status_loop(hub: Arc<Hub>) {
    let mut rx = hub.subscribe();
    let mut last = String::new();
    loop {
        let summary = rx.borrow_and_update().summary(SystemTime::now());
        if summary != last {
            notify::status(&summary);
            last = summary;
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// On shutdown with `on_stop = "stop"`: stop containers, dependants first.
async fn stop_all(hub: &Hub) {
    let cfg = hub.config();
    for name in cfg.start_order().into_iter().rev() {
        if let (Some(id), Some(svc)) = (hub.current_container(&name), cfg.services.get(&name)) {
            info!(service = %name, "stopping");
            if let Err(e) = hub.stop_container(&id, svc.stop_grace_period).await {
                warn!(service = %name, error = %e, "stop failed");
            }
        }
    }
}
