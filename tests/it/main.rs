//! Integration tests for `kamiyo-webhooks`.
//!
//! Every test starts the real application (HTTP API backed by a fresh SQLite
//! file in its own temporary directory) through [`helpers::spawn_app`] and
//! talks to it over HTTP, or runs the real binary for the command line.

mod admin;
mod auth;
mod cli;
mod deliveries;
mod docs;
mod exploits;
mod helpers;
mod isolation;
mod matching;
mod tiers;
mod validation;
mod webhooks;
