//! The HTTP API and the dashboard (axum).
//!
//! | route | returns |
//! |---|---|
//! | `GET /`, `GET /devices/{device}`, `GET /alerts` | the fleet, device and alerts pages ([`pages`]: no inline script or style, uPlot built in) |
//! | `GET /dashboard.js`, `GET /dashboard.css`, `GET /assets/{file}` | their scripts, style and uPlot (built into the binary) |
//! | `GET /healthz` | `{"status": "ok"}`: alive; never needs the token |
//! | `GET /readyz` | `{"ready", "reason"}`, 200 or 503 ([`ready`]); never needs the token |
//! | `GET /api/devices` | `[DeviceSummary]`, by device id |
//! | `GET /api/devices/{device}` | `DeviceSummary`, 404 if unknown |
//! | `GET /api/devices/{device}/windows?sensor=&metric=&kind=&since_ms=&limit=` | `[WindowRow]`, newest first; 404 if unknown |
//! | `GET /api/devices/{device}/signals` | `DeviceSignals`: health (score, reasons) and each series' signals (baseline, anomaly score, trend, predicted crossings, vibration); 404 if unknown |
//! | `GET /api/devices/{device}/history?range=&to_ms=&points=` | each series downsampled into at most `points` buckets (mean, min, max, p5, p95, corrections), threshold lines (the device's rules in effect once it reported them, else serve's), signals, alert events, status timeline ([`views`]); 404 if unknown |
//! | `GET /api/devices/{device}/rules` | `DeviceRules` ([`crate::reported_rules`]): the rules in effect with their source (`document`, `local`) and unit, the applied document (source, version, hash, time), the document set for it and whether it is pending, the last refusal (field, reason, time), which rules its signals use, the newest change recorded for it through the API (`last_change`); SQLite store only; 404 if unknown |
//! | `POST /api/rules/changes` | records a change `osprey rules set --api` made, as the caller the token names ([`changes`]): 201 `{"id", "recorded_by", "recorded_ms", "duplicate"}` (200 for an id recorded before); SQLite store only |
//! | `GET /api/rules/changes?device=&limit=` | `[{"recorded_by", "recorded_ms", "change"}]`, newest first ([`changes`]) |
//! | `GET /api/fleet?q=&status=&severity=&sort=&offset=&limit=` | one page of the fleet, worst first by default, with the whole fleet's counts ([`views`]) |
//! | `GET /api/fleet/events?…&after=` | the same page kept live: server-sent `fleet` (changed rows, order, counts) and `alert` events ([`live`]) |
//! | `GET /api/alerts/episodes?device=&rule=&severity=&from_ms=&to_ms=&state=&limit=` | raise → clear episodes with durations, active first ([`views`]) |
//! | `GET /api/windows?device=&sensor=&metric=&kind=&since_ms=&limit=` | `[WindowRow]`, newest first |
//! | `GET /api/alerts?device=&since_ms=&limit=` | `[AlertRow]`, newest first |
//! | `GET /api/stats` | `{"pipeline": PipelineStats, "store": Counts, "maintenance": Maintenance}` (what retention and the dead-letter caps deleted) |
//! | `GET /api/dead-letters?limit=&before=&payload=hex` | `[DeadLetterRow]`, newest first ([`deadletters`]) |
//! | `GET /metrics` | Prometheus (OpenMetrics text): ingest counters, per-shard iterator age; merged in by `serve` from [`crate::metrics`] |
//!
//! Shapes: [`crate::store::DeviceSummary`], [`crate::store::WindowRow`],
//! [`crate::store::AlertRow`]. `kind` is `tumbling` (default), `hopping` or `session`; `limit` is
//! 1 to 10 000 (default 100). Errors are
//! `{"error": "..."}` with 400 (bad parameter, named), 404 (unknown device or route) or 500.
//!
//! The routes read through [`StateSource`] ([`source`]): the SQLite store, or the Lambda's
//! DynamoDB state read-only (`osprey serve --state dynamodb`), where the routes only SQLite can
//! answer are a 404 that says so.
//!
//! Security ([`auth`], [`host`], [`headers`]; `serve` adds them as layers): with a token, every
//! route but `/healthz`, `/readyz` and the dashboard's static pages and files needs
//! `Authorization: Bearer <token>` (401 otherwise); a loopback listener answers only to
//! loopback Host names (421 otherwise); every response carries the security headers.

pub mod auth;
pub mod changes;
pub mod deadletters;
mod error;
mod handlers;
pub mod headers;
pub mod host;
pub mod live;
pub mod pages;
pub mod params;
pub mod ready;
pub mod source;
pub mod views;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::Router;

pub use error::ApiError;

use std::sync::Arc;

use osprey_protocol::ThresholdRule;

use crate::pipeline::IngestStats;
use crate::shutdown::Shutdown;
use crate::store::{StoreReader, StoreWriter};
pub use source::StateSource;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Where the fleet is read from: the SQLite store or DynamoDB state ([`source`]).
    pub reader: StateSource,
    /// Ingest counters, for `/api/stats`.
    pub stats: IngestStats,
    /// The rules `osprey serve` predicts crossings of for devices that have not reported their
    /// own ([`crate::reported_rules`]): the device page draws their levels.
    pub rules: Arc<[ThresholdRule]>,
    /// Ends the live streams ([`live`]) when the server shuts down; `None`: they end only
    /// when their client goes.
    pub shutdown: Option<Shutdown>,
    /// Where the routes that record something write ([`changes`]); `None`: read-only.
    pub writer: Option<StoreWriter>,
}

impl ApiState {
    /// The state of an API over `reader`, without rules and without a shutdown signal.
    pub fn new(reader: StoreReader, stats: IngestStats) -> ApiState {
        ApiState {
            reader: StateSource::Sqlite(reader),
            stats,
            rules: Arc::from(Vec::new()),
            shutdown: None,
            writer: None,
        }
    }
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(pages::fleet))
        .route("/devices/{device}", get(pages::device))
        .route("/alerts", get(pages::alerts))
        .route("/dashboard.js", get(pages::dashboard_js))
        .route("/dashboard.css", get(pages::dashboard_css))
        .route("/assets/{file}", get(pages::asset))
        .route("/healthz", get(handlers::healthz))
        .route("/api/devices", get(handlers::devices))
        .route("/api/devices/{device}", get(handlers::device))
        .route(
            "/api/devices/{device}/windows",
            get(handlers::device_windows),
        )
        .route(
            "/api/devices/{device}/signals",
            get(handlers::device_signals),
        )
        .route("/api/devices/{device}/history", get(views::device_history))
        .route("/api/devices/{device}/rules", get(handlers::device_rules))
        .route(
            "/api/rules/changes",
            get(changes::list)
                .post(changes::record)
                .layer(DefaultBodyLimit::max(changes::MAX_RECORD_BYTES)),
        )
        .route("/api/fleet", get(views::fleet))
        .route("/api/fleet/events", get(live::fleet_events))
        .route("/api/alerts/episodes", get(views::episodes))
        .route("/api/windows", get(handlers::windows))
        .route("/api/alerts", get(handlers::alerts))
        .route("/api/stats", get(handlers::stats))
        .route("/api/dead-letters", get(deadletters::dead_letters))
        .fallback(handlers::not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod views_tests;
