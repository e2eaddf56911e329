//! Strict reading of one CBOR data item (RFC 8949) into a generic value, and the checks on
//! generic values that the schema rules of `SPEC.md` ("CBOR conventions", "Errors") need.
//!
//! ```text
//!  bytes ─► read() ─► Value            one well-formed item, nothing after it, ≤ MAX_DEPTH deep
//!                        │
//!                        ├─ duplicate_key()   no map anywhere has a key twice
//!                        └─ not_spec_type()   no tag, null, undefined or other simple value
//!                                             where the schema wants one of its types
//! ```
//!
//! Why not `ciborium::from_reader`: it reads a prefix and leaves trailing bytes unseen, it
//! refuses the unassigned simple values (`f8 20`), which `SPEC.md` lets an unknown key hold, it
//! reads `undefined` as `null`, and its value deserializer looks through tags (a bignum
//! where an integer is wanted passes). This reader keeps everything that is on the wire, so
//! the schema code can refuse what `SPEC.md` refuses and ignore what it ignores.
//!
//! Generic values are `ciborium::Value`. It has no variant for a simple value other than
//! `false`, `true` and `null`, so `undefined` and the unassigned ones are read as the tag
//! [`SIMPLE`] around the simple value's number: never a spec type, like every tag.

use alloc::{boxed::Box, format, string::String, vec::Vec};

use ciborium::value::{Integer, Value};

/// The tag number under which [`read`] keeps a simple value that `ciborium::Value` cannot
/// hold (`undefined`, 23, and the unassigned 0–19 and 32–255). No registered tag has it.
pub(crate) const SIMPLE: u64 = u64::MAX;

/// Why bytes are not one well-formed CBOR item within the depth limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CborError {
    /// Not well-formed, or followed by more bytes: what is wrong, and where.
    Malformed(String),
    /// Maps, arrays and tags are nested deeper than the limit.
    TooDeep,
}

/// Reads `bytes` as exactly one CBOR item, nested at most `max_depth` deep (maps, arrays and
/// tags each count as a level; the outermost item is level 1). Never panics; work and memory
/// are linear in `bytes.len()`.
pub(crate) fn read(bytes: &[u8], max_depth: usize) -> Result<Value, CborError> {
    let mut reader = Reader {
        bytes,
        pos: 0,
        max_depth,
    };
    let value = reader.item(1)?;
    if reader.pos != bytes.len() {
        return Err(CborError::Malformed(format!(
            "{} trailing bytes after the CBOR item (which ends at byte {}); a payload is \
             exactly one item",
            bytes.len() - reader.pos,
            reader.pos
        )));
    }
    Ok(value)
}

/// The argument of a CBOR head.
enum Arg {
    /// A number (a length, a value, a tag number, or the bits of a float).
    Value(u64),
    /// Additional information 31: an indefinite length (or, in major type 7, a break).
    Indefinite,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Reader<'a> {
    fn malformed(&self, what: &str) -> CborError {
        CborError::Malformed(format!("{what} at byte {}", self.pos))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], CborError> {
        let left = self.bytes.len() - self.pos;
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= left)
            .ok_or_else(|| self.malformed("truncated item"))?;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Reads a head: major type, additional information and argument.
    fn head(&mut self) -> Result<(u8, u8, Arg), CborError> {
        let first = self.take(1)?[0];
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => Arg::Value(u64::from(info)),
            24..=27 => {
                let n = 1usize << (info - 24);
                let mut buf = [0u8; 8];
                buf[8 - n..].copy_from_slice(self.take(n as u64)?);
                Arg::Value(u64::from_be_bytes(buf))
            }
            31 => Arg::Indefinite,
            _ => return Err(self.malformed("reserved additional information 28-30")),
        };
        Ok((major, info, arg))
    }

    /// Whether the next byte is a break (`ff`); consumes it if so.
    fn at_break(&mut self) -> bool {
        if self.bytes.get(self.pos) == Some(&0xff) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Checks that a container or tag at `depth` is within the limit.
    fn enter(&self, depth: usize) -> Result<(), CborError> {
        if depth > self.max_depth {
            Err(CborError::TooDeep)
        } else {
            Ok(())
        }
    }

    /// The bytes of a byte or text string of `major` type: definite, or indefinite made of
    /// definite chunks of the same major type (text chunks each valid UTF-8).
    fn string(&mut self, major: u8, arg: Arg) -> Result<Vec<u8>, CborError> {
        if let Arg::Value(n) = arg {
            return Ok(self.take(n)?.to_vec());
        }
        let mut out = Vec::new();
        while !self.at_break() {
            let (m, _, chunk) = self.head()?;
            let Arg::Value(n) = chunk else {
                return Err(self.malformed("nested indefinite-length string"));
            };
            if m != major {
                return Err(self.malformed("string chunk of another major type"));
            }
            let chunk = self.take(n)?;
            if major == 3 && core::str::from_utf8(chunk).is_err() {
                return Err(self.malformed("text chunk is not UTF-8"));
            }
            out.extend_from_slice(chunk);
        }
        Ok(out)
    }

    /// How many items a definite container of `n` entries (each `per` items) can have at
    /// most, given the bytes left (each item takes at least one byte).
    fn count(&self, n: u64, per: u64) -> Result<usize, CborError> {
        let left = (self.bytes.len() - self.pos) as u64;
        match n.checked_mul(per) {
            Some(items) if items <= left => Ok(n as usize),
            _ => Err(self.malformed("container longer than the payload")),
        }
    }

    fn item(&mut self, depth: usize) -> Result<Value, CborError> {
        let (major, info, arg) = self.head()?;
        Ok(match (major, arg) {
            (0, Arg::Value(n)) => Value::Integer(Integer::from(n)),
            (1, Arg::Value(n)) => Value::Integer(
                Integer::try_from(-1 - i128::from(n))
                    .map_err(|_| self.malformed("negative integer out of range"))?,
            ),
            (0 | 1, Arg::Indefinite) => return Err(self.malformed("indefinite-length integer")),
            (2, arg) => Value::Bytes(self.string(2, arg)?),
            (3, arg) => {
                let bytes = self.string(3, arg)?;
                Value::Text(
                    String::from_utf8(bytes).map_err(|_| self.malformed("text is not UTF-8"))?,
                )
            }
            (4, arg) => {
                self.enter(depth)?;
                let mut items = Vec::new();
                match arg {
                    Arg::Value(n) => {
                        let n = self.count(n, 1)?;
                        items.reserve(n);
                        for _ in 0..n {
                            items.push(self.item(depth + 1)?);
                        }
                    }
                    Arg::Indefinite => {
                        while !self.at_break() {
                            items.push(self.item(depth + 1)?);
                        }
                    }
                }
                Value::Array(items)
            }
            (5, arg) => {
                self.enter(depth)?;
                let mut entries = Vec::new();
                match arg {
                    Arg::Value(n) => {
                        let n = self.count(n, 2)?;
                        entries.reserve(n);
                        for _ in 0..n {
                            let key = self.item(depth + 1)?;
                            entries.push((key, self.item(depth + 1)?));
                        }
                    }
                    Arg::Indefinite => {
                        while !self.at_break() {
                            let key = self.item(depth + 1)?;
                            entries.push((key, self.item(depth + 1)?));
                        }
                    }
                }
                Value::Map(entries)
            }
            (6, Arg::Value(tag)) => {
                self.enter(depth)?;
                Value::Tag(tag, Box::new(self.item(depth + 1)?))
            }
            (6, Arg::Indefinite) => return Err(self.malformed("indefinite-length tag")),
            (7, Arg::Indefinite) => return Err(self.malformed("break outside a container")),
            (7, Arg::Value(n)) => match info {
                20 => Value::Bool(false),
                21 => Value::Bool(true),
                22 => Value::Null,
                0..=19 | 23 => simple(n),
                // Two-byte simple values below 32 are not well-formed (RFC 8949, 3.3).
                24 if n < 32 => return Err(self.malformed("simple value below 32 in two bytes")),
                24 => simple(n),
                25 => Value::Float(half_to_f64(n as u16)),
                26 => Value::Float(single_to_f64(n as u32)),
                _ => Value::Float(f64::from_bits(n)),
            },
            // A major type is three bits: every case is above.
            (8..=u8::MAX, _) => return Err(self.malformed("impossible major type")),
        })
    }
}

/// A simple value `ciborium::Value` has no variant for, as the tag [`SIMPLE`].
fn simple(n: u64) -> Value {
    Value::Tag(SIMPLE, Box::new(Value::Integer(Integer::from(n))))
}

/// A half-precision float, exactly (NaN payloads kept in the high bits).
fn half_to_f64(h: u16) -> f64 {
    let sign = u64::from(h >> 15) << 63;
    let exp = (h >> 10) & 0x1f;
    let frac = u64::from(h & 0x3ff);
    let magnitude = match exp {
        0 => frac as f64 * (1.0 / 16_777_216.0), // 2^-24: subnormals (and zero)
        31 => return f64::from_bits(sign | (0x7ff << 52) | (frac << 42)),
        _ => (1024 + frac) as f64 * pow2(i32::from(exp) - 25),
    };
    f64::from_bits(sign | magnitude.to_bits())
}

/// A single-precision float, exactly (NaN payloads kept bit for bit, not quieted).
fn single_to_f64(bits: u32) -> f64 {
    let x = f32::from_bits(bits);
    if x.is_nan() {
        let sign = u64::from(bits >> 31) << 63;
        let frac = u64::from(bits & 0x7f_ffff);
        return f64::from_bits(sign | (0x7ff << 52) | (frac << 29));
    }
    f64::from(x)
}

/// 2^e for the exponents a half float needs (−24 … 5), exactly.
fn pow2(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// The first key that some map in `value` (itself included, at any depth) has twice, shown for
/// an error message. Keys are compared as CBOR values (RFC 8949, 5.6): `"v"` written with a
/// longer head is the same key as `"v"`.
pub(crate) fn duplicate_key(value: &Value) -> Option<String> {
    match value {
        Value::Map(entries) => {
            let mut keys: Vec<Vec<u8>> = Vec::with_capacity(entries.len());
            for (key, _) in entries {
                let mut out = Vec::new();
                // Writing to a Vec does not fail; a key that could not be written is
                // compared by its debug form instead.
                if ciborium::into_writer(key, &mut out).is_err() {
                    out = format!("{key:?}").into_bytes();
                }
                keys.push(out);
            }
            let mut sorted: Vec<usize> = (0..keys.len()).collect();
            sorted.sort_unstable_by(|&a, &b| keys[a].cmp(&keys[b]));
            if let Some(w) = sorted.windows(2).find(|w| keys[w[0]] == keys[w[1]]) {
                return Some(show_key(&entries[w[0]].0));
            }
            entries
                .iter()
                .find_map(|(k, v)| duplicate_key(k).or_else(|| duplicate_key(v)))
        }
        Value::Array(items) => items.iter().find_map(duplicate_key),
        Value::Tag(_, inner) => duplicate_key(inner),
        _ => None,
    }
}

/// A map key for an error message.
pub(crate) fn show_key(key: &Value) -> String {
    match key {
        Value::Text(text) => format!("{text:?}"),
        other => format!("{other:?}"),
    }
}

/// What in `value` (at any depth) is not one of the types `SPEC.md` uses — a tag (bignums
/// included), `null`, `undefined` or another simple value — described for an error message;
/// `None` if there is nothing. Applied to the values of known keys only: an unknown key is
/// ignored whatever it holds.
pub(crate) fn not_spec_type(value: &Value) -> Option<String> {
    match value {
        Value::Tag(SIMPLE, inner) => Some(format!("simple value {}", show_simple(inner))),
        Value::Tag(tag, _) => Some(format!(
            "a tagged item (tag {tag}); tags are never a spec type"
        )),
        Value::Null => Some(String::from("null; an absent optional key is left out")),
        Value::Bool(_) => Some(String::from("a boolean")),
        Value::Array(items) => items.iter().find_map(not_spec_type),
        Value::Map(entries) => entries
            .iter()
            .find_map(|(k, v)| not_spec_type(k).or_else(|| not_spec_type(v))),
        _ => None,
    }
}

fn show_simple(inner: &Value) -> String {
    match inner.as_integer().and_then(|i| u8::try_from(i).ok()) {
        Some(23) => String::from("23 (undefined)"),
        Some(n) => format!("{n}"),
        None => String::from("?"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(bytes: &[u8]) -> Value {
        match read(bytes, 16) {
            Ok(v) => v,
            Err(e) => panic!("{bytes:02x?}: {e:?}"),
        }
    }

    #[test]
    fn reads_what_ciborium_writes() {
        let value = Value::Map(alloc::vec![
            (
                Value::Text("a".into()),
                Value::Integer(Integer::from(-70_000i64))
            ),
            (
                Value::Text("b".into()),
                Value::Array(alloc::vec![
                    Value::Float(41.5),
                    Value::Float(0.1),
                    Value::Float(1.0e-7),
                    Value::Float(f64::INFINITY),
                    Value::Float(6.0e-8),
                    Value::Bytes(alloc::vec![1, 2, 3]),
                    Value::Bool(true),
                    Value::Null,
                    Value::Integer(Integer::from(u64::MAX)),
                    Value::Integer(Integer::try_from(-1 - i128::from(u64::MAX)).unwrap()),
                ])
            ),
        ]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&value, &mut bytes).unwrap();
        assert_eq!(ok(&bytes), value);
    }

    #[test]
    fn half_floats_are_exact() {
        for bits in 0..=u16::MAX {
            let bytes = [0xf9, (bits >> 8) as u8, bits as u8];
            let mine = ok(&bytes);
            let theirs: Value = ciborium::from_reader(&bytes[..]).unwrap();
            match (mine, theirs) {
                (Value::Float(a), Value::Float(b)) if a.is_nan() => assert!(b.is_nan()),
                (Value::Float(a), Value::Float(b)) => {
                    assert_eq!(a.to_bits(), b.to_bits(), "{bits:04x}")
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn indefinite_lengths_are_read() {
        // [_ "a" "b"] as indefinite text, then an indefinite array.
        assert_eq!(
            ok(&[0x7f, 0x61, b'a', 0x61, b'b', 0xff]),
            Value::Text("ab".into())
        );
        assert_eq!(
            ok(&[0x9f, 0x01, 0x02, 0xff]),
            Value::Array(alloc::vec![
                Value::Integer(1.into()),
                Value::Integer(2.into())
            ])
        );
    }

    #[test]
    fn ill_formed_input_is_malformed() {
        for bytes in [
            &[][..],
            &[0x1c],                   // reserved additional information
            &[0x5f, 0x61, 0x61, 0xff], // text chunk in a byte string
            &[0xf8, 0x10],             // two-byte simple value below 32
            &[0xff],                   // lone break
            &[0x62, 0xc3, 0x28],       // invalid UTF-8
            &[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // huge array
            &[0x01, 0x02],             // trailing byte
        ] {
            assert!(
                matches!(read(bytes, 16), Err(CborError::Malformed(_))),
                "{bytes:02x?}"
            );
        }
    }

    #[test]
    fn simple_values_and_tags_are_kept() {
        assert_eq!(ok(&[0xf8, 0x20]), simple(32));
        assert_eq!(ok(&[0xf7]), simple(23));
        assert_eq!(
            ok(&[0xc2, 0x41, 0x01]),
            Value::Tag(2, Box::new(Value::Bytes(alloc::vec![1])))
        );
        assert!(not_spec_type(&ok(&[0xf7])).is_some());
        assert!(not_spec_type(&ok(&[0x82, 0x01, 0xc1, 0x01])).is_some());
        assert!(not_spec_type(&ok(&[0x82, 0x01, 0x02])).is_none());
    }

    #[test]
    fn depth_counts_containers_and_tags() {
        assert!(read(&[0x81, 0x81, 0x00], 2).is_ok());
        assert_eq!(read(&[0x81, 0x81, 0x81, 0x00], 2), Err(CborError::TooDeep));
        assert_eq!(read(&[0x81, 0xc1, 0x81, 0x00], 2), Err(CborError::TooDeep));
        let deep = [0xc1u8; 100_000];
        assert_eq!(read(&deep, 16), Err(CborError::TooDeep));
    }

    #[test]
    fn duplicate_keys_are_found_at_any_depth_and_in_any_spelling() {
        // {"v": 1, "v" (with a one-byte length head): 2}
        let dup = ok(&[0xa2, 0x61, b'v', 0x01, 0x78, 0x01, b'v', 0x02]);
        assert_eq!(duplicate_key(&dup).as_deref(), Some("\"v\""));
        let nested = ok(&[0x81, 0xa2, 0x01, 0x00, 0x01, 0x00]);
        assert!(duplicate_key(&nested).is_some());
        assert!(duplicate_key(&ok(&[0xa2, 0x01, 0x00, 0x02, 0x00])).is_none());
    }
}
