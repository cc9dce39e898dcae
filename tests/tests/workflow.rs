//! The CI deploy workflow (`deployment/ci/github-deploy.yml`, issue 17 item 4): valid
//! against GitHub's workflow schema, free of zizmor's security findings, and what it
//! sends over SSH passes `berth ssh-command`. (actionlint itself installs only from
//! GitHub's release downloads, which this machine cannot reach.)

use std::path::{Path, PathBuf};
use std::process::Command;

use berth_tests::berth_bin;

fn workflow() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deployment/ci/github-deploy.yml")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (run the suite with `cargo xtask test`)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?}:\n{text}");
    text
}

#[test]
fn the_deploy_workflow_is_valid_and_has_no_security_findings() {
    run(Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.github-workflows"])
        .arg(workflow()));
    let out = run(Command::new("zizmor").arg("--offline").arg(workflow()));
    assert!(out.contains("No findings"), "{out}");
}

#[test]
fn what_the_workflow_sends_over_ssh_is_allowed_by_the_forced_command() {
    let text = std::fs::read_to_string(workflow()).expect("workflow");
    // The commands after "root@$HOST", with the image the build job makes.
    let sent: Vec<String> = text
        .lines()
        .filter_map(|l| l.split("\"root@$HOST\" ").nth(1))
        .map(|c| c.replace("\"$IMAGE\"", "ghcr.io/someone/tgtg-bot:v1.5.0"))
        .collect();
    assert_eq!(sent.len(), 2, "{sent:?}");
    for cmd in sent {
        let out = Command::new(berth_bin())
            .args(["ssh-command", "-c", "/nonexistent/berth.toml"])
            .env("SSH_ORIGINAL_COMMAND", &cmd)
            .output()
            .expect("berth");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("refused"), "{cmd:?}: {err}");
        assert!(
            err.contains("/nonexistent/berth.toml"),
            "it ran {cmd:?}: {err}"
        );
    }
}
