//! Deploy progress (issue 17, item 3): `berth deploy` shows each step as it happens — a
//! live line per step on a terminal, timestamped lines elsewhere, nothing with --quiet —
//! while the final line and exit code stay; a client killed mid-deploy changes nothing
//! of the deploy, which finishes on its own.

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use berth_tests::*;

const UP: Duration = Duration::from_secs(120);

fn config(stack: &Stack) -> String {
    format!(
        "{}[backup]\nservice = \"postgres\"\nschedule = \"03:30\"\ndir = \"backups\"\n",
        stack.demo_config("berth-demo/bot:1").replace(
            "read_only = true\n",
            "read_only = true\ndeploy = { migrate = [\"demo-bot\", \"migrate\"], health_timeout = \"20s\" }\n",
        )
    )
}

#[test]
fn deploy_shows_its_steps_and_survives_its_client() {
    let stack = Stack::new("progress");
    stack.write_config(&config(&stack));
    let mut d = stack.start();
    d.wait_healthy(UP);

    // Not a terminal: timestamped lines on stderr, one per step update; stdout as before.
    let out = stack.berth(&["deploy", "bot", "berth-demo/bot:2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{err}");
    assert!(said.starts_with("deployed bot berth-demo/bot:2"), "{said}");
    eprintln!("{err}");
    let steps: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest))
        .filter_map(|r| r.split_once(':').map(|(step, _)| step))
        .collect();
    for want in ["image", "backup", "migrate", "stop", "start", "health"] {
        assert!(steps.contains(&want), "no {want} step in:\n{err}");
    }
    assert!(
        err.lines().all(|l| l.starts_with("20")),
        "every line timestamped:\n{err}"
    );
    assert!(err.contains("bytes"), "backup bytes:\n{err}");
    assert!(err.contains("healthy after"), "the health gate:\n{err}");
    for s in &stack.secrets {
        assert!(!err.contains(s.as_str()), "a secret in the progress");
    }

    // --quiet: nothing but the outcome.
    let out = stack.berth(&[
        "deploy",
        "bot",
        "berth-demo/bot:1",
        "--no-backup",
        "--quiet",
    ]);
    assert!(out.status.success());
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // On a pseudo-terminal (script(1)): one live line per step, rewritten in place.
    let cmd = format!(
        "{} deploy -c {} bot berth-demo/bot:2 --no-backup",
        berth_bin().display(),
        stack.config.display()
    );
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .output()
        .expect("script");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{tty}");
    assert!(tty.contains("\r\x1b[2K"), "a live line:\n{tty:?}");
    assert!(
        tty.contains("health") && tty.contains("deployed bot"),
        "{tty:?}"
    );

    // The client killed mid-deploy: the deploy goes on and ends on its own, one bot.
    let mut client = Command::new(berth_bin())
        .args(["deploy", "-c"])
        .arg(&stack.config)
        .args(["bot", "berth-demo/bot:1", "--no-backup"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth deploy");
    let stderr = client.stderr.take().expect("stderr");
    for line in std::io::BufReader::new(stderr).lines() {
        let line = line.expect("line");
        if line.contains(" stop:") {
            break;
        }
    }
    client.kill().expect("kill -9 the client");
    let _ = client.wait();
    let h = d.wait_health("the deploy ended without its client", UP, |h| {
        h["deploy"]["bot"]["image"] == "berth-demo/bot:1"
            && h["deploy"]["bot"]["outcome"] == "deployed"
            && h["services"]["bot"]["health"] == "healthy"
    });
    assert_eq!(h["services"]["bot"]["image"], "berth-demo/bot:1");
    assert_eq!(stack.running("bot"), 1);
    assert_eq!(stack.conflicts(), 0, "never two pollers");
    let status = String::from_utf8_lossy(&stack.berth(&["status"]).stdout).to_string();
    assert!(status.contains("berth-demo/bot:1"), "{status}");

    // A pull shows its layers and bytes.
    let registry = Registry::start();
    let image = registry.push("berth-demo/bot:2", "progress/bot:2");
    let out = stack.berth(&["deploy", "bot", &image, "--no-backup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!("pull: {image} from 127.0.0.1:")),
        "{err}"
    );
    assert!(err.contains("layers") && err.contains(": done"), "{err}");
    let _ = docker(&["rmi", "-f", &image]);
}
