//! Rule documents, shared by the agent (local alerts) and the cloud (time to threshold,
//! dashboard). The same document reads from TOML (agent config) and JSON (Device Shadow, API).
//!
//! One flat document covers every kind of rule; `when` says which fields apply, and
//! [`ThresholdRule::validate`] rejects a document that leaves out a field its kind needs or
//! sets one it does not use (a typo must not pass silently):
//!
//! | `when` | raises when | clears when | fields |
//! |---|---|---|---|
//! | `above` | value ≥ `threshold` | value < `clear` | `threshold`, `clear`? |
//! | `below` | value ≤ `threshold` | value > `clear` | `threshold`, `clear`? |
//! | `outside` | value ≥ `high` or ≤ `low` | `clear_low` < value < `clear_high` | `low`, `high`, `clear_low`?, `clear_high`? |
//! | `rate_above` | rate ≥ `threshold` (units/s) | rate < `clear` | `threshold`, `clear`?, `window_ms`? |
//! | `rate_below` | rate ≤ `threshold` (units/s) | rate > `clear` | `threshold`, `clear`?, `window_ms`? |
//! | `no_data` | no reading for `timeout_ms` | a reading arrives | `timeout_ms` |
//!
//! Every kind but `no_data` also takes `on_delay_ms` (the raise condition must hold that long,
//! measured in reading time) and `off_delay_ms` (likewise for the clear condition).
//!
//! ```toml
//! id = "bearing-hot"
//! sensor = "bearing"
//! metric = "temperature"
//! when = "above"
//! threshold = 80.0
//! clear = 75.0
//! on_delay_ms = 5000
//! severity = "critical"
//! ```

use alloc::string::String;

use serde::{Deserialize, Serialize};

use crate::{error::RuleError, Severity};

/// What the rule watches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Comparison {
    /// Alarm when the value rises to or above the threshold.
    Above,
    /// Alarm when the value falls to or below the threshold.
    Below,
    /// Alarm when the value leaves the band between `low` and `high` (reaching either counts).
    Outside,
    /// Alarm when the value rises at least `threshold` units per second.
    RateAbove,
    /// Alarm when the rate of change is at or below `threshold` units per second (a negative
    /// threshold watches for a fall).
    RateBelow,
    /// Alarm when no reading arrives for `timeout_ms`.
    NoData,
}

impl Comparison {
    /// The name as written in a document.
    pub fn name(self) -> &'static str {
        match self {
            Comparison::Above => "above",
            Comparison::Below => "below",
            Comparison::Outside => "outside",
            Comparison::RateAbove => "rate_above",
            Comparison::RateBelow => "rate_below",
            Comparison::NoData => "no_data",
        }
    }

    /// Whether the rule compares a single level (`threshold`/`clear`) on the high side.
    fn high_side(self) -> bool {
        matches!(self, Comparison::Above | Comparison::RateAbove)
    }
}

/// A rule document: see the [module docs](self) for the kinds and their fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThresholdRule {
    /// Unique id of the rule on the device.
    pub id: String,
    /// Sensor to watch.
    pub sensor: String,
    /// Metric of that sensor to watch.
    pub metric: String,
    /// What to watch for.
    pub when: Comparison,
    /// Level that raises the alert (`above`, `below`, `rate_*`); NaN when absent. A document
    /// that gives it as NaN is refused when read (it would read as "missing").
    #[serde(
        default = "absent",
        skip_serializing_if = "is_absent",
        deserialize_with = "level_not_nan"
    )]
    pub threshold: f64,
    /// Level that clears it; defaults to the threshold (no hysteresis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear: Option<f64>,
    /// Lower edge of the normal band (`outside`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low: Option<f64>,
    /// Upper edge of the normal band (`outside`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high: Option<f64>,
    /// `outside` clears only above this level (default `low`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_low: Option<f64>,
    /// `outside` clears only below this level (default `high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_high: Option<f64>,
    /// `rate_*`: the rate is taken against the oldest reading of this window (default: the
    /// previous reading).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_ms: Option<u64>,
    /// `no_data`: how long a silence raises the alert.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The raise condition must hold this long (reading time) before the alert is raised.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub on_delay_ms: u64,
    /// The clear condition must hold this long before the alert clears.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub off_delay_ms: u64,
    /// Severity of the raised alert.
    #[serde(default = "default_severity")]
    pub severity: Severity,
}

fn default_severity() -> Severity {
    Severity::Warning
}

fn absent() -> f64 {
    f64::NAN
}

fn is_absent(v: &f64) -> bool {
    v.is_nan()
}

/// `threshold` as given: NaN (TOML's `nan`, a CBOR NaN) is an error, not an absent level.
fn level_not_nan<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<f64, D::Error> {
    let level = f64::deserialize(deserializer)?;
    if level.is_nan() {
        return Err(serde::de::Error::custom(
            "`threshold` is nan, which is not a level: give a finite number, e.g. threshold = 80.0",
        ));
    }
    Ok(level)
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl ThresholdRule {
    /// A rule of kind `when` with no levels, no delays and severity `warning`; set the fields
    /// its kind needs afterwards (struct update syntax reads well).
    pub fn new(id: &str, sensor: &str, metric: &str, when: Comparison) -> ThresholdRule {
        ThresholdRule {
            id: id.into(),
            sensor: sensor.into(),
            metric: metric.into(),
            when,
            threshold: f64::NAN,
            clear: None,
            low: None,
            high: None,
            clear_low: None,
            clear_high: None,
            window_ms: None,
            timeout_ms: None,
            on_delay_ms: 0,
            off_delay_ms: 0,
            severity: default_severity(),
        }
    }

    /// The clear level of a single-level rule (the threshold itself when none is set).
    pub fn clear_level(&self) -> f64 {
        self.clear.unwrap_or(self.threshold)
    }

    /// The clear band of an `outside` rule: (`clear_low`, `clear_high`), defaulting to the band.
    pub fn clear_band(&self) -> (f64, f64) {
        let low = self.low.unwrap_or(f64::NAN);
        let high = self.high.unwrap_or(f64::NAN);
        (
            self.clear_low.unwrap_or(low),
            self.clear_high.unwrap_or(high),
        )
    }

    /// Checks the document: non-empty names, the fields its kind needs and no others, finite
    /// levels, clear levels on the safe side.
    pub fn validate(&self) -> Result<(), RuleError> {
        if self.id.trim().is_empty() {
            return Err(RuleError::EmptyId);
        }
        if self.sensor.trim().is_empty() || self.metric.trim().is_empty() {
            return Err(RuleError::EmptyTarget {
                id: self.id.clone(),
            });
        }
        let when = self.when;
        let single = !matches!(when, Comparison::Outside | Comparison::NoData);
        let rate = matches!(when, Comparison::RateAbove | Comparison::RateBelow);
        let fields: [(&'static str, bool, bool); 10] = [
            // (field, present, applies)
            ("threshold", !self.threshold.is_nan(), single),
            ("clear", self.clear.is_some(), single),
            ("low", self.low.is_some(), when == Comparison::Outside),
            ("high", self.high.is_some(), when == Comparison::Outside),
            (
                "clear_low",
                self.clear_low.is_some(),
                when == Comparison::Outside,
            ),
            (
                "clear_high",
                self.clear_high.is_some(),
                when == Comparison::Outside,
            ),
            ("window_ms", self.window_ms.is_some(), rate),
            (
                "timeout_ms",
                self.timeout_ms.is_some(),
                when == Comparison::NoData,
            ),
            (
                "on_delay_ms",
                self.on_delay_ms != 0,
                when != Comparison::NoData,
            ),
            (
                "off_delay_ms",
                self.off_delay_ms != 0,
                when != Comparison::NoData,
            ),
        ];
        for (field, present, applies) in fields {
            if present && !applies {
                return Err(RuleError::UnusedField {
                    id: self.id.clone(),
                    field,
                    when: when.name(),
                });
            }
        }
        let required: &[(&'static str, bool)] = match when {
            Comparison::Outside => &[("low", self.low.is_some()), ("high", self.high.is_some())],
            Comparison::NoData => &[("timeout_ms", self.timeout_ms.is_some_and(|t| t > 0))],
            _ => &[("threshold", !self.threshold.is_nan())],
        };
        for (field, present) in required {
            if !present {
                return Err(RuleError::MissingField {
                    id: self.id.clone(),
                    field,
                    when: when.name(),
                });
            }
        }
        let not_finite = || RuleError::NotFinite {
            id: self.id.clone(),
        };
        match when {
            Comparison::NoData => Ok(()),
            Comparison::Outside => {
                let (low, high) = (self.low.unwrap_or(0.0), self.high.unwrap_or(0.0));
                let (clear_low, clear_high) = self.clear_band();
                if ![low, high, clear_low, clear_high]
                    .iter()
                    .all(|v| v.is_finite())
                {
                    return Err(not_finite());
                }
                if low >= high {
                    return Err(RuleError::EmptyBand {
                        id: self.id.clone(),
                        low,
                        high,
                    });
                }
                if !(low <= clear_low && clear_low < clear_high && clear_high <= high) {
                    return Err(RuleError::ClearBandOutside {
                        id: self.id.clone(),
                        low,
                        high,
                    });
                }
                Ok(())
            }
            _ => {
                let clear = self.clear_level();
                if !self.threshold.is_finite() || !clear.is_finite() {
                    return Err(not_finite());
                }
                let (ok, side) = if when.high_side() {
                    (clear <= self.threshold, "at or below")
                } else {
                    (clear >= self.threshold, "at or above")
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
        }
    }

    /// Whether `value` (the reading, or for `rate_*` the rate) is on the alarm side. Always
    /// false for `no_data` and for NaN.
    pub fn breached(&self, value: f64) -> bool {
        match self.when {
            Comparison::Above | Comparison::RateAbove => value >= self.threshold,
            Comparison::Below | Comparison::RateBelow => value <= self.threshold,
            Comparison::Outside => {
                value >= self.high.unwrap_or(f64::NAN) || value <= self.low.unwrap_or(f64::NAN)
            }
            Comparison::NoData => false,
        }
    }

    /// Whether `value` is back past the clear level. Always false for `no_data` and for NaN.
    pub fn cleared(&self, value: f64) -> bool {
        match self.when {
            Comparison::Above | Comparison::RateAbove => value < self.clear_level(),
            Comparison::Below | Comparison::RateBelow => value > self.clear_level(),
            Comparison::Outside => {
                let (low, high) = self.clear_band();
                low < value && value < high
            }
            Comparison::NoData => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn json(text: &str) -> Result<ThresholdRule, RuleError> {
        let rule: ThresholdRule = serde_json::from_str(text).unwrap();
        rule.validate().map(|()| rule)
    }

    #[test]
    fn every_kind_reads_from_json_and_round_trips() {
        for text in [
            r#"{"id":"a","sensor":"s","metric":"m","when":"above","threshold":80.0,"clear":75.0,"on_delay_ms":5000,"severity":"critical"}"#,
            r#"{"id":"b","sensor":"s","metric":"m","when":"below","threshold":1.0}"#,
            r#"{"id":"c","sensor":"s","metric":"m","when":"outside","low":10.0,"high":30.0,"clear_low":11.0,"clear_high":29.0,"off_delay_ms":1000}"#,
            r#"{"id":"d","sensor":"s","metric":"m","when":"rate_above","threshold":0.5,"window_ms":60000}"#,
            r#"{"id":"e","sensor":"s","metric":"m","when":"rate_below","threshold":-0.5,"clear":-0.1}"#,
            r#"{"id":"f","sensor":"s","metric":"m","when":"no_data","timeout_ms":30000,"severity":"info"}"#,
        ] {
            let rule = json(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let back: ThresholdRule =
                serde_json::from_str(&serde_json::to_string(&rule).unwrap()).unwrap();
            // NaN != NaN, so compare the re-serialised text.
            assert_eq!(
                serde_json::to_string(&back).unwrap(),
                serde_json::to_string(&rule).unwrap()
            );
        }
    }

    #[test]
    fn a_nan_threshold_is_refused_when_read_not_taken_for_absent() {
        let mut doc = alloc::vec::Vec::new();
        let value = ciborium::Value::Map(alloc::vec![
            ("id".into(), "r".into()),
            ("sensor".into(), "s".into()),
            ("metric".into(), "m".into()),
            ("when".into(), "above".into()),
            ("threshold".into(), ciborium::Value::Float(f64::NAN)),
        ]);
        ciborium::into_writer(&value, &mut doc).unwrap();
        let err = ciborium::from_reader::<ThresholdRule, _>(&doc[..]).unwrap_err();
        assert!(err.to_string().contains("`threshold` is nan"), "{err}");
        // An absent threshold still reads, and validation names it as missing.
        let rule: ThresholdRule =
            serde_json::from_str(r#"{"id":"r","sensor":"s","metric":"m","when":"above"}"#).unwrap();
        assert!(matches!(
            rule.validate(),
            Err(RuleError::MissingField {
                field: "threshold",
                ..
            })
        ));
    }

    #[test]
    fn invalid_documents_get_typed_errors() {
        let base = r#""id":"r","sensor":"s","metric":"m""#;
        let cases: &[(&str, RuleError)] = &[
            (
                r#""when":"above""#,
                RuleError::MissingField {
                    id: "r".into(),
                    field: "threshold",
                    when: "above",
                },
            ),
            (
                r#""when":"above","threshold":1,"low":0"#,
                RuleError::UnusedField {
                    id: "r".into(),
                    field: "low",
                    when: "above",
                },
            ),
            (
                r#""when":"no_data","timeout_ms":5,"on_delay_ms":3"#,
                RuleError::UnusedField {
                    id: "r".into(),
                    field: "on_delay_ms",
                    when: "no_data",
                },
            ),
            (
                r#""when":"no_data","timeout_ms":0"#,
                RuleError::MissingField {
                    id: "r".into(),
                    field: "timeout_ms",
                    when: "no_data",
                },
            ),
            (
                r#""when":"outside","low":5,"high":5"#,
                RuleError::EmptyBand {
                    id: "r".into(),
                    low: 5.0,
                    high: 5.0,
                },
            ),
            (
                r#""when":"outside","low":5,"high":9,"clear_low":4"#,
                RuleError::ClearBandOutside {
                    id: "r".into(),
                    low: 5.0,
                    high: 9.0,
                },
            ),
            (
                r#""when":"below","threshold":5,"clear":4"#,
                RuleError::ClearOnWrongSide {
                    id: "r".into(),
                    threshold: 5.0,
                    clear: 4.0,
                    side: "at or above",
                },
            ),
        ];
        for (fields, expected) in cases {
            let text = format!("{{{base},{fields}}}");
            assert_eq!(json(&text).unwrap_err(), *expected, "{text}");
        }
        // Unknown fields are a parse error, not ignored.
        assert!(serde_json::from_str::<ThresholdRule>(&format!(
            "{{{base},\"when\":\"above\",\"threshold\":1,\"treshold\":2}}"
        ))
        .is_err());
    }

    #[test]
    fn band_edges() {
        let rule = json(
            r#"{"id":"c","sensor":"s","metric":"m","when":"outside","low":10.0,"high":30.0,"clear_low":11.0,"clear_high":29.0}"#,
        )
        .unwrap();
        assert!(rule.breached(30.0) && rule.breached(10.0) && !rule.breached(20.0));
        assert!(rule.cleared(20.0) && !rule.cleared(29.0) && !rule.cleared(11.0));
        assert!(!rule.breached(f64::NAN) && !rule.cleared(f64::NAN));
    }
}
