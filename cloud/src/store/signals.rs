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
//!
//! The rules whose crossings are predicted are the device's own when it has reported them
//! ([`super::device_rules`], [`crate::reported_rules`]), else serve's ([`SignalsConfig::rules`]).
//! The refresher keeps each reporting device's rules in effect parsed in memory: read from the
//! table once when the writer starts (and again after a rolled-back transaction), replaced by
//! each report that changes them, which also recomputes every series of that device.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use osprey_protocol::{Severity, ThresholdRule};
use rusqlite::{params, Connection, Transaction};
use serde::Serialize;

use super::device_rules::{self, RulesChange};
use super::recent::RecentWindows;
use crate::analytics::health::{self, ActiveAlert, Health};
use crate::analytics::signals::{compute_with, Prediction, SeriesSignals, SignalsConfig};
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

/// The writer thread's signals: their settings, the newest windows of recent series and the
/// rules of the devices that reported theirs.
#[derive(Debug)]
pub(super) struct Refresher {
    cfg: SignalsConfig,
    recent: RecentWindows,
    /// Each reporting device's rules in effect; `None` until read from the table.
    device_rules: Option<HashMap<String, Vec<ThresholdRule>>>,
}

impl Refresher {
    /// Signals under `cfg`, keeping the windows of up to `max_series` series in memory.
    pub(super) fn new(cfg: SignalsConfig, max_series: usize) -> Refresher {
        // The newest window and up to `trend_windows` closed ones.
        let limit = cfg.trend_windows.saturating_add(1);
        Refresher {
            cfg,
            recent: RecentWindows::new(limit, max_series),
            device_rules: None,
        }
    }

    /// Forgets the windows and rules kept in memory: after a rolled-back transaction, or
    /// after windows were deleted. Both are read again from the table when next needed.
    pub(super) fn forget(&mut self) {
        self.recent.clear();
        self.device_rules = None;
    }

    /// The rules `device`'s crossings are predicted for: its own once it reported them, else
    /// serve's.
    fn rules_of<'a>(
        cfg: &'a SignalsConfig,
        device_rules: &'a HashMap<String, Vec<ThresholdRule>>,
        device: &str,
    ) -> &'a [ThresholdRule] {
        device_rules.get(device).map_or(&cfg.rules[..], |r| &r[..])
    }

    /// The windows kept in memory, for tests.
    #[cfg(test)]
    pub(super) fn recent(&self) -> &RecentWindows {
        &self.recent
    }

    /// Recomputes the signals of every series whose tumbling windows are in `updates` (the
    /// transaction's window changes, in order), once per series, and of every series of the
    /// devices whose rules in effect changed (`rules_changed`, the transaction's reports).
    pub(super) fn refresh(
        &mut self,
        tx: &Transaction<'_>,
        updates: &[WindowUpdate],
        rules_changed: Vec<RulesChange>,
    ) -> rusqlite::Result<()> {
        let by_device = match self.device_rules.take() {
            // The table already holds this transaction's reports.
            None => device_rules::all_in_effect(tx)?,
            Some(mut kept) => {
                for (device, rules) in &rules_changed {
                    match rules {
                        Some(rules) => kept.insert(device.clone(), rules.clone()),
                        None => kept.remove(device),
                    };
                }
                kept
            }
        };
        let by_device = &*self.device_rules.insert(by_device);
        let mut touched: BTreeMap<(&str, &str, &str), Vec<&WindowUpdate>> = BTreeMap::new();
        for u in updates.iter().filter(|u| u.kind == WindowKind::Tumbling) {
            touched
                .entry((u.device.as_str(), u.sensor.as_str(), u.metric.as_str()))
                .or_default()
                .push(u);
        }
        let changed: BTreeSet<&str> = rules_changed.iter().map(|(d, _)| d.as_str()).collect();
        let mut series_of_changed = Vec::new();
        for device in changed {
            for (sensor, metric, _) in device_rules::series_units(tx, device)? {
                series_of_changed.push((device, sensor, metric));
            }
        }
        for (device, sensor, metric) in &series_of_changed {
            touched
                .entry((*device, sensor.as_str(), metric.as_str()))
                .or_default();
        }
        for (series, changes) in touched {
            let (device, sensor, metric) = series;
            let (points, unit) = self.recent.points(tx, series, &changes)?;
            let rules = Refresher::rules_of(&self.cfg, by_device, device);
            let Some(mut signals) = compute_with(sensor, metric, points, &self.cfg, rules) else {
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
        crate::analytics::signals::compute(series.1, series.2, points.make_contiguous(), cfg).map(
            |mut s| {
                s.unit = unit;
                s
            },
        ),
    )
}

/// The stored signals of `device`, by sensor and metric.
pub fn series_signals(conn: &Connection, device: &str) -> rusqlite::Result<Vec<SeriesSignals>> {
    let mut stmt =
        conn.prepare_cached("SELECT body FROM signals WHERE device = ?1 ORDER BY sensor, metric")?;
    let rows = stmt
        .query_map(params![device], |row| {
            parse_signals(&row.get::<_, String>(0)?)
        })?
        .collect();
    rows
}

/// The severity of a stored name (`warning` for anything unknown).
pub fn parse_severity(name: &str) -> Severity {
    match name {
        "critical" => Severity::Critical,
        "info" => Severity::Info,
        _ => Severity::Warning,
    }
}

/// Active alerts (rules whose newest event is a raise, with the severity of that raise) of
/// `device`, or of every device when `None`, by device then rule.
pub fn active_alerts_by_device(
    conn: &Connection,
    device: Option<&str>,
) -> rusqlite::Result<BTreeMap<String, Vec<ActiveAlert>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT s.device, s.rule, a.severity FROM alert_state s \
         JOIN alerts a ON a.device = s.device AND a.seq = s.seq AND a.rule = s.rule \
         WHERE s.event = 'raise' AND (?1 IS NULL OR s.device = ?1) ORDER BY s.device, s.rule",
    )?;
    let mut out: BTreeMap<String, Vec<ActiveAlert>> = BTreeMap::new();
    for row in stmt.query_map(params![device], |row| {
        let severity: String = row.get(2)?;
        Ok((
            row.get::<_, String>(0)?,
            ActiveAlert {
                rule: row.get(1)?,
                severity: parse_severity(&severity),
            },
        ))
    })? {
        let (device, alert) = row?;
        let list = out.entry(device).or_default();
        // One per rule: an alert seq repeated under two journal epochs joins twice.
        if list.last().is_none_or(|a| a.rule != alert.rule) {
            list.push(alert);
        }
    }
    Ok(out)
}

/// Rules of `device` whose newest event is a raise, with the severity of that raise.
fn active_alerts(conn: &Connection, device: &str) -> rusqlite::Result<Vec<ActiveAlert>> {
    Ok(active_alerts_by_device(conn, Some(device))?
        .remove(device)
        .unwrap_or_default())
}

/// The stored signals of every device, by device, sensor and metric.
pub fn all_series_signals(
    conn: &Connection,
) -> rusqlite::Result<BTreeMap<String, Vec<SeriesSignals>>> {
    let mut stmt =
        conn.prepare_cached("SELECT device, body FROM signals ORDER BY device, sensor, metric")?;
    let mut out: BTreeMap<String, Vec<SeriesSignals>> = BTreeMap::new();
    for row in stmt.query_map([], |row| {
        Ok((
            row.get::<_, String>(0)?,
            parse_signals(&row.get::<_, String>(1)?)?,
        ))
    })? {
        let (device, signals) = row?;
        out.entry(device).or_default().push(signals);
    }
    Ok(out)
}

fn parse_signals(body: &str) -> rusqlite::Result<SeriesSignals> {
    serde_json::from_str(body).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
    })
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
    Ok(health_of(&series, &active_alerts(conn, device)?))
}

/// The health and soonest predicted crossing from a device's signals and active alerts.
pub fn health_of(series: &[SeriesSignals], alerts: &[ActiveAlert]) -> (Health, Option<Breach>) {
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
    (health::score(series, alerts), breach)
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
