//! The envelope and the three message bodies, and their CBOR encoder.
//!
//! The wire form is a CBOR map with short text keys (see `SPEC.md`). Encoding goes through
//! serde and ciborium; decoding is [`crate::decode`]'s, straight from the bytes.

use alloc::{borrow::ToOwned, format, string::String, vec::Vec};

use serde::{Deserialize, Serialize};

use crate::error::EncodeError;
use crate::limit::{Limit, MAX_MESSAGE_BYTES};
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
        Ok(ClockState::from_name(&name))
    }
}

impl ClockState {
    /// The state a wire name stands for: `"synced"`, `"unsynced"`; any other text is
    /// `Unknown`, so that a later minor revision can add states without breaking old decoders.
    pub(crate) fn from_name(name: &str) -> ClockState {
        match name {
            "synced" => ClockState::Synced,
            "unsynced" => ClockState::Unsynced,
            _ => ClockState::Unknown,
        }
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
    pub(crate) fn check_limits(&self) -> Result<(), (Limit, usize)> {
        Limit::TextBytes.check(self.agent_version.len())?;
        Limit::TextBytes.check(self.boot_id.len())
    }
}

impl Alert {
    /// Checks the text limits.
    pub(crate) fn check_limits(&self) -> Result<(), (Limit, usize)> {
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
