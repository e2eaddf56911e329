//! Bundles (kind 4, format 1.2): several complete, already-encoded messages carried in one
//! payload, so that a gateway draining a backlog under a publish-rate cap sends up to 128 KiB
//! per publish instead of one batch.
//!
//! ```text
//!  journal entries (encoded envelopes, each with its own seq)
//!     e₁ e₂ … eₙ  ─► encode_bundle(device, seq of eₙ, [e₁ … eₙ]) ─► one MQTT publish
//!  cloud: decode_messages(payload) ─► [m₁ … mₙ] ─► dedup each by (device, epoch, seq)
//! ```
//!
//! A bundle does not merge batches: each inner message keeps the bytes and the sequence number
//! it was journaled with, so a gateway that regroups its backlog differently after a crash
//! sends the same messages again, which the cloud drops one by one. The bundle's own `"q"` is
//! the last inner message's number, for logs; it is not a dedup key.

use alloc::{borrow::ToOwned, boxed::Box, format, string::String, vec::Vec};

use crate::cbor::{push_head, Arg, Cursor};
use crate::decode::{decode_body, over_limit, read_header, BodyAt, Header, Reader};
use crate::error::{DecodeError, EncodeError};
use crate::limit::{Limit, MAX_MESSAGE_BYTES};
use crate::{decode, Envelope, Kind, FORMAT_VERSION};

/// The kind code of a bundle.
pub const BUNDLE_KIND: u8 = 4;

/// A decoded bundle: the device, the bundle's own sequence number (its last message's) and
/// the messages, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Bundle {
    /// Sending device; every inner message is from it.
    pub device: String,
    /// The last inner message's sequence number (not a dedup key).
    pub seq: u64,
    /// The messages, in increasing `seq`, all of one kind; at least one.
    pub messages: Vec<Envelope>,
}

impl Bundle {
    /// The journal epoch of the messages it carries (all are of one epoch; 1.3).
    pub fn epoch(&self) -> u64 {
        self.messages.first().map_or(0, |m| m.epoch)
    }

    /// The kind of the messages it carries (all are of one kind).
    pub fn kind(&self) -> Option<Kind> {
        self.messages.first().map(Envelope::kind)
    }
}

/// A decoded payload: one message or a bundle of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A plain message (kinds 1 to 3).
    Message(Envelope),
    /// A bundle (kind 4).
    Bundle(Bundle),
}

impl Decoded {
    /// The messages, in order: one for a plain message.
    pub fn into_messages(self) -> Vec<Envelope> {
        match self {
            Decoded::Message(msg) => alloc::vec![msg],
            Decoded::Bundle(bundle) => bundle.messages,
        }
    }

    /// The kind of the message, or of the messages a bundle carries: the topic kind it is
    /// published under (`topic::data`).
    pub fn kind(&self) -> Kind {
        match self {
            Decoded::Message(msg) => msg.kind(),
            // A decoded bundle is never empty.
            Decoded::Bundle(bundle) => bundle.kind().unwrap_or(Kind::Telemetry),
        }
    }

    /// The sending device.
    pub fn device(&self) -> &str {
        match self {
            Decoded::Message(msg) => &msg.device,
            Decoded::Bundle(bundle) => &bundle.device,
        }
    }
}

/// Decodes a transport payload: a message or a bundle. Never panics; a bundle with one bad
/// inner message is an error as a whole ([`DecodeError::InBundle`] and the others in
/// `SPEC.md`, "Bundle").
pub fn decode_any(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    read_header(bytes)?.decoded(decode_body, decode_bundle)
}

/// The messages of a transport payload, in order: one for a plain message, every inner
/// message for a bundle. What the cloud deduplicates and applies, one by one.
pub fn decode_messages(bytes: &[u8]) -> Result<Vec<Envelope>, DecodeError> {
    decode_any(bytes).map(Decoded::into_messages)
}

/// Reads the body of a bundle (`SPEC.md`, "Bundle", steps 1 to 4).
fn decode_bundle(header: Header<BodyAt<'_>>) -> Result<Bundle, DecodeError> {
    let Header {
        device, seq, body, ..
    } = header;
    if let Some(key) = body.duplicate {
        return Err(bundle_invalid(format!(
            "duplicate key {key} in a map of the body"
        )));
    }
    let mut r = Reader {
        cur: Cursor::at(body.bytes, body.pos),
    };
    let head = r.head().map_err(bundle_invalid)?;
    let mut messages_at = None;
    r.entries(head.arg, |r, key| {
        if key == Some(b"m") {
            messages_at = Some(r.cur.pos());
        }
        r.skip()
    })
    .map_err(bundle_invalid)?;
    let no_array = || bundle_invalid("missing or non-array key \"m\"".to_owned());
    let mut r = Reader {
        cur: Cursor::at(body.bytes, messages_at.ok_or_else(no_array)?),
    };
    let head = r.head().map_err(bundle_invalid)?;
    if head.major != 4 {
        return Err(no_array());
    }
    let count = r.items(head.arg).map_err(bundle_invalid)?;
    check_count(count)?;
    let mut messages: Vec<Envelope> = Vec::with_capacity(count);
    for index in 0..count {
        let item = r.head().map_err(bundle_invalid)?;
        if item.major != 2 {
            return Err(not_bytes(index));
        }
        let inner = r
            .cur
            .string(2, item.arg)
            .map_err(|e| bundle_invalid(format!("message {index} does not read ({e:?})")))?;
        admit(&mut messages, index, decode(&inner), &device)?;
    }
    if head.arg == Arg::Indefinite && !r.cur.at_break() {
        return Err(bundle_invalid("the message array does not end".to_owned()));
    }
    finish(device, seq, messages)
}

/// `InvalidBody` of a bundle.
pub(crate) fn bundle_invalid(reason: impl Into<String>) -> DecodeError {
    DecodeError::InvalidBody {
        kind: "bundle",
        reason: reason.into(),
    }
}

/// Item `index` of `"m"` is not a byte string.
pub(crate) fn not_bytes(index: usize) -> DecodeError {
    bundle_invalid(format!("message {index} is not a byte string"))
}

/// A bundle holds 1 to [`crate::MAX_BUNDLE_MESSAGES`] messages.
pub(crate) fn check_count(count: usize) -> Result<(), DecodeError> {
    Limit::BundleMessages.check(count).map_err(over_limit)?;
    if count == 0 {
        return Err(bundle_invalid(
            "a bundle holds at least one message".to_owned(),
        ));
    }
    Ok(())
}

/// Adds message `index` of a bundle from `device`, as it decoded, to `messages` (the ones
/// before it): it must decode, not be a bundle, be from the bundle's device, of the epoch and
/// kind of the ones before it, with a greater seq (`SPEC.md`, "Bundle", step 3).
pub(crate) fn admit(
    messages: &mut Vec<Envelope>,
    index: usize,
    decoded: Result<Envelope, DecodeError>,
    device: &str,
) -> Result<(), DecodeError> {
    let msg = match decoded {
        Ok(msg) => msg,
        Err(DecodeError::IsBundle) => {
            return Err(bundle_invalid(format!(
                "message {index} is itself a bundle; bundles do not nest"
            )))
        }
        Err(error) => {
            return Err(DecodeError::InBundle {
                index,
                error: Box::new(error),
            })
        }
    };
    if msg.device != device {
        return Err(bundle_invalid(format!(
            "message {index} is from device {:?}, the bundle from {device:?}",
            msg.device
        )));
    }
    if let Some(prev) = messages.last() {
        if msg.epoch != prev.epoch {
            return Err(bundle_invalid(format!(
                "message {index} is of journal epoch {}, the ones before it of {}; a \
                 bundle carries one epoch",
                msg.epoch, prev.epoch
            )));
        }
        if msg.kind() != prev.kind() {
            return Err(bundle_invalid(format!(
                "message {index} is {}, the ones before it {}; a bundle carries one kind",
                msg.kind().topic_level(),
                prev.kind().topic_level()
            )));
        }
        if msg.seq <= prev.seq {
            return Err(bundle_invalid(format!(
                "message {index} has seq {} after seq {}; seqs must increase",
                msg.seq, prev.seq
            )));
        }
    }
    messages.push(msg);
    Ok(())
}

/// The bundle, once every message is admitted: its seq must be the last message's (step 4).
pub(crate) fn finish(
    device: String,
    seq: u64,
    messages: Vec<Envelope>,
) -> Result<Bundle, DecodeError> {
    let last = messages.last().map_or(0, |m| m.seq);
    if last != seq {
        return Err(bundle_invalid(format!(
            "the bundle's seq {seq} is not its last message's seq {last}"
        )));
    }
    Ok(Bundle {
        device,
        seq,
        messages,
    })
}

/// Encodes a bundle of `messages` (each a complete encoded message of kind 1 to 3 from
/// `device`, all of one kind, in increasing seq) under `seq`, the last one's number.
///
/// The encoder checks the device id, the count (1 to [`MAX_BUNDLE_MESSAGES`](crate::MAX_BUNDLE_MESSAGES)) and the size
/// (at most [`MAX_MESSAGE_BYTES`]); it does not decode the messages again, since the caller
/// encoded them: decoders check everything. The size is exactly
/// [`bundle_overhead`]` + Σ `[`bundle_entry_bytes`], so a caller can fill a bundle to a byte
/// limit without encoding it first.
pub fn encode_bundle(device: &str, seq: u64, messages: &[&[u8]]) -> Result<Vec<u8>, EncodeError> {
    if !crate::valid_device_id(device) {
        return Err(EncodeError::InvalidDevice(device.to_owned()));
    }
    if messages.is_empty() {
        return Err(EncodeError::EmptyBundle);
    }
    Limit::BundleMessages
        .check(messages.len())
        .map_err(|(limit, found)| EncodeError::LimitExceeded { limit, found })?;
    let size = bundle_overhead(device, seq, messages.len())
        + messages
            .iter()
            .map(|m| bundle_entry_bytes(m.len()))
            .sum::<usize>();
    if size > MAX_MESSAGE_BYTES {
        return Err(EncodeError::TooLarge {
            size,
            limit: MAX_MESSAGE_BYTES,
        });
    }
    let mut out = Vec::with_capacity(size);
    // The envelope: map(5) with the keys in the order of every other message.
    out.push(0xa5);
    out.extend_from_slice(b"\x61v");
    push_head(&mut out, MAJOR_UINT, u64::from(FORMAT_VERSION));
    out.extend_from_slice(b"\x61k");
    push_head(&mut out, MAJOR_UINT, u64::from(BUNDLE_KIND));
    out.extend_from_slice(b"\x61d");
    push_head(&mut out, MAJOR_TEXT, device.len() as u64);
    out.extend_from_slice(device.as_bytes());
    out.extend_from_slice(b"\x61q");
    push_head(&mut out, MAJOR_UINT, seq);
    // The body: map(1) {"m": [bstr, …]}.
    out.extend_from_slice(b"\x61b\xa1\x61m");
    push_head(&mut out, MAJOR_ARRAY, messages.len() as u64);
    for m in messages {
        push_head(&mut out, MAJOR_BYTES, m.len() as u64);
        out.extend_from_slice(m);
    }
    debug_assert_eq!(out.len(), size);
    Ok(out)
}

/// Bytes of a bundle besides its entries: the envelope keys, the device, the seq and the
/// array head for `count` messages. See [`encode_bundle`].
pub fn bundle_overhead(device: &str, seq: u64, count: usize) -> usize {
    // map(5) + "v" 1 + "k" 4 + "d" + "q" + "b" map(1) "m": 16 bytes of fixed CBOR.
    16 + head_len(device.len() as u64) + device.len() + head_len(seq) + head_len(count as u64)
}

/// Bytes one message of `len` bytes takes in a bundle: its byte-string head and itself.
pub fn bundle_entry_bytes(len: usize) -> usize {
    head_len(len as u64) + len
}

const MAJOR_UINT: u8 = 0;
const MAJOR_BYTES: u8 = 2;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;

/// Length of the shortest CBOR head for the argument `n` (any major type).
pub(crate) fn head_len(n: u64) -> usize {
    match n {
        0..=23 => 1,
        24..=0xff => 2,
        0x100..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_shortest_and_their_lengths_match() {
        for n in [
            0,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_head(&mut out, MAJOR_UINT, n);
            assert_eq!(out.len(), head_len(n), "{n}");
            let back: ciborium::Value =
                ciborium::from_reader(&out[..]).unwrap_or(ciborium::Value::Null);
            assert_eq!(
                back.as_integer().and_then(|i| u64::try_from(i).ok()),
                Some(n)
            );
        }
    }
}
