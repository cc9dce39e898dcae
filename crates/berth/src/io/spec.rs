//! Config → engine terms: what a service's container looks like, and what the engine has.

use std::collections::{BTreeMap, BTreeSet};

use berth_config::{Config, Service, VolumeSource};
use berth_core::deploy::Role;
use berth_core::{LABEL_PROJECT, LABEL_SERVICE, LABEL_SPEC_HASH, ObservedContainer};
use berth_engine::{ContainerSpec, Engine, EngineError, Port};

use crate::io::containers::started_at;

/// Labels on networks and volumes of a project.
pub fn project_labels(cfg: &Config) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_PROJECT.to_string(), cfg.supervisor.project.clone())])
}

pub fn container_spec(cfg: &Config, svc: &Service) -> ContainerSpec {
    let mut labels = project_labels(cfg);
    labels.insert(LABEL_SERVICE.into(), svc.name.clone());
    labels.insert(LABEL_SPEC_HASH.into(), svc.spec_hash());
    let binds = svc
        .volumes
        .iter()
        .map(|v| {
            let src = match &v.source {
                VolumeSource::Named(n) => cfg.volume_name(n),
                VolumeSource::Bind(p) => p.display().to_string(),
            };
            let mode = if v.read_only { ":ro" } else { "" };
            format!("{src}:{}{mode}", v.target)
        })
        .collect();
    ContainerSpec {
        name: cfg.container_name(&svc.name),
        image: svc.image.clone(),
        cmd: svc
            .command
            .as_ref()
            .map(|c| c.iter().map(|w| w.value.clone()).collect()),
        entrypoint: svc
            .entrypoint
            .as_ref()
            .map(|c| c.iter().map(|w| w.value.clone()).collect()),
        user: svc.user.clone(),
        env: svc.env_list(),
        labels,
        // In another service's namespace, that one has the network, address and alias.
        network: match svc.network_of {
            Some(_) => None,
            None => Some((
                cfg.network_name(),
                std::iter::once(&svc.name)
                    .chain(&svc.aliases)
                    .cloned()
                    .collect(),
            )),
        },
        join: svc.network_of.as_ref().map(|h| cfg.container_name(h)),
        binds,
        ports: svc
            .ports
            .iter()
            .map(|p| Port {
                host_ip: p.host_ip,
                host_port: p.host_port,
                container_port: p.container_port,
                protocol: p.protocol.clone(),
            })
            .collect(),
        memory_bytes: svc.memory.map(|m| m as i64),
        nano_cpus: svc.cpus.map(|c| (c * 1e9) as i64),
        pids_limit: svc.pids_limit,
        read_only: svc.read_only,
        tmpfs: svc
            .tmpfs
            .iter()
            .map(|t| (t.clone(), "rw,nosuid,nodev,size=64m".to_string()))
            .collect(),
        log_max_size: Some(svc.logs.max_size),
        log_max_files: Some(svc.logs.max_files),
        stop_timeout: Some(svc.stop_grace_period),
    }
}

/// What the engine has of this project.
pub async fn observe(
    engine: &dyn Engine,
    cfg: &Config,
) -> berth_engine::Result<berth_core::Observed> {
    let project = &cfg.supervisor.project;
    let (networks, volumes, containers) = tokio::try_join!(
        engine.networks(LABEL_PROJECT, project),
        engine.volumes(LABEL_PROJECT, project),
        engine.containers(LABEL_PROJECT, project),
    )?;
    let mut observed = berth_core::Observed {
        networks,
        volumes,
        ..Default::default()
    };
    for c in containers {
        let Some(service) = c.labels.get(LABEL_SERVICE).cloned() else {
            continue;
        };
        let kept = Role::is_kept(&cfg.container_name(&service), &c.name);
        let o = ObservedContainer {
            service,
            spec_hash: c.labels.get(LABEL_SPEC_HASH).cloned().unwrap_or_default(),
            id: c.id,
            name: c.name,
            running: c.running,
            joined: c.joined,
            started_at: None,
        };
        // A migration container carries no service label: it never gets here.
        if kept {
            observed.kept.push(o);
        } else {
            observed.containers.push(o);
        }
    }
    // When the running containers of network holders and of the services in their
    // namespaces started: one started before its holder runs in a namespace that died.
    let related: BTreeSet<&str> = cfg
        .services
        .values()
        .filter_map(|s| Some([s.network_of.as_deref()?, s.name.as_str()]))
        .flatten()
        .collect();
    let looks = observed
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| c.running && related.contains(c.service.as_str()))
        .map(|(i, c)| async move { (i, engine.inspect_container(&c.id).await) });
    for (i, r) in futures::future::join_all(looks).await {
        match r {
            Ok(d) => observed.containers[i].started_at = started_at(&d),
            // Gone since the listing: the next pass sees it so.
            Err(EngineError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(observed)
}
