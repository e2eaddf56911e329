//! Typed errors of the codec and of rule validation.

use alloc::{boxed::Box, string::String};

use crate::limit::Limit;

/// Why a payload could not be decoded. Every variant is an expected outcome of hostile or
/// corrupt input; the decoder never panics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is larger than [`crate::MAX_MESSAGE_BYTES`].
    #[error("payload is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Size of the payload.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// The bytes are not a well-formed CBOR envelope map.
    #[error("malformed CBOR envelope: {0}")]
    Malformed(String),
    /// The envelope's major format version is newer than this decoder understands.
    #[error("unsupported format version {found} (this decoder reads version {supported})")]
    UnsupportedVersion {
        /// Version in the payload.
        found: u64,
        /// Version this decoder speaks.
        supported: u8,
    },
    /// The kind code is not one this version defines.
    #[error("unknown message kind {0}")]
    UnknownKind(u64),
    /// The device id is empty, too long or has characters outside the allowed alphabet.
    #[error("invalid device id {0:?}")]
    InvalidDevice(String),
    /// The body does not match its kind's schema.
    #[error("invalid {kind} body: {reason}")]
    InvalidBody {
        /// Kind whose body failed.
        kind: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// A count, length or depth is over one of the limits in [`crate::limit`]. For
    /// [`Limit::Depth`], `found` is the first level over the limit (the decoder stops there).
    #[error("{limit} is {found}, over the limit of {max}: {advice}", max = limit.max(), advice = limit.advice())]
    LimitExceeded {
        /// The limit.
        limit: Limit,
        /// The value found.
        found: usize,
    },
    /// The payload is a bundle (kind 4), which holds several messages: [`crate::decode`]
    /// reads one message, [`crate::decode_messages`] reads either.
    #[error("the payload is a bundle of several messages (kind 4); read it with decode_messages")]
    IsBundle,
    /// A message inside a bundle does not decode; the whole bundle is rejected.
    #[error("message {index} of the bundle (counting from 0): {error}")]
    InBundle {
        /// Its position in the bundle, from 0.
        index: usize,
        /// Why it does not decode.
        error: Box<DecodeError>,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded message would exceed [`crate::MAX_MESSAGE_BYTES`].
    #[error("encoded message is {size} bytes, over the {limit}-byte limit")]
    TooLarge {
        /// Encoded size.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// A series has different numbers of time deltas and values.
    #[error("series {sensor}/{metric} has {deltas} time deltas but {values} values")]
    RaggedSeries {
        /// Sensor name.
        sensor: String,
        /// Metric name.
        metric: String,
        /// Number of deltas.
        deltas: usize,
        /// Number of values.
        values: usize,
    },
    /// The CBOR serializer failed.
    #[error("CBOR serialization failed: {0}")]
    Cbor(String),
    /// A count or length is over one of the limits in [`crate::limit`].
    #[error("{limit} is {found}, over the limit of {max}: {advice}", max = limit.max(), advice = limit.advice())]
    LimitExceeded {
        /// The limit.
        limit: Limit,
        /// The value found.
        found: usize,
    },
    /// The device id is empty, too long or has characters outside the allowed alphabet.
    #[error("invalid device id {0:?} (1 to 128 of A-Z a-z 0-9 _ - :)")]
    InvalidDevice(String),
    /// A series' reading times (`t0_ms` plus the running sum of its deltas) leave the `i64`
    /// millisecond range, which decoders refuse.
    #[error("series {sensor}/{metric}: reading times leave the 64-bit millisecond range")]
    TimeOutOfRange {
        /// Sensor name.
        sensor: String,
        /// Metric name.
        metric: String,
    },
    /// Numbering the parts of a split batch from `first_seq` on would pass 2⁶⁴ − 1.
    #[error("{parts} messages numbered from {first_seq} would pass the largest sequence number")]
    SeqOverflow {
        /// The first part's sequence number.
        first_seq: u64,
        /// How many parts there are.
        parts: usize,
    },
    /// A bundle needs at least one message.
    #[error("a bundle needs at least one message")]
    EmptyBundle,
    /// A batch cannot be split to fit a byte limit: one reading of this series alone, in its
    /// own message, is already over it. Raise the limit or shorten the names.
    #[error("one reading of series {sensor}/{metric} needs {needed} bytes, over the {limit}-byte limit; raise the limit")]
    LimitTooSmall {
        /// Sensor name.
        sensor: String,
        /// Metric name.
        metric: String,
        /// Size of a message holding that one reading.
        needed: usize,
        /// The limit asked for.
        limit: usize,
    },
}

/// Why a threshold rule document is not valid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RuleError {
    /// The rule id is empty.
    #[error("rule id must not be empty")]
    EmptyId,
    /// Sensor or metric is empty.
    #[error("rule {id}: sensor and metric must not be empty")]
    EmptyTarget {
        /// Rule id.
        id: String,
    },
    /// Threshold or clear level is NaN or infinite.
    #[error("rule {id}: threshold and clear level must be finite numbers")]
    NotFinite {
        /// Rule id.
        id: String,
    },
    /// The clear level is on the wrong side of the threshold, so the alert could never clear
    /// or would flap.
    #[error("rule {id}: clear level {clear} must be {side} the threshold {threshold}")]
    ClearOnWrongSide {
        /// Rule id.
        id: String,
        /// Threshold.
        threshold: f64,
        /// Clear level.
        clear: f64,
        /// "at or below" / "at or above".
        side: &'static str,
    },
    /// The rule's kind needs a field the document leaves out.
    #[error("rule {id}: when = \"{when}\" needs `{field}`; add it")]
    MissingField {
        /// Rule id.
        id: String,
        /// The missing field.
        field: &'static str,
        /// The rule's kind.
        when: &'static str,
    },
    /// The document sets a field its kind does not use (likely a mistake).
    #[error("rule {id}: `{field}` does not apply to when = \"{when}\"; remove it")]
    UnusedField {
        /// Rule id.
        id: String,
        /// The field.
        field: &'static str,
        /// The rule's kind.
        when: &'static str,
    },
    /// An `outside` rule whose band is empty.
    #[error("rule {id}: low ({low}) must be below high ({high})")]
    EmptyBand {
        /// Rule id.
        id: String,
        /// Lower edge.
        low: f64,
        /// Upper edge.
        high: f64,
    },
    /// An `outside` rule whose clear band is not strictly inside its band.
    #[error("rule {id}: clear_low < clear_high must lie within low ({low}) and high ({high})")]
    ClearBandOutside {
        /// Rule id.
        id: String,
        /// Lower edge.
        low: f64,
        /// Upper edge.
        high: f64,
    },
}
