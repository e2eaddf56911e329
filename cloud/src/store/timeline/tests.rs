use osprey_protocol::{ClockState, StatusState};
use rusqlite::Connection;

use super::*;
use crate::store::retention::tests::apply;
use crate::store::retention::{self, days, MaintenanceStats, RetentionConfig};
use crate::store::{schema, Message, Presence, StatusCounters, StatusReport, Store, Write};

const T0: i64 = 1_700_000_040_000;
const MIN: i64 = 60_000;

/// A status message of `device` (epoch 1) received at `at_ms`.
fn status(seq: u64, state: StatusState, at_ms: i64, counters: StatusCounters) -> Write {
    Write::Message(Message {
        device: "pump-1".into(),
        seq,
        epoch: 1,
        received_ms: at_ms,
        event_ms: Some(at_ms),
        readings: 0,
        windows: Vec::new(),
        alert: None,
        status: Some(StatusReport {
            state,
            will_seq: 0,
            time_ms: at_ms,
            counters: Box::new(counters),
        }),
        telemetry: None,
    })
}

fn counters(dropped: u64, clock: ClockState, boot: &str) -> StatusCounters {
    StatusCounters {
        backlog: dropped * 10,
        dropped,
        clock,
        boot_id: boot.into(),
        ..StatusCounters::default()
    }
}

fn fresh() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("osprey.db")).unwrap();
    schema::migrate(&conn).unwrap();
    (dir, conn)
}

fn all(conn: &Connection) -> StatusTimeline {
    timeline(conn, "pump-1", 0, i64::MAX, MIN).unwrap()
}

fn summary(t: &StatusTimeline) -> Vec<(i64, &str, Vec<&str>, u64)> {
    t.statuses
        .iter()
        .map(|p| {
            (
                (p.at_ms - T0) / MIN,
                p.state.as_str(),
                p.changes.clone(),
                p.new_drops,
            )
        })
        .collect()
}

#[test]
fn changes_are_all_kept_and_quiet_statuses_once_per_sample_interval() {
    use ClockState::{Synced, Unsynced};
    use StatusState::{Offline, Online};
    let (_dir, mut conn) = fresh();
    let c = |d, clock| counters(d, clock, "boot-a");
    apply(
        &mut conn,
        &[
            // Birth with an unsynced clock and 7 drops of the past (no baseline: not new).
            status(1, Online, T0, counters(7, Unsynced, "boot-a")),
            // Quiet minute by minute: only the one 5 minutes after the last row is kept.
            status(2, Online, T0 + MIN, c(7, Unsynced)),
            status(3, Online, T0 + 4 * MIN, c(7, Unsynced)),
            status(4, Online, T0 + 5 * MIN, c(7, Unsynced)),
            // The clock syncs; then 3 readings are dropped.
            status(5, Online, T0 + 6 * MIN, c(7, Synced)),
            status(6, Online, T0 + 7 * MIN, c(10, Synced)),
            // Offline, then back after a reboot whose agent counts drops from 0 again.
            status(7, Offline, T0 + 8 * MIN, c(10, Synced)),
            status(8, Online, T0 + 20 * MIN, counters(2, Synced, "boot-b")),
        ],
    );
    assert_eq!(
        summary(&all(&conn)),
        [
            (0, "online", vec!["state", "clock"], 0),
            (5, "online", vec![], 0),
            (6, "online", vec!["clock"], 0),
            (7, "online", vec!["drops"], 3),
            (8, "offline", vec!["state"], 0),
            (20, "online", vec!["state", "drops", "reboot"], 2),
        ]
    );
    let t = all(&conn);
    assert_eq!(t.statuses[0].clock.as_deref(), Some("unsynced"));
    assert_eq!(t.statuses[3].backlog, Some(100));
    assert_eq!(t.recorded_since_ms, Some(T0));
    assert!(!t.statuses_truncated);
}

#[test]
fn a_status_that_loses_to_a_newer_one_is_not_drawn() {
    use StatusState::{Offline, Online};
    let (_dir, mut conn) = fresh();
    let birth = |seq, at| status(seq, Online, at, StatusCounters::default());
    // Connection 2's birth (seq 31) arrives before connection 1's will (seq 10).
    apply(&mut conn, &[birth(11, T0), birth(31, T0 + MIN)]);
    apply(
        &mut conn,
        &[status(10, Offline, T0 + 2 * MIN, StatusCounters::default())],
    );
    assert_eq!(summary(&all(&conn)), [(0, "online", vec!["state"], 0)]);
}

#[test]
fn lifecycle_events_are_recorded_without_counters() {
    let (_dir, mut conn) = fresh();
    apply(
        &mut conn,
        &[
            status(
                1,
                StatusState::Online,
                T0,
                counters(5, ClockState::Synced, "b"),
            ),
            Write::Presence(Presence {
                device: "pump-1".into(),
                state: StatusState::Offline,
                time_ms: T0 + MIN,
                received_ms: T0 + MIN,
            }),
            // Back online: drops are compared with the last status message, not the event.
            status(
                2,
                StatusState::Online,
                T0 + 2 * MIN,
                counters(6, ClockState::Synced, "b"),
            ),
        ],
    );
    let t = all(&conn);
    assert_eq!(
        summary(&t),
        [
            (0, "online", vec!["state"], 0),
            (1, "offline", vec!["state"], 0),
            (2, "online", vec!["state", "drops"], 1),
        ]
    );
    assert_eq!(
        (t.statuses[1].source.as_str(), t.statuses[1].dropped),
        ("presence", None)
    );
}

#[test]
fn a_range_gets_the_status_in_force_at_its_start_and_one_sample_per_bucket() {
    let (_dir, mut conn) = fresh();
    let quiet = |seq: u64, at| status(seq, StatusState::Online, at, StatusCounters::default());
    // A row every 5 minutes for 2 hours: one change, then 24 samples.
    let writes: Vec<Write> = (0..25)
        .map(|i| quiet(i + 1, T0 + i as i64 * 5 * MIN))
        .collect();
    apply(&mut conn, &writes);
    let t = timeline(&conn, "pump-1", T0 + 60 * MIN, T0 + 120 * MIN, 30 * MIN).unwrap();
    let at: Vec<i64> = t.statuses.iter().map(|p| (p.at_ms - T0) / MIN).collect();
    // 55 is in force at 60; the buckets [60, 90) and [90, 120) give their newest sample.
    assert_eq!(at, [55, 85, 115]);
    // Nothing of another device.
    assert!(timeline(&conn, "pump-2", 0, i64::MAX, MIN)
        .unwrap()
        .statuses
        .is_empty());
}

#[test]
fn a_flapping_device_is_trimmed_to_its_cap() {
    let (_dir, conn) = fresh();
    conn.execute(
        "INSERT INTO devices (device, first_seen_ms, last_seen_ms, last_seq) VALUES ('pump-1', 0, 0, 0)",
        [],
    )
    .unwrap();
    let n = MAX_ROWS_PER_DEVICE + TRIM_SLACK + 1;
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..n {
        let entry = Entry {
            at_ms: T0 + i,
            state: if i % 2 == 0 {
                StatusState::Online
            } else {
                StatusState::Offline
            },
            time_ms: 0,
            position: None,
            counters: None,
        };
        assert!(
            record(&tx, "pump-1", &entry).unwrap(),
            "every flap is a change"
        );
    }
    tx.commit().unwrap();
    let (rows, oldest, kept): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), min(at_ms), (SELECT status_rows FROM devices) FROM status_history",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((rows, kept), (MAX_ROWS_PER_DEVICE, MAX_ROWS_PER_DEVICE));
    assert_eq!(oldest, T0 + n - MAX_ROWS_PER_DEVICE, "the oldest rows went");
}

#[test]
fn retention_prunes_rows_received_before_the_keep_time() {
    let (_dir, mut conn) = fresh();
    let now = crate::clock::now_ms();
    let day = 86_400_000;
    apply(
        &mut conn,
        &[
            status(
                1,
                StatusState::Online,
                now - 40 * day,
                StatusCounters::default(),
            ),
            status(
                2,
                StatusState::Offline,
                now - 20 * day,
                StatusCounters::default(),
            ),
            status(3, StatusState::Online, now - day, StatusCounters::default()),
        ],
    );
    let cfg = RetentionConfig {
        history: Some(days(30.0)),
        ..RetentionConfig::default()
    };
    let stats = MaintenanceStats::default();
    assert!(retention::pass(&mut conn, &cfg, now, &stats).unwrap());
    let t = all(&conn);
    assert_eq!(
        t.statuses
            .iter()
            .map(|p| p.state.as_str())
            .collect::<Vec<_>>(),
        ["offline", "online"]
    );
    assert_eq!(stats.snapshot().status_pruned, 1);
}

/// The schema of a version-4 file, as `osprey serve` of that version created it.
const SCHEMA_4_DDL: &str = r#"
CREATE TABLE devices (
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
CREATE TABLE seen (
    device TEXT NOT NULL,
    epoch  INTEGER NOT NULL,
    seq    INTEGER NOT NULL, applied_ms INTEGER,
    PRIMARY KEY (device, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE epochs (
    device        TEXT NOT NULL,
    epoch         INTEGER NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (device, epoch)
) WITHOUT ROWID;
CREATE TABLE device_events (
    device    TEXT NOT NULL,
    kind      TEXT NOT NULL,
    time_ms   INTEGER NOT NULL,
    old_epoch INTEGER NOT NULL,
    new_epoch INTEGER NOT NULL,
    PRIMARY KEY (device, kind, new_epoch)
) WITHOUT ROWID;
CREATE TABLE windows (
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
    sketch   BLOB NOT NULL, corrections INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (device, sensor, metric, kind, start_ms)
) WITHOUT ROWID;
CREATE INDEX windows_by_start ON windows (start_ms);
CREATE TABLE series (
    device          TEXT NOT NULL,
    sensor          TEXT NOT NULL,
    metric          TEXT NOT NULL,
    unit            TEXT NOT NULL,
    latest_start_ms INTEGER NOT NULL,
    PRIMARY KEY (device, sensor, metric)
) WITHOUT ROWID;
CREATE TABLE signals (
    device   TEXT NOT NULL,
    sensor   TEXT NOT NULL,
    metric   TEXT NOT NULL,
    as_of_ms INTEGER NOT NULL,
    body     TEXT NOT NULL,
    PRIMARY KEY (device, sensor, metric)
) WITHOUT ROWID;
CREATE TABLE alerts (
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
CREATE INDEX alerts_by_time ON alerts (time_ms);
CREATE TABLE alert_outputs (
    name TEXT PRIMARY KEY NOT NULL
);
CREATE TABLE alert_outbox (
    output   TEXT NOT NULL,
    device   TEXT NOT NULL,
    epoch    INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_ms  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (output, device, epoch, seq)
) WITHOUT ROWID;
CREATE TABLE alert_state (
    device   TEXT NOT NULL,
    rule     TEXT NOT NULL,
    event    TEXT NOT NULL,
    time_ms  INTEGER NOT NULL,
    seq      INTEGER NOT NULL,
    PRIMARY KEY (device, rule)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
    stream          TEXT NOT NULL,
    shard_id        TEXT NOT NULL,
    sequence_number TEXT NOT NULL,
    updated_ms      INTEGER NOT NULL,
    PRIMARY KEY (stream, shard_id)
);
CREATE TABLE dead_letters (
    id          INTEGER PRIMARY KEY,
    received_ms INTEGER NOT NULL,
    source      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    size        INTEGER NOT NULL,
    payload     BLOB NOT NULL
, key TEXT);
CREATE UNIQUE INDEX dead_letters_by_key ON dead_letters (key);
CREATE INDEX dead_letters_by_received ON dead_letters (received_ms);
CREATE TABLE maintenance (
    name  TEXT PRIMARY KEY NOT NULL,
    value INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX seen_by_applied ON seen (applied_ms);
"#;

#[tokio::test]
async fn a_version_4_file_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("osprey.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_4_DDL).unwrap();
        conn.execute_batch(
            "INSERT INTO devices VALUES
                 ('pump-1', 100, 200, 150, 2, 4, 'online', 190, 1, 2, 1, 180);
             INSERT INTO seen VALUES ('pump-1', 1, 1, 100), ('pump-1', 1, 2, 190);
             INSERT INTO epochs VALUES ('pump-1', 1, 100);",
        )
        .unwrap();
        conn.pragma_update(None, "user_version", 4).unwrap();
    }
    let store = Store::open(&path).unwrap();
    let w = store.writer();
    // The stored status stays; the history starts empty and fills from the next status.
    let r = store.reader();
    assert_eq!(r.device("pump-1").await.unwrap().unwrap().status, "online");
    assert!(r
        .status_timeline("pump-1", 0, i64::MAX, MIN)
        .await
        .unwrap()
        .statuses
        .is_empty());
    // Received now: retention (which runs when a store opens) keeps it.
    let now = crate::clock::now_ms();
    w.write(
        vec![status(
            3,
            StatusState::Offline,
            now,
            StatusCounters::default(),
        )],
        None,
    )
    .await
    .unwrap();
    let t = r.status_timeline("pump-1", 0, i64::MAX, MIN).await.unwrap();
    assert_eq!(
        t.statuses
            .iter()
            .map(|p| (p.at_ms, p.state.as_str(), p.changes.clone()))
            .collect::<Vec<_>>(),
        [(now, "offline", vec!["state"])]
    );
    drop(w);
    store.close().await.unwrap();
    let conn = Connection::open(&path).unwrap();
    let (version, rows): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT user_version FROM pragma_user_version), status_rows FROM devices",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .unwrap();
    assert_eq!((version, rows), (schema::SCHEMA_VERSION, 1));
    drop(conn);
    // Opening the upgraded file again changes nothing.
    let store = Store::open(&path).unwrap();
    let t = store
        .reader()
        .status_timeline("pump-1", 0, i64::MAX, MIN)
        .await
        .unwrap();
    assert_eq!(t.statuses.len(), 1);
}
