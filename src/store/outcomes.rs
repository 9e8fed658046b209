//! Outcomes of attempts waiting for the dispatcher's next turn, taken by the store as
//! late as its backend allows, and what such a turn claims and answers.

use std::sync::Mutex;

use tokio::sync::Notify;

use super::{AttemptRecord, ClaimedDelivery};

/// Finished attempts not yet written. Attempt tasks add to it; a turn takes from it when
/// its transaction starts, not when the dispatcher asked for the turn: the SQLite writer
/// may be storing an ingest's chunk for milliseconds first, and the outcomes that come
/// back meanwhile belong in that turn rather than the next one (whose claim they would
/// otherwise hold back).
#[derive(Default)]
pub struct Outcomes {
    records: Mutex<Vec<AttemptRecord>>,
    arrived: Notify,
}

impl Outcomes {
    pub fn push(&self, record: AttemptRecord) {
        self.records.lock().expect("lock").push(record);
        self.arrived.notify_one();
    }

    pub fn len(&self) -> usize {
        self.records.lock().expect("lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// At most `max` of them, the oldest first. A turn that fails puts them back with
    /// `restore`.
    ///
    /// Copied out, not swapped for an empty buffer: this one keeps its capacity, and the
    /// copy is allocated and freed on the taker's thread. A swapped-out buffer was freed
    /// on the writer's thread and the next one grown again by the attempts, and the
    /// allocator's fresh pages for it were 2% of the workers' time (the kernel zeroing
    /// them).
    pub fn take(&self, max: usize) -> Vec<AttemptRecord> {
        let mut records = self.records.lock().expect("lock");
        let n = records.len().min(max);
        records.drain(..n).collect()
    }

    /// Outcomes a failed turn did not write, ahead of those that came since.
    pub fn restore(&self, taken: Vec<AttemptRecord>) {
        if taken.is_empty() {
            return;
        }
        let mut records = self.records.lock().expect("lock");
        records.splice(0..0, taken);
        drop(records);
        self.arrived.notify_one();
    }

    /// Until an outcome is added (at once if one was added since the last wait ended).
    pub async fn arrived(&self) {
        self.arrived.notified().await
    }
}

/// The claim of a turn: as `Store::claim_due_deliveries` describes, for `free`
/// deliveries plus one per outcome the turn writes (each frees the permit its attempt
/// held), at most `most`.
#[derive(Debug, Clone)]
pub struct TurnClaim {
    pub now_ms: i64,
    pub lease_until_ms: i64,
    pub free: usize,
    pub most: usize,
    pub per_endpoint: usize,
    pub room: Vec<(i64, usize)>,
}

impl TurnClaim {
    /// How many a turn that writes `written` outcomes claims at most.
    pub fn limit(&self, written: usize) -> usize {
        self.free.saturating_add(written).min(self.most)
    }
}

/// What a turn did.
#[derive(Debug, Default)]
pub struct Turned {
    /// Outcomes taken and written.
    pub recorded: usize,
    /// The claim's limit, given what was written (0 without a claim).
    pub limit: usize,
    pub claimed: Vec<ClaimedDelivery>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AttemptResult;

    fn record(id: i64) -> AttemptRecord {
        AttemptRecord {
            delivery_id: id,
            webhook_id: 1,
            attempt: 1,
            started_at_ms: 0,
            latency_ms: 1,
            status_code: Some(200),
            error_kind: None,
            error: None,
            response_body: None,
            result: AttemptResult::Succeeded,
        }
    }

    fn ids(records: &[AttemptRecord]) -> Vec<i64> {
        records.iter().map(|r| r.delivery_id).collect()
    }

    #[test]
    fn take_is_oldest_first_and_restore_puts_back_in_front() {
        let outcomes = Outcomes::default();
        for id in 1..=5 {
            outcomes.push(record(id));
        }
        let first = outcomes.take(3);
        assert_eq!(ids(&first), [1, 2, 3]);
        outcomes.push(record(6));
        outcomes.restore(first);
        assert_eq!(ids(&outcomes.take(10)), [1, 2, 3, 4, 5, 6]);
        assert!(outcomes.is_empty());
    }

    #[test]
    fn a_claim_grows_with_what_its_turn_writes_up_to_its_most() {
        let claim = TurnClaim {
            now_ms: 0,
            lease_until_ms: 1,
            free: 10,
            most: 256,
            per_endpoint: 16,
            room: Vec::new(),
        };
        assert_eq!(claim.limit(0), 10);
        assert_eq!(claim.limit(100), 110);
        assert_eq!(claim.limit(500), 256);
    }

    #[tokio::test]
    async fn an_outcome_added_before_the_wait_is_not_missed() {
        let outcomes = Outcomes::default();
        outcomes.push(record(1));
        tokio::time::timeout(std::time::Duration::from_secs(5), outcomes.arrived())
            .await
            .expect("the earlier push wakes the wait");
    }
}
