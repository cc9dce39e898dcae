//! Builds from source (`[services.X.build]`, `berth deploy X --build`): the context folder
//! as a tar, with what `.dockerignore` names left out (as `docker build` does), and the
//! tag a build gets: the context's git revision when it is a git checkout (`-dirty` with
//! uncommitted changes), else the time.

use std::path::Path;
use std::time::SystemTime;

use anyhow::Context as _;
use ignore::gitignore::{Gitignore, GitignoreBuilder};

/// `.dockerignore` as a matcher. Its patterns are relative to the context's root (unlike
/// .gitignore's, which match at any depth), so each is anchored there.
fn dockerignore(dir: &Path) -> anyhow::Result<Gitignore> {
    let mut b = GitignoreBuilder::new(dir);
    let file = dir.join(".dockerignore");
    if let Ok(text) = std::fs::read_to_string(&file) {
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (neg, pat) = match line.strip_prefix('!') {
                Some(p) => ("!", p.trim()),
                None => ("", line),
            };
            let pat = pat.trim_start_matches("./").trim_start_matches('/');
            b.add_line(Some(file.clone()), &format!("{neg}/{pat}"))
                .with_context(|| format!("{}: pattern {line:?}", file.display()))?;
        }
    }
    b.build().context("reading .dockerignore")
}

/// The context folder `dir` as a tar, without what `.dockerignore` excludes (the
/// Dockerfile and `.dockerignore` always go: the engine needs them).
pub fn context_tar(dir: &Path, dockerfile: &str) -> anyhow::Result<Vec<u8>> {
    let ignored = dockerignore(dir)?;
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&folder)
            .with_context(|| format!("reading {}", folder.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", folder.display()))?;
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let path = e.path();
            let rel = path.strip_prefix(dir).unwrap_or(&path);
            let is_dir = e.file_type()?.is_dir();
            let always = rel == Path::new(dockerfile) || rel == Path::new(".dockerignore");
            if !always && ignored.matched_path_or_any_parents(rel, is_dir).is_ignore() {
                continue;
            }
            if is_dir {
                tar.append_dir(rel, &path)
                    .with_context(|| format!("adding {}", rel.display()))?;
                stack.push(path);
            } else {
                tar.append_path_with_name(&path, rel)
                    .with_context(|| format!("adding {}", rel.display()))?;
            }
        }
    }
    tar.into_inner().context("finishing the build context")
}

/// The tag of a build of `dir`: its git revision (12 hex digits, `-dirty` when it has
/// uncommitted changes), else the UTC time `YYYYMMDDTHHMMSSZ`.
pub fn revision(dir: &Path, now: SystemTime) -> String {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) if !rev.is_empty() => {
            let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{rev}-dirty") } else { rev }
        }
        _ => {
            berth_core::time::fmt_time(now)
                .replace(['-', ':'], "")
                .trim_end_matches('Z')
                .to_string()
                + "Z"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tar: &[u8]) -> Vec<String> {
        let mut a = tar::Archive::new(tar);
        let mut out: Vec<String> = a
            .entries()
            .expect("entries")
            .map(|e| {
                e.expect("entry")
                    .path()
                    .expect("path")
                    .display()
                    .to_string()
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn dockerignore_leaves_out_what_it_names() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path();
        for f in [
            "Dockerfile",
            "app.py",
            "secret.env",
            "logs/a.log",
            "src/keep.py",
            "src/x.pyc",
            "sub/secret.env",
        ] {
            std::fs::create_dir_all(p.join(f).parent().expect("parent")).expect("dir");
            std::fs::write(p.join(f), "x").expect("write");
        }
        std::fs::write(
            p.join(".dockerignore"),
            "# comment\nsecret.env\nlogs\n**/*.pyc\nDockerfile\n",
        )
        .expect("ignore");
        let got = names(&context_tar(p, "Dockerfile").expect("tar"));
        assert_eq!(
            got,
            [
                ".dockerignore",
                "Dockerfile",
                "app.py",
                "src",
                "src/keep.py",
                "sub",
                "sub/secret.env"
            ],
            "root-anchored like docker: sub/secret.env stays"
        );
    }

    #[test]
    fn a_build_outside_git_is_tagged_with_the_time() {
        let d = tempfile::tempdir().expect("tmp");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        assert_eq!(revision(d.path(), t), "20270115T080000Z");
    }
}
