//! The off-site copier: copies backups to S3-compatible storage (`[backup.offsite]`)
//! after each new one and every hour; a failure is reported in `/health` and retried with
//! backoff (2 s doubling to 10 min). Local backups never wait for it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::Notify;
use tracing::warn;

use crate::hub::Hub;
use crate::io::s3::Store;

const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(600);
const PASS_EVERY: Duration = Duration::from_secs(3600);

pub async fn run(hub: Arc<Hub>, wake: Arc<Notify>) {
    let mut backoff = RETRY_FIRST;
    loop {
        let cfg = hub.config();
        let target = cfg
            .backup
            .as_ref()
            .and_then(|b| Some((b.dir.clone(), b.offsite.clone()?)));
        let Some((dir, o)) = target else {
            hub.update(|s| s.backup.offsite = None);
            tokio::select! {
                _ = wake.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
            continue;
        };
        let mut st = hub.read(|s| s.backup.offsite.clone().unwrap_or_default());
        let r = match Store::new(&o, &cfg.supervisor.project) {
            Ok(store) => store.sync(&dir, &mut st).await,
            Err(e) => Err(e),
        };
        let wait = match r {
            Ok(()) => {
                st.last_ok_at = Some(SystemTime::now());
                st.last_error = None;
                backoff = RETRY_FIRST;
                PASS_EVERY
            }
            Err(e) => {
                let e = format!("{e:#}");
                warn!(error = %e, retry_in = ?backoff, "off-site copy failed");
                st.last_error = Some(e);
                let w = backoff;
                backoff = (backoff * 2).min(RETRY_MAX);
                w
            }
        };
        hub.update(|s| s.backup.offsite = Some(st));
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}
