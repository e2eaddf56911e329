use osprey_protocol::{
    Alert, AlertEvent, Body, Envelope, Series, Severity, Status, StatusState, TelemetryBatch,
};

use super::*;
use crate::store::{Store, WindowFilter};

const T0: i64 = 1_700_000_000_000;

fn telemetry(device: &str, seq: u64) -> Vec<u8> {
    let mut s = Series::new("bearing", "temperature", "Cel");
    s.push(T0, 40.0);
    s.push(T0 + 1_000, 42.0);
    Envelope::new(
        device,
        seq,
        Body::Telemetry(TelemetryBatch { series: vec![s] }),
    )
    .encode()
    .unwrap()
}

/// Up to 10 stored windows.
async fn first_windows(store: &Store) -> Vec<crate::store::WindowRow> {
    store
        .reader()
        .windows(WindowFilter {
            limit: 10,
            ..WindowFilter::default()
        })
        .await
        .unwrap()
}

fn direct() -> Origin {
    Origin::Direct("test".into())
}

fn open() -> (tempfile::TempDir, Store, Pipeline) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("osprey.db")).unwrap();
    let pipeline = Pipeline::new(store.writer());
    (dir, store, pipeline)
}

#[tokio::test]
async fn garbage_is_rejected_and_ingest_goes_on() {
    let (_dir, store, pipeline) = open();
    for garbage in [
        &b""[..],
        b"\xff\xfe",
        b"{\"json\": true}",
        &[0xa1, 0x61, 0x76, 0x09],
    ] {
        let outcome = pipeline.ingest(garbage, direct()).await.unwrap();
        assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");
    }
    assert_eq!(
        pipeline
            .ingest(&telemetry("pump-1", 1), direct())
            .await
            .unwrap(),
        Outcome::Applied
    );
    let stats = pipeline.stats();
    assert_eq!((stats.applied, stats.rejected), (1, 4));
    let counts = store.reader().counts().await.unwrap();
    assert_eq!((counts.messages, counts.dead_letters), (1, 4));
}

#[tokio::test]
async fn a_redelivered_message_is_a_duplicate() {
    let (_dir, store, pipeline) = open();
    let payload = telemetry("pump-1", 1);
    assert_eq!(
        pipeline.ingest(&payload, direct()).await.unwrap(),
        Outcome::Applied
    );
    assert_eq!(
        pipeline.ingest(&payload, direct()).await.unwrap(),
        Outcome::Duplicate
    );
    let windows = first_windows(&store).await;
    assert_eq!(windows.len(), 1);
    assert_eq!(
        (windows[0].moments().count, windows[0].moments().mean),
        (2, 41.0)
    );
    assert_eq!(pipeline.stats().duplicates, 1);
}

#[tokio::test]
async fn a_batch_reports_each_outcome_and_stores_the_checkpoint() {
    let (_dir, store, pipeline) = open();
    let (a, b) = (telemetry("pump-1", 1), telemetry("pump-2", 1));
    let origin = |n: &str| Origin::Kinesis {
        stream: "s".into(),
        shard_id: "shard-0".into(),
        sequence_number: n.into(),
        partition_key: if n == "3" { "pump-2" } else { "pump-1" }.into(),
    };
    let outcomes = pipeline
        .ingest_batch(
            vec![
                (&a, origin("1")),
                (b"nope", origin("2")),
                (&b, origin("3")),
                (&a, origin("4")),
            ],
            Some(Checkpoint {
                stream: "s".into(),
                shard_id: "shard-0".into(),
                sequence_number: "4".into(),
            }),
        )
        .await
        .unwrap();
    assert_eq!(outcomes[0], Outcome::Applied);
    assert!(matches!(outcomes[1], Outcome::Rejected(_)));
    assert_eq!(outcomes[2], Outcome::Applied);
    assert_eq!(outcomes[3], Outcome::Duplicate);
    assert_eq!(
        store.reader().checkpoint("s", "shard-0").await.unwrap(),
        Some("4".into())
    );
}

#[test]
fn mqtt_topic_must_match_the_payload() {
    let payload = telemetry("pump-1", 1);
    let on = |topic: &str| {
        prepare(
            &payload,
            &Origin::Mqtt {
                topic: topic.into(),
            },
            0,
        )
    };
    assert!(on("dt/osprey/pump-1/telemetry").is_ok());
    let err = on("dt/osprey/pump-2/telemetry").unwrap_err();
    assert_eq!(
        err.reason,
        "identity mismatch: payload claims device pump-1, source is pump-2"
    );
    let err = on("dt/osprey/pump-1/alerts").unwrap_err();
    assert!(err.reason.contains("kind"), "{err}");
}

#[test]
fn prepare_fills_in_readings_windows_and_event_time() {
    let m = prepare(&telemetry("pump-1", 9), &direct(), 5).unwrap();
    assert_eq!((m.device.as_str(), m.seq, m.received_ms), ("pump-1", 9, 5));
    assert_eq!((m.readings, m.event_ms), (2, Some(T0 + 1_000)));
    assert_eq!(m.windows.len(), 1);

    let alert = Alert {
        rule: "hot".into(),
        sensor: "bearing".into(),
        metric: "temperature".into(),
        event: AlertEvent::Raise,
        severity: Severity::Warning,
        value: 81.0,
        threshold: 80.0,
        time_ms: T0,
    };
    let bytes = Envelope::new("pump-1", 10, Body::Alert(alert.clone()))
        .encode()
        .unwrap();
    let m = prepare(&bytes, &direct(), 5).unwrap();
    assert_eq!((m.alert, m.event_ms), (Some(alert), Some(T0)));

    let status = Status {
        time_ms: 0,
        ..Status::new(StatusState::Offline)
    };
    let bytes = Envelope::new("pump-1", 11, Body::Status(status))
        .encode()
        .unwrap();
    let m = prepare(&bytes, &direct(), 5).unwrap();
    assert_eq!(
        (m.status.map(|s| s.state), m.event_ms),
        (Some(StatusState::Offline), None)
    );
}

#[test]
fn sequence_numbers_beyond_sqlite_integers_are_rejected() {
    let bytes = Envelope::new(
        "pump-1",
        u64::MAX,
        Body::Telemetry(TelemetryBatch::default()),
    )
    .encode()
    .unwrap();
    let err = prepare(&bytes, &direct(), 0).unwrap_err();
    assert!(err.reason.contains("sequence number"), "{err}");
}

fn bundle(device: &str, seqs: &[u64]) -> Vec<u8> {
    let inner: Vec<Vec<u8>> = seqs.iter().map(|&q| telemetry(device, q)).collect();
    let refs: Vec<&[u8]> = inner.iter().map(Vec::as_slice).collect();
    osprey_protocol::encode_bundle(device, *seqs.last().unwrap(), &refs).unwrap()
}

#[tokio::test]
async fn a_bundle_applies_each_inner_message_with_its_own_dedup() {
    let (_dir, store, pipeline) = open();
    let mqtt = Origin::Mqtt {
        topic: "dt/osprey/pump-1/telemetry".into(),
    };
    // Seq 2 arrived alone before; the bundle repeats it among new ones.
    pipeline
        .ingest(&telemetry("pump-1", 2), mqtt.clone())
        .await
        .unwrap();
    let outcome = pipeline
        .ingest(&bundle("pump-1", &[1, 2, 3]), mqtt.clone())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Applied);
    let stats = pipeline.stats();
    assert_eq!((stats.applied, stats.duplicates), (3, 1));
    // The same bundle again changes nothing.
    let again = pipeline
        .ingest(&bundle("pump-1", &[1, 2, 3]), mqtt)
        .await
        .unwrap();
    assert_eq!(again, Outcome::Duplicate);
    let counts = store.reader().counts().await.unwrap();
    assert_eq!(counts.messages, 3);
    let windows = first_windows(&store).await;
    assert_eq!(windows[0].moments().count, 6, "3 messages of 2 readings");
}

#[tokio::test]
async fn a_bundle_on_another_devices_topic_is_dead_lettered_whole() {
    let (_dir, store, pipeline) = open();
    let wrong = Origin::Mqtt {
        topic: "dt/osprey/pump-2/telemetry".into(),
    };
    let outcome = pipeline
        .ingest(&bundle("pump-1", &[1, 2]), wrong)
        .await
        .unwrap();
    let Outcome::Rejected(reason) = outcome else {
        panic!("{outcome:?}")
    };
    assert!(reason.starts_with("identity mismatch"), "{reason}");
    assert_eq!(pipeline.stats().identity_mismatches, 1);
    let alerts_topic = Origin::Mqtt {
        topic: "dt/osprey/pump-1/alerts".into(),
    };
    let outcome = pipeline
        .ingest(&bundle("pump-1", &[3, 4]), alerts_topic)
        .await
        .unwrap();
    assert!(matches!(outcome, Outcome::Rejected(r) if r.contains("does not match topic kind")));
    let counts = store.reader().counts().await.unwrap();
    assert_eq!((counts.messages, counts.dead_letters), (0, 2));
}
