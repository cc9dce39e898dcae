//! Harness for integration tests against the real Docker engine.
//!
//! Each test gets its own project name (so its containers, network and volumes carry
//! their own `berth.project` label), its own temp dir and free loopback ports, and
//! removes everything it made when dropped. Nothing is stopped by a broad name.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The workspace's target dir.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The berth binary (`cargo xtask test` builds it before the tests run).
pub fn berth_bin() -> PathBuf {
    let p = target_dir().join("debug/berth");
    assert!(
        p.exists(),
        "{} is missing: run the suite with `cargo xtask test` (it builds berth and the images)",
        p.display()
    );
    p
}

/// Fails the test early, with the fix, when the demo images are missing.
pub fn require_images() {
    for img in [
        "berth-demo/postgres:15",
        "berth-demo/redis:7",
        "berth-demo/fake-telegram:latest",
        "berth-demo/bot:1",
    ] {
        let ok = Command::new("docker")
            .args(["image", "inspect", "-f", "{{.Id}}", img])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "image {img} is missing: run `cargo xtask images` (or `cargo xtask test`)"
        );
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Polls `f` every 100 ms until it returns Some, or fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `docker ARGS`, stdout on success.
pub fn docker(args: &[&str]) -> anyhow::Result<String> {
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

/// `docker inspect` of one object, as JSON.
pub fn inspect(id: &str) -> Value {
    let s = docker(&["inspect", id]).expect("docker inspect");
    let v: Value = serde_json::from_str(&s).expect("inspect JSON");
    v[0].clone()
}

/// One test's stack: a project, a config file and the secrets it uses.
pub struct Stack {
    pub project: String,
    pub dir: tempfile::TempDir,
    pub health_port: u16,
    pub telegram_port: u16,
    pub config: PathBuf,
    pub secrets: Vec<String>,
}

impl Stack {
    /// A new, empty project named after the test.
    pub fn new(test: &str) -> Self {
        require_images();
        let project = format!("bt-{test}-{}", std::process::id());
        let dir = tempfile::Builder::new()
            .prefix("berth-test-")
            .tempdir()
            .expect("tempdir");
        let pg = format!("pg-{}", random_hex(8));
        let token = format!("123456:{}", random_hex(12));
        let env = dir.path().join("berth.env");
        std::fs::write(
            &env,
            format!("POSTGRES_PASSWORD={pg}\nTELEGRAM_BOT_TOKEN={token}\n"),
        )
        .expect("env file");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let config = dir.path().join("berth.toml");
        Stack {
            project,
            health_port: free_port(),
            telegram_port: free_port(),
            config,
            secrets: vec![pg, token],
            dir,
        }
    }

    /// The `[supervisor]` section for this stack.
    pub fn supervisor(&self) -> String {
        format!(
            "[supervisor]\nproject = \"{}\"\nhealth_listen = \"127.0.0.1:{}\"\nstate_dir = \"state\"\nadmin_socket = \"admin.sock\"\nenv_file = \"berth.env\"\n\n",
            self.project, self.health_port
        )
    }

    /// The demo stack (postgres, redis, telegram, bot) with `bot_image`.
    pub fn demo_config(&self, bot_image: &str) -> String {
        format!(
            r#"{sup}
[services.postgres]
image = "berth-demo/postgres:15"
env = {{ POSTGRES_USER = "bot", POSTGRES_DB = "bot", POSTGRES_PASSWORD = "${{POSTGRES_PASSWORD}}" }}
volumes = ["pgdata:/var/lib/postgresql/data"]
stop_grace_period = "10s"
probe = {{ postgres = {{ user = "bot", database = "bot", password = "${{POSTGRES_PASSWORD}}" }}, interval = "2s" }}

[services.redis]
image = "berth-demo/redis:7"
volumes = ["redisdata:/data"]
probe = {{ redis = {{}}, interval = "2s" }}

[services.telegram]
image = "berth-demo/fake-telegram:latest"
ports = ["{tg}:8081"]
probe = {{ http = {{ port = 8081, path = "/healthz" }}, interval = "2s" }}

[services.bot]
image = "{bot_image}"
depends_on = ["postgres", "redis", "telegram"]
env = {{ DATABASE_URL = "postgresql://bot:${{POSTGRES_PASSWORD}}@postgres:5432/bot", REDIS_URL = "redis://redis:6379/0", TELEGRAM_BOT_TOKEN = "${{TELEGRAM_BOT_TOKEN}}", TELEGRAM_API_BASE = "http://telegram:8081", POLL_TIMEOUT = "2" }}
read_only = true
tmpfs = ["/tmp"]
memory = "128MiB"
cpus = 0.5
pids_limit = 256
logs = {{ max_size = "1MiB", max_files = 3 }}
stop_grace_period = "10s"
probe = {{ http = {{ port = 8000, path = "/health" }}, interval = "2s" }}
"#,
            sup = self.supervisor(),
            tg = self.telegram_port,
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn start(&self) -> Daemon {
        Daemon::start(&self.config, self.dir.path(), self.health_port)
    }

    pub fn container_name(&self, service: &str) -> String {
        format!("{}-{service}", self.project)
    }

    /// Ids of this project's service containers, by service. Containers the engine is
    /// removing do not count; two live containers for one service fail the test.
    pub fn containers(&self) -> std::collections::BTreeMap<String, String> {
        let out = docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("label=berth.project={}", self.project),
            "--format",
            "{{.ID}} {{.State}} {{.Names}} {{.Label \"berth.service\"}}",
        ])
        .expect("docker ps");
        let mut map = std::collections::BTreeMap::new();
        for l in out.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [id, state, name, svc] = f[..] else {
                continue;
            };
            // A deploy's kept previous container is not the service's container.
            if matches!(state, "removing" | "dead") || name.contains(".previous") {
                continue;
            }
            if let Some(other) = map.insert(svc.to_string(), id.to_string()) {
                panic!("two containers for service {svc}: {other} and {id}\n{out}");
            }
        }
        map
    }

    /// The fake Bot API's control endpoint.
    pub fn telegram(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.telegram_port)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let label = format!("label=berth.project={}", self.project);
        if let Ok(ids) = docker(&["ps", "-aq", "--filter", &label])
            && !ids.is_empty()
        {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(ids.lines());
            let _ = docker(&args);
        }
        if let Ok(nets) = docker(&["network", "ls", "-q", "--filter", &label]) {
            for n in nets.lines() {
                let _ = docker(&["network", "rm", n]);
            }
        }
        if let Ok(vols) = docker(&["volume", "ls", "-q", "--filter", &label]) {
            for v in vols.lines() {
                let _ = docker(&["volume", "rm", "-f", v]);
            }
        }
    }
}

/// A running `berth run`. Killed (SIGKILL) when dropped, if still running.
pub struct Daemon {
    child: Child,
    pub log: PathBuf,
    pub health_port: u16,
}

impl Daemon {
    pub fn start(config: &Path, dir: &Path, health_port: u16) -> Self {
        Self::start_env(config, dir, health_port, &[])
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET /health: (status code, body). None if the daemon does not answer.
    pub fn health(&self) -> Option<(u16, Value)> {
        let client = reqwest::blocking::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(3))
            .build()
            .ok()?;
        let r = client
            .get(format!("http://127.0.0.1:{}/health", self.health_port))
            .send()
            .ok()?;
        let code = r.status().as_u16();
        Some((code, r.json().ok()?))
    }

    /// Waits until /health says every service is healthy; returns the document.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Value {
        let start = Instant::now();
        loop {
            if let Some((200, body)) = self.health()
                && body["status"] == "ok"
            {
                return body;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("berth exited ({status}) before healthy:\n{}", self.logs());
            }
            if start.elapsed() > timeout {
                panic!(
                    "not healthy after {timeout:?}: {:?}\nlog:\n{}",
                    self.health(),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what berth said.
        if std::thread::panicking() {
            let log = self.logs();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- last lines of berth's log ({}):", self.log.display());
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn http_client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .expect("http client")
}

impl Stack {
    /// Starts berth with extra environment variables.
    pub fn start_with_env(&self, env: &[(&str, &str)]) -> Daemon {
        Daemon::start_env(&self.config, self.dir.path(), self.health_port, env)
    }

    /// Runs a berth CLI command against this stack's config.
    pub fn berth(&self, args: &[&str]) -> std::process::Output {
        Command::new(berth_bin())
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .output()
            .expect("berth")
    }

    /// Runs SQL in the demo stack's database (user and database `bot`).
    pub fn psql(&self, sql: &str) -> String {
        docker(&[
            "exec",
            &self.container_name("postgres"),
            "psql",
            "-U",
            "bot",
            "-d",
            "bot",
            "-tAc",
            sql,
        ])
        .expect("psql")
    }

    /// `docker inspect` of a service's current container.
    pub fn inspect_service(&self, service: &str) -> Value {
        inspect(&self.container_name(service))
    }

    /// Kills the main process of a service's container with SIGKILL, from the host, as a
    /// crash would (a `docker kill` would count as a deliberate stop).
    pub fn crash(&self, service: &str) {
        let pid = self.inspect_service(service)["State"]["Pid"]
            .as_i64()
            .expect("pid");
        assert!(pid > 0, "{service} is not running");
        let ok = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -9 {pid}");
    }
}

impl Daemon {
    pub fn start_env(config: &Path, dir: &Path, health_port: u16, env: &[(&str, &str)]) -> Self {
        let n = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
        let log = dir.join(format!("berth-{n}.log"));
        let file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(berth_bin());
        cmd.args(["run", "-c"])
            .arg(config)
            .env("BERTH_LOG", "info,berth=debug")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Daemon {
            child: cmd.spawn().expect("spawn berth"),
            log,
            health_port,
        }
    }

    /// Polls /health until `f` accepts the document; returns it.
    pub fn wait_health(&self, what: &str, timeout: Duration, f: impl Fn(&Value) -> bool) -> Value {
        let mut last = None;
        let start = Instant::now();
        loop {
            if let Some((_, body)) = self.health() {
                if f(&body) {
                    return body;
                }
                last = Some(body);
            }
            if start.elapsed() > timeout {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; last /health: {last:#?}\nlog:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A unix-socket proxy in front of the Docker socket that a test can cut and restore, to
/// simulate losing the engine without touching the machine's dockerd.
pub struct SocketProxy {
    pub path: PathBuf,
    upstream: PathBuf,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::os::unix::net::UnixStream>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SocketProxy {
    pub fn new(path: PathBuf) -> Self {
        let mut p = SocketProxy {
            path,
            upstream: PathBuf::from("/var/run/docker.sock"),
            conns: Default::default(),
            stop: Default::default(),
            thread: None,
        };
        p.restore();
        p
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}", self.path.display())
    }

    /// Closes the socket and every connection through it.
    pub fn cut(&mut self) {
        use std::sync::atomic::Ordering;
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
        if let Ok(mut conns) = self.conns.lock() {
            for c in conns.drain(..) {
                let _ = c.shutdown(std::net::Shutdown::Both);
            }
        }
    }

    /// Listens again.
    pub fn restore(&mut self) {
        use std::os::unix::net::{UnixListener, UnixStream};
        use std::sync::atomic::Ordering;
        let _ = std::fs::remove_file(&self.path);
        let listener = UnixListener::bind(&self.path).expect("bind proxy socket");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        self.stop = stop.clone();
        let conns = self.conns.clone();
        let upstream = self.upstream.clone();
        self.thread = Some(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let Ok(server) = UnixStream::connect(&upstream) else {
                    continue;
                };
                let pipe = |mut a: UnixStream, mut b: UnixStream| {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Write);
                    });
                };
                if let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) {
                    if let Ok(mut all) = conns.lock() {
                        all.extend(client.try_clone().ok());
                        all.extend(server.try_clone().ok());
                    }
                    pipe(client, s2);
                    pipe(server, c2);
                }
            }
        }));
    }
}

impl Drop for SocketProxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A webhook receiver on 127.0.0.1: records each POSTed JSON body and answers 200, or,
/// built with `hanging`, accepts connections and never answers.
pub struct Webhook {
    pub port: u16,
    bodies: std::sync::Arc<std::sync::Mutex<Vec<Value>>>,
}

impl Webhook {
    pub fn start() -> Self {
        Self::spawn(false)
    }

    pub fn hanging() -> Self {
        Self::spawn(true)
    }

    fn spawn(hang: bool) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind webhook");
        let port = listener.local_addr().expect("addr").port();
        let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = bodies.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                if hang {
                    held.push(conn);
                    continue;
                }
                let mut reader = BufReader::new(match conn.try_clone() {
                    Ok(c) => c,
                    Err(_) => continue,
                });
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let l = line.trim_end();
                    if l.is_empty() {
                        break;
                    }
                    if let Some((k, v)) = l.split_once(':')
                        && k.eq_ignore_ascii_case("content-length")
                    {
                        len = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0; len];
                if reader.read_exact(&mut body).is_ok()
                    && let Ok(v) = serde_json::from_slice::<Value>(&body)
                    && let Ok(mut b) = store.lock()
                {
                    b.push(v);
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        Webhook { port, bodies }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// A local S3-compatible server (moto, from PyPI) on 127.0.0.1, stopped when dropped.
pub struct S3Server {
    pub port: u16,
    child: Option<Child>,
}

impl S3Server {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    pub fn start_on(port: u16) -> Self {
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server (pip install 'moto[server]'; cargo xtask test installs it)");
        let s = S3Server {
            port,
            child: Some(child),
        };
        wait_for("moto_server", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Creates a bucket (moto takes unsigned requests).
    pub fn create_bucket(&self, name: &str) {
        let r = http_client()
            .put(self.url(&format!("/{name}")))
            .send()
            .expect("create bucket");
        assert!(r.status().is_success(), "create bucket: {}", r.status());
    }

    pub fn put(&self, path: &str, body: &[u8]) {
        let r = http_client()
            .put(self.url(path))
            .body(body.to_vec())
            .send()
            .expect("put");
        assert!(r.status().is_success(), "put {path}: {}", r.status());
    }

    /// An object, fetched with a request signed with the uploader's keys.
    pub fn get_object(&self, bucket: &str, key: &str, access: &str, secret: &str) -> Vec<u8> {
        use rusty_s3::S3Action as _;
        let b = rusty_s3::Bucket::new(
            self.url("/").parse().expect("url"),
            rusty_s3::UrlStyle::Path,
            bucket.to_string(),
            "us-east-1",
        )
        .expect("bucket");
        let creds = rusty_s3::Credentials::new(access, secret);
        let url = b
            .get_object(Some(&creds), key)
            .sign(Duration::from_secs(60));
        let r = http_client().get(url).send().expect("get object");
        assert!(r.status().is_success(), "get {key}: {}", r.status());
        r.bytes().map(|b| b.to_vec()).expect("body")
    }

    pub fn get(&self, path: &str) -> Vec<u8> {
        http_client()
            .get(self.url(path))
            .send()
            .and_then(|r| r.bytes())
            .map(|b| b.to_vec())
            .expect("get")
    }

    /// Object keys under `prefix` in `bucket`.
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let xml =
            String::from_utf8_lossy(&self.get(&format!("/{bucket}?list-type=2&prefix={prefix}")))
                .to_string();
        xml.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next().map(str::to_string))
            .collect()
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A local image registry (Debian's docker-registry) on 127.0.0.1, stopped when dropped.
pub struct Registry {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    pub fn start() -> Self {
        Self::start_in(tempfile::tempdir().expect("tmp"), "")
    }

    /// A registry that wants `user`/`password` (htpasswd, bcrypt). Pushes log in with a
    /// Docker config of the test's own, never the runner's.
    pub fn with_password(user: &str, password: &str) -> Self {
        let dir = tempfile::tempdir().expect("tmp");
        let out = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .expect("htpasswd (apt-get install apache2-utils; cargo xtask test installs it)");
        assert!(out.status.success(), "htpasswd");
        let file = dir.path().join("htpasswd");
        std::fs::write(&file, &out.stdout).expect("htpasswd file");
        let auth = format!(
            "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
            file.display()
        );
        let r = Self::start_in(dir, &auth);
        let login = Command::new("docker")
            .env("DOCKER_CONFIG", r.client_config())
            .args(["login", "-u", user, "--password-stdin"])
            .arg(format!("127.0.0.1:{}", r.port))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin
                    .take()
                    .expect("stdin")
                    .write_all(password.as_bytes())?;
                c.wait()
            })
            .expect("docker login");
        assert!(login.success(), "docker login to the test registry");
        r
    }

    /// The Docker client config the pushes use (a folder of the test's).
    fn client_config(&self) -> PathBuf {
        self._dir.path().join("docker-client")
    }

    fn start_in(dir: tempfile::TempDir, auth: &str) -> Self {
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .expect("registry config");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "docker-registry (apt-get install docker-registry; cargo xtask test installs it)",
            );
        wait_for("the registry", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Registry {
            port,
            child,
            _dir: dir,
        }
    }

    /// Pushes a local image to this registry as `127.0.0.1:PORT/NAME` and removes that
    /// tag locally, so the engine has to pull it. Returns the reference.
    pub fn push(&self, local: &str, name: &str) -> String {
        let image = format!("127.0.0.1:{}/{name}", self.port);
        docker(&["tag", local, &image]).expect("tag");
        let push = Command::new("docker")
            .env("DOCKER_CONFIG", self.client_config())
            .args(["push", &image])
            .output()
            .expect("docker push");
        assert!(
            push.status.success(),
            "push: {}",
            String::from_utf8_lossy(&push.stderr)
        );
        docker(&["rmi", &image]).expect("rmi");
        image
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Metrics parsed by the Python Prometheus client: name{labels} value, one per line.
pub fn parse_metrics(text: &str) -> Vec<String> {
    let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families\nfor f in text_string_to_metric_families(sys.stdin.read()):\n    for s in f.samples:\n        print(s.name, sorted(s.labels.items()), float(s.value))\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python3");
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics (pip install prometheus_client):\n{}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// What the fake Bot API and the engine say about the bot.
impl Stack {
    /// The fake Bot API's `/_control/polls` (`conflicts`: getUpdates answered 409).
    pub fn polls(&self) -> Value {
        http_client()
            .get(self.telegram("/_control/polls"))
            .send()
            .expect("polls")
            .json()
            .expect("json")
    }

    /// getUpdates calls answered 409 because another poll was open: two pollers.
    pub fn conflicts(&self) -> u64 {
        self.polls()["conflicts"].as_u64().unwrap_or(u64::MAX)
    }

    /// Running containers of `service` (more than one bot would be two pollers).
    pub fn running(&self, service: &str) -> usize {
        docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=berth.project={}", self.project),
            "--filter",
            &format!("label=berth.service={service}"),
        ])
        .expect("docker ps")
        .lines()
        .count()
    }

    /// Sends `/start` from chat `chat`, waits until the bot has answered it, and returns
    /// the answer's text.
    pub fn wait_answered(&self, chat: i64, within: Duration) -> String {
        let http = http_client();
        http.post(self.telegram("/_control/updates"))
            .json(&serde_json::json!({"chat_id": chat, "text": "/start"}))
            .send()
            .expect("update");
        wait_for("the bot answers", within, || {
            let v: Value = http
                .get(self.telegram("/_control/sent"))
                .send()
                .ok()?
                .json()
                .ok()?;
            v["messages"]
                .as_array()?
                .iter()
                .find(|m| m["chat_id"] == chat)
                .map(|m| m["text"].as_str().unwrap_or_default().to_string())
        })
    }
}
