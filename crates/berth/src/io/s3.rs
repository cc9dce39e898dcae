//! Off-site copies of backups in S3-compatible storage (DigitalOcean Spaces, AWS S3,
//! MinIO), with their own retention.
//!
//! What to upload is derived each time from the two listings (local folder, bucket), so a
//! failed or interrupted upload is simply retried at the next pass, across restarts too.
//! Objects live under `<prefix><project>/`: `<id>.dump`, `<id>.rdb` if any (each with
//! `.age` appended when `encryption_key` is set: encrypted on the way out, see
//! [`super::crypt`]), then `<id>.json` last — a backup counts as off-site once its
//! metadata is there. The metadata is the local one plus an `offsite` record: the
//! project, and the encryption and object names if encrypted.
//!
//! Several projects may share a bucket and prefix: berth lists, counts and deletes only
//! under its own project's folder. Copies an older berth put directly under the prefix
//! carry no project, so they are left alone (and mentioned once in the log).

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use berth_config::Offsite;
use berth_core::secrets::scrub;
use berth_core::snapshot::OffsiteStatus;
use futures::StreamExt as _;
use rusty_s3::actions::{DeleteObject, GetObject, ListObjectsV2, PutObject, S3Action as _};
use rusty_s3::{Bucket, Credentials, UrlStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;

use super::backup::{TempFile, io_error, sync_dir};
use super::crypt::{self, Key};
use crate::api::Meta;

/// Signed URLs live this long; each request is signed just before it is sent.
const SIGNED_FOR: Duration = Duration::from_secs(600);
/// The most a metadata object may hold.
const META_MAX: usize = 1 << 20;
/// Whether copies an older berth left directly under the prefix have been looked for
/// (once per process: they only matter after an upgrade).
static LEGACY_LOOKED: AtomicBool = AtomicBool::new(false);

/// `<id>.json` in the bucket: the backup's metadata and how it was copied.
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoteMeta {
    #[serde(flatten)]
    pub meta: Meta,
    /// Absent in copies made before berth recorded it (plain, names as in `meta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offsite: Option<CopyInfo>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CopyInfo {
    pub project: String,
    /// `"age"` when the data objects are encrypted (X25519).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<String>,
    /// The public key (`age1…`) the copy is encrypted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    /// The object names of the dump and the Redis copy (under the project's folder).
    pub dump: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdb: Option<String>,
}

/// One copy in the bucket, as the listing shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub id: String,
    /// Object names (under the project's folder) with their sizes.
    pub objects: BTreeMap<String, u64>,
}

impl Listed {
    /// Whether its metadata is there (only then does it count).
    pub fn complete(&self) -> bool {
        self.objects.contains_key(&format!("{}.json", self.id))
    }

    pub fn encrypted(&self) -> bool {
        self.objects.keys().any(|n| n.ends_with(".age"))
    }

    pub fn size(&self) -> u64 {
        self.objects.values().sum()
    }
}

/// The copies among the listed keys that are directly in `folder` (sorted by id).
fn group(folder: &str, keys: &[(String, u64)]) -> BTreeMap<String, Listed> {
    let mut out: BTreeMap<String, Listed> = BTreeMap::new();
    for (key, size) in keys {
        let Some(name) = key.strip_prefix(folder).filter(|n| !n.contains('/')) else {
            continue;
        };
        let Some((id, _)) = name.split_once('.').filter(|(id, _)| !id.is_empty()) else {
            continue;
        };
        out.entry(id.to_string())
            .or_insert_with(|| Listed {
                id: id.to_string(),
                objects: BTreeMap::new(),
            })
            .objects
            .insert(name.to_string(), *size);
    }
    out
}

pub struct Store {
    bucket: Bucket,
    creds: Credentials,
    /// The configured prefix (`berth/`), shared with other projects perhaps.
    prefix: String,
    /// `<prefix><project>/`: everything this project reads, writes and deletes.
    folder: String,
    project: String,
    keep: berth_config::Keep,
    key: Option<Key>,
    http: reqwest::Client,
    secrets: Vec<String>,
}

impl Store {
    pub fn new(o: &Offsite, project: &str) -> anyhow::Result<Self> {
        let endpoint: reqwest::Url = o
            .endpoint
            .parse()
            .with_context(|| format!("backup.offsite.endpoint {:?}", o.endpoint))?;
        let style = if o.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(endpoint, style, o.bucket.clone(), o.region.clone())
            .context("backup.offsite: the endpoint has no host")?;
        let key = o
            .encryption_key
            .as_ref()
            .map(|k| Key::parse(&k.value))
            .transpose()?;
        Ok(Store {
            bucket,
            creds: Credentials::new(o.access_key.value.clone(), o.secret_key.value.clone()),
            prefix: o.prefix.clone(),
            folder: format!("{}{project}/", o.prefix),
            project: project.to_string(),
            keep: o.keep,
            key,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()?,
            secrets: [&o.access_key, &o.secret_key]
                .into_iter()
                .chain(o.encryption_key.as_ref())
                .map(|v| v.value.clone())
                .filter(|s| s.len() >= 4)
                .collect(),
        })
    }

    /// Where this project's copies are: `<prefix><project>/`.
    pub fn folder(&self) -> &str {
        &self.folder
    }

    /// An error without URLs (they carry signatures) or keys.
    fn fail(&self, what: &str, e: impl std::fmt::Display) -> anyhow::Error {
        anyhow::anyhow!("{what}: {}", scrub(&e.to_string(), &self.secrets))
    }

    async fn check(&self, what: &str, r: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = r.status();
        if status.is_success() {
            return Ok(r);
        }
        let body = r.text().await.unwrap_or_default();
        // S3 errors are XML with a <Code> and <Message>; the code says enough.
        let code = body
            .split("<Code>")
            .nth(1)
            .and_then(|c| c.split("</Code>").next())
            .unwrap_or("");
        Err(self.fail(what, format!("{status} {code}")))
    }

    /// Keys and sizes under `prefix` (with `delimiter`, only those not below it).
    async fn list_keys(
        &self,
        prefix: &str,
        delimiter: Option<&str>,
    ) -> anyhow::Result<Vec<(String, u64)>> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.creds));
            if !prefix.is_empty() {
                action.with_prefix(prefix.to_string());
            }
            if let Some(d) = delimiter {
                action.with_delimiter(d.to_string());
            }
            if let Some(t) = &token {
                action.with_continuation_token(t.clone());
            }
            let url = action.sign(SIGNED_FOR);
            let r = self
                .http
                .get(url)
                .timeout(Duration::from_secs(60))
                .send()
                .await
                .map_err(|e| self.fail("listing the bucket", e.without_url()))?;
            let text = self.check("listing the bucket", r).await?.text().await?;
            let page = ListObjectsV2::parse_response(&text)
                .map_err(|e| self.fail("reading the bucket listing", e))?;
            keys.extend(
                page.contents
                    .into_iter()
                    .map(|o| (o.key, o.size.unwrap_or(0))),
            );
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(keys),
            }
        }
    }

    /// This project's copies (complete or not), by id.
    pub async fn list(&self) -> anyhow::Result<BTreeMap<String, Listed>> {
        let keys = self.list_keys(&self.folder, None).await?;
        Ok(group(&self.folder, &keys))
    }

    /// Copies an older berth made directly under the prefix (no project in their keys).
    async fn legacy(&self) -> anyhow::Result<usize> {
        let keys = self.list_keys(&self.prefix, Some("/")).await?;
        Ok(group(&self.prefix, &keys)
            .values()
            .filter(|l| l.complete())
            .count())
    }

    fn timeout_for(len: u64) -> Duration {
        // A large dump takes a while: allow about 1 MB/s, and at least ten minutes.
        Duration::from_secs(600 + len / 1_000_000)
    }

    async fn put(&self, key: &str, len: u64, body: reqwest::Body) -> anyhow::Result<()> {
        let url = PutObject::new(&self.bucket, Some(&self.creds), key).sign(SIGNED_FOR);
        let what = format!("uploading {key}");
        let r = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .timeout(Self::timeout_for(len))
            .body(body)
            .send()
            .await
            .map_err(|e| self.fail(&what, format!("{:#}", anyhow::Error::new(e.without_url()))))?;
        self.check(&what, r).await?;
        Ok(())
    }

    /// Uploads a local file as it is, or encrypted to `key` (streamed, no temp file).
    async fn put_file(&self, key: &str, path: &Path, encrypt: Option<&Key>) -> anyhow::Result<()> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata().await?.len();
        match encrypt {
            None => self.put(key, len, reqwest::Body::from(file)).await,
            Some(k) => {
                let (total, rx) = crypt::encrypt(file.into_std().await, len, k)
                    .with_context(|| format!("encrypting {}", path.display()))?;
                let chunks = futures::stream::unfold(rx, |mut rx| async move {
                    rx.recv().await.map(|c| (c, rx))
                });
                self.put(key, total, reqwest::Body::wrap_stream(chunks))
                    .await
            }
        }
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let url = DeleteObject::new(&self.bucket, Some(&self.creds), key).sign(SIGNED_FOR);
        let what = format!("deleting {key}");
        let r = self
            .http
            .delete(url)
            .timeout(Duration::from_secs(60))
            .send()
            .await
            .map_err(|e| self.fail(&what, e.without_url()))?;
        self.check(&what, r).await?;
        Ok(())
    }

    async fn get(&self, key: &str, len: u64) -> anyhow::Result<reqwest::Response> {
        let url = GetObject::new(&self.bucket, Some(&self.creds), key).sign(SIGNED_FOR);
        let what = format!("downloading {key}");
        let r = self
            .http
            .get(url)
            .timeout(Self::timeout_for(len))
            .send()
            .await
            .map_err(|e| self.fail(&what, e.without_url()))?;
        self.check(&what, r).await
    }

    /// The name a data file gets in the bucket.
    fn object_name(&self, file: &str) -> String {
        match self.key {
            Some(_) => format!("{file}.age"),
            None => file.to_string(),
        }
    }

    /// The metadata uploaded with a backup. An encrypted copy leaves out the table names
    /// and row counts and the verification error (they describe the data).
    fn remote_meta(&self, m: &Meta) -> RemoteMeta {
        let mut meta = m.clone();
        if self.key.is_some() {
            meta.tables = None;
            meta.verify_error = None;
        }
        RemoteMeta {
            meta,
            offsite: Some(CopyInfo {
                project: self.project.clone(),
                encryption: self.key.as_ref().map(|_| "age".to_string()),
                recipient: self.key.as_ref().map(Key::recipient),
                dump: self.object_name(&m.file),
                rdb: m.redis_file.as_deref().map(|r| self.object_name(r)),
            }),
        }
    }

    /// Uploads one backup: data first, metadata last.
    pub async fn upload(&self, dir: &Path, m: &Meta) -> anyhow::Result<()> {
        let remote = self.remote_meta(m);
        let info = remote.offsite.as_ref().context("copy info")?;
        self.put_file(
            &format!("{}{}", self.folder, info.dump),
            &dir.join(&m.file),
            self.key.as_ref(),
        )
        .await?;
        if let (Some(local), Some(name)) = (&m.redis_file, &info.rdb) {
            self.put_file(
                &format!("{}{name}", self.folder),
                &dir.join(local),
                self.key.as_ref(),
            )
            .await?;
        }
        let json = serde_json::to_vec_pretty(&remote)?;
        let len = json.len() as u64;
        self.put(
            &format!("{}{}.json", self.folder, m.id),
            len,
            reqwest::Body::from(json),
        )
        .await
    }

    /// One pass: upload the verified local backups the bucket lacks (those its retention
    /// would keep), then apply its retention to this project's copies. `status` follows
    /// along.
    pub async fn sync(&self, dir: &Path, status: &mut OffsiteStatus) -> anyhow::Result<()> {
        let listed = dir.to_path_buf();
        let local: Vec<Meta> = super::off_runtime(move || super::backup::list(&listed))
            .await?
            .into_iter()
            .filter(|m| m.verified != Some(false))
            .collect();
        let mut copies = self.list().await?;
        if !LEGACY_LOOKED.load(Ordering::Relaxed)
            && let Ok(n) = self.legacy().await
        {
            LEGACY_LOOKED.store(true, Ordering::Relaxed);
            if n > 0 {
                tracing::warn!(
                    copies = n,
                    prefix = %self.prefix,
                    "off-site copies directly under the prefix (made by an older berth, of this project or another) are no longer managed: move this project's into {} to keep them under retention, or delete them",
                    self.folder
                );
            }
        }
        let mut remote: BTreeSet<String> = copies
            .values()
            .filter(|l| l.complete())
            .map(|l| l.id.clone())
            .collect();
        let all: BTreeSet<String> = remote
            .iter()
            .cloned()
            .chain(local.iter().map(|m| m.id.clone()))
            .collect();
        let doomed: BTreeSet<String> =
            berth_core::retention::to_delete(&candidates(&all), self.keep)
                .into_iter()
                .collect();
        let todo: Vec<&Meta> = local
            .iter()
            .filter(|m| !remote.contains(&m.id) && !doomed.contains(&m.id))
            .collect();
        status.pending = todo.len() as u64;
        status.count = remote.len() as u64;
        for m in todo {
            self.upload(dir, m).await?;
            tracing::info!(backup = %m.id, encrypted = self.key.is_some(), "copied off-site");
            remote.insert(m.id.clone());
            status.pending -= 1;
            status.count = remote.len() as u64;
        }
        for id in berth_core::retention::to_delete(&candidates(&remote), self.keep) {
            // Metadata first: a half-deleted backup no longer counts as off-site. Then
            // whatever else this project has under the id (a plain copy and an
            // encrypted one, a leftover of a failed upload).
            let json = format!("{id}.json");
            let others: Vec<String> = copies
                .remove(&id)
                .map(|l| l.objects.into_keys().filter(|n| *n != json).collect())
                .unwrap_or_default();
            self.delete(&format!("{}{json}", self.folder)).await?;
            for name in others {
                self.delete(&format!("{}{name}", self.folder)).await?;
            }
            tracing::info!(backup = %id, "removed off-site by retention");
            remote.remove(&id);
            status.count = remote.len() as u64;
        }
        Ok(())
    }

    /// Downloads a copy (an id, or `latest`) into `dir` as a local backup: decrypted,
    /// checked against its checksums, each file written to a temp file and renamed into
    /// place, the metadata last. `berth restore ID` takes it from there.
    pub async fn fetch(&self, which: &str, dir: &Path) -> anyhow::Result<Meta> {
        let copies = self.list().await?;
        let mut complete = copies.values().filter(|l| l.complete());
        let listed = if which == "latest" {
            complete.next_back()
        } else {
            complete.find(|l| l.id == which)
        }
        .with_context(|| {
            format!(
                "no copy {which:?} of project {} in the bucket under {} (see `berth offsite list`)",
                self.project, self.folder
            )
        })?;
        let id = listed.id.clone();
        let json_key = format!("{}{id}.json", self.folder);
        let body = self.get(&json_key, 0).await?.bytes().await?;
        if body.len() > META_MAX {
            bail!("{json_key} is larger than metadata can be");
        }
        let remote: RemoteMeta =
            serde_json::from_slice(&body).with_context(|| format!("reading {json_key}"))?;
        let meta = remote.meta;
        let info = remote.offsite.unwrap_or_else(|| CopyInfo {
            project: self.project.clone(),
            encryption: None,
            recipient: None,
            dump: meta.file.clone(),
            rdb: meta.redis_file.clone(),
        });
        if info.project != self.project {
            bail!(
                "{json_key} says it belongs to project {:?}, not {:?}",
                info.project,
                self.project
            );
        }
        if meta.id != id
            || !is_plain_name(&meta.file)
            || meta
                .redis_file
                .as_deref()
                .is_some_and(|r| !is_plain_name(r))
        {
            bail!("{json_key} describes another backup ({:?})", meta.id);
        }
        let key = match info.encryption.as_deref() {
            None => None,
            Some("age") => Some(self.key.as_ref().with_context(|| {
                format!(
                    "copy {id} is encrypted (age, to {}): set encryption_key in [backup.offsite] to the key it was made with",
                    info.recipient.as_deref().unwrap_or("an unknown key")
                )
            })?),
            Some(other) => bail!("copy {id} is encrypted with {other:?}, which this berth does not know"),
        };
        for f in [
            Some(&meta.file),
            meta.redis_file.as_ref(),
            Some(&format!("{id}.json")),
        ]
        .into_iter()
        .flatten()
        {
            if dir.join(f).exists() {
                bail!(
                    "{} is there already: backup {id} is in the folder (`berth restore {id}`)",
                    dir.join(f).display()
                );
            }
        }
        if !dir.exists() {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_error(e, "creating", dir))?;
        }
        let recipient = info.recipient.as_deref();
        let size = |name: &str| listed.objects.get(name).copied().unwrap_or(0);
        let mut placed = vec![
            self.fetch_file(
                &info.dump,
                size(&info.dump),
                dir,
                &meta.file,
                &meta.sha256,
                key,
                recipient,
            )
            .await?,
        ];
        if let (Some(local), Some(name), Some(sum)) =
            (&meta.redis_file, &info.rdb, &meta.redis_sha256)
        {
            placed.push(
                self.fetch_file(name, size(name), dir, local, sum, key, recipient)
                    .await?,
            );
        }
        let (d, m) = (dir.to_path_buf(), meta.clone());
        super::off_runtime(move || super::backup::write_meta(&d, &m)).await?;
        for p in &mut placed {
            p.armed = false;
        }
        Ok(meta)
    }

    /// Downloads `name` into `dir/file` (decrypting it with `key`), checking its SHA-256.
    /// The returned guard removes the file unless disarmed.
    #[allow(clippy::too_many_arguments)]
    async fn fetch_file(
        &self,
        name: &str,
        len: u64,
        dir: &Path,
        file: &str,
        sha256: &str,
        key: Option<&Key>,
        recipient: Option<&str>,
    ) -> anyhow::Result<TempFile> {
        let object = format!("{}{name}", self.folder);
        let r = self.get(&object, len).await?;
        let (tx, rx) = mpsc::channel::<crypt::Chunk>(8);
        let tmp = TempFile {
            path: dir.join(format!(".{file}.partial")),
            armed: true,
        };
        let (path, key, recipient) = (
            tmp.path.clone(),
            key.cloned(),
            recipient.map(str::to_string),
        );
        let writer = super::off_runtime(move || {
            let input = crypt::ChannelReader::new(rx);
            let mut input: Box<dyn std::io::Read> = match &key {
                Some(k) => crypt::decrypt(input, k, recipient.as_deref())?,
                None => Box::new(input),
            };
            write_hashed(&mut input, &path)
        });
        let reader = async {
            let mut body = r.bytes_stream();
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    std::io::Error::other(
                        self.fail(&format!("downloading {object}"), e.without_url()),
                    )
                });
                let failed = chunk.is_err();
                if tx.send(chunk.map(|b| b.to_vec())).await.is_err() || failed {
                    break; // the writer stopped (it says why), or the download did
                }
            }
            drop(tx);
        };
        let (written, ()) = tokio::join!(writer, reader);
        let (sum, _) = written.with_context(|| format!("fetching {object}"))?;
        if sum != sha256 {
            bail!(
                "{object} does not match the checksum in its metadata (damaged, or not this backup's)"
            );
        }
        let dest = dir.join(file);
        std::fs::rename(&tmp.path, &dest).map_err(|e| io_error(e, "renaming to", &dest))?;
        let mut tmp = tmp;
        tmp.armed = false;
        sync_dir(dir)?;
        Ok(TempFile {
            path: dest,
            armed: true,
        })
    }
}

/// Whether a name from the bucket's metadata is a plain file name (no folder, no `..`).
fn is_plain_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains('/') && !name.contains('\0')
}

/// Copies `input` to a new file at `path` (0600), fsynced; returns its SHA-256 and size.
fn write_hashed(input: &mut dyn std::io::Read, path: &PathBuf) -> anyhow::Result<(String, u64)> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| io_error(e, "creating", path))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(anyhow::Error::new(e)),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
        out.write_all(&buf[..n])
            .map_err(|e| io_error(e, "writing", path))?;
    }
    out.sync_all().map_err(|e| io_error(e, "syncing", path))?;
    let sum = hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((sum, size))
}

/// Retention candidates from backup ids (`20261126T033000Z[-n]`, UTC).
fn candidates(ids: &BTreeSet<String>) -> Vec<berth_core::retention::Candidate> {
    let offset = i64::from(chrono::Local::now().offset().local_minus_utc());
    ids.iter()
        .filter_map(|id| {
            let t = chrono::NaiveDateTime::parse_from_str(id.get(..16)?, "%Y%m%dT%H%M%SZ").ok()?;
            Some(berth_core::retention::Candidate {
                id: id.clone(),
                local_secs: t.and_utc().timestamp() + offset,
                verified: true,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_read_as_utc_times_and_others_ignored() {
        let ids: BTreeSet<String> = ["20261126T033000Z", "20261126T033000Z-2", "notes"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let c = candidates(&ids);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].local_secs, c[1].local_secs);
    }

    /// Issue 16, item 7: under a shared prefix, a project's listing holds its own folder's
    /// copies only: not another project's, not an older berth's flat ones, not deeper keys.
    #[test]
    fn a_listing_groups_the_projects_own_copies_only() {
        let keys: Vec<(String, u64)> = [
            ("berth/20200101T000000Z.dump", 1),
            ("berth/20200101T000000Z.json", 1),
            ("berth/other/20200101T000000Z.dump", 1),
            ("berth/other/20200101T000000Z.json", 1),
            ("berth/tgtg/20200101T000000Z.dump.age", 10),
            ("berth/tgtg/20200101T000000Z.json", 2),
            ("berth/tgtg/20200102T000000Z.dump", 5),
            ("berth/tgtg/20200102T000000Z-2.dump", 5),
            ("berth/tgtg/20200102T000000Z-2.json", 1),
            ("berth/tgtg/sub/20200103T000000Z.json", 1),
            ("berth/tgtg/.json", 1),
        ]
        .iter()
        .map(|(k, s)| (k.to_string(), *s))
        .collect();
        let g = group("berth/tgtg/", &keys);
        assert_eq!(
            g.keys().collect::<Vec<_>>(),
            ["20200101T000000Z", "20200102T000000Z", "20200102T000000Z-2"]
        );
        let first = &g["20200101T000000Z"];
        assert!(first.complete() && first.encrypted());
        assert_eq!(first.size(), 12);
        assert!(
            !g["20200102T000000Z"].complete(),
            "no metadata: not a copy yet"
        );
        assert!(g["20200102T000000Z-2"].complete());
        let flat = group("berth/", &keys);
        assert_eq!(flat.len(), 1, "{flat:?}");
    }

    /// The uploaded metadata records the project and the encryption; an encrypted copy
    /// leaves out what describes the data, and a plain copy's metadata from before
    /// (no `offsite`) still reads.
    #[test]
    fn remote_metadata_records_project_and_encryption() {
        let meta: Meta = serde_json::from_value(serde_json::json!({
            "id": "20261126T033000Z", "created_at": "2026-11-26T03:30:00Z",
            "file": "20261126T033000Z.dump", "size": 10, "sha256": "ab",
            "database": "bot", "service": "postgres", "image": "pg", "berth_version": "0.1.0",
            "verify": "restore", "verified": true, "verify_error": null,
            "redis_file": "20261126T033000Z.rdb", "redis_sha256": "cd",
            "tables": {"public.users": 3}
        }))
        .expect("meta");
        let (secret, public) = Key::generate();
        let offsite = |key: Option<&str>| Offsite {
            endpoint: "http://127.0.0.1:9".into(),
            bucket: "b".into(),
            region: "r".into(),
            prefix: "berth/".into(),
            access_key: berth_config::Value::plain("a"),
            secret_key: berth_config::Value::plain("s"),
            keep: berth_config::Keep {
                daily: 1,
                weekly: 0,
                monthly: 0,
            },
            path_style: true,
            encryption_key: key.map(berth_config::Value::plain),
        };
        let store = Store::new(&offsite(Some(&secret)), "tgtg").expect("store");
        assert_eq!(store.folder(), "berth/tgtg/");
        let v = serde_json::to_value(store.remote_meta(&meta)).expect("json");
        assert_eq!(v["offsite"]["project"], "tgtg");
        assert_eq!(v["offsite"]["encryption"], "age");
        assert_eq!(v["offsite"]["recipient"], public.as_str());
        assert_eq!(v["offsite"]["dump"], "20261126T033000Z.dump.age");
        assert_eq!(v["offsite"]["rdb"], "20261126T033000Z.rdb.age");
        assert_eq!(
            v["sha256"], "ab",
            "the plaintext's checksum, checked after decryption"
        );
        assert!(v.get("tables").is_none(), "{v}");
        assert!(!v.to_string().contains(&secret));
        let back: RemoteMeta = serde_json::from_value(v).expect("reads back");
        assert_eq!(back.meta.id, meta.id);

        let plain = Store::new(&offsite(None), "tgtg").expect("store");
        let v = serde_json::to_value(plain.remote_meta(&meta)).expect("json");
        assert_eq!(v["offsite"]["dump"], "20261126T033000Z.dump");
        assert!(v["offsite"].get("encryption").is_none(), "{v}");
        assert_eq!(v["tables"]["public.users"], 3);
        let old: RemoteMeta = serde_json::from_value(serde_json::to_value(&meta).expect("json"))
            .expect("an older berth's metadata");
        assert!(old.offsite.is_none());
    }
}
