//! /health, /metrics, `berth status` and `berth logs` against a real stack.

use std::process::Command;
use std::time::Duration;

use berth_tests::*;
use serde_json::Value;

const UP: Duration = Duration::from_secs(90);

fn config(stack: &Stack, extra: &str) -> String {
    format!(
        "{}[services.cache]\nimage = \"berth-demo/redis:7\"\nprobe = {{ redis = {{}}, interval = \"500ms\" }}\n\n[services.api]\nimage = \"berth-demo/fake-telegram:latest\"\ndepends_on = [\"cache\"]\nprobe = {{ http = {{ port = 8081, path = \"/healthz\" }}, interval = \"500ms\" }}\n{extra}",
        stack.supervisor()
    )
}

fn is_time(v: &Value) -> bool {
    v.as_str().is_some_and(humantime_like)
}

/// RFC 3339 in UTC, as berth writes it: 2026-11-26T01:02:03Z.
fn humantime_like(s: &str) -> bool {
    s.len() == 20 && s.ends_with('Z') && s.as_bytes()[10] == b'T'
}

#[test]
fn health_metrics_status_and_logs_of_a_healthy_stack() {
    let stack = Stack::new("obs");
    stack.write_config(&config(&stack, ""));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let h = d.wait_health("resources sampled", UP, |h| h["resources"].is_object());
    let (code, _) = d.health().expect("health");
    assert_eq!(code, 200);

    // The /health contract (DESIGN.md, section 5).
    assert_eq!(h["status"], "ok");
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["uptime_s"].is_u64());
    assert_eq!(h["config"]["generation"], 1);
    assert!(is_time(&h["config"]["loaded_at"]), "{h:#}");
    assert!(h["config"]["error"].is_null());
    for svc in ["cache", "api"] {
        let s = &h["services"][svc];
        assert_eq!(s["state"], "running");
        assert_eq!(s["health"], "healthy");
        assert!(
            s["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("berth-demo/"))
        );
        assert_eq!(s["container_id"].as_str().map(str::len), Some(64));
        assert_eq!(s["restarts"], 0);
        assert_eq!(s["crashloop"], false);
        assert!(is_time(&s["since"]), "{s:#}");
        assert_eq!(s["probe"]["ok"], true);
        assert!(s["probe"]["latency_ms"].is_f64() || s["probe"]["latency_ms"].is_u64());
        assert!(is_time(&s["probe"]["at"]));
        assert!(s["probe"]["error"].is_null());
    }
    let b = &h["backup"];
    assert!(b["last_ok_at"].is_null() && b["age_s"].is_null() && b["last_error"].is_null());
    assert_eq!(b["count"], 0);
    let r = &h["resources"];
    assert!(r["disk_free_bytes"].as_u64().is_some_and(|v| v > 0));
    assert!(
        r["disk_used_ratio"]
            .as_f64()
            .is_some_and(|v| (0.0..=1.0).contains(&v))
    );
    assert!(r["mem_available_bytes"].as_u64().is_some_and(|v| v > 0));
    assert!(r["load1"].is_number());
    assert!(h["deploy"].is_object());

    // /metrics parses, and its restart counter moves after a crash.
    let http = http_client();
    let metrics_url = format!("http://127.0.0.1:{}/metrics", stack.health_port);
    let samples = parse_metrics(
        &http
            .get(&metrics_url)
            .send()
            .expect("metrics")
            .text()
            .expect("text"),
    );
    let has = |samples: &[String], prefix: &str| samples.iter().any(|s| s.starts_with(prefix));
    for want in [
        "berth_service_up [('service', 'cache')] 1.0",
        "berth_service_healthy [('service', 'api')] 1.0",
        "berth_service_restarts_total [('service', 'cache')] 0.0",
        "berth_service_crashloop [('service', 'cache')] 0.0",
        "berth_probe_duration_seconds [('service', 'cache')]",
        "berth_backup_last_success_timestamp_seconds [] 0.0",
        "berth_backup_size_bytes [] 0.0",
        "berth_config_generation [] 1.0",
        "berth_engine_connected [] 1.0",
    ] {
        assert!(has(&samples, want), "missing {want} in {samples:#?}");
    }
    stack.crash("cache");
    d.wait_health("restart counted", UP, |h| {
        h["services"]["cache"]["restarts"] == 1
    });
    let samples = parse_metrics(
        &http
            .get(&metrics_url)
            .send()
            .expect("metrics")
            .text()
            .expect("text"),
    );
    assert!(
        has(
            &samples,
            "berth_service_restarts_total [('service', 'cache')] 1.0"
        ),
        "{samples:#?}"
    );
    d.wait_healthy(UP);

    // Nothing of berth's listens beyond 127.0.0.1.
    let ss = Command::new("ss").args(["-ltnpH"]).output().expect("ss");
    let ours: Vec<String> = String::from_utf8_lossy(&ss.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={},", d.pid())))
        .map(str::to_string)
        .collect();
    assert!(!ours.is_empty(), "berth listens somewhere");
    for l in &ours {
        assert!(
            l.split_whitespace()
                .nth(3)
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{l}"
        );
    }

    // status: a table, exit 0.
    let out = stack.berth(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.starts_with("status: ok"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("cache") && l.contains("running") && l.contains("healthy")),
        "{text}"
    );
    assert!(text.contains("backup: none yet"), "{text}");
    let out = stack.berth(&["status", "--json"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["services"]["api"]["health"], "healthy");

    // logs: the container's output through the engine.
    let out = stack.berth(&["logs", "cache", "-n", "50"]);
    assert!(out.status.success(), "{out:?}");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("Ready to accept connections"), "{all}");
    let out = stack.berth(&["logs", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn an_unhealthy_service_makes_health_503_down_and_status_exit_1() {
    let stack = Stack::new("down");
    let sick = "\n[services.sick]\nimage = \"berth-demo/redis:7\"\nprobe = { exec = { command = [\"false\"] }, interval = \"500ms\", start_timeout = \"1s\", failures = 1000 }\n";
    stack.write_config(&config(&stack, sick));
    let d = stack.start();
    let h = d.wait_health("sick unhealthy", UP, |h| {
        h["services"]["sick"]["health"] == "unhealthy"
            && h["services"]["api"]["health"] == "healthy"
    });
    assert_eq!(h["status"], "down");
    assert_eq!(h["services"]["sick"]["probe"]["ok"], false);
    assert!(
        h["services"]["sick"]["probe"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("exit code 1")),
        "{h:#}"
    );
    assert_eq!(d.health().map(|(c, _)| c), Some(503));
    let out = stack.berth(&["status"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("status: down"));
}

#[test]
fn status_without_a_daemon_exits_3_and_asks_the_engine() {
    let stack = Stack::new("nodaemon");
    stack.write_config(&config(&stack, ""));
    let out = stack.berth(&["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not answering"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("cache") && text.contains("no container"),
        "{text}"
    );
}
