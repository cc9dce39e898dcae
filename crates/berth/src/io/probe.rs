//! Readiness probes, run from the host against the container's address on the project
//! network (no published port needed), or inside the container for `exec`.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use berth_config::{Probe, ProbeKind};
use berth_core::snapshot::ProbeView;
use berth_engine::Engine;

#[derive(Debug, Clone, PartialEq)]
pub struct ProbeResult {
    pub ok: bool,
    pub latency: Duration,
    pub at: std::time::SystemTime,
    /// Why it failed; never contains a secret.
    pub error: Option<String>,
}

impl ProbeResult {
    /// The connection was refused: nothing listens on the port yet. Told by the text,
    /// the same for every kind (`Connection refused (os error 111)` from the socket,
    /// quoted by sqlx, redis and reqwest alike).
    pub fn refused(&self) -> bool {
        self.error
            .as_deref()
            .is_some_and(|e| e.contains("Connection refused"))
    }

    /// As `/health` shows it.
    pub fn view(&self) -> ProbeView {
        ProbeView::new(self.ok, self.latency, self.at, self.error.clone())
    }
}

/// Runs one probe with its timeout.
pub async fn run(
    engine: &dyn Engine,
    probe: &Probe,
    container_id: &str,
    ip: Option<IpAddr>,
) -> ProbeResult {
    let start = Instant::now();
    let at = std::time::SystemTime::now();
    let outcome = tokio::time::timeout(probe.timeout, check(engine, &probe.kind, container_id, ip))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "timed out after {}",
                humantime::format_duration(probe.timeout)
            ))
        });
    ProbeResult {
        ok: outcome.is_ok(),
        latency: start.elapsed(),
        at,
        // Exec stderr and server messages may quote a secret.
        error: outcome.err().map(|e| crate::redact::scrub(&e)),
    }
}

async fn check(
    engine: &dyn Engine,
    kind: &ProbeKind,
    container_id: &str,
    ip: Option<IpAddr>,
) -> Result<(), String> {
    let need_ip =
        || ip.ok_or_else(|| "container has no address on the project network".to_string());
    match kind {
        ProbeKind::Postgres {
            user,
            database,
            password,
            port,
        } => {
            use sqlx::{Connection, postgres::PgConnectOptions};
            let mut opts = PgConnectOptions::new()
                .host(&need_ip()?.to_string())
                .port(*port)
                .username(user)
                .database(database);
            if let Some(p) = password {
                opts = opts.password(&p.value);
            }
            // The error text of a failed login never includes the password.
            let mut conn = sqlx::PgConnection::connect_with(&opts).await.map_err(|e| {
                let e = format!("postgres: {e}");
                let hint = password_hint(password.as_ref(), &e).unwrap_or_default();
                format!("{e}{hint}")
            })?;
            let r = sqlx::query("SELECT 1")
                .execute(&mut conn)
                .await
                .map_err(|e| format!("postgres: {e}"));
            let _ = conn.close().await;
            r.map(|_| ())
        }
        ProbeKind::Redis { password, port } => {
            let ip = need_ip()?;
            use redis::IntoConnectionInfo;
            let info = redis::ConnectionAddr::Tcp(ip.to_string(), *port)
                .into_connection_info()
                .map_err(|e| format!("redis: {e}"))?;
            let info = match password {
                Some(p) => info.set_redis_settings(
                    redis::RedisConnectionInfo::default().set_password(&p.value),
                ),
                None => info,
            };
            let client = redis::Client::open(info).map_err(|e| format!("redis: {e}"))?;
            let mut con = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("redis: {e}"))?;
            let pong: String = redis::cmd("PING")
                .query_async(&mut con)
                .await
                .map_err(|e| format!("redis: {e}"))?;
            if pong == "PONG" {
                Ok(())
            } else {
                Err(format!("redis: PING answered {pong:?}"))
            }
        }
        ProbeKind::Http { port, path } => {
            let url = format!("http://{}:{port}{path}", need_ip()?);
            let resp = http_client()
                .get(&url)
                .send()
                .await
                .map_err(|e| format!("http: GET {path}: {}", without_url(&e)))?;
            if resp.status().is_success() {
                Ok(())
            } else {
                Err(format!("http: GET {path} answered {}", resp.status()))
            }
        }
        ProbeKind::Tcp { port } => tokio::net::TcpStream::connect((need_ip()?, *port))
            .await
            .map(|_| ())
            .map_err(|e| format!("tcp: connect to port {port}: {e}")),
        ProbeKind::Exec { command } => {
            let r = engine
                .exec(container_id, command)
                .await
                .map_err(|e| format!("exec: {e}"))?;
            if r.exit_code == 0 {
                Ok(())
            } else {
                let err = String::from_utf8_lossy(&r.stderr);
                let tail: String = err
                    .trim()
                    .chars()
                    .rev()
                    .take(200)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect();
                Err(format!("exec: exit code {}: {tail}", r.exit_code))
            }
        }
    }
}

fn http_client() -> &'static reqwest::Client {
    static CLIENT: std::sync::OnceLock<reqwest::Client> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap_or_default()
    })
}

fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), "");
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    s
}

/// What to do when PostgreSQL refuses the configured password: the data volume keeps the
/// password it was initialised with, and changing the env file does not change it.
pub fn password_hint(password: Option<&berth_config::Value>, error: &str) -> Option<String> {
    if !error.contains("password authentication failed") {
        return None;
    }
    let var = password
        .and_then(|p| {
            p.template
                .strip_prefix("${")?
                .strip_suffix('}')
                .map(str::to_string)
        })
        .filter(|v| !v.is_empty() && !v.contains(['$', '{', '}']));
    Some(match var {
        Some(v) => format!(
            " (the password in the env file's {v} does not match the one stored in the database's data volume when it was first initialised: put the old value back, or change it with `berth rotate-secret {v}`)"
        ),
        None => " (the password in the config does not match the one stored in the database's data volume when it was first initialised)".to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 21, item 2: a refused password says plainly what is wrong and what to do.
    #[test]
    fn a_refused_password_says_the_volume_keeps_the_old_one() {
        let p = berth_config::Value {
            template: "${POSTGRES_PASSWORD}".into(),
            value: "s3cret-new".into(),
            secret: true,
        };
        let e = "postgres: error returned from database: password authentication failed for user \"bot\"";
        let h = password_hint(Some(&p), e).expect("a hint");
        assert!(
            h.contains(
                "POSTGRES_PASSWORD does not match the one stored in the database's data volume"
            ),
            "{h}"
        );
        assert!(h.contains("berth rotate-secret POSTGRES_PASSWORD"), "{h}");
        assert!(!h.contains("s3cret"), "no secret in it");
        assert_eq!(
            password_hint(Some(&p), "postgres: connection refused"),
            None
        );
    }
}
