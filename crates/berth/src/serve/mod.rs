//! What berth serves: `/health` and `/metrics` on loopback (read from the snapshot only),
//! and the admin socket through which the CLI asks the daemon to act.

pub mod admin;
pub mod http;
pub mod metrics;
