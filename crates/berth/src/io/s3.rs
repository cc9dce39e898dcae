//! Off-site copies of backups in S3-compatible storage (DigitalOcean Spaces, AWS S3,
//! MinIO), with their own retention.
//!
//! What to upload is derived each time from the two listings (local folder, bucket), so a
//! failed or interrupted upload is simply retried at the next pass, across restarts too.
//! Objects: `<prefix><id>.dump`, `.rdb` if any, then `<id>.json` last — a backup counts as
//! off-site once its metadata is there.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use berth_config::Offsite;
use berth_core::secrets::scrub;
use berth_core::snapshot::OffsiteStatus;
use rusty_s3::actions::{DeleteObject, ListObjectsV2, PutObject, S3Action as _};
use rusty_s3::{Bucket, Credentials, UrlStyle};

use crate::api::Meta;

/// Signed URLs live this long; each request is signed just before it is sent.
const SIGNED_FOR: Duration = Duration::from_secs(600);

pub struct Store {
    bucket: Bucket,
    creds: Credentials,
    prefix: String,
    keep: berth_config::Keep,
    http: reqwest::Client,
    secrets: Vec<String>,
}

impl Store {
    pub fn new(o: &Offsite) -> anyhow::Result<Self> {
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
        Ok(Store {
            bucket,
            creds: Credentials::new(o.access_key.value.clone(), o.secret_key.value.clone()),
            prefix: o.prefix.clone(),
            keep: o.keep,
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .build()?,
            secrets: [&o.access_key.value, &o.secret_key.value]
                .into_iter()
                .filter(|s| s.len() >= 4)
                .cloned()
                .collect(),
        })
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

    /// Backup ids with their metadata in the bucket.
    pub async fn list(&self) -> anyhow::Result<BTreeSet<String>> {
        let mut ids = BTreeSet::new();
        let mut token: Option<String> = None;
        loop {
            let mut action = ListObjectsV2::new(&self.bucket, Some(&self.creds));
            if !self.prefix.is_empty() {
                action.with_prefix(self.prefix.clone());
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
            for o in &page.contents {
                if let Some(id) = o
                    .key
                    .strip_prefix(&self.prefix)
                    .and_then(|k| k.strip_suffix(".json"))
                    .filter(|id| !id.contains('/'))
                {
                    ids.insert(id.to_string());
                }
            }
            match page.next_continuation_token {
                Some(t) => token = Some(t),
                None => return Ok(ids),
            }
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> anyhow::Result<()> {
        let file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("opening {}", path.display()))?;
        let len = file.metadata().await?.len();
        let url = PutObject::new(&self.bucket, Some(&self.creds), key).sign(SIGNED_FOR);
        // A large dump takes a while: allow about 1 MB/s, and at least ten minutes.
        let timeout = Duration::from_secs(600 + len / 1_000_000);
        let what = format!("uploading {key}");
        let r = self
            .http
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, len)
            .timeout(timeout)
            .body(reqwest::Body::from(file))
            .send()
            .await
            .map_err(|e| self.fail(&what, e.without_url()))?;
        self.check(&what, r).await?;
        Ok(())
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

    /// Uploads one backup: data first, metadata last.
    pub async fn upload(&self, dir: &Path, m: &Meta) -> anyhow::Result<()> {
        self.put_file(&format!("{}{}", self.prefix, m.file), &dir.join(&m.file))
            .await?;
        if let Some(r) = &m.redis_file {
            self.put_file(&format!("{}{r}", self.prefix), &dir.join(r))
                .await?;
        }
        self.put_file(
            &format!("{}{}.json", self.prefix, m.id),
            &dir.join(format!("{}.json", m.id)),
        )
        .await
    }

    /// One pass: upload the verified local backups the bucket lacks (those its retention
    /// would keep), then apply its retention. `status` follows along.
    pub async fn sync(&self, dir: &Path, status: &mut OffsiteStatus) -> anyhow::Result<()> {
        let listed = dir.to_path_buf();
        let local: Vec<Meta> = super::off_runtime(move || super::backup::list(&listed))
            .await?
            .into_iter()
            .filter(|m| m.verified != Some(false))
            .collect();
        let mut remote = self.list().await?;
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
            tracing::info!(backup = %m.id, "copied off-site");
            remote.insert(m.id.clone());
            status.pending -= 1;
            status.count = remote.len() as u64;
        }
        for id in berth_core::retention::to_delete(&candidates(&remote), self.keep) {
            // Metadata first: a half-deleted backup no longer counts as off-site.
            for ext in ["json", "dump", "rdb"] {
                self.delete(&format!("{}{id}.{ext}", self.prefix)).await?;
            }
            tracing::info!(backup = %id, "removed off-site by retention");
            remote.remove(&id);
            status.count = remote.len() as u64;
        }
        Ok(())
    }
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
}
