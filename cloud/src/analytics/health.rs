//! A device's health score, 0 to 100, with the reasons behind every point it lost.
//!
//! | condition | points |
//! |---|---|
//! | active alert: critical / warning / info | −40 / −20 / −5 each |
//! | predicted rule crossing within the maintenance horizon (a maintenance alert) | −30 each |
//! | significant trend towards a rule level, crossing later than the horizon | −10 each |
//! | newest window mean ≥ 4 baseline standard deviations from its baseline | −15 each |
//! | impulsive vibration: crest factor ≥ 6 or kurtosis ≥ 6 | −10 each |
//!
//! The score is `max(0, 100 − points)`; the reasons are listed biggest loss first.

use osprey_protocol::Severity;
use serde::Serialize;

use super::signals::SeriesSignals;

/// Anomaly score from which a series costs points.
pub const ANOMALY_SCORE: f64 = 4.0;

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

fn hours(ms: i64) -> String {
    format!("{:.1} h", ms as f64 / 3_600_000.0)
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
        let series = format!("{}/{}", s.sensor, s.metric);
        for p in &s.predictions {
            let range = match p.remaining_high_ms {
                Some(high) => format!("{} to {}", hours(p.remaining_low_ms), hours(high)),
                None => format!("at least {}", hours(p.remaining_low_ms)),
            };
            let (points, what) = if p.maintenance_alert {
                (30, "maintenance alert")
            } else {
                (10, "trend")
            };
            reasons.push(Reason {
                points,
                reason: format!(
                    "{what}: {series} is predicted to reach {} (rule {}) in {} ({range})",
                    p.threshold,
                    p.rule,
                    hours(p.remaining_ms)
                ),
            });
        }
        if let Some(score) = s.anomaly_score.filter(|z| *z >= ANOMALY_SCORE) {
            reasons.push(Reason {
                points: 15,
                reason: format!(
                    "{series} mean {:.3} is {score:.1} standard deviations from its baseline {:.3}",
                    s.latest_mean,
                    s.baseline.unwrap_or(f64::NAN)
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
                        "{series} vibration is impulsive (crest factor {crest:.1}, kurtosis \
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
