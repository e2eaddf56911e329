//! The key layout of the Lambda's DynamoDB state table, in one place: `osprey-lambda` writes
//! it (`osprey_lambda::state`) and `osprey fleet --dynamodb-table` reads it
//! ([`super::dynamo`]).
//!
//! The table is keyed by `pk` (partition, string) and `sk` (sort, string):
//!
//! | pk | sk | item |
//! |---|---|---|
//! | `fleet` | `<device>` | the device exists (written when it is first seen, and again when half its time to live is used) |
//! | `seen#<device>` | [`seen_sk`]: `<seq>` (epoch 0) or `<epoch>#<seq>` | a message applied, as the Lambda recorded them before the dedup set moved into the device item (read only for messages at or below the device's `legacy_seq`) |
//! | `dev#<device>` | `device` | `readings`, `messages`, `first_seen_ms`, `last_seen_ms`, `last_event_ms`, `last_seq`, `status`, `status_ms`, the status mark (`status_epoch`, `status_seq`, `status_will_seq`, `status_time_ms`), `epochs` (number set of the journal epochs seen), `epoch` (the newest of them), `series` (string set of [`series_member`]s), `seen` (the messages applied: seq ranges per epoch, `EPOCH:LO-HI,…`), `seen_given_up`, `legacy_seq`, `listed_until` (the fleet entry's `expires_at`), `wver` |
//! | `dev#<device>` | `health` | the device's maintenance signals ([`super::dynamo_signals`]): `series` (JSON list of each series' signals), `at_ms` (when computed) |
//! | `dev#<device>` | `ev#<kind>#<new epoch>` | a device event ([`event_sk`]): `kind` (`journal_replaced`), `time_ms` (cloud clock), `old_epoch`, `new_epoch` |
//! | `dev#<device>` | `w#<sensor>#<metric>#<kind>#<start>` | a window: `sensor`, `metric`, `kind`, `start_ms`, `end_ms`, `unit`, `version`, `corrections`, `count`, `sum`, `min`, `max`, `mean`, `m2`, `m3`, `m4`, `sketch` (bytes), `pending` (messages folded in that the device item's `seen` does not list yet) |
//! | `dev#<device>` | [`alert_sk`]: `a#<seq, 20 digits>` (epoch 0) or `a#<seq, 20 digits>#<epoch>` | an alert event: `rule`, `sensor`, `metric`, `event`, `severity`, `value`, `threshold`, `time_ms`, `seq`, `epoch` |
//! | `dev#<device>` | `r#<rule>` | a rule's newest alert event (by time, then seq): `event`, `severity`, `time_ms`, `seq`, `sensor`, `metric` |
//!
//! Every item but the legacy `seen#` ones carries `expires_at` (seconds since the epoch) for the
//! table's time to live when the Lambda has one: windows after their end, alerts, rule states
//! and device events after their time, the device item and its fleet entry after it was last
//! seen.
//!
//! Epoch 0 (gateways before protocol 1.3) keeps the keys written before epochs existed, so a
//! table written by an older Lambda needs no migration: its `seen` and alert items are epoch 0,
//! and a device item with `messages` but no `epochs` has seen epoch 0 only.
//!
//! Names inside sort keys are escaped (`%` → `%25`, `#` → `%23`) so a `#` in a sensor name
//! cannot make two series share a prefix. `<start>` is [`encode_time`]: it sorts as the time
//! does, so "the newest window of a series" is a reverse query with limit 1, and "the sessions
//! that may overlap `[s, e)`" a range query. Numbers that are not finite (DynamoDB numbers
//! cannot be) are stored as strings (`NaN`, `inf`, `-inf`) and read back by [`get_f64`].

use std::collections::HashMap;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::query::QueryError;
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use crate::analytics::{Aggregate, Moments, Sketch};
use crate::window::table::Stored;
use crate::window::WindowKind;

/// An item, as the SDK gives and takes it.
pub type Item = HashMap<String, AttributeValue>;

/// Partition of the fleet index.
pub const FLEET_PK: &str = "fleet";

/// Sort key of the device item in a device's partition.
pub const DEVICE_SK: &str = "device";

/// Sort key of a device's maintenance signals as the Lambda last computed them
/// ([`super::dynamo_signals`]); it sorts between the device events and the rule states, inside
/// the range a listing reads.
pub const SIGNALS_SK: &str = "health";

/// Sort key prefix of the rule-state items.
pub const RULE_PREFIX: &str = "r#";

/// The partition of a device's state.
pub fn device_pk(device: &str) -> String {
    format!("dev#{device}")
}

/// The fleet index entry of a device.
pub fn fleet_item(device: &str) -> Item {
    HashMap::from([("pk".to_owned(), s(FLEET_PK)), ("sk".to_owned(), s(device))])
}

/// The partition of a device's dedup set.
pub fn seen_pk(device: &str) -> String {
    format!("seen#{device}")
}

/// The dedup item's sort key of message `(epoch, seq)`: the bare seq for epoch 0 (as before
/// epochs existed), `<epoch>#<seq>` otherwise.
pub fn seen_sk(epoch: u64, seq: u64) -> String {
    if epoch == 0 {
        seq.to_string()
    } else {
        format!("{epoch}#{seq}")
    }
}

/// Sort key prefix of the device event items.
pub const EVENT_PREFIX: &str = "ev#";

/// Device event kind: the device's messages came under a new journal epoch.
pub const JOURNAL_REPLACED: &str = "journal_replaced";

/// Sort key of a device event of `kind` for `new_epoch` (one per kind and epoch, so writing
/// it again changes nothing).
pub fn event_sk(kind: &str, new_epoch: u64) -> String {
    format!("{EVENT_PREFIX}{kind}#{new_epoch:016}")
}

/// A name escaped for a sort key.
fn escape(name: &str) -> String {
    name.replace('%', "%25").replace('#', "%23")
}

/// Sort-key form of a time that sorts as the number does: `p` and 19 digits for `t ≥ 0`,
/// `n` and 19 digits of `t - i64::MIN` below zero.
pub fn encode_time(t: i64) -> String {
    if t >= 0 {
        format!("p{t:019}")
    } else {
        // t - i64::MIN is in 0..2^63 for a negative t.
        format!("n{:019}", i128::from(t) - i128::from(i64::MIN))
    }
}

/// Sort-key prefix of one series' windows of one kind.
pub fn window_prefix(sensor: &str, metric: &str, kind: WindowKind) -> String {
    format!("w#{}#{}#{}#", escape(sensor), escape(metric), kind.as_str())
}

/// Sort key of a window.
pub fn window_sk(sensor: &str, metric: &str, kind: WindowKind, start_ms: i64) -> String {
    format!(
        "{}{}",
        window_prefix(sensor, metric, kind),
        encode_time(start_ms)
    )
}

/// Sort key of an alert event of message `(epoch, seq)`.
pub fn alert_sk(epoch: u64, seq: u64) -> String {
    if epoch == 0 {
        format!("a#{seq:020}")
    } else {
        format!("a#{seq:020}#{epoch}")
    }
}

/// Sort key of a rule's state.
pub fn rule_sk(rule: &str) -> String {
    format!("{RULE_PREFIX}{}", escape(rule))
}

/// How a series is named in the device item's `series` set.
pub fn series_member(sensor: &str, metric: &str) -> String {
    format!("{}#{}", escape(sensor), escape(metric))
}

/// The sensor and metric of a [`series_member`].
pub fn parse_series_member(member: &str) -> Option<(String, String)> {
    let (sensor, metric) = member.split_once('#')?;
    let unescape = |s: &str| s.replace("%23", "#").replace("%25", "%");
    Some((unescape(sensor), unescape(metric)))
}

/// The series of a device item (its `series` set), by sensor and metric.
pub fn series_of(device_item: &Item) -> Vec<(String, String)> {
    let mut series: Vec<(String, String)> = device_item
        .get("series")
        .and_then(|v| v.as_ss().ok())
        .map(|set| set.iter().filter_map(|m| parse_series_member(m)).collect())
        .unwrap_or_default();
    series.sort();
    series
}

/// A device event item (`ev#…`), or `None` if it lacks an attribute.
pub fn event_from_item(item: &Item) -> Option<crate::store::DeviceEvent> {
    Some(crate::store::DeviceEvent {
        kind: get_str(item, "kind")?.to_owned(),
        time_ms: get_i64(item, "time_ms")?,
        old_epoch: get_u64(item, "old_epoch")?,
        new_epoch: get_u64(item, "new_epoch")?,
    })
}

/// A string attribute.
pub fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute.
pub fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// A float attribute: a number when finite, else its name as a string.
pub fn f(value: f64) -> AttributeValue {
    if value.is_finite() {
        n(value)
    } else {
        s(value.to_string())
    }
}

/// A string attribute of `item`.
pub fn get_str<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)?.as_s().ok().map(String::as_str)
}

/// An integer attribute of `item`.
pub fn get_i64(item: &Item, name: &str) -> Option<i64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// An unsigned integer attribute of `item`.
pub fn get_u64(item: &Item, name: &str) -> Option<u64> {
    item.get(name)?.as_n().ok()?.parse().ok()
}

/// A float attribute of `item` (written by [`f`]).
pub fn get_f64(item: &Item, name: &str) -> Option<f64> {
    match item.get(name)? {
        AttributeValue::N(v) | AttributeValue::S(v) => v.parse().ok(),
        _ => None,
    }
}

/// Which items of one partition a [`query_each`] reads.
#[derive(Debug, Clone, PartialEq)]
pub enum SortKeys {
    /// Every item.
    All,
    /// Sort keys starting with this.
    Prefix(String),
    /// Sort keys from the first to the second, both included.
    Between(String, String),
}

/// Queries partition `pk` of `table`, strongly consistent, page after page, in sort-key order
/// (`forward`) or reverse; `each` gets every item and returns `false` to stop early.
pub async fn query_each(
    client: &Client,
    table: &str,
    pk: &str,
    keys: &SortKeys,
    forward: bool,
    each: impl FnMut(&Item) -> bool,
) -> Result<(), SdkError<QueryError, HttpResponse>> {
    let how = Reading {
        forward,
        consistent: true,
        page: None,
    };
    query_pages(client, table, pk, keys, how, each, |_| {}).await
}

/// How a [`query_pages`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    /// In sort-key order (`true`) or reverse.
    pub forward: bool,
    /// Strongly consistent (twice the read units of an eventually consistent read).
    pub consistent: bool,
    /// Items per request (DynamoDB's `Limit`): a reader that wants the first item only sets 1,
    /// so it pays for one item instead of a 1 MB page. `None`: up to 1 MB per request.
    pub page: Option<i32>,
}

/// [`query_each`] with the reading chosen; `units` gets the read units each request consumed
/// (as DynamoDB reports them; nothing when it does not).
pub async fn query_pages(
    client: &Client,
    table: &str,
    pk: &str,
    keys: &SortKeys,
    how: Reading,
    mut each: impl FnMut(&Item) -> bool,
    mut units: impl FnMut(f64),
) -> Result<(), SdkError<QueryError, HttpResponse>> {
    let mut start = None;
    loop {
        let mut q = client
            .query()
            .table_name(table)
            .consistent_read(how.consistent)
            .scan_index_forward(how.forward)
            .set_limit(how.page)
            .return_consumed_capacity(aws_sdk_dynamodb::types::ReturnConsumedCapacity::Total)
            .set_exclusive_start_key(start.take())
            .expression_attribute_values(":pk", s(pk));
        q = match keys {
            SortKeys::All => q.key_condition_expression("pk = :pk"),
            SortKeys::Prefix(p) => q
                .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
                .expression_attribute_values(":prefix", s(p.clone())),
            SortKeys::Between(low, high) => q
                .key_condition_expression("pk = :pk AND sk BETWEEN :low AND :high")
                .expression_attribute_values(":low", s(low.clone()))
                .expression_attribute_values(":high", s(high.clone())),
        };
        let out = q.send().await?;
        if let Some(used) = out.consumed_capacity().and_then(|c| c.capacity_units()) {
            units(used);
        }
        for item in out.items() {
            if !each(item) {
                return Ok(());
            }
        }
        match out.last_evaluated_key {
            Some(key) if !key.is_empty() => start = Some(key),
            _ => return Ok(()),
        }
    }
}

/// A window item that could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window item {key:?} is unreadable: {reason}")]
pub struct BadItem {
    /// The item's sort key.
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A window as stored, with its series and kind.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowItem {
    /// Sensor name.
    pub sensor: String,
    /// Metric name.
    pub metric: String,
    /// Kind of window.
    pub kind: WindowKind,
    /// Bounds, unit, version and aggregate.
    pub window: Stored,
}

/// The attributes of a window item, keys included.
pub fn window_to_item(device: &str, w: &WindowItem) -> Item {
    let st = &w.window;
    let m = &st.agg.moments;
    HashMap::from([
        ("pk".to_owned(), s(device_pk(device))),
        (
            "sk".to_owned(),
            s(window_sk(&w.sensor, &w.metric, w.kind, st.start_ms)),
        ),
        ("sensor".to_owned(), s(w.sensor.clone())),
        ("metric".to_owned(), s(w.metric.clone())),
        ("kind".to_owned(), s(w.kind.as_str())),
        ("unit".to_owned(), s(st.unit.clone())),
        ("start_ms".to_owned(), n(st.start_ms)),
        ("end_ms".to_owned(), n(st.end_ms)),
        ("version".to_owned(), n(st.version)),
        ("corrections".to_owned(), n(st.corrections)),
        ("count".to_owned(), n(m.count)),
        ("sum".to_owned(), f(m.sum)),
        ("min".to_owned(), f(m.min)),
        ("max".to_owned(), f(m.max)),
        ("mean".to_owned(), f(m.mean)),
        ("m2".to_owned(), f(m.m2)),
        ("m3".to_owned(), f(m.m3)),
        ("m4".to_owned(), f(m.m4)),
        (
            "sketch".to_owned(),
            AttributeValue::B(Blob::new(st.agg.sketch.to_bytes())),
        ),
    ])
}

/// Reads a window item written by [`window_to_item`].
pub fn window_from_item(item: &Item) -> Result<WindowItem, BadItem> {
    let key = get_str(item, "sk").unwrap_or("?").to_owned();
    let bad = |reason: String| BadItem {
        key: key.clone(),
        reason,
    };
    let text = |name: &str| {
        get_str(item, name)
            .map(str::to_owned)
            .ok_or_else(|| bad(format!("no string attribute {name:?}")))
    };
    let int = |name: &str| get_i64(item, name).ok_or_else(|| bad(format!("no integer {name:?}")));
    let real = |name: &str| get_f64(item, name).ok_or_else(|| bad(format!("no number {name:?}")));
    let kind_name = text("kind")?;
    let kind = WindowKind::parse(&kind_name)
        .ok_or_else(|| bad(format!("unknown window kind {kind_name:?}")))?;
    let sketch = match item.get("sketch").and_then(|v| v.as_b().ok()) {
        Some(bytes) => Sketch::from_bytes(bytes.as_ref()).map_err(|e| bad(e.to_string()))?,
        None => return Err(bad("no sketch".to_owned())),
    };
    let moments = Moments {
        count: get_u64(item, "count").ok_or_else(|| bad("no count".to_owned()))?,
        sum: real("sum")?,
        min: real("min")?,
        max: real("max")?,
        mean: real("mean")?,
        m2: real("m2")?,
        m3: real("m3")?,
        m4: real("m4")?,
    };
    Ok(WindowItem {
        sensor: text("sensor")?,
        metric: text("metric")?,
        kind,
        window: Stored {
            start_ms: int("start_ms")?,
            end_ms: int("end_ms")?,
            unit: text("unit")?,
            version: get_u64(item, "version").ok_or_else(|| bad("no version".to_owned()))?,
            // Items written before the attribute existed were never counted: 0.
            corrections: get_u64(item, "corrections").unwrap_or(0),
            agg: Aggregate { moments, sketch },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_times_sort_as_the_times_do() {
        let times = [
            i64::MIN,
            -60_000,
            -1,
            0,
            1,
            59_999,
            1_767_225_600_000,
            i64::MAX,
        ];
        let encoded: Vec<String> = times.iter().map(|&t| encode_time(t)).collect();
        let mut sorted = encoded.clone();
        sorted.sort();
        assert_eq!(encoded, sorted);
        assert!(encoded.iter().all(|e| e.len() == 20), "{encoded:?}");
        assert_eq!(encode_time(1_767_225_600_000), "p0000001767225600000");
    }

    #[test]
    fn a_hash_in_a_name_cannot_merge_two_series() {
        let a = window_prefix("a#b", "c", WindowKind::Tumbling);
        let b = window_prefix("a", "b#c", WindowKind::Tumbling);
        assert_ne!(a, b);
        assert!(!a.starts_with(&b) && !b.starts_with(&a));
        let member = series_member("a#b%", "c");
        assert_eq!(
            parse_series_member(&member),
            Some(("a#b%".to_owned(), "c".to_owned()))
        );
    }

    #[test]
    fn a_window_item_reads_back_as_written_even_with_infinite_moments() {
        let mut agg = Aggregate::new();
        for v in [1.5, 2.25, -3.0] {
            agg.add(v);
        }
        agg.moments.m4 = f64::INFINITY;
        let w = WindowItem {
            sensor: "bear#ing".into(),
            metric: "temperature".into(),
            kind: WindowKind::Session,
            window: Stored {
                start_ms: -5,
                end_ms: 10_000,
                unit: "Cel".into(),
                version: 3,
                corrections: 1,
                agg,
            },
        };
        let item = window_to_item("pump-1", &w);
        assert_eq!(window_from_item(&item), Ok(w));
        let mut broken = item;
        broken.insert("kind".into(), s("weekly"));
        let err = window_from_item(&broken).unwrap_err();
        assert!(err.reason.contains("weekly"), "{err}");
    }
}
