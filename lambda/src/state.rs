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
//! A message is applied in **one** `TransactWriteItems`, built from what was read just before:
//!
//! 1. read, strongly consistent: the device item (its window version `wver` and watermark), the
//!    windows the message's deltas fold into (`BatchGetItem`; for a session delta, a range
//!    query for every stored session it overlaps), and for an alert its rule's state;
//! 2. fold each delta into those windows with serve's own code
//!    ([`osprey_cloud::window::table::fold`], the same function the SQLite writer runs), so
//!    both deployments compute the same windows: tumbling, hopping and session, versions and
//!    session merges included;
//! 3. commit: put the `seen` item on condition that it does not exist; update the device on
//!    condition that `wver` is still the one read (and bump it); put every window that
//!    changed and delete every session that was absorbed; put the alert event and, if it is
//!    the rule's newest, the rule's state.
//!
//! The `seen` item is keyed by `(device, epoch, seq)` ([`layout::seen_sk`]). The device item
//! keeps the set of journal epochs seen (`epochs`); the first message of an epoch not in it,
//! on a device that had messages, also puts a `journal_replaced` event item in the same
//! transaction (once per epoch: the set is updated with it, under the `wver` condition). A
//! status changes the device's status only if it is newer by
//! [`osprey_cloud::store::status`]'s order, decided on the snapshot (the `wver` condition
//! makes a stale decision retry). Lifecycle events are ordered by time, on condition.
//!
//! A failed `seen` condition means the message was applied before (duplicate: nothing
//! changes). A failed `wver` condition means another writer changed the device meanwhile
//! (only possible around a reshard, since a device's records stay on one shard), so
//! everything is read again and the transaction retried. One transaction holds at most 100
//! items, so a message may touch at most [`MAX_WINDOWS_PER_MESSAGE`] windows (fewer if it
//! merges sessions); a bigger one is refused with [`StateError::TooLarge`], which the handler
//! dead-letters.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, KeySchemaElement, KeyType,
    KeysAndAttributes, Put, ScalarAttributeType, TransactWriteItem, Update,
};
use aws_sdk_dynamodb::Client;
use osprey_cloud::alerts::sns::SnsOutput;
use osprey_cloud::analytics::Aggregate;
use osprey_cloud::fleet::layout::{
    self, f, get_i64, get_str, get_u64, n, s, window_from_item, window_to_item, Item, SortKeys,
    WindowItem,
};
use osprey_cloud::store::status::{parse_state, state_name};
use osprey_cloud::store::writer::{event_name, severity_name};
use osprey_cloud::store::{DeadLetter, Message, Presence, StatusMark};
use osprey_cloud::window::table::{fold, Stored, WindowStore, WindowUpdate};
use osprey_cloud::window::{WindowDelta, WindowKind, WindowSpec};

/// Bytes of a rejected payload kept in its dead letter (serve's default too).
pub const DEAD_LETTER_PAYLOAD_BYTES: usize =
    osprey_cloud::store::deadletter::DEFAULT_MAX_PAYLOAD_BYTES;

/// How long a dead letter is kept: its `expires_at` is this long after receipt (serve's
/// default retention too).
pub const DEAD_LETTER_RETENTION_S: i64 =
    (osprey_cloud::store::deadletter::DEFAULT_RETENTION_DAYS * 86_400.0) as i64;

/// Most items in one transaction (DynamoDB's limit).
pub const MAX_TRANSACTION_ITEMS: usize = 100;

/// Most windows one message may touch: the transaction also holds the dedup item, the device
/// and the fleet index entry.
pub const MAX_WINDOWS_PER_MESSAGE: usize = MAX_TRANSACTION_ITEMS - 3;

/// Tries of a transaction that lost a race with another writer of the same device.
const CONFLICT_TRIES: usize = 5;

/// Rounds of `BatchGetItem` for keys DynamoDB left unprocessed (throttling).
const BATCH_GET_ROUNDS: usize = 10;

/// Why a state operation failed. Every variant but [`StateError::TooLarge`] is transient
/// from the record's point of view (the record is fine; retrying later may succeed), so the
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
    /// The message needs more items than one transaction holds (permanent: dead-letter it).
    #[error(
        "the message needs {items} items in one DynamoDB transaction, which holds at most \
         {MAX_TRANSACTION_ITEMS}; send fewer series per batch or use fewer hopping windows"
    )]
    TooLarge {
        /// Items it would need.
        items: usize,
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
}

fn describe<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    osprey_cloud::connection::kinesis::describe_error(e)
}

/// A window's identity within a device: sensor, metric, kind, start.
type WindowKey = (String, String, WindowKind, i64);

/// What was read before a transaction.
#[derive(Debug, Default)]
struct Snapshot {
    /// The device item's `wver`, `None` if it has none (new device, or presence only).
    wver: Option<u64>,
    last_seen_ms: Option<i64>,
    last_event_ms: Option<i64>,
    last_seq: Option<u64>,
    /// The journal epochs the device's messages used (`None`: no message yet).
    epochs: Option<HashSet<u64>>,
    /// The newest of them.
    epoch: u64,
    /// The stored status's mark (`None`: no status, or one without a mark).
    status: Option<StatusMark>,
    /// The stored windows the deltas fold into.
    windows: BTreeMap<WindowKey, Stored>,
    /// The alert's rule state: (time_ms, seq), if stored.
    rule: Option<(i64, u64)>,
}

impl Snapshot {
    fn add_window(&mut self, w: WindowItem) {
        let key = (w.sensor, w.metric, w.kind, w.window.start_ms);
        self.windows.insert(key, w.window);
    }
}

/// The snapshot's windows as a [`WindowStore`], for `fold`.
struct Folding<'a>(&'a mut BTreeMap<WindowKey, Stored>);

impl WindowStore for Folding<'_> {
    type Error = std::convert::Infallible;

    fn overlapping(&mut self, _: &str, d: &WindowDelta) -> Result<Vec<Stored>, Self::Error> {
        let keys: Vec<WindowKey> = self
            .0
            .iter()
            .filter(|((sensor, metric, kind, _), w)| {
                *sensor == d.sensor
                    && *metric == d.metric
                    && *kind == d.kind
                    && if d.kind == WindowKind::Session {
                        w.start_ms < d.end_ms && w.end_ms > d.start_ms
                    } else {
                        w.start_ms == d.start_ms
                    }
            })
            .map(|(k, _)| k.clone())
            .collect();
        Ok(keys.iter().filter_map(|k| self.0.remove(k)).collect())
    }

    fn put(&mut self, u: &WindowUpdate) -> Result<(), Self::Error> {
        // `overlapping` already removed what the update replaces.
        let key = (
            u.sensor.clone(),
            u.metric.clone(),
            u.kind,
            u.window.start_ms,
        );
        self.0.insert(key, u.window.clone());
        Ok(())
    }
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
        }
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

    /// Applies `message` once: dedup, windows, alert, device, in one transaction.
    pub async fn apply(&self, message: &Message) -> Result<Applied, StateError> {
        for _ in 0..CONFLICT_TRIES {
            let snapshot = self.read(message).await?;
            let items = self.plan(message, snapshot)?;
            if let Some(applied) = self.transact(items).await? {
                return Ok(applied);
            }
        }
        Err(StateError::Contention {
            device: message.device.clone(),
        })
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
        Ok(output.item)
    }

    /// Everything the transaction of `m` depends on.
    async fn read(&self, m: &Message) -> Result<Snapshot, StateError> {
        let pk = layout::device_pk(&m.device);
        let mut snapshot = Snapshot::default();
        if let Some(item) = self.get(pk.clone(), layout::DEVICE_SK.to_owned()).await? {
            snapshot.wver = get_u64(&item, "wver");
            snapshot.last_seen_ms = get_i64(&item, "last_seen_ms");
            snapshot.last_event_ms = get_i64(&item, "last_event_ms");
            snapshot.last_seq = get_u64(&item, "last_seq");
            snapshot.epochs = known_epochs(&item);
            snapshot.epoch = get_u64(&item, "epoch").unwrap_or(0);
            snapshot.status = status_mark(&item);
        }
        let mut keys = Vec::new();
        let mut asked = HashSet::new();
        for d in &m.windows {
            if d.kind == WindowKind::Session {
                for item in self.sessions(&pk, d).await? {
                    snapshot.add_window(window_from_item(&item)?);
                }
            } else {
                let sk = layout::window_sk(&d.sensor, &d.metric, d.kind, d.start_ms);
                if asked.insert(sk.clone()) {
                    keys.push(sk);
                }
            }
        }
        for item in self.batch_get(&pk, keys).await? {
            snapshot.add_window(window_from_item(&item)?);
        }
        if let Some(alert) = &m.alert {
            if let Some(item) = self.get(pk, layout::rule_sk(&alert.rule)).await? {
                snapshot.rule = get_i64(&item, "time_ms").zip(get_u64(&item, "seq"));
            }
        }
        Ok(snapshot)
    }

    /// The items of partition `pk` with sort keys `keys`, strongly consistent.
    async fn batch_get(&self, pk: &str, keys: Vec<String>) -> Result<Vec<Item>, StateError> {
        let mut found = Vec::new();
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
        Ok(found)
    }

    /// The transaction's items: fold the deltas into the snapshot with serve's code, then
    /// write what changed.
    fn plan(&self, m: &Message, snapshot: Snapshot) -> Result<Vec<TransactWriteItem>, StateError> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| {
            self.request_error("TransactWriteItems", &self.table, e.to_string())
        };
        let pk = layout::device_pk(&m.device);
        let before = snapshot.windows.clone();
        let mut after = snapshot.windows;
        let mut store = Folding(&mut after);
        let mut series = HashSet::new();
        for d in &m.windows {
            if d.kind == WindowKind::Tumbling {
                series.insert(layout::series_member(&d.sensor, &d.metric));
            }
            match fold(&mut store, &m.device, d.clone(), snapshot.last_event_ms) {
                Ok(_) => {}
                Err(never) => match never {},
            }
        }

        let mut items = vec![TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .item("pk", s(layout::seen_pk(&m.device)))
                    .item("sk", s(layout::seen_sk(m.epoch, m.seq)))
                    .item("received_ms", n(m.received_ms))
                    .condition_expression("attribute_not_exists(pk)")
                    .build()
                    .map_err(build)?,
            )
            .build()];

        let max = |a: Option<i64>, b: i64| a.map_or(b, |a| a.max(b));
        let mut set = vec![
            "wver = :next",
            "last_seen_ms = :seen",
            "last_seq = :lseq",
            "first_seen_ms = if_not_exists(first_seen_ms, :recv)",
        ];
        let mut add = vec!["readings :n", "messages :one"];
        let mut device = Update::builder()
            .table_name(&self.table)
            .key("pk", s(pk.clone()))
            .key("sk", s(layout::DEVICE_SK))
            .expression_attribute_values(":next", n(snapshot.wver.unwrap_or(0) + 1))
            .expression_attribute_values(":seen", n(max(snapshot.last_seen_ms, m.received_ms)))
            .expression_attribute_values(
                ":lseq",
                n(snapshot.last_seq.map_or(m.seq, |s| s.max(m.seq))),
            )
            .expression_attribute_values(":recv", n(m.received_ms))
            .expression_attribute_values(":n", n(m.readings))
            .expression_attribute_values(":one", n(1));
        if let Some(event) = m.event_ms {
            set.push("last_event_ms = :event");
            device =
                device.expression_attribute_values(":event", n(max(snapshot.last_event_ms, event)));
        }
        if let Some(report) = &m.status {
            let mark = StatusMark::of_message(m.epoch, m.seq, report);
            if mark.supersedes(snapshot.status.as_ref()) {
                set.push(
                    "#status = :status, status_ms = :recv, status_epoch = :sepoch, \
                     status_seq = :sseq, status_will_seq = :swill, status_time_ms = :stime",
                );
                device = device
                    .expression_attribute_names("#status", "status")
                    .expression_attribute_values(":status", s(state_name(report.state)))
                    .expression_attribute_values(":sepoch", n(m.epoch))
                    .expression_attribute_values(":sseq", n(m.seq))
                    .expression_attribute_values(":swill", n(report.will_seq))
                    .expression_attribute_values(":stime", n(report.time_ms));
            }
        }
        let mut replaced = None;
        if !snapshot
            .epochs
            .as_ref()
            .is_some_and(|known| known.contains(&m.epoch))
        {
            // A new epoch for this device. The known ones are added again (a set union), so
            // an item from before epochs existed gets its implied epoch 0 written down.
            let mut epochs = snapshot.epochs.clone().unwrap_or_default();
            epochs.insert(m.epoch);
            add.push("epochs :epochs");
            set.push("epoch = :epoch");
            device = device
                .expression_attribute_values(
                    ":epochs",
                    AttributeValue::Ns(epochs.iter().map(u64::to_string).collect()),
                )
                .expression_attribute_values(":epoch", n(m.epoch));
            let had_messages = snapshot.epochs.is_some();
            if had_messages {
                replaced = Some(snapshot.epoch);
            }
        }
        if !series.is_empty() {
            add.push("series :series");
            device = device.expression_attribute_values(
                ":series",
                AttributeValue::Ss(series.into_iter().collect()),
            );
        }
        device = match snapshot.wver {
            Some(v) => device
                .condition_expression("wver = :wver")
                .expression_attribute_values(":wver", n(v)),
            None => device.condition_expression("attribute_not_exists(wver)"),
        };
        let expression = format!("SET {} ADD {}", set.join(", "), add.join(", "));
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
        if snapshot.wver.is_none() {
            items.push(
                TransactWriteItem::builder()
                    .put(self.fleet_entry(&m.device).map_err(build)?)
                    .build(),
            );
        }
        if let Some(old_epoch) = replaced {
            let event = Put::builder()
                .table_name(&self.table)
                .item("pk", s(pk.clone()))
                .item("sk", s(layout::event_sk(layout::JOURNAL_REPLACED, m.epoch)))
                .item("kind", s(layout::JOURNAL_REPLACED))
                .item("time_ms", n(m.received_ms))
                .item("old_epoch", n(old_epoch))
                .item("new_epoch", n(m.epoch))
                .build()
                .map_err(build)?;
            items.push(TransactWriteItem::builder().put(event).build());
        }

        for (key, window) in &after {
            if before.get(key) == Some(window) {
                continue;
            }
            let (sensor, metric, kind, _) = key.clone();
            let w = WindowItem {
                sensor,
                metric,
                kind,
                window: window.clone(),
            };
            let put = Put::builder()
                .table_name(&self.table)
                .set_item(Some(window_to_item(&m.device, &w)))
                .build()
                .map_err(build)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        for (sensor, metric, kind, start) in before.keys().filter(|k| !after.contains_key(*k)) {
            let delete = Delete::builder()
                .table_name(&self.table)
                .key("pk", s(pk.clone()))
                .key("sk", s(layout::window_sk(sensor, metric, *kind, *start)))
                .build()
                .map_err(build)?;
            items.push(TransactWriteItem::builder().delete(delete).build());
        }

        if let Some(a) = &m.alert {
            let event = event_name(a.event);
            let alert = Put::builder()
                .table_name(&self.table)
                .item("pk", s(pk.clone()))
                .item("sk", s(layout::alert_sk(m.epoch, m.seq)))
                .item("seq", n(m.seq))
                .item("epoch", n(m.epoch))
                .item("rule", s(a.rule.clone()))
                .item("sensor", s(a.sensor.clone()))
                .item("metric", s(a.metric.clone()))
                .item("event", s(event))
                .item("severity", s(severity_name(a.severity)))
                .item("value", f(a.value))
                .item("threshold", f(a.threshold))
                .item("time_ms", n(a.time_ms))
                .item("notified", AttributeValue::Bool(false))
                .build()
                .map_err(build)?;
            items.push(TransactWriteItem::builder().put(alert).build());
            // The rule's newest event by event time, then seq, whatever order they arrive in.
            if snapshot
                .rule
                .is_none_or(|stored| (a.time_ms, m.seq) > stored)
            {
                let rule = Put::builder()
                    .table_name(&self.table)
                    .item("pk", s(pk))
                    .item("sk", s(layout::rule_sk(&a.rule)))
                    .item("rule", s(a.rule.clone()))
                    .item("sensor", s(a.sensor.clone()))
                    .item("metric", s(a.metric.clone()))
                    .item("event", s(event))
                    .item("severity", s(severity_name(a.severity)))
                    .item("time_ms", n(a.time_ms))
                    .item("seq", n(m.seq))
                    .build()
                    .map_err(build)?;
                items.push(TransactWriteItem::builder().put(rule).build());
            }
        }
        if items.len() > MAX_TRANSACTION_ITEMS {
            return Err(StateError::TooLarge { items: items.len() });
        }
        Ok(items)
    }

    fn fleet_entry(&self, device: &str) -> Result<Put, aws_sdk_dynamodb::error::BuildError> {
        Put::builder()
            .table_name(&self.table)
            .set_item(Some(layout::fleet_item(device)))
            .build()
    }

    /// One transaction attempt: `Some` if it committed or was a duplicate, `None` if the
    /// device changed since it was read.
    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<Option<Applied>, StateError> {
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
                    let code = |r: &aws_sdk_dynamodb::types::CancellationReason, c: &str| {
                        r.code() == Some(c)
                    };
                    let reasons = cancel.cancellation_reasons();
                    if reasons
                        .first()
                        .is_some_and(|r| code(r, "ConditionalCheckFailed"))
                    {
                        return Ok(Some(Applied::Duplicate));
                    }
                    if reasons.iter().any(|r| {
                        code(r, "ConditionalCheckFailed") || code(r, "TransactionConflict")
                    }) {
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
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(layout::fleet_item(&p.device)))
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
                "SET #status = :status, status_ms = :recv, status_time_ms = :t \
                 REMOVE status_epoch, status_seq, status_will_seq ADD wver :one",
            )
            .condition_expression("attribute_not_exists(status_time_ms) OR status_time_ms <= :t")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":status", s(state_name(p.state)))
            .expression_attribute_values(":t", n(p.time_ms))
            .expression_attribute_values(":recv", n(p.received_ms))
            .expression_attribute_values(":one", n(1))
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
