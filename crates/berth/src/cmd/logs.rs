//! `berth logs`.

use anyhow::Context as _;
use berth_config::Config;

use crate::cmd::connect;

pub async fn logs(
    cfg: Config,
    service: String,
    follow: bool,
    lines: Option<u64>,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    use std::io::Write;
    if !cfg.services.contains_key(&service) {
        anyhow::bail!(
            "no service {service:?} in {} (services: {})",
            cfg.path.display(),
            cfg.services.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    let engine = connect().await?;
    let name = cfg.container_name(&service);
    engine
        .inspect_container(&name)
        .await
        .with_context(|| format!("service {service} has no container yet"))?;
    let mut stream = engine.logs(&name, lines, follow);
    while let Some(chunk) = stream.next().await {
        match chunk? {
            berth_engine::Output::Stdout(b) => std::io::stdout().write_all(&b)?,
            berth_engine::Output::Stderr(b) => std::io::stderr().write_all(&b)?,
        }
    }
    Ok(())
}
