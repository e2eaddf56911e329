//! The explicit limits every encoder and decoder applies, so that hostile or corrupt input
//! costs a bounded amount of memory and time, and a message one side accepts the other does
//! too. `SPEC.md` ("Limits") lists the same numbers.

use core::fmt;

/// Largest message, in bytes, that is encoded or decoded (AWS IoT Core's 128 KB payload limit).
pub const MAX_MESSAGE_BYTES: usize = 128 * 1024;

/// Deepest CBOR nesting accepted. The top-level envelope map is level 1; a version 1 message
/// needs at most 4 levels (envelope, body, series list, series), 5 with a status counter map.
pub const MAX_DEPTH: usize = 16;

/// Most series in one telemetry batch.
pub const MAX_SERIES_PER_BATCH: usize = 1024;

/// Most readings in one series.
pub const MAX_READINGS_PER_SERIES: usize = 65_536;

/// Longest text field, in UTF-8 bytes: sensor, metric, unit, rule id, agent version, boot id.
/// (Device ids have their own rule: see [`crate::valid_device_id`], also at most 128 bytes.)
pub const MAX_TEXT_BYTES: usize = 128;

/// Most messages in one bundle (kind 4). At a few dozen bytes per message, far more than fit
/// in [`MAX_MESSAGE_BYTES`] anyway; it bounds the work a hostile bundle can ask for.
pub const MAX_BUNDLE_MESSAGES: usize = 4096;

/// A limit that a message broke; see the `MAX_*` constants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// [`MAX_SERIES_PER_BATCH`].
    SeriesPerBatch,
    /// [`MAX_READINGS_PER_SERIES`].
    ReadingsPerSeries,
    /// [`MAX_TEXT_BYTES`].
    TextBytes,
    /// [`MAX_DEPTH`].
    Depth,
    /// [`MAX_BUNDLE_MESSAGES`].
    BundleMessages,
}

impl Limit {
    /// The largest allowed value.
    pub fn max(self) -> usize {
        match self {
            Limit::SeriesPerBatch => MAX_SERIES_PER_BATCH,
            Limit::ReadingsPerSeries => MAX_READINGS_PER_SERIES,
            Limit::TextBytes => MAX_TEXT_BYTES,
            Limit::Depth => MAX_DEPTH,
            Limit::BundleMessages => MAX_BUNDLE_MESSAGES,
        }
    }

    /// What to do about it, for error messages.
    pub fn advice(self) -> &'static str {
        match self {
            Limit::SeriesPerBatch | Limit::ReadingsPerSeries => {
                "split the batch (TelemetryBatch::split_to_fit)"
            }
            Limit::TextBytes => "shorten the name",
            Limit::Depth => "this is not an Osprey message",
            Limit::BundleMessages => "put the messages in several bundles",
        }
    }

    /// Checks `found` against this limit.
    pub(crate) fn check(self, found: usize) -> Result<(), (Limit, usize)> {
        if found > self.max() {
            Err((self, found))
        } else {
            Ok(())
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::SeriesPerBatch => "series per batch",
            Limit::ReadingsPerSeries => "readings per series",
            Limit::TextBytes => "text field bytes",
            Limit::Depth => "CBOR nesting depth",
            Limit::BundleMessages => "messages per bundle",
        })
    }
}
