//! `osprey replay`: puts back into the Kinesis stream the device messages that AWS IoT's topic
//! rule failed to put there, from the objects its S3 error action wrote.
//!
//! ```text
//!  S3 bucket/prefix ─► each object: AWS IoT's error action message(s)
//!     {"ruleName", "topic", "clientId", "base64OriginalPayload", "failures": [...]}
//!        ─► judge: topic dt/osprey/<device>/<kind>, payload decoded, every message of it
//!           from <device> and of <kind> (pipeline::prepare_all against the topic)
//!             ├─ refused (names another device) / undecodable / not a data topic: counted,
//!             │  reported, never put; the object stays
//!             └─ PutRecords, partition key = <device> (≤ 500 records / 5 MiB a call, only the
//!                refused entries retried) ─► once all of an object's records are in: DELETE
//!                the object (with --delete)
//! ```
//!
//! **Trust.** The topic is what AWS IoT authorised (the thing policy binds a certificate to its
//! own topics), so it names the device; the payload is checked against it exactly as the
//! consumers check a record against its partition key, and a payload that names another
//! device is refused: replay must never let one device speak for another.
//!
//! **Idempotent.** A replayed message that did reach the stream after all (or a run repeated
//! before `--delete`) is dropped by the consumers' dedup on (device, epoch, seq); the lake may
//! hold it twice (ARCHITECTURE.md, "The AWS lake"). Order is not kept across a replay, and
//! need not be: windows are by event time.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;
use crate::bridge::batch::{MAX_BATCH_BYTES, MAX_RECORDS, MAX_RECORD_BYTES};
use crate::bridge::put::{outcomes, sort_round};
use crate::connection::kinesis::{describe_error, KinesisConfig};
use crate::pipeline::{prepare_all, Origin};
use crate::window::WindowSpec;

/// PutRecords rounds for one batch before the run gives up (refused entries are retried with
/// a backoff of 100 ms doubling to 5 s, so about a minute).
pub const MAX_ROUNDS: u32 = 16;

/// What to replay, from where, to where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayConfig {
    /// The bucket of the error action.
    pub bucket: String,
    /// Only objects under this key prefix.
    pub prefix: String,
    /// The stream, with its endpoint and region (S3 uses the same).
    pub kinesis: KinesisConfig,
    /// Read and judge, put and delete nothing.
    pub dry_run: bool,
    /// Delete each object once all its records are in the stream.
    pub delete: bool,
}

/// AWS IoT's error action message (the AWS IoT developer guide, "Error action message
/// format"); only the fields replay reads.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorMessage {
    /// The rule whose action failed.
    #[serde(default)]
    pub rule_name: String,
    /// The topic the device published on.
    pub topic: String,
    /// The publishing client.
    #[serde(default)]
    pub client_id: String,
    /// The payload, base64.
    pub base64_original_payload: String,
}

/// What replay does with one failed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Put it into the stream with this partition key (the topic's device).
    Put {
        /// Partition key: the device of the topic.
        key: String,
        /// The payload, unchanged.
        data: Vec<u8>,
    },
    /// Never put: a message of the payload names another device than the topic.
    Refused(String),
    /// Never put: not an Osprey payload, or not one that topic may carry.
    Undecodable(String),
    /// Never put: not an Osprey data topic (e.g. a lifecycle event's).
    OtherTopic(String),
}

/// Judges one error message.
pub fn judge(message: &ErrorMessage) -> Verdict {
    // Basic Ingest publishes go to $aws/rules/<rule>/<topic>; the device is in <topic>.
    let topic = message
        .topic
        .strip_prefix("$aws/rules/")
        .and_then(|rest| rest.split_once('/'))
        .map_or(message.topic.as_str(), |(_, topic)| topic);
    let Some((device, _)) = osprey_protocol::topic::parse_data(topic) else {
        return Verdict::OtherTopic(format!("topic {topic:?} is not an Osprey data topic"));
    };
    let data = match aws_smithy_types::base64::decode(&message.base64_original_payload) {
        Ok(data) => data,
        Err(e) => return Verdict::Undecodable(format!("base64OriginalPayload: {e}")),
    };
    if data.len() + device.len() > MAX_RECORD_BYTES {
        return Verdict::Undecodable(format!(
            "{} bytes: more than a Kinesis record holds",
            data.len()
        ));
    }
    let origin = Origin::Mqtt {
        topic: topic.to_owned(),
    };
    match prepare_all(&data, &origin, 0, &WindowSpec::default()) {
        Ok(_) => Verdict::Put {
            key: device.to_owned(),
            data,
        },
        Err(rejection) if rejection.mismatch.is_some() => Verdict::Refused(rejection.reason),
        Err(rejection) => Verdict::Undecodable(rejection.reason),
    }
}

/// The error messages of one object: one JSON object (what the error action writes), or
/// several concatenated.
pub fn parse_object(body: &[u8]) -> Result<Vec<ErrorMessage>, String> {
    let messages: Vec<ErrorMessage> = serde_json::Deserializer::from_slice(body)
        .into_iter()
        .collect::<Result<_, _>>()
        .map_err(|e| format!("not an AWS IoT error action message: {e}"))?;
    match messages.is_empty() {
        true => Err("empty object".to_owned()),
        false => Ok(messages),
    }
}

/// What a run did (so far).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ReplayReport {
    /// Objects read.
    pub objects: u64,
    /// Error messages in them.
    pub messages: u64,
    /// Records put into the stream (with `--dry-run`: that would have been).
    pub put: u64,
    /// Messages refused: the payload named another device than its topic.
    pub refused: u64,
    /// Messages that are not Osprey payloads their topic may carry.
    pub undecodable: u64,
    /// Messages of other topics (not replayed).
    pub other_topics: u64,
    /// Objects that are not error action messages.
    pub unreadable_objects: u64,
    /// Objects deleted (`--delete`).
    pub deleted: u64,
    /// PutRecords entries Kinesis refused and replay sent again.
    pub retried: u64,
}

impl ReplayReport {
    /// One line for progress output.
    pub fn line(&self) -> String {
        format!(
            "{} objects, {} messages: {} put, {} refused (another device), {} undecodable, \
             {} other topics, {} unreadable objects, {} objects deleted",
            self.objects,
            self.messages,
            self.put,
            self.refused,
            self.undecodable,
            self.other_topics,
            self.unreadable_objects,
            self.deleted
        )
    }
}

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The bucket cannot be listed.
    #[error("cannot list s3://{bucket}/{prefix}: {cause}")]
    List {
        /// Bucket.
        bucket: String,
        /// Prefix.
        prefix: String,
        /// What S3 said.
        cause: String,
    },
    /// An object cannot be read.
    #[error("cannot read s3://{bucket}/{key}: {cause}")]
    Get {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// What S3 said.
        cause: String,
    },
    /// An object cannot be deleted (its records are in the stream).
    #[error("cannot delete s3://{bucket}/{key} (its records are in the stream): {cause}")]
    Delete {
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// What S3 said.
        cause: String,
    },
    /// Records could not be put.
    #[error("cannot put records into stream {stream} at {endpoint}: {cause}")]
    Put {
        /// Stream.
        stream: String,
        /// Endpoint.
        endpoint: String,
        /// What Kinesis said.
        cause: String,
    },
}

/// A record waiting to be put.
struct Record {
    key: String,
    data: Vec<u8>,
}

impl Record {
    fn size(&self) -> usize {
        self.data.len() + self.key.len()
    }
}

/// The run's clients and the batch being gathered.
struct Run<'a> {
    cfg: &'a ReplayConfig,
    s3: aws_sdk_s3::Client,
    kinesis: aws_sdk_kinesis::Client,
    batch: Vec<Record>,
    batch_bytes: usize,
    /// Objects all of whose records are in `batch` or already put, to delete after the put.
    complete: Vec<String>,
    report: ReplayReport,
}

/// Replays every object under the prefix; `progress` is called after each object.
pub async fn run(
    cfg: &ReplayConfig,
    progress: &mut dyn FnMut(&ReplayReport),
) -> Result<ReplayReport, ReplayError> {
    let mut run = Run {
        cfg,
        s3: cfg.kinesis.s3_client().await,
        kinesis: cfg.kinesis.client().await,
        batch: Vec::new(),
        batch_bytes: 0,
        complete: Vec::new(),
        report: ReplayReport::default(),
    };
    let mut pages = run
        .s3
        .list_objects_v2()
        .bucket(&cfg.bucket)
        .prefix(&cfg.prefix)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| ReplayError::List {
            bucket: cfg.bucket.clone(),
            prefix: cfg.prefix.clone(),
            cause: describe_error(&e),
        })?;
        for object in page.contents() {
            let Some(key) = object.key() else { continue };
            run.object(key).await?;
            progress(&run.report);
        }
    }
    run.put_batch().await?;
    Ok(run.report)
}

impl Run<'_> {
    /// Reads, judges and queues one object.
    async fn object(&mut self, key: &str) -> Result<(), ReplayError> {
        let body = self.get(key).await?;
        self.report.objects += 1;
        let messages = match parse_object(&body) {
            Ok(messages) => messages,
            Err(reason) => {
                self.report.unreadable_objects += 1;
                tracing::warn!(key, reason, "object kept: unreadable");
                return Ok(());
            }
        };
        let mut clean = true;
        for message in &messages {
            self.report.messages += 1;
            let verdict = judge(message);
            let (counter, reason) = match verdict {
                Verdict::Put { key, data } => {
                    self.push(Record { key, data }).await?;
                    continue;
                }
                Verdict::Refused(reason) => (&mut self.report.refused, reason),
                Verdict::Undecodable(reason) => (&mut self.report.undecodable, reason),
                Verdict::OtherTopic(reason) => (&mut self.report.other_topics, reason),
            };
            *counter += 1;
            clean = false;
            tracing::warn!(key, topic = %message.topic, client_id = %message.client_id,
                rule = %message.rule_name, reason, "message not replayed");
        }
        if clean {
            self.complete.push(key.to_owned());
        }
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>, ReplayError> {
        let err = |cause: String| ReplayError::Get {
            bucket: self.cfg.bucket.clone(),
            key: key.to_owned(),
            cause,
        };
        let out = self
            .s3
            .get_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| err(describe_error(&e)))?;
        let bytes = out.body.collect().await.map_err(|e| err(e.to_string()))?;
        Ok(bytes.into_bytes().to_vec())
    }

    /// Adds a record, putting the batch first when it would not fit.
    async fn push(&mut self, record: Record) -> Result<(), ReplayError> {
        if !self.batch.is_empty()
            && (self.batch.len() >= MAX_RECORDS
                || self.batch_bytes + record.size() > MAX_BATCH_BYTES)
        {
            self.put_batch().await?;
        }
        self.batch_bytes += record.size();
        self.batch.push(record);
        Ok(())
    }

    /// Puts the batch, retrying refused entries; then the objects completed before it began
    /// are safe to delete (an object still being read is not yet in `complete`).
    async fn put_batch(&mut self) -> Result<(), ReplayError> {
        let records = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let done = std::mem::take(&mut self.complete);
        if !records.is_empty() {
            let count = records.len() as u64;
            if !self.cfg.dry_run {
                self.put_with_retry(records).await?;
            }
            self.report.put += count;
        }
        for key in done {
            self.delete(&key).await?;
        }
        Ok(())
    }

    async fn put_with_retry(&mut self, records: Vec<Record>) -> Result<(), ReplayError> {
        let mut pending = records;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        let err = |cause: String| ReplayError::Put {
            stream: self.cfg.kinesis.stream.clone(),
            endpoint: self.cfg.kinesis.endpoint(),
            cause,
        };
        for round in 1..=MAX_ROUNDS {
            let mut entries = Vec::with_capacity(pending.len());
            for r in &pending {
                let entry = PutRecordsRequestEntry::builder()
                    .data(Blob::new(r.data.clone()))
                    .partition_key(&r.key)
                    .build()
                    .map_err(|e| err(e.to_string()))?;
                entries.push(entry);
            }
            let answer = self
                .kinesis
                .put_records()
                .stream_name(&self.cfg.kinesis.stream)
                .set_records(Some(entries))
                .send()
                .await;
            let (retry, delay, first_error) = match answer {
                Ok(output) => {
                    let round = sort_round(pending, &outcomes(&output), &mut backoff);
                    (round.retry, round.delay, round.first_error)
                }
                // A whole call refused for a reason retrying cannot fix ends the run at once.
                Err(e) if is_permanent(&e) => return Err(err(describe_error(&e))),
                Err(e) => {
                    let delay = Some(backoff.next_delay());
                    (pending, delay, Some(describe_error(&e)))
                }
            };
            pending = retry;
            let Some(delay) = delay else { return Ok(()) };
            let first_error = first_error.unwrap_or_default();
            if round == MAX_ROUNDS {
                return Err(err(format!(
                    "{} records still not accepted after {MAX_ROUNDS} tries; last error: \
                     {first_error}",
                    pending.len()
                )));
            }
            self.report.retried += pending.len() as u64;
            tracing::warn!(
                records = pending.len(),
                first_error,
                "retrying records Kinesis did not accept"
            );
            tokio::time::sleep(delay).await;
        }
        Ok(())
    }

    async fn delete(&mut self, key: &str) -> Result<(), ReplayError> {
        if self.cfg.dry_run || !self.cfg.delete {
            return Ok(());
        }
        self.s3
            .delete_object()
            .bucket(&self.cfg.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| ReplayError::Delete {
                bucket: self.cfg.bucket.clone(),
                key: key.to_owned(),
                cause: describe_error(&e),
            })?;
        self.report.deleted += 1;
        Ok(())
    }
}

/// Whether a failed PutRecords call cannot succeed by trying again (no such stream, no
/// permission, bad request).
fn is_permanent<R>(
    e: &aws_sdk_kinesis::error::SdkError<
        aws_sdk_kinesis::operation::put_records::PutRecordsError,
        R,
    >,
) -> bool {
    use aws_sdk_kinesis::operation::put_records::PutRecordsError as E;
    matches!(
        e.as_service_error(),
        Some(
            E::ResourceNotFoundException(_)
                | E::AccessDeniedException(_)
                | E::InvalidArgumentException(_)
                | E::KmsAccessDeniedException(_)
                | E::KmsDisabledException(_)
                | E::KmsNotFoundException(_)
        )
    )
}

/// A progress printer for long runs: a line on standard error at most every `every`.
pub fn progress_printer(every: Duration) -> impl FnMut(&ReplayReport) {
    let mut last = Instant::now();
    move |report| {
        if last.elapsed() >= every {
            last = Instant::now();
            eprintln!("osprey replay: {}", report.line());
        }
    }
}

#[cfg(test)]
mod tests {
    use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};

    use super::*;

    fn payload(device: &str) -> Vec<u8> {
        let mut s = Series::new("motor", "temperature", "Cel");
        s.push(1_767_225_600_000, 40.0);
        Envelope::new(
            device,
            1,
            Body::Telemetry(TelemetryBatch { series: vec![s] }),
        )
        .encode()
        .unwrap()
    }

    fn message(topic: &str, payload: &[u8]) -> ErrorMessage {
        let json = serde_json::json!({
            "ruleName": "osprey_telemetry",
            "topic": topic,
            "cloudwatchTraceId": "7e146a2c-95b5-6caf-98b9-50e3969734c7",
            "clientId": "pump-1",
            "base64OriginalPayload": aws_smithy_types::base64::encode(payload),
            "failures": [{"failedAction": "KinesisAction", "failedResource": "osprey-telemetry",
                          "errorMessage": "Failed to put record"}]
        });
        parse_object(json.to_string().as_bytes()).unwrap().remove(0)
    }

    #[test]
    fn a_device_payload_on_its_own_topic_is_put_keyed_by_the_topic() {
        let p = payload("pump-1");
        assert_eq!(
            judge(&message("dt/osprey/pump-1/telemetry", &p)),
            Verdict::Put {
                key: "pump-1".into(),
                data: p.clone()
            }
        );
        // Basic Ingest's reserved prefix does not hide the device.
        assert!(matches!(
            judge(&message(
                "$aws/rules/osprey_telemetry/dt/osprey/pump-1/telemetry",
                &p
            )),
            Verdict::Put { .. }
        ));
    }

    #[test]
    fn impostors_junk_wrong_kinds_and_other_topics_are_not_put() {
        let p = payload("pump-2");
        assert!(matches!(
            judge(&message("dt/osprey/pump-1/telemetry", &p)),
            Verdict::Refused(r) if r.contains("pump-2")
        ));
        assert!(matches!(
            judge(&message("dt/osprey/pump-2/alerts", &p)),
            Verdict::Undecodable(_)
        ));
        assert!(matches!(
            judge(&message("dt/osprey/pump-1/telemetry", b"junk")),
            Verdict::Undecodable(_)
        ));
        assert!(matches!(
            judge(&message("$aws/events/presence/connected/pump-1", b"{}")),
            Verdict::OtherTopic(_)
        ));
        let mut bad = message("dt/osprey/pump-1/telemetry", &p);
        bad.base64_original_payload = "***".into();
        assert!(matches!(judge(&bad), Verdict::Undecodable(_)));
    }

    #[test]
    fn objects_that_are_not_error_messages_are_unreadable() {
        assert!(parse_object(b"").is_err());
        assert!(parse_object(b"\x00\x01junk").is_err());
        assert!(parse_object(br#"{"topic": "x"}"#).is_err());
        let two = format!(
            "{}\n{}",
            serde_json::json!({"topic": "a", "base64OriginalPayload": ""}),
            serde_json::json!({"topic": "b", "base64OriginalPayload": ""})
        );
        assert_eq!(parse_object(two.as_bytes()).unwrap().len(), 2);
    }
}
