//! The read queries and the rows they return. The row types serialise to the API's JSON.

use std::collections::BTreeMap;

use rusqlite::{params, types::Value, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::signals::Breach;
use crate::analytics::health::Health;
use crate::analytics::{Aggregate, Moments, Sketch};
use crate::window::table::Stored;
use crate::window::WindowKind;

/// One device in the fleet view.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceSummary {
    /// Device id.
    pub device: String,
    /// When the cloud first received a message from it (cloud clock, ms since the epoch).
    pub first_seen_ms: i64,
    /// When the cloud last received a message from it (cloud clock).
    pub last_seen_ms: i64,
    /// Newest event time (reading, alert or status) in its messages (device clock), if any.
    pub last_event_ms: Option<i64>,
    /// Highest sequence number applied.
    pub last_seq: u64,
    /// Readings received.
    pub readings: u64,
    /// `online`, `offline`, or `unknown` before its first status message.
    pub status: String,
    /// When the cloud received the current status, if any.
    pub status_ms: Option<i64>,
    /// Rules whose newest event is a raise.
    pub active_alerts: u64,
    /// The newest window of each of its series, ordered by sensor and metric.
    pub latest: Vec<WindowRow>,
    /// Health score (0 to 100) and the reasons for every point lost.
    pub health: Health,
    /// The soonest predicted rule crossing, if any series is trending towards one.
    pub next_breach: Option<Breach>,
    /// Device events, oldest first: `journal_replaced` when the device started numbering its
    /// messages in a new journal epoch.
    pub events: Vec<DeviceEvent>,
}

/// Something that happened to a device as a whole (not a reading or an alert).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceEvent {
    /// `journal_replaced`: the device's messages came under a journal epoch not seen before
    /// while it had messages under another (a re-flashed card, a replaced gateway).
    pub kind: String,
    /// When the cloud saw it (cloud clock, ms since the epoch).
    pub time_ms: i64,
    /// The epoch the device used before.
    pub old_epoch: u64,
    /// The new epoch.
    pub new_epoch: u64,
}

/// One window of one series, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowRow {
    /// Device id.
    pub device: String,
    /// Sensor name.
    pub sensor: String,
    /// Metric name.
    pub metric: String,
    /// `tumbling`, `hopping` or `session`.
    pub kind: WindowKind,
    /// The window has ended at or before the device's watermark (its newest event time): more
    /// data for it would be late, and would still be merged, as a new version.
    pub closed: bool,
    /// Bounds, unit, version and aggregate (count, sum, min, max, mean, variance, skewness,
    /// kurtosis, p50, p95, p99).
    #[serde(flatten)]
    pub window: Stored,
}

impl WindowRow {
    /// The window's count, sum, min, max, mean and moments.
    pub fn moments(&self) -> &Moments {
        &self.window.agg.moments
    }
}

/// One alert event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AlertRow {
    /// Device id.
    pub device: String,
    /// Sequence number of the message that carried it.
    pub seq: u64,
    /// Rule id.
    pub rule: String,
    /// Sensor the rule watches.
    pub sensor: String,
    /// Metric the rule watches.
    pub metric: String,
    /// `raise` or `clear`.
    pub event: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The reading that caused the event (`null` if it was not a finite number).
    pub value: Option<f64>,
    /// The level crossed.
    pub threshold: Option<f64>,
    /// Time of the reading (device clock).
    pub time_ms: i64,
}

/// Which windows to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowFilter {
    /// Only this device.
    pub device: Option<String>,
    /// Only this sensor.
    pub sensor: Option<String>,
    /// Only this metric.
    pub metric: Option<String>,
    /// Only this kind of window (the API defaults to tumbling).
    pub kind: Option<WindowKind>,
    /// Only windows starting at or after this time.
    pub since_ms: Option<i64>,
    /// At most this many rows.
    pub limit: u32,
}

/// Which alert events to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertFilter {
    /// Only this device.
    pub device: Option<String>,
    /// Only events at or after this time.
    pub since_ms: Option<i64>,
    /// At most this many rows.
    pub limit: u32,
}

/// Row counts of the main tables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Devices known.
    pub devices: u64,
    /// Messages applied (the dedup set).
    pub messages: u64,
    /// Windows stored.
    pub windows: u64,
    /// Alert events stored.
    pub alerts: u64,
    /// Payloads rejected.
    pub dead_letters: u64,
}

const DEVICE_COLUMNS: &str = "d.device, d.first_seen_ms, d.last_seen_ms, d.last_event_ms, \
     d.last_seq, d.readings, d.status, d.status_ms, \
     (SELECT COUNT(*) FROM alert_state a WHERE a.device = d.device AND a.event = 'raise')";

/// The columns [`read_stored`] reads, in its order.
pub const STORED_COLUMNS: &str =
    "start_ms, end_ms, unit, version, count, sum, min, max, mean, m2, m3, m4, sketch, corrections";

/// Window rows: device, sensor, metric, kind, closed, then [`STORED_COLUMNS`].
const WINDOW_SELECT: &str = "SELECT w.device, w.sensor, w.metric, w.kind, \
     coalesce(w.end_ms <= (SELECT d.last_event_ms FROM devices d WHERE d.device = w.device), 0), \
     w.start_ms, w.end_ms, w.unit, w.version, w.count, w.sum, w.min, w.max, w.mean, w.m2, w.m3, \
     w.m4, w.sketch, w.corrections";

const LATEST_WINDOWS: &str = "FROM series s JOIN windows w ON w.device = s.device \
     AND w.sensor = s.sensor AND w.metric = s.metric AND w.kind = 'tumbling' \
     AND w.start_ms = s.latest_start_ms";

/// Every device, ordered by id.
pub fn devices(conn: &Connection) -> rusqlite::Result<Vec<DeviceSummary>> {
    let mut latest: BTreeMap<String, Vec<WindowRow>> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(&format!(
        "{WINDOW_SELECT} {LATEST_WINDOWS} ORDER BY w.device, w.sensor, w.metric"
    ))?;
    for row in stmt.query_map([], window_row)? {
        let row = row?;
        latest.entry(row.device.clone()).or_default().push(row);
    }
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices d ORDER BY d.device"
    ))?;
    let devices = stmt
        .query_map([], device_row)?
        .map(|row| {
            row.map(|mut d| {
                d.latest = latest.remove(&d.device).unwrap_or_default();
                d
            })
        })
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let mut devices = devices;
    for d in &mut devices {
        (d.health, d.next_breach) = super::signals::device_health(conn, &d.device)?;
        d.events = device_events(conn, &d.device)?;
    }
    Ok(devices)
}

/// One device, or `None`.
pub fn device(conn: &Connection, device: &str) -> rusqlite::Result<Option<DeviceSummary>> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices d WHERE d.device = ?1"
        ))?
        .query_row(params![device], device_row)
        .optional()?;
    let Some(mut summary) = found else {
        return Ok(None);
    };
    summary.latest = latest_windows(conn, device)?;
    (summary.health, summary.next_breach) = super::signals::device_health(conn, device)?;
    summary.events = device_events(conn, device)?;
    Ok(Some(summary))
}

/// The newest tumbling window of each series of `device`, by sensor and metric.
pub fn latest_windows(conn: &Connection, device: &str) -> rusqlite::Result<Vec<WindowRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "{WINDOW_SELECT} {LATEST_WINDOWS} WHERE s.device = ?1 ORDER BY w.sensor, w.metric"
    ))?;
    let rows = stmt.query_map(params![device], window_row)?.collect();
    rows
}

/// A device's events, oldest first.
pub fn device_events(conn: &Connection, device: &str) -> rusqlite::Result<Vec<DeviceEvent>> {
    let mut stmt = conn.prepare_cached(
        "SELECT kind, time_ms, old_epoch, new_epoch FROM device_events WHERE device = ?1
         ORDER BY time_ms, new_epoch",
    )?;
    let rows = stmt
        .query_map(params![device], |row| {
            Ok(DeviceEvent {
                kind: row.get(0)?,
                time_ms: row.get(1)?,
                old_epoch: row.get(2)?,
                new_epoch: row.get(3)?,
            })
        })?
        .collect();
    rows
}

/// Windows matching `filter`, newest first (then by device, sensor, metric).
pub fn windows(conn: &Connection, filter: &WindowFilter) -> rusqlite::Result<Vec<WindowRow>> {
    let mut clauses = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    let kind = filter.kind.map(|k| k.as_str().to_owned());
    for (column, value) in [
        ("w.device", &filter.device),
        ("w.sensor", &filter.sensor),
        ("w.metric", &filter.metric),
        ("w.kind", &kind),
    ] {
        if let Some(v) = value {
            args.push(Value::Text(v.clone()));
            clauses.push(format!("{column} = ?{}", args.len()));
        }
    }
    if let Some(since) = filter.since_ms {
        args.push(Value::Integer(since));
        clauses.push(format!("w.start_ms >= ?{}", args.len()));
    }
    args.push(Value::Integer(i64::from(filter.limit)));
    let sql = format!(
        "{WINDOW_SELECT} FROM windows w {} \
         ORDER BY w.start_ms DESC, w.device, w.sensor, w.metric, w.kind LIMIT ?{}",
        where_clause(&clauses),
        args.len()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), window_row)?
        .collect();
    rows
}

/// Alert events matching `filter`, newest first (by event time, then seq).
pub fn alerts(conn: &Connection, filter: &AlertFilter) -> rusqlite::Result<Vec<AlertRow>> {
    let mut clauses = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    if let Some(device) = &filter.device {
        args.push(Value::Text(device.clone()));
        clauses.push(format!("device = ?{}", args.len()));
    }
    if let Some(since) = filter.since_ms {
        args.push(Value::Integer(since));
        clauses.push(format!("time_ms >= ?{}", args.len()));
    }
    args.push(Value::Integer(i64::from(filter.limit)));
    let sql = format!(
        "SELECT device, seq, rule, sensor, metric, event, severity, value, threshold, time_ms \
         FROM alerts {} ORDER BY time_ms DESC, seq DESC LIMIT ?{}",
        where_clause(&clauses),
        args.len()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), alert_row)?
        .collect();
    rows
}

/// An [`AlertRow`] from `device, seq, rule, sensor, metric, event, severity, value, threshold,
/// time_ms`.
pub(super) fn alert_row(row: &Row<'_>) -> rusqlite::Result<AlertRow> {
    Ok(AlertRow {
        device: row.get(0)?,
        seq: row.get(1)?,
        rule: row.get(2)?,
        sensor: row.get(3)?,
        metric: row.get(4)?,
        event: row.get(5)?,
        severity: row.get(6)?,
        value: row.get(7)?,
        threshold: row.get(8)?,
        time_ms: row.get(9)?,
    })
}

/// The checkpointed sequence number of a shard.
pub fn checkpoint(
    conn: &Connection,
    stream: &str,
    shard_id: &str,
) -> rusqlite::Result<Option<String>> {
    conn.prepare_cached(
        "SELECT sequence_number FROM checkpoints WHERE stream = ?1 AND shard_id = ?2",
    )?
    .query_row(params![stream, shard_id], |row| row.get(0))
    .optional()
}

/// Row counts of the main tables.
pub fn counts(conn: &Connection) -> rusqlite::Result<Counts> {
    conn.query_row(
        "SELECT (SELECT COUNT(*) FROM devices), (SELECT COUNT(*) FROM seen), \
         (SELECT COUNT(*) FROM windows), (SELECT COUNT(*) FROM alerts), \
         (SELECT COUNT(*) FROM dead_letters)",
        [],
        |row| {
            Ok(Counts {
                devices: row.get(0)?,
                messages: row.get(1)?,
                windows: row.get(2)?,
                alerts: row.get(3)?,
                dead_letters: row.get(4)?,
            })
        },
    )
}

fn where_clause(clauses: &[String]) -> String {
    if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    }
}

fn device_row(row: &Row<'_>) -> rusqlite::Result<DeviceSummary> {
    Ok(DeviceSummary {
        device: row.get(0)?,
        first_seen_ms: row.get(1)?,
        last_seen_ms: row.get(2)?,
        last_event_ms: row.get(3)?,
        last_seq: row.get(4)?,
        readings: row.get(5)?,
        status: row
            .get::<_, Option<String>>(6)?
            .unwrap_or_else(|| "unknown".to_owned()),
        status_ms: row.get(7)?,
        active_alerts: row.get(8)?,
        latest: Vec::new(),
        health: Health {
            score: 100,
            reasons: Vec::new(),
        },
        next_breach: None,
        events: Vec::new(),
    })
}

fn window_row(row: &Row<'_>) -> rusqlite::Result<WindowRow> {
    let kind: String = row.get(3)?;
    let kind = WindowKind::parse(&kind).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Text,
            format!("unknown window kind {kind:?}").into(),
        )
    })?;
    Ok(WindowRow {
        device: row.get(0)?,
        sensor: row.get(1)?,
        metric: row.get(2)?,
        kind,
        closed: row.get(4)?,
        window: read_stored(row, 5)?,
    })
}

/// Reads the [`STORED_COLUMNS`] starting at column `at`. A moment SQLite could not keep (NaN
/// is stored as NULL) reads back as NaN.
pub fn read_stored(row: &Row<'_>, at: usize) -> rusqlite::Result<Stored> {
    let bytes: Vec<u8> = row.get(at + 12)?;
    let sketch = Sketch::from_bytes(&bytes).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(at + 12, rusqlite::types::Type::Blob, e.into())
    })?;
    Ok(Stored {
        start_ms: row.get(at)?,
        end_ms: row.get(at + 1)?,
        unit: row.get(at + 2)?,
        version: row.get(at + 3)?,
        corrections: row.get(at + 13)?,
        agg: Aggregate {
            moments: read_moments(row, at + 4)?,
            sketch,
        },
    })
}

/// Reads a window's `count, sum, min, max, mean, m2, m3, m4` columns starting at column `at`;
/// a moment stored as NULL (SQLite keeps NaN so) reads back as NaN.
pub fn read_moments(row: &Row<'_>, at: usize) -> rusqlite::Result<Moments> {
    let real = |i: usize| -> rusqlite::Result<f64> {
        Ok(row.get::<_, Option<f64>>(at + i)?.unwrap_or(f64::NAN))
    };
    Ok(Moments {
        count: row.get(at)?,
        sum: real(1)?,
        min: real(2)?,
        max: real(3)?,
        mean: real(4)?,
        m2: real(5)?,
        m3: real(6)?,
        m4: real(7)?,
    })
}
