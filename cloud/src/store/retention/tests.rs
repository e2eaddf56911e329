use osprey_protocol::{Alert, AlertEvent, Severity};
use rusqlite::Connection;

use super::*;
use crate::store::{schema, writer, Message, Write, Written};
use crate::window::{Aggregate, WindowDelta, WindowKind};

const DAY: i64 = 86_400_000;
const T0: i64 = 1_700_000_040_000; // a minute boundary

#[test]
fn fractional_days_and_nonsense_become_durations() {
    assert_eq!(days(1.0), Duration::from_secs(86_400));
    assert_eq!(days(0.5), Duration::from_secs(43_200));
    assert_eq!(days(-1.0), Duration::ZERO);
    assert_eq!(days(f64::NAN), Duration::ZERO);
    assert_eq!(cutoff(1_000, Duration::from_millis(400)), 600);
}

/// One message on `day`: a reading (one tumbling window) and, every 10th day, an alert.
fn message(seq: u64, day: i64) -> Write {
    let start = T0 + day * DAY;
    let mut agg = Aggregate::new();
    agg.add(day as f64);
    let alert = (day % 10 == 0).then(|| Alert {
        rule: "hot".into(),
        sensor: "bearing".into(),
        metric: "temperature".into(),
        event: AlertEvent::Raise,
        severity: Severity::Warning,
        value: 1.0,
        threshold: 0.5,
        time_ms: start,
    });
    Write::Message(Message {
        device: "pump-1".into(),
        seq,
        epoch: 0,
        received_ms: 0,
        event_ms: Some(start + 1),
        readings: 1,
        windows: vec![WindowDelta {
            sensor: "bearing".into(),
            metric: "temperature".into(),
            unit: "Cel".into(),
            kind: WindowKind::Tumbling,
            start_ms: start,
            end_ms: start + 60_000,
            agg,
        }],
        alert,
        status: None,
        telemetry: None,
    })
}

fn count(conn: &Connection, table: &str) -> i64 {
    conn.query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

/// Applies `writes` in one transaction, as the writer thread does.
pub(crate) fn apply(conn: &mut Connection, writes: &[Write]) -> Vec<Written> {
    writer::apply(
        conn,
        writes,
        None,
        &mut Vec::new(),
        &mut crate::store::signals::Refresher::new(Default::default(), 16),
        &DeadLetterLimits::default(),
        &mut Tally::default(),
    )
    .unwrap()
}

#[test]
fn a_pass_prunes_history_by_event_time_and_dedup_by_time_applied() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("osprey.db")).unwrap();
    schema::migrate(&conn).unwrap();
    let writes: Vec<Write> = (0..120).map(|d| message(d as u64 + 1, d)).collect();
    apply(&mut conn, &writes);
    assert_eq!(count(&conn, "windows"), 120);
    let cfg = RetentionConfig {
        history: Some(days(30.0)),
        dedup: Some(days(1.0)),
        ..RetentionConfig::default()
    };
    let stats = MaintenanceStats::default();
    let now = crate::clock::now_ms();
    assert!(pass(&mut conn, &cfg, now, &stats).unwrap());
    // Newest event is day 119: windows that ended before day 89 go (day 89's ends after it).
    assert_eq!(count(&conn, "windows"), 31);
    assert_eq!(count(&conn, "alerts"), 3, "days 90, 100, 110");
    // Applied just now: the dedup set is all there, so a replay is still a duplicate.
    assert_eq!(count(&conn, "seen"), 120);
    assert_eq!(apply(&mut conn, &writes[..1]), [Written::Duplicate]);
    // A day and a bit later, the dedup set has forgotten them: a replay applies again.
    assert!(pass(&mut conn, &cfg, now + DAY + 1_000, &stats).unwrap());
    assert_eq!(count(&conn, "seen"), 0);
    assert_eq!(apply(&mut conn, &writes[119..]), [Written::Applied]);
    let m = stats.snapshot();
    assert_eq!(
        (m.windows_pruned, m.alerts_pruned, m.seen_pruned, m.passes),
        (89, 9, 120, 2)
    );
    // The same counts are in the file, for the next process.
    assert_eq!(
        MaintenanceStats::load(&conn)
            .unwrap()
            .snapshot()
            .seen_pruned,
        120
    );
    // The device row stays; its series still points at a kept window.
    assert_eq!(count(&conn, "devices"), 1);
    assert_eq!(count(&conn, "series"), 1);
}

#[test]
fn a_big_backlog_is_pruned_completely_by_repeated_passes() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = Connection::open(dir.path().join("osprey.db")).unwrap();
    schema::migrate(&conn).unwrap();
    let writes: Vec<Write> = (0..5_000).map(|s| message(s + 1, 0)).collect();
    apply(&mut conn, &writes);
    let cfg = RetentionConfig {
        dedup: Some(days(1.0)),
        ..RetentionConfig::default()
    };
    let stats = MaintenanceStats::default();
    let later = crate::clock::now_ms() + 2 * DAY;
    let mut passes = 0;
    while !pass(&mut conn, &cfg, later, &stats).unwrap() {
        passes += 1;
        assert!(passes < 100);
    }
    assert_eq!(count(&conn, "seen"), 0);
    assert_eq!(stats.snapshot().seen_pruned, 5_000);
}
