//! A berth config → a compose file, or Kubernetes manifests, for users who move on.
//!
//! Only templates are written: a value that came from the env file is `${VAR}` in the
//! compose file and a Secret reference in Kubernetes, never the value itself.

use std::collections::BTreeSet;

use berth_config::{Config, ProbeKind, Service, Strategy, Value as BValue, VolumeSource};
use serde_yaml_ng::{Mapping, Value, to_string};

fn s(v: impl Into<String>) -> Value {
    Value::String(v.into())
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(s(k), v);
    }
    Value::Mapping(m)
}

fn seq(items: impl IntoIterator<Item = Value>) -> Value {
    Value::Sequence(items.into_iter().collect())
}

fn secs(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// A TOML-side template written for compose: both use `${VAR}` and `$$`.
fn template(v: &BValue) -> String {
    v.template.clone()
}

/// `pg_isready` for the postgres probe, in compose and Kubernetes alike.
fn pg_isready(user: &str, database: &str, port: u16) -> Vec<Value> {
    [
        "pg_isready",
        "-U",
        user,
        "-d",
        database,
        "-p",
        &port.to_string(),
    ]
    .into_iter()
    .map(s)
    .collect()
}

/// The compose healthcheck test for a probe.
fn compose_test(kind: &ProbeKind) -> Value {
    match kind {
        ProbeKind::Postgres {
            user,
            database,
            port,
            ..
        } => seq(std::iter::once(s("CMD")).chain(pg_isready(user, database, *port))),
        // The password, if any, is in the service's REDISCLI_AUTH (see `environment`).
        ProbeKind::Redis { port, .. } => seq([
            s("CMD"),
            s("redis-cli"),
            s("-p"),
            s(port.to_string()),
            s("ping"),
        ]),
        ProbeKind::Http { port, path } => seq([
            s("CMD-SHELL"),
            s(format!(
                "curl -fsS http://127.0.0.1:{port}{path} || wget -qO- http://127.0.0.1:{port}{path}"
            )),
        ]),
        ProbeKind::Tcp { port } => seq([
            s("CMD-SHELL"),
            s(format!("bash -c '</dev/tcp/127.0.0.1/{port}'")),
        ]),
        ProbeKind::Exec { command } => {
            seq(std::iter::once(s("CMD")).chain(command.iter().map(|c| s(c.as_str()))))
        }
    }
}

fn volume_spec(v: &berth_config::VolumeMount) -> String {
    let src = match &v.source {
        VolumeSource::Named(n) => n.clone(),
        VolumeSource::Bind(p) => p.display().to_string(),
    };
    format!("{src}:{}{}", v.target, if v.read_only { ":ro" } else { "" })
}

/// `berth export compose`: a compose file `docker compose config` accepts.
pub fn compose(cfg: &Config) -> String {
    let mut services = Mapping::new();
    let mut volumes = BTreeSet::new();
    for (name, svc) in &cfg.services {
        let mut m = Mapping::new();
        let mut put = |k: &str, v: Value| {
            m.insert(s(k), v);
        };
        put("image", s(svc.image.as_str()));
        if let Some(b) = &svc.build {
            let mut bm = Mapping::new();
            bm.insert(s("context"), s(b.context.display().to_string().as_str()));
            bm.insert(s("dockerfile"), s(b.dockerfile.as_str()));
            if let Some(t) = &b.target {
                bm.insert(s("target"), s(t.as_str()));
            }
            if !b.args.is_empty() {
                let mut args = Mapping::new();
                for (k, v) in &b.args {
                    args.insert(s(k.as_str()), s(v.as_str()));
                }
                bm.insert(s("args"), Value::Mapping(args));
            }
            put("build", Value::Mapping(bm));
        }
        if let Some(c) = &svc.entrypoint {
            put("entrypoint", seq(c.iter().map(|w| s(template(w)))));
        }
        if let Some(c) = &svc.command {
            put("command", seq(c.iter().map(|w| s(template(w)))));
        }
        if let Some(u) = &svc.user {
            put("user", s(u.as_str()));
        }
        // A Redis probe's password reaches redis-cli through its environment
        // (REDISCLI_AUTH), never its command line.
        let redis_auth = match svc.probe.as_ref().map(|p| &p.kind) {
            Some(ProbeKind::Redis {
                password: Some(p), ..
            }) => Some(template(p)),
            _ => None,
        };
        if !svc.env.is_empty() || redis_auth.is_some() {
            let mut env = Mapping::new();
            for (k, v) in &svc.env {
                env.insert(s(k.as_str()), s(template(v)));
            }
            if let Some(a) = &redis_auth {
                env.insert(s("REDISCLI_AUTH"), s(a.as_str()));
            }
            put("environment", Value::Mapping(env));
        }
        if !svc.volumes.is_empty() {
            for v in &svc.volumes {
                if let VolumeSource::Named(n) = &v.source {
                    volumes.insert(n.clone());
                }
            }
            put(
                "volumes",
                seq(svc.volumes.iter().map(|v| s(volume_spec(v)))),
            );
        }
        if !svc.ports.is_empty() {
            put(
                "ports",
                seq(svc.ports.iter().map(|p| {
                    s(format!(
                        "{}:{}:{}/{}",
                        p.host_ip, p.host_port, p.container_port, p.protocol
                    ))
                })),
            );
        }
        if let Some(h) = &svc.network_of {
            put("network_mode", s(format!("service:{h}")));
        }
        if !svc.aliases.is_empty() {
            let mut net = Mapping::new();
            net.insert(s("aliases"), seq(svc.aliases.iter().map(|a| s(a.clone()))));
            let mut nets = Mapping::new();
            nets.insert(s("default"), Value::Mapping(net));
            put("networks", Value::Mapping(nets));
        }
        if let Some(mem) = svc.memory {
            put("mem_limit", Value::Number(mem.into()));
        }
        if let Some(c) = svc.cpus {
            put("cpus", Value::Number(c.into()));
        }
        if let Some(p) = svc.pids_limit {
            put("pids_limit", Value::Number(p.into()));
        }
        if svc.read_only {
            put("read_only", Value::Bool(true));
        }
        if !svc.tmpfs.is_empty() {
            put(
                "tmpfs",
                seq(svc
                    .tmpfs
                    .iter()
                    .map(|t| s(format!("{t}:rw,nosuid,nodev,size=64m")))),
            );
        }
        put("stop_grace_period", s(secs(svc.stop_grace_period)));
        if !svc.depends_on.is_empty() {
            let mut deps = Mapping::new();
            for d in &svc.depends_on {
                // berth gates on health; compose can only where the dependency has a check.
                let cond = if cfg.services.get(d).is_some_and(|x| x.probe.is_some()) {
                    "service_healthy"
                } else {
                    "service_started"
                };
                deps.insert(s(d.as_str()), map(vec![("condition", s(cond))]));
            }
            put("depends_on", Value::Mapping(deps));
        }
        if let Some(p) = &svc.probe {
            put(
                "healthcheck",
                map(vec![
                    ("test", compose_test(&p.kind)),
                    ("interval", s(secs(p.interval))),
                    ("timeout", s(secs(p.timeout))),
                    ("retries", Value::Number(p.failures.into())),
                    ("start_period", s(secs(p.start_timeout))),
                ]),
            );
        }
        put(
            "logging",
            map(vec![
                ("driver", s("json-file")),
                (
                    "options",
                    map(vec![
                        ("max-size", s(svc.logs.max_size.to_string())),
                        ("max-file", s(svc.logs.max_files.to_string())),
                    ]),
                ),
            ]),
        );
        put("restart", s("unless-stopped"));
        services.insert(s(name.as_str()), Value::Mapping(m));
    }
    let mut root = Mapping::new();
    root.insert(s("services"), Value::Mapping(services));
    if !volumes.is_empty() {
        let mut v = Mapping::new();
        for n in volumes {
            v.insert(s(n), Value::Mapping(Mapping::new()));
        }
        root.insert(s("volumes"), Value::Mapping(v));
    }
    let env = cfg
        .supervisor
        .env_file
        .as_ref()
        .map(|p| format!(" --env-file {}", p.display()))
        .unwrap_or_default();
    format!(
        "# Exported by `berth export compose` from {}.\n# Values from the env file stay ${{VAR}}: docker compose -p {}{env} up -d\n{}",
        cfg.path.display(),
        cfg.supervisor.project,
        to_string(&Value::Mapping(root)).unwrap_or_default()
    )
}

/// The `${VAR}` names a template references.
fn vars_of(t: &str) -> Vec<String> {
    berth_config::variables(t)
}

/// A template in Kubernetes' own expansion: `${VAR}` → `$(VAR)`, literal `$(` escaped.
fn kube_expand(t: &str) -> String {
    let mut out = String::new();
    let mut rest = t;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{')
            && let Some(end) = tail.find('}')
        {
            out.push_str(&format!("$({})", &tail[..end]));
            rest = &tail[end + 1..];
        } else {
            // A literal `$(` would be expanded by Kubernetes: escaped as `$$(`.
            out.push_str(if after.starts_with('(') { "$$" } else { "$" });
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn kube_mem(b: u64) -> String {
    crate::binary_size(b, ["Gi", "Mi", "Ki"], "")
}

fn dns_name(n: &str) -> String {
    n.to_ascii_lowercase().replace('_', "-")
}

/// Ports the service listens on: published ones and its probe's.
fn container_ports(svc: &Service) -> Vec<u16> {
    let mut ports: BTreeSet<u16> = svc.ports.iter().map(|p| p.container_port).collect();
    if let Some(p) = &svc.probe {
        match &p.kind {
            ProbeKind::Postgres { port, .. }
            | ProbeKind::Redis { port, .. }
            | ProbeKind::Http { port, .. }
            | ProbeKind::Tcp { port } => {
                ports.insert(*port);
            }
            ProbeKind::Exec { .. } => {}
        }
    }
    ports.into_iter().collect()
}

fn kube_probe(p: &berth_config::Probe) -> (Value, Value) {
    let action = match &p.kind {
        ProbeKind::Postgres {
            user,
            database,
            port,
            ..
        } => (
            "exec",
            map(vec![("command", seq(pg_isready(user, database, *port)))]),
        ),
        ProbeKind::Redis { password, port } => {
            let mut c = vec![s("redis-cli"), s("-p"), s(port.to_string())];
            if let Some(pw) = password {
                // The container's own variable, filled from the Secret.
                let var = vars_of(&pw.template).into_iter().next().unwrap_or_default();
                // In redis-cli's environment, not on a command line.
                c = vec![
                    s("sh"),
                    s("-c"),
                    s(format!("REDISCLI_AUTH=\"${var}\" redis-cli -p {port} ping")),
                ];
                return probe_pair(p, "exec", map(vec![("command", seq(c))]));
            }
            c.push(s("ping"));
            ("exec", map(vec![("command", seq(c))]))
        }
        ProbeKind::Http { port, path } => (
            "httpGet",
            map(vec![
                ("path", s(path.as_str())),
                ("port", Value::Number((*port).into())),
            ]),
        ),
        ProbeKind::Tcp { port } => (
            "tcpSocket",
            map(vec![("port", Value::Number((*port).into()))]),
        ),
        ProbeKind::Exec { command } => (
            "exec",
            map(vec![(
                "command",
                seq(command.iter().map(|c| s(c.as_str()))),
            )]),
        ),
    };
    probe_pair(p, action.0, action.1)
}

/// (readiness = liveness, startup) probes with berth's timing.
fn probe_pair(p: &berth_config::Probe, kind: &str, action: Value) -> (Value, Value) {
    let period = p.interval.as_secs().max(1);
    let probe = |failures: u64| {
        let mut m = Mapping::new();
        m.insert(s(kind), action.clone());
        m.insert(s("periodSeconds"), Value::Number(period.into()));
        m.insert(
            s("timeoutSeconds"),
            Value::Number(p.timeout.as_secs().max(1).into()),
        );
        m.insert(s("failureThreshold"), Value::Number(failures.into()));
        Value::Mapping(m)
    };
    let startup_failures = (p.start_timeout.as_secs() / period).max(1);
    (probe(u64::from(p.failures)), probe(startup_failures))
}

/// `berth export kubernetes`: a StatefulSet (services with named volumes) or Deployment
/// per service, a Service per service that listens, PersistentVolumeClaims through
/// `volumeClaimTemplates`, env-file values as references to one Secret.
pub fn kubernetes(cfg: &Config) -> String {
    let project = dns_name(&cfg.supervisor.project);
    let secret = format!("{project}-env");
    let mut docs: Vec<Value> = Vec::new();
    for (name, svc) in &cfg.services {
        let app = dns_name(name);
        let labels = map(vec![
            ("app.kubernetes.io/name", s(app.as_str())),
            ("app.kubernetes.io/part-of", s(project.as_str())),
        ]);
        // Env: Secret-backed variables first, so later values can use `$(VAR)`.
        let mut env = Vec::new();
        let mut from_secret: BTreeSet<String> = BTreeSet::new();
        let secret_words = svc
            .env
            .values()
            .chain(svc.command.iter().flatten())
            .chain(svc.entrypoint.iter().flatten())
            .filter(|v| v.secret);
        for v in secret_words {
            for var in vars_of(&v.template) {
                if from_secret.insert(var.clone()) {
                    env.push(map(vec![
                        ("name", s(var.as_str())),
                        (
                            "valueFrom",
                            map(vec![(
                                "secretKeyRef",
                                map(vec![("name", s(secret.as_str())), ("key", s(var.as_str()))]),
                            )]),
                        ),
                    ]));
                }
            }
        }
        for (k, v) in &svc.env {
            if v.secret && v.template == format!("${{{k}}}") {
                continue; // already there, from the Secret
            }
            let value = if v.secret {
                kube_expand(&v.template)
            } else {
                v.value.replace("$(", "$$(")
            };
            env.push(map(vec![("name", s(k.as_str())), ("value", s(value))]));
        }

        let mut container = Mapping::new();
        let mut put = |k: &str, v: Value| {
            container.insert(s(k), v);
        };
        put("name", s(app.as_str()));
        put("image", s(svc.image.as_str()));
        let words = |c: &Vec<BValue>| {
            seq(c.iter().map(|w| {
                s(if w.secret {
                    kube_expand(&w.template)
                } else {
                    w.value.replace("$(", "$$(")
                })
            }))
        };
        if let Some(e) = &svc.entrypoint {
            put("command", words(e));
        }
        if let Some(c) = &svc.command {
            put("args", words(c));
        }
        if !env.is_empty() {
            put("env", seq(env));
        }
        let ports = container_ports(svc);
        if !ports.is_empty() {
            put(
                "ports",
                seq(ports
                    .iter()
                    .map(|p| map(vec![("containerPort", Value::Number((*p).into()))]))),
            );
        }
        let mut limits = Vec::new();
        if let Some(m) = svc.memory {
            limits.push(("memory", s(kube_mem(m))));
        }
        if let Some(c) = svc.cpus {
            limits.push(("cpu", s(format!("{}m", (c * 1000.0).round() as u64))));
        }
        if !limits.is_empty() {
            put("resources", map(vec![("limits", map(limits))]));
        }
        let mut sec = vec![("allowPrivilegeEscalation", Value::Bool(false))];
        if svc.read_only {
            sec.push(("readOnlyRootFilesystem", Value::Bool(true)));
        }
        put("securityContext", map(sec));
        if let Some(p) = &svc.probe {
            let (live, startup) = kube_probe(p);
            put("readinessProbe", live.clone());
            put("livenessProbe", live);
            put("startupProbe", startup);
        }
        // Volumes: named → claims, bind → hostPath, tmpfs → memory-backed emptyDir.
        let mut mounts = Vec::new();
        let mut pod_volumes = Vec::new();
        let mut claims = Vec::new();
        for (i, v) in svc.volumes.iter().enumerate() {
            let vname = match &v.source {
                VolumeSource::Named(n) => {
                    let n = dns_name(n);
                    claims.push(map(vec![
                        ("metadata", map(vec![("name", s(n.as_str()))])),
                        (
                            "spec",
                            map(vec![
                                ("accessModes", seq([s("ReadWriteOnce")])),
                                (
                                    "resources",
                                    map(vec![("requests", map(vec![("storage", s("1Gi"))]))]),
                                ),
                            ]),
                        ),
                    ]));
                    n
                }
                VolumeSource::Bind(p) => {
                    let n = format!("host-{i}");
                    pod_volumes.push(map(vec![
                        ("name", s(n.as_str())),
                        ("hostPath", map(vec![("path", s(p.display().to_string()))])),
                    ]));
                    n
                }
            };
            mounts.push(map(vec![
                ("name", s(vname)),
                ("mountPath", s(v.target.as_str())),
                ("readOnly", Value::Bool(v.read_only)),
            ]));
        }
        for (i, t) in svc.tmpfs.iter().enumerate() {
            let n = format!("tmpfs-{i}");
            pod_volumes.push(map(vec![
                ("name", s(n.as_str())),
                (
                    "emptyDir",
                    map(vec![("medium", s("Memory")), ("sizeLimit", s("64Mi"))]),
                ),
            ]));
            mounts.push(map(vec![("name", s(n)), ("mountPath", s(t.as_str()))]));
        }
        if !mounts.is_empty() {
            put("volumeMounts", seq(mounts));
        }

        let mut pod = vec![
            ("containers", seq([Value::Mapping(container)])),
            (
                "terminationGracePeriodSeconds",
                Value::Number(svc.stop_grace_period.as_secs().into()),
            ),
        ];
        if !pod_volumes.is_empty() {
            pod.push(("volumes", seq(pod_volumes)));
        }
        let template = map(vec![
            ("metadata", map(vec![("labels", labels.clone())])),
            ("spec", map(pod)),
        ]);
        let selector = map(vec![("matchLabels", labels.clone())]);
        let metadata = map(vec![("name", s(app.as_str())), ("labels", labels.clone())]);
        let workload = if claims.is_empty() {
            // stop-first (a long-polling bot): never two pods at once.
            let strategy = match svc.deploy.strategy {
                Strategy::StopFirst => map(vec![("type", s("Recreate"))]),
                Strategy::StartFirst => map(vec![("type", s("RollingUpdate"))]),
            };
            map(vec![
                ("apiVersion", s("apps/v1")),
                ("kind", s("Deployment")),
                ("metadata", metadata),
                (
                    "spec",
                    map(vec![
                        ("replicas", Value::Number(1.into())),
                        ("strategy", strategy),
                        ("selector", selector),
                        ("template", template),
                    ]),
                ),
            ])
        } else {
            map(vec![
                ("apiVersion", s("apps/v1")),
                ("kind", s("StatefulSet")),
                ("metadata", metadata),
                (
                    "spec",
                    map(vec![
                        ("serviceName", s(app.as_str())),
                        ("replicas", Value::Number(1.into())),
                        ("selector", selector),
                        ("template", template),
                        ("volumeClaimTemplates", seq(claims)),
                    ]),
                ),
            ])
        };
        docs.push(workload);
        if !ports.is_empty() {
            docs.push(map(vec![
                ("apiVersion", s("v1")),
                ("kind", s("Service")),
                (
                    "metadata",
                    map(vec![("name", s(app.as_str())), ("labels", labels.clone())]),
                ),
                (
                    "spec",
                    map(vec![
                        ("selector", labels),
                        (
                            "ports",
                            seq(ports.iter().map(|p| {
                                map(vec![
                                    ("name", s(format!("p{p}"))),
                                    ("port", Value::Number((*p).into())),
                                    ("targetPort", Value::Number((*p).into())),
                                ])
                            })),
                        ),
                    ]),
                ),
            ]));
        }
    }
    let mut out = format!(
        "# Exported by `berth export kubernetes` from {}.\n# Secrets are references to the Secret {secret}; create it from the env file:\n#   kubectl create secret generic {secret} --from-env-file={}\n# Claims ask for 1Gi each and bind mounts become hostPath volumes: adjust both.\n",
        cfg.path.display(),
        cfg.supervisor
            .env_file
            .as_ref()
            .map_or("berth.env".to_string(), |p| p.display().to_string()),
    );
    for d in docs {
        out.push_str("---\n");
        out.push_str(&to_string(&d).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_become_kubernetes_expansions() {
        assert_eq!(
            kube_expand("postgresql://bot:${PG}@postgres/bot"),
            "postgresql://bot:$(PG)@postgres/bot"
        );
        assert_eq!(kube_expand("a $$HOME $(x)"), "a $HOME $$(x)");
        assert_eq!(vars_of("${A}:${B}$${C}"), ["A", "B"]);
    }
}
