//! Tumbling event-time windows: each reading lands in the window of its own timestamp.
//!
//! Windows are per (device, sensor, metric) and aligned to the Unix epoch, so a window is named
//! by its start alone and two batches that touch the same minute produce deltas for the same
//! window. The aggregates (count, sum, min, max) are mergeable: the store adds a delta to what it
//! already holds, so data that arrives late (a gateway backfilling after an outage) corrects its
//! window instead of being dropped. The mean is `sum / count`, computed when reading.
//!
//! Readings that are not finite (NaN, ±∞) are left out of the windows: one NaN would turn a
//! window's sum into NaN forever. They still count as received readings on the device.

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use osprey_protocol::TelemetryBatch;

/// Length of the windows the pipeline keeps: one minute.
pub const WINDOW_MS: NonZeroU32 = match NonZeroU32::new(60_000) {
    Some(len) => len,
    None => unreachable!(),
};

/// What one batch adds to one window of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowDelta {
    /// Sensor name.
    pub sensor: String,
    /// Metric name.
    pub metric: String,
    /// Unit of the values (as the batch gave it; may be empty).
    pub unit: String,
    /// Window start, inclusive, milliseconds since the Unix epoch.
    pub start_ms: i64,
    /// Window end, exclusive.
    pub end_ms: i64,
    /// Number of readings.
    pub count: u64,
    /// Sum of the values.
    pub sum: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
}

impl WindowDelta {
    /// Folds one more value into this delta.
    fn add(&mut self, value: f64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    /// Mean of the values (`None` for an empty delta).
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// Start of the window of length `len_ms` that holds `time_ms` (windows are aligned to the
/// epoch; times before 1970 round down too; the few nonsense times whose window would start
/// before `i64::MIN` get `i64::MIN`).
pub fn window_start(time_ms: i64, len_ms: NonZeroU32) -> i64 {
    let len = i64::from(len_ms.get());
    time_ms.saturating_sub(time_ms.rem_euclid(len))
}

/// The one-minute window deltas of a telemetry batch, ordered by sensor, metric and start.
pub fn aggregate(batch: &TelemetryBatch) -> Vec<WindowDelta> {
    aggregate_with(batch, WINDOW_MS)
}

/// The window deltas of a telemetry batch for windows of `len_ms`, ordered by sensor, metric
/// and start. A series that appears twice in the batch is merged (the first unit wins).
pub fn aggregate_with(batch: &TelemetryBatch, len_ms: NonZeroU32) -> Vec<WindowDelta> {
    let mut windows: BTreeMap<(&str, &str, i64), WindowDelta> = BTreeMap::new();
    for series in &batch.series {
        for (time_ms, value) in series.readings() {
            if !value.is_finite() {
                continue;
            }
            let start_ms = window_start(time_ms, len_ms);
            windows
                .entry((&series.sensor, &series.metric, start_ms))
                .or_insert_with(|| WindowDelta {
                    sensor: series.sensor.clone(),
                    metric: series.metric.clone(),
                    unit: series.unit.clone(),
                    start_ms,
                    end_ms: start_ms.saturating_add(i64::from(len_ms.get())),
                    count: 0,
                    sum: 0.0,
                    min: f64::INFINITY,
                    max: f64::NEG_INFINITY,
                })
                .add(value);
        }
    }
    windows.into_values().collect()
}

#[cfg(test)]
mod tests {
    use osprey_protocol::Series;

    use super::*;

    const T0: i64 = 1_700_000_020_000; // 40 s into a minute

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
        assert_eq!((a.count, a.sum, a.min, a.max), (2, 82.0, 40.0, 42.0));
        assert_eq!(a.mean(), Some(41.0));
        assert_eq!(b.start_ms, 1_700_000_040_000);
        assert_eq!((b.count, b.sum, b.min, b.max), (2, 94.0, 44.0, 50.0));
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
        assert_eq!((got[0].count, got[0].min, got[0].max), (2, 30.0, 40.0));
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
        assert_eq!((got[0].count, got[0].sum), (1, 41.0));

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
}
