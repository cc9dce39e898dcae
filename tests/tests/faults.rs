//! Fault cases that no other test covers: berth killed under load, a container over its
//! memory limit. (`cargo xtask faults` runs these with the other fault cases.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use berth_tests::*;
use serde_json::json;

const UP: Duration = Duration::from_secs(120);

#[test]
fn kill_9_of_berth_under_load_restarts_no_container() {
    let stack = Stack::new("killsup");
    stack.write_config(&stack.demo_config("berth-demo/bot:1"));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let before: Vec<(String, String)> = stack
        .containers()
        .into_iter()
        .map(|(svc, id)| (svc, inspect(&id)["State"]["StartedAt"].to_string()))
        .collect();

    // Users keep talking to the bot the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = {
        let (stop, sent, url) = (
            stop.clone(),
            sent.clone(),
            stack.telegram("/_control/updates"),
        );
        std::thread::spawn(move || {
            let http = http_client();
            let mut chat = 1000;
            while !stop.load(Ordering::SeqCst) {
                chat += 1;
                if http
                    .post(&url)
                    .json(&json!({"chat_id": chat, "text": "/start"}))
                    .send()
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    d.kill9();
    std::thread::sleep(Duration::from_millis(500));
    let mut d2 = stack.start();
    let h = d2.wait_healthy(UP);
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    let _ = load.join();

    let after: Vec<(String, String)> = stack
        .containers()
        .into_iter()
        .map(|(svc, id)| (svc, inspect(&id)["State"]["StartedAt"].to_string()))
        .collect();
    assert_eq!(before, after, "no container was restarted or replaced");
    for svc in ["postgres", "redis", "telegram", "bot"] {
        assert_eq!(h["services"][svc]["restarts"], 0);
    }
    // Every update sent during all this is answered.
    let n = sent.load(Ordering::SeqCst);
    assert!(n > 20, "load ran ({n} updates)");
    let http = http_client();
    wait_for("every update answered", Duration::from_secs(30), || {
        let v: serde_json::Value = http
            .get(stack.telegram("/_control/sent"))
            .send()
            .ok()?
            .json()
            .ok()?;
        (v["messages"].as_array()?.len() as u64 >= n).then_some(())
    });
    let polls: serde_json::Value = http
        .get(stack.telegram("/_control/polls"))
        .send()
        .expect("polls")
        .json()
        .expect("json");
    assert_eq!(polls["conflicts"], 0);
}

#[test]
fn a_container_over_its_memory_limit_is_restarted_and_reported() {
    let stack = Stack::new("oom");
    let text = format!(
        "{}[services.hog]\nimage = \"berth-demo/base:bookworm\"\n# doubles a string until the 32 MiB limit kills it\ncommand = [\"sh\", \"-c\", \"sleep 1; x=0123456789abcdef; while :; do x=$x$x; done\"]\nmemory = \"32MiB\"\nrestart = {{ initial_backoff = \"200ms\", max_backoff = \"1s\" }}\n",
        stack.supervisor()
    );
    stack.write_config(&text);
    let d = stack.start();
    let h = d.wait_health("an OOM kill restarted and reported", UP, |h| {
        h["services"]["hog"]["oom_kills"].as_u64() >= Some(1)
            && h["services"]["hog"]["restarts"].as_u64() >= Some(1)
    });
    assert_eq!(h["status"], "down");
    let log = d.logs();
    assert!(log.contains("container ran out of memory"), "{log}");
    assert!(
        log.contains("container died") && log.contains("exit_code=137"),
        "{log}"
    );
    let metrics = http_client()
        .get(format!("http://127.0.0.1:{}/metrics", stack.health_port))
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    assert!(
        metrics.lines().any(
            |l| l.starts_with("berth_service_oom_kills_total{service=\"hog\"}")
                && !l.ends_with(" 0")
        ),
        "{metrics}"
    );
}
