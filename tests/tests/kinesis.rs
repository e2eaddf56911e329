//! The Kinesis consumer (`osprey serve --source kinesis`) against real Kinesis APIs: moto's
//! server, and kinesalite when tests/run.sh started it.
//!
//! One scenario per endpoint: a 4-shard stream; messages from 8 devices; the consumer killed
//! (SIGKILL, no chance to checkpoint) mid-stream and restarted on the same database; a shard
//! split while producing; an undecodable record and AWS IoT lifecycle events on the stream.
//! The API must then show exactly what was produced (every reading once per device, the
//! windows adding up to it), the bad record as a dead letter, the presence events as device
//! status, the split parent finished and its children read. Before the restart, `GET /metrics`
//! must show an iterator-age gauge per shard and count exactly the records produced.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use aws_sdk_kinesis::Client;
use osprey_cloud::metrics::parse_samples;
use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
use osprey_tests::{bin, http_get, http_get_json, moto_endpoint, unique_name, wait_until, Proc};
use serde_json::Value;

const DEVICES: usize = 8;
/// Readings per message.
const READINGS: usize = 10;
/// Base of the event times (2026-01-01T00:00:00Z), so windows are deterministic.
const T0: i64 = 1_767_225_600_000;

fn device(i: usize) -> String {
    format!("kin-dev-{i}")
}

/// Message `seq` of `device`: READINGS readings one second apart, values from seq.
fn message(device: &str, seq: u64) -> Vec<u8> {
    let mut series = Series::new("motor", "temperature", "Cel");
    for r in 0..READINGS as i64 {
        let t = T0 + (seq as i64 * READINGS as i64 + r) * 1000;
        series.push(t, (seq as f64) + r as f64 / 10.0);
    }
    let batch = TelemetryBatch {
        series: vec![series],
    };
    Envelope::new(device, seq, Body::Telemetry(batch))
        .encode()
        .unwrap()
}

struct Kinesis {
    rt: tokio::runtime::Runtime,
    client: Client,
    stream: String,
}

impl Kinesis {
    fn new(endpoint: &str, shards: i32) -> Kinesis {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = rt.block_on(async {
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .endpoint_url(endpoint)
                .load()
                .await;
            Client::new(&config)
        });
        let stream = unique_name("kin");
        rt.block_on(async {
            client
                .create_stream()
                .stream_name(&stream)
                .shard_count(shards)
                .send()
                .await
                .unwrap_or_else(|e| panic!("cannot create stream at {endpoint}: {e:?}"));
        });
        let k = Kinesis { rt, client, stream };
        k.wait_active();
        k
    }

    fn wait_active(&self) {
        let active = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            self.rt.block_on(async {
                let d = self
                    .client
                    .describe_stream_summary()
                    .stream_name(&self.stream)
                    .send()
                    .await
                    .ok()?;
                let status = d.stream_description_summary()?.stream_status().clone();
                (status == aws_sdk_kinesis::types::StreamStatus::Active).then_some(())
            })
        });
        assert!(
            active.is_some(),
            "stream {} never became ACTIVE",
            self.stream
        );
    }

    /// Puts `(partition key, data)` records, retrying refused ones.
    fn put(&self, records: Vec<(String, Vec<u8>)>) {
        for chunk in records.chunks(200) {
            let mut pending: Vec<(String, Vec<u8>)> = chunk.to_vec();
            for _ in 0..50 {
                if pending.is_empty() {
                    break;
                }
                let entries = pending
                    .iter()
                    .map(|(key, data)| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(key)
                            .data(Blob::new(data.clone()))
                            .build()
                            .unwrap()
                    })
                    .collect::<Vec<_>>();
                let out = self.rt.block_on(
                    self.client
                        .put_records()
                        .stream_name(&self.stream)
                        .set_records(Some(entries))
                        .send(),
                );
                match out {
                    Ok(out) => {
                        pending = pending
                            .into_iter()
                            .zip(out.records())
                            .filter(|(_, r)| r.error_code().is_some())
                            .map(|(p, _)| p)
                            .collect();
                    }
                    Err(e) => eprintln!("PutRecords failed, retrying: {e:?}"),
                }
                if !pending.is_empty() {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            assert!(pending.is_empty(), "records never accepted");
        }
    }

    /// Puts messages `seqs` of every device.
    fn produce(&self, seqs: std::ops::Range<u64>) {
        let mut records = Vec::new();
        for seq in seqs {
            for i in 0..DEVICES {
                records.push((device(i), message(&device(i), seq)));
            }
        }
        self.put(records);
    }

    fn open_shards(&self) -> Vec<(String, String, String)> {
        self.rt.block_on(async {
            let out = self
                .client
                .list_shards()
                .stream_name(&self.stream)
                .send()
                .await
                .unwrap();
            out.shards()
                .iter()
                .filter(|s| {
                    s.sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_none()
                })
                .map(|s| {
                    let range = s.hash_key_range().unwrap();
                    (
                        s.shard_id().to_owned(),
                        range.starting_hash_key().to_owned(),
                        range.ending_hash_key().to_owned(),
                    )
                })
                .collect()
        })
    }

    /// Splits open shard `id` at the middle of its hash range.
    fn split(&self, id: &str) {
        let (_, start, end) = self
            .open_shards()
            .into_iter()
            .find(|(open, _, _)| open == id)
            .unwrap_or_else(|| panic!("{id} is not an open shard"));
        let (start, end) = (hash_key(&start), hash_key(&end));
        let middle = start + (end - start) / 2;
        self.rt
            .block_on(
                self.client
                    .split_shard()
                    .stream_name(&self.stream)
                    .shard_to_split(id)
                    .new_starting_hash_key(middle.to_string())
                    .send(),
            )
            .unwrap_or_else(|e| panic!("SplitShard failed: {e:?}"));
        self.wait_active();
    }
}

fn start_serve(db: &Path, endpoint: &str, stream: &str, extra: &[&str]) -> (Proc, String) {
    let mut serve = Proc::spawn(
        Command::new(bin("osprey"))
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0", "--source", "kinesis"])
            .args(["--stream", stream, "--endpoint-url", endpoint])
            .args(extra),
    );
    let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(60));
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    (serve, url)
}

/// Per device: (readings per /api/devices, sum of tumbling window counts).
fn observed(api: &str) -> BTreeMap<String, (u64, u64)> {
    let mut out = BTreeMap::new();
    let devices = http_get_json(&format!("{api}/api/devices"));
    for d in devices.as_array().unwrap() {
        let name = d["device"].as_str().unwrap().to_owned();
        if !name.starts_with("kin-dev-") {
            continue;
        }
        let windows = http_get_json(&format!("{api}/api/windows?device={name}&limit=10000"));
        let counted: u64 = windows
            .as_array()
            .unwrap()
            .iter()
            // Other window kinds (hopping, session) count the same readings again.
            .filter(|w| w.get("kind").is_none_or(|k| k == "tumbling"))
            .map(|w| w["count"].as_u64().unwrap())
            .sum();
        out.insert(name, (d["readings"].as_u64().unwrap(), counted));
    }
    out
}

fn expected(messages: u64) -> BTreeMap<String, (u64, u64)> {
    let readings = messages * READINGS as u64;
    (0..DEVICES)
        .map(|i| (device(i), (readings, readings)))
        .collect()
}

fn wait_for(api: &str, messages: u64, serve: &Proc) {
    let want = expected(messages);
    let matched = wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
        (observed(api) == want).then_some(())
    });
    if matched.is_none() {
        panic!(
            "API never showed {messages} messages per device\nexpected: {want:?}\nobserved: {:?}\nstats: {}\nserve logs:\n{}",
            observed(api),
            http_get_json(&format!("{api}/api/stats")),
            serve.logs()
        );
    }
}

fn stats(api: &str) -> Value {
    http_get_json(&format!("{api}/api/stats"))
}

/// `GET /metrics` has an iterator-age gauge and a checkpoint counter for each of `shards`, and
/// its consumed-record and applied-message counters equal `produced` (the first consumer
/// process, before any restart: nothing was read twice).
fn assert_metrics_count<'a>(api: &str, shards: impl Iterator<Item = &'a String>, produced: u64) {
    let response = http_get(&format!("{api}/metrics"));
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        response.header("content-type"),
        Some(osprey_cloud::metrics::CONTENT_TYPE)
    );
    let text = response.text();
    let samples: BTreeMap<String, f64> = parse_samples(&text).unwrap().into_iter().collect();
    let mut consumed = 0.0;
    for shard in shards {
        let series = |name: &str| format!("{name}{{shard=\"{shard}\"}}");
        let age = samples.get(&series("osprey_kinesis_iterator_age_milliseconds"));
        assert!(
            age.is_some_and(|a| *a >= 0.0),
            "no iterator age for {shard}:\n{text}"
        );
        let records = samples[&series("osprey_kinesis_records_total")];
        if records > 0.0 {
            assert!(
                samples[&series("osprey_kinesis_checkpoint_writes_total")] > 0.0,
                "{shard} read records but wrote no checkpoint:\n{text}"
            );
        }
        consumed += records;
    }
    assert_eq!(consumed, produced as f64, "records consumed:\n{text}");
    assert_eq!(
        samples["osprey_messages_applied_total"], produced as f64,
        "messages applied:\n{text}"
    );
    assert_eq!(samples["osprey_messages_duplicate_total"], 0.0, "{text}");
}

/// How an endpoint implements SplitShard.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resharding {
    /// As AWS: the parent is closed, its last GetRecords has no next iterator, new records go
    /// to the children (kinesalite).
    Faithful,
    /// moto 5.2: after a split, PutRecords still routes to the first shard whose hash range
    /// matches, which is the closed parent (`Stream.get_shard_for_key` ignores `is_open`), and
    /// the parent's iterators never end. The consumer must then keep reading the parent and
    /// hold the children back: nothing is lost, the children stay `waiting`.
    ParentKeepsRecords,
}

/// The whole scenario against one endpoint.
fn scenario(endpoint: &str, resharding: Resharding, extra: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("osprey.db");
    let kinesis = Kinesis::new(endpoint, 4);
    assert_eq!(kinesis.open_shards().len(), 4);

    // 1. Four shards, read from the start.
    let (mut serve, api) = start_serve(&db, endpoint, &kinesis.stream, extra);
    kinesis.produce(0..40);
    wait_for(&api, 40, &serve);
    let shards = stats(&api)["pipeline"]["shards"].clone();
    assert_eq!(shards.as_object().unwrap().len(), 4, "{shards}");
    for (id, s) in shards.as_object().unwrap() {
        assert_eq!(s["state"], "reading", "{id}: {s}");
        assert!(s["millis_behind_latest"].is_i64(), "{id}: {s}");
    }
    assert_metrics_count(
        &api,
        shards.as_object().unwrap().keys(),
        40 * DEVICES as u64,
    );

    // 2. Killed mid-stream (no graceful checkpoint), more produced while down, restarted.
    kinesis.produce(40..60);
    serve.kill();
    kinesis.produce(60..80);
    let (serve, api) = start_serve(&db, endpoint, &kinesis.stream, extra);
    wait_for(&api, 80, &serve);

    // 3. The busiest shard split while producing: its parent is read to its end, then its
    //    children.
    let parent = stats(&api)["pipeline"]["shards"]
        .as_object()
        .unwrap()
        .iter()
        .max_by_key(|(_, s)| s["records"].as_u64().unwrap())
        .map(|(id, _)| id.clone())
        .unwrap();
    std::thread::scope(|scope| {
        let producer = scope.spawn(|| kinesis.produce(80..140));
        std::thread::sleep(Duration::from_millis(300));
        kinesis.split(&parent);
        producer.join().unwrap();
    });
    kinesis.produce(140..160);
    let split_read = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        let shards = stats(&api)["pipeline"]["shards"].clone();
        let shards = shards.as_object()?;
        // The children are the two shards created by the split (ids after the original four).
        let children: Vec<&Value> = shards
            .iter()
            .filter(|(id, _)| id.as_str() > "shardId-000000000003")
            .map(|(_, s)| s)
            .collect();
        let children_records: u64 = children
            .iter()
            .map(|s| s["records"].as_u64().unwrap_or(0))
            .sum();
        let done = match resharding {
            Resharding::Faithful => shards[&parent]["state"] == "finished" && children_records > 0,
            Resharding::ParentKeepsRecords => {
                shards[&parent]["state"] == "reading"
                    && children.iter().all(|s| s["state"] == "waiting")
            }
        };
        (shards.len() == 6 && children.len() == 2 && done).then_some(())
    });
    assert!(
        split_read.is_some(),
        "after splitting {parent}, the shards never reached the expected lineage state: {}\n{}",
        stats(&api),
        serve.logs()
    );
    wait_for(&api, 160, &serve);

    // 4. A record that does not decode, and lifecycle events: neither blocks its shard.
    kinesis.put(vec![
        ("kin-dev-0".to_owned(), b"definitely not cbor".to_vec()),
        (
            "kin-dev-1".to_owned(),
            br#"{"clientId":"kin-dev-1","timestamp":1767225600000,"eventType":"connected","sessionIdentifier":"a4666d2a7d844ae4ac5d7b38c9cb7967","principalIdentifier":"12345678901234567890123456789012","ipAddress":"192.0.2.0","versionNumber":0}"#.to_vec(),
        ),
        (
            "kin-dev-2".to_owned(),
            br#"{"clientId":"kin-dev-2","timestamp":1767225600000,"eventType":"disconnected","sessionIdentifier":"a4666d2a7d844ae4ac5d7b38c9cb7967","principalIdentifier":"12345678901234567890123456789012","clientInitiatedDisconnect":true,"disconnectReason":"CLIENT_INITIATED_DISCONNECT","versionNumber":0}"#.to_vec(),
        ),
    ]);
    kinesis.produce(160..170);
    wait_for(&api, 170, &serve);
    let presence = wait_until(Duration::from_secs(30), Duration::from_millis(300), || {
        let devices = http_get_json(&format!("{api}/api/devices"));
        let status = |name: &str| {
            devices
                .as_array()
                .unwrap()
                .iter()
                .find(|d| d["device"] == name)
                .map(|d| d["status"].clone())
        };
        (status("kin-dev-1") == Some("online".into())
            && status("kin-dev-2") == Some("offline".into()))
        .then_some(())
    });
    if presence.is_none() {
        let devices = http_get_json(&format!("{api}/api/devices"));
        let status: Vec<_> = devices
            .as_array()
            .unwrap()
            .iter()
            .map(|d| (d["device"].clone(), d["status"].clone()))
            .collect();
        panic!("lifecycle events not shown as presence: {status:?}");
    }

    // Nothing more arrives later (a duplicate that slipped past dedup would).
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(observed(&api), expected(170));
    let stats = stats(&api);
    assert_eq!(stats["store"]["dead_letters"], 1, "{stats}");
    let shards = stats["pipeline"]["shards"].as_object().unwrap().clone();
    assert_eq!(shards.len(), 6, "4 shards, one split into 2: {shards:?}");
    let reading = shards.values().filter(|s| s["state"] == "reading").count();
    match resharding {
        Resharding::Faithful => {
            assert_eq!(shards[&parent]["state"], "finished", "{shards:?}");
            assert_eq!(reading, 5, "3 old shards and 2 children: {shards:?}");
        }
        Resharding::ParentKeepsRecords => {
            assert_eq!(
                reading, 4,
                "the parent never ends, its children wait: {shards:?}"
            );
        }
    }
    drop(serve);
}

#[test]
fn moto_four_shards_restart_and_split_count_every_reading_once() {
    scenario(&moto_endpoint(), Resharding::ParentKeepsRecords, &[]);
}

#[test]
fn kinesalite_four_shards_restart_and_split_count_every_reading_once() {
    let endpoint = std::env::var("OSPREY_TEST_KINESALITE_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "OSPREY_TEST_KINESALITE_ENDPOINT is not set: run through `bash tests/run.sh`, which \
             installs kinesalite (npm) into .osprey-test/ and starts it"
        )
    });
    scenario(&endpoint, Resharding::Faithful, &[]);
}

#[test]
fn moto_with_dynamodb_checkpoints_counts_every_reading_once() {
    let endpoint = moto_endpoint();
    let table = unique_name("checkpoints");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .load()
            .await;
        let client = aws_sdk_dynamodb::Client::new(&config);
        osprey_cloud::source::kinesis::dynamo::DynamoCheckpoints::create_table(&client, &table)
            .await
            .unwrap();
    });
    // The restarted consumer (same name, same host) takes the killed one's leases back at once.
    scenario(
        &endpoint,
        Resharding::ParentKeepsRecords,
        &["--checkpoint-table", &table],
    );
}

/// A shard hash key as a number. Kinesis keys run from 0 to 2^128 − 1; moto 5.1 ends the last
/// shard of a new stream at 2^128, one past the range, so that value is read as the range's end.
fn hash_key(text: &str) -> u128 {
    text.parse().unwrap_or_else(|e| {
        assert_eq!(
            text, "340282366920938463463374607431768211456",
            "hash key {text}: {e}"
        );
        u128::MAX
    })
}
