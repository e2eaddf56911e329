//! The ingest pipeline: payload bytes in, exactly-once effects in the store out.
//!
//! ```text
//!  payload ─► decode ─┬─► bad: dead letter (logged, counted; the pipeline goes on)
//!                     └─► envelope(s) ─► window::aggregate_spec ─► store: dedup (device, seq),
//!                                                                 merge windows, alert, device
//! ```
//!
//! A payload may be a bundle (protocol 1.2): several complete messages, each deduplicated and
//! applied on its own, all in the payload's transaction; one bad inner message dead-letters the
//! whole payload.
//!
//! Every source calls [`Pipeline::ingest`] (one message) or [`Pipeline::ingest_batch`] (many
//! messages and a Kinesis checkpoint in one transaction). A payload that cannot be applied is
//! an expected outcome ([`Outcome::Rejected`]), not an error; errors are store failures, after
//! which the caller retries the same payloads (dedup makes that safe).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use osprey_protocol::{decode, decode_any, topic, Body, Decoded, Envelope};
use serde::Serialize;

use crate::clock::now_ms;
use crate::store::{Checkpoint, DeadLetter, Message, StoreError, StoreWriter, Write, Written};
use crate::window::{self, WindowSpec};

/// Where a payload came from; used in logs and dead letters.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origin {
    /// An MQTT publish on `topic`. The topic's device and kind must match the payload's.
    Mqtt {
        /// The topic it was published on.
        topic: String,
    },
    /// A Kinesis record.
    Kinesis {
        /// Stream name.
        stream: String,
        /// Shard id.
        shard_id: String,
        /// The record's sequence number.
        sequence_number: String,
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
            } => write!(f, "kinesis:{stream}/{shard_id}/{sequence_number}"),
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
            shards: self
                .0
                .shards
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        }
    }

    /// Counts a publish received by the MQTT source.
    pub fn count_mqtt_message(&self) {
        self.0.mqtt_messages.fetch_add(1, Ordering::Relaxed);
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
        let received_ms = now_ms();
        let mut writes = Vec::with_capacity(payloads.len());
        // Per payload: how many writes it became, and why it was rejected (a bundle becomes
        // one write per inner message; anything else one write).
        let mut spans: Vec<(usize, Option<String>)> = Vec::with_capacity(payloads.len());
        for (payload, origin) in payloads {
            // AWS IoT lifecycle events (JSON) that a rule put on the stream: presence.
            if let Some(presence) = crate::source::presence::parse(payload, &origin, received_ms) {
                writes.push(Write::Presence(presence));
                spans.push((1, None));
                continue;
            }
            match prepare_all(payload, &origin, received_ms, &self.windows) {
                Ok(messages) => {
                    spans.push((messages.len(), None));
                    writes.extend(messages.into_iter().map(Write::Message));
                }
                Err(reason) => {
                    let total = self.counters.rejected.fetch_add(1, Ordering::Relaxed) + 1;
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
/// whole payload (it goes to the dead letters as it came).
pub fn prepare_all(
    payload: &[u8],
    origin: &Origin,
    received_ms: i64,
    spec: &WindowSpec,
) -> Result<Vec<Message>, String> {
    let decoded = decode_any(payload).map_err(|e| e.to_string())?;
    let bundle = matches!(decoded, Decoded::Bundle(_));
    decoded
        .into_messages()
        .into_iter()
        .enumerate()
        .map(|(i, envelope)| {
            to_message(envelope, origin, received_ms, spec).map_err(|reason| match bundle {
                true => format!("message {i} of the bundle: {reason}"),
                false => reason,
            })
        })
        .collect()
}

/// Turns a payload holding one message into the store's [`Message`], or says why it cannot be
/// applied (a bundle is refused: use [`prepare_all`]).
pub fn prepare(payload: &[u8], origin: &Origin, received_ms: i64) -> Result<Message, String> {
    prepare_with(payload, origin, received_ms, &WindowSpec::default())
}

/// [`prepare`] with the windows of `spec`.
pub fn prepare_with(
    payload: &[u8],
    origin: &Origin,
    received_ms: i64,
    spec: &WindowSpec,
) -> Result<Message, String> {
    let envelope = decode(payload).map_err(|e| e.to_string())?;
    to_message(envelope, origin, received_ms, spec)
}

/// One decoded message, checked against where it came from, as the store's [`Message`].
fn to_message(
    envelope: Envelope,
    origin: &Origin,
    received_ms: i64,
    spec: &WindowSpec,
) -> Result<Message, String> {
    check_origin(&envelope, origin)?;
    if i64::try_from(envelope.seq).is_err() {
        return Err(format!(
            "sequence number {} is above the supported maximum {}",
            envelope.seq,
            i64::MAX
        ));
    }
    let Envelope {
        device, seq, body, ..
    } = envelope;
    let mut message = Message {
        device,
        seq,
        received_ms,
        event_ms: None,
        readings: 0,
        windows: Vec::new(),
        alert: None,
        status: None,
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
        }
        Body::Alert(alert) => {
            message.event_ms = Some(alert.time_ms);
            message.alert = Some(alert);
        }
        Body::Status(status) => {
            // A status without a time (0, the field's default) says nothing about event time.
            message.event_ms = (status.time_ms != 0).then_some(status.time_ms);
            message.status = Some(status.state);
        }
    }
    Ok(message)
}

/// On MQTT the topic names the device and kind; a payload that claims another device is
/// refused, since brokers (AWS IoT policies, Mosquitto ACLs) authorise by topic.
fn check_origin(envelope: &Envelope, origin: &Origin) -> Result<(), String> {
    let Origin::Mqtt { topic } = origin else {
        return Ok(());
    };
    let Some((device, kind)) = topic::parse_data(topic) else {
        return Err(format!("topic {topic:?} is not an Osprey data topic"));
    };
    if device != envelope.device {
        return Err(format!(
            "payload device {:?} does not match topic device {device:?}",
            envelope.device
        ));
    }
    if kind != envelope.kind() {
        return Err(format!(
            "payload kind {} does not match topic kind {}",
            envelope.kind().topic_level(),
            kind.topic_level()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
