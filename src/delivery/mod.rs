//! Delivery: the outbound HTTP client that signs and sends, the retry policy, and the
//! dispatcher that claims due deliveries, sends them and records every attempt.

pub mod client;
pub mod connect;
pub mod dispatcher;
pub mod policy;

pub use client::{SendOutcome, Sender};
pub use dispatcher::Dispatcher;
