//! `berth ssh-command`: the forced command of a CI key in `authorized_keys`. What
//! `SSH_ORIGINAL_COMMAND` asks for is checked by [`berth_core::forced::parse`] (no
//! shell ever sees it); a refusal is one line on stderr and exit 1, with nothing run.

use std::process::ExitCode;

use berth_core::forced::Allowed;

use crate::api;
use crate::cli::ConfigArg;
use crate::cmd::{self, exit, load_or_exit, runtime, with_config};

pub fn ssh_command(config: &ConfigArg) -> ExitCode {
    let original = std::env::var("SSH_ORIGINAL_COMMAND").ok();
    match berth_core::forced::parse(original.as_deref()) {
        Ok(allowed) => run(config, allowed),
        Err(why) => {
            eprintln!("berth ssh-command: refused: {why}");
            ExitCode::from(1)
        }
    }
}

/// Runs what `berth ssh-command` allowed, as the same command typed on the droplet would.
fn run(config: &ConfigArg, allowed: Allowed) -> ExitCode {
    match allowed {
        Allowed::Deploy {
            service,
            image,
            backup,
        } => with_config(config, |cfg| async move {
            // The key deploys new tags of the service's own image, nothing else.
            let svc = cfg
                .services
                .get(&service)
                .ok_or_else(|| anyhow::anyhow!("refused: no service {service:?}"))?;
            let name = |r: &str| berth_engine::split_reference(r.split('@').next().unwrap_or(r)).0;
            let (want, got) = (name(&svc.image), name(&image));
            if got != want {
                anyhow::bail!("refused: {service} deploys only {want}:TAG from this key");
            }
            let req = api::DeployRequest {
                service,
                image,
                backup,
            };
            cmd::deploy::deploy(cfg, req, false).await
        }),
        Allowed::Rollback { service } => with_config(config, |cfg| {
            let req = api::RollbackRequest {
                service,
                restore_db: false,
            };
            cmd::deploy::rollback(cfg, req, false, false)
        }),
        Allowed::Status { json } => match load_or_exit(&config.config) {
            Ok(cfg) => runtime()
                .map(|rt| rt.block_on(cmd::status::status(cfg, json)))
                .unwrap_or_else(|e| exit(Err(e))),
            Err(code) => code,
        },
        Allowed::Logs { service, lines } => with_config(config, |cfg| {
            cmd::logs::logs(cfg, service, false, Some(lines))
        }),
    }
}
