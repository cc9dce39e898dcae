//! berth's desired state. Two stages: [`raw`] mirrors the TOML with spans, [`model`] holds
//! validated domain types. [`load`] goes from a path to a [`Config`], collecting every
//! problem as a [`ConfigError`] that prints as `FILE:LINE:COL: message`.
//!
//! Invariant: this crate reads files (the config and its env file) and nothing else; it
//! never talks to Docker or the network.

mod env;
mod error;
mod model;
mod raw;
mod validate;

use std::path::{Path, PathBuf};

pub use env::{parse_env_file, variables};
pub use error::{ConfigError, ConfigErrors};
pub use model::*;
pub use validate::is_name;

/// Where the config is when `-c` is not given: `$BERTH_CONFIG`, then this.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/berth/berth.toml";

/// Reads and validates the config at `path`, its env file, and `${VAR}` references.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let src = std::fs::read_to_string(&path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.clone(),
            line: 1,
            col: 1,
            message: format!("cannot read config: {e}"),
        }])
    })?;
    let lookup = |k: &str| std::env::var(k).ok();
    validate::parse(&path, &src, &lookup, true)
}

/// Validates config text as if it were the file at `path`, without reading an env file:
/// `${VAR}` is looked up in `vars` only. For tests and tools.
pub fn parse_str(
    path: &Path,
    src: &str,
    vars: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    validate::parse(path, src, vars, false)
}

/// Resolves a path written in the config relative to the config file's folder.
pub fn resolve_path(config_path: &Path, written: &str) -> PathBuf {
    let p = Path::new(written);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        let base = config_path.parent().unwrap_or(Path::new("."));
        normalize(&base.join(p))
    }
}

/// Removes `.` and `..` components without touching the filesystem.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}
