//! A compose file (v2, v3, the Compose Specification) → a berth config.
//!
//! Pure: YAML text and the variables of the env file in, TOML text and notes out. Values
//! that come from the env file stay `${VAR}` references, so no secret is ever copied into
//! the TOML; whatever has no berth equivalent is listed in the notes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("not a compose file: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub toml: String,
    /// What could not be mapped, or was mapped with a change worth knowing.
    pub notes: Vec<String>,
}

/// What the import needs to know besides the file.
pub struct Input<'a> {
    pub yaml: &'a str,
    /// The compose file's folder: relative bind mounts and `env_file`s are relative to it.
    pub dir: &'a Path,
    /// Variables of the env file (`.env` beside the compose file, or `--env-file`).
    pub env: &'a BTreeMap<String, String>,
    /// The env file berth will read (`[supervisor] env_file`).
    pub env_file: Option<&'a Path>,
    /// Project name when the file has no `name:`.
    pub project: &'a str,
}

/// The largest compose file read (real ones are a few KiB).
pub const MAX_INPUT: usize = 1 << 20;
/// The deepest nesting of `[`/`{` read: YAML parsers take super-linear time on deep
/// flow nesting (200 KB of `[` took 46 s).
pub const MAX_DEPTH: usize = 64;

/// The deepest flow nesting in `yaml`, ignoring quoted text and comments.
fn flow_depth(yaml: &str) -> usize {
    let (mut depth, mut max) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    for line in yaml.lines() {
        let mut prev = ' ';
        for c in line.chars() {
            match (quote, c) {
                (Some(q), c) if c == q => quote = None,
                (Some(_), _) => {}
                (None, '#') if prev.is_whitespace() => break,
                (None, '"' | '\'') => quote = Some(c),
                (None, '[' | '{') => {
                    depth += 1;
                    max = max.max(depth);
                }
                (None, ']' | '}') => depth = depth.saturating_sub(1),
                _ => {}
            }
            prev = c;
        }
        // A quote does not span lines in the flow styles that matter here.
        quote = None;
    }
    max
}

/// The compose file as YAML, within the input limits.
fn parse_doc(yaml: &str) -> Result<Value, ImportError> {
    if yaml.len() > MAX_INPUT {
        return Err(ImportError::Invalid(format!(
            "{} bytes: larger than any compose file berth reads ({MAX_INPUT})",
            yaml.len()
        )));
    }
    if flow_depth(yaml) > MAX_DEPTH {
        return Err(ImportError::Invalid(format!(
            "nested deeper than {MAX_DEPTH} levels of [ and {{: not a compose file berth reads"
        )));
    }
    let mut doc: Value = serde_yaml_ng::from_str(yaml)?;
    doc.apply_merge()?;
    Ok(doc)
}

/// The `env_file`s the services name, each once, in the order they first appear.
pub fn service_env_files(yaml: &str) -> Result<Vec<String>, ImportError> {
    let doc = parse_doc(yaml)?;
    let mut out: Vec<String> = Vec::new();
    let services = doc.get("services").and_then(Value::as_mapping);
    for s in services.into_iter().flat_map(|m| m.values()) {
        let files: Vec<String> = match s.get("env_file") {
            Some(Value::Sequence(seq)) => seq
                .iter()
                .filter_map(|v| scalar(v).or_else(|| str_of(v.get("path"))))
                .collect(),
            Some(other) => scalar(other).into_iter().collect(),
            None => Vec::new(),
        };
        for f in files {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

pub fn import(input: &Input<'_>) -> Result<Imported, ImportError> {
    let doc = parse_doc(input.yaml)?;
    let root = doc
        .as_mapping()
        .ok_or_else(|| ImportError::Invalid("the top level is not a mapping".into()))?;
    let mut cx = Cx {
        env: input.env,
        notes: Vec::new(),
        dir: input.dir,
        holders: BTreeMap::new(),
        aliases: BTreeSet::new(),
    };
    let project = str_of(root.get("name"))
        .map(|n| cx.interpolate("name", &n))
        .unwrap_or_else(|| input.project.to_string());
    let services = root
        .get("services")
        .and_then(Value::as_mapping)
        .ok_or_else(|| ImportError::Invalid("no `services:` mapping".into()))?;
    for key in root.keys().filter_map(Value::as_str) {
        if !["version", "name", "services", "volumes", "networks"].contains(&key)
            && !key.starts_with("x-")
        {
            cx.note(format!("top-level `{key}:` is not supported: left out"));
        }
    }
    if let Some(n) = root.get("networks").and_then(Value::as_mapping)
        && !n.is_empty()
    {
        cx.note("networks: berth puts every service on one project network (aliases = service names): left out".into());
    }

    let mut out = String::new();
    out.push_str(&format!(
        "# Imported from a compose file by `berth import-compose`. Check it with `berth check`.\n\n[supervisor]\nproject = {}\n",
        q(&sanitize_project(&project))
    ));
    if let Some(e) = input.env_file {
        out.push_str(&format!("env_file = {}\n", q(&e.display().to_string())));
    }
    let names: BTreeSet<String> = services
        .keys()
        .filter_map(|k| k.as_str().map(str::to_string))
        .collect();
    cx.holders = services
        .iter()
        .filter_map(|(k, v)| {
            let h = str_of(v.get("network_mode"))?
                .strip_prefix("service:")?
                .to_string();
            Some((k.as_str()?.to_string(), h))
        })
        .collect();
    for (name, svc) in services {
        let Some(name) = name.as_str() else { continue };
        // Written into TOML as a table name: only what berth accepts as a service name.
        if !berth_config::is_name(name) {
            cx.note(format!(
                "services.{name:?}: not a name berth accepts (lowercase letters, digits, '-' and '_'): left out"
            ));
            continue;
        }
        let Some(svc) = svc.as_mapping() else {
            cx.note(format!("services.{name}: not a mapping: left out"));
            continue;
        };
        out.push('\n');
        out.push_str(&cx.service(name, svc, &names)?);
    }
    Ok(Imported {
        toml: out,
        notes: cx.notes,
    })
}

struct Cx<'a> {
    env: &'a BTreeMap<String, String>,
    notes: Vec<String>,
    dir: &'a Path,
    /// Service → the service whose network namespace it joins (`network_mode`).
    holders: BTreeMap<String, String>,
    /// Aliases given so far.
    aliases: BTreeSet<String>,
}

const SERVICE_KEYS: &[&str] = &[
    "image",
    "build",
    "command",
    "entrypoint",
    "user",
    "environment",
    "env_file",
    "volumes",
    "ports",
    "depends_on",
    "healthcheck",
    "deploy",
    "mem_limit",
    "cpus",
    "pids_limit",
    "read_only",
    "tmpfs",
    "logging",
    "stop_grace_period",
    "restart",
    "container_name",
    "networks",
    "network_mode",
    "expose",
    "labels",
    "init",
];

impl Cx<'_> {
    fn note(&mut self, n: String) {
        self.notes.push(n);
    }

    /// Compose interpolation (`$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
    /// `${VAR:?err}`, `$$`) into berth's (`${VAR}`, `$$`).
    fn interpolate(&mut self, key: &str, s: &str) -> String {
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            text.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(t) = after.strip_prefix('$') {
                text.push_str("$$");
                rest = t;
                continue;
            }
            let (expr, tail) = if let Some(t) = after.strip_prefix('{') {
                match t.find('}') {
                    Some(end) => (&t[..end], &t[end + 1..]),
                    None => {
                        text.push_str("$$");
                        rest = after;
                        continue;
                    }
                }
            } else {
                let end = after
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(after.len());
                if end == 0 {
                    text.push_str("$$");
                    rest = after;
                    continue;
                }
                (&after[..end], &after[end..])
            };
            let (name, default) = match expr.find([':', '-', '?']) {
                Some(p) => {
                    let op = &expr[p..];
                    let default = op
                        .strip_prefix(":-")
                        .or_else(|| op.strip_prefix('-'))
                        .map(str::to_string);
                    (&expr[..p], default)
                }
                None => (expr, None),
            };
            match (self.env.contains_key(name), default) {
                (true, _) => text.push_str(&format!("${{{name}}}")),
                (false, Some(d)) => {
                    self.note(format!(
                        "{key}: ${{{name}}} is not in the env file: used its default {d:?}"
                    ));
                    text.push_str(&d.replace('$', "$$"));
                }
                (false, None) => {
                    self.note(format!(
                        "{key}: ${{{name}}} is not in the env file: kept as ${{{name}}}; add {name}=... to it"
                    ));
                    text.push_str(&format!("${{{name}}}"));
                }
            }
            rest = tail;
        }
        text.push_str(rest);
        text
    }

    fn service(
        &mut self,
        name: &str,
        s: &Mapping,
        names: &BTreeSet<String>,
    ) -> Result<String, ImportError> {
        let key = |k: &str| format!("services.{name}.{k}");
        let mut lines: Vec<String> = Vec::new();
        for k in s.keys().filter_map(Value::as_str) {
            if !SERVICE_KEYS.contains(&k) && !k.starts_with("x-") {
                self.note(format!("{}: not supported: left out", key(k)));
            }
        }
        let image = str_of(s.get("image"))
            .map(|i| self.interpolate(&key("image"), &i))
            .unwrap_or_else(|| format!("{name}:latest"));
        lines.push(format!("image = {}", q(&image)));
        // `build:` (a context, or context/dockerfile/args/target): `berth deploy NAME
        // --build` builds it and tags it with the context's git revision.
        if let Some(b) = s.get("build") {
            let (context, m) = match b {
                Value::Mapping(m) => (
                    str_of(m.get("context")).unwrap_or_else(|| ".".into()),
                    Some(m),
                ),
                other => (scalar(other).unwrap_or_else(|| ".".into()), None),
            };
            let mut parts = vec![format!(
                "context = {}",
                q(&self.interpolate(&key("build.context"), &context))
            )];
            if let Some(m) = m {
                if let Some(d) = str_of(m.get("dockerfile")) {
                    parts.push(format!("dockerfile = {}", q(&d)));
                }
                if let Some(t) = str_of(m.get("target")) {
                    parts.push(format!("target = {}", q(&t)));
                }
                let args: Vec<(String, String)> = match m.get("args") {
                    Some(Value::Mapping(a)) => a
                        .iter()
                        .filter_map(|(k, v)| Some((scalar(k)?, scalar(v).unwrap_or_default())))
                        .collect(),
                    Some(Value::Sequence(a)) => a
                        .iter()
                        .filter_map(scalar)
                        .map(|kv| match kv.split_once('=') {
                            Some((k, v)) => (k.to_string(), v.to_string()),
                            None => (kv, String::new()),
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                if !args.is_empty() {
                    let kv: Vec<String> = args
                        .iter()
                        .map(|(k, v)| {
                            format!("{} = {}", q(k), q(&self.interpolate(&key("build.args"), v)))
                        })
                        .collect();
                    parts.push(format!("args = {{ {} }}", kv.join(", ")));
                }
            }
            lines.push(format!("build = {{ {} }}", parts.join(", ")));
            if s.get("image").is_none() {
                self.note(format!(
                    "{}: built images are tagged {name}:<git revision>; set image to name them otherwise",
                    key("build")
                ));
            }
        }

        for k in ["command", "entrypoint"] {
            if let Some(v) = s.get(k) {
                let words = match v {
                    Value::String(c) => match shlex::split(c) {
                        Some(w) => w,
                        None => {
                            self.note(format!("{}: cannot split {c:?}: left out", key(k)));
                            continue;
                        }
                    },
                    Value::Sequence(seq) => seq.iter().filter_map(scalar).collect(),
                    _ => continue,
                };
                let words: Vec<String> =
                    words.iter().map(|w| self.interpolate(&key(k), w)).collect();
                lines.push(format!("{k} = {}", list(&words)));
            }
        }
        if let Some(u) = str_of(s.get("user")) {
            lines.push(format!("user = {}", q(&u)));
        }

        // Environment: env_file first, `environment:` over it (compose's precedence).
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        if let Some(f) = s.get("env_file") {
            let files: Vec<String> = match f {
                Value::Sequence(seq) => seq
                    .iter()
                    .filter_map(|v| scalar(v).or_else(|| str_of(v.get("path"))))
                    .collect(),
                other => scalar(other).into_iter().collect(),
            };
            for file in files {
                let path = self.dir.join(&file);
                match std::fs::read_to_string(&path) {
                    Ok(text) => {
                        for (k, _) in parse_dotenv(&text) {
                            if self.env.contains_key(&k) {
                                env.insert(k.clone(), format!("${{{k}}}"));
                            } else {
                                self.note(format!(
                                    "{}: {k} from {file} is not in berth's env file: add it there (kept as ${{{k}}})",
                                    key("env_file")
                                ));
                                env.insert(k.clone(), format!("${{{k}}}"));
                            }
                        }
                    }
                    Err(e) => self.note(format!(
                        "{}: cannot read {}: {e}; its variables are left out",
                        key("env_file"),
                        path.display()
                    )),
                }
            }
        }
        match s.get("environment") {
            Some(Value::Mapping(m)) => {
                for (k, v) in m {
                    let Some(k) = scalar(k) else { continue };
                    let v = match v {
                        Value::Null => format!("${{{k}}}"),
                        other => {
                            let raw = scalar(other).unwrap_or_default();
                            self.interpolate(&key(&format!("environment.{k}")), &raw)
                        }
                    };
                    env.insert(k, v);
                }
            }
            Some(Value::Sequence(seq)) => {
                for item in seq.iter().filter_map(scalar) {
                    match item.split_once('=') {
                        Some((k, v)) => {
                            let v = self.interpolate(&key(&format!("environment.{k}")), v);
                            env.insert(k.to_string(), v);
                        }
                        // `- NAME` passes the variable through: berth reads it from its env file.
                        None => {
                            env.insert(item.clone(), format!("${{{item}}}"));
                        }
                    }
                }
            }
            _ => {}
        }
        // A literal value under a secret-looking name: the file it lands in is no place
        // for it.
        for (k, v) in &env {
            let upper = k.to_ascii_uppercase();
            let secretish = [
                "PASSWORD",
                "PASSWD",
                "SECRET",
                "TOKEN",
                "API_KEY",
                "PRIVATE_KEY",
            ]
            .iter()
            .any(|w| upper.contains(w));
            if secretish && !v.is_empty() && !v.contains("${") {
                self.note(format!(
                    "{}: a literal secret was copied into the config: move it to berth's env file as {k}=… and write \"${{{k}}}\" here",
                    key(&format!("env.{k}"))
                ));
            }
        }
        if !env.is_empty() {
            let items: Vec<String> = env
                .iter()
                .map(|(k, v)| format!("{} = {}", bare_key(k), q(v)))
                .collect();
            lines.push(format!("env = {{ {} }}", items.join(", ")));
        }

        let volumes = self.volumes(name, s.get("volumes"));
        if !volumes.is_empty() {
            lines.push(format!("volumes = {}", list(&volumes)));
        }
        let ports = self.ports(name, s.get("ports"));
        if !ports.is_empty() {
            lines.push(format!("ports = {}", list(&ports)));
        }

        // Limits: `deploy.resources.limits` (v3) or `mem_limit`/`cpus`/`pids_limit` (v2).
        let limits = s
            .get("deploy")
            .and_then(|d| d.get("resources"))
            .and_then(|r| r.get("limits"));
        if let Some(d) = s.get("deploy").and_then(Value::as_mapping) {
            for k in d.keys().filter_map(Value::as_str) {
                if k != "resources" {
                    self.note(format!(
                        "{}: not supported: left out",
                        key(&format!("deploy.{k}"))
                    ));
                }
            }
        }
        let memory = limits
            .and_then(|l| l.get("memory"))
            .or_else(|| s.get("mem_limit"))
            .and_then(scalar);
        if let Some(m) = memory {
            match docker_size(&m) {
                Some(b) => lines.push(format!("memory = {}", q(&bytesize_text(b)))),
                None => self.note(format!(
                    "{}: cannot read size {m:?}: left out",
                    key("memory")
                )),
            }
        }
        let cpus = limits
            .and_then(|l| l.get("cpus"))
            .or_else(|| s.get("cpus"))
            .and_then(scalar);
        if let Some(c) = cpus {
            match c.parse::<f64>() {
                Ok(c) if c > 0.0 => lines.push(format!("cpus = {c:?}")),
                _ => self.note(format!("{}: cannot read {c:?}: left out", key("cpus"))),
            }
        }
        let pids = limits
            .and_then(|l| l.get("pids"))
            .or_else(|| s.get("pids_limit"))
            .and_then(scalar)
            .and_then(|p| p.parse::<i64>().ok());
        if let Some(p) = pids.filter(|p| *p > 0) {
            lines.push(format!("pids_limit = {p}"));
        }
        if s.get("read_only").and_then(Value::as_bool) == Some(true) {
            lines.push("read_only = true".into());
        }
        // `service:X` is berth's `network = "service:X"`; host, none and the rest have
        // no berth form.
        if let Some(m) = str_of(s.get("network_mode")) {
            match m.strip_prefix("service:") {
                Some(h) if names.contains(h) => lines.push(format!("network = {}", q(&m))),
                _ => self.note(format!(
                    "{}: {m:?}: only \"service:NAME\" maps to berth: left out",
                    key("network_mode")
                )),
            }
        }
        // berth has one network, so the aliases a service has on any of compose's are
        // its aliases there, if berth can give them one address each.
        let mut aliases: Vec<String> = Vec::new();
        for a in s
            .get("networks")
            .and_then(Value::as_mapping)
            .into_iter()
            .flat_map(|nets| nets.values())
            .filter_map(|n| n.get("aliases").and_then(Value::as_sequence))
            .flat_map(|a| a.iter().filter_map(scalar))
        {
            let why = if a == name || aliases.contains(&a) {
                continue;
            } else if !berth_config::is_name(&a) {
                "not a name berth accepts (lowercase letters, digits, '-' and '_')".to_string()
            } else if names.contains(&a) && self.holders.get(&a).map(String::as_str) != Some(name) {
                format!("the name of service {a}, which is not in {name}'s network namespace")
            } else if !self.aliases.insert(a.clone()) {
                "an alias of another service too (berth gives a name one address)".to_string()
            } else {
                aliases.push(a);
                continue;
            };
            self.note(format!("{}: alias {a:?}: {why}: left out", key("networks")));
        }
        if !aliases.is_empty() {
            lines.push(format!(
                "aliases = [{}]",
                aliases.iter().map(|a| q(a)).collect::<Vec<_>>().join(", ")
            ));
        }
        let tmpfs: Vec<String> = match s.get("tmpfs") {
            Some(Value::Sequence(seq)) => seq.iter().filter_map(scalar).collect(),
            Some(v) => scalar(v).into_iter().collect(),
            None => Vec::new(),
        };
        let tmpfs: Vec<String> = tmpfs
            .into_iter()
            .map(|t| match t.split_once(':') {
                Some((path, opts)) => {
                    self.note(format!(
                        "{}: options {opts:?} of {path} dropped (berth mounts tmpfs rw,nosuid,nodev,size=64m)",
                        key("tmpfs")
                    ));
                    path.to_string()
                }
                None => t,
            })
            .collect();
        if !tmpfs.is_empty() {
            lines.push(format!("tmpfs = {}", list(&tmpfs)));
        }
        if let Some(g) = str_of(s.get("stop_grace_period")) {
            match humantime::parse_duration(&g) {
                Ok(_) => lines.push(format!("stop_grace_period = {}", q(&g))),
                Err(_) => self.note(format!(
                    "{}: cannot read {g:?}: left out",
                    key("stop_grace_period")
                )),
            }
        }

        let deps = self.depends_on(name, s.get("depends_on"), names);
        if !deps.is_empty() {
            lines.push(format!("depends_on = {}", list(&deps)));
        }
        if let Some(p) = self.healthcheck(name, s.get("healthcheck"), &env) {
            lines.push(format!("probe = {p}"));
        }
        if let Some(l) = s.get("logging") {
            let driver = str_of(l.get("driver")).unwrap_or_else(|| "json-file".into());
            if driver != "json-file" && driver != "local" {
                self.note(format!(
                    "{}: driver {driver:?} is not supported: berth uses json-file with rotation",
                    key("logging")
                ));
            }
            let opts = l.get("options");
            let mut parts = Vec::new();
            if let Some(sz) = opts.and_then(|o| o.get("max-size")).and_then(scalar) {
                match docker_size(&sz) {
                    Some(b) => parts.push(format!("max_size = {}", q(&bytesize_text(b)))),
                    None => self.note(format!("{}: cannot read max-size {sz:?}", key("logging"))),
                }
            }
            if let Some(n) = opts
                .and_then(|o| o.get("max-file"))
                .and_then(scalar)
                .and_then(|n| n.parse::<u32>().ok())
            {
                parts.push(format!("max_files = {n}"));
            }
            if !parts.is_empty() {
                lines.push(format!("logs = {{ {} }}", parts.join(", ")));
            }
        }
        match str_of(s.get("restart")).as_deref() {
            None | Some("always") | Some("unless-stopped") | Some("on-failure") => {}
            Some(other) => self.note(format!(
                "{}: {other:?}: berth restarts every service that stops (with backoff)",
                key("restart")
            )),
        }
        if s.get("container_name").is_some() {
            self.note(format!(
                "{}: berth names containers <project>-<service>: left out",
                key("container_name")
            ));
        }
        Ok(format!(
            "[services.{}]\n{}\n",
            bare_key(name),
            lines.join("\n")
        ))
    }

    fn volumes(&mut self, name: &str, v: Option<&Value>) -> Vec<String> {
        let Some(Value::Sequence(seq)) = v else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in seq {
            let (source, target, ro) = match item {
                Value::String(s) => {
                    let parts: Vec<&str> = s.split(':').collect();
                    match parts.as_slice() {
                        [t] => {
                            self.note(format!(
                                "services.{name}.volumes: anonymous volume {t} left out: give it a name"
                            ));
                            continue;
                        }
                        [s, t] => (s.to_string(), t.to_string(), false),
                        [s, t, mode, ..] => (s.to_string(), t.to_string(), mode.contains("ro")),
                        [] => continue,
                    }
                }
                Value::Mapping(m) => {
                    let (Some(s), Some(t)) = (str_of(m.get("source")), str_of(m.get("target")))
                    else {
                        self.note(format!(
                            "services.{name}.volumes: an entry without source and target left out"
                        ));
                        continue;
                    };
                    let ro = m.get("read_only").and_then(Value::as_bool) == Some(true);
                    (s, t, ro)
                }
                _ => continue,
            };
            let source = self.interpolate(&format!("services.{name}.volumes"), &source);
            // Bind mounts become absolute: the compose file's folder is not berth's.
            let source = if source.starts_with('.') || source.starts_with('~') {
                let p = source.trim_start_matches("./");
                let abs: PathBuf = if let Some(home) = p.strip_prefix("~/") {
                    PathBuf::from("/root").join(home)
                } else {
                    self.dir.join(p)
                };
                abs.display().to_string()
            } else {
                source
            };
            out.push(format!("{source}:{target}{}", if ro { ":ro" } else { "" }));
        }
        out
    }

    fn ports(&mut self, name: &str, v: Option<&Value>) -> Vec<String> {
        let Some(Value::Sequence(seq)) = v else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in seq {
            let spec = match item {
                Value::Mapping(m) => {
                    let (Some(t), Some(p)) = (scalar_at(m, "target"), scalar_at(m, "published"))
                    else {
                        continue;
                    };
                    match str_of(m.get("host_ip")) {
                        Some(ip) => format!("{ip}:{p}:{t}"),
                        None => format!("{p}:{t}"),
                    }
                }
                other => match scalar(other) {
                    Some(s) => s,
                    None => continue,
                },
            };
            let parts: Vec<&str> = spec.split(':').collect();
            if parts.len() == 2 {
                self.note(format!(
                    "services.{name}.ports: {spec} listens on every address in compose; berth publishes it on 127.0.0.1 (write 0.0.0.0:{spec} to expose it)"
                ));
            } else if parts.len() == 1 {
                self.note(format!(
                    "services.{name}.ports: {spec} (a random host port) left out: give the host port"
                ));
                continue;
            }
            out.push(spec);
        }
        out
    }

    fn depends_on(
        &mut self,
        name: &str,
        v: Option<&Value>,
        names: &BTreeSet<String>,
    ) -> Vec<String> {
        let deps: Vec<String> = match v {
            Some(Value::Sequence(seq)) => seq.iter().filter_map(scalar).collect(),
            Some(Value::Mapping(m)) => m
                .iter()
                .filter_map(|(k, cond)| {
                    let k = scalar(k)?;
                    let c = str_of(cond.get("condition")).unwrap_or_default();
                    if c == "service_completed_successfully" {
                        self.note(format!(
                            "services.{name}.depends_on.{k}: berth has no run-once services; it waits for {k} to be healthy"
                        ));
                    }
                    Some(k)
                })
                .collect(),
            _ => Vec::new(),
        };
        deps.into_iter()
            .filter(|d| {
                let known = names.contains(d);
                if !known {
                    self.note(format!(
                        "services.{name}.depends_on: unknown service {d}: left out"
                    ));
                }
                known
            })
            .collect()
    }

    /// `healthcheck` → a native probe where the command is recognised, else an exec probe.
    fn healthcheck(
        &mut self,
        name: &str,
        v: Option<&Value>,
        env: &BTreeMap<String, String>,
    ) -> Option<String> {
        let h = v?.as_mapping()?;
        if h.get("disable").and_then(Value::as_bool) == Some(true) {
            return None;
        }
        let test: Vec<String> = match h.get("test")? {
            Value::String(s) => vec!["CMD-SHELL".into(), s.clone()],
            Value::Sequence(seq) => seq.iter().filter_map(scalar).collect(),
            _ => return None,
        };
        let argv: Vec<String> = match test.first().map(String::as_str) {
            Some("NONE") => return None,
            Some("CMD") => test[1..].to_vec(),
            Some("CMD-SHELL") => {
                let line = test[1..].join(" ");
                shlex::split(&line).unwrap_or_else(|| vec![line.clone()])
            }
            _ => test.clone(),
        };
        let shell_line = match test.first().map(String::as_str) {
            Some("CMD-SHELL") => Some(test[1..].join(" ")),
            _ => None,
        };
        let argv: Vec<String> = argv
            .iter()
            .map(|w| self.interpolate(&format!("services.{name}.healthcheck"), w))
            .collect();
        let kind = recognise(&argv, env).unwrap_or_else(|| {
            let cmd = match &shell_line {
                Some(l) => vec!["sh".to_string(), "-c".to_string(), l.clone()],
                None => argv.clone(),
            };
            let cmd: Vec<String> = cmd
                .iter()
                .map(|w| self.interpolate(&format!("services.{name}.healthcheck"), w))
                .collect();
            format!("exec = {{ command = {} }}", list(&cmd))
        });
        let mut parts = vec![kind];
        for (ck, bk) in [("interval", "interval"), ("timeout", "timeout")] {
            if let Some(d) = str_of(h.get(ck))
                && humantime::parse_duration(&d).is_ok()
            {
                parts.push(format!("{bk} = {}", q(&d)));
            }
        }
        if let Some(r) = h
            .get("retries")
            .and_then(scalar)
            .and_then(|r| r.parse::<u32>().ok())
        {
            parts.push(format!("failures = {r}"));
        }
        if let Some(d) = str_of(h.get("start_period"))
            && humantime::parse_duration(&d).is_ok()
        {
            parts.push(format!("start_timeout = {}", q(&d)));
        }
        Some(format!("{{ {} }}", parts.join(", ")))
    }
}

/// `pg_isready`, `redis-cli ping`, `curl`/`wget` of a local URL → a native probe. `env` is
/// the service's environment in berth's terms.
fn recognise(argv: &[String], env: &BTreeMap<String, String>) -> Option<String> {
    // `sh -c "..."` wrappers and `|| exit 1` tails are common.
    let words: Vec<&str> = argv
        .iter()
        .map(String::as_str)
        .take_while(|w| !["||", "&&", ";", "|"].contains(w))
        .collect();
    let prog = words.first()?.rsplit('/').next()?;
    let flag = |names: &[&str]| -> Option<String> {
        words
            .windows(2)
            .find_map(|w| names.contains(&w[0]).then(|| w[1].to_string()))
            .or_else(|| {
                words.iter().find_map(|w| {
                    names.iter().find_map(|n| {
                        n.starts_with("--")
                            .then(|| w.strip_prefix(&format!("{n}=")).map(str::to_string))
                            .flatten()
                    })
                })
            })
    };
    // `$$POSTGRES_USER` is the container's own variable (escaped for compose): its value in
    // the service's environment, which may itself be a `${VAR}` of the env file.
    let reference = |v: String| -> String {
        match v.strip_prefix("$$") {
            Some(name) => {
                let name = name.trim_matches(['{', '}']);
                env.get(name)
                    .cloned()
                    .unwrap_or_else(|| format!("${{{name}}}"))
            }
            None => v,
        }
    };
    match prog {
        "pg_isready" => {
            let mut parts = Vec::new();
            if let Some(u) = flag(&["-U", "--username"]) {
                parts.push(format!("user = {}", q(&reference(u))));
            }
            if let Some(d) = flag(&["-d", "--dbname"]) {
                parts.push(format!("database = {}", q(&reference(d))));
            }
            if let Some(pw) = env.get("POSTGRES_PASSWORD") {
                parts.push(format!("password = {}", q(pw)));
            }
            Some(format!("postgres = {{ {} }}", parts.join(", ")))
        }
        "redis-cli" if words.iter().any(|w| w.eq_ignore_ascii_case("ping")) => {
            match flag(&["-a", "--pass"]) {
                Some(p) => Some(format!("redis = {{ password = {} }}", q(&reference(p)))),
                None => Some("redis = {}".into()),
            }
        }
        "curl" | "wget" => {
            let url = words.iter().find(|w| w.starts_with("http://"))?;
            let rest = url.strip_prefix("http://")?;
            let (host, path) = rest
                .split_once('/')
                .map_or((rest, "/".to_string()), |(h, p)| (h, format!("/{p}")));
            let (h, port) = host.rsplit_once(':').map_or((host, "80"), |(h, p)| (h, p));
            if !["localhost", "127.0.0.1", "0.0.0.0", "[::1]"].contains(&h) {
                return None;
            }
            let port: u16 = port.parse().ok()?;
            Some(format!("http = {{ port = {port}, path = {} }}", q(&path)))
        }
        _ => None,
    }
}

/// KEY=VALUE lines of an env file (comments and blanks skipped); values are not kept.
fn parse_dotenv(text: &str) -> Vec<(String, ())> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let l = l.strip_prefix("export ").unwrap_or(l);
            let (k, _) = l.split_once('=')?;
            Some((k.trim().to_string(), ()))
        })
        .collect()
}

/// Docker's sizes: a number with an optional b/k/m/g (binary) suffix.
fn docker_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let s = s
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(['k', 'm', 'g']))
        .unwrap_or(&s);
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1u64 << 10),
        'm' => (&s[..s.len() - 1], 1 << 20),
        'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let n: f64 = num.trim().parse().ok()?;
    (n > 0.0).then_some((n * mult as f64) as u64)
}

fn bytesize_text(b: u64) -> String {
    crate::binary_size(b, ["GiB", "MiB", "KiB"], "B")
}

fn sanitize_project(p: &str) -> String {
    let s: String = p
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "berth".into() } else { s }
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn scalar_at(m: &Mapping, k: &str) -> Option<String> {
    m.get(k).and_then(scalar)
}

fn str_of(v: Option<&Value>) -> Option<String> {
    v.and_then(scalar)
}

/// A TOML string.
pub(crate) fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

fn list(items: &[String]) -> String {
    format!(
        "[{}]",
        items.iter().map(|i| q(i)).collect::<Vec<_>>().join(", ")
    )
}

/// A TOML key: bare when it can be, quoted otherwise.
fn bare_key(k: &str) -> String {
    if !k.is_empty()
        && k.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        k.to_string()
    } else {
        q(k)
    }
}

#[cfg(test)]
mod tests;
