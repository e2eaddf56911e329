//! Stored maintenance signals: recomputed in the writer's transaction, read by the API.
//!
//! When a transaction changes tumbling windows, the writer recomputes the signals of each
//! series it touched from that series' newest windows ([`refresh`]) and replaces its row in
//! `signals` (JSON of [`SeriesSignals`]). The signals are a function of the stored windows
//! alone, so replaying records (which changes no window) changes no signal, and the health of
//! a device ([`device_health`]) is derived from its signals and active alerts when read.

use std::collections::BTreeSet;

use osprey_protocol::Severity;
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;

use crate::analytics::health::{self, ActiveAlert, Health};
use crate::analytics::signals::{compute, Prediction, SeriesSignals, SignalsConfig, WindowPoint};
use crate::analytics::Moments;
use crate::window::table::WindowUpdate;
use crate::window::WindowKind;

/// The signals of one device, as `GET /api/devices/{device}/signals` shows them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceSignals {
    /// Device id.
    pub device: String,
    /// Health score and reasons.
    pub health: Health,
    /// Each series' signals, by sensor and metric.
    pub series: Vec<SeriesSignals>,
}

/// Recomputes the signals of every series whose tumbling windows are in `updates`.
pub(super) fn refresh(
    tx: &Transaction<'_>,
    cfg: &SignalsConfig,
    updates: &[WindowUpdate],
) -> rusqlite::Result<()> {
    let touched: BTreeSet<(&str, &str, &str)> = updates
        .iter()
        .filter(|u| u.kind == WindowKind::Tumbling)
        .map(|u| (u.device.as_str(), u.sensor.as_str(), u.metric.as_str()))
        .collect();
    for (device, sensor, metric) in touched {
        let mut stmt = tx.prepare_cached(
            "SELECT start_ms, end_ms, count, sum, min, max, mean, m2, m3, m4, unit FROM windows \
             WHERE device = ?1 AND sensor = ?2 AND metric = ?3 AND kind = 'tumbling' \
             ORDER BY start_ms DESC LIMIT ?4",
        )?;
        // The newest window and up to `trend_windows` closed ones.
        let limit = i64::try_from(cfg.trend_windows.saturating_add(1)).unwrap_or(i64::MAX);
        let mut points = stmt
            .query_map(params![device, sensor, metric, limit], |row| {
                let real = |i: usize| -> rusqlite::Result<f64> {
                    Ok(row.get::<_, Option<f64>>(i)?.unwrap_or(f64::NAN))
                };
                let point = WindowPoint {
                    start_ms: row.get(0)?,
                    end_ms: row.get(1)?,
                    moments: Moments {
                        count: row.get(2)?,
                        sum: real(3)?,
                        min: real(4)?,
                        max: real(5)?,
                        mean: real(6)?,
                        m2: real(7)?,
                        m3: real(8)?,
                        m4: real(9)?,
                    },
                };
                Ok((point, row.get::<_, String>(10)?))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        points.reverse();
        let unit = points.last().map(|(_, u)| u.clone()).unwrap_or_default();
        let points: Vec<WindowPoint> = points.into_iter().map(|(p, _)| p).collect();
        let Some(mut signals) = compute(sensor, metric, &points, cfg) else {
            continue;
        };
        signals.unit = unit;
        let body = serde_json::to_string(&signals)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO signals (device, sensor, metric, as_of_ms, body) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![device, sensor, metric, signals.as_of_ms, body])?;
    }
    Ok(())
}

/// The stored signals of `device`, by sensor and metric.
pub fn series_signals(conn: &Connection, device: &str) -> rusqlite::Result<Vec<SeriesSignals>> {
    let mut stmt =
        conn.prepare_cached("SELECT body FROM signals WHERE device = ?1 ORDER BY sensor, metric")?;
    let rows = stmt
        .query_map(params![device], |row| {
            let body: String = row.get(0)?;
            serde_json::from_str(&body).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
            })
        })?
        .collect();
    rows
}

/// Rules of `device` whose newest event is a raise, with the severity of that raise.
fn active_alerts(conn: &Connection, device: &str) -> rusqlite::Result<Vec<ActiveAlert>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.rule, a.severity FROM alert_state s \
         JOIN alerts a ON a.device = s.device AND a.seq = s.seq \
         WHERE s.device = ?1 AND s.event = 'raise' ORDER BY s.rule",
    )?;
    let rows = stmt
        .query_map(params![device], |row| {
            let severity: String = row.get(1)?;
            Ok(ActiveAlert {
                rule: row.get(0)?,
                severity: match severity.as_str() {
                    "critical" => Severity::Critical,
                    "info" => Severity::Info,
                    _ => Severity::Warning,
                },
            })
        })?
        .collect();
    rows
}

/// The soonest predicted rule crossing of a device.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Breach {
    /// Sensor of the series.
    pub sensor: String,
    /// Metric of the series.
    pub metric: String,
    /// The prediction.
    #[serde(flatten)]
    pub prediction: Prediction,
}

/// The health of `device` and its soonest predicted crossing, from its stored signals and
/// active alerts.
pub fn device_health(
    conn: &Connection,
    device: &str,
) -> rusqlite::Result<(Health, Option<Breach>)> {
    let series = series_signals(conn, device)?;
    let breach = series
        .iter()
        .flat_map(|s| {
            s.predictions.iter().map(|p| Breach {
                sensor: s.sensor.clone(),
                metric: s.metric.clone(),
                prediction: p.clone(),
            })
        })
        .min_by_key(|b| b.prediction.remaining_ms);
    Ok((
        health::score(&series, &active_alerts(conn, device)?),
        breach,
    ))
}

/// Signals and health of `device`.
pub fn device_signals(conn: &Connection, device: &str) -> rusqlite::Result<DeviceSignals> {
    let series = series_signals(conn, device)?;
    let health = health::score(&series, &active_alerts(conn, device)?);
    Ok(DeviceSignals {
        device: device.to_owned(),
        health,
        series,
    })
}
