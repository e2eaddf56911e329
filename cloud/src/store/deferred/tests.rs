//! A batch in one transaction stores exactly what one transaction per message stores: every
//! table, to the bit, whatever the batch boundaries.

use osprey_protocol::{Alert, AlertEvent, Severity, StatusState};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rusqlite::types::Value;
use rusqlite::Connection;

use crate::analytics::signals::SignalsConfig;
use crate::store::deadletter::DeadLetterLimits;
use crate::store::retention::Tally;
use crate::store::signals::Refresher;
use crate::store::{schema, writer, DeadLetter, Message, Presence, StatusReport, Write, Written};
use crate::window::table::WindowUpdate;
use crate::window::{Aggregate, WindowDelta, WindowKind};

const MINUTE: i64 = 60_000;
const T0: i64 = 1_700_000_040_000; // a minute boundary

fn open() -> (tempfile::TempDir, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let conn = Connection::open(dir.path().join("osprey.db")).unwrap();
    schema::migrate(&conn).unwrap();
    (dir, conn)
}

fn delta(
    rng: &mut ChaCha8Rng,
    metric: &str,
    kind: WindowKind,
    (start, len): (i64, i64),
    unit: &str,
) -> WindowDelta {
    let mut agg = Aggregate::new();
    for _ in 0..rng.random_range(1..=8) {
        agg.add(40.0 + rng.random_range(-3.0..3.0));
    }
    WindowDelta {
        sensor: "bearing".into(),
        metric: metric.into(),
        unit: unit.into(),
        kind,
        start_ms: start,
        end_ms: start + len,
        agg,
    }
}

/// A message of every kind the writer knows, out of order now and then.
fn write(rng: &mut ChaCha8Rng, i: u64) -> Write {
    let device = ["pump-1", "pump-2", "fan-3"][rng.random_range(0..3)];
    // Mostly in order, sometimes up to 20 minutes late.
    let minute = (i / 6) as i64
        - if rng.random_range(0..8) == 0 {
            rng.random_range(0..20)
        } else {
            0
        };
    let t = T0 + minute * MINUTE + rng.random_range(0..MINUTE);
    let epoch = if i > 900 && device == "fan-3" { 2 } else { 1 };
    let seq = i + 1;
    let base = Message {
        device: device.into(),
        seq,
        epoch,
        received_ms: 1_000 + i as i64,
        event_ms: Some(t),
        readings: 0,
        windows: Vec::new(),
        alert: None,
        status: None,
        telemetry: None,
    };
    match rng.random_range(0..40) {
        0 => Write::DeadLetter(DeadLetter {
            received_ms: base.received_ms,
            source: format!("test:{i}"),
            reason: "junk".into(),
            payload: vec![rng.random(); 10],
        }),
        1 => Write::Presence(Presence {
            device: device.into(),
            state: StatusState::Online,
            time_ms: t,
            received_ms: base.received_ms,
        }),
        2 => Write::Message(Message {
            status: Some(StatusReport {
                state: if i % 2 == 0 {
                    StatusState::Online
                } else {
                    StatusState::Offline
                },
                will_seq: 0,
                time_ms: t,
                counters: Box::default(),
            }),
            ..base
        }),
        3 => Write::Message(Message {
            alert: Some(Alert {
                rule: "hot".into(),
                sensor: "bearing".into(),
                metric: "temperature".into(),
                event: if i % 2 == 0 {
                    AlertEvent::Raise
                } else {
                    AlertEvent::Clear
                },
                severity: Severity::Warning,
                value: 81.0,
                threshold: 80.0,
                time_ms: t,
            }),
            ..base
        }),
        _ => {
            let start = T0 + minute * MINUTE;
            // The unit changes between messages, so a series' unit is the last one's.
            let unit = if i % 3 == 0 { "K" } else { "Cel" };
            let windows = vec![
                delta(
                    rng,
                    "temperature",
                    WindowKind::Tumbling,
                    (start, MINUTE),
                    unit,
                ),
                delta(
                    rng,
                    "vibration",
                    WindowKind::Tumbling,
                    (start, MINUTE),
                    unit,
                ),
                delta(
                    rng,
                    "temperature",
                    WindowKind::Hopping,
                    (start - MINUTE, 2 * MINUTE),
                    unit,
                ),
                delta(
                    rng,
                    "temperature",
                    WindowKind::Session,
                    (t - 5_000, 10_000),
                    unit,
                ),
            ];
            Write::Message(Message {
                readings: windows.iter().map(|w| w.agg.count()).sum(),
                windows,
                ..base
            })
        }
    }
}

/// 1 200 writes, and every 7th message again later (a redelivery), sometimes at once.
fn writes() -> Vec<Write> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut out: Vec<Write> = Vec::new();
    for i in 0..1_200 {
        out.push(write(&mut rng, i));
        if i % 7 == 0 {
            let back = rng.random_range(0..=out.len().min(30));
            let again = out[out.len() - 1 - back.min(out.len() - 1)].clone();
            out.push(again);
        }
    }
    out
}

/// Applies `writes` in one transaction; returns what each did and the window updates (with
/// their lateness against the device's watermark).
fn apply(
    conn: &mut Connection,
    signals: &mut Refresher,
    writes: &[Write],
) -> (Vec<Written>, Vec<WindowUpdate>) {
    let mut updates = Vec::new();
    let written = writer::apply(
        conn,
        writes,
        None,
        &mut updates,
        signals,
        &DeadLetterLimits::default(),
        &mut Tally::default(),
    )
    .unwrap();
    (written, updates)
}

/// Every table's rows, in key order (`seen` without the clock time it was applied at).
fn dump(conn: &Connection) -> Vec<(String, Vec<Vec<Value>>)> {
    [
        "SELECT device, epoch, seq FROM seen ORDER BY 1, 2, 3",
        "SELECT * FROM devices ORDER BY device",
        "SELECT * FROM epochs ORDER BY 1, 2",
        "SELECT * FROM device_events ORDER BY 1, 2, 3, 4, 5",
        "SELECT * FROM windows ORDER BY 1, 2, 3, 4, 5",
        "SELECT * FROM series ORDER BY 1, 2, 3",
        "SELECT * FROM signals ORDER BY 1, 2, 3",
        "SELECT * FROM alerts ORDER BY 1, 2, 3",
        "SELECT * FROM alert_state ORDER BY 1, 2",
        "SELECT received_ms, source, reason, payload FROM dead_letters ORDER BY 1, 2",
    ]
    .iter()
    .map(|sql| {
        let mut stmt = conn.prepare(sql).unwrap();
        let columns = stmt.column_count();
        let rows = stmt
            .query_map([], |row| {
                (0..columns).map(|i| row.get::<_, Value>(i)).collect()
            })
            .unwrap()
            .collect::<rusqlite::Result<Vec<Vec<Value>>>>()
            .unwrap();
        (sql.to_string(), rows)
    })
    .collect()
}

#[test]
fn batches_store_what_one_transaction_per_message_stores() {
    let writes = writes();
    let cfg = SignalsConfig::default();
    let (_one_dir, mut one) = open();
    let mut one_signals = Refresher::new(cfg.clone(), 1024);
    let (mut per_message, mut one_updates) = (Vec::new(), Vec::new());
    for w in &writes {
        let (written, updates) = apply(&mut one, &mut one_signals, std::slice::from_ref(w));
        per_message.extend(written);
        one_updates.extend(updates);
    }
    assert!(one_updates.iter().any(|u| u.late));
    let expected = dump(&one);
    for (sql, rows) in &expected {
        assert!(!rows.is_empty(), "the test should fill {sql}");
    }
    assert!(per_message.contains(&Written::Duplicate));

    for seed in [1, 2] {
        let (_dir, mut conn) = open();
        let mut signals = Refresher::new(cfg.clone(), 1024);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut rest = &writes[..];
        let (mut batched, mut batched_updates) = (Vec::new(), Vec::new());
        while !rest.is_empty() {
            let n = rng.random_range(1..=512).min(rest.len());
            let (written, updates) = apply(&mut conn, &mut signals, &rest[..n]);
            batched.extend(written);
            batched_updates.extend(updates);
            rest = &rest[n..];
        }
        assert_eq!(batched, per_message, "outcomes (batches seeded {seed})");
        assert!(
            batched_updates == one_updates,
            "window updates (batches seeded {seed})"
        );
        for ((sql, want), (_, got)) in expected.iter().zip(dump(&conn)) {
            assert_eq!(want.len(), got.len(), "{sql} (batches seeded {seed})");
            for (w, g) in want.iter().zip(&got) {
                assert_eq!(w, g, "{sql} (batches seeded {seed})");
            }
        }
    }
}

#[test]
fn the_same_message_twice_in_one_batch_counts_once() {
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let first = write(&mut rng, 10);
    let (_dir, mut conn) = open();
    let mut signals = Refresher::new(SignalsConfig::default(), 16);
    let Write::Message(m) = &first else {
        panic!("write 10 of seed 9 should be telemetry: {first:?}");
    };
    let readings = m.readings;
    let tumbling: u64 = m
        .windows
        .iter()
        .filter(|w| w.kind == WindowKind::Tumbling)
        .map(|w| w.agg.count())
        .sum();
    let (outcomes, _) = apply(
        &mut conn,
        &mut signals,
        &[first.clone(), first.clone(), first],
    );
    assert_eq!(
        outcomes,
        [Written::Applied, Written::Duplicate, Written::Duplicate]
    );
    let stored: i64 = conn
        .query_row("SELECT readings FROM devices", [], |r| r.get(0))
        .unwrap();
    assert_eq!(stored as u64, readings);
    let counted: i64 = conn
        .query_row(
            "SELECT sum(count) FROM windows WHERE kind = 'tumbling'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(counted as u64, tumbling);
}
