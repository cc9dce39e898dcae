//! berth: a supervisor daemon and CLI for a bot stack on one Docker host.
//!
//! Layers, each importing only those above it in this list (ARCHITECTURE.md):
//! `hub`, `api`, `notify`, `logging` → `io` (engine, files, S3) → `tasks` (one per job)
//! → `serve` (HTTP, admin socket) → `daemon`, `cmd`, `cli` → `main`.

mod api;
mod cli;
mod cmd;
mod daemon;
mod hub;
mod io;
mod logging;
mod notify;
mod progress;
mod redact;
mod serve;
mod tasks;

use std::process::ExitCode;

use clap::Parser as _;
use tracing::error;

use crate::cli::{AlertAction, Cli, Command, OffsiteAction};
use crate::cmd::{exit, load_or_exit, runtime, with_config};

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => cmd::check(&config),
        Command::Plan { config } => with_config(&config, cmd::plan::plan),
        Command::Status { config, json } => match load_or_exit(&config.config) {
            Ok(cfg) => runtime()
                .map(|rt| rt.block_on(cmd::status::status(cfg, json)))
                .unwrap_or_else(|e| exit(Err(e))),
            Err(code) => code,
        },
        Command::ImportCompose {
            file,
            output,
            env_file,
            project,
            force,
        } => exit(cmd::compose::import_compose(
            &file, output, env_file, project, force,
        )),
        Command::Export {
            config,
            format,
            output,
            force,
        } => match load_or_exit(&config.config) {
            Ok(cfg) => exit(cmd::compose::export(&cfg, format, output.as_deref(), force)),
            Err(code) => code,
        },
        Command::Completions { shell } => {
            cmd::docs::completions(shell);
            ExitCode::SUCCESS
        }
        Command::Man => exit(cmd::docs::man()),
        Command::Alert {
            action: AlertAction::Test { config },
        } => with_config(&config, cmd::alert::alert_test),
        Command::Backup { config, quiet } => {
            with_config(&config, |cfg| cmd::backup::backup_cmd(cfg, quiet))
        }
        Command::Backups { config, json } => {
            with_config(
                &config,
                |cfg| async move { cmd::backup::backups_cmd(cfg, json) },
            )
        }
        Command::Restore {
            config,
            which,
            yes,
            quiet,
        } => with_config(&config, |cfg| {
            cmd::backup::restore_cmd(cfg, which, yes, quiet)
        }),
        Command::Offsite { action } => match action {
            OffsiteAction::List { config } => with_config(&config, cmd::offsite::list),
            OffsiteAction::Fetch { config, which, dir } => {
                with_config(&config, |cfg| cmd::offsite::fetch(cfg, which, dir))
            }
            OffsiteAction::Keygen => exit(cmd::offsite::keygen()),
        },
        Command::Deploy {
            config,
            service,
            image,
            build,
            no_backup,
            quiet,
        } => with_config(&config, |cfg| async move {
            match image {
                Some(image) if !build => {
                    let req = api::DeployRequest {
                        service,
                        image,
                        backup: !no_backup,
                    };
                    cmd::deploy::deploy(cfg, req, quiet).await
                }
                _ => cmd::deploy::deploy_build(cfg, service, !no_backup, quiet).await,
            }
        }),
        Command::Rollback {
            config,
            service,
            restore_db,
            yes,
            quiet,
        } => with_config(&config, |cfg| {
            let req = api::RollbackRequest {
                service,
                restore_db,
            };
            cmd::deploy::rollback(cfg, req, yes, quiet)
        }),
        Command::Stop { config, service } => {
            with_config(&config, |cfg| cmd::deploy::stop(cfg, service))
        }
        Command::Start { config, service } => {
            with_config(&config, |cfg| cmd::deploy::start(cfg, service))
        }
        Command::Restart { config, service } => {
            with_config(&config, |cfg| cmd::deploy::restart(cfg, service))
        }
        Command::Forced { config } => cmd::ssh::ssh_command(&config),
        Command::RotateSecret {
            config,
            var,
            value_from_stdin,
        } => with_config(&config, |cfg| {
            cmd::rotate::rotate_secret(cfg, &config.config, var, value_from_stdin)
        }),
        Command::Logs {
            config,
            service,
            follow,
            lines,
        } => with_config(&config, |cfg| cmd::logs::logs(cfg, service, follow, lines)),
        Command::Run { config, log_json } => {
            // Signal handlers first: a reload asked for while the config is read is seen
            // once the daemon runs, instead of killing it.
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => return exit(Err(e)),
            };
            let signals = {
                let _in_runtime = rt.enter();
                daemon::Signals::register()
            };
            let signals = match signals {
                Ok(s) => s,
                Err(e) => return exit(Err(e)),
            };
            let cfg = match load_or_exit(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            logging::init(log_json);
            let r = rt.block_on(daemon::run(cfg, config.config, signals));
            if let Err(e) = &r {
                error!(error = %format!("{e:#}"), "berth stopped with an error");
            }
            exit(r)
        }
    }
}
