#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Window results against a plain reference computed from the raw readings.
//!
//! Each seeded case makes a small fleet's telemetry, cuts it into messages, and delivers them
//! the way the field does: shuffled, with duplicates, and with a device's oldest messages held
//! back and delivered last (a gateway backfilling after an outage). The messages go through the
//! real pipeline (decode, dedup, windows) into SQLite, and through the in-memory
//! [`WindowTable`]. Every tumbling, hopping and session window both hold must equal what a
//! naive computation over the distinct readings gives: same windows, same count, min and max,
//! sum, mean, variance, skewness and kurtosis to 1e-9 relative, and quantiles within the
//! sketch's 1 % of the exact order statistic.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use osprey_cloud::analytics::sketch::RELATIVE_ACCURACY;
use osprey_cloud::pipeline::{prepare_with, Origin, Pipeline};
use osprey_cloud::store::{Store, WindowFilter};
use osprey_cloud::window::table::{Stored, WindowTable};
use osprey_cloud::window::{Hopping, WindowKind, WindowSpec};
use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const T0: i64 = 1_700_000_000_000;
/// Windows of each (device, sensor, metric), with their kind.
type Found = BTreeMap<(String, String, String), Vec<(WindowKind, Stored)>>;

const SERIES: [(&str, &str); 2] = [("bearing", "temperature"), ("motor", "vibration")];

/// One case: the window spec, the distinct readings per series, and the deliveries.
struct Case {
    spec: WindowSpec,
    readings: BTreeMap<(String, String, String), Vec<(i64, f64)>>,
    deliveries: Vec<Vec<u8>>,
}

fn nz(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

fn make_case(seed: u64) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let slide = [5_000, 10_000][rng.random_range(0..2)];
    let spec = WindowSpec::new(
        nz([10_000, 60_000][rng.random_range(0..2)]),
        Some(Hopping {
            size_ms: nz(slide * rng.random_range(1..=4)),
            slide_ms: nz(slide),
        }),
        Some(nz(rng.random_range(3_000..20_000))),
    )
    .unwrap();
    let mut readings = BTreeMap::new();
    let mut messages: Vec<(usize, Vec<u8>)> = Vec::new();
    for d in 0..rng.random_range(1..=3usize) {
        let device = format!("dev-{d}");
        let mut t = T0 + rng.random_range(0..120_000);
        let (centre, spread) = [(50.0, 10.0), (0.0, 3.0), (-20.0, 0.5)][rng.random_range(0..3)];
        for seq in 1..=rng.random_range(3..25u64) {
            let mut batch = TelemetryBatch::default();
            let per = rng.random_range(1..15);
            for (sensor, metric) in SERIES.iter().take(rng.random_range(1..=2)) {
                let mut s = Series::new(sensor, metric, "u");
                let mut ts = t;
                for _ in 0..per {
                    // Mostly steady sampling, sometimes a silence that splits sessions.
                    ts += if rng.random_bool(0.1) {
                        rng.random_range(10_000..40_000)
                    } else {
                        rng.random_range(0..3_000)
                    };
                    let v = if rng.random_bool(0.02) {
                        f64::NAN
                    } else {
                        centre + spread * (rng.random::<f64>() - 0.5) * 4.0
                    };
                    s.push(ts, v);
                    if v.is_finite() {
                        readings
                            .entry((device.clone(), (*sensor).to_owned(), (*metric).to_owned()))
                            .or_insert_with(Vec::new)
                            .push((ts, v));
                    }
                }
                batch.series.push(s);
            }
            t += rng.random_range(5_000..30_000);
            let payload = Envelope::new(&device, seq, Body::Telemetry(batch))
                .encode()
                .unwrap();
            messages.push((d, payload));
        }
    }
    // Backfill: one device's oldest messages arrive after everything else.
    let first_device = messages.iter().filter(|(d, _)| *d == 0).count();
    let held = rng.random_range(0..=first_device);
    let backfill: Vec<Vec<u8>> = messages
        .iter()
        .filter(|(d, _)| *d == 0)
        .take(held)
        .map(|(_, p)| p.clone())
        .collect();
    let mut live: Vec<Vec<u8>> = messages.into_iter().skip(held).map(|(_, p)| p).collect();
    // Shuffle some neighbours (reordering on the way) and duplicate some (redelivery).
    for i in 1..live.len() {
        if rng.random_bool(0.3) {
            live.swap(i - 1, i);
        }
    }
    let mut deliveries = Vec::new();
    for p in live.into_iter().chain(backfill) {
        if rng.random_bool(0.2) {
            deliveries.push(p.clone());
        }
        deliveries.push(p);
    }
    let n = deliveries.len();
    for _ in 0..n / 5 {
        let i = rng.random_range(0..n);
        deliveries.push(deliveries[i].clone());
    }
    Case {
        spec,
        readings,
        deliveries,
    }
}

/// Windows of one series by the book: `(kind, start) -> (end, values)`.
fn reference(
    spec: &WindowSpec,
    readings: &[(i64, f64)],
) -> BTreeMap<(WindowKind, i64), (i64, Vec<f64>)> {
    let mut out: BTreeMap<(WindowKind, i64), (i64, Vec<f64>)> = BTreeMap::new();
    let len = i64::from(spec.tumbling_ms().get());
    for &(t, v) in readings {
        let start = t - t.rem_euclid(len);
        out.entry((WindowKind::Tumbling, start))
            .or_insert((start + len, Vec::new()))
            .1
            .push(v);
    }
    let hop = spec.hopping().unwrap();
    let (size, slide) = (i64::from(hop.size_ms.get()), i64::from(hop.slide_ms.get()));
    let lo = readings.iter().map(|r| r.0).min().unwrap() - size;
    let hi = readings.iter().map(|r| r.0).max().unwrap();
    let mut start = lo - lo.rem_euclid(slide);
    while start <= hi {
        let inside: Vec<f64> = readings
            .iter()
            .filter(|(t, _)| (start..start + size).contains(t))
            .map(|r| r.1)
            .collect();
        if !inside.is_empty() {
            out.insert((WindowKind::Hopping, start), (start + size, inside));
        }
        start += slide;
    }
    let gap = i64::from(spec.session_gap_ms().unwrap().get());
    let mut sorted = readings.to_vec();
    sorted.sort_by_key(|r| r.0);
    let mut i = 0;
    while i < sorted.len() {
        let mut j = i;
        while j + 1 < sorted.len() && sorted[j + 1].0 - sorted[j].0 < gap {
            j += 1;
        }
        let values = sorted[i..=j].iter().map(|r| r.1).collect();
        out.insert(
            (WindowKind::Session, sorted[i].0),
            (sorted[j].0 + gap, values),
        );
        i = j + 1;
    }
    out
}

fn close(got: f64, want: f64, what: &str) {
    let tol = 1e-9 * (1.0 + want.abs());
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want}");
}

/// Checks one stored window against the plain statistics of `values`.
fn check(window: &Stored, end_ms: i64, values: &[f64], at: &str) {
    let n = values.len() as f64;
    let m = &window.agg.moments;
    assert_eq!(window.end_ms, end_ms, "{at}: end");
    assert_eq!(m.count, values.len() as u64, "{at}: count");
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(
        (m.min, m.max),
        (sorted[0], sorted[sorted.len() - 1]),
        "{at}: min/max"
    );
    let sum: f64 = values.iter().sum();
    close(m.sum, sum, &format!("{at}: sum"));
    let mean = sum / n;
    close(m.mean, mean, &format!("{at}: mean"));
    let central = |p: i32| values.iter().map(|v| (v - mean).powi(p)).sum::<f64>();
    let (m2, m3, m4) = (central(2), central(3), central(4));
    if values.len() > 1 {
        close(
            m.variance().unwrap(),
            m2 / (n - 1.0),
            &format!("{at}: variance"),
        );
    }
    // Shape statistics are only well defined with some spread.
    if values.len() > 2 && m2 / n > 1e-6 {
        close(
            m.skewness().unwrap(),
            n.sqrt() * m3 / m2.powf(1.5),
            &format!("{at}: skewness"),
        );
        close(
            m.kurtosis().unwrap(),
            n * m4 / (m2 * m2),
            &format!("{at}: kurtosis"),
        );
    }
    for q in [0.5, 0.95, 0.99] {
        let exact = sorted[(q * (n - 1.0)).floor() as usize];
        let got = window.agg.sketch.quantile(q).unwrap();
        assert!(
            (got - exact).abs() <= RELATIVE_ACCURACY * exact.abs() * 1.000_001 + 1e-9,
            "{at}: p{q}: got {got}, exact {exact}"
        );
    }
}

fn compare(case: &Case, seed: u64, what: &str, got: &Found) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        case.readings.keys().collect::<Vec<_>>(),
        "seed {seed} {what}: series"
    );
    for (key, readings) in &case.readings {
        let want = reference(&case.spec, readings);
        let have: BTreeMap<(WindowKind, i64), &Stored> = got[key]
            .iter()
            .map(|(k, s)| ((*k, s.start_ms), s))
            .collect();
        assert_eq!(
            have.keys().collect::<Vec<_>>(),
            want.keys().collect::<Vec<_>>(),
            "seed {seed} {what} {key:?}: windows"
        );
        for (k, (end, values)) in &want {
            check(
                have[k],
                *end,
                values,
                &format!("seed {seed} {what} {key:?} {k:?}"),
            );
        }
    }
}

async fn from_store(store: &Store) -> Found {
    let mut got: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for kind in WindowKind::ALL {
        let rows = store
            .reader()
            .windows(WindowFilter {
                kind: Some(kind),
                limit: 10_000,
                ..WindowFilter::default()
            })
            .await
            .unwrap();
        for r in rows {
            got.entry((r.device, r.sensor, r.metric))
                .or_default()
                .push((r.kind, r.window));
        }
    }
    got
}

fn from_table(table: &WindowTable) -> Found {
    let mut got: BTreeMap<_, Vec<_>> = BTreeMap::new();
    for (device, sensor, metric, kind, s) in table.iter() {
        got.entry((device.to_owned(), sensor.to_owned(), metric.to_owned()))
            .or_default()
            .push((kind, s.clone()));
    }
    got
}

#[tokio::test]
async fn windows_equal_a_plain_computation_over_shuffled_duplicated_backfilled_readings() {
    let mut readings_checked = 0;
    for seed in 0..60 {
        let case = make_case(seed);
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("osprey.db")).unwrap();
        let pipeline = Pipeline::new(store.writer()).with_windows(case.spec);
        let mut table = WindowTable::new();
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xdead);
        let mut rest: &[Vec<u8>] = &case.deliveries;
        while !rest.is_empty() {
            // Kinesis-sized and MQTT-sized deliveries alike.
            let (now, later) = rest.split_at(rng.random_range(1..=rest.len().min(8)));
            let batch = now
                .iter()
                .map(|p| (p.as_slice(), Origin::Direct(format!("seed {seed}"))))
                .collect();
            pipeline.ingest_batch(batch, None).await.unwrap();
            for p in now {
                let m = prepare_with(p, &Origin::Direct(String::new()), 0, &case.spec).unwrap();
                table.apply(&m.device, m.seq, m.event_ms, m.windows);
            }
            rest = later;
        }
        readings_checked += case.readings.values().map(Vec::len).sum::<usize>();
        compare(&case, seed, "store", &from_store(&store).await);
        compare(&case, seed, "memory", &from_table(&table));
        drop(pipeline);
        store.close().await.unwrap();
    }
    assert!(
        readings_checked > 5_000,
        "cases too small: {readings_checked} readings"
    );
}

/// Every row of the tables that windows and dedup write, in key order.
fn dump(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut out = Vec::new();
    for sql in [
        "SELECT * FROM windows ORDER BY device, sensor, metric, kind, start_ms",
        "SELECT * FROM series ORDER BY device, sensor, metric",
        "SELECT * FROM seen ORDER BY device, seq",
        "SELECT * FROM devices ORDER BY device",
        "SELECT * FROM signals ORDER BY device, sensor, metric",
    ] {
        let mut stmt = conn.prepare(sql).unwrap();
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                let cells: Vec<String> = (0..columns)
                    .map(|i| format!("{:?}", row.get_ref(i).unwrap()))
                    .collect();
                Ok(cells.join("|"))
            })
            .unwrap();
        out.extend(rows.map(Result::unwrap));
    }
    out
}

async fn ingest_all(pipeline: &Pipeline, payloads: &[Vec<u8>]) {
    for chunk in payloads.chunks(5) {
        let batch = chunk
            .iter()
            .map(|p| (p.as_slice(), Origin::Direct("replay".into())))
            .collect();
        pipeline.ingest_batch(batch, None).await.unwrap();
    }
}

#[tokio::test]
async fn reprocessing_the_same_records_leaves_the_store_as_it_was() {
    for seed in 100..105 {
        let case = make_case(seed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("osprey.db");
        let store = Store::open(&path).unwrap();
        let pipeline = Pipeline::new(store.writer()).with_windows(case.spec);
        ingest_all(&pipeline, &case.deliveries).await;
        let before = dump(&path);
        assert!(before.len() > 10, "seed {seed}: nothing stored");
        // A consumer restarting from an old checkpoint replays everything, in another order.
        let mut replay = case.deliveries.clone();
        replay.reverse();
        ingest_all(&pipeline, &replay).await;
        assert_eq!(dump(&path), before, "seed {seed}: replay changed the store");

        // The same records into a fresh store, in the same order, give the same windows.
        let dir2 = tempfile::tempdir().unwrap();
        let path2 = dir2.path().join("osprey.db");
        let store2 = Store::open(&path2).unwrap();
        let pipeline2 = Pipeline::new(store2.writer()).with_windows(case.spec);
        ingest_all(&pipeline2, &case.deliveries).await;
        let windows = |rows: Vec<String>| -> Vec<String> {
            rows.into_iter()
                .filter(|r| {
                    r.contains("Text(\"tumbling\")")
                        || r.contains("Text(\"hopping\")")
                        || r.contains("Text(\"session\")")
                })
                .collect()
        };
        assert_eq!(
            windows(dump(&path2)),
            windows(before),
            "seed {seed}: not deterministic"
        );
        drop((pipeline, pipeline2));
        store.close().await.unwrap();
        store2.close().await.unwrap();
    }
}

#[tokio::test]
async fn a_late_reading_corrects_its_closed_window_and_the_correction_is_emitted() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("osprey.db")).unwrap();
    let pipeline = Pipeline::new(store.writer());
    let mut updates = store.writer().subscribe();
    let minute = T0 - T0.rem_euclid(60_000);
    let send = |seq: u64, t: i64, v: f64| {
        let mut s = Series::new("bearing", "temperature", "Cel");
        s.push(t, v);
        Envelope::new(
            "pump-1",
            seq,
            Body::Telemetry(TelemetryBatch { series: vec![s] }),
        )
        .encode()
        .unwrap()
    };
    for (seq, t, v) in [(1, minute + 1_000, 40.0), (2, minute + 125_000, 41.0)] {
        pipeline
            .ingest(&send(seq, t, v), Origin::Direct("t".into()))
            .await
            .unwrap();
    }
    let first = updates.recv().await.unwrap();
    assert_eq!((first.window.version, first.late), (1, false));
    let second = updates.recv().await.unwrap();
    assert_eq!(second.window.start_ms, minute + 120_000);
    // The device is two minutes on; a reading for its first minute arrives now.
    pipeline
        .ingest(&send(3, minute + 30_000, 50.0), Origin::Direct("t".into()))
        .await
        .unwrap();
    let corrected = updates.recv().await.unwrap();
    assert_eq!(corrected.window.start_ms, minute);
    assert_eq!((corrected.window.version, corrected.late), (2, true));
    assert_eq!(corrected.window.agg.count(), 2);
    assert_eq!(corrected.window.agg.moments.max, 50.0);
    // The store shows the corrected window, closed, as version 2.
    let rows = store
        .reader()
        .windows(WindowFilter {
            limit: 10,
            ..WindowFilter::default()
        })
        .await
        .unwrap();
    let row = rows.iter().find(|r| r.window.start_ms == minute).unwrap();
    assert!(row.closed);
    assert_eq!((row.window.version, row.window.agg.count()), (2, 2));
}
