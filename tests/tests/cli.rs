//! The CLI's surface: version, completions, man page, exit codes, one-line errors.

use std::process::Command;

use berth_tests::berth_bin;

fn berth(args: &[&str]) -> std::process::Output {
    Command::new(berth_bin())
        .args(args)
        .env_remove("BERTH_CONFIG")
        .output()
        .expect("run berth")
}

fn stdout(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn version_names_the_git_revision() {
    let out = berth(&["--version"]);
    assert!(out.status.success());
    let v = stdout(&out);
    let rev = Command::new("git")
        .args(["rev-parse", "--short=10", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    assert!(v.starts_with("berth 0."), "{v}");
    assert!(
        !rev.is_empty() && v.contains(&format!("(git {rev}")),
        "{v} vs {rev}"
    );
}

#[test]
fn completions_for_bash_zsh_and_fish_know_every_command() {
    for shell in ["bash", "zsh", "fish"] {
        let out = berth(&["completions", shell]);
        assert!(out.status.success(), "{shell}");
        let text = stdout(&out);
        for cmd in ["deploy", "rollback", "backup", "restore", "status", "alert"] {
            assert!(text.contains(cmd), "{shell} completion lacks {cmd}");
        }
    }
    // The bash one is valid bash.
    let dir = tempfile::tempdir().expect("tmp");
    let file = dir.path().join("berth.bash");
    std::fs::write(&file, stdout(&berth(&["completions", "bash"]))).expect("write");
    let ok = Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "bash -n on the completion script");
}

#[test]
fn the_man_page_is_roff_from_the_cli_definition() {
    let out = berth(&["man"]);
    assert!(out.status.success());
    let man = stdout(&out);
    assert!(man.contains(".TH berth 1"), "{man}");
    assert!(man.contains("deploy") && man.contains("rollback"), "{man}");
}

#[test]
fn exit_codes_and_errors_are_consistent() {
    // Usage errors: 2 (clap).
    assert_eq!(berth(&["no-such-command"]).status.code(), Some(2));
    assert_eq!(berth(&["deploy"]).status.code(), Some(2));
    // A missing config: 1, one line that says what to do.
    let out = berth(&["backups", "-c", "/nonexistent/berth.toml"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/berth.toml"), "{err}");
    assert!(err.contains("hint: pass the config with -c FILE"), "{err}");
}
