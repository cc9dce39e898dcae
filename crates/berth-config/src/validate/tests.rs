use super::*;

const GOOD: &str = r#"
[supervisor]
project = "tgtg"
health_listen = "127.0.0.1:7878"
state_dir = "state"

[services.postgres]
image = "postgres:16"
env = { POSTGRES_USER = "bot", POSTGRES_DB = "bot", POSTGRES_PASSWORD = "${PG_PASS}" }
volumes = ["pgdata:/var/lib/postgresql/data"]
memory = "512MiB"
cpus = 1.0
stop_grace_period = "30s"
probe = { postgres = { user = "bot", database = "bot", password = "${PG_PASS}" }, interval = "10s", timeout = "3s", failures = 3 }

[services.redis]
image = "redis:7"
command = ["redis-server", "/usr/local/etc/redis/redis.conf"]
volumes = ["redisdata:/data", "./redis/redis.conf:/usr/local/etc/redis/redis.conf:ro"]
probe = { redis = {} }

[services.bot]
image = "bot:1"
depends_on = ["postgres", "redis"]
env = { DATABASE_URL = "postgresql://bot:${PG_PASS}@postgres:5432/bot" }
read_only = true
tmpfs = ["/tmp"]
ports = ["8000:8000"]
probe = { http = { port = 8000, path = "/health" } }
logs = { max_size = "10MiB", max_files = 5 }
deploy = { migrate = ["bot", "migrate"], health_timeout = "60s" }

[backup]
service = "postgres"
schedule = "03:30"
keep = { daily = 7, weekly = 4, monthly = 6 }
"#;

fn vars(k: &str) -> Option<String> {
    (k == "PG_PASS").then(|| "hunter2".to_string())
}

fn parse_ok(src: &str) -> Config {
    match parse(Path::new("/etc/berth/berth.toml"), src, &vars, false) {
        Ok(c) => c,
        Err(e) => panic!("expected valid config, got:\n{e}"),
    }
}

/// Parses `src` and returns every error as `FILE:LINE:COL: message`.
fn errors(src: &str) -> Vec<String> {
    match parse(Path::new("b.toml"), src, &vars, false) {
        Ok(_) => panic!("expected errors"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

/// GOOD with `from` replaced by `to` (which must occur).
fn good_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "fixture lacks {from:?}");
    GOOD.replacen(from, to, 1)
}

fn line_of(src: &str, needle: &str) -> usize {
    src.lines()
        .position(|l| l.contains(needle))
        .expect("needle")
        + 1
}

#[test]
fn good_config_parses_with_defaults() {
    let c = parse_ok(GOOD);
    assert_eq!(c.supervisor.project, "tgtg");
    assert_eq!(c.supervisor.state_dir, PathBuf::from("/etc/berth/state"));
    assert_eq!(c.supervisor.on_stop, OnStop::Leave);
    assert_eq!(c.start_order(), vec!["postgres", "redis", "bot"]);
    let pg = &c.services["postgres"];
    assert_eq!(pg.memory, Some(512 * 1024 * 1024));
    assert_eq!(pg.stop_grace_period, Duration::from_secs(30));
    assert_eq!(pg.env["POSTGRES_PASSWORD"].value, "hunter2");
    assert!(pg.env["POSTGRES_PASSWORD"].secret);
    assert_eq!(pg.env["POSTGRES_PASSWORD"].display(), "${PG_PASS}");
    assert!(!pg.env["POSTGRES_USER"].secret);
    let redis = &c.services["redis"];
    assert_eq!(
        redis.volumes[1].source,
        VolumeSource::Bind(PathBuf::from("/etc/berth/redis/redis.conf"))
    );
    assert!(redis.volumes[1].read_only);
    let bot = &c.services["bot"];
    assert_eq!(bot.restart, RestartPolicy::default());
    assert_eq!(bot.ports[0].host_ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_eq!(bot.deploy.strategy, Strategy::StopFirst);
    let b = c.backup.clone().expect("backup");
    assert_eq!(b.database, "bot");
    assert_eq!(b.user, "bot");
    assert_eq!(b.dir, PathBuf::from("/etc/berth/state/backups"));
    assert_eq!(
        b.schedule,
        Schedule::Daily {
            hour: 3,
            minute: 30
        }
    );
    assert_eq!(c.volume_names(), vec!["tgtg-pgdata", "tgtg-redisdata"]);
}

#[test]
fn secrets_are_not_in_debug_output() {
    let c = parse_ok(GOOD);
    let dbg = format!("{c:?}");
    assert!(!dbg.contains("hunter2"), "{dbg}");
    assert!(c.services["postgres"].secrets().contains(&"hunter2"));
}

#[test]
fn unknown_keys_are_all_reported_with_location() {
    let src = good_with("read_only = true", "read_only = true\nreadonly = true")
        .replace("[backup]\n", "[backup]\nretain = 3\n");
    let errs = errors(&src);
    assert_eq!(errs.len(), 2, "{errs:?}");
    let l1 = line_of(&src, "readonly = true");
    let l2 = line_of(&src, "retain = 3");
    assert_eq!(
        errs[0],
        format!("b.toml:{l1}:1: unknown key `services.bot.readonly`")
    );
    assert_eq!(
        errs[1],
        format!("b.toml:{l2}:1: unknown key `backup.retain`")
    );
}

#[test]
fn unknown_key_in_inline_table_points_at_it() {
    let src = good_with(
        "probe = { redis = {} }",
        "probe = { redis = {}, intervall = \"5s\" }",
    );
    let errs = errors(&src);
    let l = line_of(&src, "intervall");
    let col = src.lines().nth(l - 1).unwrap().find("intervall").unwrap() + 1;
    assert_eq!(
        errs,
        vec![format!(
            "b.toml:{l}:{col}: unknown key `services.redis.probe.intervall`"
        )]
    );
}

#[test]
fn syntax_error_has_location() {
    let errs = errors("[supervisor]\nproject = = \"x\"\n");
    assert!(errs[0].starts_with("b.toml:2:"), "{errs:?}");
}

#[test]
fn type_error_has_location() {
    let src = good_with("cpus = 1.0", "cpus = \"lots\"");
    let errs = errors(&src);
    let l = line_of(&src, "cpus = \"lots\"");
    assert!(errs[0].starts_with(&format!("b.toml:{l}:")), "{errs:?}");
}

#[test]
fn bad_duration_and_size_are_both_reported() {
    let src = good_with(
        "stop_grace_period = \"30s\"",
        "stop_grace_period = \"30 parsecs\"",
    )
    .replacen("memory = \"512MiB\"", "memory = \"lots\"", 1);
    let errs = errors(&src);
    assert_eq!(errs.len(), 2, "{errs:?}");
    let lm = line_of(&src, "memory = \"lots\"");
    let ld = line_of(&src, "30 parsecs");
    assert!(
        errs[0].starts_with(&format!(
            "b.toml:{lm}:10: services.postgres.memory: invalid size"
        )),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with(&format!(
            "b.toml:{ld}:21: services.postgres.stop_grace_period: invalid duration"
        )),
        "{errs:?}"
    );
}

#[test]
fn unknown_depends_on() {
    let src = good_with(
        "depends_on = [\"postgres\", \"redis\"]",
        "depends_on = [\"postgres\", \"rediss\"]",
    );
    let errs = errors(&src);
    let l = line_of(&src, "rediss");
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(&format!(
            "b.toml:{l}:27: services.bot.depends_on: unknown service \"rediss\""
        )),
        "{errs:?}"
    );
}

#[test]
fn dependency_cycle() {
    let src = good_with(
        "image = \"redis:7\"",
        "image = \"redis:7\"\ndepends_on = [\"bot\"]",
    );
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("dependency cycle"), "{errs:?}");
    assert!(
        errs[0].contains("bot -> redis -> bot") || errs[0].contains("redis -> bot -> redis"),
        "{errs:?}"
    );
}

#[test]
fn self_dependency() {
    let src = good_with(
        "image = \"redis:7\"",
        "image = \"redis:7\"\ndepends_on = [\"redis\"]",
    );
    assert!(errors(&src)[0].contains("cannot depend on itself"));
}

#[test]
fn non_loopback_health_listen() {
    let src = good_with("127.0.0.1:7878", "0.0.0.0:7878");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].starts_with(
            "b.toml:4:17: supervisor.health_listen: 0.0.0.0:7878 is not a loopback address"
        ),
        "{errs:?}"
    );
}

#[test]
fn missing_variable() {
    let src = good_with("${PG_PASS}@postgres", "${NOT_SET}@postgres");
    let errs = errors(&src);
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0].contains("services.bot.env.DATABASE_URL: ${NOT_SET} is not set"),
        "{errs:?}"
    );
    assert!(!errs[0].contains("hunter2"));
}

#[test]
fn ports_default_to_loopback_and_need_literal_ip() {
    let c = parse_ok(&good_with("\"8000:8000\"", "\"0.0.0.0:8000:8000\""));
    assert_eq!(c.services["bot"].ports[0].host_ip.to_string(), "0.0.0.0");
    let errs = errors(&good_with("\"8000:8000\"", "\"myhost:8000:8000\""));
    assert!(errs[0].contains("is not an IP address"), "{errs:?}");
    let errs = errors(&good_with("\"8000:8000\"", "\":8000:8000\""));
    assert!(errs[0].contains("is not an IP address"), "{errs:?}");
    let errs = errors(&good_with("\"8000:8000\"", "\"8000\""));
    assert!(
        errs[0].contains("is not [IP:]HOST_PORT:CONTAINER_PORT"),
        "{errs:?}"
    );
}

#[test]
fn probe_needs_exactly_one_kind() {
    let errs = errors(&good_with(
        "probe = { redis = {} }",
        "probe = { interval = \"1s\" }",
    ));
    assert!(errs[0].contains("give exactly one of"), "{errs:?}");
}

#[test]
fn bad_schedule() {
    let errs = errors(&good_with("\"03:30\"", "\"25:00\""));
    assert!(errs[0].contains("backup.schedule"), "{errs:?}");
    let c = parse_ok(&good_with("\"03:30\"", "\"30 3 * * 1-5\""));
    assert_eq!(
        c.backup.unwrap().schedule,
        Schedule::Cron("30 3 * * 1-5".into())
    );
}

#[test]
fn env_file_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let env = dir.path().join("berth.env");
    std::fs::write(&env, "PG_PASS=fromfile\n").expect("write");
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cfg = dir.path().join("berth.toml");
    let src = good_with(
        "state_dir = \"state\"",
        "state_dir = \"state\"\nenv_file = \"berth.env\"",
    );
    std::fs::write(&cfg, &src).expect("write");
    let errs = crate::load(&cfg).expect_err("0644 env file");
    let l = line_of(&src, "env_file");
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert_eq!((errs.0[0].line, errs.0[0].col), (l, 12));
    assert!(
        errs.0[0]
            .message
            .contains("readable by group or others (mode 0644)")
    );

    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let c = crate::load(&cfg).expect("valid");
    assert_eq!(
        c.services["postgres"].env["POSTGRES_PASSWORD"].value,
        "fromfile"
    );
}

#[test]
fn spec_hash_tracks_container_shape_only() {
    let c = parse_ok(GOOD);
    let bot = c.services["bot"].clone();
    let h = bot.spec_hash();
    assert_eq!(h.len(), 16);
    let mut other = bot.clone();
    other.image = "bot:2".into();
    assert_ne!(other.spec_hash(), h);
    let mut other = bot.clone();
    other.env.insert("X".into(), Value::plain("1"));
    assert_ne!(other.spec_hash(), h);
    let mut other = bot.clone();
    other.probe = None;
    other.deploy.health_timeout = Duration::from_secs(1);
    assert_eq!(
        other.spec_hash(),
        h,
        "probe and deploy settings do not shape the container"
    );
    // A changed secret changes the hash, but the hash does not contain it.
    let c2 = parse(
        Path::new("/etc/berth/berth.toml"),
        GOOD,
        &|_| Some("other".into()),
        false,
    )
    .expect("valid");
    assert_ne!(c2.services["bot"].spec_hash(), h);
}

#[test]
fn shipped_configs_are_valid() {
    for (name, src) in [
        (
            "config/berth.toml",
            include_str!("../../../../config/berth.toml"),
        ),
        (
            "config/demo.toml",
            include_str!("../../../../config/demo.toml"),
        ),
    ] {
        let path = Path::new("/repo").join(name);
        if let Err(e) = parse(&path, src, &|_| Some("x".into()), false) {
            panic!("{name} is invalid:\n{e}");
        }
    }
}

#[test]
fn backup_redis_copy_names_a_service() {
    let c = parse_ok(&good_with("keep = {", "redis = true\nkeep = {"));
    assert_eq!(c.backup.expect("backup").redis.as_deref(), Some("redis"));
    let errs = errors(&good_with("keep = {", "redis = \"cache\"\nkeep = {"));
    assert!(
        errs[0].contains("backup.redis: no service \"cache\""),
        "{errs:?}"
    );
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    /// An edit of the good config: replace the byte range `at..at+len` with `with`.
    fn mutate(at: usize, len: usize, with: &str) -> String {
        let mut s = GOOD.to_string();
        let mut a = at % s.len();
        while !s.is_char_boundary(a) {
            a -= 1;
        }
        let mut b = (a + len).min(s.len());
        while !s.is_char_boundary(b) {
            b -= 1;
        }
        s.replace_range(a..b, with);
        s
    }

    fn check(src: &str) -> Result<(), TestCaseError> {
        // Never a panic; every error has a real location.
        if let Err(e) = parse(Path::new("f.toml"), src, &vars, false) {
            prop_assert!(!e.0.is_empty());
            for err in &e.0 {
                prop_assert!(err.line >= 1 && err.col >= 1, "{err}");
                prop_assert!(err.line <= src.lines().count().max(1) + 1, "{err}");
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn edits_of_a_good_config_never_panic(
            at in 0usize..4096,
            len in 0usize..40,
            with in prop::string::string_regex("[ -~\n\"'=\\[\\]{}$:.,#ü]{0,24}").expect("regex"),
        ) {
            check(&mutate(at, len, &with))?;
        }

        #[test]
        fn arbitrary_text_never_panics(src in "\\PC{0,300}") {
            check(&src)?;
        }
    }
}

fn alert_vars(k: &str) -> Option<String> {
    match k {
        "PG_PASS" => Some("hunter2".into()),
        "TELEGRAM_BOT_TOKEN" => Some("123:bot-token".into()),
        "HOOK" => Some("https://hooks.example/T0/secret".into()),
        _ => None,
    }
}

fn parse_alerts(section: &str) -> Result<Config, Vec<String>> {
    let src = format!("{GOOD}\n[alerts]\n{section}\n");
    parse(Path::new("b.toml"), &src, &alert_vars, false)
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

#[test]
fn alerts_default_to_the_bots_token_and_keep_secrets_secret() {
    let cfg = parse_alerts(
        "telegram = { chat_id = -100123 }\nwebhook = { url = \"${HOOK}\" }\ndown_after = \"30s\"",
    )
    .expect("valid");
    let debug = format!("{:?}", cfg.alerts);
    assert!(
        !debug.contains("bot-token") && !debug.contains("secret"),
        "{debug}"
    );
    let a = cfg.alerts.expect("alerts");
    let t = a.telegram.expect("telegram");
    assert_eq!(t.chat_id, "-100123");
    assert_eq!(t.token.value, "123:bot-token");
    assert!(t.token.secret);
    assert_eq!(t.api_base, "https://api.telegram.org");
    let w = a.webhook.expect("webhook");
    assert!(w.url.secret);
    assert_eq!(a.down_after, Duration::from_secs(30));
    assert_eq!(a.max_per_hour, 20);
    assert!(!a.deploy_succeeded);
}

#[test]
fn alert_mistakes_are_reported_with_location() {
    let e = parse_alerts(
        "telegram = { chat_id = \"\", token = \"123:literal\", api_base = \"ftp://x\" }\nwebhook = { url = \"not a url\" }\nmax_per_hour = 0",
    )
    .expect_err("invalid");
    let all = e.join("\n");
    for want in [
        "alerts.telegram.chat_id: empty",
        "alerts.telegram.token: a token is a secret",
        "alerts.telegram.api_base: \"ftp://x\" is not an http(s) URL",
        "alerts.webhook.url: not an http(s) URL",
        "alerts.max_per_hour: must be at least 1",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
    assert!(e.iter().all(|l| l.starts_with("b.toml:")), "{all}");
    assert!(
        !all.contains("123:literal"),
        "the token is not echoed: {all}"
    );

    let e = parse_alerts("telegram = { chat_id = 1, colour = \"red\" }").expect_err("unknown key");
    assert!(
        e[0].contains("unknown key `alerts.telegram.colour`"),
        "{e:?}"
    );
    let e = parse_alerts("down_after = \"1m\"").expect_err("no channel");
    assert!(e[0].contains("give telegram"), "{e:?}");
}

#[test]
fn offsite_keys_must_come_from_the_env_file() {
    let src = format!(
        "{GOOD}\n[backup.offsite]\nendpoint = \"https://fra1.digitaloceanspaces.com/\"\nbucket = \"b\"\nprefix = \"tgtg\"\naccess_key = \"${{PG_PASS}}\"\nsecret_key = \"${{PG_PASS}}\"\n"
    );
    let cfg = parse_ok(&src);
    let o = cfg.backup.and_then(|b| b.offsite).expect("offsite");
    assert_eq!(o.endpoint, "https://fra1.digitaloceanspaces.com");
    assert_eq!(o.prefix, "tgtg/");
    assert!(o.access_key.secret && o.path_style);
    assert_eq!(
        (o.keep.daily, o.keep.weekly, o.keep.monthly),
        (7, 4, 6),
        "the local keep"
    );

    let bad = src
        .replace(
            "access_key = \"${PG_PASS}\"",
            "access_key = \"AKIA-literal\"",
        )
        .replace("https://fra1", "ftp://fra1");
    let e = errors(&bad).join("\n");
    assert!(
        e.contains("backup.offsite.access_key: a key is a secret"),
        "{e}"
    );
    assert!(e.contains("backup.offsite.endpoint"), "{e}");
    assert!(!e.contains("AKIA-literal"), "{e}");
}

/// Issue 15, item 9: durations that would overflow an instant are refused at validation.
#[test]
fn durations_that_panic_are_refused() {
    for (from, to) in [
        (
            "health_timeout = \"60s\"",
            "health_timeout = \"300000000000y\"",
        ),
        (
            "stop_grace_period = \"30s\"",
            "stop_grace_period = \"31days\"",
        ),
        ("interval = \"10s\"", "interval = \"1000y\""),
    ] {
        let src = good_with(from, to);
        let errs = errors(&src);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].contains("longer than the longest berth accepts (30days)")
                || errs[0].contains("invalid duration"),
            "{errs:?}"
        );
    }
    let src = good_with(
        "stop_grace_period = \"30s\"",
        "stop_grace_period = \"30s\"\nrestart = { initial_backoff = \"300000000000y\" }",
    );
    assert_eq!(errors(&src).len(), 1);
    // The longest accepted is fine.
    parse_ok(&good_with(
        "health_timeout = \"60s\"",
        "health_timeout = \"30days\"",
    ));
}

/// Issue 15, item 6: `admin_socket` naming an existing file that is not a socket is an
/// error (berth would otherwise delete it at start-up); a socket or a free path is fine.
#[test]
fn the_admin_socket_path_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("precious.txt");
    std::fs::write(&file, "keep me").expect("write");
    let cfg = dir.path().join("berth.toml");
    let src = |sock: &str| {
        format!(
            "[supervisor]\nproject = \"p\"\nadmin_socket = {sock:?}\n[services.a]\nimage = \"a\"\n"
        )
    };
    std::fs::write(&cfg, src("precious.txt")).expect("write");
    let e = crate::load(&cfg).expect_err("a regular file is refused");
    let text = e.to_string();
    assert!(text.contains("berth.toml:3:"), "{text}");
    assert!(text.contains("exists and is not a socket"), "{text}");
    assert_eq!(std::fs::read_to_string(&file).expect("read"), "keep me");
    std::fs::write(&cfg, src("admin.sock")).expect("write");
    crate::load(&cfg).expect("a free path is fine");
    let _listener =
        std::os::unix::net::UnixListener::bind(dir.path().join("admin.sock")).expect("bind");
    crate::load(&cfg).expect("an existing socket is fine");
}

/// Issue 15, item 10: a reload cannot move berth to another project, address, state
/// folder or socket; the list says which.
#[test]
fn reloads_that_change_the_supervisor_table_need_a_restart() {
    let old = parse_ok(GOOD).supervisor;
    assert!(old.restart_needed(&old).is_empty());
    let new = parse_ok(&good_with("project = \"tgtg\"", "project = \"other\"")).supervisor;
    assert_eq!(
        old.restart_needed(&new),
        vec!["supervisor.project (tgtg -> other)"]
    );
    let new = parse_ok(&good_with(
        "health_listen = \"127.0.0.1:7878\"",
        "health_listen = \"127.0.0.1:7879\"\nadmin_socket = \"/tmp/x.sock\"",
    ))
    .supervisor;
    assert_eq!(
        old.restart_needed(&new),
        vec![
            "supervisor.health_listen (127.0.0.1:7878 -> 127.0.0.1:7879)",
            "supervisor.admin_socket (/run/berth/admin.sock -> /tmp/x.sock)"
        ]
    );
    let new = parse_ok(&good_with(
        "project = \"tgtg\"",
        "project = \"tgtg\"\non_stop = \"stop\"",
    ))
    .supervisor;
    assert!(
        old.restart_needed(&new).is_empty(),
        "on_stop applies on reload"
    );
}

/// Issue 16, item 3: values `check` accepted and the engine or berth then misread.
#[test]
fn validation_gaps_are_errors_with_their_location() {
    let cases = [
        (
            "image = \"bot:1\"",
            "image = \"bot:1 --privileged\"",
            "is not an image reference",
        ),
        (
            "image = \"bot:1\"",
            "image = \"bot\\n:1\"",
            "is not an image reference",
        ),
        (
            "DATABASE_URL = ",
            "\"A=B\" = \"x\", DATABASE_URL = ",
            "is not an environment variable name",
        ),
        (
            "DATABASE_URL = ",
            "\"\" = \"x\", DATABASE_URL = ",
            "is not an environment variable name",
        ),
        (
            "DATABASE_URL = ",
            "\"A\\nB\" = \"x\", DATABASE_URL = ",
            "is not an environment variable name",
        ),
        (
            "DATABASE_URL = ",
            "NUL = \"a\\u0000b\", DATABASE_URL = ",
            "contains a NUL byte",
        ),
        (
            "memory = \"512MiB\"",
            "memory = \"9EiB\"",
            "more than any host has",
        ),
        ("memory = \"512MiB\"", "memory = -1", "-1 is negative"),
        ("cpus = 1.0", "cpus = 1e300", "at most 1024"),
        (
            "max_size = \"10MiB\"",
            "max_size = 0",
            "must be more than 0",
        ),
        (
            "stop_grace_period = \"30s\"",
            "stop_grace_period = \"30s\"\nrestart = { initial_backoff = \"0s\" }",
            "must be more than 0",
        ),
    ];
    for (from, to, want) in cases {
        let src = good_with(from, to);
        let errs = errors(&src);
        assert!(
            errs.len() == 1 && errs[0].contains(want) && errs[0].starts_with("b.toml:"),
            "{to}: {errs:?}"
        );
    }
}

/// Issue 16, item 3: allowed but worth a word: the whole host or the Docker socket bound
/// in, a port published beyond loopback (Docker's published ports bypass ufw).
#[test]
fn risky_binds_and_public_ports_are_warned_about() {
    let c = parse_ok(&good_with(
        "ports = [\"8000:8000\"]",
        "ports = [\"0.0.0.0:8000:8000\"]\nvolumes = [\"/var/run/docker.sock:/var/run/docker.sock\"]",
    ));
    assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
    assert!(c.warnings.iter().any(|w| w.contains("bypass ufw")));
    assert!(
        c.warnings
            .iter()
            .any(|w| w.contains("the Docker socket is root on the host"))
    );
    // GOOD lives in /etc/berth with its state beside it: the shipped unit could not
    // write its backups (ProtectSystem=strict without ReadWritePaths).
    let w = parse_ok(GOOD).warnings;
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].contains("backup.dir: the shipped unit (ProtectSystem=strict) cannot write /etc/berth/state/backups"), "{w:?}");
    let ok = parse_ok(&GOOD.replace("state_dir = \"state\"", "state_dir = \"/var/lib/berth\""));
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
}

/// Issue 16, item 4: hostile configs: a 20,000-deep `depends_on` chain does not overflow
/// the stack (the cycle check is iterative), more than 1000 services are refused, and a
/// reverse chain of the most allowed is planned in linear rounds (it took minutes).
#[test]
fn hostile_configs_neither_crash_nor_hang() {
    let chain = |n: usize| {
        let mut src = String::from("[supervisor]\nproject = \"p\"\n");
        // s0 depends on s1, s1 on s2, ...: the reverse of name order (zero-padded).
        for i in 0..n {
            src.push_str(&format!("[services.s{i:05}]\nimage = \"a\"\n"));
            if i + 1 < n {
                src.push_str(&format!("depends_on = [\"s{:05}\"]\n", i + 1));
            }
        }
        src
    };
    let deep = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || errors(&chain(20_000)))
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert!(
        deep.iter().any(|e| e.contains("at most 1000")),
        "{:?}",
        &deep[..1]
    );
    let mut cyclic = chain(3000);
    cyclic.push_str("depends_on = [\"s00000\"]\n");
    let errs = std::thread::Builder::new()
        .stack_size(256 * 1024)
        .spawn(move || errors(&cyclic))
        .expect("thread")
        .join()
        .expect("no stack overflow");
    assert!(
        errs.iter().any(|e| e.contains("dependency cycle")),
        "{:?}",
        &errs[..2]
    );
    let c = parse_ok(&chain(1000));
    let order = c.start_order();
    assert_eq!(order.len(), 1000);
    assert_eq!(order.first().map(String::as_str), Some("s00999"));
    assert_eq!(order.last().map(String::as_str), Some("s00000"));
}

/// An age secret key as age-keygen prints it (upper case Bech32), from 32 bytes.
fn age_key(byte: u8) -> String {
    let hrp = bech32::Hrp::parse("AGE-SECRET-KEY-").expect("hrp");
    bech32::encode::<bech32::Bech32>(hrp, &[byte; 32])
        .expect("encode")
        .to_uppercase()
}

/// `[backup.offsite]` with `extra` lines, parsed with `key` as BACKUP_KEY in the env.
fn parse_offsite(endpoint: &str, extra: &str, key: &str) -> Result<Config, Vec<String>> {
    let src = format!(
        "{GOOD}\n[backup.offsite]\nendpoint = \"{endpoint}\"\nbucket = \"b\"\naccess_key = \"${{PG_PASS}}\"\nsecret_key = \"${{PG_PASS}}\"\n{extra}"
    );
    let lookup = |k: &str| match k {
        "BACKUP_KEY" => Some(key.to_string()),
        other => vars(other),
    };
    parse(Path::new("b.toml"), &src, &lookup, false)
        .map_err(|e| e.0.iter().map(|e| e.to_string()).collect())
}

/// Issue 16, item 7: `encryption_key` is an age secret key from the env file; a wrong
/// one is refused at FILE:LINE:COL without being quoted.
#[test]
fn offsite_encryption_key_is_an_age_secret_key_from_the_env_file() {
    let key = age_key(7);
    assert_eq!(key.len(), 74);
    let line = "encryption_key = \"${BACKUP_KEY}\"\n";
    let c = parse_offsite("https://fra1.digitaloceanspaces.com", line, &key).expect("valid");
    let o = c.backup.and_then(|b| b.offsite).expect("offsite");
    let k = o.encryption_key.expect("a key");
    assert!(k.secret);
    assert_eq!(k.value, key);
    assert!(
        !format!("{k:?}").contains(&key),
        "Debug prints the template"
    );
    // Lower case is the same key.
    assert!(parse_offsite("https://x", line, &key.to_lowercase()).is_ok());

    // Where the line is: GOOD, a blank line, the table header and five keys.
    let at = format!("b.toml:{}:18: ", GOOD.lines().count() + 7);
    let mut typo = key.clone().into_bytes();
    typo[40] = if typo[40] == b'Q' { b'P' } else { b'Q' };
    let typo = String::from_utf8(typo).expect("ascii");
    for (value, want) in [
        ("", "${BACKUP_KEY} is empty"),
        ("short-passphrase", "is not an age secret key"),
        (
            &key[..60],
            "is too short for an age secret key (60 characters, not 74)",
        ),
        (&format!("{key}A"), "is too long"),
        (&typo, "its checksum does not match"),
    ] {
        let e = parse_offsite("https://x", line, value).expect_err(want);
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with(&at), "{at} in {e:?}");
        assert!(
            e[0].contains("backup.offsite.encryption_key: ${BACKUP_KEY}"),
            "{e:?}"
        );
        assert!(e[0].contains(want), "{want:?} in {e:?}");
        assert!(e[0].contains("berth offsite keygen"), "{e:?}");
        if value.len() > 4 {
            assert!(!e[0].contains(value), "the value is not quoted: {e:?}");
        }
    }
    // Written in the file itself: a secret belongs in the env file.
    let e = parse_offsite("https://x", &format!("encryption_key = \"{key}\"\n"), "")
        .expect_err("literal");
    assert!(
        e[0].contains("backup.offsite.encryption_key: a key is a secret"),
        "{e:?}"
    );
    assert!(!e[0].contains(&key), "{e:?}");
}

/// Issue 16, item 7: plain http:// to anything but this machine is a warning (keys'
/// signatures and data in the clear); loopback (the tests, a local MinIO) and https
/// are not.
#[test]
fn offsite_http_endpoints_beyond_loopback_are_warned_about() {
    let offsite_warnings = |endpoint: &str, extra: &str| -> Vec<String> {
        parse_offsite(endpoint, extra, &age_key(1))
            .expect("valid")
            .warnings
            .into_iter()
            .filter(|w| w.contains("backup.offsite"))
            .collect()
    };
    let w = offsite_warnings("http://minio.internal:9000", "");
    assert_eq!(w.len(), 1, "{w:?}");
    let at = format!("b.toml:{}:12: ", GOOD.lines().count() + 3);
    assert!(w[0].starts_with(&at), "{at} in {w:?}");
    assert!(
        w[0].contains("plain http:// to minio.internal: every backup, the access key id and the signed requests"),
        "{w:?}"
    );
    assert!(w[0].contains("use https://"), "{w:?}");
    let w = offsite_warnings(
        "http://user@10.0.0.5/",
        "encryption_key = \"${BACKUP_KEY}\"\n",
    );
    assert!(
        w.len() == 1
            && w[0].contains("to 10.0.0.5:")
            && w[0].contains("the dumps themselves are encrypted"),
        "{w:?}"
    );
    assert_eq!(offsite_warnings("http://[2001:db8::1]:9000", "").len(), 1);
    for quiet in [
        "http://127.0.0.1:9000",
        "http://127.1.2.3",
        "http://localhost:9000/",
        "http://[::1]:9000",
        "https://fra1.digitaloceanspaces.com",
        "https://minio.internal:9000",
    ] {
        assert_eq!(offsite_warnings(quiet, ""), Vec::<String>::new(), "{quiet}");
    }
}

/// GOOD with a holder service `net` (which publishes the bot's port) and `line` added to
/// the bot (which publishes none), and `net_line` to `net`.
fn with_holder(line: &str, net_line: &str) -> String {
    good_with("ports = [\"8000:8000\"]\n", &format!("{line}\n")).replacen(
        "[backup]",
        &format!(
            "[services.net]\nimage = \"pause:3\"\nports = [\"8000:8000\"]\n{net_line}\n\n[backup]"
        ),
        1,
    )
}

/// `with_holder(line, net_line)` has an error at `at`'s line, column `col`, that begins
/// with `message`.
fn holder_error(line: &str, net_line: &str, at: &str, col: usize, message: &str) {
    let src = with_holder(line, net_line);
    let errs = errors(&src);
    let l = line_of(&src, at);
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("b.toml:{l}:{col}: {message}"))),
        "{errs:?}"
    );
}

#[test]
fn a_service_in_another_ones_network_namespace() {
    let cfg = parse_ok(&with_holder("network = \"service:net\"", ""));
    let bot = &cfg.services["bot"];
    assert_eq!(bot.network_of.as_deref(), Some("net"));
    // Joining is depending: the holder starts first.
    assert_eq!(bot.depends_on, ["postgres", "redis", "net"]);
    assert_eq!(cfg.start_order().last().map(String::as_str), Some("bot"));
    let plain = parse_ok(&with_holder("", ""));
    assert_ne!(bot.spec_hash(), plain.services["bot"].spec_hash());

    holder_error(
        "network = \"bridge\"",
        "",
        "bridge",
        11,
        "services.bot.network: \"bridge\": the one form is \"service:NAME\"",
    );
    holder_error(
        "network = \"service:nope\"",
        "",
        "nope",
        11,
        "services.bot.network: unknown service \"nope\"",
    );
    holder_error(
        "network = \"service:bot\"",
        "",
        "service:bot",
        11,
        "services.bot.network: a service cannot join itself",
    );
    holder_error(
        "network = \"service:net\"\nports = [\"9000:9000\"]",
        "",
        "9000:9000",
        10,
        "services.bot.ports: a service in net's network namespace publishes no ports of its own: publish them on net",
    );
    holder_error(
        "network = \"service:net\"",
        "network = \"service:redis\"",
        "service:net",
        11,
        "services.bot.network: net is in another service's network namespace itself: join that one",
    );
    holder_error(
        "network = \"service:net\"",
        "depends_on = [\"bot\"]",
        "service:net",
        11,
        "services.bot.network: net depends on bot, which cannot start before net holds its network",
    );
    let src = with_holder("network = \"service:net\"", "").replace(
        "health_timeout = \"60s\" }",
        "health_timeout = \"60s\", strategy = \"start-first\" }",
    );
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("services.bot.network: a start-first deploy would run two containers"),
        "{errs:?}"
    );
}

#[test]
fn a_holder_answers_to_the_name_of_the_service_in_its_namespace() {
    let cfg = parse_ok(&with_holder(
        "network = \"service:net\"",
        "aliases = [\"bot\", \"api\"]",
    ));
    assert_eq!(cfg.services["net"].aliases, ["bot", "api"]);
    assert!(cfg.services["bot"].aliases.is_empty());
    // An alias shapes the holder's endpoint: a new one makes a new container.
    let before = parse_ok(&with_holder("network = \"service:net\"", ""));
    assert_ne!(
        cfg.services["net"].spec_hash(),
        before.services["net"].spec_hash()
    );
    assert_eq!(
        cfg.services["bot"].spec_hash(),
        before.services["bot"].spec_hash()
    );

    // The bot is not in net's namespace: "bot" would name two addresses.
    holder_error(
        "",
        "aliases = [\"bot\"]",
        "aliases",
        12,
        "services.net.aliases: \"bot\" is the name of service bot, which is not in net's network namespace",
    );
    holder_error(
        "network = \"service:net\"\naliases = [\"b\"]",
        "",
        "\"b\"",
        12,
        "services.bot.aliases: a service in net's network namespace has no address of its own: give net the alias",
    );
    holder_error(
        "",
        "aliases = [\"Bad Name\"]",
        "Bad Name",
        12,
        "services.net.aliases: \"Bad Name\" is not a valid name",
    );
    holder_error(
        "",
        "aliases = [\"net\"]",
        "aliases = [\"net\"]",
        12,
        "services.net.aliases: \"net\" is already a name of net",
    );
    holder_error(
        "",
        "aliases = [\"tgtg-bot\"]",
        "tgtg-bot",
        12,
        "services.net.aliases: \"tgtg-bot\" is the name of bot's container",
    );
    let src = with_holder("", "aliases = [\"cache\"]").replacen(
        "[backup]",
        "[services.other]\nimage = \"x\"\naliases = [\"cache\"]\n\n[backup]",
        1,
    );
    let errs = errors(&src);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(
        errs[0].contains("services.other.aliases: \"cache\" is an alias of net too"),
        "{errs:?}"
    );
}
