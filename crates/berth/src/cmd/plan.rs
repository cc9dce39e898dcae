//! `berth plan`.

use berth_config::Config;

use crate::cmd::connect;
use crate::io::spec;

pub async fn plan(cfg: Config) -> anyhow::Result<()> {
    let engine = connect().await?;
    let observed = spec::observe(engine.as_ref(), &cfg).await?;
    let actions = berth_core::plan(
        &cfg,
        &observed,
        &berth_core::Held::new(),
        &berth_core::Rejected::new(),
    );
    if actions.is_empty() {
        println!("nothing to do: {} services up to date", cfg.services.len());
    }
    for a in actions {
        println!("{a}");
    }
    Ok(())
}
