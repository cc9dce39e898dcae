//! berth's own state files in `state_dir`, written atomically and durably: a temp file
//! (mode 0600), fsync, rename, fsync of the folder.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use berth_core::deploy::DeployState;

fn deploys_path(state_dir: &Path) -> PathBuf {
    state_dir.join("deploys.json")
}

/// Creates `dir` (and its parents) if missing, 0700 whatever the umask: berth's state
/// is no one else's to read. A folder that already exists is left as it is (it may be
/// shared, and its mode is its owner's choice).
pub fn private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private (0700)", dir.display()))
}

/// Writes `bytes` to `path` (mode 0600, whatever the umask) so that a crash leaves
/// either the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.partial"));
    let r = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // `mode` above is filtered by the umask; the file is 0600 whatever it is.
        f.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.with_context(|| format!("writing {}", path.display()))
}

/// A JSON state file; a missing one is the default value.
fn load_json<T: serde::de::DeserializeOwned + Default>(path: &Path) -> anyhow::Result<T> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            serde_json::from_str(&text).with_context(|| format!("{} is damaged", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(T::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The deploy state; a missing file is an empty state.
pub fn load_deploys(state_dir: &Path) -> anyhow::Result<DeployState> {
    load_json(&deploys_path(state_dir))
}

/// Copies a damaged deploys.json aside (`deploys.json.damaged-<unix time>`), leaving the
/// file itself in place for a person to look at; returns the copy's path.
pub fn keep_damaged(state_dir: &Path, now: std::time::SystemTime) -> anyhow::Result<PathBuf> {
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let copy = state_dir.join(format!("deploys.json.damaged-{secs}"));
    let bytes = std::fs::read(deploys_path(state_dir))
        .with_context(|| format!("reading {}", deploys_path(state_dir).display()))?;
    write_atomic(&copy, &bytes)?;
    Ok(copy)
}

pub fn save_deploys(state_dir: &Path, d: &DeployState) -> anyhow::Result<()> {
    write_atomic(
        &deploys_path(state_dir),
        serde_json::to_string_pretty(d)?.as_bytes(),
    )
}

fn held_path(state_dir: &Path) -> PathBuf {
    state_dir.join("held.json")
}

/// The services `berth stop` keeps down; a missing file is none.
pub fn load_held(state_dir: &Path) -> anyhow::Result<std::collections::BTreeSet<String>> {
    load_json(&held_path(state_dir))
}

pub fn save_held(
    state_dir: &Path,
    held: &std::collections::BTreeSet<String>,
) -> anyhow::Result<()> {
    write_atomic(
        &held_path(state_dir),
        serde_json::to_string(held)?.as_bytes(),
    )
}

fn start_times_path(state_dir: &Path) -> PathBuf {
    state_dir.join("start-times.json")
}

/// How long each service took from its start to healthy (milliseconds in the file); a
/// missing file is none.
pub fn load_start_times(
    state_dir: &Path,
) -> anyhow::Result<std::collections::BTreeMap<String, std::time::Duration>> {
    let ms: std::collections::BTreeMap<String, u64> = load_json(&start_times_path(state_dir))?;
    Ok(ms
        .into_iter()
        .map(|(k, v)| (k, std::time::Duration::from_millis(v)))
        .collect())
}

pub fn save_start_times(
    state_dir: &Path,
    times: &std::collections::BTreeMap<String, std::time::Duration>,
) -> anyhow::Result<()> {
    let ms: std::collections::BTreeMap<&String, u64> = times
        .iter()
        .map(|(k, v)| (k, u64::try_from(v.as_millis()).unwrap_or(u64::MAX)))
        .collect();
    write_atomic(
        &start_times_path(state_dir),
        serde_json::to_string(&ms)?.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16, item 6: state files 0600 and folders 0700, whatever the umask.
    #[test]
    fn state_files_and_folders_are_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let sub = dir.path().join("state");
        private_dir(&sub).expect("dir");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&sub), 0o700);
        let f = sub.join("running");
        std::fs::write(&f, "old").expect("write");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        write_atomic(&f, b"1234").expect("write");
        assert_eq!(mode(&f), 0o600);
        // An existing folder keeps its mode.
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o750)).expect("chmod");
        private_dir(&sub).expect("dir");
        assert_eq!(mode(&sub), 0o750);
    }

    #[test]
    fn deploy_state_round_trips_and_damage_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            load_deploys(dir.path()).expect("empty"),
            DeployState::default()
        );
        let mut d = DeployState::default();
        d.overrides.insert(
            "bot".into(),
            berth_core::deploy::Override {
                image: "bot:2".into(),
                file_image: "bot:1".into(),
                pending: false,
            },
        );
        save_deploys(dir.path(), &d).expect("save");
        assert_eq!(load_deploys(dir.path()).expect("load"), d);
        std::fs::write(dir.path().join("deploys.json"), "{\"overrides\": {").expect("write");
        assert!(load_deploys(dir.path()).is_err());
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["deploys.json"], "no temp file left");
    }
}
