//! Off-site copies against a local S3-compatible server (moto) on 127.0.0.1: upload,
//! retention of its own (this project's copies only, under a shared prefix), failures
//! reported and retried without holding up local backups, client-side encryption and the
//! way back (fetch, restore).

use std::time::Duration;

use berth_tests::*;
use serde_json::Value;

const UP: Duration = Duration::from_secs(120);
const S3_SECRET: &str = "s3-secret-key-9c1d0e7f";

fn config(stack: &Stack, s3_port: u16) -> String {
    format!(
        r#"{sup}
[services.postgres]
image = "berth-demo/postgres:15"
env = {{ POSTGRES_USER = "bot", POSTGRES_DB = "bot", POSTGRES_PASSWORD = "${{POSTGRES_PASSWORD}}" }}
volumes = ["pgdata:/var/lib/postgresql/data"]
probe = {{ postgres = {{ user = "bot", database = "bot", password = "${{POSTGRES_PASSWORD}}" }}, interval = "1s" }}

[backup]
service = "postgres"
dir = "backups"

[backup.offsite]
endpoint = "http://127.0.0.1:{s3_port}"
bucket = "bot-backups"
region = "fra1"
prefix = "berth/"
access_key = "${{S3_KEY}}"
secret_key = "${{S3_SECRET}}"
keep = {{ daily = 1, weekly = 0, monthly = 0 }}
"#,
        sup = stack.supervisor()
    )
}

fn backup(stack: &Stack) -> String {
    let out = stack.berth(&["backup"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
fn backups_are_copied_off_site_with_their_own_retention_and_failures_are_retried() {
    let mut s3 = S3Server::start();
    s3.create_bucket("bot-backups");
    let stack = Stack::new("offsite");
    let folder = format!("berth/{}/", stack.project);
    // An old copy that off-site retention (one day) no longer keeps.
    s3.put(
        &format!("/bot-backups/{folder}20200101T000000Z.dump"),
        b"old",
    );
    s3.put(
        &format!("/bot-backups/{folder}20200101T000000Z.json"),
        b"{}",
    );
    let env = stack.dir.path().join("berth.env");
    let mut text = std::fs::read_to_string(&env).expect("env");
    text.push_str(&format!("S3_KEY=AKIATESTKEY\nS3_SECRET={S3_SECRET}\n"));
    std::fs::write(&env, text).expect("env");
    stack.write_config(&config(&stack, s3.port));
    let mut d = stack.start();
    d.wait_healthy(UP);
    stack.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");

    let id = backup(&stack);
    // Uploaded, and the 2020 copy removed by off-site retention.
    let want = [format!("{folder}{id}.dump"), format!("{folder}{id}.json")];
    wait_for("the copy and the retention", UP, || {
        (s3.keys("bot-backups", "berth/") == want).then_some(())
    });
    let h = d.wait_health("the pass recorded", UP, |h| {
        h["backup"]["offsite"]["count"] == 1 && h["backup"]["offsite"]["last_ok_at"].is_string()
    });
    assert_eq!(h["backup"]["offsite"]["last_error"], Value::Null, "{h}");
    assert_eq!(h["backup"]["offsite"]["pending"], 0, "{h}");
    // The copy is the backup, byte for byte.
    let get = |key: &str| s3.get_object("bot-backups", key, "AKIATESTKEY", S3_SECRET);
    let meta: Value = serde_json::from_slice(&get(&format!("{folder}{id}.json"))).expect("meta");
    assert_eq!(meta["offsite"]["project"], stack.project.as_str(), "{meta}");
    let dump = get(&format!("{folder}{id}.dump"));
    assert!(dump.len() > 1000, "a real dump: {} bytes", dump.len());
    assert_eq!(sha256_hex(&dump), meta["sha256"].as_str().unwrap_or(""));

    // The store goes away: local backups go on, the failure shows, nothing leaks.
    let port = s3.port;
    s3.stop();
    let id2 = backup(&stack);
    assert_ne!(id, id2);
    let h = d.wait_health("the failure reported", UP, |h| {
        h["backup"]["offsite"]["last_error"].is_string()
    });
    assert_eq!(
        h["backup"]["last_error"],
        Value::Null,
        "local backups are fine: {h}"
    );
    assert!(!h.to_string().contains(S3_SECRET));
    assert!(!d.logs().contains(S3_SECRET));

    // Back (empty, as moto keeps nothing): the retry copies the newest backup.
    let s3 = S3Server::start_on(port);
    s3.create_bucket("bot-backups");
    wait_for("copied after the retry", UP, || {
        s3.keys("bot-backups", "berth/")
            .contains(&format!("{folder}{id2}.json"))
            .then_some(())
    });
    let h = d.wait_health("the retry recorded", UP, |h| {
        h["backup"]["offsite"]["last_error"].is_null()
    });
    assert_eq!(h["backup"]["offsite"]["pending"], 0, "{h}");
}

/// The env file with the store's keys (and more lines).
fn add_env(stack: &Stack, more: &str) {
    let env = stack.dir.path().join("berth.env");
    let mut text = std::fs::read_to_string(&env).expect("env");
    text.push_str(&format!(
        "S3_KEY=AKIATESTKEY\nS3_SECRET={S3_SECRET}\n{more}"
    ));
    std::fs::write(&env, text).expect("env");
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Issue 16, item 7: several projects share a bucket and prefix. Retention removes this
/// project's old copy, and leaves another project's copies and the flat ones an older
/// berth made (whose project nobody can tell) alone.
#[test]
fn off_site_retention_deletes_only_this_projects_copies_under_a_shared_prefix() {
    let s3 = S3Server::start();
    s3.create_bucket("bot-backups");
    let stack = Stack::new("offsite-shared");
    let folder = format!("berth/{}/", stack.project);
    let mine_old = [
        format!("{folder}20200101T000000Z.dump"),
        format!("{folder}20200101T000000Z.json"),
    ];
    let theirs = [
        "berth/20200101T000000Z.dump",
        "berth/20200101T000000Z.json",
        "berth/other-bot/20200101T000000Z.dump",
        "berth/other-bot/20200101T000000Z.json",
        "berth/other-bot/29990101T000000Z.dump",
        "berth/other-bot/29990101T000000Z.json",
    ];
    for k in mine_old.iter().map(String::as_str).chain(theirs) {
        s3.put(&format!("/bot-backups/{k}"), b"{}");
    }
    add_env(&stack, "");
    stack.write_config(&config(&stack, s3.port));
    let mut d = stack.start();
    d.wait_healthy(UP);

    let id = backup(&stack);
    let want = [format!("{folder}{id}.dump"), format!("{folder}{id}.json")];
    wait_for("the copy and this project's retention", UP, || {
        (s3.keys("bot-backups", &folder) == want).then_some(())
    });
    let all = s3.keys("bot-backups", "berth/");
    for k in theirs {
        assert!(all.contains(&k.to_string()), "{k} was deleted: {all:?}");
    }
    let h = d.wait_health("the pass recorded", UP, |h| {
        h["backup"]["offsite"]["last_ok_at"].is_string()
    });
    assert_eq!(
        h["backup"]["offsite"]["count"], 1,
        "this project's copies: {h}"
    );
    assert!(
        d.logs().contains("no longer managed"),
        "the flat copies are pointed out: {}",
        d.logs()
    );
    let out = stack.berth(&["offsite", "list"]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        listed.starts_with(&id) && listed.contains("plain"),
        "{listed}"
    );
    assert_eq!(listed.lines().count(), 1, "{listed}");
}

/// Issue 16, item 7: with `encryption_key` the copies in the bucket are age files (no
/// pg_dump header anywhere), the metadata says so, and the way back works: `berth
/// offsite fetch` gives the dump back byte for byte, and `berth restore` the data. The
/// key shows nowhere.
#[test]
fn encrypted_copies_hold_no_plaintext_and_fetch_brings_them_back_for_restore() {
    let s3 = S3Server::start();
    s3.create_bucket("bot-backups");
    let stack = Stack::new("offsite-age");
    let keygen = std::process::Command::new(berth_bin())
        .args(["offsite", "keygen"])
        .output()
        .expect("keygen");
    assert!(keygen.status.success(), "{}", text(&keygen));
    let printed = String::from_utf8_lossy(&keygen.stdout).to_string();
    let line = printed
        .lines()
        .find(|l| l.starts_with("BACKUP_ENCRYPTION_KEY=AGE-SECRET-KEY-1"))
        .unwrap_or_else(|| panic!("a key line: {printed}"))
        .to_string();
    let key = line["BACKUP_ENCRYPTION_KEY=".len()..].to_string();
    let public = printed
        .split("public key ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("the public key: {printed}"))
        .to_string();
    assert!(public.starts_with("age1"), "{printed}");
    add_env(&stack, &format!("{line}\n"));
    stack.write_config(&format!(
        "{}encryption_key = \"${{BACKUP_ENCRYPTION_KEY}}\"\n",
        config(&stack, s3.port)
    ));
    let check = stack.berth(&["check"]);
    assert!(check.status.success(), "{}", text(&check));
    assert!(
        !text(&check).contains("warning"),
        "loopback http: {}",
        text(&check)
    );
    let mut d = stack.start();
    d.wait_healthy(UP);
    stack.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g");

    let id = backup(&stack);
    let folder = format!("berth/{}/", stack.project);
    let want = [
        format!("{folder}{id}.dump.age"),
        format!("{folder}{id}.json"),
    ];
    wait_for("the encrypted copy", UP, || {
        (s3.keys("bot-backups", &folder) == want).then_some(())
    });
    let get = |key: &str| s3.get_object("bot-backups", key, "AKIATESTKEY", S3_SECRET);
    let cipher = get(&want[0]);
    assert!(
        cipher.starts_with(b"age-encryption.org/v1\n"),
        "an age file"
    );
    assert!(
        !cipher.windows(5).any(|w| w == b"PGDMP"),
        "no pg_dump header in the copy"
    );
    let meta: Value = serde_json::from_slice(&get(&want[1])).expect("meta");
    assert_eq!(meta["offsite"]["encryption"], "age", "{meta}");
    assert_eq!(meta["offsite"]["recipient"], public.as_str(), "{meta}");
    assert_eq!(meta["offsite"]["dump"], format!("{id}.dump.age"), "{meta}");
    let backups = stack.dir.path().join("backups");
    let local = std::fs::read(backups.join(format!("{id}.dump"))).expect("local dump");
    assert!(
        local.starts_with(b"PGDMP"),
        "the local backup stays as it is"
    );
    assert_eq!(meta["sha256"].as_str(), Some(sha256_hex(&local).as_str()));

    // Into another folder: the dump, byte for byte.
    let elsewhere = stack.dir.path().join("fetched");
    let out = stack.berth(&[
        "offsite",
        "fetch",
        &id,
        "--dir",
        &elsewhere.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let fetched = std::fs::read(elsewhere.join(format!("{id}.dump"))).expect("fetched dump");
    assert!(fetched == local, "the fetched dump is the backup");
    assert!(elsewhere.join(format!("{id}.json")).exists());
    let leftovers: Vec<_> = std::fs::read_dir(&elsewhere)
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "no temp files: {leftovers:?}");

    // The server's disk is gone: fetch the newest copy into the backup folder, restore.
    for ext in ["dump", "json"] {
        std::fs::remove_file(backups.join(format!("{id}.{ext}"))).expect("rm");
    }
    let out = stack.berth(&["offsite", "fetch", "latest"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("berth restore {id}")),
        "{}",
        text(&out)
    );
    let again = stack.berth(&["offsite", "fetch", &id]);
    assert!(!again.status.success(), "a second fetch does not overwrite");
    assert!(
        text(&again).contains("is there already"),
        "{}",
        text(&again)
    );
    stack.psql("DELETE FROM t");
    let out = stack.berth(&["restore", &id, "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stack.psql("SELECT count(*) FROM t").trim(), "1000");

    let h = d.wait_health("the copies recorded", UP, |h| {
        h["backup"]["offsite"]["last_ok_at"].is_string()
    });
    for (what, t) in [
        ("/health", h.to_string()),
        ("the log", d.logs()),
        ("the metadata", meta.to_string()),
        ("fetch", text(&out)),
    ] {
        assert!(!t.contains(&key), "the key shows in {what}");
    }
}
