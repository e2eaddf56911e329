#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use osprey_protocol::Series;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::Field;

const HOUR: i64 = HOUR_MS;
/// 2026-12-07T10:00:00Z.
const T10: i64 = 1_796_637_600_000;

fn store(dir: &Path) -> Connection {
    let conn = Connection::open(dir.join("osprey.db")).unwrap();
    crate::store::schema::migrate(&conn).unwrap();
    conn
}

fn batch(sensor: &str, t0: i64, values: &[f64]) -> TelemetryBatch {
    let mut s = Series::new(sensor, "temperature", "Cel");
    for (i, v) in values.iter().enumerate() {
        s.push(t0 + i as i64 * 1_000, *v);
    }
    TelemetryBatch { series: vec![s] }
}

fn spool_one(conn: &mut Connection, received_ms: i64, seq: u64, b: &TelemetryBatch) {
    let tx = conn.transaction().unwrap();
    assert!(enabled(&tx).unwrap());
    spool(&tx, received_ms, "pump-7", 3, seq, b).unwrap();
    tx.commit().unwrap();
}

/// Every row of every file under `dir`: (device, epoch, seq, sensor, time, value, received).
fn read_all(dir: &Path) -> Vec<(String, i64, i64, String, i64, f64, i64)> {
    let mut files = Vec::new();
    for date in std::fs::read_dir(dir).unwrap() {
        let date = date.unwrap().path();
        if !date.is_dir() {
            continue;
        }
        for hour in std::fs::read_dir(&date).unwrap() {
            for f in std::fs::read_dir(hour.unwrap().path()).unwrap() {
                files.push(f.unwrap().path());
            }
        }
    }
    files.sort();
    let mut rows = Vec::new();
    for f in files {
        assert!(
            f.extension().is_some_and(|e| e == "parquet"),
            "left over: {f:?}"
        );
        let reader = SerializedFileReader::new(std::fs::File::open(&f).unwrap()).unwrap();
        for row in reader.get_row_iter(None).unwrap() {
            let row = row.unwrap();
            let fields: Vec<&Field> = row.get_column_iter().map(|(_, f)| f).collect();
            let text = |i: usize| match fields[i] {
                Field::Str(s) => s.clone(),
                other => panic!("{other:?}"),
            };
            let int = |i: usize| match fields[i] {
                Field::Long(v) => *v,
                Field::TimestampMillis(v) => *v,
                other => panic!("{other:?}"),
            };
            let value = match fields[7] {
                Field::Double(v) => *v,
                other => panic!("{other:?}"),
            };
            rows.push((text(0), int(1), int(2), text(3), int(6), value, int(8)));
        }
    }
    rows
}

#[test]
fn civil_dates_are_right_across_leap_years_and_before_1970() {
    assert_eq!(civil_date(0), (1970, 1, 1));
    assert_eq!(civil_date(11_016), (2000, 2, 29));
    assert_eq!(civil_date(19_723), (2024, 1, 1));
    assert_eq!(civil_date(T10 / DAY_MS), (2026, 12, 7));
    assert_eq!(civil_date(-1), (1969, 12, 31));
    // Every day of four centuries follows the one before.
    let mut prev = civil_date(-146_097);
    for day in -146_096..146_097 {
        let next = civil_date(day);
        let follows = (next.0, next.1, next.2) == (prev.0, prev.1, prev.2 + 1)
            || (next.2 == 1 && (next.1 == prev.1 + 1 || (next.1 == 1 && prev.1 == 12)));
        assert!(follows, "{prev:?} then {next:?}");
        prev = next;
    }
}

#[test]
fn an_hour_is_written_once_it_ends_with_every_reading_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store(dir.path());
    let cfg = ArchiveConfig::new(dir.path().join("archive"));
    register(&conn, Some(&cfg)).unwrap();
    spool_one(
        &mut conn,
        T10 + 60_000,
        1,
        &batch("bearing", T10, &[1.0, 2.0, 3.0]),
    );
    spool_one(
        &mut conn,
        T10 + 120_000,
        2,
        &batch("motor", T10 + 60_000, &[4.5]),
    );
    // Within the hour, and well before `every`: nothing is due.
    let f = flush(&mut conn, &cfg, false, T10 + 30 * 60_000).unwrap();
    assert_eq!(f, Flushed::default());
    // The next hour comes in; the ended one is written, the new one waits.
    spool_one(
        &mut conn,
        T10 + HOUR + 5_000,
        3,
        &batch("bearing", T10 + HOUR, &[7.0]),
    );
    let f = flush(&mut conn, &cfg, false, T10 + HOUR + 10_000).unwrap();
    assert_eq!(
        f,
        Flushed {
            files: 1,
            readings: 4
        }
    );
    let file = cfg.dir.join("date=2026-12-07/hour=10/readings-1-2.parquet");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(
        mode & 0o007,
        0,
        "an archive file is readable by others: {mode:o}"
    );
    // A stop writes the rest, in its own hour.
    let f = flush(&mut conn, &cfg, true, T10 + HOUR + 20_000).unwrap();
    assert_eq!(f.readings, 1);
    assert!(cfg
        .dir
        .join("date=2026-12-07/hour=11/readings-3-3.parquet")
        .exists());
    let rows = read_all(&cfg.dir);
    assert_eq!(
        rows,
        vec![
            (
                "pump-7".into(),
                3,
                1,
                "bearing".into(),
                T10,
                1.0,
                T10 + 60_000
            ),
            (
                "pump-7".into(),
                3,
                1,
                "bearing".into(),
                T10 + 1_000,
                2.0,
                T10 + 60_000
            ),
            (
                "pump-7".into(),
                3,
                1,
                "bearing".into(),
                T10 + 2_000,
                3.0,
                T10 + 60_000
            ),
            (
                "pump-7".into(),
                3,
                2,
                "motor".into(),
                T10 + 60_000,
                4.5,
                T10 + 120_000
            ),
            (
                "pump-7".into(),
                3,
                3,
                "bearing".into(),
                T10 + HOUR,
                7.0,
                T10 + HOUR + 5_000
            ),
        ]
    );
    let spooled: i64 = conn
        .query_row("SELECT COUNT(*) FROM archive_spool", [], |r| r.get(0))
        .unwrap();
    assert_eq!(spooled, 0);
    let files: i64 = conn
        .query_row("SELECT SUM(readings) FROM archive_files", [], |r| r.get(0))
        .unwrap();
    assert_eq!(files, 5);
}

#[test]
fn every_and_the_size_limit_cut_files_inside_an_hour() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store(dir.path());
    let cfg = ArchiveConfig {
        every: Duration::from_secs(60),
        max_file_readings: 4,
        ..ArchiveConfig::new(dir.path().join("archive"))
    };
    register(&conn, Some(&cfg)).unwrap();
    spool_one(&mut conn, T10, 1, &batch("a", T10, &[1.0, 2.0]));
    assert_eq!(
        flush(&mut conn, &cfg, false, T10 + 59_000).unwrap().files,
        0
    );
    assert_eq!(
        flush(&mut conn, &cfg, false, T10 + 60_000).unwrap().files,
        1
    );
    // Ten readings with a limit of four: written at once, in files of at least four.
    for seq in 2..7 {
        spool_one(&mut conn, T10 + 61_000, seq, &batch("a", T10, &[1.0, 2.0]));
    }
    let f = flush(&mut conn, &cfg, false, T10 + 61_000).unwrap();
    assert_eq!((f.files, f.readings), (2, 8), "{f:?}");
    let f = flush(&mut conn, &cfg, true, T10 + 61_000).unwrap();
    assert_eq!(f.readings, 2);
    assert_eq!(read_all(&cfg.dir).len(), 12);
}

#[test]
fn nothing_is_spooled_without_an_archive_and_a_crash_mid_file_is_finished_or_undone() {
    let dir = tempfile::tempdir().unwrap();
    let mut conn = store(dir.path());
    register(&conn, None).unwrap();
    {
        let tx = conn.transaction().unwrap();
        assert!(!enabled(&tx).unwrap());
    }
    let cfg = ArchiveConfig::new(dir.path().join("archive"));
    register(&conn, Some(&cfg)).unwrap();
    spool_one(&mut conn, T10, 1, &batch("a", T10, &[1.0]));
    flush(&mut conn, &cfg, true, T10).unwrap();
    let hour_dir = cfg.dir.join("date=2026-12-07/hour=10");
    let done = hour_dir.join("readings-1-1.parquet");
    // A crash after the commit, before the rename: the file is still under its .tmp name.
    std::fs::rename(&done, hour_dir.join(".readings-1-1.parquet.tmp")).unwrap();
    // A crash before the commit: an unrecorded .tmp (its readings are still spooled).
    std::fs::write(hour_dir.join(".readings-9-9.parquet.tmp"), b"half a file").unwrap();
    assert_eq!(register(&conn, Some(&cfg)).unwrap(), 0);
    assert!(done.exists());
    assert!(!hour_dir.join(".readings-9-9.parquet.tmp").exists());
    assert_eq!(read_all(&cfg.dir).len(), 1);
    // Spooled readings of a run that had an archive are counted for the next start.
    spool_one(&mut conn, T10, 2, &batch("a", T10, &[1.0, 2.0, 3.0]));
    assert_eq!(register(&conn, None).unwrap(), 3);
}
