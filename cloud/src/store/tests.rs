use osprey_protocol::{Alert, AlertEvent, Severity, StatusState};

use super::*;
use crate::window::{Aggregate, WindowDelta, WindowKind};

const START: i64 = 1_700_000_040_000; // a minute boundary

fn delta(values: &[f64]) -> WindowDelta {
    let mut agg = Aggregate::new();
    for &v in values {
        agg.add(v);
    }
    WindowDelta {
        sensor: "bearing".into(),
        metric: "temperature".into(),
        unit: "Cel".into(),
        kind: WindowKind::Tumbling,
        start_ms: START,
        end_ms: START + 60_000,
        agg,
    }
}

fn telemetry(device: &str, seq: u64, windows: Vec<WindowDelta>) -> Write {
    let readings = windows.iter().map(|w| w.agg.count()).sum();
    Write::Message(Message {
        device: device.into(),
        seq,
        epoch: 0,
        received_ms: 1_000 + seq as i64,
        event_ms: Some(START + seq as i64),
        readings,
        windows,
        alert: None,
        status: None,
        telemetry: None,
    })
}

fn alert(device: &str, seq: u64, rule: &str, event: AlertEvent, time_ms: i64) -> Write {
    Write::Message(Message {
        device: device.into(),
        seq,
        epoch: 0,
        received_ms: 5_000,
        event_ms: Some(time_ms),
        readings: 0,
        windows: Vec::new(),
        alert: Some(Alert {
            rule: rule.into(),
            sensor: "bearing".into(),
            metric: "temperature".into(),
            event,
            severity: Severity::Critical,
            value: 81.0,
            threshold: 80.0,
            time_ms,
        }),
        status: None,
        telemetry: None,
    })
}

fn status(device: &str, seq: u64, state: StatusState) -> Write {
    Write::Message(Message {
        device: device.into(),
        seq,
        epoch: 0,
        received_ms: 9_000,
        event_ms: None,
        readings: 0,
        windows: Vec::new(),
        alert: None,
        status: Some(StatusReport {
            state,
            will_seq: 0,
            time_ms: 0,
            counters: Box::default(),
        }),
        telemetry: None,
    })
}

async fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("osprey.db")).unwrap();
    (dir, store)
}

fn all_windows() -> WindowFilter {
    WindowFilter {
        limit: 100,
        ..WindowFilter::default()
    }
}

#[tokio::test]
async fn the_same_message_twice_counts_once() {
    let (_dir, store) = open().await;
    let w = store.writer();
    let msg = telemetry("pump-1", 7, vec![delta(&[39.0, 40.0, 41.0])]);
    assert_eq!(
        w.write(vec![msg.clone()], None).await.unwrap(),
        [Written::Applied]
    );
    assert_eq!(
        w.write(vec![msg.clone(), msg], None).await.unwrap(),
        [Written::Duplicate, Written::Duplicate]
    );
    let r = store.reader();
    let windows = r.windows(all_windows()).await.unwrap();
    assert_eq!(windows.len(), 1);
    assert_eq!(
        (windows[0].moments().count, windows[0].moments().sum),
        (3, 120.0)
    );
    let dev = r.device("pump-1").await.unwrap().unwrap();
    assert_eq!((dev.readings, dev.last_seq), (3, 7));
    assert_eq!(r.counts().await.unwrap().messages, 1);
}

#[tokio::test]
async fn two_messages_merge_into_one_window() {
    let (_dir, store) = open().await;
    let w = store.writer();
    w.write(
        vec![
            telemetry("pump-1", 1, vec![delta(&[39.0, 41.0])]),
            telemetry("pump-1", 2, vec![delta(&[45.0, 55.0])]),
        ],
        None,
    )
    .await
    .unwrap();
    let windows = store.reader().windows(all_windows()).await.unwrap();
    assert_eq!(windows.len(), 1);
    let win = &windows[0];
    assert_eq!(
        (
            win.moments().count,
            win.moments().sum,
            win.moments().min,
            win.moments().max
        ),
        (4, 180.0, 39.0, 55.0)
    );
    assert_eq!(win.moments().mean, 45.0);
    assert_eq!(win.window.version, 2, "two merges");
    let dev = store.reader().device("pump-1").await.unwrap().unwrap();
    assert_eq!(dev.readings, 4);
    assert_eq!(dev.latest, windows);
}

#[tokio::test]
async fn latest_window_per_series_is_the_newest() {
    let (_dir, store) = open().await;
    let mut later = delta(&[50.0]);
    later.start_ms += 60_000;
    later.end_ms += 60_000;
    // The newer window arrives first; the older one (backfill) must not displace it.
    store
        .writer()
        .write(
            vec![
                telemetry("pump-1", 2, vec![later.clone()]),
                telemetry("pump-1", 1, vec![delta(&[40.0])]),
            ],
            None,
        )
        .await
        .unwrap();
    let devices = store.reader().devices().await.unwrap();
    assert_eq!(devices.len(), 1);
    assert_eq!(devices[0].latest.len(), 1);
    assert_eq!(devices[0].latest[0].window.start_ms, later.start_ms);
    assert_eq!(devices[0].last_event_ms, Some(START + 2));
    let windows = store.reader().windows(all_windows()).await.unwrap();
    assert_eq!(windows[0].window.start_ms, later.start_ms, "newest first");
}

#[tokio::test]
async fn active_alerts_follow_each_rules_newest_event() {
    let (_dir, store) = open().await;
    let w = store.writer();
    w.write(
        vec![
            alert("pump-1", 1, "hot", AlertEvent::Raise, 100),
            alert("pump-1", 2, "wet", AlertEvent::Raise, 100),
            alert("pump-1", 4, "wet", AlertEvent::Clear, 300),
            // An older raise arriving late does not reopen the cleared rule.
            alert("pump-1", 3, "wet", AlertEvent::Raise, 200),
        ],
        None,
    )
    .await
    .unwrap();
    let dev = store.reader().device("pump-1").await.unwrap().unwrap();
    assert_eq!(dev.active_alerts, 1);
    let alerts = store
        .reader()
        .alerts(AlertFilter {
            device: Some("pump-1".into()),
            since_ms: None,
            limit: 10,
        })
        .await
        .unwrap();
    let order: Vec<u64> = alerts.iter().map(|a| a.seq).collect();
    assert_eq!(order, [4, 3, 2, 1]);
    assert_eq!(alerts[0].event, "clear");
    assert_eq!(alerts[0].severity, "critical");
}

#[tokio::test]
async fn status_is_the_last_received() {
    let (_dir, store) = open().await;
    let w = store.writer();
    w.write(vec![status("pump-1", 1, StatusState::Online)], None)
        .await
        .unwrap();
    w.write(vec![telemetry("pump-1", 2, vec![])], None)
        .await
        .unwrap();
    let dev = store.reader().device("pump-1").await.unwrap().unwrap();
    assert_eq!(dev.status, "online");
    w.write(vec![status("pump-1", 3, StatusState::Offline)], None)
        .await
        .unwrap();
    let dev = store.reader().device("pump-1").await.unwrap().unwrap();
    assert_eq!(
        (dev.status.as_str(), dev.status_ms),
        ("offline", Some(9_000))
    );
    assert_eq!(dev.first_seen_ms, 1_002);
}

#[tokio::test]
async fn checkpoint_commits_with_the_writes() {
    let (_dir, store) = open().await;
    let cp = Checkpoint {
        stream: "osprey".into(),
        shard_id: "shardId-000000000000".into(),
        sequence_number: "49590".into(),
    };
    store
        .writer()
        .write(vec![telemetry("pump-1", 1, vec![])], Some(cp.clone()))
        .await
        .unwrap();
    let r = store.reader();
    assert_eq!(
        r.checkpoint("osprey", "shardId-000000000000")
            .await
            .unwrap(),
        Some("49590".to_owned())
    );
    assert_eq!(r.checkpoint("osprey", "other").await.unwrap(), None);
}

#[tokio::test]
async fn dead_letters_are_kept() {
    let (_dir, store) = open().await;
    let written = store
        .writer()
        .write(
            vec![Write::DeadLetter(DeadLetter {
                // Now: a dead letter older than its retention (14 days) is deleted at once.
                received_ms: crate::clock::now_ms(),
                source: "mqtt dt/osprey/x/telemetry".into(),
                reason: "malformed".into(),
                payload: vec![0xff; 10],
            })],
            None,
        )
        .await
        .unwrap();
    assert_eq!(written, [Written::DeadLettered]);
    assert_eq!(store.reader().counts().await.unwrap().dead_letters, 1);
}

#[tokio::test]
async fn a_closed_store_reopens_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("osprey.db");
    let store = Store::open(&path).unwrap();
    store
        .writer()
        .write(vec![telemetry("pump-1", 1, vec![delta(&[1.0])])], None)
        .await
        .unwrap();
    store.close().await.unwrap();
    let store = Store::open(&path).unwrap();
    let again = store
        .writer()
        .write(vec![telemetry("pump-1", 1, vec![delta(&[1.0])])], None)
        .await
        .unwrap();
    assert_eq!(again, [Written::Duplicate]);
    assert_eq!(store.reader().counts().await.unwrap().windows, 1);
}

#[tokio::test]
async fn a_database_from_another_schema_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("osprey.db");
    Connection::open(&path)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let err = Store::open(&path).unwrap_err();
    assert!(
        matches!(err, StoreError::IncompatibleSchema { found: 99, .. }),
        "{err}"
    );
}

fn in_epoch(write: Write, epoch: u64) -> Write {
    match write {
        Write::Message(m) => Write::Message(Message { epoch, ..m }),
        other => other,
    }
}

fn status_at(
    device: &str,
    epoch: u64,
    seq: u64,
    state: StatusState,
    will_seq: u64,
    time_ms: i64,
) -> Write {
    Write::Message(Message {
        device: device.into(),
        seq,
        epoch,
        received_ms: 9_000 + seq as i64,
        event_ms: Some(time_ms),
        readings: 0,
        windows: Vec::new(),
        alert: None,
        status: Some(StatusReport {
            state,
            will_seq,
            time_ms,
            counters: Box::default(),
        }),
        telemetry: None,
    })
}

#[tokio::test]
async fn the_same_seq_in_another_epoch_is_a_new_message() {
    let (_dir, store) = open().await;
    let w = store.writer();
    let first = telemetry("pump-1", 1, vec![delta(&[1.0])]);
    assert_eq!(
        w.write(vec![first.clone()], None).await.unwrap(),
        [Written::Applied]
    );
    let replaced = in_epoch(first.clone(), 77);
    assert_eq!(
        w.write(vec![replaced.clone(), first], None).await.unwrap(),
        [Written::Applied, Written::Duplicate]
    );
    assert_eq!(
        w.write(vec![replaced], None).await.unwrap(),
        [Written::Duplicate]
    );
    let r = store.reader();
    assert_eq!(r.counts().await.unwrap().messages, 2);
    assert_eq!(
        r.windows(all_windows()).await.unwrap()[0]
            .window
            .agg
            .count(),
        2
    );
}

#[tokio::test]
async fn a_new_epoch_records_journal_replaced_once() {
    let (_dir, store) = open().await;
    let w = store.writer();
    // A device whose very first epoch is non-zero has no replaced journal.
    w.write(vec![in_epoch(telemetry("pump-2", 1, vec![]), 5)], None)
        .await
        .unwrap();
    w.write(vec![telemetry("pump-1", 1, vec![])], None)
        .await
        .unwrap();
    for seq in 1..=3 {
        w.write(vec![in_epoch(telemetry("pump-1", seq, vec![]), 42)], None)
            .await
            .unwrap();
    }
    // A late message of the old journal is no new epoch.
    w.write(vec![telemetry("pump-1", 2, vec![])], None)
        .await
        .unwrap();
    let r = store.reader();
    let dev = r.device("pump-1").await.unwrap().unwrap();
    assert_eq!(
        dev.events,
        [DeviceEvent {
            kind: "journal_replaced".into(),
            time_ms: 1_001,
            old_epoch: 0,
            new_epoch: 42,
        }]
    );
    assert!(r.device("pump-2").await.unwrap().unwrap().events.is_empty());
    let all = r.devices().await.unwrap();
    assert_eq!(all[0].events.len(), 1, "the fleet list shows it too");
}

#[tokio::test]
async fn an_older_online_after_an_offline_is_ignored() {
    let (_dir, store) = open().await;
    let w = store.writer();
    w.write(
        vec![
            status_at("pump-1", 3, 20, StatusState::Offline, 0, 2_000),
            status_at("pump-1", 3, 11, StatusState::Online, 10, 1_000),
        ],
        None,
    )
    .await
    .unwrap();
    let dev = store.reader().device("pump-1").await.unwrap().unwrap();
    assert_eq!(dev.status, "offline");
}

#[tokio::test]
async fn a_will_after_the_next_birth_is_ignored() {
    let (_dir, store) = open().await;
    let w = store.writer();
    w.write(
        vec![
            status_at("pump-1", 3, 11, StatusState::Online, 10, 1_000),
            status_at("pump-1", 3, 31, StatusState::Online, 30, 3_000),
            status_at("pump-1", 3, 10, StatusState::Offline, 0, 1_000),
        ],
        None,
    )
    .await
    .unwrap();
    let dev = store.reader().device("pump-1").await.unwrap().unwrap();
    assert_eq!(dev.status, "online");
}

#[tokio::test]
async fn the_will_of_the_current_connection_is_applied() {
    let (_dir, store) = open().await;
    let w = store.writer();
    w.write(
        vec![
            status_at("pump-1", 3, 11, StatusState::Online, 10, 1_000),
            status_at("pump-1", 3, 15, StatusState::Online, 10, 1_500),
            status_at("pump-1", 3, 10, StatusState::Offline, 0, 1_000),
        ],
        None,
    )
    .await
    .unwrap();
    let dev = store.reader().device("pump-1").await.unwrap().unwrap();
    assert_eq!(dev.status, "offline");
}

#[tokio::test]
async fn statuses_of_different_epochs_are_ordered_by_time() {
    let (_dir, store) = open().await;
    let w = store.writer();
    w.write(
        vec![
            status_at("pump-1", 8, 2, StatusState::Online, 1, 5_000),
            // The old journal's offline, taken earlier, arrives late: ignored.
            status_at("pump-1", 3, 900, StatusState::Offline, 0, 4_000),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        store
            .reader()
            .device("pump-1")
            .await
            .unwrap()
            .unwrap()
            .status,
        "online"
    );
    // A later lifecycle event (broker time) wins.
    w.write(
        vec![Write::Presence(Presence {
            device: "pump-1".into(),
            state: StatusState::Offline,
            time_ms: 6_000,
            received_ms: 7_000,
        })],
        None,
    )
    .await
    .unwrap();
    let dev = store.reader().device("pump-1").await.unwrap().unwrap();
    assert_eq!(
        (dev.status.as_str(), dev.status_ms),
        ("offline", Some(7_000))
    );
}

/// The version-2 DDL, as osprey wrote it before journal epochs (copied, not shared, so the
/// test keeps testing the file format of version 2 whatever the current DDL becomes).
pub(super) const SCHEMA_2_DDL: &str = r#"
CREATE TABLE devices (
    device        TEXT PRIMARY KEY NOT NULL,
    first_seen_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    last_event_ms INTEGER,
    last_seq      INTEGER NOT NULL,
    readings      INTEGER NOT NULL DEFAULT 0,
    status        TEXT,
    status_ms     INTEGER
);
CREATE TABLE seen (
    device TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    PRIMARY KEY (device, seq)
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
    sketch   BLOB NOT NULL,
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
CREATE INDEX alerts_by_time ON alerts (time_ms);
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
);
"#;

#[tokio::test]
async fn a_version_2_file_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("osprey.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA_2_DDL).unwrap();
        // The dead letter is recent: an old one would fall to the dead-letter retention.
        let now = crate::clock::now_ms();
        conn.execute_batch(&format!(
            "INSERT INTO devices VALUES ('pump-1', 100, 200, 150, 2, 4, 'online', 190);
             INSERT INTO seen VALUES ('pump-1', 1), ('pump-1', 2);
             INSERT INTO alerts VALUES
                 ('pump-1', 2, 'hot', 'bearing', 'temperature', 'raise', 'critical', 81, 80, 150);
             INSERT INTO dead_letters (received_ms, source, reason, size, payload)
                 VALUES ({now}, 'x', 'bad', 1, x'ff');"
        ))
        .unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
    }
    let store = Store::open(&path).unwrap();
    let w = store.writer();
    // The old rows are epoch 0: a repeat of seq 2 is a duplicate ...
    assert_eq!(
        w.write(vec![telemetry("pump-1", 2, vec![])], None)
            .await
            .unwrap(),
        [Written::Duplicate]
    );
    // ... and seq 2 of a new journal is new, and says the journal was replaced.
    assert_eq!(
        w.write(vec![in_epoch(telemetry("pump-1", 2, vec![]), 9)], None)
            .await
            .unwrap(),
        [Written::Applied]
    );
    // The stored status has no mark: the next status replaces it.
    w.write(
        vec![status_at("pump-1", 9, 3, StatusState::Offline, 0, 1)],
        None,
    )
    .await
    .unwrap();
    let r = store.reader();
    let counts = r.counts().await.unwrap();
    assert_eq!(
        (counts.messages, counts.alerts, counts.dead_letters),
        (4, 1, 1)
    );
    let dev = r.device("pump-1").await.unwrap().unwrap();
    assert_eq!(dev.status, "offline");
    assert_eq!(
        dev.events
            .iter()
            .map(|e| (e.kind.as_str(), e.old_epoch, e.new_epoch))
            .collect::<Vec<_>>(),
        [("journal_replaced", 0, 9)]
    );
    drop(w);
    store.close().await.unwrap();
    let version: i64 = Connection::open(&path)
        .unwrap()
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
    // Opening the upgraded file again changes nothing.
    let store = Store::open(&path).unwrap();
    assert_eq!(store.reader().counts().await.unwrap().messages, 4);
}
