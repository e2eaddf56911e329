//! The SQLite schema and the pragmas every connection gets.
//!
//! | table | key | holds |
//! |---|---|---|
//! | `devices` | device | first/last seen (cloud clock), newest event time, highest seq, reading count, status |
//! | `seen` | (device, seq) | every message applied: the dedup set |
//! | `windows` | (device, sensor, metric, kind, start_ms) | tumbling, hopping and session windows: end, unit, version, count, sum, min, max, mean, central moments `m2..m4`, quantile sketch (bytes) |
//! | `signals` | (device, sensor, metric) | the series' maintenance signals (JSON), recomputed when its tumbling windows change |
//! | `series` | (device, sensor, metric) | unit and newest tumbling window start, so "latest per series" is a key lookup |
//! | `alerts` | (device, seq) | every alert event |
//! | `alert_state` | (device, rule) | each rule's newest event, so "active alerts" is a count |
//! | `checkpoints` | (stream, shard_id) | last Kinesis sequence number applied per shard |
//! | `dead_letters` | id | payloads that did not decode, with the reason |
//!
//! `series` and `alert_state` are derived from `windows` and `alerts` in the same transaction;
//! they exist so the fleet view costs O(series), not O(history).

use rusqlite::Connection;

/// Schema version kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 2;

/// How long a connection waits for another's lock before giving up.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS devices (
    device        TEXT PRIMARY KEY NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    last_event_ms INTEGER,
    last_seq      INTEGER NOT NULL,
    readings      INTEGER NOT NULL DEFAULT 0,
    status        TEXT,
    status_ms     INTEGER
);
CREATE TABLE IF NOT EXISTS seen (
    device TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (device, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS windows (
    device   TEXT NOT NULL,
    sensor   TEXT NOT NULL,
    metric   TEXT NOT NULL,
    kind     TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms   INTEGER NOT NULL,
    unit     TEXT NOT NULL,
    version  INTEGER NOT NULL,
    count    INTEGER NOT NULL,
    sum      REAL,
    min      REAL NOT NULL,
    max      REAL NOT NULL,
    mean     REAL,
    m2       REAL,
    m3       REAL,
    m4       REAL,
    sketch   BLOB NOT NULL,
    PRIMARY KEY (device, sensor, metric, kind, start_ms)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS windows_by_start ON windows (start_ms);
CREATE TABLE IF NOT EXISTS series (
    device          TEXT NOT NULL,
    sensor          TEXT NOT NULL,
    metric          TEXT NOT NULL,
    unit            TEXT NOT NULL,
    latest_start_ms INTEGER NOT NULL,
    PRIMARY KEY (device, sensor, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS signals (
    device   TEXT NOT NULL,
    sensor   TEXT NOT NULL,
    metric   TEXT NOT NULL,
    as_of_ms INTEGER NOT NULL,
    body     TEXT NOT NULL,
    PRIMARY KEY (device, sensor, metric)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS alerts (
    device    TEXT NOT NULL,
    seq       INTEGER NOT NULL,
    rule      TEXT NOT NULL,
    sensor    TEXT NOT NULL,
    metric    TEXT NOT NULL,
    event     TEXT NOT NULL,
    severity  TEXT NOT NULL,
    value     REAL,
    threshold REAL,
    time_ms   INTEGER NOT NULL,
    PRIMARY KEY (device, seq)
);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (time_ms);
CREATE TABLE IF NOT EXISTS alert_state (
    device   TEXT NOT NULL,
    rule     TEXT NOT NULL,
    event    TEXT NOT NULL,
    time_ms  INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (device, rule)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS checkpoints (
    stream          TEXT NOT NULL,
    shard_id        TEXT NOT NULL,
    sequence_number TEXT NOT NULL,
    updated_ms      INTEGER NOT NULL,
    PRIMARY KEY (stream, shard_id)
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id          INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    payload     BLOB NOT NULL
);
"#;

/// Pragmas for every connection: wait for locks rather than fail at once.
pub fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(std::time::Duration::from_millis(BUSY_TIMEOUT_MS))
}

/// What [`migrate`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Migration {
    /// The schema was created or already current.
    Current,
    /// The file was written by a different schema version; nothing was changed.
    Incompatible {
        /// Version in the file.
        found: i64,
    },
}

/// Puts the writer connection in WAL mode and creates the tables if they are missing.
///
/// WAL lets the API's read connections see committed data while the writer works.
/// `synchronous = NORMAL` in WAL mode keeps every commit atomic and consistent; a power cut
/// can lose the last commits, which the sources re-deliver (MQTT persistent session, Kinesis
/// checkpoint lost with them) and dedup absorbs.
pub fn migrate(conn: &Connection) -> rusqlite::Result<Migration> {
    configure(conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if found != 0 && found != SCHEMA_VERSION {
        return Ok(Migration::Incompatible { found });
    }
    conn.execute_batch(DDL)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(Migration::Current)
}
