//! Folding window deltas into stored windows: one algorithm, two homes.
//!
//! [`fold`] merges a [`WindowDelta`] into whatever a [`WindowStore`] holds for it (the window
//! with the same start, or for sessions every stored session the delta touches), bumps the
//! version and says whether the delta was late. The SQLite writer implements [`WindowStore`]
//! on its transaction; [`WindowTable`] implements it in memory (the in-memory path the
//! benchmark measures, and a second implementation the tests compare with).
//!
//! Lateness is judged per device: a device's watermark is the newest event time it has sent.
//! A delta is *late* when its window already ended at or before that watermark; it is merged
//! all the same, and the corrected window is emitted with `late = true`. Nothing is dropped,
//! and a device that backfills hours of data moves only its own watermark: there is no fleet
//! watermark for one slow or idle device to hold back.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{Aggregate, WindowDelta, WindowKind};

/// A window as stored. In JSON its aggregate's summary sits next to its bounds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stored {
    /// Window start.
    pub start_ms: i64,
    /// Window end.
    pub end_ms: i64,
    /// Unit of the newest delta.
    pub unit: String,
    /// 1 when first written, +1 with every merge (on-time batches included: a one-minute
    /// window filled by 30 batches has version 30).
    pub version: u64,
    /// Corrections: +1 each time data arrived for the stored window after it had closed (its
    /// end at or before the device's watermark), so 0 means the window as first shown was
    /// never changed by late data. A window first written from late data (a backfill) starts
    /// at 0; a session that absorbs others adds up their corrections.
    pub corrections: u64,
    /// The values' aggregate.
    #[serde(flatten)]
    pub agg: Aggregate,
}

/// A window that changed: what the store now holds for it.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowUpdate {
    /// Device id.
    pub device: String,
    /// Sensor name.
    pub sensor: String,
    /// Metric name.
    pub metric: String,
    /// Kind of window.
    pub kind: WindowKind,
    /// The window after the merge.
    pub window: Stored,
    /// Its window had already ended at or before the device's watermark: a correction.
    pub late: bool,
    /// Starts of stored sessions this one absorbed (their rows are gone); empty otherwise.
    pub absorbed: Vec<i64>,
}

/// Where windows are kept.
pub trait WindowStore {
    /// What can go wrong reading or writing.
    type Error;

    /// The stored windows of `device` that `delta` merges with: the window of the same series,
    /// kind and start; for sessions, every session of the series whose `[start, end)`
    /// overlaps the delta's.
    fn overlapping(
        &mut self,
        device: &str,
        delta: &WindowDelta,
    ) -> Result<Vec<Stored>, Self::Error>;

    /// Stores `update.window`, replacing the windows listed in `update.absorbed`.
    fn put(&mut self, update: &WindowUpdate) -> Result<(), Self::Error>;
}

/// Merges `delta` into `store` for `device` whose watermark (newest event time before this
/// message) is `watermark_ms`, and returns the window as it now stands.
pub fn fold<S: WindowStore>(
    store: &mut S,
    device: &str,
    delta: WindowDelta,
    watermark_ms: Option<i64>,
) -> Result<WindowUpdate, S::Error> {
    let mut found = store.overlapping(device, &delta)?;
    found.sort_by_key(|s| s.start_ms);
    let closed = |end_ms: i64| watermark_ms.is_some_and(|w| end_ms <= w);
    let late = closed(delta.end_ms) || found.iter().any(|s| closed(s.end_ms));
    let mut window = Stored {
        start_ms: delta.start_ms,
        end_ms: delta.end_ms,
        unit: delta.unit,
        version: 1,
        corrections: u64::from(late && !found.is_empty()),
        agg: Aggregate::new(),
    };
    let mut absorbed = Vec::new();
    for old in &found {
        window.start_ms = window.start_ms.min(old.start_ms);
        window.end_ms = window.end_ms.max(old.end_ms);
        window.version = window.version.max(old.version + 1);
        window.corrections += old.corrections;
        window.agg.merge(&old.agg);
    }
    window.agg.merge(&delta.agg);
    for old in &found {
        if old.start_ms != window.start_ms {
            absorbed.push(old.start_ms);
        }
    }
    let update = WindowUpdate {
        device: device.to_owned(),
        sensor: delta.sensor,
        metric: delta.metric,
        kind: delta.kind,
        window,
        late,
        absorbed,
    };
    store.put(&update)?;
    Ok(update)
}

/// One series' windows by kind and start. Boxed: a B-tree node holds eleven entries, and
/// boxing keeps a series with one open window from paying for eleven aggregates.
type SeriesWindows = BTreeMap<(WindowKind, i64), Box<Stored>>;

#[derive(Debug, Default)]
struct DeviceState {
    seen: HashSet<u64>,
    watermark_ms: Option<i64>,
    series: HashMap<String, HashMap<String, SeriesWindows>>,
}

/// Windows, dedup set and watermarks in memory, keyed per device.
///
/// It keeps every sequence number and window it has seen: it is the measured in-memory path
/// and a reference for the store, not a long-running state (the store is that).
#[derive(Debug, Default)]
pub struct WindowTable {
    devices: HashMap<String, DeviceState>,
}

impl WindowTable {
    /// An empty table.
    pub fn new() -> WindowTable {
        WindowTable::default()
    }

    /// Applies one message: `None` if `(device, seq)` was applied before (nothing changes),
    /// else the updated windows, in the order of `deltas`.
    pub fn apply(
        &mut self,
        device: &str,
        seq: u64,
        event_ms: Option<i64>,
        deltas: Vec<WindowDelta>,
    ) -> Option<Vec<WindowUpdate>> {
        let state = match self.devices.get_mut(device) {
            Some(state) => state,
            None => self.devices.entry(device.to_owned()).or_default(),
        };
        if !state.seen.insert(seq) {
            return None;
        }
        let watermark = state.watermark_ms;
        let mut store = DeviceStore(state);
        let updates = deltas
            .into_iter()
            .map(|delta| match fold(&mut store, device, delta, watermark) {
                Ok(update) => update,
                Err(never) => match never {},
            })
            .collect();
        if let Some(t) = event_ms {
            state.watermark_ms = Some(state.watermark_ms.map_or(t, |w| w.max(t)));
        }
        Some(updates)
    }

    /// The windows of one series and kind, by start.
    pub fn windows(
        &self,
        device: &str,
        sensor: &str,
        metric: &str,
        kind: WindowKind,
    ) -> Vec<&Stored> {
        self.devices
            .get(device)
            .and_then(|d| d.series.get(sensor))
            .and_then(|m| m.get(metric))
            .map(|w| {
                w.range((kind, i64::MIN)..=(kind, i64::MAX))
                    .map(|(_, s)| &**s)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every window: `(device, sensor, metric, kind, window)`, in key order per device.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str, &str, WindowKind, &Stored)> {
        self.devices.iter().flat_map(|(device, d)| {
            d.series.iter().flat_map(move |(sensor, metrics)| {
                metrics.iter().flat_map(move |(metric, windows)| {
                    windows.iter().map(move |((kind, _), s)| {
                        (
                            device.as_str(),
                            sensor.as_str(),
                            metric.as_str(),
                            *kind,
                            &**s,
                        )
                    })
                })
            })
        })
    }

    /// Number of (device, sensor, metric) series held.
    pub fn series_count(&self) -> usize {
        self.devices
            .values()
            .flat_map(|d| d.series.values())
            .map(HashMap::len)
            .sum()
    }
}

struct DeviceStore<'a>(&'a mut DeviceState);

impl WindowStore for DeviceStore<'_> {
    type Error = std::convert::Infallible;

    fn overlapping(&mut self, _: &str, delta: &WindowDelta) -> Result<Vec<Stored>, Self::Error> {
        let Some(windows) = self
            .0
            .series
            .get_mut(&delta.sensor)
            .and_then(|m| m.get_mut(&delta.metric))
        else {
            return Ok(Vec::new());
        };
        if delta.kind != WindowKind::Session {
            return Ok(windows
                .remove(&(delta.kind, delta.start_ms))
                .map(|s| vec![*s])
                .unwrap_or_default());
        }
        let starts: Vec<i64> = windows
            .range((WindowKind::Session, i64::MIN)..(WindowKind::Session, delta.end_ms))
            .filter(|(_, s)| s.end_ms > delta.start_ms)
            .map(|((_, start), _)| *start)
            .collect();
        Ok(starts
            .into_iter()
            .filter_map(|s| windows.remove(&(WindowKind::Session, s)))
            .map(|s| *s)
            .collect())
    }

    fn put(&mut self, update: &WindowUpdate) -> Result<(), Self::Error> {
        // `overlapping` already removed what the update replaces.
        let metrics = match self.0.series.get_mut(&update.sensor) {
            Some(m) => m,
            None => self.0.series.entry(update.sensor.clone()).or_default(),
        };
        let windows = match metrics.get_mut(&update.metric) {
            Some(w) => w,
            None => metrics.entry(update.metric.clone()).or_default(),
        };
        windows.insert(
            (update.kind, update.window.start_ms),
            Box::new(update.window.clone()),
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(kind: WindowKind, start_ms: i64, end_ms: i64, values: &[f64]) -> WindowDelta {
        let mut agg = Aggregate::new();
        for &v in values {
            agg.add(v);
        }
        WindowDelta {
            sensor: "bearing".into(),
            metric: "vibration".into(),
            unit: "mm/s".into(),
            kind,
            start_ms,
            end_ms,
            agg,
        }
    }

    #[test]
    fn duplicates_change_nothing_and_late_data_makes_a_new_version() {
        let mut t = WindowTable::new();
        let first = t
            .apply(
                "pump-1",
                1,
                Some(59_000),
                vec![delta(WindowKind::Tumbling, 0, 60_000, &[1.0])],
            )
            .unwrap();
        assert_eq!((first[0].window.version, first[0].late), (1, false));
        assert_eq!(first[0].window.corrections, 0);
        assert!(t.apply("pump-1", 1, Some(59_000), vec![]).is_none());
        // The device moves on to the next minute: the first window is now closed.
        t.apply(
            "pump-1",
            2,
            Some(61_000),
            vec![delta(WindowKind::Tumbling, 60_000, 120_000, &[2.0])],
        )
        .unwrap();
        let late = t
            .apply(
                "pump-1",
                3,
                Some(30_000),
                vec![delta(WindowKind::Tumbling, 0, 60_000, &[3.0])],
            )
            .unwrap();
        assert_eq!((late[0].window.version, late[0].late), (2, true));
        assert_eq!(late[0].window.corrections, 1);
        assert_eq!(late[0].window.agg.count(), 2);
        // Another device's clock is its own: its first minute is not late.
        let other = t
            .apply(
                "fan-1",
                1,
                Some(10_000),
                vec![delta(WindowKind::Tumbling, 0, 60_000, &[5.0])],
            )
            .unwrap();
        assert!(!other[0].late);
    }

    #[test]
    fn a_session_that_bridges_two_absorbs_both() {
        let mut t = WindowTable::new();
        t.apply(
            "d",
            1,
            None,
            vec![delta(WindowKind::Session, 0, 10_000, &[1.0])],
        );
        t.apply(
            "d",
            2,
            None,
            vec![delta(WindowKind::Session, 30_000, 40_000, &[2.0])],
        );
        assert_eq!(
            t.windows("d", "bearing", "vibration", WindowKind::Session)
                .len(),
            2
        );
        // A reading at 20 s with a 10 s gap: [20 s, 30 s) touches neither [0, 10 s) nor [30 s, 40 s).
        t.apply(
            "d",
            3,
            None,
            vec![delta(WindowKind::Session, 20_000, 30_000, &[3.0])],
        );
        assert_eq!(
            t.windows("d", "bearing", "vibration", WindowKind::Session)
                .len(),
            3
        );
        // [9 s, 21 s) overlaps the first and the third, and merges them; the second stays.
        let up = t
            .apply(
                "d",
                4,
                None,
                vec![delta(WindowKind::Session, 9_000, 21_000, &[4.0])],
            )
            .unwrap();
        assert_eq!((up[0].window.start_ms, up[0].window.end_ms), (0, 30_000));
        assert_eq!(up[0].absorbed, [20_000]);
        let left = t.windows("d", "bearing", "vibration", WindowKind::Session);
        let spans: Vec<(i64, i64, u64)> = left
            .iter()
            .map(|s| (s.start_ms, s.end_ms, s.agg.count()))
            .collect();
        assert_eq!(spans, [(0, 30_000, 3), (30_000, 40_000, 1)]);
    }
}
