//! Random bytes and random mutations of every golden vector of `SPEC.md` into `decode`,
//! `decode_any` and `decode_messages`: never a panic, the three agree, and whatever is
//! accepted encodes again and decodes to the same message, bit for bit (so the strictness
//! rules never refuse what the encoder writes). A vector with anything appended is always
//! `Malformed`. Run long with `PROPTEST_CASES=200000`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use osprey_protocol::{decode, decode_any, decode_messages, Body, DecodeError, Decoded, Envelope};
use proptest::prelude::*;

/// The golden vectors, read once.
static VECTORS: std::sync::LazyLock<Vec<Vec<u8>>> = std::sync::LazyLock::new(spec_vectors);

/// The bytes of every `<!-- vector: NAME -->` block of SPEC.md.
fn spec_vectors() -> Vec<Vec<u8>> {
    let spec = include_str!("../SPEC.md");
    let mut out = Vec::new();
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        if !line.trim().starts_with("<!-- vector: ") {
            continue;
        }
        lines.next(); // the ```hex fence
        let hex_text: String = lines
            .by_ref()
            .take_while(|l| l.trim() != "```")
            .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
            .collect();
        out.push(hex::decode(hex_text).unwrap());
    }
    assert!(out.len() >= 9, "SPEC.md has {} vectors", out.len());
    out
}

/// A message with its floats as bits, so that NaN compares equal to itself.
fn bits(msg: &Envelope) -> String {
    match &msg.body {
        Body::Telemetry(b) => {
            let cols: Vec<_> = b
                .series
                .iter()
                .map(|s| {
                    let v: Vec<u64> = s.values.iter().map(|x| x.to_bits()).collect();
                    (&s.sensor, &s.metric, &s.unit, s.t0_ms, &s.dt_ms, v)
                })
                .collect();
            format!("{} {} {} {cols:?}", msg.device, msg.epoch, msg.seq)
        }
        Body::Alert(a) => format!(
            "{} {} {} {a:?} {} {}",
            msg.device,
            msg.epoch,
            msg.seq,
            a.value.to_bits(),
            a.threshold.to_bits()
        ),
        other => format!("{} {} {} {other:?}", msg.device, msg.epoch, msg.seq),
    }
}

/// Checks the properties on one input.
fn check(bytes: &[u8]) -> Result<(), TestCaseError> {
    let one = decode(bytes);
    let any = decode_any(bytes);
    let all = decode_messages(bytes);
    match (&any, &all) {
        (Ok(d), Ok(msgs)) => {
            let from_any: Vec<String> = d.clone().into_messages().iter().map(bits).collect();
            let from_all: Vec<String> = msgs.iter().map(bits).collect();
            prop_assert_eq!(from_any, from_all);
        }
        (Err(a), Err(b)) => prop_assert_eq!(a, b),
        _ => prop_assert!(false, "decode_any and decode_messages disagree"),
    }
    match (&one, &any) {
        (Ok(msg), Ok(Decoded::Message(m))) => prop_assert_eq!(bits(msg), bits(m)),
        // `decode` stops at the header of a bundle; `decode_any` goes on to its body.
        (Err(DecodeError::IsBundle), Ok(Decoded::Bundle(_)) | Err(_)) => {}
        (Err(a), Err(b)) => prop_assert_eq!(a, b),
        _ => prop_assert!(false, "decode and decode_any disagree: {one:?} / {any:?}"),
    }
    let messages = match any {
        Ok(d) => d.into_messages(),
        Err(_) => return Ok(()),
    };
    for msg in messages {
        match msg.encode() {
            Ok(again) => {
                let back = decode(&again);
                prop_assert!(back.is_ok(), "re-encoded message refused: {back:?}");
                prop_assert_eq!(bits(&back.unwrap()), bits(&msg));
            }
            // A re-encoding may be a few bytes longer (a missing "u" is written as "").
            Err(osprey_protocol::EncodeError::TooLarge { .. }) => {}
            Err(e) => prop_assert!(false, "decoded but does not encode: {e}"),
        }
    }
    Ok(())
}

/// One edit of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    Set(prop::sample::Index, u8),
    Insert(prop::sample::Index, Vec<u8>),
    Remove(prop::sample::Index, usize),
    Truncate(prop::sample::Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        4 => (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<prop::sample::Index>(), prop::collection::vec(any::<u8>(), 1..12))
            .prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => (any::<prop::sample::Index>(), 1usize..12).prop_map(|(i, n)| Edit::Remove(i, n)),
        1 => any::<prop::sample::Index>().prop_map(Edit::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, edit: &Edit) {
    if bytes.is_empty() {
        return;
    }
    match edit {
        Edit::Set(i, b) => {
            let at = i.index(bytes.len());
            bytes[at] = *b;
        }
        Edit::Insert(i, new) => {
            let at = i.index(bytes.len() + 1);
            bytes.splice(at..at, new.iter().copied());
        }
        Edit::Remove(i, n) => {
            let at = i.index(bytes.len());
            let end = (at + n).min(bytes.len());
            bytes.drain(at..end);
        }
        Edit::Truncate(i) => bytes.truncate(i.index(bytes.len())),
    }
}

proptest! {
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        check(&bytes)?;
    }

    #[test]
    fn mutated_vectors_never_panic_and_round_trip(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..6),
    ) {
        let mut bytes = VECTORS[which.index(VECTORS.len())].clone();
        for e in &edits {
            apply(&mut bytes, e);
        }
        check(&bytes)?;
    }

    #[test]
    fn anything_after_a_vector_is_malformed(
        which in any::<prop::sample::Index>(),
        tail in prop::collection::vec(any::<u8>(), 1..40),
    ) {
        let mut bytes = VECTORS[which.index(VECTORS.len())].clone();
        bytes.extend(tail);
        prop_assert!(matches!(decode_any(&bytes), Err(DecodeError::Malformed(_))));
    }
}
