//! Small engine helpers the tasks share.

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use anyhow::{Context as _, bail};
use berth_config::Config;
use berth_engine::{ContainerDetails, Engine, EngineError, Output};
use futures::StreamExt;
use tracing::info;

/// The service's address on the project's network: its container's own, or, for one in
/// another service's network namespace, that service's container's (None if it has none).
pub async fn address(
    engine: &dyn Engine,
    cfg: &Config,
    service: &str,
    details: &ContainerDetails,
) -> Option<IpAddr> {
    let net = cfg.network_name();
    match cfg
        .services
        .get(service)
        .and_then(|s| s.network_of.as_ref())
    {
        Some(h) => engine
            .inspect_container(&cfg.container_name(h))
            .await
            .ok()?
            .ips
            .get(&net)
            .copied(),
        None => details.ips.get(&net).copied(),
    }
}

/// The image is on this host, pulled from its registry if it was not.
pub async fn ensure_image(engine: &dyn Engine, cfg: &Config, image: &str) -> anyhow::Result<()> {
    if engine.image_exists(image).await? {
        return Ok(());
    }
    let host = crate::io::registry::registry_of(image);
    let auth = crate::io::registry::auth_for(cfg, image)
        .await
        .with_context(|| format!("finding credentials for {host}"))?;
    info!(image, registry = %host, credentials = auth.as_ref().map_or("none", |(_, from)| from.as_str()), "pulling");
    let t = Instant::now();
    let told = |how_far: String| crate::progress::say("pull", format!("{image}: {how_far}"));
    crate::progress::say("pull", format!("{image} from {host}"));
    if let Err(e) = engine
        .pull_image(image, auth.as_ref().map(|(a, _)| a), &told)
        .await
    {
        let e = crate::redact::scrub(&e.to_string());
        if crate::io::registry::is_auth_error(&e) {
            bail!(match &auth {
                Some((_, from)) => format!(
                    "pulling {image}: {host} refused the credentials from {from}: check the user name and that the token may read packages"
                ),
                None => format!(
                    "pulling {image}: {host} wants credentials and berth has none: add [registries.{host:?}] with username and password = \"${{TOKEN}}\" (the token in the env file), or `docker login {host}` as root, then systemctl restart berth"
                ),
            });
        }
        bail!(
            "image {image} is not on this host and pulling it failed ({e}): check the name, or `docker load` it"
        );
    }
    info!(image, ms = t.elapsed().as_millis() as u64, "pulled");
    Ok(())
}

/// A container that is already gone is as good as removed.
pub fn ignore_not_found(e: EngineError) -> Result<(), EngineError> {
    if e.is_not_found() { Ok(()) } else { Err(e) }
}

pub fn started_at(d: &ContainerDetails) -> Option<SystemTime> {
    d.started_at
        .as_deref()
        .and_then(berth_core::time::parse_time)
}

/// The first 12 characters of a container id, as `docker ps` shows it.
pub fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

/// The last lines a container wrote, on one line.
pub async fn tail_logs(engine: &dyn Engine, id: &str, lines: u64) -> String {
    let mut s = engine.logs(id, Some(lines), false);
    let mut out = Vec::new();
    while let Some(Ok(chunk)) = s.next().await {
        match chunk {
            Output::Stdout(b) | Output::Stderr(b) => out.extend(b),
        }
        if out.len() > 64 * 1024 {
            break;
        }
    }
    crate::redact::scrub(&String::from_utf8_lossy(&out).trim().replace('\n', " | "))
}
