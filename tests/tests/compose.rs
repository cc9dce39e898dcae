//! The compose round trip with the real tools: a production compose file → `berth
//! import-compose` → `berth check` → `berth export compose` → `docker-compose config`
//! accepts it; `berth export kubernetes` is YAML with the expected kinds.

use std::path::Path;
use std::process::Command;

use berth_tests::berth_bin;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn import_check_export_and_docker_compose_accepts_it() {
    let fixtures =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crates/berth-compose/tests/fixtures");
    let dir = tempfile::tempdir().expect("tmp");
    let compose = dir.path().join("docker-compose.prod.yml");
    std::fs::copy(fixtures.join("docker-compose.prod.yml"), &compose).expect("copy");
    let env = dir.path().join(".env");
    std::fs::copy(fixtures.join(".env"), &env).expect("copy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let secrets: Vec<String> = std::fs::read_to_string(&env)
        .expect("env")
        .lines()
        .filter_map(|l| l.split_once('=').map(|(_, v)| v.to_string()))
        .collect();

    let toml = dir.path().join("berth.toml");
    let import = || {
        Command::new(berth_bin())
            .arg("import-compose")
            .arg(&compose)
            .arg("-o")
            .arg(&toml)
            .output()
            .expect("import")
    };
    let out = import();
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{notes}");
    assert!(
        notes.contains("note: services.bot.container_name"),
        "{notes}"
    );
    let text = std::fs::read_to_string(&toml).expect("toml");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "secret in the import");
    }
    // Not over an existing file without --force.
    assert_eq!(import().status.code(), Some(1));

    let check = run(Command::new(berth_bin()).arg("check").arg("-c").arg(&toml));
    assert!(check.contains("ok (4 services"), "{check}");

    let exported = dir.path().join("compose.export.yml");
    run(Command::new(berth_bin())
        .args(["export", "compose", "-c"])
        .arg(&toml)
        .arg("-o")
        .arg(&exported));
    let text = std::fs::read_to_string(&exported).expect("export");
    for s in &secrets {
        assert!(!text.contains(s.as_str()), "secret in the export");
    }
    // Issue 16, item 4: written 0600 (they may name secrets), never over a file unasked.
    for f in [&toml, &exported] {
        let mode = std::fs::metadata(f).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", f.display());
    }
    let again = Command::new(berth_bin())
        .args(["export", "compose", "-c"])
        .arg(&toml)
        .arg("-o")
        .arg(&exported)
        .output()
        .expect("berth");
    assert_eq!(
        again.status.code(),
        Some(1),
        "not over an existing file without --force"
    );
    // The real compose tool validates and resolves it (with the env file for ${VAR}).
    let resolved = run(Command::new("docker-compose")
        .arg("--env-file")
        .arg(&env)
        .arg("-p")
        .arg("roundtrip")
        .arg("-f")
        .arg(&exported)
        .arg("config"));
    assert!(resolved.contains("pg_isready"), "{resolved}");
    assert!(
        resolved.contains("condition: service_healthy"),
        "{resolved}"
    );

    let k8s = run(Command::new(berth_bin())
        .args(["export", "kubernetes", "-c"])
        .arg(&toml));
    for s in &secrets {
        assert!(!k8s.contains(s.as_str()), "secret in the manifests");
    }
    for kind in [
        "kind: StatefulSet",
        "kind: Deployment",
        "kind: Service",
        "secretKeyRef",
    ] {
        assert!(k8s.contains(kind), "{kind} missing");
    }
}

/// Issue 17, item 5: services that all read `env_file: .env.production`, and no `.env`:
/// that file becomes berth's env file, so `berth check` finds every `${VAR}`.
#[test]
fn the_services_one_env_file_becomes_berths_when_there_is_no_dot_env() {
    let dir = tempfile::tempdir().expect("tmp");
    let compose = dir.path().join("docker-compose.yml");
    std::fs::write(
        &compose,
        "services:\n  db:\n    image: postgres:16\n    env_file: .env.production\n  bot:\n    image: bot:1\n    env_file:\n      - .env.production\n    depends_on: [db]\n",
    )
    .expect("compose");
    let env = dir.path().join(".env.production");
    std::fs::write(
        &env,
        "POSTGRES_PASSWORD=s3cret-value\nTELEGRAM_BOT_TOKEN=123:abc\n",
    )
    .expect("env");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&env, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let toml = dir.path().join("berth.toml");
    let out = Command::new(berth_bin())
        .arg("import-compose")
        .arg(&compose)
        .arg("-o")
        .arg(&toml)
        .output()
        .expect("import");
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{notes}");
    assert!(
        notes.contains("the services read .env.production"),
        "{notes}"
    );
    assert!(!notes.contains("is not in berth's env file"), "{notes}");
    let text = std::fs::read_to_string(&toml).expect("toml");
    assert!(text.contains(".env.production"), "{text}");
    assert!(!text.contains("s3cret-value"));
    let check = run(Command::new(berth_bin()).arg("check").arg("-c").arg(&toml));
    assert!(check.contains("ok (2 services"), "{check}");
}
