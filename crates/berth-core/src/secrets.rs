//! Secret values (those that came from `${VAR}`) and the one function that blanks them
//! out of any text that leaves the process.

use berth_config::Config;

/// The secret values of the config, for scrubbing every outgoing text and error.
pub fn secrets(cfg: &Config) -> Vec<String> {
    let mut out: Vec<String> = cfg
        .services
        .values()
        .flat_map(|s| s.secrets())
        .map(str::to_string)
        .collect();
    if let Some(o) = cfg.backup.as_ref().and_then(|b| b.offsite.as_ref()) {
        out.push(o.access_key.value.clone());
        out.push(o.secret_key.value.clone());
        if let Some(k) = &o.encryption_key {
            out.push(k.value.clone());
        }
    }
    out.extend(cfg.registries.values().map(|r| r.password.value.clone()));
    if let Some(a) = &cfg.alerts {
        if let Some(t) = &a.telegram {
            out.push(t.token.value.clone());
        }
        if let Some(w) = &a.webhook
            && w.url.secret
        {
            out.push(w.url.value.clone());
        }
    }
    // Longest first, so a secret that contains another is scrubbed whole.
    out.retain(|s| s.len() >= 4);
    out.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
    out.dedup();
    out
}

pub fn scrub(text: &str, secrets: &[String]) -> String {
    let mut t = text.to_string();
    for s in secrets {
        if t.contains(s.as_str()) {
            t = t.replace(s.as_str(), "***");
        }
    }
    t
}
