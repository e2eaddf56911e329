//! Read-only connections for the API and the Kinesis source, kept in a small pool.
//!
//! In WAL mode readers never block the writer and see the last committed transaction. Queries
//! run on tokio's blocking pool so that a slow query cannot stall the runtime.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use osprey_protocol::ThresholdRule;
use rusqlite::{Connection, OpenFlags};

use super::deadletter::{self, DeadLetterFilter, DeadLetterRow};
use super::device_rules::{self, RulesRow};
use super::retention::{Maintenance, MaintenanceStats};
use super::{fleetview, history, query, schema, StoreError};

/// Idle connections kept for reuse; more may be open while queries run concurrently.
const MAX_IDLE: usize = 4;

/// Handle to the read side of the store; cheap to clone.
#[derive(Debug, Clone)]
pub struct StoreReader {
    inner: Arc<Inner>,
    maintenance: MaintenanceStats,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl StoreReader {
    /// A reader for the database at `path` (which the writer has already created).
    pub(super) fn new(path: &Path, maintenance: MaintenanceStats) -> StoreReader {
        StoreReader {
            inner: Arc::new(Inner {
                path: path.to_owned(),
                idle: Mutex::new(Vec::new()),
            }),
            maintenance,
        }
    }

    /// What retention and the dead-letter caps deleted (see [`super::retention`]).
    pub fn maintenance(&self) -> Maintenance {
        self.maintenance.snapshot()
    }

    /// Dead letters, newest first.
    pub async fn dead_letters(
        &self,
        filter: DeadLetterFilter,
    ) -> Result<Vec<DeadLetterRow>, StoreError> {
        self.read(move |conn| deadletter::list(conn, &filter)).await
    }

    /// Runs `f` on a read connection on the blocking pool.
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = inner.take()?;
            let result = f(&conn).map_err(|cause| StoreError::Read { cause });
            inner.give_back(conn);
            result
        })
        .await
        .map_err(|e| StoreError::ReadTask(e.to_string()))?
    }

    /// The fleet: every device with its latest window per series and active alert count.
    pub async fn devices(&self) -> Result<Vec<query::DeviceSummary>, StoreError> {
        self.read(query::devices).await
    }

    /// One device, or `None` if the store has never heard of it.
    pub async fn device(&self, device: &str) -> Result<Option<query::DeviceSummary>, StoreError> {
        let device = device.to_owned();
        self.read(move |conn| query::device(conn, &device)).await
    }

    /// Signals and health of one device (empty signals for a device without windows).
    pub async fn device_signals(
        &self,
        device: &str,
    ) -> Result<super::signals::DeviceSignals, StoreError> {
        let device = device.to_owned();
        self.read(move |conn| super::signals::device_signals(conn, &device))
            .await
    }

    /// A device's stored rules report and desired document hash, and `(sensor, metric, unit)`
    /// of its series ([`super::device_rules`]).
    pub async fn device_rules(
        &self,
        device: &str,
    ) -> Result<(Option<RulesRow>, Vec<(String, String, String)>), StoreError> {
        let device = device.to_owned();
        self.read(move |conn| {
            Ok((
                device_rules::get(conn, &device)?,
                device_rules::series_units(conn, &device)?,
            ))
        })
        .await
    }

    /// At most `limit` recorded rules changes, newest first; only those naming `device` when
    /// given ([`super::rule_changes`]).
    pub async fn rule_changes(
        &self,
        device: Option<String>,
        limit: u32,
    ) -> Result<Vec<super::rule_changes::ChangeRow>, StoreError> {
        self.read(move |conn| super::rule_changes::list(conn, device.as_deref(), limit))
            .await
    }

    /// The rules in effect `device` reported; `None` if it has not.
    pub async fn device_rules_in_effect(
        &self,
        device: &str,
    ) -> Result<Option<Vec<ThresholdRule>>, StoreError> {
        let device = device.to_owned();
        self.read(move |conn| device_rules::device_in_effect(conn, &device))
            .await
    }

    /// Windows matching `filter`, newest first.
    pub async fn windows(
        &self,
        filter: query::WindowFilter,
    ) -> Result<Vec<query::WindowRow>, StoreError> {
        self.read(move |conn| query::windows(conn, &filter)).await
    }

    /// Alert events matching `filter`, newest first.
    pub async fn alerts(
        &self,
        filter: query::AlertFilter,
    ) -> Result<Vec<query::AlertRow>, StoreError> {
        self.read(move |conn| query::alerts(conn, &filter)).await
    }

    /// One page of the fleet, ranked and filtered ([`super::fleetview`]).
    pub async fn fleet_page(
        &self,
        query: fleetview::FleetQuery,
    ) -> Result<fleetview::FleetPage, StoreError> {
        self.read(move |conn| fleetview::fleet_page(conn, &query))
            .await
    }

    /// What changes when a fleet page can change, and the newest alert's id.
    pub async fn fleet_mark(&self) -> Result<fleetview::FleetMark, StoreError> {
        self.read(fleetview::fleet_mark).await
    }

    /// Alert events stored after row id `after`, oldest first, with their row ids.
    pub async fn alerts_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, query::AlertRow)>, StoreError> {
        self.read(move |conn| fleetview::alerts_after(conn, after, limit))
            .await
    }

    /// A device's series over `[from_ms, to_ms)` in at most `points` buckets each
    /// ([`super::history`]).
    pub async fn history(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
        points: u32,
    ) -> Result<history::History, StoreError> {
        let device = device.to_owned();
        self.read(move |conn| history::history(conn, &device, from_ms, to_ms, points))
            .await
    }

    /// A device's status timeline over `[from_ms, to_ms)` (cloud clock), with at most one
    /// sample per `bucket_ms` ([`super::timeline`]).
    pub async fn status_timeline(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<super::timeline::StatusTimeline, StoreError> {
        let device = device.to_owned();
        self.read(move |conn| super::timeline::timeline(conn, &device, from_ms, to_ms, bucket_ms))
            .await
    }

    /// Alert episodes matching `filter`; active ones last until `now_ms`.
    pub async fn episodes(
        &self,
        filter: history::EpisodeFilter,
        now_ms: i64,
    ) -> Result<Vec<history::Episode>, StoreError> {
        self.read(move |conn| history::episodes(conn, &filter, now_ms))
            .await
    }

    /// The checkpointed sequence number of a Kinesis shard, if any.
    pub async fn checkpoint(
        &self,
        stream: &str,
        shard_id: &str,
    ) -> Result<Option<String>, StoreError> {
        let (stream, shard_id) = (stream.to_owned(), shard_id.to_owned());
        self.read(move |conn| query::checkpoint(conn, &stream, &shard_id))
            .await
    }

    /// Row counts for health and tests.
    pub async fn counts(&self) -> Result<query::Counts, StoreError> {
        self.read(query::counts).await
    }
}

impl Inner {
    fn take(&self) -> Result<Connection, StoreError> {
        let pooled = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match pooled {
            Some(conn) => Ok(conn),
            None => open_read_only(&self.path),
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

fn open_read_only(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags).map_err(|cause| StoreError::Open {
        path: path.to_owned(),
        cause,
    })?;
    schema::configure(&conn).map_err(|cause| StoreError::Open {
        path: path.to_owned(),
        cause,
    })?;
    Ok(conn)
}
