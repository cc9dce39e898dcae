//! berth's functional core: every decision the daemon makes that needs no I/O.
//!
//! - [`plan`]: desired config + observed engine → actions (create, start, remove);
//! - [`restart`]: restart delays and crash-loop detection;
//! - [`probe`]: probe results → health and restarts;
//! - [`snapshot`]: what berth knows, the overall status and the `/health` document;
//! - [`alerts`]: snapshots → incident messages;
//! - [`schedule`] and [`retention`]: when backups run and which are kept;
//! - [`deploy`]: deploy records, image overrides, container roles, start-up recovery;
//! - [`start_order`]: which of the services started together starts first;
//! - [`secrets`]: the values never to print, and scrubbing them out;
//! - [`forced`]: what `berth ssh-command` lets a CI key run.
//!
//! **Architecture invariant:** no I/O, no clock reads, no async: no tokio, bollard,
//! reqwest, axum or sqlx in this crate's dependency tree (`cargo xtask lint` checks).
//! Every function takes `now` as an argument and is tested with plain tables.

pub mod alerts;
pub mod deploy;
pub mod forced;
pub mod plan;
pub mod probe;
pub mod restart;
pub mod retention;
pub mod schedule;
pub mod secrets;
pub mod snapshot;
pub mod start_order;
pub mod time;

pub use plan::{
    Action, Held, LABEL_PROJECT, LABEL_SERVICE, LABEL_SPEC_HASH, Observed, ObservedContainer,
    Reason, Rejected, dependants, plan,
};
