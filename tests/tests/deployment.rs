//! The deployment kit on the real engine: recovery after a reboot that lost every
//! container, the Debian package, and setup-droplet.sh + berth.service under a real
//! systemd (PID 1 in a container built from Debian packages).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_tests::*;

const UP: Duration = Duration::from_secs(120);
const SYSTEMD_IMAGE: &str = "berth-test/systemd:bookworm";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo root")
        .to_path_buf()
}

#[test]
fn after_a_reboot_that_lost_every_container_the_stack_comes_back_with_its_data() {
    let stack = Stack::new("reboot");
    stack.write_config(&stack.demo_config("berth-demo/bot:1"));
    let mut d = stack.start();
    d.wait_healthy(UP);
    stack.psql("CREATE TABLE keep (v text); INSERT INTO keep VALUES ('survives')");
    let redis = stack.container_name("redis");
    docker(&["exec", &redis, "redis-cli", "SET", "kept", "yes"]).expect("redis set");
    docker(&["exec", &redis, "redis-cli", "SAVE"]).expect("redis save");

    // The host goes down hard: berth stops, every container is gone, volumes stay.
    d.signal("TERM");
    assert_eq!(d.wait_exit(Duration::from_secs(60)), Some(0));
    let ids = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=berth.project={}", stack.project),
    ])
    .expect("ps");
    let mut rm = vec!["rm", "-f"];
    rm.extend(ids.lines());
    docker(&rm).expect("rm");

    let t = Instant::now();
    let mut d = stack.start();
    d.wait_healthy(UP);
    eprintln!("recovered in {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(stack.psql("SELECT v FROM keep"), "survives");
    assert_eq!(
        docker(&["exec", &redis, "redis-cli", "GET", "kept"]).expect("redis get"),
        "yes"
    );
}

/// A container removed when the test ends, however it ends.
struct Droplet(String);

impl Drop for Droplet {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", "-v", &self.0]);
    }
}

impl Droplet {
    fn exec(&self, cmd: &[&str]) -> anyhow::Result<String> {
        let mut args = vec!["exec", self.0.as_str()];
        args.extend(cmd);
        docker(&args)
    }

    fn sh(&self, script: &str) -> anyhow::Result<String> {
        self.exec(&["sh", "-c", script])
    }
}

fn require_image(image: &str) {
    assert!(
        docker(&["image", "inspect", image]).is_ok(),
        "image {image} is missing: run the suite with `cargo xtask test`"
    );
}

#[test]
fn the_debian_package_installs_the_debian_way() {
    let deb = target_dir().join("debian/berth.deb");
    assert!(
        deb.exists(),
        "{} is missing: run the suite with `cargo xtask test` (it builds the package)",
        deb.display()
    );
    require_image("berth-demo/base:bookworm");
    let name = format!("bt-deb-{}", std::process::id());
    let box_ = Droplet(name.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "berth.test=deb",
        "-v",
        &format!("{}:/tmp/berth.deb:ro", deb.display()),
        "berth-demo/base:bookworm",
        "sleep",
        "infinity",
    ])
    .expect("run");
    let out = box_
        .exec(&["dpkg", "-i", "/tmp/berth.deb"])
        .expect("dpkg -i");
    assert!(out.contains("Setting up berth"), "{out}");
    let version = box_.exec(&["berth", "--version"]).expect("berth --version");
    assert!(version.starts_with("berth "), "{version}");
    // Files where Debian expects them, with the modes secrets need.
    let modes = box_
        .exec(&[
            "stat",
            "-c",
            "%n %a",
            "/etc/berth",
            "/etc/berth/berth.toml",
            "/etc/berth/redis.conf",
            "/usr/bin/berth",
            "/lib/systemd/system/berth.service",
            "/usr/share/berth/berth.env.template",
        ])
        .expect("stat");
    assert_eq!(
        modes,
        "/etc/berth 700\n/etc/berth/berth.toml 600\n/etc/berth/redis.conf 644\n/usr/bin/berth 755\n/lib/systemd/system/berth.service 644\n/usr/share/berth/berth.env.template 644",
    );
    let conffiles = box_
        .exec(&["cat", "/var/lib/dpkg/info/berth.conffiles"])
        .expect("conffiles");
    assert!(
        conffiles.contains("/etc/berth/berth.toml") && conffiles.contains("/etc/berth/redis.conf"),
        "{conffiles}"
    );
    // Local edits survive removal; purge removes them.
    box_.sh("echo '# edited' >> /etc/berth/berth.toml && dpkg -r berth")
        .expect("dpkg -r");
    assert!(box_.exec(&["test", "-e", "/usr/bin/berth"]).is_err());
    assert!(
        box_.exec(&["grep", "-q", "# edited", "/etc/berth/berth.toml"])
            .is_ok()
    );
    box_.exec(&["dpkg", "--purge", "berth"]).expect("purge");
    assert!(box_.exec(&["test", "-e", "/etc/berth/berth.toml"]).is_err());
}

/// Boots systemd as PID 1 in a fresh Debian container with the host's Docker socket, runs
/// setup-droplet.sh in it, then drives berth.service with systemctl.
#[test]
fn setup_droplet_and_the_unit_under_a_real_systemd() {
    require_image(SYSTEMD_IMAGE);
    let stack = Stack::new("droplet");
    // The stack as the droplet's /etc/berth/berth.toml: paths of a real install.
    let supervisor = format!(
        "[supervisor]\nproject = \"{}\"\nhealth_listen = \"127.0.0.1:7878\"\nstate_dir = \"/var/lib/berth\"\nadmin_socket = \"/run/berth/admin.sock\"\nenv_file = \"/etc/berth/berth.env\"\n\n",
        stack.project
    );
    let config = stack
        .demo_config("berth-demo/bot:1")
        .replace(&stack.supervisor(), &supervisor);
    stack.write_config(&config);

    let name = format!("{}-droplet", stack.project);
    let droplet = Droplet(name.clone());
    let repo = repo();
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "berth.test=droplet",
        "--cap-add",
        "SYS_ADMIN",
        // ufw inside the droplet's own network namespace.
        "--cap-add",
        "NET_ADMIN",
        "-v",
        "/sys/fs/cgroup:/sys/fs/cgroup:ro",
        "--tmpfs",
        "/run",
        "--tmpfs",
        "/run/lock",
        "-e",
        "container=docker",
        "-v",
        "/var/run/docker.sock:/run/docker.sock",
        "-v",
        &format!("{}:/src:ro", repo.display()),
        "-v",
        &format!("{}:/tmp/berth:ro", berth_bin().display()),
        "-v",
        &format!("{}:/tmp/berth.toml:ro", stack.config.display()),
        SYSTEMD_IMAGE,
    ])
    .expect("docker run systemd");
    wait_for("systemd running", Duration::from_secs(60), || {
        let s = droplet.exec(&["systemctl", "is-system-running"]);
        let s = match s {
            Ok(s) => s,
            Err(e) => e.to_string(),
        };
        (s.contains("running") || s.contains("degraded")).then_some(())
    });

    // berth runs on the droplet's host, which reaches every Docker network; this droplet
    // is a container, so it joins the stack's network as soon as berth creates it.
    let joined = std::sync::atomic::AtomicBool::new(false);
    let setup = std::thread::scope(|s| {
        s.spawn(|| {
            let deadline = Instant::now() + UP;
            while Instant::now() < deadline {
                if docker(&["network", "connect", &stack.project, &name]).is_ok() {
                    joined.store(true, std::sync::atomic::Ordering::SeqCst);
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        droplet.exec(&[
            "/src/deployment/scripts/setup-droplet.sh",
            "--binary",
            "/tmp/berth",
            "--config",
            "/tmp/berth.toml",
            "--token",
            "123456:droplet-test-token",
        ])
    });
    let setup = setup.expect("setup-droplet.sh");
    eprintln!("{setup}");
    assert!(joined.into_inner(), "the stack network never appeared");
    assert!(setup.contains("every service is healthy"), "{setup}");
    assert!(setup.contains("Next steps"), "{setup}");

    // What the script made.
    assert_eq!(
        droplet
            .exec(&["stat", "-c", "%a", "/etc/berth", "/etc/berth/berth.env"])
            .expect("stat"),
        "700\n600"
    );
    let env = droplet.exec(&["cat", "/etc/berth/berth.env"]).expect("env");
    assert!(env.contains("TELEGRAM_BOT_TOKEN=123456:droplet-test-token"));
    let pg = env
        .lines()
        .find_map(|l| l.strip_prefix("POSTGRES_PASSWORD="))
        .expect("generated password");
    assert_eq!(pg.len(), 64, "32 random bytes, hex");
    let firewall = droplet.exec(&["ufw", "status", "verbose"]).expect("ufw");
    assert!(
        firewall.contains("Status: active") && firewall.contains("deny (incoming)"),
        "{firewall}"
    );
    let allowed: Vec<&str> = firewall
        .lines()
        .filter(|l| l.contains("ALLOW IN"))
        .collect();
    assert!(
        !allowed.is_empty()
            && allowed
                .iter()
                .all(|l| l.contains("22/tcp") || l.contains("OpenSSH")),
        "only SSH comes in: {firewall}"
    );

    // The unit: active after READY, with a status line and the watchdog on.
    let show = |prop: &str| {
        droplet
            .exec(&["systemctl", "show", "berth", "-p", prop, "--value"])
            .expect("systemctl show")
    };
    assert_eq!(show("ActiveState"), "active");
    assert_eq!(show("Type"), "notify");
    assert!(
        show("StatusText").contains("healthy"),
        "{}",
        show("StatusText")
    );
    assert_ne!(show("WatchdogUSec"), "0");
    // Issue 16, item 1: nothing in the unit's effective sandbox stops berth's own
    // outbound traffic (Telegram alerts, webhooks, S3). On a cgroup-v2 droplet systemd
    // enforces IP filtering, where this machine (cgroup v1) would not show it failing.
    assert_eq!(show("IPAddressDeny"), "", "an IP deny list blocks alerts");
    assert_eq!(show("PrivateNetwork"), "no");
    let families = show("RestrictAddressFamilies");
    assert!(
        families.contains("AF_INET") && families.contains("AF_INET6"),
        "{families}"
    );
    let health = droplet
        .exec(&["curl", "-fsS", "http://127.0.0.1:7878/health"])
        .expect("health");
    assert!(health.contains("\"status\":\"ok\""), "{health}");
    assert!(!health.contains(pg), "no secret in /health");

    // Reload: berth check runs first, then SIGHUP reaches berth.
    droplet
        .exec(&["systemctl", "reload", "berth"])
        .expect("reload");
    wait_for("reload in the journal", Duration::from_secs(20), || {
        droplet
            .exec(&["journalctl", "-u", "berth", "--no-pager", "-o", "cat"])
            .ok()
            .filter(|j| j.contains("reloaded config"))
    });
    assert_eq!(show("ActiveState"), "active");
    let journal = droplet
        .exec(&["journalctl", "-u", "berth", "--no-pager", "-o", "cat"])
        .expect("journal");
    assert!(!journal.contains(pg), "no secret in the journal");

    // Running the script again changes nothing and keeps the secrets.
    let env_before = env.clone();
    let again = droplet
        .exec(&[
            "/src/deployment/scripts/setup-droplet.sh",
            "--binary",
            "/tmp/berth",
            "--config",
            "/tmp/berth.toml",
        ])
        .expect("second run");
    assert!(again.contains("secrets kept"), "{again}");
    assert_eq!(
        droplet.exec(&["cat", "/etc/berth/berth.env"]).expect("env"),
        env_before
    );

    // Stop: clean, and nothing of berth's left running in its cgroup.
    droplet.exec(&["systemctl", "stop", "berth"]).expect("stop");
    assert_eq!(show("ActiveState"), "inactive");
    assert_eq!(show("Result"), "success");
}
