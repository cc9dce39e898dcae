//! The daemon's tasks, one module each. Each owns its state and publishes into the
//! snapshot through the [`crate::hub::Hub`]; they talk to each other through handles
//! (the restarter's channel, the deployer's and backups' methods), never through a shared
//! supervisor object.

pub mod alerts;
pub mod backups;
pub mod deployer;
pub mod gate;
pub mod offsite;
pub mod prober;
pub mod reconciler;
pub mod resources;
pub mod restarter;

#[cfg(test)]
mod tests;
