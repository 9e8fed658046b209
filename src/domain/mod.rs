//! The business rules: tiers, webhooks and their filters, exploits, secrets, payloads. Pure, no I/O.

pub mod exploit;
pub mod filter;
pub mod health;
pub mod netguard;
pub mod payload;
#[cfg(test)]
mod proptests;
pub mod secret;
pub mod secretbox;
pub mod signature;
pub mod tier;
pub mod time;
pub mod webhook;

use thiserror::Error;

/// An input value that breaks a rule; `field` names the offending field for the client.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}
