//! Pull credentials, found where the docker CLI would find them: berth's own
//! `[registries."HOST"]` first, then the Docker client config (`$DOCKER_CONFIG/config.json`,
//! else `$HOME/.docker/config.json`, else root's): its `credHelpers` entry for the host,
//! its `credsStore`, or its `auths` entry, in the CLI's order. Every password found is
//! added to the scrubbing list before it is used.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use berth_config::Config;
use berth_engine::RegistryAuth;
use serde::Deserialize;
use tokio::io::AsyncWriteExt as _;

/// Docker Hub, as images name it and as Docker's config and helpers key it.
const HUB: &str = "docker.io";
const HUB_KEY: &str = "https://index.docker.io/v1/";

/// The registry host of an image reference: its first path part when that looks like a
/// host (a dot, a port or `localhost`), else Docker Hub.
pub fn registry_of(image: &str) -> String {
    match image.split_once('/') {
        Some((first, _)) if first.contains(['.', ':']) || first == "localhost" => normalise(first),
        _ => HUB.to_string(),
    }
}

/// A host as config keys write it (`https://ghcr.io`, `index.docker.io/v1/`) → `ghcr.io`.
fn normalise(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => HUB.into(),
        _ => host,
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
}

/// Where the credentials for a host come from, per the Docker config (pure).
#[derive(Debug, PartialEq)]
enum Found {
    Helper(String),
    Auth { username: String, password: String },
    Nothing,
}

fn find(cfg: &DockerConfig, host: &str) -> anyhow::Result<Found> {
    if let Some((_, helper)) = cfg.cred_helpers.iter().find(|(k, _)| normalise(k) == host) {
        return Ok(Found::Helper(helper.clone()));
    }
    if let Some(store) = &cfg.creds_store {
        return Ok(Found::Helper(store.clone()));
    }
    let Some((key, entry)) = cfg.auths.iter().find(|(k, _)| normalise(k) == host) else {
        return Ok(Found::Nothing);
    };
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Found::Auth {
            username: u.clone(),
            password: p.clone(),
        });
    }
    let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) else {
        return Ok(Found::Nothing);
    };
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .with_context(|| format!("the auths entry for {key} is not base64 of user:password"))?;
    let (u, p) = decoded
        .split_once(':')
        .with_context(|| format!("the auths entry for {key} is not base64 of user:password"))?;
    Ok(Found::Auth {
        username: u.to_string(),
        password: p.to_string(),
    })
}

/// The Docker client config berth reads: `$DOCKER_CONFIG/config.json`, else the user's,
/// else root's (systemd gives a root service no `$HOME`).
fn docker_config_path() -> PathBuf {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        return PathBuf::from(d).join("config.json");
    }
    if let Some(h) = std::env::var_os("HOME") {
        let p = PathBuf::from(h).join(".docker/config.json");
        if p.exists() {
            return p;
        }
    }
    PathBuf::from("/root/.docker/config.json")
}

/// `docker-credential-NAME get`, as the docker CLI runs it: the server on stdin, JSON
/// out. `None` when the helper has none for it.
async fn from_helper(name: &str, host: &str) -> anyhow::Result<Option<RegistryAuth>> {
    let program = format!("docker-credential-{name}");
    let server = if host == HUB { HUB_KEY } else { host };
    let mut child = tokio::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("running {program} (the Docker config names it)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(server.as_bytes()).await?;
    }
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .with_context(|| format!("{program} gave no answer within 30 s"))??;
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Answer {
        username: String,
        secret: String,
    }
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout);
        if said.contains("credentials not found") {
            return Ok(None);
        }
        bail!("{program} get failed ({}) for {host}", out.status);
    }
    let a: Answer = serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{program} answered something other than its JSON"))?;
    Ok(Some(RegistryAuth {
        server: server.to_string(),
        username: a.username,
        password: a.secret,
    }))
}

/// The credentials for pulling `image`, and where they came from (for error messages);
/// `None` when there are none (a public image, or nothing set up).
pub async fn auth_for(cfg: &Config, image: &str) -> anyhow::Result<Option<(RegistryAuth, String)>> {
    let host = registry_of(image);
    let server = if host == HUB { HUB_KEY } else { host.as_str() };
    if let Some(r) = cfg.registries.get(&host) {
        return Ok(Some((
            RegistryAuth {
                server: server.to_string(),
                username: r.username.value.clone(),
                password: r.password.value.clone(),
            },
            format!("[registries.{host:?}] of {}", cfg.path.display()),
        )));
    }
    let path = docker_config_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let dc: DockerConfig =
        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
    let found = find(&dc, &host).with_context(|| path.display().to_string())?;
    let auth = match found {
        Found::Nothing => return Ok(None),
        Found::Auth { username, password } => (
            RegistryAuth {
                server: server.to_string(),
                username,
                password,
            },
            format!("the auths of {}", path.display()),
        ),
        Found::Helper(name) => match from_helper(&name, &host).await? {
            Some(a) => (a, format!("docker-credential-{name}")),
            None => return Ok(None),
        },
    };
    crate::redact::add(&auth.0.password);
    Ok(Some(auth))
}

/// Whether a pull error says the registry wanted (other) credentials.
pub fn is_auth_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "access to the resource is denied",
        "access denied",
        "forbidden",
    ]
    .iter()
    .any(|k| m.contains(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_of_an_image() {
        for (image, host) in [
            ("redis:7", "docker.io"),
            ("library/redis", "docker.io"),
            ("me/bot:1", "docker.io"),
            ("ghcr.io/me/bot:1", "ghcr.io"),
            (
                "registry.digitalocean.com/team/bot",
                "registry.digitalocean.com",
            ),
            ("127.0.0.1:5000/bot:2", "127.0.0.1:5000"),
            ("localhost/bot", "localhost"),
            ("GHCR.io/me/bot", "ghcr.io"),
        ] {
            assert_eq!(registry_of(image), host, "{image}");
        }
    }

    fn config(json: &str) -> DockerConfig {
        serde_json::from_str(json).expect("json")
    }

    #[test]
    fn the_docker_clis_order() {
        let auth = base64::engine::general_purpose::STANDARD.encode("ci:pa:ss");
        let dc = config(&format!(
            r#"{{"auths": {{"https://ghcr.io": {{"auth": "{auth}"}}, "https://index.docker.io/v1/": {{"username": "u", "password": "p"}}}},
                "credHelpers": {{"registry.digitalocean.com": "doctl"}}}}"#
        ));
        assert_eq!(
            find(&dc, "ghcr.io").expect("found"),
            Found::Auth {
                username: "ci".into(),
                password: "pa:ss".into()
            }
        );
        assert_eq!(
            find(&dc, "docker.io").expect("found"),
            Found::Auth {
                username: "u".into(),
                password: "p".into()
            }
        );
        assert_eq!(
            find(&dc, "registry.digitalocean.com").expect("found"),
            Found::Helper("doctl".into())
        );
        assert_eq!(find(&dc, "quay.io").expect("found"), Found::Nothing);
        // A credsStore answers for every host without a credHelpers entry.
        let dc = config(r#"{"auths": {"ghcr.io": {}}, "credsStore": "pass"}"#);
        assert_eq!(
            find(&dc, "ghcr.io").expect("found"),
            Found::Helper("pass".into())
        );
        // Damaged auth: an error naming the entry, not the value.
        let dc = config(r#"{"auths": {"ghcr.io": {"auth": "!!notbase64"}}}"#);
        let e = find(&dc, "ghcr.io").unwrap_err().to_string();
        assert!(e.contains("ghcr.io") && !e.contains("notbase64"), "{e}");
    }

    #[test]
    fn auth_errors_are_recognised() {
        assert!(is_auth_error(
            "Head \"http://127.0.0.1:5000/v2/bot/manifests/1\": no basic auth credentials"
        ));
        assert!(is_auth_error("unauthorized: authentication required"));
        assert!(is_auth_error(
            "denied: requested access to the resource is denied"
        ));
        assert!(!is_auth_error(
            "manifest for bot:9 not found: manifest unknown"
        ));
    }
}
