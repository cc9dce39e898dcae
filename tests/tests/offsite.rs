//! Off-site copies against a local S3-compatible server (moto) on 127.0.0.1: upload,
//! retention of its own, failures reported and retried without holding up local backups.

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
    // An old copy that off-site retention (one day) no longer keeps.
    s3.put("/bot-backups/berth/20200101T000000Z.dump", b"old");
    s3.put("/bot-backups/berth/20200101T000000Z.json", b"{}");

    let stack = Stack::new("offsite");
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
    let want = [format!("berth/{id}.dump"), format!("berth/{id}.json")];
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
    let meta: Value = serde_json::from_slice(&get(&format!("berth/{id}.json"))).expect("meta");
    let dump = get(&format!("berth/{id}.dump"));
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
            .contains(&format!("berth/{id2}.json"))
            .then_some(())
    });
    let h = d.wait_health("the retry recorded", UP, |h| {
        h["backup"]["offsite"]["last_error"].is_null()
    });
    assert_eq!(h["backup"]["offsite"]["pending"], 0, "{h}");
}
