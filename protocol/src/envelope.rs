//! The envelope and the three message bodies, and their CBOR codec.
//!
//! The wire form is a CBOR map with short text keys (see `SPEC.md`). Decoding goes through a
//! generic CBOR value first, so that the version and kind are checked before any body schema is
//! applied: a newer major version is reported as such, not as a malformed body.

use alloc::{borrow::ToOwned, format, string::String, vec::Vec};

use ciborium::Value;
use serde::{Deserialize, Serialize};

use crate::error::{DecodeError, EncodeError};

/// Major version of the wire format this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;

/// Largest message, in bytes, that is encoded or decoded (AWS IoT Core's 128 KB payload limit).
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// Deepest CBOR nesting accepted; a version 1 envelope needs four levels.
const MAX_DEPTH: usize = 16;

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
    /// restarts). `(device, seq)` identifies a message for deduplication.
    pub seq: u64,
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

/// A batch of readings, stored column-wise per series.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TelemetryBatch {
    /// One entry per (sensor, metric).
    #[serde(rename = "s")]
    pub series: Vec<Series>,
}

impl TelemetryBatch {
    /// Number of readings across all series.
    pub fn reading_count(&self) -> usize {
        self.series.iter().map(|s| s.values.len()).sum()
    }
}

/// The readings of one (sensor, metric): a base time, per-reading time deltas and values.
///
/// Reading `i` was taken at `t0_ms + dt_ms[0] + … + dt_ms[i]` (milliseconds since the Unix
/// epoch), so the first delta is usually 0 and regular sampling repeats one small delta.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Sensor name, e.g. `bearing`.
    #[serde(rename = "n")]
    pub sensor: String,
    /// Metric name, e.g. `temperature`.
    #[serde(rename = "m")]
    pub metric: String,
    /// Unit (UCUM code, e.g. `Cel`, `%`, `m/s2`); may be empty.
    #[serde(rename = "u", default)]
    pub unit: String,
    /// Base time, milliseconds since the Unix epoch.
    #[serde(rename = "t")]
    pub t0_ms: i64,
    /// Time deltas in milliseconds, cumulative from `t0_ms`.
    #[serde(rename = "dt")]
    pub dt_ms: Vec<u32>,
    /// Values.
    #[serde(rename = "x")]
    pub values: Vec<f64>,
}

impl Series {
    /// An empty series.
    pub fn new(sensor: &str, metric: &str, unit: &str) -> Series {
        Series {
            sensor: sensor.to_owned(),
            metric: metric.to_owned(),
            unit: unit.to_owned(),
            t0_ms: 0,
            dt_ms: Vec::new(),
            values: Vec::new(),
        }
    }

    /// Appends a reading. Times must not go backwards within a series; a reading older than
    /// the previous one, or more than `u32::MAX` ms after it, is given the previous time plus
    /// the clamped delta (the agent's clock is monotonic, so this only guards the type).
    pub fn push(&mut self, time_ms: i64, value: f64) {
        if self.values.is_empty() {
            self.t0_ms = time_ms;
            self.dt_ms.push(0);
        } else {
            let last = self.last_time_ms();
            let delta = time_ms.saturating_sub(last).clamp(0, i64::from(u32::MAX));
            self.dt_ms.push(u32::try_from(delta).unwrap_or(u32::MAX));
        }
        self.values.push(value);
    }

    /// Time of the last reading (or `t0_ms` when empty).
    pub fn last_time_ms(&self) -> i64 {
        self.readings().last().map(|(t, _)| t).unwrap_or(self.t0_ms)
    }

    /// The readings as `(time_ms, value)` pairs.
    pub fn readings(&self) -> impl Iterator<Item = (i64, f64)> + '_ {
        let mut t = self.t0_ms;
        self.dt_ms.iter().zip(&self.values).map(move |(dt, v)| {
            t = t.saturating_add(i64::from(*dt));
            (t, *v)
        })
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

/// Agent presence and health.
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
    /// Readings dropped since start (journal quota, sensor errors).
    #[serde(rename = "dr", default)]
    pub dropped: u64,
    /// Time the status was taken, milliseconds since the Unix epoch.
    #[serde(rename = "t", default)]
    pub time_ms: i64,
}

/// Wire form of an envelope being written.
#[derive(Serialize)]
struct WireOut<'a, B: Serialize> {
    v: u8,
    k: u8,
    d: &'a str,
    q: u64,
    b: &'a B,
}

impl Envelope {
    /// A new envelope.
    pub fn new(device: &str, seq: u64, body: Body) -> Envelope {
        Envelope {
            device: device.to_owned(),
            seq,
            body,
        }
    }

    /// This message's kind.
    pub fn kind(&self) -> Kind {
        self.body.kind()
    }

    /// Encodes to CBOR, refusing messages over [`MAX_MESSAGE_BYTES`].
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        self.encode_with_limit(MAX_MESSAGE_BYTES)
    }

    /// Encodes to CBOR, refusing messages over `limit` bytes.
    pub fn encode_with_limit(&self, limit: usize) -> Result<Vec<u8>, EncodeError> {
        if let Body::Telemetry(batch) = &self.body {
            if let Some(s) = batch
                .series
                .iter()
                .find(|s| s.dt_ms.len() != s.values.len())
            {
                return Err(EncodeError::RaggedSeries {
                    sensor: s.sensor.clone(),
                    metric: s.metric.clone(),
                    deltas: s.dt_ms.len(),
                    values: s.values.len(),
                });
            }
        }
        let mut out = Vec::new();
        let (v, k, d, q) = (FORMAT_VERSION, self.kind().code(), &*self.device, self.seq);
        let res = match &self.body {
            Body::Telemetry(b) => ciborium::into_writer(&WireOut { v, k, d, q, b }, &mut out),
            Body::Alert(b) => ciborium::into_writer(&WireOut { v, k, d, q, b }, &mut out),
            Body::Status(b) => ciborium::into_writer(&WireOut { v, k, d, q, b }, &mut out),
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
/// Fields this version does not know are ignored (forward compatibility within a major
/// version); a newer major version or an unknown kind is an error.
pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(DecodeError::TooLarge {
            size: bytes.len(),
            limit: MAX_MESSAGE_BYTES,
        });
    }
    let value: Value = ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH)
        .map_err(|e| DecodeError::Malformed(format!("{e:?}")))?;
    let Value::Map(entries) = value else {
        return Err(DecodeError::Malformed("top level is not a map".to_owned()));
    };
    let field = |name: &str| {
        entries
            .iter()
            .find(|(k, _)| k.as_text() == Some(name))
            .map(|(_, v)| v)
    };
    let uint = |name: &str| -> Result<u64, DecodeError> {
        let v =
            field(name).ok_or_else(|| DecodeError::Malformed(format!("missing field {name:?}")))?;
        v.as_integer()
            .and_then(|i| u64::try_from(i).ok())
            .ok_or_else(|| {
                DecodeError::Malformed(format!("field {name:?} is not an unsigned integer"))
            })
    };

    let version = uint("v")?;
    if version != u64::from(FORMAT_VERSION) {
        return Err(DecodeError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let code = uint("k")?;
    let kind = Kind::from_code(code).ok_or(DecodeError::UnknownKind(code))?;
    let device = field("d")
        .and_then(Value::as_text)
        .ok_or_else(|| DecodeError::Malformed("missing or non-text field \"d\"".to_owned()))?;
    if !crate::valid_device_id(device) {
        return Err(DecodeError::InvalidDevice(device.to_owned()));
    }
    let seq = uint("q")?;
    let body =
        field("b").ok_or_else(|| DecodeError::Malformed("missing field \"b\"".to_owned()))?;
    let invalid = |reason: String| DecodeError::InvalidBody {
        kind: kind.topic_level(),
        reason,
    };
    let body = match kind {
        Kind::Telemetry => {
            let batch: TelemetryBatch =
                body.deserialized().map_err(|e| invalid(format!("{e:?}")))?;
            if let Some(s) = batch
                .series
                .iter()
                .find(|s| s.dt_ms.len() != s.values.len())
            {
                return Err(invalid(format!(
                    "series {}/{} has {} time deltas but {} values",
                    s.sensor,
                    s.metric,
                    s.dt_ms.len(),
                    s.values.len()
                )));
            }
            Body::Telemetry(batch)
        }
        Kind::Alert => Body::Alert(body.deserialized().map_err(|e| invalid(format!("{e:?}")))?),
        Kind::Status => Body::Status(body.deserialized().map_err(|e| invalid(format!("{e:?}")))?),
    };
    Ok(Envelope {
        device: device.to_owned(),
        seq,
        body,
    })
}
