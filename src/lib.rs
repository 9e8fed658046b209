//! kamiyo-webhooks: signed, retried and logged webhook delivery of crypto exploit alerts.
//!
//! The library holds all logic; `main.rs` only parses the command line. Imports point one
//! way: `api` and `delivery` use `domain` and `store`; `domain` imports nothing of ours.

pub mod api;
pub mod bench;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod domain;
pub mod metrics;
pub mod startup;
pub mod store;
pub mod telemetry;
