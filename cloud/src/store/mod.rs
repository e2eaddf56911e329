//! SQLite store: one file in WAL mode, one writer thread, pooled read connections.
//!
//! ```text
//!  pipeline ──write(writes, checkpoint)──► bounded queue ──► writer thread ──► one transaction
//!                                                                               per call
//!  api, kinesis source ──read(query)──► blocking pool ──► read-only connection (WAL snapshot)
//! ```
//!
//! The tables are described in [`schema`]; the write rules (dedup through `seen`, merging
//! windows) in [`writer`]; the queries in [`query`]; dead letters (stored once, bounded) in
//! [`deadletter`]; what is deleted when in [`retention`]; the fleet page's ranking in
//! [`fleetview`]; a device's downsampled series and alert episodes in [`history`]; the rules
//! each device reports it runs in [`device_rules`].

pub mod deadletter;
mod deferred;
pub mod device_rules;
pub mod fleetview;
pub mod history;
pub mod query;
pub mod reader;
mod recent;
pub mod retention;
pub mod rule_changes;
pub mod schema;
pub mod signals;
pub mod status;
pub mod timeline;
pub mod writer;

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use rusqlite::Connection;

use crate::analytics::signals::SignalsConfig;

pub use deadletter::{DeadLetterFilter, DeadLetterLimits, DeadLetterRow};
pub use query::{
    AlertFilter, AlertRow, Counts, DeviceEvent, DeviceSummary, WindowFilter, WindowRow,
};
pub use reader::StoreReader;
pub use retention::{Maintenance, MaintenanceStats, RetentionConfig};
pub use status::{StatusCounters, StatusMark, StatusReport};
pub use writer::{Checkpoint, DeadLetter, Message, Presence, StoreWriter, Write, Written};

/// Jobs that may wait for the writer before callers feel backpressure.
const WRITE_QUEUE: usize = 64;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file could not be opened or set up.
    #[error(
        "cannot open the database {path}: {cause}; check that its directory exists and is \
         writable, or pass another --db"
    )]
    Open {
        /// Database path.
        path: PathBuf,
        /// SQLite's error.
        cause: rusqlite::Error,
    },
    /// The file was written by another schema version of Osprey.
    #[error(
        "the database {path} has schema version {found}, this osprey uses version {expected}; \
         use another --db file"
    )]
    IncompatibleSchema {
        /// Database path.
        path: PathBuf,
        /// Version in the file.
        found: i64,
        /// Version this build writes.
        expected: i64,
    },
    /// The writer thread could not be started.
    #[error("cannot start the store writer thread: {cause}")]
    SpawnWriter {
        /// The OS error.
        cause: std::io::Error,
    },
    /// A write transaction failed and was rolled back.
    #[error("store write failed (rolled back): {cause}")]
    Write {
        /// SQLite's error.
        cause: rusqlite::Error,
    },
    /// A read query failed.
    #[error("store query failed: {cause}")]
    Read {
        /// SQLite's error.
        cause: rusqlite::Error,
    },
    /// The blocking task running a query panicked or was cancelled.
    #[error("store query task failed: {0}")]
    ReadTask(String),
    /// The writer thread is gone (the store was closed, or the thread died).
    #[error("the store writer has stopped")]
    WriterStopped,
}

/// The open store: the writer thread and the read pool.
#[derive(Debug)]
pub struct Store {
    path: PathBuf,
    writer: StoreWriter,
    reader: StoreReader,
    maintenance: MaintenanceStats,
    thread: JoinHandle<()>,
}

impl Store {
    /// Opens (creating if needed) the database at `path` and starts the writer thread.
    /// Blocks briefly for file I/O.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        Store::open_with(path, SignalsConfig::default())
    }

    /// [`Store::open`], with the writer computing maintenance signals under `signals` (its
    /// rules, horizon and fit settings).
    pub fn open_with(path: impl AsRef<Path>, signals: SignalsConfig) -> Result<Store, StoreError> {
        Store::open_configured(path, signals, RetentionConfig::default())
    }

    /// [`Store::open_with`], keeping data under `retention` (the writer thread prunes every
    /// `retention.interval`; see [`retention`]).
    pub fn open_configured(
        path: impl AsRef<Path>,
        signals: SignalsConfig,
        retention: RetentionConfig,
    ) -> Result<Store, StoreError> {
        let path = path.as_ref().to_owned();
        let open_err = |cause| StoreError::Open {
            path: path.clone(),
            cause,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        match schema::migrate(&conn).map_err(open_err)? {
            schema::Migration::Current => {}
            schema::Migration::Incompatible { found } => {
                return Err(StoreError::IncompatibleSchema {
                    path,
                    found,
                    expected: schema::SCHEMA_VERSION,
                })
            }
        }
        let maintenance = MaintenanceStats::load(&conn).map_err(open_err)?;
        let interval = retention.interval;
        let (writer, thread) =
            writer::spawn(conn, WRITE_QUEUE, signals, retention, maintenance.clone())?;
        writer::spawn_ticker(&writer, interval)?;
        let reader = StoreReader::new(&path, maintenance.clone());
        tracing::info!(path = %path.display(), "store open");
        Ok(Store {
            path,
            writer,
            reader,
            maintenance,
            thread,
        })
    }

    /// What retention and the dead-letter caps deleted (lifetime counts of this file).
    pub fn maintenance(&self) -> MaintenanceStats {
        self.maintenance.clone()
    }

    /// The database path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle for writing.
    pub fn writer(&self) -> StoreWriter {
        self.writer.clone()
    }

    /// A handle for reading.
    pub fn reader(&self) -> StoreReader {
        self.reader.clone()
    }

    /// Stops the writer thread once every other [`StoreWriter`] handle is dropped and its
    /// queued writes are committed, then returns. Drop the pipeline and sources first.
    pub async fn close(self) -> Result<(), StoreError> {
        let Store { writer, thread, .. } = self;
        drop(writer);
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(|e| StoreError::ReadTask(e.to_string()))?
            .map_err(|_| StoreError::WriterStopped)
    }
}

#[cfg(test)]
mod tests;
