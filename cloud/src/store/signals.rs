//! Stored maintenance signals: recomputed in the writer's transaction, read by the API.
//!
//! When a transaction changes tumbling windows, the writer recomputes the signals of each
//! series it touched, once per transaction however many of its messages touched the series
//! ([`Refresher::refresh`]), from that series' newest windows, and replaces its row in
//! `signals` (JSON of [`SeriesSignals`]). The newest windows come from memory
//! ([`super::recent`]), not from the table, so the cost per series and transaction is bounded
//! by the trend's window count (241), whatever the history. The signals are a function of the
//! stored windows alone, so replaying records (which changes no window) changes no signal, and
//! the health of a device ([`device_health`]) is derived from its signals and active alerts
//! when read.

use std::collections::BTreeMap;

use osprey_protocol::Severity;
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;

use super::recent::RecentWindows;
use crate::analytics::health::{self, ActiveAlert, Health};
use crate::analytics::signals::{compute, Prediction, SeriesSignals, SignalsConfig};
use crate::window::table::WindowUpdate;
use crate::window::WindowKind;

/// Series whose newest windows the writer keeps in memory (about 19 KiB each).
pub const RECENT_SERIES: usize = 1024;

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

/// The writer thread's signals: their settings and the newest windows of recent series.
#[derive(Debug)]
pub(super) struct Refresher {
    cfg: SignalsConfig,
    recent: RecentWindows,
}

impl Refresher {
    /// Signals under `cfg`, keeping the windows of up to `max_series` series in memory.
    pub(super) fn new(cfg: SignalsConfig, max_series: usize) -> Refresher {
        // The newest window and up to `trend_windows` closed ones.
        let limit = cfg.trend_windows.saturating_add(1);
        Refresher {
            cfg,
            recent: RecentWindows::new(limit, max_series),
        }
    }

    /// Forgets the windows kept in memory: after a rolled-back transaction, or after windows
    /// were deleted.
    pub(super) fn forget(&mut self) {
        self.recent.clear();
    }

    /// The windows kept in memory, for tests.
    #[cfg(test)]
    pub(super) fn recent(&self) -> &RecentWindows {
        &self.recent
    }

    /// Recomputes the signals of every series whose tumbling windows are in `updates` (the
    /// transaction's window changes, in order), once per series.
    pub(super) fn refresh(
        &mut self,
        tx: &Transaction<'_>,
        updates: &[WindowUpdate],
    ) -> rusqlite::Result<()> {
        let mut touched: BTreeMap<(&str, &str, &str), Vec<&WindowUpdate>> = BTreeMap::new();
        for u in updates.iter().filter(|u| u.kind == WindowKind::Tumbling) {
            touched
                .entry((u.device.as_str(), u.sensor.as_str(), u.metric.as_str()))
                .or_default()
                .push(u);
        }
        for (series, changes) in touched {
            let (device, sensor, metric) = series;
            let (points, unit) = self.recent.points(tx, series, &changes)?;
            let Some(mut signals) = compute(sensor, metric, points, &self.cfg) else {
                continue;
            };
            unit.clone_into(&mut signals.unit);
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
}

/// The signals of one series computed from the table alone (its newest windows read back), as
/// [`Refresher::refresh`] computes them from memory; `None` without windows.
#[cfg(test)]
pub(super) fn from_table(
    tx: &Transaction<'_>,
    cfg: &SignalsConfig,
    series: (&str, &str, &str),
) -> rusqlite::Result<Option<SeriesSignals>> {
    let limit = cfg.trend_windows.saturating_add(1);
    let (mut points, unit) = super::recent::load(tx, series, limit)?;
    Ok(
        compute(series.1, series.2, points.make_contiguous(), cfg).map(|mut s| {
            s.unit = unit;
            s
        }),
    )
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
