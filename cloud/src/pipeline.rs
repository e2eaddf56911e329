//! The ingest pipeline: payload bytes in, exactly-once effects in the store out.
//!
//! ```text
//!  payload ─► decode ─┬─► bad: dead letter (logged, counted; the pipeline goes on)
//!   + Origin          ├─► check_origin: payload device ≠ source's device ─► dead letter
//!                     │   "identity mismatch" (counted per claimed and real device)
//!                     └─► envelope(s) ─► window::aggregate_spec ─► store: dedup
//!                                        (device, epoch, seq), merge windows, alert, device
//! ```
//!
//! Trust is checked once, here: every source hands the pipeline the identity it authenticated
//! (the MQTT topic's device, a Kinesis record's partition key) as the [`Origin`], and
//! [`check_origin`] alone decides whether a payload may count for the device it names.
//!
//! A payload may be a bundle (protocol 1.2): several complete messages, each deduplicated and
//! applied on its own, all in the payload's transaction; one bad inner message dead-letters the
//! whole payload.
//!
//! Every source calls [`Pipeline::ingest`] (one message) or [`Pipeline::ingest_batch`] (many
//! messages and a Kinesis checkpoint in one transaction), which is [`Pipeline::prepare`]
//! (decode, on the caller's thread) then [`Pipeline::commit`] (the store's transaction). A payload that cannot be applied is
//! an expected outcome ([`Outcome::Rejected`]), not an error; errors are store failures, after
//! which the caller retries the same payloads (dedup makes that safe).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use osprey_protocol::{decode, decode_any, Body, Decoded, Envelope};
use serde::Serialize;

use crate::clock::now_ms;
use crate::store::{
    Checkpoint, DeadLetter, Message, StatusCounters, StatusReport, StoreError, StoreWriter, Write,
    Written,
};
use crate::window::{self, WindowSpec};

pub mod identity;

pub use identity::{check_origin, IdentityMismatch, Rejection, SpoofCounts, Spoofed};

/// Where a payload came from; used in logs and dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// An MQTT publish on `topic`. The topic's device and kind must match the payload's.
    Mqtt {
        /// The topic it was published on.
        topic: String,
    },
    /// A Kinesis record. Its partition key is the device the writer authenticated (the IoT
    /// rule sets `${topic(3)}`, the topic's device, which the thing policy binds to the
    /// certificate; `osprey bridge` keys by the topic's device too), so the payload's device
    /// must equal it.
    Kinesis {
        /// Stream name.
        stream: String,
        /// Shard id.
        shard_id: String,
        /// The record's sequence number.
        sequence_number: String,
        /// The record's partition key: the authenticated device.
        partition_key: String,
    },
    /// Fed in-process (tests, tools), labelled for the logs.
    Direct(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Mqtt { topic } => write!(f, "mqtt:{topic}"),
            Origin::Kinesis {
                stream,
                shard_id,
                sequence_number,
                partition_key,
            } => write!(
                f,
                "kinesis:{stream}/{shard_id}/{sequence_number} (key {partition_key})"
            ),
            Origin::Direct(label) => write!(f, "direct:{label}"),
        }
    }
}

/// What ingesting one payload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The message was new and its effects are stored (for a bundle: at least one of its
    /// messages was).
    Applied,
    /// The message had been applied before; nothing changed (for a bundle: none was new).
    Duplicate,
    /// The payload was not a valid message; it went to the dead letters with this reason.
    Rejected(String),
}

/// Why ingesting failed. The payloads were not applied; retry them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PipelineError {
    /// The store could not apply the write.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Payloads made ready for the store by [`Pipeline::prepare`]: the writes, and which of them
/// belong to which payload.
#[derive(Debug)]
pub struct Prepared {
    writes: Vec<Write>,
    /// Per payload: how many writes it became, and why it was rejected.
    spans: Vec<(usize, Option<String>)>,
    /// Writes of no payload that go in the same transaction ([`Prepared::with_side_writes`]).
    side: Vec<Write>,
}

impl Prepared {
    /// The same, with `writes` that belong to no payload stored in the same transaction
    /// after the payloads' writes: the devices' rules reports and documents the MQTT source
    /// takes out of its batches ([`crate::reported_rules`]). They have no outcome.
    pub fn with_side_writes(mut self, writes: Vec<Write>) -> Prepared {
        self.side.extend(writes);
        self
    }
}

/// Counters since start.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PipelineStats {
    /// Messages applied.
    pub applied: u64,
    /// Messages skipped as duplicates.
    pub duplicates: u64,
    /// Payloads rejected (dead-lettered).
    pub rejected: u64,
    /// MQTT source only: publishes received from the broker (redeliveries included).
    pub mqtt_messages: u64,
    /// Of the rejected payloads, those whose device differed from their source's
    /// authenticated device (identity mismatches).
    pub identity_mismatches: u64,
    /// The identity mismatches per (claimed, source) device pair (at most
    /// [`identity::MAX_SPOOF_PAIRS`] pairs, then one `other` pair).
    pub spoofed: Vec<Spoofed>,
    /// MQTT source only: rules reports and rule documents taken from the broker
    /// ([`crate::reported_rules`]; redeliveries included).
    pub rules_messages: u64,
    /// Of those, reports refused (too big, not a report, naming another device than their
    /// topic's, an invalid rule).
    pub rules_refused: u64,
    /// Kinesis source only: each shard's reader, by shard id (absent for other sources).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub shards: BTreeMap<String, ShardProgress>,
}

/// Where a Kinesis shard's reader is, for `/api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ShardProgress {
    /// `waiting` (for its parent shards to finish), `reading`, or `finished` (SHARD_END).
    pub state: &'static str,
    /// Iterator age: how far the last GetRecords response was behind the stream's tip
    /// (Kinesis's `MillisBehindLatest`); 0 when caught up.
    pub millis_behind_latest: i64,
    /// Records read from the shard since start.
    pub records: u64,
    /// GetRecords calls refused for throughput since start.
    pub throttled: u64,
    /// Iterators that expired and were re-acquired from the checkpoint since start.
    pub expired_iterators: u64,
    /// Checkpoints written for the shard since start (SQLite or DynamoDB).
    pub checkpoints: u64,
}

#[derive(Debug, Default)]
struct Counters {
    applied: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
    mqtt_messages: AtomicU64,
    identity_mismatches: AtomicU64,
    rules_messages: AtomicU64,
    rules_refused: AtomicU64,
    source_connected: AtomicBool,
    spoofed: Mutex<SpoofCounts>,
    shards: Mutex<BTreeMap<String, ShardProgress>>,
}

/// A read-only view of a pipeline's counters that does not keep the store writer alive (the
/// API holds one). The default is a set of counters no pipeline updates.
#[derive(Debug, Clone, Default)]
pub struct IngestStats(Arc<Counters>);

impl IngestStats {
    /// The counters now.
    pub fn snapshot(&self) -> PipelineStats {
        PipelineStats {
            applied: self.0.applied.load(Ordering::Relaxed),
            duplicates: self.0.duplicates.load(Ordering::Relaxed),
            rejected: self.0.rejected.load(Ordering::Relaxed),
            mqtt_messages: self.0.mqtt_messages.load(Ordering::Relaxed),
            identity_mismatches: self.0.identity_mismatches.load(Ordering::Relaxed),
            rules_messages: self.0.rules_messages.load(Ordering::Relaxed),
            rules_refused: self.0.rules_refused.load(Ordering::Relaxed),
            spoofed: self
                .0
                .spoofed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .list(),
            shards: self
                .0
                .shards
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Records whether the source is connected (the MQTT source: subscribed, and no
    /// connection error since); read by `/readyz`.
    pub fn set_source_connected(&self, connected: bool) {
        self.0.source_connected.store(connected, Ordering::Relaxed);
    }

    /// Whether the source last said it is connected.
    pub fn source_connected(&self) -> bool {
        self.0.source_connected.load(Ordering::Relaxed)
    }

    /// Counts a publish received by the MQTT source.
    pub fn count_mqtt_message(&self) {
        self.0.mqtt_messages.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a rules report or rule document taken from the broker, and whether it was
    /// refused ([`crate::reported_rules::take`]).
    pub fn count_rules_message(&self, refused: bool) {
        self.0.rules_messages.fetch_add(1, Ordering::Relaxed);
        if refused {
            self.0.rules_refused.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a payload refused for naming another device than its source (the pipeline
    /// calls this for every [`IdentityMismatch`]).
    pub fn count_identity_mismatch(&self, m: &IdentityMismatch) {
        self.0.identity_mismatches.fetch_add(1, Ordering::Relaxed);
        self.0
            .spoofed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(m);
        tracing::warn!(claimed = %m.claimed, source_device = %m.source,
            "identity mismatch: a payload named another device than its authenticated source");
    }

    /// Updates the progress of `shard` (Kinesis source).
    pub fn update_shard(&self, shard: &str, update: impl FnOnce(&mut ShardProgress)) {
        let mut shards = self.0.shards.lock().unwrap_or_else(PoisonError::into_inner);
        update(shards.entry(shard.to_owned()).or_default());
    }
}

/// The ingest pipeline; cheap to clone (clones share the store writer and the counters).
#[derive(Debug, Clone)]
pub struct Pipeline {
    writer: StoreWriter,
    counters: Arc<Counters>,
    windows: WindowSpec,
}

impl Pipeline {
    /// A pipeline writing through `writer`.
    pub fn new(writer: StoreWriter) -> Pipeline {
        Pipeline {
            writer,
            counters: Arc::default(),
            windows: WindowSpec::default(),
        }
    }

    /// The same pipeline computing the windows of `spec` (tumbling one-minute windows only,
    /// by default).
    pub fn with_windows(self, spec: WindowSpec) -> Pipeline {
        Pipeline {
            windows: spec,
            ..self
        }
    }

    /// Decodes, deduplicates, windows and stores one payload, in one transaction.
    pub async fn ingest(&self, payload: &[u8], source: Origin) -> Result<Outcome, PipelineError> {
        let outcomes = self.ingest_batch(vec![(payload, source)], None).await?;
        // The store answers one outcome per write; an empty answer would be a store bug, and
        // "nothing changed" is the honest reading of it.
        Ok(outcomes.into_iter().next().unwrap_or(Outcome::Duplicate))
    }

    /// Ingests several payloads and stores `checkpoint`, all in one transaction (each message
    /// is still deduplicated on its own). Returns one outcome per payload, in order.
    pub async fn ingest_batch(
        &self,
        payloads: Vec<(&[u8], Origin)>,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Vec<Outcome>, PipelineError> {
        let prepared = self.prepare(payloads);
        self.commit(prepared, checkpoint).await
    }

    /// The first half of [`Pipeline::ingest_batch`], on the caller's thread: decodes, checks
    /// and windows the payloads (a rejected one becomes its dead letter, counted now). The
    /// MQTT source prepares the next batch while the store commits the previous one.
    pub fn prepare(&self, payloads: Vec<(&[u8], Origin)>) -> Prepared {
        let received_ms = now_ms();
        let mut writes = Vec::with_capacity(payloads.len());
        // Per payload: how many writes it became, and why it was rejected (a bundle becomes
        // one write per inner message; anything else one write).
        let mut spans: Vec<(usize, Option<String>)> = Vec::with_capacity(payloads.len());
        for (payload, origin) in payloads {
            let prepared = match crate::source::presence::parse(payload, &origin, received_ms) {
                // AWS IoT lifecycle events (JSON) that a rule put on the stream: presence,
                // which counts only for the client id the record is keyed by.
                Some(presence) => check_origin(&presence.device, None, &origin)
                    .map(|()| vec![Write::Presence(presence)]),
                None => prepare_all(payload, &origin, received_ms, &self.windows)
                    .map(|messages| messages.into_iter().map(Write::Message).collect()),
            };
            match prepared {
                Ok(prepared) => {
                    spans.push((prepared.len(), None));
                    writes.extend(prepared);
                }
                Err(rejection) => {
                    let total = self.counters.rejected.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(m) = &rejection.mismatch {
                        self.stats_handle().count_identity_mismatch(m);
                    }
                    let reason = rejection.reason;
                    tracing::warn!(
                        source = %origin,
                        bytes = payload.len(),
                        reason = %reason,
                        rejected_total = total,
                        "rejected payload, kept as a dead letter"
                    );
                    writes.push(Write::DeadLetter(DeadLetter {
                        received_ms,
                        source: origin.to_string(),
                        reason: reason.clone(),
                        payload: payload.to_vec(),
                    }));
                    spans.push((1, Some(reason)));
                }
            }
        }
        Prepared {
            writes,
            spans,
            side: Vec::new(),
        }
    }

    /// The second half of [`Pipeline::ingest_batch`]: stores what [`Pipeline::prepare`] made
    /// and `checkpoint` in one transaction. Returns one outcome per payload, in order; after
    /// an error nothing was stored (prepare the payloads again to retry).
    pub async fn commit(
        &self,
        prepared: Prepared,
        checkpoint: Option<Checkpoint>,
    ) -> Result<Vec<Outcome>, PipelineError> {
        let Prepared {
            mut writes,
            spans,
            side,
        } = prepared;
        // After the payloads' writes, so the answers line up with `spans`.
        writes.extend(side);
        let mut written = self.writer.write(writes, checkpoint).await?.into_iter();
        let outcomes = spans
            .into_iter()
            .map(|(count, reason)| {
                if let Some(reason) = reason {
                    written.next();
                    return Outcome::Rejected(reason);
                }
                // A payload is applied if any of its messages was new.
                let mut outcome = Outcome::Duplicate;
                for w in written.by_ref().take(count) {
                    match w {
                        Written::Applied => {
                            self.counters.applied.fetch_add(1, Ordering::Relaxed);
                            outcome = Outcome::Applied;
                        }
                        Written::Duplicate => {
                            self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                        }
                        Written::DeadLettered => {}
                    }
                }
                outcome
            })
            .collect();
        Ok(outcomes)
    }

    /// Counters since this pipeline was created.
    pub fn stats(&self) -> PipelineStats {
        self.stats_handle().snapshot()
    }

    /// A handle on the counters that outlives nothing else.
    pub fn stats_handle(&self) -> IngestStats {
        IngestStats(Arc::clone(&self.counters))
    }
}

/// Turns a payload, a message or a bundle of them (protocol 1.2), into the store's
/// [`Message`]s, in order, or says why it cannot be applied. One bad inner message rejects the
/// whole payload (it goes to the dead letters as it came); so does one inner message that
/// claims another device than the source's ([`check_origin`]).
pub fn prepare_all(
    payload: &[u8],
    origin: &Origin,
    received_ms: i64,
    spec: &WindowSpec,
) -> Result<Vec<Message>, Rejection> {
    let decoded = decode_any(payload).map_err(|e| Rejection::other(e.to_string()))?;
    let bundle = matches!(decoded, Decoded::Bundle(_));
    decoded
        .into_messages()
        .into_iter()
        .enumerate()
        .map(|(i, envelope)| {
            to_message(envelope, origin, received_ms, spec).map_err(|r| match bundle {
                true => r.within(format_args!("message {i} of the bundle")),
                false => r,
            })
        })
        .collect()
}

/// Turns a payload holding one message into the store's [`Message`], or says why it cannot be
/// applied (a bundle is refused: use [`prepare_all`]).
pub fn prepare(payload: &[u8], origin: &Origin, received_ms: i64) -> Result<Message, Rejection> {
    prepare_with(payload, origin, received_ms, &WindowSpec::default())
}

/// [`prepare`] with the windows of `spec`.
pub fn prepare_with(
    payload: &[u8],
    origin: &Origin,
    received_ms: i64,
    spec: &WindowSpec,
) -> Result<Message, Rejection> {
    let envelope = decode(payload).map_err(|e| Rejection::other(e.to_string()))?;
    to_message(envelope, origin, received_ms, spec)
}

/// One decoded message, checked against where it came from, as the store's [`Message`].
fn to_message(
    envelope: Envelope,
    origin: &Origin,
    received_ms: i64,
    spec: &WindowSpec,
) -> Result<Message, Rejection> {
    check_origin(&envelope.device, Some(envelope.kind()), origin)?;
    if i64::try_from(envelope.seq).is_err() {
        return Err(Rejection::other(format!(
            "sequence number {} is above the supported maximum {}",
            envelope.seq,
            i64::MAX
        )));
    }
    let Envelope {
        device,
        seq,
        epoch,
        body,
    } = envelope;
    let mut message = Message {
        device,
        seq,
        epoch,
        received_ms,
        event_ms: None,
        readings: 0,
        windows: Vec::new(),
        alert: None,
        status: None,
        telemetry: None,
    };
    match body {
        Body::Telemetry(batch) => {
            message.readings = u64::try_from(batch.reading_count()).unwrap_or(u64::MAX);
            message.event_ms = batch
                .series
                .iter()
                .filter(|s| !s.values.is_empty())
                .map(|s| s.last_time_ms())
                .max();
            message.windows = window::aggregate_spec(&batch, spec);
            message.telemetry = Some(std::sync::Arc::new(batch));
        }
        Body::Alert(alert) => {
            message.event_ms = Some(alert.time_ms);
            message.alert = Some(alert);
        }
        Body::Status(status) => {
            // A status without a time (0, the field's default) says nothing about event time.
            message.event_ms = (status.time_ms != 0).then_some(status.time_ms);
            message.status = Some(StatusReport {
                state: status.state,
                will_seq: status.will_seq,
                time_ms: status.time_ms,
                counters: Box::new(StatusCounters::of(&status)),
            });
        }
    }
    Ok(message)
}

#[cfg(test)]
mod tests;
