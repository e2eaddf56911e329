//! Where shard checkpoints live.
//!
//! - **SQLite** (default): the `checkpoints` table of the store, written in the same
//!   transaction as the batch it stands for, so a checkpoint never runs ahead of the effects.
//! - **DynamoDB** (the AWS deployment, [`super::dynamo`]): one item per shard, written after
//!   the batch is stored (re-reads after a crash in between are dropped by dedup), with a
//!   lease so that two consumers never read the same shard.
//!
//! A shard read to its end gets the checkpoint [`SHARD_END`]; its children may then start.

use crate::pipeline::{Origin, Pipeline, PipelineError};
use crate::store::{Checkpoint, StoreError, StoreReader};

use super::dynamo::{DynamoCheckpoints, DynamoError};

/// The checkpoint of a shard that has been read to its end.
pub const SHARD_END: &str = "SHARD_END";

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckpointError {
    /// The SQLite store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The pipeline could not store the batch.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// DynamoDB failed or refused.
    #[error(transparent)]
    Dynamo(#[from] DynamoError),
}

/// The checkpoint store of a consumer.
#[derive(Debug, Clone)]
pub enum Checkpoints {
    /// In the SQLite store, in the batch's transaction.
    Sqlite(StoreReader),
    /// In a DynamoDB table, with a lease per shard.
    Dynamo(DynamoCheckpoints),
}

/// Whether a shard may be read by this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// It is ours; reading starts after this checkpoint (`None`: from the start).
    Owned(Option<String>),
    /// Another consumer holds a live lease on it; try again later.
    Taken,
}

impl Checkpoints {
    /// Takes `shard` for this consumer and returns where to resume.
    pub async fn claim(&self, stream: &str, shard: &str) -> Result<Claim, CheckpointError> {
        match self {
            Checkpoints::Sqlite(reader) => {
                Ok(Claim::Owned(reader.checkpoint(stream, shard).await?))
            }
            Checkpoints::Dynamo(table) => Ok(table.claim(shard).await?),
        }
    }

    /// Stores `payloads` through `pipeline` and records `sequence_number` as `shard`'s
    /// checkpoint: in one transaction (SQLite), or right after the batch (DynamoDB).
    pub async fn commit(
        &self,
        pipeline: &Pipeline,
        payloads: Vec<(&[u8], Origin)>,
        stream: &str,
        shard: &str,
        sequence_number: &str,
    ) -> Result<(), CheckpointError> {
        let checkpoint = Checkpoint {
            stream: stream.to_owned(),
            shard_id: shard.to_owned(),
            sequence_number: sequence_number.to_owned(),
        };
        match self {
            Checkpoints::Sqlite(_) => {
                pipeline.ingest_batch(payloads, Some(checkpoint)).await?;
            }
            Checkpoints::Dynamo(table) => {
                if !payloads.is_empty() {
                    pipeline.ingest_batch(payloads, None).await?;
                }
                table.save(shard, sequence_number).await?;
            }
        }
        Ok(())
    }

    /// Keeps the lease on an idle `shard` alive (DynamoDB); nothing to do for SQLite.
    pub async fn renew(&self, shard: &str) -> Result<(), CheckpointError> {
        if let Checkpoints::Dynamo(table) = self {
            table.renew(shard).await?;
        }
        Ok(())
    }

    /// How often an idle reader renews its lease (`None`: no lease to renew).
    pub fn renew_every(&self) -> Option<std::time::Duration> {
        match self {
            Checkpoints::Sqlite(_) => None,
            Checkpoints::Dynamo(table) => Some(table.lease() / 3),
        }
    }

    /// Lets go of `shard` (graceful shutdown), so another consumer may take it at once.
    pub async fn release(&self, shard: &str) {
        if let Checkpoints::Dynamo(table) = self {
            if let Err(e) = table.release(shard).await {
                tracing::warn!(shard, error = %e, "could not release the shard lease; it expires on its own");
            }
        }
    }
}
