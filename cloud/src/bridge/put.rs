//! The Kinesis side of the bridge: gather queued records into batches and PutRecords them,
//! retrying only the records that failed, then acknowledge each delivered record on MQTT.
//!
//! A batch closes when it is full (500 records / 5 MiB), when no record has arrived for the
//! `gap`, or `linger` after its first record, whichever comes first: records go out at once
//! when traffic pauses, and big batches form when it does not.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::batch::{Batch, Pending};
use super::Counters;
use crate::backoff::Backoff;
use crate::connection::kinesis::describe_error;
use crate::connection::mqtt::Acker;
use crate::shutdown::Shutdown;

/// The per-record error code of a PutRecords entry refused for throughput.
const THROUGHPUT_EXCEEDED: &str = "ProvisionedThroughputExceededException";

/// How often the counters are logged while they change.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// What the writer task needs.
pub(super) struct Writer {
    pub client: Client,
    pub stream: String,
    pub acker: Acker,
    pub counters: Arc<Counters>,
    pub linger: Duration,
    pub gap: Duration,
}

enum Next {
    Record(Pending),
    Quiet,
    Closed,
}

/// Runs until `shutdown` or until the queue closes. Records still queued then are not
/// acknowledged, so the broker redelivers them to the next session.
pub(super) async fn run(w: Writer, mut queue_rx: mpsc::Receiver<Pending>, mut shutdown: Shutdown) {
    let mut carry: Option<Pending> = None;
    let mut logged = (Instant::now(), w.counters.snapshot());
    loop {
        let first = match carry.take() {
            Some(record) => record,
            None => tokio::select! {
                biased;
                _ = shutdown.wait() => break,
                record = queue_rx.recv() => match record {
                    Some(record) => record,
                    None => break,
                },
            },
        };
        let mut batch = Batch::default();
        batch.push(first);
        let deadline = Instant::now() + w.linger;
        while !batch.is_full() {
            let quiet_at = (Instant::now() + w.gap).min(deadline);
            let next = tokio::select! {
                record = queue_rx.recv() => record.map_or(Next::Closed, Next::Record),
                _ = tokio::time::sleep_until(quiet_at) => Next::Quiet,
            };
            match next {
                Next::Record(record) if batch.fits(&record) => batch.push(record),
                Next::Record(record) => {
                    carry = Some(record);
                    break;
                }
                Next::Quiet | Next::Closed => break,
            }
        }
        put_with_retry(&w, batch.take(), &mut shutdown).await;
        let now = w.counters.snapshot();
        if logged.0.elapsed() >= LOG_EVERY && now != logged.1 {
            log_counters(&now, "bridge counters");
            logged = (Instant::now(), now);
        }
    }
    let now = w.counters.snapshot();
    log_counters(&now, "bridge writer stopped");
}

/// Puts `records`, retrying failed ones with exponential backoff until all are in or
/// shutdown comes (the rest stay unacknowledged and come back from the broker).
async fn put_with_retry(w: &Writer, records: Vec<Pending>, shutdown: &mut Shutdown) {
    let mut pending = records;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    while !pending.is_empty() {
        let mut entries = Vec::with_capacity(pending.len());
        let mut sendable = Vec::with_capacity(pending.len());
        for record in pending {
            let entry = PutRecordsRequestEntry::builder()
                .data(Blob::new(record.data()))
                .partition_key(&record.key)
                .build();
            match entry {
                Ok(entry) => {
                    entries.push(entry);
                    sendable.push(record);
                }
                Err(e) => {
                    // Cannot happen (both required fields are set); if it did, the record
                    // could never be sent, so it is dropped rather than retried for ever.
                    tracing::error!(error = %e, "cannot build a PutRecords entry; dropping the record");
                    w.counters.dropped.fetch_add(1, Ordering::Relaxed);
                    w.acker.ack(&record.publish);
                }
            }
        }
        pending = sendable;
        if entries.is_empty() {
            break;
        }
        let call = w
            .client
            .put_records()
            .stream_name(&w.stream)
            .set_records(Some(entries))
            .send();
        match call.await {
            Ok(output) => {
                let results = output.records();
                let mut failed = Vec::new();
                let mut first_error = None;
                for (i, record) in pending.into_iter().enumerate() {
                    match results.get(i) {
                        Some(result) if result.error_code().is_none() => {
                            w.acker.ack(&record.publish);
                            w.counters.forwarded.fetch_add(1, Ordering::Relaxed);
                            w.counters
                                .bytes
                                .fetch_add(record.size() as u64, Ordering::Relaxed);
                        }
                        other => {
                            if other.and_then(|r| r.error_code()) == Some(THROUGHPUT_EXCEEDED) {
                                w.counters.throttled.fetch_add(1, Ordering::Relaxed);
                            }
                            if first_error.is_none() {
                                first_error = other.map(|r| {
                                    format!(
                                        "{}: {}",
                                        r.error_code().unwrap_or("missing result"),
                                        r.error_message().unwrap_or("")
                                    )
                                });
                            }
                            failed.push(record);
                        }
                    }
                }
                if !failed.is_empty() {
                    w.counters
                        .retried
                        .fetch_add(failed.len() as u64, Ordering::Relaxed);
                    tracing::warn!(
                        failed = failed.len(),
                        first_error = first_error.as_deref().unwrap_or("?"),
                        "some records were not accepted; retrying them"
                    );
                } else {
                    backoff.reset();
                }
                pending = failed;
            }
            Err(e) => {
                w.counters.failed_calls.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %describe_error(&e), records = pending.len(),
                    "PutRecords failed; retrying the batch");
            }
        }
        if pending.is_empty() {
            break;
        }
        let delay = backoff.next_delay();
        tokio::select! {
            biased;
            _ = shutdown.wait() => {
                tracing::warn!(records = pending.len(), "shutting down with records not yet in Kinesis; the broker will redeliver them");
                return;
            }
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// Logs the bridge's counters with `message`.
fn log_counters(now: &super::BridgeStats, message: &'static str) {
    tracing::info!(
        received = now.received,
        forwarded = now.forwarded,
        bytes = now.bytes,
        retried = now.retried,
        throttled = now.throttled,
        buffered_bytes = now.buffered_bytes,
        failed_calls = now.failed_calls,
        dropped = now.dropped,
        "{message}"
    );
}
