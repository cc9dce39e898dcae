//! Builds from source (issue 17, item 2): `berth deploy bot --build` builds the image
//! from a git checkout through the engine, honouring .dockerignore, tags it with the git
//! revision, and deploys it (migration, switch, health gate) with no two pollers; a
//! Dockerfile that fails changes nothing.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use berth_tests::*;

const UP: Duration = Duration::from_secs(120);

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["-c", "user.email=test@berth", "-c", "user.name=berth test"])
        .args(args)
        .output()
        .expect("git");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn deploy_build_from_a_git_checkout_and_a_failed_build_changes_nothing() {
    let stack = Stack::new("build");
    let src = stack.dir.path().join("botsrc");
    std::fs::create_dir_all(&src).expect("src");
    // The bot's source: its Dockerfile builds on the bot's base (no registry here).
    std::fs::write(
        src.join("Dockerfile"),
        "FROM berth-demo/bot:2\nCOPY . /opt/src/\n",
    )
    .expect("Dockerfile");
    std::fs::write(src.join(".dockerignore"), "secret.txt\n*.log\n").expect(".dockerignore");
    std::fs::write(src.join("marker.txt"), "built from source\n").expect("marker");
    std::fs::write(src.join("secret.txt"), "never in the image\n").expect("secret");
    std::fs::write(src.join("debug.log"), "noise\n").expect("log");
    git(&src, &["init", "-q"]);
    git(&src, &["add", "-A"]);
    git(&src, &["commit", "-qm", "bot source"]);
    let rev = git(&src, &["rev-parse", "--short=12", "HEAD"]);

    stack.write_config(&stack.demo_config("berth-demo/bot:1").replace(
        "read_only = true\n",
        &format!(
            "read_only = true\ndeploy = {{ migrate = [\"demo-bot\", \"migrate\"], health_timeout = \"20s\" }}\nbuild = {{ context = {:?} }}\n",
            src.display().to_string()
        ),
    ));
    let mut d = stack.start();
    d.wait_healthy(UP);

    let out = stack.berth(&["deploy", "bot", "--build", "--no-backup"]);
    let said = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}{err}");
    let image = format!("berth-demo/bot:{rev}");
    assert!(said.starts_with(&format!("deployed bot {image}")), "{said}");
    assert!(err.contains(" build: "), "the build's output shown: {err}");
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], image.as_str());
    assert_eq!(
        stack.psql("SELECT string_agg(name, ',' ORDER BY name) FROM schema_migrations"),
        "001_users.sql,002_language.sql",
        "the built version's migration ran"
    );
    assert_eq!(stack.running("bot"), 1);
    assert_eq!(stack.conflicts(), 0, "never two pollers");
    let files = docker(&["run", "--rm", "--entrypoint", "ls", &image, "/opt/src"]).expect("ls");
    assert!(files.contains("marker.txt"), "{files}");
    assert!(
        !files.contains("secret.txt"),
        ".dockerignore honoured: {files}"
    );
    assert!(
        !files.contains("debug.log"),
        ".dockerignore honoured: {files}"
    );

    // A Dockerfile that fails: nothing changes, the bot polls on.
    let before = stack.containers()["bot"].clone();
    std::fs::write(
        src.join("Dockerfile"),
        "FROM berth-demo/bot:2\nRUN echo this step fails >&2 && false\n",
    )
    .expect("Dockerfile");
    let out = stack.berth(&["deploy", "bot", "--build", "--no-backup"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the build of bot failed") && err.contains("nothing was changed"),
        "{err}"
    );
    assert_eq!(stack.containers()["bot"], before, "the old bot untouched");
    let h = d.wait_healthy(UP);
    assert_eq!(h["services"]["bot"]["image"], image.as_str());
    let polls = stack.polls()["polls"].as_array().map_or(0, Vec::len);
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        stack.polls()["polls"].as_array().map_or(0, Vec::len) > polls,
        "the old bot still polls"
    );
    assert_eq!(stack.conflicts(), 0);
    let _ = docker(&["rmi", "-f", &image]);

    // `export compose` writes the build back, as compose's `build:`.
    let out = stack.berth(&["export", "compose"]);
    let yaml = String::from_utf8_lossy(&out.stdout);
    assert!(yaml.contains("build:"), "{yaml}");
    assert!(
        yaml.contains(&format!("context: {}", src.display())),
        "{yaml}"
    );
}
