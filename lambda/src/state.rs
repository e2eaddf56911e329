//! The Lambda's state in DynamoDB: dedup set, windows, alerts, devices, dead letters.
//!
//! Two tables, both keyed by `pk` (partition, string) and `sk` (sort, string). The state
//! table's layout (devices, the fleet index, windows, alerts, rule states, the dedup set) is
//! [`osprey_cloud::fleet::layout`], shared with its reader, `osprey fleet --dynamodb-table`.
//! The dead-letter table holds `dead#<stream>` / `<shard>#<sequence number>` items: `reason`,
//! `payload` (bytes: the first [`DEAD_LETTER_PAYLOAD_BYTES`], as serve keeps), `size` (as
//! received), `received_ms`, and `expires_at` (seconds since the epoch,
//! [`DEAD_LETTER_RETENTION_S`] after receipt) for the table's time to live: DynamoDB deletes
//! expired items at no write cost, which bounds the table as serve's retention bounds its
//! SQLite dead letters (DynamoDB has no cheap "oldest out" by count, so the bound is time).
//!
//! A device's messages of one invocation are applied together by [`DynamoState::apply_device`]
//! (see the `apply` submodule for the order of writes that makes a retry safe without a
//! transaction): the device item holds the dedup set as seq ranges per journal epoch
//! ([`crate::dedup::SeenSet`]), each window is written once per invocation, and every item
//! but the dead letters' carries `expires_at` for the table's time to live when one is set
//! ([`DynamoState::with_ttl_days`]). What the requests cost is counted in
//! [`crate::usage::Usage`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, KeysAndAttributes,
    ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use osprey_cloud::alerts::sns::SnsOutput;
use osprey_cloud::analytics::signals::SignalsConfig;
use osprey_cloud::analytics::Aggregate;
use osprey_cloud::fleet::layout::{
    self, get_i64, get_str, get_u64, n, s, window_from_item, Item, SortKeys, WindowItem,
};
use osprey_cloud::store::status::{parse_state, state_name};
use osprey_cloud::store::{DeadLetter, Presence, StatusMark};
use osprey_cloud::window::{WindowDelta, WindowKind, WindowSpec};

use crate::usage::{item_size, Usage};

mod apply;
mod signals;

/// Bytes of a rejected payload kept in its dead letter (serve's default too).
pub const DEAD_LETTER_PAYLOAD_BYTES: usize =
    osprey_cloud::store::deadletter::DEFAULT_MAX_PAYLOAD_BYTES;

/// How long a dead letter is kept: its `expires_at` is this long after receipt (serve's
/// default retention too).
pub const DEAD_LETTER_RETENTION_S: i64 =
    (osprey_cloud::store::deadletter::DEFAULT_RETENTION_DAYS * 86_400.0) as i64;

/// Default time to live of the state items, in days: long enough for the dashboard's 30-day
/// range.
pub const DEFAULT_TTL_DAYS: u32 = 35;

/// Default seconds between two computations of a device's maintenance signals.
pub const DEFAULT_SIGNALS_EVERY_S: u32 = 600;

/// Rounds of `BatchGetItem` for keys DynamoDB left unprocessed (throttling).
const BATCH_GET_ROUNDS: usize = 10;

/// Why a state operation failed. Every variant is transient from the record's point of view
/// (the record is fine; retrying later, or after repairing the item, may succeed), so the
/// handler reports the record as a batch item failure.
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
    /// The device kept changing under the transaction.
    #[error("device {device} kept changing under concurrent writers; retry later")]
    Contention {
        /// The device.
        device: String,
    },
    /// A stored window could not be read back.
    #[error("stored window {key} is corrupt: {message}")]
    CorruptWindow {
        /// The item's sort key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// An alert output refused or could not be reached (the record is retried; the alert
    /// stays unnotified until an output takes it).
    #[error("alert output: {0}")]
    AlertOutput(String),
    /// A device item's dedup set could not be read back.
    #[error("device item {key} is corrupt: {message}")]
    CorruptDevice {
        /// The item's partition key.
        key: String,
        /// What is wrong.
        message: String,
    },
}

impl From<layout::BadItem> for StateError {
    fn from(e: layout::BadItem) -> StateError {
        StateError::CorruptWindow {
            key: e.key,
            message: e.reason,
        }
    }
}

/// What applying a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The message was new; its effects are stored.
    Applied,
    /// It had been applied before; nothing changed.
    Duplicate,
}

/// The two tables and the windows to compute; cheap to clone.
#[derive(Debug, Clone)]
pub struct DynamoState {
    client: Client,
    table: String,
    dead_letters: String,
    windows: WindowSpec,
    alerts: Option<SnsOutput>,
    /// Time to live of the state items, in seconds (`None`: kept for ever).
    ttl_s: Option<i64>,
    /// What the requests cost, shared by the clones.
    usage: Arc<Usage>,
    /// The signals computed, and how often per device (ms); `None`: none.
    signals: Option<(Arc<SignalsConfig>, i64)>,
    /// Device commits still to fail (a test's crash), shared by the clones.
    failing_commits: Arc<std::sync::atomic::AtomicUsize>,
}

fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    osprey_cloud::connection::kinesis::describe_error(e)
}

impl DynamoState {
    /// State in `table`, dead letters in `dead_letters`; one-minute tumbling windows only
    /// (see [`DynamoState::with_windows`]).
    pub fn new(
        client: Client,
        table: impl Into<String>,
        dead_letters: impl Into<String>,
    ) -> DynamoState {
        DynamoState {
            client,
            table: table.into(),
            dead_letters: dead_letters.into(),
            windows: WindowSpec::default(),
            alerts: None,
            ttl_s: Some(i64::from(DEFAULT_TTL_DAYS) * 86_400),
            usage: Arc::default(),
            signals: Some((
                Arc::new(SignalsConfig::default()),
                i64::from(DEFAULT_SIGNALS_EVERY_S) * 1000,
            )),
            failing_commits: Arc::default(),
        }
    }

    /// The same state computing each device's maintenance signals under `cfg` at most every
    /// `every_s` seconds (0: never), after a batch of its messages is applied.
    pub fn with_signals(self, cfg: SignalsConfig, every_s: u32) -> DynamoState {
        DynamoState {
            signals: (every_s > 0).then(|| (Arc::new(cfg), i64::from(every_s) * 1000)),
            ..self
        }
    }

    /// Makes the next `n` device writes fail as if the function died just before them, after
    /// the windows were written: for tests of what a retry does with such a state.
    #[doc(hidden)]
    pub fn fail_next_commits(&self, n: usize) {
        self.failing_commits
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The same state with items expiring `days` after their time (0: never). The table's
    /// time to live must be on, on attribute `expires_at`, for DynamoDB to delete them.
    pub fn with_ttl_days(self, days: u32) -> DynamoState {
        DynamoState {
            ttl_s: (days > 0).then(|| i64::from(days) * 86_400),
            ..self
        }
    }

    /// What the requests made so far cost ([`Usage`]).
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    /// The same state publishing every applied alert event to `output` ([`crate::alerts`]).
    pub fn with_alerts(self, output: SnsOutput) -> DynamoState {
        DynamoState {
            alerts: Some(output),
            ..self
        }
    }

    /// The alert output, if one is configured.
    pub fn alerts(&self) -> Option<&SnsOutput> {
        self.alerts.as_ref()
    }

    /// Whether the alert event of `device`'s message `(epoch, seq)` was notified: `None` if
    /// there is no such alert item.
    pub async fn alert_notified(
        &self,
        device: &str,
        epoch: u64,
        seq: u64,
    ) -> Result<Option<bool>, StateError> {
        let item = self
            .get(layout::device_pk(device), layout::alert_sk(epoch, seq))
            .await?;
        Ok(item.map(|i| {
            i.get("notified")
                .and_then(|v| v.as_bool().ok())
                .copied()
                .unwrap_or(false)
        }))
    }

    /// Marks the alert event of `device`'s message `(epoch, seq)` as notified.
    pub async fn mark_notified(
        &self,
        device: &str,
        epoch: u64,
        seq: u64,
    ) -> Result<(), StateError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(layout::device_pk(device)))
            .key("sk", s(layout::alert_sk(epoch, seq)))
            .update_expression("SET notified = :t")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .send()
            .await
            .map_err(|e| self.request_error("UpdateItem", &self.table, describe(&e)))?;
        Ok(())
    }

    /// The same state computing the windows of `spec` (as `osprey serve --hop …
    /// --session-gap-s …` does).
    pub fn with_windows(self, spec: WindowSpec) -> DynamoState {
        DynamoState {
            windows: spec,
            ..self
        }
    }

    /// The windows computed.
    pub fn windows(&self) -> &WindowSpec {
        &self.windows
    }

    fn request_error(&self, operation: &'static str, table: &str, message: String) -> StateError {
        StateError::Request {
            operation,
            table: table.to_owned(),
            message,
        }
    }

    async fn get(&self, pk: String, sk: String) -> Result<Option<Item>, StateError> {
        let output = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| self.request_error("GetItem", &self.table, describe(&e)))?;
        self.usage
            .read_items([output.item.as_ref().map_or(0, item_size)], true);
        Ok(output.item)
    }

    /// The items of partition `pk` with sort keys `keys`, strongly consistent.
    async fn batch_get(&self, pk: &str, keys: Vec<String>) -> Result<Vec<Item>, StateError> {
        let mut found: Vec<Item> = Vec::new();
        // A key that found nothing still costs a unit.
        let missing = keys.len();
        for chunk in keys.chunks(100) {
            let mut request = KeysAndAttributes::builder().consistent_read(true);
            for sk in chunk {
                request = request.keys(HashMap::from([
                    ("pk".to_owned(), s(pk)),
                    ("sk".to_owned(), s(sk.clone())),
                ]));
            }
            let request = request
                .build()
                .map_err(|e| self.request_error("BatchGetItem", &self.table, e.to_string()))?;
            let mut pending = Some(HashMap::from([(self.table.clone(), request)]));
            for _ in 0..BATCH_GET_ROUNDS {
                let Some(items) = pending.take().filter(|p| !p.is_empty()) else {
                    break;
                };
                let out = self
                    .client
                    .batch_get_item()
                    .set_request_items(Some(items))
                    .send()
                    .await
                    .map_err(|e| self.request_error("BatchGetItem", &self.table, describe(&e)))?;
                if let Some(mut responses) = out.responses {
                    found.extend(responses.remove(&self.table).unwrap_or_default());
                }
                pending = out.unprocessed_keys;
            }
            if pending.is_some_and(|p| !p.is_empty()) {
                return Err(self.request_error(
                    "BatchGetItem",
                    &self.table,
                    "keys left unprocessed after repeated tries (throttled)".to_owned(),
                ));
            }
        }
        let misses = missing.saturating_sub(found.len());
        self.usage.read_items(
            found
                .iter()
                .map(item_size)
                .chain(std::iter::repeat_n(0, misses)),
            true,
        );
        Ok(found)
    }

    /// The stored sessions of `d`'s series that overlap it. Sessions of a series never
    /// overlap each other, so in start order their ends ascend too: walk back from the last
    /// one starting before `d` ends, and stop at the first that ends at or before `d` starts.
    async fn sessions(&self, pk: &str, d: &WindowDelta) -> Result<Vec<Item>, StateError> {
        let prefix = layout::window_prefix(&d.sensor, &d.metric, WindowKind::Session);
        let keys = SortKeys::Between(
            format!("{prefix}{}", layout::encode_time(i64::MIN)),
            format!(
                "{prefix}{}",
                layout::encode_time(d.end_ms.saturating_sub(1))
            ),
        );
        let mut found = Vec::new();
        layout::query_each(&self.client, &self.table, pk, &keys, false, |item| {
            let overlaps = get_i64(item, "end_ms").is_none_or(|end| end > d.start_ms);
            if overlaps {
                found.push(item.clone());
            }
            overlaps
        })
        .await
        .map_err(|e| self.request_error("Query", &self.table, describe(&e)))?;
        self.usage
            .read_query(found.iter().map(item_size).sum(), true);
        Ok(found)
    }

    /// Keeps a payload that cannot be applied; `id` (shard and sequence number) makes a
    /// retried record overwrite its own dead letter instead of adding another.
    pub async fn dead_letter(
        &self,
        stream: &str,
        id: &str,
        d: &DeadLetter,
    ) -> Result<(), StateError> {
        let kept = &d.payload[..d.payload.len().min(DEAD_LETTER_PAYLOAD_BYTES)];
        let expires_at = d.received_ms.div_euclid(1000) + DEAD_LETTER_RETENTION_S;
        self.client
            .put_item()
            .table_name(&self.dead_letters)
            .item("pk", s(format!("dead#{stream}")))
            .item("sk", s(id))
            .item("source", s(d.source.clone()))
            .item("reason", s(d.reason.clone()))
            .item("size", n(d.payload.len()))
            .item("received_ms", n(d.received_ms))
            .item("expires_at", n(expires_at))
            .item("payload", AttributeValue::B(Blob::new(kept.to_vec())))
            .send()
            .await
            .map_err(|e| self.request_error("PutItem", &self.dead_letters, describe(&e)))?;
        Ok(())
    }

    /// Sets a device's presence unless a newer one is stored (by time: lifecycle events have
    /// no seq), and lists the device in the fleet index, for a device known only from
    /// lifecycle events. Bumps `wver`, so a message transaction that decided its status on an
    /// older read retries.
    pub async fn presence(&self, p: &Presence) -> Result<(), StateError> {
        let mut entry = layout::fleet_item(&p.device);
        self.expire(&mut entry, p.received_ms);
        // Until when the device is listed (and its item kept): a far future without a TTL.
        let until = get_i64(&entry, "expires_at").unwrap_or(i64::MAX);
        self.usage.write(0, item_size(&entry));
        // The device item's update: billed at about its usual size.
        self.usage.write(0, 512);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(entry))
            .send()
            .await
            .map_err(|e| self.request_error("PutItem", &self.table, describe(&e)))?;
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(layout::device_pk(&p.device)))
            .key("sk", s(layout::DEVICE_SK))
            .update_expression(
                "SET #status = :status, status_ms = :recv, status_time_ms = :t, \
                 expires_at = :until, listed_until = :until \
                 REMOVE status_epoch, status_seq, status_will_seq ADD wver :one",
            )
            .condition_expression("attribute_not_exists(status_time_ms) OR status_time_ms <= :t")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(state_name(p.state)))
            .expression_attribute_values(":t", n(p.time_ms))
            .expression_attribute_values(":recv", n(p.received_ms))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":until", n(until))
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
        kind: WindowKind,
        start_ms: i64,
    ) -> Result<Option<Aggregate>, StateError> {
        let sk = layout::window_sk(sensor, metric, kind, start_ms);
        match self.get(layout::device_pk(device), sk).await? {
            Some(item) => Ok(Some(window_from_item(&item)?.window.agg)),
            None => Ok(None),
        }
    }

    /// Every item of a device's partition under `prefix`, in key order.
    async fn device_items(&self, device: &str, prefix: &str) -> Result<Vec<Item>, StateError> {
        let mut items = Vec::new();
        let keys = SortKeys::Prefix(prefix.to_owned());
        let pk = layout::device_pk(device);
        layout::query_each(&self.client, &self.table, &pk, &keys, true, |item| {
            items.push(item.clone());
            true
        })
        .await
        .map_err(|e| self.request_error("Query", &self.table, describe(&e)))?;
        Ok(items)
    }

    /// A device's events as (kind, time_ms, old epoch, new epoch), in key order.
    pub async fn device_events(
        &self,
        device: &str,
    ) -> Result<Vec<(String, i64, u64, u64)>, StateError> {
        let items = self.device_items(device, layout::EVENT_PREFIX).await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                Some((
                    get_str(item, "kind")?.to_owned(),
                    get_i64(item, "time_ms")?,
                    get_u64(item, "old_epoch")?,
                    get_u64(item, "new_epoch")?,
                ))
            })
            .collect())
    }

    /// Every stored window of one device, in key order (series, kind, start).
    pub async fn device_windows(&self, device: &str) -> Result<Vec<WindowItem>, StateError> {
        let items = self.device_items(device, "w#").await?;
        Ok(items
            .iter()
            .map(window_from_item)
            .collect::<Result<_, _>>()?)
    }

    /// A device's rule states as (rule, event), by rule.
    pub async fn rule_states(&self, device: &str) -> Result<Vec<(String, String)>, StateError> {
        let items = self.device_items(device, layout::RULE_PREFIX).await?;
        Ok(items
            .iter()
            .filter_map(|i| {
                Some((
                    get_str(i, "rule")?.to_owned(),
                    get_str(i, "event")?.to_owned(),
                ))
            })
            .collect())
    }

    /// A device's item as strings (`readings`, `messages`, `status`, …), if any.
    pub async fn device(
        &self,
        device: &str,
    ) -> Result<Option<HashMap<String, String>>, StateError> {
        let item = self
            .get(layout::device_pk(device), layout::DEVICE_SK.to_owned())
            .await?;
        Ok(item.as_ref().map(|item| {
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

/// The journal epochs a device item says its messages used: its `epochs` set; epoch 0 alone
/// for an item written before epochs existed (it has `messages` but no set); `None` for a
/// device without messages (new, or known from lifecycle events only).
fn known_epochs(item: &Item) -> Option<HashSet<u64>> {
    if let Some(AttributeValue::Ns(set)) = item.get("epochs") {
        return Some(set.iter().filter_map(|v| v.parse().ok()).collect());
    }
    item.contains_key("messages").then(|| HashSet::from([0]))
}

/// The stored status's mark; `None` without a status or a time (stored before status order).
fn status_mark(item: &Item) -> Option<StatusMark> {
    let state = parse_state(get_str(item, "status")?)?;
    let time_ms = get_i64(item, "status_time_ms")?;
    let position = get_u64(item, "status_epoch").zip(get_u64(item, "status_seq"));
    Some(StatusMark {
        state,
        position,
        will_seq: get_u64(item, "status_will_seq").unwrap_or(0),
        time_ms,
    })
}
