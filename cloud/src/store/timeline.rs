//! A device's status history: the statuses it held, with the counters its status messages
//! carry, kept in a bounded table for the device page's status timeline.
//!
//! ```text
//!  status message / lifecycle event ─► newer than the stored status? (super::status) ── no ─► not recorded
//!        │ yes (it became the device's status)
//!        ▼
//!  compared with the device's previous row: state changed, drops or journal resets went up,
//!  clock state changed, new boot id? ── any ─► row with those changes
//!        │ none
//!        ▼
//!  ≥ SAMPLE_MS since the previous row ─► row (a sample: backlog and counters over time); else none
//! ```
//!
//! Rows are placed at the time the cloud **received** the status (`at_ms`, cloud clock), not at
//! the device's own time: a last will carries the time its connection opened (it is composed
//! then), so only its arrival says when the device went offline. The device's time is kept
//! next to it (`time_ms`). Only statuses that became the device's status are recorded, so the
//! timeline agrees with the current status (a will that arrives after the next connection's
//! birth is not drawn as an outage).
//!
//! Counters (`"dr"`, `"jr"`) are compared with the device's previous status row: an increase
//! counts the difference; a value lower than before (the agent restarted, or the journal's
//! counters were lost) counts the new value. The first status of a device has no baseline and
//! counts none.
//!
//! **Bounds.** A periodic status that changes nothing is kept at most once per [`SAMPLE_MS`];
//! changes are all kept, and each device keeps at most [`MAX_ROWS_PER_DEVICE`] rows (a device
//! that flaps loses its oldest rows first: the writer trims a device when its row count passes
//! the cap by [`TRIM_SLACK`], so a trim costs one indexed delete per that many rows). Retention
//! ([`super::retention`]) deletes rows received longer ago than the history keep time
//! (`status_history_by_time`).

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::status::{clock_name, state_name, StatusCounters};
use osprey_protocol::{ClockState, StatusState};

/// Least time between two rows of a device that change nothing (a periodic status otherwise
/// kept): five minutes.
pub const SAMPLE_MS: i64 = 5 * 60_000;

/// Most rows one device keeps (about 69 days of samples at one per [`SAMPLE_MS`]).
pub const MAX_ROWS_PER_DEVICE: i64 = 20_000;

/// How far past [`MAX_ROWS_PER_DEVICE`] a device goes before the writer trims it.
pub const TRIM_SLACK: i64 = 1_000;

/// Most change rows one timeline returns (the newest are kept).
pub const MAX_CHANGES: u32 = 2_000;

/// Change bits of a row (`changes` column).
pub mod change {
    /// Online/offline differs from the previous row (or the device's first row).
    pub const STATE: i64 = 1;
    /// Readings dropped since the previous status row.
    pub const DROPS: i64 = 2;
    /// The gateway replaced a corrupt journal since the previous status row.
    pub const JOURNAL_RESET: i64 = 4;
    /// Clock state differs from the previous status row (or the first status says unsynced).
    pub const CLOCK: i64 = 8;
    /// Boot id differs from the previous status row's: the gateway rebooted.
    pub const REBOOT: i64 = 16;
    /// Names of the bits, in order.
    pub const NAMES: [(i64, &str); 5] = [
        (STATE, "state"),
        (DROPS, "drops"),
        (JOURNAL_RESET, "journal_reset"),
        (CLOCK, "clock"),
        (REBOOT, "reboot"),
    ];
}

/// Schema version 5: the `status_history` table and its indexes, and the per-device row count
/// that bounds it (`devices.status_rows`; 0 for the devices already stored). Part of
/// [`super::schema::migrate`].
pub(super) fn migrate_v5(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS status_history (
             device         TEXT NOT NULL,
             at_ms          INTEGER NOT NULL,
             state          TEXT NOT NULL,
             source         TEXT NOT NULL,
             time_ms        INTEGER,
             epoch          INTEGER,
             seq            INTEGER,
             uptime_s       INTEGER,
             backlog        INTEGER,
             backlog_bytes  INTEGER,
             dropped        INTEGER,
             dropped_quota  INTEGER,
             journal_resets INTEGER,
             clock          TEXT,
             boot_id        TEXT,
             new_drops      INTEGER NOT NULL DEFAULT 0,
             new_resets     INTEGER NOT NULL DEFAULT 0,
             changes        INTEGER NOT NULL
         );
         CREATE INDEX IF NOT EXISTS status_history_by_device ON status_history (device, at_ms);
         CREATE INDEX IF NOT EXISTS status_history_by_time ON status_history (at_ms);
         ALTER TABLE devices ADD COLUMN status_rows INTEGER NOT NULL DEFAULT 0;",
    )
}

/// A status that became a device's status, to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// When the cloud received it.
    pub at_ms: i64,
    /// Online or offline.
    pub state: StatusState,
    /// The device's (or, for a lifecycle event, the broker's) time; 0 = not said.
    pub time_ms: i64,
    /// `(epoch, seq)` of a status message; `None` for a lifecycle event.
    pub position: Option<(u64, u64)>,
    /// A status message's counters; `None` for a lifecycle event, which has none.
    pub counters: Option<&'a StatusCounters>,
}

/// The previous status row's counters.
struct Baseline {
    dropped: u64,
    journal_resets: u64,
    clock: String,
    boot_id: String,
}

/// What a counter went up by from `before` to `now` (a lower value: it restarted from 0).
fn increase(before: u64, now: u64) -> u64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// Records `entry` for `device` if it changes something or the device's last row is at least
/// [`SAMPLE_MS`] old, and trims the device to [`MAX_ROWS_PER_DEVICE`] when it is over by
/// [`TRIM_SLACK`]. The device's row must exist. Returns whether a row was written.
pub(super) fn record(conn: &Connection, device: &str, entry: &Entry<'_>) -> rusqlite::Result<bool> {
    let previous: Option<(String, i64)> = conn
        .prepare_cached(
            "SELECT state, at_ms FROM status_history WHERE device = ?1
             ORDER BY at_ms DESC, rowid DESC LIMIT 1",
        )?
        .query_row(params![device], |row| Ok((row.get(0)?, row.get(1)?)))
        .optional()?;
    let state = state_name(entry.state);
    let mut changes = 0;
    if previous.as_ref().is_none_or(|(s, _)| s != state) {
        changes |= change::STATE;
    }
    let (mut new_drops, mut new_resets) = (0, 0);
    if let Some(c) = entry.counters {
        let clock = clock_name(c.clock);
        match baseline(conn, device)? {
            Some(b) => {
                new_drops = increase(b.dropped, c.dropped);
                new_resets = increase(b.journal_resets, c.journal_resets);
                if b.clock != clock {
                    changes |= change::CLOCK;
                }
                if !b.boot_id.is_empty() && !c.boot_id.is_empty() && b.boot_id != c.boot_id {
                    changes |= change::REBOOT;
                }
            }
            None if c.clock == ClockState::Unsynced => changes |= change::CLOCK,
            None => {}
        }
        if new_drops > 0 {
            changes |= change::DROPS;
        }
        if new_resets > 0 {
            changes |= change::JOURNAL_RESET;
        }
    }
    let recent = previous
        .as_ref()
        .is_some_and(|(_, at)| entry.at_ms.saturating_sub(*at) < SAMPLE_MS);
    if changes == 0 && recent {
        return Ok(false);
    }
    let (epoch, seq) = entry.position.unzip();
    let c = entry.counters;
    let int = |f: fn(&StatusCounters) -> u64| c.map(|c| i64::try_from(f(c)).unwrap_or(i64::MAX));
    conn.prepare_cached(
        "INSERT INTO status_history
             (device, at_ms, state, source, time_ms, epoch, seq, uptime_s, backlog, backlog_bytes,
              dropped, dropped_quota, journal_resets, clock, boot_id, new_drops, new_resets, changes)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?
    .execute(params![
        device,
        entry.at_ms,
        state,
        if c.is_some() { "status" } else { "presence" },
        (entry.time_ms != 0).then_some(entry.time_ms),
        epoch,
        seq,
        int(|c| c.uptime_s),
        int(|c| c.backlog),
        int(|c| c.backlog_bytes),
        int(|c| c.dropped),
        int(|c| c.dropped_quota),
        int(|c| c.journal_resets),
        c.map(|c| clock_name(c.clock)),
        c.map(|c| c.boot_id.as_str()),
        i64::try_from(new_drops).unwrap_or(i64::MAX),
        i64::try_from(new_resets).unwrap_or(i64::MAX),
        changes,
    ])?;
    let rows: i64 = conn
        .prepare_cached(
            "UPDATE devices SET status_rows = status_rows + 1 WHERE device = ?1
             RETURNING status_rows",
        )?
        .query_row(params![device], |row| row.get(0))
        .optional()?
        .unwrap_or(0);
    if rows > MAX_ROWS_PER_DEVICE + TRIM_SLACK {
        trim(conn, device)?;
    }
    Ok(true)
}

/// The device's newest status row's counters (lifecycle rows have none).
fn baseline(conn: &Connection, device: &str) -> rusqlite::Result<Option<Baseline>> {
    conn.prepare_cached(
        "SELECT dropped, journal_resets, clock, boot_id FROM status_history
         WHERE device = ?1 AND source = 'status' ORDER BY at_ms DESC, rowid DESC LIMIT 1",
    )?
    .query_row(params![device], |row| {
        Ok(Baseline {
            dropped: row.get::<_, Option<u64>>(0)?.unwrap_or(0),
            journal_resets: row.get::<_, Option<u64>>(1)?.unwrap_or(0),
            clock: row.get::<_, Option<String>>(2)?.unwrap_or_default(),
            boot_id: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
        })
    })
    .optional()
}

/// Deletes the device's rows older than its [`MAX_ROWS_PER_DEVICE`] newest, and sets its row
/// count to what is left.
fn trim(conn: &Connection, device: &str) -> rusqlite::Result<()> {
    let oldest_kept: Option<i64> = conn
        .prepare_cached(
            "SELECT at_ms FROM status_history WHERE device = ?1
             ORDER BY at_ms DESC, rowid DESC LIMIT 1 OFFSET ?2",
        )?
        .query_row(params![device, MAX_ROWS_PER_DEVICE - 1], |row| row.get(0))
        .optional()?;
    if let Some(at) = oldest_kept {
        let n = conn
            .prepare_cached("DELETE FROM status_history WHERE device = ?1 AND at_ms < ?2")?
            .execute(params![device, at])?;
        tracing::debug!(device, deleted = n, "status history trimmed to its cap");
    }
    conn.prepare_cached(
        "UPDATE devices SET status_rows =
             (SELECT count(*) FROM status_history WHERE device = ?1) WHERE device = ?1",
    )?
    .execute(params![device])?;
    Ok(())
}

/// One row of a device's status timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusPoint {
    /// When the cloud received it (cloud clock, ms since the epoch): where it is drawn.
    pub at_ms: i64,
    /// `online` or `offline`.
    pub state: String,
    /// `status` (the device's status message) or `presence` (a broker lifecycle event).
    pub source: String,
    /// The device's own time of the status (the broker's for a lifecycle event), if said.
    pub time_ms: Option<i64>,
    /// Seconds since the agent started.
    pub uptime_s: Option<u64>,
    /// Messages waiting in the gateway's journal.
    pub backlog: Option<u64>,
    /// Bytes waiting in the gateway's journal.
    pub backlog_bytes: Option<u64>,
    /// Readings dropped, as the gateway counts them.
    pub dropped: Option<u64>,
    /// Of those, dropped by the journal's byte quota.
    pub dropped_quota: Option<u64>,
    /// Times the gateway replaced a corrupt journal, as it counts them.
    pub journal_resets: Option<u64>,
    /// `synced`, `unsynced` or `unknown`.
    pub clock: Option<String>,
    /// Readings dropped since the device's previous status row.
    pub new_drops: u64,
    /// Journal resets since the device's previous status row.
    pub new_resets: u64,
    /// What changed here: `state`, `drops`, `journal_reset`, `clock`, `reboot`; empty for a
    /// sample.
    pub changes: Vec<&'static str>,
}

/// A device's status timeline over a range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StatusTimeline {
    /// Oldest first: the row in force at the range start (if any), then every change in the
    /// range and at most one sample per bucket.
    pub statuses: Vec<StatusPoint>,
    /// More than [`MAX_CHANGES`] changes in the range: the oldest were left out.
    pub statuses_truncated: bool,
    /// The device's oldest kept row (cloud clock): nothing before it is known.
    pub recorded_since_ms: Option<i64>,
}

const COLUMNS: &str = "rowid, at_ms, state, source, time_ms, uptime_s, backlog, backlog_bytes, \
    dropped, dropped_quota, journal_resets, clock, new_drops, new_resets, changes";

fn point(row: &Row<'_>) -> rusqlite::Result<(i64, StatusPoint)> {
    let bits: i64 = row.get(14)?;
    Ok((
        row.get(0)?,
        StatusPoint {
            at_ms: row.get(1)?,
            state: row.get(2)?,
            source: row.get(3)?,
            time_ms: row.get(4)?,
            uptime_s: row.get(5)?,
            backlog: row.get(6)?,
            backlog_bytes: row.get(7)?,
            dropped: row.get(8)?,
            dropped_quota: row.get(9)?,
            journal_resets: row.get(10)?,
            clock: row.get(11)?,
            new_drops: row.get(12)?,
            new_resets: row.get(13)?,
            changes: change::NAMES
                .iter()
                .filter(|(bit, _)| bits & bit != 0)
                .map(|(_, name)| *name)
                .collect(),
        },
    ))
}

/// The status timeline of `device` over `[from_ms, to_ms)` (cloud clock): the row in force at
/// `from_ms`, every change (newest [`MAX_CHANGES`]) and the newest sample of each `bucket_ms`.
pub fn timeline(
    conn: &Connection,
    device: &str,
    from_ms: i64,
    to_ms: i64,
    bucket_ms: i64,
) -> rusqlite::Result<StatusTimeline> {
    let mut rows: Vec<(i64, StatusPoint)> = Vec::new();
    let before = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM status_history WHERE device = ?1 AND at_ms < ?2
             ORDER BY at_ms DESC, rowid DESC LIMIT 1"
        ))?
        .query_row(params![device, from_ms], point)
        .optional()?;
    rows.extend(before);
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM status_history
         WHERE device = ?1 AND at_ms >= ?2 AND at_ms < ?3 AND changes != 0
         ORDER BY at_ms DESC, rowid DESC LIMIT ?4"
    ))?;
    let changes = stmt
        .query_map(params![device, from_ms, to_ms, MAX_CHANGES + 1], point)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let truncated = changes.len() > MAX_CHANGES as usize;
    rows.extend(changes.into_iter().take(MAX_CHANGES as usize));
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM status_history WHERE rowid IN
             (SELECT max(rowid) FROM status_history
              WHERE device = ?1 AND at_ms >= ?2 AND at_ms < ?3 AND changes = 0
              GROUP BY (at_ms - ?2) / ?4)"
    ))?;
    let samples = stmt
        .query_map(params![device, from_ms, to_ms, bucket_ms.max(1)], point)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.extend(samples);
    rows.sort_by_key(|(rowid, p)| (p.at_ms, *rowid));
    let recorded_since_ms = conn
        .prepare_cached("SELECT min(at_ms) FROM status_history WHERE device = ?1")?
        .query_row(params![device], |row| row.get(0))?;
    Ok(StatusTimeline {
        statuses: rows.into_iter().map(|(_, p)| p).collect(),
        statuses_truncated: truncated,
        recorded_since_ms,
    })
}

#[cfg(test)]
mod tests;
