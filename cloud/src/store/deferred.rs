//! What one write transaction keeps in memory and writes once at its end: the windows its
//! messages fold into, each device's counters and watermark, each series' newest window.
//!
//! A batch of 512 messages from a few dozen devices touches each open window hundreds of
//! times. Folded one message at a time through SQL, each touch would read the window row,
//! decode its sketch, encode it again and replace the row; here the first touch reads the row
//! and every later one folds into the copy in memory, and [`Deferred::flush`] writes each
//! changed window once. The fold itself is the same ([`crate::window::table::fold`], in message
//! order, version + 1 per fold), so the stored windows are what one transaction per message
//! would have stored, to the bit.
//!
//! ```text
//!  per message ──► seen (dedup, SQL) ──► epoch (SQL, once per device and epoch)
//!              ──► watermark: the device's stored newest event time (read once), or a newer
//!                  one of an earlier message of this transaction
//!              ──► fold each delta into `windows` (tumbling, hopping: in memory; sessions,
//!                  which absorb each other by range, straight in SQL)
//!              ──► device counters, series' newest window: in memory
//!  end ──► flush: changed windows, series, devices (one statement each) ──► signals ──► COMMIT
//! ```
//!
//! Device rows are written with the same min/max/sum the per-message upsert applied one by
//! one, and a series keeps the unit of the last delta at or after its newest start, so those
//! are the same too. A status or presence still sets a device's status columns as it comes
//! (it reads the stored status), which the counters written at the end do not touch.

use std::collections::{HashMap, HashSet};

use rusqlite::types::Value;
use rusqlite::{params, OptionalExtension, Transaction};

use super::query::{read_stored, STORED_COLUMNS};
use super::writer::Message;
use crate::window::table::{Stored, WindowStore, WindowUpdate};
use crate::window::{WindowDelta, WindowKind};

/// A window: device, sensor, metric, kind, start.
type WindowKey = (String, String, String, WindowKind, i64);

/// A window as the transaction sees it.
#[derive(Debug)]
struct Slot {
    /// The window (`None`: not stored).
    window: Option<Stored>,
    /// Changed by this transaction: written at the end.
    dirty: bool,
}

/// A device's counters over the transaction's applied messages.
#[derive(Debug)]
struct DeviceTally {
    /// The stored newest event time, once read (`Some(None)`: none stored).
    stored_event_ms: Option<Option<i64>>,
    first_seen_ms: i64,
    last_seen_ms: i64,
    last_event_ms: Option<i64>,
    last_seq: u64,
    readings: u64,
}

/// The transaction's deferred writes.
#[derive(Debug, Default)]
pub(super) struct Deferred {
    windows: HashMap<WindowKey, Slot>,
    devices: HashMap<String, DeviceTally>,
    /// Per series: its newest tumbling start and that window's unit, as the transaction's
    /// deltas leave them.
    series: HashMap<(String, String, String), (i64, String)>,
    /// Device epochs already recorded in this transaction.
    epochs: HashSet<(String, u64)>,
}

impl Deferred {
    /// Whether `(device, epoch)` is recorded for the first time in this transaction (the
    /// caller then records it in SQL).
    pub(super) fn first_of_epoch(&mut self, device: &str, epoch: u64) -> bool {
        if self.epochs.contains(&(device.to_owned(), epoch)) {
            return false;
        }
        self.epochs.insert((device.to_owned(), epoch));
        true
    }

    /// The device's watermark before the message now applied: its newest event time, stored
    /// or from an earlier message of this transaction.
    pub(super) fn watermark(
        &mut self,
        tx: &Transaction<'_>,
        device: &str,
    ) -> rusqlite::Result<Option<i64>> {
        let d = self.device(device);
        let stored = match d.stored_event_ms {
            Some(stored) => stored,
            None => {
                // The row as the transaction found it: counters are written at its end.
                let stored = tx
                    .prepare_cached("SELECT last_event_ms FROM devices WHERE device = ?1")?
                    .query_row(params![device], |row| row.get::<_, Option<i64>>(0))
                    .optional()?
                    .flatten();
                d.stored_event_ms = Some(stored);
                stored
            }
        };
        Ok(max_some(stored, d.last_event_ms))
    }

    /// Counts an applied message for its device.
    pub(super) fn count(&mut self, m: &Message) {
        let d = self.device(&m.device);
        d.first_seen_ms = d.first_seen_ms.min(m.received_ms);
        d.last_seen_ms = d.last_seen_ms.max(m.received_ms);
        d.last_event_ms = max_some(d.last_event_ms, m.event_ms);
        d.last_seq = d.last_seq.max(m.seq);
        d.readings = d.readings.saturating_add(m.readings);
    }

    fn device(&mut self, device: &str) -> &mut DeviceTally {
        if !self.devices.contains_key(device) {
            self.devices.insert(
                device.to_owned(),
                DeviceTally {
                    stored_event_ms: None,
                    first_seen_ms: i64::MAX,
                    last_seen_ms: i64::MIN,
                    last_event_ms: None,
                    last_seq: 0,
                    readings: 0,
                },
            );
        }
        self.devices
            .get_mut(device)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Notes a tumbling delta of `device`'s series: the series' newest window is the newest
    /// start, with the unit of the last delta at or after it.
    pub(super) fn touch_series(&mut self, device: &str, w: &WindowDelta) {
        let key = (device.to_owned(), w.sensor.clone(), w.metric.clone());
        match self.series.get_mut(&key) {
            Some((start, unit)) => {
                if w.start_ms >= *start {
                    *start = w.start_ms;
                    w.unit.clone_into(unit);
                }
            }
            None => {
                self.series.insert(key, (w.start_ms, w.unit.clone()));
            }
        }
    }

    /// The windows table through this transaction, for [`crate::window::table::fold`].
    pub(super) fn windows<'a, 'c>(&'a mut self, tx: &'a Transaction<'c>) -> TxWindows<'a, 'c> {
        TxWindows {
            tx,
            slots: &mut self.windows,
        }
    }

    /// Writes what was deferred: changed windows, series, device counters.
    pub(super) fn flush(&mut self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        for ((device, sensor, metric, kind, _), slot) in &self.windows {
            if let (true, Some(w)) = (slot.dirty, &slot.window) {
                put_window(tx, device, sensor, metric, *kind, w)?;
            }
        }
        for ((device, sensor, metric), (start, unit)) in &self.series {
            tx.prepare_cached(
                "INSERT INTO series (device, sensor, metric, unit, latest_start_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (device, sensor, metric) DO UPDATE SET
                     unit = CASE WHEN excluded.latest_start_ms >= latest_start_ms
                                 THEN excluded.unit ELSE unit END,
                     latest_start_ms = max(latest_start_ms, excluded.latest_start_ms)",
            )?
            .execute(params![device, sensor, metric, unit, start])?;
        }
        for (device, d) in &self.devices {
            if d.first_seen_ms > d.last_seen_ms {
                // Only its watermark was read; no message of it was applied.
                continue;
            }
            tx.prepare_cached(
                "INSERT INTO devices
                     (device, first_seen_ms, last_seen_ms, last_event_ms, last_seq, readings)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (device) DO UPDATE SET
                     first_seen_ms = min(first_seen_ms, excluded.first_seen_ms),
                     last_seen_ms = max(last_seen_ms, excluded.last_seen_ms),
                     last_event_ms = max(coalesce(last_event_ms, excluded.last_event_ms),
                                         coalesce(excluded.last_event_ms, last_event_ms)),
                     last_seq = max(last_seq, excluded.last_seq),
                     readings = readings + excluded.readings",
            )?
            .execute(params![
                device,
                d.first_seen_ms,
                d.last_seen_ms,
                d.last_event_ms,
                d.last_seq,
                d.readings
            ])?;
        }
        Ok(())
    }
}

/// The larger of two optional times (`None` only if both are).
fn max_some(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// The windows table seen through the writer's transaction and its deferred windows.
pub(super) struct TxWindows<'a, 'c> {
    tx: &'a Transaction<'c>,
    slots: &'a mut HashMap<WindowKey, Slot>,
}

fn key(device: &str, sensor: &str, metric: &str, kind: WindowKind, start_ms: i64) -> WindowKey {
    (
        device.to_owned(),
        sensor.to_owned(),
        metric.to_owned(),
        kind,
        start_ms,
    )
}

impl WindowStore for TxWindows<'_, '_> {
    type Error = rusqlite::Error;

    fn overlapping(&mut self, device: &str, d: &WindowDelta) -> rusqlite::Result<Vec<Stored>> {
        if d.kind == WindowKind::Session {
            return stored_overlapping(self.tx, device, d);
        }
        let key = key(device, &d.sensor, &d.metric, d.kind, d.start_ms);
        if let Some(slot) = self.slots.get(&key) {
            return Ok(slot.window.iter().cloned().collect());
        }
        let found = stored_overlapping(self.tx, device, d)?;
        self.slots.insert(
            key,
            Slot {
                window: found.first().cloned(),
                dirty: false,
            },
        );
        Ok(found)
    }

    fn put(&mut self, u: &WindowUpdate) -> rusqlite::Result<()> {
        if u.kind == WindowKind::Session {
            for start in &u.absorbed {
                self.tx
                    .prepare_cached(
                        "DELETE FROM windows WHERE device = ?1 AND sensor = ?2 AND metric = ?3 \
                         AND kind = ?4 AND start_ms = ?5",
                    )?
                    .execute(params![
                        u.device,
                        u.sensor,
                        u.metric,
                        u.kind.as_str(),
                        start
                    ])?;
            }
            return put_window(self.tx, &u.device, &u.sensor, &u.metric, u.kind, &u.window);
        }
        let key = key(&u.device, &u.sensor, &u.metric, u.kind, u.window.start_ms);
        self.slots.insert(
            key,
            Slot {
                window: Some(u.window.clone()),
                dirty: true,
            },
        );
        Ok(())
    }
}

/// The stored windows `d` merges with: the one with its start, or for a session every stored
/// session it overlaps.
fn stored_overlapping(
    tx: &Transaction<'_>,
    device: &str,
    d: &WindowDelta,
) -> rusqlite::Result<Vec<Stored>> {
    let mut args: Vec<Value> = vec![
        Value::Text(device.to_owned()),
        Value::Text(d.sensor.clone()),
        Value::Text(d.metric.clone()),
        Value::Text(d.kind.as_str().to_owned()),
    ];
    let range = if d.kind == WindowKind::Session {
        args.extend([Value::Integer(d.end_ms), Value::Integer(d.start_ms)]);
        "start_ms < ?5 AND end_ms > ?6"
    } else {
        args.push(Value::Integer(d.start_ms));
        "start_ms = ?5"
    };
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {STORED_COLUMNS} FROM windows \
         WHERE device = ?1 AND sensor = ?2 AND metric = ?3 AND kind = ?4 AND {range}"
    ))?;
    let rows = stmt
        .query_map(rusqlite::params_from_iter(args), |row| read_stored(row, 0))?
        .collect();
    rows
}

/// Writes window `w` of a series, replacing the stored one with its start.
fn put_window(
    tx: &Transaction<'_>,
    device: &str,
    sensor: &str,
    metric: &str,
    kind: WindowKind,
    w: &Stored,
) -> rusqlite::Result<()> {
    let m = &w.agg.moments;
    tx.prepare_cached(
        "INSERT OR REPLACE INTO windows (device, sensor, metric, kind, start_ms, end_ms, \
         unit, version, count, sum, min, max, mean, m2, m3, m4, sketch, corrections) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
    )?
    .execute(params![
        device,
        sensor,
        metric,
        kind.as_str(),
        w.start_ms,
        w.end_ms,
        w.unit,
        w.version,
        m.count,
        m.sum,
        m.min,
        m.max,
        m.mean,
        m.m2,
        m.m3,
        m.m4,
        w.agg.sketch.to_bytes(),
        w.corrections
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests;
