//! The Kinesis event source mapping handler: one batch of one shard's records in, the records
//! to retry out.
//!
//! ```text
//!  record ─► lifecycle event JSON? ─► client id = partition key? ─► presence
//!         └► prepare_all (decode, check_origin against the partition key, window deltas:
//!            osprey-cloud's core; a bundle gives each of its messages, applied one by one)
//!               ├─ bad payload or identity mismatch ─► dead letter (not a failure: retrying
//!               │                                      cannot fix it)
//!               └─ message ─► DynamoState::apply (dedup + windows + alert + device, one
//!                             transaction; too big for one transaction ─► dead letter)
//!  a DynamoDB failure ─► batchItemFailures = [this record]; stop
//! ```
//!
//! Records are processed in order. At the first transient failure the handler stops and
//! reports that record's sequence number: the event source mapping then checkpoints the
//! records before it and retries from it (with `ReportBatchItemFailures` on the mapping), so
//! one shard's order holds and later records are not applied ahead of it. Records re-sent by
//! a retry that were already applied are dropped by dedup.

use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord};
use aws_lambda_events::event::streams::KinesisEventResponse;
use osprey_cloud::clock::now_ms;
use osprey_cloud::pipeline::{check_origin, prepare_all, Origin, Rejection};
use osprey_cloud::source::presence;
use osprey_cloud::store::DeadLetter;

use crate::state::{Applied, DynamoState, StateError, MAX_WINDOWS_PER_MESSAGE};
use crate::{alerts, metrics};

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
    for record in &event.records {
        if let Err(e) = handle_record(record, state).await {
            tracing::warn!(sequence_number = %record.kinesis.sequence_number, error = %e,
                "record failed; reporting it for retry");
            response.add_failure(record.kinesis.sequence_number.clone());
            break;
        }
    }
    response
}

/// The stream name in an event source ARN (`arn:aws:kinesis:region:account:stream/NAME`).
pub fn stream_name(record: &KinesisEventRecord) -> String {
    record
        .event_source_arn
        .as_deref()
        .and_then(|arn| arn.rsplit_once(":stream/"))
        .map_or_else(|| "unknown".to_owned(), |(_, name)| name.to_owned())
}

/// Handles one record.
pub async fn handle_record(
    record: &KinesisEventRecord,
    state: &DynamoState,
) -> Result<RecordOutcome, StateError> {
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
                return Ok(RecordOutcome::Presence);
            }
            Err(rejection) => rejection,
        },
        None => match apply_all(payload, &origin, received_ms, state).await? {
            Ok(outcome) => return Ok(outcome),
            Err(rejection) => rejection,
        },
    };
    let source = origin.to_string();
    if let Some(m) = &rejection.mismatch {
        // Counted as the IdentityMismatches metric (EMF), the pair as searchable properties.
        metrics::emit(&metrics::count_line(
            metrics::IDENTITY_MISMATCHES,
            received_ms,
            &[
                ("claimed", &m.claimed),
                ("source_device", &m.source),
                ("source", &source),
            ],
        ));
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
    Ok(RecordOutcome::DeadLettered(reason))
}

/// Applies every message of a payload (one, or each of a bundle's: protocol 1.2), each in its
/// own transaction with its own dedup. `Ok(Err(reason))`: the payload must become a dead
/// letter. Every message is checked before any is applied; if a later message of a bundle
/// turns out too large for one transaction, the earlier ones stay applied (harmless: a replay
/// of them is a duplicate).
async fn apply_all(
    payload: &[u8],
    origin: &Origin,
    received_ms: i64,
    state: &DynamoState,
) -> Result<Result<RecordOutcome, Rejection>, StateError> {
    let messages = match prepare_all(payload, origin, received_ms, state.windows()) {
        Ok(messages) => messages,
        Err(rejection) => return Ok(Err(rejection)),
    };
    if let Some(m) = messages
        .iter()
        .find(|m| m.windows.len() > MAX_WINDOWS_PER_MESSAGE)
    {
        return Ok(Err(Rejection::other(format!(
            "message {} touches {} windows; one DynamoDB transaction holds at most {}",
            m.seq,
            m.windows.len(),
            MAX_WINDOWS_PER_MESSAGE
        ))));
    }
    // A payload is applied if any of its messages was new.
    let mut outcome = RecordOutcome::Duplicate;
    for message in &messages {
        match state.apply(message).await {
            Ok(applied) => {
                if applied == Applied::Applied {
                    outcome = RecordOutcome::Applied;
                }
                alerts::notify(state, message, applied).await?;
            }
            // Retrying cannot make it fit: keep it as a dead letter.
            Err(e @ StateError::TooLarge { .. }) => {
                return Ok(Err(Rejection::other(e.to_string())))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Ok(outcome))
}
