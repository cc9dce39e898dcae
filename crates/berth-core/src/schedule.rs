//! The backup schedule: when the next backup is due, whether one was missed while berth
//! was down, and how far apart backups are (for staleness).

use std::time::{Duration, SystemTime};

use chrono::{DateTime, TimeZone};
use croner::Cron;

/// The first run strictly after `now`, and how long until then.
pub fn next_run<Tz: TimeZone>(cron: &Cron, now: &DateTime<Tz>) -> Option<(DateTime<Tz>, Duration)> {
    let next = cron.find_next_occurrence(now, false).ok()?;
    let wait = (next.clone() - now.clone()).to_std().unwrap_or_default();
    Some((next, wait))
}

/// Time between two scheduled runs (from the next two).
pub fn period<Tz: TimeZone>(cron: &Cron, now: &DateTime<Tz>) -> Option<Duration> {
    let a = cron.find_next_occurrence(now, false).ok()?;
    let b = cron.find_next_occurrence(&a, false).ok()?;
    (b - a).to_std().ok()
}

/// Whether a scheduled run came and went since the newest backup (`last`): then one is
/// taken at start-up. With no backup at all nothing was missed (a fresh install).
pub fn missed<Tz: TimeZone>(cron: &Cron, last: Option<SystemTime>, now: &DateTime<Tz>) -> bool {
    match (last, cron.find_previous_occurrence(now, true)) {
        (Some(last), Ok(prev)) => SystemTime::from(prev.to_utc()) > last,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).expect("time").to_utc()
    }

    fn cron(expr: &str) -> Cron {
        let s = match expr.split_once(':') {
            Some((h, m)) => berth_config::Schedule::Daily {
                hour: h.parse().expect("hour"),
                minute: m.parse().expect("minute"),
            },
            None => berth_config::Schedule::Cron(expr.into()),
        };
        s.cron().expect("cron")
    }

    #[test]
    fn next_run_and_period() {
        let daily = cron("03:30");
        let (next, wait) = next_run(&daily, &at("2026-11-28T02:00:00Z")).expect("next");
        assert_eq!(next, at("2026-11-28T03:30:00Z"));
        assert_eq!(wait, Duration::from_secs(5400));
        // Exactly at a run time, the next one is tomorrow's.
        let (next, _) = next_run(&daily, &at("2026-11-28T03:30:00Z")).expect("next");
        assert_eq!(next, at("2026-11-29T03:30:00Z"));
        assert_eq!(
            period(&daily, &at("2026-11-28T02:00:00Z")),
            Some(Duration::from_secs(86_400))
        );
        let quarter = cron("*/15 * * * *");
        assert_eq!(
            period(&quarter, &at("2026-11-28T02:07:00Z")),
            Some(Duration::from_secs(900))
        );
    }

    /// One row: newest backup, now → missed?
    #[test]
    fn missed_run_table() {
        let daily = cron("03:30");
        let t = |s: &str| Some(SystemTime::from(at(s)));
        let cases = [
            ("no backup yet", None, "2026-11-28T12:00:00Z", false),
            (
                "taken after today's run",
                t("2026-11-28T03:30:05Z"),
                "2026-11-28T12:00:00Z",
                false,
            ),
            (
                "yesterday's, today's run passed",
                t("2026-11-27T03:30:05Z"),
                "2026-11-28T12:00:00Z",
                true,
            ),
            (
                "yesterday's, today's run not yet",
                t("2026-11-27T03:30:05Z"),
                "2026-11-28T03:00:00Z",
                false,
            ),
            (
                "days old",
                t("2026-11-20T03:30:05Z"),
                "2026-11-28T03:00:00Z",
                true,
            ),
        ];
        for (what, last, now, want) in cases {
            assert_eq!(missed(&daily, last, &at(now)), want, "{what}");
        }
    }
}
