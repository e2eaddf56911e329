//! Retention: the writer thread deletes what is older than its keep time, a little at a time,
//! so the database stops growing.
//!
//! ```text
//!  ticker thread ──(every interval: an empty write)──► writer thread: job … job │ pass │ job …
//!                                                       pass = batches of ≤ 2 000 rows per
//!                                                       table, one transaction each, ≤ 200 ms
//! ```
//!
//! | table | deleted when | reference clock | default |
//! |---|---|---|---|
//! | `seen` (dedup set) | applied longer ago than `dedup` | cloud clock (`applied_ms`) | 30 days |
//! | `windows` | window ended before the cutoff | event time | 90 days |
//! | `alerts` | event time before the cutoff | event time | 90 days |
//! | `series`, `signals` | their newest window / `as_of_ms` before the cutoff | event time | 90 days |
//! | `status_history` | received before the cutoff (and each device over its row cap, [`super::timeline`]) | cloud clock (`at_ms`) | 90 days |
//! | `dead_letters` | received longer ago than their retention; over the caps | cloud clock | 14 days, [`super::deadletter`] |
//!
//! Event-time cutoffs are measured back from the store's newest event time (the highest
//! `devices.last_event_ms`), never from later than the cloud's clock: in normal operation that
//! is "now"; an archive replayed into an empty store keeps its own last N days instead of
//! nothing, and a device whose clock runs ahead cannot push the cutoff past "now".
//!
//! A replay of a message whose `seen` row was pruned is applied again: with the default 30
//! days, only a gateway holding a message for more than 30 days after the cloud first applied
//! it (or a Kinesis stream re-read from a checkpoint that old) can double-count. `devices`
//! and `alert_state` are never pruned (one row per device, per device and rule: the fleet
//! size bounds them, and an active alarm must not vanish). Deleted rows leave free pages
//! that SQLite reuses, so the file stops growing; it does not shrink (run `VACUUM` offline for
//! that).
//!
//! Deletions are counted in the `maintenance` table in the same transaction (exact across
//! crashes) and mirrored in [`MaintenanceStats`] for `/api/stats` and Prometheus.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::deadletter::{self, DeadLetterLimits};

/// Default keep time of windows and alerts, in days.
pub const DEFAULT_RETENTION_DAYS: f64 = 90.0;
/// Default keep time of the dedup set, in days.
pub const DEFAULT_DEDUP_RETENTION_DAYS: f64 = 30.0;
/// Default time between maintenance passes.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Rows deleted per table per transaction.
const BATCH: u32 = 2_000;
/// Longest a pass runs before the writer goes back to its queue (the rest waits for the next).
const PASS_BUDGET: Duration = Duration::from_millis(200);

/// What the store keeps, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetentionConfig {
    /// Dead-letter caps and retention.
    pub dead_letters: DeadLetterLimits,
    /// Keep time of windows, alerts, series and signals (event time) and of the status history
    /// (cloud clock); `None` keeps them.
    pub history: Option<Duration>,
    /// Keep time of the dedup set (`seen`, by time applied); `None` keeps it.
    pub dedup: Option<Duration>,
    /// Time between maintenance passes.
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> RetentionConfig {
        RetentionConfig {
            dead_letters: DeadLetterLimits::default(),
            history: Some(days(DEFAULT_RETENTION_DAYS)),
            dedup: Some(days(DEFAULT_DEDUP_RETENTION_DAYS)),
            interval: DEFAULT_INTERVAL,
        }
    }
}

/// `n` days (fractions allowed; negative or not finite counts as 0).
pub fn days(n: f64) -> Duration {
    Duration::try_from_secs_f64(n * 86_400.0).unwrap_or(Duration::ZERO)
}

/// Counts of what maintenance deleted, since the database was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Maintenance {
    /// Dead letters evicted over the count or byte cap.
    pub dead_letters_evicted: u64,
    /// Dead letters deleted for age.
    pub dead_letters_expired: u64,
    /// Dead letters stored with their payload cut.
    pub dead_letters_truncated: u64,
    /// Rejected payloads not stored again (their key was stored: a re-read or redelivery).
    pub dead_letters_repeated: u64,
    /// Dedup rows (`seen`) pruned.
    pub seen_pruned: u64,
    /// Windows pruned.
    pub windows_pruned: u64,
    /// Alert events pruned.
    pub alerts_pruned: u64,
    /// Status history rows pruned (received longer ago than the history keep time).
    pub status_pruned: u64,
    /// Maintenance passes run (since this process started).
    pub passes: u64,
}

/// Deltas of the counters, gathered in a transaction and added once it commits.
pub(super) type Tally = Maintenance;

impl Maintenance {
    fn pairs(&self) -> [(&'static str, u64); 8] {
        [
            ("dead_letters_evicted", self.dead_letters_evicted),
            ("dead_letters_expired", self.dead_letters_expired),
            ("dead_letters_truncated", self.dead_letters_truncated),
            ("dead_letters_repeated", self.dead_letters_repeated),
            ("seen_pruned", self.seen_pruned),
            ("windows_pruned", self.windows_pruned),
            ("alerts_pruned", self.alerts_pruned),
            ("status_pruned", self.status_pruned),
        ]
    }

    fn is_empty(&self) -> bool {
        self.pairs().iter().all(|(_, v)| *v == 0)
    }
}

/// The maintenance counters, shared by the writer (which adds) and the API and metrics (which
/// read); cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceStats(Arc<[AtomicU64; 9]>);

impl MaintenanceStats {
    /// The counters now.
    pub fn snapshot(&self) -> Maintenance {
        let v = |i: usize| self.0[i].load(Ordering::Relaxed);
        Maintenance {
            dead_letters_evicted: v(0),
            dead_letters_expired: v(1),
            dead_letters_truncated: v(2),
            dead_letters_repeated: v(3),
            seen_pruned: v(4),
            windows_pruned: v(5),
            alerts_pruned: v(6),
            status_pruned: v(7),
            passes: v(8),
        }
    }

    pub(super) fn add(&self, t: &Tally) {
        for (i, (_, v)) in t.pairs().iter().enumerate() {
            self.0[i].fetch_add(*v, Ordering::Relaxed);
        }
        self.0[8].fetch_add(t.passes, Ordering::Relaxed);
    }

    /// Counters as stored in `conn`'s `maintenance` table.
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<MaintenanceStats> {
        let stored: BTreeMap<String, u64> = conn
            .prepare("SELECT name, value FROM maintenance")?
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let stats = MaintenanceStats::default();
        for (i, (name, _)) in Maintenance::default().pairs().iter().enumerate() {
            stats.0[i].store(stored.get(*name).copied().unwrap_or(0), Ordering::Relaxed);
        }
        Ok(stats)
    }
}

/// Adds `t` to the `maintenance` table (in the caller's transaction).
pub(super) fn record(conn: &Connection, t: &Tally) -> rusqlite::Result<()> {
    if t.is_empty() {
        return Ok(());
    }
    let mut stmt = conn.prepare_cached(
        "INSERT INTO maintenance (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
    )?;
    for (name, v) in t.pairs() {
        if v > 0 {
            stmt.execute(params![name, v])?;
        }
    }
    Ok(())
}

/// Schema version 3's retention changes: `seen.applied_ms` (rows from version 2 count as
/// applied at the migration) with its index, and the `maintenance` counters table. Part of
/// the 2 → 3 migration.
pub(super) fn migrate_v3(conn: &Connection, now_ms: i64) -> rusqlite::Result<()> {
    conn.execute_batch(
        "ALTER TABLE seen ADD COLUMN applied_ms INTEGER;
         CREATE TABLE IF NOT EXISTS maintenance (
             name  TEXT PRIMARY KEY NOT NULL,
             value INTEGER NOT NULL
         ) WITHOUT ROWID;",
    )?;
    conn.execute("UPDATE seen SET applied_ms = ?1", [now_ms])?;
    conn.execute_batch("CREATE INDEX IF NOT EXISTS seen_by_applied ON seen (applied_ms);")
}

/// When the next pass is due, kept by the writer thread.
#[derive(Debug)]
pub(super) struct Schedule {
    next: Instant,
}

impl Schedule {
    /// The first pass runs at once (a store opened after a long stop prunes first).
    pub(super) fn new() -> Schedule {
        Schedule {
            next: Instant::now(),
        }
    }

    /// Runs a pass if one is due; a pass that left work behind makes the next one due at
    /// once, so a backlog drains between jobs without holding any of them up for long.
    pub(super) fn run_if_due(
        &mut self,
        conn: &mut Connection,
        cfg: &RetentionConfig,
        stats: &MaintenanceStats,
    ) {
        if Instant::now() < self.next {
            return;
        }
        match pass(conn, cfg, crate::clock::now_ms(), stats) {
            Ok(true) => self.next = Instant::now() + cfg.interval,
            Ok(false) => self.next = Instant::now(),
            Err(e) => {
                tracing::error!(error = %e, "retention pass failed; retrying at the next interval");
                self.next = Instant::now() + cfg.interval;
            }
        }
    }
}

/// One maintenance pass at `now_ms`: batches until nothing is left or the budget is spent.
/// Returns whether everything due was deleted.
pub fn pass(
    conn: &mut Connection,
    cfg: &RetentionConfig,
    now_ms: i64,
    stats: &MaintenanceStats,
) -> rusqlite::Result<bool> {
    let started = Instant::now();
    stats.add(&Tally {
        passes: 1,
        ..Tally::default()
    });
    loop {
        let tx = conn.transaction()?;
        let mut t = Tally::default();
        let mut full = false;
        let batch = u64::from(BATCH);
        if let Some(keep) = cfg.dead_letters.retention {
            t.dead_letters_expired = deadletter::expire(&tx, cutoff(now_ms, keep), BATCH)?;
            full |= t.dead_letters_expired >= batch;
        }
        deadletter::evict_over_caps(&tx, &cfg.dead_letters, &mut t)?;
        if let Some(keep) = cfg.dedup {
            t.seen_pruned = prune_seen(&tx, cutoff(now_ms, keep))?;
            full |= t.seen_pruned >= batch;
        }
        if let Some(keep) = cfg.history {
            // Received time, like the rows' own clock: the cloud's.
            t.status_pruned = delete_before(&tx, "status_history", "at_ms", cutoff(now_ms, keep))?;
            full |= t.status_pruned >= batch;
            if let Some(reference) = event_reference(&tx, now_ms)? {
                let cut = cutoff(reference, keep);
                t.windows_pruned = prune_windows(&tx, cut)?;
                t.alerts_pruned = prune_alerts(&tx, cut)?;
                full |= t.windows_pruned >= batch || t.alerts_pruned >= batch;
            }
        }
        record(&tx, &t)?;
        tx.commit()?;
        stats.add(&t);
        if !t.is_empty() {
            tracing::debug!(?t, "retention batch");
        }
        if !full {
            return Ok(true);
        }
        if started.elapsed() >= PASS_BUDGET {
            return Ok(false);
        }
    }
}

fn cutoff(reference_ms: i64, keep: Duration) -> i64 {
    reference_ms.saturating_sub(i64::try_from(keep.as_millis()).unwrap_or(i64::MAX))
}

/// The store's newest event time, but not later than `now_ms`.
fn event_reference(conn: &Connection, now_ms: i64) -> rusqlite::Result<Option<i64>> {
    let newest: Option<i64> = conn
        .query_row("SELECT MAX(last_event_ms) FROM devices", [], |row| {
            row.get(0)
        })
        .optional()?
        .flatten();
    Ok(newest.map(|n| n.min(now_ms)))
}

/// Deletes up to about one batch of `seen` rows applied before `cutoff_ms`. By time only, not
/// by key, so it does not depend on the dedup key's columns: the batch ends at the applied
/// time of the batch-th oldest row (rows sharing that millisecond go with it).
fn prune_seen(conn: &Connection, cutoff_ms: i64) -> rusqlite::Result<u64> {
    let last: Option<i64> = conn
        .prepare_cached(
            "SELECT applied_ms FROM seen WHERE applied_ms < ?1
             ORDER BY applied_ms LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![cutoff_ms, BATCH - 1], |row| row.get(0))
        .optional()?;
    let upto = last.unwrap_or(cutoff_ms - 1);
    let n = conn
        .prepare_cached("DELETE FROM seen WHERE applied_ms <= ?1 AND applied_ms < ?2")?
        .execute(params![upto, cutoff_ms])?;
    Ok(n as u64)
}

/// Deletes up to one batch of windows that ended before `cutoff_ms`, and the `series` and
/// `signals` rows whose newest window is that old.
fn prune_windows(conn: &Connection, cutoff_ms: i64) -> rusqlite::Result<u64> {
    let n = conn
        .prepare_cached(
            "DELETE FROM windows WHERE (device, sensor, metric, kind, start_ms) IN
                 (SELECT device, sensor, metric, kind, start_ms FROM windows
                  WHERE start_ms < ?1 AND end_ms <= ?1 LIMIT ?2)",
        )?
        .execute(params![cutoff_ms, BATCH])?;
    conn.prepare_cached("DELETE FROM series WHERE latest_start_ms < ?1")?
        .execute([cutoff_ms])?;
    conn.prepare_cached("DELETE FROM signals WHERE as_of_ms < ?1")?
        .execute([cutoff_ms])?;
    Ok(n as u64)
}

/// Deletes up to one batch of alert events older than `cutoff_ms` (event time).
fn prune_alerts(conn: &Connection, cutoff_ms: i64) -> rusqlite::Result<u64> {
    delete_before(conn, "alerts", "time_ms", cutoff_ms)
}

/// Deletes up to one batch of the rows of rowid table `table` whose `column` is before
/// `cutoff_ms` (both names are the store's own, never input).
pub(super) fn delete_before(
    conn: &Connection,
    table: &str,
    column: &str,
    cutoff_ms: i64,
) -> rusqlite::Result<u64> {
    let n = conn
        .prepare_cached(&format!(
            "DELETE FROM {table} WHERE rowid IN
                 (SELECT rowid FROM {table} WHERE {column} < ?1 LIMIT ?2)"
        ))?
        .execute(params![cutoff_ms, BATCH])?;
    Ok(n as u64)
}

#[cfg(test)]
pub(super) mod tests;
