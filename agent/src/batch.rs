//! The batcher: gathers readings into a columnar [`TelemetryBatch`] (one [`Series`] per sensor
//! and metric) until it holds `max_readings` readings or its oldest reading is `max_age` old.
//!
//! It is pure: the caller passes the current instant, so tests need no clock, and it hands a
//! full batch back rather than sending it anywhere (the sampler decides where it goes).

use std::num::NonZeroUsize;
use std::time::Duration;

use osprey_protocol::{Series, TelemetryBatch};
use tokio::time::Instant;

use crate::reading::Reading;

/// When a batch is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Cut the batch when it holds this many readings.
    pub max_readings: NonZeroUsize,
    /// ... or when its oldest reading is this old.
    pub max_age: Duration,
}

/// Accumulates readings into a batch.
#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    batch: TelemetryBatch,
    readings: usize,
    /// When the first reading of the current batch arrived.
    opened: Option<Instant>,
}

impl Batcher {
    /// An empty batcher.
    pub fn new(limits: BatchLimits) -> Batcher {
        Batcher {
            limits,
            batch: TelemetryBatch::default(),
            readings: 0,
            opened: None,
        }
    }

    /// Readings in the current batch.
    pub fn len(&self) -> usize {
        self.readings
    }

    /// Whether the current batch is empty.
    pub fn is_empty(&self) -> bool {
        self.readings == 0
    }

    /// Adds a reading that arrived at `now`; returns the batch if this filled it.
    pub fn push(&mut self, reading: &Reading, now: Instant) -> Option<TelemetryBatch> {
        let series = match self
            .batch
            .series
            .iter()
            .position(|s| s.sensor == reading.sensor && s.metric == reading.metric)
        {
            Some(i) => &mut self.batch.series[i],
            None => {
                self.batch.series.push(Series::new(
                    &reading.sensor,
                    &reading.metric,
                    &reading.unit,
                ));
                let last = self.batch.series.len() - 1;
                &mut self.batch.series[last]
            }
        };
        series.push(reading.time_ms, reading.value);
        self.readings += 1;
        self.opened.get_or_insert(now);
        if self.readings >= self.limits.max_readings.get() {
            self.take()
        } else {
            None
        }
    }

    /// Whether the batch is non-empty and its oldest reading is at least `max_age` old.
    pub fn is_due(&self, now: Instant) -> bool {
        self.opened
            .is_some_and(|opened| now.saturating_duration_since(opened) >= self.limits.max_age)
    }

    /// When the current batch becomes due by age, if it holds anything.
    pub fn deadline(&self) -> Option<Instant> {
        self.opened.map(|opened| opened + self.limits.max_age)
    }

    /// Takes the current batch, if it holds any readings, and starts a new one. Used for the
    /// age limit and on shutdown.
    pub fn take(&mut self) -> Option<TelemetryBatch> {
        if self.readings == 0 {
            return None;
        }
        self.readings = 0;
        self.opened = None;
        Some(std::mem::take(&mut self.batch))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_readings: usize, max_age_ms: u64) -> BatchLimits {
        BatchLimits {
            max_readings: NonZeroUsize::new(max_readings).unwrap(),
            max_age: Duration::from_millis(max_age_ms),
        }
    }

    fn sample(t: i64) -> [Reading; 2] {
        [
            Reading::new("bearing", "temperature", "Cel", t, 40.0 + t as f64),
            Reading::new("motor", "current", "A", t, 12.0),
        ]
    }

    #[test]
    fn cuts_at_max_readings_with_one_series_per_metric() {
        let now = Instant::now();
        let mut b = Batcher::new(limits(4, 60_000));
        for r in sample(1000) {
            assert!(b.push(&r, now).is_none());
        }
        let [r1, r2] = sample(2000);
        assert!(b.push(&r1, now).is_none());
        let batch = b.push(&r2, now).expect("fourth reading fills the batch");
        assert_eq!(batch.reading_count(), 4);
        assert_eq!(batch.series.len(), 2);
        let temp = &batch.series[0];
        assert_eq!(
            (temp.sensor.as_str(), temp.unit.as_str()),
            ("bearing", "Cel")
        );
        assert_eq!(
            temp.readings().collect::<Vec<_>>(),
            [(1000, 1040.0), (2000, 2040.0)]
        );
        assert!(b.is_empty());
        assert!(b.take().is_none());
    }

    #[test]
    fn becomes_due_when_the_oldest_reading_reaches_max_age() {
        let t0 = Instant::now();
        let mut b = Batcher::new(limits(100, 5000));
        assert!(
            !b.is_due(t0 + Duration::from_secs(3600)),
            "empty is never due"
        );
        assert_eq!(b.deadline(), None);
        let [r, _] = sample(0);
        b.push(&r, t0);
        b.push(&r, t0 + Duration::from_millis(4000));
        assert!(!b.is_due(t0 + Duration::from_millis(4999)));
        assert!(b.is_due(t0 + Duration::from_millis(5000)));
        assert_eq!(b.deadline(), Some(t0 + Duration::from_millis(5000)));
        assert_eq!(b.take().map(|x| x.reading_count()), Some(2));
        // The age restarts with the next batch's first reading.
        b.push(&r, t0 + Duration::from_millis(6000));
        assert!(!b.is_due(t0 + Duration::from_millis(10_999)));
        assert!(b.is_due(t0 + Duration::from_millis(11_000)));
    }

    #[test]
    fn take_flushes_a_partial_batch_on_shutdown() {
        let mut b = Batcher::new(limits(100, 5000));
        let [r, _] = sample(7);
        b.push(&r, Instant::now());
        assert_eq!(b.len(), 1);
        let batch = b.take().unwrap();
        assert_eq!(batch.series[0].values, [47.0]);
    }
}
