//! The chaos soak's fault schedule: a pure function of the seed and the run's length, so
//! a run that found a violation can be replayed with the same faults at the same offsets.

use std::fmt;
use std::time::Duration;

/// SplitMix64: small, well known, and the same on every machine (no dependency whose
/// algorithm could change under a version bump and silently change the schedules).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

/// The demo stack's services, in the order the schedule names them (`bot-net` holds
/// the bot's network namespace, as in the demo config).
pub const SERVICES: [&str; 5] = ["postgres", "redis", "telegram", "bot", "bot-net"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// kill -9 of the service's main process (a crash).
    Kill(&'static str),
    /// `docker stop` behind berth's back.
    DockerStop(&'static str),
    /// `docker rm -f` behind berth's back.
    DockerRm(&'static str),
    /// SIGSTOP of the bot's main process: a hang its probe must catch.
    HangBot,
    /// kill -9 of berth; the runner restarts it as systemd would.
    KillBerth,
    /// The engine's socket (a proxy in front of it) closed for this long, then restored.
    EngineCut(Duration),
    /// SIGHUP after a good change to the file (the bot's environment).
    ReloadGood,
    /// SIGHUP with a broken file, which is then fixed and reloaded after this long.
    ReloadBroken(Duration),
    /// `berth deploy bot` of the other good image (bot:1 ↔ bot:2), with or without backup.
    Deploy { backup: bool },
    /// `berth deploy bot berth-demo/bot:broken`: must be rolled back.
    DeployBroken,
    /// `berth backup`.
    Backup,
    /// `berth restore` of the run's newest good backup, at a quiet point.
    Restore,
    /// The backup folder's file system filled for this long.
    DiskFill(Duration),
}

impl Kind {
    /// The name faults are counted under in the report.
    pub fn name(&self) -> String {
        match self {
            Kind::Kill(s) => format!("kill-9 {s}"),
            Kind::DockerStop(s) => format!("docker-stop {s}"),
            Kind::DockerRm(s) => format!("docker-rm {s}"),
            Kind::HangBot => "sigstop bot".into(),
            Kind::KillBerth => "kill-9 berth".into(),
            Kind::EngineCut(_) => "engine-socket-cut".into(),
            Kind::ReloadGood => "sighup good".into(),
            Kind::ReloadBroken(_) => "sighup broken".into(),
            Kind::Deploy { .. } => "deploy bot:1<->bot:2".into(),
            Kind::DeployBroken => "deploy bot:broken".into(),
            Kind::Backup => "backup".into(),
            Kind::Restore => "restore".into(),
            Kind::DiskFill(_) => "disk-full".into(),
        }
    }

    /// How long after injection the stack must be up again (the fault's own duration
    /// included): past this, a stack still not up is a convergence violation.
    pub fn bound(&self) -> Duration {
        let s = Duration::from_secs;
        match self {
            Kind::Kill(_) | Kind::DockerStop(_) | Kind::DockerRm(_) => s(30),
            // The probe needs its failures, then the stop waits out the grace period.
            Kind::HangBot => s(60),
            Kind::KillBerth => s(30),
            Kind::EngineCut(d) => *d + s(30),
            Kind::ReloadGood => s(60),
            Kind::ReloadBroken(d) => *d + s(30),
            Kind::Deploy { .. } | Kind::DeployBroken => s(90),
            Kind::Backup => s(30),
            Kind::Restore => s(90),
            Kind::DiskFill(d) => *d + s(30),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kind::EngineCut(d) | Kind::ReloadBroken(d) | Kind::DiskFill(d) => {
                write!(f, "{} for {}s", self.name(), d.as_secs())
            }
            Kind::Deploy { backup } => write!(
                f,
                "{}{}",
                self.name(),
                if *backup { "" } else { " --no-backup" }
            ),
            _ => f.write_str(&self.name()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Offset from the start of the fault phase.
    pub at: Duration,
    pub kind: Kind,
}

/// Quiet time a restore needs before it (so the faults before it have settled) and after.
pub const RESTORE_QUIET_BEFORE: Duration = Duration::from_secs(40);
pub const RESTORE_QUIET_AFTER: Duration = Duration::from_secs(40);

/// The whole schedule for a run of `minutes`, drawn from `seed`. Gaps are random: mostly
/// 3–15 s, sometimes a burst (0.2–1.5 s) so faults land inside each other.
pub fn schedule(seed: u64, minutes: u64) -> Vec<Fault> {
    let mut rng = Rng::new(seed);
    let end = Duration::from_secs(minutes * 60);
    // Nothing in the last 20 s: the end check wants convergence after the last fault.
    let last = end.saturating_sub(Duration::from_secs(20));
    let mut out = Vec::new();
    let mut t = Duration::from_secs(rng.range(2, 6));
    while t < last {
        let w = rng.range(0, 99);
        let svc = SERVICES[rng.range(0, SERVICES.len() as u64 - 1) as usize];
        let kind = match w {
            0..=17 => Kind::Kill(svc),
            18..=25 => Kind::DockerStop(svc),
            26..=31 => Kind::DockerRm(svc),
            32..=37 => Kind::HangBot,
            38..=45 => Kind::KillBerth,
            46..=52 => Kind::EngineCut(Duration::from_secs(rng.range(2, 10))),
            53..=59 => Kind::ReloadGood,
            60..=64 => Kind::ReloadBroken(Duration::from_secs(rng.range(2, 8))),
            65..=74 => Kind::Deploy {
                backup: rng.chance(50),
            },
            75..=79 => Kind::DeployBroken,
            80..=89 => Kind::Backup,
            90..=92 => Kind::Restore,
            _ => Kind::DiskFill(Duration::from_secs(rng.range(3, 15))),
        };
        if kind == Kind::Restore {
            // A restore runs alone: quiet before it (the runner also waits for the faults
            // in flight to end) and after it.
            let before = out.last().map_or(Duration::ZERO, |f: &Fault| f.at);
            let at = t.max(before + RESTORE_QUIET_BEFORE);
            if at + RESTORE_QUIET_AFTER >= last {
                t += Duration::from_secs(1);
                continue;
            }
            out.push(Fault { at, kind });
            t = at + RESTORE_QUIET_AFTER;
            continue;
        }
        out.push(Fault { at: t, kind });
        let gap_ms = if rng.chance(15) {
            rng.range(200, 1500)
        } else {
            rng.range(3000, 15000)
        };
        t += Duration::from_millis(gap_ms);
    }
    out
}

/// The schedule as text, one fault a line (`target/chaos/schedule.txt`).
pub fn render(seed: u64, minutes: u64, faults: &[Fault]) -> String {
    let mut s = format!(
        "# cargo xtask chaos --minutes {minutes} --seed {seed}: {} faults\n",
        faults.len()
    );
    for (i, f) in faults.iter().enumerate() {
        s.push_str(&format!(
            "{i:4} +{:>8.1}s  {}\n",
            f.at.as_secs_f64(),
            f.kind
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        assert_eq!(schedule(42, 60), schedule(42, 60));
        assert_eq!(
            render(42, 60, &schedule(42, 60)),
            render(42, 60, &schedule(42, 60))
        );
        assert_ne!(schedule(42, 60), schedule(43, 60));
    }

    #[test]
    fn an_hour_has_over_300_faults_of_nearly_every_kind() {
        let mut all = std::collections::BTreeSet::new();
        for seed in [1, 2, 3, 1234] {
            let s = schedule(seed, 60);
            assert!(s.len() >= 300, "seed {seed}: {} faults", s.len());
            let names: std::collections::BTreeSet<String> =
                s.iter().map(|f| f.kind.name()).collect();
            // The rarest kinds (a docker rm of one service: about 4 an hour) may miss
            // an hour.
            assert!(names.len() >= 23, "seed {seed}: {names:?}");
            all.extend(names);
        }
        // 5 services (bot-net among them) × 3 container faults + 10 others.
        assert_eq!(all.len(), 25, "{all:?}");
    }

    #[test]
    fn restores_are_quiet_and_faults_are_in_order_and_end_early() {
        let s = schedule(7, 60);
        for w in s.windows(2) {
            assert!(w[0].at <= w[1].at);
            if w[1].kind == Kind::Restore {
                assert!(w[1].at - w[0].at >= RESTORE_QUIET_BEFORE);
            }
            if w[0].kind == Kind::Restore {
                assert!(w[1].at - w[0].at >= RESTORE_QUIET_AFTER);
            }
        }
        assert!(s.last().expect("faults").at <= Duration::from_secs(60 * 60 - 20));
    }

    #[test]
    fn splitmix_matches_its_reference_values() {
        // First outputs for seed 1234567 from the reference implementation.
        let mut r = Rng::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
    }
}
