//! Any bytes into the direct decoder and the value-tree decoder it replaced
//! (`osprey_protocol::reference`): both answer the same — the same messages (floats as bits,
//! so NaN payloads count) or the same error (variant and fields; the wording of a `Malformed`
//! or `InvalidBody` reason may differ). `tests/differential.rs` checks the same property with
//! proptest, from respelled valid messages; here libFuzzer's coverage guides the inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osprey_protocol::{decode, decode_any, reference, DecodeError, Decoded, Envelope};

fn error_shape(e: &DecodeError) -> String {
    match e {
        DecodeError::Malformed(_) => "Malformed".into(),
        DecodeError::InvalidBody { kind, .. } => format!("InvalidBody({kind})"),
        DecodeError::InBundle { index, error } => {
            format!("InBundle({index}, {})", error_shape(error))
        }
        other => format!("{other:?}"),
    }
}

/// A message as text, its floats as bits.
fn bits(msg: &Envelope) -> String {
    let mut text = format!("{msg:?}");
    if let osprey_protocol::Body::Telemetry(b) = &msg.body {
        for s in &b.series {
            text.extend(s.values.iter().map(|x| format!(" {:x}", x.to_bits())));
        }
    }
    if let osprey_protocol::Body::Alert(a) = &msg.body {
        text += &format!(" {:x} {:x}", a.value.to_bits(), a.threshold.to_bits());
    }
    text
}

fn shape(result: Result<Decoded, DecodeError>) -> Result<Vec<String>, String> {
    result
        .map(|d| d.into_messages().iter().map(bits).collect())
        .map_err(|e| error_shape(&e))
}

fuzz_target!(|data: &[u8]| {
    assert_eq!(
        shape(decode_any(data)),
        shape(reference::decode_any(data)),
        "decode_any"
    );
    assert_eq!(
        shape(decode(data).map(Decoded::Message)),
        shape(reference::decode(data).map(Decoded::Message)),
        "decode"
    );
});
