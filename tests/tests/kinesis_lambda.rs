//! The Lambda handler (`osprey_lambda::handler::handle`) with real Kinesis event JSON (the
//! shape AWS documents for the Kinesis event source mapping) and moto's DynamoDB.
//!
//! A partial failure: the dead-letter table is missing at first, so the undecodable record in
//! the middle of a batch fails (transiently: the record is fine, the table is not); the handler
//! reports exactly that record, having applied the one before it and not the one after. The
//! retry the event source mapping then makes (from the failed record on) succeeds once the
//! table exists, and a full redelivery of the batch changes nothing (dedup).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use aws_lambda_events::event::kinesis::KinesisEvent;
use osprey_lambda::handler::handle;
use osprey_lambda::state::DynamoState;
use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
use osprey_tests::{moto_endpoint, unique_name};

const T0: i64 = 1_767_225_600_000;

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Message `seq` of `device`: ten readings, one second apart, values seq + 0.0 … seq + 0.9.
fn telemetry(device: &str, seq: u64) -> Vec<u8> {
    let mut series = Series::new("motor", "temperature", "Cel");
    for r in 0..10 {
        series.push(
            T0 + (seq as i64 * 10 + r) * 1000,
            seq as f64 + r as f64 / 10.0,
        );
    }
    Envelope::new(
        device,
        seq,
        Body::Telemetry(TelemetryBatch {
            series: vec![series],
        }),
    )
    .encode()
    .unwrap()
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

/// A DynamoDB client for moto's server.
async fn dynamodb() -> aws_sdk_dynamodb::Client {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto_endpoint())
        .load()
        .await;
    aws_sdk_dynamodb::Client::new(&config)
}

#[tokio::test]
async fn partial_failure_reports_only_the_failed_record_and_retries_apply_once() {
    let client = dynamodb().await;
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
        .window("lam-pump", "motor", "temperature", "tumbling", T0)
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
    let client = dynamodb().await;
    let (table, dead) = (unique_name("state"), unique_name("dead"));
    DynamoState::create_table(&client, &table).await.unwrap();
    DynamoState::create_table(&client, &dead).await.unwrap();
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
