//! Retention over a long simulated run: synthetic envelopes with event times spread over 120
//! days go through the real pipeline (`serve::start`'s pipeline: decode, dedup, windows,
//! alerts) into SQLite, with windows and alerts kept 10 days and the dedup set 2 seconds.
//! The database file (main file + WAL) and the row counts must stop growing once the
//! retention applies; the figures are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::path::Path;
use std::time::{Duration, Instant};

use osprey_cloud::pipeline::Origin;
use osprey_cloud::serve::{self, ServeConfig, SourceConfig};
use osprey_cloud::store::retention::days;
use osprey_cloud::store::RetentionConfig;
use osprey_protocol::{Alert, AlertEvent, Body, Envelope, Series, Severity, TelemetryBatch};

const DEVICES: u64 = 3;
const DAYS: i64 = 120;
const KEEP_DAYS: i64 = 10;
/// Messages per device per simulated day, each an hour of one reading a minute.
const MESSAGES_PER_DAY: i64 = 24;
const DAY_MS: i64 = 86_400_000;

fn telemetry(device: &str, seq: u64, start_ms: i64) -> Vec<u8> {
    let mut series = Series::new("bearing", "temperature", "Cel");
    for minute in 0..60 {
        series.push(start_ms + minute * 60_000, 40.0 + (minute % 7) as f64);
    }
    Envelope::new(
        device,
        seq,
        Body::Telemetry(TelemetryBatch {
            series: vec![series],
        }),
    )
    .encode()
    .unwrap()
}

fn alert(device: &str, seq: u64, time_ms: i64) -> Vec<u8> {
    let alert = Alert {
        rule: "hot".into(),
        sensor: "bearing".into(),
        metric: "temperature".into(),
        event: if seq % 2 == 0 {
            AlertEvent::Raise
        } else {
            AlertEvent::Clear
        },
        severity: Severity::Warning,
        value: 81.0,
        threshold: 80.0,
        time_ms,
    };
    Envelope::new(device, seq, Body::Alert(alert))
        .encode()
        .unwrap()
}

/// Main file + WAL.
fn db_bytes(db: &Path) -> u64 {
    let wal = db.with_extension("db-wal");
    std::fs::metadata(db).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_with_retention_stops_the_database_growing() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("osprey.db");
    let mut cfg = ServeConfig::new(&db, "127.0.0.1:0".parse().unwrap(), SourceConfig::None);
    cfg.retention = RetentionConfig {
        history: Some(days(KEEP_DAYS as f64)),
        dedup: Some(Duration::from_secs(2)),
        // A pass after every write: the test checks the bound, not the pacing.
        interval: Duration::ZERO,
        ..RetentionConfig::default()
    };
    let running = serve::start(cfg).await.unwrap();
    let pipeline = running.pipeline().clone();
    let reader = running.reader().clone();
    let t0 = (osprey_cloud::clock::now_ms() - DAYS * DAY_MS) / 60_000 * 60_000;
    let started = Instant::now();
    let mut seq = 0u64;
    let mut sizes = Vec::new();
    println!("day  db+wal bytes  windows  alerts  seen  (pruned: windows alerts seen)");
    for day in 0..DAYS {
        let mut payloads = Vec::new();
        for d in 0..DEVICES {
            let device = format!("ret-{d}");
            for hour in 0..MESSAGES_PER_DAY {
                seq += 1;
                let start = t0 + day * DAY_MS + hour * 3_600_000;
                payloads.push(telemetry(&device, seq, start));
            }
            seq += 1;
            payloads.push(alert(&device, seq, t0 + day * DAY_MS + 43_200_000));
        }
        let batch = payloads
            .iter()
            .map(|p| (p.as_slice(), Origin::Direct("retention".into())))
            .collect();
        pipeline.ingest_batch(batch, None).await.unwrap();
        // An empty write: the writer runs its pass after the day's batch and this one.
        running
            .pipeline()
            .ingest_batch(Vec::new(), None)
            .await
            .unwrap();
        let counts = reader.counts().await.unwrap();
        let m = reader.maintenance();
        let bytes = db_bytes(&db);
        sizes.push((bytes, counts.windows));
        if day % 10 == 9 || day < 2 {
            println!(
                "{:>3}  {bytes:>12}  {:>7}  {:>6}  {:>4}  ({} {} {})",
                day + 1,
                counts.windows,
                counts.alerts,
                counts.messages,
                m.windows_pruned,
                m.alerts_pruned,
                m.seen_pruned
            );
        }
    }
    let elapsed = started.elapsed();
    let windows_per_day = DEVICES * 24 * 60;
    let total = windows_per_day * DAYS as u64;
    let counts = reader.counts().await.unwrap();
    let m = reader.maintenance();
    println!(
        "{DAYS} simulated days, {seq} messages, {total} windows written in {:.1} s; kept {} windows \
         ({} pruned), {} alerts ({} pruned)",
        elapsed.as_secs_f64(),
        counts.windows,
        m.windows_pruned,
        counts.alerts,
        m.alerts_pruned
    );
    // Windows: about KEEP_DAYS days' worth, never more than KEEP_DAYS + 1.
    assert!(
        counts.windows <= windows_per_day * (KEEP_DAYS as u64 + 1),
        "{counts:?}"
    );
    assert!(
        counts.windows >= windows_per_day * (KEEP_DAYS as u64 - 1),
        "{counts:?}"
    );
    assert_eq!(counts.windows + m.windows_pruned, total);
    assert!(
        counts.alerts <= DEVICES * (KEEP_DAYS as u64 + 1),
        "{counts:?}"
    );
    // The file stops growing: from day 3 × KEEP_DAYS on, it stays within 10 % of its size
    // then, while the data written keeps growing linearly.
    let settled = sizes[(3 * KEEP_DAYS) as usize].0;
    let largest_after = sizes[(3 * KEEP_DAYS) as usize..]
        .iter()
        .map(|(b, _)| *b)
        .max()
        .unwrap();
    println!(
        "file size at day {}: {settled} bytes; largest after it: {largest_after} bytes; at day {DAYS}: {} bytes",
        3 * KEEP_DAYS,
        sizes.last().unwrap().0
    );
    assert!(
        largest_after as f64 <= settled as f64 * 1.10,
        "grew from {settled} to {largest_after} bytes"
    );
    // The dedup set: messages applied more than 2 s ago are forgotten.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    running
        .pipeline()
        .ingest_batch(Vec::new(), None)
        .await
        .unwrap();
    let counts = reader.counts().await.unwrap();
    let m = reader.maintenance();
    println!(
        "dedup set after 2.5 s idle: {} rows ({} pruned)",
        counts.messages, m.seen_pruned
    );
    assert_eq!(counts.messages, 0);
    assert_eq!(m.seen_pruned, seq);
    drop(pipeline);
    running.shutdown().await.unwrap();
}
