//! Dead letters: payloads the pipeline could not apply, each stored once, within a bound.
//!
//! On-disk rules (table `dead_letters`, schema version 3):
//!
//! - **Once per source position.** Every row has a `key` (unique index) that names where the
//!   payload came from, and the insert is `ON CONFLICT (key) DO NOTHING`, so a payload read
//!   again (a Kinesis batch re-read after a crash between the SQLite commit and the DynamoDB
//!   checkpoint save, a batch retried after a failed save, an MQTT redelivery) is not stored
//!   again. The key, by source ([`key`]):
//!   - Kinesis: `kinesis:<stream>/<shard>/<sequence number>`: the record's own position,
//!     stable across every re-read.
//!   - MQTT: `mqtt:<topic>#<SHA-256 of the payload>@<UTC day received>`. MQTT has no stable
//!     position (packet ids are reused), so the key is the authenticated topic and the bytes,
//!     within a day. Not `(device, epoch, seq)` from the envelope: most dead letters do not
//!     decode, and for those that do, the claimed identity is exactly what may be wrong (an
//!     identity mismatch), so a device could pre-empt another's key. The trade-off: the same
//!     junk published twice on one topic in one day is stored once (the pipeline's `rejected`
//!     counter and the `dead_letters_repeated` counter still count every copy), and a
//!     redelivery that crosses midnight UTC is stored a second time.
//!   - Direct (in-process callers): `direct:<label>#<SHA-256 of the payload>`.
//!   - Rows written by schema version 2 get `v2:<id>`.
//! - **Truncated payloads.** At most [`DeadLetterLimits::max_payload_bytes`] (16 KiB by
//!   default) of a payload is kept; `size` keeps the original length, so `size >
//!   length(payload)` means truncated.
//! - **Bounded.** After an insert, and at every maintenance pass, the oldest rows (lowest
//!   `id`, i.e. first stored) are evicted until at most `max_count` rows and `max_bytes` of
//!   kept payload remain (10 000 rows and 64 MiB by default); rows older than the retention
//!   (14 days by default, by the cloud's receive time) are deleted by the maintenance pass
//!   ([`super::retention`]). Evictions and expiries are counted in the `maintenance` table
//!   (exact across crashes: same transaction), shown in `/api/stats` and Prometheus.
//! - Owner: the store writer thread; read by `GET /api/dead-letters` and `osprey dead-letters`.

use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::retention::Tally;
use super::writer::DeadLetter;

/// Default most dead letters kept.
pub const DEFAULT_MAX_COUNT: u64 = 10_000;
/// Default most payload bytes kept over all dead letters.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default most bytes of one payload kept.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 16 * 1024;
/// Default retention, in days.
pub const DEFAULT_RETENTION_DAYS: f64 = 14.0;

const DAY_MS: i64 = 86_400_000;

/// How many dead letters are kept, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterLimits {
    /// Most rows kept; the oldest go first.
    pub max_count: u64,
    /// Most payload bytes (as kept, after truncation) over all rows; the oldest go first.
    pub max_bytes: u64,
    /// Most bytes of one payload kept; the rest is cut (its full size is recorded).
    pub max_payload_bytes: usize,
    /// Rows received longer ago than this are deleted; `None` keeps them until evicted.
    pub retention: Option<Duration>,
}

impl Default for DeadLetterLimits {
    fn default() -> DeadLetterLimits {
        DeadLetterLimits {
            max_count: DEFAULT_MAX_COUNT,
            max_bytes: DEFAULT_MAX_BYTES,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            retention: Some(Duration::from_secs_f64(DEFAULT_RETENTION_DAYS * 86_400.0)),
        }
    }
}

/// The stored key of a dead letter (see the module doc). `source` is the pipeline's
/// `Origin` as text (`kinesis:…`, `mqtt:…`, `direct:…`).
pub fn key(source: &str, payload: &[u8], received_ms: i64) -> String {
    if source.starts_with("kinesis:") {
        return source.to_owned();
    }
    let digest = hex::encode(Sha256::digest(payload));
    if source.starts_with("mqtt:") {
        format!("{source}#{digest}@{}", received_ms.div_euclid(DAY_MS))
    } else {
        format!("{source}#{digest}")
    }
}

/// Stores `d` unless a dead letter with its key is stored, then evicts the oldest rows over
/// the caps. Returns whether it was stored.
pub(super) fn insert(
    tx: &Transaction<'_>,
    d: &DeadLetter,
    limits: &DeadLetterLimits,
    tally: &mut Tally,
) -> rusqlite::Result<bool> {
    let kept = &d.payload[..d.payload.len().min(limits.max_payload_bytes)];
    let stored =
        tx.prepare_cached(
            "INSERT INTO dead_letters (key, received_ms, source, reason, size, payload)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (key) DO NOTHING",
        )?
        .execute(params![
            key(&d.source, &d.payload, d.received_ms),
            d.received_ms,
            d.source,
            d.reason,
            d.payload.len(),
            kept
        ])? == 1;
    if !stored {
        tally.dead_letters_repeated += 1;
        return Ok(false);
    }
    if kept.len() < d.payload.len() {
        tally.dead_letters_truncated += 1;
    }
    evict_over_caps(tx, limits, tally)?;
    Ok(true)
}

/// Deletes the oldest rows until the table is within `max_count` and `max_bytes`.
pub(super) fn evict_over_caps(
    conn: &Connection,
    limits: &DeadLetterLimits,
    tally: &mut Tally,
) -> rusqlite::Result<()> {
    let (mut count, mut bytes): (u64, u64) = conn
        .prepare_cached("SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM dead_letters")?
        .query_row([], |row| Ok((row.get(0)?, row.get(1)?)))?;
    if count <= limits.max_count && bytes <= limits.max_bytes {
        return Ok(());
    }
    let mut last = None;
    let mut evicted = 0;
    {
        let mut stmt =
            conn.prepare_cached("SELECT id, length(payload) FROM dead_letters ORDER BY id")?;
        let mut rows = stmt.query([])?;
        while count > limits.max_count || bytes > limits.max_bytes {
            let Some(row) = rows.next()? else { break };
            let (id, len): (i64, u64) = (row.get(0)?, row.get(1)?);
            count -= 1;
            bytes = bytes.saturating_sub(len);
            evicted += 1;
            last = Some(id);
        }
    }
    if let Some(last) = last {
        conn.prepare_cached("DELETE FROM dead_letters WHERE id <= ?1")?
            .execute([last])?;
        tally.dead_letters_evicted += evicted;
        tracing::warn!(
            evicted,
            max_count = limits.max_count,
            max_bytes = limits.max_bytes,
            "dead letters over their cap; oldest evicted"
        );
    }
    Ok(())
}

/// Deletes up to `batch` dead letters received before `cutoff_ms`; returns how many.
pub(super) fn expire(conn: &Connection, cutoff_ms: i64, batch: u32) -> rusqlite::Result<u64> {
    let n = conn
        .prepare_cached(
            "DELETE FROM dead_letters WHERE id IN
                 (SELECT id FROM dead_letters WHERE received_ms < ?1 ORDER BY id LIMIT ?2)",
        )?
        .execute(params![cutoff_ms, batch])?;
    Ok(n as u64)
}

/// Schema version 3's changes to `dead_letters`, on a version-2 table: the unique `key`
/// (rows from version 2 get `v2:<id>`), an index by receive time for the retention, and
/// payloads cut to the default cap (`size` keeps their length). Part of the 2 → 3 migration.
pub(super) fn migrate_v3(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "ALTER TABLE dead_letters ADD COLUMN key TEXT;
         UPDATE dead_letters SET key = 'v2:' || id WHERE key IS NULL;
         UPDATE dead_letters SET payload = substr(payload, 1, {DEFAULT_MAX_PAYLOAD_BYTES})
             WHERE length(payload) > {DEFAULT_MAX_PAYLOAD_BYTES};
         CREATE UNIQUE INDEX IF NOT EXISTS dead_letters_by_key ON dead_letters (key);
         CREATE INDEX IF NOT EXISTS dead_letters_by_received ON dead_letters (received_ms);"
    ))
}

/// One dead letter as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterRow {
    /// Row id; newer rows have higher ids (the `before` of the next page).
    pub id: i64,
    /// When the cloud received it (ms since the Unix epoch).
    pub received_ms: i64,
    /// Where it came from (`kinesis:stream/shard/seq`, `mqtt:topic`, `direct:label`).
    pub source: String,
    /// Why it was rejected.
    pub reason: String,
    /// The payload's size as received, in bytes.
    pub size: u64,
    /// Bytes kept (less than `size` when the payload was cut).
    pub stored: u64,
    /// The kept payload in hex, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_hex: Option<String>,
}

/// What to list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterFilter {
    /// Only rows with an id below this (paging, newest first).
    pub before: Option<i64>,
    /// Most rows.
    pub limit: u32,
    /// Include the payload as hex.
    pub payload: bool,
}

/// Dead letters, newest first.
pub fn list(conn: &Connection, f: &DeadLetterFilter) -> rusqlite::Result<Vec<DeadLetterRow>> {
    let payload = if f.payload { "payload" } else { "NULL" };
    let mut stmt = conn.prepare(&format!(
        "SELECT id, received_ms, source, reason, size, length(payload), {payload}
         FROM dead_letters WHERE id < ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt
        .query_map(params![f.before.unwrap_or(i64::MAX), f.limit], |row| {
            let bytes: Option<Vec<u8>> = row.get(6)?;
            Ok(DeadLetterRow {
                id: row.get(0)?,
                received_ms: row.get(1)?,
                source: row.get(2)?,
                reason: row.get(3)?,
                size: row.get(4)?,
                stored: row.get(5)?,
                payload_hex: bytes.map(hex::encode),
            })
        })?
        .collect();
    rows
}

/// The oldest row's receive time, if any (for tests and tools).
pub fn oldest_received_ms(conn: &Connection) -> rusqlite::Result<Option<i64>> {
    conn.query_row("SELECT MIN(received_ms) FROM dead_letters", [], |row| {
        row.get(0)
    })
    .optional()
    .map(Option::flatten)
}

#[cfg(test)]
mod tests;
