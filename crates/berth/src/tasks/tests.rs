//! Fast tests of the tasks against the recording fake engine, in virtual time
//! (`start_paused`): a five-second backoff takes microseconds, and the call log shows the
//! exact order of engine calls.

use std::sync::Arc;
use std::time::Duration;

use berth_config::Config;
use berth_core::deploy::{DeployState, Outcome, Record, Role, Trigger};
use berth_engine::ExecResult;
use berth_engine::fake::{Call, CallKind, CallMatch, FakeEngine};
use berth_engine::{Engine as _, EngineError};
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
    backups: Arc<Backups>,
    restarter: Restarter,
    dir: tempfile::TempDir,
}

/// The config of project `p` with these tables, its state in the test's folder.
fn config_in(dir: &std::path::Path, tables: &str) -> Config {
    let src = format!(
        "[supervisor]\nproject = \"p\"\nstate_dir = {:?}\n\n{tables}",
        dir.join("state")
    );
    let cfg = berth_config::parse_str(&dir.join("berth.toml"), &src, &|_| None).expect("config");
    std::fs::create_dir_all(&cfg.supervisor.state_dir).expect("state dir");
    cfg
}

/// A stack of project `p` with these `[services.*]` (and other) tables, and the state
/// the deployer finds on disk (or why it could not read it).
fn kit_from(tables: &str, deploys: Result<DeployState, String>) -> Kit {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_in(dir.path(), tables);
    let fake = FakeEngine::new();
    let (cfg, deploys) = match deploys {
        Ok(mut d) => (d.apply(file.clone()).0, Ok(d)),
        Err(e) => (file.clone(), Err(e)),
    };
    let hub = Hub::new(fake.clone(), cfg);
    let backups = Backups::new(hub.clone(), Arc::new(Notify::new()));
    let deployer = Deployer::new(hub.clone(), backups.clone(), file, deploys);
    let (restarter, _task) = Restarter::start(hub.clone());
    deployer.set_restarter(restarter.clone());
    Kit {
        fake,
        hub,
        deployer,
        backups,
        restarter,
        dir,
    }
}

fn kit_with(services: &str, deploys: DeployState) -> Kit {
    kit_from(services, Ok(deploys))
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

    /// `berth deploy bot bot:2` without a backup, refused if another deploy runs.
    async fn deploy_bot2(&self) -> anyhow::Result<Record> {
        self.deployer
            .deploy("bot", "bot:2", false, Turn::Refuse)
            .await
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
        .deploy_bot2()
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
    let rec = k.deploy_bot2().await.expect("deployed");
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
    // The switch's timeline, in order, for the history and the bench.
    let steps: Vec<&str> = rec.steps.iter().map(|m| m.step.as_str()).collect();
    assert_eq!(
        steps,
        [
            "stop_requested",
            "stopped",
            "start_requested",
            "running",
            "healthy"
        ]
    );
    assert!(rec.steps.windows(2).all(|w| w[0].unix_ms <= w[1].unix_ms));
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
            steps: Vec::new(),
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

/// A PostgreSQL as far as backups care: databases by name, every SQL statement run, and
/// a rename that can be made to fail.
#[derive(Default)]
struct PgSim {
    dbs: std::sync::Mutex<std::collections::BTreeSet<String>>,
    sql: std::sync::Mutex<Vec<String>>,
    /// Renames of this database fail.
    fail_rename_from: std::sync::Mutex<Option<String>>,
    dumps: std::sync::atomic::AtomicUsize,
}

impl PgSim {
    /// Answers the execs of containers of `image` (`pg_dump`, `psql`, `pg_restore`).
    fn install(
        fake: &FakeEngine,
        image: &'static str,
        then: impl Fn(&str) -> Option<ExecResult> + Send + Sync + 'static,
    ) -> Arc<PgSim> {
        let sim = Arc::new(PgSim::default());
        sim.dbs
            .lock()
            .expect("lock")
            .extend(["postgres".to_string(), "bot".to_string()]);
        let s = sim.clone();
        fake.set_exec_handler(move |c, cmd| {
            if c.image != image {
                return then(&c.image);
            }
            Some(s.run(cmd))
        });
        sim
    }

    fn run(&self, cmd: &[String]) -> ExecResult {
        let ok = |out: &str| ExecResult {
            exit_code: 0,
            stdout: out.as_bytes().to_vec(),
            stderr: Vec::new(),
        };
        match cmd.first().map(String::as_str) {
            Some("pg_dump") => {
                let n = self.dumps.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                ok(&format!("DUMP-{n}"))
            }
            Some("psql") => {
                let sql = cmd.last().cloned().unwrap_or_default();
                self.sql.lock().expect("lock").push(sql.clone());
                let names: Vec<String> = sql
                    .split('"')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_string)
                    .collect();
                let mut dbs = self.dbs.lock().expect("lock");
                if let Some(q) =
                    sql.strip_prefix("SELECT count(*) FROM pg_database WHERE datname = ")
                {
                    let name = q.trim_matches('\'');
                    return ok(if dbs.contains(name) { "1" } else { "0" });
                }
                if sql.starts_with("CREATE DATABASE") {
                    dbs.insert(names[0].clone());
                } else if sql.starts_with("DROP DATABASE IF EXISTS") {
                    dbs.remove(&names[0]);
                } else if sql.starts_with("ALTER DATABASE") {
                    let (from, to) = (&names[0], &names[1]);
                    let refused =
                        self.fail_rename_from.lock().expect("lock").as_ref() == Some(from);
                    if refused || !dbs.contains(from) || dbs.contains(to) {
                        return ExecResult {
                            exit_code: 1,
                            stdout: Vec::new(),
                            stderr: b"ERROR: cannot rename".to_vec(),
                        };
                    }
                    dbs.remove(from);
                    dbs.insert(to.clone());
                }
                ok("")
            }
            _ => ok(""),
        }
    }

    fn renames(&self) -> Vec<String> {
        self.sql
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.starts_with("ALTER DATABASE") || s.starts_with("DROP DATABASE"))
            .cloned()
            .collect()
    }
}

const PG_BOT: &str = "[services.postgres]\nimage = \"pg:1\"\n\n[services.bot]\nimage = \"bot:1\"\ndepends_on = [\"postgres\"]\nprobe = { exec = { command = [\"check\"] }, interval = \"1s\", start_timeout = \"5s\" }\ndeploy = { health_timeout = \"3s\", restore_db_on_rollback = true }\n\n[backup]\nservice = \"postgres\"\nuser = \"bot\"\ndatabase = \"bot\"\nverify = false\n";

/// The PostgreSQL simulation, with probes failing in bot:2.
fn pg_bot(k: &Kit) -> Arc<PgSim> {
    PgSim::install(&k.fake, "pg:1", |image| {
        (image == "bot:2").then(|| ExecResult {
            exit_code: 1,
            stdout: Vec::new(),
            stderr: b"not ready".to_vec(),
        })
    })
}

fn backup_dir(k: &Kit) -> std::path::PathBuf {
    k.hub.config().backup.as_ref().expect("backup").dir.clone()
}

/// Issue 15, item 1: with `restore_db_on_rollback`, a deploy without its own backup is
/// refused, and a rollback restores exactly the backup its deploy took.
#[tokio::test(start_paused = true)]
async fn rollback_can_restore_only_the_backup_its_deploy_took() {
    let k = kit(PG_BOT);
    let pg = pg_bot(&k);
    k.reconciler().converge().await.expect("first pass");
    k.fake.add_image("bot:2");
    // Last night's backup (pruned later today by retention: read it now).
    let old = k.backups.backup_now().await.expect("backup");
    let old_dump = std::fs::read(old.path(&backup_dir(&k))).expect("old");
    k.fake.clear_calls();
    let e = k.deploy_bot2().await.expect_err("--no-backup is refused");
    assert!(
        format!("{e:#}").contains("deploy without --no-backup"),
        "{e:#}"
    );
    assert!(k.changes().is_empty(), "refused before touching anything");

    let e = k
        .deployer
        .deploy("bot", "bot:2", true, Turn::Refuse)
        .await
        .expect_err("bot:2 fails its probe");
    assert!(format!("{e:#}").contains("rolled back to bot:1"), "{e:#}");
    let rec = k.hub.read(|s| s.deploy["bot"].clone());
    assert_eq!(rec.outcome, Outcome::RolledBack);
    let taken = rec.backup.clone().expect("the deploy's backup is recorded");
    assert_ne!(taken, old.id);
    assert_eq!(
        rec.restored.as_deref(),
        Some(taken.as_str()),
        "restored: its own"
    );
    // What pg_restore was fed is that backup's file, not last night's.
    let fed: Vec<Vec<u8>> = k
        .fake
        .execs()
        .into_iter()
        .filter(|x| x.cmd.first().map(String::as_str) == Some("pg_restore"))
        .map(|x| x.stdin)
        .collect();
    let file = std::fs::read(backup_dir(&k).join(format!("{taken}.dump"))).expect("dump");
    assert_eq!(fed, vec![file]);
    assert_ne!(fed[0], old_dump);
    assert!(pg.dbs.lock().expect("lock").contains("bot"));
}

/// Issue 15, item 2: the live database is renamed aside, not dropped, until the restored
/// one is in its place; when that fails, the live one comes back as it was.
#[tokio::test(start_paused = true)]
async fn a_restore_can_be_undone_and_never_leaves_no_live_database() {
    let k = kit(PG_BOT);
    let pg = pg_bot(&k);
    k.reconciler().converge().await.expect("first pass");
    let meta = k.backups.backup_now().await.expect("backup");
    let cfg = k.hub.config();

    *pg.fail_rename_from.lock().expect("lock") = Some("bot_berth_restore".into());
    let e = crate::io::backup::restore_database(k.fake.as_ref(), &cfg, &meta)
        .await
        .expect_err("the swap fails");
    assert!(
        format!("{e:#}").contains("the live one is back as it was"),
        "{e:#}"
    );
    let dbs = pg.dbs.lock().expect("lock").clone();
    assert!(dbs.contains("bot"), "{dbs:?}");
    assert!(
        !dbs.contains("bot_berth_replaced") && !dbs.contains("bot_berth_restore"),
        "{dbs:?}"
    );
    let renames = pg.renames();
    assert!(
        !renames
            .iter()
            .any(|s| s == "DROP DATABASE IF EXISTS \"bot\" WITH (FORCE)"),
        "{renames:?}"
    );
    assert_eq!(
        renames.last().map(String::as_str),
        Some("DROP DATABASE IF EXISTS \"bot_berth_restore\" WITH (FORCE)")
    );
    assert!(
        renames.contains(&"ALTER DATABASE \"bot_berth_replaced\" RENAME TO \"bot\"".to_string())
    );

    // It works the next time, and a safety backup of the replaced data is kept.
    *pg.fail_rename_from.lock().expect("lock") = None;
    let run = tokio::spawn({
        let (tx, _rx) = tokio::sync::oneshot::channel();
        k.reconciler().run(tx)
    });
    let before = crate::io::backup::list(&backup_dir(&k))
        .expect("list")
        .len();
    let done = k.backups.restore(&meta.id).await.expect("restored");
    let safety = done.safety.expect("a safety backup");
    let after = crate::io::backup::list(&backup_dir(&k)).expect("list");
    assert_eq!(after.len(), before + 1);
    assert!(after.iter().any(|m| m.id == safety));
    let renames = pg.renames();
    let i = |s: &str| renames.iter().rposition(|r| r == s).unwrap_or(usize::MAX);
    assert!(
        i("ALTER DATABASE \"bot\" RENAME TO \"bot_berth_replaced\"")
            < i("ALTER DATABASE \"bot_berth_restore\" RENAME TO \"bot\"")
    );
    assert!(
        i("ALTER DATABASE \"bot_berth_restore\" RENAME TO \"bot\"")
            < i("DROP DATABASE IF EXISTS \"bot_berth_replaced\" WITH (FORCE)")
    );
    run.abort();
}

/// Issue 15, item 3: a damaged deploys.json changes no running container until a person
/// fixes or removes it and reloads.
#[tokio::test(start_paused = true)]
async fn a_damaged_deploy_state_changes_no_container_until_fixed() {
    // The file says bot:1; bot:2 was deployed and runs; the record of that is damaged.
    let k = kit_from(
        BOT,
        Err("deploys.json is damaged: EOF while parsing".into()),
    );
    let cfg = k.hub.config();
    k.fake.add_network("p", &[("berth.project", "p")]);
    let mut svc = cfg.services["bot"].clone();
    svc.image = "bot:2".into();
    k.fake
        .add_container(spec::container_spec(&cfg, &svc), true)
        .expect("running bot:2");
    k.fake.clear_calls();
    k.reconciler().converge().await.expect("pass");
    assert!(k.changes().is_empty(), "{:?}", k.changes());
    assert!(k.running("p-bot"));
    let e = k
        .deployer
        .deploy("bot", "bot:3", false, Turn::Refuse)
        .await
        .expect_err("refused");
    assert!(format!("{e:#}").contains("fix or remove the file"), "{e:#}");
    let (overall, why) = k.hub.read(|s| {
        (
            s.overall(std::time::SystemTime::now()),
            s.state_error.clone(),
        )
    });
    assert_eq!(overall, berth_core::snapshot::Overall::Degraded);
    assert!(why.is_some());

    // Still damaged on disk: a reload is refused.
    std::fs::write(k.dir.path().join("state/deploys.json"), "{").expect("write");
    let file = config_in(k.dir.path(), BOT);
    assert!(k.deployer.reload(file.clone()).await.is_err());
    // A person writes it right: bot:2 deployed over the file's bot:1.
    let mut fixed = DeployState::default();
    fixed.overrides.insert(
        "bot".into(),
        berth_core::deploy::Override {
            image: "bot:2".into(),
            file_image: "bot:1".into(),
            pending: false,
        },
    );
    crate::io::statefile::save_deploys(&k.dir.path().join("state"), &fixed).expect("save");
    k.deployer.reload(file).await.expect("reloaded");
    assert!(!k.hub.is_held("bot"));
    assert_eq!(k.hub.read(|s| s.state_error.clone()), None);
    k.reconciler().converge().await.expect("pass");
    assert!(k.changes().is_empty(), "bot:2 adopted: {:?}", k.changes());
}

/// Issue 15, item 7: an admin client that disconnects mid-deploy neither cancels nor
/// wedges it: the deploy ends (here: rolls back) and lets go of the service.
#[tokio::test(start_paused = true)]
async fn an_admin_client_gone_mid_deploy_leaves_no_hold() {
    use tokio::io::AsyncWriteExt;
    let k = kit(BOT);
    k.reconciler().converge().await.expect("first pass");
    k.fake.add_image("bot:2");
    fail_probes_of(&k.fake, "bot:2");
    let sock = k.dir.path().join("admin.sock");
    let listener = crate::serve::admin::bind(&sock).await.expect("bind");
    let server = tokio::spawn(crate::serve::admin::serve(
        listener,
        crate::serve::admin::Admin {
            backups: k.backups.clone(),
            deployer: k.deployer.clone(),
            config: k.dir.path().join("berth.toml"),
        },
    ));
    {
        let mut c = tokio::net::UnixStream::connect(&sock)
            .await
            .expect("connect");
        let body = r#"{"service":"bot","image":"bot:2","backup":false}"#;
        c.write_all(
            format!(
                "POST /deploy HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .expect("send");
        // The client goes away before the answer.
        k.until(Duration::from_secs(5), "deploy started", |k| {
            k.hub.is_held("bot")
        })
        .await;
    }
    k.until(Duration::from_secs(60), "deploy ended", |k| {
        k.hub.read(|s| s.deploy.get("bot").map(|r| r.outcome)) == Some(Outcome::RolledBack)
    })
    .await;
    assert!(!k.hub.is_held("bot"));
    assert_eq!(
        k.fake.container("p-bot").map(|c| c.image),
        Some("bot:1".into())
    );
    assert!(k.running("p-bot"));
    server.abort();
}

/// Issue 15, item 10: a reload that changes the backup schedule takes effect at once
/// (the schedule was read only once).
#[tokio::test]
async fn a_reload_that_changes_the_backup_schedule_takes_effect() {
    let tables = |schedule: &str| {
        PG_BOT.replace(
            "verify = false\n",
            &format!("verify = false\nschedule = {schedule:?}\n"),
        )
    };
    let k = kit(&tables("0 0 1 1 *"));
    let _pg = pg_bot(&k);
    k.reconciler().converge().await.expect("first pass");
    let run = tokio::spawn(k.backups.clone().run());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        k.fake.execs().iter().all(|x| x.cmd[0] != "pg_dump"),
        "none yet: the next is on January 1st"
    );
    // Every second now.
    k.hub
        .set_config(config_in(k.dir.path(), &tables("* * * * * *")));
    k.until(Duration::from_secs(5), "a scheduled backup", |k| {
        k.fake.execs().iter().any(|x| x.cmd[0] == "pg_dump")
    })
    .await;
    assert_eq!(
        k.hub.read(|s| s.backup.period),
        Some(Duration::from_secs(1))
    );
    run.abort();
}

/// Issue 15, item 10: a reload that replaces `[alerts]` ends the old channel's sender;
/// it no longer retries for ever and overwrites the new channel's status.
#[tokio::test]
async fn a_reload_that_replaces_alerts_ends_the_old_sender() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // A webhook receiver that answers 200 to everything.
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = receiver.local_addr().expect("addr").port();
    let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = got.clone();
    let server = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = receiver.accept().await else {
                return;
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = vec![0u8; 65536];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .await;
        }
    });
    // Nothing listens on port 9 of loopback: the old channel fails and retries.
    let k = kit(&format!(
        "{APP}\n[alerts]\nwebhook = {{ url = \"http://127.0.0.1:9/old\" }}\n"
    ));
    let alerts = tokio::spawn(crate::tasks::alerts::run(k.hub.clone(), true));
    k.until(Duration::from_secs(5), "the old channel failed", |k| {
        k.hub
            .read(|s| s.alerts.get("webhook").is_some_and(|c| c.failures > 0))
    })
    .await;
    k.hub.set_config(config_in(
        k.dir.path(),
        &format!("{APP}\n[alerts]\nwebhook = {{ url = \"http://127.0.0.1:{port}/new\" }}\n"),
    ));
    k.hub
        .update(|s| s.config.error = Some("berth.toml:1:1: something to tell".into()));
    k.until(Duration::from_secs(5), "the new channel delivered", |k| {
        k.hub
            .read(|s| s.alerts.get("webhook").is_some_and(|c| c.sent > 0))
    })
    .await;
    // Long enough for the old sender's next retries, had it lived.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let st = k.hub.read(|s| s.alerts["webhook"].clone());
    assert!(st.ok && st.failures == 0, "{st:?}");
    assert!(got.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    alerts.abort();
    server.abort();
}

/// Issue 15, item 11: `deploy.rollback = "manual"` leaves the failed version in place,
/// the old one kept for `berth rollback`.
#[tokio::test(start_paused = true)]
async fn deploy_rollback_manual_is_honoured() {
    let k = kit(&BOT.replace(
        "health_timeout = \"3s\"",
        "health_timeout = \"3s\", rollback = \"manual\"",
    ));
    k.reconciler().converge().await.expect("first pass");
    k.fake.add_image("bot:2");
    fail_probes_of(&k.fake, "bot:2");
    let e = k.deploy_bot2().await.expect_err("failed");
    assert!(
        format!("{e:#}").contains("run `berth rollback bot`"),
        "{e:#}"
    );
    assert_eq!(
        k.fake.container("p-bot").map(|c| c.image),
        Some("bot:2".into())
    );
    assert_eq!(
        k.fake.container("p-bot.previous").map(|c| c.image),
        Some("bot:1".into())
    );
    assert_eq!(k.hub.read(|s| s.deploy["bot"].outcome), Outcome::Failed);
    assert_eq!(k.hub.config().services["bot"].image, "bot:2");
    assert!(!k.hub.is_held("bot"));
}

/// A database and a bot whose probes pass only while their `PASSWORD` env matches what
/// the database was initialised with ("old").
fn db_and_bot(password: &str) -> String {
    format!(
        "[services.db]\nimage = \"db:1\"\nenv = {{ PASSWORD = \"{password}\" }}\nprobe = {{ exec = {{ command = [\"check\"] }}, interval = \"1s\", start_timeout = \"3s\" }}\n\n[services.bot]\nimage = \"bot:1\"\ndepends_on = [\"db\"]\nenv = {{ PASSWORD = \"{password}\" }}\nprobe = {{ exec = {{ command = [\"check\"] }}, interval = \"1s\", start_timeout = \"3s\" }}\n"
    )
}

fn passwords_must_match(fake: &FakeEngine) {
    fake.set_exec_handler(|c, _| {
        (!c.spec.env.iter().any(|e| e == "PASSWORD=old")).then(|| ExecResult {
            exit_code: 1,
            stdout: Vec::new(),
            stderr: b"password authentication failed".to_vec(),
        })
    });
}

/// Issue 21, item 1: a change of settings is applied like a deploy: the old container
/// stays (stopped) until the new one is healthy.
#[tokio::test(start_paused = true)]
async fn a_changed_service_is_replaced_gated_and_keeps_its_old_container() {
    let k = kit(APP);
    k.reconciler().converge().await.expect("first pass");
    let old = k.fake.container("p-app").expect("app").id;
    k.hub.set_config(config_in(
        k.dir.path(),
        "[services.app]\nimage = \"app:1\"\nenv = { MODE = \"new\" }\n",
    ));
    k.fake.clear_calls();
    k.reconciler()
        .converge()
        .await
        .expect("the change goes through");
    assert_eq!(
        k.changes(),
        vec![
            "remove p-app.previous-old",
            "rename p-app.previous p-app.previous-old",
            "rename app:1 p-app.previous",
            "create p-app app:1",
            "stop app:1",
            "start app:1",
        ]
    );
    assert_eq!(k.fake.container("p-app.previous").map(|c| c.id), Some(old));
    assert!(k.running("p-app"));
    assert_eq!(k.fake.running_containers().len(), 1);
    let rec = k.hub.read(|s| s.deploy["app"].clone());
    assert_eq!(
        (rec.outcome, rec.trigger),
        (Outcome::Deployed, Trigger::Change)
    );
    k.fake.clear_calls();
    k.reconciler().converge().await.expect("pass");
    assert!(k.changes().is_empty(), "converged: {:?}", k.changes());
}

/// Issue 21, item 1: a change that cannot work (a new database password on a volume
/// initialised with the old one) is rolled back: the old containers serve on, probed with
/// their own settings, and the change is not tried again until the file changes.
#[tokio::test(start_paused = true)]
async fn a_change_that_cannot_work_is_rolled_back_and_not_retried() {
    let k = kit(&db_and_bot("old"));
    passwords_must_match(&k.fake);
    k.reconciler().converge().await.expect("first pass");
    let (db, bot) = (
        k.fake.container("p-db").expect("db").id,
        k.fake.container("p-bot").expect("bot").id,
    );
    k.hub
        .set_config(config_in(k.dir.path(), &db_and_bot("new")));
    let e = k
        .reconciler()
        .converge()
        .await
        .expect_err("the change fails");
    assert!(format!("{e:#}").contains("1 service(s) not up"), "{e:#}");
    // The old containers run, and are healthy by their own probes.
    assert_eq!(k.fake.container("p-db").map(|c| c.id), Some(db));
    assert_eq!(k.fake.container("p-bot").map(|c| c.id), Some(bot.clone()));
    assert!(k.running("p-db") && k.running("p-bot"));
    assert_eq!(
        k.fake.running_containers().len(),
        2,
        "never two on one volume"
    );
    let rec = k.hub.read(|s| s.deploy["db"].clone());
    assert_eq!(
        (rec.outcome, rec.trigger),
        (Outcome::RolledBack, Trigger::Change)
    );
    let reason = rec.reason.unwrap_or_default();
    assert!(
        reason.starts_with("change to db rolled back: not healthy within 3s"),
        "{reason}"
    );
    assert!(
        reason.contains("password authentication failed"),
        "{reason}"
    );
    // The bot's change, made to go with the database's, was not even tried.
    assert!(
        !k.fake
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Stop { id, .. } if *id == bot)),
        "the bot was never stopped"
    );
    assert!(k.hub.rejected().contains_key("bot"));
    // Settled: nothing more is tried, the services are healthy.
    k.fake.clear_calls();
    k.reconciler().converge().await.expect("settled");
    assert!(k.changes().is_empty(), "{:?}", k.changes());
    assert!(k.hub.read(|s| s.all_healthy()));
    assert_eq!(
        k.hub.settings("db").map(|s| s.env_list()),
        Some(vec!["PASSWORD=old".to_string()])
    );
    // The file goes back to what runs: nothing to replace, nothing rejected.
    k.hub
        .set_config(config_in(k.dir.path(), &db_and_bot("old")));
    k.reconciler().converge().await.expect("back");
    assert!(k.changes().is_empty(), "{:?}", k.changes());
    assert!(k.hub.rejected().is_empty());
}

/// Issue 16, item 5: a secret printed by a probe, a migration or pg_dump never surfaces
/// in /health (what `status` shows too), deploys.json or the errors berth returns.
#[tokio::test(start_paused = true)]
async fn secrets_printed_by_commands_never_surface() {
    const SECRET: &str = "hunter2-very-secret";
    let dir = tempfile::tempdir().expect("tempdir");
    let src = format!(
        "[supervisor]\nproject = \"p\"\nstate_dir = {:?}\n\n[services.postgres]\nimage = \"pg:1\"\nenv = {{ POSTGRES_PASSWORD = \"${{SECRET}}\" }}\n\n[services.app]\nimage = \"app:1\"\nenv = {{ TOKEN = \"${{SECRET}}\" }}\nprobe = {{ exec = {{ command = [\"check\"] }}, interval = \"1s\", start_timeout = \"2s\" }}\ndeploy = {{ migrate = [\"migrate\"] }}\n\n[backup]\nservice = \"postgres\"\nverify = false\n",
        dir.path().join("state")
    );
    let lookup = |k: &str| (k == "SECRET").then(|| SECRET.to_string());
    let file =
        berth_config::parse_str(&dir.path().join("berth.toml"), &src, &lookup).expect("config");
    std::fs::create_dir_all(&file.supervisor.state_dir).expect("state dir");
    let fake = FakeEngine::new();
    let hub = Hub::new(fake.clone(), file.clone());
    let backups = Backups::new(hub.clone(), Arc::new(Notify::new()));
    let deployer = Deployer::new(
        hub.clone(),
        backups.clone(),
        file,
        Ok(DeployState::default()),
    );
    let (restarter, _task) = Restarter::start(hub.clone());
    let reconciler = Reconciler::new(hub.clone(), restarter, deployer.clone());
    // Every command tells the secret.
    let tell = || ExecResult {
        exit_code: 1,
        stdout: Vec::new(),
        stderr: format!("FATAL: password {SECRET} rejected").into_bytes(),
    };
    fake.set_exec_handler(move |_, _| Some(tell()));
    let _ = reconciler.converge().await;

    // The probe's stderr.
    let doc =
        serde_json::to_string(&hub.read(|s| s.to_doc(std::time::SystemTime::now()))).expect("json");
    assert!(doc.contains("password *** rejected"), "{doc}");
    // pg_dump's stderr.
    let e = backups.backup_now().await.expect_err("pg_dump fails");
    assert!(!format!("{e:#}").contains(SECRET), "{e:#}");
    // A migration's output.
    fake.add_image("app:2");
    let watcher = {
        let fake = fake.clone();
        tokio::spawn(async move {
            loop {
                if fake.container("p-app-migrate").is_some_and(|c| c.running) {
                    fake.set_logs(
                        "p-app-migrate",
                        vec![berth_engine::Output::Stderr(
                            format!("connecting with {SECRET}\n").into_bytes(),
                        )],
                    );
                    let _ = fake.crash("p-app-migrate", 2);
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let e = deployer
        .deploy("app", "app:2", false, Turn::Refuse)
        .await
        .expect_err("the migration fails");
    watcher.abort();
    assert!(format!("{e:#}").contains("connecting with ***"), "{e:#}");

    let doc =
        serde_json::to_string(&hub.read(|s| s.to_doc(std::time::SystemTime::now()))).expect("json");
    assert!(!doc.contains(SECRET), "{doc}");
    let state = std::fs::read_to_string(dir.path().join("state/deploys.json")).expect("state");
    assert!(state.contains("connecting with ***"), "{state}");
    assert!(!state.contains(SECRET), "{state}");
}

/// A pass leaves a held service's status alone: it read a container mid-switch (renamed,
/// not started yet) as exited, and the deploy's rollback then failed with "container
/// exited while starting" (a flake of the parallel suite).
#[tokio::test(start_paused = true)]
async fn a_pass_does_not_write_a_held_services_status() {
    let k = kit(APP);
    k.reconciler().converge().await.expect("first pass");
    let id = k.fake.container("p-app").expect("app").id;
    let _hold = k.hub.hold(["app"]);
    // The holder is switching: the container is down for a moment, about to start.
    k.hub.expect_stop(&id);
    k.fake
        .stop_container(&id, Duration::ZERO)
        .await
        .expect("stop");
    k.hub
        .update_service("app", |s| s.state = berth_core::snapshot::State::Starting);
    k.reconciler().converge().await.expect("pass");
    assert_eq!(
        k.hub.read(|s| s.services["app"].state),
        berth_core::snapshot::State::Starting
    );
}

/// Issue 17, item 5: `berth stop` keeps the service down through passes, time and a
/// restart of berth (even if something started its container meanwhile); `berth start`
/// brings it back.
#[tokio::test(start_paused = true)]
async fn berth_stop_holds_a_service_down_across_a_restart_until_start() {
    use berth_core::snapshot::{Overall, State};
    let k = kit(APP);
    k.reconciler().converge().await.expect("first pass");
    k.subscribed().await;
    let st = k.deployer.stop_service("app").await.expect("stopped");
    assert!(st.held && st.state == State::Stopped, "{st:?}");
    assert!(!k.running("p-app"));
    assert!(k.dir.path().join("state/held.json").exists(), "persisted");
    tokio::time::sleep(Duration::from_secs(30)).await;
    k.reconciler().converge().await.expect("pass");
    assert!(!k.running("p-app"), "no pass or restart brings it back");
    let (overall, why) = k.hub.read(|s| {
        let now = std::time::SystemTime::now();
        (s.overall(now), s.attention(now))
    });
    assert_eq!(overall, Overall::Degraded);
    assert_eq!(
        why.as_deref(),
        Some("held down on purpose: app (berth start app)")
    );

    // berth restarts (same engine, same state folder); meanwhile something started the
    // container again.
    k.fake
        .start_container("p-app")
        .await
        .expect("started behind berth's back");
    let cfg = k.hub.config().as_ref().clone();
    let hub = Hub::new(k.fake.clone(), cfg.clone());
    let backups = Backups::new(hub.clone(), Arc::new(Notify::new()));
    let deployer = Deployer::new(hub.clone(), backups, cfg, Ok(DeployState::default()));
    deployer.restore_held();
    let (restarter, _task) = Restarter::start(hub.clone());
    let reconciler = Reconciler::new(hub.clone(), restarter, deployer.clone());
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(reconciler.run(tx));
    k.until(Duration::from_secs(10), "kept down again", |k| {
        !k.running("p-app")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(!k.running("p-app"));
    assert!(hub.read(|s| s.services["app"].held));

    let st = deployer.start_service("app").await.expect("started");
    assert!(!st.held && st.is_healthy(), "{st:?}");
    assert!(k.running("p-app"));
    assert!(hub.kept_down().is_empty());
    assert_eq!(
        crate::io::statefile::load_held(&k.dir.path().join("state"))
            .expect("held.json")
            .len(),
        0
    );
    run.abort();
}

/// A holder goes down after the services in its namespace (stopping it first would leave
/// them with no network, crashing into nothing) and comes back up with them.
#[tokio::test(start_paused = true)]
async fn berth_stop_and_start_of_a_holder_keep_the_order_of_its_namespace() {
    let k = kit(
        "[services.app-net]\nimage = \"pause:1\"\n\n[services.app]\nimage = \"app:1\"\nnetwork = \"service:app-net\"\n",
    );
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(k.reconciler().run(tx));
    k.until(Duration::from_secs(10), "up", |k| k.running("p-app"))
        .await;
    k.subscribed().await;
    let calls = k.fake.calls().len();
    let e = k.deployer.stop_service("app-net").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "app is in app-net's network namespace: berth stop app first"
    );
    assert_eq!(k.fake.calls().len(), calls, "no engine call");
    assert!(k.hub.kept_down().is_empty());
    k.deployer.stop_service("app").await.expect("stopped");
    k.deployer.stop_service("app-net").await.expect("stopped");
    assert!(!k.running("p-app") && !k.running("p-app-net"));
    let e = k.deployer.start_service("app-net").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "app-net holds the network namespace of app, which is held down: berth start app starts both"
    );
    assert!(!k.running("p-app-net"), "still held");
    let st = k.deployer.start_service("app").await.expect("started");
    assert!(st.is_healthy(), "{st:?}");
    assert!(k.hub.kept_down().is_empty());
    assert!(k.running("p-app") && k.running("p-app-net"));
    run.abort();
}

/// `berth restart`: the same container stopped, then started, health-gated: never two.
#[tokio::test(start_paused = true)]
async fn berth_restart_stops_then_starts_the_same_container() {
    let k = kit(BOT);
    k.reconciler().converge().await.expect("first pass");
    k.subscribed().await;
    let before = k.fake.calls().len();
    let (st, _down) = k.deployer.restart_service("bot").await.expect("restarted");
    assert!(st.is_healthy(), "{st:?}");
    let changes: Vec<String> = k
        .changes()
        .into_iter()
        .skip_while(|c| !c.starts_with("stop"))
        .collect();
    assert_eq!(changes, ["stop bot:1", "start bot:1"]);
    assert!(k.fake.calls().len() > before);
    assert_eq!(k.hub.read(|s| s.services["bot"].restarts), 0, "not a crash");
    assert!(!k.hub.is_held("bot"));
    // Held by berth stop: restart, deploy and rollback refused, nothing touched.
    k.deployer.stop_service("bot").await.expect("stopped");
    let e = k.deployer.restart_service("bot").await.unwrap_err();
    assert!(e.to_string().contains("berth start bot"), "{e}");
    let calls = k.fake.calls().len();
    let e = k.deploy_bot2().await.unwrap_err();
    assert!(e.to_string().contains("held down by berth stop"), "{e}");
    let e = k.deployer.rollback("bot", false).await.unwrap_err();
    assert!(e.to_string().contains("held down by berth stop"), "{e}");
    assert_eq!(k.fake.calls().len(), calls, "no engine call");
    assert!(!k.running("p-bot"));
}

/// `berth start` after a crash loop: the service starts at once, not after its backoff.
#[tokio::test(start_paused = true)]
async fn berth_start_forgets_a_crash_loop() {
    let k = kit(
        "[services.app]\nimage = \"app:1\"\nrestart = { initial_backoff = \"1s\", max_backoff = \"5m\", reset_after = \"60s\" }\n",
    );
    let (tx, _rx) = tokio::sync::oneshot::channel();
    let run = tokio::spawn(k.reconciler().run(tx));
    k.until(Duration::from_secs(10), "up", |k| k.running("p-app"))
        .await;
    k.subscribed().await;
    for _ in 0..8 {
        k.until(Duration::from_secs(600), "restarted", |k| {
            k.running("p-app")
        })
        .await;
        k.fake.crash("p-app", 1).expect("crash");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(k.hub.read(|s| s.services["app"].crashloop), "a crash loop");
    k.deployer.stop_service("app").await.expect("stopped");
    let started = tokio::time::Instant::now();
    let st = k.deployer.start_service("app").await.expect("started");
    assert!(st.is_healthy() && !st.crashloop, "{st:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "started at once, not after a backoff of minutes: {:?}",
        started.elapsed()
    );
    run.abort();
}

/// A cold start makes a dependant's container while its dependency comes up; only the
/// start waits for the dependency to be healthy.
#[tokio::test(start_paused = true)]
async fn a_dependant_is_created_early_and_started_only_after_its_dependency_is_healthy() {
    let k = kit(
        "[services.db]\nimage = \"db:1\"\nprobe = { exec = { command = [\"check\"] }, interval = \"1s\", start_timeout = \"30s\" }\n\n[services.bot]\nimage = \"bot:1\"\ndepends_on = [\"db\"]\n",
    );
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r = ready.clone();
    k.fake.set_exec_handler(move |c, _| {
        (c.image == "db:1" && !r.load(std::sync::atomic::Ordering::SeqCst)).then(|| ExecResult {
            exit_code: 1,
            stdout: Vec::new(),
            stderr: b"not ready".to_vec(),
        })
    });
    let rec = k.reconciler();
    let pass = tokio::spawn(async move { rec.converge().await });
    k.until(Duration::from_secs(5), "bot created", |k| {
        k.fake.container("p-bot").is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(k.running("p-db"));
    assert!(
        !k.running("p-bot"),
        "started before its dependency was healthy"
    );
    ready.store(true, std::sync::atomic::Ordering::SeqCst);
    pass.await.expect("joined").expect("converged");
    assert!(k.running("p-bot"));
}

/// A deploy starts the new container at the old one's `die` event, while the engine is
/// still cleaning the old one up, not when the stop answers: never two running at once.
#[tokio::test(start_paused = true)]
async fn a_deploy_starts_the_new_container_when_the_old_one_dies() {
    let k = kit(BOT);
    k.reconciler().converge().await.expect("first pass");
    k.subscribed().await;
    k.fake.add_image("bot:2");
    k.fake.set_stop_cleanup(Duration::from_millis(500));
    let rec = k.deploy_bot2().await.expect("deployed");
    assert_eq!(rec.outcome, Outcome::Deployed);
    let at = |step: &str| {
        rec.steps
            .iter()
            .find(|m| m.step == step)
            .map(|m| m.unix_ms)
            .unwrap_or_else(|| panic!("no {step} in {:?}", rec.steps))
    };
    // `died` is marked only when the `die` event beat the stop's answer.
    assert!(at("died") <= at("start_requested"));
    assert!(
        at("start_requested") <= at("stopped"),
        "the start waited for the stop: {:?}",
        rec.steps
    );
    // The old container had ended (the fake ends it at `die`) before the start.
    let starts: Vec<usize> = k
        .fake
        .calls()
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c, Call::Start { .. }))
        .map(|(i, _)| i)
        .collect();
    let stop = k
        .fake
        .calls()
        .iter()
        .position(|c| matches!(c, Call::Stop { .. }))
        .expect("a stop");
    assert!(starts.last().is_some_and(|s| *s > stop));
    assert_eq!(k.fake.running_containers().len(), 1);
}

/// A deploy's new container that dies while its probe hangs is given up at its `die`
/// event, not when the probe answers: the old one runs again at once (the chaos soak, seed
/// 642977592, saw the bot down 2.3 s while an HTTP probe of the dead container hung).
#[tokio::test(start_paused = true)]
async fn a_new_container_that_dies_during_a_hung_probe_is_rolled_back_at_once() {
    let k = kit(BOT);
    k.reconciler().converge().await.expect("first pass");
    k.subscribed().await;
    k.fake.add_image("bot:2");
    k.fake.set_exec_delay(Duration::from_secs(2));
    let deploy = tokio::spawn({
        let d = k.deployer.clone();
        async move { d.deploy("bot", "bot:2", false, Turn::Refuse).await }
    });
    let running_on = |k: &Kit, image: &str| {
        k.fake
            .running_containers()
            .into_iter()
            .find(|c| c.image == image)
            .map(|c| c.id)
    };
    k.until(Duration::from_secs(5), "bot:2 started", |k| {
        running_on(k, "bot:2").is_some()
    })
    .await;
    // Inside the new container's first probe.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let new = running_on(&k, "bot:2").expect("bot:2 runs");
    let died = tokio::time::Instant::now();
    k.fake.crash(&new, 137).expect("crash");
    k.until(Duration::from_secs(5), "bot:1 running again", |k| {
        running_on(k, "bot:1").is_some()
    })
    .await;
    assert!(
        died.elapsed() < Duration::from_millis(500),
        "the rollback waited {:?} for the hung probe",
        died.elapsed()
    );
    let e = deploy.await.expect("joined").expect_err("rolled back");
    assert!(format!("{e:#}").contains("exited while starting"), "{e:#}");
}

/// A stop berth asked for that never happened (the engine was unreachable) does not hide
/// the container's next crash: the chaos soak (seed 42007927) saw PostgreSQL stay down,
/// unnoticed, 20 s after a stop of its hung container had failed during a socket cut.
#[tokio::test(start_paused = true)]
async fn a_stop_that_failed_does_not_hide_a_later_crash() {
    let k = kit(APP);
    k.reconciler().converge().await.expect("first pass");
    k.subscribed().await;
    let id = k.fake.container("p-app").expect("app").id;
    k.fake.inject_error(
        CallMatch::once(CallKind::Stop),
        EngineError::Unreachable("socket cut".into()),
    );
    let stop = k.hub.stop_container(&id, Duration::from_secs(1)).await;
    assert!(stop.is_err(), "the stop was refused");
    assert!(k.running("p-app"));
    tokio::time::sleep(Duration::from_secs(20)).await;
    k.fake.crash("p-app", 1).expect("crash");
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        k.running("p-app"),
        "the crash was taken for berth's own stop"
    );
    assert_eq!(k.starts_of("p-app"), 2);
}

/// A change of `app`'s settings that fails in an engine outage: the old container's stop
/// is refused, and so is the rollback's look-up of it (renamed `.previous` by then).
async fn change_app_in_an_outage(k: &Kit) {
    k.hub.set_config(config_in(
        k.dir.path(),
        "[services.app]\nimage = \"app:1\"\nenv = { MODE = \"new\" }\n",
    ));
    let cut = || EngineError::Unreachable("socket cut".into());
    k.fake.inject_error(CallMatch::once(CallKind::Stop), cut());
    k.fake.inject_error(
        CallMatch::once(CallKind::Inspect).on("p-app.previous"),
        cut(),
    );
    let e = k
        .reconciler()
        .converge()
        .await
        .expect_err("the change fails");
    assert!(format!("{e:#}").contains("not up"), "{e:#}");
    assert!(k.fake.container("p-app.previous").is_some());
}

fn running_names(k: &Kit) -> Vec<String> {
    k.fake
        .running_containers()
        .into_iter()
        .map(|c| c.name)
        .collect()
}

/// Chaos soak, seed 768749185: a hung bot was being stopped for a restart when a change
/// came, in an engine outage; the change and its rollback failed, and the restart then
/// started the old container, renamed `.previous` by the change, beside the new one.
#[tokio::test(start_paused = true)]
async fn a_restart_never_starts_a_container_a_failed_change_renamed_away() {
    let k = kit(APP);
    k.reconciler().converge().await.expect("first pass");
    k.subscribed().await;
    let id = k.fake.container("p-app").expect("app").id;
    // The prober finds it hung; stopping it takes five seconds (a hung process's grace).
    k.fake.set_stop_cleanup(Duration::from_secs(5));
    k.restarter.unhealthy("app", &id).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    k.fake.set_stop_cleanup(Duration::ZERO);
    change_app_in_an_outage(&k).await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(
        !k.running("p-app.previous"),
        "the restart started the container the change had renamed away"
    );
    k.reconciler().converge().await.expect("pass");
    assert_eq!(running_names(&k), vec!["p-app".to_string()]);
}

/// The same outage with the old container still running (its stop was refused): the next
/// pass stops it before the service's new container starts.
#[tokio::test(start_paused = true)]
async fn a_kept_container_left_running_by_a_failed_change_is_stopped_first() {
    let k = kit(APP);
    k.reconciler().converge().await.expect("first pass");
    k.subscribed().await;
    change_app_in_an_outage(&k).await;
    assert!(k.running("p-app.previous"), "its stop was refused");
    k.fake.clear_calls();
    k.reconciler().converge().await.expect("pass");
    assert_eq!(running_names(&k), vec!["p-app".to_string()]);
    let changes = k.changes();
    let stop = changes.iter().position(|c| c == "stop app:1");
    let start = changes.iter().position(|c| c == "start app:1");
    assert!(stop.is_some() && stop < start, "{changes:?}");
}

/// A deploy finds the old container in the engine, not in the hub's memory: after a
/// switch lost track of it (or for a held service never adopted), a deploy once failed
/// to create the new one beside it and its rollback then removed the running service.
#[tokio::test(start_paused = true)]
async fn a_deploy_finds_the_old_container_even_when_the_hub_lost_track_of_it() {
    let k = kit(BOT);
    k.reconciler().converge().await.expect("first pass");
    let old = k.fake.container("p-bot").expect("bot").id;
    k.fake.add_image("bot:2");
    k.hub.lost_track("bot");
    let rec = k.deploy_bot2().await.expect("deployed");
    assert_eq!(rec.outcome, Outcome::Deployed);
    assert_eq!(k.fake.container("p-bot.previous").map(|c| c.id), Some(old));
    assert_eq!(running_names(&k), vec!["p-bot".to_string()]);
}

/// The grace periods of the engine's stops of container `id`, in order.
fn stop_graces(k: &Kit, id: &str) -> Vec<Duration> {
    k.fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Stop { id: i, grace } if i == id => Some(grace),
            _ => None,
        })
        .collect()
}

const NET_AND_APP: &str = "[services.net]\nimage = \"pause:1\"\n\n[services.app]\nimage = \"app:1\"\nnetwork = \"service:net\"\n";

#[tokio::test(start_paused = true)]
async fn a_network_holder_that_crashed_is_restarted_and_then_what_runs_in_its_namespace() {
    let k = kit(NET_AND_APP);
    k.reconciler().converge().await.expect("first pass");
    let net = k.fake.container("p-net").expect("holder");
    let app = k.fake.container("p-app").expect("app");
    assert_eq!(app.joined.as_deref(), Some(net.id.as_str()));
    // The app's address is the holder's: its own container has none.
    let ip = k.hub.read(|s| s.services["app"].ip);
    assert!(ip.is_some());
    assert_eq!(ip, net.ips.values().next().copied());
    k.subscribed().await;
    k.fake.clear_calls();
    let before = k.changes().len();
    k.fake.crash("p-net", 137).expect("crash");
    k.until(Duration::from_secs(5), "holder restarted", |k| {
        k.running("p-net")
    })
    .await;
    // The restart asks for a pass: it sees the app started before its holder.
    k.reconciler().converge().await.expect("pass");
    assert_eq!(
        k.changes()[before..],
        ["start pause:1", "stop app:1", "start app:1"],
        "the holder first, then the app stopped and started again in its namespace"
    );
    // Nothing reachable from a dead namespace: the app's 10 s grace is capped.
    assert_eq!(stop_graces(&k, &app.id), [Duration::from_secs(2)]);
    assert!(k.running("p-net") && k.running("p-app"));
    let before = k.changes().len();
    k.reconciler().converge().await.expect("pass");
    assert_eq!(k.changes().len(), before, "and then it is left alone");
}

#[tokio::test(start_paused = true)]
async fn a_network_holder_made_anew_has_what_is_in_its_namespace_made_anew() {
    let k = kit(NET_AND_APP);
    k.reconciler().converge().await.expect("first pass");
    let old = k.fake.container("p-net").expect("holder").id;
    // Someone removes the holder by hand: the app's container joined its id for good.
    let old_app = k.fake.container("p-app").expect("app").id;
    k.fake.remove_container(&old, true).await.expect("remove");
    k.reconciler().converge().await.expect("second pass");
    assert_eq!(stop_graces(&k, &old_app), [Duration::from_secs(2)]);
    let net = k.fake.container("p-net").expect("new holder");
    let app = k.fake.container("p-app").expect("new app");
    assert_ne!(net.id, old);
    assert_eq!(app.joined.as_deref(), Some(net.id.as_str()));
    assert!(k.running("p-net") && k.running("p-app"));
    // And a third pass changes nothing.
    let before = k.changes().len();
    k.reconciler().converge().await.expect("third pass");
    assert_eq!(k.changes().len(), before);
}

#[tokio::test(start_paused = true)]
async fn a_change_of_a_network_holder_brings_what_runs_in_its_namespace_up_in_the_same_pass() {
    let k = kit(NET_AND_APP);
    k.reconciler().converge().await.expect("first pass");
    k.hub.set_config(config_in(
        k.dir.path(),
        &NET_AND_APP.replace(
            "[services.net]\nimage = \"pause:1\"\n",
            "[services.net]\nimage = \"pause:1\"\nenv = { V = \"2\" }\n",
        ),
    ));
    k.reconciler()
        .converge()
        .await
        .expect("the holder's change and the app's new container in one pass");
    let net = k.fake.container("p-net").expect("holder");
    let app = k.fake.container("p-app").expect("app");
    assert!(net.running && app.running);
    assert_eq!(app.joined.as_deref(), Some(net.id.as_str()));
    assert_eq!(k.fake.running_containers().len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_rollback_to_a_container_whose_network_holder_is_gone_changes_nothing() {
    let k = kit(NET_AND_APP);
    k.reconciler().converge().await.expect("first pass");
    k.deployer
        .deploy("app", "app:2", false, Turn::Refuse)
        .await
        .expect("deploy");
    assert!(k.fake.container("p-app.previous").is_some());
    // The holder is made anew: `.previous` joined the old one.
    let old = k.fake.container("p-net").expect("holder").id;
    k.fake.remove_container(&old, true).await.expect("remove");
    k.reconciler().converge().await.expect("pass");
    assert!(k.running("p-app"));
    k.fake.clear_calls();
    let err = k
        .deployer
        .rollback("app", false)
        .await
        .expect_err("refused");
    assert!(
        format!("{err:#}").contains(
            "app's previous container cannot start: it joined a net container that is gone"
        ),
        "{err:#}"
    );
    assert!(k.changes().is_empty(), "{:?}", k.changes());
    assert!(k.running("p-app"));
}

const THREE: &str = "[services.a]\nimage = \"a:1\"\n\n[services.b]\nimage = \"b:1\"\n\n[services.zdb]\nimage = \"zdb:1\"\n";

fn starts(k: &Kit) -> Vec<String> {
    k.changes()
        .into_iter()
        .filter(|c| c.starts_with("start "))
        .collect()
}

/// Starts compete in the engine: the service that took longest to come up last time
/// (here zdb, whose name sorts last) starts first, the others once its start returned;
/// and what each took this time is saved for the next start-up.
#[tokio::test(start_paused = true)]
async fn the_service_that_took_longest_to_come_up_last_time_starts_first() {
    let k = kit(THREE);
    k.hub.set_start_times(
        [
            ("zdb".to_string(), Duration::from_secs(4)),
            ("a".to_string(), Duration::from_millis(200)),
        ]
        .into(),
    );
    k.reconciler().converge().await.expect("first pass");
    assert_eq!(starts(&k), ["start zdb:1", "start a:1", "start b:1"]);
    // The others' creates wait for the lead's start too: they compete with it.
    let changes = k.changes();
    let at = |prefix: &str| changes.iter().position(|c| c.starts_with(prefix));
    let lead_start = at("start zdb:1").expect("zdb started");
    assert!(
        at("create p-zdb").is_some_and(|i| i < lead_start),
        "{changes:?}"
    );
    for other in ["create p-a ", "create p-b "] {
        assert!(at(other).is_some_and(|i| i > lead_start), "{changes:?}");
    }
    let saved = crate::io::statefile::load_start_times(&k.dir.path().join("state"))
        .expect("start-times.json");
    assert_eq!(
        saved.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "zdb"]
    );
}

/// A lead whose start is slow holds the others up for `LEAD_WAIT` in all, though they
/// wait for it twice (before their create and before their start).
#[tokio::test(start_paused = true)]
async fn a_slow_lead_holds_the_others_up_for_the_lead_wait_at_most() {
    let k = kit(THREE);
    k.hub
        .set_start_times([("zdb".to_string(), Duration::from_secs(4))].into());
    k.fake.set_start_delay("p-zdb", Duration::from_secs(60));
    let r = k.reconciler();
    let pass = tokio::spawn(async move { r.converge().await });
    tokio::time::sleep(berth_core::start_order::LEAD_WAIT + Duration::from_millis(500)).await;
    assert!(k.running("p-a") && k.running("p-b"), "{:?}", k.changes());
    pass.await.expect("pass joined").expect("pass");
}

/// With nothing known, all start at once (in the order of the file); a lead whose start
/// fails holds up no one for the `LEAD_WAIT`.
#[tokio::test(start_paused = true)]
async fn starts_without_a_lead_or_after_a_failed_one_go_at_once() {
    let k = kit(THREE);
    k.reconciler().converge().await.expect("first pass");
    assert_eq!(starts(&k), ["start a:1", "start b:1", "start zdb:1"]);

    let k = kit(THREE);
    k.hub
        .set_start_times([("zdb".to_string(), Duration::from_secs(4))].into());
    k.fake.inject_error(
        CallMatch::once(CallKind::Start).on("p-zdb"),
        EngineError::Api {
            what: "start container p-zdb".into(),
            message: "boom".into(),
        },
    );
    let began = tokio::time::Instant::now();
    assert!(k.reconciler().converge().await.is_err(), "zdb failed");
    assert!(k.running("p-a") && k.running("p-b"));
    assert!(
        began.elapsed() < berth_core::start_order::LEAD_WAIT,
        "{:?}",
        began.elapsed()
    );
}
