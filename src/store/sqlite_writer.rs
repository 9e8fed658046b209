//! The SQLite delivery hot path on a thread of its own: one rusqlite connection runs each
//! dispatcher turn (outcomes, then a claim) as one synchronous transaction with cached
//! statements, and each ingest in chunks with the turns that arrive meanwhile between.
//! Through sqlx every statement was a round trip to its worker thread, and those hops,
//! not SQLite, set the pace of delivery.
//!
//! Claims live here, in memory, not in `deliveries.locked_until`: one process owns a
//! SQLite database's workers (a lock file makes sure of it), so a claim only has to keep
//! this process from taking a delivery twice, and a crash forgets them all, as the
//! restart would anyway. Writing the lease into the row cost a row rewrite and two
//! changes to the due index per delivery, a third of a turn's work. The column still
//! holds the leases of test deliveries the API sends itself, and claims skip them.

use std::collections::hash_map::Entry;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use rustc_hash::FxHashMap;
use tokio::sync::{oneshot, Notify};

use super::hours::{HourDeltas, Standing, COUNT_STOPPED};
use super::{
    delivery_outcome, exploit_dedup_key, gone_reason, health_deltas, intern, AttemptRecord,
    AttemptResult, ClaimPicker, ClaimedDelivery, IngestOutcome, Outcomes, StoreError, StoreResult,
    TurnClaim, Turned, SUCCESS_TIME_GRAIN_MS,
};
use crate::domain::exploit::{Exploit, NewExploit};
use crate::domain::filter::{ExploitFacts, Filters};
use crate::domain::payload::{encode_event, EVENT_EXPLOIT_DETECTED};
use crate::domain::secretbox::SecretCodec;
use crate::domain::time::now_ms;

/// How long a statement waits for another connection's write lock before failing.
const BUSY_WAIT: Duration = Duration::from_secs(30);
/// Sleep between tries for the write lock: short, because the other writers' (CRUD)
/// transactions are short too.
const BUSY_STEP: Duration = Duration::from_micros(100);

/// A claim's parameters, as `Store::claim_due_deliveries` takes them.
pub(super) struct Claim {
    pub now_ms: i64,
    pub lease_until_ms: i64,
    pub limit: usize,
    pub per_endpoint: usize,
    pub room: Vec<(i64, usize)>,
}

enum Command {
    Turn {
        records: Vec<AttemptRecord>,
        claim: Option<Claim>,
        reply: oneshot::Sender<StoreResult<Vec<ClaimedDelivery>>>,
    },
    /// A turn that takes its outcomes when it starts.
    Pulled {
        outcomes: Arc<Outcomes>,
        max: usize,
        claim: Option<TurnClaim>,
        reply: oneshot::Sender<StoreResult<Turned>>,
    },
    Ingest {
        exploits: Vec<NewExploit>,
        reply: oneshot::Sender<StoreResult<Vec<IngestOutcome>>>,
    },
    Release {
        ids: Vec<i64>,
    },
    NextClaimable {
        now_ms: i64,
        busy: Vec<i64>,
        reply: oneshot::Sender<StoreResult<Option<i64>>>,
    },
    Subscribe {
        wake: Arc<Notify>,
    },
    /// This process runs the delivery workers: see `Writer::splits`.
    OwnWorkers {
        reply: oneshot::Sender<StoreResult<usize>>,
    },
}

/// Deliveries claimed by this process and not yet recorded, with their lease's end: a
/// delivery whose attempt never reports back (its task panicked) is claimable again once
/// the lease runs out, as a claim in the row would be.
#[derive(Default)]
struct Claims {
    leases: FxHashMap<i64, i64>,
    /// Turns since expired leases were last swept out.
    turns: u32,
    /// Where the next claim may start reading the due order (`HeadCursor`).
    head: Option<HeadCursor>,
    /// Rows of the due order claims read, for tests of the cursor.
    #[cfg(test)]
    rows_read: std::cell::Cell<usize>,
}

/// A place in the due order (`deliveries_due`: due time, then webhook) before which
/// every due delivery was claimed by this process when a claim last read there. The
/// deliveries in flight stay at the head of the due order until their outcomes are
/// written, and a claim read past all of them on every turn (a few hundred index rows,
/// most of a claim's reading): it starts here instead. Rows can come before it again:
/// a claim given back (forgotten then), a chunk of an ingest (forgotten too; its rows
/// share a due time), and rows written by another connection (a manual retry, the
/// `ingest` command). A claim the cursor leaves short reads from the start, and one
/// does at least every `HEAD_REREAD_MS`, so those wait at most that long, and only
/// while the claims are full anyway.
#[derive(Debug, Clone, Copy, PartialEq)]
struct HeadCursor {
    due_ms: i64,
    webhook_id: i64,
    /// When a claim last read the due order from its start.
    whole_read_at_ms: i64,
}

/// Longest time claims start at the cursor before one reads from the start again.
const HEAD_REREAD_MS: i64 = 100;

/// Turns between sweeps of expired leases (there are none unless a task panicked).
const SWEEP_EVERY: u32 = 4096;

impl Claims {
    fn held(&self, id: i64, now_ms: i64) -> bool {
        self.leases.get(&id).is_some_and(|&until| until > now_ms)
    }

    /// At least the claims held: how many rows of the due order a scan may pass over.
    fn len(&self) -> usize {
        self.leases.len()
    }

    fn release(&mut self, ids: &[i64]) {
        for id in ids {
            self.leases.remove(id);
        }
        self.forget_head();
    }

    /// Rows may have come before the cursor: the next claim reads from the start.
    fn forget_head(&mut self) {
        self.head = None;
    }

    /// Where a claim at `now_ms` starts in the due order: `None` from the start.
    fn start(&self, now_ms: i64) -> Option<HeadCursor> {
        self.head
            .filter(|h| now_ms - h.whole_read_at_ms < HEAD_REREAD_MS && h.due_ms <= now_ms)
    }

    /// After a turn's commit: the recorded deliveries are free, the claimed ones held.
    fn settle(
        &mut self,
        recorded: &[AttemptRecord],
        claimed: &[ClaimedDelivery],
        head: Option<HeadCursor>,
        until: i64,
        now_ms: i64,
    ) {
        self.head = head;
        for r in recorded {
            self.leases.remove(&r.delivery_id);
        }
        for d in claimed {
            self.leases.insert(d.id, until);
        }
        self.turns += 1;
        if self.turns >= SWEEP_EVERY {
            self.turns = 0;
            let before = self.leases.len();
            self.leases.retain(|_, until| *until > now_ms);
            if self.leases.len() < before {
                self.head = None;
            }
        }
    }
}

/// The handle; the thread ends (and closes its connection) when this is dropped.
pub(super) struct HotPath {
    commands: mpsc::Sender<Command>,
}

impl HotPath {
    /// Opens a second write connection to the (existing, WAL-mode) database at `path`;
    /// a commit that leaves more than `wal_bytes_max` bytes of pages in the WAL
    /// checkpoints it (0: never).
    pub(super) fn open(
        path: &Path,
        secrets: SecretCodec,
        wal_bytes_max: u64,
    ) -> StoreResult<HotPath> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        widen_lookaside(&conn)?;
        // NORMAL: outcomes and claims commit without waiting for the disk (after a power
        // cut the worst case is a delivery sent once more); ingest syncs the WAL itself.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // No foreign-key checks on this connection: each delivery it inserts refers to an
        // exploit it inserted in the same transaction and a webhook it has just read, and
        // an attempt it moves to the history refers to the row it was read from. No row of
        // `webhooks`, `exploits` or `deliveries` is ever deleted. The checks were a tenth of
        // the cost of queueing a delivery (two parent lookups per row). The API's
        // connections keep them.
        conn.pragma_update(None, "foreign_keys", false)?;
        conn.pragma_update(None, "temp_store", "memory")?;
        // The hot index pages of the queue stay cached.
        conn.pragma_update(None, "cache_size", -16384)?;
        // The bound in frames of this file's pages (older databases have smaller ones).
        let page_size: u64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let wal_frames_max = (wal_bytes_max / page_size.max(512)).min(i32::MAX as u64);
        conn.pragma_update(None, "wal_autocheckpoint", wal_frames_max)?;
        conn.busy_handler(Some(busy))?;
        conn.set_prepared_statement_cache_capacity(32);
        let (commands, rx) = mpsc::channel();
        let (syncer, to_sync) = mpsc::channel();
        let wal = beside(path, "-wal");
        std::thread::Builder::new()
            .name("kamiyo-sqlite-sync".into())
            .spawn(move || sync_wal(&wal, to_sync))
            .map_err(|e| StoreError::Corrupt(format!("starting the WAL sync thread: {e}")))?;
        let writer = Writer {
            conn,
            secrets,
            syncer,
            claims: Claims::default(),
            bodies: Bodies::default(),
            wake: None,
            waiting: VecDeque::new(),
            splits: false,
        };
        std::thread::Builder::new()
            .name("kamiyo-sqlite".into())
            .spawn(move || writer.serve(rx))
            .map_err(|e| StoreError::Corrupt(format!("starting the SQLite writer thread: {e}")))?;
        Ok(HotPath { commands })
    }

    /// Writes `records`, then claims if asked, in one transaction.
    pub(super) async fn turn(
        &self,
        records: &[AttemptRecord],
        claim: Option<Claim>,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Turn {
            records: records.to_vec(),
            claim,
            reply,
        })?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Writes at most `max` of `outcomes`, taken when the writer gets to this turn, then
    /// claims if asked, in one transaction; a failed turn puts the outcomes back.
    pub(super) async fn turn_pulled(
        &self,
        outcomes: &Arc<Outcomes>,
        max: usize,
        claim: Option<TurnClaim>,
    ) -> StoreResult<Turned> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Pulled {
            outcomes: outcomes.clone(),
            max,
            claim,
            reply,
        })?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    pub(super) async fn ingest(&self, exploits: &[NewExploit]) -> StoreResult<Vec<IngestOutcome>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Ingest {
            exploits: exploits.to_vec(),
            reply,
        })?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Whom to wake when ingest has queued deliveries the dispatcher may claim.
    pub(super) fn subscribe(&self, wake: Arc<Notify>) -> StoreResult<()> {
        self.send(Command::Subscribe { wake })
    }

    /// This process holds the workers' lock: exploits an earlier holder left part way
    /// through their deliveries get the rest, and this one's ingests may split exploits
    /// over chunks. The answer (how many exploits were finished) may be dropped.
    pub(super) fn own_workers(&self) -> StoreResult<oneshot::Receiver<StoreResult<usize>>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::OwnWorkers { reply })?;
        Ok(answer)
    }

    /// Gives claims back without an attempt.
    pub(super) fn release(&self, ids: &[i64]) -> StoreResult<()> {
        self.send(Command::Release { ids: ids.to_vec() })
    }

    /// When the earliest pending delivery outside `busy` and outside this process's
    /// claims becomes claimable.
    pub(super) async fn next_claimable_at(
        &self,
        now_ms: i64,
        busy: &[i64],
    ) -> StoreResult<Option<i64>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::NextClaimable {
            now_ms,
            busy: busy.to_vec(),
            reply,
        })?;
        answer.await.map_err(|_| StoreError::WriterStopped)?
    }

    fn send(&self, command: Command) -> StoreResult<()> {
        self.commands
            .send(command)
            .map_err(|_| StoreError::WriterStopped)
    }
}

/// The file SQLite (or this store) keeps next to the database: its name plus `suffix`.
pub(super) fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Lookaside slots of the writer's connection (of `LOOKASIDE_SLOT` bytes; SQLite keeps
/// part of the buffer as smaller slots).
const LOOKASIDE_SLOTS: i32 = 1000;
const LOOKASIDE_SLOT: i32 = 1200;

/// Gives the connection a lookaside buffer large enough for its statements' cursors and
/// values. The default one (about 100 slots) is taken up by the programs of the cached
/// statements, so every cursor a statement opened and every value it built went to
/// `malloc`: 14 allocations per queued and delivered row, 7% of the writer's instructions.
/// Must run before the connection prepares anything.
fn widen_lookaside(conn: &Connection) -> StoreResult<()> {
    // SAFETY: the handle is open and used by no other thread yet; with a null buffer
    // SQLite allocates (and later frees) the lookaside memory itself.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            LOOKASIDE_SLOT,
            LOOKASIDE_SLOTS,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rc),
            Some("setting the writer connection's lookaside memory".into()),
        )
        .into());
    }
    Ok(())
}

fn busy(tries: i32) -> bool {
    if BUSY_STEP * tries.max(0) as u32 >= BUSY_WAIT {
        return false;
    }
    std::thread::sleep(BUSY_STEP);
    true
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    secrets: SecretCodec,
    /// Ingests written, to be answered once the WAL is synced.
    syncer: mpsc::Sender<Synced>,
    claims: Claims,
    bodies: Bodies,
    wake: Option<Arc<Notify>>,
    /// Ingests that arrived while another one was between its chunks.
    waiting: VecDeque<Command>,
    /// Whether an exploit's deliveries may span chunks. Only in the process that holds
    /// the workers' lock: one killed part way leaves the exploit marked, and the next
    /// holder of the lock inserts the rest (`finish_fanouts`) knowing that no live
    /// process is still at it. Another process (the `ingest` command beside `serve`)
    /// commits each exploit whole, as the lock's holder would not know whether it lives.
    splits: bool,
}

impl Writer {
    fn serve(mut self, commands: mpsc::Receiver<Command>) {
        loop {
            let command = match self.waiting.pop_front() {
                Some(c) => c,
                None => match commands.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
            };
            match command {
                Command::Ingest { exploits, reply } => match self.ingest(&exploits, &commands) {
                    // The sync thread answers once what was written is on disk; this one
                    // goes on with the turns meanwhile.
                    Ok((outcomes, true)) => {
                        if let Err(mpsc::SendError(unsent)) =
                            self.syncer.send(Synced { outcomes, reply })
                        {
                            let _ = unsent.reply.send(Err(StoreError::WriterStopped));
                        }
                    }
                    done => {
                        let _ = reply.send(done.map(|(outcomes, _)| outcomes));
                    }
                },
                other => self.handle(other),
            }
        }
    }

    /// Everything but an ingest.
    fn handle(&mut self, command: Command) {
        match command {
            Command::Turn {
                records,
                claim,
                reply,
            } => {
                let _ = reply.send(self.turn(&records, claim.as_ref()));
            }
            Command::Pulled {
                outcomes,
                max,
                claim,
                reply,
            } => {
                let records = outcomes.take(max);
                let claim = claim.map(|c| Claim {
                    now_ms: c.now_ms,
                    lease_until_ms: c.lease_until_ms,
                    limit: c.limit(records.len()),
                    per_endpoint: c.per_endpoint,
                    room: c.room,
                });
                let done = match self.turn(&records, claim.as_ref()) {
                    Ok(claimed) => Ok(Turned {
                        recorded: records.len(),
                        limit: claim.map_or(0, |c| c.limit),
                        claimed,
                    }),
                    Err(e) => {
                        outcomes.restore(records);
                        Err(e)
                    }
                };
                let _ = reply.send(done);
            }
            Command::Release { ids } => self.claims.release(&ids),
            Command::NextClaimable {
                now_ms,
                busy,
                reply,
            } => {
                let _ = reply.send(next_claimable_at(&self.conn, &self.claims, now_ms, &busy));
            }
            Command::Subscribe { wake } => self.wake = Some(wake),
            Command::OwnWorkers { reply } => {
                let finished = finish_fanouts(&mut self.conn);
                match &finished {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        exploits = n,
                        "queued the rest of the deliveries of exploits a stop had cut off"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        "could not queue the rest of the deliveries of exploits a stop had cut off; tried again at the next start"
                    ),
                }
                self.splits = true;
                let _ = reply.send(finished);
            }
            ingest @ Command::Ingest { .. } => self.waiting.push_back(ingest),
        }
    }

    /// One turn's transaction; after its commit, the claims it settled.
    fn turn(
        &mut self,
        records: &[AttemptRecord],
        claim: Option<&Claim>,
    ) -> StoreResult<Vec<ClaimedDelivery>> {
        let (claimed, head) = turn(
            &mut self.conn,
            &self.secrets,
            &self.claims,
            &mut self.bodies,
            records,
            claim,
        )?;
        let (now, until) = claim.map_or((now_ms(), 0), |c| (c.now_ms, c.lease_until_ms));
        self.claims.settle(records, &claimed, head, until, now);
        Ok(claimed)
    }

    /// Between two chunks of an ingest: the turns (and other short commands) that came
    /// in meanwhile run now, so delivery goes on while a large batch is stored.
    fn serve_arrived(&mut self, commands: &mpsc::Receiver<Command>) {
        while let Ok(command) = commands.try_recv() {
            self.handle(command);
        }
    }

    fn wake_dispatcher(&self) {
        if let Some(wake) = &self.wake {
            wake.notify_waiters();
            wake.notify_one();
        }
    }

    /// Stores the batch in chunks of a bounded number of rows, each its own transaction;
    /// whether anything was written, which must be made durable (an fsync of the WAL, by
    /// `sync_wal`) before the ingest is answered. An exploit with many deliveries may span
    /// chunks: its row goes in the first, with how far its deliveries have got
    /// (`fanout_after`), so that a crash part way is finished at the next start
    /// (`finish_fanouts`). The client, unanswered, sends the batch again, and those come
    /// back as duplicates with all their deliveries.
    fn ingest(
        &mut self,
        exploits: &[NewExploit],
        commands: &mpsc::Receiver<Command>,
    ) -> StoreResult<(Vec<IngestOutcome>, bool)> {
        let now = now_ms();
        let targets = ingest_targets(&self.conn)?;
        let mut outcomes = Vec::with_capacity(exploits.len());
        let mut rest = exploits;
        let mut wave = Wave::default();
        let mut wrote = false;
        while !rest.is_empty() || !wave.is_empty() {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut rows = 0;
            let mut queued = 0;
            // A command that came in while this chunk was written ends the chunk once it
            // holds a few hundred rows: a dispatcher turn waits about that many, not a
            // whole chunk, and small exploits still share a commit.
            let mut arrived = None;
            loop {
                let full = rows >= INGEST_CHUNK_ROWS
                    || (arrived.is_some() && rows >= INGEST_CHUNK_MIN_ROWS);
                if full && (wave.is_empty() || self.splits) {
                    break;
                }
                if wave.is_empty() {
                    // Only the process that may split exploits takes several at once:
                    // elsewhere each is committed whole, on its own.
                    let most = if self.splits { WAVE_EXPLOITS } else { 1 };
                    let mut stored = 0;
                    while stored < most {
                        let Some((e, more)) = rest.split_first() else {
                            break;
                        };
                        let (outcome, started) = store_exploit(&tx, &targets, e, now)?;
                        rows += 1;
                        stored += 1;
                        wrote |= !outcome.duplicate;
                        outcomes.push(outcome);
                        wave.fanouts.extend(started);
                        rest = more;
                    }
                    if stored == 0 {
                        break;
                    }
                }
                // A wave's first step goes with its exploits' rows: one of a few
                // deliveries is never split.
                let inserted = wave.step(&tx, now)?;
                rows += inserted;
                queued += inserted;
                if arrived.is_none() {
                    arrived = commands.try_recv().ok();
                }
            }
            wave.mark(&tx)?;
            tx.commit()?;
            // The chunk's rows share one due time and may come before the cursor.
            self.claims.forget_head();
            // The dispatcher may send what a chunk queued once it is committed, before
            // the sync thread has the WAL on disk and the ingest is answered: that sync
            // took 1-2 ms, and at times tens, on the way of every alert. Committed rows
            // outlive a crash of this process; only a crash of the machine in between
            // can lose the exploit after its deliveries went out, and the unanswered
            // client then sends it again: a duplicate, which at-least-once allows.
            if queued > 0 {
                self.wake_dispatcher();
            }
            let more = !rest.is_empty() || !wave.is_empty();
            if let Some(command) = arrived {
                self.handle(command);
            }
            if more {
                self.serve_arrived(commands);
            }
        }
        Ok((outcomes, wrote))
    }
}

/// An ingest written and not yet answered.
struct Synced {
    outcomes: Vec<IngestOutcome>,
    reply: oneshot::Sender<StoreResult<Vec<IngestOutcome>>>,
}

/// Answers each written ingest once the WAL is on disk: what synchronous = FULL does at
/// a commit, once for all the chunks of the ingests waiting (and the relaxed turn commits
/// before them). On its own thread, because a sync takes milliseconds that the writer
/// spends on turns instead; ingests that arrive during one share the next.
fn sync_wal(wal: &Path, written: mpsc::Receiver<Synced>) {
    while let Ok(first) = written.recv() {
        let mut waiting = vec![first];
        waiting.extend(written.try_iter());
        let synced = std::fs::File::open(wal).and_then(|f| f.sync_data());
        for w in waiting {
            let answer = match &synced {
                Ok(()) => Ok(w.outcomes),
                Err(e) => Err(StoreError::Sync(
                    wal.display().to_string(),
                    std::io::Error::new(e.kind(), e.to_string()),
                )),
            };
            let _ = w.reply.send(answer);
        }
    }
}

/// Rows of the due order read to find the next claimable one: only the head of it, as
/// behind a deep queue of a busy endpoint the scan would otherwise read that whole queue
/// on every idle turn (a later row is found by the fallback poll, or at once by the
/// claim a new delivery wakes).
const NEXT_DUE_SCAN: usize = 1024;

fn next_claimable_at(
    conn: &Connection,
    claims: &Claims,
    now_ms: i64,
    busy: &[i64],
) -> StoreResult<Option<i64>> {
    let mut due = conn.prepare_cached(
        "SELECT id, webhook_id, next_attempt_at FROM deliveries \
         WHERE status = 'pending' AND (locked_until IS NULL OR locked_until <= ?1) \
         ORDER BY next_attempt_at LIMIT ?2",
    )?;
    let bound = NEXT_DUE_SCAN + claims.len();
    let mut rows = due.query(params![now_ms, bound as i64])?;
    while let Some(row) = rows.next()? {
        let (id, webhook_id): (i64, i64) = (row.get(0)?, row.get(1)?);
        if !claims.held(id, now_ms) && !busy.contains(&webhook_id) {
            return Ok(Some(row.get(2)?));
        }
    }
    Ok(None)
}

fn turn(
    conn: &mut Connection,
    secrets: &SecretCodec,
    claims: &Claims,
    bodies: &mut Bodies,
    records: &[AttemptRecord],
    claim: Option<&Claim>,
) -> StoreResult<(Vec<ClaimedDelivery>, Option<HeadCursor>)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    if !records.is_empty() {
        record(&tx, records)?;
    }
    // Outcomes only take rows out of the due order or move them later: the cursor
    // stays right for a turn that does not claim.
    let claimed = match claim {
        Some(c) if records.is_empty() => claim_due(&tx, secrets, claims, bodies, c)?,
        Some(c) => {
            // The outcomes must be written whatever happens to the claim (a secret that
            // no longer opens after a key rotation, say): the claim gets a savepoint.
            tx.execute_batch("SAVEPOINT claim")?;
            match claim_due(&tx, secrets, claims, bodies, c) {
                Ok(claimed) => {
                    tx.execute_batch("RELEASE claim")?;
                    claimed
                }
                Err(e) => {
                    tx.execute_batch("ROLLBACK TO claim; RELEASE claim")?;
                    tracing::error!(error = %e, "claiming deliveries failed; outcomes recorded");
                    (Vec::new(), claims.head)
                }
            }
        }
        None => (Vec::new(), claims.head),
    };
    tx.commit()?;
    Ok(claimed)
}

/// The SET clause of recording an attempt (`?1` the delivery, then `record`'s parameters).
/// SET expressions all read the row as it was, so both CASEs see the old status. A
/// delivery stopped meanwhile (webhook deleted or deactivated) stays failed.
macro_rules! record_attempt_set {
    () => {
        "UPDATE deliveries SET attempts = attempts + 1, last_attempt_at = ?2, \
         sent_at = COALESCE(sent_at, ?3), status_code = ?4, latency_ms = ?5, error = ?6, \
         locked_until = NULL, \
         status = CASE WHEN status = 'pending' THEN ?7 ELSE status END, \
         next_attempt_at = CASE WHEN status = 'pending' THEN ?8 ELSE NULL END, \
         delivered_at = COALESCE(?9, delivered_at), \
         attempt_started_at = ?3, attempt_error_kind = ?10, attempt_error = ?6, \
         attempt_response_body = ?11 WHERE id = ?1"
    };
}

fn record(tx: &rusqlite::Transaction<'_>, records: &[AttemptRecord]) -> StoreResult<()> {
    // The attempt goes into the row (migration 0004). A row that already holds one (a
    // retry) has that one moved to `delivery_attempts` first; this writer is the only
    // one that records attempts, so it keeps that invariant (migration 0005 dropped the
    // trigger that did). Most outcomes are first attempts of pending rows: one
    // statement, which finds the row empty, and whose figures are known without reading
    // it. The rest read the row's standing first, to move its figures (migration 0007).
    let mut into_empty_row = tx.prepare_cached(concat!(
        record_attempt_set!(),
        " AND attempt_started_at IS NULL AND status = 'pending'"
    ))?;
    let mut standing = tx.prepare_cached(
        "SELECT status, last_attempt_at, latency_ms FROM deliveries WHERE id = ?1",
    )?;
    let mut keep_previous = tx.prepare_cached(
        "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, \
         latency_ms, error_kind, error, response_body) \
         SELECT id, attempts, attempt_started_at, status_code, latency_ms, \
         attempt_error_kind, attempt_error, attempt_response_body \
         FROM deliveries WHERE id = ?1 AND attempt_started_at IS NOT NULL",
    )?;
    let mut over_previous = tx.prepare_cached(record_attempt_set!())?;
    let mut hours = HourDeltas::default();
    for r in records {
        let (status, next_at, delivered_at) = delivery_outcome(r);
        let values = params![
            r.delivery_id,
            r.started_at_ms + r.latency_ms,
            r.started_at_ms,
            r.status_code,
            r.latency_ms,
            r.error,
            status,
            next_at,
            delivered_at,
            r.error_kind,
            r.response_body
        ];
        let after = |status| Standing {
            status,
            last_attempt_at: Some(r.started_at_ms + r.latency_ms),
            latency_ms: Some(r.latency_ms),
        };
        if into_empty_row.execute(values)? == 1 {
            hours.moved(r.webhook_id, None, after(status));
        } else {
            // The row holds an earlier attempt, was stopped meanwhile (it stays failed),
            // or is gone (nothing to write).
            let Some((was, last_at, latency)) = standing
                .query_row(params![r.delivery_id], |row| {
                    Ok((row.get::<_, String>(0)?, row.get(1)?, row.get(2)?))
                })
                .optional()?
            else {
                continue;
            };
            keep_previous.execute(params![r.delivery_id])?;
            over_previous.execute(values)?;
            let before = Standing {
                status: &was,
                last_attempt_at: last_at,
                latency_ms: latency,
            };
            let now = if was == "pending" { status } else { &was };
            hours.moved(r.webhook_id, Some(before), after(now));
        }
        hours.attempt(r);
    }
    let mut health = tx.prepare_cached(
        "UPDATE webhooks SET \
         consecutive_failures = CASE WHEN ?2 THEN ?3 ELSE consecutive_failures + ?3 END, \
         last_success_at = COALESCE(?4, last_success_at), \
         last_failure_at = COALESCE(?5, last_failure_at), \
         last_error = COALESCE(?6, last_error) WHERE id = ?1 \
         AND NOT (?2 AND ?3 = 0 AND consecutive_failures = 0 \
                  AND COALESCE(last_success_at >= ?4 - ?7, 0))",
    )?;
    for d in health_deltas(records) {
        health.execute(params![
            d.webhook_id,
            d.reset,
            d.failures,
            d.last_success_at,
            d.last_failure_at,
            d.last_error,
            SUCCESS_TIME_GRAIN_MS
        ])?;
    }
    for r in records.iter().filter(|r| r.result == AttemptResult::Gone) {
        let at = r.started_at_ms + r.latency_ms;
        tx.prepare_cached(COUNT_STOPPED)?.execute([r.webhook_id])?;
        tx.execute(
            "UPDATE webhooks SET is_active = 0, disabled_reason = ?2, updated_at = ?3 \
             WHERE id = ?1 AND deleted_at IS NULL",
            params![r.webhook_id, gone_reason(at), at],
        )?;
        tx.execute(
            "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, locked_until = NULL, \
             error = ?2 WHERE webhook_id = ?1 AND status = 'pending'",
            params![
                r.webhook_id,
                "webhook deactivated: endpoint answered 410 Gone"
            ],
        )?;
    }
    hours.write(tx)
}

/// Rows of the due order a claim reads before looking endpoint by endpoint.
const HEAD_SCAN_MIN: usize = 256;
/// Rows in a row of endpoints without room after which a claim stops reading the head
/// and looks endpoint by endpoint (`claim_past_head`). Rows of one endpoint lie side by
/// side in the due order (one due time, one webhook: a whole ingest for an endpoint
/// catching up), so without this a claim read to its bound through rows it could not
/// take: two thirds of the writer's time while one endpoint drained a backlog.
const REFUSED_RUN: usize = 64;
const _: () = assert!(REFUSED_RUN < HEAD_SCAN_MIN);
/// Pending rows of one endpoint read to find its due ones (the rest wait for a retry).
const ENDPOINT_SCAN: i64 = 256;

/// Visits the endpoints with pending deliveries in id order (a loose scan of the
/// `(webhook_id, status, id)` index: one seek per endpoint) and offers each endpoint
/// with room its earliest due deliveries, until the claim is full.
fn claim_past_head(
    tx: &rusqlite::Transaction<'_>,
    claims: &Claims,
    picker: &mut ClaimPicker,
    c: &Claim,
) -> StoreResult<()> {
    let mut next_endpoint = tx.prepare_cached(
        "SELECT webhook_id FROM deliveries WHERE webhook_id > ?1 AND status = 'pending' \
         ORDER BY webhook_id LIMIT 1",
    )?;
    let mut due = tx.prepare_cached(
        "SELECT id FROM (SELECT id, next_attempt_at, locked_until FROM deliveries \
           WHERE webhook_id = ?1 AND status = 'pending' ORDER BY id LIMIT ?3) \
         WHERE next_attempt_at <= ?2 AND (locked_until IS NULL OR locked_until <= ?2) \
         ORDER BY next_attempt_at, id",
    )?;
    let mut after = i64::MIN;
    while !picker.is_full() {
        let Some(webhook_id) = next_endpoint
            .query_row(params![after], |row| row.get::<_, i64>(0))
            .optional()?
        else {
            break;
        };
        after = webhook_id;
        if !picker.has_room(webhook_id) {
            continue;
        }
        let mut rows = due.query(params![webhook_id, c.now_ms, ENDPOINT_SCAN])?;
        while let Some(row) = rows.next()? {
            let id = row.get(0)?;
            if claims.held(id, c.now_ms) {
                continue;
            }
            if !picker.offer(id, webhook_id) || !picker.has_room(webhook_id) {
                break;
            }
        }
    }
    Ok(())
}

/// Exploit bodies the writer built lately, kept across turns.
const BODIES_KEPT: usize = 64;

/// The bodies of the exploits delivered lately, by exploit and event. An ingest's
/// deliveries go in webhook by webhook, each webhook's side by side for up to
/// `WAVE_EXPLOITS` exploits, so every turn holds most of a wave's exploits and would
/// otherwise read and encode each of them again. An exploit's row never changes after
/// ingest (only its `fanout_after` mark) and its id is never reused, so a kept body
/// stays right; the oldest goes first once `BODIES_KEPT` are kept.
#[derive(Default)]
struct Bodies {
    by_exploit: FxHashMap<(i64, Arc<str>), Bytes>,
    order: VecDeque<(i64, Arc<str>)>,
}

impl Bodies {
    fn get(&self, exploit_id: i64, event: &Arc<str>) -> Option<Bytes> {
        self.by_exploit.get(&(exploit_id, event.clone())).cloned()
    }

    fn insert(&mut self, exploit_id: i64, event: &Arc<str>, body: Bytes) -> Bytes {
        if self.order.len() == BODIES_KEPT {
            if let Some(oldest) = self.order.pop_front() {
                self.by_exploit.remove(&oldest);
            }
        }
        let key = (exploit_id, event.clone());
        self.order.push_back(key.clone());
        self.by_exploit.insert(key, body.clone());
        body
    }
}

/// The webhook of claimed deliveries, read once per turn.
struct Target {
    url: Arc<str>,
    secret: Arc<str>,
    live: bool,
}

/// What a claimed delivery needs from its row.
struct Pending {
    webhook_id: i64,
    event: Arc<str>,
    payload: Option<String>,
    exploit_id: Option<i64>,
    attempts: i64,
    schedule_base: i64,
}

/// `Pending` from a row of `id, webhook_id, next_attempt_at, event, payload,
/// exploit_id, attempts, schedule_base`.
fn pending_row(row: &rusqlite::Row<'_>, events: &mut Vec<Arc<str>>) -> rusqlite::Result<Pending> {
    Ok(Pending {
        webhook_id: row.get(1)?,
        event: intern(events, row.get_ref(3)?.as_str()?),
        payload: row.get(4)?,
        exploit_id: row.get(5)?,
        attempts: row.get(6)?,
        schedule_base: row.get(7)?,
    })
}

/// What a read of the head of the due order found.
struct HeadScan {
    scanned: usize,
    /// It stopped at `REFUSED_RUN` rows in a row of endpoints without room.
    blocked: bool,
    cursor: Option<HeadCursor>,
}

/// Offers the due deliveries from `start` (the start of the due order if `None`) to
/// `picker`, passing over this process's, until the claim is full, `bound` rows were
/// read or `REFUSED_RUN` rows in a row had no room; and where the next claim may start
/// (`HeadCursor`).
fn scan_head(
    tx: &rusqlite::Transaction<'_>,
    claims: &Claims,
    picker: &mut ClaimPicker,
    c: &Claim,
    bound: usize,
    start: Option<HeadCursor>,
) -> StoreResult<HeadScan> {
    // Stopping as soon as the claim is full. The scan is bounded: behind a deep queue of
    // an endpoint without room (down, or slow) it would otherwise read the whole queue on
    // every turn. It reads only what the index holds: a column of the row would cost a
    // seek into the table for every row read, and most rows read are passed over (this
    // process's claims, rows without room). The claimed ones are read by id after.
    let mut from_start = tx.prepare_cached(
        "SELECT id, webhook_id, next_attempt_at FROM deliveries \
         WHERE status = 'pending' AND next_attempt_at <= ?1 \
           AND (locked_until IS NULL OR locked_until <= ?1) \
         ORDER BY next_attempt_at LIMIT ?2",
    )?;
    let mut from_cursor = tx.prepare_cached(
        "SELECT id, webhook_id, next_attempt_at FROM deliveries \
         WHERE status = 'pending' AND next_attempt_at <= ?1 \
           AND (locked_until IS NULL OR locked_until <= ?1) \
           AND (next_attempt_at, webhook_id) >= (?3, ?4) \
         ORDER BY next_attempt_at LIMIT ?2",
    )?;
    let mut rows = match start {
        None => from_start.query(params![c.now_ms, bound as i64])?,
        Some(h) => from_cursor.query(params![c.now_ms, bound as i64, h.due_ms, h.webhook_id])?,
    };
    let whole_read_at_ms = start.map_or(c.now_ms, |h| h.whole_read_at_ms);
    let mut scan = HeadScan {
        scanned: 0,
        blocked: false,
        cursor: start,
    };
    // Every row read so far was this process's, or taken now: the cursor may follow.
    let mut all_ours = true;
    let mut refused = 0usize;
    while let Some(row) = rows.next()? {
        scan.scanned += 1;
        let id = row.get(0)?;
        let webhook_id = row.get(1)?;
        let ours = claims.held(id, c.now_ms) || picker.has_taken(id) || {
            if picker.is_full() {
                break;
            }
            let room = picker.has_room(webhook_id);
            if room {
                refused = 0;
            } else {
                refused += 1;
                if refused >= REFUSED_RUN {
                    scan.blocked = true;
                    break;
                }
            }
            picker.offer(id, webhook_id);
            room
        };
        all_ours &= ours;
        if all_ours {
            scan.cursor = Some(HeadCursor {
                due_ms: row.get(2)?,
                webhook_id,
                whole_read_at_ms,
            });
        }
        if picker.is_full() {
            break;
        }
    }
    Ok(scan)
}

/// Claimed rows read back per statement.
const READ_CLAIMED: usize = 64;

/// Reads the claimed rows `?1` .. `?READ_CLAIMED` (NULL for none): one statement for a
/// chunk of them costs less than one per row.
fn read_claimed_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let ids: Vec<String> = (1..=READ_CLAIMED).map(|i| format!("?{i}")).collect();
        format!(
            "SELECT id, webhook_id, next_attempt_at, event, payload, exploit_id, attempts, \
               schedule_base FROM deliveries WHERE id IN ({})",
            ids.join(", ")
        )
    })
}

fn claim_due(
    tx: &rusqlite::Transaction<'_>,
    secrets: &SecretCodec,
    claims: &Claims,
    bodies: &mut Bodies,
    c: &Claim,
) -> StoreResult<(Vec<ClaimedDelivery>, Option<HeadCursor>)> {
    if c.limit == 0 {
        return Ok((Vec::new(), claims.head));
    }
    let mut picker = ClaimPicker::new(&c.room, c.per_endpoint, c.limit);
    let bound = (c.limit * 8).max(HEAD_SCAN_MIN) + claims.len();
    let start = claims.start(c.now_ms);
    let mut head = scan_head(tx, claims, &mut picker, c, bound, start)?;
    #[cfg(test)]
    claims.rows_read.set(claims.rows_read.get() + head.scanned);
    if start.is_some() && !picker.is_full() {
        // Short past the cursor: read from the start, for what came before it.
        head = scan_head(tx, claims, &mut picker, c, bound, None)?;
        #[cfg(test)]
        claims.rows_read.set(claims.rows_read.get() + head.scanned);
    }
    if !picker.is_full() && (head.scanned == bound || head.blocked) {
        // The head is endpoints without room: the others' due deliveries are found
        // endpoint by endpoint, so one deep queue cannot hide them.
        claim_past_head(tx, claims, &mut picker, c)?;
    }
    let cursor = head.cursor;
    let claimed = picker.picked();
    if claimed.is_empty() {
        return Ok((Vec::new(), cursor));
    }
    let mut read = tx.prepare_cached(read_claimed_sql())?;
    let mut webhook = tx.prepare_cached(
        "SELECT url, secret, is_active = 1 AND deleted_at IS NULL FROM webhooks WHERE id = ?1",
    )?;
    let mut exploit = tx.prepare_cached(
        "SELECT id, tx_hash, chain, protocol, amount_usd, timestamp, source, source_url, \
         category, description, detected_at FROM exploits WHERE id = ?1",
    )?;
    let mut stop = tx.prepare_cached(
        "UPDATE deliveries SET status = 'failed', next_attempt_at = NULL, locked_until = NULL, \
         error = 'webhook inactive' WHERE id = ?1",
    )?;
    // A turn often holds several deliveries for one webhook: each webhook is read and its
    // secret opened once. Bodies outlive the turn (`Bodies`).
    let mut targets: FxHashMap<i64, Target> = FxHashMap::default();
    let mut events = Vec::new();
    let mut rows_of: FxHashMap<i64, Pending> = FxHashMap::default();
    for ids in claimed.chunks(READ_CLAIMED) {
        for i in 0..READ_CLAIMED {
            read.raw_bind_parameter(i + 1, ids.get(i))?;
        }
        let mut rows = read.raw_query();
        while let Some(row) = rows.next()? {
            rows_of.insert(row.get(0)?, pending_row(row, &mut events)?);
        }
    }
    let mut out = Vec::with_capacity(claimed.len());
    for id in claimed {
        let Pending {
            webhook_id,
            event,
            payload,
            exploit_id,
            attempts,
            schedule_base,
        } = rows_of
            .remove(&id)
            .ok_or(rusqlite::Error::QueryReturnedNoRows)?;
        let target = match targets.entry(webhook_id) {
            Entry::Occupied(t) => t.into_mut(),
            Entry::Vacant(slot) => {
                let (url, sealed, live) = webhook.query_row(params![webhook_id], |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, bool>(2)?,
                    ))
                })?;
                let secret = if live {
                    secrets.decode(&sealed)?.into()
                } else {
                    Arc::from("")
                };
                slot.insert(Target {
                    url: url.into(),
                    secret,
                    live,
                })
            }
        };
        if !target.live {
            stop.execute(params![id])?;
            continue;
        }
        let body = match (payload, exploit_id) {
            (Some(p), _) => Bytes::from(p),
            (None, Some(eid)) => match bodies.get(eid, &event) {
                Some(b) => b,
                None => {
                    let e = exploit.query_row(params![eid], |row| {
                        Ok(Exploit {
                            id: row.get(0)?,
                            tx_hash: row.get(1)?,
                            chain: row.get(2)?,
                            protocol: row.get(3)?,
                            amount_usd: row.get(4)?,
                            timestamp_ms: row.get(5)?,
                            source: row.get(6)?,
                            source_url: row.get(7)?,
                            category: row.get(8)?,
                            description: row.get(9)?,
                            detected_at_ms: row.get(10)?,
                        })
                    })?;
                    bodies.insert(eid, &event, Bytes::from(encode_event(&event, &e)))
                }
            },
            (None, None) => {
                return Err(StoreError::Corrupt(
                    "delivery without payload or exploit".into(),
                ))
            }
        };
        out.push(ClaimedDelivery {
            id,
            webhook_id,
            url: target.url.clone(),
            secret: target.secret.clone(),
            body,
            event,
            attempt: attempts + 1,
            round_attempt: attempts - schedule_base + 1,
        });
    }
    Ok((out, cursor))
}

/// Rows an ingest chunk writes before it commits (part way through an exploit's
/// deliveries only in the process that owns the workers: `Writer::splits`). A chunk takes
/// a few milliseconds, the longest a dispatcher turn waits behind an ingest.
const INGEST_CHUNK_ROWS: usize = 1024;
/// Rows a chunk holds at least before a waiting command ends it: committing every
/// exploit of one delivery each would cost a commit per row.
const INGEST_CHUNK_MIN_ROWS: usize = 256;
/// Exploits of one ingest whose deliveries go in side by side (`Wave`), in the process
/// that may split them. Each holds the ids of its webhooks meanwhile: 1.3 MB for a wave
/// of exploits matching 10,000 webhooks each.
const WAVE_EXPLOITS: usize = 16;

/// The webhooks an exploit may match, with their filters.
fn ingest_targets(conn: &Connection) -> StoreResult<Vec<(i64, Filters)>> {
    let mut st = conn.prepare_cached(
        "SELECT id, min_amount_usd, chains, protocols, categories FROM webhooks \
         WHERE deleted_at IS NULL AND is_active = 1 ORDER BY id",
    )?;
    let mut rows = st.query([])?;
    let mut targets = Vec::new();
    while let Some(row) = rows.next()? {
        targets.push((
            row.get(0)?,
            Filters {
                min_amount_usd: row.get(1)?,
                chains: super::decode_list(row.get(2)?)?,
                protocols: super::decode_list(row.get(3)?)?,
                categories: super::decode_list(row.get(4)?)?,
            },
        ));
    }
    Ok(targets)
}

/// Deliveries one ingest statement inserts (the 3 shared parameters and one per row stay
/// far under SQLite's 32,766).
const INSERT_GROUP: usize = 64;

/// `INSERT_GROUP` deliveries: `?1` the event, `?2` the time, then a webhook and an
/// exploit per row.
///
/// `OR ROLLBACK`: a statement that writes many rows and may fail part way (a NOT NULL or
/// CHECK constraint) is given a statement journal, into which SQLite copies every page
/// before the statement first changes it, so that it can undo the statement alone: for
/// rows of 64 webhooks, some 60 pages of 4 KiB per statement, 3% of the writer's
/// instructions. No constraint can fail here, and if one did the whole transaction
/// would be given up anyway (the error ends the ingest), which is what `OR ROLLBACK`
/// does without the journal.
fn insert_group_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| {
        let rows: Vec<String> = (0..INSERT_GROUP)
            .map(|i| format!("(?{}, ?{}, ?1, 'pending', ?2, ?2)", 3 + 2 * i, 4 + 2 * i))
            .collect();
        format!(
            "INSERT OR ROLLBACK INTO deliveries (webhook_id, exploit_id, event, status, next_attempt_at, \
             created_at) VALUES {}",
            rows.join(", ")
        )
    })
}

/// Stores one exploit, unless a duplicate; the deliveries it is to get, inserted by
/// `Fanout::step`.
fn store_exploit(
    tx: &rusqlite::Transaction<'_>,
    targets: &[(i64, Filters)],
    e: &NewExploit,
    now: i64,
) -> StoreResult<(IngestOutcome, Option<Fanout>)> {
    let mut insert_exploit = tx.prepare_cached(
        "INSERT INTO exploits (dedup_key, tx_hash, chain, protocol, amount_usd, timestamp, \
         source, source_url, category, description, detected_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) \
         ON CONFLICT (dedup_key) DO NOTHING RETURNING id",
    )?;
    let key = exploit_dedup_key(&e.chain, &e.tx_hash);
    let inserted: Option<i64> = insert_exploit
        .query_row(
            params![
                key,
                e.tx_hash,
                e.chain,
                e.protocol,
                e.amount_usd,
                e.timestamp_ms,
                e.source,
                e.source_url,
                e.category,
                e.description,
                now
            ],
            |row| row.get(0),
        )
        .optional()?;
    let Some(id) = inserted else {
        let mut existing = tx.prepare_cached("SELECT id FROM exploits WHERE dedup_key = ?1")?;
        let id: i64 = existing.query_row(params![key], |row| row.get(0))?;
        return Ok((
            IngestOutcome {
                id,
                duplicate: true,
                matched: 0,
            },
            None,
        ));
    };
    let webhooks = matching(targets, &e.facts(), i64::MIN);
    let outcome = IngestOutcome {
        id,
        duplicate: false,
        matched: webhooks.len() as u32,
    };
    let fanout = (!webhooks.is_empty()).then_some(Fanout {
        exploit_id: id,
        webhooks,
        done: 0,
        marked: false,
    });
    Ok((outcome, fanout))
}

/// The webhooks, of id above `after`, that an exploit with `facts` goes to, in id order.
fn matching(targets: &[(i64, Filters)], facts: &ExploitFacts<'_>, after: i64) -> Vec<i64> {
    targets
        .iter()
        .filter(|(webhook_id, filters)| *webhook_id > after && filters.matches(facts))
        .map(|(webhook_id, _)| *webhook_id)
        .collect()
}

/// Inserts the deliveries still to come of exploits whose ingest stopped part way through
/// them (the process was killed between two chunks); how many exploits. The webhooks
/// they go to are matched again, past the last one given its delivery, and the rows get
/// the time of the exploit's ingest, as their siblings did.
fn finish_fanouts(conn: &mut Connection) -> StoreResult<usize> {
    type Unfinished = (i64, i64, String, String, Option<String>, f64, i64);
    let unfinished: Vec<Unfinished> = conn
        .prepare(
            "SELECT id, fanout_after, chain, protocol, category, amount_usd, detected_at \
             FROM exploits WHERE fanout_after IS NOT NULL ORDER BY id",
        )?
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    if unfinished.is_empty() {
        return Ok(0);
    }
    let targets = ingest_targets(conn)?;
    for (exploit_id, after, chain, protocol, category, amount_usd, ingested_at) in &unfinished {
        let facts = ExploitFacts {
            chain,
            protocol,
            category: category.as_deref(),
            amount_usd: *amount_usd,
        };
        let webhooks = matching(&targets, &facts, *after);
        let deliveries = webhooks.len();
        let mut wave = Wave {
            fanouts: vec![Fanout {
                exploit_id: *exploit_id,
                webhooks,
                done: 0,
                marked: true,
            }],
        };
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // (With no webhook left to give a delivery, one step only clears the mark.)
        while !wave.is_empty() {
            wave.step(&tx, *ingested_at)?;
        }
        tx.commit()?;
        tracing::info!(
            exploit_id,
            deliveries,
            "queued the rest of an exploit's deliveries"
        );
    }
    Ok(unfinished.len())
}

/// An exploit stored whose deliveries are being inserted, in webhook id order.
struct Fanout {
    exploit_id: i64,
    webhooks: Vec<i64>,
    /// How many of `webhooks` have their delivery.
    done: usize,
    /// Its row holds how far its deliveries have got: it outlasted a chunk.
    marked: bool,
}

impl Fanout {
    fn is_done(&self) -> bool {
        self.done == self.webhooks.len()
    }

    /// Before a chunk's commit with deliveries still to insert: where to go on from.
    fn mark(&mut self, tx: &rusqlite::Transaction<'_>) -> StoreResult<()> {
        let after = match self.done {
            0 => i64::MIN,
            n => self.webhooks[n - 1],
        };
        tx.prepare_cached("UPDATE exploits SET fanout_after = ?2 WHERE id = ?1")?
            .execute(params![self.exploit_id, after])?;
        self.marked = true;
        Ok(())
    }

    /// All its deliveries are in.
    fn finish(&self, tx: &rusqlite::Transaction<'_>) -> StoreResult<()> {
        if self.marked {
            tx.prepare_cached("UPDATE exploits SET fanout_after = NULL WHERE id = ?1")?
                .execute(params![self.exploit_id])?;
        }
        Ok(())
    }
}

/// Exploits whose deliveries go in together, by webhook: the next group of rows is the
/// next webhooks of them all, each webhook's deliveries side by side. Every index keyed
/// by webhook (`deliveries_by_webhook`, the pending one) takes a fan-out's entries at
/// each webhook's place, one page per webhook once webhooks have some history; side by
/// side, a wave of N exploits writes each such page once for N rows in a chunk.
#[derive(Default)]
struct Wave {
    fanouts: Vec<Fanout>,
}

impl Wave {
    fn is_empty(&self) -> bool {
        self.fanouts.is_empty()
    }

    /// Inserts the next deliveries: a group of `INSERT_GROUP` in one statement (a
    /// statement's own cost, its cursors on the table and each index opened and closed,
    /// was a fifth of a row's), or the last few one by one. How many. A fan-out whose
    /// deliveries are all in leaves the wave.
    fn step(&mut self, tx: &rusqlite::Transaction<'_>, now: i64) -> StoreResult<usize> {
        // The next webhook of the wave, on a tie the earlier exploit's.
        let mut next: Vec<usize> = self.fanouts.iter().map(|f| f.done).collect();
        let mut pairs: Vec<(i64, i64)> = Vec::with_capacity(INSERT_GROUP);
        while pairs.len() < INSERT_GROUP {
            let mut lowest: Option<(i64, usize)> = None;
            for (i, f) in self.fanouts.iter().enumerate() {
                if let Some(&webhook_id) = f.webhooks.get(next[i]) {
                    if lowest.is_none_or(|(w, _)| webhook_id < w) {
                        lowest = Some((webhook_id, i));
                    }
                }
            }
            let Some((webhook_id, i)) = lowest else {
                break;
            };
            next[i] += 1;
            pairs.push((webhook_id, self.fanouts[i].exploit_id));
        }
        if pairs.len() == INSERT_GROUP {
            let mut group = tx.prepare_cached(insert_group_sql())?;
            group.raw_bind_parameter(1, EVENT_EXPLOIT_DETECTED)?;
            group.raw_bind_parameter(2, now)?;
            for (i, (webhook_id, exploit_id)) in pairs.iter().enumerate() {
                group.raw_bind_parameter(3 + 2 * i, webhook_id)?;
                group.raw_bind_parameter(4 + 2 * i, exploit_id)?;
            }
            group.raw_execute()?;
        } else if !pairs.is_empty() {
            // (One `INSERT ... SELECT ... FROM json_each(?)` per exploit was slower for
            // exploits of 50 deliveries: filling the `logs` bench took 40 s against 30 s.)
            let mut one = tx.prepare_cached(
                "INSERT INTO deliveries (webhook_id, exploit_id, event, status, next_attempt_at, created_at) \
                 VALUES (?3, ?4, ?1, 'pending', ?2, ?2)",
            )?;
            for (webhook_id, exploit_id) in &pairs {
                one.execute(params![EVENT_EXPLOIT_DETECTED, now, webhook_id, exploit_id])?;
            }
        }
        for (f, done) in self.fanouts.iter_mut().zip(next) {
            f.done = done;
        }
        for f in self.fanouts.iter().filter(|f| f.is_done()) {
            f.finish(tx)?;
        }
        self.fanouts.retain(|f| !f.is_done());
        Ok(pairs.len())
    }

    /// Before a chunk's commit with deliveries still to insert: where each fan-out goes on
    /// from.
    fn mark(&mut self, tx: &rusqlite::Transaction<'_>) -> StoreResult<()> {
        for f in &mut self.fanouts {
            f.mark(tx)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests_support {
    //! Fixtures of the writer's tests and timings.

    use crate::domain::filter::Filters;
    use crate::domain::tier::Tier;
    use crate::domain::webhook::{NewWebhook, WebhookUrl};
    use crate::store::open;

    use super::*;

    pub(super) fn exploit(n: usize) -> NewExploit {
        NewExploit {
            tx_hash: format!("0x{n:064x}"),
            chain: "ethereum".into(),
            protocol: "p".into(),
            amount_usd: 1e6,
            timestamp_ms: 1_700_000_000_000,
            source: None,
            source_url: None,
            category: None,
            description: None,
        }
    }

    /// A migrated store at `path` with `webhooks` webhooks (a multiple of 50) matching
    /// every exploit.
    pub(super) async fn store_with_webhooks(
        path: &Path,
        webhooks: usize,
    ) -> Arc<dyn crate::store::Store> {
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let store = open(&url, 4, SecretCodec::plaintext()).await.unwrap();
        store.migrate().await.unwrap();
        for u in 0..webhooks / 50 {
            let user = store
                .create_user(&format!("u{u}"), Tier::Enterprise, &format!("hash{u}"))
                .await
                .unwrap();
            for i in 0..50 {
                let new = NewWebhook {
                    name: format!("w{u}-{i}"),
                    url: WebhookUrl::parse(&format!("http://127.0.0.1:9/{u}/{i}"), true).unwrap(),
                    filters: Filters::default(),
                    is_active: true,
                    secret: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".into(),
                };
                store
                    .create_webhook(user.id, Tier::Enterprise, &new)
                    .await
                    .unwrap();
            }
        }
        store
    }

    /// The record of a first attempt that succeeded at `now`.
    pub(super) fn success(d: &ClaimedDelivery, now: i64) -> AttemptRecord {
        AttemptRecord {
            delivery_id: d.id,
            webhook_id: d.webhook_id,
            attempt: d.attempt,
            started_at_ms: now,
            latency_ms: 3,
            status_code: Some(200),
            error_kind: None,
            error: None,
            response_body: Some("ok".into()),
            result: AttemptResult::Succeeded,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::tests_support::*;
    use super::*;

    /// Allocations a connection's statements wanted from its lookaside memory and had
    /// to take from `malloc` instead, after ingesting 20 exploits for 100 webhooks and
    /// delivering them in turns of 80.
    fn lookaside_misses(path: &Path, widened: bool) -> i32 {
        let mut conn = Connection::open(path).unwrap();
        if widened {
            widen_lookaside(&conn).unwrap();
        }
        conn.pragma_update(None, "foreign_keys", false).unwrap();
        let targets = ingest_targets(&conn).unwrap();
        let tx = conn.transaction().unwrap();
        for n in 0..20 {
            let (_, fanout) = store_exploit(&tx, &targets, &exploit(n), 1).unwrap();
            let mut wave = Wave::default();
            wave.fanouts.extend(fanout);
            while !wave.is_empty() {
                wave.step(&tx, 1).unwrap();
            }
        }
        tx.commit().unwrap();
        let (secrets, claims) = (SecretCodec::plaintext(), Claims::default());
        let mut bodies = Bodies::default();
        let mut records = Vec::new();
        loop {
            let claim = Claim {
                now_ms: 2,
                lease_until_ms: 60_000,
                limit: 80,
                per_endpoint: 16,
                room: Vec::new(),
            };
            let (claimed, _) = turn(
                &mut conn,
                &secrets,
                &claims,
                &mut bodies,
                &records,
                Some(&claim),
            )
            .unwrap();
            if claimed.is_empty() {
                break;
            }
            records = claimed.iter().map(|d| success(d, 2)).collect();
        }
        let (mut now, mut high) = (0, 0);
        // SAFETY: an open handle used by this thread only, and two valid out-pointers.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_LOOKASIDE_MISS_FULL,
                &mut now,
                &mut high,
                0,
            )
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        high
    }

    /// The bundled SQLite is built with the options of `.cargo/config.toml`: no global
    /// memory statistics, and a page cache per connection rather than one process-wide
    /// cache behind a mutex.
    #[test]
    fn sqlite_is_built_without_the_global_mutexes() {
        let conn = Connection::open_in_memory().unwrap();
        let mut st = conn.prepare("PRAGMA compile_options").unwrap();
        let options: Vec<String> = st
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"),
            "{options:?}"
        );
        assert!(
            !options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"),
            "{options:?}"
        );
    }

    /// The writer's connection serves its statements' cursors and values from lookaside
    /// memory, which SQLite's default buffer (taken up by the cached statements) did not.
    #[tokio::test]
    async fn the_writer_connection_allocates_from_its_lookaside() {
        let dir = tempfile::tempdir().unwrap();
        let (default, widened) = (dir.path().join("d.db"), dir.path().join("w.db"));
        drop(store_with_webhooks(&default, 100).await);
        drop(store_with_webhooks(&widened, 100).await);
        let default = lookaside_misses(&default, false);
        let widened = lookaside_misses(&widened, true);
        assert!(
            default > 1000,
            "the default buffer missed only {default} times: the test no longer shows the difference"
        );
        assert!(
            widened < default / 100,
            "{widened} misses with the wider buffer against {default} without"
        );
    }

    /// Ingests `exploits` one by one through a hot path of its own on a fresh database
    /// with 100 webhooks, delivering each batch (claimed, then recorded as a success)
    /// before the next: a commit stream with no other connection around. Returns the
    /// WAL file's size afterwards, which is the most it ever held (SQLite writes a
    /// restarted WAL from its beginning and never shrinks the file).
    async fn wal_size_after_a_stream_of_commits(wal_bytes_max: u64, exploits: usize) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_webhooks(&path, 100).await;
        drop(store);
        // The background checkpointer ends at its next tick once the store is gone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hot = HotPath::open(&path, SecretCodec::plaintext(), wal_bytes_max).unwrap();
        let mut records = Vec::new();
        for n in 0..exploits {
            let ingested = hot.ingest(&[exploit(n)]).await.unwrap();
            assert_eq!(ingested[0].matched, 100);
            let now = now_ms();
            let claim = Claim {
                now_ms: now + 1000,
                lease_until_ms: now + 60_000,
                limit: 1000,
                per_endpoint: 1000,
                room: Vec::new(),
            };
            let claimed = hot.turn(&records, Some(claim)).await.unwrap();
            assert_eq!(claimed.len(), 100);
            records = claimed.iter().map(|d| success(d, now)).collect();
        }
        hot.turn(&records, None).await.unwrap();
        std::fs::metadata(beside(&path, "-wal")).unwrap().len()
    }

    /// Under a stream of commits that never leaves the WAL fully copied, the hot path's
    /// own checkpoint lets the WAL start again from its beginning: the file stays near
    /// the bound, where without one it holds every commit of the stream.
    #[tokio::test]
    async fn the_hot_path_keeps_the_wal_near_its_bound_under_a_stream_of_commits() {
        const PAGE: u64 = crate::store::sqlite::PAGE_SIZE as u64;
        const FRAME: u64 = PAGE + 24;
        const BOUND: u64 = 64;
        let unbounded = wal_size_after_a_stream_of_commits(0, 150).await;
        let bounded = wal_size_after_a_stream_of_commits(BOUND * PAGE, 150).await;
        assert!(
            unbounded > 20 * BOUND * FRAME,
            "the stream wrote only {unbounded} bytes of WAL: too little to test the bound"
        );
        // The bound, plus the commit that crossed it.
        assert!(
            bounded < 4 * BOUND * FRAME,
            "the WAL grew to {bounded} bytes with a bound of {BOUND} frames"
        );
    }

    /// The record of attempt `n` of `d`, a failure unless `ok`.
    fn attempt(d: &ClaimedDelivery, n: i64, ok: bool) -> AttemptRecord {
        AttemptRecord {
            attempt: n,
            started_at_ms: 1_000 * n,
            latency_ms: n,
            status_code: Some(if ok { 200 } else { 500 }),
            error_kind: (!ok).then_some("http_status"),
            error: (!ok).then(|| format!("HTTP 500 #{n}")),
            response_body: Some(format!("answer {n}")),
            result: if ok {
                AttemptResult::Succeeded
            } else {
                AttemptResult::RetryAt(0)
            },
            ..success(d, 0)
        }
    }

    /// A store at `path` with one exploit ingested and two of its deliveries claimed.
    async fn two_claimed(path: &Path) -> (Arc<dyn crate::store::Store>, Vec<ClaimedDelivery>) {
        let store = store_with_webhooks(path, 50).await;
        store.ingest_exploits(&[exploit(1)]).await.unwrap();
        let now = now_ms();
        let claimed = store
            .claim_due_deliveries(now, now + 60_000, 2, 16, &[])
            .await
            .unwrap();
        (store, claimed)
    }

    /// The row holds the latest attempt and the history the earlier ones; the log reads
    /// them back as one list in order, for a row written before that layout (all its
    /// attempts in the history) too.
    #[tokio::test]
    async fn the_attempt_log_joins_the_history_and_the_latest_attempt_in_the_row() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let (store, claimed) = two_claimed(&path).await;
        let (d, old) = (&claimed[0], &claimed[1]);
        let history = |id: i64| -> i64 {
            Connection::open(&path)
                .unwrap()
                .query_row(
                    "SELECT COUNT(*) FROM delivery_attempts WHERE delivery_id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap()
        };
        let log = |d: &ClaimedDelivery| {
            let (store, webhook_id, id) = (store.clone(), d.webhook_id, d.id);
            async move {
                store
                    .delivery_detail(webhook_id, id)
                    .await
                    .map(|detail| detail.attempts)
            }
        };

        store.record_attempts(&[attempt(d, 1, true)]).await.unwrap();
        assert_eq!(
            history(d.id),
            0,
            "a first attempt is written in the row only"
        );
        let one = log(d).await.unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(
            (
                one[0].attempt,
                one[0].started_at_ms,
                one[0].status_code,
                one[0].latency_ms,
                one[0].response_body.as_deref()
            ),
            (1, 1_000, Some(200), 1, Some("answer 1"))
        );
        assert_eq!(
            (one[0].error_kind.as_deref(), one[0].error.as_deref()),
            (None, None)
        );

        // A row as the layout before left it: two attempts, both in the history.
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute("UPDATE deliveries SET attempts = 2 WHERE id = ?1", [old.id])
                .unwrap();
            for n in 1..=2 {
                conn.execute(
                    "INSERT INTO delivery_attempts (delivery_id, attempt, started_at, status_code, \
                     latency_ms, error_kind, error, response_body) VALUES (?1, ?2, ?2 * 1000, 500, \
                     ?2, 'http_status', 'HTTP 500 #' || ?2, 'answer ' || ?2)",
                    [old.id, n],
                )
                .unwrap();
            }
        }
        for n in 3..=4 {
            store
                .record_attempts(&[attempt(old, n, n == 4)])
                .await
                .unwrap();
        }
        assert_eq!(
            history(old.id),
            3,
            "attempt 3 moved to the history by attempt 4"
        );
        let four = log(old).await.unwrap();
        let seen: Vec<_> = four
            .iter()
            .map(|a| {
                (
                    a.attempt,
                    a.started_at_ms,
                    a.status_code,
                    a.latency_ms,
                    a.error.clone(),
                    a.response_body.clone(),
                )
            })
            .collect();
        let expected: Vec<_> = (1..=4)
            .map(|n: i64| {
                (
                    n,
                    1_000 * n,
                    Some(if n == 4 { 200 } else { 500 }),
                    n,
                    (n < 4).then(|| format!("HTTP 500 #{n}")),
                    Some(format!("answer {n}")),
                )
            })
            .collect();
        assert_eq!(seen, expected);
        assert_eq!(four[2].error_kind.as_deref(), Some("http_status"));
        // The writer checks no foreign keys (it opens its connection without them): what
        // it wrote still refers only to rows that exist.
        let dangling: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(dangling, 0);
    }

    /// Ingests that wait for the WAL sync together are each answered with their own
    /// outcomes, and each exploit's deliveries are there.
    #[tokio::test]
    async fn ingests_synced_together_each_get_their_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_webhooks(&path, 50).await;
        let calls: Vec<_> = (0..40)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move { store.ingest_exploits(&[exploit(n % 20)]).await })
            })
            .collect();
        let mut ids = std::collections::HashMap::new();
        let mut duplicates = 0;
        for (n, call) in calls.into_iter().enumerate() {
            let outcome = call.await.unwrap().unwrap();
            assert_eq!(outcome.len(), 1);
            if outcome[0].duplicate {
                duplicates += 1;
            } else {
                assert_eq!(outcome[0].matched, 50);
            }
            // The two calls for one exploit name the same row.
            let id = *ids.entry(n % 20).or_insert(outcome[0].id);
            assert_eq!(outcome[0].id, id, "exploit {}", n % 20);
        }
        assert_eq!(duplicates, 20);
        let rows: i64 = Connection::open(&path)
            .unwrap()
            .query_row("SELECT COUNT(*) FROM deliveries", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1000);
    }

    /// The dispatcher is woken as soon as an ingest's deliveries are committed, before
    /// the ingest is answered (after the WAL's sync); an ingest of a duplicate, which
    /// queues nothing, wakes no one.
    #[tokio::test]
    async fn the_dispatcher_is_woken_before_the_ingest_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_webhooks(&path, 50).await;
        let wake = Arc::new(Notify::new());
        store.subscribe_wakeups(wake.clone()).await.unwrap();
        let first = [exploit(1)];
        let ingest = store.ingest_exploits(&first);
        tokio::pin!(ingest);
        tokio::select! {
            biased;
            _ = wake.notified() => {}
            answer = &mut ingest => panic!("answered before any wake-up: {answer:?}"),
        }
        assert_eq!(ingest.await.unwrap()[0].matched, 50);
        // The wake-up also left a permit for a dispatcher that was not waiting.
        wake.notified().await;

        let again = store.ingest_exploits(&[exploit(1)]).await.unwrap();
        assert!(again[0].duplicate);
        let woken = tokio::time::timeout(Duration::from_millis(100), wake.notified()).await;
        assert!(woken.is_err(), "a duplicate woke the dispatcher");
    }

    /// Two attempts of one delivery in one batch (a lease that ran out while the first
    /// was in flight): the second moves the first to the history, in the same turn.
    /// An attempt of a delivery that is gone writes nothing.
    #[tokio::test]
    async fn two_attempts_of_one_delivery_in_one_batch_both_reach_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let (store, claimed) = two_claimed(&path).await;
        let (d, gone) = (&claimed[0], &claimed[1]);
        Connection::open(&path)
            .unwrap()
            .execute("DELETE FROM deliveries WHERE id = ?1", [gone.id])
            .unwrap();

        store
            .record_attempts(&[
                attempt(d, 1, false),
                attempt(gone, 1, true),
                attempt(d, 2, true),
            ])
            .await
            .unwrap();

        let log = store.delivery_detail(d.webhook_id, d.id).await.unwrap();
        let seen: Vec<_> = log
            .attempts
            .iter()
            .map(|a| (a.attempt, a.started_at_ms, a.status_code, a.error.clone()))
            .collect();
        assert_eq!(
            seen,
            [
                (1, 1_000, Some(500), Some("HTTP 500 #1".to_string())),
                (2, 2_000, Some(200), None)
            ]
        );
        let conn = Connection::open(&path).unwrap();
        let orphans: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM delivery_attempts WHERE delivery_id = ?1",
                [gone.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(orphans, 0);
        let triggers: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'trigger'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(triggers, 0, "the writer keeps the history, not a trigger");
    }

    /// Ingests `batch` with a claim for everything due queued behind it before its first
    /// row is written (another connection's write lock holds the ingest back until then,
    /// however the threads happen to be scheduled). Returns the ingest's answer, what the
    /// claim took, and whether the claim was answered first.
    async fn ingest_with_a_claim_queued(
        store: &Arc<dyn crate::store::Store>,
        path: &Path,
        batch: Vec<NewExploit>,
    ) -> (Vec<IngestOutcome>, Vec<ClaimedDelivery>, bool) {
        let now = now_ms();
        let blocker = Connection::open(path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let ingest = tokio::spawn({
            let store = store.clone();
            async move {
                let r = store.ingest_exploits(&batch).await;
                (r, Instant::now())
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let claim = tokio::spawn({
            let store = store.clone();
            async move {
                let r = store
                    .claim_due_deliveries(now + 1000, now + 60_000, 5000, 5000, &[])
                    .await;
                (r, Instant::now())
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        blocker.execute_batch("COMMIT").unwrap();
        let (ingested, ingest_done) = ingest.await.unwrap();
        let (claimed, claim_done) = claim.await.unwrap();
        (
            ingested.unwrap(),
            claimed.unwrap(),
            claim_done < ingest_done,
        )
    }

    /// The exploit ids of claimed deliveries.
    fn exploit_ids(claimed: &[ClaimedDelivery]) -> std::collections::BTreeSet<i64> {
        claimed
            .iter()
            .map(|d| {
                let v: serde_json::Value = serde_json::from_slice(&d.body).unwrap();
                v["exploit"]["id"].as_i64().unwrap()
            })
            .collect()
    }

    async fn claim_the_rest(store: &Arc<dyn crate::store::Store>) -> usize {
        let now = now_ms();
        store
            .claim_due_deliveries(now + 1000, now + 60_000, 5000, 5000, &[])
            .await
            .unwrap()
            .len()
    }

    /// A turn queued behind an ingest writes the outcomes that came back while it
    /// waited, not only those in hand when it was asked for, and claims one more
    /// delivery for each of them.
    #[tokio::test]
    async fn a_turn_takes_the_outcomes_that_arrive_while_it_waits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_webhooks(&path, 50).await;
        store.ingest_exploits(&[exploit(1)]).await.unwrap();
        let now = now_ms();
        let claimed = store
            .claim_due_deliveries(now, now + 60_000, 10, 16, &[])
            .await
            .unwrap();
        assert_eq!(claimed.len(), 10);
        let outcomes = Arc::new(Outcomes::default());
        outcomes.push(success(&claimed[0], now));

        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let ingest = tokio::spawn({
            let store = store.clone();
            async move { store.ingest_exploits(&[exploit(2)]).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let turn = tokio::spawn({
            let (store, outcomes) = (store.clone(), outcomes.clone());
            let claim = TurnClaim {
                now_ms: now + 1000,
                lease_until_ms: now + 60_000,
                free: 2,
                most: 256,
                per_endpoint: 16,
                room: Vec::new(),
            };
            async move { store.turn(&outcomes, 512, Some(claim)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        for d in &claimed[1..] {
            outcomes.push(success(d, now));
        }
        blocker.execute_batch("COMMIT").unwrap();
        ingest.await.unwrap().unwrap();
        let turned = turn.await.unwrap().unwrap();

        assert_eq!(turned.recorded, 10, "the turn wrote what arrived meanwhile");
        assert!(outcomes.is_empty());
        assert_eq!(turned.limit, 12);
        assert_eq!(turned.claimed.len(), 12);
        for d in &claimed {
            let detail = store.delivery_detail(d.webhook_id, d.id).await.unwrap();
            assert_eq!(
                detail.delivery.status,
                crate::store::DeliveryStatus::Succeeded
            );
        }
    }

    /// A batch of four exploits for 700 webhooks is stored in chunks; a claim sent while
    /// the first exploit is written ends that chunk once it holds 256 rows, part way
    /// through the exploit, and sees the deliveries written so far. The answer still holds
    /// every exploit, a duplicate inside the batch included, every delivery is there once
    /// afterwards, and no exploit is left marked unfinished.
    #[tokio::test]
    async fn a_large_ingest_commits_in_chunks_with_turns_between_even_inside_its_exploits() {
        const WEBHOOKS: usize = 700;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_webhooks(&path, WEBHOOKS).await;
        store.take_workers().unwrap();
        let batch = vec![exploit(1), exploit(2), exploit(3), exploit(1), exploit(4)];
        let (outcomes, claimed, claim_first) =
            ingest_with_a_claim_queued(&store, &path, batch).await;

        assert_eq!(outcomes.len(), 5);
        let matched: Vec<u32> = outcomes.iter().map(|o| o.matched).collect();
        assert_eq!(matched, [700, 700, 700, 0, 700]);
        assert!(outcomes[3].duplicate && outcomes[3].id == outcomes[0].id);
        assert!(claim_first, "the claim ran before the ingest ended");
        // Without the claim the first chunk would be 1,024 rows and more; the claim waited
        // for the exploits' rows and four groups of 64 deliveries. The four new exploits
        // go in as one wave, by webhook: the first 64 webhooks got all four.
        assert_eq!(claimed.len(), 4 * INSERT_GROUP, "{} claimed", claimed.len());
        let new: std::collections::BTreeSet<i64> =
            [0, 1, 2, 4].iter().map(|&i| outcomes[i].id).collect();
        assert_eq!(exploit_ids(&claimed), new);
        let mut per_webhook: std::collections::BTreeMap<i64, usize> = Default::default();
        for d in &claimed {
            *per_webhook.entry(d.webhook_id).or_default() += 1;
        }
        assert_eq!(per_webhook.len(), INSERT_GROUP);
        assert!(per_webhook.values().all(|&n| n == 4), "{per_webhook:?}");
        // Each webhook's deliveries in the order of their exploits.
        let mut by_id: Vec<&ClaimedDelivery> = claimed.iter().collect();
        by_id.sort_by_key(|d| d.id);
        for webhook_id in per_webhook.keys() {
            let order: Vec<i64> = by_id
                .iter()
                .filter(|d| d.webhook_id == *webhook_id)
                .map(|d| exploit_ids(&[(*d).clone()]).into_iter().next().unwrap())
                .collect();
            assert!(
                order.is_sorted(),
                "webhook {webhook_id}: exploits {order:?}"
            );
        }

        // All of it is there afterwards, and claimable once.
        assert_eq!(claim_the_rest(&store).await, 4 * WEBHOOKS - claimed.len());
        let conn = Connection::open(&path).unwrap();
        let unfinished: i64 = conn
            .query_row(
                "SELECT count(*) FROM exploits WHERE fanout_after IS NOT NULL",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(unfinished, 0);
    }

    /// An ingest killed between two chunks of an exploit's deliveries leaves the exploit
    /// marked with how far they got; the writer's next start inserts the rest, each
    /// matching webhook getting exactly one delivery, at the exploit's ingest time, and
    /// clears the mark.
    #[tokio::test]
    async fn an_exploit_cut_off_part_way_through_its_deliveries_gets_the_rest_at_the_next_start() {
        const WEBHOOKS: usize = 300;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        drop(store_with_webhooks(&path, WEBHOOKS).await);
        // What the writer leaves committed when killed after its first chunk: the exploit's
        // row, two groups of its deliveries, and the mark.
        let ingested_at = 1_700_000_000_000;
        let (exploit_id, first_part) = {
            let mut conn = Connection::open(&path).unwrap();
            let targets = ingest_targets(&conn).unwrap();
            let tx = conn.transaction().unwrap();
            let (outcome, fanout) = store_exploit(&tx, &targets, &exploit(7), ingested_at).unwrap();
            let mut wave = Wave::default();
            wave.fanouts.extend(fanout);
            assert_eq!(wave.fanouts[0].webhooks.len(), WEBHOOKS);
            wave.step(&tx, ingested_at).unwrap();
            wave.step(&tx, ingested_at).unwrap();
            wave.mark(&tx).unwrap();
            tx.commit().unwrap();
            (outcome.id, wave.fanouts[0].done)
        };
        assert_eq!(first_part, 2 * INSERT_GROUP);
        let count = |sql: &str| -> i64 {
            Connection::open(&path)
                .unwrap()
                .query_row(sql, params![exploit_id], |r| r.get(0))
                .unwrap()
        };
        let per_exploit = "SELECT count(*) FROM deliveries WHERE exploit_id = ?1";
        assert_eq!(count(per_exploit), first_part as i64);

        let hot = HotPath::open(&path, SecretCodec::plaintext(), 32 << 20).unwrap();
        assert_eq!(hot.own_workers().unwrap().await.unwrap().unwrap(), 1);
        assert_eq!(count(per_exploit), WEBHOOKS as i64);
        assert_eq!(
            count(
                "SELECT count(DISTINCT webhook_id) FROM deliveries WHERE exploit_id = ?1 \
                 AND created_at = 1700000000000 AND next_attempt_at = 1700000000000 \
                 AND status = 'pending'"
            ),
            WEBHOOKS as i64
        );
        assert_eq!(
            count("SELECT count(*) FROM exploits WHERE id = ?1 AND fanout_after IS NOT NULL"),
            0
        );
        // A second start finds nothing left to do.
        drop(hot);
        let hot = HotPath::open(&path, SecretCodec::plaintext(), 32 << 20).unwrap();
        assert_eq!(hot.own_workers().unwrap().await.unwrap().unwrap(), 0);
        assert_eq!(count(per_exploit), WEBHOOKS as i64);
    }

    /// Small exploits (51 rows each) still share a commit while a claim waits: the chunk
    /// ends at the first exploit's end past 256 rows, the sixth.
    #[tokio::test]
    async fn a_waiting_claim_ends_a_chunk_of_small_exploits_only_past_its_minimum() {
        const WEBHOOKS: usize = 50;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_webhooks(&path, WEBHOOKS).await;
        let batch: Vec<NewExploit> = (1..=10).map(exploit).collect();
        let (outcomes, claimed, claim_first) =
            ingest_with_a_claim_queued(&store, &path, batch).await;

        assert!(claim_first, "the claim ran before the ingest ended");
        assert_eq!(claimed.len(), 6 * WEBHOOKS, "{} claimed", claimed.len());
        let first_six: std::collections::BTreeSet<i64> =
            outcomes[..6].iter().map(|o| o.id).collect();
        assert_eq!(exploit_ids(&claimed), first_six);
        assert_eq!(claim_the_rest(&store).await, 4 * WEBHOOKS);
    }

    #[test]
    fn kept_bodies_are_the_latest_and_keyed_by_event_too() {
        let mut bodies = Bodies::default();
        let (exploit, test): (Arc<str>, Arc<str>) =
            ("exploit.detected".into(), "webhook.test".into());
        let kept = bodies.insert(1, &exploit, Bytes::from_static(b"one"));
        assert_eq!(kept, Bytes::from_static(b"one"));
        assert_eq!(bodies.get(1, &exploit), Some(Bytes::from_static(b"one")));
        assert_eq!(bodies.get(1, &test), None);
        for id in 2..=BODIES_KEPT as i64 {
            bodies.insert(id, &exploit, Bytes::from(id.to_string()));
        }
        assert_eq!(bodies.get(1, &exploit), Some(Bytes::from_static(b"one")));
        // One more: the oldest goes, the others stay.
        bodies.insert(1_000, &exploit, Bytes::from_static(b"new"));
        assert_eq!(bodies.get(1, &exploit), None);
        assert_eq!(bodies.get(2, &exploit), Some(Bytes::from_static(b"2")));
        assert_eq!(
            bodies.get(1_000, &exploit),
            Some(Bytes::from_static(b"new"))
        );
        assert_eq!(bodies.by_exploit.len(), BODIES_KEPT);
        assert_eq!(bodies.order.len(), BODIES_KEPT);
    }

    /// A writer on `path` as `HotPath::open` makes one, to drive turns directly.
    fn writer_on(path: &Path) -> Writer {
        let conn = Connection::open(path).unwrap();
        conn.busy_timeout(Duration::from_secs(5)).unwrap();
        Writer {
            conn,
            secrets: SecretCodec::plaintext(),
            syncer: mpsc::channel().0,
            claims: Claims::default(),
            bodies: Bodies::default(),
            wake: None,
            waiting: VecDeque::new(),
            splits: false,
        }
    }

    fn claim_of(now_ms: i64, limit: usize) -> Claim {
        Claim {
            now_ms,
            lease_until_ms: now_ms + 60_000,
            limit,
            per_endpoint: 1000,
            room: Vec::new(),
        }
    }

    fn ids(claimed: &[ClaimedDelivery]) -> Vec<i64> {
        claimed.iter().map(|d| d.id).collect()
    }

    /// Queues, from a connection of its own, a copy of delivery `id` (same webhook, same
    /// due time): a row the writer did not write, at the same place in the due order.
    fn queue_beside(path: &Path, id: i64) -> i64 {
        let other = Connection::open(path).unwrap();
        other
            .execute(
                "INSERT INTO deliveries (webhook_id, exploit_id, event, status, attempts, \
                   next_attempt_at, created_at) \
                 SELECT webhook_id, exploit_id, event, 'pending', 0, next_attempt_at, created_at \
                 FROM deliveries WHERE id = ?1",
                [id],
            )
            .unwrap();
        other.last_insert_rowid()
    }

    /// A claim starts where the last one left the due order, past this process's claims,
    /// instead of reading them again; what comes back before that place (a claim given
    /// back, a row another connection wrote) is still claimed.
    #[tokio::test]
    async fn a_claim_starts_past_the_claims_it_holds_and_misses_nothing_before_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_webhooks(&path, 100).await;
        let exploits: Vec<NewExploit> = (0..3).map(exploit).collect();
        store.ingest_exploits(&exploits).await.unwrap();
        drop(store);
        let mut w = writer_on(&path);
        let due: Vec<i64> = {
            let mut st = w
                .conn
                .prepare(
                    "SELECT id FROM deliveries WHERE status = 'pending' \
                     ORDER BY next_attempt_at, webhook_id, id",
                )
                .unwrap();
            st.query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        assert_eq!(due.len(), 300);
        let now = now_ms() + 1_000;

        let first = w.turn(&[], Some(&claim_of(now, 100))).unwrap();
        assert_eq!(ids(&first), due[..100]);
        let read_first = w.claims.rows_read.replace(0);
        let second = w.turn(&[], Some(&claim_of(now, 100))).unwrap();
        assert_eq!(ids(&second), due[100..200]);
        // The second read the first's last webhook again (3 rows a webhook), not all 100.
        let read_second = w.claims.rows_read.replace(0);
        assert!(
            read_second <= 100 + 3,
            "read {read_second} rows (the first {read_first})"
        );

        // Given back: the cursor is forgotten, and they are claimed again first.
        let back = &ids(&first)[10..20];
        w.handle(Command::Release { ids: back.to_vec() });
        assert_eq!(w.claims.head, None);
        let third = w.turn(&[], Some(&claim_of(now, 20))).unwrap();
        let mut expected = back.to_vec();
        expected.extend_from_slice(&due[200..210]);
        assert_eq!(ids(&third), expected);

        // Another connection queues a delivery at the head of the due order: a claim
        // the cursor fills does not see it, a claim it leaves short does.
        let late = queue_beside(&path, first[0].id);
        let fourth = w.turn(&[], Some(&claim_of(now, 10))).unwrap();
        assert_eq!(ids(&fourth), due[210..220]);
        let rest = w.turn(&[], Some(&claim_of(now, 1000))).unwrap();
        let mut expected = vec![late];
        expected.extend_from_slice(&due[220..]);
        let mut got = ids(&rest);
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected);
    }

    /// An endpoint without room whose deliveries fill the head of the due order (one
    /// catching up on a backlog): a claim stops reading them after `REFUSED_RUN` and
    /// finds the other endpoints' deliveries endpoint by endpoint, instead of reading to
    /// its bound on every turn.
    #[tokio::test]
    async fn a_claim_stops_reading_a_head_it_cannot_take_from() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_webhooks(&path, 50).await;
        store.ingest_exploits(&[exploit(0)]).await.unwrap();
        drop(store);
        let (full, others): (i64, Vec<(i64, i64)>) = {
            let conn = Connection::open(&path).unwrap();
            let mut st = conn
                .prepare("SELECT id, webhook_id FROM deliveries ORDER BY webhook_id")
                .unwrap();
            let rows: Vec<(i64, i64)> = st
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // 999 more for the first webhook, due with its first: the head of the order.
            conn.execute(
                "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 999) \
                 INSERT INTO deliveries (webhook_id, exploit_id, event, status, attempts, \
                   next_attempt_at, created_at) \
                 SELECT webhook_id, exploit_id, event, 'pending', 0, next_attempt_at, \
                   created_at FROM deliveries, n WHERE id = ?1",
                [rows[0].0],
            )
            .unwrap();
            (rows[0].1, rows[1..].to_vec())
        };
        let mut w = writer_on(&path);
        let mut claim = claim_of(now_ms() + 1_000, 10);
        claim.room = vec![(full, 0)];
        let claimed = w.turn(&[], Some(&claim)).unwrap();
        let mut expected: Vec<i64> = others[..10].iter().map(|&(id, _)| id).collect();
        expected.sort_unstable();
        let mut got = ids(&claimed);
        got.sort_unstable();
        assert_eq!(got, expected);
        let read = w.claims.rows_read.get();
        // Without the stop it reads to its bound: `HEAD_SCAN_MIN` rows here.
        assert!(read <= REFUSED_RUN, "read {read} rows of the head");
    }

    /// Claims the cursor fills still read from the start every `HEAD_REREAD_MS`.
    #[tokio::test]
    async fn a_claim_reads_the_due_order_from_its_start_now_and_then() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_webhooks(&path, 100).await;
        store
            .ingest_exploits(&[exploit(0), exploit(1)])
            .await
            .unwrap();
        drop(store);
        let mut w = writer_on(&path);
        let now = now_ms() + 1_000;
        let first = w.turn(&[], Some(&claim_of(now, 50))).unwrap();
        // A delivery before the cursor, from another connection.
        let late = queue_beside(&path, first[0].id);
        let soon = w.turn(&[], Some(&claim_of(now + 1, 10))).unwrap();
        assert!(!ids(&soon).contains(&late));
        let later = w
            .turn(&[], Some(&claim_of(now + HEAD_REREAD_MS, 10)))
            .unwrap();
        assert_eq!(ids(&later)[0], late, "{:?}", ids(&later));
    }

    /// The hourly figures (migration 0007) after each way a delivery's standing changes,
    /// recounted from the deliveries and attempts themselves: first attempts that
    /// succeed or fail for good, a retry and its second attempt (with two attempts of
    /// one delivery in one batch), a 410 that stops the webhook's queue, a webhook
    /// deleted with attempted deliveries queued and one of them still in flight, and
    /// manual retries of a failed and a succeeded delivery, finished again an hour on.
    #[tokio::test]
    async fn the_hourly_figures_match_a_recount_after_every_kind_of_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        let store = store_with_webhooks(&path, 50).await;
        let exploits: Vec<_> = (0..3).map(exploit).collect();
        store.ingest_exploits(&exploits).await.unwrap();
        let now = now_ms();
        let claimed = store
            .claim_due_deliveries(now, now + 60_000, 200, 16, &[])
            .await
            .unwrap();
        assert_eq!(claimed.len(), 150);
        let conn = Connection::open(&path).unwrap();
        let check = |step: &str| {
            let read = |sql: &str| -> Vec<[i64; 9]> {
                let mut stmt = conn.prepare(sql).unwrap();
                stmt.query_map([], |r| {
                    let mut row = [0; 9];
                    for (i, v) in row.iter_mut().enumerate() {
                        *v = r.get(i)?;
                    }
                    Ok(row)
                })
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
            };
            let (stored, recount) = (
                read(super::super::hours::STORED),
                read(super::super::hours::RECOUNT),
            );
            assert!(!recount.is_empty(), "{step}: nothing to count");
            assert_eq!(stored, recount, "{step}: stored figures against a recount");
        };
        let of = |webhook: usize| -> Vec<&ClaimedDelivery> {
            let mut ids: Vec<i64> = claimed.iter().map(|d| d.webhook_id).collect();
            ids.sort_unstable();
            ids.dedup();
            claimed
                .iter()
                .filter(|d| d.webhook_id == ids[webhook])
                .collect()
        };
        let hour = 3_600_000;
        let at = |d: &ClaimedDelivery, started: i64, latency: i64, result| AttemptRecord {
            started_at_ms: started,
            latency_ms: latency,
            status_code: Some(if result == AttemptResult::Succeeded {
                200
            } else {
                500
            }),
            error_kind: (result != AttemptResult::Succeeded).then_some("http_status"),
            error: (result != AttemptResult::Succeeded).then(|| "HTTP 500".to_string()),
            result,
            ..success(d, started)
        };
        let retry = AttemptResult::RetryAt(now + 60_000);

        let (a, b, c, gone, deleted) = (of(0), of(1), of(2), of(3), of(4));
        store
            .record_attempts(&[
                at(a[0], now, 5, AttemptResult::Succeeded),
                at(a[1], now - 2 * hour, 7, AttemptResult::Succeeded),
                at(a[2], now - 30 * hour, 9, AttemptResult::Failed),
                at(b[0], now - hour, 11, retry),
                at(b[1], now - hour, 13, retry),
                at(b[1], now, 17, AttemptResult::Succeeded),
                at(gone[0], now - hour, 19, retry),
                at(deleted[0], now - hour, 23, retry),
                at(deleted[1], now - hour, 29, retry),
            ])
            .await
            .unwrap();
        check("first attempts");

        store
            .record_attempts(&[
                at(b[0], now, 31, AttemptResult::Failed),
                at(gone[1], now, 37, AttemptResult::Gone),
                at(c[0], now, 41, AttemptResult::Succeeded),
            ])
            .await
            .unwrap();
        check("a retry's last attempt and a 410");
        let stopped: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM deliveries WHERE webhook_id = ?1 AND status = 'failed'",
                [gone[0].webhook_id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(stopped, 3, "the 410 stopped the webhook's queue");

        let user: i64 = conn
            .query_row(
                "SELECT user_id FROM webhooks WHERE id = ?1",
                [deleted[0].webhook_id],
                |r| r.get(0),
            )
            .unwrap();
        store
            .delete_webhook(user, deleted[0].webhook_id)
            .await
            .unwrap();
        check("a webhook deleted with attempted deliveries queued");
        store
            .record_attempts(&[at(deleted[1], now + hour, 43, AttemptResult::Succeeded)])
            .await
            .unwrap();
        check("an attempt in flight when its webhook was deleted");

        for (d, result) in [
            (b[0], AttemptResult::Failed),
            (c[0], AttemptResult::Succeeded),
        ] {
            store
                .requeue_delivery(d.webhook_id, d.id, now)
                .await
                .unwrap();
            check("a manual retry");
            store
                .record_attempts(&[at(d, now + hour, 47, result)])
                .await
                .unwrap();
            check("a manual retry finished");
        }
        let health = store
            .webhook_health(b[0].webhook_id, now + hour)
            .await
            .unwrap();
        assert_eq!(
            (
                health.succeeded_24h,
                health.failed_24h,
                health.succeeded_all,
                health.failed_all
            ),
            (1, 1, 1, 1),
            "one delivery succeeded and one failed, each counted once"
        );
    }
}

#[cfg(test)]
mod timing {
    //! Not a test: times the writer's phases (ingest, then turns of 80 outcomes and a
    //! claim) on a fresh file with 1,000 webhooks and 100 exploits (`TIMING_WEBHOOKS`,
    //! `TIMING_EXPLOITS`), in a writer that owns the workers as `serve`'s does, for A/B
    //! runs of changes to them:
    //! `cargo test --release --lib writer_phase_timings -- --ignored --nocapture`.
    //! `TIMING_SQL` is run on the file first (`DROP INDEX ...` prices an index);
    //! `TIMING_FRAMES` counts WAL frames instead of timing. `TIMING_ROUNDS=N` repeats
    //! ingest and turns N times, each round on top of the deliveries of the ones before:
    //! what a fan-out costs once every webhook has a history.
    use std::time::Instant;

    use super::tests_support::*;
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore]
    async fn writer_phase_timings() {
        let from_env = |name: &str, default: usize| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let (webhooks, exploits) = (
            from_env("TIMING_WEBHOOKS", 1000),
            from_env("TIMING_EXPLOITS", 100),
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.db");
        drop(store_with_webhooks(&path, webhooks).await);
        if let Ok(sql) = std::env::var("TIMING_SQL") {
            Connection::open(&path)
                .unwrap()
                .execute_batch(&sql)
                .unwrap();
        }
        // With TIMING_FRAMES set, no checkpoints but the ones below, which count each
        // phase's WAL frames (times are then not comparable: the WAL only grows). The
        // store's background checkpointer ends at its next tick once the store is gone.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let count = std::env::var_os("TIMING_FRAMES").is_some();
        let hot = HotPath::open(
            &path,
            SecretCodec::plaintext(),
            if count { 0 } else { 32 << 20 },
        )
        .unwrap();
        // As in `serve`: the process that owns the workers, which may split an ingest.
        hot.own_workers().unwrap().await.unwrap().unwrap();
        let frames = || {
            if !count {
                return f64::NAN;
            }
            let conn = Connection::open(&path).unwrap();
            let log = conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get::<_, i64>(1))
                .unwrap();
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .unwrap();
            log as f64
        };
        frames();
        let cpu = || {
            let s = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
            let f: Vec<&str> = s
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
        };
        let rounds = from_env("TIMING_ROUNDS", 1);
        for round in 0..rounds {
            let (t, c) = (Instant::now(), cpu());
            for chunk in (round * exploits..(round + 1) * exploits)
                .collect::<Vec<_>>()
                .chunks(10)
            {
                let batch: Vec<NewExploit> = chunk.iter().map(|n| exploit(*n)).collect();
                hot.ingest(&batch).await.unwrap();
            }
            let rows = (webhooks * exploits) as f64;
            println!(
                "ingest: {:.2} us/row wall, {:.2} us/row CPU, {:.3} WAL frames/row",
                t.elapsed().as_secs_f64() * 1e6 / rows,
                (cpu() - c) * 1e6 / rows,
                frames() / rows
            );
            let (t, c) = (Instant::now(), cpu());
            let mut records: Vec<AttemptRecord> = Vec::new();
            let mut delivered = 0;
            loop {
                let now = now_ms();
                let claim = Claim {
                    now_ms: now + 1000,
                    lease_until_ms: now + 60_000,
                    limit: 80,
                    per_endpoint: 16,
                    room: Vec::new(),
                };
                let claimed = hot.turn(&records, Some(claim)).await.unwrap();
                delivered += records.len();
                if claimed.is_empty() {
                    break;
                }
                records = claimed.iter().map(|d| success(d, now)).collect();
            }
            assert_eq!(delivered, webhooks * exploits);
            println!(
            "turns of 80: {:.2} us/delivery wall, {:.2} us/delivery CPU, {:.3} WAL frames/delivery",
            t.elapsed().as_secs_f64() * 1e6 / rows,
            (cpu() - c) * 1e6 / rows,
            frames() / rows
        );
        }
    }
}
