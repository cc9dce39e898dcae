//! Restart policy: how long to wait before starting a dead container again, and when a
//! service is crash-looping.
//!
//! A container that ran for at least `reset_after` is restarted at once; one that died
//! sooner waits `initial_backoff`, doubling with each quick death up to `max_backoff`.
//! [`CRASHLOOP_RESTARTS`] restarts within [`CRASHLOOP_WINDOW`] make a crash loop, which
//! ends when the restarts in the window drop below the mark.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use berth_config::RestartPolicy as Restart;

/// Restarts within this window that make a crash loop.
pub const CRASHLOOP_WINDOW: Duration = Duration::from_secs(600);
pub const CRASHLOOP_RESTARTS: usize = 5;

/// One service's restarts.
#[derive(Debug, Clone, Default)]
pub struct RestartHistory {
    /// Deaths in a row that came sooner than `reset_after` after a start.
    fast_failures: u32,
    /// Restarts within the crash-loop window, oldest first.
    recent: VecDeque<Instant>,
    /// Earliest time the next start may happen.
    not_before: Option<Instant>,
}

/// What to do about one death.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Wait this long before starting it again.
    pub delay: Duration,
    /// The service is crash-looping (counting this restart).
    pub crashloop: bool,
}

impl RestartHistory {
    /// The container died after running `uptime`: counts a restart and decides its delay.
    pub fn on_death(&mut self, uptime: Duration, policy: &Restart, now: Instant) -> Decision {
        let delay = if uptime >= policy.reset_after {
            self.fast_failures = 0;
            Duration::ZERO
        } else {
            self.fast_failures = self.fast_failures.saturating_add(1);
            let exp = self.fast_failures.saturating_sub(1).min(20);
            policy
                .initial_backoff
                .checked_mul(1 << exp)
                .unwrap_or(Duration::MAX)
                .min(policy.max_backoff)
        };
        // A delay too long for an instant still waits (validation bounds the durations).
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
        self.not_before = now
            .checked_add(delay)
            .or_else(|| now.checked_add(CENTURY))
            .or(Some(now));
        self.recent.push_back(now);
        Decision {
            delay,
            crashloop: self.crashloop(now),
        }
    }

    /// A hung service restarted by its probe: restarted at once, counted, but not a quick
    /// death (it ran long enough to be probed).
    pub fn on_probe_restart(&mut self, policy: &Restart, now: Instant) -> Decision {
        self.on_death(policy.reset_after, policy, now)
    }

    /// Whether the restarts of the last [`CRASHLOOP_WINDOW`] make a crash loop.
    pub fn crashloop(&mut self, now: Instant) -> bool {
        while self
            .recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > CRASHLOOP_WINDOW)
        {
            self.recent.pop_front();
        }
        self.recent.len() >= CRASHLOOP_RESTARTS
    }

    /// The backoff still to run at `now`, if any: the service must not be started before.
    pub fn backoff_until(&self, now: Instant) -> Option<Instant> {
        self.not_before.filter(|t| *t > now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Restart {
        Restart {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            reset_after: Duration::from_secs(60),
        }
    }

    /// One row per death: seconds since the first, seconds it ran → delay, crash loop.
    #[test]
    fn backoff_and_crash_loop_table() {
        type Row = (&'static str, Vec<(u64, u64)>, Vec<(u64, bool)>);
        let cases: Vec<Row> = vec![
            (
                "a long run restarts at once",
                vec![(0, 3600)],
                vec![(0, false)],
            ),
            (
                "quick deaths double the delay",
                vec![(0, 1), (2, 1), (5, 1), (10, 1)],
                vec![(1, false), (2, false), (4, false), (8, false)],
            ),
            (
                "healthy uptime forgets the backoff",
                vec![(0, 1), (2, 1), (100, 60), (200, 1)],
                vec![(1, false), (2, false), (0, false), (1, false)],
            ),
            (
                "five restarts within ten minutes are a crash loop",
                vec![(0, 70), (100, 70), (200, 70), (300, 70), (400, 70)],
                vec![(0, false), (0, false), (0, false), (0, false), (0, true)],
            ),
            (
                "spread over more than ten minutes they are not",
                vec![(0, 70), (200, 70), (400, 70), (601, 70), (800, 70)],
                vec![(0, false), (0, false), (0, false), (0, false), (0, false)],
            ),
            (
                "the delay stops at max_backoff",
                (0..12).map(|i| (i * 1000, 1)).collect(),
                [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
                    .into_iter()
                    .map(|d| (d, false))
                    .collect(),
            ),
        ];
        for (what, deaths, want) in cases {
            let t0 = Instant::now();
            let mut h = RestartHistory::default();
            let got: Vec<(u64, bool)> = deaths
                .iter()
                .map(|(at, ran)| {
                    let d = h.on_death(
                        Duration::from_secs(*ran),
                        &policy(),
                        t0 + Duration::from_secs(*at),
                    );
                    (d.delay.as_secs(), d.crashloop)
                })
                .collect();
            assert_eq!(got, want, "{what}");
        }
    }

    #[test]
    fn a_crash_loop_ends_when_the_window_empties() {
        let t0 = Instant::now();
        let mut h = RestartHistory::default();
        for i in 0..5 {
            h.on_death(Duration::ZERO, &policy(), t0 + Duration::from_secs(i));
        }
        assert!(h.crashloop(t0 + Duration::from_secs(10)));
        assert!(h.crashloop(t0 + Duration::from_secs(600)));
        assert!(!h.crashloop(t0 + Duration::from_secs(602)));
    }

    #[test]
    fn backoff_until_is_the_pending_delay() {
        let t0 = Instant::now();
        let mut h = RestartHistory::default();
        assert_eq!(h.backoff_until(t0), None);
        h.on_death(Duration::ZERO, &policy(), t0);
        assert_eq!(h.backoff_until(t0), Some(t0 + Duration::from_secs(1)));
        assert_eq!(h.backoff_until(t0 + Duration::from_secs(1)), None);
        // A probe restart is immediate.
        let d = h.on_probe_restart(&policy(), t0 + Duration::from_secs(5));
        assert_eq!(d.delay, Duration::ZERO);
    }

    #[test]
    fn huge_durations_saturate_instead_of_panicking() {
        let huge = Restart {
            initial_backoff: Duration::from_secs(u64::MAX / 2),
            max_backoff: Duration::MAX,
            reset_after: Duration::MAX,
        };
        let t0 = Instant::now();
        let mut h = RestartHistory::default();
        for i in 0..30 {
            let d = h.on_death(Duration::ZERO, &huge, t0 + Duration::from_secs(i));
            assert!(d.delay >= huge.initial_backoff);
        }
    }
}
