//! One shard's reader.
//!
//! ```text
//!  claim (checkpoint; lease with DynamoDB) ─► SHARD_END? done ─► taken by another? give up
//!     │
//!     ▼
//!  GetShardIterator AFTER_SEQUENCE_NUMBER checkpoint (TRIM_HORIZON without one)
//!     │
//!     ▼
//!  GetRecords ─► records + checkpoint committed together ─► next iterator
//!     │ throttled: back off, same iterator        none: checkpoint SHARD_END, done
//!     │ expired: new iterator from the checkpoint
//!     └ the next call as soon as the limits allow: ≥ 200 ms after the last (5 GetRecords/s
//!       per shard) and ≥ its bytes / 2 MB/s (the shard's read rate); only throttling backs off
//! ```

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::error::SdkError;
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_kinesis::types::{Record, ShardIteratorType};
use tokio::time::Instant;

use super::checkpoint::{CheckpointError, Claim, SHARD_END};
use super::{Shared, GET_RECORDS_LIMIT, POLL_INTERVAL, SHARD_READ_BYTES_S};
use crate::backoff::Backoff;
use crate::connection::kinesis::describe_error;
use crate::pipeline::Origin;
use crate::shutdown::Shutdown;

/// How a shard reader ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The shard is closed and every record is applied (checkpoint SHARD_END).
    Finished,
    /// Shutdown; the checkpoint is the last batch applied.
    Stopped,
    /// Another consumer holds the shard's lease (DynamoDB checkpoints); try again later.
    Taken,
}

enum Failure {
    Throttled,
    Expired,
    Other(String),
}

fn classify_get_records(e: &SdkError<GetRecordsError>) -> Failure {
    match e.as_service_error() {
        Some(GetRecordsError::ProvisionedThroughputExceededException(_))
        | Some(GetRecordsError::KmsThrottlingException(_)) => Failure::Throttled,
        Some(GetRecordsError::ExpiredIteratorException(_)) => Failure::Expired,
        _ => Failure::Other(describe_error(e)),
    }
}

fn classify_get_iterator(e: &SdkError<GetShardIteratorError>) -> Failure {
    match e.as_service_error() {
        Some(GetShardIteratorError::ProvisionedThroughputExceededException(_)) => {
            Failure::Throttled
        }
        _ => Failure::Other(describe_error(e)),
    }
}

/// Sleeps `delay`; false if shutdown came first.
async fn pause(delay: Duration, shutdown: &mut Shutdown) -> bool {
    tokio::select! {
        _ = shutdown.wait() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Reads `shard_id` until it is finished, shutdown comes, or another consumer has it.
pub(super) async fn read(shared: Arc<Shared>, shard_id: String, mut shutdown: Shutdown) -> Ended {
    let ended = read_inner(&shared, &shard_id, &mut shutdown).await;
    if ended != Ended::Taken {
        shared.checkpoints.release(&shard_id).await;
    }
    ended
}

async fn read_inner(shared: &Shared, shard_id: &str, shutdown: &mut Shutdown) -> Ended {
    let stats = shared.pipeline.stats_handle();
    let mut backoff = Backoff::new(POLL_INTERVAL, Duration::from_secs(10));
    let mut last_applied = loop {
        match shared.checkpoints.claim(&shared.stream, shard_id).await {
            Ok(Claim::Owned(cp)) => break cp,
            Ok(Claim::Taken) => {
                tracing::info!(shard = %shard_id, "shard is leased by another consumer");
                return Ended::Taken;
            }
            Err(e) => {
                tracing::error!(error = %e, shard = %shard_id, "cannot read the checkpoint");
                if !pause(backoff.next_delay(), shutdown).await {
                    return Ended::Stopped;
                }
            }
        }
    };
    if last_applied.as_deref() == Some(SHARD_END) {
        stats.update_shard(shard_id, |p| p.state = "finished");
        return Ended::Finished;
    }
    stats.update_shard(shard_id, |p| p.state = "reading");
    backoff.reset();
    let mut iterator: Option<String> = None;
    let mut next_call = Instant::now();
    let mut renewed = Instant::now();
    while !shutdown.is_triggered() {
        let current = match iterator.take() {
            Some(it) => it,
            None => match shard_iterator(shared, shard_id, last_applied.as_deref()).await {
                Ok(it) => it,
                Err(failure) => {
                    let delay = backoff.next_delay();
                    if let Failure::Other(message) = failure {
                        tracing::warn!(shard = %shard_id, error = %message, "GetShardIterator failed");
                    }
                    if !pause(delay, shutdown).await {
                        return Ended::Stopped;
                    }
                    continue;
                }
            },
        };
        if !pause(
            next_call.saturating_duration_since(Instant::now()),
            shutdown,
        )
        .await
        {
            return Ended::Stopped;
        }
        next_call = Instant::now() + POLL_INTERVAL;
        let call = shared
            .client
            .get_records()
            .shard_iterator(&current)
            .limit(GET_RECORDS_LIMIT)
            .send();
        // Abandoning a call on shutdown is harmless: nothing of it has been applied.
        let result = tokio::select! {
            _ = shutdown.wait() => return Ended::Stopped,
            result = call => result,
        };
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                match classify_get_records(&e) {
                    // The iterator is still good for five minutes: retry it after a pause.
                    Failure::Throttled => {
                        tracing::debug!(shard = %shard_id, "GetRecords throttled; backing off");
                        stats.update_shard(shard_id, |p| p.throttled += 1);
                        iterator = Some(current);
                    }
                    Failure::Expired => {
                        tracing::info!(shard = %shard_id, "shard iterator expired; re-acquiring from the checkpoint");
                        stats.update_shard(shard_id, |p| p.expired_iterators += 1);
                        continue;
                    }
                    // The iterator may be what is wrong: start again from the checkpoint.
                    Failure::Other(message) => {
                        tracing::warn!(shard = %shard_id, error = %message, "GetRecords failed");
                    }
                }
                if !pause(backoff.next_delay(), shutdown).await {
                    return Ended::Stopped;
                }
                continue;
            }
        };
        backoff.reset();
        let records = response.records();
        // Keep within the shard's 2 MB/s: a big response pushes the next call back.
        let bytes: usize = records.iter().map(|r| r.data().as_ref().len()).sum();
        let read_time = Duration::from_secs_f64(bytes as f64 / SHARD_READ_BYTES_S);
        next_call = next_call.max(Instant::now() + read_time);
        let next = response.next_shard_iterator();
        let behind = response.millis_behind_latest().unwrap_or(0);
        stats.update_shard(shard_id, |p| {
            p.millis_behind_latest = behind;
            p.records += records.len() as u64;
        });
        // A closed shard's last response carries no next iterator: its checkpoint becomes
        // SHARD_END, in the same commit as its last records. Only that ends a shard: a shard
        // listed as closed that answers nothing is not taken as finished, because an emulator
        // that keeps routing records into it (moto 5.2) would then lose them.
        let checkpoint = match (next, records.last()) {
            (None, _) => Some(SHARD_END.to_owned()),
            (Some(_), Some(last)) => Some(last.sequence_number().to_owned()),
            (Some(_), None) => None,
        };
        if let Some(checkpoint) = checkpoint {
            match commit(shared, shard_id, records, &checkpoint, shutdown).await {
                Commit::Done => {
                    stats.update_shard(shard_id, |p| p.checkpoints += 1);
                    last_applied = Some(checkpoint);
                    renewed = Instant::now();
                }
                Commit::Stopped => return Ended::Stopped,
                Commit::LeaseLost => return Ended::Taken,
            }
            tracing::debug!(shard = %shard_id, records = records.len(), behind_ms = behind, "applied records");
        } else if let Some(every) = shared.checkpoints.renew_every() {
            if renewed.elapsed() >= every {
                match shared.checkpoints.renew(shard_id).await {
                    Ok(()) => renewed = Instant::now(),
                    Err(CheckpointError::Dynamo(super::dynamo::DynamoError::LeaseLost {
                        ..
                    })) => return Ended::Taken,
                    Err(e) => tracing::warn!(shard = %shard_id, error = %e, "lease renewal failed"),
                }
            }
        }
        match next {
            Some(next) => iterator = Some(next.to_owned()),
            None => {
                tracing::info!(shard = %shard_id, "shard is closed and fully read");
                stats.update_shard(shard_id, |p| {
                    p.state = "finished";
                    p.millis_behind_latest = 0;
                });
                return Ended::Finished;
            }
        }
    }
    Ended::Stopped
}

async fn shard_iterator(
    shared: &Shared,
    shard_id: &str,
    after: Option<&str>,
) -> Result<String, Failure> {
    let request = shared
        .client
        .get_shard_iterator()
        .stream_name(&shared.stream)
        .shard_id(shard_id);
    let request = match after {
        Some(seq) => request
            .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
            .starting_sequence_number(seq),
        None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
    };
    let response = request
        .send()
        .await
        .map_err(|e| classify_get_iterator(&e))?;
    response
        .shard_iterator()
        .map(str::to_owned)
        .ok_or_else(|| Failure::Other("GetShardIterator returned no iterator".to_owned()))
}

enum Commit {
    Done,
    Stopped,
    LeaseLost,
}

/// Ingests one GetRecords batch with its checkpoint, retrying store failures. `Stopped` if
/// shutdown came first (nothing checkpointed: the batch is read again on restart).
async fn commit(
    shared: &Shared,
    shard_id: &str,
    records: &[Record],
    checkpoint: &str,
    shutdown: &mut Shutdown,
) -> Commit {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let payloads = records
            .iter()
            .map(|r| {
                let origin = Origin::Kinesis {
                    stream: shared.stream.clone(),
                    shard_id: shard_id.to_owned(),
                    sequence_number: r.sequence_number().to_owned(),
                    partition_key: r.partition_key().unwrap_or_default().to_owned(),
                };
                (r.data().as_ref(), origin)
            })
            .collect();
        let result = shared
            .checkpoints
            .commit(
                &shared.pipeline,
                payloads,
                &shared.stream,
                shard_id,
                checkpoint,
            )
            .await;
        match result {
            Ok(()) => return Commit::Done,
            Err(CheckpointError::Dynamo(super::dynamo::DynamoError::LeaseLost { .. })) => {
                tracing::warn!(shard = %shard_id, "lost the shard's lease to another consumer; stopping this reader");
                return Commit::LeaseLost;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(shard = %shard_id, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "could not store a batch of records; retrying");
                if !pause(delay, shutdown).await {
                    return Commit::Stopped;
                }
            }
        }
    }
}
