//! The decoder is exactly as strict as `SPEC.md` ("CBOR conventions", "Errors"): one CBOR item
//! and nothing after it; no map with a key twice; no tag, `null`, `undefined` or other simple
//! value where the schema wants a value; reading times within 64 bits; and an unknown key
//! ignored whatever it holds. Every case is a CBOR byte string built by hand here, so the
//! test does not depend on the encoder it checks.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use osprey_protocol::{
    decode, decode_any, decode_messages, Body, DecodeError, EncodeError, Envelope, Series, Status,
    StatusState, TelemetryBatch,
};

/// A CBOR head of `major` type with argument `n`, shortest form.
fn head(major: u8, n: u64) -> Vec<u8> {
    let m = major << 5;
    match n {
        0..=23 => vec![m | n as u8],
        24..=0xff => vec![m | 24, n as u8],
        0x100..=0xffff => [vec![m | 25], (n as u16).to_be_bytes().to_vec()].concat(),
        0x1_0000..=0xffff_ffff => [vec![m | 26], (n as u32).to_be_bytes().to_vec()].concat(),
        _ => [vec![m | 27], n.to_be_bytes().to_vec()].concat(),
    }
}

fn uint(n: u64) -> Vec<u8> {
    head(0, n)
}

/// A CBOR int (major type 0 or 1).
fn int(n: i64) -> Vec<u8> {
    if n >= 0 {
        head(0, n as u64)
    } else {
        head(1, !(n as u64))
    }
}

fn text(s: &str) -> Vec<u8> {
    [head(3, s.len() as u64), s.as_bytes().to_vec()].concat()
}

fn bytes(b: &[u8]) -> Vec<u8> {
    [head(2, b.len() as u64), b.to_vec()].concat()
}

fn double(x: f64) -> Vec<u8> {
    [vec![0xfb], x.to_bits().to_be_bytes().to_vec()].concat()
}

/// A map of `(key, value)` entries, in this order.
fn map(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut out = head(5, entries.len() as u64);
    for (k, v) in entries {
        out.extend(text(k));
        out.extend_from_slice(v);
    }
    out
}

fn array(items: &[Vec<u8>]) -> Vec<u8> {
    [head(4, items.len() as u64), items.concat()].concat()
}

/// An envelope of kind `k` from `dev-1`, seq 7, with extra envelope entries after `"b"`.
fn envelope(k: u64, body: Vec<u8>, extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![
        ("v", uint(1)),
        ("k", uint(k)),
        ("d", text("dev-1")),
        ("q", uint(7)),
        ("b", body),
    ];
    entries.extend(extra.iter().cloned());
    map(&entries)
}

/// `{"st": "online", "up": 12}` plus `extra` entries.
fn status_body(extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![("st", text("online")), ("up", uint(12))];
    entries.extend(extra.iter().cloned());
    map(&entries)
}

fn status_msg() -> Envelope {
    Envelope::new(
        "dev-1",
        7,
        Body::Status(Status {
            uptime_s: 12,
            ..Status::new(StatusState::Online)
        }),
    )
}

/// A series `n`/`m` at base time `t` with deltas `dt` and values `x` (forms A), plus `extra`.
fn series(t: Vec<u8>, dt: &[u64], x: &[f64], extra: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut entries = vec![
        ("n", text("acc")),
        ("m", text("x")),
        ("u", text("g")),
        ("t", t),
        (
            "dt",
            array(&dt.iter().map(|&d| uint(d)).collect::<Vec<_>>()),
        ),
        (
            "x",
            array(&x.iter().map(|&v| double(v)).collect::<Vec<_>>()),
        ),
    ];
    entries.extend(extra.iter().cloned());
    map(&entries)
}

fn telemetry_body(series: Vec<u8>) -> Vec<u8> {
    map(&[("s", array(&[series]))])
}

fn telemetry_msg(t0: i64, dt: Vec<u32>, values: Vec<f64>) -> Envelope {
    let mut s = Series::new("acc", "x", "g");
    s.t0_ms = t0;
    s.dt_ms = dt;
    s.values = values;
    Envelope::new(
        "dev-1",
        7,
        Body::Telemetry(TelemetryBatch { series: vec![s] }),
    )
}

fn is_malformed(result: Result<Envelope, DecodeError>) -> bool {
    matches!(result, Err(DecodeError::Malformed(_)))
}

fn is_invalid_body(result: Result<Envelope, DecodeError>, kind: &str) -> bool {
    matches!(result, Err(DecodeError::InvalidBody { kind: k, .. }) if k == kind)
}

#[test]
fn hand_built_messages_decode() {
    // The builders above make valid messages: the rejections below are about one change each.
    assert_eq!(
        decode(&envelope(3, status_body(&[]), &[])),
        Ok(status_msg())
    );
    let body = telemetry_body(series(int(1_000), &[0, 5], &[1.5, 2.5], &[]));
    assert_eq!(
        decode(&envelope(1, body, &[])),
        Ok(telemetry_msg(1_000, vec![0, 5], vec![1.5, 2.5]))
    );
}

#[test]
fn trailing_bytes_are_malformed() {
    let status = envelope(3, status_body(&[]), &[]);
    // Two messages back to back: the second must not be silently lost.
    let both = [status.clone(), status.clone()].concat();
    assert!(is_malformed(decode(&both)), "{:?}", decode(&both));
    assert!(matches!(decode_any(&both), Err(DecodeError::Malformed(_))));
    assert!(matches!(
        decode_messages(&both),
        Err(DecodeError::Malformed(_))
    ));
    // One stray byte, even a zero.
    let padded = [status, vec![0x00]].concat();
    assert!(is_malformed(decode(&padded)));
}

#[test]
fn trailing_bytes_inside_a_bundle_message_are_refused() {
    let inner = envelope(3, status_body(&[]), &[]);
    let padded = [inner, vec![0xf6]].concat();
    let bundle = envelope(4, map(&[("m", array(&[bytes(&padded)]))]), &[]);
    assert!(matches!(
        decode_any(&bundle),
        Err(DecodeError::InBundle { index: 0, ref error })
            if matches!(**error, DecodeError::Malformed(_))
    ));
}

#[test]
fn duplicate_envelope_keys_are_malformed() {
    // {"v": 1, "v": 2, …}: before 1.3 the first one won.
    let mut twice = map(&[
        ("v", uint(1)),
        ("v", uint(2)),
        ("k", uint(3)),
        ("d", text("dev-1")),
        ("q", uint(7)),
        ("b", status_body(&[])),
    ]);
    assert!(is_malformed(decode(&twice)), "{:?}", decode(&twice));
    // The same key spelled with a longer head is the same key.
    twice = envelope(3, status_body(&[]), &[("q", uint(8))]);
    assert!(is_malformed(decode(&twice)));
    let long_q = [vec![0x78, 0x01, b'q'], uint(8)].concat();
    let mut bytes = envelope(3, status_body(&[]), &[]);
    bytes[0] += 1;
    bytes.extend(long_q);
    assert!(is_malformed(decode(&bytes)));
    // Inside the value of an unknown envelope key too.
    let dup = map(&[("a", uint(1)), ("a", uint(2))]);
    assert!(is_malformed(decode(&envelope(
        3,
        status_body(&[]),
        &[("future", dup)]
    ))));
}

#[test]
fn duplicate_body_keys_are_invalid_body() {
    let status = envelope(3, status_body(&[("up", uint(13))]), &[]);
    assert!(
        is_invalid_body(decode(&status), "status"),
        "{:?}",
        decode(&status)
    );
    let unknown = status_body(&[("zz", map(&[("a", uint(1)), ("a", uint(1))]))]);
    assert!(is_invalid_body(
        decode(&envelope(3, unknown, &[])),
        "status"
    ));
    let series = series(int(0), &[0], &[1.0], &[("t", int(5))]);
    assert!(is_invalid_body(
        decode(&envelope(1, telemetry_body(series), &[])),
        "telemetry"
    ));
    let inner = bytes(&envelope(3, status_body(&[]), &[]));
    let bundle = envelope(
        4,
        map(&[
            ("m", array(std::slice::from_ref(&inner))),
            ("m", array(&[inner])),
        ]),
        &[],
    );
    assert!(matches!(
        decode_any(&bundle),
        Err(DecodeError::InvalidBody { kind: "bundle", .. })
    ));
}

#[test]
fn tags_on_envelope_keys_are_malformed() {
    // A bignum (tag 2) where "q" wants a uint, even one that fits.
    let big_q = map(&[
        ("v", uint(1)),
        ("k", uint(3)),
        ("d", text("dev-1")),
        ("q", [vec![0xc2], bytes(&[7])].concat()),
        ("b", status_body(&[])),
    ]);
    assert!(is_malformed(decode(&big_q)), "{:?}", decode(&big_q));
    let tagged_v = map(&[
        ("v", [vec![0xc1], uint(1)].concat()),
        ("k", uint(3)),
        ("d", text("dev-1")),
        ("q", uint(7)),
        ("b", status_body(&[])),
    ]);
    assert!(is_malformed(decode(&tagged_v)));
    let tagged_d = map(&[
        ("v", uint(1)),
        ("k", uint(3)),
        ("d", [vec![0xd8, 0x20], text("dev-1")].concat()),
        ("q", uint(7)),
        ("b", status_body(&[])),
    ]);
    assert!(is_malformed(decode(&tagged_d)));
    // A tagged body (tag 55799, "self-described CBOR") and a body that is not a map.
    let tagged_b = envelope(3, [vec![0xd9, 0xd9, 0xf7], status_body(&[])].concat(), &[]);
    assert!(is_malformed(decode(&tagged_b)));
    assert!(is_malformed(decode(&envelope(3, uint(5), &[]))));
    let tagged_j = envelope(
        3,
        status_body(&[]),
        &[("j", [vec![0xc2], bytes(&[1])].concat())],
    );
    assert!(is_malformed(decode(&tagged_j)));
}

#[test]
fn tags_in_bodies_are_invalid_body() {
    let epoch_time = status_body(&[("t", [vec![0xc1], uint(1_700_000_000)].concat())]);
    assert!(is_invalid_body(
        decode(&envelope(3, epoch_time, &[])),
        "status"
    ));
    let big_up = map(&[
        ("st", text("online")),
        ("up", [vec![0xc2], bytes(&[12])].concat()),
    ]);
    assert!(is_invalid_body(decode(&envelope(3, big_up, &[])), "status"));
    let tagged_state = map(&[("st", [vec![0xd8, 0x20], text("online")].concat())]);
    assert!(is_invalid_body(
        decode(&envelope(3, tagged_state, &[])),
        "status"
    ));
    // A bignum base time, and a tag on one value of a column.
    let big_t = series([vec![0xc2], bytes(&[3, 0xe8])].concat(), &[0], &[1.0], &[]);
    assert!(is_invalid_body(
        decode(&envelope(1, telemetry_body(big_t), &[])),
        "telemetry"
    ));
    let mut tagged_x = series(int(0), &[0, 1], &[1.0, 2.0], &[]);
    // The last value's double: put tag 1 in front of it (the last 9 bytes).
    let at = tagged_x.len() - 9;
    tagged_x.insert(at, 0xc1);
    assert!(is_invalid_body(
        decode(&envelope(1, telemetry_body(tagged_x), &[])),
        "telemetry"
    ));
    // A tagged series, and a tagged "s".
    let tagged_series = map(&[(
        "s",
        array(&[[vec![0xc1], series(int(0), &[0], &[1.0], &[])].concat()]),
    )]);
    assert!(is_invalid_body(
        decode(&envelope(1, tagged_series, &[])),
        "telemetry"
    ));
    let tagged_s = map(&[(
        "s",
        [vec![0xc1], array(&[series(int(0), &[0], &[1.0], &[])])].concat(),
    )]);
    assert!(is_invalid_body(
        decode(&envelope(1, tagged_s, &[])),
        "telemetry"
    ));
}

#[test]
fn null_and_undefined_are_not_an_absent_key() {
    // "e" (optional) as null: an absent optional key is left out, not written as null.
    let null_e = series(int(0), &[0], &[1.0], &[("e", vec![0xf6])]);
    assert!(is_invalid_body(
        decode(&envelope(1, telemetry_body(null_e), &[])),
        "telemetry"
    ));
    let undefined_up = map(&[("st", text("online")), ("up", vec![0xf7])]);
    assert!(is_invalid_body(
        decode(&envelope(3, undefined_up, &[])),
        "status"
    ));
    let simple_q = map(&[
        ("v", uint(1)),
        ("k", uint(3)),
        ("d", text("dev-1")),
        ("q", vec![0xf8, 0x20]),
        ("b", status_body(&[])),
    ]);
    assert!(is_malformed(decode(&simple_q)));
}

#[test]
fn unknown_keys_are_ignored_whatever_they_hold() {
    let holders: Vec<Vec<u8>> = vec![
        vec![0xf8, 0x20], // unassigned simple value 32
        vec![0xf8, 0xff], // unassigned simple value 255
        vec![0xf7],       // undefined
        vec![0xf0],       // unassigned simple value 16
        vec![0xe0],       // unassigned simple value 0
        vec![0xf6],       // null
        vec![0xf5],       // true
        [vec![0xc2], bytes(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0])].concat(), // bignum 2^72
        [vec![0xd9, 0xd9, 0xf7], map(&[("x", vec![0xf7])])].concat(), // tags around a map
        vec![0x9f, 0xf7, 0xf8, 0x40, 0xc1, 0x00, 0xff], // indefinite array of the above
        vec![0x7f, 0x61, b'a', 0x61, b'b', 0xff], // indefinite text
        vec![0xf9, 0x7e, 0x00], // a half-precision NaN
    ];
    for holder in holders {
        let status = envelope(
            3,
            status_body(&[("future", holder.clone())]),
            &[("future", holder.clone())],
        );
        assert_eq!(decode(&status), Ok(status_msg()), "{holder:02x?}");
        let series = series(int(1_000), &[0], &[2.5], &[("future", holder.clone())]);
        let body = map(&[("s", array(&[series])), ("future", holder.clone())]);
        assert_eq!(
            decode(&envelope(1, body, &[])),
            Ok(telemetry_msg(1_000, vec![0], vec![2.5])),
            "{holder:02x?}"
        );
    }
    // A key that is not text is an unknown key too.
    let mut status = envelope(3, status_body(&[]), &[]);
    status[0] += 1;
    status.extend([0x01, 0xf7]); // 1: undefined
    assert_eq!(decode(&status), Ok(status_msg()));
}

#[test]
fn reading_times_outside_64_bits_are_invalid_body() {
    // t0 = 2^63 - 10 and deltas 0, 5, 5: the last reading is at 2^63 exactly, one too far.
    let near_max = i64::MAX - 9;
    let over = series(int(near_max), &[0, 5, 5], &[1.0, 2.0, 3.0], &[]);
    let result = decode(&envelope(1, telemetry_body(over), &[]));
    assert!(is_invalid_body(result.clone(), "telemetry"), "{result:?}");
    // One less is the largest time there is, and fine.
    let at = series(int(near_max), &[0, 5, 4], &[1.0, 2.0, 3.0], &[]);
    let msg = decode(&envelope(1, telemetry_body(at), &[])).unwrap();
    let Body::Telemetry(batch) = &msg.body else {
        panic!("not telemetry")
    };
    assert_eq!(batch.series[0].last_time_ms(), i64::MAX);
    // The period form: t0 = 2^63 - 1000, p = 1000, two readings.
    let period = map(&[
        ("n", text("acc")),
        ("m", text("x")),
        ("t", int(i64::MAX - 999)),
        ("p", uint(1000)),
        ("x", array(&[double(1.0), double(2.0)])),
    ]);
    assert!(is_invalid_body(
        decode(&envelope(1, telemetry_body(period), &[])),
        "telemetry"
    ));
    // The encoder refuses what the decoder would.
    let too_late = telemetry_msg(near_max, vec![0, 5, 5], vec![1.0, 2.0, 3.0]);
    assert!(matches!(
        too_late.encode(),
        Err(EncodeError::TimeOutOfRange { .. })
    ));
    let latest = telemetry_msg(near_max, vec![0, 5, 4], vec![1.0, 2.0, 3.0]);
    assert_eq!(decode(&latest.encode().unwrap()).unwrap(), latest);
    // Negative base times are fine as long as the readings stay in range.
    let early = telemetry_msg(i64::MIN, vec![0, 1], vec![1.0, 2.0]);
    assert_eq!(decode(&early.encode().unwrap()).unwrap(), early);
}

/// Regression: a scaled column whose running sum is exactly -2^63 took `i64::abs` out of
/// range (a panic with overflow checks, and without them a sum of -2^63 passed the ±2^53
/// check). The differential test's respelled messages found it.
#[test]
fn scaled_sum_of_minus_two_to_the_63_is_invalid_body() {
    let body = |xi: Vec<Vec<u8>>| {
        telemetry_body(map(&[
            ("n", text("acc")),
            ("m", text("x")),
            ("t", int(0)),
            ("p", uint(1000)),
            ("xi", array(&xi)),
        ]))
    };
    for xi in [
        vec![int(i64::MIN)],
        vec![int(-(1 << 53)), int(i64::MIN + (1 << 53))],
    ] {
        let result = decode(&envelope(1, body(xi), &[]));
        assert!(is_invalid_body(result.clone(), "telemetry"), "{result:?}");
    }
    // The edge itself is fine.
    let edge = decode(&envelope(1, body(vec![int(-(1 << 53))]), &[])).unwrap();
    let Body::Telemetry(batch) = &edge.body else {
        panic!("not telemetry")
    };
    assert_eq!(batch.series[0].values, [-9_007_199_254_740_992.0]);
}

#[test]
fn split_parts_never_wrap_the_sequence_number() {
    let mut s = Series::new("acc", "x", "g");
    for i in 0..2_000 {
        s.push(i, i as f64 + 0.123_456_789);
    }
    let batch = TelemetryBatch { series: vec![s] };
    let parts = batch.split_to_fit(4096).unwrap().len();
    assert!(parts > 2);
    // Numbered up to u64::MAX exactly: fine; one more would wrap.
    let last_fits = u64::MAX - (parts as u64 - 1);
    let messages = batch.encode_split("dev-1", last_fits, 4096).unwrap();
    assert_eq!(decode(messages.last().unwrap()).unwrap().seq, u64::MAX);
    assert!(matches!(
        batch.encode_split("dev-1", last_fits + 1, 4096),
        Err(EncodeError::SeqOverflow { .. })
    ));
}
