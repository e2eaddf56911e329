//! Count, sum, min, max and the central moments up to the fourth, mergeable.
//!
//! Values are folded in one at a time with the online update and two partial results are
//! combined with the pairwise formulas of Pébay (2008, "Formulas for robust, one-pass parallel
//! computation of covariances and arbitrary-order statistical moments", Sandia SAND2008-6212),
//! which keep the moments about the mean instead of raw power sums, so they do not lose
//! precision when the mean is large next to the spread (a temperature of 80.00 ± 0.01).
//!
//! Merging is exact for count, min and max and exact up to floating-point rounding for the
//! rest; the order in which parts are merged changes the last bits only.

/// Count, sum, min, max, mean and the central moment sums `M2..M4` of a set of values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Moments {
    /// Number of values.
    pub count: u64,
    /// Sum of the values.
    pub sum: f64,
    /// Smallest value (`+∞` when empty).
    pub min: f64,
    /// Largest value (`-∞` when empty).
    pub max: f64,
    /// Mean of the values (0 when empty).
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
    /// Sum of cubed deviations from the mean.
    pub m3: f64,
    /// Sum of fourth powers of deviations from the mean.
    pub m4: f64,
}

impl Default for Moments {
    fn default() -> Moments {
        Moments::new()
    }
}

impl Moments {
    /// No values yet.
    pub const fn new() -> Moments {
        Moments {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            mean: 0.0,
            m2: 0.0,
            m3: 0.0,
            m4: 0.0,
        }
    }

    /// Folds one value in. Callers keep non-finite values out (one NaN would poison the sums).
    #[inline]
    pub fn add(&mut self, x: f64) {
        let n1 = self.count as f64;
        self.count += 1;
        let n = self.count as f64;
        let delta = x - self.mean;
        let delta_n = delta / n;
        let delta_n2 = delta_n * delta_n;
        let term1 = delta * delta_n * n1;
        self.mean += delta_n;
        self.m4 += term1 * delta_n2 * (n * n - 3.0 * n + 3.0) + 6.0 * delta_n2 * self.m2
            - 4.0 * delta_n * self.m3;
        self.m3 += term1 * delta_n * (n - 2.0) - 3.0 * delta_n * self.m2;
        self.m2 += term1;
        self.sum += x;
        self.min = self.min.min(x);
        self.max = self.max.max(x);
    }

    /// Combines `other` into `self`, as if every value of `other` had been added.
    pub fn merge(&mut self, other: &Moments) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let (na, nb) = (self.count as f64, other.count as f64);
        let n = na + nb;
        let delta = other.mean - self.mean;
        let d2 = delta * delta;
        let d3 = d2 * delta;
        let d4 = d2 * d2;
        let (m2a, m3a) = (self.m2, self.m3);
        let (m2b, m3b) = (other.m2, other.m3);
        self.m4 += other.m4
            + d4 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n)
            + 6.0 * d2 * (na * na * m2b + nb * nb * m2a) / (n * n)
            + 4.0 * delta * (na * m3b - nb * m3a) / n;
        self.m3 +=
            m3b + d3 * na * nb * (na - nb) / (n * n) + 3.0 * delta * (na * m2b - nb * m2a) / n;
        self.m2 += m2b + d2 * na * nb / n;
        self.mean += delta * nb / n;
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Mean, or `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }

    /// Sample variance (`M2 / (n - 1)`), or `None` below two values.
    pub fn variance(&self) -> Option<f64> {
        (self.count > 1).then(|| self.m2 / (self.count as f64 - 1.0))
    }

    /// Population skewness `√n · M3 / M2^1.5` (0 for a symmetric set), or `None` below two
    /// values or when every value is the same.
    pub fn skewness(&self) -> Option<f64> {
        (self.count > 1 && self.m2 > 0.0)
            .then(|| (self.count as f64).sqrt() * self.m3 / self.m2.powf(1.5))
    }

    /// Population kurtosis `n · M4 / M2²` (3 for a normal distribution; vibration analysis
    /// reads values well above 3 as impacts), or `None` below two values or when every value is
    /// the same.
    pub fn kurtosis(&self) -> Option<f64> {
        (self.count > 1 && self.m2 > 0.0).then(|| self.count as f64 * self.m4 / (self.m2 * self.m2))
    }

    /// Root mean square `√(Σx² / n)`, or `None` when empty.
    pub fn rms(&self) -> Option<f64> {
        (self.count > 0).then(|| (self.m2 / self.count as f64 + self.mean * self.mean).sqrt())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(values: &[f64]) -> Moments {
        let mut m = Moments::new();
        for &v in values {
            m.add(v);
        }
        m
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    #[test]
    fn known_values() {
        // 2, 4, 4, 4, 5, 5, 7, 9: mean 5, population variance 4, sample variance 32/7.
        let m = of(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert_eq!((m.count, m.sum, m.min, m.max), (8, 40.0, 2.0, 9.0));
        assert!(close(m.mean, 5.0));
        assert!(close(m.variance().unwrap(), 32.0 / 7.0));
        // Central moments: Σd³ = -27-1-1-1+0+0+8+64 = 42, Σd⁴ = 81+1+1+1+0+0+16+256 = 356.
        assert!(close(m.m3, 42.0));
        assert!(close(m.m4, 356.0));
        assert!(close(
            m.skewness().unwrap(),
            8f64.sqrt() * 42.0 / 32f64.powf(1.5)
        ));
        assert!(close(m.kurtosis().unwrap(), 8.0 * 356.0 / (32.0 * 32.0)));
        assert!(close(m.rms().unwrap(), (232.0f64 / 8.0).sqrt()));
    }

    #[test]
    fn merging_equals_adding_in_one_pass() {
        let values: Vec<f64> = (0..200)
            .map(|i| 80.0 + ((i * 37 % 101) as f64) * 0.013)
            .collect();
        let whole = of(&values);
        for cut in [0, 1, 2, 57, 199, 200] {
            let mut a = of(&values[..cut]);
            a.merge(&of(&values[cut..]));
            assert_eq!(a.count, whole.count);
            assert_eq!((a.min, a.max), (whole.min, whole.max));
            for (x, y) in [
                (a.mean, whole.mean),
                (a.m2, whole.m2),
                (a.m3, whole.m3),
                (a.m4, whole.m4),
                (a.sum, whole.sum),
            ] {
                assert!(close(x, y), "cut {cut}: {x} vs {y}");
            }
        }
    }

    #[test]
    fn degenerate_sets_have_no_shape() {
        assert_eq!(Moments::new().mean(), None);
        assert_eq!(of(&[3.0]).variance(), None);
        assert_eq!(of(&[3.0, 3.0]).skewness(), None);
        assert_eq!(of(&[3.0, 3.0]).variance(), Some(0.0));
    }
}
