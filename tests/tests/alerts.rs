//! Alerts on the real engine: to the fake Bot API (its `/_control/sent` shows what a chat
//! would receive) and to a webhook receiver on 127.0.0.1.

use std::time::Duration;

use berth_tests::*;
use serde_json::Value;

const UP: Duration = Duration::from_secs(120);
const CHAT: i64 = 4242;

/// A service that runs until it is stopped or crashed.
const SLEEPER: &str = r#"[services.sleeper]
image = "berth-demo/base:bookworm"
command = ["sleep", "infinity"]
stop_grace_period = "1s"
"#;

/// The fake Bot API as a service, plus `extra` services and sections.
fn config(stack: &Stack, alerts: &str, extra: &str) -> String {
    format!(
        r#"{sup}
[services.telegram]
image = "berth-demo/fake-telegram:latest"
ports = ["{tg}:8081"]
probe = {{ http = {{ port = 8081, path = "/healthz" }}, interval = "1s" }}

{extra}

[alerts]
{alerts}
"#,
        sup = stack.supervisor(),
        tg = stack.telegram_port,
    )
}

/// Messages the fake Bot API received for the alert chat.
fn alerts_sent(stack: &Stack) -> Vec<Value> {
    let v: Value = http_client()
        .get(stack.telegram("/_control/sent"))
        .send()
        .and_then(|r| r.json())
        .unwrap_or_default();
    v["messages"]
        .as_array()
        .map(|a| a.iter().filter(|m| m["chat_id"] == CHAT).cloned().collect())
        .unwrap_or_default()
}

fn texts(msgs: &[Value]) -> Vec<String> {
    msgs.iter()
        .map(|m| m["text"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn a_crash_loop_is_one_alert_and_one_resolution_in_telegram_and_the_webhook() {
    let stack = Stack::new("alertloop");
    let hook = Webhook::start();
    let flag = stack.dir.path().join("flag");
    std::fs::create_dir_all(&flag).expect("flag dir");
    let flaky = format!(
        r#"[services.flaky]
image = "berth-demo/base:bookworm"
command = ["sh", "-c", "test -e /flag/ok || exit 3; exec sleep infinity"]
volumes = ["{}:/flag:ro"]
restart = {{ initial_backoff = "200ms", max_backoff = "1s" }}
stop_grace_period = "1s"
"#,
        flag.display()
    );
    let alerts = format!(
        "telegram = {{ chat_id = {CHAT}, api_base = \"http://127.0.0.1:{}\" }}\nwebhook = {{ url = \"{}\" }}\ndown_after = \"5m\"\n",
        stack.telegram_port,
        hook.url()
    );
    stack.write_config(&config(&stack, &alerts, &flaky));
    let d = stack.start();
    d.wait_health("the fake Bot API up", UP, |h| {
        h["services"]["telegram"]["health"] == "healthy"
    });

    // `berth alert test` reaches both channels, with the bot's own token by default.
    let out = stack.berth(&["alert", "test"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("telegram: sent") && said.contains("webhook: sent"),
        "{said}"
    );
    let sent = alerts_sent(&stack);
    assert!(
        texts(&sent).iter().any(|t| t.contains("test alert")),
        "{sent:?}"
    );
    assert_eq!(
        sent[0]["bot"], "123456",
        "the bot's token (its public id part)"
    );

    // The crash loop: one alert.
    let firing = wait_for("the crash-loop alert", UP, || {
        let t = texts(&alerts_sent(&stack));
        t.iter()
            .find(|t| t.contains("flaky is in a crash loop"))
            .cloned()
    });
    assert!(firing.contains("What berth did"), "{firing}");
    assert!(firing.contains("berth logs flaky -n 50"), "{firing}");

    // Fixed: one resolution once it has stayed up.
    std::fs::write(flag.join("ok"), "").expect("flag");
    wait_for("the resolution", UP, || {
        texts(&alerts_sent(&stack))
            .iter()
            .find(|t| t.contains("flaky is healthy again"))
            .cloned()
    });
    std::thread::sleep(Duration::from_secs(3));
    let about_flaky: Vec<String> = texts(&alerts_sent(&stack))
        .into_iter()
        .filter(|t| t.contains("flaky"))
        .collect();
    assert_eq!(about_flaky.len(), 2, "{about_flaky:#?}");
    let hooked: Vec<Value> = hook
        .bodies()
        .into_iter()
        .filter(|b| b["service"] == "flaky")
        .collect();
    assert_eq!(hooked.len(), 2, "{hooked:#?}");
    assert_eq!(hooked[0]["status"], "firing");
    assert_eq!(hooked[0]["event"], "crash_loop");
    assert_eq!(hooked[1]["status"], "resolved");
    assert_eq!(
        hooked[0]["text"], hooked[0]["content"],
        "Slack and Discord shapes"
    );

    // No secret in anything sent.
    let everything = format!("{:?}{:?}", alerts_sent(&stack), hook.bodies());
    for s in &stack.secrets {
        assert!(
            !everything.contains(s.as_str()),
            "secret leaked: {everything}"
        );
    }
    let h = d.health().expect("health").1;
    assert_eq!(h["alerts"]["telegram"]["ok"], true, "{h}");
    // The daemon sent the two (the test message came from the CLI itself).
    assert_eq!(h["alerts"]["webhook"]["sent"], 2, "{h}");
    let metrics = http_client()
        .get(format!("http://127.0.0.1:{}/metrics", stack.health_port))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    let samples = parse_metrics(&metrics);
    assert!(
        samples.contains(&"berth_alerts_sent_total [('channel', 'telegram')] 2.0".to_string()),
        "{samples:#?}"
    );
}

#[test]
fn a_failed_backup_alerts() {
    let stack = Stack::new("alertbackup");
    let hook = Webhook::start();
    // The backup folder's place is taken by a file: every backup fails.
    std::fs::write(stack.dir.path().join("blocked"), "not a folder").expect("file");
    let pg = r#"[services.postgres]
image = "berth-demo/postgres:15"
env = { POSTGRES_USER = "bot", POSTGRES_DB = "bot", POSTGRES_PASSWORD = "${POSTGRES_PASSWORD}" }
volumes = ["pgdata:/var/lib/postgresql/data"]
probe = { postgres = { user = "bot", database = "bot", password = "${POSTGRES_PASSWORD}" }, interval = "1s" }

[backup]
service = "postgres"
dir = "blocked/backups"
"#;
    let alerts = format!("webhook = {{ url = \"{}\" }}\n", hook.url());
    stack.write_config(&config(&stack, &alerts, pg));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let out = stack.berth(&["backup"]);
    assert!(!out.status.success());
    let body = wait_for("the backup alert", UP, || {
        hook.bodies()
            .into_iter()
            .find(|b| b["event"] == "backup_failed")
    });
    let text = body["text"].as_str().unwrap_or("");
    assert!(text.contains("the last backup failed"), "{text}");
    assert!(text.contains("kept every older backup"), "{text}");
    assert!(text.contains("berth backups"), "{text}");
    for s in &stack.secrets {
        assert!(!text.contains(s.as_str()));
    }
}

#[test]
fn an_unreachable_alert_channel_does_not_slow_restarts() {
    let stack = Stack::new("alertdead");
    let hanging = Webhook::hanging();
    let closed = free_port();
    let alerts = format!(
        "telegram = {{ chat_id = {CHAT}, api_base = \"http://127.0.0.1:{closed}\" }}\nwebhook = {{ url = \"{}\" }}\n",
        hanging.url()
    );
    stack.write_config(&config(&stack, &alerts, SLEEPER));
    let mut d = stack.start();
    d.wait_healthy(UP);
    // berth killed: the next one starts "after an unclean stop" and has news to send to
    // two channels that cannot take it.
    d.kill9();
    let mut d = stack.start();
    d.wait_healthy(UP);
    d.wait_health("the dead channel reported", UP, |h| {
        h["alerts"]["telegram"]["ok"] == false
            && h["alerts"]["telegram"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("Telegram"))
    });
    // Meanwhile crashes are restarted as usual, one after the other.
    for round in 1..=3u64 {
        stack.crash("sleeper");
        let h = d.wait_health("sleeper restarted", Duration::from_secs(20), |h| {
            h["services"]["sleeper"]["restarts"] == round
                && h["services"]["sleeper"]["health"] == "healthy"
        });
        assert_eq!(h["services"]["sleeper"]["state"], "running");
    }
    let h = d.health().expect("health").1;
    assert_eq!(
        h["status"], "ok",
        "a dead alert channel is not the stack's health: {h}"
    );
    let e = h["alerts"]["telegram"]["last_error"].as_str().unwrap_or("");
    for s in &stack.secrets {
        assert!(
            !e.contains(s.as_str()),
            "the token is not in the error: {e}"
        );
    }
}

#[test]
fn an_engine_down_when_berth_starts_is_told_and_its_return_too() {
    let stack = Stack::new("alertengine");
    let hook = Webhook::start();
    let mut proxy = SocketProxy::new(stack.dir.path().join("docker.sock"));
    proxy.cut();
    let alerts = format!(
        "webhook = {{ url = \"{}\" }}\ndown_after = \"4s\"\n",
        hook.url()
    );
    stack.write_config(&config(&stack, &alerts, SLEEPER));
    let host = proxy.docker_host();
    let mut d = stack.start_with_env(&[("DOCKER_HOST", &host)]);

    // Without an engine berth still answers for itself, and says so.
    let h = d.wait_health("engine unreachable", UP, |h| h["engine"] == "unreachable");
    assert_eq!(h["status"], "down");
    assert_eq!(d.health().map(|(c, _)| c), Some(503));
    let firing = wait_for("the engine alert", UP, || {
        hook.bodies()
            .into_iter()
            .find(|b| b["event"] == "engine_unreachable")
    });
    assert_eq!(firing["status"], "firing");
    let text = firing["text"].as_str().unwrap_or("");
    assert!(text.contains("the Docker engine does not answer"), "{text}");
    assert!(text.contains("systemctl status docker"), "{text}");

    // The engine comes: the stack converges and the incident resolves.
    proxy.restore();
    d.wait_healthy(UP);
    let resolved = wait_for("the resolution", UP, || {
        hook.bodies()
            .into_iter()
            .find(|b| b["event"] == "engine_unreachable" && b["status"] == "resolved")
    });
    assert!(
        resolved["text"]
            .as_str()
            .is_some_and(|t| t.contains("answers again")),
        "{resolved}"
    );
    // The services never came up, but that was the engine's doing: no alert of their own.
    let about_services: Vec<Value> = hook
        .bodies()
        .into_iter()
        .filter(|b| !b["service"].is_null())
        .collect();
    assert!(
        about_services.is_empty(),
        "{about_services:#?}\n{}",
        d.logs()
    );
}
