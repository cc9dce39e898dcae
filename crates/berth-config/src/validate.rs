//! Raw → domain. Every check pushes an error and carries on, so one run reports everything.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use crate::env::{interpolate, parse_env_file};
use crate::error::{ConfigError, ConfigErrors, Locator};
use crate::model::*;
use crate::raw::*;
use crate::resolve_path;

struct Ctx<'a> {
    loc: Locator<'a>,
    errors: Vec<ConfigError>,
    lookup: &'a dyn Fn(&str) -> Option<String>,
    env_vars: BTreeMap<String, String>,
    /// The env file could not be used: missing `${VAR}`s would only repeat that error.
    env_file_failed: bool,
    warnings: Vec<String>,
}

/// The most memory a limit may name (beyond it the engine's signed 64-bit field wraps).
const MAX_MEMORY: u64 = 1 << 50;
/// The most services one config may have (each SIGHUP plans them all).
const MAX_SERVICES: usize = 1000;
/// The most CPUs a limit may name.
const MAX_CPUS: f64 = 1024.0;

/// A name the environment can carry: letters, digits and `_`, not starting with a digit.
fn is_env_key(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The longest duration any setting takes (timeouts, backoffs, periods).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

impl Ctx<'_> {
    fn err(&mut self, span: &Range<usize>, msg: impl Into<String>) {
        let e = self.loc.span(span, msg);
        self.errors.push(e);
    }

    fn var(&self, name: &str) -> Option<String> {
        self.env_vars
            .get(name)
            .cloned()
            .or_else(|| (self.lookup)(name))
    }

    fn value(&mut self, key: &str, v: &S<String>) -> Value {
        let lookup = |k: &str| self.var(k);
        match interpolate(v.get_ref(), &lookup) {
            Ok(i) => Value {
                template: v.get_ref().clone(),
                value: i.value,
                secret: !i.vars.is_empty(),
            },
            Err(msgs) => {
                let quiet = self.env_file_failed;
                for m in msgs.into_iter().filter(|_| !quiet) {
                    self.err(&v.span(), format!("{key}: {m}"));
                }
                Value::plain(v.get_ref())
            }
        }
    }

    fn duration(&mut self, key: &str, v: &Option<S<String>>, default: Duration) -> Duration {
        let Some(v) = v else { return default };
        match humantime::parse_duration(v.get_ref()) {
            // Bounded, so that no timer or instant arithmetic downstream can overflow.
            Ok(d) if d > MAX_DURATION => {
                self.err(
                    &v.span(),
                    format!(
                        "{key}: {:?} is longer than the longest berth accepts ({})",
                        v.get_ref(),
                        humantime::format_duration(MAX_DURATION)
                    ),
                );
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.err(
                    &v.span(),
                    format!(
                        "{key}: invalid duration {:?} ({e}); write e.g. \"10s\", \"5m\", \"100ms\"",
                        v.get_ref()
                    ),
                );
                default
            }
        }
    }

    fn warn(&mut self, span: &Range<usize>, msg: impl Into<String>) {
        let w = self.loc.span(span, msg);
        self.warnings.push(w.to_string());
    }

    fn size(&mut self, key: &str, v: &S<SizeValue>) -> Option<u64> {
        match v.get_ref() {
            SizeValue::Bytes(b) if *b < 0 => {
                self.err(
                    &v.span(),
                    format!("{key}: {b} is negative; write a size, e.g. \"512MiB\""),
                );
                None
            }
            SizeValue::Bytes(b) => Some(*b as u64),
            SizeValue::Text(t) => match t.trim().parse::<bytesize::ByteSize>() {
                Ok(b) => Some(b.as_u64()),
                Err(e) => {
                    self.err(
                        &v.span(),
                        format!("{key}: invalid size {t:?} ({e}); write e.g. \"512MiB\""),
                    );
                    None
                }
            },
        }
    }
}

pub(crate) fn parse(
    path: &Path,
    src: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    read_env_file: bool,
) -> Result<Config, ConfigErrors> {
    let loc = Locator { file: path, src };
    let raw = parse_raw(&loc, src)?;
    let mut cx = Ctx {
        loc,
        errors: Vec::new(),
        lookup,
        env_vars: BTreeMap::new(),
        env_file_failed: false,
        warnings: Vec::new(),
    };
    let supervisor = supervisor(&mut cx, path, &raw.supervisor, read_env_file);
    let names: BTreeSet<String> = raw.services.keys().cloned().collect();
    if names.len() > MAX_SERVICES {
        cx.err(
            &(0..0),
            format!(
                "{} services: berth supervises at most {MAX_SERVICES} on one host",
                names.len()
            ),
        );
    }
    let mut services = BTreeMap::new();
    for (name, svc) in &raw.services {
        if let Some(s) = service(&mut cx, path, name, svc, &names) {
            services.insert(name.clone(), s);
        }
    }
    check_cycles(&mut cx, &raw.services);
    check_network_sharing(&mut cx, &raw.services, &services);
    check_aliases(&mut cx, &raw.services, &services, &supervisor.project);
    let backup = raw
        .backup
        .as_ref()
        .and_then(|b| backup(&mut cx, path, b, &supervisor, &services));
    let alerts = raw.alerts.as_ref().map(|a| alerts(&mut cx, a));
    let registries = raw
        .registries
        .iter()
        .map(|(host, r)| (host.clone(), registry(&mut cx, host, r)))
        .collect();
    if cx.errors.is_empty() {
        Ok(Config {
            path: path.to_path_buf(),
            supervisor,
            services,
            backup,
            alerts,
            registries,
            warnings: cx.warnings,
        })
    } else {
        cx.errors.sort_by_key(|e| (e.file.clone(), e.line, e.col));
        cx.errors.dedup();
        Err(ConfigErrors(cx.errors))
    }
}

/// Syntax, types and unknown keys. A syntax or type error stops here (serde can only
/// report one); unknown keys are all collected.
fn parse_raw(loc: &Locator<'_>, src: &str) -> Result<RawConfig, ConfigErrors> {
    let one = |e: toml::de::Error| {
        let at = e.span().map_or(0, |s| s.start);
        ConfigErrors(vec![loc.at(at, e.message().trim().to_string())])
    };
    let de = toml::Deserializer::parse(src).map_err(one)?;
    let mut unknown: Vec<Vec<String>> = Vec::new();
    let raw: RawConfig =
        serde_ignored::deserialize(de, |p| unknown.push(path_segments(&p))).map_err(one)?;
    if unknown.is_empty() {
        return Ok(raw);
    }
    let doc = DeTable::parse(src).map_err(one)?;
    let mut errors: Vec<ConfigError> = unknown
        .iter()
        .map(|segs| {
            let at = locate_key(doc.get_ref(), segs).unwrap_or(0);
            loc.at(at, format!("unknown key `{}`", segs.join(".")))
        })
        .collect();
    errors.sort_by_key(|e| (e.line, e.col));
    Err(ConfigErrors(errors))
}

fn path_segments(p: &serde_ignored::Path<'_>) -> Vec<String> {
    use serde_ignored::Path as P;
    let mut out = match p {
        P::Root => return Vec::new(),
        P::Seq { parent, .. }
        | P::Map { parent, .. }
        | P::Some { parent }
        | P::NewtypeStruct { parent }
        | P::NewtypeVariant { parent } => path_segments(parent),
    };
    match p {
        P::Map { key, .. } if !key.starts_with("$__") => out.push(key.clone()),
        P::Seq { index, .. } => out.push(index.to_string()),
        _ => {}
    }
    out
}

/// Byte offset of the key at `segs` in the document, for unknown-key errors.
fn locate_key(table: &DeTable<'_>, segs: &[String]) -> Option<usize> {
    let (first, rest) = segs.split_first()?;
    let (k, v) = table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == first.as_str())?;
    if rest.is_empty() {
        return Some(k.span().start);
    }
    locate_in_value(v.get_ref(), rest).or(Some(k.span().start))
}

fn locate_in_value(v: &DeValue<'_>, segs: &[String]) -> Option<usize> {
    match v {
        DeValue::Table(t) => locate_key(t, segs),
        DeValue::Array(a) => {
            let (first, rest) = segs.split_first()?;
            let item = a.get(first.parse::<usize>().ok()?)?;
            if rest.is_empty() {
                Some(item.span().start)
            } else {
                locate_in_value(item.get_ref(), rest)
            }
        }
        _ => None,
    }
}

fn supervisor(cx: &mut Ctx<'_>, path: &Path, raw: &S<RawSupervisor>, read_env: bool) -> Supervisor {
    let r = raw.get_ref();
    let project = r.project.get_ref().clone();
    if !is_name(&project) {
        cx.err(
            &r.project.span(),
            format!(
                "supervisor.project: {project:?} is not a valid name: use lowercase letters, digits, '-' and '_', starting with a letter or digit"
            ),
        );
    }
    let default_listen = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 7878);
    let health_listen = match &r.health_listen {
        None => default_listen,
        Some(s) => match s.get_ref().parse::<SocketAddr>() {
            Ok(a) if a.ip().is_loopback() => a,
            Ok(a) => {
                cx.err(
                    &s.span(),
                    format!(
                        "supervisor.health_listen: {a} is not a loopback address; /health and /metrics are served on 127.0.0.1 only"
                    ),
                );
                default_listen
            }
            Err(_) => {
                cx.err(
                    &s.span(),
                    format!(
                        "supervisor.health_listen: {:?} is not an address; write e.g. \"127.0.0.1:7878\"",
                        s.get_ref()
                    ),
                );
                default_listen
            }
        },
    };
    let path_or = |v: &Option<S<String>>, default: &str| {
        v.as_ref().map_or_else(
            || PathBuf::from(default),
            |s| resolve_path(path, s.get_ref()),
        )
    };
    let state_dir = path_or(&r.state_dir, "/var/lib/berth");
    let admin_socket = path_or(&r.admin_socket, "/run/berth/admin.sock");
    // berth replaces a stale socket at start-up: never anything else that is there.
    if read_env
        && let Some(s) = &r.admin_socket
        && let Ok(meta) = std::fs::symlink_metadata(&admin_socket)
    {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            cx.err(
                &s.span(),
                format!(
                    "supervisor.admin_socket: {} exists and is not a socket; berth will not replace it: name a path of its own, e.g. \"/run/berth/admin.sock\"",
                    admin_socket.display()
                ),
            );
        }
    }
    let env_file = r.env_file.as_ref().map(|s| {
        let p = resolve_path(path, s.get_ref());
        if read_env {
            read_env_file(cx, s, &p);
        }
        p
    });
    let on_stop = match r.on_stop.as_ref().map(|s| (s.get_ref().as_str(), s.span())) {
        None | Some(("leave", _)) => OnStop::Leave,
        Some(("stop", _)) => OnStop::Stop,
        Some((other, span)) => {
            cx.err(
                &span,
                format!("supervisor.on_stop: {other:?} is not one of \"leave\", \"stop\""),
            );
            OnStop::Leave
        }
    };
    Supervisor {
        project,
        health_listen,
        state_dir,
        admin_socket,
        env_file,
        on_stop,
    }
}

fn read_env_file(cx: &mut Ctx<'_>, key: &S<String>, p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    cx.env_file_failed = true; // until it has been read
    let meta = match std::fs::metadata(p) {
        Ok(m) => m,
        Err(e) => {
            cx.err(
                &key.span(),
                format!("supervisor.env_file: cannot read {}: {e}", p.display()),
            );
            return;
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        cx.err(
            &key.span(),
            format!(
                "supervisor.env_file: {} holds secrets but is readable by group or others (mode {mode:04o}); run: chmod 600 {}",
                p.display(),
                p.display()
            ),
        );
        return;
    }
    match std::fs::read_to_string(p) {
        Ok(text) => match parse_env_file(p, &text) {
            Ok(vars) => {
                cx.env_vars = vars;
                cx.env_file_failed = false;
            }
            Err(errs) => cx.errors.extend(errs),
        },
        Err(e) => cx.err(
            &key.span(),
            format!("supervisor.env_file: cannot read {}: {e}", p.display()),
        ),
    }
}

/// A service, project or alias name: lowercase letters, digits, `-` and `_`, starting
/// with a letter or digit (what compose import must write, too).
pub fn is_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

fn service(
    cx: &mut Ctx<'_>,
    path: &Path,
    n: &String,
    raw: &S<RawService>,
    names: &BTreeSet<String>,
) -> Option<Service> {
    let r = raw.get_ref();
    let key = |k: &str| format!("services.{n}.{k}");
    if !is_name(n) {
        cx.err(
            &raw.span(),
            format!(
                "services.{n}: not a valid service name: use lowercase letters, digits, '-' and '_'"
            ),
        );
    }
    let image = r.image.get_ref();
    if image.trim().is_empty() {
        cx.err(
            &r.image.span(),
            format!("{}: must not be empty", key("image")),
        );
    } else if image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.err(
            &r.image.span(),
            format!(
                "{}: {image:?} is not an image reference (no spaces or control characters), e.g. \"postgres:16\"",
                key("image")
            ),
        );
    }
    let mut env = BTreeMap::new();
    for (k, v) in &r.env {
        let value = cx.value(&key(&format!("env.{k}")), v);
        if !is_env_key(k) {
            cx.err(
                &v.span(),
                format!(
                    "{}: {k:?} is not an environment variable name (letters, digits and _, not starting with a digit)",
                    key("env")
                ),
            );
        }
        if value.value.contains('\0') {
            // Said without the value: it may be a secret.
            cx.err(
                &v.span(),
                format!("{}: contains a NUL byte", key(&format!("env.{k}"))),
            );
        }
        env.insert(k.clone(), value);
    }
    let volumes = r
        .volumes
        .iter()
        .filter_map(|v| volume(cx, path, &key("volumes"), v))
        .collect();
    let ports = r
        .ports
        .iter()
        .filter_map(|p| port(cx, &key("ports"), p))
        .collect();
    let memory = r.memory.as_ref().and_then(|m| cx.size(&key("memory"), m));
    if let (Some(m), Some(raw)) = (memory, &r.memory)
        && m > MAX_MEMORY
    {
        cx.err(
            &raw.span(),
            format!(
                "{}: {} is more than any host has (at most {})",
                key("memory"),
                bytesize::ByteSize(m),
                bytesize::ByteSize(MAX_MEMORY)
            ),
        );
    }
    if let Some(c) = &r.cpus
        && !(*c.get_ref() > 0.0 && *c.get_ref() <= MAX_CPUS)
    {
        cx.err(
            &c.span(),
            format!(
                "{}: must be a positive number of CPUs, at most {MAX_CPUS}",
                key("cpus")
            ),
        );
    }
    if let Some(p) = &r.pids_limit
        && *p.get_ref() <= 0
    {
        cx.err(
            &p.span(),
            format!("{}: must be positive", key("pids_limit")),
        );
    }
    for t in &r.tmpfs {
        if !t.get_ref().starts_with('/') {
            cx.err(
                &t.span(),
                format!(
                    "{}: {:?} must be an absolute path",
                    key("tmpfs"),
                    t.get_ref()
                ),
            );
        }
    }
    let stop_grace_period = cx.duration(
        &key("stop_grace_period"),
        &r.stop_grace_period,
        Duration::from_secs(10),
    );
    let mut depends_on = Vec::new();
    for d in &r.depends_on {
        if d.get_ref() == n {
            cx.err(
                &d.span(),
                format!("{}: a service cannot depend on itself", key("depends_on")),
            );
        } else if !names.contains(d.get_ref()) {
            cx.err(
                &d.span(),
                format!(
                    "{}: unknown service {:?} (services: {})",
                    key("depends_on"),
                    d.get_ref(),
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
        } else {
            depends_on.push(d.get_ref().clone());
        }
    }
    let network_of = r.network.as_ref().and_then(|v| {
        let Some(of) = v.get_ref().strip_prefix("service:") else {
            cx.err(
                &v.span(),
                format!(
                    "{}: {:?}: the one form is \"service:NAME\" (join service NAME's network namespace); without it a service is on the project's network",
                    key("network"),
                    v.get_ref()
                ),
            );
            return None;
        };
        if of == n {
            cx.err(&v.span(), format!("{}: a service cannot join itself", key("network")));
            return None;
        }
        if !names.contains(of) {
            cx.err(
                &v.span(),
                format!(
                    "{}: unknown service {of:?} (services: {})",
                    key("network"),
                    names.iter().cloned().collect::<Vec<_>>().join(", ")
                ),
            );
            return None;
        }
        if let Some(p) = r.ports.first() {
            cx.err(
                &p.span(),
                format!(
                    "{}: a service in {of}'s network namespace publishes no ports of its own: publish them on {of}",
                    key("ports")
                ),
            );
        }
        if !depends_on.iter().any(|d| d == of) {
            depends_on.push(of.to_string());
        }
        Some(of.to_string())
    });
    let mut aliases: Vec<String> = Vec::new();
    for a in &r.aliases {
        let v = a.get_ref();
        let msg = if !is_name(v) {
            format!(
                "{v:?} is not a valid name: use lowercase letters, digits, '-' and '_', starting with a letter or digit"
            )
        } else if let Some(of) = &network_of {
            format!(
                "a service in {of}'s network namespace has no address of its own: give {of} the alias"
            )
        } else if v == n || aliases.contains(v) {
            format!("{v:?} is already a name of {n}")
        } else {
            aliases.push(v.clone());
            continue;
        };
        cx.err(&a.span(), format!("{}: {msg}", key("aliases")));
    }
    let probe = r.probe.as_ref().and_then(|p| probe(cx, n, p));
    let restart = r
        .restart
        .as_ref()
        .map_or_else(RestartPolicy::default, |rr| {
            let d = RestartPolicy::default();
            let initial_backoff = cx.duration(
                &key("restart.initial_backoff"),
                &rr.initial_backoff,
                d.initial_backoff,
            );
            if let Some(v) = &rr.initial_backoff
                && initial_backoff.is_zero()
            {
                cx.err(
                    &v.span(),
                    format!(
                        "{}: must be more than 0 (a service that exits at once would be restarted in a tight loop); write e.g. \"1s\"",
                        key("restart.initial_backoff")
                    ),
                );
            }
            RestartPolicy {
                initial_backoff,
                max_backoff: cx.duration(
                    &key("restart.max_backoff"),
                    &rr.max_backoff,
                    d.max_backoff,
                ),
                reset_after: cx.duration(
                    &key("restart.reset_after"),
                    &rr.reset_after,
                    d.reset_after,
                ),
            }
        });
    let logs = r.logs.as_ref().map_or_else(Logs::default, |l| {
        let d = Logs::default();
        Logs {
            max_size: l
                .max_size
                .as_ref()
                .and_then(|s| {
                    let size = cx.size(&key("logs.max_size"), s)?;
                    if size == 0 {
                        cx.err(
                            &s.span(),
                            format!(
                                "{}: must be more than 0, e.g. \"10MiB\"",
                                key("logs.max_size")
                            ),
                        );
                    }
                    Some(size)
                })
                .unwrap_or(d.max_size),
            max_files: l.max_files.as_ref().map_or(d.max_files, |f| {
                if *f.get_ref() == 0 {
                    cx.err(
                        &f.span(),
                        format!("{}: must be at least 1", key("logs.max_files")),
                    );
                }
                *f.get_ref()
            }),
        }
    });
    let deploy = r
        .deploy
        .as_ref()
        .map_or_else(Deploy::default, |d| deploy(cx, n, d));
    let mut words = |k: &str, v: &Option<Vec<S<String>>>| {
        v.as_ref()
            .map(|c| c.iter().map(|w| cx.value(&key(k), w)).collect::<Vec<_>>())
    };
    let command = words("command", &r.command);
    let entrypoint = words("entrypoint", &r.entrypoint);
    let build = r.build.as_ref().map(|b| {
        let b = b.get_ref();
        let dockerfile = b
            .dockerfile
            .as_ref()
            .map_or_else(|| "Dockerfile".to_string(), |d| d.get_ref().clone());
        if let Some(d) = &b.dockerfile
            && (d.get_ref().is_empty()
                || Path::new(d.get_ref()).is_absolute()
                || d.get_ref().split('/').any(|p| p == ".."))
        {
            cx.err(
                &d.span(),
                format!("{}: a path inside the context", key("build.dockerfile")),
            );
        }
        let mut args = BTreeMap::new();
        for (k, v) in &b.args {
            let value = cx.value(&key(&format!("build.args.{k}")), v);
            if value.secret {
                cx.warn(
                    &v.span(),
                    format!(
                        "{}: a build argument stays in the image's history for anyone who can pull it; pass secrets at run time (env)",
                        key(&format!("build.args.{k}"))
                    ),
                );
            }
            args.insert(k.clone(), value.value);
        }
        Build {
            context: resolve_path(path, b.context.get_ref()),
            dockerfile,
            args,
            target: b.target.as_ref().map(|t| t.get_ref().clone()),
        }
    });
    Some(Service {
        name: n.clone(),
        image: r.image.get_ref().clone(),
        command,
        entrypoint,
        user: r.user.as_ref().map(|u| u.get_ref().clone()),
        env,
        volumes,
        ports,
        memory,
        cpus: r.cpus.as_ref().map(|c| *c.get_ref()),
        pids_limit: r.pids_limit.as_ref().map(|p| *p.get_ref()),
        read_only: r.read_only.unwrap_or(false),
        tmpfs: r.tmpfs.iter().map(|t| t.get_ref().clone()).collect(),
        stop_grace_period,
        depends_on,
        network_of,
        aliases,
        probe,
        restart,
        logs,
        deploy,
        build,
    })
}

fn volume(cx: &mut Ctx<'_>, path: &Path, key: &str, v: &S<String>) -> Option<VolumeMount> {
    let parts: Vec<&str> = v.get_ref().split(':').collect();
    let (src, target, mode) = match parts.as_slice() {
        [s, t] => (*s, *t, None),
        [s, t, m] => (*s, *t, Some(*m)),
        _ => {
            cx.err(
                &v.span(),
                format!("{key}: {:?} is not SOURCE:TARGET[:ro]", v.get_ref()),
            );
            return None;
        }
    };
    let read_only = match mode {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(m) => {
            cx.err(
                &v.span(),
                format!("{key}: unknown mode {m:?}: use \"ro\" or \"rw\""),
            );
            false
        }
    };
    if !target.starts_with('/') {
        cx.err(
            &v.span(),
            format!("{key}: target {target:?} must be an absolute path"),
        );
        return None;
    }
    let source = if src.starts_with('/') || src.starts_with('.') {
        let host = resolve_path(path, src);
        if host == Path::new("/") || host.ends_with("docker.sock") {
            cx.warn(
                &v.span(),
                format!(
                    "{key}: binding {} gives the container the whole host{}",
                    host.display(),
                    if host.ends_with("docker.sock") {
                        " (the Docker socket is root on the host)"
                    } else {
                        ""
                    }
                ),
            );
        }
        VolumeSource::Bind(host)
    } else if is_name(src) {
        VolumeSource::Named(src.to_string())
    } else {
        cx.err(
            &v.span(),
            format!(
                "{key}: {src:?} is neither a volume name nor a path (start host paths with / or ./)"
            ),
        );
        return None;
    };
    Some(VolumeMount {
        source,
        target: target.to_string(),
        read_only,
    })
}

/// `[IP:]HOST:CONTAINER[/PROTO]`. Without IP the port is published on 127.0.0.1 only;
/// any other address must be written out as a literal IP.
fn port(cx: &mut Ctx<'_>, key: &str, v: &S<String>) -> Option<PortMapping> {
    let text = v.get_ref();
    let (spec, protocol) = match text.split_once('/') {
        Some((s, p)) if p == "tcp" || p == "udp" => (s, p.to_string()),
        Some((_, p)) => {
            cx.err(
                &v.span(),
                format!("{key}: unknown protocol {p:?}: use tcp or udp"),
            );
            return None;
        }
        None => (text.as_str(), "tcp".to_string()),
    };
    // The container port is after the last ':', the host port before it, the address
    // (possibly IPv6 in brackets) before that.
    let bad = |cx: &mut Ctx<'_>| {
        cx.err(
            &v.span(),
            format!(
                "{key}: {text:?} is not [IP:]HOST_PORT:CONTAINER_PORT, e.g. \"127.0.0.1:8080:80\""
            ),
        );
    };
    let Some((rest, container)) = spec.rsplit_once(':') else {
        bad(cx);
        return None;
    };
    let (ip_text, host) = match rest.rsplit_once(':') {
        Some((ip, h)) => (Some(ip), h),
        None => (None, rest),
    };
    let (Ok(host_port), Ok(container_port)) = (host.parse::<u16>(), container.parse::<u16>())
    else {
        bad(cx);
        return None;
    };
    let host_ip = match ip_text {
        None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        Some(ip) => match ip.trim_matches(['[', ']']).parse::<IpAddr>() {
            Ok(a) => a,
            Err(_) => {
                cx.err(
                    &v.span(),
                    format!(
                        "{key}: {ip:?} is not an IP address; berth publishes on 127.0.0.1 unless an entry names another address as a literal IP"
                    ),
                );
                return None;
            }
        },
    };
    if !host_ip.is_loopback() {
        cx.warn(
            &v.span(),
            format!(
                "{key}: {:?} is published on {host_ip}, reachable from outside: Docker's published ports bypass ufw, so the firewall does not cover it",
                v.get_ref()
            ),
        );
    }
    Some(PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol,
    })
}

fn probe(cx: &mut Ctx<'_>, svc: &str, raw: &S<RawProbe>) -> Option<Probe> {
    let r = raw.get_ref();
    let key = |k: &str| format!("services.{svc}.probe{k}");
    let mut kinds = Vec::new();
    if let Some(p) = &r.postgres {
        kinds.push(ProbeKind::Postgres {
            user: p
                .user
                .as_ref()
                .map_or("postgres".into(), |u| u.get_ref().clone()),
            database: p
                .database
                .as_ref()
                .or(p.user.as_ref())
                .map_or("postgres".into(), |d| d.get_ref().clone()),
            password: p
                .password
                .as_ref()
                .map(|v| cx.value(&key(".postgres.password"), v)),
            port: p.port.unwrap_or(5432),
        });
    }
    if let Some(p) = &r.redis {
        kinds.push(ProbeKind::Redis {
            password: p
                .password
                .as_ref()
                .map(|v| cx.value(&key(".redis.password"), v)),
            port: p.port.unwrap_or(6379),
        });
    }
    if let Some(p) = &r.http {
        let path = p.path.clone().unwrap_or_else(|| "/".into());
        if !path.starts_with('/') {
            cx.err(
                &raw.span(),
                format!("{}: must start with /", key(".http.path")),
            );
        }
        kinds.push(ProbeKind::Http { port: p.port, path });
    }
    if let Some(p) = &r.tcp {
        kinds.push(ProbeKind::Tcp { port: p.port });
    }
    if let Some(p) = &r.exec {
        if p.command.is_empty() {
            cx.err(
                &raw.span(),
                format!("{}: must not be empty", key(".exec.command")),
            );
        }
        kinds.push(ProbeKind::Exec {
            command: p.command.clone(),
        });
    }
    if kinds.len() != 1 {
        cx.err(
            &raw.span(),
            format!(
                "{}: give exactly one of postgres, redis, http, tcp, exec (found {})",
                key(""),
                kinds.len()
            ),
        );
        return None;
    }
    let interval = cx.duration(&key(".interval"), &r.interval, Duration::from_secs(10));
    let timeout = cx.duration(&key(".timeout"), &r.timeout, Duration::from_secs(3));
    let start_timeout = cx.duration(
        &key(".start_timeout"),
        &r.start_timeout,
        Duration::from_secs(120),
    );
    let failures = r.failures.as_ref().map_or(3, |f| {
        if *f.get_ref() == 0 {
            cx.err(
                &f.span(),
                format!("{}: must be at least 1", key(".failures")),
            );
        }
        *f.get_ref()
    });
    for (k, d, s) in [
        ("interval", interval, &r.interval),
        ("timeout", timeout, &r.timeout),
    ] {
        if d.is_zero()
            && let Some(s) = s
        {
            cx.err(
                &s.span(),
                format!("{}: must be more than zero", key(&format!(".{k}"))),
            );
        }
    }
    Some(Probe {
        kind: kinds.remove(0),
        interval,
        timeout,
        failures,
        start_timeout,
    })
}

fn deploy(cx: &mut Ctx<'_>, svc: &str, d: &RawDeploy) -> Deploy {
    let key = |k: &str| format!("services.{svc}.deploy.{k}");
    let def = Deploy::default();
    let rollback = match d.rollback.as_ref() {
        None => def.rollback,
        Some(s) => match s.get_ref().as_str() {
            "auto" => Rollback::Auto,
            "manual" => Rollback::Manual,
            other => {
                cx.err(
                    &s.span(),
                    format!(
                        "{}: {other:?} is not one of \"auto\", \"manual\"",
                        key("rollback")
                    ),
                );
                def.rollback
            }
        },
    };
    let strategy = match d.strategy.as_ref() {
        None => def.strategy,
        Some(s) => match s.get_ref().as_str() {
            "stop-first" => Strategy::StopFirst,
            "start-first" => Strategy::StartFirst,
            other => {
                cx.err(
                    &s.span(),
                    format!(
                        "{}: {other:?} is not one of \"stop-first\", \"start-first\"",
                        key("strategy")
                    ),
                );
                def.strategy
            }
        },
    };
    Deploy {
        migrate: d.migrate.clone().filter(|m| !m.is_empty()),
        health_timeout: cx.duration(
            &key("health_timeout"),
            &d.health_timeout,
            def.health_timeout,
        ),
        rollback,
        strategy,
        restore_db_on_rollback: d.restore_db_on_rollback.unwrap_or(false),
    }
}

/// `network = "service:H"`: H must hold a namespace of its own, and must not need the
/// service that joins it (the join is a dependency the raw cycle check does not see).
fn check_network_sharing(
    cx: &mut Ctx<'_>,
    raw: &BTreeMap<String, S<RawService>>,
    services: &BTreeMap<String, Service>,
) {
    for (name, svc) in services {
        let Some(of) = &svc.network_of else { continue };
        let Some(span) = raw[name].get_ref().network.as_ref().map(|v| v.span()) else {
            continue;
        };
        let key = format!("services.{name}.network");
        if services.get(of).is_some_and(|h| h.network_of.is_some()) {
            cx.err(
                &span,
                format!(
                    "{key}: {of} is in another service's network namespace itself: join that one"
                ),
            );
        }
        let mut seen = BTreeSet::new();
        let mut todo = vec![of.as_str()];
        while let Some(s) = todo.pop() {
            if s == name {
                cx.err(
                    &span,
                    format!("{key}: {of} depends on {name}, which cannot start before {of} holds its network"),
                );
                break;
            }
            if seen.insert(s) {
                todo.extend(
                    services
                        .get(s)
                        .into_iter()
                        .flat_map(|x| x.depends_on.iter().map(String::as_str)),
                );
            }
        }
        if svc.deploy.strategy == Strategy::StartFirst {
            cx.err(
                &span,
                format!("{key}: a start-first deploy would run two containers in {of}'s one network namespace (one address, one set of ports): use strategy = \"stop-first\""),
            );
        }
    }
}

/// A name on the project network belongs to one address: an alias may be another
/// service's name only where that service is in the alias holder's namespace.
fn check_aliases(
    cx: &mut Ctx<'_>,
    raw: &BTreeMap<String, S<RawService>>,
    services: &BTreeMap<String, Service>,
    project: &str,
) {
    let mut taken: BTreeMap<&str, &str> = BTreeMap::new();
    for (name, svc) in services {
        let mut seen = BTreeSet::new();
        for a in &raw[name].get_ref().aliases {
            let (alias, span) = (a.get_ref(), a.span());
            // Those service() turned down are reported there.
            if !svc.aliases.contains(alias) || !seen.insert(alias) {
                continue;
            }
            let key = format!("services.{name}.aliases");
            if let Some(other) = services.get(alias)
                && other.network_of.as_deref() != Some(name.as_str())
            {
                cx.err(
                    &span,
                    format!("{key}: {alias:?} is the name of service {alias}, which is not in {name}'s network namespace: give {alias} network = \"service:{name}\", or choose another alias"),
                );
            }
            // The engine's DNS answers to container names too.
            if let Some(other) = services.iter().find_map(|(s, x)| {
                (s != name
                    && x.network_of.as_deref() != Some(name.as_str())
                    && format!("{project}-{s}") == *alias)
                    .then_some(s)
            }) {
                cx.err(
                    &span,
                    format!(
                        "{key}: {alias:?} is the name of {other}'s container: choose another alias"
                    ),
                );
            }
            if let Some(first) = taken.insert(alias, name) {
                cx.err(
                    &span,
                    format!("{key}: {alias:?} is an alias of {first} too: one name, one address"),
                );
            }
        }
    }
}

fn check_cycles(cx: &mut Ctx<'_>, services: &BTreeMap<String, S<RawService>>) {
    let deps: BTreeMap<&str, Vec<&S<String>>> = services
        .iter()
        .map(|(k, v)| (k.as_str(), v.get_ref().depends_on.iter().collect()))
        .collect();
    // Colour-marking DFS, iterative (a 20,000-deep chain must not overflow the stack);
    // report each cycle once, at the edge that closes it.
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    let mut found: Vec<(Range<usize>, String)> = Vec::new();
    for root in deps.keys() {
        if marks.contains_key(root) {
            continue;
        }
        // (service, index of its next dependency to look at)
        let mut stack: Vec<(&str, usize)> = vec![(root, 0)];
        marks.insert(root, Mark::Visiting);
        while let Some(&mut (n, ref mut next)) = stack.last_mut() {
            let list = deps.get(n).map(Vec::as_slice).unwrap_or_default();
            let Some(d) = list.get(*next) else {
                marks.insert(n, Mark::Done);
                stack.pop();
                continue;
            };
            *next += 1;
            let dn = d.get_ref().as_str();
            if !deps.contains_key(dn) || dn == n {
                continue; // reported as unknown / self dependency
            }
            match marks.get(dn) {
                Some(Mark::Visiting) => {
                    let start = stack.iter().position(|(s, _)| *s == dn).unwrap_or(0);
                    let mut cycle: Vec<&str> = stack[start..].iter().map(|(s, _)| *s).collect();
                    cycle.push(dn);
                    found.push((d.span(), cycle.join(" -> ")));
                }
                Some(Mark::Done) => {}
                None => {
                    marks.insert(dn, Mark::Visiting);
                    stack.push((dn, 0));
                }
            }
        }
    }
    for (span, cycle) in found {
        let svc = cycle.split(" -> ").next().unwrap_or_default().to_string();
        cx.err(
            &span,
            format!("services.{svc}.depends_on: dependency cycle {cycle}"),
        );
    }
}

fn backup(
    cx: &mut Ctx<'_>,
    path: &Path,
    raw: &S<RawBackup>,
    sup: &Supervisor,
    services: &BTreeMap<String, Service>,
) -> Option<Backup> {
    let r = raw.get_ref();
    let svc = r.service.get_ref();
    let target = services.get(svc);
    if target.is_none() {
        cx.err(
            &r.service.span(),
            format!("backup.service: unknown service {svc:?}"),
        );
    }
    let env_of = |k: &str| target.and_then(|s| s.env.get(k)).map(|v| v.value.clone());
    let schedule = match &r.schedule {
        None => Schedule::Daily {
            hour: 3,
            minute: 30,
        },
        Some(s) => match parse_schedule(s.get_ref()) {
            Ok(sch) => sch,
            Err(m) => {
                cx.err(&s.span(), format!("backup.schedule: {m}"));
                Schedule::Daily {
                    hour: 3,
                    minute: 30,
                }
            }
        },
    };
    let verify = match r.verify.as_ref().map(|v| (v.get_ref(), v.span())) {
        None | Some((VerifyValue::Flag(true), _)) => Verify::List,
        Some((VerifyValue::Flag(false), _)) => Verify::None,
        Some((VerifyValue::Mode(m), span)) => {
            match m.as_str() {
                "list" => Verify::List,
                "restore" => Verify::Restore,
                "none" => Verify::None,
                other => {
                    cx.err(
                    &span,
                    format!("backup.verify: {other:?} is not one of true, false, \"list\", \"restore\""),
                );
                    Verify::List
                }
            }
        }
    };
    let redis = match r.redis.as_ref().map(|v| (v.get_ref(), v.span())) {
        None | Some((RedisCopy::Flag(false), _)) => None,
        Some((RedisCopy::Flag(true), span)) => Some(("redis".to_string(), span)),
        Some((RedisCopy::Service(s), span)) => Some((s.clone(), span)),
    }
    .and_then(|(name, span)| {
        if services.contains_key(&name) {
            Some(name)
        } else {
            cx.err(
                &span,
                format!("backup.redis: no service {name:?} to copy dump.rdb from"),
            );
            None
        }
    });
    let dir = r.dir.as_ref().map_or_else(
        || sup.state_dir.join("backups"),
        |d| resolve_path(path, d.get_ref()),
    );
    // The shipped unit (ProtectSystem=strict) writes only its state and runtime folders.
    if path.starts_with("/etc/berth") && !dir.starts_with("/var/lib/berth") {
        let span = r.dir.as_ref().map_or_else(|| raw.span(), |d| d.span());
        cx.warn(
            &span,
            format!(
                "backup.dir: the shipped unit (ProtectSystem=strict) cannot write {}: add `ReadWritePaths={}` in a drop-in (systemctl edit berth), or keep backups under /var/lib/berth",
                dir.display(),
                dir.display()
            ),
        );
    }
    let keep = r.keep.as_ref();
    let offsite = r.offsite.as_ref().map(|o| offsite(cx, o, keep));
    let user = r
        .user
        .clone()
        .or_else(|| env_of("POSTGRES_USER"))
        .unwrap_or_else(|| "postgres".into());
    Some(Backup {
        service: svc.clone(),
        schedule,
        dir,
        keep: Keep {
            daily: keep.and_then(|k| k.daily).unwrap_or(7),
            weekly: keep.and_then(|k| k.weekly).unwrap_or(4),
            monthly: keep.and_then(|k| k.monthly).unwrap_or(6),
        },
        verify,
        database: r
            .database
            .clone()
            .or_else(|| env_of("POSTGRES_DB"))
            .unwrap_or_else(|| user.clone()),
        user,
        redis,
        offsite,
    })
}

fn offsite(cx: &mut Ctx<'_>, raw: &S<RawOffsite>, local: Option<&RawKeep>) -> Offsite {
    let r = raw.get_ref();
    let endpoint = r.endpoint.get_ref().trim_end_matches('/').to_string();
    if !is_http_url(&endpoint) {
        cx.err(
            &r.endpoint.span(),
            format!("backup.offsite.endpoint: {endpoint:?} is not an http(s) URL"),
        );
    }
    let bucket = r.bucket.get_ref().clone();
    if bucket.is_empty() || bucket.contains('/') {
        cx.err(
            &r.bucket.span(),
            "backup.offsite.bucket: a bucket name, without slashes",
        );
    }
    if let Some(host) = plain_http_beyond_loopback(&endpoint) {
        cx.warn(
            &r.endpoint.span(),
            format!(
                "backup.offsite.endpoint: plain http:// to {host}: {} cross the network unencrypted; use https://",
                if r.encryption_key.is_some() {
                    "the access key id, the signed requests (usable by anyone who sees them, for 10 minutes) and the backups' metadata (the dumps themselves are encrypted)"
                } else {
                    "every backup, the access key id and the signed requests (usable by anyone who sees them, for 10 minutes)"
                }
            ),
        );
    }
    let access_key = offsite_key(cx, "access_key", &r.access_key);
    let secret_key = offsite_key(cx, "secret_key", &r.secret_key);
    let encryption_key = r.encryption_key.as_ref().map(|v| {
        let value = offsite_key(cx, "encryption_key", v);
        if value.secret
            && let Err(why) = check_age_secret_key(&value.value)
        {
            cx.err(
                &v.span(),
                format!(
                    "backup.offsite.encryption_key: {} {why}; make a key with `berth offsite keygen` (or age-keygen) and put it in the env file",
                    value.template
                ),
            );
        }
        value
    });
    let mut prefix = r.prefix.clone().unwrap_or_default();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    // Off-site keeps what the local folder keeps unless told otherwise.
    let k = r.keep.as_ref().or(local);
    Offsite {
        endpoint,
        bucket,
        region: r.region.clone().unwrap_or_else(|| "us-east-1".into()),
        prefix: prefix.trim_start_matches('/').to_string(),
        access_key,
        secret_key,
        keep: Keep {
            daily: k.and_then(|k| k.daily).unwrap_or(7),
            weekly: k.and_then(|k| k.weekly).unwrap_or(4),
            monthly: k.and_then(|k| k.monthly).unwrap_or(6),
        },
        path_style: r.path_style.unwrap_or(true),
        encryption_key,
    }
}

/// A key of `[backup.offsite]`: a secret, so it must come from the env file.
/// `[registries."HOST"]`: a registry host as image references name it, and a password
/// from the env file.
fn registry(cx: &mut Ctx<'_>, host: &str, r: &S<RawRegistry>) -> Registry {
    let key = format!("registries.{host:?}");
    let (h, port) = host.split_once(':').unwrap_or((host, "1"));
    let valid = !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && port.parse::<u16>().is_ok_and(|p| p > 0);
    if !valid {
        cx.err(
            &r.span(),
            format!(
                "{key}: a registry host as images name it (ghcr.io, registry.digitalocean.com, 127.0.0.1:5000, docker.io), without a scheme or path"
            ),
        );
    }
    let username = cx.value(&format!("{key}.username"), &r.get_ref().username);
    let password = cx.value(&format!("{key}.password"), &r.get_ref().password);
    if !password.secret {
        cx.err(
            &r.get_ref().password.span(),
            format!("{key}.password: a password is a secret; put it in the env file and write \"${{VAR}}\""),
        );
    }
    Registry { username, password }
}

fn offsite_key(cx: &mut Ctx<'_>, name: &str, v: &S<String>) -> Value {
    let k = format!("backup.offsite.{name}");
    let value = cx.value(&k, v);
    if !value.secret {
        cx.err(
            &v.span(),
            format!("{k}: a key is a secret; put it in the env file and write \"${{VAR}}\""),
        );
    }
    value
}

/// The length of an age X25519 secret key: `AGE-SECRET-KEY-1` and 58 Bech32 characters.
const AGE_SECRET_KEY_LEN: usize = 74;

/// Whether `s` is an age X25519 secret key (`AGE-SECRET-KEY-1…`, Bech32 with its
/// checksum, 32 bytes), as age-keygen and `berth offsite keygen` print. The error says
/// what is wrong without quoting the value.
pub(crate) fn check_age_secret_key(s: &str) -> Result<(), String> {
    use bech32::primitives::decode::CheckedHrpstring;
    if s.is_empty() {
        return Err("is empty".into());
    }
    if !s.to_ascii_uppercase().starts_with("AGE-SECRET-KEY-1") {
        return Err("is not an age secret key (it starts with AGE-SECRET-KEY-1)".into());
    }
    if s.len() < AGE_SECRET_KEY_LEN {
        return Err(format!(
            "is too short for an age secret key ({} characters, not {AGE_SECRET_KEY_LEN})",
            s.len()
        ));
    }
    if s.len() > AGE_SECRET_KEY_LEN {
        return Err(format!(
            "is too long for an age secret key ({} characters, not {AGE_SECRET_KEY_LEN})",
            s.len()
        ));
    }
    let parsed = CheckedHrpstring::new::<bech32::Bech32>(s)
        .map_err(|_| "is not a valid age secret key (its checksum does not match: a typo?)")?;
    if parsed.hrp() != bech32::Hrp::parse_unchecked("AGE-SECRET-KEY-")
        || parsed.byte_iter().count() != 32
    {
        return Err("is not an age secret key".into());
    }
    Ok(())
}

/// The host of an `http://` URL unless it is this machine (127.0.0.0/8, `localhost`,
/// `::1`): plain HTTP to anywhere else crosses a network.
pub(crate) fn plain_http_beyond_loopback(url: &str) -> Option<String> {
    let rest = url
        .get(..7)?
        .eq_ignore_ascii_case("http://")
        .then(|| &url[7..])?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let loopback = host == "localhost"
        || host.ends_with(".localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    (!loopback).then_some(host)
}

fn alerts(cx: &mut Ctx<'_>, raw: &S<RawAlerts>) -> Alerts {
    let r = raw.get_ref();
    if r.telegram.is_none() && r.webhook.is_none() {
        cx.err(
            &raw.span(),
            "alerts: give telegram = { chat_id = ... } and/or webhook = { url = ... }",
        );
    }
    let telegram = r.telegram.as_ref().map(|t| {
        let t = t.get_ref();
        let chat_id = match t.chat_id.get_ref() {
            ChatId::Int(i) => i.to_string(),
            ChatId::Text(s) => s.trim().to_string(),
        };
        if chat_id.is_empty() {
            cx.err(&t.chat_id.span(), "alerts.telegram.chat_id: empty");
        }
        let token = match &t.token {
            Some(tok) => {
                let v = cx.value("alerts.telegram.token", tok);
                if !v.secret {
                    cx.err(
                        &tok.span(),
                        "alerts.telegram.token: a token is a secret; put it in the env file and write \"${ALERT_BOT_TOKEN}\"",
                    );
                }
                v
            }
            // The bot's own token, when the env file has it.
            None => match cx.var("TELEGRAM_BOT_TOKEN") {
                Some(value) => Value {
                    template: "${TELEGRAM_BOT_TOKEN}".into(),
                    value,
                    secret: true,
                },
                None => {
                    if !cx.env_file_failed {
                        cx.err(
                            &raw.span(),
                            "alerts.telegram.token: not given and TELEGRAM_BOT_TOKEN is not in the env file",
                        );
                    }
                    Value::plain("")
                }
            },
        };
        let api_base = t
            .api_base
            .as_ref()
            .map_or("https://api.telegram.org", |a| a.get_ref().as_str())
            .trim_end_matches('/')
            .to_string();
        if let Some(a) = &t.api_base
            && !is_http_url(&api_base)
        {
            cx.err(
                &a.span(),
                format!("alerts.telegram.api_base: {api_base:?} is not an http(s) URL"),
            );
        }
        TelegramAlert {
            chat_id,
            token,
            api_base,
        }
    });
    let webhook = r.webhook.as_ref().map(|w| {
        let url = cx.value("alerts.webhook.url", &w.get_ref().url);
        if !is_http_url(&url.value) && !cx.env_file_failed {
            cx.err(
                &w.get_ref().url.span(),
                "alerts.webhook.url: not an http(s) URL",
            );
        }
        Webhook { url }
    });
    let max_per_hour = r.max_per_hour.as_ref().map_or(20, |m| {
        if *m.get_ref() == 0 {
            cx.err(&m.span(), "alerts.max_per_hour: must be at least 1");
        }
        *m.get_ref()
    });
    Alerts {
        telegram,
        webhook,
        down_after: cx.duration("alerts.down_after", &r.down_after, Duration::from_secs(60)),
        repeat_after: cx.duration(
            "alerts.repeat_after",
            &r.repeat_after,
            Duration::from_secs(30 * 60),
        ),
        max_per_hour,
        deploy_succeeded: r.deploy_succeeded.unwrap_or(false),
    }
}

fn is_http_url(s: &str) -> bool {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
}

/// `HH:MM` daily, or a five-field cron expression (fields checked for shape here; the
/// scheduler evaluates them).
pub(crate) fn parse_schedule(s: &str) -> Result<Schedule, String> {
    if let Some((h, m)) = s.split_once(':')
        && !s.contains(' ')
    {
        return match (h.parse::<u8>(), m.parse::<u8>()) {
            (Ok(hour), Ok(minute)) if hour < 24 && minute < 60 && m.len() == 2 => {
                Ok(Schedule::Daily { hour, minute })
            }
            _ => Err(format!("{s:?} is not a time of day HH:MM (00:00 to 23:59)")),
        };
    }
    let fields: Vec<&str> = s.split_whitespace().collect();
    if !(5..=6).contains(&fields.len()) {
        return Err(format!(
            "{s:?} is neither HH:MM nor a cron expression like \"30 3 * * *\" (five fields, or six with seconds first)"
        ));
    }
    let expr = fields.join(" ");
    crate::model::parse_cron(&expr).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(Schedule::Cron(expr))
}

#[cfg(test)]
mod tests;
