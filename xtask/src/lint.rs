//! `cargo xtask lint [SRC_DIR…]`: the architecture rules, one line per violation (with
//! folders: only the cycle rule, on those).
//!
//! 1. The pure core crate (`berth-core`, formerly `berth-plan`) has none of the I/O crates
//!    in its normal dependency tree, directly or through others.
//! 2. bollard is a direct dependency of `berth-engine` only.
//! 3. No module import cycle inside any workspace crate's `src/`: a module is a file
//!    (`a/b.rs` and `a/b/mod.rs` are both `a::b`; `main.rs`/`lib.rs` are the root), an edge
//!    A → B is a `crate::…` path in A naming B (its longest prefix that is a module),
//!    comments aside; edges between a module and its ancestors or descendants, and with
//!    the root, are parent/child ties and do not count. The same rules as
//!    /work/shared/tools/modcycles.py, except that strings are not mistaken for comments,
//!    block comments nest, and `use crate::a::{b, c}` names `a::b` and `a::c`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::root;

/// The pure core crate, by its new name first.
const CORE: &[&str] = &["berth-core", "berth-plan"];
/// Crates that do I/O: none of them may be in the core's normal dependency tree.
const NOT_IN_CORE: &[&str] = &["tokio", "bollard", "reqwest", "axum", "sqlx", "hyper"];
/// The one crate that may depend on bollard.
const BOLLARD_CRATE: &str = "berth-engine";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if !args.is_empty() {
        return cycles_only(args);
    }
    let meta = metadata()?;
    let mut violations = pure_core(&meta)?;
    violations.extend(bollard_only_in_engine(&meta));
    let (mut crates, mut modules) = (0, 0);
    for dir in source_dirs(&meta) {
        let files = read_sources(&dir)?;
        crates += 1;
        modules += files.len();
        let rel = dir
            .strip_prefix(root())
            .unwrap_or(&dir)
            .display()
            .to_string();
        for cycle in module_cycles(&files) {
            violations.push(format!("cycle in {rel}: {}", cycle.join(", ")));
        }
    }
    for v in &violations {
        println!("{v}");
    }
    if !violations.is_empty() {
        bail!("lint: {} violation(s)", violations.len());
    }
    println!("lint: ok ({crates} crates, {modules} modules, no cycles)");
    Ok(())
}

/// `cargo xtask lint DIR…`: rule 3 alone, on these source folders (any checkout).
fn cycles_only(dirs: &[String]) -> anyhow::Result<()> {
    let mut found = 0;
    let mut modules = 0;
    for dir in dirs {
        let files = read_sources(Path::new(dir))?;
        modules += files.len();
        for cycle in module_cycles(&files) {
            found += 1;
            println!("cycle in {dir}: {}", cycle.join(", "));
        }
    }
    if found > 0 {
        bail!("lint: {found} cycle(s)");
    }
    println!(
        "lint: ok ({} crates, {modules} modules, no cycles)",
        dirs.len()
    );
    Ok(())
}

fn metadata() -> anyhow::Result<Value> {
    let out = crate::cargo()
        .args(["metadata", "--format-version", "1"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!("cargo metadata failed: {}", out.status);
    }
    serde_json::from_slice(&out.stdout).context("parsing cargo metadata")
}

/// The workspace's packages: (id, package JSON).
fn workspace_packages(meta: &Value) -> Vec<&Value> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["id"].as_str().is_some_and(|id| members.contains(id)))
        .collect()
}

/// Rule 1: the forbidden crates reachable from the core through normal dependencies, each
/// with the shortest chain that pulls it in.
fn pure_core(meta: &Value) -> anyhow::Result<Vec<String>> {
    let members = workspace_packages(meta);
    let Some((core_name, core_id)) = CORE.iter().find_map(|name| {
        members
            .iter()
            .find(|p| p["name"] == *name)
            .and_then(|p| Some((*name, p["id"].as_str()?)))
    }) else {
        bail!("no core crate: none of {CORE:?} is in the workspace");
    };
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let mut normal: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().into_iter().flatten() {
        let Some(id) = node["id"].as_str() else {
            continue;
        };
        let deps = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|k| k["kind"].is_null())
            })
            .filter_map(|d| d["pkg"].as_str())
            .collect();
        normal.insert(id, deps);
    }
    if normal.is_empty() {
        bail!("cargo metadata has no resolve graph");
    }
    Ok(forbidden_paths(core_id, &normal, &names)
        .into_iter()
        .map(|chain| {
            format!(
                "{core_name} depends on {} ({})",
                chain.last().copied().unwrap_or(""),
                chain.join(" -> ")
            )
        })
        .collect())
}

/// Breadth-first from `start`: for each package named in NOT_IN_CORE, the shortest chain
/// of package names from `start` to it.
fn forbidden_paths<'a>(
    start: &'a str,
    deps: &BTreeMap<&'a str, Vec<&'a str>>,
    names: &BTreeMap<&'a str, &'a str>,
) -> Vec<Vec<&'a str>> {
    let mut parent: BTreeMap<&str, &str> = BTreeMap::new();
    let mut queue = VecDeque::from([start]);
    let mut seen = BTreeSet::from([start]);
    let mut found = Vec::new();
    while let Some(id) = queue.pop_front() {
        let name = names.get(id).copied().unwrap_or(id);
        if id != start && NOT_IN_CORE.contains(&name) {
            let mut chain = vec![name];
            let mut at = id;
            while let Some(p) = parent.get(at) {
                chain.push(names.get(p).copied().unwrap_or(p));
                at = p;
            }
            chain.reverse();
            found.push(chain);
            // What it pulls in is its own problem: one line per forbidden crate reached.
            continue;
        }
        for d in deps.get(id).into_iter().flatten() {
            if seen.insert(d) {
                parent.insert(d, id);
                queue.push_back(d);
            }
        }
    }
    found.sort();
    found
}

/// Rule 2: workspace packages other than berth-engine that list bollard as a dependency
/// (of any kind).
fn bollard_only_in_engine(meta: &Value) -> Vec<String> {
    workspace_packages(meta)
        .into_iter()
        .filter(|p| p["name"] != BOLLARD_CRATE)
        .filter(|p| {
            p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|d| d["name"] == "bollard")
        })
        .map(|p| {
            format!(
                "{} depends on bollard directly (only {BOLLARD_CRATE} may)",
                p["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// Each workspace package's `src/`, sorted.
fn source_dirs(meta: &Value) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = workspace_packages(meta)
        .into_iter()
        .filter_map(|p| p["manifest_path"].as_str())
        .filter_map(|m| Path::new(m).parent().map(|d| d.join("src")))
        .filter(|d| d.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Every `.rs` file under `dir`: (path relative to `dir`, text).
fn read_sources(dir: &Path) -> anyhow::Result<Vec<(PathBuf, String)>> {
    fn walk(dir: &Path, base: &Path, out: &mut Vec<(PathBuf, String)>) -> anyhow::Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("{}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, base, out)?;
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read(&p).with_context(|| format!("{}", p.display()))?;
                let rel = p.strip_prefix(base).unwrap_or(&p).to_path_buf();
                out.push((rel, String::from_utf8_lossy(&text).into_owned()));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// The module a file under `src/` is: `a/b.rs` and `a/b/mod.rs` are `a::b`; `main.rs` and
/// `lib.rs` are the root, "".
fn module_of(rel: &Path) -> String {
    let mut segs: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if segs.last().is_some_and(|s| s == "mod") {
        segs.pop();
    }
    if segs == ["main"] || segs == ["lib"] {
        segs.clear();
    }
    segs.join("::")
}

/// The module graph of one crate: module → the modules it names (parent/child ties and
/// the root left out).
fn module_edges(files: &[(PathBuf, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeMap<String, &str> = files
        .iter()
        .map(|(rel, text)| (module_of(rel), text.as_str()))
        .collect();
    let mut edges = BTreeMap::new();
    for (m, text) in &modules {
        let mut targets = BTreeSet::new();
        for path in crate_paths(&strip_comments(text)) {
            let Some(target) = (1..=path.len())
                .rev()
                .map(|i| path[..i].join("::"))
                .find(|cand| modules.contains_key(cand))
            else {
                continue;
            };
            let related = target == *m
                || m.is_empty()
                || target.is_empty()
                || m.starts_with(&format!("{target}::"))
                || target.starts_with(&format!("{m}::"));
            if !related {
                targets.insert(target);
            }
        }
        edges.insert(m.clone(), targets);
    }
    edges
}

/// The import cycles of one crate's files: each strongly connected component of more than
/// one module, its modules sorted.
fn module_cycles(files: &[(PathBuf, String)]) -> Vec<Vec<String>> {
    strongly_connected(&module_edges(files))
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect()
}

/// Tarjan's strongly connected components, each sorted, in sorted order.
fn strongly_connected(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                if !s.edges.contains_key(w) {
                    continue;
                }
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            comp.sort();
            s.out.push(comp);
        }
    }
    let mut s = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// The text without `//` and (nested) `/* */` comments; string and char literals are kept
/// whole, so a `//` inside one is not a comment.
pub fn strip_comments(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if ch == '"' {
            out.push(ch);
            i += 1;
            while i < c.len() {
                out.push(c[i]);
                if c[i] == '\\' && i + 1 < c.len() {
                    out.push(c[i + 1]);
                    i += 2;
                    continue;
                }
                i += 1;
                if c[i - 1] == '"' {
                    break;
                }
            }
        } else if (ch == 'r' || (ch == 'b' && at(i + 1) == 'r')) && (i == 0 || !ident(c[i - 1])) {
            // A raw string r"…", r#"…"#, br"…"?
            let mut j = i + if ch == 'b' { 2 } else { 1 };
            let mut hashes = 0;
            while at(j) == '#' {
                hashes += 1;
                j += 1;
            }
            if at(j) != '"' {
                out.push(ch);
                i += 1;
                continue;
            }
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            let mut k = j + 1;
            while k < c.len() && !c[k..].starts_with(&close) {
                k += 1;
            }
            let end = (k + close.len()).min(c.len());
            out.extend(&c[i..end]);
            i = end;
        } else if ch == '\'' && (at(i + 1) == '\\' || (at(i + 1) != '\'' && at(i + 2) == '\'')) {
            // A char literal ('"', '\'', '\u{..}'); a lifetime has no closing quote.
            let mut k = i + 2;
            while k < c.len() && c[k] != '\'' {
                k += 1;
            }
            let end = (k + 1).min(c.len());
            out.extend(&c[i..end]);
            i = end;
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

/// The `crate::…` paths in (comment-free) source, as segments; `use crate::{a, b::{c, d}}`
/// groups give one path each (`a`, `b::c`, `b::d`); `self` in a group is its prefix.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let c: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i + 5 <= c.len() {
        let starts = c[i..].starts_with(&['c', 'r', 'a', 't', 'e'])
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'));
        if !starts {
            i += 1;
            continue;
        }
        let mut p = Parser { c: &c, i: i + 5 };
        p.skip_ws();
        if p.eat("::") {
            p.tree(&[], &mut out);
        }
        i = p.i.max(i + 5);
    }
    out
}

struct Parser<'a> {
    c: &'a [char],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> char {
        self.c.get(self.i).copied().unwrap_or('\0')
    }

    fn skip_ws(&mut self) {
        while self.peek().is_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        let s: Vec<char> = s.chars().collect();
        if self.c[self.i.min(self.c.len())..].starts_with(&s) {
            self.i += s.len();
            true
        } else {
            false
        }
    }

    fn ident(&mut self) -> Option<String> {
        let start = self.i;
        if !(self.peek().is_alphabetic() || self.peek() == '_') {
            return None;
        }
        while self.peek().is_alphanumeric() || self.peek() == '_' {
            self.i += 1;
        }
        Some(self.c[start..self.i].iter().collect())
    }

    /// A use tree after `prefix::`: a path, a `{…}` group or `*`.
    fn tree(&mut self, prefix: &[String], out: &mut Vec<Vec<String>>) {
        self.skip_ws();
        if self.eat("{") {
            loop {
                self.skip_ws();
                if self.peek() == '\0' || self.eat("}") {
                    return;
                }
                self.tree(prefix, out);
                // Whatever follows an item up to the next `,` or `}` (`as name`).
                while !matches!(self.peek(), ',' | '}' | '\0') {
                    self.i += 1;
                }
                self.eat(",");
            }
        }
        if self.eat("*") {
            out.push(prefix.to_vec());
            return;
        }
        let Some(id) = self.ident() else {
            if !prefix.is_empty() {
                out.push(prefix.to_vec());
            }
            return;
        };
        let mut path = prefix.to_vec();
        if id != "self" {
            path.push(id);
        }
        let save = self.i;
        self.skip_ws();
        if self.eat("::") {
            self.skip_ws();
            if matches!(self.peek(), '{' | '*') || self.peek().is_alphabetic() || self.peek() == '_'
            {
                return self.tree(&path, out);
            }
        }
        self.i = save;
        out.push(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(list: &[(&str, &str)]) -> Vec<(PathBuf, String)> {
        list.iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_string()))
            .collect()
    }

    #[test]
    fn a_cycle_through_three_modules_is_reported() {
        let f = files(&[
            ("main.rs", "mod a; mod b; mod c; mod d;\nuse crate::a::run;"),
            ("a.rs", "use crate::b::Thing;\n"),
            ("b/mod.rs", "pub mod inner;\n"),
            ("b/inner.rs", "fn f() { crate::c::g() }\n"),
            ("c.rs", "use crate::{d, a::{self, Other as O}};\n"),
            (
                "d.rs",
                "// crate::a would close another cycle, but it is a comment\n",
            ),
        ]);
        let e = module_edges(&f);
        assert_eq!(e["a"], BTreeSet::from(["b".to_string()]));
        assert_eq!(e["b::inner"], BTreeSet::from(["c".to_string()]));
        assert_eq!(e["c"], BTreeSet::from(["a".to_string(), "d".to_string()]));
        assert!(e["d"].is_empty());
        assert!(e[""].is_empty(), "the root's edges do not count");
        // a names b, not b::inner, and b itself names nothing: no way back to a.
        assert!(module_cycles(&f).is_empty());

        // a naming b::inner closes a -> b::inner -> c -> a.
        let mut f = f;
        f[1].1 = "use crate::b::inner::Thing;\n".to_string();
        assert_eq!(module_cycles(&f), [["a", "b::inner", "c"]]);
    }

    #[test]
    fn two_modules_naming_each_other_are_a_cycle() {
        let f = files(&[
            ("lib.rs", "pub mod deploy; pub mod state;"),
            ("deploy.rs", "use crate::state::State;"),
            ("state.rs", "pub fn f() -> crate::deploy::Plan { todo!() }"),
        ]);
        assert_eq!(module_cycles(&f), [["deploy", "state"]]);
    }

    #[test]
    fn parent_child_and_root_ties_are_no_cycle() {
        let f = files(&[
            ("main.rs", "mod io; use crate::io::backup; fn main() {}"),
            (
                "io/mod.rs",
                "pub mod backup; pub mod s3; use crate::io::s3::Client;",
            ),
            ("io/backup.rs", "use crate::io::Helper; use crate::Config;"),
            (
                "io/s3.rs",
                "use crate::io; use crate::io::backup::x; // crate::main",
            ),
        ]);
        // io/s3 -> io::backup is one edge; nothing comes back to s3.
        let e = module_edges(&f);
        assert_eq!(e["io::s3"], BTreeSet::from(["io::backup".to_string()]));
        assert!(e["io"].is_empty() && e["io::backup"].is_empty() && e[""].is_empty());
        assert!(module_cycles(&f).is_empty());
    }

    #[test]
    fn comments_are_stripped_but_strings_kept() {
        let s = strip_comments(
            "let u = \"http://x\"; use crate::a; /* x /* nested */ crate::b */ crate::c\n// crate::d\nlet q = '\"'; crate::e; let r = r#\"/*\"#; crate::f",
        );
        let paths: Vec<String> = crate_paths(&s).iter().map(|p| p.join("::")).collect();
        assert_eq!(paths, ["a", "c", "e", "f"]);
    }

    #[test]
    fn use_groups_expand_to_paths() {
        let p = crate_paths(
            "use crate::{a, b::{c, d as e}, f::*, g::{self, h}};\nlet x = $crate::k::l(); other_crate::m; crate::Z::new()",
        );
        let p: Vec<String> = p.iter().map(|p| p.join("::")).collect();
        assert_eq!(p, ["a", "b::c", "b::d", "f", "g", "g::h", "k::l", "Z::new"]);
    }

    #[test]
    fn module_names_follow_the_file_layout() {
        assert_eq!(module_of(Path::new("main.rs")), "");
        assert_eq!(module_of(Path::new("lib.rs")), "");
        assert_eq!(module_of(Path::new("io/mod.rs")), "io");
        assert_eq!(module_of(Path::new("io/s3.rs")), "io::s3");
        assert_eq!(module_of(Path::new("io/main.rs")), "io::main");
    }

    #[test]
    fn forbidden_crates_are_found_through_other_crates() {
        let deps: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
            ("core", vec!["serde", "chrono"]),
            ("chrono", vec!["tokio"]),
            ("tokio", vec!["hyper"]),
            ("serde", vec![]),
        ]);
        let names: BTreeMap<&str, &str> = ["core", "serde", "chrono", "tokio", "hyper"]
            .iter()
            .map(|n| (*n, *n))
            .collect();
        assert_eq!(
            forbidden_paths("core", &deps, &names),
            [vec!["core", "chrono", "tokio"]]
        );
        assert!(forbidden_paths("serde", &deps, &names).is_empty());
    }
}
