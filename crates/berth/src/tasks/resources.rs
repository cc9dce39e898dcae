//! Host resources: disk, memory and load every ten seconds, sampled off the async workers
//! (statvfs can block on a sick filesystem).

use std::sync::Arc;
use std::time::Duration;

use crate::hub::Hub;
use crate::io::host;

const EVERY: Duration = Duration::from_secs(10);

pub async fn run(hub: Arc<Hub>) {
    loop {
        let cfg = hub.config();
        let dir = cfg
            .backup
            .as_ref()
            .map(|b| b.dir.clone())
            .filter(|d| d.exists())
            .unwrap_or_else(|| cfg.supervisor.state_dir.clone());
        if let Ok(r) = tokio::task::spawn_blocking(move || host::sample(&dir)).await {
            hub.update(|s| s.resources = Some(r));
        }
        tokio::time::sleep(EVERY).await;
    }
}
