use osprey_protocol::{Alert, AlertEvent, Severity};

use super::*;

fn alert(event: AlertEvent, value: f64) -> Alert {
    Alert {
        rule: "bearing-hot".to_owned(),
        sensor: "bearing".to_owned(),
        metric: "temperature".to_owned(),
        event,
        severity: Severity::Critical,
        value,
        threshold: 80.0,
        time_ms: 1_767_225_600_000,
    }
}

#[test]
fn a_notice_reads_well_and_carries_its_identity() {
    let n = Notice::new("pump-7", 42, 9, &alert(AlertEvent::Raise, 81.25));
    assert_eq!(n.id, "pump-7/42/9");
    assert_eq!(
        n.subject(),
        "CRITICAL raised: bearing-hot on pump-7 (81.25 vs 80)"
    );
    let clear = Notice::new("pump-7", 42, 10, &alert(AlertEvent::Clear, 79.0));
    assert_eq!(
        clear.subject(),
        "CRITICAL cleared: bearing-hot on pump-7 (79 vs 80)"
    );
    let body: serde_json::Value = serde_json::from_str(&n.body()).unwrap();
    assert_eq!(body["id"], "pump-7/42/9");
    assert_eq!(body["event"], "raise");
    assert_eq!(body["severity"], "critical");
    assert_eq!(body["value"], 81.25);
    assert_eq!(body["time_ms"], 1_767_225_600_000_i64);
    assert_eq!(
        n.attributes(),
        [
            ("device", "pump-7"),
            ("rule", "bearing-hot"),
            ("severity", "critical"),
            ("event", "raise")
        ]
    );
}

#[test]
fn subjects_stay_ascii_and_within_the_sns_limit() {
    let mut a = alert(AlertEvent::Raise, f64::NAN);
    a.rule = "température\u{7}-".repeat(20);
    let n = Notice::new("pump-7", 0, 1, &a);
    let subject = n.subject();
    assert!(subject.chars().count() <= MAX_SUBJECT_CHARS, "{subject}");
    assert!(
        subject.chars().all(|c| c.is_ascii_graphic() || c == ' '),
        "{subject}"
    );
    // A reading that is not a number is left out, not printed as NaN.
    assert_eq!(n.value, None);
    assert!(n.body().contains("\"value\":null"));
}
