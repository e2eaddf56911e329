//! The endpoints behind the fleet, device and alerts pages: a ranked, filtered page of the
//! fleet, a device's downsampled history with what to draw over it, and alert episodes.
//!
//! | route | parameters | returns |
//! |---|---|---|
//! | `GET /api/fleet` | `q` (text in the id), `status` (`online`, `offline`, `unknown`), `severity` (worst active alert: `critical`, `warning`, `info`, `none`), `sort` (`worst`, `name`, `last_seen`), `offset`, `limit` (1 to 500, default 50) | [`FleetPage`]: `total` matching, the whole fleet's `counts`, the page's `rows` (health and reasons, active alerts by severity, latest windows) |
//! | `GET /api/devices/{device}/history` | `range` (`1h`, `24h`, `7d`, `30d`, any `Nm`/`Nh`/`Nd`; default `1h`), `to_ms` (default now), `points` (10 to 2000, default 240) | [`DeviceHistory`]: per series, bucket columns (`t`, `mean`, `min`, `max`, `p5`, `p95`, `count`, `corrections`), the threshold lines of the rules in effect, the series' signals (trend, predicted crossings); the device's alert events in range; its status timeline (current status, device events, the statuses it held in range with backlog, drops, journal resets and clock state: [`crate::store::timeline`]) |
//! | `GET /api/alerts/episodes` | `device`, `rule`, `severity`, `from_ms` (default 7 days ago), `to_ms`, `state` (`active`, `ended`), `limit` | [`Episode`]s: raise → clear with durations, active first (critical, warning, info), then newest |
//!
//! Every parameter is checked ([`super::params`]): an unknown name, a bad value or a range
//! the wrong way round is a 400 that says which and why.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::Json;
use osprey_protocol::{Comparison, ThresholdRule};
use serde::Serialize;

use super::error::ApiError;
use super::handlers::{known_device, params, QueryPairs};
use super::params::Params;
use super::{ApiState, StateSource};
use crate::analytics::signals::SeriesSignals;
use crate::store::fleetview::{FleetPage, FleetQuery, FleetSort, Worst, MAX_PAGE};
use crate::store::history::{Episode, EpisodeFilter, SeriesHistory, MAX_POINTS, MIN_POINTS};
use crate::store::timeline::StatusTimeline;
use crate::store::{AlertFilter, AlertRow, DeviceEvent};

/// Rows of a fleet page when `limit` is not given.
pub const DEFAULT_PAGE: u32 = 50;

/// Buckets per series when `points` is not given.
pub const DEFAULT_POINTS: u32 = 240;

/// History range when `range` is not given: one hour.
pub const DEFAULT_RANGE_MS: i64 = 3_600_000;

/// Episodes look back this far when `from_ms` is not given: 7 days.
pub const DEFAULT_EPISODES_MS: i64 = 7 * 86_400_000;

/// The parameters of `/api/fleet` (and of its live view, [`super::live`]).
pub const FLEET_PARAMS: [&str; 6] = ["q", "status", "severity", "sort", "offset", "limit"];

/// The fleet query in `p`.
pub fn fleet_query(p: &Params) -> Result<FleetQuery, ApiError> {
    let sort = p
        .one_of("sort", &["worst", "name", "last_seen"])?
        .and_then(FleetSort::parse)
        .unwrap_or_default();
    let severity = p
        .one_of("severity", &["critical", "warning", "info", "none"])?
        .and_then(Worst::parse);
    Ok(FleetQuery {
        q: p.text("q"),
        status: p
            .one_of("status", &["online", "offline", "unknown"])?
            .map(str::to_owned),
        severity,
        sort,
        offset: p.int_in("offset", 0, u32::MAX, 0)?,
        limit: p.int_in("limit", 1, MAX_PAGE, DEFAULT_PAGE)?,
    })
}

/// `GET /api/fleet`.
pub async fn fleet(
    State(state): State<ApiState>,
    query: QueryPairs,
) -> Result<Json<FleetPage>, ApiError> {
    let q = fleet_query(&params(query, &FLEET_PARAMS)?)?;
    Ok(Json(state.reader.fleet_page(q).await?))
}

/// A level to draw across a series' chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Threshold {
    /// Rule id.
    pub rule: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The level.
    pub level: f64,
    /// `rules`: a rule `osprey serve` was given (`--rules`), which its predictions use;
    /// `alerts`: the level of an alert the device raised in the range (its own rule).
    pub source: &'static str,
}

/// One series on the device page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SeriesView {
    /// The downsampled columns.
    #[serde(flatten)]
    pub history: SeriesHistory,
    /// Levels of the rules in effect.
    pub thresholds: Vec<Threshold>,
    /// Its signals: trend, predicted crossings with their range, baseline.
    pub signals: Option<SeriesSignals>,
}

/// What the store knows of a device's state over time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    /// `online`, `offline` or `unknown`: the current status.
    pub status: String,
    /// When the cloud received it.
    pub status_ms: Option<i64>,
    /// First message received (cloud clock).
    pub first_seen_ms: i64,
    /// Last message received (cloud clock).
    pub last_seen_ms: i64,
    /// Newest event time in its messages (device clock).
    pub last_event_ms: Option<i64>,
    /// Journal replacements and other device events.
    pub events: Vec<DeviceEvent>,
    /// The statuses it held in the range, with their counters and what changed
    /// (`statuses`, `statuses_truncated`, `recorded_since_ms`).
    #[serde(flatten)]
    pub recorded: StatusTimeline,
    /// What the store does not record, in words.
    pub not_recorded: Vec<&'static str>,
}

/// `GET /api/devices/{device}/history`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceHistory {
    /// Device id.
    pub device: String,
    /// Range start (a bucket boundary).
    pub from_ms: i64,
    /// Range end.
    pub to_ms: i64,
    /// Bucket length.
    pub bucket_ms: i64,
    /// Each series, by sensor and metric.
    pub series: Vec<SeriesView>,
    /// Its alert events in the range, oldest first.
    pub alerts: Vec<AlertRow>,
    /// Status and events.
    pub timeline: Timeline,
}

/// What the status timeline leaves out, in words.
pub const NOT_RECORDED: [&str; 4] = [
    "statuses before this store kept a status history (schema 5): the timeline starts at its first recorded status",
    "periodic statuses that change nothing: one every 5 minutes is kept (backlog between them is not)",
    "statuses that arrived after a newer one (a late will or birth): they never became the device's status",
    "how far the device clock is off: statuses say only whether it is synchronised",
];

/// `GET /api/devices/{device}/history`.
pub async fn device_history(
    State(state): State<ApiState>,
    Path(device): Path<String>,
    query: QueryPairs,
) -> Result<Json<DeviceHistory>, ApiError> {
    let p = params(query, &["range", "to_ms", "points"])?;
    let span = p.span_ms("range")?.unwrap_or(DEFAULT_RANGE_MS);
    let given_to = p.time_ms("to_ms")?;
    let to_ms = given_to.unwrap_or_else(crate::clock::now_ms);
    // Ranges are [from, to): "up to now" takes in what arrived in the current millisecond too.
    let status_to = given_to.unwrap_or_else(|| to_ms.saturating_add(1));
    let points = p.int_in("points", MIN_POINTS, MAX_POINTS, DEFAULT_POINTS)?;
    let summary = known_device(&state, &device).await?;
    let history = state
        .reader
        .history(&device, to_ms.saturating_sub(span), to_ms, points)
        .await?;
    let mut alerts = state
        .reader
        .alerts(AlertFilter {
            device: Some(device.clone()),
            since_ms: Some(history.from_ms),
            limit: super::params::MAX_LIMIT,
        })
        .await?;
    alerts.retain(|a| a.time_ms < to_ms);
    alerts.reverse();
    let signals = state.reader.device_signals(&device).await?.series;
    // The levels the device runs once it reported them, else serve's.
    let reported = match &state.reader {
        StateSource::Sqlite(r) => r.device_rules_in_effect(&device).await?,
        StateSource::Dynamo(_) => None,
    };
    let rules = reported.as_deref().unwrap_or(&state.rules[..]);
    let recorded = state
        .reader
        .status_timeline(&device, history.from_ms, status_to, history.bucket_ms)
        .await?;
    let series = history
        .series
        .into_iter()
        .map(|h| SeriesView {
            thresholds: thresholds(rules, &alerts, &h.sensor, &h.metric),
            signals: signals
                .iter()
                .find(|s| s.sensor == h.sensor && s.metric == h.metric)
                .cloned(),
            history: h,
        })
        .collect();
    Ok(Json(DeviceHistory {
        device,
        from_ms: history.from_ms,
        to_ms: history.to_ms,
        bucket_ms: history.bucket_ms,
        series,
        alerts,
        timeline: Timeline {
            status: summary.status,
            status_ms: summary.status_ms,
            first_seen_ms: summary.first_seen_ms,
            last_seen_ms: summary.last_seen_ms,
            last_event_ms: summary.last_event_ms,
            events: summary.events,
            recorded,
            // DynamoDB state keeps no status history: what it lacks replaces the store's list.
            not_recorded: match state.reader.missing() {
                [] => NOT_RECORDED.to_vec(),
                missing => missing.to_vec(),
            },
        },
    }))
}

/// The levels to draw on `sensor`/`metric`: the rules for it (levels, not rates), then
/// the levels of the device's alerts on it that no such rule has already given.
fn thresholds(
    rules: &[ThresholdRule],
    alerts: &[AlertRow],
    sensor: &str,
    metric: &str,
) -> Vec<Threshold> {
    let mut out = Vec::new();
    for r in rules
        .iter()
        .filter(|r| r.sensor == sensor && r.metric == metric)
    {
        let levels = match r.when {
            Comparison::Above | Comparison::Below => vec![r.threshold],
            Comparison::Outside => r.low.into_iter().chain(r.high).collect(),
            _ => Vec::new(),
        };
        for level in levels.into_iter().filter(|l| l.is_finite()) {
            out.push(Threshold {
                rule: r.id.clone(),
                severity: crate::store::writer::severity_name(r.severity).to_owned(),
                level,
                source: "rules",
            });
        }
    }
    let mut seen: BTreeSet<String> = out.iter().map(|t| t.rule.clone()).collect();
    for a in alerts
        .iter()
        .filter(|a| a.sensor == sensor && a.metric == metric && a.event == "raise")
    {
        let Some(level) = a.threshold.filter(|l| l.is_finite()) else {
            continue;
        };
        if seen.insert(a.rule.clone()) {
            out.push(Threshold {
                rule: a.rule.clone(),
                severity: a.severity.clone(),
                level,
                source: "alerts",
            });
        }
    }
    out
}

/// `GET /api/alerts/episodes`.
pub async fn episodes(
    State(state): State<ApiState>,
    query: QueryPairs,
) -> Result<Json<Vec<Episode>>, ApiError> {
    let p = params(
        query,
        &[
            "device", "rule", "severity", "from_ms", "to_ms", "state", "limit",
        ],
    )?;
    let now = crate::clock::now_ms();
    let from_ms = p
        .time_ms("from_ms")?
        .unwrap_or(now.saturating_sub(DEFAULT_EPISODES_MS));
    let to_ms = p.time_ms("to_ms")?;
    if to_ms.is_some_and(|to| to <= from_ms) {
        return Err(ApiError::bad_request(format!(
            "to_ms must be after from_ms ({from_ms}), got {}",
            to_ms.unwrap_or_default()
        )));
    }
    let filter = EpisodeFilter {
        device: p.device("device")?,
        rule: p.text("rule"),
        severity: p
            .one_of("severity", &["info", "warning", "critical"])?
            .map(str::to_owned),
        from_ms,
        to_ms,
        active: p
            .one_of("state", &["active", "ended"])?
            .map(|s| s == "active"),
        limit: p.limit()?,
    };
    Ok(Json(state.reader.episodes(filter, now).await?))
}
