//! `cargo xtask chaos [--minutes N] [--seed S]`: the demo stack under steady traffic and
//! hundreds of random faults drawn from the seed, with invariants sampled every 200 ms and
//! checked again at the end. Writes `target/chaos/schedule.txt` and `target/chaos/report.md`
//! and exits 1 on any violation.
//!
//! berth (release build) runs as systemd would run it: restarted 2 s after it exits. It
//! reaches the engine through a socket proxy the run cuts and restores (the host's dockerd
//! is shared and never restarted). Everything the run makes carries its own project label
//! (`berth.project=berth-chaos-<pid>`) and is removed by that label at the end and on
//! Ctrl-C.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::chaos_proxy::Proxy;
use crate::chaos_schedule::{self as sched, Fault, Kind, SERVICES};
use crate::{cargo_build_release, images, target_dir};

/// Updates sent to the fake Bot API per second.
const RATE: u64 = 5;
/// The sampler's period: every invariant that is checked continuously is checked this often.
const SAMPLE: Duration = Duration::from_millis(200);
/// A service down longer than this must not be reported healthy.
const DOWN_GRACE_MS: u64 = 2000;
/// The stack counts as recovered once it has been up this long without a break.
const STABLE_MS: u64 = 2000;
/// After the last fault the stack must be up again within this.
const FINAL_BOUND_MS: u64 = 30_000;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One invariant broken: what, when (ms since the start of the fault phase), and which
/// fault came last before it.
#[derive(Clone)]
struct Violation {
    at_ms: u64,
    what: String,
    after: Option<String>,
}

struct FaultRecord {
    index: usize,
    kind: Kind,
    injected_ms: u64,
    done_ms: Option<u64>,
    outcome: String,
    /// Recovery is looked for only after this happened (e.g. the killed service's next
    /// start); `None` until it has.
    manifest: Manifest,
}

#[derive(Clone)]
enum Manifest {
    /// A container of this service started after the injection.
    StartOf(&'static str),
    /// berth started again after the injection.
    BerthStart,
    /// The injecting action finished (`done_ms`).
    Done,
}

#[derive(Clone, Copy)]
struct Sample {
    ms: u64,
    up: bool,
}

struct Update {
    chat: i64,
    id: i64,
    sent_ms: u64,
    acked_ms: Option<u64>,
    /// Still queued when the fake Bot API holding it was killed: it died with that process
    /// (Telegram keeps its queue, the fake does not), so the bot never saw it.
    dropped: bool,
}

#[derive(Default)]
struct State {
    samples: Vec<Sample>,
    violations: Vec<Violation>,
    faults: Vec<FaultRecord>,
    /// (wall ms, action, service, container name) from `docker events`.
    events: Vec<(u64, String, String, String)>,
    updates: Vec<Update>,
    refused_updates: u64,
    /// Index of the first update not yet known acknowledged.
    ack_next: usize,
    /// When the fake Bot API last seen started (wall ms), which is also its first update id.
    tg_started_ms: i64,
    /// (wall ms, pid): each start of berth.
    berth_starts: Vec<(u64, u32)>,
    /// (wall ms, status) of exits the run did not cause.
    berth_exits: Vec<(u64, String)>,
    /// (wall ms, pid, rss KiB, open fds).
    usage: Vec<(u64, u32, u64, u64)>,
    /// (backup id, started wall ms, the dump's bytes) of each backup reported successful.
    backups: Vec<(String, u64, Vec<u8>)>,
    /// (from, to) wall ms: acknowledged updates may be missing after a restore.
    restore_windows: Vec<(u64, u64)>,
    conflicts: u64,
    health_lag: u64,
    current_bot: String,
    reload_gen: u64,
}

struct Run {
    seed: u64,
    project: String,
    dir: PathBuf,
    berth: PathBuf,
    config: PathBuf,
    backups: PathBuf,
    health_port: u16,
    tg_port: u16,
    /// Wall ms when the fault phase began: the report's times count from here.
    start_ms: AtomicU64,
    stop: AtomicBool,
    state: Mutex<State>,
    berth_pid: Mutex<Option<u32>>,
    /// Set by the kill-9-berth fault so the supervisor does not count that exit.
    expected_kill: AtomicBool,
    proxy: Mutex<Option<Proxy>>,
    /// Serialises the faults that write the config file or fill the disk.
    file_lock: Mutex<()>,
    disk_lock: Mutex<()>,
    deploy_lock: Mutex<()>,
    total_conflicts_base: AtomicU64,
}

impl Run {
    fn st(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn t(&self, wall_ms: u64) -> f64 {
        wall_ms.saturating_sub(self.start_ms.load(Ordering::SeqCst)) as f64 / 1000.0
    }

    fn violate(&self, what: String) {
        let ms = now_ms();
        let mut st = self.st();
        let after = st
            .faults
            .iter()
            .rev()
            .find(|f| f.injected_ms <= ms)
            .map(|f| format!("#{} {}", f.index, f.kind));
        eprintln!(
            "chaos: VIOLATION at +{:.1}s (seed {}): {what}",
            self.t(ms),
            self.seed
        );
        st.violations.push(Violation {
            at_ms: ms,
            what,
            after,
        });
    }

    fn container(&self, service: &str) -> String {
        format!("{}-{service}", self.project)
    }

    fn berth_cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.berth);
        c.args(args).arg("-c").arg(&self.config);
        c
    }
}

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let mut minutes = 60u64;
    let mut seed: Option<u64> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().context("--minutes N")?.parse()?,
            "--seed" => seed = Some(it.next().context("--seed S")?.parse()?),
            other => bail!("unknown argument {other}: cargo xtask chaos [--minutes N] [--seed S]"),
        }
    }
    let seed = match seed {
        Some(s) => s,
        None => {
            let mut b = [0u8; 8];
            std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
            u64::from_le_bytes(b) % 1_000_000_000
        }
    };
    let faults = sched::schedule(seed, minutes);
    let out = target_dir().join("chaos");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("schedule.txt"),
        sched::render(seed, minutes, &faults),
    )?;
    println!(
        "chaos: seed {seed}, {minutes} min, {} faults (target/chaos/schedule.txt)",
        faults.len()
    );

    images::build_all()?;
    let built = cargo_build_release(&["berth"])?.join("berth");
    // A copy: a build during a long soak must not change the binary under test.
    let berth = out.join("berth-under-test");
    std::fs::copy(&built, &berth).context("copying the berth binary")?;
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_sigint as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_sigint as *const () as libc::sighandler_t);
    }

    let dir = out.join(format!("run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let backups = dir.join("backups");
    std::fs::create_dir_all(&backups)?;
    // The backup folder is a small file system of its own, so the disk-full fault fills a
    // real disk. Mounting needs root (CI runs as root).
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs"])
        .arg(&backups)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        bail!("mounting a tmpfs for the backup folder failed (needs root)");
    }
    let project = format!("berth-chaos-{}", std::process::id());
    let run = Arc::new(Run {
        seed,
        project,
        config: dir.join("berth.toml"),
        backups,
        berth,
        health_port: free_port()?,
        tg_port: free_port()?,
        start_ms: AtomicU64::new(now_ms()),
        stop: AtomicBool::new(false),
        state: Mutex::new(State {
            current_bot: "berth-demo/bot:1".into(),
            ..State::default()
        }),
        berth_pid: Mutex::new(None),
        expected_kill: AtomicBool::new(false),
        proxy: Mutex::new(Some(Proxy::start(dir.join("docker.sock"))?)),
        file_lock: Mutex::new(()),
        disk_lock: Mutex::new(()),
        deploy_lock: Mutex::new(()),
        total_conflicts_base: AtomicU64::new(0),
        dir,
    });
    let result = soak(&run, &faults, minutes);
    cleanup(&run);
    let failed = result?;
    if failed {
        bail!("invariant violations: see target/chaos/report.md");
    }
    Ok(())
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn write_env(dir: &Path) -> anyhow::Result<()> {
    let mut b = [0u8; 12];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(dir.join("berth.env"))?
        .write_all(
            format!("POSTGRES_PASSWORD=pg{hex}\nTELEGRAM_BOT_TOKEN=123456:{hex}\n").as_bytes(),
        )?;
    Ok(())
}

/// The demo stack, as the tests run it (probes every 2 s) with the bot in `bot-net`'s
/// network namespace as the demo config has it, with a backup folder on the
/// run's small file system. Restart backoff stops at 10 s: a service killed every minute
/// by the run would otherwise be treated as the crash loop it resembles (backoff up to
/// 5 min), which is not what the soak measures.
fn config_text(run: &Run, reload_gen: u64) -> String {
    format!(
        r#"[supervisor]
project = "{project}"
health_listen = "127.0.0.1:{hp}"
state_dir = "state"
admin_socket = "admin.sock"
env_file = "berth.env"

[services.postgres]
image = "berth-demo/postgres:15"
env = {{ POSTGRES_USER = "bot", POSTGRES_DB = "bot", POSTGRES_PASSWORD = "${{POSTGRES_PASSWORD}}" }}
volumes = ["pgdata:/var/lib/postgresql/data"]
stop_grace_period = "10s"
probe = {{ postgres = {{ user = "bot", database = "bot", password = "${{POSTGRES_PASSWORD}}" }}, interval = "2s" }}
restart = {{ reset_after = "20s", max_backoff = "10s" }}

[services.redis]
image = "berth-demo/redis:7"
volumes = ["redisdata:/data"]
probe = {{ redis = {{}}, interval = "2s" }}
restart = {{ reset_after = "20s", max_backoff = "10s" }}

[services.telegram]
image = "berth-demo/fake-telegram:latest"
ports = ["127.0.0.1:{tg}:8081"]
env = {{ UPDATE_IDS = "clock" }}
probe = {{ http = {{ port = 8081, path = "/healthz" }}, interval = "2s" }}
restart = {{ reset_after = "20s", max_backoff = "10s" }}

[services.bot-net]
image = "berth-demo/pause:1"
restart = {{ reset_after = "20s", max_backoff = "10s" }}

[services.bot]
image = "berth-demo/bot:1"
depends_on = ["postgres", "redis", "telegram"]
network = "service:bot-net"
env = {{ DATABASE_URL = "postgresql://bot:${{POSTGRES_PASSWORD}}@postgres:5432/bot", REDIS_URL = "redis://redis:6379/0", TELEGRAM_BOT_TOKEN = "${{TELEGRAM_BOT_TOKEN}}", TELEGRAM_API_BASE = "http://telegram:8081", POLL_TIMEOUT = "2", CHAOS_RELOAD = "{reload_gen}" }}
read_only = true
tmpfs = ["/tmp"]
memory = "128MiB"
stop_grace_period = "10s"
probe = {{ http = {{ port = 8000, path = "/health" }}, interval = "2s" }}
restart = {{ reset_after = "20s", max_backoff = "10s" }}
deploy = {{ migrate = ["demo-bot", "migrate"], health_timeout = "20s" }}

[backup]
service = "postgres"
schedule = "03:30"
dir = "backups"
keep = {{ daily = 7, weekly = 4, monthly = 6 }}
redis = true
"#,
        project = run.project,
        hp = run.health_port,
        tg = run.tg_port,
    )
}

/// The whole soak; Ok(true) when an invariant was broken.
fn soak(run: &Arc<Run>, faults: &[Fault], minutes: u64) -> anyhow::Result<bool> {
    write_env(&run.dir)?;
    std::fs::write(&run.config, config_text(run, 0))?;
    let check = run.berth_cmd(&["check"]).output()?;
    if !check.status.success() {
        bail!(
            "berth check: {}",
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    let mut threads = Vec::new();
    {
        let r = run.clone();
        threads.push(std::thread::spawn(move || events(&r)));
    }
    {
        let r = run.clone();
        threads.push(std::thread::spawn(move || supervise(&r)));
    }
    // The stack comes up before the traffic and the faults start.
    let t = Instant::now();
    while !stack_up(run) {
        if t.elapsed() > Duration::from_secs(180) || INTERRUPTED.load(Ordering::SeqCst) {
            run.stop.store(true, Ordering::SeqCst);
            bail!(
                "the stack did not come up within 180 s; berth's log: {}",
                run.dir.join("berth.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("chaos: stack up in {:.1}s", t.elapsed().as_secs_f64());
    // The clock of the report starts here.
    let start = Instant::now();
    run.start_ms.store(now_ms(), Ordering::SeqCst);
    {
        let r = run.clone();
        threads.push(std::thread::spawn(move || traffic(&r)));
    }
    {
        let r = run.clone();
        threads.push(std::thread::spawn(move || sampler(&r)));
    }
    {
        let r = run.clone();
        threads.push(std::thread::spawn(move || usage(&r)));
    }

    let mut inflight: Vec<std::thread::JoinHandle<()>> = Vec::new();
    for (i, f) in faults.iter().enumerate() {
        let due = start + f.at;
        while Instant::now() < due {
            if INTERRUPTED.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            eprintln!("chaos: interrupted");
            break;
        }
        inflight.retain(|h| !h.is_finished());
        if f.kind == Kind::Restore {
            // Quiet point: every fault in flight ends, and the stack is up, first.
            for h in inflight.drain(..) {
                let _ = h.join();
            }
            let t = Instant::now();
            while !stack_up(run) && t.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        let idx = {
            let mut st = run.st();
            st.faults.push(FaultRecord {
                index: i,
                kind: f.kind.clone(),
                injected_ms: now_ms(),
                done_ms: None,
                outcome: String::new(),
                manifest: Manifest::Done,
            });
            st.faults.len() - 1
        };
        println!(
            "chaos: +{:6.1}s #{i} {}",
            start.elapsed().as_secs_f64(),
            f.kind
        );
        let r = run.clone();
        let kind = f.kind.clone();
        let h = std::thread::spawn(move || {
            let (outcome, manifest) = inject(&r, &kind);
            let mut st = r.st();
            let rec = &mut st.faults[idx];
            rec.done_ms = Some(now_ms());
            rec.outcome = outcome;
            rec.manifest = manifest;
        });
        if f.kind == Kind::Restore {
            let _ = h.join();
        } else {
            inflight.push(h);
        }
    }
    for h in inflight {
        let _ = h.join();
    }
    let faults_end = now_ms();
    // Whatever is left of the run's time, then the final convergence.
    let end = start + Duration::from_secs(minutes * 60);
    while Instant::now() < end && !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(40) && !stable_since(run, faults_end) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Traffic stops; the bot gets 15 s to handle and confirm what is queued.
    run.stop.store(true, Ordering::SeqCst);
    std::thread::sleep(Duration::from_secs(15));
    // One more look at the confirmed offset.
    sample_acks(run);
    finish(run, faults, minutes, faults_end)
}

fn stable_since(run: &Run, from: u64) -> bool {
    let st = run.st();
    let s: Vec<&Sample> = st.samples.iter().filter(|s| s.ms >= from).collect();
    let Some(last) = s.last() else {
        return false;
    };
    let mut since = None;
    for x in &s {
        if x.up {
            since.get_or_insert(x.ms);
        } else {
            since = None;
        }
    }
    since.is_some_and(|t| last.ms - t >= STABLE_MS)
}

/// GET or POST on 127.0.0.1: (status, body).
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut all = String::new();
    s.read_to_string(&mut all).ok()?;
    let (head, body) = all.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_string()))
}

fn docker(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .context("running docker")?;
    if !out.status.success() {
        bail!(
            "docker {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// This run's containers: (name, state, service).
fn containers(run: &Run) -> Option<Vec<(String, String, String)>> {
    let out = docker(&[
        "ps",
        "-a",
        "--filter",
        &format!("label=berth.project={}", run.project),
        "--format",
        "{{.Names}}\t{{.State}}\t{{.Label \"berth.service\"}}",
    ])
    .ok()?;
    Some(
        out.lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                    f.next()?.to_string(),
                ))
            })
            .collect(),
    )
}

/// Running containers that poll as the bot (a migration container does not poll).
fn pollers(run: &Run, cs: &[(String, String, String)]) -> usize {
    let migrate = format!("{}-migrate", run.container("bot"));
    cs.iter()
        .filter(|(n, st, s)| s == "bot" && st == "running" && *n != migrate)
        .count()
}

fn stack_up(run: &Run) -> bool {
    let Some((_, h)) = http(run.health_port, "GET", "/health", None) else {
        return false;
    };
    let Ok(h) = serde_json::from_str::<Value>(&h) else {
        return false;
    };
    let Some(cs) = containers(run) else {
        return false;
    };
    let all_running = SERVICES
        .iter()
        .all(|s| cs.iter().any(|(_, st, svc)| svc == s && st == "running"));
    matches!(h["status"].as_str(), Some("ok" | "degraded")) && all_running && pollers(run, &cs) == 1
}

/// Runs berth as systemd would (Restart=on-failure, RestartSec=2s; berth never exits 0
/// here since nothing sends it SIGTERM).
fn supervise(run: &Arc<Run>) {
    let log_path = run.dir.join("berth.log");
    while !run.stop.load(Ordering::SeqCst) {
        let Ok(log) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
        else {
            return;
        };
        let docker_host = run
            .proxy
            .lock()
            .ok()
            .and_then(|p| p.as_ref().map(Proxy::docker_host))
            .unwrap_or_default();
        let child = {
            use std::os::unix::process::CommandExt as _;
            Command::new(&run.berth)
                .args(["run", "-c"])
                .arg(&run.config)
                .env("DOCKER_HOST", docker_host)
                .env("BERTH_LOG", "info")
                .env_remove("NOTIFY_SOCKET")
                .env_remove("WATCHDOG_USEC")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                // Its own process group: a Ctrl-C of the run reaches the run, not berth.
                .process_group(0)
                .spawn()
        };
        let mut child: Child = match child {
            Ok(c) => c,
            Err(e) => {
                eprintln!("chaos: starting berth: {e}");
                return;
            }
        };
        let pid = child.id();
        *run.berth_pid.lock().unwrap_or_else(|p| p.into_inner()) = Some(pid);
        run.st().berth_starts.push((now_ms(), pid));
        let status = loop {
            if run.stop.load(Ordering::SeqCst) {
                // The run's end: berth is killed like the faults kill it; cleanup follows.
                let _ = child.kill();
                let _ = child.wait();
                *run.berth_pid.lock().unwrap_or_else(|p| p.into_inner()) = None;
                return;
            }
            if let Ok(Some(s)) = child.try_wait() {
                break s;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        *run.berth_pid.lock().unwrap_or_else(|p| p.into_inner()) = None;
        if !run.expected_kill.swap(false, Ordering::SeqCst) {
            let ms = now_ms();
            eprintln!(
                "chaos: berth exited by itself at +{:.1}s: {status}",
                run.t(ms)
            );
            run.st().berth_exits.push((ms, status.to_string()));
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn berth_pid(run: &Run, wait: Duration) -> Option<u32> {
    let t = Instant::now();
    loop {
        if let Some(p) = *run.berth_pid.lock().unwrap_or_else(|p| p.into_inner()) {
            return Some(p);
        }
        if t.elapsed() > wait {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Container events of the project, with the engine's timestamps.
fn events(run: &Arc<Run>) {
    let child = Command::new("docker")
        .args([
            "events",
            "--filter",
            &format!("label=berth.project={}", run.project),
            "--filter",
            "type=container",
            "--format",
            "{{.TimeNano}} {{.Action}} {{index .Actor.Attributes \"berth.service\"}} {{.Actor.Attributes.name}}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return;
    };
    let Some(out) = child.stdout.take() else {
        return;
    };
    let r = run.clone();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            let ms = f[0].parse::<u64>().unwrap_or(0) / 1_000_000;
            r.st().events.push((
                ms,
                f[1].trim_end_matches(':').to_string(),
                f[2].to_string(),
                f[3].to_string(),
            ));
        }
    });
    while !run.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    // Events of the last seconds still arrive; the final checks do not need them.
    let _ = child.kill();
    let _ = child.wait();
    let _ = reader.join();
}

/// Updates at a fixed rate, each `/start` from a chat of its own (so the bot writes one
/// row per update).
fn traffic(run: &Arc<Run>) {
    let start = Instant::now();
    let mut n: u64 = 0;
    while !run.stop.load(Ordering::SeqCst) {
        n += 1;
        let due = start + Duration::from_millis(n * 1000 / RATE);
        if let Some(d) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let chat = n as i64;
        let sent_ms = now_ms();
        let body = format!("{{\"chat_id\": {chat}, \"text\": \"/start\"}}");
        let r = http(run.tg_port, "POST", "/_control/updates", Some(&body));
        let id = r
            .filter(|(c, _)| *c == 200)
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
            .and_then(|v| v["update_id"].as_i64());
        let mut st = run.st();
        match id {
            Some(id) => st.updates.push(Update {
                chat,
                id,
                sent_ms,
                acked_ms: None,
                dropped: false,
            }),
            None => st.refused_updates += 1,
        }
    }
}

/// Reads the fake Bot API's summary: counts conflicts across its restarts and marks the
/// updates the bot has confirmed. Returns the summary.
fn sample_acks(run: &Run) -> Option<Value> {
    let (code, body) = http(run.tg_port, "GET", "/_control/stats", None)?;
    if code != 200 {
        return None;
    }
    let v: Value = serde_json::from_str(&body).ok()?;
    let ms = now_ms();
    let confirmed = v["confirmed"].as_i64().unwrap_or(0);
    let started = v["started_ms"].as_i64().unwrap_or(0);
    let mut st = run.st();
    let mut i = st.ack_next;
    if started != st.tg_started_ms {
        // A new fake Bot API (its ids start at its start time): what the killed one still
        // held unconfirmed is gone, and the bot's next offset must not count as its ack.
        st.tg_started_ms = started;
        while i < st.updates.len() && st.updates[i].id < started {
            st.updates[i].dropped = true;
            i += 1;
        }
    }
    while i < st.updates.len() && st.updates[i].id < confirmed {
        st.updates[i].acked_ms = Some(ms);
        i += 1;
    }
    st.ack_next = i;
    Some(v)
}

/// Every 200 ms: /health, the engine's view of the containers and the fake Bot API. Checks
/// "never two pollers" and "truthful health" as it goes; records whether the stack is up.
fn sampler(run: &Arc<Run>) {
    let mut down_since: HashMap<&'static str, u64> = HashMap::new();
    let mut tg_started = 0u64;
    let mut tg_conflicts = 0u64;
    let mut reported_conflicts = 0u64;
    let mut two_bots_reported = false;
    let mut false_ok_reported: HashMap<&'static str, u64> = HashMap::new();
    while !run.stop.load(Ordering::SeqCst) {
        let tick = Instant::now();
        let health = http(run.health_port, "GET", "/health", None)
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok());
        let cs = containers(run);
        let stats = sample_acks(run);
        let ms = now_ms();
        let Some(cs) = cs else {
            std::thread::sleep(SAMPLE);
            continue;
        };
        // Two pollers: two bot containers running, or a 409 from the fake Bot API.
        let bots = pollers(run, &cs);
        if bots > 1 && !two_bots_reported {
            two_bots_reported = true;
            run.violate(format!("{bots} bot containers running at once: {cs:?}"));
        } else if bots <= 1 {
            two_bots_reported = false;
        }
        let mut answering = false;
        if let Some(s) = &stats {
            let started = s["started_ms"].as_u64().unwrap_or(0);
            let c = s["conflicts"].as_u64().unwrap_or(0);
            if started != tg_started {
                // A new fake Bot API: its counter starts at 0.
                run.total_conflicts_base
                    .fetch_add(tg_conflicts, Ordering::SeqCst);
                tg_started = started;
            }
            tg_conflicts = c;
            let total = run.total_conflicts_base.load(Ordering::SeqCst) + c;
            if total > reported_conflicts {
                run.violate(format!(
                    "the fake Bot API answered {} getUpdates with 409 (two pollers)",
                    total - reported_conflicts
                ));
                reported_conflicts = total;
            }
            run.st().conflicts = total;
            let oldest = s["oldest_queued_s"].as_u64();
            answering = oldest.is_none_or(|o| (ms / 1000).saturating_sub(o) <= 3);
        }
        // Truthful health.
        let claims_up = health
            .as_ref()
            .is_some_and(|h| matches!(h["status"].as_str(), Some("ok" | "degraded")));
        let mut all_running = true;
        for svc in SERVICES {
            let running = cs.iter().any(|(_, st, s)| s == svc && st == "running");
            if running {
                down_since.remove(svc);
                false_ok_reported.remove(svc);
                continue;
            }
            all_running = false;
            let since = *down_since.entry(svc).or_insert(ms);
            if claims_up {
                if ms - since > DOWN_GRACE_MS {
                    if false_ok_reported.insert(svc, since).is_none() {
                        run.violate(format!(
                            "/health says {} while {svc} has had no running container for {:.1}s",
                            health
                                .as_ref()
                                .map_or("", |h| h["status"].as_str().unwrap_or("")),
                            (ms - since) as f64 / 1000.0
                        ));
                    }
                } else {
                    run.st().health_lag += 1;
                }
            }
        }
        let up = claims_up && all_running && bots == 1 && answering;
        run.st().samples.push(Sample { ms, up });
        if let Some(d) = SAMPLE.checked_sub(tick.elapsed()) {
            std::thread::sleep(d);
        }
    }
}

/// berth's RSS and open fds every 2 s.
fn usage(run: &Arc<Run>) {
    while !run.stop.load(Ordering::SeqCst) {
        if let Some(pid) = *run.berth_pid.lock().unwrap_or_else(|p| p.into_inner()) {
            let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines()
                        .find_map(|l| l.strip_prefix("VmRSS:"))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                });
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count() as u64)
                .ok();
            if let (Some(rss), Some(fds)) = (rss, fds) {
                run.st().usage.push((now_ms(), pid, rss, fds));
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

fn main_pid(run: &Run, service: &str) -> Option<i64> {
    docker(&["inspect", "-f", "{{.State.Pid}}", &run.container(service)])
        .ok()?
        .parse()
        .ok()
        .filter(|p| *p > 0)
}

fn kill(pid: i64, sig: &str) -> bool {
    Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success())
}

fn output_line(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    format!("exit {}: {line}", out.status.code().unwrap_or(-1))
}

/// Carries out one fault; returns what happened and what recovery waits for.
fn inject(run: &Arc<Run>, kind: &Kind) -> (String, Manifest) {
    match kind {
        Kind::Kill(svc) => match main_pid(run, svc) {
            Some(pid) if kill(pid, "-9") => (format!("killed pid {pid}"), Manifest::StartOf(svc)),
            _ => ("missed: not running".into(), Manifest::Done),
        },
        Kind::DockerStop(svc) => match docker(&["stop", "-t", "2", &run.container(svc)]) {
            Ok(_) => ("stopped".into(), Manifest::StartOf(svc)),
            Err(e) => (format!("missed: {e}"), Manifest::Done),
        },
        Kind::DockerRm(svc) => match docker(&["rm", "-f", &run.container(svc)]) {
            Ok(_) => ("removed".into(), Manifest::StartOf(svc)),
            Err(e) => (format!("missed: {e}"), Manifest::Done),
        },
        Kind::HangBot => match main_pid(run, "bot") {
            Some(pid) if kill(pid, "-STOP") => {
                (format!("stopped pid {pid}"), Manifest::StartOf("bot"))
            }
            _ => ("missed: not running".into(), Manifest::Done),
        },
        Kind::KillBerth => match berth_pid(run, Duration::from_secs(5)) {
            Some(pid) => {
                run.expected_kill.store(true, Ordering::SeqCst);
                if kill(i64::from(pid), "-9") {
                    (format!("killed berth pid {pid}"), Manifest::BerthStart)
                } else {
                    run.expected_kill.store(false, Ordering::SeqCst);
                    ("missed: kill failed".into(), Manifest::Done)
                }
            }
            None => ("missed: berth not running".into(), Manifest::Done),
        },
        Kind::EngineCut(d) => {
            let mut p = run.proxy.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(proxy) = p.as_mut() {
                proxy.cut();
                std::thread::sleep(*d);
                match proxy.restore() {
                    Ok(()) => (format!("cut for {}s", d.as_secs()), Manifest::Done),
                    Err(e) => (format!("restore failed: {e}"), Manifest::Done),
                }
            } else {
                ("missed: no proxy".into(), Manifest::Done)
            }
        }
        Kind::ReloadGood => {
            let _g = run.file_lock.lock().unwrap_or_else(|p| p.into_inner());
            let generation = {
                let mut st = run.st();
                st.reload_gen += 1;
                st.reload_gen
            };
            if let Err(e) = std::fs::write(&run.config, config_text(run, generation)) {
                return (format!("missed: {e}"), Manifest::Done);
            }
            match berth_pid(run, Duration::from_secs(5)) {
                Some(pid) if kill(i64::from(pid), "-HUP") => (
                    format!("CHAOS_RELOAD={generation}"),
                    Manifest::StartOf("bot"),
                ),
                // A berth that starts later reads the new file and recreates the bot.
                _ => (
                    format!("CHAOS_RELOAD={generation}, no berth to signal"),
                    Manifest::StartOf("bot"),
                ),
            }
        }
        Kind::ReloadBroken(d) => {
            let _g = run.file_lock.lock().unwrap_or_else(|p| p.into_inner());
            let good = config_text(run, run.st().reload_gen);
            let broken = format!("{good}\n[services.bot\nimage = \n");
            if let Err(e) = std::fs::write(&run.config, broken) {
                return (format!("missed: {e}"), Manifest::Done);
            }
            if let Some(pid) = berth_pid(run, Duration::from_secs(5)) {
                kill(i64::from(pid), "-HUP");
            }
            std::thread::sleep(*d);
            let rejected = http(run.health_port, "GET", "/health", None)
                .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
                .map(|h| h["config"]["error"].is_string());
            let _ = std::fs::write(&run.config, good);
            if let Some(pid) = berth_pid(run, Duration::from_secs(5)) {
                kill(i64::from(pid), "-HUP");
            }
            (
                format!(
                    "fixed after {}s; /health showed the rejection: {}",
                    d.as_secs(),
                    rejected.map_or("no answer".into(), |b| b.to_string())
                ),
                Manifest::Done,
            )
        }
        Kind::Deploy { backup } => {
            let _g = run.deploy_lock.lock().unwrap_or_else(|p| p.into_inner());
            let to = if run.st().current_bot.ends_with(":2") {
                "berth-demo/bot:1"
            } else {
                "berth-demo/bot:2"
            };
            let mut args = vec!["deploy", "bot", to];
            if !backup {
                args.push("--no-backup");
            }
            match run.berth_cmd(&args).output() {
                Ok(out) => {
                    if out.status.success() {
                        run.st().current_bot = to.to_string();
                    } else if let Some(img) = current_bot_image(run) {
                        // Rolled back, or berth died under it: ask what runs.
                        run.st().current_bot = img;
                    }
                    (format!("to {to}: {}", output_line(&out)), Manifest::Done)
                }
                Err(e) => (format!("missed: {e}"), Manifest::Done),
            }
        }
        Kind::DeployBroken => {
            let _g = run.deploy_lock.lock().unwrap_or_else(|p| p.into_inner());
            match run
                .berth_cmd(&["deploy", "bot", "berth-demo/bot:broken", "--no-backup"])
                .output()
            {
                Ok(out) => {
                    if out.status.success() {
                        run.violate("berth deploy of bot:broken reported success".into());
                    }
                    if let Some(img) = current_bot_image(run) {
                        run.st().current_bot = img;
                    }
                    (output_line(&out), Manifest::Done)
                }
                Err(e) => (format!("missed: {e}"), Manifest::Done),
            }
        }
        Kind::Backup => backup(run),
        Kind::Restore => restore(run),
        Kind::DiskFill(d) => {
            let _g = run.disk_lock.lock().unwrap_or_else(|p| p.into_inner());
            let path = run.backups.join("chaos-filler");
            let mut written = 0u64;
            if let Ok(mut f) = std::fs::File::create(&path) {
                let chunk = vec![0u8; 1 << 16];
                while f.write_all(&chunk).is_ok() {
                    written += chunk.len() as u64;
                }
                let _ = f.sync_all();
            }
            std::thread::sleep(*d);
            let _ = std::fs::remove_file(&path);
            (
                format!("{} MiB filler for {}s", written >> 20, d.as_secs()),
                Manifest::Done,
            )
        }
    }
}

fn current_bot_image(run: &Run) -> Option<String> {
    docker(&["inspect", "-f", "{{.Config.Image}}", &run.container("bot")]).ok()
}

fn backup(run: &Arc<Run>) -> (String, Manifest) {
    let started = now_ms();
    let out = match run.berth_cmd(&["backup"]).output() {
        Ok(o) => o,
        Err(e) => return (format!("missed: {e}"), Manifest::Done),
    };
    if !out.status.success() {
        return (format!("failed: {}", output_line(&out)), Manifest::Done);
    }
    let id = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .last()
        .unwrap_or("")
        .to_string();
    // Kept now: retention may delete the file at the next backup.
    match std::fs::read(run.backups.join(format!("{id}.dump"))) {
        Ok(bytes) => {
            run.st().backups.push((id.clone(), started, bytes));
            (format!("ok {id}"), Manifest::Done)
        }
        Err(e) => {
            run.violate(format!(
                "backup {id} reported success but its dump cannot be read: {e}"
            ));
            (format!("ok {id}, dump unreadable"), Manifest::Done)
        }
    }
}

fn restore(run: &Arc<Run>) -> (String, Manifest) {
    // A fresh backup at the quiet point, so the updates a restore rolls back are those of a
    // few seconds (an older one may also be gone by retention).
    let before = now_ms();
    let (taken, _) = backup(run);
    let Some((id, started)) = run
        .st()
        .backups
        .last()
        .filter(|(_, s, _)| *s >= before)
        .map(|(i, s, _)| (i.clone(), *s))
    else {
        return (
            format!("skipped: the backup before it did not succeed ({taken})"),
            Manifest::Done,
        );
    };
    // The window in which acknowledged updates may be missing afterwards: from the start of
    // the backup restored to the end of the restore (set below).
    let out = run.berth_cmd(&["restore", &id, "--yes"]).output();
    let end = now_ms() + 2000;
    run.st().restore_windows.push((started, end));
    match out {
        Ok(out) if out.status.success() => (format!("restored {id}"), Manifest::Done),
        Ok(out) => (format!("failed: {}", output_line(&out)), Manifest::Done),
        Err(e) => (format!("missed: {e}"), Manifest::Done),
    }
}

fn cleanup(run: &Arc<Run>) {
    run.stop.store(true, Ordering::SeqCst);
    // The supervisor kills berth when it sees `stop`.
    let t = Instant::now();
    while berth_pid(run, Duration::ZERO).is_some() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(pid) = berth_pid(run, Duration::ZERO) {
        kill(i64::from(pid), "-9");
    }
    let label = format!("label=berth.project={}", run.project);
    if let Ok(ids) = docker(&["ps", "-aq", "--filter", &label])
        && !ids.is_empty()
    {
        let mut a = vec!["rm", "-f", "-v"];
        a.extend(ids.lines());
        let _ = docker(&a);
    }
    if let Ok(n) = docker(&["network", "ls", "-q", "--filter", &label]) {
        for id in n.lines() {
            let _ = docker(&["network", "rm", id]);
        }
    }
    if let Ok(v) = docker(&["volume", "ls", "-q", "--filter", &label]) {
        for id in v.lines() {
            let _ = docker(&["volume", "rm", "-f", id]);
        }
    }
    if let Ok(mut p) = run.proxy.lock() {
        p.take();
    }
    let _ = Command::new("umount").arg(&run.backups).status();
}

fn pct(v: &mut [u64], p: f64) -> u64 {
    if v.is_empty() {
        return 0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The end: convergence per fault from the samples, lost updates, leaks, backups,
/// resource growth; then the report. Ok(true) when anything was violated.
fn finish(
    run: &Arc<Run>,
    schedule: &[Fault],
    minutes: u64,
    faults_end: u64,
) -> anyhow::Result<bool> {
    // Convergence per fault.
    let (samples, faults_view, events, starts) = {
        let st = run.st();
        (
            st.samples.clone(),
            st.faults
                .iter()
                .map(|f| {
                    (
                        f.index,
                        f.kind.clone(),
                        f.injected_ms,
                        f.done_ms,
                        f.manifest.clone(),
                        f.outcome.clone(),
                    )
                })
                .collect::<Vec<_>>(),
            st.events.clone(),
            st.berth_starts.clone(),
        )
    };
    let stable_from = |from: u64| -> Option<u64> {
        let mut since: Option<u64> = None;
        for s in samples.iter().filter(|s| s.ms >= from) {
            if s.up {
                let t = *since.get_or_insert(s.ms);
                if s.ms - t >= STABLE_MS {
                    return Some(t);
                }
            } else {
                since = None;
            }
        }
        None
    };
    let mut recovery: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    let mut bounds: BTreeMap<String, u64> = BTreeMap::new();
    let mut per_kind: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut overlapped: BTreeMap<String, u64> = BTreeMap::new();
    for (index, kind, injected, done, manifest, outcome) in &faults_view {
        let name = kind.name();
        let e = per_kind.entry(name.clone()).or_default();
        e.0 += 1;
        if outcome.starts_with("missed") || outcome.starts_with("skipped") {
            e.1 += 1;
        }
        let from = match manifest {
            Manifest::Done => *done,
            Manifest::StartOf(svc) => events
                .iter()
                .find(|(ms, action, s, _)| ms >= injected && action == "start" && s == svc)
                .map(|(ms, ..)| *ms),
            Manifest::BerthStart => starts
                .iter()
                .find(|(ms, _)| ms > injected)
                .map(|(ms, _)| *ms),
        };
        let bound = kind.bound().as_millis() as u64;
        let b = bounds.entry(name.clone()).or_insert(0);
        *b = (*b).max(bound);
        let rec = from
            .and_then(stable_from)
            .map(|t| t.saturating_sub(*injected));
        match rec {
            Some(r) => {
                recovery.entry(name.clone()).or_default().push(r);
                // Faults that hit before the stack was up again share this recovery: it is
                // judged from the last of them, against the largest of their bounds.
                let up_at = injected + r;
                let (last_hit, chain_bound) = faults_view
                    .iter()
                    .filter(|f| f.2 >= *injected && f.2 < up_at)
                    .fold((*injected, bound), |(l, b), f| {
                        (l.max(f.2), b.max(f.1.bound().as_millis() as u64))
                    });
                if last_hit > *injected {
                    *overlapped.entry(name.clone()).or_insert(0) += 1;
                }
                if up_at - last_hit > chain_bound {
                    let ms = *injected;
                    run.st().violations.push(Violation {
                        at_ms: ms,
                        what: format!(
                            "not up again within {:.0}s of {} (took {:.1}s; {outcome})",
                            chain_bound as f64 / 1000.0,
                            kind,
                            r as f64 / 1000.0
                        ),
                        after: Some(format!("#{index} {kind}")),
                    });
                }
            }
            None => run.st().violations.push(Violation {
                at_ms: *injected,
                what: format!(
                    "never up again after {kind} ({}; {outcome})",
                    if from.is_none() {
                        "the fault's effect was never seen to end"
                    } else {
                        "no stable 2 s afterwards"
                    }
                ),
                after: Some(format!("#{index} {kind}")),
            }),
        }
    }
    let final_rec = stable_from(faults_end).map(|t| t.saturating_sub(faults_end));
    if final_rec.is_none_or(|r| r > FINAL_BOUND_MS) {
        run.st().violations.push(Violation {
            at_ms: faults_end,
            what: format!(
                "not up within 30 s of the last fault ({})",
                final_rec.map_or("never".into(), |r| format!("{:.1}s", r as f64 / 1000.0))
            ),
            after: None,
        });
    }

    // Lost updates and latency.
    let rows = psql(
        run,
        "bot",
        "SELECT chat_id, (extract(epoch from first_seen) * 1000)::bigint FROM users",
    );
    let mut lat = Vec::new();
    let (mut injected, mut acked, mut lost, mut excused, mut dropped) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    match rows {
        Ok(rows) => {
            let handled: HashMap<i64, u64> = rows
                .lines()
                .filter_map(|l| {
                    let (a, b) = l.split_once('|')?;
                    Some((a.parse().ok()?, b.parse().ok()?))
                })
                .collect();
            let st = run.st();
            let windows = st.restore_windows.clone();
            let mut missing = Vec::new();
            for u in &st.updates {
                injected += 1;
                if let Some(h) = handled.get(&u.chat) {
                    lat.push(h.saturating_sub(u.sent_ms));
                }
                dropped += u64::from(u.dropped);
                let Some(ack) = u.acked_ms else { continue };
                acked += 1;
                if handled.contains_key(&u.chat) {
                    continue;
                }
                if windows.iter().any(|(a, b)| ack >= *a && ack <= *b) {
                    excused += 1;
                } else {
                    lost += 1;
                    missing.push((u.id, u.chat, ack));
                }
            }
            drop(st);
            for (id, chat, ack) in missing.iter().take(20) {
                run.st().violations.push(Violation {
                    at_ms: *ack,
                    what: format!(
                        "update {id} (chat {chat}) was confirmed by the bot but has no row in PostgreSQL"
                    ),
                    after: None,
                });
            }
            if missing.len() > 20 {
                run.st().violations.push(Violation {
                    at_ms: faults_end,
                    what: format!("... and {} more lost updates", missing.len() - 20),
                    after: None,
                });
            }
        }
        Err(e) => run.st().violations.push(Violation {
            at_ms: now_ms(),
            what: format!("cannot read the bot's rows at the end: {e:#}"),
            after: None,
        }),
    }

    // Every backup reported successful restores into a scratch database.
    let backups: Vec<(String, Vec<u8>)> = run
        .st()
        .backups
        .iter()
        .map(|(id, _, b)| (id.clone(), b.clone()))
        .collect();
    let mut verified = 0;
    for (i, (id, dump)) in backups.iter().enumerate() {
        match verify_dump(run, i, dump) {
            Ok(rows) => {
                verified += 1;
                eprintln!("chaos: backup {id} restores ({rows} users)");
            }
            Err(e) => run.st().violations.push(Violation {
                at_ms: now_ms(),
                what: format!("backup {id} reported success but does not restore: {e:#}"),
                after: None,
            }),
        }
    }

    // Leaks.
    let leaks = leaks(run);
    for l in &leaks {
        run.st().violations.push(Violation {
            at_ms: now_ms(),
            what: l.clone(),
            after: None,
        });
    }

    // berth's RSS and fds not growing: the largest of the last quarter of the run against
    // the largest of the first quarter (berth restarts along the way, so this compares
    // processes doing the same work at the start and at the end).
    let usage = run.st().usage.clone();
    let (first, last) = usage_quarters(&usage);
    if let (Some((r0, f0)), Some((r1, f1))) = (first, last) {
        if r1 > r0 + r0 / 2 + 8 * 1024 {
            run.st().violations.push(Violation {
                at_ms: now_ms(),
                what: format!(
                    "berth's RSS grew: {} KiB at most in the first quarter, {} KiB in the last",
                    r0, r1
                ),
                after: None,
            });
        }
        if f1 > f0 + 32 {
            run.st().violations.push(Violation {
                at_ms: now_ms(),
                what: format!(
                    "berth's open fds grew: {f0} at most in the first quarter, {f1} in the last"
                ),
                after: None,
            });
        }
    }

    // The report.
    let st = run.st();
    let mut md = format!(
        "# Chaos soak\n\n`cargo xtask chaos --minutes {minutes} --seed {seed}` — {n} faults scheduled, {m} injected; \
         berth started {starts} times ({exits} exits it was not killed for).\n\n",
        seed = run.seed,
        n = schedule.len(),
        m = st.faults.len(),
        starts = st.berth_starts.len(),
        exits = st.berth_exits.len(),
    );
    md.push_str(&format!(
        "## Invariant violations: {}\n\n",
        st.violations.len()
    ));
    let mut vs = st.violations.clone();
    vs.sort_by_key(|v| v.at_ms);
    for v in &vs {
        md.push_str(&format!(
            "- +{:.1}s (seed {}): {}{}\n",
            run.t(v.at_ms),
            run.seed,
            v.what,
            v.after
                .as_ref()
                .map_or(String::new(), |a| format!(" — last fault before: {a}"))
        ));
    }
    md.push_str("\n## Faults and recovery (injection → stack up and stable for 2 s)\n\nUp: `/health` says ok or degraded, every service has a running container, one bot container, and no update waits over 3 s. A recovery is looked for after the fault's effect (the target's next start, berth's restart, the end of the action). Overlapped: another fault hit before the stack was up again; the bound is then applied from the last one.\n\n| fault | injected | missed | overlapped | recovery p50 | p95 | max | bound |\n|---|---|---|---|---|---|---|---|\n");
    for (name, (n, missed)) in &per_kind {
        let mut r = recovery.get(name).cloned().unwrap_or_default();
        let (p50, p95, max) = (
            pct(&mut r, 0.5),
            pct(&mut r, 0.95),
            r.iter().max().copied().unwrap_or(0),
        );
        md.push_str(&format!(
            "| {name} | {n} | {missed} | {} | {:.1} s | {:.1} s | {:.1} s | {:.0} s |\n",
            overlapped.get(name).copied().unwrap_or(0),
            p50 as f64 / 1000.0,
            p95 as f64 / 1000.0,
            max as f64 / 1000.0,
            bounds.get(name).copied().unwrap_or(0) as f64 / 1000.0
        ));
    }
    md.push_str(&format!(
        "\nAfter the last fault: up in {}.\n",
        final_rec.map_or("never".into(), |r| format!("{:.1} s", r as f64 / 1000.0))
    ));
    let mut l = lat.clone();
    md.push_str(&format!(
        "\n## Traffic\n\n{RATE} updates/s: {injected} queued at the fake Bot API ({} refused while it was down), {acked} confirmed by the bot, \
         {lost} confirmed but lost, {excused} confirmed and rolled back by a restore (accounted), \
         {dropped} still queued in a fake Bot API when it was killed (gone with it, not confirmed). \
         409 conflicts: {}. `/health` lagged the engine (service down < 2 s, reported up) in {} samples.\n\n\
         Handling latency (queued → row in PostgreSQL), over the run: p50 {} ms, p99 {} ms, max {} ms ({} updates).\n",
        st.refused_updates,
        st.conflicts,
        st.health_lag,
        pct(&mut l, 0.5),
        pct(&mut l, 0.99),
        l.iter().max().copied().unwrap_or(0),
        lat.len()
    ));
    md.push_str(&format!(
        "\n## Backups\n\n{} reported successful, {verified} restored into a scratch database.\n",
        backups.len()
    ));
    md.push_str(
        "\n## berth's RSS and open fds over time\n\n| t | pid | RSS | fds |\n|---|---|---|---|\n",
    );
    let step = (usage.len() / 30).max(1);
    for (ms, pid, rss, fds) in usage.iter().step_by(step) {
        md.push_str(&format!(
            "| +{:.0}s | {pid} | {:.1} MiB | {fds} |\n",
            run.t(*ms),
            *rss as f64 / 1024.0
        ));
    }
    if let (Some((r0, f0)), Some((r1, f1))) = (first, last) {
        md.push_str(&format!(
            "\nLargest in the first quarter: {:.1} MiB, {f0} fds; in the last quarter: {:.1} MiB, {f1} fds.\n",
            r0 as f64 / 1024.0,
            r1 as f64 / 1024.0
        ));
    }
    if !st.berth_exits.is_empty() {
        md.push_str("\n## berth exits the run did not cause\n\n");
        for (ms, s) in &st.berth_exits {
            md.push_str(&format!("- +{:.1}s: {s}\n", run.t(*ms)));
        }
    }
    md.push_str("\n## Faults\n\n");
    for f in &st.faults {
        md.push_str(&format!(
            "- #{} +{:.1}s {}: {}\n",
            f.index,
            run.t(f.injected_ms),
            f.kind,
            f.outcome
        ));
    }
    let failed = !st.violations.is_empty();
    drop(st);
    let path = target_dir().join("chaos/report.md");
    std::fs::write(&path, &md)?;
    // Keep berth's log beside the report.
    let _ = std::fs::copy(
        run.dir.join("berth.log"),
        target_dir().join("chaos/berth.log"),
    );
    println!("{md}");
    println!("report: {}", path.display());
    Ok(failed)
}

/// (largest RSS KiB, largest fd count) in a stretch of the run.
type Peak = Option<(u64, u64)>;

fn usage_quarters(usage: &[(u64, u32, u64, u64)]) -> (Peak, Peak) {
    let (Some(a), Some(b)) = (usage.first(), usage.last()) else {
        return (None, None);
    };
    let span = b.0.saturating_sub(a.0).max(1);
    let max_in = |lo: u64, hi: u64| {
        let v: Vec<_> = usage.iter().filter(|u| u.0 >= lo && u.0 <= hi).collect();
        if v.is_empty() {
            return None;
        }
        Some((
            v.iter().map(|u| u.2).max().unwrap_or(0),
            v.iter().map(|u| u.3).max().unwrap_or(0),
        ))
    };
    (max_in(a.0, a.0 + span / 4), max_in(b.0 - span / 4, b.0))
}

fn psql(run: &Run, db: &str, sql: &str) -> anyhow::Result<String> {
    docker(&[
        "exec",
        &run.container("postgres"),
        "psql",
        "-U",
        "bot",
        "-d",
        db,
        "-tAc",
        sql,
    ])
}

/// Restores a dump into a scratch database; returns its users row count.
fn verify_dump(run: &Run, i: usize, dump: &[u8]) -> anyhow::Result<u64> {
    let db = format!("chaos_verify_{i}");
    psql(run, "postgres", &format!("DROP DATABASE IF EXISTS {db}"))?;
    psql(run, "postgres", &format!("CREATE DATABASE {db}"))?;
    let mut child = Command::new("docker")
        .args([
            "exec",
            "-i",
            &run.container("postgres"),
            "pg_restore",
            "-U",
            "bot",
            "--no-owner",
            "--exit-on-error",
            "-d",
            &db,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(dump)?;
    let out = child.wait_with_output()?;
    let result = if out.status.success() {
        psql(run, &db, "SELECT count(*) FROM users")
            .and_then(|n| n.trim().parse::<u64>().context("count"))
    } else {
        Err(anyhow::anyhow!(
            "pg_restore: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    };
    psql(run, "postgres", &format!("DROP DATABASE IF EXISTS {db}"))?;
    result
}

/// What is left that the config does not account for.
fn leaks(run: &Run) -> Vec<String> {
    let mut out = Vec::new();
    let label = format!("label=berth.project={}", run.project);
    match containers(run) {
        Some(cs) => {
            let mut per: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
            for (name, state, svc) in &cs {
                let allowed = SERVICES.iter().any(|s| {
                    *name == run.container(s) || *name == format!("{}.previous", run.container(s))
                });
                if !allowed {
                    out.push(format!("container {name} ({state}) left over"));
                }
                if !name.ends_with(".previous") {
                    per.entry(svc).or_default().push(name);
                }
            }
            for (svc, names) in per {
                if names.len() > 1 {
                    out.push(format!("duplicate containers for {svc}: {names:?}"));
                }
            }
            for s in SERVICES {
                if !cs
                    .iter()
                    .any(|(n, st, _)| *n == run.container(s) && st == "running")
                {
                    out.push(format!("{s} is not running at the end"));
                }
            }
        }
        None => out.push("docker ps failed at the end".into()),
    }
    if let Ok(n) = docker(&["network", "ls", "--filter", &label, "--format", "{{.Name}}"]) {
        let n: Vec<&str> = n.lines().collect();
        if n.len() != 1 {
            out.push(format!("networks of the project: {n:?} (want one)"));
        }
    }
    if let Ok(v) = docker(&["volume", "ls", "--filter", &label, "--format", "{{.Name}}"]) {
        for name in v.lines() {
            if !(name.ends_with("pgdata") || name.ends_with("redisdata")) {
                out.push(format!("volume {name} left over"));
            }
        }
    }
    if let Ok(dbs) = psql(run, "postgres", "SELECT datname FROM pg_database") {
        for db in dbs.lines() {
            if !matches!(db, "bot" | "postgres" | "template0" | "template1") {
                out.push(format!("database {db} left over"));
            }
        }
    }
    // The backup folder holds whole backups only.
    if let Ok(rd) = std::fs::read_dir(&run.backups) {
        let names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        for n in &names {
            let Some((id, ext)) = n.rsplit_once('.') else {
                out.push(format!("backup folder: {n} left over"));
                continue;
            };
            let whole =
                names.contains(&format!("{id}.json")) && names.contains(&format!("{id}.dump"));
            if !matches!(ext, "json" | "dump" | "rdb") || !whole {
                out.push(format!("backup folder: {n} left over"));
            }
        }
    }
    out
}
