//! [`Engine`] over the Docker API with bollard. Works with Docker 20.10 (API 1.41) and
//! newer engines: the client negotiates down to the server's API version.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::errors::Error as BollardError;
use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HostConfig, HostConfigLogConfig, NetworkCreateRequest,
    NetworkingConfig, PortBinding, RestartPolicy, RestartPolicyNameEnum, VolumeCreateRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptions, EventsOptionsBuilder,
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, RenameContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures::stream::{BoxStream, StreamExt, TryStreamExt};

use crate::{
    ContainerDetails, ContainerSpec, ContainerSummary, Engine, EngineError, Event, ExecStream,
    Output, Result,
};

/// Docker over its unix socket. The connection is made, and the API version negotiated, on
/// first use and again after a failure, so a daemon can start (and report the engine as
/// unreachable) before dockerd does.
#[derive(Clone)]
pub struct DockerEngine {
    socket: String,
    docker: Arc<tokio::sync::OnceCell<Docker>>,
}

/// The client's request timeout (seconds) for everything but stops.
const REQUEST_TIMEOUT: u64 = 120;

/// How long a stop request may take: the grace period, then the kill, with room to spare.
fn stop_timeout(grace: Duration) -> Duration {
    grace
        .saturating_add(Duration::from_secs(30))
        .max(Duration::from_secs(REQUEST_TIMEOUT))
}

impl DockerEngine {
    /// Connects to `socket` (e.g. `/var/run/docker.sock`) and negotiates the API version now.
    pub async fn connect(socket: &str) -> Result<Self> {
        let engine = Self::lazy(socket);
        engine.client().await?;
        Ok(engine)
    }

    /// An engine on `socket` that connects when first used.
    pub fn lazy(socket: &str) -> Self {
        DockerEngine {
            socket: socket.to_string(),
            docker: Arc::default(),
        }
    }

    /// The negotiated client; a failed attempt is not remembered, the next call retries.
    async fn client(&self) -> Result<&Docker> {
        let socket = &self.socket;
        self.docker
            .get_or_try_init(|| async move {
                let unreachable =
                    |e: BollardError| EngineError::Unreachable(format!("{socket}: {e}"));
                Docker::connect_with_socket(socket, REQUEST_TIMEOUT, bollard::API_DEFAULT_VERSION)
                    .map_err(unreachable)?
                    .negotiate_version()
                    .await
                    .map_err(unreachable)
            })
            .await
    }

    /// A stream made from the client once there is one; the connection error otherwise.
    fn stream<T, S>(
        &self,
        make: impl FnOnce(&Docker) -> S + Send + 'static,
    ) -> BoxStream<'static, Result<T>>
    where
        S: futures::Stream<Item = Result<T>> + Send + 'static,
        T: Send + 'static,
    {
        let this = self.clone();
        futures::stream::once(async move { this.client().await.map(make) })
            .try_flatten()
            .boxed()
    }

    /// The socket named by `DOCKER_HOST=unix://…`, else `/var/run/docker.sock`.
    pub fn default_socket() -> String {
        std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(str::to_string))
            .unwrap_or_else(|| "/var/run/docker.sock".to_string())
    }
}

/// Maps a bollard error, naming the object the call was about.
fn err(what: impl Into<String>) -> impl FnOnce(BollardError) -> EngineError {
    let what = what.into();
    move |e| match e {
        BollardError::DockerResponseServerError {
            status_code: 404, ..
        } => EngineError::NotFound { what },
        BollardError::DockerResponseServerError { message, .. } => {
            EngineError::Api { what, message }
        }
        other => {
            let message = other.to_string();
            if is_connection_error(&other) {
                EngineError::Unreachable(format!("{what}: {message}"))
            } else {
                EngineError::Api { what, message }
            }
        }
    }
}

fn is_connection_error(e: &BollardError) -> bool {
    matches!(
        e,
        BollardError::IOError { .. }
            | BollardError::HyperResponseError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::SocketNotFoundError(_)
            | BollardError::RequestTimeoutError
    )
}

fn label_filter(label: &str, value: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_string(), vec![format!("{label}={value}")])])
}

/// The container a network mode `container:X` joins (X, an id or a name).
fn joined(network_mode: Option<&str>) -> Option<String> {
    network_mode?.strip_prefix("container:").map(str::to_string)
}

fn to_btree(m: Option<HashMap<String, String>>) -> BTreeMap<String, String> {
    m.unwrap_or_default().into_iter().collect()
}

/// "3/7 layers, 41 of 120 MB" of a pull's layers (done, bytes so far, bytes in all).
fn pull_summary(layers: &BTreeMap<String, (bool, i64, i64)>) -> String {
    let done = layers.values().filter(|l| l.0).count();
    let (cur, total) = layers.values().fold((0, 0), |(c, t), l| (c + l.1, t + l.2));
    format!(
        "{done}/{} layers, {} of {} MB",
        layers.len(),
        cur / 1_000_000,
        total / 1_000_000
    )
}

#[async_trait]
impl Engine for DockerEngine {
    async fn ping(&self) -> Result<()> {
        self.client()
            .await?
            .ping()
            .await
            .map_err(err("ping"))
            .map(|_| ())
    }

    async fn networks(&self, label: &str, value: &str) -> Result<BTreeSet<String>> {
        let opts = ListNetworksOptionsBuilder::new()
            .filters(&label_filter(label, value))
            .build();
        let nets = self
            .client()
            .await?
            .list_networks(Some(opts))
            .await
            .map_err(err("list networks"))?;
        Ok(nets.into_iter().filter_map(|n| n.name).collect())
    }

    async fn create_network(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        // Docker 20.10 allows two networks with one name; never make a second one.
        let by_name = HashMap::from([("name".to_string(), vec![name.to_string()])]);
        let existing = self
            .client()
            .await?
            .list_networks(Some(
                ListNetworksOptionsBuilder::new().filters(&by_name).build(),
            ))
            .await
            .map_err(err("list networks"))?;
        if existing.iter().any(|n| n.name.as_deref() == Some(name)) {
            return Ok(());
        }
        let req = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.client()
            .await?
            .create_network(req)
            .await
            .map_err(err(format!("create network {name}")))?;
        Ok(())
    }

    async fn volumes(&self, label: &str, value: &str) -> Result<BTreeSet<String>> {
        let opts = ListVolumesOptionsBuilder::new()
            .filters(&label_filter(label, value))
            .build();
        let vols = self
            .client()
            .await?
            .list_volumes(Some(opts))
            .await
            .map_err(err("list volumes"))?;
        Ok(vols
            .volumes
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.name)
            .collect())
    }

    async fn create_volume(&self, name: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let req = VolumeCreateRequest {
            name: Some(name.to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            ..Default::default()
        };
        self.client()
            .await?
            .create_volume(req)
            .await
            .map_err(err(format!("create volume {name}")))?;
        Ok(())
    }

    async fn containers(&self, label: &str, value: &str) -> Result<Vec<ContainerSummary>> {
        let opts = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&label_filter(label, value))
            .build();
        let list = self
            .client()
            .await?
            .list_containers(Some(opts))
            .await
            .map_err(err("list containers"))?;
        Ok(list
            .into_iter()
            .map(|c| ContainerSummary {
                id: c.id.unwrap_or_default(),
                name: c
                    .names
                    .and_then(|n| n.into_iter().next())
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                image: c.image.unwrap_or_default(),
                labels: to_btree(c.labels),
                running: c
                    .state
                    .is_some_and(|s| s.to_string().eq_ignore_ascii_case("running")),
                joined: joined(c.host_config.and_then(|h| h.network_mode).as_deref()),
            })
            .collect())
    }

    async fn create_container(&self, spec: &ContainerSpec) -> Result<String> {
        let mut port_bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
        for p in &spec.ports {
            port_bindings
                .entry(format!("{}/{}", p.container_port, p.protocol))
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_with(Vec::new)
                .push(PortBinding {
                    host_ip: Some(p.host_ip.to_string()),
                    host_port: Some(if p.host_port == 0 {
                        String::new()
                    } else {
                        p.host_port.to_string()
                    }),
                });
        }
        let exposed: Vec<String> = port_bindings.keys().cloned().collect();
        let mut log_opts = HashMap::new();
        if let Some(s) = spec.log_max_size {
            log_opts.insert("max-size".to_string(), s.to_string());
        }
        if let Some(n) = spec.log_max_files {
            log_opts.insert("max-file".to_string(), n.to_string());
        }
        let host_config = HostConfig {
            binds: Some(spec.binds.clone()),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            memory: spec.memory_bytes,
            // No swap beyond the memory limit: a limit that can spill to swap is no limit.
            memory_swap: spec.memory_bytes,
            nano_cpus: spec.nano_cpus,
            pids_limit: spec.pids_limit,
            readonly_rootfs: Some(spec.read_only),
            tmpfs: (!spec.tmpfs.is_empty())
                .then(|| spec.tmpfs.clone().into_iter().collect::<HashMap<_, _>>()),
            log_config: Some(HostConfigLogConfig {
                typ: Some("json-file".into()),
                config: Some(log_opts),
            }),
            // berth owns restarts; Docker's own policy would race it.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            network_mode: match &spec.join {
                Some(c) => Some(format!("container:{c}")),
                None => spec.network.as_ref().map(|(n, _)| n.clone()),
            },
            ..Default::default()
        };
        let networking_config = spec
            .network
            .as_ref()
            .map(|(net, aliases)| NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    net.clone(),
                    EndpointSettings {
                        aliases: Some(aliases.clone()),
                        ..Default::default()
                    },
                )])),
            });
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.cmd.clone(),
            entrypoint: spec.entrypoint.clone(),
            user: spec.user.clone(),
            env: Some(spec.env.clone()),
            labels: Some(spec.labels.clone().into_iter().collect()),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            stop_timeout: spec.stop_timeout.map(|d| d.as_secs() as i64),
            host_config: Some(host_config),
            networking_config,
            ..Default::default()
        };
        let opts = CreateContainerOptionsBuilder::new()
            .name(&spec.name)
            .build();
        let resp = self
            .client()
            .await?
            .create_container(Some(opts), body)
            .await
            .map_err(err(format!("create container {}", spec.name)))?;
        Ok(resp.id)
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        match self.client().await?.start_container(id, None).await {
            // 304: already running.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            r => r.map_err(err(format!("start container {id}"))),
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let opts = StopContainerOptionsBuilder::new()
            .t(grace.as_secs().min(i32::MAX as u64) as i32)
            .build();
        // The engine answers once the container is down, up to `grace` later: the
        // client's request timeout must outlast it, or a long grace period reads as an
        // unreachable engine.
        let client = self
            .client()
            .await?
            .clone()
            .with_timeout(stop_timeout(grace));
        match client.stop_container(id, Some(opts)).await {
            // 304: already stopped.
            Err(BollardError::DockerResponseServerError {
                status_code: 304, ..
            }) => Ok(()),
            r => r.map_err(err(format!("stop container {id}"))),
        }
    }

    async fn remove_container(&self, id: &str, force: bool) -> Result<()> {
        let opts = RemoveContainerOptionsBuilder::new().force(force).build();
        self.client()
            .await?
            .remove_container(id, Some(opts))
            .await
            .map_err(err(format!("remove container {id}")))
    }

    async fn rename_container(&self, id: &str, new_name: &str) -> Result<()> {
        let opts = RenameContainerOptionsBuilder::new().name(new_name).build();
        self.client()
            .await?
            .rename_container(id, opts)
            .await
            .map_err(err(format!("rename container {id}")))
    }

    async fn inspect_container(&self, id: &str) -> Result<ContainerDetails> {
        let c = self
            .client()
            .await?
            .inspect_container(id, None)
            .await
            .map_err(err(format!("container {id}")))?;
        let state = c.state.unwrap_or_default();
        let config = c.config.unwrap_or_default();
        let host = c.host_config;
        let net = c.network_settings.unwrap_or_default();
        let ips = net
            .networks
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(name, ep)| {
                let ip = ep.ip_address?.parse().ok()?;
                Some((name, ip))
            })
            .collect();
        let mut published = Vec::new();
        for (cport, bindings) in net.ports.unwrap_or_default() {
            for b in bindings.unwrap_or_default() {
                published.push((
                    b.host_ip.unwrap_or_default(),
                    b.host_port.unwrap_or_default(),
                    cport.clone(),
                ));
            }
        }
        published.sort();
        Ok(ContainerDetails {
            id: c.id.unwrap_or_default(),
            name: c
                .name
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string(),
            image: config.image.unwrap_or_default(),
            labels: to_btree(config.labels),
            running: state.running.unwrap_or(false),
            status: state.status.map(|s| s.to_string()).unwrap_or_default(),
            exit_code: state.exit_code,
            oom_killed: state.oom_killed.unwrap_or(false),
            pid: state.pid.filter(|p| *p > 0),
            started_at: state.started_at,
            finished_at: state.finished_at,
            ips,
            joined: joined(host.as_ref().and_then(|h| h.network_mode.as_deref())),
            restart_policy: host
                .and_then(|h| h.restart_policy)
                .and_then(|r| r.name)
                .map(|n| n.to_string()),
            published,
        })
    }

    async fn image_exists(&self, image: &str) -> Result<bool> {
        match self.client().await?.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(false),
            Err(e) => Err(err(format!("image {image}"))(e)),
        }
    }

    async fn pull_image(
        &self,
        image: &str,
        auth: Option<&crate::RegistryAuth>,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<()> {
        let (from_image, tag) = crate::split_reference(image);
        let opts = CreateImageOptions {
            from_image: Some(from_image),
            tag: (!tag.is_empty()).then_some(tag),
            ..Default::default()
        };
        let credentials = auth.map(|a| bollard::auth::DockerCredentials {
            username: Some(a.username.clone()),
            password: Some(a.password.clone()),
            serveraddress: Some(a.server.clone()),
            ..Default::default()
        });
        let mut stream = self
            .client()
            .await?
            .create_image(Some(opts), None, credentials);
        // Layer id → (done, bytes so far, bytes in all), told at most twice a second.
        let mut layers: BTreeMap<String, (bool, i64, i64)> = BTreeMap::new();
        let mut told = std::time::Instant::now();
        while let Some(step) = stream.next().await {
            let info = step.map_err(err(format!("pulling {image}")))?;
            let (Some(id), Some(status)) = (info.id, info.status) else {
                continue;
            };
            let l = layers.entry(id).or_default();
            if status == "Pull complete" || status == "Already exists" {
                l.0 = true;
            }
            if let Some(d) = info.progress_detail
                && status == "Downloading"
            {
                l.1 = d.current.unwrap_or(l.1);
                l.2 = d.total.unwrap_or(l.2);
            }
            if told.elapsed() >= Duration::from_millis(500) {
                told = std::time::Instant::now();
                progress(pull_summary(&layers));
            }
        }
        progress(pull_summary(&layers) + ": done");
        Ok(())
    }

    async fn build_image(
        &self,
        context: Vec<u8>,
        spec: &crate::BuildSpec,
        progress: &(dyn Fn(String) + Send + Sync),
    ) -> Result<()> {
        let opts = bollard::query_parameters::BuildImageOptions {
            dockerfile: spec.dockerfile.clone(),
            t: Some(spec.tag.clone()),
            rm: true,
            forcerm: true,
            buildargs: Some(spec.args.clone().into_iter().collect()),
            target: spec.target.clone().unwrap_or_default(),
            ..Default::default()
        };
        let client = self.client().await?;
        let mut stream = client.build_image(
            opts,
            None,
            Some(bollard::body_full(bytes::Bytes::from(context))),
        );
        let what = format!("building {}", spec.tag);
        while let Some(step) = stream.next().await {
            let info = step.map_err(err(what.clone()))?;
            if let Some(e) = info.error_detail.and_then(|d| d.message) {
                return Err(EngineError::Api {
                    what,
                    message: e.trim().to_string(),
                });
            }
            if let Some(line) = info.stream {
                for l in line.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
                    progress(l.to_string());
                }
            }
        }
        Ok(())
    }

    fn events(&self, label: &str, value: &str) -> BoxStream<'static, Result<Event>> {
        let mut filters = label_filter(label, value);
        filters.insert("type".into(), vec!["container".into()]);
        let opts = EventsOptionsBuilder::new().filters(&filters).build();
        self.stream(move |d| {
            d.events(Some(opts)).map(|r| {
                let m = r.map_err(err("event stream"))?;
                let actor = m.actor.unwrap_or_default();
                let labels = to_btree(actor.attributes);
                // Health events arrive as "health_status: healthy"; keep the verb.
                let action = m.action.unwrap_or_default();
                Ok(Event {
                    container_id: actor.id.unwrap_or_default(),
                    exit_code: labels.get("exitCode").and_then(|c| c.parse().ok()),
                    action,
                    labels,
                    time_nanos: m.time_nano.unwrap_or_default(),
                })
            })
        })
    }

    async fn exec_stream(&self, id: &str, cmd: &[String], stdin: bool) -> Result<ExecStream> {
        let opts = CreateExecOptions {
            cmd: Some(cmd.to_vec()),
            attach_stdin: Some(stdin),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            ..Default::default()
        };
        let what = format!("exec in {id}");
        let created = self
            .client()
            .await?
            .create_exec(id, opts)
            .await
            .map_err(err(what.clone()))?;
        let started = self
            .client()
            .await?
            .start_exec(&created.id, None)
            .await
            .map_err(err(what.clone()))?;
        let (output, input) = match started {
            StartExecResults::Attached { output, input } => (
                output
                    .filter_map(move |r| {
                        let what = what.clone();
                        async move {
                            match r {
                                Ok(bollard::container::LogOutput::StdOut { message }) => {
                                    Some(Ok(Output::Stdout(message.to_vec())))
                                }
                                Ok(bollard::container::LogOutput::StdErr { message }) => {
                                    Some(Ok(Output::Stderr(message.to_vec())))
                                }
                                Ok(bollard::container::LogOutput::Console { message }) => {
                                    Some(Ok(Output::Stdout(message.to_vec())))
                                }
                                Ok(bollard::container::LogOutput::StdIn { .. }) => None,
                                Err(e) => Some(Err(err(what)(e))),
                            }
                        }
                    })
                    .boxed(),
                stdin.then_some(input),
            ),
            StartExecResults::Detached => (futures::stream::empty().boxed(), None),
        };
        Ok(ExecStream {
            exec_id: created.id,
            output,
            input,
        })
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<i64> {
        // The output stream can end a moment before the engine records the exit code.
        for _ in 0..100 {
            let r = self
                .client()
                .await?
                .inspect_exec(exec_id)
                .await
                .map_err(err(format!("exec {exec_id}")))?;
            if r.running != Some(true) {
                return Ok(r.exit_code.unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(EngineError::Api {
            what: format!("exec {exec_id}"),
            message: "still running after its output ended".into(),
        })
    }

    fn logs(
        &self,
        id: &str,
        tail: Option<u64>,
        follow: bool,
    ) -> BoxStream<'static, Result<Output>> {
        let tail = tail.map_or_else(|| "all".to_string(), |n| n.to_string());
        let opts = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(follow)
            .tail(&tail)
            .build();
        let what = format!("logs of {id}");
        let id = id.to_string();
        self.stream(move |d| {
            d.logs(&id, Some(opts)).map(move |r| match r {
                Ok(bollard::container::LogOutput::StdErr { message }) => {
                    Ok(Output::Stderr(message.to_vec()))
                }
                Ok(o) => Ok(Output::Stdout(o.into_bytes().to_vec())),
                Err(e) => Err(err(what.clone())(e)),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, item 11: a stop with a grace period of 120 s or more must not hit the
    /// client's request timeout (it read as "engine unreachable" mid-deploy).
    #[test]
    fn a_long_grace_period_outlasts_the_request_timeout() {
        assert_eq!(
            stop_timeout(Duration::from_secs(10)),
            Duration::from_secs(120)
        );
        assert_eq!(
            stop_timeout(Duration::from_secs(120)),
            Duration::from_secs(150)
        );
        assert_eq!(
            stop_timeout(Duration::from_secs(600)),
            Duration::from_secs(630)
        );
        assert_eq!(stop_timeout(Duration::MAX), Duration::MAX);
    }
}
