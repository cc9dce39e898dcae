//! `berth import-compose` and `berth export`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use berth_config::Config;

use crate::cli::ExportFormat;
use crate::cmd::write_out;

pub fn export(
    cfg: &Config,
    format: ExportFormat,
    output: Option<&Path>,
    force: bool,
) -> anyhow::Result<()> {
    let text = match format {
        ExportFormat::Compose => berth_compose::export::compose(cfg),
        ExportFormat::Kubernetes => berth_compose::export::kubernetes(cfg),
    };
    write_out(output, &text, force)
}

pub fn import_compose(
    file: &Path,
    output: Option<PathBuf>,
    env_file: Option<PathBuf>,
    project: Option<String>,
    force: bool,
) -> anyhow::Result<()> {
    let yaml = std::fs::read_to_string(file)
        .with_context(|| format!("reading {}; give the compose file's path", file.display()))?;
    let dir = std::path::absolute(file)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut adopted = None;
    let env_path = match env_file {
        Some(p) => Some(std::path::absolute(p)?),
        None => match Some(dir.join(".env")).filter(|p| p.exists()) {
            Some(p) => Some(p),
            // No .env, and every service that reads an env file reads the same one
            // (`env_file: .env.production`): that file is berth's env file too.
            None => match berth_compose::service_env_files(&yaml)
                .with_context(|| format!("{}", file.display()))?
                .as_slice()
            {
                [one] => {
                    adopted = Some(one.clone());
                    Some(dir.join(one)).filter(|p| p.exists())
                }
                _ => None,
            },
        },
    };
    let env = match &env_path {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            berth_config::parse_env_file(p, &text)
                .map_err(|errs| anyhow::anyhow!("{}", berth_config::ConfigErrors(errs)))?
        }
        None => Default::default(),
    };
    let project = project.unwrap_or_else(|| {
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "berth".into())
    });
    let out = berth_compose::import(&berth_compose::Input {
        yaml: &yaml,
        dir: &dir,
        env: &env,
        env_file: env_path.as_deref(),
        project: &project,
    })
    .with_context(|| format!("{}", file.display()))?;
    if let (Some(name), Some(p)) = (&adopted, &env_path) {
        eprintln!(
            "note: there is no .env beside the compose file, and the services read {name}: it is berth's env file ([supervisor] env_file = {:?}; copy it to the droplet with mode 0600)",
            p.display().to_string()
        );
    }
    for n in &out.notes {
        eprintln!("note: {n}");
    }
    write_out(output.as_deref(), &out.toml, force)?;
    if let Some(o) = &output {
        eprintln!(
            "wrote {}: check it with `berth check -c {}`",
            o.display(),
            o.display()
        );
    }
    Ok(())
}
