//! The compact column forms of a series (`SPEC.md`, "Telemetry"): how the time deltas and the
//! values of a [`crate::Series`] are written, and read back bit-exactly.
//!
//! ```text
//!  times   dt: [0, 1000, 1001, 999, …]      (1.0: every delta)
//!          p: 1000, e: [0, 0, 1, -1, …]     (1.1: one period + corrections, e omitted if all 0)
//!  values  x:  [41.5, 41.53, …]              (1.0: floats, shortest exact width)
//!          s: 2, xi: [4150, 3, …]            (1.1: decimal-scaled integers, first absolute,
//!                                             then differences; value = k / 10^s)
//! ```
//!
//! The encoder picks, per series and per column, whichever form is smaller; the scaled form
//! only when every value comes back bit for bit.

use alloc::vec::Vec;

/// Largest decimal scale `s` (values are `k / 10^s`); `10^15` is exact in a double.
pub const MAX_SCALE: u8 = 15;

/// Largest magnitude of a scaled integer `k`: every integer up to 2^53 is exact in a double,
/// so `k as f64 / 10^s` is one correctly rounded division.
pub const MAX_SCALED: i64 = 1 << 53;

/// `10^s` for `s` in `0..=MAX_SCALE`, all exact doubles.
const POW10: [f64; MAX_SCALE as usize + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// Bytes of a CBOR integer (major type 0 or 1) with this value.
pub(crate) fn int_len(v: i64) -> usize {
    // Negative n is written as -1 - n.
    let m = if v < 0 { !(v as u64) } else { v as u64 };
    crate::bundle::head_len(m)
}

/// Bytes of a CBOR array header for `n` items.
fn array_len(n: usize) -> usize {
    int_len(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Bytes of a float in the shortest width that holds it exactly (CBOR half, single, double).
fn float_len(v: f64) -> usize {
    let single = v as f32;
    if f64::from(single).to_bits() != v.to_bits() && !v.is_nan() {
        return 9;
    }
    if half_exact(single) {
        3
    } else {
        5
    }
}

/// Whether a single-precision value is exactly representable in half precision.
fn half_exact(x: f32) -> bool {
    if !x.is_finite() || x == 0.0 {
        return true;
    }
    let bits = x.to_bits();
    let exp = ((bits >> 23) & 0xff) as i32 - 127;
    let significand = (bits & 0x7f_ffff) | 0x80_0000;
    match exp {
        // Normal halves keep 10 of the 23 fraction bits.
        -14..=15 => bits & 0x1fff == 0,
        // Subnormal halves are multiples of 2^-24.
        -24..=-15 => significand.trailing_zeros() >= (-(exp + 1)) as u32,
        _ => false,
    }
}

/// How a series' times are written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TimeForm {
    /// Every delta (`dt`).
    Deltas,
    /// A period and per-reading corrections (`p`, `e`); `None` when every correction is 0.
    Period(u32, Option<Vec<i64>>),
}

/// Chooses the smaller time form for these deltas.
pub(crate) fn time_form(dt: &[u32]) -> TimeForm {
    // With zero or one reading there is no period to find: 0, and a correction for a
    // non-zero first delta.
    let period = median(dt.get(1..).unwrap_or_default()).unwrap_or(0);
    let corrections: Vec<i64> = dt
        .iter()
        .enumerate()
        .map(|(i, &d)| {
            let base = if i == 0 { 0 } else { i64::from(period) };
            i64::from(d) - base
        })
        .collect();
    if corrections.iter().all(|&c| c == 0) {
        return TimeForm::Period(period, None);
    }
    // Whole entries, keys included: "dt": [...] against "p": P, "e": [...].
    let deltas_len =
        3 + array_len(dt.len()) + dt.iter().map(|&d| int_len(i64::from(d))).sum::<usize>();
    let period_len = 2
        + int_len(i64::from(period))
        + 2
        + array_len(corrections.len())
        + corrections.iter().map(|&c| int_len(c)).sum::<usize>();
    if period_len <= deltas_len {
        TimeForm::Period(period, Some(corrections))
    } else {
        TimeForm::Deltas
    }
}

/// The median of the deltas after the first: the period that makes the corrections smallest.
fn median(deltas: &[u32]) -> Option<u32> {
    if deltas.is_empty() {
        return None;
    }
    let mut sorted = deltas.to_vec();
    let mid = sorted.len() / 2;
    let (_, m, _) = sorted.select_nth_unstable(mid);
    Some(*m)
}

/// The deltas a period form stands for, or why it is invalid.
pub(crate) fn expand_period(
    period: u32,
    corrections: Option<&[i64]>,
    n: usize,
) -> Result<Vec<u32>, &'static str> {
    match corrections {
        None => Ok((0..n).map(|i| if i == 0 { 0 } else { period }).collect()),
        Some(e) if e.len() != n => Err("\"e\" and the values differ in length"),
        Some(e) => e
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                let base = if i == 0 { 0 } else { i64::from(period) };
                base.checked_add(c)
                    .and_then(|d| u32::try_from(d).ok())
                    .ok_or("a corrected time delta is outside 0..2^32")
            })
            .collect(),
    }
}

/// The scale and the integer column (first absolute, then differences) that represent every
/// value bit-exactly, if there is one and it is smaller than the float column.
pub(crate) fn scaled(values: &[f64]) -> Option<(u8, Vec<i64>)> {
    // The smallest scale at which every value is exact: a value exact at scale s is exact at
    // every larger scale (k·10 / 10^(s+1) is the same rational), so one pass raising it works.
    let mut scale = 0u8;
    for &v in values {
        while scaled_at(v, scale).is_none() {
            scale += 1;
            if scale > MAX_SCALE {
                return None;
            }
        }
    }
    let mut column = Vec::with_capacity(values.len());
    let mut previous = 0i64;
    for &v in values {
        // Checked again at the final scale: the argument above relies on rounding, so the
        // final word is the bitwise comparison.
        let k = scaled_at(v, scale)?;
        column.push(k - previous);
        previous = k;
    }
    // Whole entries, keys included: "s": S (left out when 0), "xi": [...] against "x": [...].
    let scale_len = if scale == 0 {
        0
    } else {
        2 + int_len(i64::from(scale))
    };
    let ints =
        scale_len + 3 + array_len(column.len()) + column.iter().map(|&k| int_len(k)).sum::<usize>();
    let floats = 2 + array_len(values.len()) + values.iter().map(|&v| float_len(v)).sum::<usize>();
    (ints <= floats).then_some((scale, column))
}

/// `k` with `k / 10^scale == v` bit for bit, if it exists.
fn scaled_at(v: f64, scale: u8) -> Option<i64> {
    let x = v * POW10[usize::from(scale)];
    if x.is_nan() || x.abs() > MAX_SCALED as f64 {
        return None;
    }
    let k = round(x);
    (unscale(k, scale).to_bits() == v.to_bits()).then_some(k)
}

/// `x` rounded to the nearest integer, halves away from zero (`f64::round`, which `core`
/// lacks); `|x| <= 2^53`, so the truncation and the fraction are exact.
fn round(x: f64) -> i64 {
    let t = x as i64;
    let frac = x - t as f64;
    if frac >= 0.5 {
        t + 1
    } else if frac <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// The value a scaled integer stands for: one correctly rounded IEEE 754 division.
fn unscale(k: i64, scale: u8) -> f64 {
    k as f64 / POW10[usize::from(scale)]
}

/// The values an integer column stands for, or why it is invalid.
pub(crate) fn expand_scaled(scale: u8, column: &[i64]) -> Result<Vec<f64>, &'static str> {
    if scale > MAX_SCALE {
        return Err("scale \"s\" is over 15");
    }
    let mut k = 0i64;
    column
        .iter()
        .map(|&d| {
            k = k
                .checked_add(d)
                .filter(|k| k.unsigned_abs() <= MAX_SCALED as u64)
                .ok_or("a scaled value is outside ±2^53")?;
            Ok(unscale(k, scale))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cbor_lengths_match_ciborium() {
        for v in [
            0i64,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u32::MAX as i64,
            1 << 40,
            -1,
            -24,
            -25,
            -256,
            -257,
            i64::MIN,
        ] {
            let mut out = Vec::new();
            ciborium::into_writer(&v, &mut out).ok();
            assert_eq!(int_len(v), out.len(), "{v}");
        }
        for v in [
            0.0,
            41.5,
            41.53,
            1.0e-7,
            6.0e-8,
            65504.0,
            65520.0,
            1.0e10,
            f64::INFINITY,
            0.1,
            -2.5,
            5.960_464_477_539_063e-8,
            3.0e-5,
        ] {
            let mut out = Vec::new();
            ciborium::into_writer(&v, &mut out).ok();
            assert_eq!(float_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn round_matches_std() {
        for x in [
            0.0,
            0.49,
            0.5,
            0.51,
            1.5,
            2.5,
            -0.5,
            -1.5,
            -2.49,
            4_152.999_999_999_999,
            9.0e15,
        ] {
            assert_eq!(round(x), x.round() as i64, "{x}");
        }
    }

    #[test]
    fn scaled_form_is_bit_exact_or_absent() {
        let (s, col) = scaled(&[41.5, 41.53, 41.5]).unwrap_or_default();
        assert_eq!((s, col.as_slice()), (2, &[4150, 3, -3][..]));
        assert_eq!(expand_scaled(2, &col), Ok(alloc::vec![41.5, 41.53, 41.5]));
        assert!(scaled(&[0.1 + 0.2]).is_none());
        assert!(scaled(&[-0.0]).is_none());
        assert!(scaled(&[f64::NAN]).is_none());
        assert!(scaled(&[1.0e300]).is_none());
    }

    #[test]
    fn jittered_times_take_the_period_form() {
        let dt = [0, 1000, 1001, 999, 1000, 1002];
        let TimeForm::Period(p, Some(e)) = time_form(&dt) else {
            panic!("expected the period form");
        };
        assert_eq!((p, e.as_slice()), (1000, &[0, 0, 1, -1, 0, 2][..]));
        assert_eq!(expand_period(p, Some(&e), 6), Ok(dt.to_vec()));
        assert_eq!(time_form(&[0, 10, 10]), TimeForm::Period(10, None));
        assert_eq!(time_form(&[7]), TimeForm::Deltas);
        assert_eq!(time_form(&[]), TimeForm::Period(0, None));
        // Irregular times keep the delta form.
        assert_eq!(time_form(&[0, 5, 70_000, 3, 9_000_000]), TimeForm::Deltas);
    }
}
