//! The `device_rules` table: per device, its latest rules report and the hash of the document
//! set for it, with when serve received each ([`crate::reported_rules`] checks them first).
//!
//! ```text
//!  Write::Rules(Reported) ─► same body as stored? ── yes ─► nothing (a retained report comes
//!                            │ no                            again on every reconnect)
//!                            └─► report, reported_ms ─► the device's rules in effect changed:
//!                                the writer's signals take them (super::signals::Refresher)
//!  Write::Rules(Desired)  ─► same hash as stored? ── yes ─► nothing
//!                            └─► desired_hash, desired_ms (when it was set, as serve saw it)
//! ```
//!
//! A row whose report and desired hash are both gone (empty retained messages) is deleted.
//! The table is schema version 6 ([`super::schema`]).

use std::collections::HashMap;

use osprey_protocol::ThresholdRule;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::reported_rules::Report;

/// A report that passed [`Report::parse`]: as received, and its rules in effect.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReport {
    /// The report's JSON as received.
    pub body: String,
    /// Its rules in effect (the document's, then the local ones).
    pub in_effect: Vec<ThresholdRule>,
}

/// A change to a device's row.
#[derive(Debug, Clone, PartialEq)]
pub enum RulesWrite {
    /// A report (`None`: the retained report was removed).
    Reported {
        /// The device of its topic.
        device: String,
        /// When serve received it (cloud clock).
        received_ms: i64,
        /// The checked report.
        report: Option<StoredReport>,
    },
    /// The document set for the device, by its hash (`None`: removed).
    Desired {
        /// The device of its topic.
        device: String,
        /// When serve received it (cloud clock).
        received_ms: i64,
        /// The hash the device reports for it.
        hash: Option<String>,
    },
}

/// A device's stored row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RulesRow {
    /// The report's JSON, if any.
    pub report: Option<String>,
    /// When serve received it.
    pub reported_ms: Option<i64>,
    /// The hash of the document set for the device, if any.
    pub desired_hash: Option<String>,
    /// When serve saw it set.
    pub desired_ms: Option<i64>,
}

/// A device's rules in effect changed: its new ones (`None`: it has no report any more).
pub(super) type RulesChange = (String, Option<Vec<ThresholdRule>>);

/// Schema version 6: the `device_rules` table. Part of [`super::schema::migrate`].
pub(super) fn migrate_v6(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS device_rules (
             device       TEXT PRIMARY KEY NOT NULL,
             report       TEXT,
             reported_ms  INTEGER,
             desired_hash TEXT,
             desired_ms   INTEGER
         ) WITHOUT ROWID;",
    )
}

/// Applies `write`; returns the device's new rules in effect when they changed.
pub(super) fn apply(
    tx: &Transaction<'_>,
    write: &RulesWrite,
) -> rusqlite::Result<Option<RulesChange>> {
    let device = match write {
        RulesWrite::Reported { device, .. } | RulesWrite::Desired { device, .. } => device,
    };
    let stored = get(tx, device)?.unwrap_or_default();
    let change = match write {
        RulesWrite::Reported {
            received_ms,
            report,
            ..
        } => {
            let body = report.as_ref().map(|r| r.body.as_str());
            if stored.report.as_deref() == body {
                return Ok(None);
            }
            tx.prepare_cached(
                "INSERT INTO device_rules (device, report, reported_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device) DO UPDATE SET
                     report = excluded.report, reported_ms = excluded.reported_ms",
            )?
            .execute(params![device, body, body.map(|_| *received_ms)])?;
            Some((device.clone(), report.as_ref().map(|r| r.in_effect.clone())))
        }
        RulesWrite::Desired {
            received_ms, hash, ..
        } => {
            if stored.desired_hash == *hash {
                return Ok(None);
            }
            tx.prepare_cached(
                "INSERT INTO device_rules (device, desired_hash, desired_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (device) DO UPDATE SET
                     desired_hash = excluded.desired_hash, desired_ms = excluded.desired_ms",
            )?
            .execute(params![device, hash, hash.as_ref().map(|_| *received_ms)])?;
            None
        }
    };
    tx.prepare_cached(
        "DELETE FROM device_rules WHERE device = ?1 AND report IS NULL AND desired_hash IS NULL",
    )?
    .execute(params![device])?;
    Ok(change)
}

/// The stored row of `device`, if any.
pub fn get(conn: &Connection, device: &str) -> rusqlite::Result<Option<RulesRow>> {
    conn.prepare_cached(
        "SELECT report, reported_ms, desired_hash, desired_ms FROM device_rules WHERE device = ?1",
    )?
    .query_row(params![device], |row| {
        Ok(RulesRow {
            report: row.get(0)?,
            reported_ms: row.get(1)?,
            desired_hash: row.get(2)?,
            desired_ms: row.get(3)?,
        })
    })
    .optional()
}

/// The rules in effect of every device with a report, parsed once (when the writer starts).
pub(super) fn all_in_effect(
    conn: &Connection,
) -> rusqlite::Result<HashMap<String, Vec<ThresholdRule>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT device, report FROM device_rules WHERE report IS NOT NULL ORDER BY device",
    )?;
    let rows = stmt.query_map([], |row| {
        Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (device, body) = row?;
        if let Some(rules) = in_effect(&device, &body) {
            out.insert(device, rules);
        }
    }
    Ok(out)
}

/// The rules in effect of `device` by its stored report; `None` without one.
pub fn device_in_effect(
    conn: &Connection,
    device: &str,
) -> rusqlite::Result<Option<Vec<ThresholdRule>>> {
    Ok(get(conn, device)?
        .and_then(|row| row.report)
        .and_then(|body| in_effect(device, &body)))
}

/// The rules in effect of a stored report (checked when it came; one that no longer parses,
/// after an upgrade that checks more, counts as no report).
fn in_effect(device: &str, body: &str) -> Option<Vec<ThresholdRule>> {
    match Report::parse(device, body.as_bytes()) {
        Ok(report) => Some(report.in_effect()),
        Err(reason) => {
            tracing::warn!(device, reason = %reason, "stored rules report no longer parses; ignored");
            None
        }
    }
}

/// `(sensor, metric, unit)` of every series of `device`.
pub fn series_units(
    conn: &Connection,
    device: &str,
) -> rusqlite::Result<Vec<(String, String, String)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT sensor, metric, unit FROM series WHERE device = ?1 ORDER BY sensor, metric",
    )?;
    let rows = stmt.query_map(params![device], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })?;
    rows.collect()
}
