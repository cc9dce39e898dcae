//! The container engine behind a small trait. [`Engine`] speaks berth's own types;
//! [`DockerEngine`] implements it with bollard.
//!
//! Architecture invariant: this is the only crate that imports bollard. Nothing outside
//! it sees a bollard type.

mod docker;
#[cfg(feature = "fake")]
pub mod fake;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;

pub use docker::DockerEngine;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("docker engine unreachable: {0}")]
    Unreachable(String),
    #[error("{what}: not found")]
    NotFound { what: String },
    #[error("{what}: {message}")]
    Api { what: String, message: String },
}

impl EngineError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, EngineError::NotFound { .. })
    }
    pub fn is_unreachable(&self) -> bool {
        matches!(self, EngineError::Unreachable(_))
    }
}

pub type Result<T> = std::result::Result<T, EngineError>;

/// What to build: the tag to give the image, the Dockerfile's path in the context,
/// build arguments and the stage to stop at.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct BuildSpec {
    pub tag: String,
    pub dockerfile: String,
    pub args: BTreeMap<String, String>,
    pub target: Option<String>,
}

/// Credentials for one registry. Its `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    /// The registry host as images name it (`ghcr.io`, `127.0.0.1:5000`, `docker.io`).
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Everything needed to create one container.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub user: Option<String>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    /// Network to join, with the aliases other containers reach this one by.
    pub network: Option<(String, Vec<String>)>,
    /// Join this container's network namespace instead (`container:NAME`; `network` is
    /// then None). The engine keeps NAME's id if a container has that name at create
    /// (a new container of that name then needs a new joiner), else the name.
    pub join: Option<String>,
    /// `SOURCE:TARGET[:ro]`, SOURCE a volume name or an absolute host path.
    pub binds: Vec<String>,
    pub ports: Vec<Port>,
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
    pub pids_limit: Option<i64>,
    pub read_only: bool,
    /// Mount point → options (e.g. `rw,noexec,nosuid,size=64m`).
    pub tmpfs: BTreeMap<String, String>,
    pub log_max_size: Option<u64>,
    pub log_max_files: Option<u32>,
    pub stop_timeout: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    pub host_ip: IpAddr,
    /// 0 lets the engine choose.
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

/// A container as listed (cheap, no inspect).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    /// The container whose network namespace this one joins, if it does: an id, or the
    /// name it was created with if no container had it then.
    pub joined: Option<String>,
}

/// A container as inspected.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerDetails {
    pub id: String,
    pub name: String,
    pub image: String,
    pub labels: BTreeMap<String, String>,
    pub running: bool,
    pub status: String,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub pid: Option<i64>,
    /// RFC 3339, as the engine reports it.
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    /// IP address on each network, by network name.
    pub ips: BTreeMap<String, IpAddr>,
    /// The container whose network namespace this one joins: an id, or a name (as in
    /// [`ContainerSummary::joined`]).
    pub joined: Option<String>,
    pub restart_policy: Option<String>,
    /// Published ports: (host ip, host port, container port/proto).
    pub published: Vec<(String, String, String)>,
}

/// A container event from the engine's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub container_id: String,
    /// `start`, `die`, `oom`, `stop`, `kill`, `destroy`, ...
    pub action: String,
    pub labels: BTreeMap<String, String>,
    /// Exit code for `die`.
    pub exit_code: Option<i64>,
    pub time_nanos: i64,
}

/// A chunk of output from an exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
}

/// A running exec: its output, its stdin if asked for (shut it down to send EOF), and its
/// id to ask for the exit code once the output ends.
pub struct ExecStream {
    pub exec_id: String,
    pub output: BoxStream<'static, Result<Output>>,
    pub input: Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>,
}

/// What [`Engine::exec`] keeps of each output stream: a probe that prints without end
/// costs no memory.
pub const EXEC_OUTPUT_LIMIT: usize = 64 * 1024;

/// Collected result of a short exec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    pub exit_code: i64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Succeeds when the engine answers.
    async fn ping(&self) -> Result<()>;
    /// Names of networks carrying `label=value`.
    async fn networks(&self, label: &str, value: &str) -> Result<BTreeSet<String>>;
    async fn create_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()>;
    /// Names of volumes carrying `label=value`.
    async fn volumes(&self, label: &str, value: &str) -> Result<BTreeSet<String>>;
    async fn create_volume(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()>;
    /// All containers (running or not) carrying `label=value`.
    async fn containers(&self, label: &str, value: &str) -> Result<Vec<ContainerSummary>>;
    async fn create_container(&self, spec: &ContainerSpec) -> Result<String>;
    async fn start_container(&self, id: &str) -> Result<()>;
    /// SIGTERM, then SIGKILL after `grace`.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()>;
    /// Removes a stopped (or, with `force`, running) container.
    async fn remove_container(&self, id: &str, force: bool) -> Result<()>;
    async fn rename_container(&self, id: &str, new_name: &str) -> Result<()>;
    async fn inspect_container(&self, id: &str) -> Result<ContainerDetails>;
    async fn image_exists(&self, image: &str) -> Result<bool>;
    /// Pulls `image` (its tag, `latest` if none) from its registry, with `auth` when the
    /// registry wants credentials; `progress` hears how far it is (layers, bytes), at most
    /// twice a second.
    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&RegistryAuth>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<()>;
    /// Builds an image from `context` (a tar of the build context) as `spec` says; each
    /// line the build prints goes to `progress`. A failed step is an error naming it.
    async fn build_image(
        &self,
        context: Vec<u8>,
        spec: &BuildSpec,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<()>;
    /// Container events for containers carrying `label=value`, as they happen. The stream
    /// ends (or yields an error) when the engine connection is lost.
    fn events(&self, label: &str, value: &str) -> BoxStream<'static, Result<Event>>;
    /// Runs `cmd` in a running container, streaming its output; with `stdin`, the
    /// stream's `input` writes to the command's standard input.
    async fn exec_stream(&self, id: &str, cmd: &[String], stdin: bool) -> Result<ExecStream>;
    /// Exit code of a finished exec (waits briefly if it is still finishing).
    async fn exec_exit_code(&self, exec_id: &str) -> Result<i64>;
    /// Container logs: the last `tail` lines (all if None), then new lines if `follow`.
    fn logs(&self, id: &str, tail: Option<u64>, follow: bool)
    -> BoxStream<'static, Result<Output>>;

    /// Runs `cmd` and collects its output, the first [`EXEC_OUTPUT_LIMIT`] bytes of each
    /// stream (the rest is read and dropped). For short commands only (probes, checks).
    async fn exec(&self, id: &str, cmd: &[String]) -> Result<ExecResult> {
        use futures::StreamExt;
        let mut s = self.exec_stream(id, cmd, false).await?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let keep = |buf: &mut Vec<u8>, b: Vec<u8>| {
            let room = EXEC_OUTPUT_LIMIT.saturating_sub(buf.len());
            buf.extend_from_slice(&b[..b.len().min(room)]);
        };
        while let Some(chunk) = s.output.next().await {
            match chunk? {
                Output::Stdout(b) => keep(&mut stdout, b),
                Output::Stderr(b) => keep(&mut stderr, b),
            }
        }
        let exit_code = self.exec_exit_code(&s.exec_id).await?;
        Ok(ExecResult {
            exit_code,
            stdout,
            stderr,
        })
    }
}

/// `registry:5000/name:tag` → (`registry:5000/name`, `tag`); a digest stays with the name.
pub fn split_reference(image: &str) -> (String, String) {
    if image.contains('@') {
        return (image.to_string(), String::new());
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => (
            image[..image.len() - tag.len() - 1].to_string(),
            tag.to_string(),
        ),
        None => (image.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::split_reference;

    #[test]
    fn references_split_into_name_and_tag() {
        let s = |i: &str| {
            let (a, b) = split_reference(i);
            (a, b)
        };
        assert_eq!(s("postgres:16"), ("postgres".into(), "16".into()));
        assert_eq!(s("redis"), ("redis".into(), "latest".into()));
        assert_eq!(
            s("127.0.0.1:5000/bot:2"),
            ("127.0.0.1:5000/bot".into(), "2".into())
        );
        assert_eq!(
            s("127.0.0.1:5000/bot"),
            ("127.0.0.1:5000/bot".into(), "latest".into())
        );
        assert_eq!(
            s("bot@sha256:abc"),
            ("bot@sha256:abc".into(), String::new())
        );
    }
}

#[cfg(all(test, feature = "fake"))]
mod exec_tests {
    use super::*;
    use crate::fake::FakeEngine;

    /// Issue 15, item 11: exec-probe output is no longer buffered without limit.
    #[tokio::test]
    async fn exec_probe_output_is_bounded() {
        let fake = FakeEngine::new();
        fake.add_container(
            ContainerSpec {
                name: "p-app".into(),
                image: "app:1".into(),
                ..ContainerSpec::default()
            },
            true,
        )
        .expect("container");
        fake.script_exec(
            "p-app",
            "check",
            ExecResult {
                exit_code: 1,
                stdout: vec![b'x'; 5 << 20],
                stderr: vec![b'e'; 5 << 20],
            },
        );
        let r = fake
            .exec("p-app", &["check".to_string()])
            .await
            .expect("exec");
        assert_eq!(r.exit_code, 1);
        assert_eq!(r.stdout.len(), EXEC_OUTPUT_LIMIT);
        assert_eq!(r.stderr.len(), EXEC_OUTPUT_LIMIT);
    }
}
