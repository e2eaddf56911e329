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
        received_ms: 1_000 + seq as i64,
        event_ms: Some(START + seq as i64),
        readings,
        windows,
        alert: None,
        status: None,
    })
}

fn alert(device: &str, seq: u64, rule: &str, event: AlertEvent, time_ms: i64) -> Write {
    Write::Message(Message {
        device: device.into(),
        seq,
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
    })
}

fn status(device: &str, seq: u64, state: StatusState) -> Write {
    Write::Message(Message {
        device: device.into(),
        seq,
        received_ms: 9_000,
        event_ms: None,
        readings: 0,
        windows: Vec::new(),
        alert: None,
        status: Some(state),
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
                received_ms: 1,
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
