//! `berth stop`, `start` and `restart` on the real engine (issue 17, item 5): a stop
//! holds through a kill -9 of berth and its restart; a restart of the bot never makes
//! two pollers.

use std::time::Duration;

use berth_tests::*;

const UP: Duration = Duration::from_secs(120);

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn stop_holds_the_bot_down_through_a_berth_crash_start_and_restart_bring_it_back() {
    let stack = Stack::new("ops");
    // The bot in bot-net's network namespace, as config/demo.toml has it.
    stack.write_config(&stack.demo_config("berth-demo/bot:1").replace(
        "[services.bot]\n",
        "[services.bot-net]\nimage = \"berth-demo/pause:1\"\n\n[services.bot]\nnetwork = \"service:bot-net\"\n",
    ));
    let mut d = stack.start();
    d.wait_healthy(UP);

    // The bot's holder goes down only after the bot.
    let refused = stack.berth(&["stop", "bot-net"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&refused.stdout),
        String::from_utf8_lossy(&refused.stderr)
    );
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("bot is in bot-net's network namespace: berth stop bot first"),
        "{said}"
    );
    assert_eq!(stack.running("bot-net"), 1);
    assert_eq!(stack.running("bot"), 1);

    let said = ok(stack.berth(&["stop", "bot"]));
    assert!(said.contains("bot held down"), "{said}");
    assert_eq!(stack.running("bot"), 0);
    let (code, health) = d.health().expect("health");
    assert_eq!(code, 200, "degraded is not down: {health}");
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["services"]["bot"]["held"], true, "{health}");
    let status = String::from_utf8_lossy(&stack.berth(&["status"]).stdout).to_string();
    assert!(status.contains("held"), "{status}");
    assert!(status.contains("berth start bot"), "{status}");

    // berth dies hard and comes back: the bot stays down.
    d.kill9();
    let mut d = stack.start();
    d.wait_health("up again, bot still held", UP, |h| {
        h["services"]["postgres"]["health"] == "healthy" && h["services"]["bot"]["held"] == true
    });
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stack.running("bot"), 0, "held through berth's restart");
    assert!(!d.logs().contains("panicked"));

    // Now the holder may go too; starting the bot starts it again.
    ok(stack.berth(&["stop", "bot-net"]));
    assert_eq!(stack.running("bot-net"), 0);
    let said = ok(stack.berth(&["start", "bot"]));
    assert!(said.contains("healthy"), "{said}");
    assert_eq!(stack.running("bot"), 1);
    assert_eq!(stack.running("bot-net"), 1);
    let health = d.wait_healthy(UP);
    assert!(health["services"]["bot"].get("held").is_none(), "{health}");

    // A restart: the same container, stopped first, and no two pollers at any time.
    let before = stack.containers()["bot"].clone();
    let said = ok(stack.berth(&["restart", "bot"]));
    assert!(said.contains("bot restarted"), "{said}");
    assert_eq!(stack.containers()["bot"], before, "the same container");
    d.wait_healthy(UP);
    assert_eq!(stack.conflicts(), 0, "never two pollers");
    let restarted_at = inspect(&before)["State"]["StartedAt"].to_string();
    assert_ne!(restarted_at, "null");
}
