//! The Kinesis event source mapping handler: one batch of one shard's records in, the records
//! to retry out.
//!
//! ```text
//!  records, in order ─► lifecycle event JSON? ─► client id = partition key? ─► presence
//!                    └► prepare_all (decode, check_origin against the partition key, window
//!                       deltas: osprey-cloud's core; a bundle gives each of its messages)
//!                          ├─ bad payload or identity mismatch ─► dead letter (not a failure:
//!                          │                                      retrying cannot fix it)
//!                          └─ messages ─► grouped by device
//!  each device's messages ─► DynamoState::apply_device (dedup, windows folded together, one
//!                            write per window, the device item last) ─► alert outputs
//!  the first failure ─► batchItemFailures = [that record]
//! ```
//!
//! The records are read in order. A device's records stay on one shard, so all of a device's
//! messages in the batch are applied together, in order, with one read and one write per
//! window however many messages it took (what keeps the cost per message low; see
//! [`crate::state`]); devices are applied concurrently ([`DEVICES_AT_ONCE`]).
//!
//! If a dead letter cannot be stored, reading stops at that record: the messages before it
//! are applied and it is reported. If a device's messages fail, the first record that carried
//! one is reported. The event source mapping (with `ReportBatchItemFailures`) then retries
//! from the lowest record reported; what was applied after it comes again and is dropped by
//! dedup, so each shard's order holds and nothing is applied twice.

use std::collections::BTreeMap;

use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord};
use aws_lambda_events::event::streams::KinesisEventResponse;
use futures_util::stream::{self, StreamExt};
use osprey_cloud::clock::now_ms;
use osprey_cloud::pipeline::{check_origin, prepare_all, Origin};
use osprey_cloud::source::presence;
use osprey_cloud::store::{DeadLetter, Message};

use crate::state::{Applied, DynamoState, StateError};
use crate::{alerts, metrics};

/// Devices whose messages are applied at the same time.
pub const DEVICES_AT_ONCE: usize = 16;

/// What happened to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordOutcome {
    /// A new message, applied.
    Applied,
    /// Applied before; dropped.
    Duplicate,
    /// A lifecycle event, stored as presence.
    Presence,
    /// Not a valid message; kept as a dead letter with this reason.
    DeadLettered(String),
}

/// Handles one Kinesis event: returns the records to retry (empty when all went through).
pub async fn handle(event: &KinesisEvent, state: &DynamoState) -> KinesisEventResponse {
    let mut response = KinesisEventResponse::default();
    let usage_before = state.usage().figures();
    // Each device's messages with the index of the record that brought each.
    let mut devices: BTreeMap<String, Vec<(usize, Message)>> = BTreeMap::new();
    let mut failed: Option<usize> = None;
    for (i, record) in event.records.iter().enumerate() {
        match classify(record, state).await {
            Ok(Classified::Messages(messages)) => {
                for m in messages {
                    devices.entry(m.device.clone()).or_default().push((i, m));
                }
            }
            Ok(Classified::Done(_)) => {}
            Err(e) => {
                tracing::warn!(sequence_number = %record.kinesis.sequence_number, error = %e,
                    "record failed; reporting it for retry");
                failed = Some(i);
                break;
            }
        }
    }
    let results: Vec<Result<usize, usize>> = stream::iter(devices.into_values())
        .map(|group| async move {
            let first = group.first().map_or(0, |(i, _)| *i);
            let messages: Vec<&Message> = group.iter().map(|(_, m)| m).collect();
            apply_group(state, &messages).await.map_err(|e| {
                tracing::warn!(device = %messages[0].device, error = %e,
                    "a device's messages failed; reporting its first record for retry");
                first
            })
        })
        .buffer_unordered(DEVICES_AT_ONCE)
        .collect()
        .await;
    let applied: usize = results.iter().filter_map(|r| r.as_ref().ok()).sum();
    let lowest = results.iter().filter_map(|r| r.err()).chain(failed).min();
    if let Some(i) = lowest {
        response.add_failure(event.records[i].kinesis.sequence_number.clone());
    }
    let usage = state.usage().figures().since(&usage_before);
    metrics::emit(&metrics::values_line(
        now_ms(),
        &[
            (metrics::WRITE_UNITS, usage.write_units, "Count"),
            (metrics::READ_UNITS, usage.read_units, "Count"),
            (metrics::MESSAGES_APPLIED, applied as f64, "Count"),
        ],
        &[],
    ));
    response
}

/// Applies one device's messages, then notifies their alerts; gives how many were new.
async fn apply_group(state: &DynamoState, messages: &[&Message]) -> Result<usize, StateError> {
    let Some(first) = messages.first() else {
        return Ok(0);
    };
    let applied = state.apply_device(&first.device, messages).await?;
    for (message, applied) in messages.iter().zip(&applied) {
        alerts::notify(state, message, *applied).await?;
    }
    Ok(applied.iter().filter(|a| **a == Applied::Applied).count())
}

/// The stream name in an event source ARN (`arn:aws:kinesis:region:account:stream/NAME`).
pub fn stream_name(record: &KinesisEventRecord) -> String {
    record
        .event_source_arn
        .as_deref()
        .and_then(|arn| arn.rsplit_once(":stream/"))
        .map_or_else(|| "unknown".to_owned(), |(_, name)| name.to_owned())
}

/// What reading a record gave.
enum Classified {
    /// Messages to apply.
    Messages(Vec<Message>),
    /// Nothing more to do: a presence or a dead letter, stored.
    Done(RecordOutcome),
}

/// Handles one record on its own (its messages applied at once, as one device's group).
pub async fn handle_record(
    record: &KinesisEventRecord,
    state: &DynamoState,
) -> Result<RecordOutcome, StateError> {
    match classify(record, state).await? {
        Classified::Done(outcome) => Ok(outcome),
        Classified::Messages(messages) => {
            let refs: Vec<&Message> = messages.iter().collect();
            // A payload is applied if any of its messages was new.
            Ok(match apply_group(state, &refs).await? {
                0 => RecordOutcome::Duplicate,
                _ => RecordOutcome::Applied,
            })
        }
    }
}

/// Reads one record: stores a presence or a dead letter, or gives its messages.
async fn classify(
    record: &KinesisEventRecord,
    state: &DynamoState,
) -> Result<Classified, StateError> {
    let stream = stream_name(record);
    let sequence_number = record.kinesis.sequence_number.clone();
    // eventID is "<shard id>:<sequence number>".
    let shard_id = record
        .event_id
        .as_deref()
        .and_then(|id| id.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(shard, _)| shard.to_owned());
    let origin = Origin::Kinesis {
        stream: stream.clone(),
        shard_id: shard_id.clone(),
        sequence_number: sequence_number.clone(),
        partition_key: record.kinesis.partition_key.clone(),
    };
    let payload = record.kinesis.data.0.as_slice();
    let received_ms = now_ms();
    let rejection = match presence::parse(payload, &origin, received_ms) {
        Some(p) => match check_origin(&p.device, None, &origin) {
            Ok(()) => {
                state.presence(&p).await?;
                return Ok(Classified::Done(RecordOutcome::Presence));
            }
            Err(rejection) => rejection,
        },
        None => match prepare_all(payload, &origin, received_ms, state.windows()) {
            Ok(messages) => return Ok(Classified::Messages(messages)),
            Err(rejection) => rejection,
        },
    };
    let source = origin.to_string();
    if let Some(m) = &rejection.mismatch {
        metrics::emit_identity_mismatch(m, &source, received_ms);
        tracing::warn!(claimed = %m.claimed, source_device = %m.source, source = %origin,
            "identity mismatch: a payload named another device than its partition key");
    }
    let reason = rejection.reason;
    metrics::emit(&metrics::count_line(
        metrics::DEAD_LETTERS,
        received_ms,
        &[("source", &source), ("reason", &reason)],
    ));
    tracing::warn!(source = %origin, reason = %reason, "rejected payload, kept as a dead letter");
    let dead = DeadLetter {
        received_ms,
        source,
        reason: reason.clone(),
        payload: payload.to_vec(),
    };
    state
        .dead_letter(&stream, &format!("{shard_id}#{sequence_number}"), &dead)
        .await?;
    Ok(Classified::Done(RecordOutcome::DeadLettered(reason)))
}
