//! The monitoring kit (`deployment/monitoring/`) on a real Prometheus (Debian's
//! `prometheus` package: the server, agent mode and `promtool`): its config and rules pass
//! `promtool check`, every rule has unit tests that make it fire and keep it quiet,
//! berth's live `/metrics` passes `promtool check metrics`, the dashboard's and the
//! rules' queries name only metrics berth exports, the services snippet passes `berth
//! check` merged into the production config, and a crash loop of a test stack goes to
//! `firing` in Prometheus's own API, scraped by the kit's agent config.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use berth_tests::*;
use serde_json::Value;
use serde_yaml_ng::Value as Yaml;

const UP: Duration = Duration::from_secs(90);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kit() -> PathBuf {
    root().join("deployment/monitoring")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(path: &Path) -> Yaml {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `promtool ARGS` in `dir`; panics with its output unless it succeeds.
fn promtool(dir: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; cargo xtask test installs it)");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.unwrap_or("").as_bytes())
        .expect("write");
    drop(input);
    let out = child.wait_with_output().expect("promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The metric names berth can export: the `"berth_…"` literals of its metrics module.
fn exported() -> BTreeSet<String> {
    let src = read(&root().join("crates/berth/src/serve/metrics.rs"));
    let mut names = BTreeSet::new();
    let mut rest = src.as_str();
    while let Some(i) = rest.find("\"berth_") {
        let lit = &rest[i + 1..];
        let end = lit
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(lit.len());
        if lit[end..].starts_with('"') {
            names.insert(lit[..end].to_string());
        }
        rest = &lit[end..];
    }
    assert!(names.len() > 20, "found only {names:?}");
    names
}

/// The metric names a PromQL expression reads: identifiers outside strings, label
/// matchers, ranges and grouping clauses that are neither functions nor keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Strings, {…} and […] go first (label values, matchers, durations).
    let mut flat = String::new();
    let (mut depth_brace, mut depth_bracket, mut quote) = (0, 0, None);
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{') => depth_brace += 1,
            (None, '}') => depth_brace -= 1,
            (None, '[') => depth_bracket += 1,
            (None, ']') => depth_bracket -= 1,
            (None, c) if depth_brace == 0 && depth_bracket == 0 => flat.push(c),
            _ => flat.push(' '),
        }
    }
    // Grouping clauses name labels: `by (a, b)`, `on(a)`, `group_left(c)` go too.
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let words = |text: &str| -> Vec<(usize, String)> {
        let mut out = Vec::new();
        let mut start = None;
        for (i, c) in text
            .char_indices()
            .chain(std::iter::once((text.len(), ' ')))
        {
            match (start, is_word(c)) {
                (None, true) => start = Some(i),
                (Some(s), false) => {
                    out.push((s, text[s..i].to_string()));
                    start = None;
                }
                _ => {}
            }
        }
        out
    };
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    for (start, w) in words(&flat.clone()) {
        let after = &flat[start + w.len()..];
        if GROUPING.contains(&w.as_str()) && after.trim_start().starts_with('(') {
            let open = start + w.len() + after.find('(').unwrap_or(0);
            let close = flat[open..].find(')').map_or(flat.len(), |i| open + i + 1);
            flat.replace_range(open..close, &" ".repeat(close - open));
        }
    }
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    let mut names = BTreeSet::new();
    for (start, w) in words(&flat) {
        let after = flat[start + w.len()..].trim_start();
        if KEYWORDS.contains(&w.as_str())
            || after.starts_with('(')
            || w.starts_with(|c: char| c.is_ascii_digit())
        {
            continue;
        }
        names.insert(w);
    }
    names
}

#[test]
fn metric_names_reads_promql() {
    let got = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        got(
            r#"sum by (service, job) (rate(a_total{x="y",z=~"b c"}[5m])) > on(instance) group_left(foo) b_c"#
        ),
        ["a_total", "b_c"]
    );
    assert_eq!(
        got("time() - (x_seconds > 0) and on(instance, job, service) y < 3600"),
        ["x_seconds", "y"]
    );
    assert_eq!(
        got(r#"up{job="berth"} == 0 or absent(up{job="berth"})"#),
        ["up"]
    );
}

/// The rules file's alerts: (name, expr).
fn rules() -> Vec<(String, String)> {
    let doc = yaml(&kit().join("rules/berth.rules.yml"));
    let mut out = Vec::new();
    for g in doc["groups"].as_sequence().expect("groups") {
        for r in g["rules"].as_sequence().expect("rules") {
            let name = r["alert"].as_str().expect("only alerting rules");
            let expr = r["expr"].as_str().expect("expr");
            for a in ["summary", "command"] {
                assert!(
                    r["annotations"][a].as_str().is_some_and(|s| !s.is_empty()),
                    "{name}: no {a}"
                );
            }
            assert!(r["labels"]["severity"].is_string(), "{name}: no severity");
            out.push((name.to_string(), expr.to_string()));
        }
    }
    out
}

#[test]
fn the_kit_passes_promtool_and_every_rule_has_a_test_that_fires_and_one_that_does_not() {
    let dir = kit();
    promtool(&dir, &["check", "rules", "rules/berth.rules.yml"], None);
    let out = promtool(&dir, &["test", "rules", "berth.rules.test.yml"], None);
    assert!(out.contains("SUCCESS"), "{out}");
    // The agent's config is a plain scrape + remote_write config; the server's names its
    // rules by their path in the container: check it with that path pointed here.
    promtool(&dir, &["check", "config", "prometheus-agent.yml"], None);
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server = yaml(&dir.join("prometheus.yml"));
    assert_eq!(
        server["rule_files"][0].as_str(),
        Some("/etc/prometheus/rules/*.rules.yml")
    );
    server["rule_files"][0] = Yaml::from(format!("{}/rules/*.rules.yml", dir.display()));
    let server_file = tmp.path().join("prometheus.yml");
    std::fs::write(
        &server_file,
        serde_yaml_ng::to_string(&server).expect("yaml"),
    )
    .expect("write");
    let out = promtool(
        &dir,
        &["check", "config", server_file.to_str().expect("utf-8")],
        None,
    );
    assert!(out.contains("SUCCESS: 14 rules found"), "{out}");

    // Coverage: each rule is expected to fire in one test and to stay quiet in another.
    let tests = yaml(&dir.join("berth.rules.test.yml"));
    let (mut fires, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for t in tests["tests"].as_sequence().expect("tests") {
        for a in t["alert_rule_test"].as_sequence().expect("alert_rule_test") {
            let name = a["alertname"].as_str().expect("alertname").to_string();
            match a["exp_alerts"].as_sequence().map(Vec::len) {
                Some(0) | None => quiet.insert(name),
                Some(_) => fires.insert(name),
            };
        }
    }
    for (name, _) in rules() {
        assert!(fires.contains(&name), "no test makes {name} fire");
        assert!(quiet.contains(&name), "no test keeps {name} quiet");
    }
}

#[test]
fn the_dashboard_and_the_rules_read_only_metrics_berth_exports() {
    let exported = exported();
    // Prometheus's own series: `up` (was the scrape answered) and `ALERTS` (the rules).
    let prometheus_own = ["up", "ALERTS"];
    let known = |n: &str| exported.contains(n) || prometheus_own.contains(&n);
    for (name, expr) in rules() {
        let names = metric_names(&expr);
        assert!(!names.is_empty(), "{name}: reads no metric: {expr}");
        for n in names {
            assert!(
                known(&n),
                "rule {name} reads {n}, which berth does not export"
            );
        }
    }

    let dash: Value = serde_json::from_str(&read(&kit().join("grafana/dashboards/berth.json")))
        .expect("dashboard JSON");
    let ds: Yaml = yaml(&kit().join("grafana/provisioning/datasources/prometheus.yml"));
    let ds_uid = ds["datasources"][0]["uid"]
        .as_str()
        .expect("datasource uid");
    assert_eq!(ds["datasources"][0]["url"], "http://prometheus:9090");
    assert_eq!(dash["uid"], "berth");
    assert!(dash["title"].is_string() && dash["schemaVersion"].is_u64());
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut read_metrics = BTreeSet::new();
    let mut queries = 0;
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: id twice"
        );
        let g = &p["gridPos"];
        let (x, w, h) = (g["x"].as_u64(), g["w"].as_u64(), g["h"].as_u64());
        assert!(
            matches!((x, w, h), (Some(x), Some(w), Some(h)) if x + w <= 24 && w > 0 && h > 0),
            "{title}: gridPos {g}"
        );
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"]["uid"], ds_uid, "{title}: data source");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        let mut names = BTreeSet::new();
        for t in targets {
            let expr = t["expr"].as_str().expect("expr");
            assert_eq!(t["datasource"]["uid"], ds_uid, "{title}: {expr}");
            let n = metric_names(expr);
            assert!(!n.is_empty(), "{title}: {expr} reads no metric");
            names.extend(n);
            queries += 1;
        }
        for n in &names {
            assert!(
                known(n),
                "panel {title:?} reads {n}, which berth does not export"
            );
        }
        read_metrics.extend(names);
    }
    assert!(queries > 20, "{queries} queries");
    // Every fact the rules alert on can be seen on the dashboard too.
    for (name, expr) in rules() {
        for n in metric_names(&expr) {
            assert!(
                read_metrics.contains(&n),
                "{name} reads {n}, which no panel shows"
            );
        }
    }

    // The provisioning points where the snippet mounts the dashboards.
    let provider = yaml(&kit().join("grafana/provisioning/dashboards/berth.yml"));
    let path = provider["providers"][0]["options"]["path"]
        .as_str()
        .expect("path");
    assert!(
        read(&kit().join("berth-monitoring.toml"))
            .contains(&format!("grafana/dashboards:{path}:ro")),
        "{path}"
    );
}

#[test]
fn the_services_snippet_passes_berth_check_merged_into_the_production_config() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let env = tmp.path().join("berth.env");
    std::fs::write(
        &env,
        "POSTGRES_PASSWORD=a1\nTELEGRAM_BOT_TOKEN=123456:abc\nREDIS_PASSWORD=b2\nGRAFANA_ADMIN_PASSWORD=c3\n",
    )
    .expect("env");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let production = read(&root().join("config/berth.toml"));
    let env_line = "env_file = \"/etc/berth/berth.env\"";
    assert!(production.contains(env_line), "config/berth.toml changed");
    let snippet = read(&kit().join("berth-monitoring.toml"));
    let merged = format!(
        "{}\n{snippet}",
        production.replace(env_line, &format!("env_file = \"{}\"", env.display()))
    );
    let file = tmp.path().join("berth.toml");
    std::fs::write(&file, &merged).expect("write");
    let out = Command::new(berth_bin())
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .expect("berth check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("prometheus") && text.contains("grafana"),
        "{text}"
    );
    // Published on loopback only (check would warn otherwise), and nothing else.
    assert!(!text.to_lowercase().contains("warning"), "{text}");
    assert_eq!(
        published_ports(&snippet),
        ["127.0.0.1:9090:9090", "127.0.0.1:3000:3000"]
    );
}

/// The `ports = [...]` entries of a TOML text, in order (enough for the snippet).
fn published_ports(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("ports = ["))
        .flat_map(|rest| {
            rest.trim_end_matches(']')
                .split(',')
                .map(|p| p.trim().trim_matches('"').to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// A `prometheus` this test started; killed (only it) when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Prometheus {
    fn start(dir: &Path, name: &str, config: &Yaml, args: &[&str]) -> Self {
        let port = free_port();
        let config_file = dir.join(format!("{name}.yml"));
        std::fs::write(
            &config_file,
            serde_yaml_ng::to_string(config).expect("yaml"),
        )
        .expect("write config");
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("prometheus (apt-get install prometheus; cargo xtask test installs it)");
        let p = Prometheus { child, port, log };
        let http = http_client();
        wait_for(&format!("{name} ready"), Duration::from_secs(60), || {
            http.get(p.url("/-/ready"))
                .send()
                .ok()
                .filter(|r| r.status().is_success())
        });
        p
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn api(&self, path: &str) -> Value {
        http_client()
            .get(self.url(path))
            .send()
            .and_then(|r| r.json())
            .unwrap_or(Value::Null)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {}:\n{}", self.log.display(), self.logs());
        }
    }
}

#[test]
fn a_crash_loop_goes_to_firing_in_a_real_prometheus_fed_by_the_kits_agent() {
    let stack = Stack::new("mon");
    stack.write_config(&format!(
        r#"{}[services.cache]
image = "berth-demo/redis:7"
probe = {{ redis = {{}}, interval = "500ms" }}

[services.crasher]
image = "berth-demo/base:bookworm"
command = ["sh", "-c", "exit 3"]
restart = {{ initial_backoff = "100ms", max_backoff = "800ms", reset_after = "60s" }}
"#,
        stack.supervisor()
    ));
    let d = stack.start();
    d.wait_health("cache healthy", UP, |h| {
        h["services"]["cache"]["health"] == "healthy"
    });

    // berth's live /metrics passes promtool's format and naming checks, and names only
    // what the metrics module declares.
    let metrics_url = format!("http://127.0.0.1:{}/metrics", stack.health_port);
    let text = http_client()
        .get(&metrics_url)
        .send()
        .and_then(|r| r.text())
        .expect("metrics");
    promtool(stack.dir.path(), &["check", "metrics"], Some(&text));
    let exported = exported();
    for l in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = l.split(' ').nth(2).unwrap_or("");
        assert!(exported.contains(name), "{name} is not declared");
    }
    assert!(
        text.contains("berth_service_crashloop{service=\"cache\"} 0"),
        "{text}"
    );

    // The kit's two configs, pointed at this test: the server (rules from the kit, its
    // remote-write receiver on) and the agent (scraping this berth, writing to the
    // server). Only the addresses, paths and intervals change.
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut server_cfg = yaml(&kit().join("prometheus.yml"));
    server_cfg["global"]["evaluation_interval"] = Yaml::from("1s");
    server_cfg["rule_files"][0] = Yaml::from(format!("{}/rules/*.rules.yml", kit().display()));
    let server = Prometheus::start(
        tmp.path(),
        "server",
        &server_cfg,
        &[
            &format!("--storage.tsdb.path={}", tmp.path().join("data").display()),
            "--web.enable-remote-write-receiver",
        ],
    );
    let mut agent_cfg = yaml(&kit().join("prometheus-agent.yml"));
    assert_eq!(
        agent_cfg["scrape_configs"][0]["static_configs"][0]["targets"][0].as_str(),
        Some("127.0.0.1:7878")
    );
    agent_cfg["global"]["scrape_interval"] = Yaml::from("1s");
    agent_cfg["global"]["scrape_timeout"] = Yaml::from("1s");
    agent_cfg["scrape_configs"][0]["static_configs"][0]["targets"][0] =
        Yaml::from(format!("127.0.0.1:{}", stack.health_port));
    agent_cfg["remote_write"][0]["url"] = Yaml::from(server.url("/api/v1/write"));
    let _agent = Prometheus::start(
        tmp.path(),
        "agent",
        &agent_cfg,
        &[
            "--enable-feature=agent",
            &format!(
                "--storage.agent.path={}",
                tmp.path().join("agent").display()
            ),
        ],
    );

    // The scrape arrives: up is 1 for berth, and the rules have loaded.
    wait_for("berth's up in the server", UP, || {
        let v = server.api("/api/v1/query?query=up%7Bjob%3D%22berth%22%7D");
        (v["data"]["result"][0]["value"][1] == "1").then_some(())
    });
    let rules = server.api("/api/v1/rules");
    let loaded = rules["data"]["groups"][0]["rules"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(loaded, 14, "{rules:#}");

    // The crash loop: berth says so, then the server's alert fires for that service only.
    d.wait_health("crash loop", UP, |h| {
        h["services"]["crasher"]["crashloop"] == true
    });
    let firing = |name: &str, service: &str| {
        let v = server.api("/api/v1/alerts");
        v["data"]["alerts"].as_array().is_some_and(|a| {
            a.iter().any(|x| {
                x["labels"]["alertname"] == name
                    && x["labels"]["service"] == service
                    && x["state"] == "firing"
            })
        })
    };
    wait_for("BerthCrashLoop firing in Prometheus", UP, || {
        firing("BerthCrashLoop", "crasher").then_some(())
    });
    let alerts = server.api("/api/v1/alerts");
    let crash = alerts["data"]["alerts"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|x| x["labels"]["alertname"] == "BerthCrashLoop")
        })
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(crash["labels"]["job"], "berth", "{crash:#}");
    assert_eq!(crash["labels"]["severity"], "critical", "{crash:#}");
    assert_eq!(
        crash["annotations"]["command"], "berth status; berth logs crasher -n 100",
        "{crash:#}"
    );
    assert!(!firing("BerthCrashLoop", "cache"), "{alerts:#}");
    for quiet in [
        "BerthScrapeMissing",
        "BerthEngineUnreachable",
        "BerthBackupFailed",
    ] {
        assert!(
            !alerts["data"]["alerts"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x["labels"]["alertname"] == quiet)),
            "{quiet} is active: {alerts:#}"
        );
    }
}
