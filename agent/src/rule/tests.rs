use super::*;
use osprey_protocol::{Comparison, Severity};
use proptest::prelude::*;

fn rule(when: Comparison, threshold: f64, clear: Option<f64>) -> ThresholdRule {
    ThresholdRule {
        threshold,
        clear,
        severity: Severity::Critical,
        ..ThresholdRule::new("r", "bearing", "temperature", when)
    }
}

fn band(low: f64, high: f64, clear_low: f64, clear_high: f64) -> ThresholdRule {
    ThresholdRule {
        low: Some(low),
        high: Some(high),
        clear_low: Some(clear_low),
        clear_high: Some(clear_high),
        ..ThresholdRule::new("r", "bearing", "temperature", Comparison::Outside)
    }
}

fn delayed(mut r: ThresholdRule, on: u64, off: u64) -> ThresholdRule {
    r.on_delay_ms = on;
    r.off_delay_ms = off;
    r
}

fn reading_at(t: i64, value: f64) -> Reading {
    Reading::new("bearing", "temperature", "Cel", t, value)
}

/// Events (as `R`/`C` letters) that a value sequence produces, one reading per second.
fn trace(rule: ThresholdRule, values: &[f64]) -> String {
    assert_eq!(rule.validate(), Ok(()), "{rule:?}");
    let mut set = RuleSet::new(vec![rule]);
    values
        .iter()
        .enumerate()
        .flat_map(|(i, v)| set.evaluate(&reading_at(i as i64 * 1000, *v)))
        .map(letter)
        .collect()
}

fn letter(a: Alert) -> char {
    match a.event {
        AlertEvent::Raise => 'R',
        AlertEvent::Clear => 'C',
    }
}

#[test]
fn rule_table() {
    use Comparison::{Above, Below, RateAbove, RateBelow};
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
        (
            "band: inside nothing",
            band(10.0, 30.0, 12.0, 28.0),
            &[20.0, 10.01, 29.99],
            "",
        ),
        (
            "band: high edge raises, clears inside clear band",
            band(10.0, 30.0, 12.0, 28.0),
            &[30.0, 29.0, 27.9],
            "RC",
        ),
        (
            "band: low side, then straight to high side stays raised",
            band(10.0, 30.0, 12.0, 28.0),
            &[9.0, 31.0, 12.0, 12.5],
            "RC",
        ),
        (
            "on-delay 2 s: a 2-sample breach is not enough",
            delayed(rule(Above, 80.0, Some(75.0)), 2000, 0),
            &[81.0, 81.0, 79.0, 81.0, 81.0, 81.0, 70.0],
            "RC",
        ),
        (
            "on-delay resets when the value drops below the threshold (even above clear)",
            delayed(rule(Above, 80.0, Some(75.0)), 1000, 0),
            &[81.0, 79.0, 81.0, 79.0],
            "",
        ),
        (
            "off-delay 2 s",
            delayed(rule(Above, 80.0, Some(75.0)), 0, 2000),
            &[81.0, 70.0, 70.0, 76.0, 70.0, 70.0, 70.0],
            "RC",
        ),
        (
            "rate above 1/s",
            rule(RateAbove, 1.0, Some(0.5)),
            &[10.0, 10.5, 11.5, 12.5, 12.9, 13.0],
            "RC",
        ),
        (
            "rate below -2/s",
            rule(RateBelow, -2.0, Some(-1.0)),
            &[50.0, 49.0, 47.0, 46.5, 46.0],
            "RC",
        ),
    ];
    for (name, rule, values, expected) in cases {
        assert_eq!(trace(rule.clone(), values), *expected, "{name}");
    }
}

#[test]
fn on_delay_raises_exactly_at_the_first_sample_that_completes_it() {
    let mut set = RuleSet::new(vec![delayed(rule(Comparison::Above, 80.0, None), 2500, 0)]);
    let times = [0, 1000, 2000, 2499, 2500, 2600];
    let fired: Vec<i64> = times
        .iter()
        .flat_map(|t| set.evaluate(&reading_at(*t, 90.0)))
        .map(|a| a.time_ms)
        .collect();
    assert_eq!(fired, [2500]);
    assert_eq!(set.state("r"), Some(RuleState::Active));
}

#[test]
fn rate_uses_the_window() {
    // 60 s window: +3 over 60 s is 0.05/s, below a 0.1/s threshold even though one step
    // jumps by 1 in a second.
    let r = ThresholdRule {
        threshold: 0.1,
        window_ms: Some(60_000),
        ..ThresholdRule::new("r", "bearing", "temperature", Comparison::RateAbove)
    };
    let mut set = RuleSet::new(vec![r]);
    let mut events = Vec::new();
    for i in 0..=60 {
        let v = 40.0 + f64::from(i) * 0.05;
        events.extend(set.evaluate(&reading_at(i64::from(i) * 1000, v)));
    }
    assert!(events.is_empty(), "{events:?}");
    // Now a steady climb of 0.2/s: raises once the window shows it.
    for i in 61..200 {
        let v = 43.0 + f64::from(i - 60) * 0.2;
        events.extend(set.evaluate(&reading_at(i64::from(i) * 1000, v)));
    }
    assert_eq!(events.len(), 1);
    assert!(events[0].value >= 0.1, "{}", events[0].value);
}

#[test]
fn no_data_raises_after_the_timeout_and_clears_on_data() {
    let r = ThresholdRule {
        timeout_ms: Some(5000),
        severity: Severity::Warning,
        ..ThresholdRule::new("silent", "bearing", "temperature", Comparison::NoData)
    };
    let mut set = RuleSet::new(vec![r]);
    assert!(set.tick(0).is_empty());
    assert!(set.evaluate(&reading_at(1000, 42.0)).is_empty());
    assert!(set.tick(5999).is_empty());
    let raise = set.tick(6000);
    assert_eq!(raise.len(), 1);
    assert_eq!(
        (raise[0].event, raise[0].value, raise[0].threshold),
        (AlertEvent::Raise, 5.0, 5.0)
    );
    assert!(set.tick(9000).is_empty(), "raised once");
    let clear = set.evaluate(&reading_at(9500, 42.0));
    assert_eq!((clear[0].event, clear[0].value), (AlertEvent::Clear, 8.5));
    // A sensor that never reports raises timeout after the first tick.
    let mut never = RuleSet::new(vec![ThresholdRule {
        timeout_ms: Some(100),
        ..ThresholdRule::new("n", "x", "y", Comparison::NoData)
    }]);
    assert!(never.tick(1000).is_empty());
    assert_eq!(never.tick(1100).len(), 1);
}

#[test]
fn events_carry_the_crossed_level_and_reading() {
    let mut set = RuleSet::new(vec![rule(Comparison::Above, 80.0, Some(75.0))]);
    let raise = set.evaluate(&reading_at(5, 81.5));
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
    let clear = set.evaluate(&reading_at(6, 70.0));
    assert_eq!(clear[0].threshold, 75.0);
    assert_eq!(set.state("r"), Some(RuleState::Normal));
    // A band reports the side it left by.
    let mut set = RuleSet::new(vec![band(10.0, 30.0, 12.0, 28.0)]);
    assert_eq!(set.evaluate(&reading_at(1, 5.0))[0].threshold, 10.0);
    assert_eq!(set.evaluate(&reading_at(2, 20.0))[0].threshold, 12.0);
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

#[test]
fn restored_alarms_clear_instead_of_raising_again() {
    let rules = vec![rule(Comparison::Above, 80.0, Some(75.0))];
    let mut before = RuleSet::new(rules.clone());
    before.evaluate(&reading_at(1, 90.0));
    let saved = before.active_alarms();
    assert_eq!(saved.len(), 1);

    let mut after = RuleSet::new(rules);
    assert_eq!(after.restore(&saved), 1);
    assert!(
        after.evaluate(&reading_at(2, 95.0)).is_empty(),
        "no second raise"
    );
    let clear = after.evaluate(&reading_at(3, 70.0));
    assert_eq!(clear[0].event, AlertEvent::Clear);
    assert!(after.active_alarms().is_empty());
}

#[test]
fn reconfigure_keeps_state_of_kept_rules() {
    let hot = rule(Comparison::Above, 80.0, Some(75.0));
    let mut set = RuleSet::new(vec![hot.clone()]);
    set.evaluate(&reading_at(1, 90.0));
    let mut other = rule(Comparison::Below, 1.0, None);
    other.id = "other".into();
    set.reconfigure(vec![other, hot.clone()]);
    assert_eq!(set.state("r"), Some(RuleState::Active));
    assert!(set.evaluate(&reading_at(2, 95.0)).is_empty());
    // A changed rule keeps its raised alarm and clears under the new levels.
    let mut stricter = hot;
    stricter.clear = Some(60.0);
    set.reconfigure(vec![stricter]);
    assert!(set.evaluate(&reading_at(3, 70.0)).is_empty());
    assert_eq!(set.evaluate(&reading_at(4, 59.0))[0].threshold, 60.0);
}

fn valid_rule() -> impl Strategy<Value = ThresholdRule> {
    (
        0..5u8,
        -100.0..100.0f64,
        0.0..20.0f64,
        any::<bool>(),
        0..4u64,
        0..4u64,
    )
        .prop_map(|(kind, threshold, gap, has_clear, on, off)| {
            let r = match kind {
                0 => rule(
                    Comparison::Above,
                    threshold,
                    has_clear.then_some(threshold - gap),
                ),
                1 => rule(
                    Comparison::Below,
                    threshold,
                    has_clear.then_some(threshold + gap),
                ),
                2 => rule(
                    Comparison::RateAbove,
                    threshold / 10.0,
                    has_clear.then_some(threshold / 10.0 - gap),
                ),
                3 => rule(
                    Comparison::RateBelow,
                    threshold / 10.0,
                    has_clear.then_some(threshold / 10.0 + gap),
                ),
                _ => band(
                    threshold,
                    threshold + 2.0 * gap + 1.0,
                    threshold + gap / 2.0,
                    threshold + gap * 1.5 + 1.0,
                ),
            };
            delayed(r, on * 1000, off * 1000)
        })
}

/// Readings at irregular times.
fn readings() -> impl Strategy<Value = Vec<(i64, f64)>> {
    proptest::collection::vec((1..2500i64, -150.0..150.0f64), 0..300).prop_map(|steps| {
        let mut t = 0;
        steps
            .into_iter()
            .map(|(dt, v)| {
                t += dt;
                (t, v)
            })
            .collect()
    })
}

proptest! {
    #[test]
    fn events_alternate_starting_with_raise(rule in valid_rule(), values in readings()) {
        prop_assert!(rule.validate().is_ok());
        let mut set = RuleSet::new(vec![rule]);
        let events: String = values
            .iter()
            .flat_map(|(t, v)| set.evaluate(&reading_at(*t, *v)))
            .map(letter)
            .collect();
        for (i, e) in events.chars().enumerate() {
            let expected = if i % 2 == 0 { 'R' } else { 'C' };
            prop_assert_eq!(e, expected, "events {}", events);
        }
    }

    /// Hysteresis never flaps: every raise is at a breaching signal, every clear at a clearing
    /// one, and after a clear the signal must be breached again (not just leave the clear
    /// band) for the next raise.
    #[test]
    fn raise_and_clear_only_past_their_levels(rule in valid_rule(), values in readings()) {
        let mut set = RuleSet::new(vec![rule.clone()]);
        for (t, v) in &values {
            for a in set.evaluate(&reading_at(*t, *v)) {
                match a.event {
                    AlertEvent::Raise => prop_assert!(rule.breached(a.value), "{:?}", a),
                    AlertEvent::Clear => prop_assert!(rule.cleared(a.value), "{:?}", a),
                }
            }
        }
    }

    /// Delays hold to the sample: a raise at time t has the condition true on every reading
    /// of [t - on_delay, t] back to one at or before t - on_delay, and no earlier reading
    /// already completed the delay.
    #[test]
    fn on_delay_holds_to_the_sample(threshold in -50.0..50.0f64, on in 0..5000u64, values in readings()) {
        let r = delayed(rule(Comparison::Above, threshold, None), on, 0);
        let mut set = RuleSet::new(vec![r.clone()]);
        let mut streak_start: Option<i64> = None;
        for (t, v) in &values {
            let breached = r.breached(*v);
            let was_active = set.state("r").is_some_and(RuleState::is_raised);
            let events = set.evaluate(&reading_at(*t, *v));
            streak_start = if breached { streak_start.or(Some(*t)) } else { None };
            let due = streak_start.is_some_and(|s| (t - s) as u64 >= on);
            let raised = events.iter().any(|a| a.event == AlertEvent::Raise);
            prop_assert_eq!(raised, !was_active && due, "t={} v={}", t, v);
            if !breached && was_active {
                // clear == threshold: any non-breaching value clears at once (off delay 0).
                prop_assert_eq!(events.len(), 1);
            }
        }
    }
}
