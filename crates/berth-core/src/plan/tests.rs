use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;

use super::*;

#[test]
fn a_container_whose_network_namespace_is_gone_gets_a_short_grace() {
    let s = Duration::from_secs;
    let dead = Reason::NetworkHolder {
        holder: "net".into(),
        dead: true,
    };
    let alive = Reason::NetworkHolder {
        holder: "net".into(),
        dead: false,
    };
    let cases = [
        (&dead, s(15), s(2)),
        (&dead, s(1), s(1)),
        (&alive, s(15), s(15)),
        (&Reason::Missing, s(15), s(15)),
        (&Reason::KeptRunning, s(30), s(30)),
        (&Reason::ServiceRemoved, s(15), s(15)),
    ];
    for (reason, configured, want) in cases {
        assert_eq!(reason.stop_grace(configured), want, "{reason:?}");
    }
}

/// A config with services given as (name, image, depends_on); a dependency written
/// `net:X` is `network = "service:X"` instead.
fn config(services: &[(&str, &str, &[&str])]) -> Config {
    let mut src = String::from("[supervisor]\nproject = \"p\"\n");
    for (name, image, deps) in services {
        let (nets, deps): (Vec<&str>, Vec<&str>) = deps.iter().partition(|d| d.starts_with("net:"));
        let deps: Vec<String> = deps.iter().map(|d| format!("{d:?}")).collect();
        src.push_str(&format!(
            "[services.{name}]\nimage = {image:?}\nvolumes = [\"{name}data:/data\"]\ndepends_on = [{}]\n",
            deps.join(", ")
        ));
        for n in nets {
            src.push_str(&format!("network = \"service:{}\"\n", &n[4..]));
        }
    }
    berth_config::parse_str(Path::new("t.toml"), &src, &|_| None).expect("valid test config")
}

fn stack() -> Config {
    config(&[
        ("postgres", "pg:16", &[]),
        ("redis", "redis:7", &[]),
        ("bot", "bot:1", &["postgres", "redis"]),
    ])
}

fn container(cfg: &Config, svc: &str, id: &str, running: bool) -> ObservedContainer {
    ObservedContainer {
        id: id.into(),
        name: cfg.container_name(svc),
        service: svc.into(),
        spec_hash: cfg.services[svc].spec_hash(),
        running,
        joined: None,
        started_at: None,
    }
}

fn infra(cfg: &Config) -> Observed {
    Observed {
        networks: [cfg.network_name()].into(),
        volumes: cfg.volume_names().into_iter().collect(),
        containers: vec![],
        kept: vec![],
    }
}

fn up(cfg: &Config) -> Observed {
    let mut o = infra(cfg);
    for (i, s) in cfg.services.keys().enumerate() {
        o.containers
            .push(container(cfg, s, &format!("id{i}"), true));
    }
    o
}

fn lines(actions: &[Action]) -> Vec<String> {
    actions.iter().map(|a| a.to_string()).collect()
}

#[test]
fn from_nothing_creates_everything_in_dependency_order() {
    let cfg = stack();
    let got = lines(&plan(
        &cfg,
        &Observed::default(),
        &Held::new(),
        &Rejected::new(),
    ));
    assert_eq!(
        got,
        vec![
            "create network p",
            "create volume p-botdata",
            "create volume p-postgresdata",
            "create volume p-redisdata",
            "create container for postgres: no container",
            "start postgres",
            "create container for redis: no container",
            "start redis",
            "create container for bot: no container",
            "start bot",
        ]
    );
}

#[test]
fn matching_running_stack_is_adopted_untouched() {
    let cfg = stack();
    assert_eq!(
        plan(&cfg, &up(&cfg), &Held::new(), &Rejected::new()),
        vec![]
    );
}

#[test]
fn stopped_container_with_same_spec_is_started_not_recreated() {
    let cfg = stack();
    let mut o = up(&cfg);
    o.containers[0].running = false; // bot
    assert_eq!(
        lines(&plan(&cfg, &o, &Held::new(), &Rejected::new())),
        vec!["start bot"]
    );
}

#[test]
fn held_service_is_left_alone() {
    let cfg = stack();
    let mut o = up(&cfg);
    o.containers.retain(|c| c.service != "bot");
    assert_eq!(
        plan(&cfg, &o, &["bot".to_string()].into(), &Rejected::new()),
        vec![],
        "not even created"
    );
}

#[test]
fn held_service_is_not_started() {
    let cfg = stack();
    let mut o = up(&cfg);
    o.containers[0].running = false;
    assert_eq!(
        plan(&cfg, &o, &["bot".to_string()].into(), &Rejected::new()),
        vec![]
    );
}

/// Issue 21: a spec change is a gated replacement of that service's container only.
#[test]
fn a_changed_spec_is_a_gated_replacement_of_only_that_service() {
    let old = stack();
    let new = config(&[
        ("postgres", "pg:16", &[]),
        ("redis", "redis:7", &[]),
        ("bot", "bot:2", &["postgres", "redis"]),
    ]);
    let got = plan(&new, &up(&old), &Held::new(), &Rejected::new());
    let from = old.services["bot"].spec_hash();
    let to = new.services["bot"].spec_hash();
    assert_eq!(
        got,
        vec![Action::ReplaceContainer {
            service: "bot".into(),
            id: "id0".into(),
            name: "p-bot".into(),
            reason: Reason::SpecChanged { from, to },
        }]
    );
    assert!(lines(&got)[0].contains("(gated: the old one stays until the new one is healthy"));
}

/// Issue 21: a change that was rolled back is not tried again until the file changes it
/// once more; a stopped old container is started instead.
#[test]
fn a_rejected_change_is_not_tried_again() {
    let old = stack();
    let new = config(&[
        ("postgres", "pg:16", &[]),
        ("redis", "redis:7", &[]),
        ("bot", "bot:2", &["postgres", "redis"]),
    ]);
    let rejected: Rejected = [("bot".to_string(), new.services["bot"].spec_hash())].into();
    assert_eq!(plan(&new, &up(&old), &Held::new(), &rejected), vec![]);
    let mut o = up(&old);
    for c in o.containers.iter_mut().filter(|c| c.service == "bot") {
        c.running = false;
    }
    assert_eq!(
        lines(&plan(&new, &o, &Held::new(), &rejected)),
        vec!["start bot"]
    );
    // Another change of the file is tried.
    let newer = config(&[
        ("postgres", "pg:16", &[]),
        ("redis", "redis:7", &[]),
        ("bot", "bot:3", &["postgres", "redis"]),
    ]);
    assert!(matches!(
        plan(&newer, &up(&old), &Held::new(), &rejected)[..],
        [Action::ReplaceContainer { .. }]
    ));
}

#[test]
fn removed_service_loses_its_container_but_not_its_volume() {
    let old = stack();
    let new = config(&[("postgres", "pg:16", &[]), ("bot", "bot:1", &["postgres"])]);
    let got = plan(&new, &up(&old), &Held::new(), &Rejected::new());
    // bot's spec is unchanged by losing a dependency: depends_on is not container shape.
    assert_eq!(
        lines(&got),
        vec!["remove container p-redis of redis: service no longer in the file"]
    );
}

#[test]
fn duplicates_are_removed_keeping_the_running_match() {
    let cfg = stack();
    let mut o = up(&cfg);
    let mut dup = container(&cfg, "redis", "zzz", false);
    dup.name = "p-redis-old".into();
    o.containers.push(dup);
    assert_eq!(
        lines(&plan(&cfg, &o, &Held::new(), &Rejected::new())),
        vec!["remove container p-redis-old of redis: duplicate container for the service"]
    );
}

/// Chaos soak, seed 768749185: a change whose stop and rollback failed in an engine outage
/// left the old bot running as `.previous`; the next pass started a new one beside it.
#[test]
fn a_kept_container_running_outside_a_deploy_is_stopped_before_any_start() {
    let cfg = stack();
    let mut o = up(&cfg);
    o.containers.retain(|c| c.service != "bot");
    let kept = |id: &str, suffix: &str, running: bool| {
        let mut c = container(&cfg, "bot", id, running);
        c.name.push_str(suffix);
        c
    };
    o.kept = vec![
        kept("old", ".previous", true),
        kept("older", ".previous-old", false),
    ];
    assert_eq!(
        lines(&plan(&cfg, &o, &Held::new(), &Rejected::new())),
        vec![
            "stop container p-bot.previous of bot: a deploy's kept container is running",
            "create container for bot: no container",
            "start bot",
        ]
    );
    // A deploy in progress runs its own containers: nothing to stop.
    assert!(plan(&cfg, &o, &Held::from(["bot".to_string()]), &Rejected::new()).is_empty());
    // Nor is a stopped one touched: it is `berth rollback`'s target.
    o.kept[0].running = false;
    assert_eq!(
        lines(&plan(&cfg, &o, &Held::new(), &Rejected::new())),
        vec!["create container for bot: no container", "start bot"]
    );
}

#[test]
fn missing_volume_and_network_are_created_even_when_containers_run() {
    let cfg = stack();
    let mut o = up(&cfg);
    o.networks.clear();
    o.volumes.remove("p-redisdata");
    assert_eq!(
        lines(&plan(&cfg, &o, &Held::new(), &Rejected::new())),
        vec!["create network p", "create volume p-redisdata"]
    );
}

/// A new container of `service`, joined (as the engine does at create) to the one its
/// network holder has now.
fn made(cfg: &Config, o: &Observed, service: &str, id: String, running: bool) -> ObservedContainer {
    let joined = cfg.services[service].network_of.as_ref().and_then(|h| {
        o.containers
            .iter()
            .find(|c| &c.service == h)
            .map(|c| c.id.clone())
    });
    ObservedContainer {
        joined,
        ..container(cfg, service, &id, running)
    }
}

/// Executes actions against an in-memory engine, as the real executor does.
fn apply(cfg: &Config, mut o: Observed, actions: &[Action]) -> Observed {
    let mut next_id = 1000;
    for a in actions {
        match a {
            Action::CreateNetwork { name } => {
                o.networks.insert(name.clone());
            }
            Action::CreateVolume { name } => {
                o.volumes.insert(name.clone());
            }
            Action::RemoveContainer { id, .. } => o.containers.retain(|c| &c.id != id),
            Action::StopContainer { id, .. } => {
                for c in o.kept.iter_mut().chain(o.containers.iter_mut()) {
                    if &c.id == id {
                        c.running = false;
                    }
                }
            }
            Action::CreateContainer { service, .. } => {
                next_id += 1;
                let c = made(cfg, &o, service, format!("new{next_id}"), false);
                o.containers.push(c);
            }
            Action::ReplaceContainer { service, id, .. } => {
                next_id += 1;
                o.containers.retain(|c| &c.id != id);
                let c = made(cfg, &o, service, format!("new{next_id}"), true);
                o.containers.push(c);
            }
            Action::StartContainer { service } => {
                next_id += 1;
                for c in o.containers.iter_mut().filter(|c| &c.service == service) {
                    c.running = true;
                    c.started_at = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(next_id));
                }
            }
        }
    }
    o
}

const NAMES: [&str; 4] = ["postgres", "redis", "bot", "worker"];
const IMAGES: [&str; 3] = ["a:1", "a:2", "b:1"];
const HOLDS: [&str; 4] = ["net:postgres", "net:redis", "net:bot", "net:worker"];

/// A config with a random subset of services (each may depend on earlier ones).
fn arb_config() -> impl Strategy<Value = Config> {
    proptest::collection::vec((any::<bool>(), 0..IMAGES.len(), any::<u8>()), NAMES.len()).prop_map(
        |picks| {
            let mut chosen: Vec<(&str, &str, Vec<&str>)> = Vec::new();
            for (i, (on, img, deps)) in picks.iter().enumerate() {
                if !on {
                    continue;
                }
                let d: Vec<&str> = chosen
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| deps & (1 << j) != 0)
                    .map(|(_, c)| c.0)
                    .collect();
                let mut d = d;
                // The last service may live in an earlier one's network namespace
                // (one that holds its own).
                if NAMES[i] == "worker" && deps & 0x80 != 0 {
                    let holder = chosen.iter().map(|c| c.0).find(|n| d.contains(n));
                    if let Some(h) = holder {
                        d.retain(|x| *x != h);
                        d.push(HOLDS[NAMES.iter().position(|n| *n == h).unwrap_or(0)]);
                    }
                }
                chosen.push((NAMES[i], IMAGES[*img], d));
            }
            let refs: Vec<(&str, &str, &[&str])> = chosen
                .iter()
                .map(|(n, i, d)| (*n, *i, d.as_slice()))
                .collect();
            config(&refs)
        },
    )
}

/// Whatever another config (or a crash) left behind: some containers, running or not,
/// possibly several per service.
fn arb_observed() -> impl Strategy<Value = Observed> {
    (
        arb_config(),
        any::<bool>(),
        proptest::collection::vec(
            (0..NAMES.len(), any::<bool>(), any::<bool>(), 0..8usize),
            0..6,
        ),
    )
        .prop_map(|(other, net, cs)| {
            let mut o = Observed::default();
            if net {
                o.networks.insert("p".into());
            }
            for (i, (svc, running, from_other, joined)) in cs.into_iter().enumerate() {
                let name = NAMES[svc];
                let hash = match other.services.get(name) {
                    Some(s) if from_other => s.spec_hash(),
                    _ => format!("stale{i}"),
                };
                let c = ObservedContainer {
                    id: format!("c{i}"),
                    name: format!("p-{name}"),
                    service: name.into(),
                    spec_hash: hash,
                    running,
                    // Some id of this list, or none.
                    joined: (joined < 6).then(|| format!("c{joined}")),
                    started_at: None,
                };
                // Every other one is a deploy's kept container.
                if i % 2 == 1 {
                    o.kept.push(ObservedContainer {
                        name: format!("p-{name}.previous"),
                        ..c
                    });
                } else {
                    o.containers.push(c);
                }
            }
            o
        })
}

proptest! {
    #[test]
    fn planning_after_applying_a_plan_yields_nothing(cfg in arb_config(), observed in arb_observed()) {
        let first = plan(&cfg, &observed, &Held::new(), &Rejected::new());
        let after = apply(&cfg, observed, &first);
        prop_assert_eq!(plan(&cfg, &after, &Held::new(), &Rejected::new()), vec![]);
        // And the result is exactly one running container per service.
        for svc in cfg.services.keys() {
            let n = after.containers.iter().filter(|c| &c.service == svc && c.running).count();
            prop_assert_eq!(n, 1, "service {}", svc);
        }
        prop_assert!(after.kept.iter().all(|c| !c.running), "a kept container runs");
        // And each container in another's network namespace joined the one it has.
        for (svc, s) in &cfg.services {
            let Some(h) = &s.network_of else { continue };
            let holder = after.containers.iter().find(|c| &c.service == h).map(|c| &c.id);
            let joiner = after.containers.iter().find(|c| &c.service == svc);
            prop_assert_eq!(joiner.and_then(|c| c.joined.as_ref()), holder, "{} joined", svc);
        }
        prop_assert_eq!(after.containers.len(), cfg.services.len());
    }

    #[test]
    fn a_container_in_another_ones_namespace_ends_up_joined_to_the_one_it_has(
        cs in proptest::collection::vec((any::<bool>(), any::<bool>(), any::<bool>(), 0..4usize), 0..5),
    ) {
        let cfg = config(&[("bot", "a:1", &[]), ("worker", "a:1", &["net:bot"])]);
        // Containers of both, running or not, current or stale, joined to any of them.
        let mut observed = infra(&cfg);
        for (i, (worker, running, current, joined)) in cs.into_iter().enumerate() {
            let svc = if worker { "worker" } else { "bot" };
            let mut c = container(&cfg, svc, &format!("c{i}"), running);
            if !current {
                c.spec_hash = "stale".into();
            }
            c.joined = worker.then(|| format!("c{joined}"));
            observed.containers.push(c);
        }
        let first = plan(&cfg, &observed, &Held::new(), &Rejected::new());
        let after = apply(&cfg, observed, &first);
        let bot = after.containers.iter().find(|c| c.service == "bot").map(|c| &c.id);
        let worker = after.containers.iter().find(|c| c.service == "worker");
        prop_assert_eq!(worker.and_then(|c| c.joined.as_ref()), bot);
        prop_assert_eq!(plan(&cfg, &after, &Held::new(), &Rejected::new()), vec![]);
    }

    #[test]
    fn dependencies_start_before_dependants(cfg in arb_config()) {
        let actions = plan(&cfg, &Observed::default(), &Held::new(), &Rejected::new());
        let pos = |s: &str| actions.iter().position(|a| matches!(a, Action::StartContainer { service } if service == s));
        for (name, svc) in &cfg.services {
            for d in &svc.depends_on {
                prop_assert!(pos(d) < pos(name), "{} before {}", d, name);
            }
        }
    }
}

#[test]
fn dependants_come_dependants_first() {
    let cfg = config(&[
        ("db", "pg", &[]),
        ("cache", "redis", &[]),
        ("api", "api", &["db"]),
        ("bot", "bot", &["api", "cache"]),
    ]);
    assert_eq!(dependants(&cfg, "db"), vec!["bot", "api"]);
    assert_eq!(dependants(&cfg, "cache"), vec!["bot"]);
    assert!(dependants(&cfg, "bot").is_empty());
}

/// A joiner's stop is cut short only when nothing holds its namespace any more; while a
/// changed holder's old container still runs, the joiner can finish what it does.
#[test]
fn a_joiner_gets_the_short_grace_only_when_its_namespace_is_gone() {
    let cfg = config(&[("net", "pause", &[]), ("bot", "bot:1", &["net:net"])]);
    let at = |s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    let holder = |running, since| ObservedContainer {
        started_at: since,
        ..container(&cfg, "net", "h1", running)
    };
    let bot = |joined: &str| ObservedContainer {
        joined: Some(joined.into()),
        started_at: at(11),
        ..container(&cfg, "bot", "b1", true)
    };
    let graces = |cs: Vec<ObservedContainer>| -> Vec<Duration> {
        let mut o = infra(&cfg);
        o.containers = cs;
        plan(&cfg, &o, &Held::new(), &Rejected::new())
            .into_iter()
            .filter_map(|a| match a {
                Action::StopContainer { id, reason, .. }
                | Action::RemoveContainer { id, reason, .. }
                    if id == "b1" =>
                {
                    Some(reason.stop_grace(Duration::from_secs(10)))
                }
                _ => None,
            })
            .collect()
    };
    let (short, full) = (Duration::from_secs(2), Duration::from_secs(10));
    // Restarted holder, stopped holder, holder made anew: the namespace is gone.
    assert_eq!(graces(vec![holder(true, at(12)), bot("h1")]), [short]);
    assert_eq!(graces(vec![holder(false, at(10)), bot("h1")]), [short]);
    assert_eq!(graces(vec![holder(true, at(10)), bot("h0")]), [short]);
    // The holder's spec changed: its old container, the bot's namespace, still runs.
    let changed = ObservedContainer {
        spec_hash: "older".into(),
        ..holder(true, at(10))
    };
    assert_eq!(graces(vec![changed, bot("h1")]), [full]);
}

#[test]
fn a_container_in_a_holders_namespace_follows_the_holders_container() {
    let cfg = config(&[("net", "pause", &[]), ("bot", "bot:1", &["net:net"])]);
    let at = |s: u64| Some(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
    let holder = |running, since| ObservedContainer {
        started_at: since,
        ..container(&cfg, "net", "h1", running)
    };
    let bot = |joined: &str, running, since| ObservedContainer {
        joined: Some(joined.into()),
        started_at: since,
        ..container(&cfg, "bot", "b1", running)
    };
    let run = |cs: Vec<ObservedContainer>| {
        let mut o = infra(&cfg);
        o.containers = cs;
        lines(&plan(&cfg, &o, &Held::new(), &Rejected::new()))
    };
    let why = "the network namespace it joined went with net's container (gone, restarted or about to start)";
    let stop = format!("stop container p-bot of bot: {why}");
    let remove = format!("remove container p-bot of bot: {why}");
    // Both up, the bot started after the holder: adopted.
    assert!(run(vec![holder(true, at(10)), bot("h1", true, at(11))]).is_empty());
    // Joined by name (created before the holder was): adopted too.
    assert!(run(vec![holder(true, at(10)), bot("p-net", true, at(11))]).is_empty());
    // The holder was started again after the bot (a crash restart, `berth restart`, a
    // rollback): the bot runs in the namespace that died, and is started again.
    assert_eq!(
        run(vec![holder(true, at(12)), bot("h1", true, at(11))]),
        [stop.as_str(), "start bot"]
    );
    // The holder stopped: the bot is stopped, and started after the holder.
    assert_eq!(
        run(vec![holder(false, at(10)), bot("h1", true, at(11))]),
        [stop.as_str(), "start net", "start bot"]
    );
    // Both stopped (a reboot): started in order, nothing made anew.
    assert_eq!(
        run(vec![holder(false, at(10)), bot("h1", false, at(11))]),
        ["start net", "start bot"]
    );
    // The holder was removed and made again: the bot's container joined the old one.
    assert_eq!(
        run(vec![holder(true, at(10)), bot("h0", true, at(11))]),
        [
            remove.as_str(),
            "create container for bot: no container",
            "start bot"
        ]
    );
    // No holder container at all.
    assert_eq!(
        run(vec![bot("h1", true, at(11))]),
        [
            remove.as_str(),
            "create container for net: no container",
            "start net",
            "create container for bot: no container",
            "start bot"
        ]
    );
    // A bot container made before `network` was added: the usual gated replacement.
    let plain = config(&[("net", "pause", &[]), ("bot", "bot:1", &[])]);
    let got = run(vec![
        holder(true, at(10)),
        container(&plain, "bot", "b0", true),
    ]);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].starts_with("replace container p-bot of bot: spec changed"),
        "{got:?}"
    );
    // A deploy holds the bot: the bot and its holder are left as they are.
    let mut o = infra(&cfg);
    o.containers = vec![holder(false, at(10)), bot("h0", true, at(11))];
    let held: Held = ["bot".to_string()].into();
    assert!(plan(&cfg, &o, &held, &Rejected::new()).is_empty());
    // A deploy holds the holder: the bot is left as it is.
    o.containers = vec![bot("h0", true, at(11))];
    let held: Held = ["net".to_string()].into();
    assert!(plan(&cfg, &o, &held, &Rejected::new()).is_empty());
}
