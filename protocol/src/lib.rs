//! # osprey-protocol
//!
//! The wire format that Osprey gateways and the Osprey cloud speak. Everything here is pure data
//! and codecs: no I/O, no async runtime, and it builds without `std` (with `alloc`) so that a
//! microcontroller node could speak it too.
//!
//! ```text
//!  agent                                     cloud
//!  ─────                                     ─────
//!  Envelope { v, kind, device, seq, body }   decode() ─► typed Envelope or typed DecodeError
//!      │ encode() (CBOR, ≤ 128 KiB)              ▲
//!      └──── MQTT dt/osprey/<device>/<kind> ─────┘  (or Kinesis, where the topic is lost:
//!                                                    kind and device travel inside the payload)
//! ```
//!
//! A gateway draining a backlog may send a *bundle* (1.2): several complete encoded messages
//! in one payload ([`encode_bundle`]); a reader of transport payloads uses
//! [`decode_messages`] (or [`decode_any`]), which returns the one message or the bundle's, each
//! to be deduplicated by its own `(device, epoch, seq)` (the journal epoch `"j"` is 1.3).
//!
//! The byte-level contract is `protocol/SPEC.md`; its test vectors are decoded by this crate's
//! tests, so the document and the code cannot drift apart.
//!
//! ```
//! use osprey_protocol::{Envelope, Body, TelemetryBatch, Series};
//!
//! let mut series = Series::new("bearing", "temperature", "Cel");
//! series.push(1_700_000_000_000, 41.5);
//! series.push(1_700_000_001_000, 41.75);
//! let msg = Envelope::new("pump-7", 1, Body::Telemetry(TelemetryBatch { series: vec![series] }));
//! let bytes = msg.encode().unwrap();
//! assert_eq!(osprey_protocol::decode(&bytes).unwrap(), msg);
//! ```
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

mod bundle;
mod cbor;
mod columns;
mod decode;
mod envelope;
mod error;
#[cfg(feature = "json")]
pub mod json;
pub mod limit;
mod payload;
#[cfg(any(test, feature = "reference-decoder"))]
pub mod reference;
mod rule;
#[cfg(feature = "json")]
pub mod rule_document;
mod telemetry;
pub mod topic;

pub use bundle::{
    bundle_entry_bytes, bundle_overhead, decode_any, decode_messages, encode_bundle, Bundle,
    Decoded, BUNDLE_KIND,
};
pub use columns::{MAX_SCALE, MAX_SCALED};
pub use decode::decode;
pub use envelope::{
    Alert, AlertEvent, Body, ClockState, Envelope, Kind, Severity, Status, StatusState,
    FORMAT_MINOR, FORMAT_VERSION, MAX_EPOCH,
};
pub use error::{DecodeError, EncodeError, RuleError};
pub use limit::{
    Limit, MAX_BUNDLE_MESSAGES, MAX_DEPTH, MAX_MESSAGE_BYTES, MAX_READINGS_PER_SERIES,
    MAX_SERIES_PER_BATCH, MAX_TEXT_BYTES,
};
pub use payload::{payload_bytes, PayloadError};
pub use rule::{Comparison, ThresholdRule};
pub use telemetry::{Series, TelemetryBatch, ENVELOPE_OVERHEAD_MAX};

/// Checks a device id: 1 to 128 characters of `A-Z a-z 0-9 _ - :` (the AWS IoT thing-name
/// alphabet), so that it can stand in an MQTT topic level and a Kinesis partition key.
pub fn valid_device_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b':')
}
