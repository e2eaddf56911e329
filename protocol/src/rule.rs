//! Threshold rule documents, shared by the agent (local alerts) and the cloud (time to
//! threshold, dashboard). The same document reads from TOML (agent config) and JSON (API).

use alloc::string::String;

use serde::{Deserialize, Serialize};

use crate::{error::RuleError, Severity};

/// Which side of the threshold is the alarm side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Comparison {
    /// Alarm when the value rises to or above the threshold.
    Above,
    /// Alarm when the value falls to or below the threshold.
    Below,
}

/// A threshold with hysteresis: raise when the value crosses `threshold`, clear only when it
/// comes back past `clear`, so a value hovering at the threshold does not flap.
///
/// ```toml
/// id = "bearing-hot"
/// sensor = "bearing"
/// metric = "temperature"
/// when = "above"
/// threshold = 80.0
/// clear = 75.0
/// severity = "critical"
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    /// Unique id of the rule on the device.
    pub id: String,
    /// Sensor to watch.
    pub sensor: String,
    /// Metric of that sensor to watch.
    pub metric: String,
    /// Alarm side.
    pub when: Comparison,
    /// Level that raises the alert.
    pub threshold: f64,
    /// Level that clears it; defaults to the threshold (no hysteresis).
    #[serde(default)]
    pub clear: Option<f64>,
    /// Severity of the raised alert.
    #[serde(default = "default_severity")]
    pub severity: Severity,
}

fn default_severity() -> Severity {
    Severity::Warning
}

impl ThresholdRule {
    /// The clear level (the threshold itself when none is set).
    pub fn clear_level(&self) -> f64 {
        self.clear.unwrap_or(self.threshold)
    }

    /// Checks the document: non-empty names, finite levels, clear level on the safe side.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.id.trim().is_empty() {
            return Err(RuleError::EmptyId);
        }
        if self.sensor.trim().is_empty() || self.metric.trim().is_empty() {
            return Err(RuleError::EmptyTarget {
                id: self.id.clone(),
            });
        }
        let clear = self.clear_level();
        if !self.threshold.is_finite() || !clear.is_finite() {
            return Err(RuleError::NotFinite {
                id: self.id.clone(),
            });
        }
        let (ok, side) = match self.when {
            Comparison::Above => (clear <= self.threshold, "at or below"),
            Comparison::Below => (clear >= self.threshold, "at or above"),
        };
        if !ok {
            return Err(RuleError::ClearOnWrongSide {
                id: self.id.clone(),
                threshold: self.threshold,
                clear,
                side,
            });
        }
        Ok(())
    }

    /// Whether `value` is on the alarm side of the threshold.
    pub fn breached(&self, value: f64) -> bool {
        match self.when {
            Comparison::Above => value >= self.threshold,
            Comparison::Below => value <= self.threshold,
        }
    }

    /// Whether `value` is back past the clear level.
    pub fn cleared(&self, value: f64) -> bool {
        match self.when {
            Comparison::Above => value < self.clear_level(),
            Comparison::Below => value > self.clear_level(),
        }
    }
}
