//! The Lambda handler (`osprey_lambda::handler::handle`) with real Kinesis event JSON (the
//! shape AWS documents for the Kinesis event source mapping) and moto's DynamoDB.
//!
//! A partial failure: the dead-letter table is missing at first, so the undecodable record in
//! the middle of a batch fails (transiently: the record is fine, the table is not); the handler
//! reports exactly that record, having applied the one before it and not the one after. The
//! retry the event source mapping then makes (from the failed record on) succeeds once the
//! table exists, and a full redelivery of the batch changes nothing (dedup).
//!
//! Windows: with hopping and session windows configured, records delivered out of order (a
//! late message that bridges two sessions) leave in DynamoDB exactly the windows that serve's
//! in-memory fold (`WindowTable`) computes from the same records; alerts keep each rule's newest
//! event whatever the arrival order; and `osprey fleet --dynamodb-table`, run as a process,
//! lists what the handler wrote.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use aws_lambda_events::event::kinesis::KinesisEvent;
use std::num::NonZeroU32;
use std::process::Command;

use osprey_cloud::pipeline::{prepare_with, Origin};
use osprey_cloud::window::table::{Stored, WindowTable};
use osprey_cloud::window::{Hopping, WindowKind, WindowSpec, WINDOW_MS};
use osprey_lambda::handler::handle;
use osprey_lambda::state::DynamoState;
use osprey_protocol::{Alert, AlertEvent, Body, Envelope, Series, Severity, TelemetryBatch};
use osprey_tests::{
    base64, bin, moto_dynamodb, moto_endpoint, moto_state_tables, ten_readings, unique_name,
};

const T0: i64 = 1_767_225_600_000;

/// Message `seq` of `device`: ten readings, one second apart, values seq + 0.0 … seq + 0.9.
fn telemetry(device: &str, seq: u64) -> Vec<u8> {
    ten_readings(device, seq, T0)
}

/// A Kinesis event as the event source mapping delivers it, one record per (key, data).
fn event(stream: &str, records: &[(String, &str, Vec<u8>)]) -> KinesisEvent {
    let records: Vec<String> = records
        .iter()
        .map(|(seq, key, data)| {
            format!(
                r#"{{
  "kinesis": {{
    "kinesisSchemaVersion": "1.0",
    "partitionKey": "{key}",
    "sequenceNumber": "{seq}",
    "data": "{data}",
    "approximateArrivalTimestamp": 1767225600.477
  }},
  "eventSource": "aws:kinesis",
  "eventVersion": "1.0",
  "eventID": "shardId-000000000000:{seq}",
  "eventName": "aws:kinesis:record",
  "invokeIdentityArn": "arn:aws:iam::123456789012:role/lambda-role",
  "awsRegion": "us-east-1",
  "eventSourceARN": "arn:aws:kinesis:us-east-1:123456789012:stream/{stream}"
}}"#,
                data = base64(data)
            )
        })
        .collect();
    let json = format!(r#"{{"Records": [{}]}}"#, records.join(","));
    serde_json::from_str(&json).unwrap()
}

fn seq(n: u32) -> String {
    format!("4956816737333333333333333333333333333333333333333333{n:04}")
}

#[tokio::test]
async fn partial_failure_reports_only_the_failed_record_and_retries_apply_once() {
    let client = moto_dynamodb().await;
    let (table, dead) = (unique_name("state"), unique_name("dead"));
    DynamoState::create_table(&client, &table).await.unwrap();
    let state = DynamoState::new(client.clone(), &table, &dead);
    let stream = "osprey-telemetry";
    let records = vec![
        (seq(1), "lam-pump", telemetry("lam-pump", 1)),
        (seq(2), "lam-pump", b"not an envelope".to_vec()),
        (seq(3), "lam-pump", telemetry("lam-pump", 2)),
    ];

    // The dead-letter table does not exist yet: the bad record fails, transiently.
    let response = handle(&event(stream, &records), &state).await;
    let failed: Vec<_> = response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone().unwrap())
        .collect();
    assert_eq!(failed, [seq(2)], "only the record that failed is reported");
    let device = state.device("lam-pump").await.unwrap().unwrap();
    assert_eq!(
        device["readings"], "10",
        "the record before it is applied, not the one after: {device:?}"
    );

    // The mapping retries from the failed record; now the table exists.
    DynamoState::create_table(&client, &dead).await.unwrap();
    let response = handle(&event(stream, &records[1..]), &state).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let dead_letters = state.dead_letters(stream).await.unwrap();
    assert_eq!(dead_letters.len(), 1, "{dead_letters:?}");
    assert_eq!(
        dead_letters[0].0,
        format!("shardId-000000000000#{}", seq(2))
    );
    assert!(dead_letters[0].1.contains("CBOR"), "{dead_letters:?}");

    // A full redelivery (e.g. after a timeout) changes nothing.
    let response = handle(&event(stream, &records), &state).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let device = state.device("lam-pump").await.unwrap().unwrap();
    assert_eq!(device["readings"], "20", "{device:?}");
    assert_eq!(device["messages"], "2", "{device:?}");
    assert_eq!(state.dead_letters(stream).await.unwrap().len(), 1);

    // Both messages fall in the first minute: one window with all twenty readings.
    let window = state
        .window("lam-pump", "motor", "temperature", WindowKind::Tumbling, T0)
        .await
        .unwrap()
        .expect("the window of the first minute");
    assert_eq!(window.moments.count, 20);
    assert_eq!(window.moments.min, 1.0);
    assert_eq!(window.moments.max, 2.9);
    assert!(
        (window.moments.sum - 39.0).abs() < 1e-9,
        "{}",
        window.moments.sum
    );
}

#[tokio::test]
async fn lifecycle_events_set_presence_and_older_ones_are_ignored() {
    let (client, table, dead) = moto_state_tables("state").await;
    let state = DynamoState::new(client, &table, &dead);
    let lifecycle = |kind: &str, t: i64| {
        format!(
            r#"{{"clientId":"lam-fan","timestamp":{t},"eventType":"{kind}","sessionIdentifier":"a4666d2a7d844ae4ac5d7b38c9cb7967","principalIdentifier":"12345678901234567890123456789012","versionNumber":0}}"#
        )
        .into_bytes()
    };
    let records = vec![
        (seq(1), "lam-fan", lifecycle("disconnected", T0 + 2_000)),
        // Late delivery of an older event: must not override the newer disconnect.
        (seq(2), "lam-fan", lifecycle("connected", T0 + 1_000)),
    ];
    let response = handle(&event("s", &records), &state).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let device = state.device("lam-fan").await.unwrap().unwrap();
    assert_eq!(device["status"], "offline", "{device:?}");
    let response = handle(
        &event(
            "s",
            &[(seq(3), "lam-fan", lifecycle("connected", T0 + 3_000))],
        ),
        &state,
    )
    .await;
    assert!(response.batch_item_failures.is_empty());
    let device = state.device("lam-fan").await.unwrap().unwrap();
    assert_eq!(device["status"], "online", "{device:?}");
    assert!(state.dead_letters("s").await.unwrap().is_empty());
}

/// Ten readings one second apart from `start_ms` on two series, values from `seq`.
fn two_series(device: &str, seq: u64, start_ms: i64) -> Vec<u8> {
    let mut motor = Series::new("motor", "temperature", "Cel");
    let mut bearing = Series::new("bearing", "vibration", "mm/s");
    for r in 0..10 {
        motor.push(start_ms + r * 1000, 40.0 + seq as f64 + r as f64 / 8.0);
        bearing.push(start_ms + r * 1000, (seq * 3 + r as u64 % 4) as f64 * 0.25);
    }
    Envelope::new(
        device,
        seq,
        Body::Telemetry(TelemetryBatch {
            series: vec![motor, bearing],
        }),
    )
    .encode()
    .unwrap()
}

fn alert(
    device: &str,
    seq: u64,
    rule: &str,
    event: AlertEvent,
    severity: Severity,
    t: i64,
) -> Vec<u8> {
    Envelope::new(
        device,
        seq,
        Body::Alert(Alert {
            rule: rule.to_owned(),
            sensor: "motor".to_owned(),
            metric: "temperature".to_owned(),
            event,
            severity,
            value: 81.0,
            threshold: 80.0,
            time_ms: t,
        }),
    )
    .encode()
    .unwrap()
}

type Windows = Vec<((String, String, WindowKind, i64), Stored)>;

#[tokio::test]
async fn hopping_and_session_windows_match_serves_fold_and_fleet_reads_them() {
    let (client, table, dead) = moto_state_tables("state").await;
    let nz = |v| NonZeroU32::new(v).unwrap();
    let hop = Hopping {
        size_ms: nz(30_000),
        slide_ms: nz(10_000),
    };
    let spec = WindowSpec::new(WINDOW_MS, Some(hop), Some(nz(5_000))).unwrap();
    let state = DynamoState::new(client, &table, &dead).with_windows(spec);
    let dev = "lam-hop";
    use AlertEvent::{Clear, Raise};
    // Delivery order: 2 arrives after 3 and bridges the sessions of 1 and 3; 4 is a session
    // of its own; 3 is delivered twice. Alerts: motor-hot's clear (t+70 s) arrives before an
    // older raise (t+65 s), which must not make it active again.
    let payloads: Vec<(u64, Vec<u8>)> = vec![
        (1, two_series(dev, 1, T0)),
        (3, two_series(dev, 3, T0 + 20_000)),
        (4, two_series(dev, 4, T0 + 100_000)),
        (2, two_series(dev, 2, T0 + 10_000)),
        (3, two_series(dev, 3, T0 + 20_000)),
        (
            5,
            alert(
                dev,
                5,
                "bearing-hot",
                Raise,
                Severity::Critical,
                T0 + 50_000,
            ),
        ),
        (
            6,
            alert(dev, 6, "motor-hot", Raise, Severity::Warning, T0 + 60_000),
        ),
        (
            7,
            alert(dev, 7, "motor-hot", Clear, Severity::Warning, T0 + 70_000),
        ),
        (
            8,
            alert(dev, 8, "motor-hot", Raise, Severity::Warning, T0 + 65_000),
        ),
    ];
    let records: Vec<(String, &str, Vec<u8>)> = payloads
        .iter()
        .enumerate()
        .map(|(i, (_, p))| (seq(i as u32 + 1), dev, p.clone()))
        .collect();
    let response = handle(&event("s", &records), &state).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");

    // Serve's in-memory fold of the same payloads in the same order.
    let mut reference = WindowTable::new();
    for (_, payload) in &payloads {
        let m = prepare_with(payload, &Origin::Direct("test".into()), 0, &spec).unwrap();
        reference.apply(&m.device, m.seq, m.event_ms, m.windows);
    }
    let mut want: Windows = reference
        .iter()
        .filter(|(d, ..)| *d == dev)
        .map(|(_, s, m, k, w)| ((s.to_owned(), m.to_owned(), k, w.start_ms), w.clone()))
        .collect();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let mut got: Windows = state
        .device_windows(dev)
        .await
        .unwrap()
        .into_iter()
        .map(|w| ((w.sensor, w.metric, w.kind, w.window.start_ms), w.window))
        .collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want, "DynamoDB windows differ from serve's fold");
    let sessions: Vec<(i64, i64, u64)> = got
        .iter()
        .filter(|(k, _)| k.0 == "motor" && k.2 == WindowKind::Session)
        .map(|(_, w)| (w.start_ms - T0, w.end_ms - T0, w.agg.count()))
        .collect();
    assert_eq!(sessions, [(0, 34_000, 30), (100_000, 114_000, 10)]);
    let hopping = got
        .iter()
        .filter(|(k, _)| k.2 == WindowKind::Hopping)
        .count();
    assert_eq!(hopping, 2 * 8, "5 + 3 hopping windows per series");

    let mut rules = state.rule_states(dev).await.unwrap();
    rules.sort();
    assert_eq!(
        rules,
        [
            ("bearing-hot".to_owned(), "raise".to_owned()),
            ("motor-hot".to_owned(), "clear".to_owned())
        ]
    );

    // The reader, as an operator runs it.
    let endpoint = moto_endpoint();
    let fleet = |args: &[&str]| {
        Command::new(bin("osprey"))
            .args([
                "fleet",
                "--endpoint-url",
                &endpoint,
                "--region",
                "us-east-1",
            ])
            .args(args)
            .output()
            .unwrap()
    };
    let out = fleet(&["--dynamodb-table", &table, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let devices = json.as_array().unwrap();
    assert_eq!(devices.len(), 1, "{json}");
    let d = &devices[0];
    assert_eq!(d["device"], dev);
    assert_eq!(
        d["readings"], 80,
        "four messages of 2 × 10 readings, once each"
    );
    assert_eq!(d["active_alerts"], 1, "{d}");
    assert_eq!(d["health"], 60, "one critical alert costs 40: {d}");

    let out = fleet(&["--dynamodb-table", &table]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("DEVICE"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(dev) && l.contains(" 80 ")),
        "{text}"
    );

    let out = fleet(&["--dynamodb-table", &table, "--device", dev, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let latest = json["latest"].as_array().unwrap();
    assert_eq!(latest.len(), 6, "2 series × 3 kinds: {json}");
    let session = latest
        .iter()
        .find(|w| w["kind"] == "session" && w["sensor"] == "motor")
        .unwrap();
    assert_eq!(
        (session["start_ms"].as_i64(), session["count"].as_u64()),
        (Some(T0 + 100_000), Some(10))
    );

    let out = fleet(&["--dynamodb-table", &unique_name("missing")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist") && stderr.contains("--dynamodb-table"),
        "{stderr}"
    );
}

/// A bundle (kind 4: several messages in one record, as the agent packs its backlog) applies
/// each inner message once: a later record that repeats some of them in another grouping adds
/// only the new ones, and a bundle with a message of another device is dead-lettered whole.
#[tokio::test]
async fn bundles_apply_each_inner_message_once() {
    let (client, table, dead) = moto_state_tables("state").await;
    let state = DynamoState::new(client, &table, &dead);
    let messages: Vec<Vec<u8>> = (1..=4).map(|q| telemetry("lam-bundle", q)).collect();
    let refs = |range: std::ops::RangeInclusive<usize>| -> Vec<&[u8]> {
        range.map(|q| messages[q - 1].as_slice()).collect()
    };
    let first = osprey_protocol::encode_bundle("lam-bundle", 3, &refs(1..=3)).unwrap();
    // After a crash the agent may regroup: 2 and 3 again, with 4.
    let regrouped = osprey_protocol::encode_bundle("lam-bundle", 4, &refs(2..=4)).unwrap();
    let stranger = telemetry("lam-other", 5);
    let mixed =
        osprey_protocol::encode_bundle("lam-bundle", 5, &[messages[0].as_slice(), &stranger])
            .unwrap();
    let records = vec![
        (seq(1), "lam-bundle", first),
        (seq(2), "lam-bundle", regrouped),
        (seq(3), "lam-bundle", mixed),
    ];
    let response = handle(&event("s", &records), &state).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");
    let device = state.device("lam-bundle").await.unwrap().unwrap();
    assert_eq!(device["messages"], "4", "{device:?}");
    assert_eq!(device["readings"], "40", "{device:?}");
    let dead_letters = state.dead_letters("s").await.unwrap();
    assert_eq!(dead_letters.len(), 1, "{dead_letters:?}");
    assert_eq!(
        dead_letters[0].0,
        format!("shardId-000000000000#{}", seq(3))
    );
    assert!(state.device("lam-other").await.unwrap().is_none());
}

/// Minute `m` of a steady motor temperature (about 40 °C), or 60 °C when `hot`.
fn minute(device: &str, m: u64, hot: bool) -> Vec<u8> {
    let readings = (0..6).map(|k| {
        let t = T0 + m as i64 * 60_000 + k * 10_000;
        let v = if hot {
            60.0
        } else {
            40.0 + ((m * 7 + k as u64) % 5) as f64 / 10.0
        };
        (t, v)
    });
    osprey_tests::motor_temperature(device, 3, m + 1, readings)
}

#[tokio::test]
async fn stored_signals_score_the_fleet_as_serve_does_and_are_computed_at_most_every_interval() {
    let (client, table, dead) = moto_state_tables("signals").await;
    let state = DynamoState::new(client, &table, &dead);
    let dev = "lam-sig";
    // Thirty steady minutes, then a minute far above them: an anomaly, with no alert.
    let mut records: Vec<(String, &str, Vec<u8>)> = (0..30)
        .map(|m| (seq(m as u32 + 1), dev, minute(dev, m, false)))
        .collect();
    records.push((seq(31), dev, minute(dev, 30, true)));
    let response = handle(&event("s", &records), &state).await;
    assert!(response.batch_item_failures.is_empty(), "{response:?}");

    // `osprey fleet --dynamodb-table`'s reader scores it from the stored signals.
    let reader = osprey_cloud::fleet::dynamo::StateReader::connect(
        &table,
        Some(&moto_endpoint()),
        "us-east-1",
    )
    .await;
    let device = reader.device(dev, false).await.unwrap().unwrap();
    assert_eq!(device.active_alerts, 0);
    assert_eq!(
        device.health,
        Some(85),
        "an anomaly costs 15 points: {device:?}"
    );

    // So does the dashboard's fleet listing, with the reason in words.
    let view = osprey_cloud::fleet::dynamo_view::DynamoView::new(
        reader,
        osprey_cloud::analytics::signals::SignalsConfig::default(),
    );
    let page = view
        .fleet_page(osprey_cloud::store::fleetview::FleetQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    let row = page.rows.iter().find(|r| r.device == dev).unwrap();
    assert_eq!(row.health.score, 85, "{row:?}");
    let reason = &row.health.reasons[0].reason;
    assert!(reason.contains("above its usual"), "{reason}");

    // A batch right after does not compute them again (at most every 600 s by default).
    let stored_at =
        |items: &[std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>]| {
            items
                .iter()
                .find(|i| i["sk"].as_s().unwrap() == "health")
                .map(|i| i["at_ms"].as_n().unwrap().clone())
        };
    let scan = |c: aws_sdk_dynamodb::Client| {
        let table = table.clone();
        async move {
            c.scan()
                .table_name(table)
                .send()
                .await
                .unwrap()
                .items()
                .to_vec()
        }
    };
    let dynamo = moto_dynamodb().await;
    let first = stored_at(&scan(dynamo.clone()).await).expect("a health item");
    let more = vec![(seq(32), dev, minute(dev, 31, true))];
    handle(&event("s", &more), &state).await;
    assert_eq!(stored_at(&scan(dynamo.clone()).await), Some(first));

    // With signals off, a new device gets none.
    let quiet = DynamoState::new(dynamo.clone(), &table, &dead).with_signals(Default::default(), 0);
    let other = vec![(seq(33), "lam-quiet", minute("lam-quiet", 0, false))];
    handle(&event("s", &other), &quiet).await;
    let items = scan(dynamo).await;
    assert!(
        !items
            .iter()
            .any(|i| i["pk"].as_s().unwrap() == "dev#lam-quiet"
                && i["sk"].as_s().unwrap() == "health")
    );
}

#[tokio::test]
async fn the_built_function_answers_the_runtime_api_and_reports_its_units() {
    let (client, table, dead) = moto_state_tables("runtime").await;
    let state = DynamoState::new(client, &table, &dead);
    let runtime = osprey_tests::LambdaRuntime::start();
    let mut function = runtime.start_function(&table, &dead, &[]);
    let dev = "lam-rt";
    let records = vec![
        (dev.to_owned(), telemetry(dev, 1)),
        (dev.to_owned(), b"not an envelope".to_vec()),
        (dev.to_owned(), telemetry(dev, 2)),
    ];
    let event = osprey_tests::kinesis_event_json("osprey-telemetry", 1, &records);
    for round in 0..2 {
        let outcome = runtime.invoke(&event, std::time::Duration::from_secs(60));
        let osprey_tests::Outcome::Response(body) = outcome else {
            panic!("round {round}: {outcome:?}\n{}", function.logs());
        };
        let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(answer["batchItemFailures"], serde_json::json!([]), "{body}");
        // The second delivery is a redelivery: nothing changes.
        let device = state.device(dev).await.unwrap().unwrap();
        assert_eq!(device["readings"], "20", "round {round}: {device:?}");
        assert_eq!(
            state.dead_letters("osprey-telemetry").await.unwrap().len(),
            1
        );
    }
    assert!(
        runtime.unknown_requests().is_empty(),
        "{:?}",
        runtime.unknown_requests()
    );
    // Each invocation logs its units as EMF: the first applied two messages, the second none.
    let emf: Vec<serde_json::Value> = function
        .stdout()
        .lines()
        .filter(|l| l.contains("\"WriteUnits\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(emf.len(), 2, "{}", function.stdout());
    assert_eq!(emf[0]["MessagesApplied"], 2);
    assert!(
        emf[0]["WriteUnits"].as_f64().unwrap() >= 3.0,
        "{:?}",
        emf[0]
    );
    assert_eq!(emf[1]["MessagesApplied"], 0);
    assert_eq!(emf[1]["WriteUnits"], 0);
    function.kill();

    // Without its table the function stops at start and says which variable to set.
    let mut broken = runtime.start_function(&table, &dead, &[("OSPREY_STATE_TTL_DAYS", "forever")]);
    let status = broken.wait_exit(std::time::Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        broken.logs().contains("OSPREY_STATE_TTL_DAYS"),
        "{}",
        broken.logs()
    );
}
