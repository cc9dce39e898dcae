//! `berth alert test`: a test message to every channel of `[alerts]`, sent by the
//! running daemon (so the unit's sandbox and network path are what is tried); from this
//! shell only when no daemon runs, and then it says so.

use berth_config::Config;

use crate::api::ChannelTest;
use crate::serve::admin;
use crate::tasks::alerts::send_test;

pub async fn alert_test(cfg: Config) -> anyhow::Result<()> {
    let results = match admin::request::<_, Vec<ChannelTest>>(
        &cfg.supervisor.admin_socket,
        "/alert-test",
        &(),
    )
    .await
    {
        Some(r) => r?,
        None => {
            println!("no berth daemon answers: sending from this shell, outside berth's sandbox");
            send_test(&cfg).await?
        }
    };
    let mut failed = 0;
    for r in &results {
        match &r.error {
            None => println!("{}: sent", r.channel),
            Some(e) => {
                failed += 1;
                println!("{}: failed: {e}", r.channel);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} alert channel(s) failed; check the address and token in [alerts]");
    }
    Ok(())
}
