//! **API boundary**: what crosses the admin socket and the backup folder, typed once and
//! used by both the daemon and the CLI (serde both ways), so a renamed field is a compile
//! error rather than a "?" in `berth status`. The `/health` document is
//! [`berth_core::snapshot::HealthDoc`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// `POST /deploy`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeployRequest {
    pub service: String,
    pub image: String,
    /// Take the pre-deploy backup.
    pub backup: bool,
}

/// `POST /rollback`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RollbackRequest {
    pub service: String,
    /// Restore the backup taken just before the current version was deployed.
    pub restore_db: bool,
}

/// `POST /stop`, `/start`, `/restart`: one service.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceRequest {
    pub service: String,
}

/// The answer to `/restart`: the service's status and how long it was down.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Restarted {
    pub status: berth_core::snapshot::ServiceStatus,
    pub down_ms: u64,
}

/// `POST /restore`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreRequest {
    /// A backup id, or `latest`.
    pub which: String,
}

/// The answer to `POST /restore`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Restored {
    /// The backup now in the database.
    pub backup: Meta,
    /// The backup of the data it replaced (`berth restore` it to undo the restore).
    pub safety: Option<String>,
    /// Why there is no safety backup, if there is none.
    pub safety_error: Option<String>,
}

/// One channel's answer to `berth alert test` (`POST /alert-test`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChannelTest {
    pub channel: String,
    /// Why it failed (no secret in it); None when the message went through.
    pub error: Option<String>,
}

/// Every admin answer: `{"ok": true, "result": …}` or `{"ok": false, "error": "…"}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Reply<T> {
    pub ok: bool,
    // A missing `Option` field reads as `None` (no `default`: it would ask `T: Default`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<T> Reply<T> {
    pub fn from_result(r: anyhow::Result<T>) -> Self {
        match r {
            Ok(v) => Reply {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Reply {
                ok: false,
                result: None,
                error: Some(format!("{e:#}")),
            },
        }
    }

    pub fn into_result(self) -> anyhow::Result<T> {
        match (self.ok, self.result) {
            (true, Some(v)) => Ok(v),
            (true, None) => anyhow::bail!("the daemon answered ok without a result"),
            (false, _) => Err(anyhow::anyhow!(
                "{}",
                self.error.unwrap_or_else(|| "failed".into())
            )),
        }
    }
}

/// What is known about one backup; stored as `<id>.json` beside `<id>.dump`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    pub id: String,
    pub created_at: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub database: String,
    pub service: String,
    pub image: String,
    pub berth_version: String,
    pub verify: String,
    pub verified: Option<bool>,
    pub verify_error: Option<String>,
    /// Redis's RDB snapshot copied beside the dump (`redis` in `[backup]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_file: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis_error: Option<String>,
    /// Row counts per table, when verified by a full restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tables: Option<BTreeMap<String, i64>>,
}

impl Meta {
    pub fn path(&self, dir: &Path) -> PathBuf {
        dir.join(&self.file)
    }

    pub fn created(&self) -> Option<SystemTime> {
        berth_core::time::parse_time(&self.created_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_round_trip() {
        let ok: Reply<DeployRequest> = Reply::from_result(Ok(DeployRequest {
            service: "bot".into(),
            image: "bot:2".into(),
            backup: true,
        }));
        let text = serde_json::to_string(&ok).expect("json");
        let back: Reply<DeployRequest> = serde_json::from_str(&text).expect("reads");
        assert_eq!(back.into_result().expect("ok").image, "bot:2");
        let err: Reply<DeployRequest> = Reply::from_result(Err(anyhow::anyhow!("no")));
        let text = serde_json::to_string(&err).expect("json");
        assert_eq!(text, r#"{"ok":false,"error":"no"}"#);
        let back: Reply<DeployRequest> = serde_json::from_str(&text).expect("reads");
        assert_eq!(
            back.into_result().map_err(|e| e.to_string()),
            Err("no".into())
        );
    }
}
