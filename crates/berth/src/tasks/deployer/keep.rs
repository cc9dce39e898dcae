//! `berth stop`, `start` and `restart` of one service. A stopped service is kept down
//! (persisted in `state_dir/held.json` before its container stops, so a crash or a
//! reboot in between still finds it held) until `start` releases it; `restart` is a
//! graceful stop then a start of the same container, health-gated: stop-first, so never
//! two pollers.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use berth_core::snapshot::{Health, ServiceStatus, State};
use tracing::{info, warn};

use super::{Deployer, service_config};
use crate::io::statefile;
use crate::tasks::gate;

/// How long `start` waits for the service to be healthy beyond its start timeout.
const START_SLACK: Duration = Duration::from_secs(30);

impl Deployer {
    /// The service's lock, or why another operation has it.
    fn busy(&self, service: &str) -> anyhow::Result<std::sync::Arc<tokio::sync::Mutex<()>>> {
        self.frozen()?;
        service_config(&self.hub.config(), service)?;
        Ok(self.service_lock(service))
    }

    /// A service `berth stop` holds is no deploy's, rollback's or change's to touch.
    pub(super) fn not_kept_down(&self, service: &str) -> anyhow::Result<()> {
        if self.hub.kept_down().contains(service) {
            bail!("{service} is held down by berth stop: berth start {service} first");
        }
        Ok(())
    }

    fn status(&self, service: &str) -> ServiceStatus {
        self.hub
            .read(|s| s.services.get(service).cloned())
            .unwrap_or_else(|| ServiceStatus::new(""))
    }

    /// `berth stop SERVICE`: keeps it down (persisted first), then stops its container
    /// with its grace period.
    pub async fn stop_service(&self, service: &str) -> anyhow::Result<ServiceStatus> {
        let lock = self.busy(service)?;
        let Ok(_one) = lock.try_lock() else {
            bail!("a deploy or change of {service} is under way: stop it when that is over");
        };
        {
            // Decided under the writers' lock, so that a `start` of a service in this
            // namespace cannot slip in between the check and the hold.
            let _one_writer = self.held.lock().await;
            let mut kept = self.hub.kept_down();
            // Stopping a holder takes the network from the services in its namespace,
            // which would then crash and be restarted into nothing: they go down first.
            let joined: Vec<String> = (self.hub.config().services.values())
                .filter(|s| s.network_of.as_deref() == Some(service) && !kept.contains(&s.name))
                .map(|s| s.name.clone())
                .collect();
            if !joined.is_empty() {
                bail!(
                    "{} in {service}'s network namespace: berth stop {} first",
                    joined.join(", ") + if joined.len() == 1 { " is" } else { " are" },
                    joined.join(" and ")
                );
            }
            kept.insert(service.to_string());
            statefile::save_held(&self.state_dir(), &kept)
                .with_context(|| format!("{service} not stopped"))?;
            self.hub.keep_down(service);
        }
        self.stop_kept(service).await?;
        info!(service, "held down: berth start {service} releases it");
        Ok(self.status(service))
    }

    /// Stops the container of a kept-down service if it runs; its status says held.
    async fn stop_kept(&self, service: &str) -> anyhow::Result<()> {
        let hub = &self.hub;
        let cfg = hub.config();
        let svc = service_config(&cfg, service)?;
        // Held first: whatever happens next, nothing supervises it as running.
        hub.update_service(service, |s| {
            s.state = State::Stopped;
            s.health = Health::Unknown;
            s.held = true;
        });
        let id = match hub
            .engine
            .inspect_container(&cfg.container_name(service))
            .await
        {
            Ok(d) => {
                self.stop_gracefully(&svc, &d).await?;
                Some(d.id)
            }
            // No container: nothing runs, and nothing will be created while held.
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!(
                    "{service} is held, but its container could not be checked: run berth stop {service} again once the engine answers"
                )));
            }
        };
        hub.update_service(service, |s| {
            s.state = State::Stopped;
            s.health = Health::Unknown;
            s.held = true;
            s.crashloop = false;
            s.next_restart = None;
            s.container_id = id.or(s.container_id.take());
        });
        Ok(())
    }

    /// Stops the service's running container `d` with its grace period; its `die` is
    /// expected, no crash.
    async fn stop_gracefully(
        &self,
        svc: &berth_config::Service,
        d: &berth_engine::ContainerDetails,
    ) -> anyhow::Result<()> {
        if d.running {
            self.hub
                .stop_container(&d.id, svc.stop_grace_period)
                .await
                .with_context(|| format!("stopping {}", svc.name))?;
        }
        Ok(())
    }

    /// At start-up, before any task runs: the services `berth stop` held (in
    /// `state_dir/held.json`) are held again.
    pub fn restore_held(&self) {
        match statefile::load_held(&self.state_dir()) {
            Ok(held) => {
                for service in held {
                    info!(
                        service,
                        "held down by berth stop: berth start {service} releases it"
                    );
                    self.hub.keep_down(&service);
                    self.hub.update_service(&service, |s| {
                        s.held = true;
                        s.state = State::Stopped;
                        s.health = Health::Unknown;
                    });
                }
            }
            Err(e) => warn!(error = %format!("{e:#}"), "reading the services berth stop held"),
        }
    }

    /// At start-up (before the first convergence): the services kept down by an earlier
    /// berth stay down, their containers stopped if something started them.
    pub(super) async fn keep_held_down(&self) {
        let cfg = self.hub.config();
        let mut kept: Vec<String> = self.hub.kept_down().into_iter().collect();
        // The services in a holder's namespace before the holder.
        kept.sort_by_key(|s| cfg.services.get(s).is_none_or(|x| x.network_of.is_none()));
        for service in kept {
            if !cfg.services.contains_key(&service) {
                continue;
            }
            if let Err(e) = self.stop_kept(&service).await {
                warn!(service, error = %format!("{e:#}"), "keeping the service down");
            }
        }
    }

    /// `berth start SERVICE`: releases it and waits until it is healthy.
    pub async fn start_service(&self, service: &str) -> anyhow::Result<ServiceStatus> {
        // A service held, then removed from the config: releasing it is all there is.
        if !self.hub.config().services.contains_key(service)
            && self.hub.kept_down().contains(service)
        {
            let _one_writer = self.held.lock().await;
            let mut rest = self.hub.kept_down();
            rest.remove(service);
            statefile::save_held(&self.state_dir(), &rest)?;
            self.hub.release(service);
            bail!("{service} is no longer in the config: its hold is released");
        }
        let lock = self.busy(service)?;
        let Ok(one) = lock.try_lock() else {
            bail!("a deploy or change of {service} is under way");
        };
        let cfg = self.hub.config();
        let svc = service_config(&cfg, service)?;
        {
            // Decided under the writers' lock, so that a `stop` of the holder cannot slip
            // in between the check and the release.
            let _one_writer = self.held.lock().await;
            let kept = self.hub.kept_down();
            // A holder stays down with a service held in its namespace (the plan leaves it
            // alone), so it starts with that service, not on its own.
            if let Some(j) = (cfg.services.values())
                .find(|s| s.network_of.as_deref() == Some(service) && kept.contains(&s.name))
            {
                bail!(
                    "{service} holds the network namespace of {j}, which is held down: berth start {j} starts both",
                    j = j.name
                );
            }
            // The service and, if it is held down too, the holder of its namespace.
            let holder = svc.network_of.clone().filter(|h| kept.contains(h));
            let holder_lock = holder.as_ref().map(|h| self.service_lock(h));
            let _holders =
                (holder_lock.as_ref().map(|l| l.try_lock()).transpose()).map_err(|_| {
                    anyhow::anyhow!(
                        "a change of {} is under way",
                        holder.as_deref().unwrap_or_default()
                    )
                })?;
            let release: Vec<&str> = (holder.iter().map(String::as_str))
                .chain(kept.contains(service).then_some(service))
                .collect();
            if !release.is_empty() {
                let mut rest = kept;
                for r in &release {
                    rest.remove(*r);
                }
                statefile::save_held(&self.state_dir(), &rest)
                    .with_context(|| format!("{} still held", release.join(" and ")))?;
                for r in &release {
                    self.hub.update_service(r, |s| {
                        s.held = false;
                        s.state = State::Exited;
                        s.health = Health::Unhealthy;
                    });
                    // A crash loop before the stop is no reason to wait now.
                    if let Some(rs) = self.restarter.get() {
                        rs.forget(r).await;
                    }
                    self.hub.release(r);
                    info!(service = r, "released: starting it");
                }
            }
        }
        drop(one);
        let wait = svc
            .probe
            .as_ref()
            .map_or(Duration::ZERO, |p| p.start_timeout)
            + START_SLACK;
        let mut snaps = self.hub.subscribe();
        let healthy = snaps.wait_for(|s| {
            s.services
                .get(service)
                .is_some_and(|st| st.state == State::Running && st.is_healthy())
        });
        match tokio::time::timeout(wait, healthy).await {
            Ok(Ok(_)) => Ok(self.status(service)),
            Ok(Err(_)) => bail!("berth is stopping"),
            Err(_) => bail!(
                "{service} is not healthy after {}: berth status; berth logs {service} -n 50",
                humantime::format_duration(wait)
            ),
        }
    }

    /// `berth restart SERVICE`: a graceful stop, then a start of the same container,
    /// health-gated. Returns the time it was down.
    pub async fn restart_service(&self, service: &str) -> anyhow::Result<(ServiceStatus, u64)> {
        let lock = self.busy(service)?;
        let Ok(_one) = lock.try_lock() else {
            bail!("a deploy or change of {service} is under way");
        };
        if self.hub.kept_down().contains(service) {
            bail!("{service} is held down by berth stop: berth start {service}");
        }
        let hub = &self.hub;
        let cfg = hub.config();
        let svc = service_config(&cfg, service)?;
        let d = hub
            .engine
            .inspect_container(&cfg.container_name(service))
            .await
            .with_context(|| format!("{service} has no container yet"))?;
        let timeout = svc
            .probe
            .as_ref()
            .map_or(Duration::ZERO, |p| p.start_timeout);
        let hold = hub.hold([service]);
        info!(service, "restarting");
        let stopped = Instant::now();
        self.stop_gracefully(&svc, &d).await?;
        let r = gate::start_and_wait(hub, &svc, &d.id, timeout).await;
        let down_ms = stopped.elapsed().as_millis() as u64;
        // Released either way: a container that did not come back is the restarter's.
        drop(hold);
        r.with_context(|| format!("{service} did not come back healthy"))?;
        info!(service, down_ms, "restarted");
        Ok((self.status(service), down_ms))
    }
}
