//! The HTTP API and the dashboard (axum).
//!
//! | route | returns |
//! |---|---|
//! | `GET /` | the dashboard page (no inline script or style; polls `/api/devices` every 2 s) |
//! | `GET /dashboard.js`, `GET /dashboard.css` | its script and style (built into the binary) |
//! | `GET /healthz` | `{"status": "ok"}`: alive; never needs the token |
//! | `GET /readyz` | `{"ready", "reason"}`, 200 or 503 ([`ready`]); never needs the token |
//! | `GET /api/devices` | `[DeviceSummary]`, by device id |
//! | `GET /api/devices/{device}` | `DeviceSummary`, 404 if unknown |
//! | `GET /api/devices/{device}/windows?sensor=&metric=&kind=&since_ms=&limit=` | `[WindowRow]`, newest first; 404 if unknown |
//! | `GET /api/devices/{device}/signals` | `DeviceSignals`: health (score, reasons) and each series' signals (baseline, anomaly score, trend, predicted crossings, vibration); 404 if unknown |
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
//! Security ([`auth`], [`host`], [`headers`]; `serve` adds them as layers): with a token, every
//! route but `/healthz`, `/readyz` and the dashboard's static files needs
//! `Authorization: Bearer <token>` (401 otherwise); a loopback listener answers only to
//! loopback Host names (421 otherwise); every response carries the security headers.

pub mod auth;
pub mod deadletters;
mod error;
mod handlers;
pub mod headers;
pub mod host;
pub mod params;
pub mod ready;

use axum::routing::get;
use axum::Router;

pub use error::ApiError;

use crate::pipeline::IngestStats;
use crate::store::StoreReader;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// Read side of the store.
    pub reader: StoreReader,
    /// Ingest counters, for `/api/stats`.
    pub stats: IngestStats,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/", get(handlers::dashboard))
        .route("/dashboard.js", get(handlers::dashboard_js))
        .route("/dashboard.css", get(handlers::dashboard_css))
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
        .route("/api/windows", get(handlers::windows))
        .route("/api/alerts", get(handlers::alerts))
        .route("/api/stats", get(handlers::stats))
        .route("/api/dead-letters", get(deadletters::dead_letters))
        .fallback(handlers::not_found)
        .with_state(state)
}

#[cfg(test)]
mod tests;
