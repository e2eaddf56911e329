//! The Kinesis source: one reader task per shard, checkpoints in the store.
//!
//! ```text
//!  list shards (paginated) ── every 10 s ──► new shard id? spawn a reader
//!
//!  reader:  checkpoint? ─yes─► GetShardIterator AFTER_SEQUENCE_NUMBER
//!              └──no──────────► GetShardIterator TRIM_HORIZON
//!           loop: GetRecords (≤ 1000) ─► pipeline.ingest_batch(records, checkpoint = last seq)
//!                 (one transaction)      ─► next iterator; none = shard closed, reader done
//!                 ≥ 200 ms between calls (Kinesis allows 5 GetRecords/s per shard)
//!                 throughput exceeded ─► back off; expired iterator ─► re-acquire from checkpoint
//! ```
//!
//! The checkpoint commits in the same transaction as the records' effects, so a restart
//! resumes exactly after the last applied record.
//!
//! Resharding: shards are listed at start and every [`RELIST_EVERY`], and a reader starts for
//! every shard id not seen before, including children of a split or merge while their parents
//! are still being read. Reading a child before its parents are finished can apply a device's
//! messages out of order; counts and windows are unaffected (dedup, mergeable aggregates), the
//! device status may briefly show an older state. Parent-before-child lineage is still to do.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::error::SdkError;
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_kinesis::types::ShardIteratorType;
use aws_sdk_kinesis::Client;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::connection::kinesis::{describe_error, KinesisConfig};
use crate::pipeline::{Origin, Pipeline};
use crate::shutdown::{SetReady, Shutdown};
use crate::store::{Checkpoint, StoreReader};

/// Records asked for per GetRecords call.
pub const GET_RECORDS_LIMIT: i32 = 1000;

/// Shortest time between two GetRecords calls on one shard (5 calls/s allowed per shard).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// How often the shard list is refreshed to pick up new shards.
pub const RELIST_EVERY: Duration = Duration::from_secs(10);

/// Why the Kinesis source could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KinesisError {
    /// ListShards failed (stream missing, endpoint unreachable, credentials refused).
    #[error(
        "cannot list the shards of Kinesis stream {stream:?} at {endpoint}: {message}; \
         check that the stream exists and --stream, --endpoint-url, --region and the AWS \
         credentials are right"
    )]
    ListShards {
        /// Stream name.
        stream: String,
        /// Where the request went.
        endpoint: String,
        /// The SDK's error, with its causes.
        message: String,
    },
}

/// Lists every shard id of the stream, following `next_token` pages.
pub async fn list_shards(
    client: &Client,
    cfg: &KinesisConfig,
) -> Result<Vec<String>, KinesisError> {
    let mut ids = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        // ListShards takes either the stream name or a page token, never both.
        let request = match &next_token {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(&cfg.stream),
        };
        let page = request.send().await.map_err(|e| KinesisError::ListShards {
            stream: cfg.stream.clone(),
            endpoint: cfg.endpoint(),
            message: describe_error(&e),
        })?;
        ids.extend(page.shards().iter().map(|s| s.shard_id().to_owned()));
        match page.next_token() {
            Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
            _ => return Ok(ids),
        }
    }
}

struct Shared {
    client: Client,
    stream: String,
    pipeline: Pipeline,
    reader: StoreReader,
}

/// Reads every shard of the stream into `pipeline` until `shutdown`, then waits for the shard
/// readers to finish their current batch. Sets `ready` after the first shard listing.
pub async fn run(
    cfg: KinesisConfig,
    client: Client,
    pipeline: Pipeline,
    reader: StoreReader,
    ready: SetReady,
    mut shutdown: Shutdown,
) {
    let shared = Arc::new(Shared {
        client,
        stream: cfg.stream.clone(),
        pipeline,
        reader,
    });
    let mut known: HashSet<String> = HashSet::new();
    let mut readers = JoinSet::new();
    let mut reading: HashMap<tokio::task::Id, String> = HashMap::new();
    tracing::info!(stream = %cfg.stream, endpoint = %cfg.endpoint(), "kinesis source starting");
    loop {
        match list_shards(&shared.client, &cfg).await {
            Ok(ids) => {
                for id in ids {
                    if known.insert(id.clone()) {
                        tracing::info!(stream = %cfg.stream, shard = %id, "reading shard");
                        let task = readers.spawn(read_shard(
                            Arc::clone(&shared),
                            id.clone(),
                            shutdown.clone(),
                        ));
                        reading.insert(task.id(), id);
                    }
                }
                ready.set();
            }
            Err(e) => tracing::warn!(error = %e, "shard listing failed; keeping the known shards"),
        }
        // Reap finished readers. A closed, fully read shard stays in `known`; a reader that
        // panicked (a bug) is forgotten so that the next listing starts it again.
        while let Some(done) = readers.try_join_next_with_id() {
            match done {
                Ok((task, ())) => {
                    reading.remove(&task);
                }
                Err(e) => {
                    if let Some(shard) = reading.remove(&e.id()) {
                        tracing::error!(shard = %shard, error = %e, "shard reader failed; restarting it");
                        known.remove(&shard);
                    }
                }
            }
        }
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(RELIST_EVERY) => {}
        }
    }
    while readers.join_next().await.is_some() {}
    tracing::info!(stream = %cfg.stream, stats = ?shared.pipeline.stats(), "kinesis source stopped");
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

async fn read_shard(shared: Arc<Shared>, shard_id: String, mut shutdown: Shutdown) {
    let mut backoff = Backoff::new(POLL_INTERVAL, Duration::from_secs(10));
    let mut last_applied = loop {
        match shared.reader.checkpoint(&shared.stream, &shard_id).await {
            Ok(cp) => break cp,
            Err(e) => {
                tracing::error!(error = %e, shard = %shard_id, "cannot read the checkpoint");
                if !pause(backoff.next_delay(), &mut shutdown).await {
                    return;
                }
            }
        }
    };
    backoff.reset();
    let mut iterator: Option<String> = None;
    let mut next_call = Instant::now();
    while !shutdown.is_triggered() {
        let current = match iterator.take() {
            Some(it) => it,
            None => match shard_iterator(&shared, &shard_id, last_applied.as_deref()).await {
                Ok(it) => it,
                Err(failure) => {
                    let delay = backoff.next_delay();
                    if let Failure::Other(message) = failure {
                        tracing::warn!(shard = %shard_id, error = %message, "GetShardIterator failed");
                    }
                    if !pause(delay, &mut shutdown).await {
                        return;
                    }
                    continue;
                }
            },
        };
        if !pause(
            next_call.saturating_duration_since(Instant::now()),
            &mut shutdown,
        )
        .await
        {
            return;
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
            _ = shutdown.wait() => return,
            result = call => result,
        };
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                match classify_get_records(&e) {
                    // The iterator is still good for five minutes: retry it after a pause.
                    Failure::Throttled => {
                        tracing::debug!(shard = %shard_id, "GetRecords throttled; backing off");
                        iterator = Some(current);
                    }
                    Failure::Expired => {
                        tracing::info!(shard = %shard_id, "shard iterator expired; re-acquiring");
                        continue;
                    }
                    // The iterator may be what is wrong: start again from the checkpoint.
                    Failure::Other(message) => {
                        tracing::warn!(shard = %shard_id, error = %message, "GetRecords failed");
                    }
                }
                if !pause(backoff.next_delay(), &mut shutdown).await {
                    return;
                }
                continue;
            }
        };
        backoff.reset();
        let records = response.records();
        if let Some(last) = records.last() {
            let checkpoint = Checkpoint {
                stream: shared.stream.clone(),
                shard_id: shard_id.clone(),
                sequence_number: last.sequence_number().to_owned(),
            };
            if !apply(&shared, &shard_id, records, checkpoint, &mut shutdown).await {
                return;
            }
            last_applied = Some(last.sequence_number().to_owned());
            tracing::debug!(shard = %shard_id, records = records.len(),
                behind_ms = response.millis_behind_latest().unwrap_or(0), "applied records");
        }
        match response.next_shard_iterator() {
            Some(next) => iterator = Some(next.to_owned()),
            None => {
                tracing::info!(shard = %shard_id, "shard is closed and fully read");
                return;
            }
        }
    }
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

/// Ingests one GetRecords batch with its checkpoint, retrying store failures. False if
/// shutdown came first (nothing checkpointed: the batch is read again on restart).
async fn apply(
    shared: &Shared,
    shard_id: &str,
    records: &[aws_sdk_kinesis::types::Record],
    checkpoint: Checkpoint,
    shutdown: &mut Shutdown,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let payloads = records
            .iter()
            .map(|r| {
                let origin = Origin::Kinesis {
                    stream: shared.stream.clone(),
                    shard_id: shard_id.to_owned(),
                    sequence_number: r.sequence_number().to_owned(),
                };
                (r.data().as_ref(), origin)
            })
            .collect();
        match shared
            .pipeline
            .ingest_batch(payloads, Some(checkpoint.clone()))
            .await
        {
            Ok(_) => return true,
            Err(e) => {
                let delay = backoff.next_delay();
                tracing::error!(shard = %shard_id, error = %e, retry_in_ms = delay.as_millis() as u64,
                    "could not store a batch of records; retrying");
                if !pause(delay, shutdown).await {
                    return false;
                }
            }
        }
    }
}
