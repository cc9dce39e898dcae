//! The production compose fixture, shared by the import and export tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// (compose YAML, env-file variables, fixture folder).
pub fn fixture() -> (String, BTreeMap<String, String>, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let yaml = std::fs::read_to_string(dir.join("docker-compose.prod.yml")).expect("fixture");
    let env = std::fs::read_to_string(dir.join(".env"))
        .expect("env")
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (yaml, env, dir)
}

/// The fixture imported with its env file: (result, env-file variables, fixture folder).
pub fn imported() -> (berth_compose::Imported, BTreeMap<String, String>, PathBuf) {
    let (yaml, env, dir) = fixture();
    let env_file = dir.join(".env");
    let out = berth_compose::import(&berth_compose::Input {
        yaml: &yaml,
        dir: &dir,
        env: &env,
        env_file: Some(&env_file),
        project: "fallback",
    })
    .expect("import");
    (out, env, dir)
}
