//! Integration tests of the delivery engine of `kamiyo-webhooks`.
//!
//! Each test starts the real application (in process through
//! [`helpers::spawn_app`], or the real binary in [`process`]) over a fresh
//! SQLite file and points webhooks at a [`receiver::TestReceiver`]: a real
//! HTTPS server with a certificate authority made at test time, which
//! records every request and answers as the test tells it to.
//!
//! Set `TEST_LOG=1` to see the application's logs.

#[path = "../common/backend.rs"]
mod backend;

mod catching_up;
mod concurrency;
mod connections;
mod endpoints;
mod helpers;
mod isolation;
mod process;
mod receiver;
mod retries;
mod signatures;
