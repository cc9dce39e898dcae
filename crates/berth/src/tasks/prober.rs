//! The prober: one loop per service with a probe, at the probe's interval, restarted
//! whenever the config in force changes. Verdicts come from
//! [`berth_core::probe::ProbeStreak`]; a service that fails `failures` probes in a row is
//! handed to the restarter.

use std::sync::Arc;

use berth_core::probe::ProbeStreak;
use berth_core::snapshot::State;
use tokio::task::JoinSet;
use tracing::warn;

use crate::hub::Hub;
use crate::io::probe;
use crate::tasks::restarter::Restarter;

pub fn start(hub: Arc<Hub>, restarter: Restarter) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(hub, restarter))
}

async fn run(hub: Arc<Hub>, restarter: Restarter) {
    let mut changes = hub.config_changes();
    loop {
        let cfg = changes.borrow_and_update().clone();
        let mut loops = JoinSet::new();
        for (name, svc) in &cfg.services {
            if svc.probe.is_some() {
                loops.spawn(probe_loop(hub.clone(), restarter.clone(), name.clone()));
            }
        }
        loop {
            tokio::select! {
                r = changes.changed() => {
                    if r.is_err() {
                        return;
                    }
                    break; // dropping the set ends the old loops
                }
                Some(done) = loops.join_next() => {
                    if let Err(e) = done && e.is_panic() {
                        std::panic::resume_unwind(e.into_panic());
                    }
                }
            }
        }
    }
}

/// Probes a running service at its interval; `failures` failures in a row restart it.
async fn probe_loop(hub: Arc<Hub>, restarter: Restarter, service: String) {
    let mut streak = ProbeStreak::default();
    loop {
        // The settings its running container was made with.
        let Some(svc) = hub.settings(&service) else {
            return;
        };
        let Some(p) = svc.probe.clone() else { return };
        tokio::time::sleep(p.interval).await;
        let Some((id, ip, state)) = hub.read(|s| {
            let st = s.services.get(&service)?;
            Some((st.container_id.clone(), st.ip, st.state))
        }) else {
            return;
        };
        let Some(id) = id else { continue };
        // A held service belongs to a deploy or restore in progress: hands off.
        if state != State::Running || hub.is_held(&service) {
            streak.reset();
            continue;
        }
        let r = probe::run(hub.engine.as_ref(), &p, &id, ip).await;
        let verdict = streak.observe(r.ok, p.failures);
        if r.ok {
            restarter.healthy(&service).await;
        }
        hub.update_service(&service, |s| {
            if s.runs(&id) {
                s.probe = Some(r.view());
                if let Some(h) = verdict.health {
                    s.health = h;
                }
            }
        });
        // The container may have changed while the probe ran (deploy, restore), or died:
        // then the event path owns its restart, and a failure here is not the probe's.
        if !hub.read(|s| s.services.get(&service).is_some_and(|s| s.runs(&id))) {
            streak.reset();
            continue;
        }
        if !verdict.restart {
            continue;
        }
        // A container that died under the probe is the event path's to restart, even if
        // its `die` event has not been handled yet; it may have been missed (engine
        // unreachable): a pass settles it.
        let dead = hub
            .engine
            .inspect_container(&id)
            .await
            .is_ok_and(|d| !d.running);
        if dead {
            hub.request_reconcile();
            continue;
        }
        if !hub.is_held(&service) {
            warn!(service = %service, failures = p.failures, error = r.error.as_deref().unwrap_or(""), "probe failing: restarting");
            restarter.unhealthy(&service, &id).await;
        }
    }
}
