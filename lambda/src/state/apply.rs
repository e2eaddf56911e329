//! Applying one device's messages of an invocation: one read of the device item, one read of
//! the windows they fold into, one write of each window that changed, one write of the device
//! item. A device's records stay on one shard, in order, so the messages of a device in a batch
//! are folded together and every window is written once however many messages it took.
//!
//! No transaction (a transactional write bills twice): the writes are ordered so that a crash
//! or a failed request between them leaves a state the retry completes without counting
//! anything twice.
//!
//! 1. **Read** the device item, strongly consistent: its `seen` set ([`SeenSet`]: the messages
//!    applied, as seq ranges per journal epoch) says which messages of the batch are new, and
//!    its `wver` is the version the final write is conditioned on.
//! 2. **Fold** each new message's window deltas into the stored windows with serve's own code
//!    ([`osprey_cloud::window::table::fold`]). Each window item carries `pending`: the messages
//!    folded into it that the device's `seen` does not list yet. A delta whose message is in
//!    its window's `pending` was folded by an attempt that did not finish: it is skipped.
//! 3. **Write** the windows (and the alert events, device events, the fleet index entry) with
//!    `BatchWriteItem`; a window's `pending` is what it had, less what `seen` lists, plus the
//!    messages folded now. A rule's state is a conditional put (only a newer event replaces it).
//! 4. **Commit**: put the device item with the new messages added to `seen`, its counters,
//!    status and epochs, on condition that `wver` is still the one read. Until this succeeds
//!    the messages count as new, and a retry finds their deltas in the windows' `pending`. If
//!    the condition fails (another writer: only around a reshard), everything is read again.
//!
//! An alert event written in step 3 is always written with `notified = false`: a message whose
//! device item was not committed was never notified (notification comes after the commit).
//!
//! A device item written before `seen` existed (one `seen#` item per message) gets
//! `legacy_seq`, its `last_seq` then; a message at or below it that `seen` does not list is
//! looked up among the old `seen#` items.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::SeqCst;

use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, PutRequest, WriteRequest};
use osprey_cloud::clock::now_ms;
use osprey_cloud::fleet::layout::{
    self, f, get_i64, get_str, get_u64, n, s, window_from_item, window_to_item, Item, WindowItem,
};
use osprey_cloud::store::status::state_name;
use osprey_cloud::store::writer::{event_name, severity_name};
use osprey_cloud::store::{Message, StatusMark};
use osprey_cloud::window::table::{fold, Stored, WindowStore, WindowUpdate};
use osprey_cloud::window::{WindowDelta, WindowKind};

use super::{describe, known_epochs, status_mark, Applied, DynamoState, StateError};
use crate::dedup::SeenSet;
use crate::usage::item_size;

/// Tries of a device whose item changed under the batch (another writer).
const CONFLICT_TRIES: usize = 5;

/// Items per `BatchWriteItem` (DynamoDB's limit).
const BATCH_WRITE_ITEMS: usize = 25;

/// Rounds of `BatchWriteItem` for items DynamoDB left unprocessed (throttling).
const BATCH_WRITE_ROUNDS: usize = 10;

/// What an attempt applied, and the device's series if its signals are due.
type Attempt = (Vec<Applied>, Option<Vec<(String, String)>>);

/// A window's identity within a device: sensor, metric, kind, start.
type WindowKey = (String, String, WindowKind, i64);

/// A window as held while folding: its aggregate and the messages folded into it that the
/// device item does not list yet.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    window: Stored,
    pending: SeenSet,
}

/// The held windows as a [`WindowStore`] for `fold`: what `overlapping` takes out, its
/// `pending` goes with the window `put` puts back.
struct Folding<'a> {
    windows: &'a mut BTreeMap<WindowKey, Held>,
    carried: SeenSet,
}

fn overlaps(key: &WindowKey, w: &Stored, d: &WindowDelta) -> bool {
    let (sensor, metric, kind, _) = key;
    *sensor == d.sensor
        && *metric == d.metric
        && *kind == d.kind
        && if d.kind == WindowKind::Session {
            w.start_ms < d.end_ms && w.end_ms > d.start_ms
        } else {
            w.start_ms == d.start_ms
        }
}

impl WindowStore for Folding<'_> {
    type Error = std::convert::Infallible;

    fn overlapping(&mut self, _: &str, d: &WindowDelta) -> Result<Vec<Stored>, Self::Error> {
        let keys: Vec<WindowKey> = self
            .windows
            .iter()
            .filter(|(k, h)| overlaps(k, &h.window, d))
            .map(|(k, _)| k.clone())
            .collect();
        let mut found = Vec::with_capacity(keys.len());
        for k in keys {
            if let Some(held) = self.windows.remove(&k) {
                self.carried.extend(&held.pending);
                found.push(held.window);
            }
        }
        Ok(found)
    }

    fn put(&mut self, u: &WindowUpdate) -> Result<(), Self::Error> {
        let key = (
            u.sensor.clone(),
            u.metric.clone(),
            u.kind,
            u.window.start_ms,
        );
        let pending = std::mem::take(&mut self.carried);
        self.windows.insert(
            key,
            Held {
                window: u.window.clone(),
                pending,
            },
        );
        Ok(())
    }
}

/// What the read of step 1 found.
struct DeviceRead {
    /// The item as stored (`None`: new device).
    item: Option<Item>,
    seen: SeenSet,
    legacy_seq: Option<u64>,
}

impl DynamoState {
    /// Applies `messages`, all of `device`, in arrival order; says for each whether it was new.
    pub async fn apply_device(
        &self,
        device: &str,
        messages: &[&Message],
    ) -> Result<Vec<Applied>, StateError> {
        for _ in 0..CONFLICT_TRIES {
            if let Some((applied, signals_due)) = self.try_apply(device, messages).await? {
                if let Some(series) = signals_due {
                    self.refresh_signals(device, &series).await;
                }
                return Ok(applied);
            }
        }
        Err(StateError::Contention {
            device: device.to_owned(),
        })
    }

    /// Applies one message (a device's only message of a batch).
    pub async fn apply(&self, message: &Message) -> Result<Applied, StateError> {
        let applied = self.apply_device(&message.device, &[message]).await?;
        Ok(applied.first().copied().unwrap_or(Applied::Duplicate))
    }

    async fn read_device(&self, pk: &str) -> Result<DeviceRead, StateError> {
        let item = self
            .get(pk.to_owned(), layout::DEVICE_SK.to_owned())
            .await?;
        let Some(item) = item else {
            return Ok(DeviceRead {
                item: None,
                seen: SeenSet::new(),
                legacy_seq: None,
            });
        };
        let seen = match get_str(&item, "seen") {
            Some(text) => SeenSet::parse(text).map_err(|e| StateError::CorruptDevice {
                key: pk.to_owned(),
                message: e.to_string(),
            })?,
            None => SeenSet::new(),
        };
        // Written by a Lambda that kept a `seen#` item per message: those up to its last seq.
        let legacy_seq = get_u64(&item, "legacy_seq").or_else(|| {
            (!item.contains_key("seen") && item.contains_key("messages"))
                .then(|| get_u64(&item, "last_seq"))
                .flatten()
        });
        Ok(DeviceRead {
            item: Some(item),
            seen,
            legacy_seq,
        })
    }

    /// Which of `messages` are new: not in `seen`, not earlier in the batch, not among the
    /// legacy `seen#` items.
    async fn new_messages(
        &self,
        device: &str,
        read: &DeviceRead,
        messages: &[&Message],
    ) -> Result<Vec<bool>, StateError> {
        let mut in_batch = HashSet::new();
        let mut fresh: Vec<bool> = messages
            .iter()
            .map(|m| !read.seen.contains(m.epoch, m.seq) && in_batch.insert((m.epoch, m.seq)))
            .collect();
        if let Some(legacy) = read.legacy_seq {
            let keys: Vec<String> = messages
                .iter()
                .zip(&fresh)
                .filter(|(m, new)| **new && m.seq <= legacy)
                .map(|(m, _)| layout::seen_sk(m.epoch, m.seq))
                .collect();
            if !keys.is_empty() {
                let found: HashSet<String> = self
                    .batch_get(&layout::seen_pk(device), keys)
                    .await?
                    .iter()
                    .filter_map(|i| get_str(i, "sk").map(str::to_owned))
                    .collect();
                for (m, new) in messages.iter().zip(fresh.iter_mut()) {
                    if *new && found.contains(&layout::seen_sk(m.epoch, m.seq)) {
                        *new = false;
                    }
                }
            }
        }
        Ok(fresh)
    }

    /// The stored windows the deltas of `messages` fold into, with their sizes.
    async fn read_windows(
        &self,
        pk: &str,
        messages: &[&Message],
    ) -> Result<(BTreeMap<WindowKey, Held>, HashMap<WindowKey, usize>), StateError> {
        let mut items = Vec::new();
        let mut keys = Vec::new();
        let mut asked = HashSet::new();
        for d in messages.iter().flat_map(|m| &m.windows) {
            if d.kind == WindowKind::Session {
                items.extend(self.sessions(pk, d).await?);
            } else {
                let sk = layout::window_sk(&d.sensor, &d.metric, d.kind, d.start_ms);
                if asked.insert(sk.clone()) {
                    keys.push(sk);
                }
            }
        }
        items.extend(self.batch_get(pk, keys).await?);
        let mut held = BTreeMap::new();
        let mut sizes = HashMap::new();
        for item in items {
            let w = window_from_item(&item)?;
            let pending = match get_str(&item, "pending") {
                Some(text) => SeenSet::parse(text).map_err(|e| StateError::CorruptWindow {
                    key: get_str(&item, "sk").unwrap_or("?").to_owned(),
                    message: e.to_string(),
                })?,
                None => SeenSet::new(),
            };
            let key = (w.sensor, w.metric, w.kind, w.window.start_ms);
            sizes.insert(key.clone(), item_size(&item));
            held.insert(
                key,
                Held {
                    window: w.window,
                    pending,
                },
            );
        }
        Ok((held, sizes))
    }

    /// One attempt; `None` if the device item changed since it was read. With what was
    /// applied, the device's series when its signals are due.
    async fn try_apply(
        &self,
        device: &str,
        messages: &[&Message],
    ) -> Result<Option<Attempt>, StateError> {
        let pk = layout::device_pk(device);
        let read = self.read_device(&pk).await?;
        let fresh = self.new_messages(device, &read, messages).await?;
        let applied: Vec<Applied> = fresh
            .iter()
            .map(|&new| match new {
                true => Applied::Applied,
                false => Applied::Duplicate,
            })
            .collect();
        let new: Vec<&Message> = messages
            .iter()
            .zip(&fresh)
            .filter(|(_, new)| **new)
            .map(|(m, _)| *m)
            .collect();
        if new.is_empty() {
            return Ok(Some((applied, None)));
        }
        let now = now_ms();

        // 2. Fold.
        let (stored, sizes) = self.read_windows(&pk, &new).await?;
        let mut windows = stored.clone();
        let mut watermark = read.item.as_ref().and_then(|i| get_i64(i, "last_event_ms"));
        for m in &new {
            for d in &m.windows {
                let done = windows
                    .iter()
                    .any(|(k, h)| overlaps(k, &h.window, d) && h.pending.contains(m.epoch, m.seq));
                if done {
                    continue;
                }
                let mut store = Folding {
                    windows: &mut windows,
                    carried: SeenSet::new(),
                };
                let update = match fold(&mut store, device, d.clone(), watermark) {
                    Ok(u) => u,
                    Err(never) => match never {},
                };
                let key = (
                    update.sensor,
                    update.metric,
                    update.kind,
                    update.window.start_ms,
                );
                if let Some(held) = windows.get_mut(&key) {
                    held.pending.insert(m.epoch, m.seq);
                }
            }
            if let Some(event) = m.event_ms {
                watermark = Some(watermark.map_or(event, |w| w.max(event)));
            }
        }

        // 3. Write everything but the device item.
        let mut puts: Vec<(Item, usize)> = Vec::new();
        for (key, held) in &mut windows {
            if stored.get(key) == Some(held) {
                continue;
            }
            held.pending.remove_all(&read.seen);
            let (sensor, metric, kind, _) = key.clone();
            let mut item = window_to_item(
                device,
                &WindowItem {
                    sensor,
                    metric,
                    kind,
                    window: held.window.clone(),
                },
            );
            if !held.pending.is_empty() {
                item.insert("pending".to_owned(), s(held.pending.to_string()));
            }
            self.expire(&mut item, held.window.end_ms);
            puts.push((item, sizes.get(key).copied().unwrap_or(0)));
        }
        let deletes: Vec<(String, usize)> = stored
            .keys()
            .filter(|k| !windows.contains_key(*k))
            .map(|k| {
                let (sensor, metric, kind, start) = k;
                let sk = layout::window_sk(sensor, metric, *kind, *start);
                (sk, sizes.get(k).copied().unwrap_or(0))
            })
            .collect();
        let commit = self.device_item(device, &read, &new, now, &mut puts);
        for m in &new {
            if let Some(a) = &m.alert {
                let mut item = Item::from([
                    ("pk".to_owned(), s(pk.clone())),
                    ("sk".to_owned(), s(layout::alert_sk(m.epoch, m.seq))),
                    ("seq".to_owned(), n(m.seq)),
                    ("epoch".to_owned(), n(m.epoch)),
                    ("rule".to_owned(), s(a.rule.clone())),
                    ("sensor".to_owned(), s(a.sensor.clone())),
                    ("metric".to_owned(), s(a.metric.clone())),
                    ("event".to_owned(), s(event_name(a.event))),
                    ("severity".to_owned(), s(severity_name(a.severity))),
                    ("value".to_owned(), f(a.value)),
                    ("threshold".to_owned(), f(a.threshold)),
                    ("time_ms".to_owned(), n(a.time_ms)),
                    ("notified".to_owned(), AttributeValue::Bool(false)),
                ]);
                self.expire(&mut item, a.time_ms);
                puts.push((item, 0));
            }
        }
        self.batch_write(puts, &pk, deletes).await?;
        self.put_rule_states(&pk, &new).await?;

        // 4. Commit.
        let failing = self
            .failing_commits
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(self.request_error(
                "PutItem",
                &self.table,
                "failure injected before the device write".to_owned(),
            ));
        }
        let (item, condition) = commit;
        let signals_due =
            (get_i64(&item, "signals_at") == Some(now)).then(|| layout::series_of(&item));
        let before = read.item.as_ref().map_or(0, item_size);
        let after = item_size(&item);
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        put = match condition {
            Some(wver) => put
                .condition_expression("wver = :wver")
                .expression_attribute_values(":wver", n(wver)),
            None => put.condition_expression("attribute_not_exists(wver)"),
        };
        self.usage.write(before, after);
        match put.send().await {
            Ok(_) => Ok(Some((applied, signals_due))),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(_)) => Ok(None),
                _ => Err(self.request_error("PutItem", &self.table, describe(&e))),
            },
        }
    }

    /// Sets `expires_at` on `item`: the time to live after `time_ms`, if there is one.
    pub(super) fn expire(&self, item: &mut Item, time_ms: i64) {
        if let Some(ttl) = self.ttl_s {
            item.insert(
                "expires_at".to_owned(),
                n(time_ms.div_euclid(1000).saturating_add(ttl)),
            );
        }
    }

    /// The device item after `new` (with the `wver` it must still have), and the device event
    /// and fleet index items that go with it into `puts`.
    fn device_item(
        &self,
        device: &str,
        read: &DeviceRead,
        new: &[&Message],
        now: i64,
        puts: &mut Vec<(Item, usize)>,
    ) -> (Item, Option<u64>) {
        let pk = layout::device_pk(device);
        let mut item = read.item.clone().unwrap_or_else(|| {
            Item::from([
                ("pk".to_owned(), s(pk.clone())),
                ("sk".to_owned(), s(layout::DEVICE_SK)),
            ])
        });
        let wver = get_u64(&item, "wver");
        let mut epochs = known_epochs(&item);
        let mut epoch = get_u64(&item, "epoch").unwrap_or(0);
        let mut status = status_mark(&item);
        let mut seen = read.seen.clone();
        let mut given_up = get_u64(&item, "seen_given_up").unwrap_or(0);
        let mut series: HashSet<String> = item
            .get("series")
            .and_then(|v| v.as_ss().ok())
            .map(|v| v.iter().cloned().collect())
            .unwrap_or_default();
        let max_i = |item: &Item, name: &str, v: i64| get_i64(item, name).map_or(v, |o| o.max(v));
        for m in new {
            given_up += seen.insert(m.epoch, m.seq);
            item.insert(
                "readings".to_owned(),
                n(get_u64(&item, "readings").unwrap_or(0) + m.readings),
            );
            item.insert(
                "messages".to_owned(),
                n(get_u64(&item, "messages").unwrap_or(0) + 1),
            );
            item.insert(
                "last_seen_ms".to_owned(),
                n(max_i(&item, "last_seen_ms", m.received_ms)),
            );
            let last_seq = get_u64(&item, "last_seq").map_or(m.seq, |s| s.max(m.seq));
            item.insert("last_seq".to_owned(), n(last_seq));
            item.entry("first_seen_ms".to_owned())
                .or_insert_with(|| n(m.received_ms));
            if let Some(event) = m.event_ms {
                item.insert(
                    "last_event_ms".to_owned(),
                    n(max_i(&item, "last_event_ms", event)),
                );
            }
            if let Some(report) = &m.status {
                let mark = StatusMark::of_message(m.epoch, m.seq, report);
                if mark.supersedes(status.as_ref()) {
                    for (name, value) in [
                        ("status", s(state_name(report.state))),
                        ("status_ms", n(m.received_ms)),
                        ("status_epoch", n(m.epoch)),
                        ("status_seq", n(m.seq)),
                        ("status_will_seq", n(report.will_seq)),
                        ("status_time_ms", n(report.time_ms)),
                    ] {
                        item.insert(name.to_owned(), value);
                    }
                    status = Some(mark);
                }
            }
            if !epochs
                .as_ref()
                .is_some_and(|known| known.contains(&m.epoch))
            {
                if epochs.is_some() {
                    // A device that had messages, under a new journal: record the replacement.
                    let mut event = Item::from([
                        ("pk".to_owned(), s(pk.clone())),
                        (
                            "sk".to_owned(),
                            s(layout::event_sk(layout::JOURNAL_REPLACED, m.epoch)),
                        ),
                        ("kind".to_owned(), s(layout::JOURNAL_REPLACED)),
                        ("time_ms".to_owned(), n(m.received_ms)),
                        ("old_epoch".to_owned(), n(epoch)),
                        ("new_epoch".to_owned(), n(m.epoch)),
                    ]);
                    self.expire(&mut event, m.received_ms);
                    puts.push((event, 0));
                }
                epochs.get_or_insert_with(HashSet::new).insert(m.epoch);
                epoch = m.epoch;
            }
            for d in m.windows.iter().filter(|d| d.kind == WindowKind::Tumbling) {
                series.insert(layout::series_member(&d.sensor, &d.metric));
            }
        }
        if let Some(epochs) = epochs {
            item.insert(
                "epochs".to_owned(),
                AttributeValue::Ns(epochs.iter().map(u64::to_string).collect()),
            );
        }
        item.insert("epoch".to_owned(), n(epoch));
        if !series.is_empty() {
            item.insert(
                "series".to_owned(),
                AttributeValue::Ss(series.into_iter().collect()),
            );
        }
        item.insert("seen".to_owned(), s(seen.to_string()));
        if given_up > 0 {
            item.insert("seen_given_up".to_owned(), n(given_up));
        }
        if let Some(legacy) = read.legacy_seq {
            item.insert("legacy_seq".to_owned(), n(legacy));
        }
        item.insert("wver".to_owned(), n(wver.unwrap_or(0) + 1));
        // Signals at most every so often: the device item says when they were last due.
        if let Some((_, every_ms)) = &self.signals {
            if get_i64(&item, "signals_at").is_none_or(|at| now - at >= *every_ms) {
                item.insert("signals_at".to_owned(), n(now));
            }
        }
        self.expire(&mut item, now);
        // The fleet index entry: when the device is new, and again when its time to live is
        // half gone (the device item remembers until when it is listed).
        let listed_until = get_i64(&item, "listed_until");
        let due = match (self.ttl_s, listed_until) {
            (_, None) => true,
            (Some(ttl), Some(until)) => until - now.div_euclid(1000) < ttl / 2,
            (None, Some(_)) => false,
        };
        if due {
            let mut entry = layout::fleet_item(device);
            self.expire(&mut entry, now);
            let until = get_i64(&entry, "expires_at").unwrap_or(i64::MAX);
            item.insert("listed_until".to_owned(), n(until));
            puts.push((entry, 0));
        }
        (item, wver)
    }

    /// Puts (item, size before) and deletes (sort key in `pk`, size before), 25 a request.
    async fn batch_write(
        &self,
        puts: Vec<(Item, usize)>,
        pk: &str,
        deletes: Vec<(String, usize)>,
    ) -> Result<(), StateError> {
        let mut requests = Vec::with_capacity(puts.len() + deletes.len());
        let build = |e: aws_sdk_dynamodb::error::BuildError| {
            self.request_error("BatchWriteItem", &self.table, e.to_string())
        };
        for (item, before) in puts {
            self.usage.write(before, item_size(&item));
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(build)?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        for (sk, before) in deletes {
            self.usage.write(before, 0);
            let delete = DeleteRequest::builder()
                .key("pk", s(pk))
                .key("sk", s(sk))
                .build()
                .map_err(build)?;
            requests.push(WriteRequest::builder().delete_request(delete).build());
        }
        for chunk in requests.chunks(BATCH_WRITE_ITEMS) {
            let mut pending = Some(HashMap::from([(self.table.clone(), chunk.to_vec())]));
            for round in 0..BATCH_WRITE_ROUNDS {
                let Some(items) = pending.take().filter(|p| !p.is_empty()) else {
                    break;
                };
                if round > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(50 << round.min(5))).await;
                }
                let out = self
                    .client
                    .batch_write_item()
                    .set_request_items(Some(items))
                    .send()
                    .await
                    .map_err(|e| self.request_error("BatchWriteItem", &self.table, describe(&e)))?;
                pending = out.unprocessed_items;
            }
            if pending.is_some_and(|p| !p.is_empty()) {
                return Err(self.request_error(
                    "BatchWriteItem",
                    &self.table,
                    "items left unprocessed after repeated tries (throttled)".to_owned(),
                ));
            }
        }
        Ok(())
    }

    /// Each rule's newest alert event of `new` becomes its state unless the stored one is
    /// newer (by event time, then seq, whatever order they arrive in).
    async fn put_rule_states(&self, pk: &str, new: &[&Message]) -> Result<(), StateError> {
        let mut newest: BTreeMap<&str, (&Message, &osprey_protocol::Alert)> = BTreeMap::new();
        for m in new {
            if let Some(a) = &m.alert {
                let slot = newest.entry(a.rule.as_str()).or_insert((m, a));
                if (a.time_ms, m.seq) > (slot.1.time_ms, slot.0.seq) {
                    *slot = (m, a);
                }
            }
        }
        for (m, a) in newest.into_values() {
            let mut item = Item::from([
                ("pk".to_owned(), s(pk)),
                ("sk".to_owned(), s(layout::rule_sk(&a.rule))),
                ("rule".to_owned(), s(a.rule.clone())),
                ("sensor".to_owned(), s(a.sensor.clone())),
                ("metric".to_owned(), s(a.metric.clone())),
                ("event".to_owned(), s(event_name(a.event))),
                ("severity".to_owned(), s(severity_name(a.severity))),
                ("time_ms".to_owned(), n(a.time_ms)),
                ("seq".to_owned(), n(m.seq)),
            ]);
            self.expire(&mut item, a.time_ms);
            let size = item_size(&item);
            self.usage.write(size, size);
            let result = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression(
                    "attribute_not_exists(pk) OR time_ms < :t OR (time_ms = :t AND seq < :seq)",
                )
                .expression_attribute_values(":t", n(a.time_ms))
                .expression_attribute_values(":seq", n(m.seq))
                .send()
                .await;
            match result {
                Ok(_) => {}
                Err(e) => match e.as_service_error() {
                    Some(PutItemError::ConditionalCheckFailedException(_)) => {}
                    _ => return Err(self.request_error("PutItem", &self.table, describe(&e))),
                },
            }
        }
        Ok(())
    }
}
