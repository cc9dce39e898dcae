//! Deploy decisions: what a deploy's record says, which image is in force, the names of
//! the containers a deploy juggles, and how to undo a deploy berth died in.
//!
//! A deploy (stop-first) renames the running container `<name>.previous`, creates the new
//! one as `<name>`, stops the old, starts the new and health-gates it; on failure the
//! previous comes back. `start-first` starts the new one as `<name>.next` first. The
//! rollback target of the deploy before is parked as `<name>.previous-old` meanwhile,
//! and `berth rollback` parks the current container as `<name>.rolling-back`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use berth_config::Config;
use serde::{Deserialize, Serialize};

/// The roles a container of a service plays, by its name's suffix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `<name>`: the service's container.
    Current,
    /// `<name>.previous`: stopped, the instant rollback target.
    Previous,
    /// `<name>.previous-old`: the rollback target of the deploy before, while one runs.
    Parked,
    /// `<name>.next`: a start-first deploy's new container until the old one stops.
    Next,
    /// `<name>.rolling-back`: the current container while `berth rollback` runs.
    RollingBack,
    /// `<name>-migrate`: a deploy's one-off migration container.
    Migrate,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Current,
        Role::Previous,
        Role::Parked,
        Role::Next,
        Role::RollingBack,
        Role::Migrate,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            Role::Current => "",
            Role::Previous => ".previous",
            Role::Parked => ".previous-old",
            Role::Next => ".next",
            Role::RollingBack => ".rolling-back",
            Role::Migrate => "-migrate",
        }
    }

    /// The container name of this role for the service container `name`.
    pub fn name(self, name: &str) -> String {
        format!("{name}{}", self.suffix())
    }

    /// The role of `container` among the containers of service container `name`.
    pub fn of(name: &str, container: &str) -> Option<Role> {
        let rest = container.strip_prefix(name)?;
        Role::ALL.into_iter().find(|r| r.suffix() == rest)
    }

    /// Whether `container` is one a deploy keeps beside service container `name`
    /// (`.previous`, `.next`, …): never the service's own.
    pub fn is_kept(name: &str, container: &str) -> bool {
        !matches!(Role::of(name, container), Some(Role::Current) | None)
    }
}

/// How a deploy (or rollback) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Under way: written before the first container changes.
    InFlight,
    /// The new image runs healthy.
    Deployed,
    /// Back on the previous image: a failed deploy, or `berth rollback`.
    RolledBack,
    /// Neither the new nor the old version came up healthy.
    Failed,
    /// Stopped before any container changed: the old version runs untouched.
    Aborted,
    /// berth died during it; undone at the next start-up.
    Interrupted,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::InFlight => "in_flight",
            Outcome::Deployed => "deployed",
            Outcome::RolledBack => "rolled_back",
            Outcome::Failed => "failed",
            Outcome::Aborted => "aborted",
            Outcome::Interrupted => "interrupted",
        })
    }
}

/// What started a deploy or rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    /// `berth deploy`, or a reload that changed the image.
    #[default]
    Deploy,
    /// `berth rollback`.
    Rollback,
    /// A change of the service's settings (a reload, the env file), applied as a gated
    /// replacement of its container.
    Change,
}

/// **API boundary** (state file and `/health`): one deploy or rollback.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub service: String,
    pub image: String,
    pub previous_image: String,
    pub at: String,
    pub outcome: Outcome,
    #[serde(default)]
    pub trigger: Trigger,
    pub duration_ms: u64,
    /// How long the service had no running container: old stopped → new healthy (or, on
    /// failure, the old one healthy again). None when the old one never stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interruption_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The backup this deploy took before changing anything: the only one its rollback
    /// may restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// The backup restored into the database while rolling back, if one was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored: Option<String>,
    /// When each step of the switch happened, in order (see [`Mark`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<Mark>,
}

/// **API boundary** (deploy history): one step of a deploy's switch and when berth saw it
/// happen, in milliseconds since the Unix epoch, so it lines up with engine events and
/// the Bot API's own log. Names: `stop_requested`, `stopped` (the engine's stop
/// returned), `start_requested`, `running` (the engine's start returned), `healthy`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Mark {
    pub step: String,
    pub unix_ms: u64,
}

impl Mark {
    pub fn new(step: &str, at: std::time::SystemTime) -> Self {
        Mark {
            step: step.to_string(),
            unix_ms: at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Override {
    pub image: String,
    /// The file's `image` when the deploy happened: when the file changes it, the file wins.
    pub file_image: String,
    /// A reload changed the file's image and its deploy has not finished: the old image
    /// stays in force until the deploy succeeds (resumed after a restart of berth).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// **API boundary** (`state_dir/deploys.json`): deployed images, history, the deploy
/// under way.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeployState {
    pub overrides: BTreeMap<String, Override>,
    pub history: Vec<Record>,
    /// The deploy under way, written before the first container changes: found here at
    /// start-up, it was interrupted (berth killed) and is recorded as such.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight: Option<Record>,
}

/// Records kept in the history.
pub const HISTORY: usize = 100;

impl DeployState {
    /// The file's config with deployed images in place; overrides the file has moved past
    /// are dropped (returns whether any was).
    pub fn apply(&mut self, mut cfg: Config) -> (Config, bool) {
        let before = self.overrides.len();
        self.overrides.retain(|svc, o| {
            cfg.services
                .get(svc)
                .is_some_and(|s| s.image == o.file_image)
        });
        for (svc, o) in &self.overrides {
            if let Some(s) = cfg.services.get_mut(svc) {
                s.image = o.image.clone();
            }
        }
        let dropped = self.overrides.len() != before;
        (cfg, dropped)
    }

    /// A reload: for each service whose image the file changed (and that does not already
    /// run it), the running image stays in force as a pending override until its deploy
    /// ends. Returns those services.
    pub fn reload(
        &mut self,
        old_file: &Config,
        running: &Config,
        new_file: &Config,
    ) -> Vec<String> {
        let mut changed = Vec::new();
        for (name, svc) in &new_file.services {
            let (Some(was), Some(ran)) = (old_file.services.get(name), running.services.get(name))
            else {
                continue;
            };
            if svc.image != was.image && svc.image != ran.image {
                self.overrides.insert(
                    name.clone(),
                    Override {
                        image: ran.image.clone(),
                        file_image: svc.image.clone(),
                        pending: true,
                    },
                );
                changed.push(name.clone());
            }
        }
        changed
    }

    /// Deploys a reload asked for and that have not finished: (service, image).
    pub fn pending(&self) -> Vec<(String, String)> {
        self.overrides
            .iter()
            .filter(|(_, o)| o.pending)
            .map(|(s, o)| (s.clone(), o.file_image.clone()))
            .collect()
    }

    /// A reload's deploy of `file_image` failed: the old image stays, no longer pending.
    /// Returns whether anything changed.
    pub fn settle(&mut self, service: &str, file_image: &str) -> bool {
        match self.overrides.get_mut(service) {
            Some(o) if o.pending && o.file_image == file_image => {
                o.pending = false;
                true
            }
            _ => false,
        }
    }

    /// A finished deploy or rollback: into the history (the newest [`HISTORY`]), and no
    /// longer in flight.
    pub fn finish(&mut self, record: Record) {
        self.history.push(record);
        self.in_flight = None;
        let n = self.history.len();
        if n > HISTORY {
            self.history.drain(..n - HISTORY);
        }
    }

    /// The latest record per service, for /health.
    pub fn latest(&self) -> BTreeMap<String, Record> {
        let mut out = BTreeMap::new();
        for r in &self.history {
            out.insert(r.service.clone(), r.clone());
        }
        out
    }

    /// The newest deploy that put `image` on `service`.
    pub fn deployed(&self, service: &str, image: &str) -> Option<&Record> {
        self.history.iter().rev().find(|r| {
            r.service == service
                && r.image == image
                && r.outcome == Outcome::Deployed
                && r.trigger == Trigger::Deploy
        })
    }
}

/// One engine call of a start-up recovery, on container names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop and remove (force).
    Remove(String),
    /// Stop at once (no grace: it is not the version that stays).
    Stop(String),
    Rename {
        from: String,
        to: String,
    },
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::Remove(n) => write!(f, "remove {n}"),
            Step::Stop(n) => write!(f, "stop {n}"),
            Step::Rename { from, to } => write!(f, "rename {from} to {to}"),
        }
    }
}

/// What undoes a deploy or rollback berth died in, so that one container runs under the
/// service's name (the old version) and the rollback target is where the last finished
/// deploy left it.
///
/// `name` is the service's container name, `present` the names of the project's
/// containers, `done` whether the config in force already names the deploy's image
/// (the deploy had finished, only its record had not been written).
pub fn recovery_steps(name: &str, present: &BTreeSet<String>, done: bool) -> Vec<Step> {
    let has = |r: Role| present.contains(&r.name(name));
    let mut steps = Vec::new();
    for r in [Role::Migrate, Role::Next] {
        if has(r) {
            steps.push(Step::Remove(r.name(name)));
        }
    }
    let rename = |from: Role, to: Role| Step::Rename {
        from: from.name(name),
        to: to.name(name),
    };
    if has(Role::RollingBack) {
        // `berth rollback` had parked the current container: it stays current.
        if has(Role::Current) {
            steps.push(Step::Stop(name.to_string()));
            steps.push(rename(Role::Current, Role::Previous));
        }
        steps.push(rename(Role::RollingBack, Role::Current));
    } else if !done && has(Role::Previous) {
        // The old container comes back under its name; the new one (if created) goes.
        if has(Role::Current) {
            steps.push(Step::Remove(name.to_string()));
        }
        steps.push(rename(Role::Previous, Role::Current));
        if has(Role::Parked) {
            steps.push(rename(Role::Parked, Role::Previous));
        }
    } else if !has(Role::Previous) && has(Role::Parked) {
        steps.push(rename(Role::Parked, Role::Previous));
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_read_back_from_names() {
        for r in Role::ALL {
            assert_eq!(Role::of("p-bot", &r.name("p-bot")), Some(r));
        }
        assert_eq!(Role::of("p-bot", "p-botany"), None);
        assert_eq!(Role::of("p-bot", "p-redis"), None);
        assert!(Role::is_kept("p-bot", "p-bot.previous"));
        assert!(!Role::is_kept("p-bot", "p-bot") && !Role::is_kept("p-bot", "p-botany"));
    }

    /// One row: the containers present, whether the deploy had finished → the steps.
    #[test]
    fn recovery_steps_table() {
        use Step::*;
        let n = "p-bot";
        let ren = |a: &str, b: &str| Rename {
            from: format!("{n}{a}"),
            to: format!("{n}{b}"),
        };
        let cases: Vec<(&str, Vec<&str>, bool, Vec<Step>)> = vec![
            ("nothing changed yet", vec![""], false, vec![]),
            (
                "killed while migrating",
                vec!["", "-migrate"],
                false,
                vec![Remove(format!("{n}-migrate"))],
            ),
            (
                "old renamed, new not created",
                vec![".previous"],
                false,
                vec![ren(".previous", "")],
            ),
            (
                "new created or started",
                vec!["", ".previous"],
                false,
                vec![Remove(n.into()), ren(".previous", "")],
            ),
            (
                "with an older rollback target parked",
                vec!["", ".previous", ".previous-old"],
                false,
                vec![
                    Remove(n.into()),
                    ren(".previous", ""),
                    ren(".previous-old", ".previous"),
                ],
            ),
            (
                "deploy had finished: the new one stays",
                vec!["", ".previous", ".previous-old"],
                true,
                vec![],
            ),
            (
                "finished, parked target never restored",
                vec!["", ".previous-old"],
                true,
                vec![ren(".previous-old", ".previous")],
            ),
            (
                "start-first: the new one was still .next",
                vec!["", ".next", ".previous-old"],
                false,
                vec![
                    Remove(format!("{n}.next")),
                    ren(".previous-old", ".previous"),
                ],
            ),
            (
                "rollback: current parked, previous not yet moved",
                vec![".previous", ".rolling-back"],
                false,
                vec![ren(".rolling-back", "")],
            ),
            (
                "rollback: previous already in place",
                vec!["", ".rolling-back"],
                false,
                vec![
                    Stop(n.into()),
                    ren("", ".previous"),
                    ren(".rolling-back", ""),
                ],
            ),
        ];
        for (what, present, done, want) in cases {
            let present: BTreeSet<String> = present.iter().map(|s| format!("{n}{s}")).collect();
            assert_eq!(recovery_steps(n, &present, done), want, "{what}");
        }
    }

    fn record(service: &str, image: &str, outcome: Outcome, trigger: Trigger) -> Record {
        Record {
            service: service.into(),
            image: image.into(),
            previous_image: String::new(),
            at: format!("2026-11-28T00:00:0{}Z", image.len() % 10),
            outcome,
            trigger,
            duration_ms: 0,
            interruption_ms: None,
            reason: None,
            backup: None,
            restored: None,
            steps: Vec::new(),
        }
    }

    #[test]
    fn history_keeps_the_newest_and_finds_the_deploy_of_an_image() {
        let mut d = DeployState {
            in_flight: Some(record("bot", "bot:2", Outcome::InFlight, Trigger::Deploy)),
            ..DeployState::default()
        };
        for _ in 0..HISTORY {
            d.finish(record("bot", "bot:1", Outcome::Deployed, Trigger::Deploy));
        }
        d.finish(record("bot", "bot:22", Outcome::Deployed, Trigger::Deploy));
        d.finish(record(
            "bot",
            "bot:1",
            Outcome::RolledBack,
            Trigger::Rollback,
        ));
        assert_eq!(d.history.len(), HISTORY);
        assert_eq!(d.in_flight, None);
        assert_eq!(d.latest()["bot"].outcome, Outcome::RolledBack);
        assert!(d.deployed("bot", "bot:22").is_some());
        assert!(d.deployed("bot", "bot:3").is_none());
    }

    #[test]
    fn records_read_the_first_rounds_files() {
        // deploys.json written before `trigger` existed.
        let old = r#"{"service":"bot","image":"b:2","previous_image":"b:1","at":"2026-11-27T10:00:00Z","outcome":"rolled_back","duration_ms":5}"#;
        let r: Record = serde_json::from_str(old).expect("reads");
        assert_eq!(r.outcome, Outcome::RolledBack);
        assert_eq!(r.trigger, Trigger::Deploy);
        assert!(serde_json::from_str::<Record>(&old.replace("rolled_back", "exploded")).is_err());
    }
}
