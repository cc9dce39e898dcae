//! berth: a supervisor daemon and CLI for a bot stack on one Docker host.

mod admin;
mod alerts;
mod backup;
mod deploy;
mod http;
mod logging;
mod metrics;
mod notify;
mod offsite;
mod probe;
mod resources;
mod spec;
mod state;
mod supervisor;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use berth_config::Config;
use berth_engine::{DockerEngine, Engine};
use clap::{CommandFactory as _, Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info};

use crate::supervisor::Supervisor;

/// `0.1.0 (git 1a2b3c4d5e)`.
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (git ",
    env!("BERTH_GIT_REV"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "berth",
    version = VERSION,
    about = "Keeps a bot stack (PostgreSQL, Redis, bot) running on one Docker host"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The config file [default: $BERTH_CONFIG, then /etc/berth/berth.toml]
    #[arg(short, long, env = "BERTH_CONFIG", default_value = berth_config::DEFAULT_CONFIG_PATH, hide_env_values = true)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Alerts: `berth alert test` sends a test message to every channel in [alerts]
    Alert {
        #[command(subcommand)]
        action: AlertAction,
    },
    /// Turn a compose file into a berth config (values from the env file stay ${VAR})
    ImportCompose {
        /// The compose file (docker-compose.yml, compose.yaml, ...)
        file: PathBuf,
        /// Write the config here instead of to standard output
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The env file with the compose file's variables [default: .env beside FILE]
        #[arg(long)]
        env_file: Option<PathBuf>,
        /// Project name when the compose file has no `name:` [default: FILE's folder]
        #[arg(long)]
        project: Option<String>,
        /// Overwrite --output if it exists
        #[arg(long)]
        force: bool,
    },
    /// Write the config as a compose file or Kubernetes manifests (secrets as references)
    Export {
        #[command(flatten)]
        config: ConfigArg,
        format: ExportFormat,
        /// Write here instead of to standard output
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Print shell completions: berth completions bash > /etc/bash_completion.d/berth
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff): berth man > /usr/local/share/man/man1/berth.1
    Man,
    /// Run the supervisor in the foreground (systemd runs this)
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log JSON lines to stderr instead of text (ignored under journald)
        #[arg(long)]
        log_json: bool,
    },
    /// Validate the config and its env file; errors as FILE:LINE:COL: message
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Show the actions needed to converge the engine to the config; changes nothing
    Plan {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Services, health and restarts, from the running daemon
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print the /health document
        #[arg(long)]
        json: bool,
    },
    /// Take a backup now, wait for it, print its id
    Backup {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List backups: id, time, size, sha256, verified
    Backups {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Restore a backup (an id or `latest`): stops dependants, replaces the database, starts them
    Restore {
        #[command(flatten)]
        config: ConfigArg,
        /// Backup id, or `latest`
        which: String,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
    /// Deploy a new image of a service: backup, migration, health gate, automatic rollback
    Deploy {
        #[command(flatten)]
        config: ConfigArg,
        service: String,
        image: String,
        /// Skip the pre-deploy backup
        #[arg(long)]
        no_backup: bool,
    },
    /// Go back to the service's previous image (its stopped container, kept by the last deploy)
    Rollback {
        #[command(flatten)]
        config: ConfigArg,
        service: String,
        /// Also restore the backup taken just before the current version was deployed
        #[arg(long)]
        restore_db: bool,
    },
    /// Show a service's container logs
    Logs {
        #[command(flatten)]
        config: ConfigArg,
        service: String,
        /// Keep following new lines
        #[arg(short, long)]
        follow: bool,
        /// Show the last N lines (all if not given)
        #[arg(short = 'n', long = "lines")]
        lines: Option<u64>,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ExportFormat {
    Compose,
    Kubernetes,
}

#[derive(Subcommand)]
enum AlertAction {
    /// Send a test message to every alert channel; exit 1 if one fails
    Test {
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match berth_config::load(&config.config) {
            Ok(cfg) => {
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
        },
        Command::Plan { config } => {
            let cfg = match load_or_exit(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            exit(runtime().and_then(|rt| rt.block_on(plan(cfg))))
        }
        Command::Status { config, json } => {
            let cfg = match load_or_exit(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            runtime()
                .map(|rt| rt.block_on(status(cfg, json)))
                .unwrap_or_else(|e| {
                    eprintln!("error: {e:#}");
                    ExitCode::from(1)
                })
        }
        Command::ImportCompose {
            file,
            output,
            env_file,
            project,
            force,
        } => exit(import_compose(&file, output, env_file, project, force)),
        Command::Export {
            config,
            format,
            output,
        } => match load_or_exit(&config.config) {
            Ok(cfg) => {
                let text = match format {
                    ExportFormat::Compose => berth_compose::export::compose(&cfg),
                    ExportFormat::Kubernetes => berth_compose::export::kubernetes(&cfg),
                };
                exit(write_out(output.as_deref(), &text, true))
            }
            Err(code) => code,
        },
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "berth", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Command::Man => {
            match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => exit(Err(e.into())),
            }
        }
        Command::Alert {
            action: AlertAction::Test { config },
        } => with_config(&config, |cfg| async move { alert_test(cfg).await }),
        Command::Backup { config } => {
            with_config(&config, |cfg| async move { backup_cmd(cfg).await })
        }
        Command::Backups { config, json } => {
            with_config(&config, |cfg| async move { backups_cmd(cfg, json) })
        }
        Command::Restore { config, which, yes } => {
            with_config(
                &config,
                |cfg| async move { restore_cmd(cfg, which, yes).await },
            )
        }
        Command::Deploy {
            config,
            service,
            image,
            no_backup,
        } => with_config(&config, |cfg| async move {
            let body =
                serde_json::json!({"service": service, "image": image, "backup": !no_backup});
            let r =
                admin::request_with(&cfg.supervisor.admin_socket, "POST", "/deploy", Some(&body))
                    .await
                    .context(
                        "deploys go through the running daemon: start it (systemctl start berth)",
                    )??;
            println!(
                "deployed {} {} (previous {}) in {} ms{}",
                r["service"].as_str().unwrap_or("?"),
                r["image"].as_str().unwrap_or("?"),
                r["previous_image"].as_str().unwrap_or("?"),
                r["duration_ms"],
                interruption(&r)
            );
            Ok(())
        }),
        Command::Rollback {
            config,
            service,
            restore_db,
        } => with_config(&config, |cfg| async move {
            let path = if restore_db {
                format!("/rollback/{service}/restore-db")
            } else {
                format!("/rollback/{service}")
            };
            let r = admin::request(&cfg.supervisor.admin_socket, "POST", &path)
                .await
                .context(
                    "rollbacks go through the running daemon: start it (systemctl start berth)",
                )??;
            println!("{} back on {}", service, r["image"].as_str().unwrap_or("?"));
            Ok(())
        }),
        Command::Logs {
            config,
            service,
            follow,
            lines,
        } => {
            let cfg = match load_or_exit(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            exit(runtime().and_then(|rt| rt.block_on(logs(cfg, service, follow, lines))))
        }
        Command::Run { config, log_json } => {
            let cfg = match load_or_exit(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            logging::init(log_json);
            let r = runtime().and_then(|rt| rt.block_on(run(cfg, config.config)));
            if let Err(e) = &r {
                error!(error = %format!("{e:#}"), "berth stopped with an error");
            }
            exit(r)
        }
    }
}

/// Loads the config and runs `f` on a runtime; errors print as one line, exit 1.
fn with_config<F, Fut>(arg: &ConfigArg, f: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    match load_or_exit(&arg.config) {
        Ok(cfg) => exit(runtime().and_then(|rt| rt.block_on(f(cfg)))),
        Err(code) => code,
    }
}

fn import_compose(
    file: &std::path::Path,
    output: Option<PathBuf>,
    env_file: Option<PathBuf>,
    project: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(file)
        .with_context(|| format!("reading {}; give the compose file's path", file.display()))?;
    let dir = std::path::absolute(file)?
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    let env_path = match env_file {
        Some(p) => Some(std::path::absolute(p)?),
        None => Some(dir.join(".env")).filter(|p| p.exists()),
    };
    let env = match &env_path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            berth_config::parse_env_file(p, &text)
                .map_err(|errs| anyhow::anyhow!("{}", berth_config::ConfigErrors(errs)))?
        }
        None => Default::default(),
    };
    let project = project.unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "berth".into())
    });
    let out = berth_compose::import(&berth_compose::Input {
        yaml: &yaml,
        dir: &dir,
        env: &env,
        env_file: env_path.as_deref(),
        project: &project,
    })
    .with_context(|| format!("{}", file.display()))?;
    for n in &out.notes {
        eprintln!("note: {n}");
    }
    write_out(output.as_deref(), &out.toml, force)?;
    if let Some(o) = &output {
        eprintln!(
            "wrote {}: check it with `berth check -c {}`",
            o.display(),
            o.display()
        );
    }
    Ok(())
}

/// Standard output, or a file (not over an existing one unless `force`).
fn write_out(path: Option<&std::path::Path>, text: &str, force: bool) -> anyhow::Result<()> {
    match path {
        None => {
            print!("{text}");
            Ok(())
        }
        Some(p) if p.exists() && !force => {
            anyhow::bail!("{} exists: pass --force to overwrite it", p.display())
        }
        Some(p) => std::fs::write(p, text).with_context(|| format!("writing {}", p.display())),
    }
}

async fn alert_test(cfg: Config) -> anyhow::Result<()> {
    let a = cfg
        .alerts
        .as_ref()
        .context("no [alerts] section in the config: add telegram = { chat_id = ... } or webhook = { url = ... }")?;
    let http = alerts::http_client()?;
    let secrets = alerts::secrets(&cfg);
    let msg = alerts::test_message();
    let mut failed = 0;
    for (name, ch) in alerts::Channel::all(a) {
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

async fn backup_cmd(cfg: Config) -> anyhow::Result<()> {
    let meta = match admin::request(&cfg.supervisor.admin_socket, "POST", "/backup").await {
        Some(r) => serde_json::from_value::<backup::Meta>(r?)?,
        None => backup::take(connect().await?.as_ref(), &cfg).await?,
    };
    println!("{}", meta.id);
    Ok(())
}

fn backups_cmd(cfg: Config, json: bool) -> anyhow::Result<()> {
    let b = cfg
        .backup
        .as_ref()
        .context("no [backup] section in the config")?;
    let all = backup::list(&b.dir)?;
    if json {
        let rows: Vec<serde_json::Value> = all
            .iter()
            .map(|m| {
                let mut v = serde_json::to_value(m).unwrap_or_default();
                v["path"] = serde_json::Value::String(m.path(&b.dir).display().to_string());
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if all.is_empty() {
        println!("no backups in {}", b.dir.display());
    }
    for m in &all {
        let verified = match m.verified {
            Some(true) => "verified",
            Some(false) => "FAILED verification",
            None => "not verified",
        };
        println!(
            "{}  {}  {:>10}  sha256:{}  {verified}",
            m.id, m.created_at, m.size, m.sha256
        );
    }
    Ok(())
}

async fn restore_cmd(cfg: Config, which: String, yes: bool) -> anyhow::Result<()> {
    let b = cfg
        .backup
        .as_ref()
        .context("no [backup] section in the config")?;
    let meta = backup::find(&b.dir, &which)?;
    let deps = supervisor::Supervisor::dependants(&cfg, &b.service);
    if !yes {
        use std::io::{BufRead, IsTerminal, Write};
        if !std::io::stdin().is_terminal() {
            anyhow::bail!(
                "restore replaces database {}: confirm with --yes",
                b.database
            );
        }
        print!(
            "Replace database {} with backup {} ({})? {} will be stopped meanwhile. [y/N] ",
            b.database,
            meta.id,
            meta.created_at,
            if deps.is_empty() {
                "nothing".to_string()
            } else {
                deps.join(", ")
            }
        );
        std::io::stdout().flush()?;
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if !matches!(line.trim(), "y" | "Y" | "yes") {
            anyhow::bail!("not restored");
        }
    }
    match admin::request(
        &cfg.supervisor.admin_socket,
        "POST",
        &format!("/restore/{}", meta.id),
    )
    .await
    {
        Some(r) => {
            r?;
        }
        None => {
            // No daemon: nobody restarts what we stop, so stop and start by hand.
            let engine = connect().await?;
            for d in &deps {
                let grace = cfg.services[d].stop_grace_period;
                let _ = engine.stop_container(&cfg.container_name(d), grace).await;
            }
            let r = backup::restore_database(engine.as_ref(), &cfg, &meta).await;
            for d in deps.iter().rev() {
                let _ = engine.start_container(&cfg.container_name(d)).await;
            }
            r?;
        }
    }
    println!("restored {} ({})", meta.id, meta.created_at);
    Ok(())
}

fn load_or_exit(path: &std::path::Path) -> Result<Config, ExitCode> {
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

fn exit(r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line, whatever the error carries.
            eprintln!("error: {}", format!("{e:#}").replace('\n', "; "));
            ExitCode::from(1)
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

async fn connect() -> anyhow::Result<Arc<dyn Engine>> {
    let socket = DockerEngine::default_socket();
    let engine = DockerEngine::connect(&socket).await.with_context(|| {
        format!("connecting to the Docker engine at {socket} (is dockerd running?)")
    })?;
    Ok(Arc::new(engine))
}

async fn plan(cfg: Config) -> anyhow::Result<()> {
    let engine = connect().await?;
    let observed = spec::observe(engine.as_ref(), &cfg).await?;
    let actions = berth_plan::plan(&cfg, &observed, &berth_plan::Held::new());
    if actions.is_empty() {
        println!("nothing to do: {} services up to date", cfg.services.len());
    }
    for a in actions {
        println!("{a}");
    }
    Ok(())
}

async fn logs(
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

async fn status(cfg: Config, json: bool) -> ExitCode {
    let url = format!("http://{}/health", cfg.supervisor.health_listen);
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    let body: Option<serde_json::Value> = match client.get(&url).send().await {
        Ok(r) => r.json().await.ok(),
        Err(_) => None,
    };
    let Some(body) = body else {
        eprintln!(
            "berth daemon is not answering at {url}: is `berth run` (the berth service) running?"
        );
        engine_only_status(&cfg).await;
        return ExitCode::from(3);
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        print!("{}", status_table(&body));
    }
    if body["status"] == "down" {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

/// The `berth status` table from a /health document.
fn status_table(body: &serde_json::Value) -> String {
    use std::fmt::Write;
    let now = std::time::SystemTime::now();
    let uptime = |since: &serde_json::Value| -> String {
        since
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
            .and_then(|t| now.duration_since(t).ok())
            .map(|d| humantime::format_duration(Duration::from_secs(d.as_secs())).to_string())
            .unwrap_or_else(|| "-".into())
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "status: {}   engine: {}   config generation {}",
        body["status"].as_str().unwrap_or("?"),
        body["engine"].as_str().unwrap_or("?"),
        body["config"]["generation"]
    );
    if let Some(e) = body["config"]["error"].as_str() {
        let _ = writeln!(out, "config reload rejected: {e}");
    }
    let _ = writeln!(
        out,
        "\n{:<12} {:<9} {:<10} {:>8}  {:<14} IMAGE",
        "SERVICE", "STATE", "HEALTH", "RESTARTS", "UPTIME"
    );
    for (name, s) in body["services"].as_object().into_iter().flatten() {
        let mut health = s["health"].as_str().unwrap_or("?").to_string();
        if s["crashloop"] == true {
            health.push_str(" (crash loop)");
        }
        let _ = writeln!(
            out,
            "{:<12} {:<9} {:<10} {:>8}  {:<14} {}",
            name,
            s["state"].as_str().unwrap_or("?"),
            health,
            s["restarts"].as_u64().unwrap_or(0),
            uptime(&s["since"]),
            s["image"].as_str().unwrap_or("?"),
        );
        if let Some(err) = s["probe"]["error"].as_str() {
            let _ = writeln!(out, "{:<12} probe: {err}", "");
        }
    }
    let b = &body["backup"];
    let _ = match b["last_ok_at"].as_str() {
        Some(t) => writeln!(
            out,
            "\nbackup: last ok {t} ({} ago), {} kept",
            uptime(&b["last_ok_at"]),
            b["count"]
        ),
        None => writeln!(out, "\nbackup: none yet"),
    };
    if let Some(e) = b["last_error"].as_str() {
        let _ = writeln!(out, "backup: last attempt failed: {e}");
    }
    if let Some(o) = b["offsite"].as_object() {
        let state = match o.get("last_error").and_then(|e| e.as_str()) {
            Some(e) => format!("failing: {e}"),
            None => format!(
                "{} copies, last pass {}",
                o.get("count").and_then(|c| c.as_u64()).unwrap_or(0),
                o.get("last_ok_at")
                    .and_then(|t| t.as_str())
                    .unwrap_or("not yet")
            ),
        };
        let pending = o.get("pending").and_then(|p| p.as_u64()).unwrap_or(0);
        let _ = writeln!(out, "off-site: {state}, {pending} pending");
    }
    for (name, c) in body["alerts"].as_object().into_iter().flatten() {
        let state = match c["last_error"].as_str() {
            Some(e) if c["ok"] == false => format!("failing: {e}"),
            _ => "ok".to_string(),
        };
        let _ = writeln!(out, "alerts: {name} {state} ({} sent)", c["sent"]);
    }
    for (svc, d) in body["deploy"].as_object().into_iter().flatten() {
        let _ = writeln!(
            out,
            "deploy: {svc} {} (previous {}) at {}: {}{}",
            d["image"].as_str().unwrap_or("?"),
            d["previous_image"].as_str().unwrap_or("-"),
            d["at"].as_str().unwrap_or("?"),
            d["outcome"].as_str().unwrap_or("?"),
            interruption(d)
        );
        if let Some(reason) = d["reason"].as_str() {
            let _ = writeln!(out, "  reason: {reason}");
        }
    }
    out
}

/// ", service interrupted N ms" when the deploy record knows it.
fn interruption(record: &serde_json::Value) -> String {
    record["interruption_ms"]
        .as_u64()
        .map(|ms| format!(", service interrupted {ms} ms"))
        .unwrap_or_default()
}

/// What the engine alone can tell when the daemon does not answer.
async fn engine_only_status(cfg: &Config) {
    let engine = match connect().await {
        Ok(e) => e,
        Err(e) => {
            eprintln!("and the engine cannot be asked either: {e:#}");
            return;
        }
    };
    match engine
        .containers(berth_plan::LABEL_PROJECT, &cfg.supervisor.project)
        .await
    {
        Ok(list) => {
            println!(
                "containers of project {} (from the engine):",
                cfg.supervisor.project
            );
            for name in cfg.services.keys() {
                let c = list
                    .iter()
                    .find(|c| c.labels.get(berth_plan::LABEL_SERVICE) == Some(name));
                let state = match c {
                    Some(c) if c.running => "running",
                    Some(_) => "stopped",
                    None => "no container",
                };
                println!("  {name:<12} {state}");
            }
        }
        Err(e) => eprintln!("engine: {e}"),
    }
}

async fn run(cfg: Config, path: PathBuf) -> anyhow::Result<()> {
    info!(config = %cfg.path.display(), project = %cfg.supervisor.project, services = cfg.services.len(), "berth starting");
    std::fs::create_dir_all(&cfg.supervisor.state_dir)
        .with_context(|| format!("creating state_dir {}", cfg.supervisor.state_dir.display()))?;
    let listener = http::bind(cfg.supervisor.health_listen).await?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;

    // Connects on first use: while the engine is down berth still serves /health and
    // alerts, and converges as soon as it answers.
    let engine: Arc<dyn Engine> = Arc::new(DockerEngine::lazy(&DockerEngine::default_socket()));
    let admin_listener = admin::bind(&cfg.supervisor.admin_socket).await?;
    let admin_path = cfg.supervisor.admin_socket.clone();
    // Present while berth runs; found at start-up, the last berth did not stop cleanly.
    let marker = cfg.supervisor.state_dir.join("running");
    let unclean = marker.exists();
    if unclean {
        info!("the previous berth did not stop cleanly");
    }
    std::fs::write(&marker, std::process::id().to_string())
        .with_context(|| format!("writing {}", marker.display()))?;
    let sup = Supervisor::new(engine, cfg);
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let mut http_shutdown = shutdown_rx.clone();
    let http = tokio::spawn(http::serve(listener, sup.snapshot(), async move {
        let _ = http_shutdown.wait_for(|s| *s).await;
    }));
    let (first_tx, mut first_rx) = tokio::sync::oneshot::channel();
    let mut tasks = vec![
        tokio::spawn(sup.clone().converge_loop(first_tx)),
        tokio::spawn(sup.clone().event_loop()),
        tokio::spawn(sup.clone().status_loop()),
        tokio::spawn(sup.clone().resources_loop()),
        tokio::spawn(sup.clone().backup_loop()),
        tokio::spawn(alerts::run(sup.clone(), unclean)),
        tokio::spawn(sup.clone().offsite_loop()),
        tokio::spawn({
            let sup = sup.clone();
            async move {
                if let Err(e) = admin::serve(admin_listener, sup).await {
                    error!(error = %e, "admin socket failed");
                }
            }
        }),
    ];
    let mut probes = spawn_probes(&sup);
    let mut ready = false;
    let watchdog = notify::watchdog_interval();
    let mut wd_tick = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));

    loop {
        tokio::select! {
            _ = &mut first_rx, if !ready => {
                ready = true;
                let summary = sup.snapshot().borrow().summary();
                info!(status = %summary, "first convergence done");
                notify::ready(&summary);
            }
            _ = wd_tick.tick(), if watchdog.is_some() => notify::watchdog(),
            _ = hup.recv() => {
                notify::reloading();
                match berth_config::load(&path) {
                    Ok(new) => {
                        info!(config = %path.display(), "reloaded config");
                        sup.replace_config(new);
                        for p in probes.drain(..) { p.abort(); }
                        probes = spawn_probes(&sup);
                    }
                    Err(errs) => {
                        error!(error = %errs, "reload rejected; keeping the running config");
                        sup.reload_failed(errs.to_string());
                    }
                }
                notify::ready(&sup.snapshot().borrow().summary());
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    info!("stopping");
    notify::stopping();
    for t in tasks.drain(..).chain(probes) {
        t.abort();
    }
    if sup.config().supervisor.on_stop == berth_config::OnStop::Stop {
        sup.stop_all().await;
    }
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(2), http).await;
    let _ = std::fs::remove_file(&admin_path);
    let _ = std::fs::remove_file(&marker);
    info!("stopped");
    Ok(())
}

fn spawn_probes(sup: &Arc<Supervisor>) -> Vec<tokio::task::JoinHandle<()>> {
    sup.config()
        .services
        .keys()
        .map(|name| tokio::spawn(sup.clone().probe_loop(name.clone())))
        .collect()
}
