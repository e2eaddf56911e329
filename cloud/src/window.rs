//! Event-time windows per device: each reading lands in the windows of its own timestamp.
//!
//! Three kinds, all per (device, sensor, metric) and all in event time:
//!
//! | kind | windows | a reading at `t` belongs to |
//! |---|---|---|
//! | tumbling | `[k·L, (k+1)·L)`, aligned to the Unix epoch (`L` = [`WINDOW_MS`] by default) | one window |
//! | hopping | `[k·S, k·S + H)` for size `H`, slide `S` (`H` a multiple of `S`) | `H / S` windows |
//! | session | from a reading to the last reading before a silence of at least the gap `G`; `[first, last + G)` | one session; two sessions closer than `G` merge |
//!
//! A batch becomes a list of [`WindowDelta`]s: what the batch adds to each window it touches.
//! Deltas carry an [`Aggregate`], which merges, so the store folds a delta into what it holds
//! whenever the delta arrives: data that comes late (a gateway backfilling after an outage)
//! corrects its window instead of being dropped, and the window's version goes up.
//!
//! Readings that are not finite (NaN, ±∞) are left out of the windows: one NaN would turn a
//! window's sum into NaN forever. They still count as received readings on the device.

pub mod table;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;

use osprey_protocol::TelemetryBatch;

pub use crate::analytics::Aggregate;

/// Length of the tumbling windows the pipeline keeps by default: one minute.
pub const WINDOW_MS: NonZeroU32 = match NonZeroU32::new(60_000) {
    Some(len) => len,
    None => unreachable!(),
};

/// Most hopping windows one reading may belong to (`size / slide`).
pub const MAX_HOPS: u32 = 60;

/// The kind of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// Fixed, non-overlapping, epoch-aligned.
    Tumbling,
    /// Fixed size, overlapping, starting every slide.
    Hopping,
    /// Bounded by silences of at least the session gap.
    Session,
}

impl WindowKind {
    /// The name stored and shown in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            WindowKind::Tumbling => "tumbling",
            WindowKind::Hopping => "hopping",
            WindowKind::Session => "session",
        }
    }

    /// Every kind.
    pub const ALL: [WindowKind; 3] = [
        WindowKind::Tumbling,
        WindowKind::Hopping,
        WindowKind::Session,
    ];

    /// The kind named `name` (as [`WindowKind::as_str`] writes it).
    pub fn parse(name: &str) -> Option<WindowKind> {
        WindowKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for WindowKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Hopping windows: `size_ms` long, one starting every `slide_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hopping {
    /// Window length.
    pub size_ms: NonZeroU32,
    /// Distance between window starts; divides `size_ms`.
    pub slide_ms: NonZeroU32,
}

/// Why a window configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WindowSpecError {
    /// The hop size is not a whole number of slides.
    #[error(
        "hopping window size {size_ms} ms is not a multiple of its slide {slide_ms} ms; \
         pick a size that is (e.g. 5m/1m)"
    )]
    HopNotMultiple {
        /// Size given.
        size_ms: u32,
        /// Slide given.
        slide_ms: u32,
    },
    /// A reading would belong to too many hopping windows.
    #[error(
        "hopping window size {size_ms} ms over slide {slide_ms} ms puts each reading in more \
         than {MAX_HOPS} windows; use a longer slide"
    )]
    TooManyHops {
        /// Size given.
        size_ms: u32,
        /// Slide given.
        slide_ms: u32,
    },
}

/// Which windows the pipeline computes. Tumbling windows are always on (the fleet view and
/// the signals read them); hopping and session windows are optional.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSpec {
    tumbling_ms: NonZeroU32,
    hopping: Option<Hopping>,
    session_gap_ms: Option<NonZeroU32>,
}

impl Default for WindowSpec {
    fn default() -> WindowSpec {
        WindowSpec {
            tumbling_ms: WINDOW_MS,
            hopping: None,
            session_gap_ms: None,
        }
    }
}

impl WindowSpec {
    /// Tumbling windows of `tumbling_ms`, optional hopping windows, optional sessions.
    pub fn new(
        tumbling_ms: NonZeroU32,
        hopping: Option<Hopping>,
        session_gap_ms: Option<NonZeroU32>,
    ) -> Result<WindowSpec, WindowSpecError> {
        if let Some(h) = hopping {
            let (size_ms, slide_ms) = (h.size_ms.get(), h.slide_ms.get());
            if size_ms % slide_ms != 0 {
                return Err(WindowSpecError::HopNotMultiple { size_ms, slide_ms });
            }
            if size_ms / slide_ms > MAX_HOPS {
                return Err(WindowSpecError::TooManyHops { size_ms, slide_ms });
            }
        }
        Ok(WindowSpec {
            tumbling_ms,
            hopping,
            session_gap_ms,
        })
    }

    /// Tumbling window length.
    pub fn tumbling_ms(&self) -> NonZeroU32 {
        self.tumbling_ms
    }

    /// Hopping windows, if on.
    pub fn hopping(&self) -> Option<Hopping> {
        self.hopping
    }

    /// Session gap, if sessions are on.
    pub fn session_gap_ms(&self) -> Option<NonZeroU32> {
        self.session_gap_ms
    }
}

/// What one batch adds to one window of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowDelta {
    /// Sensor name.
    pub sensor: String,
    /// Metric name.
    pub metric: String,
    /// Unit of the values (as the batch gave it; may be empty).
    pub unit: String,
    /// Kind of window.
    pub kind: WindowKind,
    /// Window start, inclusive, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// Window end, exclusive (for a session: its last reading plus the gap).
    pub end_ms: i64,
    /// The values' aggregate.
    pub agg: Aggregate,
}

/// Start of the window of length `len_ms` that holds `time_ms` (windows are aligned to the
/// epoch; times before 1970 round down too; the few nonsense times whose window would start
/// before `i64::MIN` get `i64::MIN`).
pub fn window_start(time_ms: i64, len_ms: NonZeroU32) -> i64 {
    let len = i64::from(len_ms.get());
    time_ms.saturating_sub(time_ms.rem_euclid(len))
}

/// The one-minute tumbling window deltas of a telemetry batch, ordered by sensor, metric and
/// start.
pub fn aggregate(batch: &TelemetryBatch) -> Vec<WindowDelta> {
    aggregate_spec(batch, &WindowSpec::default())
}

/// The tumbling window deltas of a batch for windows of `len_ms`.
pub fn aggregate_with(batch: &TelemetryBatch, len_ms: NonZeroU32) -> Vec<WindowDelta> {
    let spec = WindowSpec {
        tumbling_ms: len_ms,
        ..WindowSpec::default()
    };
    aggregate_spec(batch, &spec)
}

type Key<'a> = (&'a str, &'a str, WindowKind, i64);

struct Deltas<'a> {
    out: BTreeMap<Key<'a>, WindowDelta>,
}

impl<'a> Deltas<'a> {
    fn merge(&mut self, unit: &str, key: Key<'a>, end_ms: i64, agg: Aggregate) {
        match self.out.get_mut(&key) {
            Some(d) => d.agg.merge(&agg),
            None => {
                let (sensor, metric, kind, start_ms) = key;
                self.out.insert(
                    key,
                    WindowDelta {
                        sensor: sensor.to_owned(),
                        metric: metric.to_owned(),
                        unit: unit.to_owned(),
                        kind,
                        start_ms,
                        end_ms,
                        agg,
                    },
                );
            }
        }
    }
}

/// The window deltas of a telemetry batch under `spec`, ordered by sensor, metric, kind and
/// start. A series that appears twice in the batch is merged (the first unit wins); two
/// sessions of the same series in one batch are merged when they are closer than the gap.
pub fn aggregate_spec(batch: &TelemetryBatch, spec: &WindowSpec) -> Vec<WindowDelta> {
    let mut deltas = Deltas {
        out: BTreeMap::new(),
    };
    let tumbling = i64::from(spec.tumbling_ms.get());
    for series in &batch.series {
        let (sensor, metric) = (series.sensor.as_str(), series.metric.as_str());
        // Readings of a series are in time order, so consecutive ones mostly share a window:
        // fold into the current window and hand it over when the window changes.
        let mut current: Option<(i64, Aggregate)> = None;
        for (time_ms, value) in series.readings() {
            if !value.is_finite() {
                continue;
            }
            let start = window_start(time_ms, spec.tumbling_ms);
            match &mut current {
                Some((s, agg)) if *s == start => agg.add(value),
                _ => {
                    if let Some((s, agg)) = current.take() {
                        let key = (sensor, metric, WindowKind::Tumbling, s);
                        deltas.merge(&series.unit, key, s.saturating_add(tumbling), agg);
                    }
                    let mut agg = Aggregate::new();
                    agg.add(value);
                    current = Some((start, agg));
                }
            }
        }
        if let Some((s, agg)) = current {
            let key = (sensor, metric, WindowKind::Tumbling, s);
            deltas.merge(&series.unit, key, s.saturating_add(tumbling), agg);
        }
        if let Some(hop) = spec.hopping {
            add_hopping(&mut deltas, series, hop);
        }
    }
    if let Some(gap) = spec.session_gap_ms {
        add_sessions(&mut deltas, batch, gap);
    }
    deltas.out.into_values().collect()
}

/// Starts of the hopping windows holding `time_ms`, latest first.
pub fn hop_starts(time_ms: i64, hop: Hopping) -> impl Iterator<Item = i64> {
    let slide = i64::from(hop.slide_ms.get());
    let last = window_start(time_ms, hop.slide_ms);
    (0..i64::from(hop.size_ms.get() / hop.slide_ms.get()))
        .map(move |k| last.saturating_sub(k * slide))
}

fn add_hopping<'a>(deltas: &mut Deltas<'a>, series: &'a osprey_protocol::Series, hop: Hopping) {
    let size = i64::from(hop.size_ms.get());
    let mut windows: BTreeMap<i64, Aggregate> = BTreeMap::new();
    for (time_ms, value) in series.readings() {
        if !value.is_finite() {
            continue;
        }
        for start in hop_starts(time_ms, hop) {
            windows.entry(start).or_default().add(value);
        }
    }
    for (start, agg) in windows {
        let key = (
            series.sensor.as_str(),
            series.metric.as_str(),
            WindowKind::Hopping,
            start,
        );
        deltas.merge(&series.unit, key, start.saturating_add(size), agg);
    }
}

fn add_sessions<'a>(deltas: &mut Deltas<'a>, batch: &'a TelemetryBatch, gap: NonZeroU32) {
    let gap = i64::from(gap.get());
    // (sensor, metric) -> (first unit, finite readings)
    type BySeries<'b> = BTreeMap<(&'b str, &'b str), (&'b str, Vec<(i64, f64)>)>;
    let mut by_series: BySeries<'_> = BTreeMap::new();
    for series in &batch.series {
        let entry = by_series
            .entry((series.sensor.as_str(), series.metric.as_str()))
            .or_insert((series.unit.as_str(), Vec::new()));
        entry
            .1
            .extend(series.readings().filter(|(_, v)| v.is_finite()));
    }
    for ((sensor, metric), (unit, mut readings)) in by_series {
        readings.sort_by_key(|&(t, _)| t);
        let mut session: Option<(i64, i64, Aggregate)> = None;
        for (t, v) in readings {
            match &mut session {
                Some((_, last, agg)) if t.saturating_sub(*last) < gap => {
                    *last = t;
                    agg.add(v);
                }
                _ => {
                    if let Some((first, last, agg)) = session.take() {
                        let key = (sensor, metric, WindowKind::Session, first);
                        deltas.merge(unit, key, last.saturating_add(gap), agg);
                    }
                    let mut agg = Aggregate::new();
                    agg.add(v);
                    session = Some((t, t, agg));
                }
            }
        }
        if let Some((first, last, agg)) = session {
            let key = (sensor, metric, WindowKind::Session, first);
            deltas.merge(unit, key, last.saturating_add(gap), agg);
        }
    }
}
#[cfg(test)]
mod tests {
    use osprey_protocol::Series;

    use super::*;

    const T0: i64 = 1_700_000_020_000; // 40 s into a minute

    fn cs(d: &WindowDelta) -> (u64, f64, f64, f64) {
        let m = &d.agg.moments;
        (m.count, m.sum, m.min, m.max)
    }

    fn series(sensor: &str, metric: &str, readings: &[(i64, f64)]) -> Series {
        let mut s = Series::new(sensor, metric, "Cel");
        for &(t, v) in readings {
            s.push(t, v);
        }
        s
    }

    #[test]
    fn readings_split_at_minute_boundaries_by_event_time() {
        let batch = TelemetryBatch {
            series: vec![series(
                "bearing",
                "temperature",
                &[
                    (T0, 40.0),
                    (T0 + 10_000, 42.0),
                    (T0 + 20_000, 50.0),
                    (T0 + 30_000, 44.0),
                ],
            )],
        };
        let got = aggregate(&batch);
        assert_eq!(got.len(), 2);
        let (a, b) = (&got[0], &got[1]);
        assert_eq!(a.start_ms, 1_699_999_980_000);
        assert_eq!(a.end_ms, 1_700_000_040_000);
        assert_eq!(cs(a), (2, 82.0, 40.0, 42.0));
        assert_eq!(a.agg.moments.mean(), Some(41.0));
        assert_eq!(b.start_ms, 1_700_000_040_000);
        assert_eq!(cs(b), (2, 94.0, 44.0, 50.0));
        assert_eq!(a.unit, "Cel");
    }

    #[test]
    fn series_are_kept_apart_and_ordered() {
        let batch = TelemetryBatch {
            series: vec![
                series("motor", "current", &[(T0, 3.0)]),
                series("bearing", "temperature", &[(T0, 40.0)]),
                series("bearing", "vibration", &[(T0, 0.5)]),
            ],
        };
        let names: Vec<(String, String)> = aggregate(&batch)
            .into_iter()
            .map(|w| (w.sensor, w.metric))
            .collect();
        assert_eq!(
            names,
            [
                ("bearing".into(), "temperature".into()),
                ("bearing".into(), "vibration".into()),
                ("motor".into(), "current".into()),
            ]
        );
    }

    #[test]
    fn a_series_repeated_in_one_batch_merges() {
        let batch = TelemetryBatch {
            series: vec![
                series("bearing", "temperature", &[(T0, 40.0)]),
                series("bearing", "temperature", &[(T0 + 1_000, 30.0)]),
            ],
        };
        let got = aggregate(&batch);
        assert_eq!(got.len(), 1);
        assert_eq!(
            (cs(&got[0]).0, cs(&got[0]).2, cs(&got[0]).3),
            (2, 30.0, 40.0)
        );
    }

    #[test]
    fn non_finite_values_are_left_out() {
        let batch = TelemetryBatch {
            series: vec![series(
                "bearing",
                "temperature",
                &[(T0, f64::NAN), (T0 + 1, 41.0), (T0 + 2, f64::INFINITY)],
            )],
        };
        let got = aggregate(&batch);
        assert_eq!(got.len(), 1);
        assert_eq!((cs(&got[0]).0, cs(&got[0]).1), (1, 41.0));

        let only_nan = TelemetryBatch {
            series: vec![series("bearing", "temperature", &[(T0, f64::NAN)])],
        };
        assert!(aggregate(&only_nan).is_empty());
    }

    #[test]
    fn windows_align_to_the_epoch_before_1970_too() {
        let len = WINDOW_MS;
        assert_eq!(window_start(0, len), 0);
        assert_eq!(window_start(59_999, len), 0);
        assert_eq!(window_start(60_000, len), 60_000);
        assert_eq!(window_start(-1, len), -60_000);
        assert_eq!(window_start(i64::MIN, len), i64::MIN);
        assert_eq!(
            window_start(i64::MAX, len),
            i64::MAX - i64::MAX.rem_euclid(60_000)
        );
    }

    #[test]
    fn empty_batch_gives_no_windows() {
        assert!(aggregate(&TelemetryBatch::default()).is_empty());
    }

    fn spec(hop: Option<(u32, u32)>, gap: Option<u32>) -> WindowSpec {
        let nz = |v: u32| NonZeroU32::new(v).unwrap();
        WindowSpec::new(
            WINDOW_MS,
            hop.map(|(size, slide)| Hopping {
                size_ms: nz(size),
                slide_ms: nz(slide),
            }),
            gap.map(nz),
        )
        .unwrap()
    }

    #[test]
    fn a_reading_lands_in_every_hopping_window_that_covers_it() {
        let batch = TelemetryBatch {
            series: vec![series(
                "bearing",
                "temperature",
                &[(T0, 1.0), (T0 + 25_000, 2.0)],
            )],
        };
        let got: Vec<(i64, u64)> = aggregate_spec(&batch, &spec(Some((30_000, 10_000)), None))
            .into_iter()
            .filter(|d| d.kind == WindowKind::Hopping)
            .map(|d| {
                assert_eq!(d.end_ms - d.start_ms, 30_000);
                (d.start_ms - T0, d.agg.count())
            })
            .collect();
        // T0 is in [T0-20s, T0+10s), [T0-10s, +20s), [T0, +30s); T0+25s in [T0, …), [+10s, …), [+20s, …).
        assert_eq!(
            got,
            [(-20_000, 1), (-10_000, 1), (0, 2), (10_000, 1), (20_000, 1)]
        );
    }

    #[test]
    fn sessions_split_at_silences_of_at_least_the_gap() {
        let batch = TelemetryBatch {
            series: vec![
                series("bearing", "temperature", &[(T0, 1.0), (T0 + 4_999, 2.0)]),
                // Out of order across the two series entries: still one sorted session set.
                series(
                    "bearing",
                    "temperature",
                    &[(T0 + 9_998, 3.0), (T0 + 20_000, 4.0)],
                ),
            ],
        };
        let got: Vec<(i64, i64, u64)> = aggregate_spec(&batch, &spec(None, Some(5_000)))
            .into_iter()
            .filter(|d| d.kind == WindowKind::Session)
            .map(|d| (d.start_ms - T0, d.end_ms - T0, d.agg.count()))
            .collect();
        assert_eq!(got, [(0, 14_998, 3), (20_000, 25_000, 1)]);
    }

    #[test]
    fn bad_hopping_specs_are_refused_with_the_reason() {
        let nz = |v: u32| NonZeroU32::new(v).unwrap();
        let hop = |size, slide| Hopping {
            size_ms: nz(size),
            slide_ms: nz(slide),
        };
        assert!(matches!(
            WindowSpec::new(WINDOW_MS, Some(hop(25_000, 10_000)), None),
            Err(WindowSpecError::HopNotMultiple { .. })
        ));
        let err = WindowSpec::new(WINDOW_MS, Some(hop(61_000, 1_000)), None).unwrap_err();
        assert!(err.to_string().contains("longer slide"), "{err}");
    }
}
