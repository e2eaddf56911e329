//! Where the API reads the fleet from: the SQLite store `osprey serve` ingests into, or the
//! Lambda's DynamoDB state table (`osprey serve --state dynamodb --table T`, read-only,
//! [`crate::fleet::dynamo_view`]).
//!
//! Every endpoint the fleet, device and alerts pages call answers from either, with the same
//! shapes, so the pages are the same. The endpoints that only the SQLite store can answer
//! (windows listings, dead letters, the store's counts) answer 404 from DynamoDB state with
//! what to use instead ([`StateSource::store`]).

use std::sync::Arc;

use super::error::ApiError;
use crate::fleet::dynamo_view::DynamoView;
use crate::store::fleetview::{FleetMark, FleetPage, FleetQuery};
use crate::store::history::{Episode, EpisodeFilter, History};
use crate::store::signals::DeviceSignals;
use crate::store::timeline::StatusTimeline;
use crate::store::{AlertFilter, AlertRow, DeviceSummary, StoreReader};

/// The read side the handlers use.
#[derive(Debug, Clone)]
pub enum StateSource {
    /// The SQLite store.
    Sqlite(StoreReader),
    /// The Lambda's DynamoDB state table, read-only.
    Dynamo(Arc<DynamoView>),
}

/// Calls the same method on either backend, mapping its error to an [`ApiError`].
macro_rules! either {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match $self {
            StateSource::Sqlite(r) => Ok(r.$method($($arg),*).await?),
            StateSource::Dynamo(d) => Ok(d.$method($($arg),*).await?),
        }
    };
}

impl StateSource {
    /// The SQLite store, or a 404 saying the route needs it.
    pub fn store(&self) -> Result<&StoreReader, ApiError> {
        match self {
            StateSource::Sqlite(r) => Ok(r),
            StateSource::Dynamo(d) => Err(ApiError::not_found(format!(
                "this route reads the SQLite store; `osprey serve --state dynamodb` serves the \
                 dashboard's routes from table {:?} only (use /api/fleet, /api/devices/ID, \
                 /api/devices/ID/history, /api/alerts/episodes, or `osprey fleet \
                 --dynamodb-table`)",
                d.table()
            ))),
        }
    }

    /// What this source does not hold, in words (empty for the SQLite store).
    pub fn missing(&self) -> &'static [&'static str] {
        match self {
            StateSource::Sqlite(_) => &[],
            StateSource::Dynamo(_) => &crate::fleet::dynamo_view::MISSING,
        }
    }

    /// Every device, by id.
    pub async fn devices(&self) -> Result<Vec<DeviceSummary>, ApiError> {
        either!(self.devices())
    }

    /// One device, or `None`.
    pub async fn device(&self, device: &str) -> Result<Option<DeviceSummary>, ApiError> {
        either!(self.device(device))
    }

    /// A device's health and series signals.
    pub async fn device_signals(&self, device: &str) -> Result<DeviceSignals, ApiError> {
        either!(self.device_signals(device))
    }

    /// Alert events matching `filter`, newest first.
    pub async fn alerts(&self, filter: AlertFilter) -> Result<Vec<AlertRow>, ApiError> {
        either!(self.alerts(filter))
    }

    /// One page of the fleet.
    pub async fn fleet_page(&self, query: FleetQuery) -> Result<FleetPage, ApiError> {
        either!(self.fleet_page(query))
    }

    /// What changes when a fleet page can change, and the newest alert's id.
    pub async fn fleet_mark(&self) -> Result<FleetMark, ApiError> {
        either!(self.fleet_mark())
    }

    /// Alert events after cursor `after`, oldest first.
    pub async fn alerts_after(
        &self,
        after: i64,
        limit: u32,
    ) -> Result<Vec<(i64, AlertRow)>, ApiError> {
        either!(self.alerts_after(after, limit))
    }

    /// A device's series over `[from_ms, to_ms)` in at most `points` buckets each.
    pub async fn history(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
        points: u32,
    ) -> Result<History, ApiError> {
        either!(self.history(device, from_ms, to_ms, points))
    }

    /// A device's status timeline over `[from_ms, to_ms)`: none from DynamoDB state, where the
    /// Lambda keeps the current status only ([`StateSource::missing`] says so).
    pub async fn status_timeline(
        &self,
        device: &str,
        from_ms: i64,
        to_ms: i64,
        bucket_ms: i64,
    ) -> Result<StatusTimeline, ApiError> {
        match self {
            StateSource::Sqlite(r) => {
                Ok(r.status_timeline(device, from_ms, to_ms, bucket_ms).await?)
            }
            StateSource::Dynamo(_) => Ok(StatusTimeline {
                statuses: Vec::new(),
                statuses_truncated: false,
                recorded_since_ms: None,
            }),
        }
    }

    /// Alert episodes matching `filter`.
    pub async fn episodes(
        &self,
        filter: EpisodeFilter,
        now_ms: i64,
    ) -> Result<Vec<Episode>, ApiError> {
        either!(self.episodes(filter, now_ms))
    }
}
