//! Every explicit limit, at the limit (accepted) and one over (a typed error), on both the
//! encoder and the decoder.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use ciborium::Value;
use osprey_protocol::{
    decode, Alert, AlertEvent, Body, DecodeError, EncodeError, Envelope, Limit, Series, Severity,
    Status, StatusState, TelemetryBatch, MAX_DEPTH, MAX_MESSAGE_BYTES, MAX_READINGS_PER_SERIES,
    MAX_SERIES_PER_BATCH, MAX_TEXT_BYTES,
};

fn telemetry(series: Vec<Series>) -> Envelope {
    Envelope::new("dev-1", 1, Body::Telemetry(TelemetryBatch { series }))
}

fn one_reading(sensor: &str) -> Series {
    let mut s = Series::new(sensor, "m", "");
    s.push(0, 1.0);
    s
}

/// Encodes a message without the encoder's limit checks, so that the decoder's can be tested.
fn encode_raw(msg: &Envelope) -> Vec<u8> {
    let mut map = match ciborium::from_reader::<Value, _>(
        &Envelope::new(
            &msg.device,
            msg.seq,
            Body::Telemetry(TelemetryBatch::default()),
        )
        .encode()
        .unwrap()[..],
    )
    .unwrap()
    {
        Value::Map(m) => m,
        _ => unreachable!(),
    };
    let (k, body) = match &msg.body {
        Body::Telemetry(b) => (1, Value::serialized(b).unwrap()),
        Body::Alert(a) => (2, Value::serialized(a).unwrap()),
        Body::Status(s) => (3, Value::serialized(s).unwrap()),
    };
    for (key, v) in &mut map {
        match key.as_text() {
            Some("k") => *v = Value::Integer(k.into()),
            Some("b") => *v = body.clone(),
            _ => {}
        }
    }
    let mut out = Vec::new();
    ciborium::into_writer(&Value::Map(map), &mut out).unwrap();
    out
}

fn over(limit: Limit, found: usize) -> (EncodeError, DecodeError) {
    (
        EncodeError::LimitExceeded { limit, found },
        DecodeError::LimitExceeded { limit, found },
    )
}

/// `at` encodes and decodes back; `over_msg` is refused by the encoder and, written anyway,
/// by the decoder, both with `want`.
fn check(at: Envelope, over_msg: Envelope, want: (EncodeError, DecodeError)) {
    let bytes = at.encode().expect("a message at the limit encodes");
    assert_eq!(decode(&bytes).expect("and decodes"), at);
    assert_eq!(over_msg.encode(), Err(want.0));
    assert_eq!(decode(&encode_raw(&over_msg)), Err(want.1));
}

#[test]
fn series_per_batch() {
    let series = |n| telemetry((0..n).map(|i| one_reading(&format!("s{i}"))).collect());
    check(
        series(MAX_SERIES_PER_BATCH),
        series(MAX_SERIES_PER_BATCH + 1),
        over(Limit::SeriesPerBatch, MAX_SERIES_PER_BATCH + 1),
    );
}

#[test]
fn readings_per_series() {
    let series = |n: usize| {
        let mut s = Series::new("acc", "x", "g");
        s.dt_ms = vec![10; n];
        s.dt_ms[0] = 0;
        s.values = vec![0.0; n];
        telemetry(vec![s])
    };
    check(
        series(MAX_READINGS_PER_SERIES),
        series(MAX_READINGS_PER_SERIES + 1),
        over(Limit::ReadingsPerSeries, MAX_READINGS_PER_SERIES + 1),
    );
}

#[test]
fn text_lengths_in_every_body() {
    let at = "a".repeat(MAX_TEXT_BYTES);
    let long = "a".repeat(MAX_TEXT_BYTES + 1);
    let want = || over(Limit::TextBytes, MAX_TEXT_BYTES + 1);
    let unit = |u: &str| {
        let mut s = Series::new("s", "m", u);
        s.push(0, 1.0);
        telemetry(vec![s])
    };
    check(
        telemetry(vec![one_reading(&at)]),
        telemetry(vec![one_reading(&long)]),
        want(),
    );
    check(unit(&at), unit(&long), want());
    let alert = |rule: &str| {
        Envelope::new(
            "dev-1",
            2,
            Body::Alert(Alert {
                rule: rule.into(),
                sensor: "s".into(),
                metric: "m".into(),
                event: AlertEvent::Raise,
                severity: Severity::Info,
                value: 1.0,
                threshold: 0.5,
                time_ms: 0,
            }),
        )
    };
    check(alert(&at), alert(&long), want());
    let status = |boot: &str| {
        Envelope::new(
            "dev-1",
            3,
            Body::Status(Status {
                boot_id: boot.into(),
                ..Status::new(StatusState::Online)
            }),
        )
    };
    check(status(&at), status(&long), want());
}

/// A status message with an unknown key holding `levels` nested arrays: the message is
/// `levels + 1` deep (the envelope map is level 1).
fn nested(levels: usize) -> Vec<u8> {
    let status = Envelope::new("dev-1", 1, Body::Status(Status::new(StatusState::Online)));
    let mut bytes = status.encode().unwrap();
    bytes[0] += 1; // one more key in the top map
    bytes.extend([0x61, b'z']);
    bytes.extend(std::iter::repeat_n(0x81, levels)); // array(1)
    bytes.push(0x00);
    bytes
}

#[test]
fn nesting_depth() {
    assert!(
        decode(&nested(MAX_DEPTH - 1)).is_ok(),
        "depth {MAX_DEPTH} is accepted"
    );
    assert_eq!(
        decode(&nested(MAX_DEPTH)),
        Err(over(Limit::Depth, MAX_DEPTH + 1).1)
    );
    // Far deeper input is the same typed error, not a stack overflow.
    assert!(matches!(
        decode(&nested(100_000)),
        Err(DecodeError::LimitExceeded {
            limit: Limit::Depth,
            ..
        })
    ));
}

#[test]
fn message_size() {
    // A status whose padding makes the message exactly MAX_MESSAGE_BYTES, then one more.
    let padded = |len: usize| {
        let mut bytes = nested(0);
        let content = len - bytes.len() - 4;
        bytes.pop(); // the value of "z" becomes a byte string with a 4-byte length
        bytes.push(0x5a);
        bytes.extend(u32::try_from(content).unwrap().to_be_bytes());
        bytes.extend(std::iter::repeat_n(0u8, content));
        bytes
    };
    let at = padded(MAX_MESSAGE_BYTES);
    assert_eq!(at.len(), MAX_MESSAGE_BYTES);
    assert!(decode(&at).is_ok());
    let too_big = padded(MAX_MESSAGE_BYTES + 1);
    assert_eq!(
        decode(&too_big),
        Err(DecodeError::TooLarge {
            size: MAX_MESSAGE_BYTES + 1,
            limit: MAX_MESSAGE_BYTES
        })
    );
    // The encoder: a series of doubles just under and just over the limit.
    let series = |n: usize| {
        let mut s = Series::new("acc", "x", "g");
        s.dt_ms = vec![1; n];
        s.values = (0..n).map(|i| 0.1 + i as f64 / 3.0).collect();
        telemetry(vec![s])
    };
    let (mut fits, mut too_many) = (1, 40_000);
    while too_many - fits > 1 {
        let mid = (fits + too_many) / 2;
        if series(mid).encode().is_ok() {
            fits = mid;
        } else {
            too_many = mid;
        }
    }
    assert!(series(fits).encode().unwrap().len() <= MAX_MESSAGE_BYTES);
    assert!(matches!(
        series(fits + 1).encode(),
        Err(EncodeError::TooLarge {
            limit: MAX_MESSAGE_BYTES,
            ..
        })
    ));
}
