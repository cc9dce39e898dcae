//! Crash recovery and daemon lifecycle on the real engine: crash restarts, backoff and
//! crash loops, probe-failure restarts, engine loss, reloads, shutdown, sd_notify.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use berth_tests::*;

const UP: Duration = Duration::from_secs(90);

/// `cache` (redis) and, when given, a `crasher` on the base image running `crasher_cmd`.
fn config(stack: &Stack, extra: &str) -> String {
    format!(
        r#"{sup}
[services.cache]
image = "berth-demo/redis:7"
tmpfs = ["/tmp"]
probe = {{ exec = {{ command = ["sh", "-c", "test ! -e /tmp/sick && redis-cli ping"] }}, interval = "300ms", failures = 2 }}
{extra}
"#,
        sup = stack.supervisor()
    )
}

fn started_at(stack: &Stack, svc: &str) -> String {
    stack.inspect_service(svc)["State"]["StartedAt"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[test]
fn kill_9_of_a_container_is_restarted_at_once_and_counted() {
    let stack = Stack::new("crash");
    stack.write_config(&config(&stack, ""));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let id = stack.containers()["cache"].clone();
    let before = started_at(&stack, "cache");
    stack.crash("cache");
    let h = d.wait_health("restart counted and healthy again", UP, |h| {
        h["services"]["cache"]["restarts"] == 1 && h["status"] == "ok"
    });
    assert_eq!(h["services"]["cache"]["crashloop"], false);
    assert_eq!(
        stack.containers()["cache"],
        id,
        "the same container is started again"
    );
    assert_ne!(started_at(&stack, "cache"), before);
    assert!(d.logs().contains("container died"), "{}", d.logs());
}

#[test]
fn a_service_that_exits_at_once_backs_off_and_is_marked_crashlooping() {
    let stack = Stack::new("loop");
    let crasher = r#"
[services.crasher]
image = "berth-demo/base:bookworm"
command = ["sh", "-c", "exit 3"]
restart = { initial_backoff = "100ms", max_backoff = "800ms", reset_after = "60s" }
"#;
    stack.write_config(&config(&stack, crasher));
    let d = stack.start();
    d.wait_health("cache healthy", UP, |h| {
        h["services"]["cache"]["health"] == "healthy"
    });
    let cache_started = started_at(&stack, "cache");
    // Between two crashes the container runs for a moment (healthy: it has no probe), so
    // the stack is down most of the time, not at every instant.
    let h = d.wait_health("crash loop, stack down", UP, |h| {
        h["services"]["crasher"]["crashloop"] == true && h["status"] == "down"
    });
    assert!(
        h["services"]["crasher"]["restarts"].as_u64().unwrap_or(0) >= 5,
        "{h:#}"
    );
    // Backoff grows: 100, 200, 400, 800 ms, then stays at the cap.
    let delays: Vec<u64> = d
        .logs()
        .lines()
        .filter(|l| l.contains("container died") && l.contains("service=crasher"))
        .filter_map(|l| {
            l.split("restart_in_ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .collect();
    assert!(delays.len() >= 5, "{delays:?}");
    assert_eq!(&delays[..5], &[100, 200, 400, 800, 800], "{delays:?}");
    // The other service was never touched.
    assert_eq!(started_at(&stack, "cache"), cache_started);
    assert_eq!(h["services"]["cache"]["restarts"], 0);
    assert_eq!(h["services"]["cache"]["health"], "healthy");
}

#[test]
fn a_failing_probe_restarts_the_container() {
    let stack = Stack::new("probe");
    stack.write_config(&config(&stack, ""));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let before = started_at(&stack, "cache");
    // The probe fails from now on (until the restart clears the tmpfs).
    docker(&["exec", &stack.container_name("cache"), "touch", "/tmp/sick"]).expect("exec");
    let h = d.wait_health("restart after failed probes", UP, |h| {
        h["services"]["cache"]["restarts"] == 1 && h["status"] == "ok"
    });
    assert_eq!(h["services"]["cache"]["probe"]["ok"], true);
    assert_ne!(started_at(&stack, "cache"), before);
    assert!(d.logs().contains("probe failing: restarting"));
}

#[test]
fn engine_connection_lost_and_restored_converges_without_duplicates() {
    let stack = Stack::new("engine");
    let mut proxy = SocketProxy::new(stack.dir.path().join("docker.sock"));
    stack.write_config(&config(
        &stack,
        "[services.api]\nimage = \"berth-demo/fake-telegram:latest\"\nprobe = { tcp = { port = 8081 } }\n",
    ));
    let host = proxy.docker_host();
    let d = stack.start_with_env(&[("DOCKER_HOST", &host)]);
    d.wait_health("healthy through the proxy", UP, |h| h["status"] == "ok");

    proxy.cut();
    let h = d.wait_health("engine unreachable", UP, |h| h["engine"] == "unreachable");
    assert_eq!(h["status"], "down");
    // While berth cannot see the engine, a container dies.
    stack.crash("api");
    std::thread::sleep(Duration::from_millis(500));
    proxy.restore();

    d.wait_health("converged after the engine came back", UP, |h| {
        h["engine"] == "connected" && h["status"] == "ok"
    });
    let containers = stack.containers();
    assert_eq!(containers.len(), 2, "no duplicates: {containers:?}");
    assert_eq!(stack.inspect_service("api")["State"]["Running"], true);
}

#[test]
fn a_bad_reload_keeps_the_old_state_and_shows_the_error() {
    let stack = Stack::new("badhup");
    let good = config(&stack, "");
    stack.write_config(&good);
    let mut d = stack.start();
    d.wait_healthy(UP);
    let id = stack.containers()["cache"].clone();

    stack.write_config(&good.replace("[services.cache]", "[services.cache]\nmemory = \"a lot\""));
    d.signal("HUP");
    let h = d.wait_health("reload error shown", UP, |h| {
        h["config"]["error"].is_string()
    });
    let err = h["config"]["error"].as_str().unwrap_or("");
    let want = format!("{}:", stack.config.display());
    assert!(
        err.starts_with(&want) && err.contains("services.cache.memory"),
        "{err}"
    );
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["config"]["generation"], 1);
    assert_eq!(d.health().map(|(c, _)| c), Some(200));
    assert_eq!(stack.containers()["cache"], id);
    assert!(d.logs().contains("reload rejected"));

    // A good reload clears the error.
    stack.write_config(&good);
    d.signal("HUP");
    let h = d.wait_health("error cleared", UP, |h| {
        h["config"]["error"].is_null() && h["status"] == "ok"
    });
    assert_eq!(h["config"]["generation"], 2);
    assert_eq!(
        stack.containers()["cache"],
        id,
        "unchanged service untouched"
    );
}

#[test]
fn sigterm_exits_zero_and_leaves_containers_running() {
    let stack = Stack::new("term");
    stack.write_config(&config(&stack, ""));
    let mut d = stack.start();
    d.wait_healthy(UP);
    d.signal("TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        d.logs()
    );
    assert_eq!(stack.inspect_service("cache")["State"]["Running"], true);
}

#[test]
fn on_stop_stop_stops_containers_dependants_first() {
    let stack = Stack::new("onstop");
    let text = config(
        &stack,
        "[services.api]\nimage = \"berth-demo/fake-telegram:latest\"\ndepends_on = [\"cache\"]\nprobe = { tcp = { port = 8081 } }\n",
    )
    .replace("[supervisor]\n", "[supervisor]\non_stop = \"stop\"\n");
    stack.write_config(&text);
    let mut d = stack.start();
    d.wait_healthy(UP);
    d.signal("TERM");
    assert_eq!(
        d.wait_exit(Duration::from_secs(30)),
        Some(0),
        "{}",
        d.logs()
    );
    let api = stack.inspect_service("api");
    let cache = stack.inspect_service("cache");
    assert_eq!(api["State"]["Running"], false);
    assert_eq!(cache["State"]["Running"], false);
    let finished =
        |c: &serde_json::Value| c["State"]["FinishedAt"].as_str().unwrap_or("").to_string();
    assert!(
        finished(&api) <= finished(&cache),
        "api (dependant) stops before cache"
    );
}

#[test]
fn systemd_notifications_ready_status_watchdog_reloading_stopping() {
    let stack = Stack::new("notify");
    stack.write_config(&config(&stack, ""));
    let sock_path = stack.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let path = sock_path.display().to_string();
    let mut d = stack.start_with_env(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "400000")]);
    let mut seen = String::new();
    let read_until = |want: &str, seen: &mut String| {
        let start = std::time::Instant::now();
        let mut buf = [0u8; 4096];
        while !seen.contains(want) {
            assert!(start.elapsed() < UP, "no {want} in {seen}");
            if let Ok(n) = sock.recv(&mut buf) {
                seen.push_str(&String::from_utf8_lossy(&buf[..n]));
                seen.push('\n');
            }
        }
    };
    read_until("READY=1", &mut seen);
    assert!(seen.contains("STATUS=ok: 1/1 services healthy"), "{seen}");
    seen.clear();
    read_until("WATCHDOG=1", &mut seen);
    d.signal("HUP");
    read_until("RELOADING=1", &mut seen);
    assert!(seen.contains("MONOTONIC_USEC="), "{seen}");
    seen.clear();
    read_until("READY=1", &mut seen);
    d.signal("TERM");
    read_until("STOPPING=1", &mut seen);
    assert_eq!(d.wait_exit(Duration::from_secs(10)), Some(0));
}

/// What a container on the project network gets from `redis-cli -h NAME ping` (a client
/// made by this test, removed on exit).
fn ping_from_the_network(stack: &Stack, name: &str) -> String {
    docker(&[
        "run",
        "--rm",
        "--label",
        &format!("berth.project={}", stack.project),
        "--network",
        &stack.project,
        "berth-demo/redis:7",
        "redis-cli",
        "-h",
        name,
        "ping",
    ])
    .unwrap_or_else(|e| e.to_string())
}

#[test]
fn a_held_service_keeps_its_name_and_address_across_a_crash_restart() {
    let stack = Stack::new("held");
    stack.write_config(&format!(
        "{}[services.cache-net]\nimage = \"berth-demo/pause:1\"\naliases = [\"cache\"]\n\n[services.cache]\nimage = \"berth-demo/redis:7\"\nnetwork = \"service:cache-net\"\nprobe = {{ redis = {{}} }}\n",
        stack.supervisor()
    ));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let holder = stack.containers()["cache-net"].clone();
    assert_eq!(
        stack.inspect_service("cache")["HostConfig"]["NetworkMode"],
        format!("container:{}", stack.container_name("cache-net"))
    );
    let address = |s: &Stack| {
        s.inspect_service("cache-net")["NetworkSettings"]["Networks"][&s.project]["IPAddress"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    let before = address(&stack);
    assert!(!before.is_empty());
    assert_eq!(ping_from_the_network(&stack, "cache").trim(), "PONG");

    stack.crash("cache");
    d.wait_health("restart counted and healthy again", UP, |h| {
        h["services"]["cache"]["restarts"] == 1 && h["status"] == "ok"
    });
    assert_eq!(stack.containers()["cache-net"], holder, "the holder stays");
    assert_eq!(address(&stack), before);
    assert_eq!(ping_from_the_network(&stack, "cache").trim(), "PONG");
}
