//! Bundles (kind 4): round trips, the exact size formula the agent fills bundles by, every
//! decode rule of `SPEC.md` ("Bundle"), and the count and size limits at and over the limit.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use ciborium::Value;
use osprey_protocol::{
    bundle_entry_bytes, bundle_overhead, decode, decode_any, decode_messages, encode_bundle, Alert,
    AlertEvent, Body, DecodeError, Decoded, EncodeError, Envelope, Kind, Limit, Series, Severity,
    TelemetryBatch, MAX_BUNDLE_MESSAGES, MAX_MESSAGE_BYTES,
};
use proptest::prelude::*;

fn telemetry(device: &str, seq: u64, readings: usize) -> Envelope {
    let mut s = Series::new("bearing", "temperature", "Cel");
    for i in 0..readings {
        s.push(1_700_000_000_000 + i as i64 * 1000, 40.0 + i as f64 / 8.0);
    }
    Envelope::new(
        device,
        seq,
        Body::Telemetry(TelemetryBatch { series: vec![s] }),
    )
}

fn alert(device: &str, seq: u64) -> Envelope {
    Envelope::new(
        device,
        seq,
        Body::Alert(Alert {
            rule: "hot".into(),
            sensor: "bearing".into(),
            metric: "temperature".into(),
            event: AlertEvent::Raise,
            severity: Severity::Critical,
            value: 81.0,
            threshold: 80.0,
            time_ms: 1_700_000_000_000,
        }),
    )
}

fn encode_all(msgs: &[Envelope]) -> Vec<Vec<u8>> {
    msgs.iter().map(|m| m.encode().unwrap()).collect()
}

fn bundle(device: &str, seq: u64, msgs: &[Vec<u8>]) -> Result<Vec<u8>, EncodeError> {
    let refs: Vec<&[u8]> = msgs.iter().map(Vec::as_slice).collect();
    encode_bundle(device, seq, &refs)
}

/// A bundle written by hand, without the encoder's checks, so the decoder's can be tested.
fn raw_bundle(device: &str, seq: u64, items: Vec<Value>) -> Vec<u8> {
    let map = Value::Map(vec![
        (Value::Text("v".into()), Value::Integer(1.into())),
        (Value::Text("k".into()), Value::Integer(4.into())),
        (Value::Text("d".into()), Value::Text(device.into())),
        (Value::Text("q".into()), Value::Integer(seq.into())),
        (
            Value::Text("b".into()),
            Value::Map(vec![(Value::Text("m".into()), Value::Array(items))]),
        ),
    ]);
    let mut out = Vec::new();
    ciborium::into_writer(&map, &mut out).unwrap();
    out
}

fn items(msgs: &[Envelope]) -> Vec<Value> {
    encode_all(msgs).into_iter().map(Value::Bytes).collect()
}

fn invalid_bundle(bytes: &[u8]) -> String {
    match decode_messages(bytes) {
        Err(DecodeError::InvalidBody {
            kind: "bundle",
            reason,
        }) => reason,
        other => panic!("expected an invalid bundle, got {other:?}"),
    }
}

#[test]
fn a_bundle_gives_back_its_messages_and_a_plain_message_gives_itself() {
    let msgs = vec![telemetry("pump-7", 10, 3), telemetry("pump-7", 12, 60)];
    let bytes = bundle("pump-7", 12, &encode_all(&msgs)).unwrap();
    assert_eq!(decode_messages(&bytes).unwrap(), msgs);
    let Decoded::Bundle(b) = decode_any(&bytes).unwrap() else {
        panic!("not a bundle")
    };
    assert_eq!(
        (b.device.as_str(), b.seq, b.kind()),
        ("pump-7", 12, Some(Kind::Telemetry))
    );
    // `decode` reads one message only, and says what to use instead.
    assert_eq!(decode(&bytes), Err(DecodeError::IsBundle));
    let plain = msgs[0].encode().unwrap();
    assert_eq!(decode_messages(&plain).unwrap(), vec![msgs[0].clone()]);
    assert_eq!(
        decode_any(&plain).unwrap(),
        Decoded::Message(msgs[0].clone())
    );
}

#[test]
fn every_inner_message_must_be_valid_and_match_the_bundle() {
    let dev = "pump-7";
    // From another device.
    let r = invalid_bundle(&raw_bundle(
        dev,
        2,
        items(&[telemetry(dev, 1, 1), telemetry("x", 2, 1)]),
    ));
    assert!(r.contains("from device \"x\""), "{r}");
    // Two kinds.
    let r = invalid_bundle(&raw_bundle(
        dev,
        2,
        items(&[telemetry(dev, 1, 1), alert(dev, 2)]),
    ));
    assert!(r.contains("one kind"), "{r}");
    // Seqs not increasing.
    let r = invalid_bundle(&raw_bundle(
        dev,
        1,
        items(&[telemetry(dev, 2, 1), telemetry(dev, 1, 1)]),
    ));
    assert!(r.contains("seqs must increase"), "{r}");
    // The bundle's seq is not the last message's.
    let r = invalid_bundle(&raw_bundle(
        dev,
        9,
        items(&[telemetry(dev, 1, 1), telemetry(dev, 2, 1)]),
    ));
    assert!(r.contains("not its last message's seq 2"), "{r}");
    // Empty, a non-byte-string item, no "m".
    assert!(invalid_bundle(&raw_bundle(dev, 0, vec![])).contains("at least one"));
    let r = invalid_bundle(&raw_bundle(dev, 1, vec![Value::Integer(1.into())]));
    assert!(r.contains("message 0 is not a byte string"), "{r}");
    // A bundle inside a bundle.
    let inner = bundle(dev, 1, &encode_all(&[telemetry(dev, 1, 1)])).unwrap();
    let r = invalid_bundle(&raw_bundle(dev, 1, vec![Value::Bytes(inner)]));
    assert!(r.contains("bundles do not nest"), "{r}");
    // An inner message that does not decode: the whole bundle fails, saying which one.
    let mut bad = items(&[telemetry(dev, 1, 1), telemetry(dev, 2, 1)]);
    bad[1] = Value::Bytes(b"\xa1\x61v\x02".to_vec());
    let err = decode_messages(&raw_bundle(dev, 2, bad)).unwrap_err();
    assert!(
        matches!(&err, DecodeError::InBundle { index: 1, error } if matches!(**error, DecodeError::UnsupportedVersion { found: 2, .. })),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("message 1 of the bundle"),
        "{err}"
    );
}

#[test]
fn the_encoder_refuses_what_the_decoder_would() {
    let one = encode_all(&[telemetry("pump-7", 1, 1)]);
    assert_eq!(bundle("pump-7", 1, &[]), Err(EncodeError::EmptyBundle));
    assert!(matches!(
        bundle("pu mp", 1, &one),
        Err(EncodeError::InvalidDevice(_))
    ));
}

/// The smallest message: a telemetry batch without series (22 to 24 bytes).
fn tiny(seq: u64) -> Vec<u8> {
    Envelope::new("d", seq, Body::Telemetry(TelemetryBatch::default()))
        .encode()
        .unwrap()
}

#[test]
fn message_count_at_and_over_the_limit() {
    let msgs: Vec<Vec<u8>> = (1..=MAX_BUNDLE_MESSAGES as u64).map(tiny).collect();
    let at = bundle("d", MAX_BUNDLE_MESSAGES as u64, &msgs).unwrap();
    assert!(at.len() <= MAX_MESSAGE_BYTES);
    assert_eq!(decode_messages(&at).unwrap().len(), MAX_BUNDLE_MESSAGES);

    let mut over = msgs.clone();
    over.push(tiny(MAX_BUNDLE_MESSAGES as u64 + 1));
    let limit = Limit::BundleMessages;
    let found = MAX_BUNDLE_MESSAGES + 1;
    assert_eq!(
        bundle("d", found as u64, &over),
        Err(EncodeError::LimitExceeded { limit, found })
    );
    let raw = raw_bundle(
        "d",
        found as u64,
        over.into_iter().map(Value::Bytes).collect(),
    );
    assert_eq!(
        decode_messages(&raw),
        Err(DecodeError::LimitExceeded { limit, found })
    );
}

#[test]
fn size_at_and_over_the_limit() {
    // One big message padded so that the bundle is exactly MAX_MESSAGE_BYTES.
    let big = telemetry("pump-7", 7, 9000).encode().unwrap();
    assert!(big.len() < MAX_MESSAGE_BYTES / 2, "{}", big.len());
    let small = telemetry("pump-7", 3, 1).encode().unwrap();
    let mut msgs = vec![small];
    let mut seq = 7;
    loop {
        let m = telemetry("pump-7", seq, 9000).encode().unwrap();
        let size = |msgs: &[Vec<u8>], seq| {
            bundle_overhead("pump-7", seq, msgs.len())
                + msgs
                    .iter()
                    .map(|m| bundle_entry_bytes(m.len()))
                    .sum::<usize>()
        };
        let mut with = msgs.clone();
        with.push(m);
        if size(&with, seq) > MAX_MESSAGE_BYTES {
            break;
        }
        msgs = with;
        seq += 1;
    }
    let last = seq - 1;
    let mut used = bundle_overhead("pump-7", last, msgs.len() + 1)
        + msgs
            .iter()
            .map(|m| bundle_entry_bytes(m.len()))
            .sum::<usize>();
    // Fill the rest with one message padded by an unknown key to the exact remaining size.
    let room = MAX_MESSAGE_BYTES - used;
    let filler = padded_telemetry("pump-7", last + 1, room);
    assert_eq!(bundle_entry_bytes(filler.len()), room);
    used += room;
    msgs.push(filler);
    let at = bundle("pump-7", last + 1, &msgs).unwrap();
    assert_eq!((at.len(), used), (MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES));
    assert_eq!(decode_messages(&at).unwrap().len(), msgs.len());

    // One byte more.
    let last_len = msgs.last().unwrap().len();
    *msgs.last_mut().unwrap() =
        padded_telemetry("pump-7", last + 1, bundle_entry_bytes(last_len + 1));
    let size = MAX_MESSAGE_BYTES + 1;
    assert_eq!(
        bundle("pump-7", last + 1, &msgs),
        Err(EncodeError::TooLarge {
            size,
            limit: MAX_MESSAGE_BYTES
        })
    );
    let refs: Vec<Value> = msgs.into_iter().map(Value::Bytes).collect();
    let raw = raw_bundle("pump-7", last + 1, refs);
    assert_eq!(raw.len(), size);
    assert_eq!(
        decode_messages(&raw),
        Err(DecodeError::TooLarge {
            size,
            limit: MAX_MESSAGE_BYTES
        })
    );
}

/// A telemetry message whose bundle entry takes exactly `entry` bytes: unknown keys are ignored, so a
/// padding text in the envelope makes up the size. (The data here is fixed, so whether a CBOR
/// head boundary makes a size unreachable is decided once, not by chance.)
fn padded_telemetry(device: &str, seq: u64, entry: usize) -> Vec<u8> {
    let base = telemetry(device, seq, 1).encode().unwrap();
    let with_pad = |pad: usize| {
        let mut map = match ciborium::from_reader::<Value, _>(&base[..]).unwrap() {
            Value::Map(m) => m,
            _ => unreachable!(),
        };
        map.push((Value::Text("zz".into()), Value::Text("x".repeat(pad))));
        let mut out = Vec::new();
        ciborium::into_writer(&Value::Map(map), &mut out).unwrap();
        out
    };
    let estimate = entry.saturating_sub(base.len() + 3);
    (estimate.saturating_sub(12)..=estimate)
        .rev()
        .map(with_pad)
        .find(|m| bundle_entry_bytes(m.len()) == entry)
        .unwrap_or_else(|| panic!("no padding gives an entry of {entry} bytes"))
}

proptest! {
    /// Random inner messages → bundle → decode_messages gives them back, and the size formula
    /// is exact.
    #[test]
    fn bundles_round_trip_and_their_size_is_exact(
        device in "[A-Za-z0-9_:-]{1,128}",
        first in any::<u64>(),
        gaps in prop::collection::vec(1u64..100_000, 1..40),
        alerts in any::<bool>(),
        readings in prop::collection::vec(0usize..300, 40),
    ) {
        let mut seq = first / 2;
        let mut msgs = Vec::new();
        for (i, gap) in gaps.iter().enumerate() {
            seq += gap;
            msgs.push(if alerts { alert(&device, seq) } else { telemetry(&device, seq, readings[i]) });
        }
        let encoded = encode_all(&msgs);
        let size = bundle_overhead(&device, seq, msgs.len())
            + encoded.iter().map(|m| bundle_entry_bytes(m.len())).sum::<usize>();
        match bundle(&device, seq, &encoded) {
            Ok(bytes) => {
                prop_assert_eq!(bytes.len(), size);
                prop_assert_eq!(decode_messages(&bytes).unwrap(), msgs);
            }
            Err(e) => {
                prop_assert!(size > MAX_MESSAGE_BYTES, "{e}");
                prop_assert_eq!(e, EncodeError::TooLarge { size, limit: MAX_MESSAGE_BYTES });
            }
        }
    }

    #[test]
    fn decoding_mutated_bundles_never_panics(
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8)
    ) {
        let msgs = encode_all(&[telemetry("pump-7", 1, 5), telemetry("pump-7", 2, 5)]);
        let mut bytes = bundle("pump-7", 2, &msgs).unwrap();
        for (i, b) in flips {
            let at = i.index(bytes.len());
            bytes[at] = b;
        }
        let _ = decode_messages(&bytes);
    }
}
