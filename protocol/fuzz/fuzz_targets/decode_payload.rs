//! The input path of `osprey decode`: raw bytes or hex text (with white space), then the
//! payload decoder (a message or a bundle). Never panics; hex input decodes like the bytes it spells.
#![no_main]

use libfuzzer_sys::fuzz_target;
use osprey_protocol::{decode_any, payload_bytes};

fuzz_target!(|data: &[u8]| {
    if let Ok(bytes) = payload_bytes(data) {
        let _ = decode_any(&bytes);
        // The same bytes spelled as hex come back unchanged.
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            payload_bytes(hex.as_bytes()).ok().as_deref(),
            Some(&bytes[..])
        );
    }
});
