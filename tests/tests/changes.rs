//! Issue 21: every change berth applies is health-gated and reversible. A change of a
//! service's settings (from a reload or the env file) replaces its container the way a
//! deploy does: the old one kept until the new one is healthy, and brought back if not.

use std::time::{Duration, Instant};

use berth_tests::*;

const UP: Duration = Duration::from_secs(120);

/// The demo stack with short start timeouts, so a change that cannot work is rolled back
/// quickly.
fn config(stack: &Stack) -> String {
    stack
        .demo_config("berth-demo/bot:1")
        .replace(
            "password = \"${POSTGRES_PASSWORD}\" }, interval = \"2s\" }",
            "password = \"${POSTGRES_PASSWORD}\" }, interval = \"2s\", start_timeout = \"20s\" }",
        )
        .replace(
            "probe = { http = { port = 8000, path = \"/health\" }, interval = \"2s\" }",
            "probe = { http = { port = 8000, path = \"/health\" }, interval = \"2s\", start_timeout = \"20s\" }",
        )
}

/// (a) A new POSTGRES_PASSWORD in the env file cannot work on a volume initialised with
/// the old one: after SIGHUP the stack is healthy again on its old containers within the
/// start timeout + 30 s, and /health says why.
#[test]
fn a_changed_database_password_is_rolled_back_and_explained() {
    let stack = Stack::new("pwchange");
    let text = config(&stack);
    assert!(text.contains("start_timeout = \"20s\""), "{text}");
    stack.write_config(&text);
    let mut d = stack.start();
    d.wait_healthy(UP);
    let before = stack.containers();
    let env = stack.dir.path().join("berth.env");
    let old = std::fs::read_to_string(&env).expect("env");
    let new = old
        .lines()
        .map(|l| match l.strip_prefix("POSTGRES_PASSWORD=") {
            Some(_) => format!("POSTGRES_PASSWORD=changed-{}", random_hex(8)),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&env, new + "\n").expect("write env");
    let t = Instant::now();
    d.signal("HUP");
    let h = d.wait_health(
        "the change rolled back",
        Duration::from_secs(20 + 30),
        |h| h["deploy"]["postgres"]["outcome"] == "rolled_back" && h["status"] == "ok",
    );
    let took = t.elapsed();
    assert!(took <= Duration::from_secs(50), "{took:?}");
    let reason = h["deploy"]["postgres"]["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        reason.starts_with("change to postgres rolled back"),
        "{reason}"
    );
    assert!(
        reason.contains("password authentication failed"),
        "{reason}"
    );
    assert!(
        reason.contains("does not match the one stored in the database's data volume"),
        "{reason}"
    );
    assert!(
        reason.contains("berth rotate-secret POSTGRES_PASSWORD"),
        "{reason}"
    );
    for s in &stack.secrets {
        assert!(!h.to_string().contains(s.as_str()), "a secret in /health");
    }
    assert_eq!(stack.containers(), before, "the old containers serve on");
    // And it stays so: the change is not tried again.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(stack.containers(), before);
    let h = d.health().expect("health").1;
    assert_eq!(h["status"], "ok", "{h}");
}

/// (c) An impossible memory limit for the bot: the change is rolled back to the old
/// container, and never two pollers.
#[test]
fn an_impossible_memory_limit_is_rolled_back_with_no_conflict() {
    let stack = Stack::new("memchange");
    stack.write_config(&config(&stack));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let before = stack.containers();
    // Below the engine's minimum (6 MB): the new container cannot even be made.
    stack.write_config(&config(&stack).replace("memory = \"128MiB\"", "memory = \"5MiB\""));
    d.signal("HUP");
    let h = d.wait_health("the change rolled back", Duration::from_secs(90), |h| {
        h["deploy"]["bot"]["outcome"] == "rolled_back" && h["status"] == "ok"
    });
    assert_eq!(h["deploy"]["bot"]["trigger"], "change");
    assert_eq!(stack.containers(), before, "the old bot serves on");
    assert_eq!(stack.conflicts(), 0);
    let out = stack.berth(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("change to bot rolled back"), "{text}");
}

/// (b) `berth rotate-secret POSTGRES_PASSWORD`: a new password set inside PostgreSQL,
/// written to the env file, and every service healthy on it with the data intact and the
/// bot reconnected. Neither value is printed.
#[test]
fn rotate_secret_changes_the_database_password_everywhere() {
    let stack = Stack::new("rotate");
    stack.write_config(&config(&stack));
    let mut d = stack.start();
    d.wait_healthy(UP);
    stack.psql("CREATE TABLE marks (v int); INSERT INTO marks VALUES (1), (2), (3)");
    let env = stack.dir.path().join("berth.env");
    let value = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("POSTGRES_PASSWORD="))
            .unwrap_or_default()
            .to_string()
    };
    let old = value(&std::fs::read_to_string(&env).expect("env"));
    let out = stack.berth(&["rotate-secret", "POSTGRES_PASSWORD"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}\n{}", d.logs());
    let new = value(&std::fs::read_to_string(&env).expect("env"));
    assert!(!new.is_empty() && new != old);
    assert!(!text.contains(&old) && !text.contains(&new), "{text}");
    assert!(
        !d.logs().contains(&new) && !d.logs().contains(&old),
        "a value in the log"
    );
    assert!(text.contains("recreated bot, postgres"), "{text}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&env).expect("env").permissions().mode() & 0o777,
        0o600
    );
    let h = d.wait_healthy(UP);
    for svc in ["postgres", "bot"] {
        assert_eq!(h["deploy"][svc]["trigger"], "change", "{h}");
        assert_eq!(h["deploy"][svc]["outcome"], "deployed", "{h}");
    }
    assert_eq!(stack.psql("SELECT count(*) FROM marks"), "3");
    // The bot answers: it reaches PostgreSQL with the new password.
    let _ = stack.wait_answered(42, Duration::from_secs(30));
    assert_eq!(stack.conflicts(), 0);
}

/// (b) for Redis: `berth rotate-secret REDIS_PASSWORD` sets the new `requirepass` in the
/// running Redis first, then Redis and the bot are recreated with it, healthy.
#[test]
fn rotate_secret_changes_the_redis_password_everywhere() {
    let stack = Stack::new("rotateredis");
    let env = stack.dir.path().join("berth.env");
    let mut text = std::fs::read_to_string(&env).expect("env");
    let old = format!("redis-{}", random_hex(8));
    text.push_str(&format!("REDIS_PASSWORD={old}\n"));
    std::fs::write(&env, text).expect("env");
    stack.write_config(
        &config(&stack)
            .replace(
                "probe = { redis = {}, interval = \"2s\" }",
                "command = [\"redis-server\", \"--bind\", \"0.0.0.0\", \"--requirepass\", \"${REDIS_PASSWORD}\"]\nprobe = { redis = { password = \"${REDIS_PASSWORD}\" }, interval = \"2s\" }",
            )
            .replace(
                "REDIS_URL = \"redis://redis:6379/0\"",
                "REDIS_URL = \"redis://:${REDIS_PASSWORD}@redis:6379/0\"",
            ),
    );
    let mut d = stack.start();
    d.wait_healthy(UP);
    let out = stack.berth(&["rotate-secret", "REDIS_PASSWORD"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}\n{}", d.logs());
    let new = std::fs::read_to_string(&env)
        .expect("env")
        .lines()
        .find_map(|l| l.strip_prefix("REDIS_PASSWORD=").map(str::to_string))
        .expect("REDIS_PASSWORD");
    assert_ne!(new, old);
    assert!(!said.contains(&new) && !said.contains(&old), "{said}");
    assert!(said.contains("recreated bot, redis"), "{said}");
    let h = d.wait_healthy(UP);
    assert_eq!(h["deploy"]["redis"]["outcome"], "deployed", "{h}");
    assert_eq!(stack.conflicts(), 0);
}
