//! The fleet page's query: every device ranked worst first, filtered, and cut into one page.
//!
//! ```text
//!  devices ─┐
//!  active alerts (alert_state ⋈ alerts), by device ─┼─► FleetRow per device ─► filter (q, status,
//!  signals (JSON), by device ─► health, next breach ─┘     severity) ─► sort ─► offset/limit
//!                                                           ─► latest windows of the page's rows only
//! ```
//!
//! Ranking needs every device's health, so a page costs one pass over `devices`, `alert_state`
//! and `signals` (O(fleet): about a JSON parse per series), but only the page's rows carry their
//! latest windows, so the response stays small however large the fleet: 50 rows of 10,000
//! devices is what the browser receives. "Worst first" is: more active critical alerts, then
//! more active warnings, then lower health, then the device id.
//!
//! [`fleet_mark`] is what the live view compares between polls of the store: when neither a
//! device row nor the alerts changed, the page cannot have changed either.

use rusqlite::Connection;
use serde::Serialize;

use super::query::{alert_row, latest_windows, AlertRow, WindowRow};
use super::signals::{active_alerts_by_device, all_series_signals, health_of, Breach};
use crate::analytics::health::{ActiveAlert, Health};
use osprey_protocol::Severity;

/// Largest page.
pub const MAX_PAGE: u32 = 500;

/// How the page is ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FleetSort {
    /// Active critical alerts, then warnings, then health ascending, then id.
    #[default]
    Worst,
    /// Device id (numbers in ids compare as text).
    Name,
    /// Most recently heard from first.
    LastSeen,
}

impl FleetSort {
    /// The sort named `name` (`worst`, `name`, `last_seen`).
    pub fn parse(name: &str) -> Option<FleetSort> {
        match name {
            "worst" => Some(FleetSort::Worst),
            "name" => Some(FleetSort::Name),
            "last_seen" => Some(FleetSort::LastSeen),
            _ => None,
        }
    }
}

/// A device's worst active alert, for filtering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Worst {
    /// At least one active critical alert.
    Critical,
    /// Active warnings, no critical.
    Warning,
    /// Active info alerts only.
    Info,
    /// No active alert.
    None,
}

impl Worst {
    /// The level named `name` (`critical`, `warning`, `info`, `none`).
    pub fn parse(name: &str) -> Option<Worst> {
        match name {
            "critical" => Some(Worst::Critical),
            "warning" => Some(Worst::Warning),
            "info" => Some(Worst::Info),
            "none" => Some(Worst::None),
            _ => None,
        }
    }
}

/// Which devices, in which order, which page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetQuery {
    /// Only devices whose id contains this text (case-insensitive).
    pub q: Option<String>,
    /// Only devices with this status (`online`, `offline`, `unknown`).
    pub status: Option<String>,
    /// Only devices whose worst active alert is this.
    pub severity: Option<Worst>,
    /// Order.
    pub sort: FleetSort,
    /// Rows skipped.
    pub offset: u32,
    /// Rows returned (1 to [`MAX_PAGE`]).
    pub limit: u32,
}

/// Active alerts of a device by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct AlertCounts {
    /// Active critical alerts.
    pub critical: u32,
    /// Active warnings.
    pub warning: u32,
    /// Active info alerts.
    pub info: u32,
}

impl AlertCounts {
    /// The counts of `alerts`.
    pub fn of(alerts: &[ActiveAlert]) -> AlertCounts {
        let mut c = AlertCounts::default();
        for a in alerts {
            match a.severity {
                Severity::Critical => c.critical += 1,
                Severity::Warning => c.warning += 1,
                Severity::Info => c.info += 1,
            }
        }
        c
    }

    fn worst(&self) -> Worst {
        if self.critical > 0 {
            Worst::Critical
        } else if self.warning > 0 {
            Worst::Warning
        } else if self.info > 0 {
            Worst::Info
        } else {
            Worst::None
        }
    }
}

/// One device on the fleet page.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetRow {
    /// Device id.
    pub device: String,
    /// `online`, `offline` or `unknown`.
    pub status: String,
    /// When the cloud received the current status.
    pub status_ms: Option<i64>,
    /// When the cloud last received a message from it (cloud clock).
    pub last_seen_ms: i64,
    /// Newest event time in its messages (device clock).
    pub last_event_ms: Option<i64>,
    /// Readings received.
    pub readings: u64,
    /// Active alerts by severity.
    pub alerts: AlertCounts,
    /// The rules of its active alerts.
    pub active_rules: Vec<String>,
    /// Health score and reasons, in words.
    pub health: Health,
    /// The soonest predicted rule crossing.
    pub next_breach: Option<Breach>,
    /// The newest window of each series (only on the rows of the page).
    pub latest: Vec<WindowRow>,
}

/// Devices by status and alert level, over the whole fleet (not only the page).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FleetCounts {
    /// Devices known.
    pub devices: u64,
    /// Online.
    pub online: u64,
    /// Offline.
    pub offline: u64,
    /// Devices with at least one active critical alert.
    pub critical: u64,
    /// Devices with active warnings and no critical.
    pub warning: u64,
    /// Active alerts, all devices and severities.
    pub active_alerts: u64,
}

/// One page of the fleet.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetPage {
    /// Devices matching the filters.
    pub total: u64,
    /// Rows skipped.
    pub offset: u32,
    /// Page size asked for.
    pub limit: u32,
    /// The order.
    pub sort: FleetSort,
    /// The whole fleet's counts.
    pub counts: FleetCounts,
    /// The page.
    pub rows: Vec<FleetRow>,
}

/// What changes whenever anything on a fleet page can change: the device rows (every applied
/// message moves `last_seen_ms`; a status sets `status_ms`) and the newest alert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FleetMark {
    devices: i64,
    last_seen_ms: i64,
    status_ms: i64,
    /// The newest alert event's row id (the alerts cursor of the live view).
    pub alert_id: i64,
}

impl FleetMark {
    /// A mark of a fleet of `devices` devices, newest `last_seen_ms` and `status_ms`, whose
    /// newest alert event is `alert_id`.
    pub fn new(devices: i64, last_seen_ms: i64, status_ms: i64, alert_id: i64) -> FleetMark {
        FleetMark {
            devices,
            last_seen_ms,
            status_ms,
            alert_id,
        }
    }
}

/// The store's [`FleetMark`] now.
pub fn fleet_mark(conn: &Connection) -> rusqlite::Result<FleetMark> {
    conn.query_row(
        "SELECT count(*), coalesce(max(last_seen_ms), 0), coalesce(max(status_ms), 0), \
         (SELECT coalesce(max(rowid), 0) FROM alerts) FROM devices",
        [],
        |row| {
            Ok(FleetMark {
                devices: row.get(0)?,
                last_seen_ms: row.get(1)?,
                status_ms: row.get(2)?,
                alert_id: row.get(3)?,
            })
        },
    )
}

/// The page `query` asks for.
pub fn fleet_page(conn: &Connection, query: &FleetQuery) -> rusqlite::Result<FleetPage> {
    let mut alerts = active_alerts_by_device(conn, None)?;
    let mut signals = all_series_signals(conn)?;
    let mut stmt = conn.prepare_cached(
        "SELECT device, status, status_ms, last_seen_ms, last_event_ms, readings FROM devices",
    )?;
    let mut rows = stmt
        .query_map([], |row| {
            Ok(FleetRow {
                device: row.get(0)?,
                status: row
                    .get::<_, Option<String>>(1)?
                    .unwrap_or_else(|| "unknown".to_owned()),
                status_ms: row.get(2)?,
                last_seen_ms: row.get(3)?,
                last_event_ms: row.get(4)?,
                readings: row.get(5)?,
                alerts: AlertCounts::default(),
                active_rules: Vec::new(),
                health: Health {
                    score: 100,
                    reasons: Vec::new(),
                },
                next_breach: None,
                latest: Vec::new(),
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    for row in &mut rows {
        let active = alerts.remove(&row.device).unwrap_or_default();
        let series = signals.remove(&row.device).unwrap_or_default();
        (row.health, row.next_breach) = health_of(&series, &active);
        row.alerts = AlertCounts::of(&active);
        row.active_rules = active.into_iter().map(|a| a.rule).collect();
    }
    let mut page = arrange(rows, query);
    for row in &mut page.rows {
        row.latest = latest_windows(conn, &row.device)?;
    }
    Ok(page)
}

/// The page `query` asks for out of every device's row (health and alerts filled in, latest
/// windows not yet): the whole fleet's counts, then the filters, the order and the cut.
pub fn arrange(mut rows: Vec<FleetRow>, query: &FleetQuery) -> FleetPage {
    let mut counts = FleetCounts::default();
    for row in &rows {
        counts.devices += 1;
        match row.status.as_str() {
            "online" => counts.online += 1,
            "offline" => counts.offline += 1,
            _ => {}
        }
        match row.alerts.worst() {
            Worst::Critical => counts.critical += 1,
            Worst::Warning => counts.warning += 1,
            _ => {}
        }
        counts.active_alerts +=
            u64::from(row.alerts.critical + row.alerts.warning + row.alerts.info);
    }
    let needle = query.q.as_ref().map(|q| q.to_lowercase());
    rows.retain(|r| {
        needle
            .as_ref()
            .is_none_or(|n| r.device.to_lowercase().contains(n.as_str()))
            && query.status.as_ref().is_none_or(|s| &r.status == s)
            && query.severity.is_none_or(|w| r.alerts.worst() == w)
    });
    sort(&mut rows, query.sort);
    let total = rows.len() as u64;
    let page: Vec<FleetRow> = rows
        .into_iter()
        .skip(query.offset as usize)
        .take(query.limit as usize)
        .collect();
    FleetPage {
        total,
        offset: query.offset,
        limit: query.limit,
        sort: query.sort,
        counts,
        rows: page,
    }
}

/// Alert events stored after row id `after` (oldest first, at most `limit`), each with its
/// row id: the cursor the live view resumes from.
pub fn alerts_after(
    conn: &Connection,
    after: i64,
    limit: u32,
) -> rusqlite::Result<Vec<(i64, AlertRow)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT device, seq, rule, sensor, metric, event, severity, value, threshold, time_ms, \
         rowid FROM alerts WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
    )?;
    let rows = stmt
        .query_map(rusqlite::params![after, limit], |row| {
            Ok((row.get(10)?, alert_row(row)?))
        })?
        .collect();
    rows
}

fn sort(rows: &mut [FleetRow], by: FleetSort) {
    match by {
        FleetSort::Worst => rows.sort_by(|a, b| {
            b.alerts
                .critical
                .cmp(&a.alerts.critical)
                .then(b.alerts.warning.cmp(&a.alerts.warning))
                .then(a.health.score.cmp(&b.health.score))
                .then_with(|| a.device.cmp(&b.device))
        }),
        FleetSort::Name => rows.sort_by(|a, b| a.device.cmp(&b.device)),
        FleetSort::LastSeen => rows.sort_by(|a, b| {
            b.last_seen_ms
                .cmp(&a.last_seen_ms)
                .then_with(|| a.device.cmp(&b.device))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, critical: u32, warning: u32, score: u32) -> FleetRow {
        FleetRow {
            device: device.into(),
            status: "online".into(),
            status_ms: None,
            last_seen_ms: 0,
            last_event_ms: None,
            readings: 0,
            alerts: AlertCounts {
                critical,
                warning,
                info: 0,
            },
            active_rules: Vec::new(),
            health: Health {
                score,
                reasons: Vec::new(),
            },
            next_breach: None,
            latest: Vec::new(),
        }
    }

    #[test]
    fn worst_first_is_critical_then_warning_then_health() {
        let mut rows = vec![
            row("a", 0, 0, 100),
            row("b", 0, 0, 55),
            row("c", 0, 2, 90),
            row("d", 1, 0, 60),
            row("e", 0, 1, 80),
        ];
        sort(&mut rows, FleetSort::Worst);
        let ids: Vec<&str> = rows.iter().map(|r| r.device.as_str()).collect();
        assert_eq!(ids, ["d", "c", "e", "b", "a"]);
    }

    #[test]
    fn names_parse() {
        assert_eq!(FleetSort::parse("last_seen"), Some(FleetSort::LastSeen));
        assert_eq!(FleetSort::parse("health"), None);
        assert_eq!(Worst::parse("none"), Some(Worst::None));
        assert_eq!(Worst::parse("high"), None);
    }
}
