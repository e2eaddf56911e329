//! Shard checkpoints in DynamoDB, with a lease per shard (the AWS deployment).
//!
//! One item per shard, key `shard` = `<stream>/<shard id>`:
//!
//! | attribute | meaning |
//! |---|---|
//! | `sequence_number` | last record applied, or `SHARD_END`; absent before the first batch |
//! | `owner` | the consumer holding the lease |
//! | `lease_until_ms` | when the lease lapses unless renewed (epoch ms) |
//! | `version` | incremented by every write, for inspection and ordering |
//!
//! Every write is conditional: [`DynamoCheckpoints::claim`] succeeds only if the shard has no
//! item, is already ours, or its lease has lapsed; [`DynamoCheckpoints::save`] only while we
//! are still the owner. A consumer that lost its lease (it stalled past the lease, and another
//! took the shard) gets [`DynamoError::LeaseLost`] and stops reading that shard; whatever it
//! applied in between is absorbed by dedup on `(device, seq)`.
//!
//! The table needs only its key: `shard` (string) as the partition key
//! ([`DynamoCheckpoints::create_table`] makes one, for tests and first runs).

use std::time::Duration;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;

use super::checkpoint::Claim;
use crate::clock::now_ms;
use crate::connection::kinesis::describe_error;

/// This machine's host name (the kernel's, else `$HOSTNAME`, else `localhost`).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// How long a lease lasts without renewal.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Why a DynamoDB checkpoint operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DynamoError {
    /// A request failed (table missing, endpoint unreachable, credentials refused).
    #[error(
        "DynamoDB {operation} on table {table:?} failed: {message}; check that the table exists \
         (partition key `shard`, a string) and --checkpoint-table, --endpoint-url, --region and \
         the AWS credentials are right"
    )]
    Request {
        /// The API call.
        operation: &'static str,
        /// Table name.
        table: String,
        /// The SDK's error.
        message: String,
    },
    /// Another consumer took the shard's lease.
    #[error("lost the lease on shard {shard} to another consumer")]
    LeaseLost {
        /// The shard.
        shard: String,
    },
}

/// Checkpoints of one stream's shards in a DynamoDB table; cheap to clone.
#[derive(Debug, Clone)]
pub struct DynamoCheckpoints {
    client: Client,
    table: String,
    stream: String,
    owner: String,
    lease: Duration,
}

impl DynamoCheckpoints {
    /// Checkpoints of `stream` in `table`, leased as `owner` for `lease` at a time.
    pub fn new(
        client: Client,
        table: impl Into<String>,
        stream: impl Into<String>,
        owner: impl Into<String>,
        lease: Duration,
    ) -> DynamoCheckpoints {
        DynamoCheckpoints {
            client,
            table: table.into(),
            stream: stream.into(),
            owner: owner.into(),
            lease,
        }
    }

    /// The owner name of consumer `name` on this host, `<name>@<host>`: the same across
    /// restarts, so a restarted consumer takes its own leases back at once instead of waiting
    /// for them to lapse. Two consumers of one stream on one host need two names.
    pub fn stable_owner(name: &str) -> String {
        format!("{name}@{}", host_name())
    }

    /// The lease duration.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    fn key(&self, shard: &str) -> AttributeValue {
        AttributeValue::S(format!("{}/{shard}", self.stream))
    }

    fn until(&self) -> AttributeValue {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        AttributeValue::N(now_ms().saturating_add(lease_ms).to_string())
    }

    fn request_error<E, R>(&self, operation: &'static str, e: &SdkError<E, R>) -> DynamoError
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        DynamoError::Request {
            operation,
            table: self.table.clone(),
            message: describe_error(e),
        }
    }

    /// Takes the lease on `shard` if it is free, lapsed or already ours, and returns where
    /// to resume; [`Claim::Taken`] if another consumer holds a live lease.
    pub async fn claim(&self, shard: &str) -> Result<Claim, DynamoError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("shard", self.key(shard))
            .update_expression("SET #owner = :me, lease_until_ms = :until ADD version :one")
            .condition_expression(
                "attribute_not_exists(#shard) OR #owner = :me OR lease_until_ms < :now",
            )
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#shard", "shard")
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .expression_attribute_values(":until", self.until())
            .expression_attribute_values(":now", AttributeValue::N(now_ms().to_string()))
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(output) => {
                let sequence = output
                    .attributes()
                    .and_then(|a| a.get("sequence_number"))
                    .and_then(|v| v.as_s().ok())
                    .cloned();
                Ok(Claim::Owned(sequence))
            }
            Err(e) if is_condition_failed(&e) => Ok(Claim::Taken),
            Err(e) => Err(self.request_error("UpdateItem (claim)", &e)),
        }
    }

    /// Records `sequence_number` as `shard`'s checkpoint and renews the lease, if we still
    /// own it.
    pub async fn save(&self, shard: &str, sequence_number: &str) -> Result<(), DynamoError> {
        self.conditional_update(
            shard,
            "SET sequence_number = :seq, lease_until_ms = :until ADD version :one",
            Some(sequence_number),
            self.until(),
        )
        .await
    }

    /// Renews the lease on `shard` without moving its checkpoint (an idle shard).
    pub async fn renew(&self, shard: &str) -> Result<(), DynamoError> {
        self.conditional_update(
            shard,
            "SET lease_until_ms = :until ADD version :one",
            None,
            self.until(),
        )
        .await
    }

    /// Ends the lease on `shard` now, so that another consumer may take it at once.
    pub async fn release(&self, shard: &str) -> Result<(), DynamoError> {
        self.conditional_update(
            shard,
            "SET lease_until_ms = :until ADD version :one",
            None,
            AttributeValue::N("0".to_owned()),
        )
        .await
    }

    async fn conditional_update(
        &self,
        shard: &str,
        expression: &str,
        sequence_number: Option<&str>,
        until: AttributeValue,
    ) -> Result<(), DynamoError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("shard", self.key(shard))
            .update_expression(expression)
            .condition_expression("#owner = :me")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":me", AttributeValue::S(self.owner.clone()))
            .expression_attribute_values(":until", until)
            .expression_attribute_values(":one", AttributeValue::N("1".to_owned()));
        if let Some(seq) = sequence_number {
            request =
                request.expression_attribute_values(":seq", AttributeValue::S(seq.to_owned()));
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failed(&e) => Err(DynamoError::LeaseLost {
                shard: shard.to_owned(),
            }),
            Err(e) => Err(self.request_error("UpdateItem", &e)),
        }
    }

    /// The checkpoint of `shard`, whoever owns it (for tools and tests).
    pub async fn get(&self, shard: &str) -> Result<Option<String>, DynamoError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("shard", self.key(shard))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.request_error("GetItem", &e))?;
        Ok(output
            .item()
            .and_then(|item| item.get("sequence_number"))
            .and_then(|v| v.as_s().ok())
            .cloned())
    }

    /// Creates a checkpoint table named `table` (on-demand billing) and waits until it is
    /// active. For first runs and tests; production tables come from the deployment template.
    pub async fn create_table(client: &Client, table: &str) -> Result<(), DynamoError> {
        let error = |e: String| DynamoError::Request {
            operation: "CreateTable",
            table: table.to_owned(),
            message: e,
        };
        client
            .create_table()
            .table_name(table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name("shard")
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(|e| error(e.to_string()))?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name("shard")
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(|e| error(e.to_string()))?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|e| error(describe_error(&e)))?;
        Ok(())
    }
}

fn is_condition_failed<R>(e: &SdkError<UpdateItemError, R>) -> bool {
    matches!(
        e.as_service_error(),
        Some(UpdateItemError::ConditionalCheckFailedException(_))
    )
}
