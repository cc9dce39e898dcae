//! The health gate: a container just started counts as up only once it passes its probe.
//! Used by convergence, restarts and deploys alike.

use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use anyhow::bail;
use berth_config::Service;
use berth_core::deploy::Mark;
use berth_core::probe::starting_interval;
use berth_core::snapshot::{Health, State};
use berth_engine::ContainerDetails;
use tracing::info;

use crate::hub::Hub;
use crate::io::containers::{address, started_at};
use crate::io::probe;
use crate::progress;

/// Probes fast (`berth_core::probe::starting_interval`) until the first success, the
/// container's exit, or `timeout`; the service's status follows.
pub async fn until_healthy(
    hub: &Hub,
    svc: &Service,
    details: &ContainerDetails,
    ip: Option<IpAddr>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let name = &svc.name;
    let Some(p) = &svc.probe else {
        hub.update_service(name, |s| {
            s.state = State::Running;
            s.health = Health::Healthy;
        });
        return Ok(());
    };
    let deadline = tokio::time::Instant::now()
        .checked_add(timeout)
        .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400 * 365));
    let began = tokio::time::Instant::now();
    let mut told = began;
    let mut shown = None;
    // The container's `die` ends the wait at once: a probe of a dead container can hang
    // for its whole timeout (an address nobody answers), and a rollback or restart waits.
    let died = hub.when_dies(&details.id);
    let died = async move {
        if died.await.is_err() {
            std::future::pending::<()>().await
        }
    };
    tokio::pin!(died);
    let exited = || anyhow::anyhow!("container exited while starting");
    loop {
        let r = tokio::select! {
            r = probe::run(hub.engine.as_ref(), p, &details.id, ip) => r,
            () = &mut died => return Err(exited()),
        };
        let gone = hub.read(|s| {
            s.services.get(name).is_none_or(|s| {
                s.container_id.as_deref() != Some(&details.id)
                    || matches!(s.state, State::Exited | State::Stopped)
            })
        });
        if gone {
            return Err(exited());
        }
        if r.ok {
            info!(service = %name, latency_ms = r.latency.as_millis() as u64, "healthy");
            progress::say(
                "health",
                format!("{name}: healthy after {} ms", began.elapsed().as_millis()),
            );
            hub.update_service(name, |s| {
                s.state = State::Running;
                s.health = Health::Healthy;
                s.probe = Some(r.view());
            });
            return Ok(());
        }
        // A new error at once, the same one at most once a second: every publication
        // wakes each task that follows the snapshot.
        let due = told.elapsed() >= Duration::from_secs(1);
        if due || r.error != shown {
            hub.update_service(name, |s| s.probe = Some(r.view()));
            shown = r.error.clone();
        }
        if due {
            told = tokio::time::Instant::now();
            progress::say(
                "health",
                format!(
                    "{name}: waiting {} s of {}: {}",
                    began.elapsed().as_secs(),
                    humantime::format_duration(timeout),
                    r.error.as_deref().unwrap_or("not yet")
                ),
            );
        }
        if tokio::time::Instant::now() >= deadline {
            hub.update_service(name, |s| {
                s.state = State::Running;
                s.health = Health::Unhealthy;
            });
            bail!(
                "not healthy within {}: {}",
                humantime::format_duration(timeout),
                r.error.unwrap_or_default()
            );
        }
        tokio::select! {
            () = tokio::time::sleep(starting_interval(r.refused(), began.elapsed())) => {}
            () = &mut died => return Err(exited()),
        }
    }
}

/// Starts container `id` as the service's and waits until it passes its probe.
pub async fn start_and_wait(
    hub: &Hub,
    svc: &Service,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    start_and_wait_marked(hub, svc, id, timeout, &mut Vec::new()).await
}

/// [`start_and_wait`], noting `start_requested`, `running` and `healthy` in `steps`.
pub async fn start_and_wait_marked(
    hub: &Hub,
    svc: &Service,
    id: &str,
    timeout: Duration,
    steps: &mut Vec<Mark>,
) -> anyhow::Result<()> {
    hub.update_service(&svc.name, |s| {
        s.container_id = Some(id.to_string());
        s.image = svc.image.clone();
        s.state = State::Starting;
        s.health = Health::Starting;
    });
    steps.push(Mark::new("start_requested", SystemTime::now()));
    hub.engine.start_container(id).await?;
    steps.push(Mark::new("running", SystemTime::now()));
    let details = hub.engine.inspect_container(id).await?;
    let ip = address(hub.engine.as_ref(), &hub.config(), &svc.name, &details).await;
    hub.update_service(&svc.name, |s| {
        s.ip = ip;
        s.since = started_at(&details);
    });
    until_healthy(hub, svc, &details, ip, timeout).await?;
    steps.push(Mark::new("healthy", SystemTime::now()));
    Ok(())
}
