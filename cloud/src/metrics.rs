//! Prometheus metrics: `GET /metrics` on `osprey serve`'s API listener and on
//! `osprey bridge --metrics-listen ADDR`.
//!
//! ```text
//!  pipeline counters (IngestStats) ──┐                      ┌─► GET /metrics (OpenMetrics text)
//!                                    ├─► collector ─► Registry
//!  bridge counters (BridgeStats)  ───┘   (read at scrape)
//! ```
//!
//! The figures are not kept twice: each process already counts in atomics that `/api/stats`
//! and the bridge's log lines read, and a [`Collector`] turns a snapshot of them into series
//! at scrape time. So `/metrics` and `/api/stats` always agree, and the hot paths pay nothing
//! for Prometheus.
//!
//! Names follow Prometheus conventions: an `osprey_` prefix, the unit in the name
//! (`_milliseconds`, `_bytes`, `_seconds`), `_total` on counters. The exposition is
//! OpenMetrics text (`application/openmetrics-text; version=1.0.0`), which Prometheus scrapes
//! natively.
//!
//! | series (`osprey serve`) | type | meaning |
//! |---|---|---|
//! | `osprey_messages_applied_total` | counter | messages applied (a new `(device, seq)`) |
//! | `osprey_messages_duplicate_total` | counter | messages dropped as duplicates |
//! | `osprey_dead_letters_total` | counter | payloads kept as dead letters |
//! | `osprey_mqtt_messages_received_total` | counter | publishes the MQTT source received |
//! | `osprey_rules_messages_received_total` | counter | rules reports and rule documents the MQTT source took ([`crate::reported_rules`]) |
//! | `osprey_rules_reports_refused_total` | counter | of those, reports refused (too big, not a report, naming another device, an invalid rule) |
//! | `osprey_identity_mismatches_total{claimed,source}` | counter | payloads naming another device than their authenticated source (at most 1000 label pairs, then `other`/`other`) |
//! | `osprey_kinesis_iterator_age_milliseconds{shard}` | gauge | `MillisBehindLatest` of the shard's last GetRecords |
//! | `osprey_kinesis_records_total{shard}` | counter | records read from the shard |
//! | `osprey_kinesis_get_records_throttled_total{shard}` | counter | GetRecords calls refused for throughput |
//! | `osprey_kinesis_expired_iterators_total{shard}` | counter | iterators re-acquired after expiring |
//! | `osprey_kinesis_checkpoint_writes_total{shard}` | counter | checkpoints written (SQLite or DynamoDB) |
//! | `osprey_kinesis_shard_state{shard,state}` | gauge | 1 for the shard's state (`waiting`, `reading`, `finished`, `leased elsewhere`) |
//! | `osprey_store_dead_letters_evicted_total` | counter | dead letters evicted over the count or byte cap (lifetime of the database file) |
//! | `osprey_store_dead_letters_expired_total` | counter | dead letters deleted for age |
//! | `osprey_store_dead_letters_truncated_total` | counter | dead letters stored with their payload cut |
//! | `osprey_store_dead_letters_repeated_total` | counter | rejected payloads not stored again (same source position) |
//! | `osprey_store_seen_pruned_total` | counter | dedup rows pruned by retention |
//! | `osprey_store_windows_pruned_total` | counter | windows pruned by retention |
//! | `osprey_store_alerts_pruned_total` | counter | alert events pruned by retention |
//! | `osprey_store_status_pruned_total` | counter | status history rows pruned by retention |
//!
//! | series (`osprey bridge`) | type | meaning |
//! |---|---|---|
//! | `osprey_bridge_mqtt_messages_received_total` | counter | MQTT publishes received |
//! | `osprey_bridge_records_put_total` | counter | records Kinesis accepted (and acknowledged on MQTT) |
//! | `osprey_bridge_records_put_bytes_total` | counter | their bytes (data + partition key) |
//! | `osprey_bridge_put_records_calls_total` | counter | PutRecords calls made |
//! | `osprey_bridge_put_records_failed_calls_total` | counter | PutRecords calls that failed as a whole |
//! | `osprey_bridge_put_retries_total` | counter | PutRecords calls repeated after a backoff |
//! | `osprey_bridge_records_retried_total` | counter | records refused in a batch and sent again |
//! | `osprey_bridge_records_throttled_total` | counter | of those, refused for throughput |
//! | `osprey_bridge_records_dropped_total` | counter | messages that can never fit a record |
//! | `osprey_bridge_records_off_topic_total` | counter | publishes not forwarded: not on an Osprey data topic |
//! | `osprey_bridge_buffered_bytes` | gauge | bytes held between MQTT and Kinesis now |
//! | `osprey_bridge_buffered_records` | gauge | records held between MQTT and Kinesis now |
//! | `osprey_bridge_buffered_max_bytes` | gauge | most bytes ever held at once (never above the budget) |
//! | `osprey_bridge_buffer_budget_bytes` | gauge | the byte budget (`--max-buffered-bytes`) |
//! | `osprey_bridge_backpressure_waits_total` | counter | publishes that waited for buffer space (MQTT reading paused) |
//! | `osprey_bridge_backpressure_seconds_total` | counter | time spent waiting so |

use std::fmt;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};

use crate::alerts::outbox::NotifierStats;
use crate::bridge::BridgeStats;
use crate::pipeline::{IngestStats, ShardProgress};
use crate::store::MaintenanceStats;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry of one process's metrics; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
}

impl Metrics {
    /// The metrics of `osprey serve`, read from its pipeline's counters.
    pub fn serve(stats: IngestStats) -> Metrics {
        Metrics::with(PipelineCollector(stats))
    }

    /// The same metrics with the store's retention and dead-letter counters added.
    pub fn with_store(mut self, maintenance: MaintenanceStats) -> Metrics {
        self.registry
            .register_collector(Box::new(StoreCollector(maintenance)));
        self
    }

    /// The same metrics with the alert outputs' counters added.
    pub fn with_alerts(mut self, stats: Arc<NotifierStats>) -> Metrics {
        self.registry
            .register_collector(Box::new(AlertsCollector(stats)));
        self
    }

    /// The metrics of `osprey bridge`: `stats` is called at every scrape (the bridge passes
    /// [`crate::bridge::BridgeStatsHandle::snapshot`]).
    pub fn bridge(stats: impl Fn() -> BridgeStats + Send + Sync + 'static) -> Metrics {
        Metrics::with(BridgeCollector(Box::new(stats)))
    }

    fn with(collector: impl Collector) -> Metrics {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(collector));
        Metrics { registry }
    }

    /// The OpenMetrics text exposition, ending in `# EOF`.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail, and the collectors only fail on write errors.
        if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        text
    }

    /// `GET /metrics` serving these metrics.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(scrape))
            .with_state(self)
    }
}

async fn scrape(State(metrics): State<Arc<Metrics>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()).into_response()
}

/// Writes one series without labels.
fn single(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    metric: impl EncodeMetric,
) -> fmt::Result {
    let metric_encoder = encoder.encode_descriptor(name, help, unit, metric.metric_type())?;
    metric.encode(metric_encoder)
}

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    single(encoder, name, help, None, ConstCounter::new(value))
}

fn bytes_gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let value = i64::try_from(value).unwrap_or(i64::MAX);
    single(
        encoder,
        name,
        help,
        Some(&Unit::Bytes),
        ConstGauge::new(value),
    )
}

/// Writes one series per shard, labelled `shard`.
fn per_shard<M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    shards: &[(&String, &ShardProgress)],
    (name, help, unit): (&str, &str, Option<&Unit>),
    value: impl Fn(&ShardProgress) -> M,
) -> fmt::Result {
    let Some((_, first)) = shards.first() else {
        return Ok(());
    };
    let metric_type = value(first).metric_type();
    let mut metric_encoder = encoder.encode_descriptor(name, help, unit, metric_type)?;
    for (id, progress) in shards {
        let labels = [("shard", id.as_str())];
        value(progress).encode(metric_encoder.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `osprey serve`'s store series: what retention and the dead-letter caps deleted.
#[derive(Debug)]
struct StoreCollector(MaintenanceStats);

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let m = self.0.snapshot();
        let e = &mut encoder;
        for (name, help, value) in [
            (
                "osprey_store_dead_letters_evicted",
                "Dead letters evicted, oldest first, to stay within the count and byte caps.",
                m.dead_letters_evicted,
            ),
            (
                "osprey_store_dead_letters_expired",
                "Dead letters deleted for being older than their retention.",
                m.dead_letters_expired,
            ),
            (
                "osprey_store_dead_letters_truncated",
                "Dead letters stored with their payload cut to the per-payload cap.",
                m.dead_letters_truncated,
            ),
            (
                "osprey_store_dead_letters_repeated",
                "Rejected payloads not stored again: their source position was already stored.",
                m.dead_letters_repeated,
            ),
            (
                "osprey_store_seen_pruned",
                "Dedup rows pruned (applied longer ago than the dedup retention).",
                m.seen_pruned,
            ),
            (
                "osprey_store_windows_pruned",
                "Windows pruned (older than the retention, event time).",
                m.windows_pruned,
            ),
            (
                "osprey_store_alerts_pruned",
                "Alert events pruned (older than the retention, event time).",
                m.alerts_pruned,
            ),
            (
                "osprey_store_status_pruned",
                "Status history rows pruned (received longer ago than the retention).",
                m.status_pruned,
            ),
        ] {
            counter(e, name, help, value)?;
        }
        Ok(())
    }
}

/// The alert outputs' counters (`crate::alerts::outbox`).
#[derive(Debug)]
struct AlertsCollector(Arc<NotifierStats>);

impl Collector for AlertsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        use std::sync::atomic::Ordering::Relaxed;
        let e = &mut encoder;
        for (name, help, value) in [
            (
                "osprey_alert_notifications_sent",
                "Alert notifications an output (SNS, webhook) took.",
                &self.0.sent,
            ),
            (
                "osprey_alert_notifications_retried",
                "Failed notification attempts that will be retried.",
                &self.0.retried,
            ),
            (
                "osprey_alert_notifications_abandoned",
                "Notifications given up: a permanent refusal or too many failed attempts.",
                &self.0.abandoned,
            ),
        ] {
            counter(e, name, help, value.load(Relaxed))?;
        }
        Ok(())
    }
}

/// `osprey serve`'s series, from the pipeline's counters.
#[derive(Debug)]
struct PipelineCollector(IngestStats);

impl Collector for PipelineCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let stats = self.0.snapshot();
        let e = &mut encoder;
        counter(
            e,
            "osprey_messages_applied",
            "Messages applied: a new (device, seq) stored with its windows.",
            stats.applied,
        )?;
        counter(
            e,
            "osprey_messages_duplicate",
            "Messages dropped as duplicates of an applied (device, seq).",
            stats.duplicates,
        )?;
        counter(
            e,
            "osprey_dead_letters",
            "Payloads that did not decode or contradicted their origin, kept as dead letters.",
            stats.rejected,
        )?;
        counter(
            e,
            "osprey_mqtt_messages_received",
            "Publishes the MQTT source received (redeliveries included).",
            stats.mqtt_messages,
        )?;
        counter(
            e,
            "osprey_rules_messages_received",
            "Rules reports and rule documents the MQTT source took from the broker (redeliveries included).",
            stats.rules_messages,
        )?;
        counter(
            e,
            "osprey_rules_reports_refused",
            "Rules reports refused: too big, not a report, naming another device than their topic's, or an invalid rule.",
            stats.rules_refused,
        )?;
        if !stats.spoofed.is_empty() {
            let mut metric_encoder = e.encode_descriptor(
                "osprey_identity_mismatches",
                "Payloads dead-lettered because they named another device than their authenticated source (topic device or partition key), per claimed and source device; at most 1000 pairs, the rest as other/other.",
                None,
                ConstCounter::new(0u64).metric_type(),
            )?;
            for s in &stats.spoofed {
                let labels = [
                    ("claimed", s.claimed.as_str()),
                    ("source", s.source.as_str()),
                ];
                ConstCounter::new(s.count).encode(metric_encoder.encode_family(&labels)?)?;
            }
        }
        let shards: Vec<(&String, &ShardProgress)> = stats.shards.iter().collect();
        let millis = Unit::Other("milliseconds".to_owned());
        per_shard(
            e,
            &shards,
            (
                "osprey_kinesis_iterator_age",
                "How far the shard's last GetRecords answer was behind the stream's tip (MillisBehindLatest).",
                Some(&millis),
            ),
            |p| ConstGauge::new(p.millis_behind_latest),
        )?;
        per_shard(
            e,
            &shards,
            (
                "osprey_kinesis_records",
                "Records read from the shard.",
                None,
            ),
            |p| ConstCounter::new(p.records),
        )?;
        per_shard(
            e,
            &shards,
            (
                "osprey_kinesis_get_records_throttled",
                "GetRecords calls on the shard refused for throughput.",
                None,
            ),
            |p| ConstCounter::new(p.throttled),
        )?;
        per_shard(
            e,
            &shards,
            (
                "osprey_kinesis_expired_iterators",
                "Shard iterators that expired and were re-acquired from the checkpoint.",
                None,
            ),
            |p| ConstCounter::new(p.expired_iterators),
        )?;
        per_shard(
            e,
            &shards,
            (
                "osprey_kinesis_checkpoint_writes",
                "Checkpoints written for the shard (SQLite or DynamoDB).",
                None,
            ),
            |p| ConstCounter::new(p.checkpoints),
        )?;
        if !shards.is_empty() {
            let mut metric_encoder = e.encode_descriptor(
                "osprey_kinesis_shard_state",
                "1 for the state the shard's reader is in: waiting (for its parents), reading, finished, leased elsewhere.",
                None,
                ConstGauge::new(1i64).metric_type(),
            )?;
            for (id, progress) in &shards {
                let labels = [("shard", id.as_str()), ("state", progress.state)];
                ConstGauge::new(1i64).encode(metric_encoder.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// `osprey bridge`'s series, from its counters.
struct BridgeCollector(Box<dyn Fn() -> BridgeStats + Send + Sync>);

impl fmt::Debug for BridgeCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("BridgeCollector").finish_non_exhaustive()
    }
}

impl Collector for BridgeCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let s = (self.0)();
        let e = &mut encoder;
        let counters = [
            (
                "osprey_bridge_mqtt_messages_received",
                "MQTT publishes received.",
                s.received,
            ),
            (
                "osprey_bridge_records_put",
                "Records Kinesis accepted (and acknowledged on MQTT).",
                s.forwarded,
            ),
            (
                "osprey_bridge_put_records_calls",
                "PutRecords calls made.",
                s.put_calls,
            ),
            (
                "osprey_bridge_put_records_failed_calls",
                "PutRecords calls that failed as a whole.",
                s.failed_calls,
            ),
            (
                "osprey_bridge_put_retries",
                "PutRecords calls repeated after a backoff (some or all records refused).",
                s.retries,
            ),
            (
                "osprey_bridge_records_retried",
                "Records Kinesis refused in a batch and that were sent again.",
                s.retried,
            ),
            (
                "osprey_bridge_records_throttled",
                "Retried records refused for throughput (ProvisionedThroughputExceeded).",
                s.throttled,
            ),
            (
                "osprey_bridge_records_dropped",
                "Messages dropped because they can never fit a Kinesis record.",
                s.dropped,
            ),
            (
                "osprey_bridge_records_off_topic",
                "Publishes not forwarded: their topic is not an Osprey data topic, so no device to key them by.",
                s.off_topic,
            ),
            (
                "osprey_bridge_backpressure_waits",
                "Publishes that waited for buffer space; MQTT reading paused meanwhile.",
                s.held_back,
            ),
        ];
        for (name, help, value) in counters {
            counter(e, name, help, value)?;
        }
        single(
            e,
            "osprey_bridge_records_put",
            "Bytes (data + partition key) of the records Kinesis accepted.",
            Some(&Unit::Bytes),
            ConstCounter::new(s.bytes),
        )?;
        single(
            e,
            "osprey_bridge_backpressure",
            "Time publishes spent waiting for buffer space.",
            Some(&Unit::Seconds),
            ConstCounter::new(s.held_back_micros as f64 / 1e6),
        )?;
        bytes_gauge(
            e,
            "osprey_bridge_buffered",
            "Bytes held between MQTT and Kinesis now (queued, batched or being retried).",
            s.buffered_bytes,
        )?;
        single(
            e,
            "osprey_bridge_buffered_records",
            "Records held between MQTT and Kinesis now.",
            None,
            ConstGauge::new(i64::try_from(s.buffered_records).unwrap_or(i64::MAX)),
        )?;
        bytes_gauge(
            e,
            "osprey_bridge_buffered_max",
            "Most bytes held between MQTT and Kinesis at once since start.",
            s.max_buffered_bytes,
        )?;
        bytes_gauge(
            e,
            "osprey_bridge_buffer_budget",
            "The byte budget for what is held between MQTT and Kinesis (--max-buffered-bytes).",
            s.budget_bytes,
        )
    }
}

/// Parses an OpenMetrics/Prometheus text exposition into `(series, value)` pairs, where a
/// series is the name with its labels as written (`name{label="value"}`). Comment lines are
/// skipped. For tests and tools that read a scrape; an unparsable sample line is an error
/// naming it.
pub fn parse_samples(text: &str) -> Result<Vec<(String, f64)>, String> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // Labels may hold spaces inside quotes; the value follows the closing brace.
        let (series, rest) = match line.rfind('}') {
            Some(close) => (&line[..=close], &line[close + 1..]),
            None => line.split_once(' ').unwrap_or((line, "")),
        };
        let value = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("no value in metrics line {line:?}"))?;
        let value: f64 = value
            .parse()
            .map_err(|_| format!("bad value {value:?} in metrics line {line:?}"))?;
        samples.push((series.trim().to_owned(), value));
    }
    Ok(samples)
}

#[cfg(test)]
mod tests;
