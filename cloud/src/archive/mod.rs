//! The archive: every reading serve applies, kept as Parquet files for the data lake.
//!
//! ```text
//!  store writer ──(the transaction that applies the message: deduplicated, exactly once)──►
//!      archive_spool rows (one per series of a telemetry message)
//!  Archiver (its own connection, every POLL) ─► rows due ─► .readings-F-L.parquet.tmp, fsync
//!      ─► one transaction: archive_files row + DELETE the spooled rows ─► rename, fsync dir
//! ```
//!
//! **Exactly once.** A reading reaches the spool in the transaction that applies its message,
//! so a redelivered duplicate, which the store's dedup refuses, adds nothing, and a crash
//! before the commit leaves nothing (the message comes again). A file is complete and synced
//! before the transaction that records it in `archive_files` and deletes its rows from the
//! spool; it gets its final name only after that commit. A crash before the commit leaves a
//! `.tmp` file that [`register`] removes (its rows are still spooled and are written again); a
//! crash after it leaves a recorded `.tmp` that [`register`] renames. So every reading is in
//! exactly one file or still in the spool, and a stop ([`flush`] with `all`) empties the spool.
//!
//! **Layout.** `DIR/date=YYYY-MM-DD/hour=HH/readings-FIRST-LAST.parquet` (UTC; FIRST and LAST
//! are the spool ids the file holds, so names never repeat), partitioned by the hour the cloud
//! received the readings, as Kinesis Data Firehose partitions by arrival: a late reading is in
//! the file of the hour it arrived, with its own event time in `time`. Hive-style directory
//! names, so DuckDB, Spark, Athena and pandas read `date` and `hour` as columns
//! (`read_parquet('DIR/**/*.parquet', hive_partitioning = true)`). The schema is
//! [`parquet_file::SCHEMA`] (ARCHITECTURE.md, "The archive"); which readings become rows, and
//! their column values, is [`rows`], which the AWS lake's Firehose transformer (osprey-lambda)
//! uses too.
//!
//! **When files are written.** The readings of an hour are written once the hour has ended, or
//! once the oldest of them has waited [`ArchiveConfig::every`], or at once when the spool holds
//! [`ArchiveConfig::max_file_readings`] (then in several files); at a stop, everything.

mod parquet_file;
pub mod rows;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use osprey_protocol::TelemetryBatch;
use rusqlite::{params, Connection, Transaction};

pub use parquet_file::{Rows, SCHEMA};

use crate::shutdown::Shutdown;

/// Default for [`ArchiveConfig::every`].
pub const DEFAULT_EVERY: Duration = Duration::from_secs(3600);
/// Default for [`ArchiveConfig::max_file_readings`].
pub const DEFAULT_MAX_FILE_READINGS: usize = 500_000;
/// How often the archiver looks for readings that are due.
pub const POLL: Duration = Duration::from_secs(1);
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// Settings of the archive (`osprey serve --archive DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Root directory of the Parquet files (created if missing, mode 0750).
    pub dir: PathBuf,
    /// Longest time a reading waits in the spool before its file is written; files are cut
    /// at hour boundaries as well.
    pub every: Duration,
    /// Most readings in one file.
    pub max_file_readings: usize,
}

impl ArchiveConfig {
    /// The defaults for `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> ArchiveConfig {
        ArchiveConfig {
            dir: dir.into(),
            every: DEFAULT_EVERY,
            max_file_readings: DEFAULT_MAX_FILE_READINGS,
        }
    }
}

/// Why the archive cannot go on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// The directory cannot be created or read.
    #[error("archive directory {path}: {cause}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// What went wrong.
        cause: std::io::Error,
    },
    /// A file cannot be written.
    #[error("archive file {path}: {cause}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        cause: String,
    },
    /// The spool in the store cannot be read or changed.
    #[error("archive spool: {0}")]
    Store(#[from] rusqlite::Error),
}

/// The tables of the archive (part of the store's schema, `crate::store::schema`).
pub const DDL: &str = r#"
CREATE TABLE IF NOT EXISTS archive_targets (
    dir TEXT PRIMARY KEY NOT NULL
);
CREATE TABLE IF NOT EXISTS archive_spool (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    received_ms INTEGER NOT NULL,
    device      TEXT NOT NULL,
    epoch       INTEGER NOT NULL,
    seq         INTEGER NOT NULL,
    sensor      TEXT NOT NULL,
    metric      TEXT NOT NULL,
    unit        TEXT NOT NULL,
    times       BLOB NOT NULL,
    vals        BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS archive_files (
    name       TEXT PRIMARY KEY NOT NULL,
    first_id   INTEGER NOT NULL,
    last_id    INTEGER NOT NULL,
    readings   INTEGER NOT NULL,
    hour_ms    INTEGER NOT NULL,
    written_ms INTEGER NOT NULL
);
"#;

/// Whether a serve with an archive is registered: the writer spools readings only then.
pub fn enabled(tx: &Transaction<'_>) -> rusqlite::Result<bool> {
    tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM archive_targets)")?
        .query_row([], |row| row.get(0))
}

/// Spools the readings of one applied telemetry message (called by the store writer in the
/// transaction that applies it, after the dedup check).
pub fn spool(
    tx: &Transaction<'_>,
    received_ms: i64,
    device: &str,
    epoch: u64,
    seq: u64,
    batch: &TelemetryBatch,
) -> rusqlite::Result<()> {
    let mut insert = tx.prepare_cached(
        "INSERT INTO archive_spool
             (received_ms, device, epoch, seq, sensor, metric, unit, times, vals)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?;
    for s in rows::series(batch) {
        let mut times = Vec::with_capacity(s.values.len() * 8);
        let mut vals = Vec::with_capacity(s.values.len() * 8);
        for (t, v) in s.readings() {
            times.extend_from_slice(&t.to_le_bytes());
            vals.extend_from_slice(&v.to_le_bytes());
        }
        insert.execute(params![
            received_ms,
            device,
            epoch,
            seq,
            s.sensor,
            s.metric,
            s.unit,
            times,
            vals
        ])?;
    }
    Ok(())
}

/// Makes `cfg` the archive of this run (or, with `None`, turns spooling off), creates its
/// directory and finishes what a crash interrupted: recorded files still under their `.tmp`
/// name are renamed, unrecorded `.tmp` files removed. Returns the readings waiting in the
/// spool.
pub fn register(conn: &Connection, cfg: Option<&ArchiveConfig>) -> Result<u64, ArchiveError> {
    let tx = conn.unchecked_transaction()?;
    tx.execute("DELETE FROM archive_targets", [])?;
    if let Some(cfg) = cfg {
        create_dir(&cfg.dir)?;
        tx.execute(
            "INSERT INTO archive_targets (dir) VALUES (?1)",
            [cfg.dir.to_string_lossy()],
        )?;
    }
    tx.commit()?;
    if let Some(cfg) = cfg {
        recover(conn, &cfg.dir)?;
    }
    let waiting: i64 = conn.query_row(
        "SELECT COALESCE(SUM(length(vals)), 0) / 8 FROM archive_spool",
        [],
        |row| row.get(0),
    )?;
    Ok(u64::try_from(waiting).unwrap_or(0))
}

/// Renames recorded `.tmp` files and removes unrecorded ones under `dir`.
fn recover(conn: &Connection, dir: &Path) -> Result<(), ArchiveError> {
    let recorded: Vec<String> = conn
        .prepare("SELECT name FROM archive_files")?
        .query_map([], |row| row.get(0))?
        .collect::<Result<_, _>>()?;
    let recorded: std::collections::HashSet<PathBuf> =
        recorded.iter().map(|name| dir.join(name)).collect();
    for tmp in tmp_files(dir)? {
        let Some(final_path) = final_of(&tmp) else {
            continue;
        };
        let outcome = if recorded.contains(&final_path) {
            tracing::info!(file = %final_path.display(), "archive: finishing a file a stop interrupted");
            std::fs::rename(&tmp, &final_path)
        } else {
            tracing::info!(file = %tmp.display(), "archive: removing an unfinished file (its readings are still spooled)");
            std::fs::remove_file(&tmp)
        };
        outcome.map_err(|cause| ArchiveError::File {
            path: tmp.clone(),
            cause: cause.to_string(),
        })?;
    }
    Ok(())
}

/// The `.readings-….parquet.tmp` files two levels under `dir` (`date=…/hour=…/`).
fn tmp_files(dir: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let list = |path: &Path| -> Result<Vec<PathBuf>, ArchiveError> {
        let entries = std::fs::read_dir(path).map_err(|cause| ArchiveError::Dir {
            path: path.to_owned(),
            cause,
        })?;
        Ok(entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
    };
    let mut found = Vec::new();
    for date in list(dir)?.into_iter().filter(|p| p.is_dir()) {
        for hour in list(&date)?.into_iter().filter(|p| p.is_dir()) {
            found.extend(list(&hour)?.into_iter().filter(|p| final_of(p).is_some()));
        }
    }
    Ok(found)
}

/// `…/readings-F-L.parquet` for `…/.readings-F-L.parquet.tmp`.
fn final_of(tmp: &Path) -> Option<PathBuf> {
    let name = tmp.file_name()?.to_str()?;
    let base = name.strip_prefix('.')?.strip_suffix(".tmp")?;
    base.starts_with("readings-")
        .then(|| tmp.with_file_name(base))
}

fn create_dir(dir: &Path) -> Result<(), ArchiveError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|cause| ArchiveError::Dir {
            path: dir.to_owned(),
            cause,
        })
}

/// What a [`flush`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flushed {
    /// Files written.
    pub files: u64,
    /// Readings in them.
    pub readings: u64,
}

/// One spooled row.
struct Spooled {
    id: i64,
    received_ms: i64,
    device: String,
    epoch: i64,
    seq: i64,
    sensor: String,
    metric: String,
    unit: String,
    times: Vec<u8>,
    vals: Vec<u8>,
}

impl Spooled {
    fn readings(&self) -> usize {
        self.vals.len() / 8
    }
}

/// Writes the spooled readings that are due at `now_ms` (all of them with `all`) to files
/// under `cfg.dir` and removes them from the spool.
pub fn flush(
    conn: &mut Connection,
    cfg: &ArchiveConfig,
    all: bool,
    now_ms: i64,
) -> Result<Flushed, ArchiveError> {
    let mut flushed = Flushed::default();
    let every_ms = i64::try_from(cfg.every.as_millis()).unwrap_or(i64::MAX);
    let max = cfg.max_file_readings.max(1);
    let mut after = 0i64;
    loop {
        let (chunk, full) = read_chunk(conn, after, max)?;
        let Some(last) = chunk.last().map(|r| r.id) else {
            return Ok(flushed);
        };
        // The chunk's rows by the hour they arrived in.
        let mut hours: std::collections::BTreeMap<i64, Vec<&Spooled>> = Default::default();
        for row in &chunk {
            hours
                .entry(row.received_ms.div_euclid(HOUR_MS) * HOUR_MS)
                .or_default()
                .push(row);
        }
        for (hour_ms, rows) in hours {
            let oldest = rows.iter().map(|r| r.received_ms).min().unwrap_or(now_ms);
            let due = all
                || full
                || hour_ms + HOUR_MS <= now_ms
                || now_ms.saturating_sub(oldest) >= every_ms;
            if due {
                flushed.readings += write_file(conn, cfg, hour_ms, last, &rows)?;
                flushed.files += 1;
            }
        }
        after = last;
    }
}

/// Up to `max` readings of spooled rows after id `after`, in id order (at least one row), and
/// whether the limit was reached.
fn read_chunk(conn: &Connection, after: i64, max: usize) -> rusqlite::Result<(Vec<Spooled>, bool)> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, received_ms, device, epoch, seq, sensor, metric, unit, times, vals
         FROM archive_spool WHERE id > ?1 ORDER BY id",
    )?;
    let mut rows = stmt.query([after])?;
    let mut chunk = Vec::new();
    let mut readings = 0usize;
    while let Some(row) = rows.next()? {
        let spooled = Spooled {
            id: row.get(0)?,
            received_ms: row.get(1)?,
            device: row.get(2)?,
            epoch: row.get(3)?,
            seq: row.get(4)?,
            sensor: row.get(5)?,
            metric: row.get(6)?,
            unit: row.get(7)?,
            times: row.get(8)?,
            vals: row.get(9)?,
        };
        readings += spooled.readings();
        chunk.push(spooled);
        if readings >= max {
            return Ok((chunk, true));
        }
    }
    Ok((chunk, false))
}

/// Writes `rows` (all received in the hour starting `hour_ms`, ids up to `last`) as one file,
/// records it and removes them from the spool. Returns the readings written.
fn write_file(
    conn: &mut Connection,
    cfg: &ArchiveConfig,
    hour_ms: i64,
    last: i64,
    rows: &[&Spooled],
) -> Result<u64, ArchiveError> {
    let first_id = rows.iter().map(|r| r.id).min().unwrap_or(0);
    let last_id = rows.iter().map(|r| r.id).max().unwrap_or(0);
    let (y, m, d) = civil_date(hour_ms.div_euclid(DAY_MS));
    let hour = hour_ms.rem_euclid(DAY_MS) / HOUR_MS;
    let dir_name = format!("date={y:04}-{m:02}-{d:02}/hour={hour:02}");
    let file_name = format!("readings-{first_id}-{last_id}.parquet");
    let dir = cfg.dir.join(&dir_name);
    create_dir(&dir)?;
    let final_path = dir.join(&file_name);
    let tmp = dir.join(format!(".{file_name}.tmp"));

    let mut columns = Rows::default();
    for row in rows {
        let times = row.times.chunks_exact(8).map(le_i64);
        let vals = row.vals.chunks_exact(8).map(le_f64);
        columns.push_series(
            &row.device,
            row.epoch,
            row.seq,
            (&row.sensor, &row.metric, &row.unit),
            times.zip(vals),
            row.received_ms,
        );
    }
    let readings = columns.len() as u64;
    parquet_file::write(&tmp, &columns).map_err(|cause| ArchiveError::File {
        path: tmp.clone(),
        cause,
    })?;

    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO archive_files (name, first_id, last_id, readings, hour_ms, written_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            format!("{dir_name}/{file_name}"),
            first_id,
            last_id,
            readings as i64,
            hour_ms,
            crate::clock::now_ms()
        ],
    )?;
    tx.execute(
        "DELETE FROM archive_spool
         WHERE id <= ?1 AND received_ms >= ?2 AND received_ms < ?3",
        params![last, hour_ms, hour_ms + HOUR_MS],
    )?;
    tx.commit()?;
    let io = |cause: std::io::Error| ArchiveError::File {
        path: final_path.clone(),
        cause: cause.to_string(),
    };
    std::fs::rename(&tmp, &final_path).map_err(io)?;
    std::fs::File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(io)?;
    tracing::debug!(file = %final_path.display(), readings, "archive: file written");
    Ok(readings)
}

fn le_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    i64::from_le_bytes(a)
}

fn le_f64(b: &[u8]) -> f64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(b);
    f64::from_le_bytes(a)
}

/// The proleptic Gregorian (year, month, day) of `days` since 1970-01-01.
fn civil_date(days: i64) -> (i64, u32, u32) {
    // Shift to a 400-year era that starts on 0000-03-01, so leap days fall at an era's end.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Counters of the running archiver.
#[derive(Debug, Default)]
pub struct ArchiveStats {
    /// Files written.
    pub files: AtomicU64,
    /// Readings written.
    pub readings: AtomicU64,
    /// Flushes that failed (retried at the next poll).
    pub failures: AtomicU64,
}

/// Writes due readings every [`POLL`] until shutdown; the last readings are written by the
/// [`flush`] with `all` that serve runs after the store has closed.
#[derive(Debug)]
pub struct Archiver {
    db: PathBuf,
    cfg: ArchiveConfig,
    stats: Arc<ArchiveStats>,
}

impl Archiver {
    /// An archiver of the store at `db`.
    pub fn new(db: &Path, cfg: ArchiveConfig) -> Archiver {
        Archiver {
            db: db.to_owned(),
            cfg,
            stats: Arc::default(),
        }
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<ArchiveStats> {
        Arc::clone(&self.stats)
    }

    /// Runs until `shutdown`. A failed flush is logged, counted and tried again.
    pub async fn run(self, mut shutdown: Shutdown) -> Result<(), String> {
        let path = self.db.clone();
        let conn = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
            let conn = Connection::open(&path)?;
            crate::store::schema::configure(&conn)?;
            Ok(conn)
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("archive: cannot open {}: {e}", self.db.display()))?;
        let mut conn = Some(conn);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.wait() => return Ok(()),
            }
            let (mut c, cfg) = (
                conn.take().ok_or("archive: connection lost")?,
                self.cfg.clone(),
            );
            let (c, result) = tokio::task::spawn_blocking(move || {
                let result = flush(&mut c, &cfg, false, crate::clock::now_ms());
                (c, result)
            })
            .await
            .map_err(|e| e.to_string())?;
            conn = Some(c);
            match result {
                Ok(f) => {
                    self.stats.files.fetch_add(f.files, Ordering::Relaxed);
                    self.stats.readings.fetch_add(f.readings, Ordering::Relaxed);
                    if f.files > 0 {
                        tracing::info!(files = f.files, readings = f.readings, "archive: written");
                    }
                }
                Err(e) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "archive: flush failed; trying again");
                }
            }
        }
    }
}

/// Writes every spooled reading (serve runs it after its store closed, so nothing more is
/// spooled).
pub fn flush_all(db: &Path, cfg: &ArchiveConfig) -> Result<Flushed, ArchiveError> {
    let mut conn = Connection::open(db)?;
    crate::store::schema::configure(&conn)?;
    flush(&mut conn, cfg, true, crate::clock::now_ms())
}

#[cfg(test)]
mod tests;
