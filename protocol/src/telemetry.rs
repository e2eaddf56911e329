//! Telemetry batches: readings stored column-wise per series, their compact wire form (see
//! [`crate::columns`] and `SPEC.md`), and splitting a batch so that every message fits a byte
//! limit.

use alloc::{borrow::ToOwned, string::String, vec::Vec};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::columns::{self, TimeForm};
use crate::error::EncodeError;
use crate::limit::{Limit, MAX_READINGS_PER_SERIES, MAX_SERIES_PER_BATCH};

/// The most bytes an envelope adds around a telemetry body, for any valid device id (128
/// bytes at most), any sequence number and any journal epoch: `a6`, `"v" 1`, `"k" 1`, `"d"` +
/// 130, `"q"` + 9, `"j"` + 9 (1.3), `"b"`. A body of `n` bytes makes a message of at most `n + ENVELOPE_OVERHEAD_MAX` bytes.
pub const ENVELOPE_OVERHEAD_MAX: usize = 1 + 3 + 3 + 132 + 11 + 11 + 2;

/// A batch of readings, stored column-wise per series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    /// One entry per (sensor, metric).
    #[serde(rename = "s")]
    pub series: Vec<Series>,
}

impl TelemetryBatch {
    /// Number of readings across all series.
    pub fn reading_count(&self) -> usize {
        self.series.iter().map(|s| s.values.len()).sum()
    }

    /// Checks the batch against the limits in [`crate::limit`] and that every series has as
    /// many time deltas as values.
    pub fn check(&self) -> Result<(), EncodeError> {
        let over = |(limit, found)| EncodeError::LimitExceeded { limit, found };
        Limit::SeriesPerBatch
            .check(self.series.len())
            .map_err(over)?;
        for s in &self.series {
            if s.dt_ms.len() != s.values.len() {
                return Err(EncodeError::RaggedSeries {
                    sensor: s.sensor.clone(),
                    metric: s.metric.clone(),
                    deltas: s.dt_ms.len(),
                    values: s.values.len(),
                });
            }
            s.check_limits().map_err(over)?;
            if last_time(s.t0_ms, &s.dt_ms).is_none() {
                return Err(EncodeError::TimeOutOfRange {
                    sensor: s.sensor.clone(),
                    metric: s.metric.clone(),
                });
            }
        }
        Ok(())
    }

    /// The size of the largest message this batch can make: its encoded size in an envelope
    /// with the longest device id and the largest sequence number. Exact for that worst case.
    pub fn max_message_len(&self) -> usize {
        TelemetryBatch::message_len_max(
            self.series.len(),
            self.series.iter().map(Series::encoded_len).sum(),
        )
    }

    /// [`TelemetryBatch::max_message_len`] of a batch of `series` series whose
    /// [`Series::encoded_len`]s add up to `series_bytes`: for callers that keep the sizes of
    /// the series they fill.
    pub fn message_len_max(series: usize, series_bytes: usize) -> usize {
        body_header_len(series) + series_bytes + ENVELOPE_OVERHEAD_MAX
    }

    /// Splits the batch into batches whose messages are each at most `limit` bytes, for any
    /// device id and sequence number, and within every count limit. Readings keep their order
    /// (series by series, and within a series); a series that does not fit is cut into
    /// consecutive parts, each under the same sensor, metric and unit. Nothing is dropped; an
    /// empty series is kept only when it is the only content. A batch that fits comes back
    /// whole, as one part.
    ///
    /// Fails with [`EncodeError::LimitTooSmall`] when one reading alone does not fit `limit`,
    /// and with [`EncodeError::RaggedSeries`] for a series with unequal columns.
    pub fn split_to_fit(&self, limit: usize) -> Result<Vec<TelemetryBatch>, EncodeError> {
        if let Some(s) = self.series.iter().find(|s| s.dt_ms.len() != s.values.len()) {
            return Err(EncodeError::RaggedSeries {
                sensor: s.sensor.clone(),
                metric: s.metric.clone(),
                deltas: s.dt_ms.len(),
                values: s.values.len(),
            });
        }
        if self.check().is_ok() && self.max_message_len() <= limit {
            return Ok(alloc::vec![self.clone()]);
        }
        let mut parts = Vec::new();
        let mut part = Part::default();
        for series in &self.series {
            let n = series.values.len();
            let mut start = 0;
            while start < n {
                let (taken, len) = part.fit(series, start, limit)?;
                if taken == 0 {
                    parts.push(part.take());
                    continue;
                }
                part.push(series.slice(start, start + taken), len);
                start += taken;
                if start < n {
                    parts.push(part.take());
                }
            }
        }
        if !part.batch.series.is_empty() {
            parts.push(part.take());
        }
        if parts.is_empty() && !self.series.is_empty() {
            // Only empty series: keep them as they are if they fit, so nothing vanishes.
            parts.push(self.clone());
        }
        Ok(parts)
    }

    /// Splits the batch with [`TelemetryBatch::split_to_fit`] and encodes the parts as
    /// messages of `device` numbered `first_seq`, `first_seq + 1`, …; each is at most `limit`
    /// bytes.
    pub fn encode_split(
        &self,
        device: &str,
        first_seq: u64,
        limit: usize,
    ) -> Result<Vec<Vec<u8>>, EncodeError> {
        let parts = self.split_to_fit(limit)?;
        // The parts are numbered first_seq, first_seq + 1, …: that must not wrap past 2^64 - 1.
        let last = u64::try_from(parts.len().saturating_sub(1))
            .ok()
            .and_then(|n| first_seq.checked_add(n));
        if last.is_none() {
            return Err(EncodeError::SeqOverflow {
                first_seq,
                parts: parts.len(),
            });
        }
        parts
            .into_iter()
            .enumerate()
            .map(|(i, batch)| {
                // i < parts.len(), and first_seq + parts.len() - 1 fits (checked above).
                let seq = first_seq + i as u64;
                crate::Envelope::new(device, seq, crate::Body::Telemetry(batch))
                    .encode_with_limit(limit)
            })
            .collect()
    }
}

/// Bytes of a telemetry body's own header: `a1`, `"s"`, the array header.
fn body_header_len(series: usize) -> usize {
    3 + columns::int_len(i64::try_from(series).unwrap_or(i64::MAX))
}

/// The batch being filled by [`TelemetryBatch::split_to_fit`], with its series' sizes.
#[derive(Default)]
struct Part {
    batch: TelemetryBatch,
    /// Sum of the encoded sizes of `batch.series`.
    series_len: usize,
}

impl Part {
    fn take(&mut self) -> TelemetryBatch {
        self.series_len = 0;
        core::mem::take(&mut self.batch)
    }

    fn push(&mut self, series: Series, len: usize) {
        self.batch.series.push(series);
        self.series_len += len;
    }

    /// The size of the message if a series of `len` bytes were added.
    fn with(&self, len: usize) -> usize {
        body_header_len(self.batch.series.len() + 1) + self.series_len + len + ENVELOPE_OVERHEAD_MAX
    }

    /// How many readings of `series` from `start` on fit into this part, and their size.
    fn fit(
        &self,
        series: &Series,
        start: usize,
        limit: usize,
    ) -> Result<(usize, usize), EncodeError> {
        let n = series.values.len();
        if self.batch.series.len() >= MAX_SERIES_PER_BATCH {
            return Ok((0, 0));
        }
        let fits = |end: usize| {
            let len = series.slice(start, end).encoded_len();
            (self.with(len) <= limit).then_some(len)
        };
        let most = n.min(start + MAX_READINGS_PER_SERIES);
        if let Some(len) = fits(most) {
            return Ok((most - start, len));
        }
        // Binary search for the longest prefix that fits. Sizes grow with the prefix almost
        // always; where they do not, the search still ends on a prefix that fits.
        let (mut lo, mut hi, mut best) = (start, most, None);
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            match fits(mid) {
                Some(len) => {
                    best = Some((mid - start, len));
                    lo = mid;
                }
                None => hi = mid - 1,
            }
        }
        match best {
            Some(found) => Ok(found),
            None if self.batch.series.is_empty() => Err(EncodeError::LimitTooSmall {
                sensor: series.sensor.clone(),
                metric: series.metric.clone(),
                needed: self.with(series.slice(start, start + 1).encoded_len()),
                limit,
            }),
            None => Ok((0, 0)),
        }
    }
}

/// The readings of one (sensor, metric): a base time, per-reading time deltas and values.
///
/// Reading `i` was taken at `t0_ms + dt_ms[0] + … + dt_ms[i]` (milliseconds since the Unix
/// epoch), so the first delta is usually 0 and regular sampling repeats one small delta.
/// On the wire the columns take whichever form is smaller (see `SPEC.md`); in memory they are
/// always plain deltas and floats.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Sensor name, e.g. `bearing`.
    pub sensor: String,
    /// Metric name, e.g. `temperature`.
    pub metric: String,
    /// Unit (UCUM code, e.g. `Cel`, `%`, `m/s2`); may be empty.
    pub unit: String,
    /// Base time, milliseconds since the Unix epoch.
    pub t0_ms: i64,
    /// Time deltas in milliseconds, cumulative from `t0_ms`.
    pub dt_ms: Vec<u32>,
    /// Values.
    pub values: Vec<f64>,
}

impl Series {
    /// An empty series.
    pub fn new(sensor: &str, metric: &str, unit: &str) -> Series {
        Series {
            sensor: sensor.to_owned(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            t0_ms: 0,
            dt_ms: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Appends a reading. Times must not go backwards within a series; a reading older than
    /// the previous one, or more than `u32::MAX` ms after it, is given the previous time plus
    /// the clamped delta (the agent's clock is monotonic, so this only guards the type).
    pub fn push(&mut self, time_ms: i64, value: f64) {
        if self.values.is_empty() {
            self.t0_ms = time_ms;
            self.dt_ms.push(0);
        } else {
            let last = self.last_time_ms();
            let delta = time_ms.saturating_sub(last).clamp(0, i64::from(u32::MAX));
            self.dt_ms.push(u32::try_from(delta).unwrap_or(u32::MAX));
        }
        self.values.push(value);
    }

    /// Removes the last reading, if any, and returns it as `(time_ms, value)`.
    pub fn pop(&mut self) -> Option<(i64, f64)> {
        let last = self.readings().last()?;
        self.dt_ms.pop();
        self.values.pop();
        Some(last)
    }

    /// Time of the last reading (or `t0_ms` when empty).
    pub fn last_time_ms(&self) -> i64 {
        self.readings().last().map(|(t, _)| t).unwrap_or(self.t0_ms)
    }

    /// The readings as `(time_ms, value)` pairs. A decoded series never leaves the `i64`
    /// range (the decoder refuses one that would, and the encoder one built in memory); the
    /// saturation only keeps a series built by hand from overflowing.
    pub fn readings(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        let mut t = self.t0_ms;
        self.dt_ms.iter().zip(&self.values).map(move |(dt, v)| {
            t = t.saturating_add(i64::from(*dt));
            (t, *v)
        })
    }

    /// Number of readings.
    pub fn reading_count(&self) -> usize {
        self.values.len()
    }

    /// Size of this series' CBOR encoding (one entry of a batch's `"s"` array).
    pub fn encoded_len(&self) -> usize {
        let mut out = Vec::new();
        match ciborium::into_writer(self, &mut out) {
            Ok(()) => out.len(),
            // Writing to a Vec cannot fail; count the worst case if it ever did.
            Err(_) => self.encoded_len_bound(),
        }
    }

    /// An upper bound of [`Series::encoded_len`] in O(1): every value as a double (9 bytes)
    /// and every time delta as a 32-bit integer (5 bytes), which is what the compact forms are
    /// never bigger than.
    pub fn encoded_len_bound(&self) -> usize {
        let text =
            |s: &str| 2 + columns::int_len(i64::try_from(s.len()).unwrap_or(i64::MAX)) + s.len();
        let n = self.values.len().max(self.dt_ms.len());
        let array = columns::int_len(i64::try_from(n).unwrap_or(i64::MAX));
        1 + text(&self.sensor)
            + text(&self.metric)
            + text(&self.unit)
            + 2
            + 9
            + (3 + array + 5 * n)
            + (2 + array + 9 * n)
    }

    /// Readings `start..end` as a series of their own, with the same times and values.
    pub(crate) fn slice(&self, start: usize, end: usize) -> Series {
        let end = end.min(self.values.len()).min(self.dt_ms.len());
        let start = start.min(end);
        let (t0_ms, mut dt_ms) = if start == 0 {
            (self.t0_ms, self.dt_ms[..end].to_vec())
        } else {
            // The time of reading `start` becomes the base, and its delta 0.
            let t0 = self.readings().nth(start).map_or(self.t0_ms, |(t, _)| t);
            (t0, self.dt_ms[start..end].to_vec())
        };
        if start > 0 {
            if let Some(first) = dt_ms.first_mut() {
                *first = 0;
            }
        }
        Series {
            sensor: self.sensor.clone(),
            metric: self.metric.clone(),
            unit: self.unit.clone(),
            t0_ms,
            dt_ms,
            values: self.values[start..end].to_vec(),
        }
    }

    /// Checks the text and count limits.
    pub(crate) fn check_limits(&self) -> Result<(), (Limit, usize)> {
        for text in [&self.sensor, &self.metric, &self.unit] {
            Limit::TextBytes.check(text.len())?;
        }
        Limit::ReadingsPerSeries.check(self.values.len().max(self.dt_ms.len()))
    }
}

/// The time of the last reading of a series with base time `t0` and deltas `dt`, if it is
/// within `i64` (deltas are never negative, so every earlier time is too).
fn last_time(t0: i64, dt: &[u32]) -> Option<i64> {
    dt.iter().try_fold(t0, |t, &d| t.checked_add(i64::from(d)))
}

/// Wire form of a series being written: exactly one time form and one value form.
#[derive(Serialize)]
struct SeriesOut<'a> {
    n: &'a str,
    m: &'a str,
    u: &'a str,
    t: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    dt: Option<&'a [u32]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    p: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    e: Option<Vec<i64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    x: Option<&'a [f64]>,
    #[serde(skip_serializing_if = "is_zero")]
    s: u8,
    #[serde(skip_serializing_if = "Option::is_none")]
    xi: Option<Vec<i64>>,
}

fn is_zero(s: &u8) -> bool {
    *s == 0
}

impl Serialize for Series {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (dt, p, e) = match columns::time_form(&self.dt_ms) {
            TimeForm::Deltas => (Some(&self.dt_ms[..]), None, None),
            TimeForm::Period(p, e) => (None, Some(p), e),
        };
        let (x, s, xi) = match columns::scaled(&self.values) {
            Some((s, xi)) => (None, s, Some(xi)),
            None => (Some(&self.values[..]), 0, None),
        };
        SeriesOut {
            n: &self.sensor,
            m: &self.metric,
            u: &self.unit,
            t: self.t0_ms,
            dt,
            p,
            e,
            x,
            s,
            xi,
        }
        .serialize(serializer)
    }
}

/// Wire form of a series being read: any of the forms, checked by [`SeriesIn::into_series`].
/// The direct decoder (`crate::decode`) fills it key by key; serde (the reference decoder and
/// any other format) through the derive.
#[derive(Deserialize, Default)]
pub(crate) struct SeriesIn {
    pub(crate) n: String,
    pub(crate) m: String,
    #[serde(default)]
    pub(crate) u: String,
    pub(crate) t: i64,
    pub(crate) dt: Option<Vec<u32>>,
    pub(crate) p: Option<u32>,
    pub(crate) e: Option<Vec<i64>>,
    pub(crate) x: Option<Vec<f64>>,
    pub(crate) s: Option<u8>,
    pub(crate) xi: Option<Vec<i64>>,
}

impl SeriesIn {
    /// The series these keys stand for: exactly one time form and one value form, columns of
    /// equal length, reading times within 64 bits (`SPEC.md`, "Telemetry"). The error says
    /// what is wrong, naming the series.
    pub(crate) fn into_series(self) -> Result<Series, String> {
        let w = self;
        let bad = |why: &str| alloc::format!("series {}/{}: {why}", w.n, w.m);
        let values = match (w.x, w.s, w.xi) {
            (Some(x), None, None) => x,
            (None, s, Some(xi)) => columns::expand_scaled(s.unwrap_or(0), &xi).map_err(bad)?,
            _ => {
                return Err(bad(
                    "needs exactly one value form: \"x\", or \"xi\" with optional \"s\"",
                ))
            }
        };
        let dt_ms = match (w.dt, w.p, w.e) {
            (Some(dt), None, None) => dt,
            (None, Some(p), e) => {
                columns::expand_period(p, e.as_deref(), values.len()).map_err(bad)?
            }
            _ => {
                return Err(bad(
                    "needs exactly one time form: \"dt\", or \"p\" with optional \"e\"",
                ))
            }
        };
        // Reading times are t0 plus the running sum of the deltas: the last (the largest) must
        // be a 64-bit millisecond time, or no reader could compute it.
        if last_time(w.t, &dt_ms).is_none() {
            return Err(bad("reading times leave the 64-bit millisecond range"));
        }
        if dt_ms.len() != values.len() {
            return Err(bad(&alloc::format!(
                "{} time deltas but {} values",
                dt_ms.len(),
                values.len()
            )));
        }
        Ok(Series {
            sensor: w.n,
            metric: w.m,
            unit: w.u,
            t0_ms: w.t,
            dt_ms,
            values,
        })
    }
}

impl<'de> Deserialize<'de> for Series {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Series, D::Error> {
        SeriesIn::deserialize(deserializer)?
            .into_series()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_overhead_is_the_worst_case() {
        let device: String = core::iter::repeat_n('d', 128).collect();
        let body = TelemetryBatch::default();
        let msg = crate::Envelope::new(&device, u64::MAX, crate::Body::Telemetry(body.clone()))
            .with_epoch(crate::MAX_EPOCH);
        let len = msg.encode().map(|b| b.len()).unwrap_or(0);
        assert_eq!(len, body.max_message_len());
    }

    #[test]
    fn bound_is_never_below_the_exact_size() {
        let mut s = Series::new("acc", "x", "m/s2");
        for i in 0..500 {
            s.push(i * 7 + (i % 3), f64::from(i as u32) * 0.123_456_789);
            assert!(s.encoded_len() <= s.encoded_len_bound());
        }
    }
}
