//! The window aggregate: [`Moments`] plus a quantile [`Sketch`], mergeable as a whole.

use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use super::moments::Moments;
use super::sketch::Sketch;

/// Everything a window knows about its values; two aggregates merge into the aggregate of the
/// union. In the API it serialises to its summary (count, sum, min, max, mean, variance,
/// skewness, kurtosis, p50, p95, p99; `null` where a statistic needs more values); the store
/// keeps the moments in columns and the sketch as [`Sketch::to_bytes`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Aggregate {
    /// Count, sum, min, max and central moments.
    pub moments: Moments,
    /// Quantile sketch.
    pub sketch: Sketch,
}

impl Aggregate {
    /// An empty aggregate.
    pub fn new() -> Aggregate {
        Aggregate::default()
    }

    /// Adds one value. Callers keep non-finite values out.
    #[inline]
    pub fn add(&mut self, x: f64) {
        self.moments.add(x);
        self.sketch.add(x);
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Aggregate) {
        self.moments.merge(&other.moments);
        self.sketch.merge(&other.sketch);
    }

    /// Number of values.
    pub fn count(&self) -> u64 {
        self.moments.count
    }

    /// Median estimate.
    pub fn p50(&self) -> Option<f64> {
        self.sketch.quantile(0.5)
    }

    /// 95th percentile estimate.
    pub fn p95(&self) -> Option<f64> {
        self.sketch.quantile(0.95)
    }

    /// 99th percentile estimate.
    pub fn p99(&self) -> Option<f64> {
        self.sketch.quantile(0.99)
    }
}

impl Serialize for Aggregate {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let m = &self.moments;
        let mut s = serializer.serialize_struct("Aggregate", 11)?;
        s.serialize_field("count", &m.count)?;
        s.serialize_field("sum", &m.sum)?;
        s.serialize_field("min", &m.min)?;
        s.serialize_field("max", &m.max)?;
        s.serialize_field("mean", &m.mean)?;
        s.serialize_field("variance", &m.variance())?;
        s.serialize_field("skewness", &m.skewness())?;
        s.serialize_field("kurtosis", &m.kurtosis())?;
        s.serialize_field("p50", &self.p50())?;
        s.serialize_field("p95", &self.p95())?;
        s.serialize_field("p99", &self.p99())?;
        s.end()
    }
}
