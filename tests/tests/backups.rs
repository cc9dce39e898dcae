//! Backups and restore on the real engine: round trip with the bot running, checksums,
//! a full disk, the schedule.

use std::process::Command;
use std::time::Duration;

use berth_tests::*;
use serde_json::Value;

const UP: Duration = Duration::from_secs(120);

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

fn backups_json(stack: &Stack) -> Vec<Value> {
    let out = stack.berth(&["backups", "--json"]);
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<Value>(&out.stdout)
        .expect("json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The demo stack plus a `[backup]` section writing to `dir`.
fn with_backup(stack: &Stack, dir: &str, schedule: &str) -> String {
    format!(
        "{}\n[backup]\nservice = \"postgres\"\nschedule = \"{schedule}\"\ndir = \"{dir}\"\nkeep = {{ daily = 7, weekly = 4, monthly = 6 }}\nredis = true\n",
        stack.demo_config("berth-demo/bot:1")
    )
}

#[test]
fn backup_and_restore_round_trip_with_the_bot_running() {
    let stack = Stack::new("roundtrip");
    stack.write_config(&with_backup(&stack, "backups", "03:30"));
    let mut d = stack.start();
    d.wait_healthy(UP);
    stack.psql(
        "CREATE TABLE notes (id int primary key, body text); INSERT INTO notes SELECT g, md5(g::text) FROM generate_series(1, 500) g",
    );

    let out = stack.berth(&["backup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let list = backups_json(&stack);
    assert_eq!(list.len(), 1);
    let b = &list[0];
    assert_eq!(b["id"], id.as_str());
    assert_eq!(b["verified"], true);
    let path = std::path::PathBuf::from(b["path"].as_str().expect("path"));
    assert_eq!(
        b["sha256"],
        sha256(&path).as_str(),
        "listed checksum is the file's"
    );
    assert_eq!(b["size"], std::fs::metadata(&path).expect("file").len());
    // Redis's snapshot is copied beside it, with its own checksum.
    let rdb = path.with_extension("rdb");
    assert_eq!(
        b["redis_file"],
        rdb.file_name().and_then(|f| f.to_str()).unwrap_or("")
    );
    assert_eq!(b["redis_sha256"], sha256(&rdb).as_str());
    assert!(
        std::fs::read(&rdb).expect("rdb").starts_with(b"REDIS"),
        "an RDB file"
    );
    let h = d.wait_health("backup in /health", UP, |h| h["backup"]["count"] == 1);
    assert!(h["backup"]["last_ok_at"].is_string() && h["backup"]["last_error"].is_null());

    // Lose data, then restore the latest backup while the bot runs.
    stack.psql("DELETE FROM notes WHERE id > 10; DROP TABLE users");
    let bot_started = stack.inspect_service("bot")["State"]["StartedAt"].clone();
    let out = stack.berth(&["restore", "latest"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "no --yes without a terminal refuses"
    );
    let out = stack.berth(&["restore", "latest", "--yes"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stack.psql("SELECT count(*), sum(id) FROM notes"),
        "500|125250"
    );
    assert_eq!(stack.psql("SELECT count(*) FROM users"), "0");
    // The bot was stopped for the restore and started again, healthy.
    assert_ne!(
        stack.inspect_service("bot")["State"]["StartedAt"],
        bot_started
    );
    let h = d.wait_healthy(UP);
    assert_eq!(
        h["services"]["bot"]["restarts"], 0,
        "a restore is not a crash"
    );
    let log = d.logs();
    assert!(
        log.contains("restore starting") && log.contains("stopping=bot"),
        "{log}"
    );
}

#[test]
fn a_full_disk_fails_the_backup_cleanly_and_keeps_older_ones() {
    let stack = Stack::new("diskfull");
    let dir = stack.dir.path().join("small");
    std::fs::create_dir_all(&dir).expect("dir");
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "mounting a small tmpfs needs root");
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(dir.clone());
    stack.write_config(&with_backup(&stack, "small", "03:30"));
    let d = stack.start();
    d.wait_health("healthy", UP, |h| h["status"] == "ok");

    // A small first backup fits.
    let out = stack.berth(&["backup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let first = backups_json(&stack);
    let first_path = std::path::PathBuf::from(first[0]["path"].as_str().expect("path"));
    let first_sum = sha256(&first_path);

    // Then the database outgrows the disk.
    stack.psql(
        "CREATE TABLE big AS SELECT g, md5(g::text) || md5((g * 7)::text) AS junk FROM generate_series(1, 30000) g",
    );
    let out = stack.berth(&["backup"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no space left on device while writing"),
        "{err}"
    );

    let files: Vec<String> = std::fs::read_dir(&dir)
        .expect("dir")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(
        files.iter().all(|f| !f.contains("partial")),
        "partial file left: {files:?}"
    );
    assert_eq!(
        files.len(),
        3,
        "only the first backup, its RDB copy and its metadata: {files:?}"
    );
    assert_eq!(
        sha256(&first_path),
        first_sum,
        "older backup byte-identical"
    );
    let h = d.wait_health("failure in /health", UP, |h| {
        h["backup"]["last_error"].is_string()
    });
    assert!(
        h["backup"]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("no space left")
    );
    assert_eq!(h["status"], "degraded");
    assert_eq!(h["backup"]["count"], 1);
}

#[test]
fn a_scheduled_backup_fires() {
    let stack = Stack::new("sched");
    // Every five seconds (six-field cron, seconds first).
    stack.write_config(&with_backup(&stack, "backups", "*/5 * * * * *"));
    let d = stack.start();
    d.wait_health("healthy", UP, |h| h["status"] == "ok");
    let h = d.wait_health("a scheduled backup", UP, |h| {
        h["backup"]["count"].as_u64() >= Some(1)
    });
    assert!(h["backup"]["last_ok_at"].is_string());
    let list = backups_json(&stack);
    assert!(list.iter().all(|b| b["verified"] == true), "{list:?}");
    assert!(d.logs().contains("backup done"));
}

#[test]
fn a_backup_missed_while_berth_was_down_runs_at_start() {
    let stack = Stack::new("missed");
    stack.write_config(&with_backup(&stack, "backups", "03:30"));
    let mut d = stack.start();
    d.wait_healthy(UP);
    let out = stack.berth(&["backup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d.kill9();
    // Pretend that backup is two days old: the 03:30 run since then was missed.
    let meta = stack.dir.path().join("backups").join(format!(
        "{}.json",
        String::from_utf8_lossy(&out.stdout).trim()
    ));
    let mut v: Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).expect("meta")).expect("json");
    let two_days_ago = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    let t = Command::new("date")
        .args([
            "-u",
            "-d",
            &format!(
                "@{}",
                two_days_ago
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("time")
                    .as_secs()
            ),
            "+%Y-%m-%dT%H:%M:%SZ",
        ])
        .output()
        .expect("date");
    v["created_at"] = Value::String(String::from_utf8_lossy(&t.stdout).trim().to_string());
    std::fs::write(&meta, v.to_string()).expect("write meta");

    let d2 = stack.start();
    d2.wait_health("the missed backup taken at start", UP, |h| {
        h["backup"]["count"] == 2
    });
    assert!(d2.logs().contains("was missed"), "{}", d2.logs());
    // The two-day-old newest backup had made the stack degraded; the fresh one clears it.
    d2.wait_health("fresh again", UP, |h| {
        h["backup"]["stale"] == false && h["status"] == "ok"
    });
}
