//! Health-gated deploys of the long-polling demo bot on the real engine.

use std::time::Duration;

use berth_tests::*;
use serde_json::{Value, json};

const UP: Duration = Duration::from_secs(120);

fn config(stack: &Stack, migrate: &str) -> String {
    stack.demo_config("berth-demo/bot:1").replace(
        "read_only = true\n",
        &format!(
            "read_only = true\ndeploy = {{ migrate = {migrate}, health_timeout = \"10s\" }}\n"
        ),
    )
}

fn polls(stack: &Stack) -> Value {
    http_client()
        .get(stack.telegram("/_control/polls"))
        .send()
        .expect("polls")
        .json()
        .expect("json")
}

fn running_bots(stack: &Stack) -> usize {
    docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=berth.project={}", stack.project),
        "--filter",
        "label=berth.service=bot",
    ])
    .expect("ps")
    .lines()
    .count()
}

#[test]
fn deploy_then_broken_deploy_rolls_back_then_rollback_and_adoption() {
    let stack = Stack::new("deploy");
    stack.write_config(&config(&stack, "[\"demo-bot\", \"migrate\"]"));
    let mut d = stack.start();
    d.wait_healthy(UP);
    assert_eq!(
        stack.psql("SELECT string_agg(name, ',' ORDER BY name) FROM schema_migrations"),
        "001_users.sql"
    );

    // bot:1 -> bot:2: migration applied, stop-first, no conflict.
    let out = stack.berth(&["deploy", "bot", "berth-demo/bot:2"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stack.psql("SELECT string_agg(name, ',' ORDER BY name) FROM schema_migrations"),
        "001_users.sql,002_language.sql"
    );
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:2");
    assert_eq!(h["deploy"]["bot"]["outcome"], "deployed");
    assert_eq!(h["deploy"]["bot"]["previous_image"], "berth-demo/bot:1");
    assert_eq!(
        h["services"]["bot"]["restarts"], 0,
        "a deploy is not a crash"
    );
    assert_eq!(running_bots(&stack), 1);
    // The bot answers after the switch.
    let http = http_client();
    http.post(stack.telegram("/_control/updates"))
        .json(&json!({"chat_id": 7, "text": "/start"}))
        .send()
        .expect("update");
    wait_for("bot:2 answers", Duration::from_secs(20), || {
        let v: Value = http
            .get(stack.telegram("/_control/sent"))
            .send()
            .ok()?
            .json()
            .ok()?;
        v["messages"]
            .as_array()?
            .iter()
            .any(|m| m["text"].as_str().is_some_and(|t| t.contains("v2")))
            .then_some(())
    });

    // bot:broken never passes its probe: rolled back to bot:2.
    let out = stack.berth(&["deploy", "bot", "berth-demo/bot:broken", "--no-backup"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back to berth-demo/bot:2"), "{err}");
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:2");
    assert_eq!(h["deploy"]["bot"]["outcome"], "rolled_back");
    assert_eq!(running_bots(&stack), 1);

    // `berth rollback` goes back to bot:1 (the rollback target survived the failed deploy).
    let out = stack.berth(&["rollback", "bot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:1");
    assert_eq!(running_bots(&stack), 1);
    assert_eq!(polls(&stack)["conflicts"], 0, "never two pollers");

    // berth restarted: the deployed image stays, nothing is recreated.
    let bot = stack.containers()["bot"].clone();
    d.kill9();
    let mut d2 = stack.start();
    let h = d2.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:1");
    assert_eq!(stack.containers()["bot"], bot);
    assert!(!d2.logs().contains("supervisor: plan"), "{}", d2.logs());
}

#[test]
fn a_failed_migration_leaves_the_old_version_untouched() {
    let stack = Stack::new("migfail");
    stack.write_config(&config(
        &stack,
        "[\"sh\", \"-c\", \"echo cannot migrate >&2; exit 7\"]",
    ));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let bot = stack.containers()["bot"].clone();
    let started = inspect(&bot)["State"]["StartedAt"].clone();
    let out = stack.berth(&["deploy", "bot", "berth-demo/bot:2", "--no-backup"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exit code 7") && err.contains("cannot migrate") && err.contains("untouched"),
        "{err}"
    );
    assert_eq!(stack.containers()["bot"], bot);
    assert_eq!(
        inspect(&bot)["State"]["StartedAt"],
        started,
        "old bot never stopped"
    );
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:1");
    // The one-off migration container is gone.
    assert!(
        docker(&[
            "inspect",
            &format!("{}-migrate", stack.container_name("bot"))
        ])
        .is_err()
    );
}

#[test]
fn start_first_overlaps_and_keeps_the_old_container_on_failure() {
    let stack = Stack::new("startfirst");
    let text = format!(
        // Healthy only in an image that has the fake Bot API binary.
        "{}[services.web]\nimage = \"berth-demo/fake-telegram:latest\"\nprobe = {{ exec = {{ command = [\"test\", \"-x\", \"/usr/local/bin/fake-telegram\"] }} }}\ndeploy = {{ strategy = \"start-first\", health_timeout = \"3s\" }}\n",
        stack.supervisor()
    );
    stack.write_config(&text);
    let mut d = stack.start();
    d.wait_healthy(UP);
    let old = stack.containers()["web"].clone();
    let old_started = inspect(&old)["State"]["StartedAt"].clone();

    // An image without it never becomes healthy: the old container keeps running.
    let out = stack.berth(&["deploy", "web", "berth-demo/redis:7", "--no-backup"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        inspect(&old)["State"]["StartedAt"],
        old_started,
        "old container never stopped"
    );
    let h = d.wait_healthy(UP);
    assert_eq!(
        h["services"]["web"]["image"],
        "berth-demo/fake-telegram:latest"
    );
    assert_eq!(h["services"]["web"]["container_id"], inspect(&old)["Id"]);

    // A good one (the same image, deployed again): started and healthy before the old
    // one stopped.
    let out = stack.berth(&[
        "deploy",
        "web",
        "berth-demo/fake-telegram:latest",
        "--no-backup",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = d.wait_healthy(UP);
    assert_eq!(h["deploy"]["web"]["outcome"], "deployed");
    let new = inspect(&stack.container_name("web"));
    let previous = inspect(&format!("{}.previous", stack.container_name("web")));
    assert_eq!(previous["Id"], inspect(&old)["Id"]);
    let (new_start, old_stop) = (
        new["State"]["StartedAt"].as_str().unwrap_or(""),
        previous["State"]["FinishedAt"].as_str().unwrap_or(""),
    );
    assert!(
        new_start < old_stop,
        "overlap: new started {new_start}, old stopped {old_stop}"
    );
}
