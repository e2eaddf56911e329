//! The SQLite schema and the pragmas every connection gets.
//!
//! | table | key | holds |
//! |---|---|---|
//! | `devices` | device | first/last seen (cloud clock), newest event time, highest seq, reading count, status and the mark that orders it (epoch, seq, will seq, device time), rows in `status_history` |
//! | `status_history` | rowid; (device, at_ms) | the statuses a device held: state, counters (backlog, drops, journal resets, clock state, boot id), what changed, received time ([`super::timeline`]) |
//! | `seen` | (device, epoch, seq) | every message applied (`applied_ms`, cloud clock): the dedup set, pruned by [`super::retention`] |
//! | `epochs` | (device, epoch) | every journal epoch seen per device, with the cloud time it was first seen |
//! | `device_events` | (device, kind, new_epoch) | device events: `journal_replaced` (cloud time, old and new epoch) |
//! | `windows` | (device, sensor, metric, kind, start_ms) | tumbling, hopping and session windows: end, unit, version (merges), corrections (late merges), count, sum, min, max, mean, central moments `m2..m4`, quantile sketch (bytes) |
//! | `signals` | (device, sensor, metric) | the series' maintenance signals (JSON), recomputed when its tumbling windows change |
//! | `series` | (device, sensor, metric) | unit and newest tumbling window start, so "latest per series" is a key lookup |
//! | `alerts` | (device, epoch, seq) | every alert event |
//! | `alert_state` | (device, rule) | each rule's newest event, so "active alerts" is a count |
//! | `alert_outputs` | name | the alert outputs of the running serve ([`crate::alerts::outbox::register`]) |
//! | `alert_outbox` | (output, device, epoch, seq) | alert events not yet taken by an output, written with the alert ([`crate::alerts::outbox`]) |
//! | `checkpoints` | (stream, shard_id) | last Kinesis sequence number applied per shard |
//! | `dead_letters` | id; unique `key` (source position) | payloads that could not be applied, with the reason, bounded ([`super::deadletter`]) |
//! | `maintenance` | name | counts of what retention and the dead-letter caps deleted |
//! | `archive_targets` | dir | the archive directory of the running serve, if any: the writer spools readings only then ([`crate::archive`]) |
//! | `archive_spool` | id | the readings of applied telemetry messages (one row per series) not yet in an archive file |
//! | `archive_files` | name | the archive files written: spool ids, readings, hour |
//! | `device_rules` | device | the device's latest rules report (JSON) and the hash of the document set for it, with when serve received each ([`super::device_rules`]) |
//!
//! `series` and `alert_state` are derived from `windows` and `alerts` in the same transaction;
//! they exist so the fleet view costs O(series), not O(history).
//!
//! ## Versions
//!
//! | version | change |
//! |---|---|
//! | 2 | the tables above, dedup by `(device, seq)` |
//! | 3 | journal epochs (protocol 1.3): `seen` and `alerts` keyed by `(device, epoch, seq)`, the `epochs` and `device_events` tables, the status mark columns of `devices`; bounded dead letters and retention; the alert outbox |
//! | 4 | `windows.corrections`: how many times late data changed a window after it had closed (`version` counts every merge) |
//! | 5 | `status_history` (a device's statuses over time with their counters, bounded: [`super::timeline`]) and `devices.status_rows`, its per-device row count |
//! | 6 | the archive's tables (`archive_targets`, `archive_spool`, `archive_files`: [`crate::archive`]), empty on upgrade; `device_rules` (the rules each device reports it runs, and the document set for it: [`super::device_rules`]) |
//! | 7 | `rule_changes`, `rule_change_devices`: the rules changes operators recorded through the API ([`super::rule_changes`]), empty on upgrade |
//!
//! [`migrate`] upgrades a version-2 to 6 file in place, in one transaction: the rows of `seen` and
//! `alerts` get epoch 0 (what a pre-1.3 gateway's messages are), each device that has messages
//! gets epoch 0 in `epochs` (so its first 1.3 epoch reads as a replaced journal only if it
//! really is one: a kept journal stays at epoch 0), and stored statuses keep no mark (the next
//! status of any epoch replaces them) (2 → 3); windows already stored get `corrections` 0, as
//! what late data corrected before is not known (3 → 4); the status history starts empty, as
//! the statuses held before were not kept, and every device's row count is 0 (4 → 5); the
//! devices' rules start unknown until their retained reports arrive again, which they do when
//! serve subscribes (5 → 6). Each upgrade is a step function of its own.

use rusqlite::Connection;

/// Schema version kept in `PRAGMA user_version`.
pub const SCHEMA_VERSION: i64 = 7;

/// How long a connection waits for another's lock before giving up.
pub const BUSY_TIMEOUT_MS: u64 = 5_000;

/// The version-2 tables; a new file gets them, then every step up to [`SCHEMA_VERSION`].
const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS devices (
    device        TEXT PRIMARY KEY NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    last_event_ms INTEGER,
    last_seq      INTEGER NOT NULL,
    readings      INTEGER NOT NULL DEFAULT 0,
    status        TEXT,
    status_ms     INTEGER,
    status_epoch    INTEGER,
    status_seq      INTEGER,
    status_will_seq INTEGER,
    status_time_ms  INTEGER
);
CREATE TABLE IF NOT EXISTS seen (
    device TEXT NOT NULL,
    epoch  INTEGER NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (device, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS epochs (
    device        TEXT NOT NULL,
    epoch         INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (device, epoch)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS device_events (
    device    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    time_ms   INTEGER NOT NULL,
    old_epoch INTEGER NOT NULL,
    new_epoch INTEGER NOT NULL,
    PRIMARY KEY (device, kind, new_epoch)
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
    epoch     INTEGER NOT NULL DEFAULT 0,
    seq       INTEGER NOT NULL,
    rule      TEXT NOT NULL,
    sensor    TEXT NOT NULL,
    metric    TEXT NOT NULL,
    event     TEXT NOT NULL,
    severity  TEXT NOT NULL,
    value     REAL,
    threshold REAL,
    time_ms   INTEGER NOT NULL,
    PRIMARY KEY (device, epoch, seq)
);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (time_ms);
CREATE TABLE IF NOT EXISTS alert_outputs (
    name TEXT PRIMARY KEY NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_outbox (
    output   TEXT NOT NULL,
    device   TEXT NOT NULL,
    epoch    INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (output, device, epoch, seq)
) WITHOUT ROWID;
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

/// Puts the writer connection in WAL mode, creates the tables if they are missing and
/// upgrades a version-2 to 5 file in place (one transaction: all of it or none).
///
/// WAL lets the API's read connections see committed data while the writer works.
/// `synchronous = FULL` makes every commit durable (the WAL is synced before the commit
/// returns) as well as atomic: the MQTT source acknowledges a batch once its transaction
/// committed, and the broker then forgets it, so a commit a power cut could take back would
/// lose those messages. With a transaction per batch that is one sync per batch (NORMAL, which
/// may lose the last commits on a power cut, was chosen when every message had its own).
pub fn migrate(conn: &Connection) -> rusqlite::Result<Migration> {
    configure(conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let found: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    if ![0, 2, 3, 4, 5, 6, SCHEMA_VERSION].contains(&found) {
        return Ok(Migration::Incompatible { found });
    }
    // One transaction: a crash leaves the file at its old version, and the next open
    // upgrades it again.
    let tx = conn.unchecked_transaction()?;
    if found == 2 {
        ingest_epochs_2_to_3(&tx)?;
    }
    tx.execute_batch(DDL)?;
    tx.execute_batch(crate::archive::DDL)?;
    if found < 3 {
        super::deadletter::migrate_v3(&tx)?;
        super::retention::migrate_v3(&tx, crate::clock::now_ms())?;
    }
    if found < 4 {
        corrections_3_to_4(&tx)?;
    }
    if found < 5 {
        super::timeline::migrate_v5(&tx)?;
    }
    if found < 6 {
        super::device_rules::migrate_v6(&tx)?;
    }
    if found < 7 {
        super::rule_changes::migrate_v7(&tx)?;
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    if (2..SCHEMA_VERSION).contains(&found) {
        tracing::info!(
            from = found,
            to = SCHEMA_VERSION,
            "store schema upgraded in place"
        );
    }
    Ok(Migration::Current)
}

/// Version 3 → 4: the windows' correction count (0 for the windows already stored).
fn corrections_3_to_4(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch("ALTER TABLE windows ADD COLUMN corrections INTEGER NOT NULL DEFAULT 0;")
}

/// The ingest step of version 2 → 3: journal epochs in the dedup set and the alerts (old rows
/// are epoch 0), every device with messages known at epoch 0, and the status mark columns
/// (empty: a stored status without a mark yields to the next one).
fn ingest_epochs_2_to_3(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE seen_v3 (
             device TEXT NOT NULL,
             epoch  INTEGER NOT NULL,
             seq    INTEGER NOT NULL,
             PRIMARY KEY (device, epoch, seq)
         ) WITHOUT ROWID;
         INSERT INTO seen_v3 (device, epoch, seq) SELECT device, 0, seq FROM seen;
         DROP TABLE seen;
         ALTER TABLE seen_v3 RENAME TO seen;

         CREATE TABLE alerts_v3 (
             device    TEXT NOT NULL,
             epoch     INTEGER NOT NULL DEFAULT 0,
             seq       INTEGER NOT NULL,
             rule      TEXT NOT NULL,
             sensor    TEXT NOT NULL,
             metric    TEXT NOT NULL,
             event     TEXT NOT NULL,
             severity  TEXT NOT NULL,
             value     REAL,
             threshold REAL,
             time_ms   INTEGER NOT NULL,
             PRIMARY KEY (device, epoch, seq)
         );
         INSERT INTO alerts_v3
             (device, epoch, seq, rule, sensor, metric, event, severity, value, threshold, time_ms)
             SELECT device, 0, seq, rule, sensor, metric, event, severity, value, threshold, time_ms
             FROM alerts;
         DROP TABLE alerts;
         ALTER TABLE alerts_v3 RENAME TO alerts;
         CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (time_ms);

         ALTER TABLE devices ADD COLUMN status_epoch INTEGER;
         ALTER TABLE devices ADD COLUMN status_seq INTEGER;
         ALTER TABLE devices ADD COLUMN status_will_seq INTEGER;
         ALTER TABLE devices ADD COLUMN status_time_ms INTEGER;

         CREATE TABLE IF NOT EXISTS epochs (
             device        TEXT NOT NULL,
             epoch         INTEGER NOT NULL,
             first_seen_ms INTEGER NOT NULL,
             PRIMARY KEY (device, epoch)
         ) WITHOUT ROWID;
         INSERT OR IGNORE INTO epochs (device, epoch, first_seen_ms)
             SELECT d.device, 0, d.first_seen_ms FROM devices d
             WHERE EXISTS (SELECT 1 FROM seen s WHERE s.device = d.device);",
    )
}
