//! The newest tumbling windows of each series, kept in memory by the writer thread, so that
//! the signals of a batch ([`super::signals`]) are computed without reading windows back.
//!
//! ```text
//!  transaction's window updates of a series ─► cached? ─yes─► upsert each into its newest
//!                                               │             `limit` windows (O(log limit))
//!                                               no
//!                                               └─► read the newest `limit` windows once
//!                                                   (the transaction sees its own writes)
//!  ─► the series' points, oldest first, and the newest window's unit ─► signals::compute
//! ```
//!
//! The cache holds exactly what `SELECT … ORDER BY start_ms DESC LIMIT limit` would return
//! (the same values: the moments the writer stores), so the signals are the same as when they
//! were computed from the table: only the writer thread changes windows, and it keeps the
//! cache in step:
//!
//! - a failed transaction clears the cache (it may hold windows that were rolled back);
//! - a retention pass that deleted windows clears it (the cache would still hold them);
//! - a series that has at least `limit` windows keeps only its newest `limit`; a late window
//!   older than all of them is not among the newest and changes nothing.
//!
//! At most `max_series` series are kept (about 19 KiB each with 241 windows); the least
//! recently used goes first, and is read again from the table the next time it is touched.

use std::collections::{HashMap, VecDeque};

use rusqlite::{params, Transaction};

use super::query::read_moments;
use crate::analytics::signals::WindowPoint;
use crate::window::table::WindowUpdate;

/// A series: device, sensor, metric.
type Key = (String, String, String);

/// One series' newest windows.
#[derive(Debug)]
struct Series {
    /// Oldest first, at most `limit`.
    points: VecDeque<WindowPoint>,
    /// Unit of the newest window.
    unit: String,
    /// Whether `points` is every window of the series (else it is the newest `limit`).
    complete: bool,
    /// When the series was last touched (a batch counter), for eviction.
    used: u64,
}

/// The newest windows of recently touched series.
#[derive(Debug)]
pub(super) struct RecentWindows {
    /// Windows kept per series: the newest and `trend_windows` closed ones.
    limit: usize,
    max_series: usize,
    series: HashMap<Key, Series>,
    tick: u64,
}

impl RecentWindows {
    /// A cache of the newest `limit` windows of up to `max_series` series.
    pub(super) fn new(limit: usize, max_series: usize) -> RecentWindows {
        RecentWindows {
            limit: limit.max(1),
            max_series: max_series.max(1),
            series: HashMap::new(),
            tick: 0,
        }
    }

    /// Forgets every series (after a rollback, or after windows were deleted).
    pub(super) fn clear(&mut self) {
        self.series.clear();
    }

    /// Series cached now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.series.len()
    }

    /// The newest windows of `device`/`sensor`/`metric` (oldest first) and the newest one's
    /// unit, once `updates` (this transaction's changes to the series' tumbling windows, in
    /// the order they were made) are applied. `tx` is read only when the series is not
    /// cached; it must already hold the updates.
    pub(super) fn points(
        &mut self,
        tx: &Transaction<'_>,
        (device, sensor, metric): (&str, &str, &str),
        updates: &[&WindowUpdate],
    ) -> rusqlite::Result<(&[WindowPoint], &str)> {
        self.tick += 1;
        let key = (device.to_owned(), sensor.to_owned(), metric.to_owned());
        if self.series.contains_key(&key) {
            if let Some(series) = self.series.get_mut(&key) {
                for u in updates {
                    series.upsert(point_of(u), &u.window.unit, self.limit);
                }
            }
        } else {
            let (points, unit) = load(tx, (device, sensor, metric), self.limit)?;
            if self.series.len() >= self.max_series {
                self.evict();
            }
            let complete = points.len() < self.limit;
            self.series.insert(
                key.clone(),
                Series {
                    points,
                    unit,
                    complete,
                    used: 0,
                },
            );
        }
        let tick = self.tick;
        match self.series.get_mut(&key) {
            Some(series) => {
                series.used = tick;
                Ok((series.points.make_contiguous(), &series.unit))
            }
            // Inserted just above.
            None => Ok((&[], "")),
        }
    }

    /// Drops the least recently used series.
    fn evict(&mut self) {
        let oldest = self
            .series
            .iter()
            .min_by_key(|(_, s)| s.used)
            .map(|(k, _)| k.clone());
        if let Some(key) = oldest {
            self.series.remove(&key);
        }
    }
}

impl Series {
    /// Puts `p` (with its window's `unit`) where the table's newest `limit` windows would
    /// have it.
    fn upsert(&mut self, p: WindowPoint, unit: &str, limit: usize) {
        let newest = self.points.back().map(|w| w.start_ms);
        if newest.is_none_or(|start| p.start_ms > start) {
            self.points.push_back(p);
            unit.clone_into(&mut self.unit);
        } else {
            match self
                .points
                .binary_search_by_key(&p.start_ms, |w| w.start_ms)
            {
                Ok(i) => {
                    self.points[i] = p;
                    if i + 1 == self.points.len() {
                        unit.clone_into(&mut self.unit);
                    }
                }
                // Older than the newest `limit` windows of the series: not among them.
                Err(0) if !self.complete => return,
                Err(i) => self.points.insert(i, p),
            }
        }
        while self.points.len() > limit {
            self.points.pop_front();
            self.complete = false;
        }
    }
}

/// The window of an update as the signals see it (the moments the writer stored).
fn point_of(u: &WindowUpdate) -> WindowPoint {
    WindowPoint {
        start_ms: u.window.start_ms,
        end_ms: u.window.end_ms,
        moments: u.window.agg.moments,
    }
}

/// The newest `limit` tumbling windows of a series from the table, oldest first, and the
/// newest one's unit (empty without windows).
pub(super) fn load(
    tx: &Transaction<'_>,
    (device, sensor, metric): (&str, &str, &str),
    limit: usize,
) -> rusqlite::Result<(VecDeque<WindowPoint>, String)> {
    let mut stmt = tx.prepare_cached(
        "SELECT start_ms, end_ms, count, sum, min, max, mean, m2, m3, m4, unit FROM windows \
         WHERE device = ?1 AND sensor = ?2 AND metric = ?3 AND kind = 'tumbling' \
         ORDER BY start_ms DESC LIMIT ?4",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut unit = None;
    let mut points = VecDeque::new();
    let mut rows = stmt.query(params![device, sensor, metric, limit])?;
    while let Some(row) = rows.next()? {
        points.push_front(WindowPoint {
            start_ms: row.get(0)?,
            end_ms: row.get(1)?,
            moments: read_moments(row, 2)?,
        });
        if unit.is_none() {
            unit = Some(row.get::<_, String>(10)?);
        }
    }
    Ok((points, unit.unwrap_or_default()))
}

#[cfg(test)]
mod tests;
