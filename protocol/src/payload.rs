//! Reading a payload that a person hands over: the raw bytes of a message, or the same bytes
//! as hex text (from a log, `mosquitto_sub -F %x`, a dead letter), possibly wrapped over lines.
//! Used by `osprey decode`; pure, so it is fuzzed with the decoder.

use alloc::{borrow::Cow, vec::Vec};

/// Why the input is not a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Nothing but white space was given.
    #[error("the input is empty")]
    Empty,
    /// The text is made of hex digits but an odd number of them.
    #[error(
        "the input looks like hex but has an odd number of digits ({digits}); a byte is two digits"
    )]
    OddHex {
        /// Number of hex digits.
        digits: usize,
    },
}

/// The payload's bytes: `input` itself, or its hex decoding when `input` is text made only of
/// hex digits and white space. A binary envelope always starts with a CBOR map header (byte
/// 0xa0 to 0xbf), which is not a hex digit or white space, so the two cannot be confused.
pub fn payload_bytes(input: &[u8]) -> Result<Cow<'_, [u8]>, PayloadError> {
    let mut digits = 0usize;
    let mut all_hex = true;
    for &b in input {
        if b.is_ascii_hexdigit() {
            digits += 1;
        } else if !b.is_ascii_whitespace() {
            all_hex = false;
            break;
        }
    }
    if all_hex && digits == 0 {
        return Err(PayloadError::Empty);
    }
    if !all_hex {
        return Ok(Cow::Borrowed(input));
    }
    if digits % 2 != 0 {
        return Err(PayloadError::OddHex { digits });
    }
    let mut out = Vec::with_capacity(digits / 2);
    let mut high: Option<u8> = None;
    for nibble in input.iter().filter_map(|&b| hex_value(b)) {
        match high.take() {
            None => high = Some(nibble),
            Some(h) => out.push(h << 4 | nibble),
        }
    }
    Ok(Cow::Owned(out))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_with_white_space_and_raw_bytes() {
        assert_eq!(
            payload_bytes(b"a5 0F\n1b").as_deref(),
            Ok(&[0xa5, 0x0f, 0x1b][..])
        );
        assert_eq!(
            payload_bytes(&[0xa5, 0x61]).as_deref(),
            Ok(&[0xa5, 0x61][..])
        );
        assert_eq!(payload_bytes(b" \n\t"), Err(PayloadError::Empty));
        assert_eq!(payload_bytes(b""), Err(PayloadError::Empty));
        assert_eq!(
            payload_bytes(b"abc"),
            Err(PayloadError::OddHex { digits: 3 })
        );
        // Text that is not all hex is taken as it is (and then fails to decode as CBOR).
        assert_eq!(payload_bytes(b"hello").as_deref(), Ok(&b"hello"[..]));
    }
}
