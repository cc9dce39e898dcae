//! `berth alert test`.

use anyhow::Context as _;
use berth_config::Config;
use berth_core::alerts::test_message;
use berth_core::secrets::secrets;

use crate::tasks::alerts::{Channel, http_client};

pub async fn alert_test(cfg: Config) -> anyhow::Result<()> {
    let a = cfg
        .alerts
        .as_ref()
        .context("no [alerts] section in the config: add telegram = { chat_id = ... } or webhook = { url = ... }")?;
    let http = http_client()?;
    let secrets = secrets(&cfg);
    let msg = test_message();
    let mut failed = 0;
    for (name, ch) in Channel::all(a) {
        match ch
            .send(&http, &msg, &cfg.supervisor.project, &secrets)
            .await
        {
            Ok(()) => println!("{name}: sent"),
            Err(e) => {
                failed += 1;
                println!("{name}: failed: {e:#}");
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} alert channel(s) failed; check the address and token in [alerts]");
    }
    Ok(())
}
