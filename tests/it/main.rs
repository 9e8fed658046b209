//! Integration tests for `kamiyo-webhooks`.
//!
//! Every test starts the real application (HTTP API backed by a fresh database:
//! a SQLite file, and a PostgreSQL database when `KAMIYO_TEST_POSTGRES_URL` is set) through [`helpers::spawn_app`] and
//! talks to it over HTTP, or runs the real binary for the command line.

#[path = "../common/backend.rs"]
mod backend;

mod admin;
mod auth;
mod cli;
mod deliveries;
mod docs;
mod exploits;
mod health;
mod helpers;
mod isolation;
mod matching;
mod migrations;
mod pgstats;
mod security;
mod stats;
mod tiers;
mod validation;
mod webhooks;
