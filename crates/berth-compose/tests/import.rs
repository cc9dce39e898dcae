//! A realistic production compose file → a berth config that `berth check` accepts, with
//! no secret copied into it.

use std::collections::BTreeMap;
use std::path::Path;

use berth_compose::{Input, import};

mod common;
use common::fixture;

#[test]
fn the_production_compose_file_imports_to_a_valid_config_without_secrets() {
    let (out, env, dir) = common::imported();
    let toml = &out.toml;
    // No secret value, only references.
    for v in env.values() {
        assert!(!toml.contains(v.as_str()), "secret copied:\n{toml}");
    }
    let cfg = berth_config::parse_str(&dir.join("berth.toml"), toml, &|k| env.get(k).cloned())
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(cfg.supervisor.project, "toogoodtogo");
    let order = cfg.start_order();
    let at = |s: &str| order.iter().position(|o| o == s).expect("in order");
    assert!(
        at("postgres") < at("bot") && at("redis") < at("worker"),
        "{order:?}"
    );
    assert_eq!(order.len(), 4);

    let pg = &cfg.services["postgres"];
    assert_eq!(
        pg.image, "postgres:16",
        "the default of ${{POSTGRES_VERSION:-16}}"
    );
    assert_eq!(pg.env["POSTGRES_PASSWORD"].template, "${POSTGRES_PASSWORD}");
    assert!(pg.env["POSTGRES_PASSWORD"].secret);
    assert_eq!(pg.memory, Some(512 << 20));
    assert_eq!(pg.cpus, Some(1.0));
    assert_eq!(pg.logs.max_files, 5);
    assert_eq!(pg.logs.max_size, 10 << 20);
    let probe = format!("{:?}", pg.probe);
    assert!(
        probe.contains("Postgres") && probe.contains("\"bot\""),
        "{probe}"
    );
    assert!(toml.contains("failures = 5") && toml.contains("start_timeout = \"30s\""));
    // The relative bind mount is made absolute.
    assert!(
        toml.contains(&format!("{}/backups:/backups", dir.display())),
        "{toml}"
    );

    let redis = &cfg.services["redis"];
    assert!(format!("{:?}", redis.probe).contains("Redis"), "{toml}");
    assert!(
        toml.contains("redis = { password = \"${REDIS_PASSWORD}\" }"),
        "{toml}"
    );
    assert_eq!(redis.memory, Some(256 << 20));
    assert!(
        toml.contains("--requirepass\", \"${REDIS_PASSWORD}\""),
        "{toml}"
    );
    assert!(toml.contains("/redis/redis.conf:/usr/local/etc/redis/redis.conf:ro"));

    let bot = &cfg.services["bot"];
    assert_eq!(bot.image, "registry.example.com/tgtg-bot:1.4.2");
    assert_eq!(bot.depends_on, ["postgres", "redis"]);
    assert!(bot.read_only);
    assert_eq!(bot.tmpfs, ["/tmp"]);
    assert_eq!(bot.pids_limit, Some(256));
    assert!(format!("{:?}", bot.probe).contains("Http"), "{toml}");
    assert_eq!(
        bot.env["DATABASE_URL"].template,
        "postgresql://bot:${POSTGRES_PASSWORD}@postgres:5432/bot"
    );
    assert_eq!(bot.env["LOG_LEVEL"].value, "info");
    assert_eq!(bot.env["SENTRY_DSN"].template, "${SENTRY_DSN}");
    assert_eq!(
        bot.env["TELEGRAM_BOT_TOKEN"].template, "${TELEGRAM_BOT_TOKEN}",
        "from env_file"
    );

    let worker = &cfg.services["worker"];
    assert!(format!("{:?}", worker.probe).contains("Exec"), "{toml}");
    let words: Vec<&str> = worker
        .command
        .iter()
        .flatten()
        .map(|w| w.value.as_str())
        .collect();
    assert_eq!(words, ["python", "-m", "bot.worker"]);
    let redis_cmd = &cfg.services["redis"].command.clone().unwrap_or_default();
    assert!(
        redis_cmd
            .iter()
            .any(|w| w.secret && w.value == env["REDIS_PASSWORD"])
    );

    // What did not map is said.
    let notes = out.notes.join("\n");
    assert!(notes.contains("container_name"), "{notes}");
    assert!(notes.contains("tmpfs: options"), "{notes}");
}

#[test]
fn short_forms_and_unknown_keys_are_reported() {
    let yaml = r#"
version: "3.8"
services:
  web:
    build: .
    ports: ["8080:80", "9000"]
    depends_on: [db, ghost]
    environment:
      MODE: ${MODE:-prod}
    privileged: true
  db:
    image: postgres:15
secrets:
  x: {}
"#;
    let env = BTreeMap::new();
    let out = import(&Input {
        yaml,
        dir: Path::new("/srv/app"),
        env: &env,
        env_file: None,
        project: "My App",
    })
    .expect("import");
    let notes = out.notes.join("\n");
    for want in [
        "top-level `secrets:`",
        "services.web.privileged: not supported",
        "services.web.build: built images are tagged web:<git revision>",
        "8080:80 listens on every address",
        "9000 (a random host port) left out",
        "unknown service ghost",
        "${MODE} is not in the env file: used its default \"prod\"",
    ] {
        assert!(notes.contains(want), "missing {want:?} in:\n{notes}");
    }
    assert!(out.toml.contains("project = \"my-app\""), "{}", out.toml);
    assert!(out.toml.contains("MODE = \"prod\""), "{}", out.toml);
    assert!(
        out.toml.contains("build = { context = \".\" }"),
        "{}",
        out.toml
    );
    berth_config::parse_str(Path::new("/srv/app/berth.toml"), &out.toml, &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{}", out.toml));
}

#[test]
#[ignore = "prints the import of the fixture, for reading"]
fn show() {
    let (yaml, env, dir) = fixture();
    let out = import(&Input {
        yaml: &yaml,
        dir: &dir,
        env: &env,
        env_file: None,
        project: "x",
    })
    .expect("import");
    println!("{}\n{}", out.toml, out.notes.join("\n"));
}

fn import_text(yaml: &str) -> Result<berth_compose::Imported, berth_compose::ImportError> {
    let env = BTreeMap::new();
    import(&Input {
        yaml,
        dir: Path::new("/tmp"),
        env: &env,
        env_file: None,
        project: "p",
    })
}

/// Issue 16, item 4: hostile compose files fail fast with a clear error, and a service
/// name that would break the TOML is left out with a note.
#[test]
fn hostile_compose_files_fail_fast_and_bad_names_are_left_out() {
    let started = std::time::Instant::now();
    let deep = format!("services: {}", "[".repeat(200_000));
    let e = import_text(&deep).expect_err("refused");
    assert!(e.to_string().contains("nested deeper than 64"), "{e}");
    let big = format!("services:\n  a:\n    image: x\n#{}\n", "x".repeat(2 << 20));
    let e = import_text(&big).expect_err("refused");
    assert!(
        e.to_string().contains("larger than any compose file"),
        "{e}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let out = import_text("services:\n  \"bad\\nname\":\n    image: x\n  good:\n    image: y\n")
        .expect("imported");
    assert!(
        out.notes
            .iter()
            .any(|n| n.contains("not a name berth accepts")),
        "{:?}",
        out.notes
    );
    berth_config::parse_str(Path::new("/tmp/berth.toml"), &out.toml, &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{}", out.toml));
    // Quoted brackets are text, not nesting.
    import_text(&format!(
        "services:\n  a:\n    image: x\n    command: \"{}\"\n",
        "[".repeat(100)
    ))
    .expect("a quoted [ is text");
}

#[test]
fn network_mode_service_maps_both_ways() {
    let yaml = r#"
services:
  net:
    image: pause:3
    ports: ["127.0.0.1:8000:8000"]
    networks: { default: { aliases: [bot, api, net, Bad.Name] }, other: { aliases: [api, worker, cache] } }
  bot:
    image: bot:1
    network_mode: "service:net"
  worker:
    image: bot:1
    network_mode: host
    networks: { default: { aliases: [cache] } }
"#;
    let out = import_text(yaml).expect("import");
    let notes = out.notes.join("\n");
    assert!(
        notes.contains(
            "services.worker.network_mode: \"host\": only \"service:NAME\" maps to berth"
        ),
        "{notes}"
    );
    let cfg = berth_config::parse_str(Path::new("/srv/app/berth.toml"), &out.toml, &|_| None)
        .unwrap_or_else(|e| panic!("{e}\n{}", out.toml));
    assert_eq!(cfg.services["bot"].network_of.as_deref(), Some("net"));
    assert_eq!(cfg.services["worker"].network_of, None);
    let back: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&berth_compose::export::compose(&cfg)).expect("yaml");
    assert_eq!(cfg.services["net"].aliases, ["bot", "api", "cache"]);
    assert!(
        cfg.services["worker"].aliases.is_empty(),
        "cache went to net"
    );
    for n in [
        "services.net.networks: alias \"Bad.Name\": not a name berth accepts",
        "services.net.networks: alias \"worker\": the name of service worker, which is not in net's network namespace",
        "services.worker.networks: alias \"cache\": an alias of another service too",
    ] {
        assert!(notes.contains(n), "{n}\n{notes}");
    }
    assert_eq!(back["services"]["bot"]["network_mode"], "service:net");
    assert!(back["services"]["bot"].get("ports").is_none());
    assert_eq!(
        back["services"]["net"]["networks"]["default"]["aliases"],
        serde_yaml_ng::from_str::<serde_yaml_ng::Value>("[bot, api, cache]").expect("yaml")
    );
}
