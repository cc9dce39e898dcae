//! The deployment kit on the real engine: recovery after a reboot that lost every
//! container, the Debian package, and setup-droplet.sh + berth.service under a real
//! systemd (PID 1 in a container built from Debian packages).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_tests::*;

const UP: Duration = Duration::from_secs(120);
const SYSTEMD_IMAGE: &str = "berth-test/systemd:bookworm";
/// A bot token of the real shape (id, ':', 35 URL-safe base64 characters).
const TOKEN: &str = "123456:AAH-droplet_test_token_0123456789ab";

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
        // Its answer on stdout (it exits non-zero while starting or degraded); an error
        // (no bus yet) is not an answer.
        let s = droplet
            .sh("systemctl is-system-running || true")
            .unwrap_or_default();
        (s == "running" || s == "degraded").then_some(())
    });

    // The owner's sshd listens on 2222, not 22: the firewall must let that in.
    droplet
        .sh("mkdir -p /etc/ssh/sshd_config.d && echo 'Port 2222' > /etc/ssh/sshd_config.d/port.conf && systemctl restart ssh")
        .expect("sshd on 2222");

    // Issue 16, item 2: tokens that broke the old sed, or are no token at all, are refused
    // before anything on the machine changes, and the token is never printed.
    let setup_with = |token_file: &str| {
        droplet.exec(&[
            "/src/deployment/scripts/setup-droplet.sh",
            "--binary",
            "/tmp/berth",
            "--config",
            "/tmp/berth.toml",
            "--token-file",
            token_file,
        ])
    };
    let hostile = [
        "123456:AAH\\droplet_test_token_0123456789a",
        "123456:AAH|droplet_test_token_0123456789ab",
        "123456:AAH&droplet_test_token_0123456789ab",
        "123456:AAH droplet_test_token_0123456789ab",
        "123456:AAH'droplet_test_token_0123456789ab",
        "AAH-droplet_test_token_0123456789ab",
        "123456:short",
        "",
    ];
    for token in hostile {
        droplet
            .exec(&[
                "sh",
                "-c",
                "printf '%s\\n' \"$1\" > /tmp/token",
                "sh",
                token,
            ])
            .expect("token file");
        let err = setup_with("/tmp/token").expect_err(&format!("token {token:?} refused"));
        let err = err.to_string();
        assert!(err.contains("bot token"), "{token:?}: {err}");
        if token.len() > 8 {
            assert!(!err.contains(token), "the token is printed: {err}");
        }
        assert!(
            droplet.exec(&["test", "-e", "/etc/berth"]).is_err(),
            "{token:?} changed /etc"
        );
    }
    let err = droplet
        .exec(&[
            "/src/deployment/scripts/setup-droplet.sh",
            "--token",
            "123456:x",
        ])
        .expect_err("--token refused");
    assert!(err.to_string().contains("--token-file"), "{err}");
    let firewall = droplet.exec(&["ufw", "status"]).expect("ufw");
    assert!(
        firewall.contains("inactive"),
        "refused runs left the firewall alone: {firewall}"
    );
    // What an interrupted earlier run could leave: an empty env file. It is filled in,
    // not kept as "secrets kept".
    droplet
        .sh("install -d -m 0700 /etc/berth && install -m 0600 /dev/null /etc/berth/berth.env")
        .expect("empty env file");

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
        // The token on standard input, as `--token-file -`.
        droplet.sh(&format!(
            "echo {TOKEN} | /src/deployment/scripts/setup-droplet.sh --binary /tmp/berth --config /tmp/berth.toml --token-file -"
        ))
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
    assert!(!setup.contains(TOKEN), "the token is printed: {setup}");
    let value = |key: &str| {
        let values: Vec<&str> = env
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{key}=")))
            .collect();
        assert_eq!(values.len(), 1, "one {key} line: {values:?}");
        values[0]
    };
    assert_eq!(value("TELEGRAM_BOT_TOKEN"), TOKEN);
    let pg = value("POSTGRES_PASSWORD");
    assert_eq!(pg.len(), 64, "32 random bytes, hex");
    let redis_pw = value("REDIS_PASSWORD");
    assert!(
        redis_pw.len() == 64 && redis_pw != pg,
        "its own 32 random bytes"
    );
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
        !allowed.is_empty() && allowed.iter().all(|l| l.starts_with("2222/tcp")),
        "only SSH, on sshd's own port, comes in: {firewall}"
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
    // Issue 17, item 1: root's Docker config reaches berth inside its sandbox (pulls
    // from private registries), read-only; other homes stay hidden.
    assert_eq!(show("ProtectHome"), "tmpfs");
    assert!(
        show("BindReadOnlyPaths").contains("/root/.docker"),
        "{}",
        show("BindReadOnlyPaths")
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

/// Issue 16, item 6: the shipped Redis (config/berth.toml's `[services.redis]` with the
/// shipped redis.conf, only the image swapped for the test one) refuses clients without
/// the password, never shows it on a command line, and berth's probe, the bot and the
/// backup's RDB copy all get in with it.
#[test]
fn the_shipped_redis_wants_its_password_and_never_shows_it() {
    let stack = Stack::new("redisauth");
    let password = random_hex(16);
    let env = stack.dir.path().join("berth.env");
    let mut vars = std::fs::read_to_string(&env).expect("env file");
    vars.push_str(&format!("REDIS_PASSWORD={password}\n"));
    std::fs::write(&env, vars).expect("env file");

    let shipped = std::fs::read_to_string(repo().join("config/berth.toml")).expect("berth.toml");
    let start = shipped.find("[services.redis]").expect("a redis service");
    let len = shipped[start..].find("\n\n").expect("end of the section");
    let redis = shipped[start..start + len]
        .replace("image = \"redis:7\"", "image = \"berth-demo/redis:7\"")
        .replace(
            "/etc/berth/redis.conf",
            &repo()
                .join("deployment/redis/redis.conf")
                .display()
                .to_string(),
        );
    assert!(redis.contains("berth-demo/redis:7"), "{redis}");
    // Redis runs in the namespace of the shipped holder, which answers to `redis`.
    let start = shipped
        .find("[services.redis-net]")
        .expect("redis's holder");
    let len = shipped[start..].find("\n\n").expect("end of the section");
    let holder = shipped[start..start + len].replace(
        "image = \"registry.k8s.io/pause:3.10\"",
        "image = \"berth-demo/pause:1\"",
    );
    assert!(holder.contains("berth-demo/pause:1"), "{holder}");
    let redis = format!("{holder}\n\n{redis}");
    let shipped_url = shipped
        .split("REDIS_URL = \"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the bot's REDIS_URL");
    let demo = stack.demo_config("berth-demo/bot:1");
    let demo_redis = "[services.redis]\nimage = \"berth-demo/redis:7\"\nvolumes = [\"redisdata:/data\"]\nprobe = { redis = {}, interval = \"2s\" }";
    assert!(demo.contains(demo_redis));
    let config = format!(
        "{}\n[backup]\nservice = \"postgres\"\nschedule = \"03:30\"\ndir = \"backups\"\nredis = true\n",
        demo.replace(demo_redis, &redis)
            .replace("redis://redis:6379/0", shipped_url)
    );
    stack.write_config(&config);
    let mut d = stack.start();
    let health = d.wait_healthy(UP);
    assert_eq!(health["services"]["redis"]["health"], "healthy", "{health}");
    assert_eq!(health["services"]["bot"]["health"], "healthy", "{health}");

    let redis = stack.container_name("redis");
    // Without the password: refused, from inside and from another container on the network.
    let anon = docker(&["exec", &redis, "redis-cli", "PING"]).expect("redis-cli");
    assert!(anon.contains("NOAUTH"), "{anon}");
    let peer = docker(&[
        "run",
        "--rm",
        "--label",
        "berth.test=redisauth",
        "--network",
        &stack.project,
        "--entrypoint",
        "redis-cli",
        "berth-demo/redis:7",
        "-h",
        "redis",
        "SET",
        "stolen",
        "1",
    ])
    .expect("a peer on the network");
    assert!(peer.contains("NOAUTH"), "{peer}");
    // With it: in.
    let authed = docker(&[
        "exec",
        "-e",
        &format!("REDISCLI_AUTH={password}"),
        &redis,
        "redis-cli",
        "PING",
    ])
    .expect("redis-cli");
    assert_eq!(authed, "PONG");
    // Not on any command line of the container, nor in the running server's argv.
    let top = docker(&["top", &redis, "-eo", "pid,user,args"]).expect("docker top");
    assert!(
        !top.contains(&password),
        "the password is on a command line: {top}"
    );
    assert!(top.contains("redis-server"), "{top}");
    assert!(
        !top.lines().any(|l| l.contains(" root ")),
        "nothing runs as root: {top}"
    );
    let args = inspect(&redis)["Args"].to_string();
    assert!(!args.contains(&password), "{args}");

    // The backup copies Redis's RDB through the password too.
    let out = stack.berth(&["backup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let rdb = stack.dir.path().join(format!("backups/{id}.rdb"));
    let bytes = std::fs::read(&rdb).expect("the RDB copy");
    assert!(bytes.starts_with(b"REDIS"), "an RDB file");
    assert!(!d.logs().contains(&password), "no password in berth's log");
}
