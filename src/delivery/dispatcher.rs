//! The dispatcher: claims due deliveries under a lease, sends each in its own task within
//! global and per-endpoint bounds, and hands outcomes to one recorder that writes them in
//! batches. Nothing holds a database transaction across the network.

use rustc_hash::FxHashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::client::{Outgoing, SendOutcome, Sender};
use super::policy::{decide, Verdict};
use crate::config::Config;
use crate::domain::time::now_ms;
use crate::metrics as m;
use crate::store::{AttemptRecord, AttemptResult, ClaimedDelivery, Store};

/// Most deliveries claimed in one database round trip.
const CLAIM_BATCH: usize = 256;
/// Most outcomes written in one transaction.
const RECORD_BATCH: usize = 512;
/// A turn with fewer outcomes than this, while many attempts are in flight, waits up to
/// `GATHER_WAIT` for more.
const GATHER_MIN: usize = 32;
const GATHER_WAIT: Duration = Duration::from_micros(500);
/// Pause after a database error before trying again.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);

pub struct Dispatcher {
    store: Arc<dyn Store>,
    sender: Arc<Sender>,
    config: Arc<Config>,
    wake: Arc<Notify>,
}

/// Attempts in flight per webhook, shared by the loop and its tasks.
#[derive(Default)]
struct InFlight {
    per_webhook: Mutex<FxHashMap<i64, usize>>,
}

impl InFlight {
    fn add(&self, webhook_id: i64) {
        *self
            .per_webhook
            .lock()
            .expect("lock")
            .entry(webhook_id)
            .or_default() += 1;
    }
    fn remove(&self, webhook_id: i64) {
        let mut map = self.per_webhook.lock().expect("lock");
        if let Some(n) = map.get_mut(&webhook_id) {
            *n -= 1;
            if *n == 0 {
                map.remove(&webhook_id);
            }
        }
    }
    fn count(&self, webhook_id: i64) -> usize {
        self.per_webhook
            .lock()
            .expect("lock")
            .get(&webhook_id)
            .copied()
            .unwrap_or(0)
    }
    /// Attempts in flight per webhook.
    fn snapshot(&self) -> Vec<(i64, usize)> {
        self.per_webhook
            .lock()
            .expect("lock")
            .iter()
            .map(|(id, n)| (*id, *n))
            .collect()
    }

    /// Webhooks at their concurrency bound: not claimed for until one attempt ends.
    fn saturated(&self, cap: usize) -> Vec<i64> {
        self.per_webhook
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, n)| **n >= cap)
            .map(|(id, _)| *id)
            .collect()
    }
}

impl Dispatcher {
    pub fn new(
        store: Arc<dyn Store>,
        sender: Arc<Sender>,
        config: Arc<Config>,
        wake: Arc<Notify>,
    ) -> Self {
        Dispatcher {
            store,
            sender,
            config,
            wake,
        }
    }

    /// Runs until `shutdown`; then starts nothing new, lets attempts in flight finish
    /// (each bounded by the delivery timeout), records them, and returns.
    ///
    /// Each turn is one database transaction: the outcomes that came back since the last
    /// turn, then a claim for the capacity they free. A permit covers claim, send and
    /// record, so what was sent but not yet recorded (and would be sent again after a
    /// crash) never exceeds `max_in_flight`, and when recording falls behind no claims
    /// are made whose lease could run out first.
    pub async fn run(self, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(self.config.max_in_flight));
        let (record_tx, mut record_rx) = mpsc::channel(self.config.max_in_flight);
        let in_flight = Arc::new(InFlight::default());
        // What every attempt task needs, shared: one reference count per task.
        let job = Arc::new(Job {
            sender: self.sender.clone(),
            schedule: self.config.retry_schedule.clone(),
            records: record_tx,
            in_flight: in_flight.clone(),
        });
        let cap = self.config.max_in_flight_per_endpoint;
        let mut tasks = JoinSet::new();
        // Outcomes not yet on disk, and the permits they still hold.
        let mut records: Vec<AttemptRecord> = Vec::with_capacity(RECORD_BATCH);
        let mut held: Vec<OwnedSemaphorePermit> = Vec::with_capacity(RECORD_BATCH);
        // Whether something may be due that the last claim did not take.
        let mut claim_more = true;
        let mut failures = 0u32;
        tracing::info!(
            max_in_flight = self.config.max_in_flight,
            per_endpoint = cap,
            "delivery workers started"
        );

        loop {
            while tasks.try_join_next().is_some() {}
            while records.len() < RECORD_BATCH {
                match record_rx.try_recv() {
                    Ok((r, p)) => {
                        records.push(r);
                        held.push(p);
                    }
                    Err(_) => break,
                }
            }
            // Group commit: with many attempts in flight and few outcomes in hand, a
            // moment's wait gathers more of them into this turn's one transaction.
            if !records.is_empty() && records.len() < GATHER_MIN && tasks.len() > 4 * GATHER_MIN {
                let until = tokio::time::Instant::now() + GATHER_WAIT;
                while records.len() < GATHER_MIN {
                    match tokio::time::timeout_at(until, record_rx.recv()).await {
                        Ok(Some((r, p))) => {
                            records.push(r);
                            held.push(p);
                        }
                        _ => break,
                    }
                }
            }
            let stopping = shutdown.is_cancelled();
            if stopping && tasks.is_empty() && records.is_empty() {
                break;
            }
            // The permits of the outcomes written in this turn's transaction are free
            // for the claim in the same transaction.
            let free = if stopping {
                0
            } else {
                (permits.available_permits() + held.len()).min(CLAIM_BATCH)
            };
            // Written outcomes free endpoint slots, so a turn that writes also claims.
            let claim = free > 0 && (claim_more || !records.is_empty());

            if records.is_empty() && !claim {
                self.idle(
                    &shutdown,
                    stopping,
                    free,
                    cap,
                    &in_flight,
                    &mut record_rx,
                    &mut tasks,
                    &mut records,
                    &mut held,
                )
                .await;
                claim_more = true;
                continue;
            }

            let now = now_ms();
            let lease_until = now + self.config.lease.as_millis() as i64;
            let turn = if claim {
                self.store
                    .record_and_claim(&records, now, lease_until, free, cap, &in_flight.snapshot())
                    .await
            } else {
                self.store
                    .record_attempts(&records)
                    .await
                    .map(|()| Vec::new())
            };
            let batch = match turn {
                Ok(batch) => batch,
                Err(e) => {
                    // The outcomes stay in `records` and are written on a later turn.
                    failures += 1;
                    tracing::error!(error = %e, records = records.len(), failures, "recording and claiming failed; retrying");
                    tokio::time::sleep(ERROR_BACKOFF * failures.min(10)).await;
                    continue;
                }
            };
            failures = 0;
            records.clear();
            held.clear();
            if !claim {
                continue;
            }
            claim_more = batch.len() == free;
            let mut excess = Vec::new();
            for d in batch {
                let permit = match permits.clone().try_acquire_owned() {
                    Ok(p) if in_flight.count(d.webhook_id) < cap => p,
                    _ => {
                        excess.push(d.id);
                        continue;
                    }
                };
                in_flight.add(d.webhook_id);
                tasks.spawn(job.clone().attempt(d, permit));
            }
            if !excess.is_empty() {
                if let Err(e) = self.store.release_claims(&excess).await {
                    tracing::warn!(error = %e, "could not release claims; their lease will expire");
                }
            }
            metrics::gauge!(m::IN_FLIGHT).set(tasks.len() as f64);
        }

        metrics::gauge!(m::IN_FLIGHT).set(0.0);
        tracing::info!("delivery workers stopped");
    }

    /// Nothing to write and nothing known to claim: waits for an outcome, new work, the
    /// next due time, the fallback poll or shutdown (while stopping, only for outcomes).
    #[allow(clippy::too_many_arguments)]
    async fn idle(
        &self,
        shutdown: &CancellationToken,
        stopping: bool,
        free: usize,
        cap: usize,
        in_flight: &InFlight,
        record_rx: &mut mpsc::Receiver<(AttemptRecord, OwnedSemaphorePermit)>,
        tasks: &mut JoinSet<()>,
        records: &mut Vec<AttemptRecord>,
        held: &mut Vec<OwnedSemaphorePermit>,
    ) {
        if stopping {
            tracing::debug!(in_flight = tasks.len(), "delivery workers draining");
            tokio::select! {
                Some((r, p)) = record_rx.recv() => {
                    records.push(r);
                    held.push(p);
                }
                // A task that panicked sends nothing; seeing it end is enough.
                Some(_) = tasks.join_next() => {}
            }
            return;
        }
        let mut wait = self.config.poll_interval;
        if free > 0 {
            let now = now_ms();
            match self
                .store
                .next_claimable_at(now, &in_flight.saturated(cap))
                .await
            {
                Ok(Some(t)) => wait = wait.min(Duration::from_millis((t - now).max(1) as u64)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the next due time failed"),
            }
        }
        tokio::select! {
            Some((r, p)) = record_rx.recv() => {
                records.push(r);
                held.push(p);
            }
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// What one attempt task needs.
struct Job {
    sender: Arc<Sender>,
    schedule: Vec<Duration>,
    records: mpsc::Sender<(AttemptRecord, OwnedSemaphorePermit)>,
    in_flight: Arc<InFlight>,
}

impl Job {
    async fn attempt(self: Arc<Self>, d: ClaimedDelivery, permit: OwnedSemaphorePermit) {
        // The answer's code and latency go on the outcome's event, not the span: each
        // field recorded on a span is formatted at once, logged or not.
        let span = tracing::info_span!(
            "delivery_attempt",
            webhook_id = d.webhook_id,
            delivery_id = d.id,
            attempt = d.attempt,
        );
        let record = async {
            let started_at_ms = now_ms();
            let outcome = self
                .sender
                .send(&Outgoing {
                    url: &d.url,
                    secret: &d.secret,
                    event: &d.event,
                    delivery_id: d.id,
                    body: &d.body,
                })
                .await;
            let result = decide(&self.schedule, d.round_attempt, verdict(&outcome), now_ms());
            log_outcome(&outcome, result);
            attempt_record(&d, started_at_ms, outcome, result)
        }
        .instrument(span)
        .await;
        // The endpoint's slot is free now; the loop claims for it in the turn that writes
        // this outcome, together with every other outcome that came back meanwhile.
        self.in_flight.remove(d.webhook_id);
        // A closed channel means the process is stopping; the lease brings it back.
        let _ = self.records.send((record, permit)).await;
    }
}

pub fn verdict(outcome: &SendOutcome) -> Verdict {
    if outcome.succeeded() {
        Verdict::Success
    } else if outcome.gone() {
        Verdict::Gone
    } else {
        Verdict::Failure
    }
}

fn log_outcome(outcome: &SendOutcome, result: AttemptResult) {
    let label = match result {
        AttemptResult::Succeeded => "success",
        AttemptResult::Gone => "gone",
        AttemptResult::RetryAt(_) | AttemptResult::Failed => "failure",
    };
    metrics::counter!(m::ATTEMPTS_TOTAL, "outcome" => label).increment(1);
    metrics::histogram!(m::LATENCY_SECONDS).record(outcome.latency_ms as f64 / 1000.0);
    match result {
        AttemptResult::Succeeded => tracing::debug!(
            status_code = outcome.status_code,
            latency_ms = outcome.latency_ms,
            "delivered"
        ),
        AttemptResult::RetryAt(at) => tracing::info!(
            status_code = outcome.status_code,
            latency_ms = outcome.latency_ms,
            error_kind = outcome.error_kind,
            error = outcome.error.as_deref(),
            retry_in_ms = at - now_ms(),
            "attempt failed; will retry"
        ),
        AttemptResult::Failed => tracing::warn!(
            status_code = outcome.status_code,
            latency_ms = outcome.latency_ms,
            error_kind = outcome.error_kind,
            error = outcome.error.as_deref(),
            "attempt failed; no attempts left"
        ),
        AttemptResult::Gone => tracing::warn!("endpoint answered 410 Gone; webhook deactivated"),
    }
}

pub fn attempt_record(
    d: &ClaimedDelivery,
    started_at_ms: i64,
    outcome: SendOutcome,
    result: AttemptResult,
) -> AttemptRecord {
    AttemptRecord {
        delivery_id: d.id,
        webhook_id: d.webhook_id,
        attempt: d.attempt,
        started_at_ms,
        latency_ms: outcome.latency_ms,
        status_code: outcome.status_code.map(i64::from),
        error_kind: outcome.error_kind,
        error: outcome.error,
        response_body: outcome.response_body,
        result,
    }
}
