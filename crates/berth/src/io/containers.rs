//! Small engine helpers the tasks share.

use std::time::{Instant, SystemTime};

use berth_engine::{ContainerDetails, Engine, EngineError, Output};
use futures::StreamExt;
use tracing::info;

/// The image is on this host, pulled from its registry if it was not.
pub async fn ensure_image(engine: &dyn Engine, image: &str) -> anyhow::Result<()> {
    if engine.image_exists(image).await? {
        return Ok(());
    }
    info!(image, "pulling");
    let t = Instant::now();
    engine.pull_image(image).await.map_err(|e| {
        anyhow::anyhow!(
            "image {image} is not on this host and pulling it failed ({e}): check the name, `docker login` to a private registry, or `docker load` it"
        )
    })?;
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
