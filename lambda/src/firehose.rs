//! The Kinesis Data Firehose record transformer: the AWS lake's rows from the telemetry
//! stream (`OSPREY_MODE=firehose-transform`).
//!
//! ```text
//!  Kinesis stream ─► Firehose ─► transform(event) ─► JSON rows ─► OpenX JSON → Parquet (Glue
//!                                 per record          table)  ─► S3 readings/date=…/hour=…/
//! ```
//!
//! Each record's data is one Osprey payload as the IoT rule forwards it (a message or a bundle)
//! or an IoT lifecycle event. It is read exactly as the aggregator reads it
//! ([`osprey_cloud::pipeline::prepare_all`] against the record's partition key, the
//! authenticated device), then:
//!
//! | record | result | data |
//! |---|---|---|
//! | telemetry with readings (a bundle: its telemetry messages) | `Ok` | one JSON object per reading, [`osprey_cloud::archive::rows`] |
//! | alert, status, lifecycle event, telemetry without readings | `Dropped` | empty |
//! | undecodable, or naming another device than its partition key | `ProcessingFailed` | the record as it came |
//!
//! Firehose writes `ProcessingFailed` records under the stream's error prefix
//! (`processing-failed/`), so nothing is lost silently; the reason is in the function's log
//! (and an identity mismatch counts in the `IdentityMismatches` metric, as in the aggregator).
//! `received` is the record's approximate arrival time, which is also the time Firehose
//! partitions by (`!{timestamp:…}`), so a row's `date=`/`hour=` is the hour of its `received`,
//! as in serve's archive.
//!
//! **Response size.** Lambda refuses a synchronous response above 6 MiB, and Firehose would
//! then retry the whole batch and finally fail every record of it. The rows are far bigger
//! than the compact CBOR they come from, so [`transform`] keeps the response within
//! [`RESPONSE_BUDGET`]: records are taken in order, and a record whose rows would not fit any
//! more is answered `ProcessingFailed` (logged with the reason) with its original data, for
//! which room is reserved from the start. At the agent's default payloads about 140 KB of
//! stream data fit, less than Firehose's smallest processor buffer (0.2 MB), so the template
//! (deploy/aws/template.yaml) invokes the transformer every 10 s, which keeps steady fleets of
//! up to about 3000 readings a second within it (ARCHITECTURE.md, "The AWS lake").

use osprey_cloud::archive::rows;
use osprey_cloud::clock::now_ms;
use osprey_cloud::pipeline::{prepare_all, Origin};
use osprey_cloud::source::presence;
use osprey_cloud::window::WindowSpec;
use serde::{Deserialize, Deserializer, Serialize};

use crate::metrics;

/// A data-transformation event of a delivery stream with a Kinesis stream source (the Firehose
/// developer guide, "Transform source data"); only the fields the transformer reads.
/// (Not `aws_lambda_events`' type: its millisecond timestamps go through seconds as a float
/// and come out a millisecond early for some values, and a `received` a millisecond off
/// would put a row in the wrong hour at an hour's edge.)
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirehoseEvent {
    /// `arn:aws:kinesis:…:stream/NAME` of the source stream.
    #[serde(default)]
    pub source_kinesis_stream_arn: Option<String>,
    /// The records, in stream order per shard.
    pub records: Vec<FirehoseRecord>,
}

/// One record of a [`FirehoseEvent`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FirehoseRecord {
    /// Firehose's id for the record; the answer must carry it.
    pub record_id: String,
    /// When the record arrived, epoch milliseconds; Firehose's `!{timestamp:…}` prefixes use
    /// it too.
    #[serde(deserialize_with = "millis")]
    pub approximate_arrival_timestamp: i64,
    /// The record's data, base64.
    pub data: String,
    /// Where it came from in the Kinesis stream.
    #[serde(default)]
    pub kinesis_record_metadata: Option<KinesisRecordMetadata>,
}

/// The Kinesis side of a [`FirehoseRecord`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KinesisRecordMetadata {
    /// The record's partition key: the device the IoT rule authenticated.
    #[serde(default)]
    pub partition_key: String,
    /// Its shard.
    #[serde(default)]
    pub shard_id: String,
    /// Its sequence number.
    #[serde(default)]
    pub sequence_number: String,
}

/// Epoch milliseconds, written as a whole number (or, to be lenient, with a fraction).
fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    // Whole numbers below 2^53 are exact as f64.
    f64::deserialize(d).map(|ms| ms.round() as i64)
}

/// Lambda's limit on a synchronous response (6 MiB).
pub const RESPONSE_LIMIT: usize = 6 * 1024 * 1024;

/// What [`transform`] lets its response grow to: the limit less room for the JSON around the
/// records.
pub const RESPONSE_BUDGET: usize = RESPONSE_LIMIT - 64 * 1024;

/// A record's result, as Firehose reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Outcome {
    /// Transformed: the data is the record's rows.
    Ok,
    /// Nothing to archive (not telemetry, or no readings).
    Dropped,
    /// Not archivable: Firehose writes the record under the error prefix.
    ProcessingFailed,
}

/// One record of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResponseRecord {
    /// The id Firehose gave the record.
    pub record_id: String,
    /// What became of it.
    pub result: Outcome,
    /// The transformed data, base64.
    pub data: String,
}

/// The answer to one transformation event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Response {
    /// One per record of the event, same ids.
    pub records: Vec<ResponseRecord>,
}

/// Counts of one invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Records answered `Ok`.
    pub ok: u64,
    /// Records answered `Dropped`.
    pub dropped: u64,
    /// Records answered `ProcessingFailed`.
    pub failed: u64,
    /// Rows in the `Ok` records.
    pub rows: u64,
}

/// What one record gave before the size check.
enum Read {
    Rows { json: Vec<u8>, rows: u64 },
    Dropped,
    Failed(String),
}

/// Transforms one Firehose event (within [`RESPONSE_BUDGET`]).
pub fn transform(event: &FirehoseEvent) -> (Response, Tally) {
    transform_within(event, RESPONSE_BUDGET)
}

/// [`transform`] with a response budget of `budget` bytes.
pub fn transform_within(event: &FirehoseEvent, budget: usize) -> (Response, Tally) {
    let stream = event
        .source_kinesis_stream_arn
        .as_deref()
        .and_then(|arn| arn.rsplit_once(":stream/"))
        .map_or("unknown", |(_, name)| name);
    let reads: Vec<Read> = event.records.iter().map(|r| read(r, stream)).collect();
    // Room for every record's fallback answer (its original data, failed) is kept from the
    // start, so the records that do not fit can still be answered.
    let fallback = |r: &FirehoseRecord| entry_size(r, r.data.len());
    let mut used: usize = event.records.iter().map(fallback).sum();
    let mut response = Response::default();
    let mut tally = Tally::default();
    for (record, read) in event.records.iter().zip(reads) {
        let record_id = record.record_id.clone();
        let (result, data) = match read {
            Read::Rows { json, rows } => {
                let size = entry_size(record, base64_len(json.len()));
                let extra = size.saturating_sub(fallback(record));
                if used + extra <= budget {
                    used += extra;
                    tally.rows += rows;
                    (Outcome::Ok, aws_smithy_types::base64::encode(&json))
                } else {
                    let reason = match size + 2 > budget {
                        true => format!(
                            "its {rows} rows ({} bytes of JSON) alone exceed the {budget}-byte \
                             response budget",
                            json.len()
                        ),
                        false => format!(
                            "its {rows} rows ({} bytes of JSON) do not fit in this \
                             invocation's response ({used} of {budget} bytes used); lower the \
                             processor's BufferSizeInMBs",
                            json.len()
                        ),
                    };
                    failed(&record_id, &reason);
                    (Outcome::ProcessingFailed, record.data.clone())
                }
            }
            Read::Dropped => (Outcome::Dropped, String::new()),
            Read::Failed(reason) => {
                failed(&record_id, &reason);
                (Outcome::ProcessingFailed, record.data.clone())
            }
        };
        match result {
            Outcome::Ok => tally.ok += 1,
            Outcome::Dropped => tally.dropped += 1,
            Outcome::ProcessingFailed => tally.failed += 1,
        }
        response.records.push(ResponseRecord {
            record_id,
            result,
            data,
        });
    }
    (response, tally)
}

/// Emits the invocation's counts as one EMF line.
pub fn emit(tally: &Tally) {
    metrics::emit(&metrics::values_line(
        now_ms(),
        &[
            (metrics::ARCHIVE_RECORDS_OK, tally.ok as f64, "Count"),
            (
                metrics::ARCHIVE_RECORDS_DROPPED,
                tally.dropped as f64,
                "Count",
            ),
            (
                metrics::ARCHIVE_RECORDS_FAILED,
                tally.failed as f64,
                "Count",
            ),
            (metrics::ARCHIVE_ROWS, tally.rows as f64, "Count"),
        ],
        &[],
    ));
}

fn failed(record_id: &str, reason: &str) {
    tracing::warn!(record_id, reason, "record not archived: ProcessingFailed");
}

/// Bytes of `{"recordId":"…","result":"ProcessingFailed","data":"…"},` with `data_len`
/// bytes of base64 (the longest result, so a bound for the others).
fn entry_size(record: &FirehoseRecord, data_len: usize) -> usize {
    r#"{"recordId":"","result":"ProcessingFailed","data":""},"#.len()
        + record.record_id.len()
        + data_len
}

fn base64_len(n: usize) -> usize {
    n.div_ceil(3) * 4
}

/// Reads one record: its rows, or why it has none.
fn read(record: &FirehoseRecord, stream: &str) -> Read {
    let Some(meta) = &record.kinesis_record_metadata else {
        return Read::Failed(
            "no kinesisRecordMetadata: the transformer reads a Kinesis stream source, whose \
             partition key is the authenticated device"
                .to_owned(),
        );
    };
    let origin = Origin::Kinesis {
        stream: stream.to_owned(),
        shard_id: meta.shard_id.clone(),
        sequence_number: meta.sequence_number.clone(),
        partition_key: meta.partition_key.clone(),
    };
    let payload = match aws_smithy_types::base64::decode(&record.data) {
        Ok(payload) => payload,
        Err(e) => return Read::Failed(format!("{origin}: data is not base64: {e}")),
    };
    let payload = payload.as_slice();
    let received_ms = record.approximate_arrival_timestamp;
    if presence::parse(payload, &origin, received_ms).is_some() {
        return Read::Dropped;
    }
    let messages = match prepare_all(payload, &origin, received_ms, &WindowSpec::default()) {
        Ok(messages) => messages,
        Err(rejection) => {
            if let Some(m) = &rejection.mismatch {
                metrics::emit_identity_mismatch(m, &origin.to_string(), received_ms);
            }
            return Read::Failed(format!("{origin}: {}", rejection.reason));
        }
    };
    let mut json = Vec::new();
    let mut count = 0u64;
    for row in messages.iter().flat_map(rows::of_message) {
        row.write_json(&mut json);
        count += 1;
    }
    match count {
        0 => Read::Dropped,
        rows => Read::Rows { json, rows },
    }
}

#[cfg(test)]
mod tests {
    use osprey_protocol::{Body, Envelope, Series, Status, StatusState, TelemetryBatch};

    use super::*;

    const T0: i64 = 1_767_225_600_000;

    fn telemetry(device: &str, seq: u64, readings: usize) -> Vec<u8> {
        let mut s = Series::new("motor", "temperature", "Cel");
        for r in 0..readings {
            s.push(T0 + r as i64 * 1000, 40.0 + r as f64 / 4.0);
        }
        Envelope::new(
            device,
            seq,
            Body::Telemetry(TelemetryBatch { series: vec![s] }),
        )
        .encode()
        .unwrap()
    }

    fn event(records: &[(&str, Vec<u8>)]) -> FirehoseEvent {
        let records: Vec<serde_json::Value> = records
            .iter()
            .enumerate()
            .map(|(i, (key, data))| {
                serde_json::json!({
                    "recordId": format!("r{i}"),
                    "approximateArrivalTimestamp": T0 + 5_234,
                    "data": aws_smithy_types::base64::encode(data),
                    "kinesisRecordMetadata": {
                        "shardId": "shardId-000000000000",
                        "partitionKey": key,
                        "sequenceNumber": format!("4959{i}"),
                        "subsequenceNumber": 0,
                        "approximateArrivalTimestamp": T0 + 5_000,
                    }
                })
            })
            .collect();
        serde_json::from_value(serde_json::json!({
            "invocationId": "inv-1",
            "sourceKinesisStreamArn": "arn:aws:kinesis:us-east-1:123456789012:stream/osprey-telemetry",
            "deliveryStreamArn": "arn:aws:firehose:us-east-1:123456789012:deliverystream/osprey",
            "region": "us-east-1",
            "records": records,
        }))
        .unwrap()
    }

    fn results(response: &Response) -> Vec<Outcome> {
        response.records.iter().map(|r| r.result).collect()
    }

    #[test]
    fn telemetry_is_ok_status_dropped_junk_and_impostors_failed() {
        let status = Envelope::new("pump-1", 2, Body::Status(Status::new(StatusState::Online)))
            .encode()
            .unwrap();
        let e = event(&[
            ("pump-1", telemetry("pump-1", 1, 3)),
            ("pump-1", status),
            ("pump-1", b"junk".to_vec()),
            ("pump-2", telemetry("pump-1", 3, 3)),
            ("pump-1", telemetry("pump-1", 4, 0)),
        ]);
        let (response, tally) = transform(&e);
        use Outcome::*;
        assert_eq!(
            results(&response),
            [Ok, Dropped, ProcessingFailed, ProcessingFailed, Dropped]
        );
        assert_eq!(
            tally,
            Tally {
                ok: 1,
                dropped: 2,
                failed: 2,
                rows: 3
            }
        );
        let ids: Vec<&str> = response
            .records
            .iter()
            .map(|r| r.record_id.as_str())
            .collect();
        assert_eq!(ids, ["r0", "r1", "r2", "r3", "r4"]);
        // A failed record keeps its data, for the error prefix.
        assert_eq!(
            aws_smithy_types::base64::decode(&response.records[2].data).unwrap(),
            b"junk"
        );
        let json = aws_smithy_types::base64::decode(&response.records[0].data).unwrap();
        let rows: Vec<serde_json::Value> = serde_json::Deserializer::from_slice(&json)
            .into_iter()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1]["time"], T0 + 1000);
        // Exactly the arrival millisecond (a float conversion would make it 5_233).
        assert_eq!(rows[1]["received"], T0 + 5_234);
        assert_eq!(rows[1]["value"], 40.25);
    }

    #[test]
    fn a_record_without_kinesis_metadata_is_failed() {
        let mut e = event(&[("pump-1", telemetry("pump-1", 1, 3))]);
        e.records[0].kinesis_record_metadata = None;
        assert_eq!(results(&transform(&e).0), [Outcome::ProcessingFailed]);
    }

    #[test]
    fn the_response_stays_within_the_budget() {
        let e = event(&[
            ("pump-1", telemetry("pump-1", 1, 50)),
            ("pump-1", telemetry("pump-1", 2, 50)),
            ("pump-1", telemetry("pump-1", 3, 50)),
        ]);
        let (full, _) = transform(&e);
        let size = serde_json::to_vec(&full).unwrap().len();
        // Room for about two records' rows: the third fails, keeping its data.
        let budget = size - 1000;
        let (cut, tally) = transform_within(&e, budget);
        use Outcome::*;
        assert_eq!(results(&cut), [Ok, Ok, ProcessingFailed]);
        assert_eq!(tally.rows, 100);
        assert!(serde_json::to_vec(&cut).unwrap().len() <= budget);
        // A record too big on its own fails, the others still go through.
        let e = event(&[
            ("pump-1", telemetry("pump-1", 1, 2)),
            ("pump-1", telemetry("pump-1", 2, 400)),
        ]);
        let (cut, _) = transform_within(&e, 8_000);
        assert_eq!(results(&cut), [Ok, ProcessingFailed]);
    }
}
