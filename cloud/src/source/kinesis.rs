//! The Kinesis source: every shard of a stream, in lineage order, one reader task per shard.
//!
//! ```text
//!  ListShards (paginated) at start, every RELIST_EVERY, and whenever a shard finishes
//!     │
//!     ▼
//!  lineage: a shard starts once each parent is finished (checkpoint SHARD_END) or has aged
//!           out of the stream ──► reader task per shard (see `shard`)
//!     │
//!     ▼
//!  reader ended: Finished ─► its children are re-checked at once
//!                Taken (leased by another consumer) ─► tried again at the next listing
//!                panicked (a bug) ─► restarted at the next listing
//! ```
//!
//! **Checkpoints.** With the SQLite store (default) a batch and its shard checkpoint commit in
//! one transaction, so a restart resumes exactly after the last applied record. With DynamoDB
//! checkpoints ([`dynamo`], `--checkpoint-table`) the checkpoint is written right after the
//! batch; a crash in between re-reads that batch and dedup on `(device, seq)` drops it.
//!
//! **Order.** Within a shard records are applied in order; lineage keeps a device's records
//! from before a split or merge ahead of those after it.
//!
//! **Metrics.** Each shard's state, iterator age (`MillisBehindLatest`), records, throttled
//! calls, expired iterators and checkpoint writes appear under `pipeline.shards` in
//! `GET /api/stats`, and as Prometheus series with a `shard` label in `GET /metrics`
//! ([`crate::metrics`]).
//!
//! **Shutdown.** Readers stop after their current batch (an in-flight GetRecords is abandoned:
//! nothing of it was applied); every applied batch is already checkpointed. DynamoDB leases are
//! released so that another consumer can take the shards at once.

pub mod checkpoint;
pub mod dynamo;
pub mod lineage;
mod shard;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::Client;
use tokio::task::JoinSet;

use crate::connection::kinesis::{describe_error, KinesisConfig};
use crate::pipeline::Pipeline;
use crate::shutdown::{SetReady, Shutdown};
use crate::store::StoreReader;
use checkpoint::Checkpoints;
use dynamo::DynamoCheckpoints;
use lineage::{Lineage, ShardInfo};
use shard::Ended;

/// Records asked for per GetRecords call (the most Kinesis returns).
pub const GET_RECORDS_LIMIT: i32 = 10_000;

/// Shortest time between two GetRecords calls on one shard (5 calls/s allowed per shard).
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Bytes per second one shard may be read at (Kinesis's read limit per shard): after a call
/// that returned `b` bytes the next waits at least `b / SHARD_READ_BYTES_S` seconds.
pub const SHARD_READ_BYTES_S: f64 = 2.0 * 1024.0 * 1024.0;

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

/// Lists every shard of the stream with its parents, following `next_token` pages.
pub async fn list_shards(
    client: &Client,
    cfg: &KinesisConfig,
) -> Result<Vec<ShardInfo>, KinesisError> {
    list_shards_paged(client, cfg, None).await
}

/// [`list_shards`] asking for at most `page_size` shards per call (AWS's default without).
pub async fn list_shards_paged(
    client: &Client,
    cfg: &KinesisConfig,
    page_size: Option<i32>,
) -> Result<Vec<ShardInfo>, KinesisError> {
    let mut shards = Vec::new();
    let mut next_token: Option<String> = None;
    loop {
        // ListShards takes either the stream name or a page token, never both.
        let request = match &next_token {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(&cfg.stream),
        };
        let mut result = request.set_max_results(page_size).send().await;
        // moto 5.2 checks a page token against the stream name, so it wants both (which AWS
        // refuses); its error code, InvalidToken, is not one AWS uses for ListShards.
        if let (Some(token), Err(e)) = (&next_token, &result) {
            if e.as_service_error().and_then(|s| s.meta().code()) == Some("InvalidToken") {
                result = client
                    .list_shards()
                    .stream_name(&cfg.stream)
                    .next_token(token)
                    .set_max_results(page_size)
                    .send()
                    .await;
            }
        }
        let page = result.map_err(|e| KinesisError::ListShards {
            stream: cfg.stream.clone(),
            endpoint: cfg.endpoint(),
            message: describe_error(&e),
        })?;
        shards.extend(page.shards().iter().map(|s| ShardInfo {
            id: s.shard_id().to_owned(),
            parent: s.parent_shard_id().map(str::to_owned),
            adjacent_parent: s.adjacent_parent_shard_id().map(str::to_owned),
        }));
        match page.next_token() {
            Some(token) if !token.is_empty() => next_token = Some(token.to_owned()),
            _ => return Ok(shards),
        }
    }
}

/// What every shard reader shares.
struct Shared {
    client: Client,
    stream: String,
    pipeline: Pipeline,
    checkpoints: Checkpoints,
}

/// Reads every shard of the stream into `pipeline` until `shutdown`, then waits for the shard
/// readers to finish their current batch. Sets `ready` after the first shard listing.
/// Checkpoints go to `cfg.checkpoint_table` in DynamoDB if set, else to the SQLite store
/// that `reader` reads.
pub async fn run(
    cfg: KinesisConfig,
    client: Client,
    pipeline: Pipeline,
    reader: StoreReader,
    ready: SetReady,
    mut shutdown: Shutdown,
) {
    let checkpoints = match &cfg.checkpoint_table {
        Some(table) => Checkpoints::Dynamo(DynamoCheckpoints::new(
            cfg.dynamodb_client().await,
            table,
            &cfg.stream,
            DynamoCheckpoints::stable_owner(&cfg.consumer_name),
            dynamo::DEFAULT_LEASE,
        )),
        None => Checkpoints::Sqlite(reader),
    };
    let shared = Arc::new(Shared {
        client,
        stream: cfg.stream.clone(),
        pipeline,
        checkpoints,
    });
    let stats = shared.pipeline.stats_handle();
    let mut lineage = Lineage::default();
    let mut readers = JoinSet::new();
    let mut reading: HashMap<tokio::task::Id, String> = HashMap::new();
    tracing::info!(stream = %cfg.stream, endpoint = %cfg.endpoint(), "kinesis source starting");
    let mut relist = true;
    // Shards leased by another consumer, tried again after the next listing.
    let mut retry_later: Vec<String> = Vec::new();
    loop {
        if relist {
            for id in retry_later.drain(..) {
                lineage.restart(&id);
            }
            match list_shards(&shared.client, &cfg).await {
                Ok(shards) => {
                    lineage.update(shards);
                    ready.set();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "shard listing failed; keeping the known shards")
                }
            }
        }
        for id in lineage.startable() {
            tracing::info!(stream = %cfg.stream, shard = %id, "reading shard");
            lineage.started(&id);
            let task = readers.spawn(shard::read(
                Arc::clone(&shared),
                id.clone(),
                shutdown.clone(),
            ));
            reading.insert(task.id(), id);
        }
        for id in lineage.waiting() {
            stats.update_shard(&id, |p| p.state = "waiting");
        }
        // Wait for the next listing, a reader ending, or shutdown.
        tokio::select! {
            _ = shutdown.wait() => break,
            _ = tokio::time::sleep(RELIST_EVERY) => relist = true,
            Some(done) = readers.join_next_with_id() => {
                relist = false;
                match done {
                    Ok((task, ended)) => {
                        if let Some(id) = reading.remove(&task) {
                            match ended {
                                // Its children may not be listed yet: list again now.
                                Ended::Finished => {
                                    lineage.finished(&id);
                                    relist = true;
                                }
                                // Another consumer has it: look again at the next listing.
                                Ended::Taken => {
                                    retry_later.push(id.clone());
                                    stats.update_shard(&id, |p| p.state = "leased elsewhere");
                                }
                                Ended::Stopped => {}
                            }
                        }
                    }
                    Err(e) => {
                        if let Some(id) = reading.remove(&e.id()) {
                            tracing::error!(shard = %id, error = %e, "shard reader failed; restarting it at the next listing");
                            lineage.restart(&id);
                        }
                    }
                }
            }
        }
    }
    while readers.join_next().await.is_some() {}
    tracing::info!(stream = %cfg.stream, stats = ?shared.pipeline.stats(), "kinesis source stopped");
}
