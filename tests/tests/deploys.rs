//! Health-gated deploys of the long-polling demo bot on the real engine.

use std::time::Duration;

use berth_tests::*;

const UP: Duration = Duration::from_secs(120);

fn config(stack: &Stack, migrate: &str) -> String {
    stack.demo_config("berth-demo/bot:1").replace(
        "read_only = true\n",
        &format!(
            "read_only = true\ndeploy = {{ migrate = {migrate}, health_timeout = \"10s\" }}\n"
        ),
    )
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
    assert_eq!(stack.running("bot"), 1);
    // bot:2 answers after the switch.
    let reply = stack.wait_answered(7, Duration::from_secs(20));
    assert!(reply.contains("v2"), "{reply}");

    // bot:broken never passes its probe: rolled back to bot:2.
    let out = stack.berth(&["deploy", "bot", "berth-demo/bot:broken", "--no-backup"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rolled back to berth-demo/bot:2"), "{err}");
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:2");
    assert_eq!(h["deploy"]["bot"]["outcome"], "rolled_back");
    assert_eq!(stack.running("bot"), 1);

    // `berth rollback` goes back to bot:1 (the rollback target survived the failed deploy).
    let out = stack.berth(&["rollback", "bot"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:1");
    assert_eq!(stack.running("bot"), 1);
    assert_eq!(stack.polls()["conflicts"], 0, "never two pollers");

    // berth restarted: the deployed image stays, nothing is recreated.
    let bot = stack.containers()["bot"].clone();
    d.kill9();
    let mut d2 = stack.start();
    let h = d2.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:1");
    assert_eq!(stack.containers()["bot"], bot);
    assert!(!d2.logs().contains("reconciler: plan"), "{}", d2.logs());
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

fn out_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn a_reload_that_changes_the_image_goes_through_the_deploy_flow() {
    let stack = Stack::new("reloaddeploy");
    stack.write_config(&config(&stack, "[\"demo-bot\", \"migrate\"]"));
    let mut d = stack.start();
    d.wait_healthy(UP);

    // The file names bot:2: migrated, health-gated, recorded as a deploy.
    stack.write_config(&config(&stack, "[\"demo-bot\", \"migrate\"]").replace("bot:1", "bot:2"));
    d.signal("HUP");
    let h = d.wait_health("bot:2 deployed", UP, |h| {
        h["deploy"]["bot"]["image"] == "berth-demo/bot:2" && h["status"] == "ok"
    });
    assert_eq!(h["deploy"]["bot"]["outcome"], "deployed", "{h}");
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:2");
    assert_eq!(
        stack.psql("SELECT string_agg(name, ',' ORDER BY name) FROM schema_migrations"),
        "001_users.sql,002_language.sql"
    );
    let previous = format!("{}.previous", stack.container_name("bot"));
    assert_eq!(inspect(&previous)["Config"]["Image"], "berth-demo/bot:1");

    // The file names a broken image: rolled back, bot:2 keeps running.
    stack.write_config(
        &config(&stack, "[\"demo-bot\", \"migrate\"]").replace("bot:1", "bot:broken"),
    );
    let bot2 = stack.containers()["bot"].clone();
    d.signal("HUP");
    let h = d.wait_health("bot:broken rolled back", UP, |h| {
        h["deploy"]["bot"]["image"] == "berth-demo/bot:broken" && h["status"] == "ok"
    });
    assert_eq!(h["deploy"]["bot"]["outcome"], "rolled_back", "{h}");
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:2");
    assert_eq!(
        stack.containers()["bot"],
        bot2,
        "the old container came back"
    );
    assert_eq!(stack.running("bot"), 1);
    assert_eq!(stack.polls()["conflicts"], 0, "never two pollers");

    // A restarted berth keeps bot:2 (the file's image failed) and touches nothing.
    d.kill9();
    let mut d2 = stack.start();
    let h = d2.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:2");
    assert_eq!(stack.containers()["bot"], bot2);
    assert!(!d2.logs().contains("reconciler: plan"), "{}", d2.logs());
}

#[test]
fn berth_killed_mid_deploy_comes_back_to_exactly_one_bot() {
    let stack = Stack::new("killdeploy");
    stack.write_config(&config(&stack, "[\"demo-bot\", \"migrate\"]"));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let bot1 = stack.containers()["bot"].clone();

    std::thread::scope(|s| {
        // bot:broken never gets healthy: the deploy sits in its health gate (10 s).
        let deploy = s.spawn(|| stack.berth(&["deploy", "bot", "berth-demo/bot:broken"]));
        d.wait_health("the new bot starting", UP, |h| {
            h["services"]["bot"]["image"] == "berth-demo/bot:broken"
        });
        let second = stack.berth(&["deploy", "bot", "berth-demo/bot:2", "--no-backup"]);
        assert_eq!(second.status.code(), Some(1));
        assert!(
            out_text(&second).contains("another deploy is running"),
            "{}",
            out_text(&second)
        );
        d.signal("KILL");
        let first = deploy.join().expect("deploy thread");
        assert!(!first.status.success(), "{}", out_text(&first));
    });
    d.kill9();

    let mut d2 = stack.start();
    let h = d2.wait_healthy(UP);
    assert_eq!(stack.running("bot"), 1, "{}", d2.logs());
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:1");
    assert_eq!(stack.containers()["bot"], bot1, "the old container is back");
    assert_eq!(h["deploy"]["bot"]["outcome"], "interrupted", "{h}");
    assert_eq!(stack.polls()["conflicts"], 0, "never two pollers");
    // No leftover of the interrupted deploy runs or lingers as the rollback target.
    assert!(
        docker(&[
            "inspect",
            &format!("{}.previous", stack.container_name("bot"))
        ])
        .is_err()
    );
}

#[test]
fn a_deploy_waits_for_a_running_backup_and_rollback_can_restore_the_database() {
    let stack = Stack::new("deploybackup");
    stack.write_config(&format!(
        "{}\n[backup]\nservice = \"postgres\"\ndatabase = \"bot\"\nuser = \"bot\"\ndir = \"backups\"\nverify = false\n",
        config(&stack, "[\"demo-bot\", \"migrate\"]")
    ));
    let mut d = stack.start();
    d.wait_healthy(UP);
    // Enough data that a dump takes a moment.
    stack.psql(
        "CREATE TABLE filler AS SELECT g AS id, md5(g::text) || md5((g+1)::text) AS pad FROM generate_series(1, 1500000) g",
    );
    stack.psql("CREATE TABLE marks (v text); INSERT INTO marks VALUES ('before')");

    std::thread::scope(|s| {
        let backup = s.spawn(|| stack.berth(&["backup"]));
        wait_for("backup starting", UP, || {
            d.logs().contains("backup starting").then_some(())
        });
        let out = stack.berth(&["deploy", "bot", "berth-demo/bot:2"]);
        assert!(out.status.success(), "{}", out_text(&out));
        let b = backup.join().expect("backup thread");
        assert!(b.status.success(), "{}", out_text(&b));
    });
    let logs = d.logs();
    let waited = logs
        .find("deploy waits for the running backup")
        .expect("the deploy waited");
    let done = logs.find("backup done").expect("backup done");
    let pre = logs.find("pre-deploy backup").expect("pre-deploy backup");
    assert!(waited < done && done < pre, "{logs}");

    // Data written after the deploy is undone by rollback --restore-db.
    stack.psql("UPDATE marks SET v = 'after'");
    let out = stack.berth(&["rollback", "bot", "--restore-db", "--yes"]);
    assert!(out.status.success(), "{}", out_text(&out));
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:1");
    assert_eq!(stack.psql("SELECT v FROM marks"), "before");
    assert_eq!(stack.running("bot"), 1);
}

#[test]
fn a_deploy_pulls_an_image_this_host_does_not_have() {
    let registry = Registry::start();
    let image = registry.push("berth-demo/bot:2", "bot:2");
    assert!(
        docker(&["image", "inspect", &image]).is_err(),
        "not here yet"
    );
    let stack = Stack::new("pull");
    stack.write_config(&config(&stack, "[\"demo-bot\", \"migrate\"]"));
    let mut d = stack.start();
    d.wait_healthy(UP);

    let out = stack.berth(&["deploy", "bot", &image, "--no-backup"]);
    assert!(out.status.success(), "{}", out_text(&out));
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], image.as_str());
    assert!(d.logs().contains("pulled"), "{}", d.logs());

    // Not in the registry either: a clear error, nothing changed.
    let missing = format!("127.0.0.1:{}/bot:9", registry.port);
    let out = stack.berth(&["deploy", "bot", &missing, "--no-backup"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        out_text(&out).contains("pulling it failed"),
        "{}",
        out_text(&out)
    );
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], image.as_str());
    assert_eq!(stack.running("bot"), 1);
    drop(d);
    drop(stack);
    let _ = docker(&["rmi", &image]);
}

/// The demo stack with the bot in `bot-net`'s network namespace, as config/demo.toml has it.
fn held_config(stack: &Stack) -> String {
    config(stack, "[\"demo-bot\", \"migrate\"]").replace(
        "[services.bot]\n",
        "[services.bot-net]\nimage = \"berth-demo/pause:1\"\n\n[services.bot]\nnetwork = \"service:bot-net\"\n",
    )
}

/// The service's container is in the network namespace of container `holder` (an id
/// as `docker ps` shortens it): joined by its id, or by the name `bot-net`'s container
/// has (the engine keeps the name when it joined before the holder existed). False while
/// the service has no container (berth is between removing it and making it anew).
fn joins(stack: &Stack, service: &str, holder: &str) -> bool {
    let Ok(out) = docker(&[
        "inspect",
        "-f",
        "{{.HostConfig.NetworkMode}}",
        &stack.container_name(service),
    ]) else {
        return false;
    };
    let mode = out.trim();
    mode.starts_with(&format!("container:{holder}"))
        || mode == format!("container:{}", stack.container_name("bot-net"))
}

#[test]
fn a_bot_in_a_held_network_namespace_deploys_and_outlives_its_holder() {
    let stack = Stack::new("held");
    stack.write_config(&held_config(&stack));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let holder = || stack.containers()["bot-net"].clone();
    assert!(joins(&stack, "bot", &holder()));
    // It reaches postgres, redis and the Bot API by name through the holder's network.
    assert!(
        stack
            .wait_answered(1, Duration::from_secs(20))
            .contains("v1")
    );

    let out = stack.berth(&["deploy", "bot", "berth-demo/bot:2", "--no-backup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:2");
    assert!(joins(&stack, "bot", &holder()));
    assert!(
        stack
            .wait_answered(2, Duration::from_secs(20))
            .contains("v2")
    );

    // The holder crashes: the same holder comes back, then the bot joins it anew.
    let bot_started = stack.inspect_service("bot")["State"]["StartedAt"].clone();
    let holder_id = holder();
    stack.crash("bot-net");
    wait_for("bot restarted after its holder", UP, || {
        (stack.inspect_service("bot")["State"]["StartedAt"] != bot_started
            && stack.inspect_service("bot")["State"]["Running"] == true)
            .then_some(())
    });
    d.wait_healthy(UP);
    assert_eq!(holder(), holder_id);
    assert!(
        stack
            .wait_answered(3, Duration::from_secs(30))
            .contains("v2")
    );

    // The holder is removed by hand: a new one, and a new bot container that joined it.
    docker(&["rm", "-f", &holder_id]).expect("docker rm");
    wait_for("a new holder and bot", UP, || {
        let h = stack.containers().get("bot-net").cloned()?;
        (h != holder_id && joins(&stack, "bot", &h)).then_some(())
    });
    d.wait_healthy(UP);
    assert!(
        stack
            .wait_answered(4, Duration::from_secs(30))
            .contains("v2")
    );
    assert_eq!(stack.running("bot"), 1);
    assert_eq!(stack.conflicts(), 0, "two bots polled at once");
}
