//! The dispatcher: claims due deliveries under a lease, sends them from tasks within
//! global and per-endpoint bounds (an endpoint with every attempt in flight gets the rest
//! of its claims queued behind them), and writes the outcomes in batches, each turn's in
//! the transaction of its next claim. Nothing holds a transaction across the network.

use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::level_filters::LevelFilter;
use tracing::{Instrument, Level};

use super::client::{Outgoing, SendOutcome, Sender};
use super::policy::{decide, Verdict};
use crate::config::Config;
use crate::domain::time::now_ms;
use crate::metrics as m;
use crate::store::{AttemptRecord, AttemptResult, ClaimedDelivery, Outcomes, Store, TurnClaim};

/// Most deliveries claimed in one database round trip, and most outcomes written in one
/// transaction. While a turn runs, the attempts of the claims before it are all the
/// workers have: a turn of half the permits could outlast them and leave the cores idle.
/// Turns of at most 128 keep more, smaller batches going round (`bench`, SQLite, on 2
/// cores: throughput 80,700/s against 78,900/s in 7 of 7 alternated runs, backlog drain
/// 77,000-78,000/s against 67,000-69,000/s; 64 was slower, PostgreSQL unchanged).
const CLAIM_BATCH: usize = 128;
const RECORD_BATCH: usize = 128;
/// A turn with fewer outcomes than this, while many attempts are in flight, waits up to
/// `GATHER_WAIT` for more.
const GATHER_MIN: usize = 32;
const GATHER_WAIT: Duration = Duration::from_micros(500);
/// With few attempts in flight but more than `QUEUED_LOW` deliveries queued behind them
/// (`Endpoints`), a turn with fewer than `QUEUED_GATHER` outcomes waits for more, up to
/// `QUEUED_GATHER_WAIT` or until the queues run down to `QUEUED_LOW`: the queues keep the
/// endpoints busy meanwhile. A turn costs the writer a commit and a read past the claims
/// at the head of the due order whatever its size, and with one endpoint catching up
/// (`bench --scenario backlog`: 16 attempts in flight, up to 128 queued) turns of 14
/// outcomes each took 0.8 of a core from the attempts (BENCHMARKS.md item 55). A new
/// delivery for another endpoint may wait up to `QUEUED_GATHER_WAIT` longer for its claim.
const QUEUED_GATHER: usize = 48;
const QUEUED_LOW: usize = 48;
const QUEUED_GATHER_WAIT: Duration = Duration::from_millis(2);
/// Pause after a database error before trying again.
const ERROR_BACKOFF: Duration = Duration::from_millis(500);
/// Deliveries a quickly answering endpoint may have queued per attempt it may have in
/// flight. Measured with the `backlog` bench (one endpoint, 16 at a time, 1,000,000
/// queued): 1 per slot drained 19,300/s, 4 28,000/s, 8 40,500/s, against 16,800/s
/// without a queue: the queue has to outlast a turn of the database.
const QUEUE_PER_SLOT: usize = 8;
/// An endpoint answers quickly enough to be given a queue: a queued delivery then waits
/// at most `QUEUE_PER_SLOT` such answers.
const QUICK_ANSWER: Duration = Duration::from_millis(100);
/// How long a delivery may wait in an endpoint's queue: about `QUEUE_PER_SLOT` quick
/// answers.
const QUEUE_AGE_MAX: Duration = Duration::from_secs(1);
/// How long an endpoint that answered quickly keeps its queue with nothing claimed.
const REMEMBER_IDLE: Duration = Duration::from_secs(1);
/// What a queued delivery's lease must still cover beyond one delivery timeout.
const LEASE_SLACK: Duration = Duration::from_secs(5);

/// How a turn waits for more outcomes before it starts (group commit).
#[derive(Debug, PartialEq)]
struct Gather {
    /// Outcomes to wait for.
    least: usize,
    wait: Duration,
    /// Waits only while more deliveries than this stay queued.
    queued_above: Option<usize>,
}

impl Gather {
    /// With `pending` outcomes in hand, `tasks` attempts in flight and `queued`
    /// deliveries queued behind them: whether the turn waits, and for what.
    fn before_turn(pending: usize, tasks: usize, queued: usize) -> Option<Gather> {
        let gather = if tasks > 4 * GATHER_MIN {
            Gather {
                least: GATHER_MIN,
                wait: GATHER_WAIT,
                queued_above: None,
            }
        } else if queued > QUEUED_LOW {
            Gather {
                least: QUEUED_GATHER,
                wait: QUEUED_GATHER_WAIT,
                queued_above: Some(QUEUED_LOW),
            }
        } else {
            return None;
        };
        (pending > 0 && pending < gather.least).then_some(gather)
    }
}

pub struct Dispatcher {
    store: Arc<dyn Store>,
    sender: Arc<Sender>,
    config: Arc<Config>,
    wake: Arc<Notify>,
}

/// A delivery claimed for an endpoint whose attempts are all taken, waiting for one of
/// them to end: it holds its permit and its lease like one in flight.
struct Queued {
    delivery: ClaimedDelivery,
    permit: OwnedSemaphorePermit,
    /// Sent only until then (ms); given back after.
    send_by_ms: i64,
}

/// This process's claims per webhook, shared by the loop and its tasks.
///
/// At most `cap` attempts run at once to a webhook. A webhook whose latest attempt
/// succeeded within `QUICK_ANSWER` may also hold `QUEUE_PER_SLOT * cap` more claims,
/// queued here: when one of its attempts ends, the task that ran it starts the next at
/// once, instead of the endpoint waiting for a turn of the database for each freed slot.
/// That is what lets one endpoint catching up on a backlog drain at the rate of the
/// machine rather than of the round trip. An endpoint that fails, answers slowly or has
/// not answered yet gets no queue, so one that hangs holds no more claims than before.
struct Endpoints {
    cap: usize,
    /// Claims a quickly answering webhook may hold beside those in flight.
    queue: usize,
    /// A queued delivery is sent only while its lease still covers a whole attempt with
    /// this to spare.
    lease_margin_ms: i64,
    per_webhook: Mutex<FxHashMap<i64, Endpoint>>,
    /// Deliveries queued over all webhooks, for the gauge.
    queued: AtomicUsize,
}

#[derive(Default)]
struct Endpoint {
    sending: usize,
    queued: VecDeque<Queued>,
    /// The latest attempt that ended here succeeded within `QUICK_ANSWER`.
    answering: bool,
    /// All its attempts were in flight at once since it was last idle: the only kind of
    /// endpoint a queue helps.
    full: bool,
    /// Since when nothing is claimed here (ms): a full endpoint that answered is
    /// remembered for `REMEMBER_IDLE`, as a burst often ends all its attempts at once.
    idle_since: Option<i64>,
}

/// Where a claimed delivery goes.
enum Placement {
    Send(ClaimedDelivery, OwnedSemaphorePermit),
    Queued,
    /// More than the webhook may hold (its state changed since the claim's snapshot).
    Excess(i64),
}

impl Endpoints {
    fn new(cap: usize, delivery_timeout: Duration, lease: Duration) -> Self {
        let margin = delivery_timeout + LEASE_SLACK;
        Endpoints {
            cap,
            // With a lease too short to cover the wait as well as the attempt, a queued
            // delivery would mostly be given back: no queue then.
            queue: if lease > 2 * margin {
                QUEUE_PER_SLOT * cap
            } else {
                0
            },
            lease_margin_ms: margin.as_millis() as i64,
            per_webhook: Mutex::default(),
            queued: AtomicUsize::new(0),
        }
    }

    fn bound(&self, e: &Endpoint) -> usize {
        if e.answering {
            self.cap + self.queue
        } else {
            self.cap
        }
    }

    fn place(
        &self,
        d: ClaimedDelivery,
        permit: OwnedSemaphorePermit,
        lease_until_ms: i64,
    ) -> Placement {
        let mut map = self.per_webhook.lock().expect("lock");
        let e = map.entry(d.webhook_id).or_default();
        e.idle_since = None;
        if e.sending < self.cap {
            e.sending += 1;
            e.full |= e.sending == self.cap;
            Placement::Send(d, permit)
        } else if e.sending + e.queued.len() < self.bound(e) {
            // The claim checked that the webhook is active: a queued delivery goes out
            // within `QUEUE_AGE_MAX` of it, so one deactivated or deleted meanwhile gets
            // little more than what was in flight, and its lease still covers an attempt.
            let send_by_ms = (now_ms() + QUEUE_AGE_MAX.as_millis() as i64)
                .min(lease_until_ms - self.lease_margin_ms);
            e.queued.push_back(Queued {
                delivery: d,
                permit,
                send_by_ms,
            });
            self.queued.fetch_add(1, Ordering::Relaxed);
            Placement::Queued
        } else {
            Placement::Excess(d.id)
        }
    }

    /// An attempt to `webhook_id` ended: the next queued delivery to send in its place,
    /// if the endpoint answered and the process goes on, and the queued deliveries to
    /// give back (all of them when it did not, the stale ones when it did).
    fn finish(
        &self,
        webhook_id: i64,
        succeeded: bool,
        stopping: bool,
    ) -> (Option<Queued>, Vec<Queued>) {
        let mut map = self.per_webhook.lock().expect("lock");
        let Some(e) = map.get_mut(&webhook_id) else {
            return (None, Vec::new());
        };
        e.sending -= 1;
        e.answering = succeeded;
        let queued = e.queued.len();
        let mut next = None;
        let mut give_back = Vec::new();
        let now = now_ms();
        if succeeded && !stopping {
            while let Some(q) = e.queued.pop_front() {
                if now <= q.send_by_ms {
                    e.sending += 1;
                    next = Some(q);
                    break;
                }
                give_back.push(q);
            }
        } else {
            give_back.extend(e.queued.drain(..));
        }
        self.queued
            .fetch_sub(queued - e.queued.len(), Ordering::Relaxed);
        if e.sending == 0 && e.queued.is_empty() {
            if e.answering && e.full {
                e.idle_since = Some(now);
                e.full = false;
            } else {
                map.remove(&webhook_id);
            }
        }
        (next, give_back)
    }

    /// What each webhook with claims here, or a queue to remember, may still take.
    fn room(&self) -> Vec<(i64, usize)> {
        let forget_before = now_ms() - REMEMBER_IDLE.as_millis() as i64;
        let mut map = self.per_webhook.lock().expect("lock");
        map.retain(|_, e| e.idle_since.is_none_or(|t| t > forget_before));
        map.iter()
            .map(|(id, e)| {
                (
                    *id,
                    self.bound(e).saturating_sub(e.sending + e.queued.len()),
                )
            })
            .collect()
    }

    /// Webhooks without room: not claimed for until one attempt ends.
    fn saturated(&self) -> Vec<i64> {
        self.room()
            .into_iter()
            .filter(|(_, room)| *room == 0)
            .map(|(id, _)| id)
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
        // An attempt's task forgets its permit as it adds its outcome here; the turn
        // that writes the outcome adds the permit back.
        let outcomes = Arc::new(Outcomes::default());
        let cap = self.config.max_in_flight_per_endpoint;
        let endpoints = Arc::new(Endpoints::new(
            cap,
            self.config.delivery_timeout,
            self.config.lease,
        ));
        // What every attempt task needs, shared: one reference count per task.
        let job = Arc::new(Job {
            sender: self.sender.clone(),
            store: self.store.clone(),
            schedule: self.config.retry_schedule.clone(),
            outcomes: outcomes.clone(),
            endpoints: endpoints.clone(),
            shutdown: shutdown.clone(),
            metrics: AttemptMetrics::new(),
        });
        let mut tasks = JoinSet::new();
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
            // Group commit: with many attempts in flight, or deliveries queued behind
            // them, and few outcomes in hand, a moment's wait gathers more of them into
            // this turn's one transaction.
            let pending = outcomes.len();
            let queued = || endpoints.queued.load(Ordering::Relaxed);
            if let Some(g) = Gather::before_turn(pending, tasks.len(), queued()) {
                let until = tokio::time::Instant::now() + g.wait;
                while outcomes.len() < g.least && g.queued_above.is_none_or(|low| queued() > low) {
                    if tokio::time::timeout_at(until, outcomes.arrived())
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
            }
            let pending = outcomes.len();
            let stopping = shutdown.is_cancelled();
            if stopping && tasks.is_empty() && pending == 0 {
                break;
            }
            let free = if stopping {
                0
            } else {
                permits.available_permits().min(CLAIM_BATCH)
            };
            // Written outcomes free endpoint slots and permits, so a turn that writes
            // also claims.
            let claim = !stopping && (pending > 0 || (claim_more && free > 0));

            if pending == 0 && !claim {
                self.idle(&shutdown, stopping, free, &endpoints, &outcomes, &mut tasks)
                    .await;
                claim_more = true;
                continue;
            }

            let now = now_ms();
            let lease_until = now + self.config.lease.as_millis() as i64;
            let claim = claim.then(|| TurnClaim {
                now_ms: now,
                lease_until_ms: lease_until,
                free,
                most: CLAIM_BATCH,
                per_endpoint: cap,
                room: endpoints.room(),
            });
            let claimed = claim.is_some();
            let turned = match self.store.turn(&outcomes, RECORD_BATCH, claim).await {
                Ok(turned) => turned,
                Err(e) => {
                    // The outcomes went back to `outcomes`, written on a later turn.
                    failures += 1;
                    tracing::error!(error = %e, records = outcomes.len(), failures, "recording and claiming failed; retrying");
                    tokio::time::sleep(ERROR_BACKOFF * failures.min(10)).await;
                    continue;
                }
            };
            failures = 0;
            permits.add_permits(turned.recorded);
            if !claimed {
                continue;
            }
            claim_more = turned.limit > 0 && turned.claimed.len() == turned.limit;
            let batch = turned.claimed;
            let mut excess = Vec::new();
            for d in batch {
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    excess.push(d.id);
                    continue;
                };
                match endpoints.place(d, permit, lease_until) {
                    Placement::Send(d, permit) => {
                        // Boxed: the task then holds a pointer, not the 1.9 KB future that
                        // spawning and finishing would copy several times.
                        tasks.spawn(Box::pin(job.clone().attempt(d, permit)));
                    }
                    Placement::Queued => {}
                    Placement::Excess(id) => excess.push(id),
                }
            }
            if !excess.is_empty() {
                if let Err(e) = self.store.release_claims(&excess).await {
                    tracing::warn!(error = %e, "could not release claims; their lease will expire");
                }
            }
            metrics::gauge!(m::IN_FLIGHT).set(tasks.len() as f64);
            metrics::gauge!(m::QUEUED).set(endpoints.queued.load(Ordering::Relaxed) as f64);
        }

        metrics::gauge!(m::IN_FLIGHT).set(0.0);
        metrics::gauge!(m::QUEUED).set(0.0);
        tracing::info!("delivery workers stopped");
    }

    /// Nothing to write and nothing known to claim: waits for an outcome, new work, the
    /// next due time, the fallback poll or shutdown (while stopping, only for outcomes).
    async fn idle(
        &self,
        shutdown: &CancellationToken,
        stopping: bool,
        free: usize,
        endpoints: &Endpoints,
        outcomes: &Outcomes,
        tasks: &mut JoinSet<()>,
    ) {
        if stopping {
            tracing::debug!(in_flight = tasks.len(), "delivery workers draining");
            tokio::select! {
                _ = outcomes.arrived() => {}
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
                .next_claimable_at(now, &endpoints.saturated())
                .await
            {
                Ok(Some(t)) => wait = wait.min(Duration::from_millis((t - now).max(1) as u64)),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the next due time failed"),
            }
        }
        tokio::select! {
            _ = outcomes.arrived() => {}
            _ = self.wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    }
}

/// What one attempt task needs.
struct Job {
    sender: Arc<Sender>,
    store: Arc<dyn Store>,
    schedule: Vec<Duration>,
    outcomes: Arc<Outcomes>,
    endpoints: Arc<Endpoints>,
    shutdown: CancellationToken,
    metrics: AttemptMetrics,
}

/// The attempt metrics' handles, looked up once: the macros find a handle in the
/// recorder's registry by hashing its name and labels at every call.
struct AttemptMetrics {
    success: metrics::Counter,
    gone: metrics::Counter,
    failure: metrics::Counter,
    latency: metrics::Histogram,
}

impl AttemptMetrics {
    fn new() -> AttemptMetrics {
        AttemptMetrics {
            success: metrics::counter!(m::ATTEMPTS_TOTAL, "outcome" => "success"),
            gone: metrics::counter!(m::ATTEMPTS_TOTAL, "outcome" => "gone"),
            failure: metrics::counter!(m::ATTEMPTS_TOTAL, "outcome" => "failure"),
            latency: metrics::histogram!(m::LATENCY_SECONDS),
        }
    }
}

impl Job {
    /// Sends `d`, then each delivery queued for its endpoint that it may take over.
    async fn attempt(self: Arc<Self>, d: ClaimedDelivery, permit: OwnedSemaphorePermit) {
        let mut next = Some((d, permit));
        while let Some((d, permit)) = next.take() {
            let record = self.attempt_one(&d).await;
            // The endpoint's slot is free now: it goes to the next delivery queued for
            // it, or the loop claims for it in the turn that writes this outcome.
            let (follow, give_back) = self.endpoints.finish(
                d.webhook_id,
                record.result == AttemptResult::Succeeded
                    && record.latency_ms < QUICK_ANSWER.as_millis() as i64,
                self.shutdown.is_cancelled(),
            );
            next = follow.map(|q| (q.delivery, q.permit));
            // The permit goes back when the outcome is written: it bounds what was
            // sent but not yet recorded. Forgotten first, so it is never counted twice.
            permit.forget();
            self.outcomes.push(record);
            // After the outcome: a 410 is on its way to the database before the
            // endpoint's other deliveries become claimable again.
            if !give_back.is_empty() {
                self.give_back(give_back).await;
            }
        }
    }

    async fn attempt_one(&self, d: &ClaimedDelivery) -> AttemptRecord {
        let most = LevelFilter::current();
        attempt(&self.sender, &self.schedule, &self.metrics, d, most).await
    }

    /// Queued deliveries not to be sent after all: claimable again at once (their
    /// permits are freed after, so the claim that takes them again has room for them).
    async fn give_back(&self, queued: Vec<Queued>) {
        let ids: Vec<i64> = queued.iter().map(|q| q.delivery.id).collect();
        if let Err(e) = self.store.release_claims(&ids).await {
            tracing::warn!(error = %e, "could not release claims; their lease will expire");
        }
    }
}

/// Sends one attempt of `d` and decides what follows, with its metrics and its event.
///
/// Every event of an attempt is logged inside its span, `delivery_attempt`, with the
/// webhook, the delivery and the attempt number. When anything below INFO may be logged
/// (`most` is the most verbose level logged anywhere: our debug events, or those of the
/// libraries the request goes through), the span is made before the request and covers
/// it. Otherwise the only event an attempt can log is its outcome's, and the span is made
/// for that event alone, when there is one: at INFO a success logs nothing and makes no
/// span. A span made and closed for every delivery
/// (a slot in the registry, its fields formatted, entered at each poll) was 4% of the
/// CPU of a delivery, counting both ends of the bench (BENCHMARKS.md item 51).
async fn attempt(
    sender: &Sender,
    schedule: &[Duration],
    metrics: &AttemptMetrics,
    d: &ClaimedDelivery,
    most: LevelFilter,
) -> AttemptRecord {
    let sent = async {
        let started_at_ms = now_ms();
        let outcome = sender
            .send(&Outgoing {
                url: &d.url,
                secret: &d.secret,
                event: &d.event,
                delivery_id: d.id,
                body: &d.body,
            })
            .await;
        let result = decide(schedule, d.round_attempt, verdict(&outcome), now_ms());
        (started_at_ms, outcome, result)
    };
    let (started_at_ms, outcome, result) = if most > LevelFilter::INFO {
        let span = attempt_span(d);
        let sent = sent.instrument(span.clone()).await;
        span.in_scope(|| log_outcome(metrics, &sent.1, sent.2));
        sent
    } else {
        let sent = sent.await;
        if most >= log_level(sent.2) {
            attempt_span(d).in_scope(|| log_outcome(metrics, &sent.1, sent.2));
        } else {
            log_outcome(metrics, &sent.1, sent.2);
        }
        sent
    };
    attempt_record(d, started_at_ms, outcome, result)
}

/// The span of one attempt. The answer's code and latency go on the outcome's event, not
/// here: each field recorded on a span is formatted at once, logged or not.
fn attempt_span(d: &ClaimedDelivery) -> tracing::Span {
    tracing::info_span!(
        "delivery_attempt",
        webhook_id = d.webhook_id,
        delivery_id = d.id,
        attempt = d.attempt,
    )
}

/// The level of the event `log_outcome` writes for `result` (its macros need the level
/// written out; the tests at INFO and WARN fail if the two part).
fn log_level(result: AttemptResult) -> Level {
    match result {
        AttemptResult::Succeeded => Level::DEBUG,
        AttemptResult::RetryAt(_) => Level::INFO,
        AttemptResult::Failed | AttemptResult::Gone => Level::WARN,
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

fn log_outcome(metrics: &AttemptMetrics, outcome: &SendOutcome, result: AttemptResult) {
    match result {
        AttemptResult::Succeeded => &metrics.success,
        AttemptResult::Gone => &metrics.gone,
        AttemptResult::RetryAt(_) | AttemptResult::Failed => &metrics.failure,
    }
    .increment(1);
    metrics.latency.record(outcome.latency_ms as f64 / 1000.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: usize = 2;

    #[test]
    fn a_turn_waits_for_more_outcomes_only_while_attempts_or_queues_keep_going() {
        // Deliveries queued behind the attempts: it waits while they last.
        let queued = Gather::before_turn(10, 16, QUEUED_LOW + 1).unwrap();
        assert_eq!(queued.least, QUEUED_GATHER);
        assert_eq!(queued.queued_above, Some(QUEUED_LOW));
        // Many attempts in flight, queued or not: it waits a moment for a few more.
        for queued in [0, 1000] {
            let many = Gather::before_turn(10, 4 * GATHER_MIN + 1, queued).unwrap();
            assert_eq!(many.least, GATHER_MIN);
            assert_eq!(many.queued_above, None);
        }
        // Few attempts and no queue: the outcomes are written at once.
        assert_eq!(Gather::before_turn(10, 16, QUEUED_LOW), None);
        // Enough outcomes, or none: no wait.
        assert_eq!(Gather::before_turn(QUEUED_GATHER, 16, 1000), None);
        assert_eq!(Gather::before_turn(0, 1000, 1000), None);
    }

    fn endpoints() -> Endpoints {
        Endpoints::new(CAP, Duration::from_secs(10), Duration::from_secs(60))
    }

    fn delivery(id: i64, webhook_id: i64) -> ClaimedDelivery {
        ClaimedDelivery {
            id,
            webhook_id,
            url: "".into(),
            secret: "".into(),
            event: "".into(),
            body: Default::default(),
            attempt: 1,
            round_attempt: 1,
        }
    }

    /// Places deliveries `ids` of webhook 1 under a lease ending at `lease_until`:
    /// the ids sent, queued and refused.
    fn place(
        e: &Endpoints,
        permits: &Arc<Semaphore>,
        ids: std::ops::Range<i64>,
        lease_until: i64,
    ) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
        let (mut sent, mut queued, mut excess) = (vec![], vec![], vec![]);
        for id in ids {
            let permit = permits.clone().try_acquire_owned().unwrap();
            match e.place(delivery(id, 1), permit, lease_until) {
                Placement::Send(d, _) => sent.push(d.id),
                Placement::Queued => queued.push(id),
                Placement::Excess(id) => excess.push(id),
            }
        }
        (sent, queued, excess)
    }

    fn ids(queued: &[Queued]) -> Vec<i64> {
        queued.iter().map(|q| q.delivery.id).collect()
    }

    #[test]
    fn an_endpoint_that_has_not_answered_yet_gets_no_queue() {
        let e = endpoints();
        let permits = Arc::new(Semaphore::new(100));
        let lease = now_ms() + 60_000;
        assert_eq!(e.room(), vec![]);
        assert_eq!(
            place(&e, &permits, 1..4, lease),
            (vec![1, 2], vec![], vec![3])
        );
        assert_eq!(e.room(), vec![(1, 0)]);
        assert_eq!(e.saturated(), vec![1]);
        // A slow success is no answer to queue behind either.
        let (next, back) = e.finish(1, false, false);
        assert!(next.is_none() && back.is_empty());
        assert_eq!(e.room(), vec![(1, 1)]);
        let (next, back) = e.finish(1, false, false);
        assert!(next.is_none() && back.is_empty());
        assert_eq!(
            e.room(),
            vec![],
            "an endpoint with nothing claimed is forgotten"
        );
    }

    #[test]
    fn a_quickly_answering_endpoint_queues_and_hands_over_in_claim_order() {
        let e = endpoints();
        let permits = Arc::new(Semaphore::new(100));
        let lease = now_ms() + 60_000;
        place(&e, &permits, 1..3, lease);
        let (next, back) = e.finish(1, true, false);
        assert!(next.is_none() && back.is_empty());
        // One in flight, and room for the other slot and a queue of 8 per slot.
        let queue = QUEUE_PER_SLOT * CAP;
        assert_eq!(e.room(), vec![(1, 1 + queue)]);
        let n = 1 + queue as i64;
        let (sent, queued, excess) = place(&e, &permits, 10..10 + n + 1, lease);
        assert_eq!(sent, vec![10]);
        assert_eq!(queued, (11..10 + n).collect::<Vec<_>>());
        assert_eq!(excess, vec![10 + n]);
        assert_eq!(
            permits.available_permits(),
            100 - queue,
            "queued claims hold permits"
        );
        assert_eq!(e.queued.load(Ordering::Relaxed), queue);
        // Each ended attempt takes the oldest queued delivery over: never more than
        // `CAP` in flight.
        for expected in 11..10 + n {
            let (next, back) = e.finish(1, true, false);
            assert!(back.is_empty());
            assert_eq!(next.map(|q| q.delivery.id), Some(expected));
        }
        assert_eq!(e.finish(1, true, false).0.map(|q| q.delivery.id), None);
        assert_eq!(e.room(), vec![(1, 1 + queue)]);
        assert_eq!(e.queued.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn an_endpoint_whose_attempts_all_ended_keeps_its_queue_for_a_while() {
        let e = endpoints();
        let permits = Arc::new(Semaphore::new(100));
        place(&e, &permits, 1..3, now_ms() + 60_000);
        e.finish(1, true, false);
        e.finish(1, true, false);
        let bound = CAP + QUEUE_PER_SLOT * CAP;
        assert_eq!(e.room(), vec![(1, bound)]);
        let (sent, queued, _) = place(&e, &permits, 10..13, now_ms() + 60_000);
        assert_eq!((sent, queued), (vec![10, 11], vec![12]));
        e.finish(1, true, false);
        e.finish(1, true, false);
        e.finish(1, true, false);
        assert_eq!(e.room(), vec![(1, bound)]);
        let idle = REMEMBER_IDLE.as_millis() as i64;
        e.per_webhook
            .lock()
            .unwrap()
            .get_mut(&1)
            .unwrap()
            .idle_since = Some(now_ms() - idle);
        assert_eq!(e.room(), vec![], "forgotten after a while");
        // One that never had all its attempts in flight has no use for a queue.
        place(&e, &permits, 1..2, now_ms() + 60_000);
        e.finish(1, true, false);
        assert_eq!(e.room(), vec![]);
        // And a failure forgets it at once.
        place(&e, &permits, 1..3, now_ms() + 60_000);
        e.finish(1, true, false);
        e.finish(1, false, false);
        assert_eq!(e.room(), vec![]);
    }

    #[test]
    fn a_failure_or_shutdown_gives_the_queue_back() {
        let permits = Arc::new(Semaphore::new(100));
        let lease = now_ms() + 60_000;
        for (succeeded, stopping) in [(false, false), (true, true)] {
            let e = endpoints();
            place(&e, &permits, 1..3, lease);
            e.finish(1, true, false);
            let (sent, queued, _) = place(&e, &permits, 10..15, lease);
            assert_eq!((sent.len(), queued.len()), (1, 4));
            let (next, back) = e.finish(1, succeeded, stopping);
            assert!(next.is_none());
            assert_eq!(ids(&back), vec![11, 12, 13, 14]);
            assert_eq!(e.queued.load(Ordering::Relaxed), 0);
            let bound = if succeeded {
                CAP + QUEUE_PER_SLOT * CAP
            } else {
                CAP
            };
            assert_eq!(e.room(), vec![(1, bound - 1)]);
        }
    }

    #[test]
    fn a_queued_delivery_whose_lease_would_run_out_is_given_back_not_sent() {
        let e = endpoints();
        let permits = Arc::new(Semaphore::new(100));
        place(&e, &permits, 1..3, now_ms() + 60_000);
        e.finish(1, true, false);
        // The lease left must cover a whole attempt (10 s) and the slack.
        place(&e, &permits, 10..11, now_ms() + 60_000);
        place(&e, &permits, 12..13, now_ms() + 12_000);
        place(&e, &permits, 13..14, now_ms() + 60_000);
        let (next, back) = e.finish(1, true, false);
        assert_eq!(ids(&back), vec![12]);
        assert_eq!(next.map(|q| q.delivery.id), Some(13));
    }

    #[test]
    fn a_delivery_queued_for_longer_than_its_age_limit_is_given_back_not_sent() {
        let e = endpoints();
        let permits = Arc::new(Semaphore::new(100));
        place(&e, &permits, 1..3, now_ms() + 60_000);
        e.finish(1, true, false);
        place(&e, &permits, 10..13, now_ms() + 60_000);
        {
            let mut map = e.per_webhook.lock().unwrap();
            let q = &mut map.get_mut(&1).unwrap().queued;
            assert!(q.iter().all(|q| q.send_by_ms <= now_ms() + 1_000));
            // Claimed over a second ago, as if the endpoint's answers had slowed down.
            q[0].send_by_ms = now_ms() - 1;
        }
        let (next, back) = e.finish(1, true, false);
        assert_eq!(ids(&back), vec![11]);
        assert_eq!(next.map(|q| q.delivery.id), Some(12));
    }

    #[test]
    fn a_lease_shorter_than_two_attempts_means_no_queue() {
        let e = Endpoints::new(CAP, Duration::from_secs(10), Duration::from_secs(25));
        let permits = Arc::new(Semaphore::new(100));
        let lease = now_ms() + 25_000;
        place(&e, &permits, 1..3, lease);
        e.finish(1, true, false);
        assert_eq!(
            place(&e, &permits, 10..12, lease),
            (vec![10], vec![], vec![11])
        );
    }

    /// Counts the attempt spans made.
    struct AttemptSpans(Arc<AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AttemptSpans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            _: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if attrs.metadata().name() == "delivery_attempt" {
                self.0.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn claimed(url: String, id: i64, webhook_id: i64, attempt: i64) -> ClaimedDelivery {
        ClaimedDelivery {
            id,
            webhook_id,
            url: url.into(),
            secret: "whsec_test".into(),
            event: "exploit.detected".into(),
            body: bytes::Bytes::from_static(b"{}"),
            attempt,
            round_attempt: 1,
        }
    }

    /// A success (200) and a failure (404) through real HTTP to a loopback receiver, with
    /// everything up to `level` logged: (the log, attempt spans made).
    fn two_attempts_logged_at(level: LevelFilter) -> (String, usize) {
        use tracing_subscriber::layer::SubscriberExt;
        let receiver = crate::bench::receiver::Receiver::start(None).unwrap();
        let config = Config {
            allow_private_networks: vec!["127.0.0.0/8".into()],
            ..Config::default()
        };
        let sender = Sender::new(&config).unwrap();
        let out = crate::telemetry::Captured::default();
        let spans = Arc::new(AtomicUsize::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(level)
            .with(AttemptSpans(spans.clone()))
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .without_time()
                    .with_writer(out.clone()),
            );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tracing::subscriber::with_default(subscriber, || {
            runtime.block_on(async {
                let metrics = AttemptMetrics::new();
                let schedule = [Duration::from_secs(60)];
                let ok = claimed(receiver.url("/ceiling/a"), 101, 11, 1);
                let ok = attempt(&sender, &schedule, &metrics, &ok, level).await;
                assert_eq!(ok.result, AttemptResult::Succeeded);
                let missing = claimed(receiver.url("/no-such-path"), 202, 22, 3);
                let missing = attempt(&sender, &schedule, &metrics, &missing, level).await;
                assert_eq!(missing.status_code, Some(404));
                assert!(matches!(missing.result, AttemptResult::RetryAt(_)));
            })
        });
        let log = out.text();
        (log, spans.load(Ordering::Relaxed))
    }

    /// The line of `log` with `text`, which must be inside `span`.
    fn line_in_span<'a>(log: &'a str, text: &str, span: &str) -> &'a str {
        let line = log
            .lines()
            .find(|l| l.contains(text))
            .unwrap_or_else(|| panic!("no line with {text:?} in:\n{log}"));
        assert!(line.contains(span), "{text:?} is not inside {span}:\n{log}");
        line
    }

    const SUCCESS_SPAN: &str = "delivery_attempt{webhook_id=11 delivery_id=101 attempt=1}";
    const RETRY_SPAN: &str = "delivery_attempt{webhook_id=22 delivery_id=202 attempt=3}";

    #[test]
    fn at_info_only_an_attempt_that_logs_makes_its_span_and_its_event_is_inside() {
        let (log, spans) = two_attempts_logged_at(LevelFilter::INFO);
        let failed = line_in_span(&log, "attempt failed; will retry", RETRY_SPAN);
        assert!(failed.contains("status_code=404"), "{log}");
        assert!(!log.contains("delivered"), "{log}");
        assert_eq!(spans, 1, "the success made no span: {log}");
    }

    #[test]
    fn at_debug_every_attempt_has_its_span() {
        let (log, spans) = two_attempts_logged_at(LevelFilter::DEBUG);
        line_in_span(&log, "delivered", SUCCESS_SPAN);
        line_in_span(&log, "attempt failed; will retry", RETRY_SPAN);
        assert_eq!(spans, 2, "{log}");
    }

    #[test]
    fn at_warn_a_retry_logs_nothing_and_makes_no_span() {
        let (log, spans) = two_attempts_logged_at(LevelFilter::WARN);
        assert_eq!(log, "");
        assert_eq!(spans, 0);
    }
}
