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

/// Issue 15, item 3: a damaged deploys.json changes no running container: berth keeps a
/// copy, says so in /health, and waits for a person.
#[test]
fn a_corrupt_deploy_state_changes_no_container() {
    let stack = Stack::new("corruptstate");
    stack.write_config(&stack.demo_config("berth-demo/bot:1"));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let out = stack.berth(&["deploy", "bot", "berth-demo/bot:2", "--no-backup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before = stack.containers();
    d.kill9();
    let state = stack.dir.path().join("state");
    std::fs::write(state.join("deploys.json"), "{\"overrides\": {\"bot\": ").expect("write");
    let d2 = stack.start();
    // Every service up (held as it is), the stack degraded, and why.
    let h = d2.wait_health("the damage is reported", UP, |h| {
        h["state_error"].is_string() && h["status"] == "degraded"
    });
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:2", "{h}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stack.containers(), before, "no container was replaced");
    assert_eq!(
        inspect(&before["bot"])["Config"]["Image"],
        "berth-demo/bot:2",
        "the deployed bot runs on"
    );
    let copies = std::fs::read_dir(&state)
        .expect("ls")
        .filter(|e| {
            e.as_ref().is_ok_and(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("deploys.json.damaged-")
            })
        })
        .count();
    assert_eq!(copies, 1, "a copy is kept aside");
}

/// Issue 15, item 4: what a backup killed between the dump and its metadata left (a dump
/// no listing sees, temp files) is removed at start-up; complete backups stay.
#[test]
fn a_crash_between_dump_and_metadata_leaves_nothing_behind() {
    let stack = Stack::new("orphans");
    stack.write_config(&format!(
        "{}\n[backup]\nservice = \"postgres\"\ndir = \"backups\"\n",
        stack.demo_config("berth-demo/bot:1")
    ));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let out = stack.berth(&["backup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    d.kill9();
    let dir = stack.dir.path().join("backups");
    for f in ["20200101T000000Z.dump", ".20200101T000001Z.dump.partial"] {
        std::fs::write(dir.join(f), "half a backup").expect("write");
    }
    let d2 = stack.start();
    d2.wait_health("up", UP, |h| h["status"] != "down");
    wait_for("the orphans swept", Duration::from_secs(30), || {
        (!dir.join("20200101T000000Z.dump").exists()
            && !dir.join(".20200101T000001Z.dump.partial").exists())
        .then_some(())
    });
    assert!(dir.join(format!("{id}.dump")).exists());
    assert!(dir.join(format!("{id}.json")).exists());
}

/// Issue 15, item 7: the client of a deploy killed mid-way neither aborts nor wedges it.
#[test]
fn an_admin_client_killed_mid_deploy_leaves_one_bot_and_an_outcome() {
    let stack = Stack::new("clientkill");
    stack.write_config(&stack.demo_config("berth-demo/bot:1"));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let mut client = std::process::Command::new(berth_bin())
        .args([
            "deploy",
            "bot",
            "berth-demo/bot:broken",
            "--no-backup",
            "-c",
        ])
        .arg(&stack.config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("berth deploy");
    std::thread::sleep(Duration::from_secs(2));
    client.kill().expect("kill the client");
    let _ = client.wait();
    let h = d.wait_health(
        "the deploy ended on its own",
        Duration::from_secs(180),
        |h| h["deploy"]["bot"]["outcome"] == "rolled_back" && h["status"] == "ok",
    );
    assert_eq!(h["deploy"]["bot"]["image"], "berth-demo/bot:broken");
    assert_eq!(stack.running("bot"), 1, "exactly one bot runs");
    assert_eq!(stack.conflicts(), 0);
}

/// Issue 15, item 8: a task that panics ends berth with an error (systemd restarts it),
/// instead of leaving a process that answers /health while nothing is supervised.
#[test]
fn a_panicking_task_ends_berth_with_an_error() {
    let stack = Stack::new("panic");
    stack.write_config(&stack.demo_config("berth-demo/bot:1"));
    let mut d = stack.start_with_env(&[("BERTH_FAULT_PANIC", "resources")]);
    let code = d.wait_exit(Duration::from_secs(60));
    assert_eq!(code, Some(1), "{}", d.logs());
    let log = d.logs();
    assert!(log.contains("a task panicked"), "{log}");
    assert!(
        log.contains("the resources task panics on purpose"),
        "{log}"
    );
}
