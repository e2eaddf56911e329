//! Codec properties: round trips, forward compatibility, and hostile input.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use ciborium::Value;
use osprey_protocol::{
    decode, Alert, AlertEvent, Body, ClockState, DecodeError, EncodeError, Envelope, Series,
    Severity, Status, StatusState, TelemetryBatch, MAX_MESSAGE_BYTES,
};
use proptest::prelude::*;

fn to_value(bytes: &[u8]) -> Vec<(Value, Value)> {
    match ciborium::from_reader::<Value, _>(bytes).expect("cbor") {
        Value::Map(m) => m,
        other => panic!("not a map: {other:?}"),
    }
}

fn to_bytes(map: Vec<(Value, Value)>) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(&Value::Map(map), &mut out).expect("encode");
    out
}

fn sample() -> Envelope {
    let mut s = Series::new("bearing", "temperature", "Cel");
    s.push(1_700_000_000_000, 40.25);
    s.push(1_700_000_000_500, 40.5);
    Envelope::new(
        "dev-1",
        9,
        Body::Telemetry(TelemetryBatch { series: vec![s] }),
    )
}

fn set(map: &mut Vec<(Value, Value)>, key: &str, value: Value) {
    if let Some(e) = map.iter_mut().find(|(k, _)| k.as_text() == Some(key)) {
        e.1 = value;
    } else {
        map.push((Value::Text(key.into()), value));
    }
}

#[test]
fn unknown_fields_are_ignored_in_envelope_and_body() {
    let mut map = to_value(&sample().encode().expect("encode"));
    map.push((Value::Text("future".into()), Value::Bool(true)));
    if let Some((_, Value::Map(body))) = map.iter_mut().find(|(k, _)| k.as_text() == Some("b")) {
        body.push((Value::Text("compression".into()), Value::Integer(7.into())));
    }
    assert_eq!(decode(&to_bytes(map)).expect("decode"), sample());
}

#[test]
fn newer_major_version_is_a_typed_error() {
    let mut map = to_value(&sample().encode().expect("encode"));
    set(&mut map, "v", Value::Integer(2.into()));
    assert_eq!(
        decode(&to_bytes(map)),
        Err(DecodeError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    );
}

#[test]
fn unknown_kind_is_a_typed_error() {
    let mut map = to_value(&sample().encode().expect("encode"));
    set(&mut map, "k", Value::Integer(9.into()));
    assert_eq!(decode(&to_bytes(map)), Err(DecodeError::UnknownKind(9)));
}

#[test]
fn bad_device_id_is_rejected() {
    let mut map = to_value(&sample().encode().expect("encode"));
    set(&mut map, "d", Value::Text("dev/../1".into()));
    assert!(matches!(
        decode(&to_bytes(map)),
        Err(DecodeError::InvalidDevice(_))
    ));
}

#[test]
fn ragged_series_is_rejected_both_ways() {
    let mut msg = sample();
    if let Body::Telemetry(b) = &mut msg.body {
        b.series[0].values.push(1.0);
    }
    assert!(matches!(
        msg.encode(),
        Err(EncodeError::RaggedSeries { .. })
    ));
}

#[test]
fn oversized_payload_is_rejected_before_parsing() {
    let bytes = vec![0u8; MAX_MESSAGE_BYTES + 1];
    assert!(matches!(decode(&bytes), Err(DecodeError::TooLarge { .. })));
}

#[test]
fn oversized_message_is_refused_by_the_encoder() {
    let mut s = Series::new("acc", "x", "m/s2");
    for i in 0..40_000 {
        s.push(i, f64::from(i as u32) + 0.123_456_789);
    }
    let msg = Envelope::new(
        "dev-1",
        1,
        Body::Telemetry(TelemetryBatch { series: vec![s] }),
    );
    assert!(matches!(msg.encode(), Err(EncodeError::TooLarge { .. })));
}

#[test]
fn non_map_and_truncated_input_are_malformed() {
    assert!(matches!(decode(&[]), Err(DecodeError::Malformed(_))));
    assert!(matches!(decode(&[0x01]), Err(DecodeError::Malformed(_))));
    let bytes = sample().encode().expect("encode");
    for cut in 0..bytes.len() {
        assert!(
            decode(&bytes[..cut]).is_err(),
            "prefix of {cut} bytes decoded"
        );
    }
}

fn device_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_:-]{1,40}"
}

fn series() -> impl Strategy<Value = Series> {
    (
        "[a-z]{1,12}",
        "[a-z]{1,12}",
        "[A-Za-z%/]{0,6}",
        -10_000_000_000_000i64..10_000_000_000_000,
        prop::collection::vec((0u32..100_000, -1.0e9f64..1.0e9), 0..50),
    )
        .prop_map(|(n, m, u, t0, readings)| {
            let mut s = Series::new(&n, &m, &u);
            let mut t = t0;
            for (dt, v) in readings {
                t += i64::from(dt);
                s.push(t, v);
            }
            s
        })
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        prop::collection::vec(series(), 0..6)
            .prop_map(|series| Body::Telemetry(TelemetryBatch { series })),
        (any::<bool>(), -1.0e6f64..1.0e6, any::<i64>()).prop_map(|(raise, x, t)| {
            Body::Alert(Alert {
                rule: "r1".into(),
                sensor: "s".into(),
                metric: "m".into(),
                event: if raise {
                    AlertEvent::Raise
                } else {
                    AlertEvent::Clear
                },
                severity: Severity::Warning,
                value: x,
                threshold: x / 2.0,
                time_ms: t,
            })
        }),
        (any::<bool>(), any::<u64>(), any::<u64>()).prop_map(|(on, up, bl)| {
            Body::Status(Status {
                agent_version: "1.2.3".into(),
                uptime_s: up,
                backlog: bl,
                backlog_bytes: bl / 3,
                dropped_quota: up / 7,
                journal_resets: bl % 3,
                will_seq: up / 5,
                boot_id: if on { "b".into() } else { String::new() },
                clock: if up % 2 == 0 {
                    ClockState::Synced
                } else {
                    ClockState::Unknown
                },
                ..Status::new(if on {
                    StatusState::Online
                } else {
                    StatusState::Offline
                })
            })
        }),
    ]
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(
        device in device_id(),
        seq in any::<u64>(),
        epoch in prop_oneof![Just(0u64), 1..=osprey_protocol::MAX_EPOCH],
        body in body(),
    ) {
        let msg = Envelope::new(&device, seq, body).with_epoch(epoch);
        let bytes = msg.encode().expect("encode");
        prop_assert_eq!(decode(&bytes).expect("decode"), msg);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    #[test]
    fn decoding_mutated_messages_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let mut bytes = sample().encode().expect("encode");
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let _ = decode(&bytes);
    }
}
