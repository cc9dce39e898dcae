//! Stage one: the file as written. Serde structs that mirror the TOML, with spans kept on
//! every value that stage two validates, so each error can point at its line and column.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

pub type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
pub struct RawConfig {
    pub supervisor: S<RawSupervisor>,
    #[serde(default)]
    pub services: BTreeMap<String, S<RawService>>,
    pub backup: Option<S<RawBackup>>,
    pub alerts: Option<S<RawAlerts>>,
    /// `[registries."ghcr.io"]`: credentials for pulls, by registry host.
    #[serde(default)]
    pub registries: BTreeMap<String, S<RawRegistry>>,
}

#[derive(Debug, Deserialize)]
pub struct RawRegistry {
    pub username: S<String>,
    pub password: S<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawSupervisor {
    pub project: S<String>,
    pub health_listen: Option<S<String>>,
    pub state_dir: Option<S<String>>,
    pub admin_socket: Option<S<String>>,
    pub env_file: Option<S<String>>,
    pub on_stop: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawService {
    pub image: S<String>,
    pub command: Option<Vec<S<String>>>,
    pub entrypoint: Option<Vec<S<String>>>,
    pub user: Option<S<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, S<String>>,
    #[serde(default)]
    pub volumes: Vec<S<String>>,
    #[serde(default)]
    pub ports: Vec<S<String>>,
    pub memory: Option<S<SizeValue>>,
    pub cpus: Option<S<f64>>,
    pub pids_limit: Option<S<i64>>,
    pub read_only: Option<bool>,
    #[serde(default)]
    pub tmpfs: Vec<S<String>>,
    pub stop_grace_period: Option<S<String>>,
    #[serde(default)]
    pub depends_on: Vec<S<String>>,
    /// `"service:NAME"`: join NAME's network namespace (compose's `network_mode`).
    pub network: Option<S<String>>,
    /// More names the service answers to on the project network (compose's `aliases`).
    #[serde(default)]
    pub aliases: Vec<S<String>>,
    pub probe: Option<S<RawProbe>>,
    pub restart: Option<RawRestart>,
    pub logs: Option<RawLogs>,
    pub deploy: Option<RawDeploy>,
    pub build: Option<S<RawBuild>>,
}

/// `[services.X.build]`: build the image from source (`berth deploy X --build`).
#[derive(Debug, Deserialize)]
pub struct RawBuild {
    pub context: S<String>,
    pub dockerfile: Option<S<String>>,
    #[serde(default)]
    pub args: BTreeMap<String, S<String>>,
    pub target: Option<S<String>>,
}

/// Sizes may be written as a number of bytes or as a string such as "512MiB".
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum SizeValue {
    /// Signed, so that a negative number is read and refused with a clear message.
    Bytes(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
pub struct RawProbe {
    pub postgres: Option<RawPostgresProbe>,
    pub redis: Option<RawRedisProbe>,
    pub http: Option<RawHttpProbe>,
    pub tcp: Option<RawTcpProbe>,
    pub exec: Option<RawExecProbe>,
    pub interval: Option<S<String>>,
    pub timeout: Option<S<String>>,
    pub failures: Option<S<u32>>,
    pub start_timeout: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawPostgresProbe {
    pub user: Option<S<String>>,
    pub database: Option<S<String>>,
    pub password: Option<S<String>>,
    pub port: Option<u16>,
}

#[derive(Debug, Deserialize)]
pub struct RawRedisProbe {
    pub password: Option<S<String>>,
    pub port: Option<u16>,
}

#[derive(Debug, Deserialize)]
pub struct RawHttpProbe {
    pub port: u16,
    pub path: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawTcpProbe {
    pub port: u16,
}

#[derive(Debug, Deserialize)]
pub struct RawExecProbe {
    pub command: Vec<String>,
}

#[derive(Debug, Deserialize)]
pub struct RawRestart {
    pub initial_backoff: Option<S<String>>,
    pub max_backoff: Option<S<String>>,
    pub reset_after: Option<S<String>>,
}

#[derive(Debug, Deserialize)]
pub struct RawLogs {
    pub max_size: Option<S<SizeValue>>,
    pub max_files: Option<S<u32>>,
}

#[derive(Debug, Deserialize)]
pub struct RawDeploy {
    pub migrate: Option<Vec<String>>,
    pub health_timeout: Option<S<String>>,
    pub rollback: Option<S<String>>,
    pub strategy: Option<S<String>>,
    pub restore_db_on_rollback: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RawBackup {
    pub service: S<String>,
    pub schedule: Option<S<String>>,
    pub dir: Option<S<String>>,
    pub keep: Option<RawKeep>,
    pub verify: Option<S<VerifyValue>>,
    pub database: Option<String>,
    pub user: Option<String>,
    pub redis: Option<S<RedisCopy>>,
    pub offsite: Option<S<RawOffsite>>,
}

#[derive(Debug, Deserialize)]
pub struct RawOffsite {
    pub endpoint: S<String>,
    pub bucket: S<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
    pub access_key: S<String>,
    pub secret_key: S<String>,
    pub keep: Option<RawKeep>,
    pub path_style: Option<bool>,
    pub encryption_key: Option<S<String>>,
}

/// `redis = true` (the service named "redis") or `redis = "SERVICE"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RedisCopy {
    Flag(bool),
    Service(String),
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum VerifyValue {
    Flag(bool),
    Mode(String),
}

#[derive(Debug, Deserialize)]
pub struct RawKeep {
    pub daily: Option<u32>,
    pub weekly: Option<u32>,
    pub monthly: Option<u32>,
}

#[derive(Debug, Deserialize)]
pub struct RawAlerts {
    pub telegram: Option<S<RawTelegramAlert>>,
    pub webhook: Option<S<RawWebhook>>,
    pub down_after: Option<S<String>>,
    pub repeat_after: Option<S<String>>,
    pub max_per_hour: Option<S<u32>>,
    pub deploy_succeeded: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub struct RawTelegramAlert {
    pub chat_id: S<ChatId>,
    pub token: Option<S<String>>,
    pub api_base: Option<S<String>>,
}

/// Telegram chat ids are integers (negative for groups) or `@channelname`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ChatId {
    Int(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
pub struct RawWebhook {
    pub url: S<String>,
}
