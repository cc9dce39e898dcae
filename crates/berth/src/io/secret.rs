//! Where a secret of the env file lives besides the containers' environment, and how to
//! change it there first (`berth rotate-secret`): a PostgreSQL role's password is stored
//! in the database's data volume, so a new value must be set inside the running server
//! before any container is recreated with it.

use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_config::Config;
use berth_engine::{Engine, Output};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::backup::{quote_ident, quote_literal};

/// A place that keeps its own copy of a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// The password of `user` in the PostgreSQL of `service` (its `POSTGRES_PASSWORD`).
    Postgres { service: String, user: String },
    /// The `requirepass` of the Redis of `service` (its probe's password).
    Redis { service: String },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Postgres { service, user } => {
                write!(f, "the password of role {user} in {service}")
            }
            Place::Redis { service } => write!(f, "the requirepass of {service}"),
        }
    }
}

/// The places that keep `${var}`: a PostgreSQL service's `POSTGRES_PASSWORD`, a Redis
/// service's password (its probe's, handed to `redis-server` through the service's
/// command or env).
pub fn places(cfg: &Config, var: &str) -> anyhow::Result<Vec<Place>> {
    let reference = format!("${{{var}}}");
    let mut out = Vec::new();
    for (name, svc) in &cfg.services {
        if svc
            .env
            .get("POSTGRES_PASSWORD")
            .is_some_and(|v| v.template == reference)
        {
            let user = svc
                .env
                .get("POSTGRES_USER")
                .map_or_else(|| "postgres".to_string(), |u| u.value.clone());
            out.push(Place::Postgres {
                service: name.clone(),
                user,
            });
        }
        if let Some(berth_config::ProbeKind::Redis {
            password: Some(p), ..
        }) = svc.probe.as_ref().map(|p| &p.kind)
            && p.template == reference
        {
            // Set at run time, it must also reach the container from the config (its
            // command line or its environment), or a password kept elsewhere (redis.conf)
            // would win again at the next start.
            let in_command = svc
                .command
                .as_ref()
                .is_some_and(|c| c.iter().any(|w| w.template.contains(&reference)));
            let in_env = svc.env.values().any(|v| v.template.contains(&reference));
            if !in_command && !in_env {
                bail!(
                    "{var} is {name}'s Redis password but reaches it neither through its command nor its env: berth cannot tell where else it is kept; change it there and in the env file together, then reload"
                );
            }
            out.push(Place::Redis {
                service: name.clone(),
            });
        }
    }
    Ok(out)
}

/// A redis-cli argument in double quotes (its own escaping).
fn redis_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Runs `cmd` in `container` with `input` on its standard input (where secrets go: never
/// on a command line); returns its exit code, standard output and standard error, with
/// every secret in `secrets` blanked out.
async fn run_with_input(
    engine: &dyn Engine,
    container: &str,
    cmd: &[&str],
    input: &str,
    secrets: &[&str],
) -> anyhow::Result<(i64, String, String)> {
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let mut ex = engine.exec_stream(container, &cmd, true).await?;
    let mut stdin = ex.input.take().context("the engine gave no stdin")?;
    stdin.write_all(input.as_bytes()).await?;
    stdin.shutdown().await?;
    drop(stdin);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let read = async {
        while let Some(chunk) = ex.output.next().await {
            match chunk? {
                Output::Stdout(b) => out.extend(b),
                Output::Stderr(b) => err.extend(b),
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(60), read)
        .await
        .context("no answer within 60 s")??;
    let code = engine.exec_exit_code(&ex.exec_id).await?;
    let clean = |b: &[u8]| {
        let mut t = String::from_utf8_lossy(b).trim().to_string();
        for s in secrets.iter().filter(|s| !s.is_empty()) {
            t = t.replace(*s, "***");
        }
        t
    };
    Ok((code, clean(&out), clean(&err)))
}

/// Sets `value` in `place`, where `old` is what it is now. The values go to the server
/// on the command's standard input: never in a command line, a log or an error.
pub async fn apply(
    engine: &dyn Engine,
    cfg: &Config,
    place: &Place,
    old: &str,
    value: &str,
) -> anyhow::Result<()> {
    match place {
        Place::Redis { service } => {
            let name = cfg.container_name(service);
            let script = format!(
                "AUTH {}\nCONFIG SET requirepass {}\n",
                redis_quote(old),
                redis_quote(value)
            );
            let (code, out, err) =
                run_with_input(engine, &name, &["redis-cli"], &script, &[old, value])
                    .await
                    .with_context(|| format!("reaching {service}'s Redis"))?;
            let answers: Vec<&str> = out.lines().map(str::trim).collect();
            if code != 0 || answers != ["OK", "OK"] {
                bail!(
                    "CONFIG SET requirepass in {service} failed (exit code {code}): {} {}",
                    answers.join(" "),
                    err
                );
            }
            Ok(())
        }
        Place::Postgres { service, user } => {
            let name = cfg.container_name(service);
            let sql = format!(
                "ALTER ROLE {} WITH PASSWORD {};\n",
                quote_ident(user),
                quote_literal(value)
            );
            let (code, _, err) = run_with_input(
                engine,
                &name,
                &[
                    "psql",
                    "-q",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-U",
                    user,
                    "-d",
                    "postgres",
                ],
                &sql,
                &[old, value],
            )
            .await
            .with_context(|| format!("reaching {service}'s PostgreSQL"))?;
            if code != 0 {
                bail!("ALTER ROLE in {service} failed (exit code {code}): {err}");
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Config {
        let vars = |k: &str| Some(format!("{}-value", k.to_lowercase()));
        berth_config::parse_str(std::path::Path::new("/etc/berth/berth.toml"), src, &vars)
            .expect("valid config")
    }

    /// The shipped config hands Redis its password through the env (stdin of
    /// redis-server, never argv), and rotation still finds every place that keeps it.
    #[test]
    fn the_shipped_configs_secrets_are_rotatable() {
        let src = include_str!("../../../../config/berth.toml");
        let cfg = parse(src);
        let redis = places(&cfg, "REDIS_PASSWORD").expect("rotatable");
        assert!(
            matches!(&redis[..], [Place::Redis { service }] if service == "redis"),
            "{redis:?}"
        );
        let pg = places(&cfg, "POSTGRES_PASSWORD").expect("rotatable");
        assert!(
            matches!(&pg[..], [Place::Postgres { service, user }] if service == "postgres" && user == "bot")
        );
        // The password is in no command line.
        for svc in cfg.services.values() {
            for w in svc.command.iter().flatten() {
                assert!(!w.value.contains("redis_password-value"), "{}", w.template);
            }
        }
    }

    #[test]
    fn a_redis_password_kept_out_of_the_config_is_refused() {
        let src = r#"
[supervisor]
project = "p"
[services.redis]
image = "redis:7"
probe = { redis = { password = "${REDIS_PASSWORD}" } }
"#;
        let e = places(&parse(src), "REDIS_PASSWORD").unwrap_err();
        assert!(
            e.to_string()
                .contains("neither through its command nor its env"),
            "{e}"
        );
    }
}
