//! Tiered backup retention: the newest verified backup of each of the last `daily` days,
//! `weekly` ISO weeks and `monthly` months that have verified backups, like
//! postgres-backup-local's 7/4/6; never the newest verified backup, never the newest
//! backup. Backups that failed verification fill no slot.

use std::collections::BTreeSet;

use berth_config::Keep;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: String,
    /// Local time of the backup, in seconds since the epoch (UTC seconds + UTC offset).
    pub local_secs: i64,
    pub verified: bool,
}

/// Ids to delete, oldest first.
pub fn to_delete(backups: &[Candidate], keep: Keep) -> Vec<String> {
    let mut sorted: Vec<&Candidate> = backups.iter().collect();
    // Newest first; ties by id so the result does not depend on input order.
    sorted.sort_by(|a, b| b.local_secs.cmp(&a.local_secs).then(b.id.cmp(&a.id)));
    let mut kept: BTreeSet<&str> = BTreeSet::new();
    let day = |c: &Candidate| c.local_secs.div_euclid(86_400);
    // 1970-01-01 was a Thursday: shifting by 3 days makes weeks run Monday to Sunday.
    let week = |c: &Candidate| (day(c) + 3).div_euclid(7);
    let month = |c: &Candidate| {
        let (y, m, _) = civil_from_days(day(c));
        y * 12 + i64::from(m)
    };
    for (n, bucket) in [
        (keep.daily, &day as &dyn Fn(&Candidate) -> i64),
        (keep.weekly, &week),
        (keep.monthly, &month),
    ] {
        let mut seen = BTreeSet::new();
        // Only verified backups fill slots: a week of failed verifications must not push
        // out the good ones. Unverified ones (but the newest backup) go first.
        for c in sorted.iter().filter(|c| c.verified) {
            if seen.len() >= n as usize {
                break;
            }
            if seen.insert(bucket(c)) {
                kept.insert(&c.id);
            }
        }
    }
    if let Some(newest) = sorted.first() {
        kept.insert(&newest.id);
    }
    if let Some(v) = sorted.iter().find(|c| c.verified) {
        kept.insert(&v.id);
    }
    let mut out: Vec<String> = sorted
        .iter()
        .filter(|c| !kept.contains(c.id.as_str()))
        .map(|c| c.id.clone())
        .collect();
    out.reverse();
    out
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400;
    /// 2026-11-26 (a Thursday) 03:30 local.
    const NOW: i64 = 20_783 * DAY + 3 * 3600 + 1800;

    fn c(id: &str, days_ago: i64, verified: bool) -> Candidate {
        Candidate {
            id: id.into(),
            local_secs: NOW - days_ago * DAY,
            verified,
        }
    }

    fn keep(daily: u32, weekly: u32, monthly: u32) -> Keep {
        Keep {
            daily,
            weekly,
            monthly,
        }
    }

    #[test]
    fn calendar() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_783), (2026, 11, 26));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }

    #[test]
    fn tables() {
        // (name, backups as (id, days ago, verified), keep, expected deletions)
        let daily_only: Vec<Candidate> = (0..10).map(|d| c(&format!("d{d}"), d, true)).collect();
        let cases: Vec<(&str, Vec<Candidate>, Keep, Vec<&str>)> = vec![
            (
                "nothing to do",
                vec![c("a", 0, true)],
                keep(7, 4, 6),
                vec![],
            ),
            (
                "seven dailies of ten",
                daily_only.clone(),
                keep(7, 0, 0),
                vec!["d9", "d8", "d7"],
            ),
            // Weekly keeps the newest of each of 2 weeks: Thu 26 (d0) and the week before
            // (d4 = Sun 22nd is the newest of Mon 16..Sun 22).
            (
                "two dailies, two weeklies",
                daily_only.clone(),
                keep(2, 2, 0),
                vec!["d9", "d8", "d7", "d6", "d5", "d3", "d2"],
            ),
            (
                "monthly reaches back",
                vec![
                    c("now", 0, true),
                    c("oct", 30, true),
                    c("sep", 60, true),
                    c("aug", 95, true),
                ],
                keep(1, 0, 3),
                vec!["aug"],
            ),
            (
                "two backups one day: newer kept",
                vec![c("late", 0, true), c("early", 0, true)],
                keep(1, 0, 0),
                vec!["early"],
            ),
            (
                "the newest verified backup is never deleted",
                vec![c("bad0", 0, false), c("bad1", 1, false), c("good", 2, true)],
                keep(1, 0, 0),
                vec!["bad1"],
            ),
            (
                "zero keep still keeps the newest",
                vec![c("a", 0, true), c("b", 1, true)],
                keep(0, 0, 0),
                vec!["b"],
            ),
        ];
        for (name, backups, k, want) in cases {
            assert_eq!(to_delete(&backups, k), want, "{name}");
        }
    }

    /// Issue 15, item 5: a week of failed verifications pushes out no verified backup.
    #[test]
    fn retention_fills_no_slot_with_backups_that_failed_verification() {
        // d00..d06 failed verification, d07..d13 are good.
        let b: Vec<Candidate> = (0..14).map(|d| c(&format!("d{d:02}"), d, d >= 7)).collect();
        // The newest (d00) stays for inspection; the other failures go; all seven good
        // ones fill the seven daily slots.
        assert_eq!(
            to_delete(&b, keep(7, 0, 0)),
            vec!["d06", "d05", "d04", "d03", "d02", "d01"]
        );
    }

    #[test]
    fn input_order_does_not_matter() {
        let mut b: Vec<Candidate> = (0..20)
            .map(|d| c(&format!("b{d:02}"), d * 3, d % 4 == 0))
            .collect();
        let first = to_delete(&b, keep(3, 2, 2));
        b.reverse();
        assert_eq!(to_delete(&b, keep(3, 2, 2)), first);
    }
}
