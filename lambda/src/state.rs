//! The Lambda's state in DynamoDB: dedup set, windows, devices, dead letters.
//!
//! Two tables, both keyed by `pk` (partition, string) and `sk` (sort, string):
//!
//! | table | pk | sk | item |
//! |---|---|---|---|
//! | state | `seen#<device>` | `<seq>` | a message applied (the dedup set) |
//! | state | `dev#<device>` | `device` | `readings`, `messages`, `last_seen_ms`, `status`, `status_ms` |
//! | state | `dev#<device>` | `w#<sensor>#<metric>#<kind>#<start_ms>` | a window: `count`, `sum`, `min`, `max`, `mean`, `m2`, `m3`, `m4`, `sketch` (bytes), `unit`, `end_ms`, `version` |
//! | dead letters | `dead#<stream>` | `<shard>#<sequence number>` | `reason`, `payload` (bytes), `size`, `received_ms` |
//!
//! A message is applied in **one** `TransactWriteItems`: put its `seen` item on condition that
//! it does not exist, put each merged window on condition that its `version` is the one read,
//! update the device. A failed `seen` condition means the message was applied before
//! (duplicate: nothing changes); a failed window condition means another writer merged into
//! that window meanwhile (only possible around a reshard), so the windows are read again and
//! the transaction retried. Windows merge with the same aggregate code as the SQLite store
//! ([`osprey_cloud::analytics::Aggregate`]), so both deployments compute the same numbers.
//! One transaction holds at most 100 items, so a message may touch at most
//! [`MAX_WINDOWS_PER_MESSAGE`] windows; a bigger one is dead-lettered with that reason.

use std::collections::HashMap;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, Put,
    ScalarAttributeType, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use osprey_cloud::analytics::{Aggregate, Moments, Sketch};
use osprey_cloud::store::{DeadLetter, Message, Presence};
use osprey_cloud::window::WindowDelta;
use osprey_protocol::StatusState;

/// Most windows one message may touch (a transaction holds 100 items: the dedup item, the
/// device and the windows).
pub const MAX_WINDOWS_PER_MESSAGE: usize = 98;

/// Tries of a transaction that lost a race on a window's version.
const CONFLICT_TRIES: usize = 5;

/// Why a state operation failed. Every variant is transient from the record's point of view
/// (the record is fine; retrying later may succeed), so the handler reports the record as a
/// batch item failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// A DynamoDB request failed.
    #[error(
        "DynamoDB {operation} on table {table:?} failed: {message}; check that the table exists \
         (keys pk and sk, strings) and the function's role may use it"
    )]
    Request {
        /// The API call.
        operation: &'static str,
        /// Table name.
        table: String,
        /// The service's error code and message, or the transport failure.
        message: String,
    },
    /// Windows kept changing under the transaction.
    #[error("windows of device {device} kept changing under concurrent writers; retry later")]
    Contention {
        /// The device.
        device: String,
    },
    /// A stored window could not be read back (its sketch bytes are corrupt).
    #[error("stored window {key} is corrupt: {message}")]
    CorruptWindow {
        /// The item's sort key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// What applying a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The message was new; its effects are stored.
    Applied,
    /// It had been applied before; nothing changed.
    Duplicate,
}

/// The two tables; cheap to clone.
#[derive(Debug, Clone)]
pub struct DynamoState {
    client: Client,
    table: String,
    dead_letters: String,
}

fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    osprey_cloud::connection::kinesis::describe_error(e)
}

fn window_key(w: &WindowDelta) -> String {
    format!(
        "w#{}#{}#{}#{}",
        w.sensor,
        w.metric,
        w.kind.as_str(),
        w.start_ms
    )
}

impl DynamoState {
    /// State in `table`, dead letters in `dead_letters`.
    pub fn new(
        client: Client,
        table: impl Into<String>,
        dead_letters: impl Into<String>,
    ) -> DynamoState {
        DynamoState {
            client,
            table: table.into(),
            dead_letters: dead_letters.into(),
        }
    }

    fn request_error(&self, operation: &'static str, table: &str, message: String) -> StateError {
        StateError::Request {
            operation,
            table: table.to_owned(),
            message,
        }
    }

    /// Applies `message` once: dedup, windows, device, in one transaction.
    pub async fn apply(&self, message: &Message) -> Result<Applied, StateError> {
        for _ in 0..CONFLICT_TRIES {
            let stored = self.read_windows(&message.device, &message.windows).await?;
            match self.transact(message, &stored).await? {
                Some(applied) => return Ok(applied),
                None => continue,
            }
        }
        Err(StateError::Contention {
            device: message.device.clone(),
        })
    }

    /// The stored aggregate and version of each window `windows` touches.
    async fn read_windows(
        &self,
        device: &str,
        windows: &[WindowDelta],
    ) -> Result<HashMap<String, (Aggregate, u64)>, StateError> {
        let mut stored = HashMap::new();
        for w in windows {
            let key = window_key(w);
            if stored.contains_key(&key) {
                continue;
            }
            if let Some(found) = self.window_item(device, &key).await? {
                stored.insert(key, found);
            }
        }
        Ok(stored)
    }

    async fn window_item(
        &self,
        device: &str,
        key: &str,
    ) -> Result<Option<(Aggregate, u64)>, StateError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("dev#{device}")))
            .key("sk", s(key))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.request_error("GetItem", &self.table, describe(&e)))?;
        let Some(item) = output.item() else {
            return Ok(None);
        };
        let num = |name: &str| -> f64 {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0)
        };
        let count = item
            .get("count")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let version = item
            .get("version")
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let sketch = match item.get("sketch").and_then(|v| v.as_b().ok()) {
            Some(bytes) => {
                Sketch::from_bytes(bytes.as_ref()).map_err(|e| StateError::CorruptWindow {
                    key: key.to_owned(),
                    message: e.to_string(),
                })?
            }
            None => Sketch::new(),
        };
        let moments = Moments {
            count,
            sum: num("sum"),
            min: num("min"),
            max: num("max"),
            mean: num("mean"),
            m2: num("m2"),
            m3: num("m3"),
            m4: num("m4"),
        };
        Ok(Some((Aggregate { moments, sketch }, version)))
    }

    /// One transaction attempt: `Some` if it committed or was a duplicate, `None` if a window
    /// changed since it was read.
    async fn transact(
        &self,
        m: &Message,
        stored: &HashMap<String, (Aggregate, u64)>,
    ) -> Result<Option<Applied>, StateError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| {
            self.request_error("TransactWriteItems", &self.table, e.to_string())
        };
        let mut items = Vec::with_capacity(m.windows.len() + 2);
        items.push(
            TransactWriteItem::builder()
                .put(
                    Put::builder()
                        .table_name(&self.table)
                        .item("pk", s(format!("seen#{}", m.device)))
                        .item("sk", s(m.seq.to_string()))
                        .item("received_ms", n(m.received_ms))
                        .condition_expression("attribute_not_exists(pk)")
                        .build()
                        .map_err(build)?,
                )
                .build(),
        );
        // Merge this message's deltas into what is stored (several deltas of one message may
        // hit the same window only if the spec makes them; merge them all).
        let mut merged: Vec<(String, &WindowDelta, Aggregate, Option<u64>)> = Vec::new();
        for w in &m.windows {
            let key = window_key(w);
            if let Some(entry) = merged.iter_mut().find(|(k, ..)| *k == key) {
                entry.2.merge(&w.agg);
                continue;
            }
            let (mut agg, version) = match stored.get(&key) {
                Some((agg, version)) => (agg.clone(), Some(*version)),
                None => (Aggregate::new(), None),
            };
            agg.merge(&w.agg);
            merged.push((key, w, agg, version));
        }
        for (key, w, agg, version) in &merged {
            let mo = &agg.moments;
            let mut put = Put::builder()
                .table_name(&self.table)
                .item("pk", s(format!("dev#{}", m.device)))
                .item("sk", s(key.clone()))
                .item("sensor", s(w.sensor.clone()))
                .item("metric", s(w.metric.clone()))
                .item("kind", s(w.kind.as_str()))
                .item("unit", s(w.unit.clone()))
                .item("start_ms", n(w.start_ms))
                .item("end_ms", n(w.end_ms))
                .item("count", n(mo.count))
                .item("sum", n(mo.sum))
                .item("min", n(mo.min))
                .item("max", n(mo.max))
                .item("mean", n(mo.mean))
                .item("m2", n(mo.m2))
                .item("m3", n(mo.m3))
                .item("m4", n(mo.m4))
                .item(
                    "sketch",
                    AttributeValue::B(Blob::new(agg.sketch.to_bytes())),
                )
                .item("version", n(version.map_or(1, |v| v + 1)));
            put = match version {
                Some(v) => put
                    .condition_expression("version = :v")
                    .expression_attribute_values(":v", n(v)),
                None => put.condition_expression("attribute_not_exists(pk)"),
            };
            items.push(
                TransactWriteItem::builder()
                    .put(put.build().map_err(build)?)
                    .build(),
            );
        }
        let mut device = Update::builder()
            .table_name(&self.table)
            .key("pk", s(format!("dev#{}", m.device)))
            .key("sk", s("device"))
            .expression_attribute_values(":n", n(m.readings))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":seen", n(m.received_ms));
        let mut expression = "ADD readings :n, messages :one SET last_seen_ms = :seen".to_owned();
        if let Some(status) = m.status {
            expression.push_str(", #status = :status, status_ms = :seen");
            device = device
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":status", s(status_name(status)));
        }
        items.push(
            TransactWriteItem::builder()
                .update(
                    device
                        .update_expression(expression)
                        .build()
                        .map_err(build)?,
                )
                .build(),
        );
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Some(Applied::Applied)),
            Err(e) => {
                if let Some(TransactWriteItemsError::TransactionCanceledException(cancel)) =
                    e.as_service_error()
                {
                    let failed = |r: &aws_sdk_dynamodb::types::CancellationReason| {
                        r.code() == Some("ConditionalCheckFailed")
                    };
                    let reasons = cancel.cancellation_reasons();
                    if reasons.first().is_some_and(failed) {
                        return Ok(Some(Applied::Duplicate));
                    }
                    if reasons.iter().any(failed) {
                        return Ok(None);
                    }
                }
                Err(self.request_error("TransactWriteItems", &self.table, describe(&e)))
            }
        }
    }

    /// Keeps a payload that cannot be applied; `id` (shard and sequence number) makes a
    /// retried record overwrite its own dead letter instead of adding another.
    pub async fn dead_letter(
        &self,
        stream: &str,
        id: &str,
        d: &DeadLetter,
    ) -> Result<(), StateError> {
        let kept = &d.payload[..d
            .payload
            .len()
            .min(osprey_cloud::store::writer::MAX_DEAD_LETTER_BYTES)];
        self.client
            .put_item()
            .table_name(&self.dead_letters)
            .item("pk", s(format!("dead#{stream}")))
            .item("sk", s(id))
            .item("source", s(d.source.clone()))
            .item("reason", s(d.reason.clone()))
            .item("size", n(d.payload.len()))
            .item("received_ms", n(d.received_ms))
            .item("payload", AttributeValue::B(Blob::new(kept.to_vec())))
            .send()
            .await
            .map_err(|e| self.request_error("PutItem", &self.dead_letters, describe(&e)))?;
        Ok(())
    }

    /// Sets a device's presence unless a newer one is stored.
    pub async fn presence(&self, p: &Presence) -> Result<(), StateError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(format!("dev#{}", p.device)))
            .key("sk", s("device"))
            .update_expression("SET #status = :status, status_ms = :t")
            .condition_expression("attribute_not_exists(status_ms) OR status_ms <= :t")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(status_name(p.state)))
            .expression_attribute_values(":t", n(p.time_ms))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e)
                if matches!(
                    e.as_service_error(),
                    Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(_))
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(self.request_error("UpdateItem", &self.table, describe(&e))),
        }
    }

    /// The stored aggregate of one window, if any.
    pub async fn window(
        &self,
        device: &str,
        sensor: &str,
        metric: &str,
        kind: &str,
        start_ms: i64,
    ) -> Result<Option<Aggregate>, StateError> {
        let key = format!("w#{sensor}#{metric}#{kind}#{start_ms}");
        Ok(self.window_item(device, &key).await?.map(|(agg, _)| agg))
    }

    /// A device's item as strings (`readings`, `messages`, `status`, …), if any.
    pub async fn device(
        &self,
        device: &str,
    ) -> Result<Option<HashMap<String, String>>, StateError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(format!("dev#{device}")))
            .key("sk", s("device"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.request_error("GetItem", &self.table, describe(&e)))?;
        Ok(output.item().map(|item| {
            item.iter()
                .filter_map(|(k, v)| {
                    let text = v.as_s().or_else(|_| v.as_n()).ok()?;
                    Some((k.clone(), text.clone()))
                })
                .collect()
        }))
    }

    /// The dead letters of `stream` as (id, reason).
    pub async fn dead_letters(&self, stream: &str) -> Result<Vec<(String, String)>, StateError> {
        let output = self
            .client
            .query()
            .table_name(&self.dead_letters)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(format!("dead#{stream}")))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.request_error("Query", &self.dead_letters, describe(&e)))?;
        Ok(output
            .items()
            .iter()
            .filter_map(|item| {
                let id = item.get("sk")?.as_s().ok()?.clone();
                let reason = item.get("reason")?.as_s().ok()?.clone();
                Some((id, reason))
            })
            .collect())
    }

    /// Creates a table keyed by `pk`/`sk` (strings), on-demand billing. For first runs and
    /// tests; production tables come from the deployment template.
    pub async fn create_table(client: &Client, table: &str) -> Result<(), StateError> {
        let error = |message: String| StateError::Request {
            operation: "CreateTable",
            table: table.to_owned(),
            message,
        };
        let mut request = client
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest);
        for (name, key) in [("pk", KeyType::Hash), ("sk", KeyType::Range)] {
            request = request
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(name)
                        .attribute_type(ScalarAttributeType::S)
                        .build()
                        .map_err(|e| error(e.to_string()))?,
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(name)
                        .key_type(key)
                        .build()
                        .map_err(|e| error(e.to_string()))?,
                );
        }
        request.send().await.map_err(|e| error(describe(&e)))?;
        Ok(())
    }
}

fn status_name(state: StatusState) -> &'static str {
    match state {
        StatusState::Online => "online",
        StatusState::Offline => "offline",
    }
}
