//! The envelope and the three message bodies, and their CBOR codec.
//!
//! The wire form is a CBOR map with short text keys (see `SPEC.md`). Decoding goes through a
//! generic CBOR value first (read strictly by [`crate::cbor`]), so that the version and kind
//! are checked before any body schema is applied: a newer major version is reported as such,
//! not as a malformed body.

use alloc::{borrow::ToOwned, format, string::String, vec::Vec};

use ciborium::Value;
use serde::{Deserialize, Serialize};

use crate::cbor::CborError;
use crate::error::{DecodeError, EncodeError};
use crate::limit::{Limit, MAX_DEPTH, MAX_MESSAGE_BYTES};
use crate::telemetry::TelemetryBatch;

/// Major version of the wire format this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Minor revision of the format this crate writes (1.1: the compact time and value columns and
/// the new status fields; 1.2: bundles, kind 4; 1.3: the journal epoch `"j"` and the status key
/// `"wq"`). A minor revision never changes what existing keys mean, so it is
/// not on the wire; see `SPEC.md`, "Versioning".
pub const FORMAT_MINOR: u8 = 3;

/// The largest journal epoch (`"j"`, 1.3) a message may carry: 2⁵³ − 1, so that an epoch is
/// exact in every JSON number, DynamoDB number and signed 64-bit SQL integer.
pub const MAX_EPOCH: u64 = (1 << 53) - 1;

/// What a message carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A batch of sensor readings.
    Telemetry,
    /// A threshold rule raised or cleared.
    Alert,
    /// Agent presence and health.
    Status,
}

impl Kind {
    /// The kind's code on the wire.
    pub fn code(self) -> u8 {
        match self {
            Kind::Telemetry => 1,
            Kind::Alert => 2,
            Kind::Status => 3,
        }
    }

    /// The kind for a wire code, if this version defines it.
    pub fn from_code(code: u64) -> Option<Kind> {
        match code {
            1 => Some(Kind::Telemetry),
            2 => Some(Kind::Alert),
            3 => Some(Kind::Status),
            _ => None,
        }
    }

    /// The kind's name, as used in topics (`telemetry`, `alerts`, `status`).
    pub fn topic_level(self) -> &'static str {
        match self {
            Kind::Telemetry => "telemetry",
            Kind::Alert => "alerts",
            Kind::Status => "status",
        }
    }
}

/// One message: who sent it, its place in the device's sequence, and what it carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    /// Sending device (thing name).
    pub device: String,
    /// Per-device sequence number, strictly increasing over the device's life (it survives
    /// restarts). `(device, epoch, seq)` identifies a message for deduplication.
    pub seq: u64,
    /// Journal epoch (1.3, `"j"`): a random number the gateway draws when it creates a new
    /// journal, so that the sequence numbers of a replaced journal (a re-flashed card, a new
    /// Pi under the same thing name) are never taken for repeats of the old one's. 0 means none
    /// (a gateway older than 1.3, or a journal created before it); at most [`MAX_EPOCH`].
    pub epoch: u64,
    /// The payload.
    pub body: Body,
}

/// The payload of an envelope.
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    /// Readings.
    Telemetry(TelemetryBatch),
    /// A rule event.
    Alert(Alert),
    /// Presence and health.
    Status(Status),
}

impl Body {
    /// This body's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Body::Telemetry(_) => Kind::Telemetry,
            Body::Alert(_) => Kind::Alert,
            Body::Status(_) => Kind::Status,
        }
    }
}

/// Severity of an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Needs attention.
    Warning,
    /// Needs action now.
    Critical,
}

/// Whether an alert starts or ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertEvent {
    /// The condition became true.
    Raise,
    /// The condition cleared (crossed back past the clear level).
    Clear,
}

/// A threshold rule event, raised or cleared at the edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Id of the rule that fired.
    #[serde(rename = "r")]
    pub rule: String,
    /// Sensor the rule watches.
    #[serde(rename = "n")]
    pub sensor: String,
    /// Metric the rule watches.
    #[serde(rename = "m")]
    pub metric: String,
    /// Raise or clear.
    #[serde(rename = "e")]
    pub event: AlertEvent,
    /// Severity from the rule.
    #[serde(rename = "l")]
    pub severity: Severity,
    /// The reading that caused the event.
    #[serde(rename = "x")]
    pub value: f64,
    /// The level that was crossed (threshold on raise, clear level on clear).
    #[serde(rename = "h")]
    pub threshold: f64,
    /// Time of the reading, milliseconds since the Unix epoch.
    #[serde(rename = "t")]
    pub time_ms: i64,
}

/// Whether the agent is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusState {
    /// Sent on every connect (birth message).
    Online,
    /// Sent by the broker as the last will when the connection drops, or by a clean shutdown.
    Offline,
}

/// Whether the agent's wall clock is synchronised (for example by NTP or GPS), which says how
/// far the cloud can trust reading times.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClockState {
    /// The agent does not know (the default; also what an unknown name on the wire reads as).
    #[default]
    Unknown,
    /// The clock is synchronised.
    Synced,
    /// The clock is free-running; times may be off.
    Unsynced,
}

impl<'de> Deserialize<'de> for ClockState {
    /// Reads `"synced"`, `"unsynced"` and `"unknown"`; any other text is `Unknown`, so that a
    /// later minor revision can add states without breaking old decoders.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<ClockState, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(match name.as_str() {
            "synced" => ClockState::Synced,
            "unsynced" => ClockState::Unsynced,
            _ => ClockState::Unknown,
        })
    }
}

/// Agent presence and health, sent as the birth message on every connect, as the last will,
/// and periodically. Keys added in 1.1 are left out on the wire when they hold their default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Online or offline.
    #[serde(rename = "st")]
    pub state: StatusState,
    /// Agent version string.
    #[serde(rename = "av", default)]
    pub agent_version: String,
    /// Seconds since the agent started.
    #[serde(rename = "up", default)]
    pub uptime_s: u64,
    /// Messages waiting in the journal.
    #[serde(rename = "bl", default)]
    pub backlog: u64,
    /// Readings dropped since the agent started, whatever the cause.
    #[serde(rename = "dr", default)]
    pub dropped: u64,
    /// Time the status was taken, milliseconds since the Unix epoch.
    #[serde(rename = "t", default)]
    pub time_ms: i64,
    /// The sequence number reserved for the last will of the connection this status was sent
    /// on (1.3; 0 = not said): a reader takes an `offline` status with that number as newer
    /// than every status of the same connection, although its number is lower (the will's
    /// number is reserved before the connection's first message). See `SPEC.md`, "Status
    /// order".
    #[serde(rename = "wq", default, skip_serializing_if = "is_zero")]
    pub will_seq: u64,
    /// Bytes waiting in the journal (1.1).
    #[serde(rename = "bb", default, skip_serializing_if = "is_zero")]
    pub backlog_bytes: u64,
    /// Of [`Status::dropped`], the readings the journal dropped because its quota was full
    /// (1.1).
    #[serde(rename = "dq", default, skip_serializing_if = "is_zero")]
    pub dropped_quota: u64,
    /// Identifies the current boot of the gateway (Linux: `/proc/sys/kernel/random/boot_id`;
    /// elsewhere random per agent start), so that the cloud can tell a reboot from a
    /// reconnect (1.1).
    #[serde(rename = "bi", default, skip_serializing_if = "String::is_empty")]
    pub boot_id: String,
    /// Whether the wall clock is synchronised (1.1).
    #[serde(rename = "cs", default, skip_serializing_if = "is_unknown")]
    pub clock: ClockState,
    /// How many times the gateway found its journal corrupt, moved it aside and started a
    /// fresh one (1.1); what it could not carry over is in [`Status::dropped`].
    #[serde(rename = "jr", default, skip_serializing_if = "is_zero")]
    pub journal_resets: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn is_unknown(c: &ClockState) -> bool {
    *c == ClockState::Unknown
}

impl Status {
    /// A status in `state` with every other field zero, empty or unknown; fill in what is
    /// known with struct update syntax: `Status { uptime_s: 12, ..Status::new(state) }`.
    pub fn new(state: StatusState) -> Status {
        Status {
            state,
            agent_version: String::new(),
            uptime_s: 0,
            backlog: 0,
            dropped: 0,
            time_ms: 0,
            backlog_bytes: 0,
            dropped_quota: 0,
            boot_id: String::new(),
            clock: ClockState::Unknown,
            journal_resets: 0,
            will_seq: 0,
        }
    }

    /// Checks the text limits.
    fn check_limits(&self) -> Result<(), (Limit, usize)> {
        Limit::TextBytes.check(self.agent_version.len())?;
        Limit::TextBytes.check(self.boot_id.len())
    }
}

impl Alert {
    /// Checks the text limits.
    fn check_limits(&self) -> Result<(), (Limit, usize)> {
        for text in [&self.rule, &self.sensor, &self.metric] {
            Limit::TextBytes.check(text.len())?;
        }
        Ok(())
    }
}

/// Wire form of an envelope being written.
#[derive(Serialize)]
struct WireOut<'a, B: Serialize> {
    v: u8,
    k: u8,
    d: &'a str,
    q: u64,
    #[serde(skip_serializing_if = "is_zero")]
    j: u64,
    b: &'a B,
}

impl Envelope {
    /// A new envelope.
    pub fn new(device: &str, seq: u64, body: Body) -> Envelope {
        Envelope {
            device: device.to_owned(),
            seq,
            epoch: 0,
            body,
        }
    }

    /// The same envelope in journal epoch `epoch` (1.3; 0 = none).
    pub fn with_epoch(self, epoch: u64) -> Envelope {
        Envelope { epoch, ..self }
    }

    /// This message's kind.
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// Encodes to CBOR, refusing messages over [`MAX_MESSAGE_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.encode_with_limit(MAX_MESSAGE_BYTES)
    }

    /// Encodes to CBOR, refusing messages over `limit` bytes (and over the count and length
    /// limits in [`crate::limit`], which decoders enforce). To fit a telemetry batch under a
    /// byte limit, split it first with [`TelemetryBatch::split_to_fit`].
    pub fn encode_with_limit(&self, limit: usize) -> Result<Vec<u8>, EncodeError> {
        let over = |(limit, found)| EncodeError::LimitExceeded { limit, found };
        match &self.body {
            Body::Telemetry(batch) => batch.check()?,
            Body::Alert(alert) => alert.check_limits().map_err(over)?,
            Body::Status(status) => status.check_limits().map_err(over)?,
        }
        if self.epoch > MAX_EPOCH {
            return Err(EncodeError::Cbor(format!(
                "journal epoch {} is over the largest, {MAX_EPOCH}",
                self.epoch
            )));
        }
        let mut out = Vec::new();
        let (v, k, d, q) = (FORMAT_VERSION, self.kind().code(), &*self.device, self.seq);
        let j = self.epoch;
        let res = match &self.body {
            Body::Telemetry(b) => ciborium::into_writer(&WireOut { v, k, d, q, j, b }, &mut out),
            Body::Alert(b) => ciborium::into_writer(&WireOut { v, k, d, q, j, b }, &mut out),
            Body::Status(b) => ciborium::into_writer(&WireOut { v, k, d, q, j, b }, &mut out),
        };
        res.map_err(|e| EncodeError::Cbor(format!("{e:?}")))?;
        if out.len() > limit {
            return Err(EncodeError::TooLarge {
                size: out.len(),
                limit,
            });
        }
        Ok(out)
    }
}

/// Decodes one message. Never panics; every failure is a [`DecodeError`].
///
/// Fields this version does not know are ignored whatever they hold (forward compatibility
/// within a major version); a newer major version or an unknown kind is an error. The payload
/// must be exactly one CBOR item with no map holding a key twice, and no known key may hold a
/// tag or a simple value (`SPEC.md`, "CBOR conventions" and "Errors"). Both the 1.0 and the 1.1
/// column forms of telemetry are read. A bundle (kind 4) is [`DecodeError::IsBundle`]: a
/// reader of transport payloads uses [`crate::decode_messages`], which takes both.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    let header = read_header(bytes)?;
    let kind = match header.kind {
        HeaderKind::Message(kind) => kind,
        HeaderKind::Bundle => return Err(DecodeError::IsBundle),
    };
    let body = decode_body(kind, header.body)?;
    Ok(Envelope {
        device: header.device,
        seq: header.seq,
        epoch: header.epoch,
        body,
    })
}

/// What the `"k"` of a payload announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeaderKind {
    /// A message (kinds 1 to 3).
    Message(Kind),
    /// A bundle of messages (kind 4).
    Bundle,
}

/// The envelope keys of a payload, checked, with its body still a generic CBOR value.
#[derive(Debug)]
pub(crate) struct Header {
    pub(crate) kind: HeaderKind,
    pub(crate) device: String,
    pub(crate) seq: u64,
    pub(crate) epoch: u64,
    pub(crate) body: Value,
}

/// Checks the size, parses the CBOR with the depth limit, and reads the envelope keys, in the
/// order `SPEC.md` gives ("Errors"): `v`, `k`, `d`, `q`, `b`.
pub(crate) fn read_header(bytes: &[u8]) -> Result<Header, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    // Maps, arrays and tags count towards the depth, the top-level map included.
    let value = crate::cbor::read(bytes, MAX_DEPTH).map_err(|e| match e {
        CborError::TooDeep => DecodeError::LimitExceeded {
            limit: Limit::Depth,
            found: MAX_DEPTH + 1,
        },
        CborError::Malformed(why) => DecodeError::Malformed(why),
    })?;
    let Value::Map(entries) = value else {
        return Err(DecodeError::Malformed("top level is not a map".to_owned()));
    };
    // A map with a key twice is not valid CBOR (RFC 8949, 5.6), wherever it is; under "b" it
    // is the body's fault (`InvalidBody`, checked with the body), anywhere else the envelope's.
    let keys = Value::Map(
        entries
            .iter()
            .map(|(k, _)| (k.clone(), Value::Null))
            .collect(),
    );
    let duplicate = crate::cbor::duplicate_key(&keys).or_else(|| {
        entries
            .iter()
            .filter(|(k, _)| k.as_text() != Some("b"))
            .find_map(|(k, v)| {
                crate::cbor::duplicate_key(k).or_else(|| crate::cbor::duplicate_key(v))
            })
    });
    if let Some(key) = duplicate {
        return Err(DecodeError::Malformed(format!(
            "duplicate key {key} in a map of the envelope"
        )));
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
        let v = field.ok_or_else(|| DecodeError::Malformed(format!("missing field {name:?}")))?;
        v.as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| {
                DecodeError::Malformed(format!("field {name:?} is not an unsigned integer"))
            })
    };

    let version = uint("v", v.as_ref())?;
    if version != u64::from(FORMAT_VERSION) {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let code = uint("k", k.as_ref())?;
    let kind = match Kind::from_code(code) {
        Some(kind) => HeaderKind::Message(kind),
        None if code == u64::from(crate::bundle::BUNDLE_KIND) => HeaderKind::Bundle,
        None => return Err(DecodeError::UnknownKind(code)),
    };
    let device = match d {
        Some(Value::Text(device)) => device,
        _ => {
            return Err(DecodeError::Malformed(
                "missing or non-text field \"d\"".to_owned(),
            ))
        }
    };
    if !crate::valid_device_id(&device) {
        return Err(DecodeError::InvalidDevice(device));
    }
    let seq = uint("q", q.as_ref())?;
    let epoch = match j {
        None => 0,
        Some(value) => {
            let epoch = uint("j", Some(&value))?;
            if epoch > MAX_EPOCH {
                return Err(DecodeError::Malformed(format!(
                    "field \"j\" is {epoch}, over the largest journal epoch {MAX_EPOCH}"
                )));
            }
            epoch
        }
    };
    let body = match b {
        Some(body @ Value::Map(_)) => body,
        Some(_) => {
            return Err(DecodeError::Malformed(
                "field \"b\" is not a map".to_owned(),
            ))
        }
        None => return Err(DecodeError::Malformed("missing field \"b\"".to_owned())),
    };
    Ok(Header {
        kind,
        device,
        seq,
        epoch,
        body,
    })
}

/// Applies the schema of `kind` to a body (a map: [`read_header`] checked that).
pub(crate) fn decode_body(kind: Kind, body: Value) -> Result<Body, DecodeError> {
    let invalid = |reason: String| DecodeError::InvalidBody {
        kind: kind.topic_level(),
        reason,
    };
    if let Some(key) = crate::cbor::duplicate_key(&body) {
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
                    if let Some(what) = crate::cbor::not_spec_type(&value) {
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
                        other => match crate::cbor::not_spec_type(&other) {
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
        if let Some(what) = crate::cbor::not_spec_type(&value) {
            return Err(format!("{context}key {name:?} holds {what}"));
        }
        out.push((key, value));
    }
    Ok(out)
}

pub(crate) fn over_limit((limit, found): (Limit, usize)) -> DecodeError {
    DecodeError::LimitExceeded { limit, found }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
