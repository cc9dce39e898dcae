//! Demo and test images, built offline from Debian packages and cached in the engine by
//! recipe hash (label `berth.recipe`): a second run with nothing changed takes seconds.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};
use sha2::{Digest, Sha256};

use crate::{cargo_build, root, target_dir};

pub const BASE: &str = "berth-demo/base:bookworm";
/// Debian with systemd as PID 1, for testing the unit and setup-droplet.sh.
pub const SYSTEMD_BASE: &str = "berth-test/systemd-base:bookworm";
pub const SYSTEMD: &str = "berth-test/systemd:bookworm";
const RECIPE_LABEL: &str = "berth.recipe";

pub fn build_all() -> anyhow::Result<()> {
    let t0 = std::time::Instant::now();
    let bins = cargo_build(&["demo-bot", "fake-telegram"])?;
    let base_id = ensure_rootfs_image(
        BASE,
        "base.packages",
        // Package caches, and the cluster Debian's postinst made (the postgres image makes
        // its own in PGDATA).
        &[
            "var/cache/apt/archives",
            "var/lib/apt/lists",
            "var/lib/postgresql/15/main",
            "etc/postgresql/15/main",
        ],
        "/bin/bash",
    )?;
    let recipes = root().join("tests/images");
    let bot_migrations = |n: usize| -> anyhow::Result<Vec<PathBuf>> {
        let mut all: Vec<PathBuf> = std::fs::read_dir(recipes.join("bot/migrations"))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        all.sort();
        all.truncate(n);
        Ok(all)
    };
    let v1 = bot_migrations(1)?;
    let v2 = bot_migrations(2)?;
    let images: Vec<Image> = vec![
        Image::new("berth-demo/postgres:15", recipes.join("postgres")).file(
            "docker-entrypoint.sh",
            recipes.join("postgres/docker-entrypoint.sh"),
        ),
        Image::new("berth-demo/redis:7", recipes.join("redis"))
            .file("entrypoint.sh", recipes.join("redis/entrypoint.sh")),
        Image::new("berth-demo/pause:1", recipes.join("pause")),
        Image::new(
            "berth-demo/fake-telegram:latest",
            recipes.join("fake-telegram"),
        )
        .file("fake-telegram", bins.join("fake-telegram")),
        bot_image(
            "berth-demo/bot:1",
            &recipes,
            &bins,
            &v1,
            &[("BOT_VERSION", "1")],
        ),
        bot_image(
            "berth-demo/bot:2",
            &recipes,
            &bins,
            &v2,
            &[("BOT_VERSION", "2")],
        ),
        bot_image(
            "berth-demo/bot:broken",
            &recipes,
            &bins,
            &v2,
            &[("BOT_VERSION", "broken"), ("BOT_BROKEN", "1")],
        ),
    ];
    for img in images {
        img.ensure(&base_id)?;
    }
    eprintln!("images ready in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// The systemd image (only the deployment tests need it).
pub fn build_systemd() -> anyhow::Result<()> {
    let base_id = ensure_rootfs_image(
        SYSTEMD_BASE,
        "systemd.packages",
        &["var/cache/apt/archives"],
        "/sbin/init",
    )?;
    let dir = root().join("tests/images/systemd");
    Image::new(SYSTEMD, dir.clone())
        .file("docker.service", dir.join("docker.service"))
        .ensure(&base_id)
}

fn bot_image(
    tag: &str,
    recipes: &Path,
    bins: &Path,
    migrations: &[PathBuf],
    args: &[(&str, &str)],
) -> Image {
    let mut img = Image::new(tag, recipes.join("bot")).file("demo-bot", bins.join("demo-bot"));
    for m in migrations {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        img = img.file(&format!("migrations/{name}"), m.clone());
    }
    for (k, v) in args {
        img.build_args.push(((*k).to_string(), (*v).to_string()));
    }
    img
}

/// One image built with `docker build` on top of the base image.
struct Image {
    tag: String,
    dockerfile: PathBuf,
    /// (path in the build context, source file)
    files: Vec<(String, PathBuf)>,
    build_args: Vec<(String, String)>,
}

impl Image {
    fn new(tag: &str, dir: PathBuf) -> Self {
        Image {
            tag: tag.to_string(),
            dockerfile: dir.join("Dockerfile"),
            files: Vec::new(),
            build_args: Vec::new(),
        }
    }

    fn file(mut self, ctx_path: &str, src: PathBuf) -> Self {
        self.files.push((ctx_path.to_string(), src));
        self
    }

    fn recipe_hash(&self, base_id: &str) -> anyhow::Result<String> {
        let mut h = Sha256::new();
        h.update(base_id.as_bytes());
        h.update(
            std::fs::read(&self.dockerfile)
                .with_context(|| format!("{}", self.dockerfile.display()))?,
        );
        for (p, src) in &self.files {
            h.update(p.as_bytes());
            h.update(std::fs::read(src).with_context(|| format!("reading {}", src.display()))?);
        }
        for (k, v) in &self.build_args {
            h.update(format!("{k}={v}").as_bytes());
        }
        Ok(hex(&h.finalize()[..12]))
    }

    fn ensure(&self, base_id: &str) -> anyhow::Result<()> {
        let hash = self.recipe_hash(base_id)?;
        if image_label(&self.tag)?.as_deref() == Some(hash.as_str()) {
            eprintln!("{}: cached", self.tag);
            return Ok(());
        }
        let ctx = target_dir()
            .join("images/ctx")
            .join(self.tag.replace(['/', ':'], "_"));
        let _ = std::fs::remove_dir_all(&ctx);
        std::fs::create_dir_all(&ctx)?;
        std::fs::copy(&self.dockerfile, ctx.join("Dockerfile"))?;
        for (p, src) in &self.files {
            let dst = ctx.join(p);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            copy_stripped(src, &dst)?;
        }
        let mut cmd = Command::new("docker");
        cmd.args([
            "build",
            "-q",
            "-t",
            &self.tag,
            "--label",
            &format!("{RECIPE_LABEL}={hash}"),
        ]);
        for (k, v) in &self.build_args {
            cmd.args(["--build-arg", &format!("{k}={v}")]);
        }
        // The legacy builder works offline with a local base image; BuildKit would try to
        // resolve the base from a registry.
        cmd.arg(&ctx).env("DOCKER_BUILDKIT", "0");
        eprintln!("{}: building", self.tag);
        let out = cmd.output().context("running docker build")?;
        if !out.status.success() {
            bail!(
                "docker build of {} failed: {}{}",
                self.tag,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

/// Copies a file; ELF binaries lose their debug info on the way (a debug build is ~10×
/// larger than the code it carries, and every byte is written into an image layer).
fn copy_stripped(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let is_elf = std::fs::read(src).is_ok_and(|b| b.starts_with(b"\x7fELF"));
    if is_elf
        && Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(dst)
            .arg(src)
            .status()
            .is_ok_and(|s| s.success())
    {
        return Ok(());
    }
    std::fs::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The recipe label of an image, or None if the image is absent.
fn image_label(tag: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("docker")
        .args([
            "image",
            "inspect",
            "-f",
            &format!("{{{{index .Config.Labels \"{RECIPE_LABEL}\"}}}}|{{{{.Id}}}}"),
            tag,
        ])
        .output()
        .context("running docker (is the Docker CLI installed?)")?;
    if !out.status.success() {
        return Ok(None);
    }
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(s.trim().split('|').next().map(str::to_string))
}

fn image_id(tag: &str) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", "{{.Id}}", tag])
        .output()?;
    if !out.status.success() {
        bail!("image {tag} not found after building it");
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn packages(list: &str) -> anyhow::Result<Vec<String>> {
    let path = root().join("tests/images").join(list);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

/// The Debian mirror this machine's apt uses (tests must not name hosts of their own).
fn mirror() -> anyhow::Result<String> {
    if let Ok(m) = std::env::var("BERTH_DEBIAN_MIRROR") {
        return Ok(m);
    }
    if let Ok(s) = std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources") {
        for stanza in s.split("\n\n") {
            let field = |name: &str| {
                stanza
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                    .unwrap_or_default()
            };
            if field("Suites:").iter().any(|s| s == "bookworm")
                && let Some(uri) = field("URIs:").into_iter().next()
            {
                return Ok(uri);
            }
        }
    }
    if let Ok(s) = std::fs::read_to_string("/etc/apt/sources.list") {
        for line in s.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() >= 3 && f[0] == "deb" && f[2] == "bookworm" {
                return Ok(f[1].to_string());
            }
        }
    }
    bail!(
        "cannot tell which Debian mirror apt uses; set BERTH_DEBIAN_MIRROR to a bookworm mirror URL"
    )
}

/// A minbase bookworm with the packages of `list`, imported with `docker import` as `tag`.
fn ensure_rootfs_image(tag: &str, list: &str, slim: &[&str], cmd: &str) -> anyhow::Result<String> {
    let pkgs = packages(list)?;
    let mut h = Sha256::new();
    h.update(b"debootstrap --variant=minbase bookworm\n");
    for p in &pkgs {
        h.update(p.as_bytes());
        h.update(b"\n");
    }
    let hash = hex(&h.finalize()[..12]);
    if image_label(tag)?.as_deref() == Some(hash.as_str()) {
        eprintln!("{tag}: cached");
        return image_id(tag);
    }
    // debootstrap itself: `tools::ensure` installed it before any image is built.
    if !crate::tools::is_root() {
        bail!("building {tag} needs root (debootstrap): run `sudo cargo xtask images`");
    }
    let rootfs = target_dir().join(format!("images/rootfs-{hash}"));
    let _ = std::fs::remove_dir_all(&rootfs);
    std::fs::create_dir_all(&rootfs)?;
    let mirror = mirror()?;
    eprintln!(
        "{tag}: debootstrap bookworm with {} (about a minute)",
        pkgs.join(", ")
    );
    let log = target_dir().join("images/debootstrap.log");
    let status = Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={}", pkgs.join(",")),
            "bookworm",
        ])
        .arg(&rootfs)
        .arg(&mirror)
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::options().append(true).open(&log)?)
        .status()
        .context("running debootstrap")?;
    if !status.success() {
        bail!(
            "debootstrap failed ({status}); its output is in {}",
            log.display()
        );
    }
    for p in slim {
        let _ = std::fs::remove_dir_all(rootfs.join(p));
    }
    let tar = Command::new("tar")
        .args(["-C"])
        .arg(&rootfs)
        .args(["-c", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running tar")?;
    let Some(stdout) = tar.stdout else {
        bail!("tar has no stdout")
    };
    let status = Command::new("docker")
        .args([
            "import",
            "--change",
            &format!("LABEL {RECIPE_LABEL}={hash}"),
            "--change",
            "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change",
            &format!("CMD [\"{cmd}\"]"),
            "-",
            tag,
        ])
        .stdin(stdout)
        .stdout(std::process::Stdio::null())
        .status()
        .context("running docker import")?;
    if !status.success() {
        bail!("docker import of {tag} failed");
    }
    let _ = std::fs::remove_dir_all(&rootfs);
    image_id(tag)
}
