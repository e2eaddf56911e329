//! The decoder that [`crate::decode`] replaced, kept as the reference that the differential
//! tests hold the new one to: the payload is read strictly into a generic `ciborium::Value`
//! tree, checked on that tree (duplicate keys, tags and simple values), then deserialized by
//! serde. Slower (every item allocated, most of them twice), but each rule of `SPEC.md` is a
//! separate, readable step, which is what a reference is for.
//!
//! Built only for the crate's own tests and with the `reference-decoder` feature (the
//! protocol's tests, benches and fuzz targets turn it on); nothing else uses it. Its answers
//! differ from [`crate::decode`]'s only in the wording of `Malformed` and `InvalidBody`
//! reasons, and in one corner no encoder reaches: it keeps a simple value the tree has no
//! variant for as the tag 2⁶⁴−1 around its number, so such a map key equals that tag around
//! that integer (see `tests/differential.rs`).

use alloc::{borrow::ToOwned, boxed::Box, format, string::String, vec::Vec};

use ciborium::value::{Integer, Value};

use crate::bundle::{admit, bundle_invalid, check_count, finish, not_bytes, Bundle, Decoded};
use crate::cbor::{Arg, CborError, Cursor};
use crate::decode::{
    body_not_map, cbor_error, check_device, check_epoch, check_size, check_version,
    duplicate_in_envelope, header_kind, missing_field, no_device, not_uint, over_limit, Header,
};
use crate::envelope::{Alert, Body, Envelope, Kind, Status};
use crate::error::DecodeError;
use crate::limit::{Limit, MAX_DEPTH};
use crate::telemetry::TelemetryBatch;

/// Decodes one message the reference way; same contract as [`crate::decode`].
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    read_header(bytes)?.message(decode_body)
}

/// Decodes a message or a bundle the reference way; same contract as [`crate::decode_any`].
pub fn decode_any(bytes: &[u8]) -> Result<Decoded, DecodeError> {
    read_header(bytes)?.decoded(decode_body, decode_bundle)
}

/// What of a decoder's answer the two decoders must agree on: the messages, as text with
/// their floats as bits (so NaN payloads count), or the error's variant and fields, without the
/// free-text reason of a `Malformed` or `InvalidBody` (its wording may differ). For the
/// differential tests and fuzz target.
pub fn comparable(answer: &Result<Decoded, DecodeError>) -> Result<Vec<String>, String> {
    match answer {
        Ok(decoded) => Ok(decoded.clone().into_messages().iter().map(bits).collect()),
        Err(e) => Err(error_kind(e)),
    }
}

/// An error without its free-text reason.
pub fn error_kind(e: &DecodeError) -> String {
    match e {
        DecodeError::Malformed(_) => "Malformed".into(),
        DecodeError::InvalidBody { kind, .. } => format!("InvalidBody({kind})"),
        DecodeError::InBundle { index, error } => {
            format!("InBundle({index}, {})", error_kind(error))
        }
        other => format!("{other:?}"),
    }
}

/// A message as text, every float also as its bits.
fn bits(msg: &Envelope) -> String {
    let mut text = format!("{msg:?}");
    match &msg.body {
        Body::Telemetry(batch) => {
            for series in &batch.series {
                text.extend(series.values.iter().map(|x| format!(" {:x}", x.to_bits())));
            }
        }
        Body::Alert(a) => {
            text += &format!(" {:x} {:x}", a.value.to_bits(), a.threshold.to_bits());
        }
        Body::Status(_) => {}
    }
    text
}

/// Checks the size, parses the CBOR with the depth limit, and reads the envelope keys, in the
/// order `SPEC.md` gives ("Errors"): `v`, `k`, `d`, `q`, `j`, `b`.
fn read_header(bytes: &[u8]) -> Result<Header<Value>, DecodeError> {
    check_size(bytes)?;
    let value = read(bytes, MAX_DEPTH).map_err(cbor_error)?;
    let Value::Map(entries) = value else {
        return Err(DecodeError::Malformed("top level is not a map".to_owned()));
    };
    let keys = Value::Map(
        entries
            .iter()
            .map(|(k, _)| (k.clone(), Value::Null))
            .collect(),
    );
    let duplicate = duplicate_key(&keys).or_else(|| {
        entries
            .iter()
            .filter(|(k, _)| k.as_text() != Some("b"))
            .find_map(|(k, v)| duplicate_key(k).or_else(|| duplicate_key(v)))
    });
    if let Some(key) = duplicate {
        return Err(duplicate_in_envelope(&key));
    }
    let (mut v, mut k, mut d, mut q, mut j, mut b) = (None, None, None, None, None, None);
    for (key, value) in entries {
        let slot = match key.as_text() {
            Some("v") => &mut v,
            Some("k") => &mut k,
            Some("d") => &mut d,
            Some("q") => &mut q,
            Some("j") => &mut j,
            Some("b") => &mut b,
            _ => continue,
        };
        *slot = Some(value);
    }
    let uint = |name: &str, field: Option<&Value>| -> Result<u64, DecodeError> {
        let v = field.ok_or_else(|| missing_field(name))?;
        v.as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| not_uint(name))
    };
    check_version(uint("v", v.as_ref())?)?;
    let kind = header_kind(uint("k", k.as_ref())?)?;
    let device = match d {
        Some(Value::Text(device)) => check_device(device)?,
        _ => return Err(no_device()),
    };
    let seq = uint("q", q.as_ref())?;
    let epoch = match j {
        None => 0,
        Some(value) => check_epoch(uint("j", Some(&value))?)?,
    };
    let body = match b {
        Some(body @ Value::Map(_)) => body,
        Some(_) => return Err(body_not_map()),
        None => return Err(missing_field("b")),
    };
    Ok(Header {
        kind,
        device,
        seq,
        epoch,
        body,
    })
}

fn decode_bundle(header: Header<Value>) -> Result<Bundle, DecodeError> {
    let Header {
        device, seq, body, ..
    } = header;
    if let Some(key) = duplicate_key(&body) {
        return Err(bundle_invalid(format!(
            "duplicate key {key} in a map of the body"
        )));
    }
    let Value::Map(entries) = body else {
        return Err(bundle_invalid("the body is not a map".to_owned()));
    };
    let Some((_, Value::Array(items))) =
        entries.into_iter().find(|(k, _)| k.as_text() == Some("m"))
    else {
        return Err(bundle_invalid("missing or non-array key \"m\"".to_owned()));
    };
    check_count(items.len())?;
    let mut messages: Vec<Envelope> = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let Value::Bytes(inner) = item else {
            return Err(not_bytes(index));
        };
        admit(&mut messages, index, decode(&inner), &device)?;
    }
    finish(device, seq, messages)
}

/// Applies the schema of `kind` to a body (a map: [`read_header`] checked that).
fn decode_body(kind: Kind, body: Value) -> Result<Body, DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidBody {
        kind: kind.topic_level(),
        reason,
    };
    if let Some(key) = duplicate_key(&body) {
        return Err(invalid(format!("duplicate key {key} in a map of the body")));
    }
    // Counts are checked on the generic value, before any column is expanded.
    if let Some(n) = series_count(kind, &body) {
        Limit::SeriesPerBatch.check(n).map_err(over_limit)?;
    }
    let body = schema_view(kind, body).map_err(invalid)?;
    Ok(match kind {
        Kind::Telemetry => {
            let batch: TelemetryBatch =
                body.deserialized().map_err(|e| invalid(schema_error(e)))?;
            for s in &batch.series {
                s.check_limits().map_err(over_limit)?;
            }
            Body::Telemetry(batch)
        }
        Kind::Alert => {
            let alert: Alert = body.deserialized().map_err(|e| invalid(schema_error(e)))?;
            alert.check_limits().map_err(over_limit)?;
            Body::Alert(alert)
        }
        Kind::Status => {
            let status: Status = body.deserialized().map_err(|e| invalid(schema_error(e)))?;
            status.check_limits().map_err(over_limit)?;
            Body::Status(status)
        }
    })
}

/// The keys of an alert body (`SPEC.md`, "Alert").
const ALERT_KEYS: &[&str] = &["r", "n", "m", "e", "l", "x", "h", "t"];
/// The keys of a status body (`SPEC.md`, "Status").
const STATUS_KEYS: &[&str] = &[
    "st", "av", "up", "bl", "dr", "t", "wq", "bb", "dq", "bi", "cs", "jr",
];
/// The keys of a telemetry series (`SPEC.md`, "Telemetry").
const SERIES_KEYS: &[&str] = &["n", "m", "u", "t", "dt", "p", "e", "x", "s", "xi"];

/// The body as its schema sees it: only the keys the schema knows (an unknown key is
/// ignored whatever it holds), and none of those holding a tag, `null`, `undefined` or another
/// simple value, which are never spec types (serde's value deserializer would look through a
/// tag and take `null` for an absent optional key). Types are then checked by serde.
fn schema_view(kind: Kind, body: Value) -> Result<Value, String> {
    let Value::Map(entries) = body else {
        return Err("the body is not a map".to_owned());
    };
    match kind {
        Kind::Alert => known_keys(entries, ALERT_KEYS, "").map(Value::Map),
        Kind::Status => known_keys(entries, STATUS_KEYS, "").map(Value::Map),
        Kind::Telemetry => {
            let mut body = Vec::new();
            for (key, value) in entries {
                if key.as_text() != Some("s") {
                    continue;
                }
                let Value::Array(items) = value else {
                    if let Some(what) = not_spec_type(&value) {
                        return Err(format!("key \"s\" holds {what}"));
                    }
                    body.push((key, value));
                    continue;
                };
                let mut series = Vec::with_capacity(items.len());
                for (i, item) in items.into_iter().enumerate() {
                    series.push(match item {
                        Value::Map(e) => {
                            Value::Map(known_keys(e, SERIES_KEYS, &format!("series {i}: "))?)
                        }
                        other => match not_spec_type(&other) {
                            Some(what) => return Err(format!("series {i} is {what}")),
                            None => other,
                        },
                    });
                }
                body.push((key, Value::Array(series)));
            }
            Ok(Value::Map(body))
        }
    }
}

/// The entries of a map whose text key is one of `known`, each checked to hold spec types only.
fn known_keys(
    entries: Vec<(Value, Value)>,
    known: &[&str],
    context: &str,
) -> Result<Vec<(Value, Value)>, String> {
    let mut out = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let Some(name) = key.as_text().filter(|name| known.contains(name)) else {
            continue;
        };
        if let Some(what) = not_spec_type(&value) {
            return Err(format!("{context}key {name:?} holds {what}"));
        }
        out.push((key, value));
    }
    Ok(out)
}

/// The length of a telemetry body's `"s"` array, if it has one.
fn series_count(kind: Kind, body: &Value) -> Option<usize> {
    let (Kind::Telemetry, Value::Map(entries)) = (kind, body) else {
        return None;
    };
    entries.iter().find_map(|(k, v)| match (k.as_text(), v) {
        (Some("s"), Value::Array(items)) => Some(items.len()),
        _ => None,
    })
}

/// A schema error as text: the message of a custom error (ours say what is wrong with which
/// series), the debug form otherwise.
fn schema_error(e: ciborium::value::Error) -> String {
    match e {
        ciborium::value::Error::Custom(msg) => msg,
    }
}

/// The tag number under which [`read`] keeps a simple value that `ciborium::Value` cannot
/// hold (`undefined`, 23, and the unassigned 0–19 and 32–255). No registered tag has it.
const SIMPLE: u64 = u64::MAX;

/// Reads `bytes` as exactly one CBOR item, nested at most `max_depth` deep (maps, arrays and
/// tags each count as a level; the outermost item is level 1), into a generic value. Never
/// panics; work and memory are linear in `bytes.len()`.
fn read(bytes: &[u8], max_depth: usize) -> Result<Value, CborError> {
    let mut reader = Reader {
        cur: Cursor::at(bytes, 0),
        max_depth,
    };
    let value = reader.item(1)?;
    let end = reader.cur.pos();
    if end != bytes.len() {
        return Err(CborError::Malformed(format!(
            "{} trailing bytes after the CBOR item (which ends at byte {end}); a payload is \
             exactly one item",
            bytes.len() - end,
        )));
    }
    Ok(value)
}

struct Reader<'a> {
    cur: Cursor<'a>,
    max_depth: usize,
}

impl Reader<'_> {
    /// Checks that a container or tag at `depth` is within the limit.
    fn enter(&self, depth: usize) -> Result<(), CborError> {
        if depth > self.max_depth {
            Err(CborError::TooDeep)
        } else {
            Ok(())
        }
    }

    fn item(&mut self, depth: usize) -> Result<Value, CborError> {
        let head = self.cur.head()?;
        Ok(match (head.major, head.arg) {
            (0, Arg::Value(n)) => Value::Integer(Integer::from(n)),
            (1, Arg::Value(n)) => Value::Integer(
                Integer::try_from(-1 - i128::from(n))
                    .map_err(|_| self.cur.malformed("negative integer out of range"))?,
            ),
            (0 | 1, Arg::Indefinite) => {
                return Err(self.cur.malformed("indefinite-length integer"))
            }
            (2, arg) => Value::Bytes(self.cur.string(2, arg)?.into_owned()),
            (3, arg) => {
                let bytes = self.cur.string(3, arg)?.into_owned();
                Value::Text(
                    String::from_utf8(bytes)
                        .map_err(|_| self.cur.malformed("text is not UTF-8"))?,
                )
            }
            (4, arg) => {
                self.enter(depth)?;
                let mut items = Vec::new();
                match arg {
                    Arg::Value(n) => {
                        let n = self.cur.count(n, 1)?;
                        items.reserve(n);
                        for _ in 0..n {
                            items.push(self.item(depth + 1)?);
                        }
                    }
                    Arg::Indefinite => {
                        while !self.cur.at_break() {
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
                        let n = self.cur.count(n, 2)?;
                        entries.reserve(n);
                        for _ in 0..n {
                            let key = self.item(depth + 1)?;
                            entries.push((key, self.item(depth + 1)?));
                        }
                    }
                    Arg::Indefinite => {
                        while !self.cur.at_break() {
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
            (6, Arg::Indefinite) => return Err(self.cur.malformed("indefinite-length tag")),
            (7, Arg::Indefinite) => return Err(self.cur.malformed("break outside a container")),
            (7, Arg::Value(n)) => match head.info {
                20 => Value::Bool(false),
                21 => Value::Bool(true),
                22 => Value::Null,
                0..=19 | 23 => simple(n),
                // Two-byte simple values below 32 are not well-formed (RFC 8949, 3.3).
                24 if n < 32 => {
                    return Err(self.cur.malformed("simple value below 32 in two bytes"))
                }
                24 => simple(n),
                _ => Value::Float(head.float().unwrap_or(f64::NAN)),
            },
            // A major type is three bits: every case is above.
            (8..=u8::MAX, _) => return Err(self.cur.malformed("impossible major type")),
        })
    }
}

/// A simple value `ciborium::Value` has no variant for, as the tag [`SIMPLE`].
fn simple(n: u64) -> Value {
    Value::Tag(SIMPLE, Box::new(Value::Integer(Integer::from(n))))
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
    use crate::{AlertEvent, ClockState, Severity, StatusState};
    use serde::Serialize;

    /// The wire keys of `value` serialized (a map).
    fn wire_keys(value: &impl Serialize) -> Vec<String> {
        let mut out = Vec::new();
        ciborium::into_writer(value, &mut out).ok();
        match ciborium::from_reader::<Value, _>(&out[..]) {
            Ok(Value::Map(entries)) => entries
                .into_iter()
                .filter_map(|(k, _)| k.into_text().ok())
                .collect(),
            other => panic!("not a map: {other:?}"),
        }
    }

    #[test]
    fn every_key_the_encoder_writes_is_a_known_key() {
        // Every field off its default, so that every key is written: a key missing from the
        // lists would be dropped by schema_view and the message would not round-trip.
        let status = Status {
            state: StatusState::Offline,
            agent_version: "a".into(),
            uptime_s: 1,
            backlog: 1,
            dropped: 1,
            time_ms: 1,
            will_seq: 1,
            backlog_bytes: 1,
            dropped_quota: 1,
            boot_id: "b".into(),
            clock: ClockState::Synced,
            journal_resets: 1,
        };
        let keys = wire_keys(&status);
        assert_eq!(keys.len(), STATUS_KEYS.len());
        assert!(
            keys.iter().all(|k| STATUS_KEYS.contains(&k.as_str())),
            "{keys:?}"
        );
        let alert = Alert {
            rule: "r".into(),
            sensor: "s".into(),
            metric: "m".into(),
            event: AlertEvent::Raise,
            severity: Severity::Info,
            value: 1.0,
            threshold: 1.0,
            time_ms: 1,
        };
        let keys = wire_keys(&alert);
        assert_eq!(keys.len(), ALERT_KEYS.len());
        assert!(
            keys.iter().all(|k| ALERT_KEYS.contains(&k.as_str())),
            "{keys:?}"
        );
        // Both forms of both columns of a series.
        let mut floats = crate::Series::new("n", "m", "u");
        floats.push(0, 0.1 + 0.2);
        floats.push(5, 1.0 / 3.0);
        floats.push(1_000_000, 0.7);
        let mut scaled = crate::Series::new("n", "m", "u");
        for i in 0..4 {
            scaled.push(i * 1000 + i % 2, 0.25 * i as f64);
        }
        let mut keys = wire_keys(&floats);
        keys.extend(wire_keys(&scaled));
        for key in SERIES_KEYS {
            assert!(
                keys.iter().any(|k| k == key),
                "{key} never written: {keys:?}"
            );
        }
        assert!(
            keys.iter().all(|k| SERIES_KEYS.contains(&k.as_str())),
            "{keys:?}"
        );
    }

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
    fn duplicate_keys_are_found_at_any_depth_and_in_any_spelling() {
        // {"v": 1, "v" (with a one-byte length head): 2}
        let dup = ok(&[0xa2, 0x61, b'v', 0x01, 0x78, 0x01, b'v', 0x02]);
        assert_eq!(duplicate_key(&dup).as_deref(), Some("\"v\""));
        let nested = ok(&[0x81, 0xa2, 0x01, 0x00, 0x01, 0x00]);
        assert!(duplicate_key(&nested).is_some());
        assert!(duplicate_key(&ok(&[0xa2, 0x01, 0x00, 0x02, 0x00])).is_none());
    }
}
