//! `berth rotate-secret VAR`: a new value for a secret of the env file, applied where the
//! secret lives first (a PostgreSQL role's password, inside the running server), then
//! written to the env file, then taken up by the services that use it through the
//! daemon's gated replacement. If any step fails the old value is put back everywhere,
//! so the old value keeps working. Neither value is ever printed.

use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, bail};
use berth_config::Config;
use berth_core::deploy::{Outcome, Trigger};
use berth_core::snapshot::HealthDoc;

use crate::cmd::connect;
use crate::io::secret::{self, Place};
use crate::io::statefile::write_atomic;
use crate::serve::admin;

pub async fn rotate_secret(
    cfg: Config,
    config_path: &Path,
    var: String,
    from_stdin: bool,
) -> anyhow::Result<()> {
    let env_path = cfg
        .supervisor
        .env_file
        .clone()
        .context("rotate-secret changes the env file, and [supervisor] names none")?;
    let text = std::fs::read_to_string(&env_path)
        .with_context(|| format!("reading {}", env_path.display()))?;
    let vars = berth_config::parse_env_file(&env_path, &text)
        .map_err(|errs| anyhow::anyhow!("{}", berth_config::ConfigErrors(errs)))?;
    let old = vars
        .get(&var)
        .with_context(|| format!("{var} is not in {}", env_path.display()))?
        .clone();
    let new = if from_stdin {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s.trim_end_matches(['\n', '\r']).to_string()
    } else {
        random_value()?
    };
    if new.is_empty() || new.contains(['\n', '\r', '\0', '\'']) || new == old {
        bail!("the new value of {var} must be one line, without ', and not the old one");
    }
    let places = secret::places(&cfg, &var)?;
    // The daemon recreates the services; without it nothing would take the new value up.
    let socket = &cfg.supervisor.admin_socket;
    if tokio::net::UnixStream::connect(socket).await.is_err() {
        bail!(
            "rotate-secret goes through the running daemon (it recreates the services that use {var}): start it (systemctl start berth)"
        );
    }
    let engine = connect().await?;
    let mut applied: Vec<&Place> = Vec::new();
    let undo = async |applied: &[&Place]| {
        for p in applied {
            if let Err(e) = secret::apply(engine.as_ref(), &cfg, p, &new, &old).await {
                eprintln!("error: putting the old value back in {p} failed: {e:#}");
            }
        }
    };
    for p in &places {
        if let Err(e) = secret::apply(engine.as_ref(), &cfg, p, &old, &new).await {
            undo(&applied).await;
            return Err(e.context(format!("{var} is unchanged")));
        }
        println!("{var}: set in {p}");
        applied.push(p);
    }
    let started = SystemTime::now();
    if let Err(e) = write_atomic(&env_path, with_value(&text, &var, &new).as_bytes()) {
        undo(&applied).await;
        return Err(e.context(format!("{var} is unchanged")));
    }
    // Which services take it up: those whose container spec changes with it.
    let changed: Vec<String> = match berth_config::load(config_path) {
        Ok(next) => next
            .services
            .iter()
            .filter(|(n, s)| {
                cfg.services
                    .get(*n)
                    .is_some_and(|o| o.spec_hash() != s.spec_hash())
            })
            .map(|(n, _)| n.clone())
            .collect(),
        Err(e) => {
            let _ = write_atomic(&env_path, text.as_bytes());
            undo(&applied).await;
            bail!("{e}\n{var} is unchanged");
        }
    };
    println!("{var}: written to {}", env_path.display());
    let outcome = async {
        admin::request::<_, bool>(socket, "/reload", &())
            .await
            .context("the daemon stopped answering")??;
        wait_for_changes(&cfg, &changed, started).await
    }
    .await;
    if let Err(e) = outcome {
        eprintln!("error: {e:#}: putting the old value of {var} back");
        let _ = write_atomic(&env_path, text.as_bytes());
        undo(&applied).await;
        let _ = admin::request::<_, bool>(socket, "/reload", &()).await;
        bail!("{var} was not rotated; the old value works again");
    }
    if changed.is_empty() {
        println!("{var}: rotated (no container uses it)");
    } else {
        println!("{var}: rotated; recreated {}", changed.join(", "));
    }
    Ok(())
}

/// Waits until the daemon has replaced each of `services` (a change record after
/// `since`): Ok when all went through, Err naming the first that did not.
async fn wait_for_changes(
    cfg: &Config,
    services: &[String],
    since: SystemTime,
) -> anyhow::Result<()> {
    let limit: Duration = cfg
        .services
        .values()
        .filter_map(|s| s.probe.as_ref().map(|p| p.start_timeout))
        .sum::<Duration>()
        + Duration::from_secs(60);
    let url = format!("http://{}/health", cfg.supervisor.health_listen);
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()?;
    let t = Instant::now();
    let since = berth_core::time::fmt_time(since);
    loop {
        if let Ok(doc) = async { http.get(&url).send().await?.json::<HealthDoc>().await }.await {
            let mut done = 0;
            for s in services {
                match doc.deploy.get(s) {
                    Some(r) if r.trigger == Trigger::Change && r.at >= since => match r.outcome {
                        Outcome::Deployed => done += 1,
                        Outcome::InFlight => {}
                        _ => bail!(
                            "{}",
                            r.reason
                                .clone()
                                .unwrap_or_else(|| format!("the change to {s} {}", r.outcome))
                        ),
                    },
                    _ => {}
                }
            }
            if done == services.len() {
                return Ok(());
            }
        }
        if t.elapsed() > limit {
            bail!(
                "{} not recreated within {}s",
                services.join(", "),
                limit.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The env file's text with `var` set to `value` (its other lines as they were).
fn with_value(text: &str, var: &str, value: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let body = line.trim_start();
        let body = body.strip_prefix("export ").unwrap_or(body);
        match body.split_once('=') {
            Some((k, _)) if k.trim() == var => {
                out.push_str(&format!("{var}={}", quoted(value)));
            }
            _ => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// Quoted when it has to be (the env file unquotes '…').
fn quoted(value: &str) -> String {
    if value.contains([' ', '\t', '#', '"', '$', '\\']) {
        format!("'{value}'")
    } else {
        value.to_string()
    }
}

/// 24 random bytes as hex.
fn random_value() -> anyhow::Result<String> {
    let mut b = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .context("reading /dev/urandom")?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_env_file_keeps_its_other_lines() {
        let text = "# secrets\nPOSTGRES_PASSWORD=old\nexport TOKEN=x\n\nOTHER='a b'\n";
        assert_eq!(
            with_value(text, "POSTGRES_PASSWORD", "n3w"),
            "# secrets\nPOSTGRES_PASSWORD=n3w\nexport TOKEN=x\n\nOTHER='a b'\n"
        );
        assert_eq!(
            with_value(text, "TOKEN", "with space"),
            "# secrets\nPOSTGRES_PASSWORD=old\nTOKEN='with space'\n\nOTHER='a b'\n"
        );
        let parsed =
            berth_config::parse_env_file(Path::new("e"), &with_value(text, "OTHER", "x#y$z"))
                .expect("parses");
        assert_eq!(parsed["OTHER"], "x#y$z");
        assert_eq!(random_value().expect("random").len(), 48);
    }
}
