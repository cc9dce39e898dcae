//! Engine and file glue: how berth's terms become engine calls, probes, backup files,
//! S3 requests and host figures. Nothing here knows about tasks or the snapshot.

pub mod backup;
pub mod containers;
pub mod host;
pub mod probe;
pub mod s3;
pub mod spec;
pub mod statefile;
