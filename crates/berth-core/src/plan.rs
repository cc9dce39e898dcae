//! The planner: `plan(desired, observed, held) -> Vec<Action>`, and the dependency
//! questions the daemon asks of a config.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, SystemTime};

use berth_config::Config;

/// Labels berth puts on everything it creates.
pub const LABEL_PROJECT: &str = "berth.project";
pub const LABEL_SERVICE: &str = "berth.service";
pub const LABEL_SPEC_HASH: &str = "berth.spec-hash";

/// What the engine has, as far as the planner cares.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub networks: BTreeSet<String>,
    pub volumes: BTreeSet<String>,
    /// The services' containers (carrying this project's label).
    pub containers: Vec<ObservedContainer>,
    /// Containers a deploy keeps beside a service's (`.previous`, `.previous-old`,
    /// `.next`, `.rolling-back`): never the service's, and never running once no deploy
    /// holds the service.
    pub kept: Vec<ObservedContainer>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedContainer {
    pub id: String,
    pub name: String,
    /// Value of the `berth.service` label.
    pub service: String,
    /// Value of the `berth.spec-hash` label.
    pub spec_hash: String,
    pub running: bool,
    /// The container whose network namespace it joins (`network = "service:H"`): its
    /// id, fixed when this one was created, or its name if none had it then.
    pub joined: Option<String>,
    /// When it last started, for the containers of a network holder and of the services
    /// in its namespace (None for the others, and when not known).
    pub started_at: Option<SystemTime>,
}

/// Why a container is (re)created or removed; shown by `berth plan` and in logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    Missing,
    SpecChanged {
        from: String,
        to: String,
    },
    ServiceRemoved,
    Duplicate,
    /// A deploy's kept container running while no deploy holds its service: with the
    /// service's own, two would run (two pollers, two servers on one volume).
    KeptRunning,
    /// It runs in, or joined, a network namespace of `holder`'s that is gone: the
    /// holder's container was removed, restarted or is about to start. A stopped one
    /// joins the holder's namespace of then when started; one that joined a container
    /// that is gone is made anew.
    NetworkHolder {
        holder: String,
        /// The namespace it runs in is gone (no running container holds it): it can
        /// reach nothing. Not so while a holder's old container still runs (a change of
        /// the holder replaces it).
        dead: bool,
    },
}

/// The most a container is given to stop when the network namespace it runs in is gone
/// (the container that held it stopped or was removed): it can reach nothing, so a bot's
/// "finish the poll in flight" would only wait out its whole grace period (10 s seen in
/// the soak), all of it downtime.
pub const DEAD_NAMESPACE_GRACE: Duration = Duration::from_secs(2);

impl Reason {
    /// How long a container stopped or removed for this reason is given before SIGKILL,
    /// when its service asks for `configured`.
    pub fn stop_grace(&self, configured: Duration) -> Duration {
        match self {
            Reason::NetworkHolder { dead: true, .. } => configured.min(DEAD_NAMESPACE_GRACE),
            _ => configured,
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Missing => write!(f, "no container"),
            Reason::SpecChanged { from, to } => write!(f, "spec changed ({from} -> {to})"),
            Reason::ServiceRemoved => write!(f, "service no longer in the file"),
            Reason::Duplicate => write!(f, "duplicate container for the service"),
            Reason::KeptRunning => write!(f, "a deploy's kept container is running"),
            Reason::NetworkHolder { holder, .. } => write!(
                f,
                "the network namespace it joined went with {holder}'s container (gone, restarted or about to start)"
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    CreateNetwork {
        name: String,
    },
    CreateVolume {
        name: String,
    },
    /// Stop (with the grace period) and remove.
    RemoveContainer {
        service: String,
        id: String,
        name: String,
        reason: Reason,
    },
    /// Stop (with the grace period), keep the container.
    StopContainer {
        service: String,
        id: String,
        name: String,
        reason: Reason,
    },
    /// Create the service's container; a `StartContainer` follows.
    CreateContainer {
        service: String,
        reason: Reason,
    },
    /// Replace the service's container (`id`, `name`) by one of the new spec, gated and
    /// reversible: the old one is kept (stopped) until the new one is healthy, and comes
    /// back if it is not.
    ReplaceContainer {
        service: String,
        id: String,
        name: String,
        reason: Reason,
    },
    /// Start the service's container (just created, or existing but stopped).
    StartContainer {
        service: String,
    },
}

impl Action {
    /// The service this action is about, if any.
    pub fn service(&self) -> Option<&str> {
        match self {
            Action::CreateNetwork { .. } | Action::CreateVolume { .. } => None,
            Action::RemoveContainer { service, .. }
            | Action::StopContainer { service, .. }
            | Action::CreateContainer { service, .. }
            | Action::ReplaceContainer { service, .. }
            | Action::StartContainer { service } => Some(service),
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::CreateNetwork { name } => write!(f, "create network {name}"),
            Action::CreateVolume { name } => write!(f, "create volume {name}"),
            Action::RemoveContainer {
                service,
                name,
                reason,
                ..
            } => write!(f, "remove container {name} of {service}: {reason}"),
            Action::StopContainer {
                service,
                name,
                reason,
                ..
            } => write!(f, "stop container {name} of {service}: {reason}"),
            Action::CreateContainer { service, reason } => {
                write!(f, "create container for {service}: {reason}")
            }
            Action::ReplaceContainer {
                service,
                name,
                reason,
                ..
            } => write!(
                f,
                "replace container {name} of {service}: {reason} (gated: the old one stays until the new one is healthy, and comes back if it is not)"
            ),
            Action::StartContainer { service } => write!(f, "start {service}"),
        }
    }
}

/// Services held by a deploy, rollback or restore in progress: never touched by a plan.
pub type Held = BTreeSet<String>;

/// Changes that were tried and rolled back: service → the spec hash that failed. The
/// plan does not try that spec again (until the file changes it once more); the old
/// container stays.
pub type Rejected = BTreeMap<String, String>;

/// Actions that bring `observed` to `desired`, in an order that is safe to run one by
/// one: network and volumes, then removals and stops of kept containers, then per
/// service (dependencies first) create/start/replace. Containers that match are
/// adopted: no action at all. A spec change is a gated replacement, unless that very
/// spec was `rejected` before.
pub fn plan(
    desired: &Config,
    observed: &Observed,
    held: &Held,
    rejected: &Rejected,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let net = desired.network_name();
    if !observed.networks.contains(&net) {
        actions.push(Action::CreateNetwork { name: net });
    }
    for v in desired.volume_names() {
        if !observed.volumes.contains(&v) {
            actions.push(Action::CreateVolume { name: v });
        }
    }

    let mut by_service: BTreeMap<&str, Vec<&ObservedContainer>> = BTreeMap::new();
    for c in &observed.containers {
        by_service.entry(c.service.as_str()).or_default().push(c);
    }

    let mut removals = Vec::new();
    let mut per_service = Vec::new();
    for (svc, found) in &by_service {
        if !desired.services.contains_key(*svc) {
            for c in found {
                removals.push(remove(c, Reason::ServiceRemoved));
            }
        }
    }
    for c in &observed.kept {
        if c.running && !held.contains(&c.service) {
            removals.push(Action::StopContainer {
                service: c.service.clone(),
                id: c.id.clone(),
                name: c.name.clone(),
                reason: Reason::KeptRunning,
            });
        }
    }
    // A holder is left as it is while a service in its namespace is held: a deploy of
    // that service creates and rolls back in the holder's namespace of now.
    let mut held = held.clone();
    for (name, svc) in &desired.services {
        if let Some(h) = &svc.network_of
            && held.contains(name)
        {
            held.insert(h.clone());
        }
    }
    let held = &held;
    // Per service planned so far: the container it keeps, and whether this plan starts
    // it (None: it gets a new one, or it is held and nobody knows).
    let mut outcome: BTreeMap<String, Option<Holder>> = BTreeMap::new();
    for name in desired.start_order() {
        // A held service is someone else's business for now (a deploy or restore in
        // progress): no create, start or removal.
        if held.contains(&name) {
            outcome.insert(name, None);
            continue;
        }
        let want = desired.services[&name].spec_hash();
        let mut found: Vec<ObservedContainer> = by_service
            .get(name.as_str())
            .map(|v| v.iter().map(|c| (*c).clone()).collect())
            .unwrap_or_default();
        if let Some(holder) = &desired.services[&name].network_of
            && let Some(h) = outcome.get(holder)
            && !held.contains(holder)
        {
            let reason = |dead| Reason::NetworkHolder {
                holder: holder.clone(),
                dead,
            };
            // Whether the container `c` joined still runs (its namespace lives on).
            let alive = |c: &ObservedContainer| {
                observed
                    .containers
                    .iter()
                    .any(|o| o.running && joins(c.joined.as_deref(), &o.name, Some(o.id.as_str())))
            };
            let mut keep = Vec::new();
            for mut c in found {
                match h.as_ref().map(|h| h.verdict(&c)) {
                    // Made without the holder (a change adds `network`): the spec hash
                    // differs, and the change is the usual gated replacement.
                    _ if c.joined.is_none() && c.spec_hash != want => keep.push(c),
                    Some(Joined::Same) => keep.push(c),
                    Some(Joined::Stale) => {
                        // Started again, it joins the namespace the holder has then.
                        removals.push(Action::StopContainer {
                            service: c.service.clone(),
                            id: c.id.clone(),
                            name: c.name.clone(),
                            reason: reason(true),
                        });
                        c.running = false;
                        keep.push(c);
                    }
                    // Joined a container that is gone or about to be: a container joins
                    // a namespace only when it is created.
                    Some(Joined::Gone) | None => {
                        let dead = !alive(&c);
                        removals.push(remove(&c, reason(dead)))
                    }
                }
            }
            found = keep;
        }
        // Keep the best match: right hash first, then running. Without one, the best
        // other container (running first) is the one a change replaces; the rest are
        // duplicates.
        let best = |it: &mut dyn Iterator<Item = &ObservedContainer>| {
            it.max_by_key(|c| (c.running, std::cmp::Reverse(c.id.clone())))
                .cloned()
        };
        let keep = best(&mut found.iter().filter(|c| c.spec_hash == want));
        let old = match keep {
            Some(_) => None,
            None => best(&mut found.iter()),
        };
        let primary = keep.as_ref().or(old.as_ref()).map(|c| c.id.clone());
        for c in &found {
            if Some(&c.id) != primary.as_ref() {
                let reason = if keep.is_some() || c.spec_hash == want || old.is_some() {
                    Reason::Duplicate
                } else {
                    Reason::SpecChanged {
                        from: c.spec_hash.clone(),
                        to: want.clone(),
                    }
                };
                removals.push(remove(c, reason));
            }
        }
        let holder = |c: &ObservedContainer| Holder {
            id: c.id.clone(),
            name: c.name.clone(),
            running_since: c.started_at.filter(|_| c.running),
            starts: !c.running,
        };
        let kept_as = match (&keep, &old) {
            (Some(c), _) => Some(holder(c)),
            (None, Some(o)) if rejected.get(&name) == Some(&want) => Some(holder(o)),
            _ => None,
        };
        outcome.insert(name.clone(), kept_as);
        match (keep, old) {
            (Some(c), _) if c.running => {}
            (Some(_), _) => per_service.push(Action::StartContainer { service: name }),
            (None, Some(old)) if rejected.get(&name) == Some(&want) => {
                // Tried and rolled back: the old container serves on.
                if !old.running {
                    per_service.push(Action::StartContainer { service: name });
                }
            }
            (None, Some(old)) => per_service.push(Action::ReplaceContainer {
                service: name.clone(),
                id: old.id.clone(),
                name: old.name.clone(),
                reason: Reason::SpecChanged {
                    from: old.spec_hash.clone(),
                    to: want,
                },
            }),
            (None, None) => {
                per_service.push(Action::CreateContainer {
                    service: name.clone(),
                    reason: Reason::Missing,
                });
                per_service.push(Action::StartContainer { service: name });
            }
        }
    }
    actions.extend(removals);
    actions.extend(per_service);
    actions
}

/// Services that depend on `service`, directly or not, dependants first (the order to
/// stop them in).
pub fn dependants(cfg: &Config, service: &str) -> Vec<String> {
    let order = cfg.start_order();
    let mut found = BTreeSet::new();
    // Start order puts every service after what it depends on.
    for name in &order {
        if cfg.services[name]
            .depends_on
            .iter()
            .any(|d| d == service || found.contains(d))
        {
            found.insert(name.clone());
        }
    }
    order
        .into_iter()
        .rev()
        .filter(|n| found.contains(n))
        .collect()
}

/// The container a network holder keeps through a plan.
struct Holder {
    id: String,
    name: String,
    /// When it started, if it runs and stays running through the plan.
    running_since: Option<SystemTime>,
    /// The plan starts it.
    starts: bool,
}

/// Where a container in a holder's namespace stands.
enum Joined {
    /// In the namespace the holder has.
    Same,
    /// Joined the holder's container, but runs in a namespace that died with an earlier
    /// run of it (or will when the plan starts it): it needs a restart.
    Stale,
    /// Joined another container.
    Gone,
}

/// Whether a container that joined `joined` (as the engine reports it) is in the
/// namespace of the holder container named `name`, whose id is `id` if known: the engine
/// keeps the id, or the name it was given when no container had it yet.
pub fn joins(joined: Option<&str>, name: &str, id: Option<&str>) -> bool {
    joined.is_some_and(|j| j == name || Some(j) == id)
}

impl Holder {
    fn verdict(&self, c: &ObservedContainer) -> Joined {
        if !joins(c.joined.as_deref(), &self.name, Some(&self.id)) {
            return Joined::Gone;
        }
        let older = match (c.started_at, self.running_since) {
            (Some(mine), Some(its)) => mine < its,
            _ => false,
        };
        if c.running && (self.starts || older) {
            Joined::Stale
        } else {
            Joined::Same
        }
    }
}

fn remove(c: &ObservedContainer, reason: Reason) -> Action {
    Action::RemoveContainer {
        service: c.service.clone(),
        id: c.id.clone(),
        name: c.name.clone(),
        reason,
    }
}

#[cfg(test)]
mod tests;
