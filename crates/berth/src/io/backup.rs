//! PostgreSQL backups: `pg_dump -Fc` inside the container, streamed to the host (temp
//! file, SHA-256 while streaming, fsync, rename, fsync of the folder), verified, listed,
//! pruned by tiered retention, and restored without ever dropping the live database
//! before the new copy is complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use berth_config::{Backup, Config, Verify};
use berth_engine::{Engine, Output};

pub use crate::api::Meta;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Removes a file when dropped, unless disarmed: no partial backup outlives an error.
pub(crate) struct TempFile {
    pub(crate) path: PathBuf,
    pub(crate) armed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.armed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub(crate) fn io_error(e: std::io::Error, doing: &str, path: &Path) -> anyhow::Error {
    if e.kind() == std::io::ErrorKind::StorageFull {
        anyhow::anyhow!("no space left on device while {doing} {}", path.display())
    } else {
        anyhow::anyhow!("{doing} {}: {e}", path.display())
    }
}

fn settings(cfg: &Config) -> anyhow::Result<&Backup> {
    cfg.backup
        .as_ref()
        .with_context(|| format!("no [backup] section in {}", cfg.path.display()))
}

/// The running container of the backup's service.
async fn container(
    engine: &dyn Engine,
    cfg: &Config,
    b: &Backup,
) -> anyhow::Result<(String, String)> {
    let name = cfg.container_name(&b.service);
    let d = engine
        .inspect_container(&name)
        .await
        .with_context(|| format!("the {} container", b.service))?;
    if !d.running {
        bail!("the {} container is not running", b.service);
    }
    Ok((d.id, d.image))
}

/// The end of a command's output, for an error message (scrubbed of secrets).
fn tail(bytes: &[u8]) -> String {
    let s = crate::redact::scrub(&String::from_utf8_lossy(bytes));
    let s = s.trim();
    let start = s.len().saturating_sub(500);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].to_string()
}

/// A new backup id: the UTC time, made unique within the folder.
fn new_id(dir: &Path) -> String {
    let base = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
    let mut id = base.clone();
    let mut n = 1;
    while dir.join(format!("{id}.dump")).exists() || dir.join(format!("{id}.json")).exists() {
        n += 1;
        id = format!("{base}-{n}");
    }
    id
}

/// Whether a new backup applies retention afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    Apply,
    /// A safety backup before a restore: pruning now could delete the very backup about
    /// to be restored (it would no longer be its day's newest).
    Defer,
}

/// Takes a backup now, verifies it and (with [`Retention::Apply`]) applies retention.
/// Returns its metadata.
pub async fn take(engine: &dyn Engine, cfg: &Config, retention: Retention) -> anyhow::Result<Meta> {
    let b = settings(cfg)?;
    let (cid, image) = container(engine, cfg, b).await?;
    let dir = &b.dir;
    if !dir.exists() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io_error(e, "creating", dir))?;
    }
    let id = new_id(dir);
    let file = format!("{id}.dump");
    let cmd: Vec<String> = ["pg_dump", "-Fc", "-U", &b.user, "-d", &b.database]
        .iter()
        .map(|s| s.to_string())
        .collect();
    crate::progress::say("backup", format!("pg_dump of {} to {file}", b.database));
    let (sha256, size) = stream_to_file(engine, &cid, &cmd, None, dir, &file).await?;
    crate::progress::say(
        "backup",
        format!(
            "{file}: {size} bytes, sha256 {}",
            &sha256[..12.min(sha256.len())]
        ),
    );
    let path = dir.join(&file);
    // Until its metadata is written no listing sees the dump (or the Redis copy): any
    // error on the way removes them, so no backup is half there.
    let mut unlisted = vec![TempFile {
        path: path.clone(),
        armed: true,
    }];
    let mut meta = Meta {
        id,
        created_at: berth_core::time::fmt_time(SystemTime::now()),
        file,
        size,
        sha256,
        database: b.database.clone(),
        service: b.service.clone(),
        image,
        berth_version: env!("CARGO_PKG_VERSION").into(),
        verify: match b.verify {
            Verify::None => "none",
            Verify::List => "list",
            Verify::Restore => "restore",
        }
        .into(),
        verified: None,
        verify_error: None,
        redis_file: None,
        redis_sha256: None,
        redis_error: None,
        tables: None,
    };
    if b.verify != Verify::None {
        crate::progress::say("verify", format!("{} ({})", meta.file, meta.verify));
    }
    let verified = match b.verify {
        Verify::None => None,
        Verify::List => Some(verify_list(engine, &cid, b, &path).await),
        Verify::Restore => Some(verify_restore(engine, &cid, b, &path).await.map(|t| {
            meta.tables = Some(t);
        })),
    };
    if let Some(r) = verified {
        meta.verified = Some(r.is_ok());
        meta.verify_error = r.err().map(|e| format!("{e:#}"));
    }
    if let Some(redis) = &b.redis {
        // A Redis problem is recorded, but does not cost the PostgreSQL backup.
        match copy_rdb(engine, cfg, redis, dir, &meta.id).await {
            Ok((file, sum)) => {
                unlisted.push(TempFile {
                    path: dir.join(&file),
                    armed: true,
                });
                meta.redis_file = Some(file);
                meta.redis_sha256 = Some(sum);
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "copying redis dump.rdb failed");
                meta.redis_error = Some(format!("{e:#}"));
            }
        }
    }
    write_meta(dir, &meta)?;
    for f in &mut unlisted {
        f.armed = false;
    }
    if meta.verified == Some(false) {
        // Kept, but reported: the dump ran, the file does not read back.
        bail!(
            "backup {} failed verification: {}",
            meta.id,
            meta.verify_error.clone().unwrap_or_default()
        );
    }
    if retention == Retention::Apply {
        let (dir, b) = (dir.clone(), b.clone());
        super::off_runtime(move || prune(&dir, &b)).await?;
    }
    Ok(meta)
}

/// Streams an exec's stdout into `dir/file` atomically (temp file, fsync, rename, fsync
/// of the folder); returns its SHA-256 and size. The exec must exit 0 and write something,
/// or no file is kept. Memory stays flat: chunks go straight to disk.
/// Runs `cmd` in `cid` (with `input` on its standard input, where secrets go) and streams
/// its output to `dir/file` through a temporary file.
async fn stream_to_file(
    engine: &dyn Engine,
    cid: &str,
    cmd: &[String],
    input: Option<&str>,
    dir: &Path,
    file: &str,
) -> anyhow::Result<(String, u64)> {
    let tmp = TempFile {
        path: dir.join(format!(".{file}.partial")),
        armed: true,
    };
    let mut out = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp.path)
        .await
        .map_err(|e| io_error(e, "creating", &tmp.path))?;
    let mut ex = engine.exec_stream(cid, cmd, input.is_some()).await?;
    if let Some(input) = input {
        let mut stdin = ex.input.take().context("the engine gave no stdin")?;
        stdin.write_all(input.as_bytes()).await?;
        stdin.shutdown().await?;
    }
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut stderr = Vec::new();
    let mut told = std::time::Instant::now();
    while let Some(chunk) = ex.output.next().await {
        match chunk? {
            Output::Stdout(bytes) => {
                hasher.update(&bytes);
                size += bytes.len() as u64;
                if told.elapsed() >= std::time::Duration::from_millis(500) {
                    told = std::time::Instant::now();
                    crate::progress::say("backup", format!("{file}: {size} bytes"));
                }
                out.write_all(&bytes)
                    .await
                    .map_err(|e| io_error(e, "writing", &tmp.path))?;
            }
            Output::Stderr(bytes) if stderr.len() < 65_536 => stderr.extend(bytes),
            Output::Stderr(_) => {}
        }
    }
    out.flush()
        .await
        .map_err(|e| io_error(e, "writing", &tmp.path))?;
    out.sync_all()
        .await
        .map_err(|e| io_error(e, "syncing", &tmp.path))?;
    drop(out);
    let code = engine.exec_exit_code(&ex.exec_id).await?;
    if code != 0 {
        bail!("{} failed (exit code {code}): {}", cmd[0], tail(&stderr));
    }
    if size == 0 {
        bail!("{} wrote nothing", cmd[0]);
    }
    let path = dir.join(file);
    std::fs::rename(&tmp.path, &path).map_err(|e| io_error(e, "renaming to", &path))?;
    let mut tmp = tmp;
    tmp.armed = false;
    sync_dir(dir)?;
    let sum = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((sum, size))
}

/// Makes Redis write a fresh RDB snapshot and copies it to `<id>.rdb`.
async fn copy_rdb(
    engine: &dyn Engine,
    cfg: &Config,
    service: &str,
    dir: &Path,
    id: &str,
) -> anyhow::Result<(String, String)> {
    let d = engine
        .inspect_container(&cfg.container_name(service))
        .await
        .with_context(|| format!("the {service} container"))?;
    if !d.running {
        bail!("the {service} container is not running");
    }
    // The password (the probe's) comes on stdin and reaches redis-cli as REDISCLI_AUTH:
    // never on a command line.
    let password = match cfg.services.get(service).and_then(|s| s.probe.as_ref()) {
        Some(berth_config::Probe {
            kind:
                berth_config::ProbeKind::Redis {
                    password: Some(p), ..
                },
            ..
        }) => p.value.clone(),
        _ => String::new(),
    };
    let script = "IFS= read -r REDISCLI_AUTH || true; export REDISCLI_AUTH; [ -n \"$REDISCLI_AUTH\" ] || unset REDISCLI_AUTH; \
        r=$(redis-cli SAVE) && [ \"$r\" = OK ] || { echo \"redis-cli SAVE: $r\" >&2; exit 1; }; \
        cat \"$(redis-cli CONFIG GET dir | tail -n 1)/$(redis-cli CONFIG GET dbfilename | tail -n 1)\"";
    let cmd: Vec<String> = ["sh", "-c", script].iter().map(|s| s.to_string()).collect();
    let file = format!("{id}.rdb");
    let input = format!("{password}\n");
    let (sum, _) = stream_to_file(engine, &d.id, &cmd, Some(&input), dir, &file).await?;
    Ok((file, sum))
}

pub(crate) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(e, "syncing", dir))
}

pub(crate) fn write_meta(dir: &Path, meta: &Meta) -> anyhow::Result<()> {
    let path = dir.join(format!("{}.json", meta.id));
    let tmp = TempFile {
        path: dir.join(format!(".{}.json.partial", meta.id)),
        armed: true,
    };
    let text = serde_json::to_string_pretty(meta)?;
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp.path)
            .map_err(|e| io_error(e, "writing", &tmp.path))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io_error(e, "writing", &tmp.path))?;
    }
    std::fs::rename(&tmp.path, &path).map_err(|e| io_error(e, "renaming to", &path))?;
    let mut tmp = tmp;
    tmp.armed = false;
    sync_dir(dir)
}

/// Streams a backup file into `cmd`'s stdin while collecting its output.
async fn feed(
    engine: &dyn Engine,
    cid: &str,
    cmd: &[&str],
    file: &Path,
) -> anyhow::Result<(i64, Vec<u8>, Vec<u8>)> {
    let cmd: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
    let mut ex = engine.exec_stream(cid, &cmd, true).await?;
    let Some(mut input) = ex.input.take() else {
        bail!("the engine gave no stdin for {}", cmd[0]);
    };
    let path = file.to_path_buf();
    let writer = async move {
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_error(e, "reading", &path))?;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f
                .read(&mut buf)
                .await
                .map_err(|e| io_error(e, "reading", &path))?;
            if n == 0 {
                break;
            }
            if input.write_all(&buf[..n]).await.is_err() {
                break; // the command stopped reading; its exit code tells why
            }
        }
        let _ = input.shutdown().await;
        anyhow::Ok(())
    };
    let reader = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        while let Some(chunk) = ex.output.next().await {
            match chunk? {
                Output::Stdout(b) if out.len() < 1 << 20 => out.extend(b),
                Output::Stderr(b) if err.len() < 1 << 16 => err.extend(b),
                _ => {}
            }
        }
        anyhow::Ok((out, err))
    };
    let (w, r) = tokio::join!(writer, reader);
    w?;
    let (out, err) = r?;
    let code = engine.exec_exit_code(&ex.exec_id).await?;
    Ok((code, out, err))
}

async fn verify_list(
    engine: &dyn Engine,
    cid: &str,
    _b: &Backup,
    path: &Path,
) -> anyhow::Result<()> {
    let (code, out, err) = feed(engine, cid, &["pg_restore", "--list"], path).await?;
    if code != 0 {
        bail!(
            "pg_restore --list failed (exit code {code}): {}",
            tail(&err)
        );
    }
    if !String::from_utf8_lossy(&out).contains("Archive created at") {
        bail!("pg_restore --list printed no archive header");
    }
    Ok(())
}

async fn psql(
    engine: &dyn Engine,
    cid: &str,
    b: &Backup,
    db: &str,
    sql: &str,
) -> anyhow::Result<String> {
    let cmd: Vec<String> = [
        "psql",
        "-U",
        &b.user,
        "-d",
        db,
        "-v",
        "ON_ERROR_STOP=1",
        "-tAc",
        sql,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let r = engine.exec(cid, &cmd).await?;
    if r.exit_code != 0 {
        bail!(
            "psql failed (exit code {}): {}",
            r.exit_code,
            tail(&r.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&r.stdout).trim().to_string())
}

const ROW_COUNTS: &str = "SELECT table_schema || '.' || table_name || '=' || (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name), false, true, '')))[1]::text FROM information_schema.tables WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";

async fn row_counts(
    engine: &dyn Engine,
    cid: &str,
    b: &Backup,
    db: &str,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let text = psql(engine, cid, b, db, ROW_COUNTS).await?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (t, n) = l.rsplit_once('=')?;
            Some((t.to_string(), n.parse().ok()?))
        })
        .collect())
}

/// Drops `db` if it exists, disconnecting whoever uses it.
async fn drop_database(
    engine: &dyn Engine,
    cid: &str,
    b: &Backup,
    db: &str,
) -> anyhow::Result<String> {
    let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", quote_ident(db));
    psql(engine, cid, b, "postgres", &sql).await
}

pub(crate) fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Restores `path` into a new database `scratch` (dropped first if it exists).
async fn restore_into(
    engine: &dyn Engine,
    cid: &str,
    b: &Backup,
    path: &Path,
    scratch: &str,
) -> anyhow::Result<()> {
    drop_database(engine, cid, b, scratch).await?;
    psql(
        engine,
        cid,
        b,
        "postgres",
        &format!(
            "CREATE DATABASE {} OWNER {}",
            quote_ident(scratch),
            quote_ident(&b.user)
        ),
    )
    .await?;
    let (code, _, err) = feed(
        engine,
        cid,
        &[
            "pg_restore",
            "-U",
            &b.user,
            "-d",
            scratch,
            "--no-owner",
            "--exit-on-error",
        ],
        path,
    )
    .await?;
    if code != 0 {
        let _ = drop_database(engine, cid, b, scratch).await;
        bail!("pg_restore failed (exit code {code}): {}", tail(&err));
    }
    Ok(())
}

/// Full restore into a scratch database, row counts compared with the live one.
async fn verify_restore(
    engine: &dyn Engine,
    cid: &str,
    b: &Backup,
    path: &Path,
) -> anyhow::Result<BTreeMap<String, i64>> {
    let scratch = format!("{}_berth_verify", b.database);
    restore_into(engine, cid, b, path, &scratch).await?;
    let restored = row_counts(engine, cid, b, &scratch).await;
    let _ = drop_database(engine, cid, b, &scratch).await;
    let restored = restored?;
    let live = row_counts(engine, cid, b, &b.database).await?;
    let differ: Vec<String> = restored
        .iter()
        .filter(|(t, n)| live.get(*t) != Some(n))
        .map(|(t, n)| {
            format!(
                "{t}: {n} in backup, {} live",
                live.get(t).copied().unwrap_or(0)
            )
        })
        .collect();
    if !differ.is_empty() {
        bail!(
            "row counts differ from the live database: {}",
            differ.join(", ")
        );
    }
    Ok(restored)
}

/// Replaces the backup's database with the backup. The backup is restored into a new
/// database first; the live one is then renamed aside, the new one renamed into its
/// place, and only then is the old one dropped. A failure at any step leaves the live
/// database as it was (renamed back if it had been moved); a restore berth died in the
/// middle of is set right by the next one.
pub async fn restore_database(
    engine: &dyn Engine,
    cfg: &Config,
    meta: &Meta,
) -> anyhow::Result<()> {
    let b = settings(cfg)?;
    let path = meta.path(&b.dir);
    // Hashing a large dump takes a while: off the async workers.
    {
        let (meta, file) = (meta.clone(), path.clone());
        super::off_runtime(move || check_file(&meta, &file)).await?;
    }
    let (cid, _) = container(engine, cfg, b).await?;
    let live = b.database.as_str();
    let incoming = format!("{live}_berth_restore");
    let aside = format!("{live}_berth_replaced");
    let exists = async |db: &str| -> anyhow::Result<bool> {
        let sql = format!(
            "SELECT count(*) FROM pg_database WHERE datname = {}",
            quote_literal(db)
        );
        Ok(psql(engine, &cid, b, "postgres", &sql).await? != "0")
    };
    // What an interrupted restore left: the live data aside and nothing in its place.
    if !exists(live).await? && exists(&aside).await? {
        tracing::warn!(
            database = live,
            "an earlier restore was interrupted: putting the live database back first"
        );
        rename_database(engine, &cid, b, &aside, live).await?;
    }
    restore_into(engine, cid.as_str(), b, &path, &incoming).await?;
    drop_database(engine, &cid, b, &aside).await?;
    if let Err(e) = rename_database(engine, &cid, b, live, &aside).await {
        let _ = drop_database(engine, &cid, b, &incoming).await;
        return Err(e).context("moving the live database aside; it is unchanged");
    }
    if let Err(e) = rename_database(engine, &cid, b, &incoming, live).await {
        let back = rename_database(engine, &cid, b, &aside, live).await;
        let _ = drop_database(engine, &cid, b, &incoming).await;
        return match back {
            Ok(()) => Err(e).context("putting the restored database in place; the live one is back as it was"),
            Err(back) => Err(e).context(format!(
                "putting the restored database in place, and moving the live one back failed too ({back:#}): it is database {aside}"
            )),
        };
    }
    if let Err(e) = drop_database(engine, &cid, b, &aside).await {
        tracing::warn!(database = %aside, error = %format!("{e:#}"), "dropping the replaced database; drop it by hand");
    }
    Ok(())
}

/// Renames a database, ending the sessions that use it first (a probe may connect at
/// any moment, so it tries a few times).
async fn rename_database(
    engine: &dyn Engine,
    cid: &str,
    b: &Backup,
    from: &str,
    to: &str,
) -> anyhow::Result<()> {
    let kick = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = {} AND pid <> pg_backend_pid()",
        quote_literal(from)
    );
    let rename = format!(
        "ALTER DATABASE {} RENAME TO {}",
        quote_ident(from),
        quote_ident(to)
    );
    let mut last = None;
    for _ in 0..5 {
        psql(engine, cid, b, "postgres", &kick).await?;
        match psql(engine, cid, b, "postgres", &rename).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("renaming database {from}")))
        .with_context(|| format!("renaming database {from} to {to}"))
}

/// An SQL string literal.
pub(crate) fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The file must be the one the metadata describes.
fn check_file(meta: &Meta, path: &Path) -> anyhow::Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| io_error(e, "reading", path))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut f, &mut hasher).map_err(|e| io_error(e, "reading", path))?;
    let sum: String = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if sum != meta.sha256 {
        bail!(
            "{} does not match its checksum (file changed or damaged)",
            path.display()
        );
    }
    Ok(())
}

/// Removes what no listing sees: temp files of an interrupted backup, and dumps or Redis
/// copies without their metadata (berth died between the two). Only while no backup
/// runs (the caller holds the backup lock). Returns the names removed.
pub fn sweep(dir: &Path) -> anyhow::Result<Vec<String>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(e, "reading", dir)),
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let partial = name.starts_with('.') && name.ends_with(".partial");
        let orphan = [".dump", ".rdb"].iter().any(|ext| {
            name.strip_suffix(ext).is_some_and(|id| {
                !name.starts_with('.') && !dir.join(format!("{id}.json")).exists()
            })
        });
        if (partial || orphan) && e.file_type().is_ok_and(|t| t.is_file()) {
            let p = e.path();
            std::fs::remove_file(&p).map_err(|e| io_error(e, "removing", &p))?;
            tracing::warn!(file = %name, "removed an incomplete backup file");
            removed.push(name);
        }
    }
    removed.sort();
    Ok(removed)
}

/// Every backup in `dir` with its metadata, oldest first.
pub fn list(dir: &Path) -> anyhow::Result<Vec<Meta>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_error(e, "reading", dir)),
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        let meta: Meta = match std::fs::read_to_string(&p).map(|t| serde_json::from_str(&t)) {
            Ok(Ok(m)) => m,
            _ => continue,
        };
        if meta.path(dir).exists() {
            out.push(meta);
        }
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.id.cmp(&b.id)));
    Ok(out)
}

/// `latest` or an id.
pub fn find(dir: &Path, which: &str) -> anyhow::Result<Meta> {
    let all = list(dir)?;
    let found = if which == "latest" {
        all.iter()
            .rev()
            .find(|m| m.verified != Some(false))
            .cloned()
    } else {
        all.iter().find(|m| m.id == which).cloned()
    };
    found.with_context(|| {
        format!(
            "no backup {which:?} in {} (see `berth backups`)",
            dir.display()
        )
    })
}

/// Deletes what retention no longer keeps.
pub fn prune(dir: &Path, b: &Backup) -> anyhow::Result<Vec<String>> {
    let all = list(dir)?;
    let offset = i64::from(chrono::Local::now().offset().local_minus_utc());
    let candidates: Vec<berth_core::retention::Candidate> = all
        .iter()
        .filter_map(|m| {
            let t = m.created()?.duration_since(SystemTime::UNIX_EPOCH).ok()?;
            Some(berth_core::retention::Candidate {
                id: m.id.clone(),
                local_secs: t.as_secs() as i64 + offset,
                verified: m.verified != Some(false),
            })
        })
        .collect();
    let doomed = berth_core::retention::to_delete(&candidates, b.keep);
    for id in &doomed {
        for ext in ["dump", "rdb", "json"] {
            let p = dir.join(format!("{id}.{ext}"));
            if let Err(e) = std::fs::remove_file(&p)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(io_error(e, "removing", &p));
            }
        }
        tracing::info!(backup = %id, "removed by retention");
    }
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, item 4: a dump without metadata, a Redis copy without metadata and the
    /// temp files of a killed backup are swept; complete backups stay.
    #[test]
    fn orphaned_backup_files_are_swept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for f in [
            "20261127T033000Z.dump",
            "20261127T033000Z.rdb",
            "20261127T033000Z.json",
            "20261128T033000Z.dump",
            "20261128T033000Z.rdb",
            ".20261128T040000Z.dump.partial",
            ".20261128T040000Z.json.partial",
            "notes.txt",
        ] {
            std::fs::write(d.join(f), "x").expect("write");
        }
        let removed = sweep(d).expect("sweep");
        assert_eq!(
            removed,
            vec![
                ".20261128T040000Z.dump.partial",
                ".20261128T040000Z.json.partial",
                "20261128T033000Z.dump",
                "20261128T033000Z.rdb",
            ]
        );
        let mut left: Vec<String> = std::fs::read_dir(d)
            .expect("ls")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            vec![
                "20261127T033000Z.dump",
                "20261127T033000Z.json",
                "20261127T033000Z.rdb",
                "notes.txt"
            ]
        );
    }
}
