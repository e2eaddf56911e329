//! Local threshold rules: turns readings into raise and clear events, with hysteresis.
//!
//! Each rule is a two-state machine, evaluated on the sample path before any I/O, so alerts fire
//! whether or not the gateway is online:
//!
//! ```text
//!            breached(v) ─► Raise
//!   ┌────────┐ ─────────────────► ┌────────┐
//!   │ Normal │                    │ Active │
//!   └────────┘ ◄───────────────── └────────┘
//!            cleared(v) ─► Clear
//! ```
//!
//! `breached` and `cleared` come from [`ThresholdRule`]; since a valid rule's clear level is on
//! the safe side of its threshold, a value between the two changes nothing, and a reading can
//! never raise and clear in one step. A NaN reading is neither breached nor cleared.

use osprey_protocol::{Alert, AlertEvent, ThresholdRule};

use crate::reading::Reading;

/// Where a rule stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleState {
    /// No alert is active.
    Normal,
    /// The alert was raised and has not cleared yet.
    Active,
}

/// A set of rules and their states.
#[derive(Debug, Clone)]
pub struct RuleSet {
    rules: Vec<(ThresholdRule, RuleState)>,
}

impl RuleSet {
    /// Rules, all starting in [`RuleState::Normal`]. The rules are expected to be valid
    /// ([`ThresholdRule::validate`]); the config loader checks them.
    pub fn new(rules: Vec<ThresholdRule>) -> RuleSet {
        RuleSet {
            rules: rules.into_iter().map(|r| (r, RuleState::Normal)).collect(),
        }
    }

    /// Number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The state of rule `id`, if there is such a rule.
    pub fn state(&self, id: &str) -> Option<RuleState> {
        self.rules
            .iter()
            .find(|(r, _)| r.id == id)
            .map(|(_, state)| *state)
    }

    /// Feeds one reading to every rule that watches its sensor and metric; returns the events
    /// it caused, in rule order (usually none).
    pub fn evaluate(&mut self, reading: &Reading) -> Vec<Alert> {
        let mut events = Vec::new();
        for (rule, state) in &mut self.rules {
            if rule.sensor != reading.sensor || rule.metric != reading.metric {
                continue;
            }
            let (event, level) = match *state {
                RuleState::Normal if rule.breached(reading.value) => {
                    *state = RuleState::Active;
                    (AlertEvent::Raise, rule.threshold)
                }
                RuleState::Active if rule.cleared(reading.value) => {
                    *state = RuleState::Normal;
                    (AlertEvent::Clear, rule.clear_level())
                }
                _ => continue,
            };
            events.push(Alert {
                rule: rule.id.clone(),
                sensor: rule.sensor.clone(),
                metric: rule.metric.clone(),
                event,
                severity: rule.severity,
                value: reading.value,
                threshold: level,
                time_ms: reading.time_ms,
            });
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use osprey_protocol::{Comparison, Severity};
    use proptest::prelude::*;

    fn rule(when: Comparison, threshold: f64, clear: Option<f64>) -> ThresholdRule {
        ThresholdRule {
            id: "r".to_owned(),
            sensor: "bearing".to_owned(),
            metric: "temperature".to_owned(),
            when,
            threshold,
            clear,
            severity: Severity::Critical,
        }
    }

    fn reading(value: f64) -> Reading {
        Reading::new("bearing", "temperature", "Cel", 1000, value)
    }

    /// Events (as `R`/`C` letters) that a value sequence produces.
    fn trace(rule: ThresholdRule, values: &[f64]) -> String {
        let mut set = RuleSet::new(vec![rule]);
        values
            .iter()
            .flat_map(|v| set.evaluate(&reading(*v)))
            .map(|a| match a.event {
                AlertEvent::Raise => 'R',
                AlertEvent::Clear => 'C',
            })
            .collect()
    }

    #[test]
    fn hysteresis_table() {
        use Comparison::{Above, Below};
        let cases: &[(&str, ThresholdRule, &[f64], &str)] = &[
            (
                "below threshold: nothing",
                rule(Above, 80.0, Some(75.0)),
                &[10.0, 79.99],
                "",
            ),
            (
                "threshold itself raises",
                rule(Above, 80.0, Some(75.0)),
                &[80.0],
                "R",
            ),
            (
                "hovering between levels: one raise",
                rule(Above, 80.0, Some(75.0)),
                &[81.0, 76.0, 80.5, 75.0, 90.0],
                "R",
            ),
            (
                "clear is strict",
                rule(Above, 80.0, Some(75.0)),
                &[81.0, 75.0, 74.99],
                "RC",
            ),
            (
                "raise again after clear",
                rule(Above, 80.0, Some(75.0)),
                &[81.0, 70.0, 85.0],
                "RCR",
            ),
            (
                "no clear level: clears below threshold",
                rule(Above, 80.0, None),
                &[80.0, 80.0, 79.9, 80.0],
                "RCR",
            ),
            (
                "below rule",
                rule(Below, 10.0, Some(12.0)),
                &[11.0, 10.0, 11.9, 12.1, 9.0],
                "RCR",
            ),
            (
                "NaN changes nothing",
                rule(Above, 80.0, Some(75.0)),
                &[f64::NAN, 81.0, f64::NAN, 70.0],
                "RC",
            ),
        ];
        for (name, rule, values, expected) in cases {
            assert_eq!(trace(rule.clone(), values), *expected, "{name}");
        }
    }

    #[test]
    fn events_carry_the_crossed_level_and_reading() {
        let mut set = RuleSet::new(vec![rule(Comparison::Above, 80.0, Some(75.0))]);
        let raise = set.evaluate(&Reading::new("bearing", "temperature", "Cel", 5, 81.5));
        assert_eq!(
            raise,
            [Alert {
                rule: "r".to_owned(),
                sensor: "bearing".to_owned(),
                metric: "temperature".to_owned(),
                event: AlertEvent::Raise,
                severity: Severity::Critical,
                value: 81.5,
                threshold: 80.0,
                time_ms: 5,
            }]
        );
        assert_eq!(set.state("r"), Some(RuleState::Active));
        let clear = set.evaluate(&reading(70.0));
        assert_eq!(clear[0].threshold, 75.0);
        assert_eq!(set.state("r"), Some(RuleState::Normal));
    }

    #[test]
    fn other_series_are_ignored() {
        let mut set = RuleSet::new(vec![rule(Comparison::Above, 80.0, None)]);
        assert!(set
            .evaluate(&Reading::new("bearing", "vibration", "mm/s", 0, 99.0))
            .is_empty());
        assert!(set
            .evaluate(&Reading::new("motor", "temperature", "Cel", 0, 99.0))
            .is_empty());
        assert_eq!(set.state("r"), Some(RuleState::Normal));
    }

    fn valid_rule() -> impl Strategy<Value = ThresholdRule> {
        (any::<bool>(), -100.0..100.0f64, 0.0..20.0f64, any::<bool>()).prop_map(
            |(above, threshold, gap, has_clear)| {
                let (when, clear) = if above {
                    (Comparison::Above, threshold - gap)
                } else {
                    (Comparison::Below, threshold + gap)
                };
                rule(when, threshold, has_clear.then_some(clear))
            },
        )
    }

    proptest! {
        #[test]
        fn events_alternate_starting_with_raise(
            rule in valid_rule(),
            values in proptest::collection::vec(-150.0..150.0f64, 0..300),
        ) {
            prop_assert!(rule.validate().is_ok());
            let events = trace(rule, &values);
            for (i, e) in events.chars().enumerate() {
                let expected = if i % 2 == 0 { 'R' } else { 'C' };
                prop_assert_eq!(e, expected, "events {}", events);
            }
        }
    }
}
