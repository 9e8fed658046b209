//! Webhook secrets at rest across the whole table: the start-up check that the configured
//! key opens every stored secret, and the re-encryption behind `secrets reencrypt`.
//! Both walk the table by id in batches; re-encryption writes each batch in one
//! transaction and never overwrites a secret regenerated while it runs.

use serde::Serialize;

use super::{SecretChange, Store, StoreError, StoreResult};
use crate::domain::secretbox::{is_encrypted, SecretBox, SecretCodec, SecretError};

/// Rows read and written per transaction.
pub const REENCRYPT_BATCH: u32 = 500;

/// What the stored secrets look like to a codec.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SecretCensus {
    pub encrypted: u64,
    pub plaintext: u64,
}

/// Checks that `codec` opens every stored secret; the error names how many do not and
/// the first such webhook id (never any secret).
pub async fn check_stored_secrets(
    store: &dyn Store,
    codec: &SecretCodec,
) -> StoreResult<SecretCensus> {
    let mut census = SecretCensus::default();
    let mut unreadable: Option<(i64, SecretError, u64)> = None;
    let mut after = 0;
    loop {
        let rows = store.stored_secrets(after, REENCRYPT_BATCH).await?;
        let Some(&(last, _)) = rows.last() else { break };
        after = last;
        for (id, stored) in rows {
            if !is_encrypted(&stored) {
                census.plaintext += 1;
                continue;
            }
            census.encrypted += 1;
            if let Err(e) = codec.decode(&stored) {
                match &mut unreadable {
                    Some((_, _, n)) => *n += 1,
                    None => unreadable = Some((id, e, 1)),
                }
            }
        }
    }
    match unreadable {
        None => Ok(census),
        Some((id, e, n)) => Err(StoreError::Corrupt(format!(
            "{e} ({n} webhook secret(s) cannot be read, the first of webhook {id})"
        ))),
    }
}

/// What `secrets reencrypt` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ReencryptSummary {
    /// Rows looked at.
    pub scanned: u64,
    /// Plain secrets now sealed with the new key.
    pub encrypted_from_plaintext: u64,
    /// Secrets sealed with the old key, now sealed with the new one.
    pub rotated: u64,
    /// Secrets already sealed with the new key, left as they were.
    pub already_current: u64,
    /// Rows changed by someone else between read and write (e.g. a regenerated secret,
    /// which is written with the new key by a process that has it), left alone.
    pub skipped_changed: u64,
    /// Secrets neither key opens (listed in the error when non-zero).
    pub unreadable: u64,
}

/// Seals every stored secret with `new`: plain ones, and ones that `old` opens. Each
/// batch is one transaction. Secrets neither key opens are counted, left as they are, and
/// their webhook ids returned.
pub async fn reencrypt_secrets(
    store: &dyn Store,
    old: Option<&SecretBox>,
    new: &SecretBox,
    batch: u32,
) -> StoreResult<(ReencryptSummary, Vec<i64>)> {
    let mut summary = ReencryptSummary::default();
    let mut unreadable = Vec::new();
    let mut after = 0;
    loop {
        let rows = store.stored_secrets(after, batch.max(1)).await?;
        let Some(&(last, _)) = rows.last() else { break };
        after = last;
        let mut changes = Vec::with_capacity(rows.len());
        let mut was_plain = std::collections::HashSet::new();
        for (id, stored) in rows {
            summary.scanned += 1;
            let secret = if !is_encrypted(&stored) {
                was_plain.insert(id);
                stored.clone()
            } else if new.open(&stored).is_ok() {
                summary.already_current += 1;
                continue;
            } else if let Some(secret) = old.and_then(|k| k.open(&stored).ok()) {
                secret
            } else {
                summary.unreadable += 1;
                unreadable.push(id);
                continue;
            };
            changes.push(SecretChange {
                id,
                old: stored,
                new: new.seal(&secret),
            });
        }
        if changes.is_empty() {
            continue;
        }
        let replaced = store.replace_stored_secrets(&changes).await?;
        summary.skipped_changed += (changes.len() - replaced.len()) as u64;
        for id in replaced {
            if was_plain.contains(&id) {
                summary.encrypted_from_plaintext += 1;
            } else {
                summary.rotated += 1;
            }
        }
    }
    Ok((summary, unreadable))
}
