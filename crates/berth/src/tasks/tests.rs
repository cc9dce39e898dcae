//! Fast tests of the tasks against the recording fake engine, in virtual time
//! (`start_paused`): a five-second backoff takes microseconds, and the call log shows the
//! exact order of engine calls.

use std::sync::Arc;
use std::time::Duration;

use berth_config::Config;
use berth_core::deploy::{DeployState, Outcome, Record, Role, Trigger};
use berth_engine::EngineError;
use berth_engine::ExecResult;
use berth_engine::fake::{Call, CallKind, CallMatch, FakeEngine};
use tokio::sync::Notify;

use crate::hub::Hub;
use crate::io::spec;
use crate::tasks::backups::Backups;
use crate::tasks::deployer::{Deployer, Turn};
use crate::tasks::reconciler::Reconciler;
use crate::tasks::restarter::Restarter;

struct Kit {
    fake: Arc<FakeEngine>,
    hub: Arc<Hub>,
    deployer: Arc<Deployer>,
    restarter: Restarter,
    _dir: tempfile::TempDir,
}

/// A stack of project `p` with these `[services.*]` tables, and the state the deployer
/// finds on disk.
fn kit_with(services: &str, deploys: DeployState) -> Kit {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = format!(
        "[supervisor]\nproject = \"p\"\nstate_dir = {:?}\n\n{services}",
        dir.path().join("state")
    );
    let file: Config =
        berth_config::parse_str(&dir.path().join("berth.toml"), &src, &|_| None).expect("config");
    std::fs::create_dir_all(&file.supervisor.state_dir).expect("state dir");
    let fake = FakeEngine::new();
    let mut d = deploys;
    let (cfg, _) = d.apply(file.clone());
    let hub = Hub::new(fake.clone(), cfg);
    let backups = Backups::new(hub.clone(), Arc::new(Notify::new()));
    let deployer = Deployer::new(hub.clone(), backups, file, d);
    let (restarter, _task) = Restarter::start(hub.clone());
    Kit {
        fake,
        hub,
        deployer,
        restarter,
        _dir: dir,
    }
}

fn kit(services: &str) -> Kit {
    kit_with(services, DeployState::default())
}

impl Kit {
    fn reconciler(&self) -> Reconciler {
        Reconciler::new(
            self.hub.clone(),
            self.restarter.clone(),
            self.deployer.clone(),
        )
    }

    /// Waits (in virtual time) until `f` holds, or fails the test after `within`.
    async fn until(&self, within: Duration, what: &str, f: impl Fn(&Kit) -> bool) {
        let r = tokio::time::timeout(within, async {
            while !f(self) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(r.is_ok(), "{what}: not within {within:?}");
    }

    async fn subscribed(&self) {
        self.until(Duration::from_secs(5), "event stream", |k| {
            k.fake.event_subscribers() > 0
        })
        .await;
    }

    fn running(&self, name: &str) -> bool {
        self.fake.container(name).is_some_and(|c| c.running)
    }

    fn starts_of(&self, name: &str) -> usize {
        let id = self.fake.container(name).map(|c| c.id).unwrap_or_default();
        self.fake
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Start { id: i } if *i == id || i == name))
            .count()
    }

    /// The calls that change something, as short strings: containers by their image,
    /// `removed` for one that no longer exists, names as passed.
    fn changes(&self) -> Vec<String> {
        let name_of = |id: &str| {
            self.fake
                .all_containers()
                .into_iter()
                .find(|c| c.id == id)
                .map(|c| c.image)
                .unwrap_or_else(|| {
                    if id.len() == 64 {
                        "removed".into()
                    } else {
                        id.to_string()
                    }
                })
        };
        self.fake
            .calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::CreateContainer { name, image } => Some(format!("create {name} {image}")),
                Call::Start { id } => Some(format!("start {}", name_of(&id))),
                Call::Stop { id, .. } => Some(format!("stop {}", name_of(&id))),
                Call::Remove { id, .. } => Some(format!("remove {}", name_of(&id))),
                Call::Rename { id, new_name } => {
                    Some(format!("rename {} {new_name}", name_of(&id)))
                }
                _ => None,
            })
            .collect()
    }
}

const APP: &str = "[services.app]\nimage = \"app:1\"\n";

#[tokio::test(start_paused = true)]
async fn a_death_leads_to_a_restart_after_the_backoff() {
    let k = kit(APP);
    k.reconciler().converge().await.expect("first pass");
    assert!(k.running("p-app"));
    k.subscribed().await;
    // Quick deaths: 1 s, then 2 s of backoff (initial_backoff doubling).
    for (n, backoff) in [(1, 1000), (2, 2000)] {
        k.fake.crash("p-app", 1).expect("crash");
        tokio::time::sleep(Duration::from_millis(backoff - 100)).await;
        assert!(
            !k.running("p-app"),
            "restarted before its backoff of {backoff} ms"
        );
        assert_eq!(k.starts_of("p-app"), n, "only the first start so far");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(k.running("p-app"), "restarted after {backoff} ms");
        assert_eq!(k.starts_of("p-app"), n + 1);
    }
    let st = k.hub.read(|s| s.services["app"].clone());
    assert_eq!(st.restarts, 2);
    assert!(!st.crashloop);
}

#[tokio::test(start_paused = true)]
async fn a_long_run_restarts_at_once_and_five_quick_deaths_are_a_crash_loop() {
    let k = kit(
        "[services.app]\nimage = \"app:1\"\nrestart = { initial_backoff = \"100ms\", max_backoff = \"100ms\", reset_after = \"60s\" }\n",
    );
    k.reconciler().converge().await.expect("first pass");
    k.subscribed().await;
    tokio::time::sleep(Duration::from_secs(120)).await;
    k.fake.crash("p-app", 1).expect("crash");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(k.running("p-app"), "ran 2 min > reset_after: no backoff");
    for _ in 0..4 {
        k.fake.crash("p-app", 1).expect("crash");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(k.hub.read(|s| s.services["app"].crashloop));
}

#[tokio::test(start_paused = true)]
async fn a_held_service_is_left_alone() {
    let k = kit(APP);
    k.reconciler().converge().await.expect("first pass");
    k.subscribed().await;
    let hold = k.hub.hold(["app"]);
    k.fake.crash("p-app", 1).expect("crash");
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert!(!k.running("p-app"), "the restarter kept off");
    k.reconciler().converge().await.expect("pass");
    assert!(!k.running("p-app"), "the planner kept off");
    assert_eq!(k.starts_of("p-app"), 1);
    drop(hold);
    k.reconciler().converge().await.expect("pass");
    assert!(k.running("p-app"), "released: the next pass starts it");
}

#[tokio::test(start_paused = true)]
async fn an_engine_error_mid_pass_is_retried() {
    let k = kit(APP);
    k.fake.inject_error(
        CallMatch::once(CallKind::CreateContainer),
        EngineError::Api {
            what: "create container p-app".into(),
            message: "boom".into(),
        },
    );
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let r = tokio::spawn(k.reconciler().run(tx));
    k.until(Duration::from_secs(120), "retried", |k| k.running("p-app"))
        .await;
    let creates = k
        .fake
        .calls()
        .iter()
        .filter(|c| c.kind() == CallKind::CreateContainer)
        .count();
    assert_eq!(creates, 2, "one failed, one that worked");
    r.abort();
}

const BOT: &str = "[services.bot]\nimage = \"bot:1\"\nprobe = { exec = { command = [\"check\"] }, interval = \"1s\", start_timeout = \"5s\" }\ndeploy = { health_timeout = \"3s\" }\n";

/// Probes fail in containers of `image`.
fn fail_probes_of(fake: &FakeEngine, image: &'static str) {
    fake.set_exec_handler(move |c, _| {
        (c.image == image).then(|| ExecResult {
            exit_code: 1,
            stdout: Vec::new(),
            stderr: b"not ready".to_vec(),
        })
    });
}

#[tokio::test(start_paused = true)]
async fn a_failed_stop_first_deploy_rolls_back_in_order() {
    let k = kit(BOT);
    k.reconciler().converge().await.expect("first pass");
    assert!(k.running("p-bot"));
    k.fake.add_image("bot:2");
    fail_probes_of(&k.fake, "bot:2");
    k.fake.clear_calls();
    let err = k
        .deployer
        .deploy("bot", "bot:2", false, Turn::Refuse)
        .await
        .expect_err("bot:2 never passes its probe");
    assert!(
        format!("{err:#}").contains("rolled back to bot:1"),
        "{err:#}"
    );
    assert_eq!(
        k.changes(),
        vec![
            // The last deploy's rollback target is parked (there is none here).
            "remove p-bot.previous-old",
            "rename p-bot.previous p-bot.previous-old",
            "rename bot:1 p-bot.previous",
            "create p-bot bot:2",
            // Stop-first: the old poller stops before the new one starts.
            "stop bot:1",
            "start removed",
            // Not healthy within health_timeout: the new one goes, the old comes back.
            "stop removed",
            "remove removed",
            "rename bot:1 p-bot",
            "start bot:1",
        ]
    );
    assert_eq!(
        k.fake.container("p-bot").map(|c| c.image),
        Some("bot:1".into())
    );
    assert!(k.running("p-bot"));
    let rec = k.hub.read(|s| s.deploy["bot"].clone());
    assert_eq!(rec.outcome, Outcome::RolledBack);
    assert!(!k.hub.is_held("bot"), "the hold ended with the deploy");
}

#[tokio::test(start_paused = true)]
async fn a_deploy_that_works_keeps_the_old_container_as_previous() {
    let k = kit(BOT);
    k.reconciler().converge().await.expect("first pass");
    k.fake.add_image("bot:2");
    let rec = k
        .deployer
        .deploy("bot", "bot:2", false, Turn::Refuse)
        .await
        .expect("deployed");
    assert_eq!(rec.outcome, Outcome::Deployed);
    assert_eq!(
        k.fake.container("p-bot").map(|c| c.image),
        Some("bot:2".into())
    );
    let prev = k.fake.container("p-bot.previous").expect("previous kept");
    assert!(!prev.running);
    assert_eq!(
        k.hub.config().services["bot"].image,
        "bot:2",
        "override in force"
    );
    assert_eq!(k.fake.running_containers().len(), 1);
}

/// A deploy of bot:1 → bot:2 was under way when berth died.
fn in_flight() -> DeployState {
    DeployState {
        in_flight: Some(Record {
            service: "bot".into(),
            image: "bot:2".into(),
            previous_image: "bot:1".into(),
            at: "2026-11-28T00:00:00Z".into(),
            outcome: Outcome::InFlight,
            trigger: Trigger::Deploy,
            duration_ms: 0,
            interruption_ms: None,
            reason: None,
            backup: None,
            restored: None,
        }),
        ..DeployState::default()
    }
}

/// Containers of the bot as (role, image, running).
fn seed(k: &Kit, containers: &[(Role, &str, bool)]) {
    let cfg = k.hub.config();
    k.fake.add_network("p", &[("berth.project", "p")]);
    for (role, image, running) in containers {
        let mut svc = cfg.services["bot"].clone();
        svc.image = image.to_string();
        let mut s = spec::container_spec(&cfg, &svc);
        s.name = role.name("p-bot");
        k.fake.add_container(s, *running).expect("seed");
    }
}

fn bots(k: &Kit) -> Vec<(String, String, bool)> {
    let mut v: Vec<_> = k
        .fake
        .all_containers()
        .into_iter()
        .map(|c| (c.name, c.image, c.running))
        .collect();
    v.sort();
    v
}

#[tokio::test(start_paused = true)]
async fn recovery_brings_the_old_container_back_when_berth_died_mid_switch() {
    let k = kit_with(BOT, in_flight());
    seed(
        &k,
        &[
            (Role::Current, "bot:2", true),
            (Role::Previous, "bot:1", false),
            (Role::Parked, "bot:0", false),
        ],
    );
    k.deployer.recover().await.expect("recovered");
    assert_eq!(
        bots(&k),
        vec![
            ("p-bot".into(), "bot:1".into(), false),
            ("p-bot.previous".into(), "bot:0".into(), false),
        ]
    );
    k.reconciler().converge().await.expect("pass");
    assert!(k.running("p-bot"), "the old version runs again");
    assert_eq!(
        k.hub.read(|s| s.deploy["bot"].outcome),
        Outcome::Interrupted
    );
}

#[tokio::test(start_paused = true)]
async fn recovery_drops_a_start_first_deploys_next_container() {
    let k = kit_with(BOT, in_flight());
    seed(
        &k,
        &[(Role::Current, "bot:1", true), (Role::Next, "bot:2", true)],
    );
    k.deployer.recover().await.expect("recovered");
    assert_eq!(bots(&k), vec![("p-bot".into(), "bot:1".into(), true)]);
}

#[tokio::test(start_paused = true)]
async fn recovery_finishes_an_interrupted_rollback_on_the_current_container() {
    let k = kit_with(BOT, in_flight());
    seed(
        &k,
        &[
            (Role::Current, "bot:1", true),
            (Role::RollingBack, "bot:2", false),
        ],
    );
    k.deployer.recover().await.expect("recovered");
    assert_eq!(
        bots(&k),
        vec![
            ("p-bot".into(), "bot:2".into(), false),
            ("p-bot.previous".into(), "bot:1".into(), false),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn recovery_of_a_deploy_that_had_finished_keeps_the_new_version() {
    let mut state = in_flight();
    state.overrides.insert(
        "bot".into(),
        berth_core::deploy::Override {
            image: "bot:2".into(),
            file_image: "bot:1".into(),
            pending: false,
        },
    );
    let k = kit_with(BOT, state);
    seed(
        &k,
        &[
            (Role::Current, "bot:2", true),
            (Role::Previous, "bot:1", false),
        ],
    );
    k.deployer.recover().await.expect("recovered");
    assert_eq!(
        bots(&k),
        vec![
            ("p-bot".into(), "bot:2".into(), true),
            ("p-bot.previous".into(), "bot:1".into(), false),
        ]
    );
}
