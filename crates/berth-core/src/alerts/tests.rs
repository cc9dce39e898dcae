use super::*;
use crate::secrets::scrub;
use crate::snapshot::{Health, ServiceStatus};

/// The wall clock at the test's second `s`.
fn wall(s: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
}

fn rules() -> Rules {
    Rules {
        down_after: Duration::from_secs(60),
        repeat_after: Duration::from_secs(1800),
        max_per_hour: 20,
        deploy_succeeded: false,
    }
}

fn healthy() -> ServiceStatus {
    let mut s = ServiceStatus::new("bot:1");
    s.state = State::Running;
    s.health = Health::Healthy;
    s
}

fn snap(services: &[(&str, ServiceStatus)]) -> Snapshot {
    let mut s = Snapshot::new(wall(0));
    s.engine_connected = true;
    for (n, st) in services {
        s.services.insert((*n).to_string(), st.clone());
    }
    s
}

fn exited(restarts: u32, crashloop: bool) -> ServiceStatus {
    let mut s = ServiceStatus::new("bot:1");
    s.state = State::Exited;
    s.health = Health::Unhealthy;
    s.restarts = restarts;
    s.crashloop = crashloop;
    s
}

fn at(t0: Instant, s: u64) -> Instant {
    t0 + Duration::from_secs(s)
}

/// Runs the tracker over (second, snapshot) steps; returns (second, status, key) of every
/// message.
fn run(tr: &mut Tracker, t0: Instant, steps: &[(u64, Snapshot)]) -> Vec<(u64, Status, String)> {
    let mut out = Vec::new();
    for (s, snap) in steps {
        for m in tr.observe(snap, at(t0, *s), wall(*s)) {
            out.push((*s, m.status, m.key));
        }
    }
    out
}

#[test]
fn a_crash_loop_is_one_alert_and_one_resolution() {
    let t0 = Instant::now();
    let ok = snap(&[("bot", healthy())]);
    let mut tr = Tracker::new(rules(), &ok);
    let mut steps = vec![(0, ok.clone())];
    // Crashes, brief runs between them, then the crash loop, more of the same.
    for i in 1..40u64 {
        let st = if i % 3 == 0 {
            healthy()
        } else {
            exited(i as u32, i > 10)
        };
        steps.push((i, snap(&[("bot", st)])));
    }
    // Fixed: healthy from 39 s on (the last crash was at 38); resolved once it has stayed
    // so for SETTLE.
    for i in 40..70u64 {
        steps.push((i, ok.clone()));
    }
    let msgs = run(&mut tr, t0, &steps);
    assert_eq!(
        msgs,
        vec![
            (11, Status::Firing, "service:bot".to_string()),
            (49, Status::Resolved, "service:bot".to_string()),
        ]
    );
    assert!(tr.open_incidents().is_empty());
}

#[test]
fn a_short_outage_is_not_an_incident_a_long_one_is() {
    let t0 = Instant::now();
    let ok = snap(&[("bot", healthy())]);
    let down = snap(&[("bot", exited(1, false))]);
    let mut tr = Tracker::new(rules(), &ok);
    let msgs = run(
        &mut tr,
        t0,
        &[
            (0, down.clone()),
            (59, down.clone()),
            (61, ok.clone()),
            (80, ok.clone()),
        ],
    );
    assert!(msgs.is_empty(), "{msgs:?}");
    let msgs = run(
        &mut tr,
        t0,
        &[
            (100, down.clone()),
            (160, down.clone()),
            (161, down.clone()),
        ],
    );
    assert_eq!(msgs, vec![(160, Status::Firing, "service:bot".to_string())]);
    let m = tr.observe(&ok, at(t0, 170), wall(170));
    assert!(m.is_empty());
    let m = tr.observe(&ok, at(t0, 180), wall(180));
    assert_eq!(m.len(), 1);
    assert!(m[0].lines[0].contains("lasted"), "{m:?}");
}

#[test]
fn an_incident_back_soon_is_quiet_until_repeat_after_then_told_if_it_holds() {
    let t0 = Instant::now();
    let ok = snap(&[("bot", healthy())]);
    let down = snap(&[("bot", exited(1, true))]);
    let mut tr = Tracker::new(rules(), &ok);
    let msgs = run(
        &mut tr,
        t0,
        &[(0, down.clone()), (10, ok.clone()), (21, ok.clone())],
    );
    assert_eq!(msgs.len(), 2, "fired and resolved: {msgs:?}");
    // Back 5 minutes later: quiet, and its clearing is quiet too.
    let msgs = run(
        &mut tr,
        t0,
        &[(300, down.clone()), (310, ok.clone()), (330, ok.clone())],
    );
    assert!(msgs.is_empty(), "{msgs:?}");
    // Back again and still there when repeat_after has passed since the last message.
    let msgs = run(&mut tr, t0, &[(1000, down.clone()), (1800, down.clone())]);
    assert_eq!(
        msgs,
        vec![(1800, Status::Firing, "service:bot".to_string())]
    );
}

#[test]
fn without_the_engine_the_engine_is_the_one_incident() {
    let t0 = Instant::now();
    let ok = snap(&[("bot", healthy()), ("db", healthy())]);
    let mut tr = Tracker::new(rules(), &ok);
    // The bot has been down long enough to be told when the engine goes away.
    let bot_down = snap(&[("bot", exited(1, false)), ("db", healthy())]);
    let mut lost = snap(&[("bot", exited(1, false)), ("db", exited(0, false))]);
    lost.engine_connected = false;
    let back_ok = ok.clone();
    let msgs = run(
        &mut tr,
        t0,
        &[
            (0, bot_down.clone()),
            (60, bot_down.clone()),
            (100, lost.clone()),
            (159, lost.clone()),
            (160, lost.clone()),
            (200, lost.clone()),
        ],
    );
    assert_eq!(
        msgs,
        vec![
            (60, Status::Firing, "service:bot".to_string()),
            (160, Status::Firing, "engine".to_string()),
        ],
        "the db's unknown state is no incident, the bot's stays open"
    );
    assert_eq!(tr.open_incidents(), vec!["engine", "service:bot"]);
    // Back: both resolve once they have stayed clear.
    let msgs = run(&mut tr, t0, &[(300, back_ok.clone()), (320, back_ok)]);
    assert_eq!(
        msgs,
        vec![
            (320, Status::Resolved, "engine".to_string()),
            (320, Status::Resolved, "service:bot".to_string()),
        ]
    );
}

#[test]
fn the_hourly_budget_holds_back_and_counts() {
    let t0 = Instant::now();
    let mut r = rules();
    r.max_per_hour = 2;
    let ok = snap(&[]);
    let mut tr = Tracker::new(r, &ok);
    let mut bad = snap(&[]);
    bad.backup.last_error = Some("disk full".into());
    bad.config.error = Some("b.toml:1:1: nope".into());
    bad.engine_connected = false;
    let first = tr.observe(&bad, at(t0, 0), wall(0));
    assert_eq!(first.len(), 2, "{first:?}");
    let unclean = tr.event(unclean_start(), at(t0, 1));
    assert!(unclean.is_empty(), "over budget: held back");
    // An hour later the third incident (engine) goes out, with the count of what was held.
    let later = tr.observe(&bad, at(t0, 3600), wall(3600));
    assert_eq!(later.len(), 1, "{later:?}");
    assert_eq!(later[0].key, "engine");
    assert!(
        later[0]
            .lines
            .last()
            .is_some_and(|l| l.contains("1 other alert")),
        "{later:?}"
    );
}

#[test]
fn deploy_outcomes_are_told_once_and_old_ones_never() {
    let t0 = Instant::now();
    let record = |outcome: Outcome, at: &str| Record {
        service: "bot".into(),
        image: "bot:2".into(),
        previous_image: "bot:1".into(),
        at: at.into(),
        outcome,
        trigger: Trigger::Deploy,
        duration_ms: 1200,
        interruption_ms: Some(400),
        reason: Some("bot:2 did not pass its probe within 10s".into()),
        backup: None,
        restored: None,
        steps: Vec::new(),
    };
    let mut s = snap(&[("bot", healthy())]);
    s.deploy.insert(
        "bot".into(),
        record(Outcome::RolledBack, "2026-11-26T01:00:00Z"),
    );
    let mut tr = Tracker::new(rules(), &s);
    assert!(
        tr.observe(&s, at(t0, 1), wall(1)).is_empty(),
        "on record before start"
    );
    s.deploy.insert(
        "bot".into(),
        record(Outcome::RolledBack, "2026-11-26T02:00:00Z"),
    );
    let m = tr.observe(&s, at(t0, 2), wall(2));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].event, "deploy_rolled_back");
    assert!(m[0].lines[0].contains("did not pass its probe"), "{m:?}");
    assert!(tr.observe(&s, at(t0, 3), wall(3)).is_empty(), "told once");
    // Success is quiet unless asked for.
    s.deploy.insert(
        "bot".into(),
        record(Outcome::Deployed, "2026-11-26T03:00:00Z"),
    );
    assert!(tr.observe(&s, at(t0, 4), wall(4)).is_empty());
}

#[test]
fn probe_restarts_are_told_once_per_repeat_after() {
    let t0 = Instant::now();
    let mut st = healthy();
    let s0 = snap(&[("bot", st.clone())]);
    let mut tr = Tracker::new(rules(), &s0);
    st.probe_restarts = 1;
    let m = tr.observe(&snap(&[("bot", st.clone())]), at(t0, 1), wall(1));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].event, "probe_restart");
    st.probe_restarts = 2;
    assert!(
        tr.observe(&snap(&[("bot", st.clone())]), at(t0, 60), wall(60))
            .is_empty()
    );
    st.probe_restarts = 3;
    assert_eq!(
        tr.observe(&snap(&[("bot", st)]), at(t0, 1900), wall(1900))
            .len(),
        1
    );
}

#[test]
fn a_stale_backup_is_an_incident() {
    let t0 = Instant::now();
    let mut s = snap(&[]);
    s.backup.period = Some(Duration::from_secs(3600));
    s.backup.last_ok_at = Some(wall(0) - Duration::from_secs(2 * 3600));
    let mut tr = Tracker::new(rules(), &s);
    let m = tr.observe(&s, at(t0, 0), wall(0));
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].key, "backup-stale");
    s.backup.last_ok_at = Some(wall(1));
    assert!(tr.observe(&s, at(t0, 1), wall(1)).is_empty());
    assert_eq!(tr.observe(&s, at(t0, 20), wall(20)).len(), 1, "resolved");
}

#[test]
fn texts_say_what_happened_what_berth_did_and_where_to_look_without_secrets() {
    let t0 = Instant::now();
    let mut st = exited(7, true);
    st.oom_kills = 2;
    let s = snap(&[("bot", st)]);
    let mut tr = Tracker::new(rules(), &snap(&[]));
    let m = tr.observe(&s, at(t0, 0), wall(0));
    let text = m[0].text("tgtg");
    assert!(
        text.starts_with("🔴 berth tgtg: bot is in a crash loop"),
        "{text}"
    );
    assert!(text.contains("What happened: it keeps exiting (7 restarts so far, 2 out of memory)"));
    assert!(text.contains("What berth did: restarts it with growing backoff"));
    assert!(text.contains("berth logs bot -n 50"));
    let secrets = vec!["hunter2-long-secret".to_string(), "hunter2".to_string()];
    assert_eq!(
        scrub("password hunter2-long-secret and hunter2", &secrets),
        "password *** and ***"
    );
}

/// Issue 15, item 11: delivery retries are bounded, and a 4xx is not retried.
#[test]
fn alert_delivery_retries_are_bounded_and_a_4xx_is_final() {
    let cases = [
        (1, None, Redelivery::After(Duration::from_secs(1))),
        (2, Some(502), Redelivery::After(Duration::from_secs(2))),
        (3, Some(500), Redelivery::After(Duration::from_secs(4))),
        (7, None, Redelivery::After(Duration::from_secs(64))),
        (DELIVERY_ATTEMPTS, None, Redelivery::GiveUp),
        (1, Some(400), Redelivery::GiveUp),
        (1, Some(401), Redelivery::GiveUp),
        (1, Some(404), Redelivery::GiveUp),
        (1, Some(429), Redelivery::After(Duration::from_secs(1))),
        (1, Some(408), Redelivery::After(Duration::from_secs(1))),
    ];
    for (attempt, status, want) in cases {
        assert_eq!(redelivery(attempt, status), want, "{attempt} {status:?}");
    }
}

/// `berth stop bot`: held down on purpose for hours is no incident.
#[test]
fn a_service_held_down_on_purpose_raises_no_alert() {
    let t0 = Instant::now();
    let ok = snap(&[("bot", healthy())]);
    let mut held = ServiceStatus::new("bot:1");
    held.state = State::Stopped;
    held.health = Health::Unknown;
    held.held = true;
    let held = snap(&[("bot", held)]);
    let mut tr = Tracker::new(rules(), &ok);
    let steps: Vec<(u64, Snapshot)> = (0..7200).step_by(60).map(|s| (s, held.clone())).collect();
    let msgs = run(&mut tr, t0, &steps);
    assert!(msgs.is_empty(), "{msgs:?}");
}
