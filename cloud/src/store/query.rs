//! The read queries and the rows they return. The row types serialise to the API's JSON.

use std::collections::BTreeMap;

use rusqlite::{params, types::Value, Connection, OptionalExtension, Row};
use serde::Serialize;

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
}

/// One window of one series.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WindowRow {
    /// Device id.
    pub device: String,
    /// Sensor name.
    pub sensor: String,
    /// Metric name.
    pub metric: String,
    /// Unit.
    pub unit: String,
    /// Window start, inclusive (ms since the epoch, event time).
    pub start_ms: i64,
    /// Window end, exclusive.
    pub end_ms: i64,
    /// Readings in the window.
    pub count: u64,
    /// Sum of the values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// `sum / count`.
    pub mean: f64,
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

const LATEST_WINDOWS: &str = "SELECT w.device, w.sensor, w.metric, w.unit, w.start_ms, w.end_ms, \
     w.count, w.sum, w.min, w.max \
     FROM series s JOIN windows w ON w.device = s.device AND w.sensor = s.sensor \
     AND w.metric = s.metric AND w.start_ms = s.latest_start_ms";

/// Every device, ordered by id.
pub fn devices(conn: &Connection) -> rusqlite::Result<Vec<DeviceSummary>> {
    let mut latest: BTreeMap<String, Vec<WindowRow>> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(&format!(
        "{LATEST_WINDOWS} ORDER BY w.device, w.sensor, w.metric"
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
        .collect();
    devices
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
    let mut stmt = conn.prepare_cached(&format!(
        "{LATEST_WINDOWS} WHERE s.device = ?1 ORDER BY w.sensor, w.metric"
    ))?;
    summary.latest = stmt
        .query_map(params![device], window_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(Some(summary))
}

/// Windows matching `filter`, newest first (then by device, sensor, metric).
pub fn windows(conn: &Connection, filter: &WindowFilter) -> rusqlite::Result<Vec<WindowRow>> {
    let mut clauses = Vec::new();
    let mut args: Vec<Value> = Vec::new();
    for (column, value) in [
        ("device", &filter.device),
        ("sensor", &filter.sensor),
        ("metric", &filter.metric),
    ] {
        if let Some(v) = value {
            args.push(Value::Text(v.clone()));
            clauses.push(format!("{column} = ?{}", args.len()));
        }
    }
    if let Some(since) = filter.since_ms {
        args.push(Value::Integer(since));
        clauses.push(format!("start_ms >= ?{}", args.len()));
    }
    args.push(Value::Integer(i64::from(filter.limit)));
    let sql = format!(
        "SELECT device, sensor, metric, unit, start_ms, end_ms, count, sum, min, max \
         FROM windows {} ORDER BY start_ms DESC, device, sensor, metric LIMIT ?{}",
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
        .query_map(rusqlite::params_from_iter(args), |row| {
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
        })?
        .collect();
    rows
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
    })
}

fn window_row(row: &Row<'_>) -> rusqlite::Result<WindowRow> {
    let count: u64 = row.get(6)?;
    let sum: f64 = row.get(7)?;
    Ok(WindowRow {
        device: row.get(0)?,
        sensor: row.get(1)?,
        metric: row.get(2)?,
        unit: row.get(3)?,
        start_ms: row.get(4)?,
        end_ms: row.get(5)?,
        count,
        sum,
        min: row.get(8)?,
        max: row.get(9)?,
        mean: if count == 0 { 0.0 } else { sum / count as f64 },
    })
}
