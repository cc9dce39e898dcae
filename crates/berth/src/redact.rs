//! The one scrubbing point: every text that leaves the process and may quote a command's
//! output (probe errors, migration logs, pg_dump's stderr, alert texts, the snapshot
//! behind `/health` and `status`, deploy records) passes through [`scrub`], which blanks
//! every secret value of every config this process has had in force: [`set`] (called by
//! the hub on every config change) adds the new ones and forgets none, so a value rotated
//! away is not printed either.

use std::sync::RwLock;

use berth_config::Config;

static SECRETS: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds the secrets of the config now in force.
pub fn set(cfg: &Config) {
    let mut s = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    s.extend(berth_core::secrets::secrets(cfg));
    // Longest first, so a secret that contains another is scrubbed whole.
    s.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    s.dedup();
}

/// Adds one secret found outside the config (a registry password from the Docker
/// client's config or a credential helper).
pub fn add(secret: &str) {
    if secret.len() < 4 {
        return;
    }
    let mut s = SECRETS.write().unwrap_or_else(|p| p.into_inner());
    if !s.iter().any(|k| k == secret) {
        s.push(secret.to_string());
        s.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    }
}

/// `text` with every secret blanked out.
pub fn scrub(text: &str) -> String {
    let s = SECRETS.read().unwrap_or_else(|p| p.into_inner());
    berth_core::secrets::scrub(text, &s)
}

/// Scrubs an optional text in place.
pub fn scrub_opt(text: &mut Option<String>) {
    if let Some(t) = text.as_mut()
        && let scrubbed = scrub(t)
        && scrubbed != *t
    {
        *t = scrubbed;
    }
}

/// The secrets known (for the senders of alerts).
pub fn secrets() -> Vec<String> {
    SECRETS.read().unwrap_or_else(|p| p.into_inner()).clone()
}
