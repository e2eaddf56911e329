//! The single writer: one connection on a dedicated thread, fed by a bounded channel.
//!
//! rusqlite is blocking, and SQLite allows one writer at a time anyway, so every write goes
//! through [`StoreWriter::write`] to one thread that owns the write connection. A call carries a
//! list of writes and, optionally, a Kinesis checkpoint; all of it is one transaction, so the
//! checkpoint can never run ahead of the effects it stands for.
//!
//! Each message is applied idempotently: the transaction first inserts `(device, seq)` into
//! `seen`; if that row already exists the message is a duplicate and nothing else is touched.
//! Windows merge (`count + count`, `sum + sum`, `min(min)`, `max(max)`), so a message either
//! counts once or not at all, whatever crashes in between.

use std::thread::JoinHandle;

use osprey_protocol::{Alert, AlertEvent, Severity, StatusState};
use rusqlite::{params, Connection, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;
use crate::window::WindowDelta;

/// Largest dead-letter payload kept; longer ones are cut (the `size` column keeps the length).
pub const MAX_DEAD_LETTER_BYTES: usize = osprey_protocol::MAX_MESSAGE_BYTES;

/// A decoded message, prepared for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Sending device.
    pub device: String,
    /// The device's sequence number; `(device, seq)` is the dedup key. Must be ≤ `i64::MAX`.
    pub seq: u64,
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
    /// The device's new presence, for status messages.
    pub status: Option<StatusState>,
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

/// One thing to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Apply a message (unless it was applied before).
    Message(Message),
    /// Record a rejected payload.
    DeadLetter(DeadLetter),
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
    /// The dead letter was recorded.
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
}

/// Starts the writer thread on `conn` with a queue of `capacity` jobs.
pub(super) fn spawn(
    conn: Connection,
    capacity: usize,
) -> Result<(StoreWriter, JoinHandle<()>), StoreError> {
    let (jobs_tx, jobs_rx) = mpsc::channel(capacity.max(1));
    let thread = std::thread::Builder::new()
        .name("osprey-store-writer".to_owned())
        .spawn(move || run(conn, jobs_rx))
        .map_err(|cause| StoreError::SpawnWriter { cause })?;
    Ok((StoreWriter { jobs_tx }, thread))
}

fn run(mut conn: Connection, mut jobs_rx: mpsc::Receiver<Job>) {
    while let Some(job) = jobs_rx.blocking_recv() {
        let result = apply(&mut conn, &job.writes, job.checkpoint.as_ref())
            .map_err(|cause| StoreError::Write { cause });
        if let Err(e) = &result {
            tracing::error!(error = %e, writes = job.writes.len(), "store write failed, rolled back");
        }
        // The caller may have given up waiting; the transaction stands (or was rolled back)
        // either way, so there is nothing more to do with the reply.
        let _ = job.reply_tx.send(result);
    }
    // Every handle is gone: fold the WAL back into the main file so the database is one
    // self-contained file after a clean shutdown.
    if let Err(e) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(error = %e, "could not checkpoint the WAL on close");
    }
    tracing::debug!("store writer stopped");
}

/// Applies one job in one transaction.
pub(super) fn apply(
    conn: &mut Connection,
    writes: &[Write],
    checkpoint: Option<&Checkpoint>,
) -> rusqlite::Result<Vec<Written>> {
    let tx = conn.transaction()?;
    let mut written = Vec::with_capacity(writes.len());
    for write in writes {
        written.push(match write {
            Write::Message(m) => apply_message(&tx, m)?,
            Write::DeadLetter(d) => {
                insert_dead_letter(&tx, d)?;
                Written::DeadLettered
            }
        });
    }
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
    tx.commit()?;
    Ok(written)
}

fn apply_message(tx: &Transaction<'_>, m: &Message) -> rusqlite::Result<Written> {
    let fresh = tx
        .prepare_cached("INSERT OR IGNORE INTO seen (device, seq) VALUES (?1, ?2)")?
        .execute(params![m.device, m.seq])?;
    if fresh == 0 {
        return Ok(Written::Duplicate);
    }
    for w in &m.windows {
        merge_window(tx, &m.device, w)?;
    }
    if let Some(alert) = &m.alert {
        insert_alert(tx, &m.device, m.seq, alert)?;
    }
    let status = m.status.map(|s| match s {
        StatusState::Online => "online",
        StatusState::Offline => "offline",
    });
    // The status is the last one received: a last will carries the connect-time seq and time,
    // so neither orders it against the session's later messages.
    tx.prepare_cached(
        "INSERT INTO devices
             (device, first_seen_ms, last_seen_ms, last_event_ms, last_seq, readings, status, status_ms)
         VALUES (?1, ?2, ?2, ?3, ?4, ?5, ?6, CASE WHEN ?6 IS NULL THEN NULL ELSE ?2 END)
         ON CONFLICT (device) DO UPDATE SET
             first_seen_ms = min(first_seen_ms, excluded.first_seen_ms),
             last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
             last_event_ms = max(coalesce(last_event_ms, excluded.last_event_ms),
                                 coalesce(excluded.last_event_ms, last_event_ms)),
             last_seq = max(last_seq, excluded.last_seq),
             readings = readings + excluded.readings,
             status = coalesce(excluded.status, status),
             status_ms = CASE WHEN excluded.status IS NULL THEN status_ms
                              ELSE excluded.status_ms END",
    )?
    .execute(params![
        m.device,
        m.received_ms,
        m.event_ms,
        m.seq,
        m.readings,
        status
    ])?;
    Ok(Written::Applied)
}

fn merge_window(tx: &Transaction<'_>, device: &str, w: &WindowDelta) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO windows (device, sensor, metric, unit, start_ms, end_ms, count, sum, min, max)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (device, sensor, metric, start_ms) DO UPDATE SET
             unit = excluded.unit,
             count = count + excluded.count,
             sum = sum + excluded.sum,
             min = min(min, excluded.min),
             max = max(max, excluded.max)",
    )?
    .execute(params![
        device, w.sensor, w.metric, w.unit, w.start_ms, w.end_ms, w.count, w.sum, w.min, w.max
    ])?;
    tx.prepare_cached(
        "INSERT INTO series (device, sensor, metric, unit, latest_start_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (device, sensor, metric) DO UPDATE SET
             unit = CASE WHEN excluded.latest_start_ms >= latest_start_ms
                         THEN excluded.unit ELSE unit END,
             latest_start_ms = max(latest_start_ms, excluded.latest_start_ms)",
    )?
    .execute(params![device, w.sensor, w.metric, w.unit, w.start_ms])?;
    Ok(())
}

fn insert_alert(tx: &Transaction<'_>, device: &str, seq: u64, a: &Alert) -> rusqlite::Result<()> {
    let event = event_name(a.event);
    tx.prepare_cached(
        "INSERT OR IGNORE INTO alerts
             (device, seq, rule, sensor, metric, event, severity, value, threshold, time_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        device,
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

fn insert_dead_letter(tx: &Transaction<'_>, d: &DeadLetter) -> rusqlite::Result<()> {
    let kept = &d.payload[..d.payload.len().min(MAX_DEAD_LETTER_BYTES)];
    tx.prepare_cached(
        "INSERT INTO dead_letters (received_ms, source, reason, size, payload)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![
        d.received_ms,
        d.source,
        d.reason,
        d.payload.len(),
        kept
    ])?;
    Ok(())
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
