//! The external programs xtask and the tests it runs start, listed in `xtask/tools.txt`:
//! [`ensure`] checks the ones a command needs and installs the missing ones (apt, pip,
//! cargo install), one `installing …` line each, or stops before anything runs with one
//! line naming what is missing and how to install it. It also starts a stopped Docker
//! engine.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{root, target_dir};

/// The list, relative to the workspace root (README and .ci/run name it too).
pub const LIST: &str = "xtask/tools.txt";

/// The xtask commands that have tools in the list (besides `engine` and `ci`).
pub const COMMANDS: &[&str] = &["test", "bench", "faults", "chaos", "demo", "images"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Apt,
    Pip,
    Cargo,
    Builtin,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// A program looked up on PATH, or `python3:MODULE`.
    pub program: String,
    pub kind: Kind,
    pub package: String,
    pub needed_by: Vec<String>,
    /// A service the package starts on install, to stop right after.
    pub stop: Option<String>,
}

impl Tool {
    fn module(&self) -> Option<&str> {
        self.program.strip_prefix("python3:")
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            Kind::Apt => "apt",
            Kind::Pip => "pip",
            Kind::Cargo => "cargo",
            Kind::Builtin => "builtin",
        }
    }

    /// The command that installs it, for people.
    fn install_command(&self) -> String {
        match self.kind {
            Kind::Apt => format!("apt-get install -y {}", self.package),
            Kind::Pip => format!("python3 -m pip install '{}'", self.package),
            Kind::Cargo => format!("cargo install --locked {}", self.package),
            Kind::Builtin => format!("(part of the build or the OS: {})", self.program),
        }
    }

    fn is_present(&self) -> bool {
        if let Some(module) = self.module() {
            return quiet(Command::new("python3").args(["-c", &format!("import {module}")]));
        }
        match self.kind {
            // `cargo deb --version`: cargo finds its subcommands in its own bin folder too.
            Kind::Cargo => {
                let sub = self.program.strip_prefix("cargo-").unwrap_or(&self.program);
                quiet(crate::cargo().args([sub, "--version"]))
            }
            // A pip script must also run: a pyenv shim outlives the package it came from.
            Kind::Pip => {
                on_path(&self.program).is_some() && quiet(Command::new(&self.program).arg("--help"))
            }
            Kind::Apt | Kind::Builtin => on_path(&self.program).is_some(),
        }
    }
}

/// Parses the list: `PROGRAM KIND PACKAGE NEEDED-BY [STOP]` per line, `#` comments.
pub fn parse(text: &str) -> anyhow::Result<Vec<Tool>> {
    let mut tools = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let (program, kind, package, needed_by, stop) = match f[..] {
            [p, k, pkg, by] => (p, k, pkg, by, None),
            [p, k, pkg, by, stop] => (p, k, pkg, by, Some(stop.to_string())),
            _ => bail!(
                "{LIST}:{}: want PROGRAM KIND PACKAGE NEEDED-BY [STOP], got {line:?}",
                n + 1
            ),
        };
        let kind = match kind {
            "apt" => Kind::Apt,
            "pip" => Kind::Pip,
            "cargo" => Kind::Cargo,
            "builtin" => Kind::Builtin,
            other => bail!(
                "{LIST}:{}: kind {other:?} is not apt, pip, cargo or builtin",
                n + 1
            ),
        };
        tools.push(Tool {
            program: program.to_string(),
            kind,
            package: package.to_string(),
            needed_by: needed_by.split(',').map(str::to_string).collect(),
            stop,
        });
    }
    Ok(tools)
}

pub fn list() -> anyhow::Result<Vec<Tool>> {
    let path = root().join(LIST);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    parse(&text)
}

/// Makes sure every tool `command` needs is on this machine (installing what is missing),
/// and that the Docker engine answers if `command` needs docker.
pub fn ensure(command: &str) -> anyhow::Result<()> {
    ensure_all(&[command])
}

/// [`ensure`] for several commands at once (one apt-get run for all of them).
fn ensure_all(commands: &[&str]) -> anyhow::Result<()> {
    let tools = list()?;
    let wanted: Vec<&Tool> = tools
        .iter()
        .filter(|t| t.needed_by.iter().any(|c| commands.contains(&c.as_str())))
        .collect();
    // Builtins come with the build (berth is built by the command itself) or the OS.
    let installable: Vec<&Tool> = wanted
        .iter()
        .copied()
        .filter(|t| t.kind != Kind::Builtin)
        .collect();
    install_missing(&installable)?;
    if wanted.iter().any(|t| t.program == "docker") {
        ensure_engine(&tools)?;
    }
    Ok(())
}

/// `cargo xtask tools [COMMAND…]`: [`ensure`] for these commands (all by default).
pub fn run(args: &[String]) -> anyhow::Result<()> {
    let commands: Vec<&str> = if args.is_empty() {
        COMMANDS.to_vec()
    } else {
        args.iter().map(String::as_str).collect()
    };
    let tools = list()?;
    for c in &commands {
        if !tools.iter().any(|t| t.needed_by.iter().any(|b| b == c)) {
            bail!("no tools are listed for {c:?} in {LIST}");
        }
    }
    ensure_all(&commands)?;
    let n = tools
        .iter()
        .filter(|t| t.kind != Kind::Builtin)
        .filter(|t| t.needed_by.iter().any(|b| commands.contains(&b.as_str())))
        .count();
    println!(
        "tools: the {n} that {} need are present",
        commands.join(", ")
    );
    Ok(())
}

fn install_missing(wanted: &[&Tool]) -> anyhow::Result<()> {
    let missing: Vec<&Tool> = wanted.iter().copied().filter(|t| !t.is_present()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // Stop before installing anything if not everything can be.
    let needs_root: Vec<&Tool> = missing
        .iter()
        .copied()
        .filter(|t| matches!(t.kind, Kind::Apt | Kind::Pip))
        .collect();
    let why = if needs_root.is_empty() {
        None
    } else if !is_root() {
        Some("not root")
    } else if needs_root.iter().any(|t| t.kind == Kind::Apt) && on_path("apt-get").is_none() {
        Some("no apt-get here")
    } else {
        None
    };
    if let Some(why) = why {
        bail!(
            "missing {} and xtask cannot install them ({why}); as root: {}",
            names(&missing),
            install_commands(&missing)
        );
    }

    // apt first: python3 and pip come from it.
    let apt: Vec<&Tool> = missing
        .iter()
        .copied()
        .filter(|t| t.kind == Kind::Apt)
        .collect();
    if !apt.is_empty() {
        for t in &apt {
            announce(t);
        }
        let mut packages: Vec<&str> = apt.iter().map(|t| t.package.as_str()).collect();
        packages.sort();
        packages.dedup();
        let fail = |what: &str, err: String| {
            anyhow::anyhow!(
                "installing {} failed ({what}: {err}); install them with: {}",
                names(&apt),
                install_commands(&apt)
            )
        };
        capture(Command::new("apt-get").args(["update", "-qq"]))
            .map_err(|e| fail("apt-get update", e))?;
        capture(
            Command::new("apt-get")
                .args(["install", "-y", "-qq"])
                .args(&packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .map_err(|e| fail("apt-get install", e))?;
        // The packages may start services of their own (a system nginx on port 80, a
        // registry on 5000); the tests and benchmarks run their own.
        for service in apt.iter().filter_map(|t| t.stop.as_deref()) {
            let _ = quiet(Command::new("service").args([service, "stop"]));
        }
    }
    for t in missing.iter().filter(|t| t.kind == Kind::Pip) {
        announce(t);
        let pip = |extra: &[&str]| {
            capture(
                Command::new("python3")
                    .args(["-m", "pip", "install", "-q"])
                    .args(extra)
                    .arg(&t.package),
            )
        };
        // Debian's own python3 wants --break-system-packages (PEP 668).
        pip(&[])
            .or_else(|_| pip(&["--break-system-packages"]))
            .map_err(|e| {
                anyhow::anyhow!(
                    "installing {} failed (pip: {e}); install it with: {}",
                    t.program,
                    t.install_command()
                )
            })?;
    }
    for t in missing.iter().filter(|t| t.kind == Kind::Cargo) {
        announce(t);
        capture(crate::cargo().args(["install", "--locked", "--quiet", &t.package])).map_err(
            |e| {
                anyhow::anyhow!(
                    "installing {} failed (cargo install: {e}); install it with: {}",
                    t.program,
                    t.install_command()
                )
            },
        )?;
    }
    let still: Vec<&Tool> = missing.into_iter().filter(|t| !t.is_present()).collect();
    if !still.is_empty() {
        bail!(
            "{} still missing after installing (is the install folder on PATH?): {}",
            names(&still),
            install_commands(&still)
        );
    }
    Ok(())
}

fn announce(t: &Tool) {
    if t.program == t.package {
        eprintln!("installing {} ({})", t.program, t.kind_name());
    } else {
        eprintln!("installing {} ({} {})", t.program, t.kind_name(), t.package);
    }
}

fn names(tools: &[&Tool]) -> String {
    tools
        .iter()
        .map(|t| t.program.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One command per kind: `apt-get install -y a b; python3 -m pip install 'c'`.
fn install_commands(tools: &[&Tool]) -> String {
    let mut apt: Vec<&str> = tools
        .iter()
        .filter(|t| t.kind == Kind::Apt)
        .map(|t| t.package.as_str())
        .collect();
    apt.sort();
    apt.dedup();
    let mut out = Vec::new();
    if !apt.is_empty() {
        out.push(format!("apt-get install -y {}", apt.join(" ")));
    }
    out.extend(
        tools
            .iter()
            .filter(|t| t.kind != Kind::Apt)
            .map(|t| t.install_command()),
    );
    out.join("; ")
}

/// Starts the Docker engine if `docker info` fails: `service docker start`, else dockerd
/// in its own session (log in target/dockerd.log).
fn ensure_engine(tools: &[Tool]) -> anyhow::Result<()> {
    if engine_answers() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "the Docker engine does not answer (`docker info` fails); start it as root: service docker start"
        );
    }
    let engine_tools: Vec<&Tool> = tools
        .iter()
        .filter(|t| t.kind != Kind::Builtin && t.needed_by.iter().any(|c| c == "engine"))
        .collect();
    install_missing(&engine_tools)?;
    eprintln!("starting the Docker engine");
    if !quiet(Command::new("service").args(["docker", "start"])) {
        let log = target_dir().join("dockerd.log");
        std::fs::create_dir_all(target_dir())?;
        let out = std::fs::File::create(&log)?;
        Command::new("setsid")
            .arg("dockerd")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting dockerd")?;
    }
    let start = Instant::now();
    while !engine_answers() {
        if start.elapsed() > Duration::from_secs(60) {
            bail!(
                "the Docker engine did not start within 60 s (see `service docker status` or {})",
                target_dir().join("dockerd.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}

fn engine_answers() -> bool {
    quiet(Command::new("docker").arg("info"))
}

pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

/// The file `name` names on PATH, if it is executable.
pub fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Runs `cmd` with no output; true if it ran and succeeded.
fn quiet(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd`, output kept; on failure, its exit status and last line of stderr.
fn capture(cmd: &mut Command) -> Result<(), String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    if out.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    Err(format!("{}: {last}", out.status))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// Programs a Rust source starts by name: the string literal in each `Command::new(…)`
    /// outside comments that looks like a program name (so this scanner's own needle,
    /// a string, is not one).
    fn started_programs(text: &str) -> Vec<String> {
        let text = crate::lint::strip_comments(text);
        let needle = "Command::new(";
        let mut out = Vec::new();
        let mut rest = text.as_str();
        while let Some(i) = rest.find(needle) {
            rest = &rest[i + needle.len()..];
            if let Some(lit) = rest.trim_start().strip_prefix('"')
                && let Some(end) = lit.find('"')
                && !lit[..end].is_empty()
                && lit[..end]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._+-/".contains(c))
            {
                out.push(lit[..end].to_string());
            }
        }
        out
    }

    /// The `.rs` files directly in `dir`, sorted.
    fn rust_files(dir: &Path) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "rs"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    #[test]
    fn the_list_parses_and_names_each_program_once() {
        let tools = list().expect("xtask/tools.txt");
        let mut seen = std::collections::BTreeSet::new();
        for t in &tools {
            assert!(seen.insert(&t.program), "{} is listed twice", t.program);
            assert_eq!(
                t.kind == Kind::Builtin,
                t.package == "-",
                "{}: builtin tools, and only they, have package -",
                t.program
            );
            for c in &t.needed_by {
                assert!(
                    COMMANDS.contains(&c.as_str()) || c == "engine" || c == "ci",
                    "{}: needed by unknown command {c:?}",
                    t.program
                );
            }
        }
        // Order matters: python3 and pip come before the pip packages.
        let pos = |p: &str| tools.iter().position(|t| t.program == p);
        let first_pip = tools.iter().position(|t| t.kind == Kind::Pip);
        assert!(pos("python3:pip") < first_pip && pos("python3") < pos("python3:pip"));
    }

    #[test]
    fn parse_reads_fields_and_rejects_bad_lines() {
        let t = parse("# c\n\nnginx apt nginx-light bench nginx  # trailing\nx pip y[z] test\n")
            .expect("parse");
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].package, "nginx-light");
        assert_eq!(t[0].stop.as_deref(), Some("nginx"));
        assert_eq!(t[1].kind, Kind::Pip);
        assert_eq!(t[1].needed_by, ["test"]);
        assert!(parse("a b\n").is_err());
        assert!(parse("a snap b test\n").is_err());
    }

    #[test]
    fn started_programs_finds_literal_commands_only() {
        let src = r#"
            Command::new("docker").args(["ps"]);
            let c = Command::new(
                "moto_server",
            );
            Command::new(berth_bin());
            // Command::new("git") (a listed name: this file is scanned too)
            let needle = "Command::new(";
        "#;
        assert_eq!(started_programs(src), ["docker", "moto_server"]);
    }

    #[test]
    fn every_program_the_tests_start_is_listed() {
        let listed: std::collections::BTreeSet<String> = list()
            .expect("xtask/tools.txt")
            .into_iter()
            .map(|t| t.program)
            .collect();
        let mut unlisted = Vec::new();
        let mut scanned = 0;
        for dir in ["tests/src", "tests/tests", "xtask/src"] {
            for file in rust_files(&root().join(dir)) {
                scanned += 1;
                let text = std::fs::read_to_string(&file).expect("read");
                for program in started_programs(&text) {
                    if !listed.contains(&program) {
                        let rel = file.strip_prefix(root()).unwrap_or(&file);
                        unlisted.push(format!("{program} (started in {})", rel.display()));
                    }
                }
            }
        }
        assert!(scanned > 10, "scanned only {scanned} files");
        assert!(
            unlisted.is_empty(),
            "programs the tests or xtask start that {LIST} does not list (add each with how to install it): {}",
            unlisted.join(", ")
        );
    }
}
