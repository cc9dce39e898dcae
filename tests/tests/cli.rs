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

/// Issue 17, item 4: the forced command refuses, in one line and with nothing run,
/// whatever is not deploy/rollback/status/logs with checked arguments; what passes runs
/// as the same command would (here `status` with no daemon: exit 3).
#[test]
fn ssh_command_runs_only_what_it_allows() {
    let dir = tempfile::tempdir().expect("tmp");
    let config = dir.path().join("berth.toml");
    std::fs::write(
        &config,
        format!(
            "[supervisor]\nproject = \"sshc\"\nadmin_socket = {:?}\nstate_dir = {:?}\n\n[services.bot]\nimage = \"bot:1\"\n",
            dir.path().join("admin.sock"),
            dir.path().join("state")
        ),
    )
    .expect("config");
    let run = |original: Option<&str>| {
        let mut c = Command::new(berth_bin());
        c.args(["ssh-command", "-c"])
            .arg(&config)
            .env_remove("BERTH_CONFIG");
        match original {
            Some(o) => c.env("SSH_ORIGINAL_COMMAND", o),
            None => c.env_remove("SSH_ORIGINAL_COMMAND"),
        };
        c.output().expect("run")
    };
    let marker = dir.path().join("pwned");
    let hostile = [
        None,
        Some(format!("status; touch {}", marker.display())),
        Some(format!("status && touch {}", marker.display())),
        Some(format!("logs bot $(touch {})", marker.display())),
        Some(format!("status\ntouch {}", marker.display())),
        Some("status --config=/etc/shadow".to_string()),
        Some("deploy --config=/etc/shadow bot bot:2".to_string()),
        Some("restore latest --yes".to_string()),
        Some("run".to_string()),
    ];
    for h in hostile {
        let out = run(h.as_deref());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{h:?}: {err}");
        assert!(
            err.starts_with("berth ssh-command: refused: "),
            "{h:?}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "one line: {err}");
        assert!(out.stdout.is_empty(), "{h:?}");
        assert!(!marker.exists(), "{h:?} ran something");
    }
    let out = run(Some("status"));
    assert_eq!(out.status.code(), Some(3), "status ran: no daemon answers");
    // The key deploys new tags of the service's own image only.
    let out = run(Some("deploy bot evil.example.com/bot:2"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("refused: bot deploys only bot:TAG"), "{err}");
    let out = run(Some("deploy bot bot:2"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("through the running daemon"),
        "allowed, then no daemon: {err}"
    );
}
