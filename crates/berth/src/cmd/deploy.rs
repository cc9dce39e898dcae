//! `berth deploy` and `berth rollback`: both go through the running daemon.

use berth_config::Config;
use berth_core::deploy::Record;

use crate::api::{DeployRequest, RollbackRequest};
use crate::serve::admin;

pub async fn deploy(cfg: Config, req: DeployRequest) -> anyhow::Result<()> {
    let r: Record = admin::request(&cfg.supervisor.admin_socket, "/deploy", &req)
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "deploys go through the running daemon: start it (systemctl start berth)"
            )
        })??;
    println!(
        "deployed {} {} (previous {}) in {} ms{}",
        r.service,
        r.image,
        r.previous_image,
        r.duration_ms,
        interruption(&r)
    );
    Ok(())
}

pub async fn rollback(cfg: Config, req: RollbackRequest) -> anyhow::Result<()> {
    let service = req.service.clone();
    let r: Record = admin::request(&cfg.supervisor.admin_socket, "/rollback", &req)
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "rollbacks go through the running daemon: start it (systemctl start berth)"
            )
        })??;
    println!("{service} back on {}", r.image);
    Ok(())
}

/// ", service interrupted N ms" when the deploy record knows it.
pub fn interruption(r: &Record) -> String {
    r.interruption_ms
        .map(|ms| format!(", service interrupted {ms} ms"))
        .unwrap_or_default()
}
