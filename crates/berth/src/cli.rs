//! The command line, parsed and validated only: clap types, no behaviour. `main`
//! dispatches each [`Command`] to its module under `cmd`.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// `0.1.0 (git 1a2b3c4d5e)`.
pub const VERSION: &str = concat!(
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
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args)]
pub struct ConfigArg {
    /// The config file [default: $BERTH_CONFIG, then /etc/berth/berth.toml]
    #[arg(short, long, env = "BERTH_CONFIG", default_value = berth_config::DEFAULT_CONFIG_PATH, hide_env_values = true)]
    pub config: PathBuf,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// Overwrite --output if it exists
        #[arg(long)]
        force: bool,
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
        /// Do not show the steps as they happen
        #[arg(short, long)]
        quiet: bool,
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
        /// Do not show the steps as they happen
        #[arg(short, long)]
        quiet: bool,
    },
    /// Off-site copies ([backup.offsite]): list them, fetch one back, make an encryption key
    Offsite {
        #[command(subcommand)]
        action: OffsiteAction,
    },
    /// Deploy a new image of a service: backup, migration, health gate, automatic rollback
    Deploy {
        #[command(flatten)]
        config: ConfigArg,
        service: String,
        /// The image to deploy (not with --build)
        #[arg(required_unless_present = "build", conflicts_with = "build")]
        image: Option<String>,
        /// Build the image from the service's [build] context first, tagged with its git
        /// revision (else the time)
        #[arg(long)]
        build: bool,
        /// Skip the pre-deploy backup
        #[arg(long)]
        no_backup: bool,
        /// Do not show the steps as they happen (pull, backup, migration, health gate)
        #[arg(short, long)]
        quiet: bool,
    },
    /// Go back to the service's previous image (its stopped container, kept by the last deploy)
    Rollback {
        #[command(flatten)]
        config: ConfigArg,
        service: String,
        /// Also restore the backup taken just before the current version was deployed
        #[arg(long)]
        restore_db: bool,
        /// With --restore-db: do not ask for confirmation
        #[arg(long)]
        yes: bool,
        /// Do not show the steps as they happen
        #[arg(short, long)]
        quiet: bool,
    },
    /// Hold a service down on purpose (kept across berth restarts and reboots) until
    /// `berth start`; the stack shows degraded, and no alert fires for it
    Stop {
        #[command(flatten)]
        config: ConfigArg,
        service: String,
    },
    /// Release a service held by `berth stop` (or start it) and wait until it is healthy
    Start {
        #[command(flatten)]
        config: ConfigArg,
        service: String,
    },
    /// Restart a service gracefully: stop (its grace period), start, wait until healthy;
    /// never two of it running at once
    Restart {
        #[command(flatten)]
        config: ConfigArg,
        service: String,
    },
    /// For `authorized_keys`: `command="berth ssh-command" ssh-ed25519 ...` lets that key
    /// run only deploy, rollback, status or logs (from $SSH_ORIGINAL_COMMAND, checked)
    #[command(name = "ssh-command")]
    Forced {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// A new value for a secret of the env file (a database password: changed in the
    /// database first), then the services that use it recreated, gated
    RotateSecret {
        #[command(flatten)]
        config: ConfigArg,
        /// The variable of the env file, e.g. POSTGRES_PASSWORD
        var: String,
        /// Read the new value from standard input instead of generating one
        #[arg(long)]
        value_from_stdin: bool,
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
pub enum ExportFormat {
    Compose,
    Kubernetes,
}

#[derive(Subcommand)]
pub enum OffsiteAction {
    /// This project's copies in the bucket: id, size, encrypted or not
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Download a copy (an id or `latest`) into the backup folder, decrypted and checked
    /// against its checksums; then `berth restore ID`
    Fetch {
        #[command(flatten)]
        config: ConfigArg,
        /// Copy id, or `latest`
        which: String,
        /// Write the files into this folder instead of [backup] dir
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print a new encryption key for the env file:
    /// berth offsite keygen >> /etc/berth/berth.env
    Keygen,
}

#[derive(Subcommand)]
pub enum AlertAction {
    /// Send a test message to every alert channel; exit 1 if one fails
    Test {
        #[command(flatten)]
        config: ConfigArg,
    },
}
