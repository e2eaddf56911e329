//! Reports and documents taken from the broker, the view of a device's rules, and the signals
//! predicting a device's own levels once it reported them.

use osprey_protocol::{Body, Comparison, Envelope, Series, Severity, TelemetryBatch};
use serde_json::json;

use super::*;
use crate::analytics::signals::SignalsConfig;
use crate::pipeline::{Origin, Pipeline};
use crate::store::Store;

const T0: i64 = 1_700_000_040_000; // a minute boundary
const MIN: i64 = 60_000;
const DOC_HASH: &str = "sha256:aa";

fn hot(threshold: f64) -> serde_json::Value {
    json!({"id": "bearing-hot", "sensor": "bearing", "metric": "temperature",
           "when": "above", "threshold": threshold, "clear": threshold - 5.0,
           "severity": "critical"})
}

/// A report as the agent publishes it: `bearing-hot` from a document at `threshold`, the local
/// `vibration-high`, and a refusal.
fn report(device: &str, threshold: f64) -> serde_json::Value {
    json!({
        "rules": [hot(threshold)], "version": 3, "device": device,
        "local_rules": [{"id": "vibration-high", "sensor": "bearing", "metric": "vibration",
                         "when": "above", "threshold": 7.1}],
        "applied": {"source": format!("topic cmd/osprey/{device}/config"), "version": 3,
                    "hash": DOC_HASH, "time_ms": 1_767_225_600_000_i64},
        "rejected": {"source": format!("topic cmd/osprey/{device}/config"), "version": null,
                     "hash": "sha256:bb", "field": "rules[0]",
                     "reason": "rule bearing-hot: clear level 50 must be at or below the threshold 30",
                     "time_ms": 1_767_225_700_000_i64}
    })
}

fn reported_topic(device: &str) -> String {
    osprey_protocol::topic::config_reported(device)
}

fn refusal(topic: &str, payload: &[u8]) -> String {
    match take(topic, payload, 1) {
        Taken::Refused { reason, .. } => reason,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn only_the_two_topics_are_taken() {
    assert_eq!(
        Topic::parse("dt/osprey/pump-7/config/reported"),
        Some(Topic::Reported("pump-7"))
    );
    assert_eq!(
        Topic::parse("cmd/osprey/pump-7/config"),
        Some(Topic::Desired("pump-7"))
    );
    for other in [
        "dt/osprey/pump-7/telemetry",
        "dt/osprey/pump-7/config",
        "cmd/osprey/pump-7/rules",
        "dt/other/pump-7/config/reported",
    ] {
        assert_eq!(Topic::parse(other), None, "{other}");
        assert_eq!(take(other, b"{}", 1), Taken::NotRules, "{other}");
    }
}

#[test]
fn a_report_is_checked_and_bounded() {
    let good = report("pump-7", 30.0).to_string();
    let Taken::Write(Write::Rules(RulesWrite::Reported {
        device,
        report: Some(stored),
        received_ms,
    })) = take(&reported_topic("pump-7"), good.as_bytes(), 5)
    else {
        panic!("not taken");
    };
    assert_eq!((device.as_str(), received_ms), ("pump-7", 5));
    assert_eq!(stored.body, good);
    let ids: Vec<&str> = stored.in_effect.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["bearing-hot", "vibration-high"]);

    // A device never speaks for another.
    let reason = refusal(&reported_topic("pump-8"), good.as_bytes());
    assert_eq!(
        reason,
        "the report names device \"pump-7\", its topic is \"pump-8\"'s"
    );
    // Too big, not JSON, not a report, an invalid rule, a bad device id.
    let mut big = report("pump-7", 30.0);
    big["padding"] = json!("x".repeat(MAX_REPORT_BYTES));
    assert!(
        refusal(&reported_topic("pump-7"), big.to_string().as_bytes())
            .contains("more than the 16384 a report may have")
    );
    assert!(refusal(&reported_topic("pump-7"), b"{\"rules\": [").starts_with("not a report"));
    assert!(refusal(&reported_topic("pump-7"), b"[1]").starts_with("not a report"));
    let mut bad = report("pump-7", 30.0);
    bad["local_rules"][0]["clear"] = json!(9.0);
    let reason = refusal(&reported_topic("pump-7"), bad.to_string().as_bytes());
    assert!(reason.starts_with("local_rules[0]: "), "{reason}");
    assert!(
        refusal("dt/osprey/pu mp/config/reported", good.as_bytes()).contains("not a valid device")
    );
    // An empty retained message clears the report.
    assert_eq!(
        take(&reported_topic("pump-7"), b"", 5),
        Taken::Write(Write::Rules(RulesWrite::Reported {
            device: "pump-7".into(),
            received_ms: 5,
            report: None
        }))
    );
}

#[test]
fn a_document_set_is_kept_as_the_hash_a_device_reports() {
    let doc = json!({"rules": [hot(30.0)]}).to_string();
    let Taken::Write(Write::Rules(RulesWrite::Desired { hash, .. })) =
        take("cmd/osprey/pump-7/config", doc.as_bytes(), 1)
    else {
        panic!("not taken");
    };
    assert_eq!(hash, Some(desired_hash(doc.as_bytes())));
    // One the device will refuse is still a document set (its hash is what it reports).
    let Taken::Write(Write::Rules(RulesWrite::Desired { hash, .. })) =
        take("cmd/osprey/pump-7/config", b"{\"rules\": [", 1)
    else {
        panic!("not taken");
    };
    assert!(hash.is_some());
}

fn row(report: Option<&serde_json::Value>, desired: Option<&str>) -> RulesRow {
    RulesRow {
        report: report.map(|r| r.to_string()),
        reported_ms: report.map(|_| 10),
        desired_hash: desired.map(str::to_owned),
        desired_ms: desired.map(|_| 20),
    }
}

#[test]
fn the_view_says_what_runs_where_it_came_from_and_what_is_pending() {
    let units = [(
        "bearing".to_owned(),
        "temperature".to_owned(),
        "Cel".to_owned(),
    )];
    let server = [ThresholdRule {
        threshold: 80.0,
        ..ThresholdRule::new("bearing-hot", "bearing", "temperature", Comparison::Above)
    }];
    let r = report("pump-7", 30.0);

    let applied = DeviceRules::new(
        "pump-7",
        Some(row(Some(&r), Some(DOC_HASH))),
        &server,
        &units,
    );
    assert_eq!(applied.state, State::Applied);
    let got: Vec<(&str, &str, &str)> = applied
        .rules
        .iter()
        .map(|v| (v.rule.id.as_str(), v.source, v.unit.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("bearing-hot", "document", "Cel"),
            ("vibration-high", "local", "")
        ]
    );
    assert_eq!(applied.applied.as_ref().unwrap().version, Some(3));
    assert_eq!(applied.rejected.as_ref().unwrap().field, "rules[0]");
    assert_eq!(
        (applied.pending.is_none(), applied.signals_use),
        (true, "reported")
    );
    assert!(applied.server_rules.is_empty());
    let json = serde_json::to_value(&applied).unwrap();
    assert_eq!(json["rules"][0]["threshold"], 30.0);
    assert_eq!(json["rules"][0]["source"], "document");
    assert_eq!(json["state"], "applied");

    let pending = DeviceRules::new(
        "pump-7",
        Some(row(Some(&r), Some("sha256:cc"))),
        &server,
        &units,
    );
    assert_eq!(pending.state, State::Pending);
    let p = pending.pending.unwrap();
    assert_eq!((p.hash.as_str(), p.set_ms), ("sha256:cc", Some(20)));

    let refused = DeviceRules::new(
        "pump-7",
        Some(row(Some(&r), Some("sha256:bb"))),
        &server,
        &units,
    );
    assert_eq!((refused.state, refused.pending), (State::Rejected, None));

    // Never reported: no rules of its own; the signals use the server's.
    let silent = DeviceRules::new(
        "pump-7",
        Some(row(None, Some("sha256:cc"))),
        &server,
        &units,
    );
    assert_eq!(silent.state, State::NoReport);
    assert!(silent.rules.is_empty() && silent.pending.is_some());
    assert_eq!(silent.signals_use, "server");
    assert_eq!(silent.server_rules[0].source, "server");
    let none = DeviceRules::new("pump-7", None, &server, &units);
    assert_eq!((none.state, none.desired), (State::NoReport, None));
}

/// `device`'s bearing temperature rising 2 °C a minute from 40 °C over `minutes` one-minute
/// windows (six readings each, with a wiggle of ±0.02).
async fn rising(pipeline: &Pipeline, device: &str, minutes: i64) {
    for m in 0..minutes {
        let mut s = Series::new("bearing", "temperature", "Cel");
        for i in 0..6 {
            let t = T0 + m * MIN + i * 10_000;
            let wiggle = 0.02 * ((m + i) % 3 - 1) as f64;
            s.push(t, 40.0 + 2.0 * (t - T0) as f64 / MIN as f64 + wiggle);
        }
        send(pipeline, device, m as u64 + 1, s).await;
    }
}

/// Ingests `series` as `device`'s telemetry message `seq`.
async fn send(pipeline: &Pipeline, device: &str, seq: u64, series: Series) {
    let body = Body::Telemetry(TelemetryBatch {
        series: vec![series],
    });
    let bytes = Envelope::new(device, seq, body).encode().unwrap();
    pipeline
        .ingest(&bytes, Origin::Direct("test".into()))
        .await
        .unwrap();
}

/// The level and remaining time of `device`'s first bearing-hot prediction.
async fn predicted(store: &Store, device: &str) -> Option<(f64, i64)> {
    let signals = store.reader().device_signals(device).await.unwrap();
    let p = signals.series.first()?.predictions.first()?.clone();
    Some((p.threshold, p.remaining_ms))
}

/// The store write `payload` on `topic` becomes (received at `at`).
fn taken(topic: &str, payload: &[u8], at: i64) -> Write {
    match take(topic, payload, at) {
        Taken::Write(w) => w,
        other => panic!("{other:?}"),
    }
}

fn report_write(device: &str, threshold: f64) -> Write {
    let body = report(device, threshold).to_string();
    taken(&reported_topic(device), body.as_bytes(), 7)
}

#[tokio::test]
async fn a_devices_reported_lower_level_is_what_its_signals_predict() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("osprey.db");
    let fleet_rule = ThresholdRule {
        threshold: 100.0,
        severity: Severity::Critical,
        ..ThresholdRule::new("bearing-hot", "bearing", "temperature", Comparison::Above)
    };
    let cfg = SignalsConfig {
        rules: vec![fleet_rule],
        ..SignalsConfig::default()
    };
    let store = Store::open_with(&path, cfg.clone()).unwrap();
    let pipeline = Pipeline::new(store.writer());
    rising(&pipeline, "pump-a", 10).await;
    rising(&pipeline, "pump-b", 10).await;
    let (level, fleet_remaining) = predicted(&store, "pump-a").await.expect("a prediction");
    assert_eq!(level, 100.0);

    // pump-a reports bearing-hot at 70: its signals are recomputed at once with it.
    store
        .writer()
        .write(vec![report_write("pump-a", 70.0)], None)
        .await
        .unwrap();
    let (level, own_remaining) = predicted(&store, "pump-a").await.unwrap();
    assert_eq!(level, 70.0);
    // The level rises 2 a minute: 30 lower is about 15 minutes sooner.
    let sooner = fleet_remaining - own_remaining;
    assert!((14 * MIN..16 * MIN).contains(&sooner), "{sooner}");
    // pump-b has not reported: the server's rule.
    assert_eq!(predicted(&store, "pump-b").await.unwrap().0, 100.0);
    // The same report again changes nothing.
    store
        .writer()
        .write(vec![report_write("pump-a", 70.0)], None)
        .await
        .unwrap();
    drop(pipeline);
    store.close().await.unwrap();

    // After a restart the kept report still rules pump-a's next windows.
    let store = Store::open_with(&path, cfg).unwrap();
    let (row, _) = store.reader().device_rules("pump-a").await.unwrap();
    assert_eq!(row.unwrap().reported_ms, Some(7));
    let pipeline = Pipeline::new(store.writer());
    let mut s = Series::new("bearing", "temperature", "Cel");
    s.push(T0 + 10 * MIN, 60.0);
    send(&pipeline, "pump-a", 11, s).await;
    assert_eq!(predicted(&store, "pump-a").await.unwrap().0, 70.0);
    assert_eq!(
        store
            .reader()
            .device_rules_in_effect("pump-a")
            .await
            .unwrap()
            .unwrap()[0]
            .threshold,
        70.0
    );

    // The report removed (an empty retained message): the server's rule again.
    let cleared = taken(&reported_topic("pump-a"), b"", 8);
    store.writer().write(vec![cleared], None).await.unwrap();
    assert_eq!(predicted(&store, "pump-a").await.unwrap().0, 100.0);
    assert_eq!(store.reader().device_rules("pump-a").await.unwrap().0, None);
    drop(pipeline);
    store.close().await.unwrap();
}

#[tokio::test]
async fn a_desired_document_keeps_when_it_was_first_set() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("osprey.db")).unwrap();
    let doc = json!({"rules": [hot(30.0)]}).to_string();
    let set = |at| taken("cmd/osprey/pump-7/config", doc.as_bytes(), at);
    // Retained: it comes again on every reconnect; the first time stays.
    store.writer().write(vec![set(1)], None).await.unwrap();
    store.writer().write(vec![set(2)], None).await.unwrap();
    let (row, _) = store.reader().device_rules("pump-7").await.unwrap();
    let row = row.unwrap();
    assert_eq!(row.desired_hash, Some(desired_hash(doc.as_bytes())));
    assert_eq!((row.desired_ms, row.report), (Some(1), None));
    store.close().await.unwrap();
}
