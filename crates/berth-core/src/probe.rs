//! Probe verdicts: a service is unhealthy, and restarted, after `failures` failed probes
//! in a row; one failure alone changes nothing yet.

use std::time::Duration;

use crate::snapshot::Health;

/// How long a starting service waits between probes until its first success, `elapsed`
/// after the wait began. While the last attempt's connection was refused (nothing
/// listens yet: it cost the container nothing) it tries again after 20 ms, for the first
/// 10 s, so a start is seen within 20 ms instead of 100 (a cold start waits for two in a
/// row: the database, then the bot). Otherwise every 100 ms: a server that listens but is
/// not ready yet forks a backend, logs a line or answers a request per attempt, and an
/// exec probe starts a process in the container.
pub fn starting_interval(refused: bool, elapsed: Duration) -> Duration {
    if refused && elapsed < Duration::from_secs(10) {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(100)
    }
}

/// Failed probes in a row of one running container.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProbeStreak {
    failures: u32,
}

/// What one probe result means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The service's health from now on; `None` keeps what it was.
    pub health: Option<Health>,
    /// Enough failures in a row: restart it (the streak starts over).
    pub restart: bool,
}

impl ProbeStreak {
    pub fn observe(&mut self, ok: bool, threshold: u32) -> Verdict {
        if ok {
            self.failures = 0;
            return Verdict {
                health: Some(Health::Healthy),
                restart: false,
            };
        }
        self.failures = self.failures.saturating_add(1);
        if self.failures >= threshold.max(1) {
            self.failures = 0;
            return Verdict {
                health: Some(Health::Unhealthy),
                restart: true,
            };
        }
        Verdict {
            health: None,
            restart: false,
        }
    }

    /// The container is not running or not the probe's to judge (held, replaced).
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_starting_service_is_probed_fast_while_nothing_listens() {
        let ms = Duration::from_millis;
        let cases = [
            (true, ms(0), ms(20)),
            (true, ms(9_999), ms(20)),
            (true, ms(10_000), ms(100)),
            (true, Duration::MAX, ms(100)),
            (false, ms(0), ms(100)),
            (false, ms(20_000), ms(100)),
        ];
        for (refused, elapsed, want) in cases {
            assert_eq!(
                starting_interval(refused, elapsed),
                want,
                "{refused} {elapsed:?}"
            );
        }
    }

    /// One row: threshold, results in order → (health change, restart) after each.
    #[test]
    fn verdicts_table() {
        use Health::*;
        type Row = (&'static str, u32, Vec<bool>, Vec<(Option<Health>, bool)>);
        let cases: Vec<Row> = vec![
            (
                "passing",
                3,
                vec![true, true],
                vec![(Some(Healthy), false), (Some(Healthy), false)],
            ),
            (
                "one failure changes nothing",
                3,
                vec![false, true],
                vec![(None, false), (Some(Healthy), false)],
            ),
            (
                "three in a row restart",
                3,
                vec![false, false, false],
                vec![(None, false), (None, false), (Some(Unhealthy), true)],
            ),
            (
                "a pass in between starts over",
                3,
                vec![false, false, true, false, false],
                vec![
                    (None, false),
                    (None, false),
                    (Some(Healthy), false),
                    (None, false),
                    (None, false),
                ],
            ),
            (
                "after a restart the streak starts over",
                2,
                vec![false, false, false, false],
                vec![
                    (None, false),
                    (Some(Unhealthy), true),
                    (None, false),
                    (Some(Unhealthy), true),
                ],
            ),
            (
                "threshold 0 acts as 1",
                0,
                vec![false],
                vec![(Some(Unhealthy), true)],
            ),
        ];
        for (what, threshold, results, want) in cases {
            let mut s = ProbeStreak::default();
            let got: Vec<_> = results
                .into_iter()
                .map(|ok| {
                    let v = s.observe(ok, threshold);
                    (v.health, v.restart)
                })
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn reset_forgets_failures() {
        let mut s = ProbeStreak::default();
        s.observe(false, 3);
        s.observe(false, 3);
        assert_eq!(s.failures(), 2);
        s.reset();
        assert!(!s.observe(false, 3).restart);
    }
}
