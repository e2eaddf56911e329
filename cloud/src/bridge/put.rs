//! The Kinesis side of the bridge: gather queued records into batches and PutRecords them,
//! retrying only the records that failed, then acknowledge each delivered record on MQTT.
//!
//! A batch closes when it is full (500 records / 5 MiB), when no record has arrived for the
//! `gap`, or `linger` after its first record, whichever comes first: records go out at once
//! when traffic pauses, and big batches form when it does not.
//!
//! [`sort_round`] (which records of an answer to send again) serves `osprey replay` too.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::operation::put_records::PutRecordsOutput;
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
        w.counters.put_calls.fetch_add(1, Ordering::Relaxed);
        let round = match call.await {
            Ok(output) => sort_round(pending, &outcomes(&output), &mut backoff),
            Err(e) => {
                w.counters.failed_calls.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %describe_error(&e), records = pending.len(),
                    "PutRecords failed; retrying the batch");
                Round {
                    accepted: Vec::new(),
                    throttled: 0,
                    first_error: None,
                    delay: (!pending.is_empty()).then(|| backoff.next_delay()),
                    retry: pending,
                }
            }
        };
        for record in &round.accepted {
            w.acker.ack(&record.publish);
            w.counters.forwarded.fetch_add(1, Ordering::Relaxed);
            w.counters
                .bytes
                .fetch_add(record.size() as u64, Ordering::Relaxed);
        }
        // Dropping the accepted records gives their budget back.
        drop(round.accepted);
        w.counters
            .throttled
            .fetch_add(round.throttled, Ordering::Relaxed);
        pending = round.retry;
        let Some(delay) = round.delay else { break };
        if let Some(first_error) = &round.first_error {
            w.counters
                .retried
                .fetch_add(pending.len() as u64, Ordering::Relaxed);
            tracing::warn!(failed = pending.len(), first_error = %first_error,
                "some records were not accepted; retrying them");
        }
        tokio::select! {
            biased;
            _ = shutdown.wait() => {
                tracing::warn!(records = pending.len(), "shutting down with records not yet in Kinesis; the broker will redeliver them");
                return;
            }
            _ = tokio::time::sleep(delay) => {}
        }
        w.counters.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// One entry of a PutRecords answer: accepted, or refused with `(error code, message)`.
pub(crate) type EntryOutcome<'a> = Result<(), (&'a str, &'a str)>;

/// The entries of a PutRecords answer, in the order sent.
pub(crate) fn outcomes(output: &PutRecordsOutput) -> Vec<EntryOutcome<'_>> {
    output
        .records()
        .iter()
        .map(|r| match r.error_code() {
            None => Ok(()),
            Some(code) => Err((code, r.error_message().unwrap_or(""))),
        })
        .collect()
}

/// What one PutRecords answer means for the records sent.
#[derive(Debug, PartialEq)]
pub(crate) struct Round<T> {
    /// Records Kinesis accepted, in the order sent.
    pub accepted: Vec<T>,
    /// Records to send again, in the order sent: only the refused ones.
    pub retry: Vec<T>,
    /// Of the refused records, those refused for throughput.
    pub throttled: u64,
    /// The first refusal, `code: message`, for the log.
    pub first_error: Option<String>,
    /// How long to wait before sending `retry`; `None` when nothing is left.
    pub delay: Option<Duration>,
}

/// Sorts `sent` by the answer's `outcomes` (one per record, in order; a record with no entry
/// in a short answer counts as refused). Only refused records are retried, in their original
/// order, after the next `backoff` delay; a fully accepted round resets the backoff.
pub(crate) fn sort_round<T>(
    sent: Vec<T>,
    outcomes: &[EntryOutcome<'_>],
    backoff: &mut Backoff,
) -> Round<T> {
    let mut round = Round {
        accepted: Vec::new(),
        retry: Vec::new(),
        throttled: 0,
        first_error: None,
        delay: None,
    };
    for (i, record) in sent.into_iter().enumerate() {
        match outcomes.get(i) {
            Some(Ok(())) => round.accepted.push(record),
            refused => {
                let (code, message) = match refused {
                    Some(Err(refusal)) => *refusal,
                    _ => ("missing result", ""),
                };
                if code == THROUGHPUT_EXCEEDED {
                    round.throttled += 1;
                }
                round
                    .first_error
                    .get_or_insert_with(|| format!("{code}: {message}"));
                round.retry.push(record);
            }
        }
    }
    if round.retry.is_empty() {
        backoff.reset();
    } else {
        round.delay = Some(backoff.next_delay());
    }
    round
}

/// Logs the bridge's counters with `message`.
fn log_counters(now: &super::BridgeStats, message: &'static str) {
    tracing::info!(
        received = now.received,
        forwarded = now.forwarded,
        bytes = now.bytes,
        put_calls = now.put_calls,
        retried = now.retried,
        throttled = now.throttled,
        buffered_bytes = now.buffered_bytes,
        max_buffered_bytes = now.max_buffered_bytes,
        held_back = now.held_back,
        failed_calls = now.failed_calls,
        dropped = now.dropped,
        "{message}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const THROTTLED: EntryOutcome<'static> = Err((THROUGHPUT_EXCEEDED, "Rate exceeded for shard"));
    const INTERNAL: EntryOutcome<'static> = Err(("InternalFailure", "try again"));

    #[test]
    fn only_refused_records_are_retried_in_order_with_growing_backoff() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let round = sort_round(
            vec!["a", "b", "c", "d", "e"],
            &[Ok(()), THROTTLED, Ok(()), INTERNAL, THROTTLED],
            &mut backoff,
        );
        assert_eq!(round.accepted, ["a", "c"]);
        assert_eq!(round.retry, ["b", "d", "e"]);
        assert_eq!(round.throttled, 2);
        assert_eq!(
            round.first_error.as_deref(),
            Some("ProvisionedThroughputExceededException: Rate exceeded for shard")
        );
        assert_eq!(round.delay, Some(Duration::from_millis(100)));

        // The resubmission holds only b, d, e; d is refused again: it alone goes once more,
        // after a longer wait.
        let round = sort_round(round.retry, &[Ok(()), INTERNAL, Ok(())], &mut backoff);
        assert_eq!(round.accepted, ["b", "e"]);
        assert_eq!(round.retry, ["d"]);
        assert_eq!(round.throttled, 0);
        assert_eq!(round.delay, Some(Duration::from_millis(200)));

        let round = sort_round(round.retry, &[Ok(())], &mut backoff);
        assert_eq!(round.accepted, ["d"]);
        assert!(round.retry.is_empty());
        assert_eq!(round.delay, None);
        // Success resets the backoff for the next batch.
        assert_eq!(backoff.next_delay(), Duration::from_millis(100));
    }

    #[test]
    fn records_missing_from_a_short_answer_are_retried() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let round = sort_round(vec![1, 2, 3], &[Ok(())], &mut backoff);
        assert_eq!(round.accepted, [1]);
        assert_eq!(round.retry, [2, 3]);
        assert_eq!(round.first_error.as_deref(), Some("missing result: "));
        assert!(round.delay.is_some());
    }
}
