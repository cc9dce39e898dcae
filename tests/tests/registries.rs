//! Private registries (issue 17, item 1): a registry on 127.0.0.1 that wants a password
//! (htpasswd). Without credentials the pull fails with one line naming the registry and
//! what to set; it succeeds with the Docker config's `auths`, with a credential helper,
//! and with `[registries]` + the env file. The password is in no log line or output.

use std::time::Duration;

use berth_tests::*;

const UP: Duration = Duration::from_secs(90);

/// A one-service stack whose image is only in the registry; `extra` is appended to its
/// config, `env` added to its env file.
fn stack(name: &str, image: &str, extra: &str, env: &str) -> Stack {
    let stack = Stack::new(name);
    let envf = stack.dir.path().join("berth.env");
    let mut vars = std::fs::read_to_string(&envf).expect("env");
    vars.push_str(env);
    std::fs::write(&envf, vars).expect("env");
    stack.write_config(&format!(
        "{}[services.cache]\nimage = \"{image}\"\nprobe = {{ redis = {{}}, interval = \"1s\" }}\n{extra}",
        stack.supervisor()
    ));
    stack
}

fn forget(image: &str) {
    let _ = docker(&["rmi", "-f", image]);
}

#[test]
fn pulls_use_the_credentials_docker_would_and_berths_own() {
    let password = format!("pw-{}", random_hex(12));
    let registry = Registry::with_password("ci", &password);
    let image = registry.push("berth-demo/redis:7", "private/cache:7");
    let host = format!("127.0.0.1:{}", registry.port);
    let empty = tempfile::tempdir().expect("tmp");

    // No credentials anywhere: one clear line, naming the registry and what to set.
    forget(&image);
    let s = stack("reg-none", &image, "", "");
    let d = s.start_with_env(&[("DOCKER_CONFIG", &empty.path().display().to_string())]);
    let line = wait_for("the pull refused", UP, || {
        d.logs()
            .lines()
            .find(|l| l.contains("wants credentials and berth has none"))
            .map(str::to_string)
    });
    assert!(line.contains(&host), "{line}");
    assert!(
        line.contains("[registries.") && line.contains("docker login"),
        "{line}"
    );
    drop(d);
    drop(s);

    // The Docker client config's auths (as `docker login` writes them).
    forget(&image);
    let cfg = tempfile::tempdir().expect("tmp");
    let auth = {
        use std::io::Write as _;
        let mut c = std::process::Command::new("base64")
            .arg("-w0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("base64");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(format!("ci:{password}").as_bytes())
            .expect("write");
        String::from_utf8(c.wait_with_output().expect("base64").stdout).expect("utf8")
    };
    std::fs::write(
        cfg.path().join("config.json"),
        format!(r#"{{"auths": {{"{host}": {{"auth": "{auth}"}}}}}}"#),
    )
    .expect("config.json");
    let s = stack("reg-auths", &image, "", "");
    let mut d = s.start_with_env(&[("DOCKER_CONFIG", &cfg.path().display().to_string())]);
    d.wait_healthy(UP);
    assert!(!d.logs().contains(&password), "the password in berth's log");
    drop(d);
    drop(s);

    // A credential helper the Docker config names (a script on PATH).
    forget(&image);
    let helper = tempfile::tempdir().expect("tmp");
    let script = helper.path().join("docker-credential-berthtest");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\n[ \"$server\" = \"{host}\" ] || {{ echo 'credentials not found in native keychain'; exit 1; }}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"ci\",\"Secret\":\"{password}\"}}' \"$server\"\n"
        ),
    )
    .expect("helper");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::fs::write(
        helper.path().join("config.json"),
        format!(r#"{{"credHelpers": {{"{host}": "berthtest"}}}}"#),
    )
    .expect("config.json");
    let path = format!(
        "{}:{}",
        helper.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let s = stack("reg-helper", &image, "", "");
    let mut d = s.start_with_env(&[
        ("DOCKER_CONFIG", &helper.path().display().to_string()),
        ("PATH", &path),
    ]);
    d.wait_healthy(UP);
    assert!(!d.logs().contains(&password), "the password in berth's log");
    drop(d);
    drop(s);

    // berth's own [registries] table, the password from the env file.
    forget(&image);
    let s = stack(
        "reg-config",
        &image,
        &format!(
            "\n[registries.\"{host}\"]\nusername = \"ci\"\npassword = \"${{REGISTRY_PASSWORD}}\"\n"
        ),
        &format!("REGISTRY_PASSWORD={password}\n"),
    );
    let mut d = s.start_with_env(&[("DOCKER_CONFIG", &empty.path().display().to_string())]);
    let health = d.wait_healthy(UP);
    assert!(!health.to_string().contains(&password));
    let status = s.berth(&["status"]);
    assert!(!String::from_utf8_lossy(&status.stdout).contains(&password));
    assert!(!d.logs().contains(&password), "the password in berth's log");
    // A literal password in the config is refused, naming file, line and column.
    let bad = s.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "{}[registries.\"{host}\"]\nusername = \"ci\"\npassword = \"{password}\"\n",
            s.supervisor()
        ),
    )
    .expect("bad config");
    let out = std::process::Command::new(berth_bin())
        .args(["check", "-c"])
        .arg(&bad)
        .output()
        .expect("check");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("bad.toml:") && err.contains("put it in the env file"),
        "{err}"
    );
    assert!(!err.contains(&password), "{err}");
    forget(&image);
}
