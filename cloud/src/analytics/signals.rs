//! Maintenance signals of one series, computed from its recent tumbling windows.
//!
//! ```text
//!  recent windows (oldest first) ─┬─► EWMA of the window means ─► baseline, anomaly score
//!                                 ├─► least-squares line through the means ─► trend (if |t| ≥ 6)
//!                                 │        └─► level crossings of the rules ─► time to threshold
//!                                 └─► newest window's moments ─► vibration features
//! ```
//!
//! Everything is a pure function of the windows given and the configuration, in event time:
//! "now" is the end of the newest window, so recomputing from the same stored windows gives
//! the same signals (the store recomputes a series whenever its windows change).
//!
//! Significance: the trend is reported only when the slope's t statistic
//! (`slope / standard error`) reaches [`SignalsConfig::trend_t`] (6 by default; a flat series
//! of independent noise gets there about twice in a billion fits). A time to threshold needs a
//! tighter slope, [`SignalsConfig::predict_t`] (30: the slope known to ±10 % at three standard
//! errors), so the estimate is good enough to act on. Its range comes from the slope's
//! interval at three standard errors. The fit uses the last 240 windows (four hours of
//! one-minute windows).

use osprey_protocol::{Comparison, Severity, ThresholdRule};
use serde::{Deserialize, Serialize};

use super::moments::Moments;

const HOUR_MS: f64 = 3_600_000.0;

/// Tuning of the signals; the defaults suit one-minute windows.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalsConfig {
    /// Weight of the newest window mean in the EWMA baseline (0 < α ≤ 1).
    pub ewma_alpha: f64,
    /// Most recent windows used (trend fit and baseline).
    pub trend_windows: usize,
    /// Fewest windows for a trend.
    pub min_trend_windows: usize,
    /// |t| a slope needs to be reported as a trend.
    pub trend_t: f64,
    /// |t| a slope needs for a time to threshold.
    pub predict_t: f64,
    /// A predicted crossing sooner than this raises a maintenance alert.
    pub horizon_ms: i64,
    /// The rules whose levels are predicted (matched to series by sensor and metric).
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
}

/// Vibration features of the newest window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Vibration {
    /// Root mean square.
    pub rms: f64,
    /// Largest magnitude.
    pub peak: f64,
    /// Peak over RMS (≈ 1.4 for a sine, higher for impacts).
    pub crest_factor: Option<f64>,
    /// Kurtosis (3 for Gaussian noise, higher for impacts).
    pub kurtosis: Option<f64>,
}

/// The signals of one series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesSignals {
    /// Sensor name.
    pub sensor: String,
    /// Metric name.
    pub metric: String,
    /// End of the newest window: the event time the signals are "as of".
    pub as_of_ms: i64,
    /// Mean of the newest window.
    pub latest_mean: f64,
    /// EWMA of the window means before the newest.
    pub baseline: Option<f64>,
    /// EWMA standard deviation of those means.
    pub baseline_sd: Option<f64>,
    /// |newest mean − baseline| in baseline standard deviations.
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

/// The signals of `sensor`/`metric` from its windows, oldest first (at most the last
/// `trend_windows` are used). `None` without windows.
pub fn compute(
    sensor: &str,
    metric: &str,
    windows: &[WindowPoint],
    cfg: &SignalsConfig,
) -> Option<SeriesSignals> {
    let windows = &windows[windows.len().saturating_sub(cfg.trend_windows.max(2))..];
    let newest = windows.last()?;
    let as_of_ms = newest.end_ms;
    let latest_mean = newest.moments.mean;

    let (baseline, baseline_sd) = ewma(&windows[..windows.len() - 1], cfg.ewma_alpha);
    let anomaly_score = match (baseline, baseline_sd) {
        (Some(b), Some(sd)) if sd > 0.0 => Some((latest_mean - b).abs() / sd),
        _ => None,
    };
    let fit = fit_line(windows, as_of_ms);
    let trend = fit
        .filter(|f| windows.len() >= cfg.min_trend_windows && f.t.abs() >= cfg.trend_t)
        .map(|f| Trend {
            slope_per_hour: f.slope,
            t: f.t,
            windows: windows.len(),
            level: f.level,
        });
    let mut predictions = Vec::new();
    if let Some(f) = fit.filter(|f| trend.is_some() && f.t.abs() >= cfg.predict_t) {
        for rule in cfg
            .rules
            .iter()
            .filter(|r| r.sensor == sensor && r.metric == metric)
        {
            for (level, rising) in levels(rule) {
                if let Some(p) = predict(&f, rule, level, rising, as_of_ms, cfg.horizon_ms) {
                    predictions.push(p);
                }
            }
        }
    }
    predictions.sort_by_key(|p| p.remaining_ms);
    let vibration = is_vibration(sensor, metric).then(|| {
        let m = &newest.moments;
        let rms = m.rms().unwrap_or(0.0);
        let peak = m.max.abs().max(m.min.abs());
        Vibration {
            rms,
            peak,
            crest_factor: (rms > 0.0).then(|| peak / rms),
            kurtosis: m.kurtosis(),
        }
    });
    Some(SeriesSignals {
        sensor: sensor.to_owned(),
        metric: metric.to_owned(),
        as_of_ms,
        latest_mean,
        baseline,
        baseline_sd,
        anomaly_score,
        trend,
        predictions,
        vibration,
    })
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

/// EWMA mean and standard deviation of the window means.
fn ewma(windows: &[WindowPoint], alpha: f64) -> (Option<f64>, Option<f64>) {
    let alpha = alpha.clamp(1e-6, 1.0);
    let mut means = windows.iter().map(|w| w.moments.mean);
    let Some(first) = means.next() else {
        return (None, None);
    };
    let (mut mean, mut var) = (first, 0.0);
    let mut n = 1;
    for x in means {
        let d = x - mean;
        mean += alpha * d;
        var = (1.0 - alpha) * (var + alpha * d * d);
        n += 1;
    }
    (Some(mean), (n >= 3).then(|| var.sqrt()))
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
    })
}
