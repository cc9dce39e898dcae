//! `berth deploy`, `rollback`, `stop`, `start` and `restart`: all go through the running
//! daemon.

use anyhow::Context as _;
use berth_config::Config;
use berth_core::deploy::Record;

use berth_core::snapshot::ServiceStatus;

use crate::api::{DeployRequest, Restarted, RollbackRequest, ServiceRequest};
use crate::cmd::steps::Shown;
use crate::serve::admin;

pub async fn deploy(cfg: Config, req: DeployRequest, quiet: bool) -> anyhow::Result<()> {
    let mut shown = Shown::new(quiet);
    let r = admin::request_progress(&cfg.supervisor.admin_socket, "/deploy", &req, &mut |s| {
        shown.show(s)
    })
    .await
    .ok_or_else(|| {
        anyhow::anyhow!("deploys go through the running daemon: start it (systemctl start berth)")
    })?;
    drop(shown);
    let r: Record = r?;
    println!(
        "deployed {} {} (previous {}) in {} ms{}",
        r.service,
        r.image,
        r.previous_image,
        r.duration_ms,
        interruption(&r)
    );
    Ok(())
}

pub async fn rollback(
    cfg: Config,
    req: RollbackRequest,
    yes: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    let service = req.service.clone();
    if req.restore_db && !yes {
        let db = cfg.backup.as_ref().map_or("", |b| b.database.as_str());
        crate::cmd::confirm(
            &format!("rollback --restore-db replaces database {db}"),
            &format!(
                "Roll {service} back and replace database {db} with the backup taken before its current version was deployed? Data written since is lost."
            ),
        )?;
    }
    let mut shown = Shown::new(quiet);
    let r = admin::request_progress(&cfg.supervisor.admin_socket, "/rollback", &req, &mut |s| {
        shown.show(s)
    })
    .await
    .ok_or_else(|| {
        anyhow::anyhow!("rollbacks go through the running daemon: start it (systemctl start berth)")
    })?;
    drop(shown);
    let r: Record = r?;
    println!("{service} back on {}", r.image);
    Ok(())
}

/// ", service interrupted N ms (stop …, start …, healthy …)" when the deploy record
/// knows it: where the switch's time went.
pub fn interruption(r: &Record) -> String {
    let Some(ms) = r.interruption_ms else {
        return String::new();
    };
    let at = |step: &str| r.steps.iter().find(|m| m.step == step).map(|m| m.unix_ms);
    let parts: Vec<String> = [
        ("stop", "stop_requested", "stopped"),
        ("start", "start_requested", "running"),
        ("healthy after", "running", "healthy"),
    ]
    .iter()
    .filter_map(|(what, from, to)| Some(format!("{what} {} ms", at(to)?.checked_sub(at(from)?)?)))
    .collect();
    if parts.is_empty() {
        format!(", service interrupted {ms} ms")
    } else {
        format!(", service interrupted {ms} ms ({})", parts.join(", "))
    }
}

/// Asks the daemon to act on one service.
async fn on_service<T: serde::de::DeserializeOwned>(
    cfg: &Config,
    path: &str,
    service: String,
) -> anyhow::Result<T> {
    admin::request(&cfg.supervisor.admin_socket, path, &ServiceRequest { service })
        .await
        .ok_or_else(|| {
            anyhow::anyhow!(
                "this goes through the running daemon (it would undo it otherwise): start it (systemctl start berth)"
            )
        })?
}

pub async fn stop(cfg: Config, service: String) -> anyhow::Result<()> {
    let _: ServiceStatus = on_service(&cfg, "/stop", service.clone()).await?;
    println!("{service} held down: berth start {service} releases it");
    Ok(())
}

pub async fn start(cfg: Config, service: String) -> anyhow::Result<()> {
    let _: ServiceStatus = on_service(&cfg, "/start", service.clone()).await?;
    println!("{service} is running and healthy");
    Ok(())
}

pub async fn restart(cfg: Config, service: String) -> anyhow::Result<()> {
    let r: Restarted = on_service(&cfg, "/restart", service.clone()).await?;
    println!(
        "{service} restarted: down {} ms, {}",
        r.down_ms, r.status.health
    );
    Ok(())
}

/// `berth deploy SERVICE --build`: builds the image from `[services.X.build]` through the
/// engine (the build's output shown as steps), tags it with the context's revision, then
/// deploys it like any image. A failed build changes nothing.
pub async fn deploy_build(
    cfg: Config,
    service: String,
    backup: bool,
    quiet: bool,
) -> anyhow::Result<()> {
    use crate::io::build;
    let svc = cfg
        .services
        .get(&service)
        .with_context(|| format!("no service {service:?} in the config"))?;
    let b = svc.build.as_ref().with_context(|| {
        format!("{service} has no [services.{service}.build]: add context = \"path/to/source\"")
    })?;
    let (repo, _) = berth_engine::split_reference(&svc.image);
    let tag = format!(
        "{repo}:{}",
        build::revision(&b.context, std::time::SystemTime::now())
    );
    let shown = std::sync::Mutex::new(Shown::new(quiet));
    let say = |step: &str, detail: String| {
        if let Ok(mut s) = shown.lock() {
            s.show(&crate::progress::Step {
                step: step.to_string(),
                detail,
            });
        }
    };
    say(
        "build",
        format!("{} ({}) as {tag}", b.context.display(), b.dockerfile),
    );
    let context = build::context_tar(&b.context, &b.dockerfile)
        .with_context(|| format!("the build context {}", b.context.display()))?;
    say("build", format!("context: {} bytes", context.len()));
    let spec = berth_engine::BuildSpec {
        tag: tag.clone(),
        dockerfile: b.dockerfile.clone(),
        args: b.args.clone(),
        target: b.target.clone(),
    };
    let engine = crate::cmd::connect().await?;
    engine
        .build_image(context, &spec, &|line| say("build", line))
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "the build of {service} failed ({}): nothing was changed",
                crate::redact::scrub(&e.to_string())
            )
        })?;
    drop(shown);
    deploy(
        cfg,
        DeployRequest {
            service,
            image: tag,
            backup,
        },
        quiet,
    )
    .await
}
