//! One module per command; this one has what they share: loading the config, the async
//! runtime, the engine connection, and turning a result into an exit code.

pub mod alert;
pub mod backup;
pub mod compose;
pub mod deploy;
pub mod docs;
pub mod logs;
pub mod offsite;
pub mod plan;
pub mod rotate;
pub mod ssh;
pub mod status;
pub mod steps;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use berth_config::Config;
use berth_engine::{DockerEngine, Engine};

use crate::cli::ConfigArg;

/// The config, or the exit code after printing why not.
pub fn load_or_exit(path: &Path) -> Result<Config, ExitCode> {
    berth_config::load(path).map_err(|errs| {
        eprintln!("{errs}");
        if !path.exists() {
            eprintln!("hint: pass the config with -c FILE or set BERTH_CONFIG");
        } else {
            eprintln!("hint: fix the lines above, then check with `berth check`");
        }
        ExitCode::from(1)
    })
}

/// `berth check`.
pub fn check(arg: &ConfigArg) -> ExitCode {
    match berth_config::load(&arg.config) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "{}: ok ({} services: {})",
                cfg.path.display(),
                cfg.services.len(),
                cfg.start_order().join(", ")
            );
            ExitCode::SUCCESS
        }
        Err(errs) => {
            eprintln!("{errs}");
            ExitCode::from(1)
        }
    }
}

/// 0, or 1 with the error on one line.
pub fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error carries.
            eprintln!("error: {}", format!("{e:#}").replace('\n', "; "));
            ExitCode::from(1)
        }
    }
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Loads the config and runs `f` on a runtime; errors print as one line, exit 1.
pub fn with_config<F, Fut>(arg: &ConfigArg, f: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    match load_or_exit(&arg.config) {
        Ok(cfg) => exit(runtime().and_then(|rt| rt.block_on(f(cfg)))),
        Err(code) => code,
    }
}

pub async fn connect() -> anyhow::Result<Arc<dyn Engine>> {
    let socket = DockerEngine::default_socket();
    let engine = DockerEngine::connect(&socket).await.with_context(|| {
        format!("connecting to the Docker engine at {socket} (is dockerd running?)")
    })?;
    Ok(Arc::new(engine))
}

/// Asks `question` on the terminal; a refusal, or no terminal to ask on, is an error
/// (`what` says what needs confirming; `--yes` skips the question).
pub fn confirm(what: &str, question: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("{what}: confirm with --yes");
    }
    print!("{question} [y/N] ");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if !matches!(line.trim(), "y" | "Y" | "yes") {
        anyhow::bail!("not confirmed: nothing was changed");
    }
    Ok(())
}

/// Standard output, or a file (not over an existing one unless `force`), written whole
/// or not at all, mode 0600: a config or manifest may name secrets.
pub fn write_out(path: Option<&Path>, text: &str, force: bool) -> anyhow::Result<()> {
    match path {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(p) if p.exists() && !force => {
            anyhow::bail!("{} exists: pass --force to overwrite it", p.display())
        }
        Some(p) => crate::io::statefile::write_atomic(p, text.as_bytes()),
    }
}
