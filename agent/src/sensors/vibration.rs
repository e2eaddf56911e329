//! Vibration features of one block of accelerometer samples, computed at the edge so that a
//! gateway sends four numbers per axis instead of thousands of samples.
//!
//! With `d` the samples minus their mean (gravity and sensor offset removed):
//!
//! | feature | formula | healthy machine | what it catches |
//! |---|---|---|---|
//! | RMS | √(mean d²) | low | overall vibration energy (ISO 10816 uses it) |
//! | peak | max \|d\| | low | shocks |
//! | crest factor | peak / RMS | ≈ 1.4 (sine) … 3 | early bearing defects: impacts raise the peak before the RMS |
//! | kurtosis | mean d⁴ / (mean d²)² | ≈ 3 (Gaussian), 1.5 (sine) | impulsiveness, rising well above 3 with spalling |
//!
//! A constant block (RMS 0) has crest factor and kurtosis 0 by convention rather than NaN.

/// Features of one block.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Features {
    /// Root mean square of the AC part.
    pub rms: f64,
    /// Largest absolute deviation from the mean.
    pub peak: f64,
    /// Peak over RMS.
    pub crest: f64,
    /// Fourth standardised moment (Pearson; 3 for a normal distribution).
    pub kurtosis: f64,
}

impl Features {
    /// Computes the features of `samples`; `None` for an empty block or non-finite samples.
    pub fn of(samples: &[f64]) -> Option<Features> {
        if samples.is_empty() || samples.iter().any(|v| !v.is_finite()) {
            return None;
        }
        let n = samples.len() as f64;
        let mean = samples.iter().sum::<f64>() / n;
        let (mut m2, mut m4, mut peak) = (0.0, 0.0, 0.0f64);
        for v in samples {
            let d = v - mean;
            let d2 = d * d;
            m2 += d2;
            m4 += d2 * d2;
            peak = peak.max(d.abs());
        }
        m2 /= n;
        m4 /= n;
        let rms = m2.sqrt();
        // Float noise on a constant block leaves an RMS of ~1e-14 rather than 0.
        if rms <= 1e-12 * mean.abs().max(1.0) {
            return Some(Features {
                rms: 0.0,
                peak: 0.0,
                crest: 0.0,
                kurtosis: 0.0,
            });
        }
        Some(Features {
            rms,
            peak,
            crest: peak / rms,
            kurtosis: m4 / (m2 * m2),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    #[test]
    fn sine_square_and_constant_blocks() {
        // A whole number of periods of a sine of amplitude 2 on an offset of 9.81 (gravity).
        let sine: Vec<f64> = (0..1024)
            .map(|i| 9.81 + 2.0 * (2.0 * std::f64::consts::PI * 8.0 * f64::from(i) / 1024.0).sin())
            .collect();
        let f = Features::of(&sine).unwrap();
        assert!(close(f.rms, 2.0 / 2f64.sqrt(), 1e-9), "{f:?}");
        assert!(
            close(f.peak, 2.0, 1e-9) && close(f.crest, 2f64.sqrt(), 1e-9),
            "{f:?}"
        );
        assert!(close(f.kurtosis, 1.5, 1e-9), "{f:?}");

        let square: Vec<f64> = (0..100)
            .map(|i| if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect();
        let f = Features::of(&square).unwrap();
        assert_eq!((f.rms, f.peak, f.crest, f.kurtosis), (1.0, 1.0, 1.0, 1.0));

        let f = Features::of(&[9.81; 64]).unwrap();
        assert_eq!((f.rms, f.crest, f.kurtosis), (0.0, 0.0, 0.0));
        assert_eq!(Features::of(&[]), None);
        assert_eq!(Features::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn an_impact_raises_crest_and_kurtosis_before_rms() {
        let base: Vec<f64> = (0..1000)
            .map(|i| (2.0 * std::f64::consts::PI * 10.0 * f64::from(i) / 1000.0).sin())
            .collect();
        let mut hit = base.clone();
        hit[500] += 8.0;
        let (a, b) = (Features::of(&base).unwrap(), Features::of(&hit).unwrap());
        assert!(
            b.rms / a.rms < 1.1,
            "RMS barely moves: {} → {}",
            a.rms,
            b.rms
        );
        assert!(b.crest > 2.0 * a.crest, "crest {} → {}", a.crest, b.crest);
        // A sine has kurtosis 1.5; one impact takes the block far past a Gaussian's 3.
        assert!(
            a.kurtosis < 2.0 && b.kurtosis > 9.0,
            "kurtosis {} → {}",
            a.kurtosis,
            b.kurtosis
        );
    }
}
