//! Stage two: validated domain types. Everything here is checked; code that holds a
//! `Config` never re-validates it.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was loaded from (absolute when loaded through `load`).
    pub path: PathBuf,
    pub supervisor: Supervisor,
    /// Services by name, in name order.
    pub services: BTreeMap<String, Service>,
    pub backup: Option<Backup>,
    pub alerts: Option<Alerts>,
    /// Pull credentials by registry host (`ghcr.io`, `registry.digitalocean.com`,
    /// `127.0.0.1:5000`; `docker.io` for Docker Hub).
    pub registries: BTreeMap<String, Registry>,
    /// What is allowed but probably not meant, as `FILE:LINE:COL: message` (`berth
    /// check` prints them; the daemon logs them).
    pub warnings: Vec<String>,
}

/// `[registries."HOST"]`: the password comes from the env file only.
#[derive(Debug, Clone, PartialEq)]
pub struct Registry {
    pub username: Value,
    pub password: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Supervisor {
    pub project: String,
    pub health_listen: SocketAddr,
    pub state_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub env_file: Option<PathBuf>,
    pub on_stop: OnStop,
}

impl Supervisor {
    /// The settings a reload cannot apply to a running berth (it has bound its sockets,
    /// named its containers and opened its state with them), as `key (old -> new)`.
    /// `env_file` and `on_stop` take effect on reload.
    pub fn restart_needed(&self, new: &Supervisor) -> Vec<String> {
        let mut out = Vec::new();
        let mut check = |key: &str, old: String, new: String| {
            if old != new {
                out.push(format!("supervisor.{key} ({old} -> {new})"));
            }
        };
        check("project", self.project.clone(), new.project.clone());
        check(
            "health_listen",
            self.health_listen.to_string(),
            new.health_listen.to_string(),
        );
        check(
            "state_dir",
            self.state_dir.display().to_string(),
            new.state_dir.display().to_string(),
        );
        check(
            "admin_socket",
            self.admin_socket.display().to_string(),
            new.admin_socket.display().to_string(),
        );
        out
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnStop {
    /// Leave containers running when berth stops (the default): restarting berth
    /// restarts nothing.
    Leave,
    /// Stop containers in reverse dependency order.
    Stop,
}

/// A value from the file after `${VAR}` interpolation. `secret` is true when any part came
/// from a variable; such values are never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Value {
    pub template: String,
    pub value: String,
    pub secret: bool,
}

impl Value {
    pub fn plain(s: &str) -> Self {
        Value {
            template: s.to_string(),
            value: s.to_string(),
            secret: false,
        }
    }

    /// What may be shown to a person: the template for secrets (`${VAR}` references), the
    /// value otherwise.
    pub fn display(&self) -> &str {
        if self.secret {
            &self.template
        } else {
            &self.value
        }
    }
}

impl std::fmt::Debug for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.display())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub image: String,
    /// `${VAR}` works here as in `env` (and keeps the value secret).
    pub command: Option<Vec<Value>>,
    pub entrypoint: Option<Vec<Value>>,
    pub user: Option<String>,
    pub env: BTreeMap<String, Value>,
    pub volumes: Vec<VolumeMount>,
    pub ports: Vec<PortMapping>,
    pub memory: Option<u64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub read_only: bool,
    pub tmpfs: Vec<String>,
    pub stop_grace_period: Duration,
    /// Depends on everything here (`network_of` among them).
    pub depends_on: Vec<String>,
    /// `network = "service:NAME"`: the containers join NAME's network namespace, so
    /// starting one (a restart, a deploy's switch) skips the engine's network set-up;
    /// NAME holds the address, the alias and the published ports.
    pub network_of: Option<String>,
    /// More names than its own that the service answers to on the project network: a
    /// holder takes the name of the service in its namespace (`aliases = ["redis"]` on
    /// `redis-net`), so clients keep the address they knew.
    pub aliases: Vec<String>,
    pub probe: Option<Probe>,
    pub restart: RestartPolicy,
    pub logs: Logs,
    pub deploy: Deploy,
    /// Where the image comes from when `berth deploy --build` builds it.
    pub build: Option<Build>,
}

/// `[services.X.build]`. Not part of the container spec: a build makes an image, and the
/// deploy of that image changes the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    /// The context folder, absolute (relative paths are the config file's).
    pub context: PathBuf,
    /// The Dockerfile's path inside the context.
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSource {
    /// A named volume, created by berth as `<project>-<name>`.
    Named(String),
    /// A host path (absolute after loading: relative paths are resolved against the file).
    Bind(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    pub source: VolumeSource,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    pub host_ip: IpAddr,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Probe {
    pub kind: ProbeKind,
    pub interval: Duration,
    pub timeout: Duration,
    pub failures: u32,
    /// How long a starting container may take to pass its first probe.
    pub start_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ProbeKind {
    Postgres {
        user: String,
        database: String,
        password: Option<Value>,
        port: u16,
    },
    Redis {
        password: Option<Value>,
        port: u16,
    },
    Http {
        port: u16,
        path: String,
    },
    Tcp {
        port: u16,
    },
    Exec {
        command: Vec<String>,
    },
}

impl ProbeKind {
    pub fn name(&self) -> &'static str {
        match self {
            ProbeKind::Postgres { .. } => "postgres",
            ProbeKind::Redis { .. } => "redis",
            ProbeKind::Http { .. } => "http",
            ProbeKind::Tcp { .. } => "tcp",
            ProbeKind::Exec { .. } => "exec",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub reset_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            reset_after: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logs {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for Logs {
    fn default() -> Self {
        Logs {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rollback {
    Auto,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Stop the old container before starting the new one: never two pollers.
    StopFirst,
    /// Start the new one first, for services that tolerate overlap.
    StartFirst,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deploy {
    pub migrate: Option<Vec<String>>,
    pub health_timeout: Duration,
    pub rollback: Rollback,
    pub strategy: Strategy,
    pub restore_db_on_rollback: bool,
}

impl Default for Deploy {
    fn default() -> Self {
        Deploy {
            migrate: None,
            health_timeout: Duration::from_secs(60),
            rollback: Rollback::Auto,
            strategy: Strategy::StopFirst,
            restore_db_on_rollback: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Schedule {
    /// Every day at this local time.
    Daily { hour: u8, minute: u8 },
    /// A five-field cron expression.
    Cron(String),
}

impl Schedule {
    /// The schedule as a cron expression (five fields, or six with seconds first).
    pub fn cron_expression(&self) -> String {
        match self {
            Schedule::Daily { hour, minute } => format!("{minute} {hour} * * *"),
            Schedule::Cron(c) => c.clone(),
        }
    }

    /// The schedule, ready to evaluate.
    pub fn cron(&self) -> Result<croner::Cron, String> {
        parse_cron(&self.cron_expression())
    }
}

pub(crate) fn parse_cron(expr: &str) -> Result<croner::Cron, String> {
    use croner::parser::{CronParser, Seconds};
    CronParser::builder()
        .seconds(Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| e.to_string())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    None,
    /// `pg_restore --list` on the file.
    List,
    /// A full restore into a scratch database.
    Restore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keep {
    pub daily: u32,
    pub weekly: u32,
    pub monthly: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backup {
    pub service: String,
    pub schedule: Schedule,
    pub dir: PathBuf,
    pub keep: Keep,
    pub verify: Verify,
    pub database: String,
    pub user: String,
    /// Redis service whose RDB file is copied next to each backup.
    pub redis: Option<String>,
    /// S3-compatible storage each verified backup is copied to.
    pub offsite: Option<Offsite>,
}

/// `[backup.offsite]`: DigitalOcean Spaces, AWS S3, MinIO...
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offsite {
    /// `https://fra1.digitaloceanspaces.com`, `https://s3.eu-west-1.amazonaws.com`...
    pub endpoint: String,
    pub bucket: String,
    pub region: String,
    /// Key prefix inside the bucket (`berth/`); empty for the bucket's root.
    pub prefix: String,
    /// Both from the env file: keys are secrets.
    pub access_key: Value,
    pub secret_key: Value,
    /// Its own retention (off-site copies usually go back further).
    pub keep: Keep,
    /// `bucket` in the path (MinIO and most S3-compatible stores) rather than the host name.
    pub path_style: bool,
    /// An age X25519 secret key (`AGE-SECRET-KEY-1…`, from the env file): dumps and Redis
    /// copies are encrypted to it before they leave the host. Validated (checksum too).
    pub encryption_key: Option<Value>,
}

impl Config {
    /// Names of services in start order: every service after all it depends on; ties by
    /// name. Validation guarantees there is no cycle.
    pub fn start_order(&self) -> Vec<String> {
        // Rounds over the services in name order; a service joins as soon as all it
        // depends on has. Counting what each still waits for keeps a round linear (a
        // long chain is many rounds, but no longer cubic).
        let mut waiting: BTreeMap<&str, usize> = BTreeMap::new();
        let mut dependants: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (name, svc) in &self.services {
            let known: Vec<&str> = svc
                .depends_on
                .iter()
                .map(String::as_str)
                .filter(|d| self.services.contains_key(*d))
                .collect();
            waiting.insert(name, known.len());
            for d in known {
                dependants.entry(d).or_default().push(name);
            }
        }
        let mut done: Vec<String> = Vec::with_capacity(self.services.len());
        let mut left: Vec<&str> = self.services.keys().map(String::as_str).collect();
        while !left.is_empty() {
            let before = left.len();
            let mut still = Vec::with_capacity(left.len());
            for name in left {
                if waiting.get(name).copied().unwrap_or(0) == 0 {
                    done.push(name.to_string());
                    for d in dependants.get(name).into_iter().flatten() {
                        if let Some(n) = waiting.get_mut(d) {
                            *n -= 1;
                        }
                    }
                } else {
                    still.push(name);
                }
            }
            if still.len() == before {
                break; // a cycle: unreachable for a validated config
            }
            left = still;
        }
        done
    }

    pub fn network_name(&self) -> String {
        self.supervisor.project.clone()
    }

    pub fn container_name(&self, service: &str) -> String {
        format!("{}-{}", self.supervisor.project, service)
    }

    pub fn volume_name(&self, volume: &str) -> String {
        format!("{}-{}", self.supervisor.project, volume)
    }

    /// Named volumes used by any service, by their engine name.
    pub fn volume_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .services
            .values()
            .flat_map(|s| s.volumes.iter())
            .filter_map(|v| match &v.source {
                VolumeSource::Named(n) => Some(self.volume_name(n)),
                VolumeSource::Bind(_) => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

impl Service {
    /// Hash of everything that shapes the container (not probes, restarts or deploy
    /// settings, which berth applies from outside). Secret values enter only through the
    /// SHA-256, so the label leaks nothing. Fields at their defaults are left out, so
    /// adding a field in a later berth version does not recreate every container.
    pub fn spec_hash(&self) -> String {
        let mut s = String::new();
        let mut field = |k: &str, v: String| {
            let _ = writeln!(s, "{k}={v}");
        };
        field("image", self.image.clone());
        // The values, formatted as the plain strings they were before `${VAR}` was allowed
        // here, so that containers made by an older berth keep their hash.
        let words = |v: &[Value]| format!("{:?}", v.iter().map(|w| &w.value).collect::<Vec<_>>());
        if let Some(c) = &self.command {
            field("command", words(c));
        }
        if let Some(e) = &self.entrypoint {
            field("entrypoint", words(e));
        }
        if let Some(u) = &self.user {
            field("user", u.clone());
        }
        for (k, v) in &self.env {
            field(&format!("env.{k}"), format!("{:?}", v.value));
        }
        for v in &self.volumes {
            field("volume", format!("{v:?}"));
        }
        for p in &self.ports {
            field("port", format!("{p:?}"));
        }
        if let Some(m) = self.memory {
            field("memory", m.to_string());
        }
        if let Some(c) = self.cpus {
            field("cpus", c.to_string());
        }
        if let Some(p) = self.pids_limit {
            field("pids_limit", p.to_string());
        }
        if self.read_only {
            field("read_only", "true".into());
        }
        for t in &self.tmpfs {
            field("tmpfs", t.clone());
        }
        if let Some(n) = &self.network_of {
            field("network", format!("service:{n}"));
        }
        for a in &self.aliases {
            field("alias", a.clone());
        }
        field(
            "stop_grace_period",
            self.stop_grace_period.as_millis().to_string(),
        );
        if self.logs != Logs::default() {
            field("logs", format!("{:?}", self.logs));
        }
        let digest = Sha256::digest(s.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Environment variables as `KEY=VALUE` for the engine.
    pub fn env_list(&self) -> Vec<String> {
        self.env
            .iter()
            .map(|(k, v)| format!("{k}={}", v.value))
            .collect()
    }

    /// Every secret value this service holds, for redaction.
    pub fn secrets(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self
            .env
            .values()
            .chain(self.command.iter().flatten())
            .chain(self.entrypoint.iter().flatten())
            .filter(|v| v.secret)
            .map(|v| v.value.as_str())
            .collect();
        if let Some(p) = &self.probe {
            match &p.kind {
                ProbeKind::Postgres {
                    password: Some(v), ..
                }
                | ProbeKind::Redis {
                    password: Some(v), ..
                } if v.secret => out.push(v.value.as_str()),
                _ => {}
            }
        }
        out
    }
}

/// `[alerts]`: where berth tells a human that the stack needs one.
#[derive(Debug, Clone, PartialEq)]
pub struct Alerts {
    pub telegram: Option<TelegramAlert>,
    pub webhook: Option<Webhook>,
    /// A service down (not running, or failing its probe) this long is an incident.
    pub down_after: Duration,
    /// An incident that clears and comes back within this time sends no new message.
    pub repeat_after: Duration,
    /// At most this many messages an hour per channel; the rest are counted and summed up.
    pub max_per_hour: u32,
    /// Also announce successful deploys (failed ones always are).
    pub deploy_succeeded: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TelegramAlert {
    pub chat_id: String,
    /// Always from the env file (`${VAR}`): a token is a secret.
    pub token: Value,
    /// The Bot API's base URL (`https://api.telegram.org`; tests use a fake one).
    pub api_base: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    /// Webhook URLs often carry a secret (Slack, Discord): `${VAR}` is allowed and kept secret.
    pub url: Value,
}
