//! `cargo xtask faults`: one `PASS <case>` or `FAIL <case> <why>` line per fault case, each
//! a test on the real engine; exit 0 only if all pass.

use std::process::Command;

use anyhow::bail;

use crate::{cargo_build, images, root};

/// (case, package, test target: `Some(file)` or the lib, test name filter, exact)
const CASES: &[(&str, &str, Option<&str>, &str, bool)] = &[
    (
        "corrupt-deploy-state",
        "berth-tests",
        Some("faults"),
        "a_corrupt_deploy_state_changes_no_container",
        true,
    ),
    (
        "crash-between-dump-and-metadata",
        "berth-tests",
        Some("faults"),
        "a_crash_between_dump_and_metadata_leaves_nothing_behind",
        true,
    ),
    (
        "admin-client-killed-mid-deploy",
        "berth-tests",
        Some("faults"),
        "an_admin_client_killed_mid_deploy_leaves_one_bot_and_an_outcome",
        true,
    ),
    (
        "panicking-task",
        "berth-tests",
        Some("faults"),
        "a_panicking_task_ends_berth_with_an_error",
        true,
    ),
    (
        "kill-supervisor",
        "berth-tests",
        Some("faults"),
        "kill_9_of_berth_under_load_restarts_no_container",
        true,
    ),
    (
        "engine-restart",
        "berth-tests",
        Some("lifecycle"),
        "engine_connection_lost_and_restored_converges_without_duplicates",
        true,
    ),
    (
        "crashloop",
        "berth-tests",
        Some("lifecycle"),
        "a_service_that_exits_at_once_backs_off_and_is_marked_crashlooping",
        true,
    ),
    (
        "disk-full",
        "berth-tests",
        Some("backups"),
        "a_full_disk_fails_the_backup_cleanly_and_keeps_older_ones",
        true,
    ),
    (
        "bad-reload",
        "berth-tests",
        Some("lifecycle"),
        "a_bad_reload_keeps_the_old_state_and_shows_the_error",
        true,
    ),
    (
        "secrets-in-logs",
        "berth-tests",
        Some("skeleton"),
        "demo_stack_comes_up_from_nothing_and_answers_start",
        true,
    ),
    (
        "restore-after-loss",
        "berth-tests",
        Some("backups"),
        "backup_and_restore_round_trip_with_the_bot_running",
        true,
    ),
    (
        "oom",
        "berth-tests",
        Some("faults"),
        "a_container_over_its_memory_limit_is_restarted_and_reported",
        true,
    ),
    (
        "config-fuzz",
        "berth-config",
        None,
        "validate::tests::fuzz::",
        false,
    ),
];

/// The fault cases' verdicts from the output of a whole `cargo test --workspace` run (the
/// cases are tests of the suite, so CI reads them there instead of running them twice):
/// one `PASS`/`FAIL` line each; the number that failed or did not run.
pub fn from_suite(output: &str) -> usize {
    // (test binary's `Running` line, test name, passed)
    let mut results: Vec<(&str, &str, bool)> = Vec::new();
    let mut binary = "";
    for line in output.lines() {
        if let Some(b) = line.trim_start().strip_prefix("Running ") {
            binary = b;
        } else if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, verdict)) = rest.split_once(" ... ")
            && (verdict.starts_with("ok") || verdict.starts_with("FAILED"))
        {
            results.push((binary, name, verdict.starts_with("ok")));
        }
    }
    let mut failed = 0;
    for (case, pkg, target, name, exact) in CASES {
        let in_binary = |b: &str| match target {
            Some(t) => b.starts_with(&format!("tests/{t}.rs ")),
            None => {
                b.starts_with("unittests src/lib.rs ")
                    && b.contains(&format!("/{}-", pkg.replace('-', "_")))
            }
        };
        let ran: Vec<bool> = results
            .iter()
            .filter(|(b, n, _)| in_binary(b) && if *exact { n == name } else { n.contains(name) })
            .map(|r| r.2)
            .collect();
        if ran.is_empty() {
            failed += 1;
            println!("FAIL {case} no test ran");
        } else if ran.iter().all(|ok| *ok) {
            println!("PASS {case}");
        } else {
            failed += 1;
            println!("FAIL {case} the test failed (its output is above)");
        }
    }
    failed
}

pub fn run() -> anyhow::Result<()> {
    images::build_all()?;
    cargo_build(&["berth"])?;
    let mut failed = 0;
    for (case, pkg, target, name, exact) in CASES {
        let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        c.current_dir(root()).args(["test", "--quiet", "-p", pkg]);
        match target {
            Some(t) => c.args(["--test", t]),
            None => c.arg("--lib"),
        };
        c.args([name, "--"]);
        if *exact {
            c.arg("--exact");
        }
        let out = c.output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let ran: u64 = text
            .lines()
            .filter_map(|l| l.strip_prefix("test result: "))
            .filter_map(|l| {
                l.split(';')
                    .next()?
                    .split_whitespace()
                    .nth(1)?
                    .parse::<u64>()
                    .ok()
            })
            .sum();
        if out.status.success() && ran > 0 {
            println!("PASS {case}");
        } else {
            failed += 1;
            let why = if ran == 0 && out.status.success() {
                "no test ran".to_string()
            } else {
                text.lines()
                    .skip_while(|l| !l.contains("panicked at"))
                    .nth(1)
                    .or_else(|| text.lines().find(|l| l.starts_with("error")))
                    .unwrap_or("failed")
                    .trim()
                    .chars()
                    .take(300)
                    .collect()
            };
            println!("FAIL {case} {why}");
        }
    }
    if failed > 0 {
        bail!("{failed} fault case(s) failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_come_from_the_suites_output() {
        let mut out = String::new();
        for (_, pkg, target, name, exact) in CASES {
            let binary = match target {
                Some(t) => format!("tests/{t}.rs (target/debug/deps/{t}-0123)"),
                None => format!(
                    "unittests src/lib.rs (target/debug/deps/{}-0123)",
                    pkg.replace('-', "_")
                ),
            };
            let name = if *exact {
                name.to_string()
            } else {
                format!("{name}one")
            };
            out.push_str(&format!(
                "     Running {binary}\n\nrunning 1 test\ntest {name} ... ok\n"
            ));
        }
        assert_eq!(from_suite(&out), 0);
        // One failed, one missing: both counted.
        let (_, _, _, first, _) = CASES[0];
        let (_, _, _, second, _) = CASES[1];
        let bad = out
            .replace(
                &format!("test {first} ... ok"),
                &format!("test {first} ... FAILED"),
            )
            .replace(&format!("test {second} ... ok"), "");
        assert_eq!(from_suite(&bad), 2);
        // The same name in another test binary does not count.
        let elsewhere = out.replace("tests/faults.rs", "tests/other.rs");
        assert!(from_suite(&elsewhere) > 0);
    }
}
