//! A quantile sketch with relative-error guarantees (DDSketch, Masson, Rim and Lee, VLDB 2019).
//!
//! A value `x > 0` goes to bucket `i = ⌈ln x / ln γ⌉` with `γ = (1 + α) / (1 − α)`, so bucket `i`
//! holds `(γ^(i−1), γ^i]` and answering with `2γ^i / (γ + 1)` is within `α` of any value in it.
//! Negative values use a second set of buckets on `|x|`; values with `|x|` below
//! [`MIN_INDEXABLE`] count as zero. A quantile query walks the buckets in value order and
//! returns the representative of the bucket holding the element of rank `⌊q · (n − 1)⌋`: within
//! a relative [`RELATIVE_ACCURACY`] of that element.
//!
//! Why our own and not a crate: counts are integers, so merging two sketches is exact and the
//! merged sketch does not depend on the order of the merges (windows merge late data in any
//! order, and reprocessing must give the same store); and the storage encoding
//! ([`Sketch::to_bytes`]) is ours to keep stable, not a crate's internal struct layout.
//!
//! Memory is bounded: each side keeps at most [`MAX_BINS`] buckets (values from 1e-9 to 1e9
//! need about 1 050 at 1 %); past that the buckets nearest zero are folded together, which
//! keeps the guarantee for everything but the smallest magnitudes.

/// Guaranteed relative accuracy of the quantiles.
pub const RELATIVE_ACCURACY: f64 = 0.01;

/// Values closer to zero than this are counted as zero.
pub const MIN_INDEXABLE: f64 = 1e-9;

/// Most buckets kept per sign.
pub const MAX_BINS: usize = 2048;

const GAMMA: f64 = (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY);

/// Version byte of the storage encoding.
const ENCODING_VERSION: u8 = 1;

/// Why stored sketch bytes could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SketchDecodeError {
    /// The bytes end in the middle of a field.
    #[error("sketch bytes end early; the stored window is damaged, reprocess its records")]
    Truncated,
    /// The first byte is not a version this build reads.
    #[error("sketch encoding version {0} is not supported (this build reads version 1)")]
    Version(u8),
    /// A field is out of range.
    #[error("sketch field out of range: {0}")]
    Invalid(&'static str),
}

/// Contiguous buckets `offset..offset + counts.len()`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Bins {
    offset: i32,
    counts: Vec<u64>,
}

impl Bins {
    fn add(&mut self, index: i32, n: u64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(n);
            return;
        }
        let top = self.offset + self.counts.len() as i32 - 1;
        let (lo, hi) = (self.offset.min(index), top.max(index));
        let mut index = index;
        let mut lo = lo;
        if (hi - lo) as usize >= MAX_BINS {
            lo = hi - MAX_BINS as i32 + 1;
            index = index.max(lo);
            if self.offset < lo {
                let cut = (lo - self.offset) as usize;
                let folded: u64 = self.counts.drain(..cut.min(self.counts.len())).sum();
                self.offset = lo;
                if self.counts.is_empty() {
                    self.counts.push(0);
                }
                self.counts[0] += folded;
            }
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        }
        let at = (index - self.offset) as usize;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] += n;
    }

    fn merge(&mut self, other: &Bins) {
        for (i, &n) in other.counts.iter().enumerate() {
            if n > 0 {
                self.add(other.offset + i as i32, n);
            }
        }
    }

    fn total(&self) -> u64 {
        self.counts.iter().sum()
    }
}

/// A mergeable quantile sketch; see the module docs for the guarantee.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sketch {
    count: u64,
    zero: u64,
    positive: Bins,
    negative: Bins,
}

#[inline]
fn index_of(magnitude: f64) -> i32 {
    // ln(f64::MAX) / ln γ ≈ 35 500, well inside i32.
    (magnitude.ln() / GAMMA.ln()).ceil() as i32
}

fn value_of(index: i32) -> f64 {
    2.0 * (f64::from(index) * GAMMA.ln()).exp() / (GAMMA + 1.0)
}

impl Sketch {
    /// An empty sketch.
    pub fn new() -> Sketch {
        Sketch::default()
    }

    /// Adds one value. Callers keep non-finite values out.
    #[inline]
    pub fn add(&mut self, x: f64) {
        self.count += 1;
        if x > MIN_INDEXABLE {
            self.positive.add(index_of(x), 1);
        } else if x < -MIN_INDEXABLE {
            self.negative.add(index_of(-x), 1);
        } else {
            self.zero += 1;
        }
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &Sketch) {
        self.count += other.count;
        self.zero += other.zero;
        self.positive.merge(&other.positive);
        self.negative.merge(&other.negative);
    }

    /// Number of values added.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0 to 1, clamped), or `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || q.is_nan() {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * (self.count - 1) as f64;
        let mut seen = 0u64;
        let neg = &self.negative;
        for (i, &n) in neg.counts.iter().enumerate().rev() {
            seen += n;
            if seen as f64 > rank {
                return Some(-value_of(neg.offset + i as i32));
            }
        }
        seen += self.zero;
        if seen as f64 > rank {
            return Some(0.0);
        }
        let pos = &self.positive;
        for (i, &n) in pos.counts.iter().enumerate() {
            seen += n;
            if seen as f64 > rank {
                return Some(value_of(pos.offset + i as i32));
            }
        }
        // Only reachable through rounding at q = 1: the largest bucket.
        let last = pos.offset + pos.counts.len() as i32 - 1;
        Some(if pos.counts.is_empty() {
            0.0
        } else {
            value_of(last)
        })
    }

    /// Bytes of heap memory the buckets use.
    pub fn heap_bytes(&self) -> usize {
        (self.positive.counts.capacity() + self.negative.counts.capacity())
            * std::mem::size_of::<u64>()
    }

    /// The storage encoding: a version byte, then the zero count and each side's buckets
    /// (offset, length, counts) as LEB128 varints (offsets zigzag-encoded).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(8 + self.positive.counts.len() + self.negative.counts.len());
        out.push(ENCODING_VERSION);
        put_varint(&mut out, self.zero);
        for bins in [&self.positive, &self.negative] {
            put_varint(&mut out, zigzag(bins.offset));
            put_varint(&mut out, bins.counts.len() as u64);
            for &n in &bins.counts {
                put_varint(&mut out, n);
            }
        }
        out
    }

    /// Reads [`Sketch::to_bytes`] back.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sketch, SketchDecodeError> {
        let (&version, mut rest) = bytes.split_first().ok_or(SketchDecodeError::Truncated)?;
        if version != ENCODING_VERSION {
            return Err(SketchDecodeError::Version(version));
        }
        let zero = take_varint(&mut rest)?;
        let mut sides = [Bins::default(), Bins::default()];
        for bins in &mut sides {
            let offset = i32::try_from(unzigzag(take_varint(&mut rest)?))
                .map_err(|_| SketchDecodeError::Invalid("bucket offset"))?;
            let len = usize::try_from(take_varint(&mut rest)?)
                .ok()
                .filter(|&len| len <= MAX_BINS)
                .ok_or(SketchDecodeError::Invalid("bucket count"))?;
            offset
                .checked_add(len as i32)
                .ok_or(SketchDecodeError::Invalid("bucket offset"))?;
            let mut counts = Vec::with_capacity(len);
            for _ in 0..len {
                counts.push(take_varint(&mut rest)?);
            }
            *bins = Bins { offset, counts };
        }
        if !rest.is_empty() {
            return Err(SketchDecodeError::Invalid("trailing bytes"));
        }
        let [positive, negative] = sides;
        let count = [zero, positive.total(), negative.total()]
            .into_iter()
            .try_fold(0u64, u64::checked_add)
            .ok_or(SketchDecodeError::Invalid("total count"))?;
        Ok(Sketch {
            count,
            zero,
            positive,
            negative,
        })
    }
}

fn zigzag(v: i32) -> u64 {
    u64::from(((v << 1) ^ (v >> 31)) as u32)
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(rest: &mut &[u8]) -> Result<u64, SketchDecodeError> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, tail) = rest.split_first().ok_or(SketchDecodeError::Truncated)?;
        *rest = tail;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err(SketchDecodeError::Invalid("varint longer than 64 bits"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn within(got: f64, want: f64) -> bool {
        (got - want).abs() <= RELATIVE_ACCURACY * want.abs() * 1.000_001 + MIN_INDEXABLE
    }

    #[test]
    fn quantiles_are_within_the_relative_accuracy() {
        let mut values: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919 % 1000) as f64 - 300.0) * 0.37)
            .collect();
        let mut s = Sketch::new();
        for &v in &values {
            s.add(v);
        }
        values.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.25, 0.5, 0.95, 0.99, 1.0] {
            let got = s.quantile(q).unwrap();
            assert!(
                within(got, exact(&values, q)),
                "q {q}: {got} vs {}",
                exact(&values, q)
            );
        }
    }

    #[test]
    fn merge_is_exact_and_order_free() {
        let (mut a, mut b, mut whole) = (Sketch::new(), Sketch::new(), Sketch::new());
        for i in 0..500 {
            let v = 40.0 + f64::from(i % 97) * 0.11 - if i % 5 == 0 { 60.0 } else { 0.0 };
            whole.add(v);
            if i % 3 == 0 {
                a.add(v)
            } else {
                b.add(v)
            }
        }
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, whole);
        assert_eq!(ba, whole);
    }

    #[test]
    fn bytes_round_trip_and_damage_is_typed() {
        let mut s = Sketch::new();
        for v in [-5.0, 0.0, 1e-12, 3.0, 3.01, 1e9] {
            s.add(v);
        }
        let bytes = s.to_bytes();
        assert_eq!(Sketch::from_bytes(&bytes).unwrap(), s);
        assert_eq!(
            Sketch::from_bytes(&bytes[..bytes.len() - 1]),
            Err(SketchDecodeError::Truncated)
        );
        assert_eq!(Sketch::from_bytes(&[9]), Err(SketchDecodeError::Version(9)));
        assert_eq!(Sketch::from_bytes(&[]), Err(SketchDecodeError::Truncated));
        let mut long = bytes.clone();
        long.push(0);
        assert!(matches!(
            Sketch::from_bytes(&long),
            Err(SketchDecodeError::Invalid(_))
        ));
    }

    #[test]
    fn wide_ranges_stay_bounded() {
        let mut s = Sketch::new();
        for e in -300..300 {
            s.add(10f64.powi(e));
        }
        assert!(s.positive.counts.len() <= MAX_BINS);
        assert_eq!(s.count(), 600);
        // The top quantiles keep their accuracy.
        assert!(within(s.quantile(1.0).unwrap(), 1e299));
    }

    #[test]
    fn empty_sketch_has_no_quantiles() {
        assert_eq!(Sketch::new().quantile(0.5), None);
    }
}
