//! A device's health score, 0 to 100, with the reasons behind every point it lost.
//!
//! | condition | points |
//! |---|---|
//! | active alert: critical / warning / info | −40 / −20 / −5 each |
//! | predicted rule crossing within the maintenance horizon (a maintenance alert) | −30 each |
//! | significant trend towards a rule level, crossing later than the horizon | −10 each |
//! | newest window mean ≥ 5 standard deviations from its baseline (needs 10 closed windows; the spread is weighted by the window's reading count) | −15 each |
//! | impulsive vibration: crest factor ≥ 6 or kurtosis ≥ 6 | −10 each |
//!
//! The score is `max(0, 100 − points)`; the reasons are listed biggest loss first. Every
//! reason names the series, its value and unit, and what it is compared with, e.g.
//! "bearing temperature 52.1 °C is 6.2σ above its usual 41.9 °C" or "maintenance alert:
//! bearing temperature reaches the critical level 80 °C in about 25 min (15–40 min, rule
//! bearing-hot)".

use osprey_protocol::Severity;
use serde::Serialize;

use super::signals::{Prediction, SeriesSignals};

/// Anomaly score from which a series costs points (window means of independent noise
/// reach 5 about once in 1.7 million windows).
pub const ANOMALY_SCORE: f64 = 5.0;

/// Crest factor or kurtosis from which vibration counts as impulsive.
pub const IMPULSIVE: f64 = 6.0;

/// One reason the score is below 100.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// Points lost.
    pub points: u32,
    /// What is wrong, for a person.
    pub reason: String,
}

/// A device's health.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Health {
    /// 0 (act now) to 100 (nothing known to be wrong).
    pub score: u32,
    /// Why points were lost, biggest first.
    pub reasons: Vec<Reason>,
}

/// An alert whose rule's newest event is a raise.
#[derive(Debug, Clone, PartialEq)]
pub struct ActiveAlert {
    /// Rule id.
    pub rule: String,
    /// Its severity.
    pub severity: Severity,
}

/// A duration for a person: minutes under two hours, hours under two days, else days.
pub fn duration(ms: i64) -> String {
    let min = ms as f64 / 60_000.0;
    if min < 1.0 {
        "less than a minute".to_owned()
    } else if min < 120.0 {
        format!("{min:.0} min")
    } else if min < 48.0 * 60.0 {
        format!("{:.1} h", min / 60.0)
    } else {
        format!("{:.1} days", min / (24.0 * 60.0))
    }
}

/// A UCUM unit code as people write it (`Cel` → `°C`); other codes unchanged.
pub fn unit_symbol(unit: &str) -> &str {
    match unit {
        "Cel" => "°C",
        "[degF]" => "°F",
        "m/s2" => "m/s²",
        "[ppm]" => "ppm",
        "[psi]" => "psi",
        other => other,
    }
}

/// `value` with a precision that suits its size, and its unit.
pub fn quantity(value: f64, unit: &str) -> String {
    let a = value.abs();
    let mut v = if a >= 100.0 {
        format!("{value:.0}")
    } else if a >= 10.0 {
        format!("{value:.1}")
    } else if a >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    };
    if v.contains('.') {
        v = v.trim_end_matches('0').trim_end_matches('.').to_owned();
    }
    match unit_symbol(unit) {
        "" => v,
        "%" => format!("{v} %"),
        u => format!("{v} {u}"),
    }
}

fn prediction_reason(s: &SeriesSignals, series: &str, p: &Prediction) -> String {
    let level = quantity(p.threshold, &s.unit);
    let label = match p.severity {
        Severity::Critical => "critical",
        Severity::Warning => "warning",
        Severity::Info => "info",
    };
    let rising = s.trend.as_ref().is_none_or(|t| t.slope_per_hour >= 0.0);
    let side = if rising { "above" } else { "below" };
    if p.remaining_ms == 0 {
        let how_long = p
            .across_since_ms
            .map(|since| format!(" for {}", duration(s.as_of_ms - since)))
            .unwrap_or_default();
        return format!(
            "{series} is already {side} the {label} level {level}{how_long} (now {}, rule {})",
            quantity(s.latest_mean, &s.unit),
            p.rule
        );
    }
    let low = duration(p.remaining_low_ms);
    let range = match p.remaining_high_ms.map(duration) {
        Some(high) if high != low => format!("{low} to {high}, "),
        Some(_) => String::new(),
        None => format!("at least {low}, "),
    };
    let slope = s
        .trend
        .as_ref()
        .map(|t| {
            let per_h = t.slope_per_hour.abs();
            if p.remaining_ms < 2 * 3_600_000 {
                format!(", {} a minute", quantity(per_h / 60.0, &s.unit))
            } else {
                format!(", {} an hour", quantity(per_h, &s.unit))
            }
        })
        .unwrap_or_default();
    format!(
        "{series} reaches the {label} level {level} in about {} ({range}rule {}{slope})",
        duration(p.remaining_ms),
        p.rule
    )
}

/// The health of a device from its series' signals and its active alerts.
pub fn score(signals: &[SeriesSignals], alerts: &[ActiveAlert]) -> Health {
    let mut reasons = Vec::new();
    for a in alerts {
        let (points, label) = match a.severity {
            Severity::Critical => (40, "critical"),
            Severity::Warning => (20, "warning"),
            Severity::Info => (5, "info"),
        };
        reasons.push(Reason {
            points,
            reason: format!("{label} alert {} is active", a.rule),
        });
    }
    for s in signals {
        let series = format!("{} {}", s.sensor, s.metric);
        for p in &s.predictions {
            let (points, what) = if p.maintenance_alert {
                (30, "maintenance alert")
            } else {
                (10, "trend")
            };
            reasons.push(Reason {
                points,
                reason: format!("{what}: {}", prediction_reason(s, &series, p)),
            });
        }
        if let (Some(score), Some(baseline)) =
            (s.anomaly_score.filter(|z| *z >= ANOMALY_SCORE), s.baseline)
        {
            let side = if s.latest_mean >= baseline {
                "above"
            } else {
                "below"
            };
            reasons.push(Reason {
                points: 15,
                reason: format!(
                    "{series} {} is {score:.1}σ {side} its usual {}",
                    quantity(s.latest_mean, &s.unit),
                    quantity(baseline, &s.unit)
                ),
            });
        }
        if let Some(v) = &s.vibration {
            let crest = v.crest_factor.unwrap_or(0.0);
            let kurtosis = v.kurtosis.unwrap_or(0.0);
            if crest >= IMPULSIVE || kurtosis >= IMPULSIVE {
                reasons.push(Reason {
                    points: 10,
                    reason: format!(
                        "{series} is impulsive (crest factor {crest:.1}, kurtosis \
                         {kurtosis:.1})"
                    ),
                });
            }
        }
    }
    reasons.sort_by(|a, b| {
        b.points
            .cmp(&a.points)
            .then_with(|| a.reason.cmp(&b.reason))
    });
    let lost: u32 = reasons.iter().map(|r| r.points).sum();
    Health {
        score: 100u32.saturating_sub(lost),
        reasons,
    }
}
