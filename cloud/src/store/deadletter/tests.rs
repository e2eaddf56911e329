use rusqlite::Connection;

use super::*;
use crate::analytics::signals::SignalsConfig;
use crate::store::retention::RetentionConfig;
use crate::store::{schema, Store, Write, Written};

#[test]
fn keys_name_the_position_or_the_bytes() {
    let k = key("kinesis:s/shardId-0/4959", b"x", 1);
    assert_eq!(k, "kinesis:s/shardId-0/4959");
    assert_eq!(key("kinesis:s/shardId-0/4959", b"other", 99), k);
    let m = key("mqtt:dt/osprey/a/telemetry", b"x", 1_000);
    assert_eq!(m, key("mqtt:dt/osprey/a/telemetry", b"x", DAY_MS - 1));
    assert_ne!(m, key("mqtt:dt/osprey/a/telemetry", b"x", DAY_MS));
    assert_ne!(m, key("mqtt:dt/osprey/a/telemetry", b"y", 1_000));
    assert_ne!(m, key("mqtt:dt/osprey/b/telemetry", b"x", 1_000));
    // SHA-256("x")
    assert!(
        m.starts_with("mqtt:dt/osprey/a/telemetry#2d711642b726b044"),
        "{m}"
    );
    assert_eq!(key("direct:t", b"x", 1), key("direct:t", b"x", 5 * DAY_MS));
}

fn letter(source: &str, payload: Vec<u8>, received_ms: i64) -> Write {
    Write::DeadLetter(DeadLetter {
        received_ms,
        source: source.into(),
        reason: "malformed".into(),
        payload,
    })
}

fn open_with(limits: DeadLetterLimits) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = RetentionConfig {
        dead_letters: limits,
        ..RetentionConfig::default()
    };
    let store = Store::open_configured(dir.path().join("osprey.db"), SignalsConfig::default(), cfg)
        .unwrap();
    (dir, store)
}

async fn all(store: &Store) -> Vec<DeadLetterRow> {
    store
        .reader()
        .dead_letters(DeadLetterFilter {
            before: None,
            limit: 10_000,
            payload: true,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_record_read_again_is_stored_once() {
    let (_dir, store) = open_with(DeadLetterLimits::default());
    let now = crate::clock::now_ms();
    let batch = || {
        vec![
            letter("kinesis:s/shardId-0/1", vec![1], now),
            letter("kinesis:s/shardId-0/2", vec![2], now),
        ]
    };
    for _ in 0..3 {
        let written = store.writer().write(batch(), None).await.unwrap();
        assert_eq!(written, [Written::DeadLettered, Written::DeadLettered]);
    }
    // The same bytes on MQTT the same day: once; on another topic: another row.
    for topic in ["a", "a", "b"] {
        let source = format!("mqtt:dt/osprey/{topic}/telemetry");
        store
            .writer()
            .write(vec![letter(&source, vec![9; 3], now)], None)
            .await
            .unwrap();
    }
    let rows = all(&store).await;
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(store.maintenance().snapshot().dead_letters_repeated, 5);
    assert_eq!(rows[3].source, "kinesis:s/shardId-0/1");
    assert_eq!(rows[3].payload_hex.as_deref(), Some("01"));
}

#[tokio::test]
async fn payloads_are_cut_and_the_table_stays_within_its_caps() {
    let limits = DeadLetterLimits {
        max_count: 50,
        max_bytes: 10 * 1024,
        max_payload_bytes: 1024,
        retention: None,
    };
    let (_dir, store) = open_with(limits);
    let now = crate::clock::now_ms();
    for i in 0..200u32 {
        let size = if i % 2 == 0 { 4096 } else { 100 };
        let source = format!("kinesis:s/shardId-0/{i}");
        store
            .writer()
            .write(vec![letter(&source, vec![i as u8; size], now)], None)
            .await
            .unwrap();
        let rows = all(&store).await;
        assert!(rows.len() <= 50, "{} rows", rows.len());
        assert!(rows.iter().map(|r| r.stored).sum::<u64>() <= 10 * 1024);
    }
    let rows = all(&store).await;
    // Newest first, and the newest is always kept.
    assert_eq!(rows[0].source, "kinesis:s/shardId-0/199");
    let big = rows.iter().find(|r| r.size == 4096).unwrap();
    assert_eq!(big.stored, 1024);
    // The survivors are the newest ones: ids strictly above every evicted one.
    let kept = rows.len() as u64;
    let m = store.maintenance().snapshot();
    assert_eq!(m.dead_letters_evicted, 200 - kept);
    assert_eq!(m.dead_letters_truncated, 100);
    assert!(rows.windows(2).all(|w| w[0].id == w[1].id + 1));
}

#[tokio::test]
async fn expired_dead_letters_go_at_the_next_pass_and_are_counted() {
    let limits = DeadLetterLimits {
        retention: Some(std::time::Duration::from_secs(3600)),
        ..DeadLetterLimits::default()
    };
    let (dir, store) = open_with(limits.clone());
    let now = crate::clock::now_ms();
    store
        .writer()
        .write(
            vec![
                letter("direct:old", vec![1], now - 2 * 3_600_000),
                letter("direct:new", vec![2], now),
            ],
            None,
        )
        .await
        .unwrap();
    store.close().await.unwrap();
    // Reopening runs a pass after the first job.
    let store = Store::open_configured(
        dir.path().join("osprey.db"),
        SignalsConfig::default(),
        RetentionConfig {
            dead_letters: limits,
            ..RetentionConfig::default()
        },
    )
    .unwrap();
    store.writer().write(Vec::new(), None).await.unwrap();
    store.writer().write(Vec::new(), None).await.unwrap();
    let rows = all(&store).await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0].source, "direct:new");
    assert_eq!(store.maintenance().snapshot().dead_letters_expired, 1);
    store.close().await.unwrap();
    // Counts survive a restart (they are in the file).
    let store = Store::open(dir.path().join("osprey.db")).unwrap();
    assert_eq!(store.maintenance().snapshot().dead_letters_expired, 1);
}

#[tokio::test]
async fn listing_pages_newest_first() {
    let (_dir, store) = open_with(DeadLetterLimits::default());
    let writes = (0..5)
        .map(|i| letter(&format!("direct:{i}"), vec![i], crate::clock::now_ms()))
        .collect();
    store.writer().write(writes, None).await.unwrap();
    let reader = store.reader();
    let page = |before| {
        reader.dead_letters(DeadLetterFilter {
            before,
            limit: 2,
            payload: false,
        })
    };
    let first = page(None).await.unwrap();
    assert_eq!(
        first.iter().map(|r| r.source.as_str()).collect::<Vec<_>>(),
        ["direct:4", "direct:3"]
    );
    assert!(first[0].payload_hex.is_none());
    let second = page(Some(first[1].id)).await.unwrap();
    assert_eq!(second[0].source, "direct:2");
}

#[test]
fn a_version_2_file_is_upgraded_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v2.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(crate::store::tests::SCHEMA_2_DDL)
            .unwrap();
        conn.pragma_update(None, "user_version", 2).unwrap();
        conn.execute(
            "INSERT INTO dead_letters (received_ms, source, reason, size, payload)
             VALUES (1, 'mqtt:dt/osprey/a/telemetry', 'bad', ?1, ?2)",
            rusqlite::params![100_000, vec![7u8; 100_000]],
        )
        .unwrap();
        conn.execute("INSERT INTO seen (device, seq) VALUES ('a', 1)", [])
            .unwrap();
    }
    let conn = Connection::open(&path).unwrap();
    assert_eq!(schema::migrate(&conn).unwrap(), schema::Migration::Current);
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, schema::SCHEMA_VERSION);
    let (key, size, stored): (String, i64, i64) = conn
        .query_row(
            "SELECT key, size, length(payload) FROM dead_letters",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(
        (key.as_str(), size, stored),
        ("v2:1", 100_000, DEFAULT_MAX_PAYLOAD_BYTES as i64)
    );
    let applied: Option<i64> = conn
        .query_row("SELECT applied_ms FROM seen", [], |r| r.get(0))
        .unwrap();
    assert!(applied.unwrap() > 1_577_836_800_000);
    // Migrating again changes nothing.
    assert_eq!(schema::migrate(&conn).unwrap(), schema::Migration::Current);
    drop(conn);
    // And the store opens it and dedups on the new key.
    let store = Store::open(&path).unwrap();
    drop(store);
}
