//! kamiyo-webhooks: signed, retried and logged webhook delivery of crypto exploit alerts.
//!
//! The library holds all logic; `main.rs` only parses the command line. Imports point one
//! way: `api` and `delivery` use `domain` and `store`; `domain` imports nothing of ours.

pub mod domain;
pub mod input;

// Everything with I/O. Without the `server` feature only the two modules above build,
// which is what the fuzz targets need (an instrumented build of the whole server would
// take several minutes).
#[cfg(feature = "server")]
pub mod api;
#[cfg(feature = "server")]
pub mod bench;
#[cfg(feature = "server")]
pub mod cli;
#[cfg(feature = "server")]
pub mod config;
#[cfg(feature = "server")]
pub mod delivery;
#[cfg(feature = "server")]
pub mod metrics;
#[cfg(feature = "server")]
pub mod startup;
#[cfg(feature = "server")]
pub mod store;
#[cfg(feature = "server")]
pub mod telemetry;
