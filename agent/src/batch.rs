//! The batcher: gathers readings into a columnar [`TelemetryBatch`] (one [`Series`] per sensor
//! and metric) until it holds `max_readings` readings, its oldest reading is `max_age` old, or
//! one more reading would make its message larger than `target_bytes` (or `max_bytes`, if that
//! is smaller).
//!
//! The defaults fill AWS IoT Core's billing unit: IoT Core meters a publish as its topic plus
//! payload in 5 KB units, so a batch cut well below 5 KB pays for bytes it does not send, and one
//! cut above it pays for a second unit. At low rates the age limit (a minute by default) cuts
//! first, at high rates the size: 10 series at 1 Hz make one ~2.4 KB message a minute, 3 series
//! at 1 kHz about three 4.8 KB messages a second.
//!
//! It is pure: the caller passes the current instant, so tests need no clock, and it hands a
//! full batch back rather than sending it anywhere (the sampler decides where it goes).
//!
//! Size: the message of a batch is measured as the protocol's worst case for it (longest
//! device id, largest sequence number: [`TelemetryBatch::max_message_len`]), so the writer can
//! number it freely. Measuring is cheap until the batch could possibly be near the limit: the
//! batcher first adds up [`Series::encoded_len_bound`] (O(1) per series), and only past the
//! limit does it encode, and then only the series that changed since it last measured.

use std::num::NonZeroUsize;
use std::time::Duration;

use osprey_protocol::{Series, TelemetryBatch, MAX_MESSAGE_BYTES};
use tokio::time::Instant;

use crate::reading::Reading;

/// Smallest allowed [`BatchLimits::max_bytes`]: room for one reading with the longest names
/// the protocol allows, so that every reading fits into some batch.
pub const MIN_BATCH_BYTES: usize = 1024;

/// Default [`BatchLimits::target_bytes`]: a telemetry message and its topic fit one 5 KB unit
/// of AWS IoT Core's metering whether that unit is 5,000 or 5,120 bytes, with room for a topic of
/// up to 200 bytes (the longest device id makes 148). Messages are measured for the longest device
/// id and sequence number, so real ones are smaller still.
pub const DEFAULT_TARGET_BYTES: usize = 4_800;

/// Default and largest [`BatchLimits::max_bytes`]: the protocol's message limit (128 KiB, AWS
/// IoT Core's payload limit).
pub const DEFAULT_BATCH_BYTES: usize = MAX_MESSAGE_BYTES;

/// When a batch is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Cut the batch when it holds this many readings.
    pub max_readings: NonZeroUsize,
    /// ... or when its oldest reading is this old.
    pub max_age: Duration,
    /// ... or before its encoded message would grow past this many bytes: the hard limit on
    /// every message the agent sends, backlog bundles included
    /// ([`MIN_BATCH_BYTES`]`..=`[`DEFAULT_BATCH_BYTES`]).
    pub max_bytes: usize,
    /// ... or before its encoded message would grow past this many bytes: the size a telemetry
    /// batch aims for ([`DEFAULT_TARGET_BYTES`], one IoT Core billing unit). Bundles of waiting
    /// entries ignore it; a value above `max_bytes` means `max_bytes`.
    pub target_bytes: usize,
}

/// Accumulates readings into a batch.
#[derive(Debug)]
pub struct Batcher {
    limits: BatchLimits,
    batch: TelemetryBatch,
    /// Encoded size of each series of `batch` when last measured; `None` once it changed.
    sizes: Vec<Option<usize>>,
    readings: usize,
    /// When the first reading of the current batch arrived.
    opened: Option<Instant>,
}

impl Batcher {
    /// An empty batcher. A `max_bytes` or `target_bytes` outside
    /// [`MIN_BATCH_BYTES`]`..=`[`DEFAULT_BATCH_BYTES`] is clamped into that range (the config
    /// loader rejects such values first).
    pub fn new(mut limits: BatchLimits) -> Batcher {
        limits.max_bytes = limits.max_bytes.clamp(MIN_BATCH_BYTES, DEFAULT_BATCH_BYTES);
        limits.target_bytes = limits
            .target_bytes
            .clamp(MIN_BATCH_BYTES, DEFAULT_BATCH_BYTES);
        Batcher {
            limits,
            batch: TelemetryBatch::default(),
            sizes: Vec::new(),
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

    /// Adds a reading that arrived at `now`; returns the batch if this filled it. When the
    /// reading would push the message past `max_bytes`, the batch is returned without it and
    /// the reading opens the next batch.
    pub fn push(&mut self, reading: &Reading, now: Instant) -> Option<TelemetryBatch> {
        let i = self.add(reading, now);
        if !self.fits() {
            self.remove_last(i);
            let full = self.take();
            self.add(reading, now);
            return full;
        }
        if self.readings >= self.limits.max_readings.get() {
            self.take()
        } else {
            None
        }
    }

    /// Appends the reading to its series (a new one if needed); returns the series' index.
    fn add(&mut self, reading: &Reading, now: Instant) -> usize {
        let i = match self
            .batch
            .series
            .iter()
            .position(|s| s.sensor == reading.sensor && s.metric == reading.metric)
        {
            Some(i) => i,
            None => {
                self.batch.series.push(Series::new(
                    &reading.sensor,
                    &reading.metric,
                    &reading.unit,
                ));
                self.sizes.push(None);
                self.batch.series.len() - 1
            }
        };
        self.batch.series[i].push(reading.time_ms, reading.value);
        self.sizes[i] = None;
        self.readings += 1;
        self.opened.get_or_insert(now);
        i
    }

    /// Undoes the last [`Batcher::add`], which went to series `i`.
    fn remove_last(&mut self, i: usize) {
        let series = &mut self.batch.series[i];
        series.pop();
        self.sizes[i] = None;
        if series.values.is_empty() {
            self.batch.series.remove(i);
            self.sizes.remove(i);
        }
        self.readings -= 1;
    }

    /// Most bytes of a batch's message: the smaller of `target_bytes` and `max_bytes`.
    fn cut_bytes(&self) -> usize {
        self.limits.target_bytes.min(self.limits.max_bytes)
    }

    /// Whether the current batch's message is within [`Batcher::cut_bytes`].
    fn fits(&mut self) -> bool {
        let count = self.batch.series.len();
        let bound: usize = self
            .batch
            .series
            .iter()
            .map(Series::encoded_len_bound)
            .sum();
        if TelemetryBatch::message_len_max(count, bound) <= self.cut_bytes() {
            return true;
        }
        let mut exact = 0;
        for (series, size) in self.batch.series.iter().zip(&mut self.sizes) {
            exact += *size.get_or_insert_with(|| series.encoded_len());
        }
        TelemetryBatch::message_len_max(count, exact) <= self.cut_bytes()
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
        self.sizes.clear();
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
            max_bytes: DEFAULT_BATCH_BYTES,
            target_bytes: DEFAULT_BATCH_BYTES,
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

    /// Feeds `readings` through a batcher with `max_bytes`, flushing at the end.
    fn run(readings: &[Reading], max_readings: usize, max_bytes: usize) -> Vec<TelemetryBatch> {
        run_with(
            readings,
            BatchLimits {
                max_bytes,
                ..limits(max_readings, 60_000)
            },
        )
    }

    /// Feeds `readings` through a batcher with `limits`, all at one instant, flushing at the end.
    fn run_with(readings: &[Reading], limits: BatchLimits) -> Vec<TelemetryBatch> {
        let now = Instant::now();
        let mut b = Batcher::new(limits);
        let mut out: Vec<TelemetryBatch> = readings.iter().filter_map(|r| b.push(r, now)).collect();
        out.extend(b.take());
        out
    }

    fn flatten(batches: &[TelemetryBatch]) -> Vec<(String, i64, u64)> {
        batches
            .iter()
            .flat_map(|b| &b.series)
            .flat_map(|s| {
                s.readings()
                    .map(|(t, v)| (s.metric.clone(), t, v.to_bits()))
            })
            .collect()
    }

    /// Readings of three series whose values defeat the compact forms now and then, so that
    /// sizes jump around.
    fn mixed_readings(n: usize) -> Vec<Reading> {
        (0..n)
            .map(|i| {
                let t = 1_700_000_000_000 + (i / 3) as i64 * 1000 + (i % 7) as i64;
                match i % 3 {
                    0 => Reading::new(
                        "bearing",
                        "temperature",
                        "Cel",
                        t,
                        (4000 + i % 50) as f64 / 100.0,
                    ),
                    1 => Reading::new(
                        "motor",
                        "current",
                        "A",
                        t,
                        if i % 11 == 0 { 0.1 + 0.2 } else { 12.5 },
                    ),
                    _ => Reading::new("hub", "accel", "m/s2", t, (i as f64).sin()),
                }
            })
            .collect()
    }

    #[test]
    fn byte_limit_cuts_batches_that_fit_and_keep_every_reading_in_order() {
        let readings = mixed_readings(3000);
        for max_bytes in [MIN_BATCH_BYTES, 1500, 4096, 8000] {
            let batches = run(&readings, 4096, max_bytes);
            assert!(batches.len() > 1, "{max_bytes}: one batch");
            for b in &batches {
                let size = b.max_message_len();
                assert!(size <= max_bytes, "{max_bytes}: a batch makes {size} bytes");
                // The real encoding (any device id, any seq) stays within it too.
                let msg = osprey_protocol::Envelope::new(
                    &"d".repeat(128),
                    u64::MAX,
                    osprey_protocol::Body::Telemetry(b.clone()),
                );
                assert!(msg.encode_with_limit(max_bytes).is_ok());
            }
            // Batches are not cut much earlier than needed: all but the last are over half full.
            for b in &batches[..batches.len() - 1] {
                assert!(
                    b.max_message_len() > max_bytes / 2,
                    "{max_bytes}: {}",
                    b.max_message_len()
                );
            }
            let mut want = vec![TelemetryBatch::default()];
            for r in &readings {
                let w = &mut want[0];
                match w.series.iter_mut().find(|s| s.metric == r.metric) {
                    Some(s) => s.push(r.time_ms, r.value),
                    None => {
                        let mut s = Series::new(&r.sensor, &r.metric, &r.unit);
                        s.push(r.time_ms, r.value);
                        w.series.push(s);
                    }
                }
            }
            // Per series, the readings come out in the order they went in, none lost.
            for metric in ["temperature", "current", "accel"] {
                let pick = |b: &[TelemetryBatch]| -> Vec<(String, i64, u64)> {
                    flatten(b).into_iter().filter(|r| r.0 == metric).collect()
                };
                assert_eq!(pick(&batches), pick(&want), "{max_bytes}: {metric}");
            }
            assert_eq!(
                batches
                    .iter()
                    .map(TelemetryBatch::reading_count)
                    .sum::<usize>(),
                readings.len()
            );
        }
    }

    #[test]
    fn byte_limit_is_clamped_to_the_allowed_range() {
        let b = Batcher::new(BatchLimits {
            max_bytes: 10,
            ..limits(10, 1000)
        });
        assert_eq!(b.limits.max_bytes, MIN_BATCH_BYTES);
        let b = Batcher::new(BatchLimits {
            max_bytes: usize::MAX,
            ..limits(10, 1000)
        });
        assert_eq!(b.limits.max_bytes, DEFAULT_BATCH_BYTES);
    }

    /// The message a batch makes for a device with a short id, as sent.
    fn sent_len(batch: &TelemetryBatch) -> usize {
        osprey_protocol::Envelope::new("gw-1", 1, osprey_protocol::Body::Telemetry(batch.clone()))
            .encode()
            .unwrap()
            .len()
    }

    #[test]
    fn the_target_cuts_below_the_hard_limit_and_the_smaller_of_the_two_wins() {
        let readings: Vec<Reading> = (0..3000)
            .flat_map(|t| sample(1_700_000_000_000 + t * 1000))
            .collect();
        let target = |target_bytes, max_bytes| BatchLimits {
            target_bytes,
            max_bytes,
            ..limits(4096, 3_600_000)
        };
        let aimed = run_with(&readings, target(DEFAULT_TARGET_BYTES, DEFAULT_BATCH_BYTES));
        assert!(aimed.len() > 2, "{} batches", aimed.len());
        for b in &aimed[..aimed.len() - 1] {
            let size = sent_len(b);
            assert!(size <= DEFAULT_TARGET_BYTES, "a batch makes {size} bytes");
            assert!(
                size > DEFAULT_TARGET_BYTES * 3 / 4,
                "a batch cut early: {size} bytes"
            );
        }
        let hard = run_with(&readings, target(DEFAULT_TARGET_BYTES, 2000));
        assert!(hard.len() > aimed.len());
        assert!(hard.iter().all(|b| sent_len(b) <= 2000));
        let total =
            |bs: &[TelemetryBatch]| bs.iter().map(TelemetryBatch::reading_count).sum::<usize>();
        assert_eq!(total(&aimed), readings.len());
        assert_eq!(total(&hard), readings.len());
    }

    #[test]
    fn by_default_a_slow_gateway_sends_a_minute_in_one_message_within_one_billing_unit() {
        let defaults = crate::config::default_batch_limits();
        let mut b = Batcher::new(defaults);
        let start = Instant::now();
        let mut sent = Vec::new();
        // 10 series at 1 Hz for 3 minutes, the age limit checked each second as the sampler does.
        for s in 0..180u64 {
            let now = start + Duration::from_secs(s);
            if b.is_due(now) {
                sent.extend(b.take());
            }
            for k in 0..10 {
                let r = Reading::new(
                    &format!("s{k}"),
                    "temperature",
                    "Cel",
                    1_700_000_000_000 + s as i64 * 1000,
                    20.0 + (s % 7) as f64 * 0.1,
                );
                sent.extend(b.push(&r, now));
            }
        }
        assert_eq!(sent.len(), 2, "two full minutes");
        for batch in &sent {
            assert_eq!(batch.reading_count(), 600);
            assert!(sent_len(batch) < DEFAULT_TARGET_BYTES);
        }
    }
}
