//! Which start goes first when a pass starts several services at once. The engine runs
//! starts side by side, but they compete: measured on the test machine, four at once put
//! the database's start at +1.2–1.6 s against +0.45 s alone, and its start-up is the
//! longest path of a cold start. So the service that took longest to come up last time
//! starts first, and the others follow as soon as its start has returned.

use std::collections::BTreeMap;
use std::time::Duration;

/// A service leads only if it took at least this long from its start to healthy last
/// time: below that, the others would wait about as long as the lead gains.
pub const LEAD_MIN: Duration = Duration::from_secs(1);

/// The most the others wait for the lead's start to return: a slow or hung start holds
/// up no one for longer.
pub const LEAD_WAIT: Duration = Duration::from_secs(3);

/// The service whose start goes first, if any. `starting`: the services a pass starts at
/// once (none of them waits for a dependency), each with how long it took from its
/// start to healthy the last time berth started it, if known. Ties go to the first name.
pub fn lead(starting: &BTreeMap<String, Option<Duration>>) -> Option<String> {
    if starting.len() < 2 {
        return None;
    }
    starting
        .iter()
        .filter_map(|(name, took)| took.filter(|t| *t >= LEAD_MIN).map(|t| (t, name)))
        .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)))
        .map(|(_, name)| name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_that_took_longest_to_come_up_starts_first() {
        let s = Duration::from_millis;
        type Row = (
            &'static str,
            Vec<(&'static str, Option<Duration>)>,
            Option<&'static str>,
        );
        let cases: Vec<Row> = vec![
            (
                "nothing known: all at once",
                vec![("a", None), ("b", None)],
                None,
            ),
            (
                "the slowest leads",
                vec![
                    ("db", Some(s(3_500))),
                    ("cache", Some(s(200))),
                    ("api", None),
                ],
                Some("db"),
            ),
            (
                "all quick: all at once",
                vec![("db", Some(s(900))), ("cache", Some(s(200)))],
                None,
            ),
            (
                "alone: nothing to order",
                vec![("db", Some(s(5_000)))],
                None,
            ),
            (
                "a tie goes to the first name",
                vec![("b", Some(s(2_000))), ("a", Some(s(2_000)))],
                Some("a"),
            ),
            (
                "exactly the minimum leads",
                vec![("db", Some(LEAD_MIN)), ("x", None)],
                Some("db"),
            ),
        ];
        for (what, starting, want) in cases {
            let starting = starting
                .into_iter()
                .map(|(n, t)| (n.to_string(), t))
                .collect();
            assert_eq!(lead(&starting).as_deref(), want, "{what}");
        }
    }
}
