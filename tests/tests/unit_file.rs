//! The shipped unit, read as systemd reads it: settings that would stop berth's own
//! outbound traffic are not there. (The systemd test in deployment.rs checks the same on
//! the unit's effective properties under a real systemd.)

use std::collections::BTreeMap;

fn unit() -> BTreeMap<String, Vec<String>> {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../systemd/berth.service"
    ))
    .expect("systemd/berth.service");
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with('[') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(k.trim().to_string())
                .or_default()
                .push(v.trim().to_string());
        }
    }
    out
}

/// Issue 16, item 1: alerts (Telegram, webhooks) and off-site copies (S3) leave the
/// droplet; an IP deny list, a private network or a missing address family would stop
/// them on a droplet while `berth alert test` from a shell still worked.
#[test]
fn the_unit_lets_berth_reach_what_its_config_names() {
    let u = unit();
    assert!(
        !u.contains_key("IPAddressDeny"),
        "IPAddressDeny blocks alerts, webhooks and S3"
    );
    assert!(!u.contains_key("IPAddressAllow"));
    assert!(
        u.get("PrivateNetwork")
            .is_none_or(|v| v.iter().all(|v| v == "no")),
        "PrivateNetwork leaves only loopback"
    );
    let families = u
        .get("RestrictAddressFamilies")
        .cloned()
        .unwrap_or_default()
        .join(" ");
    for f in ["AF_UNIX", "AF_INET", "AF_INET6"] {
        assert!(
            families.split_whitespace().any(|x| x == f),
            "{f} missing: {families}"
        );
    }
    // Still sandboxed.
    assert_eq!(u["ProtectSystem"], vec!["strict"]);
    assert_eq!(u["NoNewPrivileges"], vec!["yes"]);
}

/// Issue 17, item 1: pulls from private registries read root's Docker client config as
/// `docker pull` would; the unit hides homes but lets that folder through, read-only.
#[test]
fn the_unit_lets_berth_read_roots_docker_config_only() {
    let u = unit();
    assert_eq!(u["ProtectHome"], vec!["tmpfs"], "homes hidden");
    assert!(
        u.get("BindReadOnlyPaths")
            .is_some_and(|v| v.iter().any(|p| p == "-/root/.docker")),
        "root's Docker config readable: {:?}",
        u.get("BindReadOnlyPaths")
    );
}
