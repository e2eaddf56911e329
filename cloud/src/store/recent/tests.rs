//! The signals the writer computes per batch from memory equal the signals computed from
//! scratch over the stored windows, and those of one transaction per message.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::Connection;

use crate::analytics::signals::SignalsConfig;
use crate::store::deadletter::DeadLetterLimits;
use crate::store::retention::Tally;
use crate::store::signals::{from_table, series_signals, Refresher};
use crate::store::{schema, writer, Message, Write};
use crate::window::{Aggregate, WindowDelta, WindowKind};

const MINUTE: i64 = 60_000;
const T0: i64 = 1_700_000_040_000; // a minute boundary
const DEVICES: [&str; 2] = ["pump-1", "pump-2"];
const SERIES: [(&str, &str, &str); 3] = [
    ("bearing", "temperature", "Cel"),
    ("bearing", "vibration", "mm/s"),
    ("motor", "current", "A"),
];

fn open() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("osprey.db")).unwrap();
    schema::migrate(&conn).unwrap();
    (dir, conn)
}

/// A message of `device` with a few readings of every series in `minute`'s window.
fn message(rng: &mut ChaCha8Rng, device: &str, seq: u64, minute: i64, unit: &str) -> Write {
    let start = T0 + minute * MINUTE;
    let windows: Vec<WindowDelta> = SERIES
        .iter()
        .enumerate()
        .map(|(i, (sensor, metric, series_unit))| {
            let mut agg = Aggregate::new();
            let level = 10.0 * (i + 1) as f64 + 0.01 * minute as f64;
            for _ in 0..rng.random_range(1..=20) {
                agg.add(level + rng.random_range(-1.0..1.0));
            }
            WindowDelta {
                sensor: (*sensor).into(),
                metric: (*metric).into(),
                unit: if i == 0 { unit } else { series_unit }.to_string(),
                kind: WindowKind::Tumbling,
                start_ms: start,
                end_ms: start + MINUTE,
                agg,
            }
        })
        .collect();
    Write::Message(Message {
        device: device.into(),
        seq,
        epoch: 0,
        received_ms: 1_000,
        event_ms: Some(start + 59_000),
        readings: windows.iter().map(|w| w.agg.count()).sum(),
        windows,
        alert: None,
        status: None,
        telemetry: None,
    })
}

/// 400 minutes of messages for both devices, in order with stragglers: some late messages
/// for windows inside the newest 241, some beyond them, a unit change, and every tenth
/// message repeated right after itself.
fn messages() -> Vec<Write> {
    let mut rng = ChaCha8Rng::seed_from_u64(17);
    let mut out = Vec::new();
    let mut seq = 0;
    for minute in 0..400 {
        for device in DEVICES {
            let unit = if minute >= 390 { "K" } else { "Cel" };
            for _ in 0..2 {
                seq += 1;
                out.push(message(&mut rng, device, seq, minute, unit));
                if seq % 10 == 0 {
                    out.push(out[out.len() - 1].clone());
                }
            }
            // Late: 5 minutes back (among the newest windows), 300 back (beyond them).
            if minute % 7 == 0 && minute >= 5 {
                seq += 1;
                out.push(message(&mut rng, device, seq, minute - 5, "Cel"));
            }
            if minute % 50 == 0 && minute >= 300 {
                seq += 1;
                out.push(message(&mut rng, device, seq, minute - 300, "Cel"));
            }
        }
    }
    out
}

fn apply(conn: &mut Connection, signals: &mut Refresher, writes: &[Write]) {
    writer::apply(
        conn,
        writes,
        None,
        &mut Vec::new(),
        signals,
        &DeadLetterLimits::default(),
        &mut Tally::default(),
    )
    .unwrap();
}

/// The stored signals rows as written (the JSON text: parsing it back may round a float).
fn stored(conn: &Connection) -> Vec<(String, String, String, String)> {
    conn.prepare("SELECT device, sensor, metric, body FROM signals ORDER BY device, sensor, metric")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap()
}

/// The same rows, with the signals computed from the stored windows alone.
fn from_scratch(
    conn: &mut Connection,
    cfg: &SignalsConfig,
) -> Vec<(String, String, String, String)> {
    let tx = conn.transaction().unwrap();
    let mut out = Vec::new();
    for device in DEVICES {
        for (sensor, metric, _) in SERIES {
            if let Some(s) = from_table(&tx, cfg, (device, sensor, metric)).unwrap() {
                let body = serde_json::to_string(&s).unwrap();
                out.push((device.into(), sensor.into(), metric.into(), body));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn batched_signals_from_memory_equal_signals_from_the_stored_windows() {
    let writes = messages();
    let cfg = SignalsConfig::default();
    // One transaction per message: the signals as they were before batches.
    let (_one_dir, mut one) = open();
    let mut one_signals = Refresher::new(cfg.clone(), 1024);
    for w in &writes {
        apply(&mut one, &mut one_signals, std::slice::from_ref(w));
    }
    let per_message = stored(&one);
    assert_eq!(per_message.len(), DEVICES.len() * SERIES.len());
    assert_eq!(per_message, from_scratch(&mut one, &cfg));

    // Batches of varying size; a cache of one series (evicting and reading back all the
    // time), and one that holds them all.
    for max_series in [1, 1024] {
        let (_dir, mut conn) = open();
        let mut signals = Refresher::new(cfg.clone(), max_series);
        let mut rng = ChaCha8Rng::seed_from_u64(max_series as u64);
        let mut rest = &writes[..];
        let mut batches = 0;
        while !rest.is_empty() {
            let n = rng.random_range(1..=300).min(rest.len());
            apply(&mut conn, &mut signals, &rest[..n]);
            rest = &rest[n..];
            batches += 1;
            // After every batch: what is stored is what the stored windows give.
            if batches % 5 == 0 {
                assert_eq!(
                    stored(&conn),
                    from_scratch(&mut conn, &cfg),
                    "after batch {batches} (cache of {max_series})"
                );
            }
        }
        assert!(signals.recent().len() <= max_series);
        let batched = stored(&conn);
        assert_eq!(batched, from_scratch(&mut conn, &cfg));
        assert_eq!(batched, per_message, "cache of {max_series}");
    }
    // The newest window's unit changed at minute 390; the trend has its 240 closed windows.
    let temperature = &series_signals(&one, "pump-1").unwrap()[0];
    assert_eq!(
        (temperature.metric.as_str(), temperature.unit.as_str()),
        ("temperature", "K")
    );
    assert_eq!(temperature.trend.as_ref().map(|t| t.windows), Some(240));
}

#[test]
fn deleted_windows_leave_the_signals_memory() {
    use crate::store::retention::{days, MaintenanceStats, RetentionConfig, Schedule};
    let (_dir, mut conn) = open();
    let cfg = SignalsConfig::default();
    let mut signals = Refresher::new(cfg.clone(), 1024);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // Two windows a day apart: a one-day history keeps only the newest.
    let old = message(&mut rng, "pump-1", 1, 0, "Cel");
    let new = message(&mut rng, "pump-1", 2, 24 * 60 + 5, "Cel");
    apply(&mut conn, &mut signals, &[old, new]);
    let retention = RetentionConfig {
        history: Some(days(1.0)),
        ..RetentionConfig::default()
    };
    // The writer's retention step between jobs (the first pass is due at once).
    let stats = MaintenanceStats::default();
    writer::retain(
        &mut conn,
        &mut Schedule::new(),
        &retention,
        &stats,
        &mut signals,
    );
    assert_eq!(
        stats.snapshot().windows_pruned,
        3,
        "the old window of each series"
    );
    let next = message(&mut rng, "pump-1", 3, 24 * 60 + 6, "Cel");
    apply(&mut conn, &mut signals, &[next]);
    assert_eq!(stored(&conn), from_scratch(&mut conn, &cfg));
    // Two windows left of three: the baseline is the one closed window's mean.
    let s = &series_signals(&conn, "pump-1").unwrap()[0];
    assert!(s.baseline.is_some(), "{s:?}");
}
