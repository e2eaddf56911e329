//! Identity binding and message identity, with real processes and servers.
//!
//! - Mosquitto with per-device certificates and the shipped ACL (`deploy/mosquitto/acl`) in
//!   front of `osprey serve`: device A publishing on B's topic is refused by the broker (nothing
//!   reaches serve); A publishing B's payload on its own topic is dead-lettered by serve as an
//!   identity mismatch; B's state is untouched and the counters say so.
//! - Kinesis (moto and kinesalite) into `osprey serve --source kinesis`, and the Lambda handler
//!   against moto's DynamoDB: records keyed `intruder-9` that carry `pump-7`'s messages do not
//!   change pump-7, are dead-lettered and counted; pump-7's real messages with the same seqs
//!   are then applied (the reported bug: the intruder's copies used to take their place in the
//!   dedup set). Then pump-7's journal is replaced (the same seqs under a new epoch): every
//!   reading counts, and the device shows a `journal_replaced` event.
//! - The same journal replacement with the real agent binary (see
//!   `agent_journal_replaced_end_to_end`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use osprey_cloud::metrics::parse_samples;
use osprey_lambda::handler::{handle_record, RecordOutcome};
use osprey_lambda::state::DynamoState;
use osprey_protocol::{Body, Envelope, Status, StatusState};
use osprey_tests::{
    bin, http_get, http_get_json, kinesis_event_json, mosquitto_tool, moto_endpoint,
    moto_state_tables, motor_temperature, unique_name, wait_until, Certs, ClientCert, Mosquitto,
    Proc,
};
use serde_json::Value;

/// Readings per telemetry message.
const READINGS: u64 = 5;
/// Base of the event times (2026-01-01T00:00:00Z).
const T0: i64 = 1_767_225_600_000;
/// The epoch of pump-7's replacement journal.
const NEW_EPOCH: u64 = 77;

/// Telemetry message `seq` of `device` in journal `epoch`: READINGS readings inside one
/// minute, distinct per (epoch, seq).
fn telemetry(device: &str, epoch: u64, seq: u64) -> Vec<u8> {
    let start = T0 + (epoch as i64 % 7) * 60_000 + seq as i64 * 5_000;
    let readings = (0..READINGS as i64).map(|r| (start + r * 500, seq as f64 + r as f64 / 10.0));
    motor_temperature(device, epoch, seq, readings)
}

fn status(device: &str, epoch: u64, seq: u64, state: StatusState, time_ms: i64) -> Vec<u8> {
    Envelope::new(
        device,
        seq,
        Body::Status(Status {
            time_ms,
            ..Status::new(state)
        }),
    )
    .with_epoch(epoch)
    .encode()
    .unwrap()
}

/// What the intruder puts on the stream under its own key: pump-7's seqs 1-3 and an offline
/// status at seq 4.
fn intruder_records() -> Vec<(String, Vec<u8>)> {
    let mut records: Vec<(String, Vec<u8>)> = (1..=3)
        .map(|q| ("intruder-9".to_owned(), telemetry("pump-7", 0, q)))
        .collect();
    records.push((
        "intruder-9".to_owned(),
        status("pump-7", 0, 4, StatusState::Offline, T0 + 99_000),
    ));
    records
}

/// pump-7's own messages with the same seqs: 1-3 telemetry and an online status at seq 4.
fn real_records() -> Vec<(String, Vec<u8>)> {
    let mut records: Vec<(String, Vec<u8>)> = (1..=3)
        .map(|q| ("pump-7".to_owned(), telemetry("pump-7", 0, q)))
        .collect();
    records.push((
        "pump-7".to_owned(),
        status("pump-7", 0, 4, StatusState::Online, T0 + 20_000),
    ));
    records
}

/// pump-7 after its journal was replaced: seqs 1-2 again, under [`NEW_EPOCH`].
fn replaced_records() -> Vec<(String, Vec<u8>)> {
    (1..=2)
        .map(|q| ("pump-7".to_owned(), telemetry("pump-7", NEW_EPOCH, q)))
        .collect()
}

fn get_json_or_status(url: &str) -> Result<Value, u16> {
    let r = http_get(url);
    if (200..300).contains(&r.status) {
        Ok(serde_json::from_slice(&r.body).unwrap())
    } else {
        Err(r.status)
    }
}

fn stats(api: &str) -> Value {
    http_get_json(&format!("{api}/api/stats"))
}

/// Waits until `check` holds for `/api/stats` (with the serve logs on failure).
fn wait_stats(api: &str, serve: &Proc, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let s = stats(api);
        check(&s).then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "{what} never happened\nstats: {}\nserve logs:\n{}",
            stats(api),
            serve.logs()
        )
    })
}

/// Sum of the counts of a device's tumbling windows.
fn tumbling_readings(api: &str, device: &str) -> u64 {
    let windows = http_get_json(&format!(
        "{api}/api/devices/{device}/windows?kind=tumbling&limit=1000"
    ));
    windows
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["count"].as_u64().unwrap())
        .sum()
}

fn metric(api: &str, name: &str) -> Option<f64> {
    let text = String::from_utf8(http_get(&format!("{api}/metrics")).body).unwrap();
    parse_samples(&text)
        .unwrap()
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v)
}

fn start_serve(db: &Path, args: &[&str]) -> (Proc, String) {
    let mut serve = Proc::spawn(
        Command::new(bin("osprey"))
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0"])
            .args(args),
    );
    let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(60));
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    (serve, url)
}

// ---------------------------------------------------------------------------------------
// Mosquitto + ACL + serve

fn publish(broker: &Mosquitto, certs: &Certs, client: &ClientCert, topic: &str, payload: &[u8]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), payload).unwrap();
    let out = Command::new(mosquitto_tool("mosquitto_pub"))
        .args(["-h", "localhost", "-p", &broker.port().to_string()])
        .args(["--cafile", certs.ca.to_str().unwrap()])
        .args(["--cert", client.cert.to_str().unwrap()])
        .args(["--key", client.key.to_str().unwrap()])
        .args(["-i", &client.cn, "-q", "1", "-t", topic])
        .arg("-f")
        .arg(file.path())
        .output()
        .unwrap();
    // A publish the ACL refuses is dropped silently under MQTT 3.1.1: mosquitto_pub still
    // succeeds. Anything else failing is a broken test setup.
    assert!(
        out.status.success(),
        "mosquitto_pub as {} on {topic} failed: {}\nbroker log:\n{}",
        client.cn,
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
}

#[test]
fn mosquitto_acl_refuses_other_topics_and_serve_refuses_other_payloads() {
    let dir = tempfile::tempdir().unwrap();
    // The consumer's certificate has CN osprey-cloud, the ACL's reader of dt/osprey/#.
    let certs = Certs::generate("osprey-cloud");
    let broker = Mosquitto::mtls_with_acl(&certs);
    let (a, b) = (certs.issue_client("pump-a"), certs.issue_client("pump-b"));
    let port = broker.port().to_string();
    let (serve, api) = start_serve(
        &dir.path().join("osprey.db"),
        &[
            "--source",
            "mqtt",
            "--mqtt-host",
            "localhost",
            "--mqtt-port",
            &port,
            "--mqtt-ca",
            certs.ca.to_str().unwrap(),
            "--mqtt-cert",
            certs.client.cert.to_str().unwrap(),
            "--mqtt-key",
            certs.client.key.to_str().unwrap(),
        ],
    );
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        broker.log().contains("osprey-cloud").then_some(())
    })
    .unwrap_or_else(|| panic!("serve never connected:\n{}\n{}", serve.logs(), broker.log()));

    // B's own message: the baseline.
    publish(
        &broker,
        &certs,
        &b,
        "dt/osprey/pump-b/telemetry",
        &telemetry("pump-b", 0, 1),
    );
    wait_stats(&api, &serve, "B's message applied", |s| {
        s["pipeline"]["applied"] == 1
    });
    let before = http_get_json(&format!("{api}/api/devices/pump-b"));

    // A on B's topic: the broker refuses it.
    publish(
        &broker,
        &certs,
        &a,
        "dt/osprey/pump-b/telemetry",
        &telemetry("pump-b", 0, 2),
    );
    // A's copy of B's payload on A's own topic: through the broker, dead-lettered by serve.
    publish(
        &broker,
        &certs,
        &a,
        "dt/osprey/pump-a/telemetry",
        &telemetry("pump-b", 0, 3),
    );
    // A's own message, last: once it is applied, everything A sent before has been handled.
    publish(
        &broker,
        &certs,
        &a,
        "dt/osprey/pump-a/telemetry",
        &telemetry("pump-a", 0, 1),
    );
    let s = wait_stats(&api, &serve, "A's own message applied", |s| {
        s["pipeline"]["applied"] == 2
    });
    assert_eq!(
        s["pipeline"]["rejected"], 1,
        "only the payload on A's own topic reaches serve: {s}"
    );
    assert_eq!(s["pipeline"]["identity_mismatches"], 1, "{s}");
    assert_eq!(
        s["pipeline"]["spoofed"],
        serde_json::json!([{"claimed": "pump-b", "source": "pump-a", "count": 1}]),
        "{s}"
    );
    assert_eq!(
        s["pipeline"]["mqtt_messages"], 3,
        "the refused publish never arrived: {s}"
    );
    let after = http_get_json(&format!("{api}/api/devices/pump-b"));
    for field in ["last_seq", "readings", "last_seen_ms", "last_event_ms"] {
        assert_eq!(after[field], before[field], "pump-b's {field} changed");
    }
    assert_eq!(tumbling_readings(&api, "pump-b"), READINGS);
    assert_eq!(
        metric(
            &api,
            "osprey_identity_mismatches_total{claimed=\"pump-b\",source=\"pump-a\"}"
        ),
        Some(1.0)
    );
}

// ---------------------------------------------------------------------------------------
// Kinesis + serve

struct Stream {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_kinesis::Client,
    name: String,
}

impl Stream {
    fn create(endpoint: &str) -> Stream {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = rt.block_on(async {
            let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .endpoint_url(endpoint)
                .load()
                .await;
            aws_sdk_kinesis::Client::new(&config)
        });
        let name = unique_name("ident");
        rt.block_on(
            client
                .create_stream()
                .stream_name(&name)
                .shard_count(1)
                .send(),
        )
        .unwrap_or_else(|e| panic!("cannot create a stream at {endpoint}: {e:?}"));
        let active = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            rt.block_on(async {
                let d = client
                    .describe_stream_summary()
                    .stream_name(&name)
                    .send()
                    .await
                    .ok()?;
                let status = d.stream_description_summary()?.stream_status().clone();
                (status == aws_sdk_kinesis::types::StreamStatus::Active).then_some(())
            })
        });
        assert!(active.is_some(), "stream {name} never became ACTIVE");
        Stream { rt, client, name }
    }

    /// Puts `(partition key, data)` records one by one, in order.
    fn put(&self, records: &[(String, Vec<u8>)]) {
        for (key, data) in records {
            let entry = PutRecordsRequestEntry::builder()
                .partition_key(key)
                .data(Blob::new(data.clone()))
                .build()
                .unwrap();
            let out = self
                .rt
                .block_on(
                    self.client
                        .put_records()
                        .stream_name(&self.name)
                        .records(entry)
                        .send(),
                )
                .unwrap();
            assert_eq!(out.failed_record_count(), Some(0), "{out:?}");
        }
    }
}

fn kinesis_scenario(endpoint: &str) {
    let dir = tempfile::tempdir().unwrap();
    let stream = Stream::create(endpoint);
    let (serve, api) = start_serve(
        &dir.path().join("osprey.db"),
        &[
            "--source",
            "kinesis",
            "--stream",
            &stream.name,
            "--endpoint-url",
            endpoint,
        ],
    );

    stream.put(&intruder_records());
    // The pipeline counts a rejection before the store commits its dead letter: wait for both.
    let s = wait_stats(&api, &serve, "the intruder's records dead-lettered", |s| {
        s["pipeline"]["rejected"] == 4 && s["store"]["dead_letters"] == 4
    });
    assert_eq!(s["pipeline"]["applied"], 0, "{s}");
    assert_eq!(
        s["pipeline"]["spoofed"],
        serde_json::json!([{"claimed": "pump-7", "source": "intruder-9", "count": 4}]),
        "{s}"
    );
    assert_eq!(s["store"]["dead_letters"], 4, "{s}");
    assert_eq!(
        get_json_or_status(&format!("{api}/api/devices/pump-7")).err(),
        Some(404),
        "pump-7 must not exist after the intruder's records"
    );

    // The bug: the same seqs from pump-7 itself were taken for duplicates.
    stream.put(&real_records());
    wait_stats(&api, &serve, "pump-7's own records applied", |s| {
        s["pipeline"]["applied"] == 4
    });
    let device = http_get_json(&format!("{api}/api/devices/pump-7"));
    assert_eq!(device["readings"], 3 * READINGS, "{device}");
    assert_eq!(device["last_seq"], 4, "{device}");
    assert_eq!(device["status"], "online", "{device}");
    assert_eq!(device["events"], serde_json::json!([]), "{device}");
    assert_eq!(tumbling_readings(&api, "pump-7"), 3 * READINGS);

    // pump-7's journal is replaced: seqs 1 and 2 again, under a new epoch, all count.
    stream.put(&replaced_records());
    wait_stats(&api, &serve, "the new journal's records applied", |s| {
        s["pipeline"]["applied"] == 6
    });
    let device = http_get_json(&format!("{api}/api/devices/pump-7"));
    assert_eq!(device["readings"], 5 * READINGS, "{device}");
    let events = device["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{device}");
    assert_eq!(events[0]["kind"], "journal_replaced");
    assert_eq!(
        (
            events[0]["old_epoch"].as_u64(),
            events[0]["new_epoch"].as_u64()
        ),
        (Some(0), Some(NEW_EPOCH))
    );
    assert_eq!(tumbling_readings(&api, "pump-7"), 5 * READINGS);
    let s = stats(&api);
    assert_eq!(
        (
            s["pipeline"]["duplicates"].as_u64(),
            s["store"]["messages"].as_u64()
        ),
        (Some(0), Some(6)),
        "{s}"
    );
    drop(serve);
}

#[test]
fn moto_records_keyed_by_another_device_do_not_change_it() {
    kinesis_scenario(&moto_endpoint());
}

#[test]
fn kinesalite_records_keyed_by_another_device_do_not_change_it() {
    let endpoint = std::env::var("OSPREY_TEST_KINESALITE_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "OSPREY_TEST_KINESALITE_ENDPOINT is not set: run through `bash tests/run.sh`, which \
             installs kinesalite (npm) into .osprey-test/ and starts it"
        )
    });
    kinesis_scenario(&endpoint);
}

// ---------------------------------------------------------------------------------------
// The Lambda

/// A Kinesis event as the event source mapping delivers it, sequence numbers from `first`.
fn event(stream: &str, first: u32, records: &[(String, Vec<u8>)]) -> KinesisEvent {
    serde_json::from_str(&kinesis_event_json(stream, first, records)).unwrap()
}

async fn outcomes(event: &KinesisEvent, state: &DynamoState) -> Vec<RecordOutcome> {
    let mut out = Vec::new();
    for record in &event.records {
        out.push(handle_record(record, state).await.unwrap());
    }
    out
}

#[tokio::test]
async fn lambda_records_keyed_by_another_device_do_not_change_it() {
    let (client, table, dead) = moto_state_tables("state").await;
    let state = DynamoState::new(client.clone(), &table, &dead);

    let got = outcomes(&event("s", 1, &intruder_records()), &state).await;
    for outcome in &got {
        let RecordOutcome::DeadLettered(reason) = outcome else {
            panic!("{got:?}")
        };
        assert_eq!(
            reason,
            "identity mismatch: payload claims device pump-7, source is intruder-9"
        );
    }
    assert_eq!(got.len(), 4);
    assert!(state.device("pump-7").await.unwrap().is_none());
    assert!(state.device_windows("pump-7").await.unwrap().is_empty());
    assert_eq!(state.dead_letters("s").await.unwrap().len(), 4);
    // Each dead letter expires (the table's time to live) 14 days after it was received.
    let items = client.scan().table_name(&dead).send().await.unwrap();
    for item in items.items() {
        let number = |k: &str| item[k].as_n().unwrap().parse::<i64>().unwrap();
        assert_eq!(
            number("expires_at") - number("received_ms") / 1000,
            osprey_lambda::state::DEAD_LETTER_RETENTION_S,
            "{item:?}"
        );
    }
    assert_eq!(osprey_lambda::state::DEAD_LETTER_RETENTION_S, 14 * 86_400);

    let got = outcomes(&event("s", 10, &real_records()), &state).await;
    assert!(got.iter().all(|o| *o == RecordOutcome::Applied), "{got:?}");
    let device = state.device("pump-7").await.unwrap().unwrap();
    assert_eq!(device["readings"], (3 * READINGS).to_string(), "{device:?}");
    assert_eq!(device["status"], "online", "{device:?}");
    assert!(state.device_events("pump-7").await.unwrap().is_empty());

    let got = outcomes(&event("s", 20, &replaced_records()), &state).await;
    assert!(got.iter().all(|o| *o == RecordOutcome::Applied), "{got:?}");
    // Delivered again: duplicates, and still one event.
    let got = outcomes(&event("s", 20, &replaced_records()), &state).await;
    assert!(
        got.iter().all(|o| *o == RecordOutcome::Duplicate),
        "{got:?}"
    );
    let device = state.device("pump-7").await.unwrap().unwrap();
    assert_eq!(device["readings"], (5 * READINGS).to_string(), "{device:?}");
    let events = state.device_events("pump-7").await.unwrap();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        (events[0].0.as_str(), events[0].2, events[0].3),
        ("journal_replaced", 0, NEW_EPOCH)
    );
    let readings: u64 = state
        .device_windows("pump-7")
        .await
        .unwrap()
        .iter()
        .filter(|w| w.kind == osprey_cloud::window::WindowKind::Tumbling)
        .map(|w| w.window.agg.count())
        .sum();
    assert_eq!(readings, 5 * READINGS);
}

// ---------------------------------------------------------------------------------------
// A replaced journal with the real agent

/// Runs `osprey-agent` for device `journal-pump` with its journal in `journal` until it has
/// sent everything (it exits 0 once the broker acknowledged every message).
fn run_agent(dir: &Path, journal: &Path, port: u16) {
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"journal-pump\"\n[sampling]\ninterval_ms = 5\nmax_samples = 100\n\
             [simulator]\nseed = 7\nscenario = \"steady\"\n[batch]\nmax_readings = 60\n\
             max_age_ms = 500\n[journal]\npath = {journal:?}\n[mqtt]\nhost = \"127.0.0.1\"\n\
             port = {port}\n"
        ),
    )
    .unwrap();
    let mut agent = Proc::spawn(
        Command::new(bin("osprey-agent"))
            .arg("run")
            .arg("--config")
            .arg(&config),
    );
    let status = agent.wait_exit(Duration::from_secs(120));
    assert!(status.success(), "agent failed: {status}\n{}", agent.logs());
}

/// The real agent into serve, stopped, its journal deleted, run again: every reading of both
/// runs is in the windows, and the device shows a `journal_replaced` event (API and
/// `osprey fleet`). The agent draws a new epoch for a new journal; without it the second run's
/// seqs would repeat the first's and be taken for duplicates. The protocol-level version of
/// this test runs in `kinesis_scenario` and `lambda_records_keyed_by_another_device_do_not_change_it`.
#[test]
fn agent_journal_replaced_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::plain();
    let (serve, api) = start_serve(
        &dir.path().join("osprey.db"),
        &[
            "--source",
            "mqtt",
            "--mqtt-host",
            "127.0.0.1",
            "--mqtt-port",
            &broker.port().to_string(),
        ],
    );
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        broker.log().contains("osprey").then_some(())
    })
    .unwrap_or_else(|| panic!("serve never connected:\n{}\n{}", serve.logs(), broker.log()));
    let journal = dir.path().join("journal");

    run_agent(dir.path(), &journal, broker.port());
    let first = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let s = stats(&api);
        let d = get_json_or_status(&format!("{api}/api/devices/journal-pump")).ok()?;
        // Settled: nothing new for a moment after the agent drained its journal.
        std::thread::sleep(Duration::from_millis(500));
        (stats(&api)["pipeline"]["applied"] == s["pipeline"]["applied"])
            .then(|| d["readings"].as_u64().unwrap())
    })
    .unwrap();
    assert!(first > 0);

    std::fs::remove_dir_all(&journal).unwrap();
    run_agent(dir.path(), &journal, broker.port());
    let device = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
        let d = http_get_json(&format!("{api}/api/devices/journal-pump"));
        (d["readings"].as_u64() == Some(2 * first)).then_some(d)
    })
    .unwrap_or_else(|| {
        panic!(
            "the second journal's readings were not all counted\n{}\nserve logs:\n{}",
            http_get_json(&format!("{api}/api/devices/journal-pump")),
            serve.logs()
        )
    });
    assert_eq!(tumbling_readings(&api, "journal-pump"), 2 * first);
    let events = device["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "{device}");
    assert_eq!(events[0]["kind"], "journal_replaced");
    // The terminal view says so too.
    let out = Command::new(bin("osprey"))
        .args(["fleet", "--api", &api, "--device", "journal-pump"])
        .output()
        .unwrap();
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{page}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(page.contains("journal replaced"), "{page}");
}
