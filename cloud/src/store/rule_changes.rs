//! The `rule_changes` table: the rules changes operators made with `osprey rules set`, as the
//! API received them (`POST /api/rules/changes`), each with who recorded it as the server
//! authenticated the caller, and which devices it named.
//!
//! ```text
//!  Write::RuleChange(id, time, recorded_by, record, devices)
//!      ─► INSERT rule_changes (id) ── id known ─► Written::Duplicate (a retried POST)
//!         └─► rule_change_devices (device, time, id) for each device of its results
//!  list(device?, limit) ─► newest first (by the change's time, then id)
//! ```
//!
//! The record is kept as the JSON the CLI wrote ([`crate::rules::changes::ChangeRecord`]);
//! the table is schema version 7 ([`super::schema`]). Changes are few (one per `set`), so
//! nothing prunes them.

use rusqlite::{params, Connection, Transaction};

use super::writer::Written;

/// A change to record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeWrite {
    /// The change's id (`YYYYMMDDThhmmssZ-xxxxxxxx`).
    pub id: String,
    /// When the set started, ms since the Unix epoch (as the CLI said).
    pub time_ms: i64,
    /// When serve recorded it (cloud clock).
    pub recorded_ms: i64,
    /// Who recorded it: the name of the API token the request presented.
    pub recorded_by: String,
    /// The record's JSON.
    pub record: String,
    /// The devices its results name.
    pub devices: Vec<String>,
}

/// A stored change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRow {
    /// When serve recorded it.
    pub recorded_ms: i64,
    /// Who recorded it (the token's name).
    pub recorded_by: String,
    /// The record's JSON.
    pub record: String,
}

/// Schema version 7: the rules change tables. Part of [`super::schema::migrate`].
pub(super) fn migrate_v7(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS rule_changes (
             id          TEXT PRIMARY KEY NOT NULL,
             time_ms     INTEGER NOT NULL,
             recorded_ms INTEGER NOT NULL,
             recorded_by TEXT NOT NULL,
             record      TEXT NOT NULL
         ) WITHOUT ROWID;
         CREATE INDEX IF NOT EXISTS rule_changes_time ON rule_changes (time_ms, id);
         CREATE TABLE IF NOT EXISTS rule_change_devices (
             device  TEXT NOT NULL,
             time_ms INTEGER NOT NULL,
             id      TEXT NOT NULL,
             PRIMARY KEY (device, time_ms, id)
         ) WITHOUT ROWID;",
    )
}

/// Records `change`, unless a change with its id is recorded already.
pub(super) fn apply(tx: &Transaction<'_>, change: &ChangeWrite) -> rusqlite::Result<Written> {
    let inserted = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO rule_changes (id, time_ms, recorded_ms, recorded_by, record)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![
            change.id,
            change.time_ms,
            change.recorded_ms,
            change.recorded_by,
            change.record
        ])?;
    if inserted == 0 {
        return Ok(Written::Duplicate);
    }
    let mut device = tx.prepare_cached(
        "INSERT OR IGNORE INTO rule_change_devices (device, time_ms, id) VALUES (?1, ?2, ?3)",
    )?;
    for d in &change.devices {
        device.execute(params![d, change.time_ms, change.id])?;
    }
    Ok(Written::Applied)
}

/// At most `limit` changes, newest first; only those naming `device` when given.
pub fn list(
    conn: &Connection,
    device: Option<&str>,
    limit: u32,
) -> rusqlite::Result<Vec<ChangeRow>> {
    let row = |r: &rusqlite::Row<'_>| {
        Ok(ChangeRow {
            recorded_ms: r.get(0)?,
            recorded_by: r.get(1)?,
            record: r.get(2)?,
        })
    };
    match device {
        None => conn
            .prepare_cached(
                "SELECT recorded_ms, recorded_by, record FROM rule_changes
                 ORDER BY time_ms DESC, id DESC LIMIT ?1",
            )?
            .query_map(params![limit], row)?
            .collect(),
        Some(device) => conn
            .prepare_cached(
                "SELECT c.recorded_ms, c.recorded_by, c.record
                 FROM rule_change_devices d JOIN rule_changes c ON c.id = d.id
                 WHERE d.device = ?1 ORDER BY d.time_ms DESC, d.id DESC LIMIT ?2",
            )?
            .query_map(params![device, limit], row)?
            .collect(),
    }
}
