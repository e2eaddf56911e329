//! Any bytes into the direct decoder and the value-tree decoder it replaced
//! (`osprey_protocol::reference`): both answer the same — the same messages (floats as bits,
//! so NaN payloads count) or the same error (variant and fields; the wording of a `Malformed`
//! or `InvalidBody` reason may differ). `tests/differential.rs` checks the same property with
//! proptest, from respelled valid messages; here libFuzzer's coverage guides the inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osprey_protocol::reference::comparable;
use osprey_protocol::{decode, decode_any, reference, Decoded};

fuzz_target!(|data: &[u8]| {
    assert_eq!(
        comparable(&decode_any(data)),
        comparable(&reference::decode_any(data)),
        "decode_any"
    );
    assert_eq!(
        comparable(&decode(data).map(Decoded::Message)),
        comparable(&reference::decode(data).map(Decoded::Message)),
        "decode"
    );
});
