//! Random bytes and random mutations of every golden vector of `SPEC.md` into `decode`,
//! `decode_any` and `decode_messages`: never a panic, the three agree, and whatever is
//! accepted encodes again and decodes to the same message, bit for bit (so the strictness
//! rules never refuse what the encoder writes). A vector with anything appended is always
//! `Malformed`. Run long with `PROPTEST_CASES=200000`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

mod support;

use osprey_protocol::{decode, decode_any, decode_messages, DecodeError, Decoded};
use proptest::prelude::*;
use support::{apply, bits, edit, VECTORS};

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
