//! The single writer: one connection on a dedicated thread, fed by a bounded channel.
//!
//! rusqlite is blocking, and SQLite allows one writer at a time anyway, so every write goes
//! through [`StoreWriter::write`] to one thread that owns the write connection. A call carries a
//! list of writes and, optionally, a Kinesis checkpoint; all of it is one transaction, so the
//! checkpoint can never run ahead of the effects it stands for.
//!
//! Each message is applied idempotently: the transaction first inserts `(device, epoch, seq)`
//! into `seen` (with the cloud time it was applied,
//! which [`super::retention`] prunes by); if that row already exists the message is a duplicate and nothing else is
//! touched. The first message of an epoch the device has not used before records the epoch in
//! `epochs`, and, if the device had messages under another epoch, a `journal_replaced` device
//! event (once per new epoch: the `epochs` row makes it idempotent). A status replaces the
//! stored one only if it is newer by [`super::status`]'s order, and is then recorded in the
//! device's status history ([`super::timeline`]).
//! Window deltas fold into the stored windows with [`crate::window::table::fold`] (read the
//! window, merge the aggregates, write it back with the version + 1; sessions absorb the stored
//! sessions they touch), so a message either counts once or not at all, whatever crashes in
//! between. The device's watermark is its newest event time before the message.
//!
//! A transaction usually holds a whole batch (the MQTT source's, a Kinesis GetRecords
//! response): what its messages change in windows, device counters and series is folded in
//! memory and written once at its end ([`super::deferred`], the same values as one
//! transaction per message), and the signals of each touched series are computed once
//! ([`super::signals`]). A rules report that changes what a device runs
//! ([`super::device_rules`]) has every series of that device recomputed in the same
//! transaction, with its new rules.
//!
//! After a transaction commits, the windows it changed are sent to
//! [`StoreWriter::subscribe`]rs (a late reading's corrected window among them). Between jobs,
//! never inside one, the thread runs the retention passes of [`super::retention`].

use std::thread::JoinHandle;
use std::time::Duration;

use osprey_protocol::{Alert, AlertEvent, Severity, StatusState};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use tokio::sync::{broadcast, mpsc, oneshot};

use super::deadletter::{self, DeadLetterLimits};
use super::deferred::Deferred;
use super::device_rules::{self, RulesWrite};
use super::retention::{MaintenanceStats, RetentionConfig, Schedule, Tally};
use super::signals::{Refresher, RECENT_SERIES};
use super::status::{parse_state, state_name, StatusCounters, StatusMark, StatusReport};
use super::timeline;
use super::StoreError;
use crate::analytics::signals::SignalsConfig;
use crate::window::table::{fold, WindowUpdate};
use crate::window::{WindowDelta, WindowKind};

/// Window updates a subscriber may fall behind by before it misses some.
const UPDATES_CAPACITY: usize = 4096;

/// Largest dead-letter payload the Lambda keeps; longer ones are cut. (The SQLite store's cap
/// is [`DeadLetterLimits::max_payload_bytes`].)
pub const MAX_DEAD_LETTER_BYTES: usize = osprey_protocol::MAX_MESSAGE_BYTES;

/// A decoded message, prepared for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Sending device.
    pub device: String,
    /// The device's sequence number; `(device, epoch, seq)` is the dedup key. Must be ≤
    /// `i64::MAX`.
    pub seq: u64,
    /// The journal epoch the seq belongs to (0 for gateways before protocol 1.3); at most
    /// [`osprey_protocol::MAX_EPOCH`].
    pub epoch: u64,
    /// When the cloud received it (cloud clock, ms since the epoch).
    pub received_ms: i64,
    /// Newest event time the message carries (reading, alert or status time), if any.
    pub event_ms: Option<i64>,
    /// Number of readings in the message (0 for alerts and status).
    pub readings: u64,
    /// Window deltas of the readings.
    pub windows: Vec<WindowDelta>,
    /// The alert event, for alert messages.
    pub alert: Option<Alert>,
    /// The status, for status messages (it becomes the device's status if it is newer than
    /// the stored one).
    pub status: Option<StatusReport>,
    /// The readings themselves, for telemetry messages: spooled for the archive
    /// ([`crate::archive`]) when serve runs with one.
    pub telemetry: Option<std::sync::Arc<osprey_protocol::TelemetryBatch>>,
}

/// A payload that could not be applied, kept for inspection.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// When the cloud received it.
    pub received_ms: i64,
    /// Where it came from (topic, or stream/shard/sequence).
    pub source: String,
    /// Why it was rejected.
    pub reason: String,
    /// The payload as received.
    pub payload: Vec<u8>,
}

/// A device's presence from outside its own messages (an AWS IoT lifecycle event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    /// The device (the MQTT client id).
    pub device: String,
    /// Online (connected) or offline (disconnected).
    pub state: StatusState,
    /// When it happened (the broker's clock, ms since the epoch); older than the stored
    /// status means it is ignored.
    pub time_ms: i64,
    /// When the cloud received it.
    pub received_ms: i64,
}

/// One thing to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Apply a message (unless it was applied before).
    Message(Message),
    /// Record a rejected payload.
    DeadLetter(DeadLetter),
    /// Set a device's presence (idempotent; no dedup needed).
    Presence(Presence),
    /// A device's rules report or the document set for it ([`super::device_rules`];
    /// idempotent: the same report or hash again changes nothing).
    Rules(RulesWrite),
    /// A rules change an operator made ([`super::rule_changes`]; the same id again is a
    /// duplicate).
    RuleChange(super::rule_changes::ChangeWrite),
}

/// How far a Kinesis shard has been applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Stream name.
    pub stream: String,
    /// Shard id.
    pub shard_id: String,
    /// Sequence number of the last record applied.
    pub sequence_number: String,
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// The message was new and is now applied.
    Applied,
    /// The message had been applied before; nothing changed.
    Duplicate,
    /// The dead letter was recorded (or had been, under the same key: see
    /// [`super::deadletter`]).
    DeadLettered,
}

struct Job {
    writes: Vec<Write>,
    checkpoint: Option<Checkpoint>,
    reply_tx: oneshot::Sender<Result<Vec<Written>, StoreError>>,
}

/// Handle to the writer thread; cheap to clone. The thread stops when every handle is gone.
#[derive(Debug, Clone)]
pub struct StoreWriter {
    jobs_tx: mpsc::Sender<Job>,
    updates_tx: broadcast::Sender<WindowUpdate>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("writes", &self.writes.len())
            .field("checkpoint", &self.checkpoint)
            .finish()
    }
}

impl StoreWriter {
    /// Applies `writes` and stores `checkpoint`, all in one transaction. Returns one
    /// [`Written`] per write, in order. Waits while the writer's queue is full (backpressure).
    pub async fn write(
        &self,
        writes: Vec<Write>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Vec<Written>, StoreError> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let job = Job {
            writes,
            checkpoint,
            reply_tx,
        };
        self.jobs_tx
            .send(job)
            .await
            .map_err(|_| StoreError::WriterStopped)?;
        reply_rx.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Every window changed by a committed write from now on (new, merged, corrected late,
    /// or a session that absorbed others). A subscriber that falls more than 4 096 updates
    /// behind misses the oldest (`RecvError::Lagged`) and should re-read the store.
    pub fn subscribe(&self) -> broadcast::Receiver<WindowUpdate> {
        self.updates_tx.subscribe()
    }
}

/// Starts the writer thread on `conn` with a queue of `capacity` jobs.
/// The writer runs retention passes under `retention`, counting in `stats`.
pub(super) fn spawn(
    conn: Connection,
    capacity: usize,
    signals: SignalsConfig,
    retention: RetentionConfig,
    stats: MaintenanceStats,
) -> Result<(StoreWriter, JoinHandle<()>), StoreError> {
    let (jobs_tx, jobs_rx) = mpsc::channel(capacity.max(1));
    let (updates_tx, _) = broadcast::channel(UPDATES_CAPACITY);
    let thread_updates_tx = updates_tx.clone();
    let thread = std::thread::Builder::new()
        .name("osprey-store-writer".to_owned())
        .spawn(move || {
            let mut signals = Refresher::new(signals, RECENT_SERIES);
            run(
                conn,
                jobs_rx,
                thread_updates_tx,
                &mut signals,
                &retention,
                &stats,
            )
        })
        .map_err(|cause| StoreError::SpawnWriter { cause })?;
    Ok((
        StoreWriter {
            jobs_tx,
            updates_tx,
        },
        thread,
    ))
}

/// Sends the writer an empty job every `every`, so that it runs its retention passes when no
/// writes come. Holds only a weak handle: it stops once every [`StoreWriter`] is gone.
pub(super) fn spawn_ticker(writer: &StoreWriter, every: Duration) -> Result<(), StoreError> {
    let weak = writer.jobs_tx.downgrade();
    std::thread::Builder::new()
        .name("osprey-store-ticker".to_owned())
        .spawn(move || loop {
            std::thread::sleep(every);
            let Some(jobs_tx) = weak.upgrade() else {
                return;
            };
            let (reply_tx, _) = oneshot::channel();
            // A full queue means the writer is busy and reaches its schedule anyway.
            let _ = jobs_tx.try_send(Job {
                writes: Vec::new(),
                checkpoint: None,
                reply_tx,
            });
        })
        .map(|_| ())
        .map_err(|cause| StoreError::SpawnWriter { cause })
}

fn run(
    mut conn: Connection,
    mut jobs_rx: mpsc::Receiver<Job>,
    updates_tx: broadcast::Sender<WindowUpdate>,
    signals: &mut Refresher,
    retention: &RetentionConfig,
    stats: &MaintenanceStats,
) {
    let mut updates = Vec::new();
    let mut schedule = Schedule::new();
    while let Some(job) = jobs_rx.blocking_recv() {
        updates.clear();
        let mut tally = Tally::default();
        let result = apply(
            &mut conn,
            &job.writes,
            job.checkpoint.as_ref(),
            &mut updates,
            signals,
            &retention.dead_letters,
            &mut tally,
        )
        .map_err(|cause| StoreError::Write { cause });
        match &result {
            Err(e) => {
                tracing::error!(error = %e, writes = job.writes.len(), "store write failed, rolled back");
            }
            Ok(_) => {
                stats.add(&tally);
                for update in updates.drain(..) {
                    // No subscriber is not an error: nobody is listening.
                    let _ = updates_tx.send(update);
                }
            }
        }
        // The caller may have given up waiting; the transaction stands (or was rolled back)
        // either way, so there is nothing more to do with the reply.
        let _ = job.reply_tx.send(result);
        // Between jobs, never inside one: retention when due (see `retention`).
        retain(&mut conn, &mut schedule, retention, stats, signals);
    }
    // Every handle is gone: fold the WAL back into the main file so the database is one
    // self-contained file after a clean shutdown.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "could not checkpoint the WAL on close");
    }
    tracing::debug!("store writer stopped");
}

/// Runs a retention pass if one is due. Windows it deletes may still be among those the
/// signals keep in memory: then they are forgotten.
pub(super) fn retain(
    conn: &mut Connection,
    schedule: &mut Schedule,
    retention: &RetentionConfig,
    stats: &MaintenanceStats,
    signals: &mut Refresher,
) {
    let pruned = stats.snapshot().windows_pruned;
    schedule.run_if_due(conn, retention, stats);
    if stats.snapshot().windows_pruned != pruned {
        signals.forget();
    }
}

/// Applies one job in one transaction; the windows it changed are pushed onto `updates`, and
/// the signals of the series they belong to are recomputed once each in the same transaction.
/// Dead letters are kept under `limits`; what that evicts is added to `tally`.
pub(super) fn apply(
    conn: &mut Connection,
    writes: &[Write],
    checkpoint: Option<&Checkpoint>,
    updates: &mut Vec<WindowUpdate>,
    signals: &mut Refresher,
    limits: &DeadLetterLimits,
    tally: &mut Tally,
) -> rusqlite::Result<Vec<Written>> {
    let result = apply_in_transaction(conn, writes, checkpoint, updates, signals, limits, tally);
    if result.is_err() {
        // Rolled back: the windows kept in memory may hold some of its changes.
        signals.forget();
    }
    result
}

fn apply_in_transaction(
    conn: &mut Connection,
    writes: &[Write],
    checkpoint: Option<&Checkpoint>,
    updates: &mut Vec<WindowUpdate>,
    signals: &mut Refresher,
    limits: &DeadLetterLimits,
    tally: &mut Tally,
) -> rusqlite::Result<Vec<Written>> {
    let tx = conn.transaction()?;
    let archiving = crate::archive::enabled(&tx)?;
    let mut deferred = Deferred::default();
    let mut rules_changed = Vec::new();
    let mut written = Vec::with_capacity(writes.len());
    for write in writes {
        written.push(match write {
            Write::Message(m) => apply_message(&tx, m, updates, &mut deferred, archiving)?,
            Write::DeadLetter(d) => {
                deadletter::insert(&tx, d, limits, tally)?;
                Written::DeadLettered
            }
            Write::Presence(p) => {
                apply_presence(&tx, p)?;
                Written::Applied
            }
            Write::Rules(r) => {
                rules_changed.extend(device_rules::apply(&tx, r)?);
                Written::Applied
            }
            Write::RuleChange(c) => super::rule_changes::apply(&tx, c)?,
        });
    }
    deferred.flush(&tx)?;
    if let Some(cp) = checkpoint {
        tx.prepare_cached(
            "INSERT INTO checkpoints (stream, shard_id, sequence_number, updated_ms)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (stream, shard_id) DO UPDATE SET
                 sequence_number = excluded.sequence_number,
                 updated_ms = excluded.updated_ms",
        )?
        .execute(params![
            cp.stream,
            cp.shard_id,
            cp.sequence_number,
            crate::clock::now_ms()
        ])?;
    }
    signals.refresh(&tx, updates, rules_changed)?;
    super::retention::record(&tx, tally)?;
    tx.commit()?;
    Ok(written)
}

fn apply_message(
    tx: &Transaction<'_>,
    m: &Message,
    updates: &mut Vec<WindowUpdate>,
    deferred: &mut Deferred,
    archiving: bool,
) -> rusqlite::Result<Written> {
    let fresh = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO seen (device, epoch, seq, applied_ms) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![m.device, m.epoch, m.seq, crate::clock::now_ms()])?;
    if fresh == 0 {
        return Ok(Written::Duplicate);
    }
    if deferred.first_of_epoch(&m.device, m.epoch) {
        note_epoch(tx, m)?;
    }
    if !m.windows.is_empty() {
        let watermark = deferred.watermark(tx, &m.device)?;
        for w in &m.windows {
            if w.kind == WindowKind::Tumbling {
                deferred.touch_series(&m.device, w);
            }
            let mut store = deferred.windows(tx);
            updates.push(fold(&mut store, &m.device, w.clone(), watermark)?);
        }
    }
    if let (true, Some(batch)) = (archiving, &m.telemetry) {
        crate::archive::spool(tx, m.received_ms, &m.device, m.epoch, m.seq, batch)?;
    }
    if let Some(alert) = &m.alert {
        insert_alert(tx, &m.device, m.epoch, m.seq, alert)?;
    }
    deferred.count(m);
    if let Some(report) = &m.status {
        let mark = StatusMark::of_message(m.epoch, m.seq, report);
        set_status_if_newer(tx, &m.device, &mark, m.received_ms, Some(&*report.counters))?;
    }
    Ok(Written::Applied)
}

/// Records the message's epoch for its device; the first message of a new epoch of a device
/// that had messages under another records a `journal_replaced` event (old epoch: the one
/// first seen most recently before).
fn note_epoch(tx: &Transaction<'_>, m: &Message) -> rusqlite::Result<()> {
    let new = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO epochs (device, epoch, first_seen_ms) VALUES (?1, ?2, ?3)",
        )?
        .execute(params![m.device, m.epoch, m.received_ms])?;
    if new == 0 {
        return Ok(());
    }
    let old: Option<i64> = tx
        .prepare_cached(
            "SELECT epoch FROM epochs WHERE device = ?1 AND epoch != ?2
             ORDER BY first_seen_ms DESC, epoch DESC LIMIT 1",
        )?
        .query_row(params![m.device, m.epoch], |row| row.get(0))
        .optional()?;
    if let Some(old) = old {
        tracing::warn!(device = %m.device, old_epoch = old, new_epoch = m.epoch,
            "journal replaced: the device numbers its messages in a new journal epoch");
        tx.prepare_cached(
            "INSERT OR IGNORE INTO device_events (device, kind, time_ms, old_epoch, new_epoch)
             VALUES (?1, 'journal_replaced', ?2, ?3, ?4)",
        )?
        .execute(params![m.device, m.received_ms, old, m.epoch])?;
    }
    Ok(())
}

/// The device's stored status mark; `None` without a status, or for one stored before
/// schema 3 (no time).
fn stored_status(tx: &Transaction<'_>, device: &str) -> rusqlite::Result<Option<StatusMark>> {
    type Row = (
        Option<String>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
        Option<i64>,
    );
    let row: Option<Row> = tx
        .prepare_cached(
            "SELECT status, status_epoch, status_seq, status_will_seq, status_time_ms
             FROM devices WHERE device = ?1",
        )?
        .query_row(params![device], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
            ))
        })
        .optional()?;
    let Some((Some(state), epoch, seq, will_seq, Some(time_ms))) = row else {
        return Ok(None);
    };
    let Some(state) = parse_state(&state) else {
        return Ok(None);
    };
    let as_u64 = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Some(StatusMark {
        state,
        position: epoch.zip(seq).map(|(e, q)| (as_u64(e), as_u64(q))),
        will_seq: will_seq.map_or(0, as_u64),
        time_ms,
    }))
}

/// Makes `mark` the device's status if it is newer than the stored one (the device row
/// exists or is created), and records it in the device's status history with `counters`
/// (`None` for a lifecycle event) ([`super::timeline`]). `received_ms` is when the cloud
/// received it.
fn set_status_if_newer(
    tx: &Transaction<'_>,
    device: &str,
    mark: &StatusMark,
    received_ms: i64,
    counters: Option<&StatusCounters>,
) -> rusqlite::Result<()> {
    if !mark.supersedes(stored_status(tx, device)?.as_ref()) {
        tracing::debug!(device = %device, state = state_name(mark.state),
            "status older than the stored one; kept the stored one");
        return Ok(());
    }
    let (epoch, seq) = mark.position.unzip();
    tx.prepare_cached(
        "INSERT INTO devices
             (device, first_seen_ms, last_seen_ms, last_event_ms, last_seq, readings, status,
              status_ms, status_epoch, status_seq, status_will_seq, status_time_ms)
         VALUES (?1, ?2, ?2, NULL, 0, 0, ?3, ?2, ?4, ?5, ?6, ?7)
         ON CONFLICT (device) DO UPDATE SET
             status = excluded.status,
             status_ms = excluded.status_ms,
             status_epoch = excluded.status_epoch,
             status_seq = excluded.status_seq,
             status_will_seq = excluded.status_will_seq,
             status_time_ms = excluded.status_time_ms",
    )?
    .execute(params![
        device,
        received_ms,
        state_name(mark.state),
        epoch,
        seq,
        mark.will_seq,
        mark.time_ms
    ])?;
    let entry = timeline::Entry {
        at_ms: received_ms,
        state: mark.state,
        time_ms: mark.time_ms,
        position: mark.position,
        counters,
    };
    timeline::record(tx, device, &entry)?;
    Ok(())
}

fn insert_alert(
    tx: &Transaction<'_>,
    device: &str,
    epoch: u64,
    seq: u64,
    a: &Alert,
) -> rusqlite::Result<()> {
    let event = event_name(a.event);
    tx.prepare_cached(
        "INSERT OR IGNORE INTO alerts
             (device, epoch, seq, rule, sensor, metric, event, severity, value, threshold, time_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        device,
        epoch,
        seq,
        a.rule,
        a.sensor,
        a.metric,
        event,
        severity_name(a.severity),
        a.value,
        a.threshold,
        a.time_ms
    ])?;
    // One outbox row per configured alert output, in this same transaction
    // (crate::alerts::outbox): none when no output is configured.
    tx.prepare_cached(
        "INSERT OR IGNORE INTO alert_outbox (output, device, epoch, seq)
         SELECT name, ?1, ?2, ?3 FROM alert_outputs",
    )?
    .execute(params![device, epoch, seq])?;
    // Keep the rule's newest event by event time (then seq), whatever order alerts arrive in.
    tx.prepare_cached(
        "INSERT INTO alert_state (device, rule, event, time_ms, seq) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device, rule) DO UPDATE SET
             event = excluded.event, time_ms = excluded.time_ms, seq = excluded.seq
         WHERE excluded.time_ms > alert_state.time_ms
            OR (excluded.time_ms = alert_state.time_ms AND excluded.seq > alert_state.seq)",
    )?
    .execute(params![device, a.rule, event, a.time_ms, seq])?;
    Ok(())
}

/// Sets a device's status from a lifecycle event, unless a newer status is stored (lifecycle
/// events have no seq: they are ordered by time).
fn apply_presence(tx: &Transaction<'_>, p: &Presence) -> rusqlite::Result<()> {
    let mark = StatusMark::of_presence(p.state, p.time_ms);
    set_status_if_newer(tx, &p.device, &mark, p.received_ms, None)
}

/// The stored name of an alert event.
pub fn event_name(event: AlertEvent) -> &'static str {
    match event {
        AlertEvent::Raise => "raise",
        AlertEvent::Clear => "clear",
    }
}

/// The stored name of a severity.
pub fn severity_name(severity: Severity) -> &'static str {
    match severity {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Critical => "critical",
    }
}
