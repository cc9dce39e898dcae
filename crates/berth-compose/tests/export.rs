//! Export of an imported production config: compose and Kubernetes, references only.

use std::collections::BTreeMap;

use berth_compose::export;
use serde_yaml_ng::Value;

mod common;

fn config() -> (berth_config::Config, BTreeMap<String, String>) {
    let (out, env, dir) = common::imported();
    let cfg = berth_config::parse_str(&dir.join("berth.toml"), &out.toml, &|k| env.get(k).cloned())
        .expect("valid");
    (cfg, env)
}

#[test]
fn compose_export_keeps_references_and_health_gates() {
    let (cfg, env) = config();
    let text = export::compose(&cfg);
    for v in env.values() {
        assert!(!text.contains(v.as_str()), "secret in export:\n{text}");
    }
    let doc: Value = serde_yaml_ng::from_str(&text).expect("yaml");
    let bot = &doc["services"]["bot"];
    assert_eq!(
        bot["environment"]["DATABASE_URL"],
        "postgresql://bot:${POSTGRES_PASSWORD}@postgres:5432/bot"
    );
    assert_eq!(
        bot["depends_on"]["postgres"]["condition"],
        "service_healthy"
    );
    assert_eq!(bot["read_only"], true);
    assert_eq!(bot["ports"][0], "127.0.0.1:8000:8000/tcp");
    assert_eq!(
        doc["services"]["postgres"]["healthcheck"]["test"][1],
        "pg_isready"
    );
    assert!(doc["volumes"]["pgdata"].is_mapping());
}

#[test]
fn kubernetes_export_has_the_expected_kinds_and_secret_references_only() {
    let (cfg, env) = config();
    let text = export::kubernetes(&cfg);
    for v in env.values() {
        assert!(!text.contains(v.as_str()), "secret in export:\n{text}");
    }
    let docs: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("a YAML document"))
        .collect();
    let kinds: Vec<(String, String)> = docs
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or("").to_string(),
                d["metadata"]["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for want in [
        ("StatefulSet", "postgres"),
        ("Service", "postgres"),
        ("StatefulSet", "redis"),
        ("Service", "redis"),
        ("Deployment", "bot"),
        ("Service", "bot"),
        ("Deployment", "worker"),
    ] {
        assert!(
            kinds.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} missing from {kinds:?}"
        );
    }
    let bot = docs
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "bot")
        .expect("bot");
    assert_eq!(
        bot["spec"]["strategy"]["type"], "Recreate",
        "never two pollers"
    );
    let c = &bot["spec"]["template"]["spec"]["containers"][0];
    let env_list = c["env"].as_sequence().expect("env");
    let pg = env_list
        .iter()
        .find(|e| e["name"] == "POSTGRES_PASSWORD")
        .expect("from the Secret");
    assert_eq!(pg["valueFrom"]["secretKeyRef"]["name"], "toogoodtogo-env");
    let url = env_list
        .iter()
        .find(|e| e["name"] == "DATABASE_URL")
        .expect("url");
    assert_eq!(
        url["value"],
        "postgresql://bot:$(POSTGRES_PASSWORD)@postgres:5432/bot"
    );
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 8000);
    assert_eq!(c["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
    let pg_set = docs
        .iter()
        .find(|d| d["kind"] == "StatefulSet" && d["metadata"]["name"] == "postgres")
        .expect("postgres");
    assert_eq!(
        pg_set["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
        "pgdata"
    );
}
