//! Engine and file glue: how berth's terms become engine calls, probes, backup files,
//! S3 requests and host figures. Nothing here knows about tasks or the snapshot.

pub mod backup;
pub mod build;
pub mod containers;
pub mod crypt;
pub mod host;
pub mod probe;
pub mod registry;
pub mod s3;
pub mod secret;
pub mod spec;
pub mod statefile;

/// Runs blocking file work (listing and parsing a folder, hashing a dump, an fsync) on
/// tokio's blocking pool, so the async workers (two of them) stay free for supervision.
pub async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("blocking file work failed: {e}"))?
}
