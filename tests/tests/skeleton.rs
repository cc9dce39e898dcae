//! The walking skeleton on the real engine: cold start, the bot answering, adoption after
//! SIGKILL, targeted recreation, removal, and what owned containers look like.

use std::process::Command;
use std::time::Duration;

use berth_tests::*;
use serde_json::json;

const UP: Duration = Duration::from_secs(120);

#[test]
fn demo_stack_comes_up_from_nothing_and_answers_start() {
    let stack = Stack::new("cold");
    stack.write_config(&stack.demo_config("berth-demo/bot:1"));
    let mut d = stack.start();
    let health = d.wait_healthy(UP);
    for svc in ["postgres", "redis", "telegram", "bot"] {
        assert_eq!(health["services"][svc]["health"], "healthy", "{health:#}");
        assert_eq!(health["services"][svc]["state"], "running");
    }

    // /start through the fake Bot API reaches the bot, PostgreSQL and Redis.
    let http = http_client();
    http.post(stack.telegram("/_control/updates"))
        .json(&json!({"chat_id": 4242, "text": "/start"}))
        .send()
        .expect("queue update")
        .error_for_status()
        .expect("queued");
    let reply = wait_for("the bot's reply", Duration::from_secs(20), || {
        let sent: serde_json::Value = http
            .get(stack.telegram("/_control/sent"))
            .send()
            .ok()?
            .json()
            .ok()?;
        sent["messages"].as_array()?.first().cloned()
    });
    assert_eq!(reply["chat_id"], 4242);
    let text = reply["text"].as_str().expect("text");
    assert!(
        text.starts_with("Hello, Tester! You are start #1."),
        "{text}"
    );
    let users = docker(&[
        "exec",
        &stack.container_name("postgres"),
        "psql",
        "-U",
        "bot",
        "-tAc",
        "SELECT count(*) FROM users WHERE chat_id = 4242",
    ])
    .expect("psql");
    assert_eq!(users, "1");

    // Owned containers: labelled, restart policy "no", nothing published beyond 127.0.0.1.
    let containers = stack.containers();
    assert_eq!(containers.len(), 4, "{containers:?}");
    for (svc, id) in &containers {
        let c = inspect(id);
        assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "no", "{svc}");
        assert_eq!(
            c["Config"]["Labels"]["berth.project"],
            stack.project.as_str()
        );
        assert_eq!(c["Config"]["Labels"]["berth.service"], svc.as_str());
        assert!(c["Config"]["Labels"]["berth.spec-hash"].is_string());
        if let Some(ports) = c["NetworkSettings"]["Ports"].as_object() {
            for (port, bindings) in ports {
                for b in bindings.as_array().into_iter().flatten() {
                    assert_eq!(b["HostIp"], "127.0.0.1", "{svc} publishes {port} on {b}");
                }
            }
        }
    }
    // Limits, read-only root, tmpfs and log rotation from the file reach the engine.
    let bot = inspect(&containers["bot"]);
    assert_eq!(bot["HostConfig"]["Memory"], 128 * 1024 * 1024);
    assert_eq!(bot["HostConfig"]["NanoCpus"], 500_000_000);
    assert_eq!(bot["HostConfig"]["PidsLimit"], 256);
    assert_eq!(bot["HostConfig"]["ReadonlyRootfs"], true);
    assert!(
        bot["HostConfig"]["Tmpfs"]["/tmp"].is_string(),
        "{:#}",
        bot["HostConfig"]
    );
    assert_eq!(bot["HostConfig"]["LogConfig"]["Type"], "json-file");
    assert_eq!(bot["HostConfig"]["LogConfig"]["Config"]["max-file"], "3");
    assert_eq!(
        bot["HostConfig"]["LogConfig"]["Config"]["max-size"],
        "1048576"
    );
    assert_eq!(bot["Config"]["StopTimeout"], 10);
    let tg = inspect(&containers["telegram"]);
    assert_eq!(
        tg["NetworkSettings"]["Ports"]["8081/tcp"][0]["HostPort"],
        stack.telegram_port.to_string()
    );
    // No other service publishes anything.
    let pg = inspect(&containers["postgres"]);
    assert!(
        pg["HostConfig"]["PortBindings"]
            .as_object()
            .is_none_or(|m| m.is_empty())
    );
    // Secrets stay out of /health, /metrics, status and the log.
    let body = d.health().expect("health").1.to_string();
    let metrics = http
        .get(format!("http://127.0.0.1:{}/metrics", stack.health_port))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    let status = Command::new(berth_bin())
        .args(["status", "-c"])
        .arg(&stack.config)
        .output()
        .expect("status");
    let status = format!(
        "{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(status.contains("bot"), "{status}");
    let log = d.logs();
    assert!(!log.is_empty());
    for s in &stack.secrets {
        assert!(!body.contains(s.as_str()), "secret in /health");
        assert!(!metrics.contains(s.as_str()), "secret in /metrics");
        assert!(!status.contains(s.as_str()), "secret in status");
        assert!(!log.contains(s.as_str()), "secret in log");
    }
}

/// (service, container id, StartedAt) of each of the stack's containers.
fn ids_and_start_times(stack: &Stack) -> Vec<(String, String, String)> {
    stack
        .containers()
        .into_iter()
        .map(|(svc, id)| {
            let c = inspect(&id);
            let field = |v: &serde_json::Value| v.as_str().unwrap_or("").to_string();
            (svc, field(&c["Id"]), field(&c["State"]["StartedAt"]))
        })
        .collect()
}

#[test]
fn sigkill_and_restart_adopts_every_container() {
    let stack = Stack::new("adopt");
    stack.write_config(&stack.demo_config("berth-demo/bot:1"));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let before = ids_and_start_times(&stack);
    assert_eq!(before.len(), 4);
    assert!(
        d.logs()
            .contains("reconciler: plan action=create container"),
        "the first run planned creations"
    );
    d.kill9();

    let mut d2 = stack.start();
    d2.wait_healthy(UP);
    let after = ids_and_start_times(&stack);
    assert_eq!(before, after, "same containers, never restarted");
    let log = d2.logs();
    assert!(log.contains("first convergence done"), "{log}");
    assert!(
        !log.contains("reconciler: plan"),
        "adoption planned an action:\n{log}"
    );

    // `berth plan` agrees: nothing to do.
    let out = Command::new(berth_bin())
        .args(["plan", "-c"])
        .arg(&stack.config)
        .output()
        .expect("berth plan");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("nothing to do"),
        "{out:?}"
    );
}

/// Two cheap services, enough to see which one a change touches.
fn small_config(stack: &Stack, cache_image: &str, cache_env: &str, with_api: bool) -> String {
    let command = if cache_image.contains("base") {
        "command = [\"redis-server\", \"--bind\", \"0.0.0.0\", \"--protected-mode\", \"no\"]\n"
    } else {
        ""
    };
    let mut s = format!(
        "{}[services.cache]\nimage = \"{cache_image}\"\n{command}env = {{ MODE = \"{cache_env}\" }}\nvolumes = [\"cachedata:/data\"]\nprobe = {{ exec = {{ command = [\"redis-cli\", \"ping\"] }} }}\n\n",
        stack.supervisor()
    );
    if with_api {
        s.push_str("[services.api]\nimage = \"berth-demo/fake-telegram:latest\"\nprobe = { tcp = { port = 8081 } }\n");
    }
    s
}

#[test]
fn a_change_recreates_only_that_service_and_a_removed_service_loses_its_container() {
    let stack = Stack::new("change");
    stack.write_config(&small_config(&stack, "berth-demo/redis:7", "a", true));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let first = stack.containers();
    assert_eq!(first.len(), 2);

    // Env change on cache: cache recreated, api untouched.
    stack.write_config(&small_config(&stack, "berth-demo/redis:7", "b", true));
    d.signal("HUP");
    let second = wait_for("cache recreated", UP, || {
        let c = stack.containers();
        (c.get("cache") != first.get("cache") && c.len() == 2).then_some(c)
    });
    assert_eq!(second["api"], first["api"], "api must not be recreated");
    d.wait_healthy(UP);
    let env = inspect(&second["cache"])["Config"]["Env"].to_string();
    assert!(env.contains("MODE=b"), "{env}");

    // Image change on cache: recreated again, api untouched.
    stack.write_config(&small_config(&stack, "berth-demo/base:bookworm", "b", true));
    d.signal("HUP");
    let third = wait_for("cache recreated with the new image", UP, || {
        let c = stack.containers();
        (c.get("cache") != second.get("cache") && c.len() == 2).then_some(c)
    });
    assert_eq!(third["api"], first["api"]);
    assert_eq!(
        inspect(&third["cache"])["Config"]["Image"],
        "berth-demo/base:bookworm"
    );
    let h = d.wait_healthy(UP);
    assert_eq!(h["config"]["generation"], 3);
    // An image change in the file goes through the deploy flow.
    d.wait_health("the image change deployed", UP, |h| {
        h["deploy"]["cache"]["outcome"] == "deployed"
    });

    // api removed from the file: its container goes, cache and the volume stay.
    stack.write_config(&small_config(
        &stack,
        "berth-demo/base:bookworm",
        "b",
        false,
    ));
    d.signal("HUP");
    wait_for("api removed", UP, || {
        (!stack.containers().contains_key("api")).then_some(())
    });
    assert_eq!(stack.containers()["cache"], third["cache"]);
    let vols = docker(&[
        "volume",
        "ls",
        "-q",
        "--filter",
        &format!("label=berth.project={}", stack.project),
    ])
    .expect("volumes");
    assert!(
        vols.contains(&format!("{}-cachedata", stack.project)),
        "{vols}"
    );
    let h = d.wait_healthy(UP);
    assert!(h["services"].get("api").is_none(), "{h:#}");
}

#[test]
fn check_points_at_the_broken_line() {
    let stack = Stack::new("check");
    let good = small_config(&stack, "berth-demo/redis:7", "a", true);
    stack.write_config(&good);
    let ok = Command::new(berth_bin())
        .args(["check", "-c"])
        .arg(&stack.config)
        .output()
        .expect("check");
    assert!(ok.status.success(), "{ok:?}");

    let bad = good.replace(
        "volumes = [\"cachedata:/data\"]",
        "volumes = [\"cachedata:/data\"]\nmemory = \"lots\"",
    );
    assert_ne!(bad, good);
    stack.write_config(&bad);
    let out = Command::new(berth_bin())
        .args(["check", "-c"])
        .arg(&stack.config)
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(1));
    let line = bad
        .lines()
        .position(|l| l.starts_with("memory"))
        .expect("line")
        + 1;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want = format!(
        "{}:{line}:10: services.cache.memory: invalid size",
        stack.config.display()
    );
    assert!(
        stderr.starts_with(&want),
        "got: {stderr}\nwant prefix: {want}"
    );
}
