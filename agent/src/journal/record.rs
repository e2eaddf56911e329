//! The stored form of one journal record, and of its key.
//!
//! ```text
//!  key   = class (1 byte: b'a' priority, b't' telemetry) ‖ seq (8 bytes, big-endian)
//!  value = format (1 byte, = 1) ‖ kind code (1) ‖ readings (4, BE) ‖ crc32 (4, BE) ‖ envelope
//!          crc32 (IEEE) covers kind code ‖ readings ‖ envelope
//! ```
//!
//! Big-endian sequence numbers make byte order numeric order, so a prefix scan of a class is
//! replay order. The header lets eviction count readings and the uplink pick a topic without
//! decoding the envelope; the checksum catches a record damaged behind sled's back.

use osprey_protocol::Kind;

use super::{Class, Entry};

/// Format byte of the value layout above.
const FORMAT: u8 = 1;
/// Bytes before the envelope.
pub(crate) const HEADER_LEN: usize = 10;
/// Key length.
pub(crate) const KEY_LEN: usize = 9;

/// Why a stored record cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordError {
    /// The key is not a class byte and an 8-byte sequence number.
    #[error("malformed key {0:02x?}")]
    Key(Vec<u8>),
    /// The value is shorter than its header.
    #[error("record {seq} is truncated ({len} bytes)")]
    Truncated {
        /// Sequence number.
        seq: u64,
        /// Its length.
        len: usize,
    },
    /// Unknown format byte or kind code.
    #[error("record {seq} has an unknown format {format} or kind {kind}")]
    Unknown {
        /// Sequence number.
        seq: u64,
        /// Format byte.
        format: u8,
        /// Kind code.
        kind: u8,
    },
    /// The checksum does not match.
    #[error("record {seq} fails its checksum")]
    Checksum {
        /// Sequence number.
        seq: u64,
    },
    /// The kind in the header does not belong in the key's class.
    #[error("record {seq} is stored in the wrong class")]
    WrongClass {
        /// Sequence number.
        seq: u64,
    },
    /// The envelope does not decode, or does not match the header.
    #[error("record {seq} does not hold a valid message: {detail}")]
    Envelope {
        /// Sequence number.
        seq: u64,
        /// What is wrong.
        detail: String,
    },
}

impl RecordError {
    /// The sequence number of the bad record, when the key was readable.
    pub fn seq(&self) -> Option<u64> {
        match self {
            RecordError::Key(_) => None,
            RecordError::Truncated { seq, .. }
            | RecordError::Unknown { seq, .. }
            | RecordError::Checksum { seq }
            | RecordError::WrongClass { seq }
            | RecordError::Envelope { seq, .. } => Some(*seq),
        }
    }
}

fn class_byte(class: Class) -> u8 {
    match class {
        Class::Priority => b'a',
        Class::Telemetry => b't',
    }
}

/// The key of `seq` in `class`.
pub(crate) fn key(class: Class, seq: u64) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    key[0] = class_byte(class);
    key[1..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The first byte of every key in `class` (for prefix scans).
pub(crate) fn prefix(class: Class) -> [u8; 1] {
    [class_byte(class)]
}

/// Splits a key into class and sequence number.
pub(crate) fn parse_key(key: &[u8]) -> Result<(Class, u64), RecordError> {
    let class = match key.first() {
        Some(b'a') => Class::Priority,
        Some(b't') => Class::Telemetry,
        _ => return Err(RecordError::Key(key.to_vec())),
    };
    let seq: [u8; 8] = key
        .get(1..)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| RecordError::Key(key.to_vec()))?;
    Ok((class, u64::from_be_bytes(seq)))
}

fn checksum(kind: u8, readings: [u8; 4], message: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&[kind]);
    hasher.update(&readings);
    hasher.update(message);
    hasher.finalize()
}

/// The stored value of a message.
pub(crate) fn encode_value(kind: Kind, readings: u32, message: &[u8]) -> Vec<u8> {
    let readings = readings.to_be_bytes();
    let mut value = Vec::with_capacity(HEADER_LEN + message.len());
    value.push(FORMAT);
    value.push(kind.code());
    value.extend_from_slice(&readings);
    value.extend_from_slice(&checksum(kind.code(), readings, message).to_be_bytes());
    value.extend_from_slice(message);
    value
}

/// The header fields of a stored value, checksum verified.
pub(crate) fn decode_value(seq: u64, class: Class, value: &[u8]) -> Result<Entry, RecordError> {
    if value.len() < HEADER_LEN {
        return Err(RecordError::Truncated {
            seq,
            len: value.len(),
        });
    }
    let (format, kind_code) = (value[0], value[1]);
    let kind = Kind::from_code(u64::from(kind_code))
        .filter(|_| format == FORMAT)
        .ok_or(RecordError::Unknown {
            seq,
            format,
            kind: kind_code,
        })?;
    let readings = [value[2], value[3], value[4], value[5]];
    let stored = u32::from_be_bytes([value[6], value[7], value[8], value[9]]);
    let message = &value[HEADER_LEN..];
    if checksum(kind_code, readings, message) != stored {
        return Err(RecordError::Checksum { seq });
    }
    if Class::of(kind) != class {
        return Err(RecordError::WrongClass { seq });
    }
    Ok(Entry {
        seq,
        kind,
        readings: u32::from_be_bytes(readings),
        message: message.to_vec(),
    })
}

/// The reading count in a stored value's header, unchecked (0 if the value is too short).
pub(crate) fn header_readings(value: &[u8]) -> u32 {
    value
        .get(2..6)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// Deep check: the envelope decodes and agrees with the header.
pub(crate) fn check_envelope(entry: &Entry) -> Result<u64, RecordError> {
    let bad = |detail: String| RecordError::Envelope {
        seq: entry.seq,
        detail,
    };
    let envelope = osprey_protocol::decode(&entry.message).map_err(|e| bad(e.to_string()))?;
    if envelope.seq != entry.seq || envelope.kind() != entry.kind {
        return Err(bad(format!(
            "it says seq {} kind {}, the record header seq {} kind {}",
            envelope.seq,
            envelope.kind().topic_level(),
            entry.seq,
            entry.kind.topic_level()
        )));
    }
    Ok(envelope.epoch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_round_trips_and_any_flipped_bit_is_caught() {
        let value = encode_value(Kind::Telemetry, 60, b"payload");
        let entry = decode_value(7, Class::Telemetry, &value).unwrap();
        assert_eq!(
            (
                entry.seq,
                entry.kind,
                entry.readings,
                entry.message.as_slice()
            ),
            (7, Kind::Telemetry, 60, &b"payload"[..])
        );
        for byte in 1..value.len() {
            for bit in 0..8 {
                let mut bad = value.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode_value(7, Class::Telemetry, &bad).is_err(),
                    "flip at {byte}:{bit}"
                );
            }
        }
        assert_eq!(
            decode_value(7, Class::Telemetry, &value[..5]),
            Err(RecordError::Truncated { seq: 7, len: 5 })
        );
        assert_eq!(
            decode_value(7, Class::Priority, &value),
            Err(RecordError::WrongClass { seq: 7 })
        );
    }

    #[test]
    fn keys_sort_by_class_then_seq() {
        assert!(key(Class::Priority, u64::MAX) < key(Class::Telemetry, 0));
        assert!(key(Class::Telemetry, 255) < key(Class::Telemetry, 256));
        assert_eq!(
            parse_key(&key(Class::Telemetry, 300)),
            Ok((Class::Telemetry, 300))
        );
        assert!(parse_key(b"m").is_err());
        assert!(parse_key(b"t123").is_err());
    }
}
