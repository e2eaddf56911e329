//! The bytes of a segment file: a fixed record header with its own checksum, and the bodies of
//! the three record types. See the [module docs](super) for the rules they serve.
//!
//! ```text
//!  header (26 bytes) = body length (u32 BE) ‖ type (u8) ‖ kind code (u8) ‖ seq (u64 BE)
//!                      ‖ readings (u32 BE) ‖ crc32 of the body (u32 BE)
//!                      ‖ crc32 of the 22 bytes before it (u32 BE)
//!  type 1 message:    kind, seq, readings of the message; body = the encoded envelope
//!  type 2 gone:       kind = seq = readings = 0; body = flags (u8, bit 0: state follows)
//!                     [‖ state] ‖ item count (u32 BE) ‖ items
//!                     item  = class (u8: 0 priority, 1 telemetry) ‖ seq (u64 BE)
//!                             ‖ record bytes (u32 BE) ‖ readings (u32 BE)
//!  type 3 checkpoint: kind = readings = 0, seq = the segment's id; body = state
//!                     ‖ segment count (u32 BE) ‖ summaries
//!                     summary = id ‖ first seq ‖ last seq ‖ live priority ‖ live telemetry
//!                             ‖ live record bytes ‖ live readings ‖ cut offset (8 × u64 BE)
//!                             ‖ removed count (u32 BE) ‖ removed seqs (u64 BE each)
//!  state = dropped batches, readings, alerts, resets, quota readings, foreign-epoch seq (6 × u64 BE)
//! ```
//!
//! The header checksum makes the length trustworthy before the body is read, so a record whose
//! body is damaged can be skipped and the records after it still found; the body checksum is
//! checked only when the body is needed.

use osprey_protocol::Kind;

use super::super::{Class, Counters, Dropped};

/// Bytes of a record header.
pub(crate) const HEADER_LEN: usize = 26;
/// Bytes at the start of every segment file.
pub(crate) const FILE_MAGIC: &[u8; 8] = b"OSPSEG\x00\x01";
/// A cut offset meaning "not cut".
pub(crate) const NOT_CUT: u64 = u64::MAX;

/// Record type codes.
pub(crate) const MESSAGE: u8 = 1;
pub(crate) const GONE: u8 = 2;
pub(crate) const CHECKPOINT: u8 = 3;

/// A record header, checksum verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) len: u32,
    pub(crate) kind: u8,
    pub(crate) code: u8,
    pub(crate) seq: u64,
    pub(crate) readings: u32,
    pub(crate) body_crc: u32,
}

impl Header {
    /// The header of a record with `body`.
    pub(crate) fn new(kind: u8, code: u8, seq: u64, readings: u32, body: &[u8]) -> Header {
        Header {
            len: u32::try_from(body.len()).unwrap_or(u32::MAX),
            kind,
            code,
            seq,
            readings,
            body_crc: crc32fast::hash(body),
        }
    }

    /// Header bytes followed by `body`: one record, ready for one write.
    pub(crate) fn encode_with(&self, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&self.len.to_be_bytes());
        out.push(self.kind);
        out.push(self.code);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.readings.to_be_bytes());
        out.extend_from_slice(&self.body_crc.to_be_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_be_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Parses a header; `None` if it is short or fails its checksum.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Header> {
        let bytes = bytes.get(..HEADER_LEN)?;
        let crc = u32::from_be_bytes(bytes[22..26].try_into().ok()?);
        if crc32fast::hash(&bytes[..22]) != crc {
            return None;
        }
        Some(Header {
            len: u32::from_be_bytes(bytes[0..4].try_into().ok()?),
            kind: bytes[4],
            code: bytes[5],
            seq: u64::from_be_bytes(bytes[6..14].try_into().ok()?),
            readings: u32::from_be_bytes(bytes[14..18].try_into().ok()?),
            body_crc: u32::from_be_bytes(bytes[18..22].try_into().ok()?),
        })
    }

    /// Whether `body` is the one this header was written for.
    pub(crate) fn body_ok(&self, body: &[u8]) -> bool {
        body.len() == self.len as usize && crc32fast::hash(body) == self.body_crc
    }
}

/// A message record, ready to write.
pub(crate) fn message(kind: Kind, seq: u64, readings: u32, envelope: &[u8]) -> Vec<u8> {
    Header::new(MESSAGE, kind.code(), seq, readings, envelope).encode_with(envelope)
}

/// Counters and the foreign-epoch bound, carried by checkpoints and by gone records that
/// change them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct State {
    pub(crate) counters: Counters,
    pub(crate) foreign_below: u64,
}

/// One message that is gone (delivered, evicted or quarantined), with what it counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Item {
    pub(crate) class: Class,
    pub(crate) seq: u64,
    pub(crate) size: u32,
    pub(crate) readings: u32,
}

/// The body of a gone record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Gone {
    pub(crate) state: Option<State>,
    pub(crate) items: Vec<Item>,
}

/// What a checkpoint says about one older segment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Summary {
    pub(crate) id: u64,
    pub(crate) first: u64,
    pub(crate) last: u64,
    /// Live messages per class (0 priority, 1 telemetry).
    pub(crate) live: [u64; 2],
    pub(crate) bytes: u64,
    pub(crate) readings: u64,
    /// Records at or past this offset are lost ([`NOT_CUT`]: none).
    pub(crate) cut: u64,
    /// Seqs of the segment's messages that are gone.
    pub(crate) removed: Vec<u64>,
}

/// The body of a checkpoint record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Checkpoint {
    pub(crate) state: State,
    pub(crate) segments: Vec<Summary>,
}

/// A little reader over a body; every read fails softly on short input.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_be_bytes)
    }
    /// A count of items of at least `min` bytes each, refused if the body cannot hold them.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = self.u32()? as usize;
        (n.checked_mul(min)? <= self.0.len()).then_some(n)
    }
}

fn put(out: &mut Vec<u8>, words: &[u64]) {
    for w in words {
        out.extend_from_slice(&w.to_be_bytes());
    }
}

fn put_count(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
}

impl State {
    /// The six words stored: dropped batches, readings, alerts, resets, quota readings,
    /// foreign-epoch seq.
    fn words(&self) -> [u64; 6] {
        let c = &self.counters;
        [
            c.dropped.batches,
            c.dropped.readings,
            c.dropped.alerts,
            c.resets,
            c.quota_readings,
            self.foreign_below,
        ]
    }

    fn from_words(w: [u64; 6]) -> State {
        State {
            counters: Counters {
                dropped: Dropped {
                    batches: w[0],
                    readings: w[1],
                    alerts: w[2],
                },
                resets: w[3],
                quota_readings: w[4],
            },
            foreign_below: w[5],
        }
    }
}

fn put_state(out: &mut Vec<u8>, s: &State) {
    put(out, &s.words());
}

fn get_state(r: &mut Reader<'_>) -> Option<State> {
    let mut w = [0u64; 6];
    for v in &mut w {
        *v = r.u64()?;
    }
    Some(State::from_words(w))
}

/// Class byte of an item.
fn class_code(class: Class) -> u8 {
    match class {
        Class::Priority => 0,
        Class::Telemetry => 1,
    }
}

impl Gone {
    /// The record, ready to write.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(5 + 48 + self.items.len() * 17);
        body.push(u8::from(self.state.is_some()));
        if let Some(state) = &self.state {
            put_state(&mut body, state);
        }
        put_count(&mut body, self.items.len());
        for item in &self.items {
            body.push(class_code(item.class));
            put(&mut body, &[item.seq]);
            body.extend_from_slice(&item.size.to_be_bytes());
            body.extend_from_slice(&item.readings.to_be_bytes());
        }
        Header::new(GONE, 0, 0, 0, &body).encode_with(&body)
    }

    /// Parses a gone body (checksum already verified).
    pub(crate) fn decode(body: &[u8]) -> Option<Gone> {
        let mut r = Reader(body);
        let state = match r.u8()? {
            0 => None,
            1 => Some(get_state(&mut r)?),
            _ => return None,
        };
        let n = r.count(17)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            let class = match r.u8()? {
                0 => Class::Priority,
                1 => Class::Telemetry,
                _ => return None,
            };
            items.push(Item {
                class,
                seq: r.u64()?,
                size: r.u32()?,
                readings: r.u32()?,
            });
        }
        r.0.is_empty().then_some(Gone { state, items })
    }
}

impl Checkpoint {
    /// The record that opens segment `id`, ready to write.
    pub(crate) fn encode(&self, id: u64) -> Vec<u8> {
        let mut body = Vec::new();
        put_state(&mut body, &self.state);
        put_count(&mut body, self.segments.len());
        for s in &self.segments {
            put(
                &mut body,
                &[
                    s.id, s.first, s.last, s.live[0], s.live[1], s.bytes, s.readings, s.cut,
                ],
            );
            put_count(&mut body, s.removed.len());
            put(&mut body, &s.removed);
        }
        Header::new(CHECKPOINT, 0, id, 0, &body).encode_with(&body)
    }

    /// Parses a checkpoint body (checksum already verified).
    pub(crate) fn decode(body: &[u8]) -> Option<Checkpoint> {
        let mut r = Reader(body);
        let state = get_state(&mut r)?;
        let n = r.count(68)?;
        let mut segments = Vec::with_capacity(n);
        for _ in 0..n {
            let mut w = [0u64; 8];
            for v in &mut w {
                *v = r.u64()?;
            }
            let m = r.count(8)?;
            let mut removed = Vec::with_capacity(m);
            for _ in 0..m {
                removed.push(r.u64()?);
            }
            segments.push(Summary {
                id: w[0],
                first: w[1],
                last: w[2],
                live: [w[3], w[4]],
                bytes: w[5],
                readings: w[6],
                cut: w[7],
                removed,
            });
        }
        r.0.is_empty().then_some(Checkpoint { state, segments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_message_record_round_trips_and_any_flipped_header_bit_is_caught() {
        let record = message(Kind::Alert, 42, 0, b"envelope");
        let header = Header::decode(&record).unwrap();
        assert_eq!(
            (header.kind, header.code, header.seq, header.len),
            (MESSAGE, Kind::Alert.code(), 42, 8)
        );
        assert!(header.body_ok(&record[HEADER_LEN..]));
        for byte in 0..HEADER_LEN {
            for bit in 0..8 {
                let mut bad = record.clone();
                bad[byte] ^= 1 << bit;
                assert_eq!(Header::decode(&bad), None, "flip at {byte}:{bit}");
            }
        }
        let mut bad = record.clone();
        bad[HEADER_LEN + 3] ^= 1;
        assert!(!header.body_ok(&bad[HEADER_LEN..]));
        assert_eq!(Header::decode(&record[..HEADER_LEN - 1]), None);
    }

    /// Golden bytes: the layout is a promise to journals already on cards.
    #[test]
    fn a_gone_record_has_the_documented_bytes() {
        let gone = Gone {
            state: None,
            items: vec![Item {
                class: Class::Telemetry,
                seq: 7,
                size: 300,
                readings: 60,
            }],
        };
        let record = gone.encode();
        let body = &record[HEADER_LEN..];
        assert_eq!(
            body,
            [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 1, 44, 0, 0, 0, 60]
        );
        assert_eq!(&record[..6], [0, 0, 0, 22, GONE, 0]);
    }

    fn item() -> impl Strategy<Value = Item> {
        (any::<bool>(), any::<u64>(), any::<u32>(), any::<u32>()).prop_map(
            |(p, seq, size, readings)| Item {
                class: if p { Class::Priority } else { Class::Telemetry },
                seq,
                size,
                readings,
            },
        )
    }

    fn state() -> impl Strategy<Value = State> {
        proptest::array::uniform6(any::<u64>()).prop_map(State::from_words)
    }

    proptest! {
        #[test]
        fn gone_and_checkpoint_bodies_round_trip(
            s in proptest::option::of(state()),
            items in proptest::collection::vec(item(), 0..20),
            removed in proptest::collection::vec(any::<u64>(), 0..20),
            words in proptest::array::uniform8(any::<u64>()),
        ) {
            let gone = Gone { state: s, items };
            let record = gone.encode();
            let header = Header::decode(&record).unwrap();
            prop_assert!(header.body_ok(&record[HEADER_LEN..]));
            prop_assert_eq!(Gone::decode(&record[HEADER_LEN..]), Some(gone));
            let checkpoint = Checkpoint {
                state: s.unwrap_or_default(),
                segments: vec![Summary {
                    id: words[0], first: words[1], last: words[2], live: [words[3], words[4]],
                    bytes: words[5], readings: words[6], cut: words[7], removed,
                }],
            };
            let record = checkpoint.encode(9);
            prop_assert_eq!(Header::decode(&record).unwrap().seq, 9);
            prop_assert_eq!(Checkpoint::decode(&record[HEADER_LEN..]), Some(checkpoint));
        }

        #[test]
        fn arbitrary_bodies_never_panic(body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Gone::decode(&body);
            let _ = Checkpoint::decode(&body);
            let _ = Header::decode(&body);
        }
    }
}
