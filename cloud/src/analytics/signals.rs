//! Maintenance signals of one series, computed from its recent tumbling windows.
//!
//! ```text
//!  recent windows (oldest first)
//!    ├─ closed windows (all but the newest) ─┬─► EWMA of the means ─► baseline, its spread
//!    │                                       ├─► pooled within-window spread ─► spread floor
//!    │                                       └─► least-squares line through the means
//!    │                                              ─► trend ─► level crossings ─► time to threshold
//!    └─ newest window (maybe still open) ─► anomaly score against the baseline, its
//!                                           uncertainty weighted by its reading count;
//!                                           vibration features
//! ```
//!
//! The newest window is the one still filling while a device sends (the store recomputes the
//! signals with every batch), so it is never part of the baseline or the fit, and it is judged
//! by how many readings it has: a window of 4 readings has a mean four times as uncertain as
//! one of 60 when the within-window spread is what varies ([`anomaly`]). An anomaly score
//! needs [`SignalsConfig::min_baseline_windows`] closed windows, and the baseline spread is
//! never taken below what the within-window noise alone gives a window mean (nor below 0.1 %
//! of the baseline), so a very steady series does not turn a change of a few hundredths into
//! "18 standard deviations".
//!
//! Everything is a pure function of the windows given and the configuration, in event time:
//! "now" is the end of the newest window, so recomputing from the same stored windows gives
//! the same signals (the store recomputes a series whenever its windows change).
//!
//! Significance: the trend is reported only when the slope's t statistic
//! (`slope / standard error`) reaches [`SignalsConfig::trend_t`] (6 by default; a flat series
//! of independent noise gets there about twice in a billion fits). A time to threshold needs a
//! tighter slope, [`SignalsConfig::predict_t`] (30: the slope known to ±10 % at three standard
//! errors), so the estimate is good enough to act on. Both need
//! [`SignalsConfig::min_trend_windows`] (20) closed windows, except a fit that is
//! overwhelming: from [`SignalsConfig::min_fast_windows`] (5) closed windows a slope with
//! |t| ≥ [`SignalsConfig::fast_t`] (100) is a trend and predicts (a flat series of noise gets
//! there in about one fit in 10⁵ with 5 windows and far fewer with more, and only in the
//! first 20 windows of a series). Its range comes from the slope's interval at three standard
//! errors. The fit uses the last 240 windows (four hours of one-minute windows).

use osprey_protocol::{Comparison, Severity, ThresholdRule};
use serde::{Deserialize, Serialize};

use super::moments::Moments;

const HOUR_MS: f64 = 3_600_000.0;

/// Fewest readings in a window for its kurtosis to be reported (the sample kurtosis of `n`
/// readings can reach about `n`, and varies by about √(24/n) for normal noise).
pub const MIN_SHAPE_READINGS: u64 = 30;

/// Tuning of the signals; the defaults suit one-minute windows.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalsConfig {
    /// Weight of the newest window mean in the EWMA baseline (0 < α ≤ 1).
    pub ewma_alpha: f64,
    /// Most recent windows used (trend fit and baseline).
    pub trend_windows: usize,
    /// Fewest closed windows for a trend.
    pub min_trend_windows: usize,
    /// |t| a slope needs to be reported as a trend.
    pub trend_t: f64,
    /// |t| a slope needs for a time to threshold.
    pub predict_t: f64,
    /// Fewest closed windows for a trend (and prediction) whose |t| reaches [`Self::fast_t`].
    pub min_fast_windows: usize,
    /// |t| that makes a trend (and a prediction) from [`Self::min_fast_windows`] closed windows.
    pub fast_t: f64,
    /// Fewest closed windows before the newest window gets an anomaly score.
    pub min_baseline_windows: usize,
    /// A predicted crossing sooner than this raises a maintenance alert.
    pub horizon_ms: i64,
    /// The rules whose levels are predicted (matched to series by sensor and metric); serve
    /// uses a device's own rules instead once it reported them ([`compute_with`]).
    pub rules: Vec<ThresholdRule>,
}

impl Default for SignalsConfig {
    fn default() -> SignalsConfig {
        SignalsConfig {
            ewma_alpha: 0.1,
            trend_windows: 240,
            min_trend_windows: 20,
            trend_t: 6.0,
            predict_t: 30.0,
            min_fast_windows: 5,
            fast_t: 100.0,
            min_baseline_windows: 10,
            horizon_ms: 24 * 3_600_000,
            rules: Vec::new(),
        }
    }
}

/// One window of a series as the signals see it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowPoint {
    /// Window start (event time).
    pub start_ms: i64,
    /// Window end.
    pub end_ms: i64,
    /// Its moments.
    pub moments: Moments,
}

/// The least-squares line through the recent window means.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    /// Change of the mean per hour.
    pub slope_per_hour: f64,
    /// Slope over its standard error.
    pub t: f64,
    /// Windows in the fit.
    pub windows: usize,
    /// The line's value at [`SeriesSignals::as_of_ms`].
    pub level: f64,
}

/// When the trend reaches a rule's level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Rule id.
    pub rule: String,
    /// Its severity.
    pub severity: Severity,
    /// The level crossed.
    pub threshold: f64,
    /// Predicted crossing time (event time, ms since the epoch).
    pub crossing_ms: i64,
    /// From [`SeriesSignals::as_of_ms`] to the crossing (0: already across).
    pub remaining_ms: i64,
    /// Earliest plausible remaining time (slope at +3 standard errors).
    pub remaining_low_ms: i64,
    /// Latest plausible remaining time (slope at −3 standard errors); `None` when the slope
    /// might be zero or heading away.
    pub remaining_high_ms: Option<i64>,
    /// The crossing is within the maintenance horizon: a maintenance alert.
    pub maintenance_alert: bool,
    /// Already across (`remaining_ms` 0): start of the run of newest windows whose means are
    /// across the level, if the newest is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub across_since_ms: Option<i64>,
}

/// Vibration features of the newest window, or of the newest closed one while the newest has
/// fewer readings than a typical window; crest factor and kurtosis are the smaller of that
/// window's and the previous one's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vibration {
    /// Root mean square.
    pub rms: f64,
    /// Largest magnitude.
    pub peak: f64,
    /// Peak over RMS (≈ 1.4 for a sine, higher for impacts); the smaller of two windows.
    pub crest_factor: Option<f64>,
    /// Kurtosis (3 for Gaussian noise, higher for impacts); the smaller of two windows, each
    /// of at least [`MIN_SHAPE_READINGS`] readings.
    pub kurtosis: Option<f64>,
}

/// The signals of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSignals {
    /// Sensor name.
    pub sensor: String,
    /// Metric name.
    pub metric: String,
    /// Unit of the values (UCUM code as the device sent it, e.g. `Cel`); may be empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub unit: String,
    /// End of the newest window: the event time the signals are "as of".
    pub as_of_ms: i64,
    /// Mean of the newest window.
    pub latest_mean: f64,
    /// Readings in the newest window (it may still be filling).
    #[serde(default)]
    pub latest_count: u64,
    /// EWMA of the window means before the newest.
    pub baseline: Option<f64>,
    /// Spread of a window mean around the baseline: the EWMA standard deviation of the closed
    /// window means, floored at the within-window noise of a typical window (and 0.1 % of
    /// the baseline).
    pub baseline_sd: Option<f64>,
    /// |newest mean − baseline| in standard deviations of the newest mean (the baseline
    /// spread widened for a window with fewer readings than usual); needs
    /// [`SignalsConfig::min_baseline_windows`] closed windows.
    pub anomaly_score: Option<f64>,
    /// The trend, when significant.
    pub trend: Option<Trend>,
    /// Predicted rule crossings, soonest first (needs a trend at `predict_t`).
    pub predictions: Vec<Prediction>,
    /// Vibration features, for series whose sensor or metric names vibration.
    pub vibration: Option<Vibration>,
}

impl SeriesSignals {
    /// The soonest prediction that raises a maintenance alert.
    pub fn maintenance_alert(&self) -> Option<&Prediction> {
        self.predictions.iter().find(|p| p.maintenance_alert)
    }
}

/// Whether a series carries vibration (by its sensor or metric name).
pub fn is_vibration(sensor: &str, metric: &str) -> bool {
    let named = |s: &str| s.to_ascii_lowercase().contains("vib");
    named(sensor) || named(metric)
}

/// The signals of `sensor`/`metric` from its windows, oldest first: the newest is judged
/// against the closed ones before it (at most the last `trend_windows` of those are used).
/// `None` without windows. The unit is left empty: the caller knows it.
pub fn compute(
    sensor: &str,
    metric: &str,
    windows: &[WindowPoint],
    cfg: &SignalsConfig,
) -> Option<SeriesSignals> {
    compute_with(sensor, metric, windows, cfg, &cfg.rules)
}

/// [`compute`] predicting crossings of `rules` instead of [`SignalsConfig::rules`] (a device's
/// own rules, as it reported them).
pub fn compute_with(
    sensor: &str,
    metric: &str,
    windows: &[WindowPoint],
    cfg: &SignalsConfig,
    rules: &[ThresholdRule],
) -> Option<SeriesSignals> {
    // The newest window plus up to `trend_windows` closed ones before it.
    let windows = &windows[windows.len().saturating_sub(cfg.trend_windows.max(2) + 1)..];
    let (newest, closed) = windows.split_last()?;
    let as_of_ms = newest.end_ms;
    let latest_mean = newest.moments.mean;

    let (baseline, ewma_sd) = ewma(closed, cfg.ewma_alpha);
    let noise = Noise::of(closed);
    let baseline_sd = match (baseline, ewma_sd) {
        (Some(b), Some(sd)) => Some(noise.floor(sd, b)),
        _ => None,
    };
    let anomaly_score = match (baseline, baseline_sd) {
        (Some(b), Some(sd)) if closed.len() >= cfg.min_baseline_windows.max(3) => anomaly(
            latest_mean,
            newest.moments.count,
            b,
            sd,
            &noise,
            cfg.ewma_alpha,
        ),
        _ => None,
    };
    let fit = fit_line(closed, as_of_ms);
    let n = closed.len();
    let strong = |f: &Fit, t: f64| {
        (n >= cfg.min_trend_windows && f.t.abs() >= t)
            || (n >= cfg.min_fast_windows.max(3) && f.t.abs() >= cfg.fast_t.max(t))
    };
    let trend = fit.filter(|f| strong(f, cfg.trend_t)).map(|f| Trend {
        slope_per_hour: f.slope,
        t: f.t,
        windows: n,
        level: f.level,
    });
    let mut predictions = Vec::new();
    if let Some(f) = fit.filter(|f| trend.is_some() && strong(f, cfg.predict_t)) {
        for rule in rules
            .iter()
            .filter(|r| r.sensor == sensor && r.metric == metric)
        {
            for (level, rising) in levels(rule) {
                if let Some(mut p) = predict(&f, rule, level, rising, as_of_ms, cfg.horizon_ms) {
                    if p.remaining_ms == 0 {
                        p.across_since_ms = across_since(windows, level, rising);
                    }
                    predictions.push(p);
                }
            }
        }
    }
    predictions.sort_by_key(|p| p.remaining_ms);
    // Vibration shape from the newest window once it is as full as a typical one, else from
    // the newest closed window: a few readings make a meaningless kurtosis. Crest factor and
    // kurtosis are the smaller of that window's and the one before it, so one chance outlier
    // (a normal window of 55 readings reaches a kurtosis of 6 about once a week) does not
    // count: impacts from a damaged bearing repeat.
    let shaped = if !closed.is_empty() && (newest.moments.count as f64) < noise.typical_count {
        closed
    } else {
        windows
    };
    let vibration = is_vibration(sensor, metric).then(|| {
        let shape = |w: &WindowPoint| {
            let m = &w.moments;
            let rms = m.rms().unwrap_or(0.0);
            let peak = m.max.abs().max(m.min.abs());
            let crest = (rms > 0.0).then(|| peak / rms);
            let kurtosis = m.kurtosis().filter(|_| m.count >= MIN_SHAPE_READINGS);
            (rms, peak, crest, kurtosis)
        };
        let (rms, peak, crest, kurtosis) = shape(&shaped[shaped.len() - 1]);
        let before = shaped.len().checked_sub(2).map(|i| shape(&shaped[i]));
        let smaller = |a: Option<f64>, b: Option<Option<f64>>| match (a, b) {
            (Some(a), Some(Some(b))) => Some(a.min(b)),
            _ => None,
        };
        Vibration {
            rms,
            peak,
            crest_factor: smaller(crest, before.map(|b| b.2)),
            kurtosis: smaller(kurtosis, before.map(|b| b.3)),
        }
    });
    Some(SeriesSignals {
        sensor: sensor.to_owned(),
        metric: metric.to_owned(),
        unit: String::new(),
        as_of_ms,
        latest_mean,
        latest_count: newest.moments.count,
        baseline,
        baseline_sd,
        anomaly_score,
        trend,
        predictions,
        vibration,
    })
}

/// Within-window noise of the closed windows: the pooled within-window variance and the
/// median reading count of a window.
#[derive(Debug, Clone, Copy)]
struct Noise {
    /// Pooled variance of a reading around its window's mean; `None` without a window of two
    /// readings.
    within_var: Option<f64>,
    /// Median readings per closed window.
    typical_count: f64,
}

impl Noise {
    fn of(closed: &[WindowPoint]) -> Noise {
        let (mut m2, mut dof) = (0.0, 0.0);
        let mut counts: Vec<u64> = Vec::with_capacity(closed.len());
        for w in closed {
            counts.push(w.moments.count);
            if w.moments.count > 1 && w.moments.m2.is_finite() {
                m2 += w.moments.m2;
                dof += w.moments.count as f64 - 1.0;
            }
        }
        counts.sort_unstable();
        Noise {
            within_var: (dof > 0.0).then(|| m2 / dof),
            typical_count: counts
                .get(counts.len() / 2)
                .map_or(1.0, |c| *c as f64)
                .max(1.0),
        }
    }

    /// The spread of a typical window's mean: at least what the within-window noise alone
    /// gives it, and at least 0.1 % of the baseline's magnitude.
    fn floor(&self, ewma_sd: f64, baseline: f64) -> f64 {
        let from_noise = self
            .within_var
            .map_or(0.0, |v| (v / self.typical_count).sqrt());
        ewma_sd.max(from_noise).max(1e-3 * baseline.abs())
    }
}

/// |mean − baseline| over the standard deviation of a window mean of `count` readings: the
/// baseline spread (for a typical window), widened by the within-window noise a window with
/// fewer readings has on top, and by the uncertainty of the EWMA baseline itself.
fn anomaly(
    mean: f64,
    count: u64,
    baseline: f64,
    sd: f64,
    noise: &Noise,
    alpha: f64,
) -> Option<f64> {
    if count == 0 || !mean.is_finite() {
        return None;
    }
    let alpha = alpha.clamp(1e-6, 1.0);
    let short = (1.0 / count as f64 - 1.0 / noise.typical_count).max(0.0);
    let var = sd * sd * (1.0 + alpha / (2.0 - alpha)) + noise.within_var.unwrap_or(0.0) * short;
    (var > 0.0).then(|| (mean - baseline).abs() / var.sqrt())
}

/// Start of the newest run of windows whose means are across `level`; `None` when the newest
/// window's is not.
fn across_since(windows: &[WindowPoint], level: f64, rising: bool) -> Option<i64> {
    let across = |w: &&WindowPoint| {
        if rising {
            w.moments.mean >= level
        } else {
            w.moments.mean <= level
        }
    };
    windows
        .iter()
        .rev()
        .take_while(across)
        .last()
        .map(|w| w.start_ms)
}

/// Levels a rule alarms at, each with whether it is crossed rising.
fn levels(rule: &ThresholdRule) -> Vec<(f64, bool)> {
    let mut out = Vec::new();
    match rule.when {
        Comparison::Above => out.push((rule.threshold, true)),
        Comparison::Below => out.push((rule.threshold, false)),
        Comparison::Outside => {
            out.extend(rule.high.map(|h| (h, true)));
            out.extend(rule.low.map(|l| (l, false)));
        }
        // Rates and silences are not levels the window means can be extrapolated to.
        _ => {}
    }
    out.retain(|(level, _)| level.is_finite());
    out
}

/// EWMA mean and standard deviation of the window means (the variance corrected for
/// starting at zero, so a short history does not understate the spread).
fn ewma(windows: &[WindowPoint], alpha: f64) -> (Option<f64>, Option<f64>) {
    let alpha = alpha.clamp(1e-6, 1.0);
    let mut means = windows.iter().map(|w| w.moments.mean);
    let Some(first) = means.next() else {
        return (None, None);
    };
    let (mut mean, mut var) = (first, 0.0);
    let mut n: i32 = 1;
    for x in means {
        let d = x - mean;
        mean += alpha * d;
        var = (1.0 - alpha) * (var + alpha * d * d);
        n += 1;
    }
    let started = 1.0 - (1.0 - alpha).powi(n - 1);
    (
        Some(mean),
        (n >= 3 && started > 0.0).then(|| (var / started).sqrt()),
    )
}

#[derive(Debug, Clone, Copy)]
struct Fit {
    /// Per hour.
    slope: f64,
    /// Standard error of the slope, per hour.
    se: f64,
    t: f64,
    /// Value of the line at `as_of_ms`.
    level: f64,
}

/// Least squares of window mean against window midpoint (hours before `as_of_ms`).
fn fit_line(windows: &[WindowPoint], as_of_ms: i64) -> Option<Fit> {
    let n = windows.len();
    if n < 3 {
        return None;
    }
    let xs: Vec<f64> = windows
        .iter()
        .map(|w| {
            let mid = w.start_ms as f64 / 2.0 + w.end_ms as f64 / 2.0;
            (mid - as_of_ms as f64) / HOUR_MS
        })
        .collect();
    let nf = n as f64;
    let x_bar = xs.iter().sum::<f64>() / nf;
    let y_bar = windows.iter().map(|w| w.moments.mean).sum::<f64>() / nf;
    let (mut sxx, mut sxy) = (0.0, 0.0);
    for (x, w) in xs.iter().zip(windows) {
        sxx += (x - x_bar) * (x - x_bar);
        sxy += (x - x_bar) * (w.moments.mean - y_bar);
    }
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    let intercept = y_bar - slope * x_bar;
    let ssr: f64 = xs
        .iter()
        .zip(windows)
        .map(|(x, w)| {
            let r = w.moments.mean - (intercept + slope * x);
            r * r
        })
        .sum();
    let se = (ssr / (nf - 2.0) / sxx).sqrt();
    let t = if se > 0.0 {
        slope / se
    } else if slope == 0.0 {
        0.0
    } else {
        f64::INFINITY.copysign(slope)
    };
    Some(Fit {
        slope,
        se,
        t,
        // x = 0 is `as_of_ms`.
        level: intercept,
    })
}

fn predict(
    f: &Fit,
    rule: &ThresholdRule,
    level: f64,
    rising: bool,
    as_of_ms: i64,
    horizon_ms: i64,
) -> Option<Prediction> {
    let gap = level - f.level;
    let across = if rising { gap <= 0.0 } else { gap >= 0.0 };
    let hours = |slope: f64| -> Option<f64> {
        if across {
            Some(0.0)
        } else if (slope > 0.0) == (gap > 0.0) && slope != 0.0 {
            Some(gap / slope)
        } else {
            None
        }
    };
    let remaining_h = hours(f.slope)?;
    // The faster end of the slope's interval gives the earliest crossing.
    let (fast, slow) = if f.slope > 0.0 {
        (f.slope + 3.0 * f.se, f.slope - 3.0 * f.se)
    } else {
        (f.slope - 3.0 * f.se, f.slope + 3.0 * f.se)
    };
    let to_ms = |h: f64| (h * HOUR_MS).round().min(i64::MAX as f64 / 2.0) as i64;
    let remaining_ms = to_ms(remaining_h);
    Some(Prediction {
        rule: rule.id.clone(),
        severity: rule.severity,
        threshold: level,
        crossing_ms: as_of_ms.saturating_add(remaining_ms),
        remaining_ms,
        remaining_low_ms: to_ms(hours(fast).unwrap_or(remaining_h)),
        remaining_high_ms: hours(slow).map(to_ms),
        maintenance_alert: remaining_ms <= horizon_ms,
        across_since_ms: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analytics::health::{self, ANOMALY_SCORE};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const MINUTE: i64 = 60_000;
    const T0: i64 = 1_700_000_040_000 - 1_700_000_040_000 % MINUTE;

    /// Approximately normal, bounded noise (four uniforms), like the simulator's.
    fn noise(rng: &mut ChaCha8Rng) -> f64 {
        let sum: f64 = (0..4).map(|_| rng.random::<f64>()).sum();
        (sum - 2.0) * 3f64.sqrt()
    }

    /// Window `k` from `readings` values at `level(minutes since T0)` plus noise of `sd`.
    fn window(
        rng: &mut ChaCha8Rng,
        k: usize,
        readings: usize,
        sd: f64,
        level: &dyn Fn(f64) -> f64,
    ) -> WindowPoint {
        let start_ms = T0 + k as i64 * MINUTE;
        let mut moments = Moments::new();
        for r in 0..readings {
            let minutes = k as f64 + r as f64 / 60.0;
            moments.add(level(minutes) + sd * noise(rng));
        }
        WindowPoint {
            start_ms,
            end_ms: start_ms + MINUTE,
            moments,
        }
    }

    fn series(
        seed: u64,
        n: usize,
        sd: f64,
        level: impl Fn(f64) -> f64,
    ) -> (ChaCha8Rng, Vec<WindowPoint>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let all = (0..n)
            .map(|k| window(&mut rng, k, 60, sd, &level))
            .collect();
        (rng, all)
    }

    fn rule(id: &str, sensor: &str, metric: &str, level: f64, severity: Severity) -> ThresholdRule {
        ThresholdRule {
            threshold: level,
            severity,
            ..ThresholdRule::new(id, sensor, metric, Comparison::Above)
        }
    }

    /// Signals with the simulator's `vibration-high` rule (warning, ≥ 7.1).
    fn vibration_cfg() -> SignalsConfig {
        SignalsConfig {
            rules: vec![rule(
                "vibration-high",
                "bearing",
                "vibration",
                7.1,
                Severity::Warning,
            )],
            ..SignalsConfig::default()
        }
    }

    fn with_unit(mut s: SeriesSignals, unit: &str) -> SeriesSignals {
        s.unit = unit.to_owned();
        s
    }

    #[test]
    fn an_open_window_with_few_readings_is_not_an_anomaly() {
        let (_, mut all) = series(1, 30, 0.8, |_| 42.05);
        // The issue's case: the newest window holds 4 readings averaging 41.46.
        let mut open = Moments::new();
        for v in [41.1, 41.9, 41.3, 41.54] {
            open.add(v);
        }
        all.push(WindowPoint {
            start_ms: T0 + 30 * MINUTE,
            end_ms: T0 + 31 * MINUTE,
            moments: open,
        });
        let s = compute("bearing", "temperature", &all, &SignalsConfig::default()).unwrap();
        let z = s.anomaly_score.unwrap();
        assert!(z < 2.5, "4 readings judged as a full window: {z}");
        assert_eq!(health::score(&[s], &[]).score, 100);
    }

    #[test]
    fn a_few_readings_do_not_make_vibration_impulsive() {
        let (_, mut all) = series(8, 30, 0.15, |_| 2.0);
        // Eight readings, one high: a sample kurtosis above 6 from nothing.
        let mut open = Moments::new();
        for v in [2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 3.5] {
            open.add(v);
        }
        assert!(open.kurtosis().unwrap() >= health::IMPULSIVE);
        all.push(WindowPoint {
            start_ms: T0 + 30 * MINUTE,
            end_ms: T0 + 31 * MINUTE,
            moments: open,
        });
        let s = compute("bearing", "vibration", &all, &SignalsConfig::default()).unwrap();
        assert_eq!(health::score(&[s], &[]).score, 100);
    }

    #[test]
    fn repeated_impacts_are_impulsive() {
        // Every window: 58 readings near 2 mm/s and two impacts of 6 mm/s.
        let (_, mut all) = series(9, 30, 0.15, |_| 2.0);
        for w in &mut all {
            w.moments.add(6.0);
            w.moments.add(6.0);
        }
        let s = compute("bearing", "vibration", &all, &SignalsConfig::default()).unwrap();
        let h = health::score(&[with_unit(s, "mm/s")], &[]);
        assert!(
            h.reasons
                .iter()
                .any(|r| r.reason.starts_with("bearing vibration is impulsive")),
            "{h:?}"
        );
    }

    #[test]
    fn no_anomaly_score_before_enough_closed_windows() {
        let (_, mut all) = series(2, 4, 0.8, |_| 42.0);
        let (_, jump) = series(3, 1, 0.8, |_| 60.0);
        all.push(WindowPoint {
            start_ms: T0 + 4 * MINUTE,
            end_ms: T0 + 5 * MINUTE,
            ..jump[0]
        });
        let s = compute("bearing", "temperature", &all, &SignalsConfig::default()).unwrap();
        assert_eq!(s.anomaly_score, None);
        assert!(s.baseline.is_some());
    }

    #[test]
    fn a_steady_series_with_tiny_spread_does_not_flag_a_small_change() {
        // Every closed window averages exactly 42.05 with a within spread of 0.01.
        let w = |k: usize, center: f64| {
            let mut m = Moments::new();
            for r in 0..60 {
                m.add(center + if r % 2 == 0 { 0.01 } else { -0.01 });
            }
            WindowPoint {
                start_ms: T0 + k as i64 * MINUTE,
                end_ms: T0 + (k as i64 + 1) * MINUTE,
                moments: m,
            }
        };
        let mut all: Vec<WindowPoint> = (0..60).map(|k| w(k, 42.05)).collect();
        all.push(w(60, 41.96));
        let s = compute("bearing", "temperature", &all, &SignalsConfig::default()).unwrap();
        let z = s.anomaly_score.unwrap();
        assert!(z < ANOMALY_SCORE, "0.09 °C judged {z} standard deviations");
        assert_eq!(health::score(&[s], &[]).score, 100);
    }

    #[test]
    fn a_real_jump_is_flagged_in_words() {
        let (mut rng, mut all) = series(4, 60, 0.8, |_| 41.9);
        all.push(window(&mut rng, 60, 60, 0.8, &|_| 52.1));
        let s = compute("bearing", "temperature", &all, &SignalsConfig::default()).unwrap();
        let h = health::score(&[with_unit(s, "Cel")], &[]);
        assert_eq!(h.score, 85, "{h:?}");
        let reason = &h.reasons[0].reason;
        assert!(
            reason.starts_with("bearing temperature 52.")
                && reason.contains(" °C is ")
                && reason.contains("σ above its usual 41.9 °C"),
            "{reason}"
        );
    }

    #[test]
    fn a_series_already_above_its_level_says_so_and_for_how_long() {
        // Vibration rising 0.6 mm/s a minute from 2 mm/s: above 7.1 since minute 8.5.
        let (_, all) = series(5, 20, 0.15, |m| 2.0 + 0.6 * m);
        let cfg = vibration_cfg();
        let s = compute("bearing", "vibration", &all, &cfg).unwrap();
        let p = &s.predictions[0];
        assert_eq!(p.remaining_ms, 0);
        // Window 8 averages 2 + 0.6·8.5 = 7.1 (plus noise); window 9 is surely above.
        let since = p.across_since_ms.unwrap();
        assert!(
            (T0 + 8 * MINUTE..=T0 + 9 * MINUTE).contains(&since),
            "{since}"
        );
        let h = health::score(&[with_unit(s, "mm/s")], &[]);
        let reason = &h.reasons[0].reason;
        assert!(
            reason.contains("already above the warning level 7.1 mm/s for 1")
                && reason.contains(" min")
                && !reason.contains("0.0 h"),
            "{reason}"
        );
    }

    #[test]
    fn a_clear_steep_trend_predicts_after_few_windows() {
        // The demo's degrading bearing vibration: 0.6 mm/s a minute, noise 0.15 per reading.
        let level = |m: f64| 2.0 + 0.6 * m;
        let (_, all) = series(6, 7, 0.15, level);
        let cfg = vibration_cfg();
        // Six closed windows and the open seventh.
        let s = compute("bearing", "vibration", &all, &cfg).unwrap();
        let trend = s.trend.as_ref().expect("a trend from six windows");
        assert!(trend.t.abs() >= cfg.fast_t);
        let p = s
            .predictions
            .first()
            .expect("a prediction from six windows");
        // True crossing: minute 8.5; as of the end of minute 7.
        let true_ms = (8.5 - 7.0) * MINUTE as f64;
        let err = (p.remaining_ms as f64 - true_ms).abs();
        assert!(err < 0.2 * true_ms, "{} ms vs {true_ms}", p.remaining_ms);
        let h = health::score(&[with_unit(s, "mm/s")], &[]);
        assert!(
            h.reasons[0]
                .reason
                .contains("reaches the warning level 7.1 mm/s in about"),
            "{:?}",
            h.reasons
        );
        // Three closed windows are too few, however steep.
        let s = compute("bearing", "vibration", &all[..4], &cfg).unwrap();
        assert!(s.predictions.is_empty());
    }

    #[test]
    fn healthy_noise_over_many_windows_never_predicts_or_flags() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let (mut evaluations, mut flagged) = (0usize, 0usize);
        for series_no in 0..60 {
            let level = rng.random_range(1.0..80.0);
            let sd = rng.random_range(0.01..3.0);
            let cfg = SignalsConfig {
                rules: vec![rule(
                    "hot",
                    "bearing",
                    "temperature",
                    level + 6.0 * sd,
                    Severity::Critical,
                )],
                ..SignalsConfig::default()
            };
            let flat = |_: f64| level;
            let mut all: Vec<WindowPoint> = Vec::new();
            for k in 0..300 {
                // The newest window at a random fill, as the store sees it between batches.
                let readings = rng.random_range(1..=60);
                let mut open = all.clone();
                open.push(window(&mut rng, k, readings, sd, &flat));
                let s = compute("bearing", "temperature", &open, &cfg).unwrap();
                evaluations += 1;
                let h = health::score(std::slice::from_ref(&s), &[]);
                if h.score < 100 || s.trend.is_some() {
                    flagged += 1;
                    eprintln!("series {series_no} window {k}: {h:?} {s:?}");
                }
                all.push(window(&mut rng, k, 60, sd, &flat));
            }
        }
        assert_eq!(flagged, 0, "{flagged} of {evaluations} evaluations flagged");
    }
}
