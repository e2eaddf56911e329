//! The route handlers.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::Uri;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::error::ApiError;
use super::params::Params;
use super::{ApiState, StateSource};
use crate::pipeline::PipelineStats;
use crate::reported_rules::DeviceRules;
use crate::store::signals::DeviceSignals;
use crate::store::{
    AlertFilter, AlertRow, Counts, DeviceSummary, Maintenance, WindowFilter, WindowRow,
};

pub(super) type QueryPairs = Result<Query<Vec<(String, String)>>, QueryRejection>;

pub(super) fn params(query: QueryPairs, allowed: &[&str]) -> Result<Params, ApiError> {
    let Query(pairs) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Params::parse(pairs, allowed)
}

#[derive(Serialize)]
pub struct Health {
    status: &'static str,
}

/// `GET /healthz`.
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// `GET /api/devices`.
pub async fn devices(State(state): State<ApiState>) -> Result<Json<Vec<DeviceSummary>>, ApiError> {
    Ok(Json(state.reader.devices().await?))
}

pub(super) async fn known_device(
    state: &ApiState,
    device: &str,
) -> Result<DeviceSummary, ApiError> {
    if !osprey_protocol::valid_device_id(device) {
        return Err(ApiError::bad_request(format!(
            "{device:?} is not a valid device id (1 to 128 of A-Z a-z 0-9 _ - :)"
        )));
    }
    state
        .reader
        .device(device)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no device {device:?} has reported")))
}

/// `GET /api/devices/{device}`.
pub async fn device(
    State(state): State<ApiState>,
    Path(device): Path<String>,
) -> Result<Json<DeviceSummary>, ApiError> {
    Ok(Json(known_device(&state, &device).await?))
}

/// `GET /api/devices/{device}/windows`.
pub async fn device_windows(
    State(state): State<ApiState>,
    Path(device): Path<String>,
    query: QueryPairs,
) -> Result<Json<Vec<WindowRow>>, ApiError> {
    let p = params(query, &["sensor", "metric", "kind", "since_ms", "limit"])?;
    let filter = WindowFilter {
        device: Some(device.clone()),
        sensor: p.text("sensor"),
        metric: p.text("metric"),
        kind: Some(p.window_kind()?),
        since_ms: p.time_ms("since_ms")?,
        limit: p.limit()?,
    };
    known_device(&state, &device).await?;
    Ok(Json(state.reader.store()?.windows(filter).await?))
}

/// `GET /api/devices/{device}/signals`.
pub async fn device_signals(
    State(state): State<ApiState>,
    Path(device): Path<String>,
) -> Result<Json<DeviceSignals>, ApiError> {
    known_device(&state, &device).await?;
    Ok(Json(state.reader.device_signals(&device).await?))
}

/// `GET /api/devices/{device}/rules`: the rules the device reports it runs, with their
/// sources, the document set for it and its last refusal ([`crate::reported_rules`]). Known
/// devices without a report answer with the server's rules their signals use.
pub async fn device_rules(
    State(state): State<ApiState>,
    Path(device): Path<String>,
) -> Result<Json<DeviceRules>, ApiError> {
    let store = state.reader.store()?;
    let (row, units) = store.device_rules(&device).await?;
    if row.is_none() {
        known_device(&state, &device).await?;
    }
    let mut view = DeviceRules::new(&device, row, &state.rules, &units);
    let newest = store.rule_changes(Some(device.clone()), 1).await?;
    view.last_change = newest
        .first()
        .map(|row| super::changes::for_device(row, &device));
    Ok(Json(view))
}

/// `GET /api/windows`.
pub async fn windows(
    State(state): State<ApiState>,
    query: QueryPairs,
) -> Result<Json<Vec<WindowRow>>, ApiError> {
    let p = params(
        query,
        &["device", "sensor", "metric", "kind", "since_ms", "limit"],
    )?;
    let filter = WindowFilter {
        device: p.device("device")?,
        sensor: p.text("sensor"),
        metric: p.text("metric"),
        kind: Some(p.window_kind()?),
        since_ms: p.time_ms("since_ms")?,
        limit: p.limit()?,
    };
    Ok(Json(state.reader.store()?.windows(filter).await?))
}

/// `GET /api/alerts`.
pub async fn alerts(
    State(state): State<ApiState>,
    query: QueryPairs,
) -> Result<Json<Vec<AlertRow>>, ApiError> {
    let p = params(query, &["device", "since_ms", "limit"])?;
    let filter = AlertFilter {
        device: p.device("device")?,
        since_ms: p.time_ms("since_ms")?,
        limit: p.limit()?,
    };
    Ok(Json(state.reader.alerts(filter).await?))
}

#[derive(Serialize)]
pub struct Stats {
    pipeline: PipelineStats,
    store: Counts,
    maintenance: Maintenance,
}

/// `/api/stats` from DynamoDB state: which table, what this server read from it.
#[derive(Serialize)]
pub struct DynamoStats {
    state: &'static str,
    table: String,
    reads: crate::fleet::dynamo_view::Reads,
    missing: &'static [&'static str],
}

/// `GET /api/stats`.
pub async fn stats(State(state): State<ApiState>) -> Result<Response, ApiError> {
    Ok(match &state.reader {
        StateSource::Sqlite(reader) => Json(Stats {
            pipeline: state.stats.snapshot(),
            store: reader.counts().await?,
            maintenance: reader.maintenance(),
        })
        .into_response(),
        StateSource::Dynamo(view) => Json(DynamoStats {
            state: "dynamodb",
            table: view.table().to_owned(),
            reads: view.reads(),
            missing: state.reader.missing(),
        })
        .into_response(),
    })
}

/// Any other route.
pub async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such route: {}", uri.path()))
}
