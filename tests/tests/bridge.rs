//! `osprey bridge` under a stalled Kinesis: real Mosquitto, a private moto server frozen with
//! SIGSTOP while devices keep publishing at QoS 1 far more than the bridge's byte budget.
//!
//! The bridge must hold at most its budget (the `osprey_bridge_buffered_max_bytes` gauge), stop
//! reading MQTT meanwhile (`osprey_bridge_backpressure_waits_total` > 0) so that Mosquitto
//! queues for its persistent session, and after SIGCONT every published `(device, seq)` must be
//! in the stream (duplicates allowed, the consumer drops them), keyed by its device.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::Client;
use osprey_cloud::metrics::parse_samples;
use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
use osprey_tests::{
    bin, http_get, mosquitto_tool, unique_name, wait_until, Listener, Mosquitto, MotoServer, Proc,
};

/// The bridge's byte budget: its minimum, 1 MiB.
const BUDGET: u64 = 1024 * 1024;
/// Readings per message; ~18 KB each with full-width floats, so ~60 fill the budget.
const READINGS: usize = 2000;
const DEVICES: usize = 3;
/// Messages per device published while Kinesis is stopped (~5 MB in all, 5× the budget).
const DURING_STALL: u64 = 100;
/// How long Kinesis stays stopped.
const STALL: Duration = Duration::from_secs(18);
/// Base of the event times (2026-01-01T00:00:00Z).
const T0: i64 = 1_767_225_600_000;

fn device(i: usize) -> String {
    format!("bridge-dev-{i}")
}

fn message(device: &str, seq: u64) -> Vec<u8> {
    let mut series = Series::new("motor", "vibration", "m/s2");
    for r in 0..READINGS {
        let t = T0 + (seq as i64 * READINGS as i64 + r as i64) * 10;
        // Values with no short decimal form: the encoder keeps full 8-byte floats.
        series.push(t, ((seq * 7919 + r as u64) as f64).sin());
    }
    let batch = TelemetryBatch {
        series: vec![series],
    };
    Envelope::new(device, seq, Body::Telemetry(batch))
        .encode()
        .unwrap()
}

/// Publishes message `seq` of `device` at QoS 1 with `mosquitto_pub`, which exits 0 once the
/// broker acknowledged it.
fn publish(port: u16, dir: &Path, device: &str, seq: u64) {
    let file = dir.join(format!("{device}-{seq}.cbor"));
    std::fs::write(&file, message(device, seq)).unwrap();
    for _ in 0..5 {
        let status = Command::new(mosquitto_tool("mosquitto_pub"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", &format!("dt/osprey/{device}/telemetry")])
            .arg("-f")
            .arg(&file)
            .status()
            .unwrap();
        if status.success() {
            std::fs::remove_file(&file).unwrap();
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("mosquitto_pub never got {device}/{seq} acknowledged");
}

/// Publishes `seqs` of every device, one thread per device.
fn publish_all(port: u16, dir: &Path, seqs: std::ops::Range<u64>) {
    std::thread::scope(|scope| {
        for i in 0..DEVICES {
            let seqs = seqs.clone();
            scope.spawn(move || {
                for seq in seqs {
                    publish(port, dir, &device(i), seq);
                }
            });
        }
    });
}

fn scrape(url: &str) -> BTreeMap<String, f64> {
    let response = http_get(url);
    assert_eq!(response.status, 200, "{}", response.text());
    parse_samples(&response.text())
        .unwrap()
        .into_iter()
        .collect()
}

#[test]
fn stalled_kinesis_holds_the_budget_pauses_mqtt_and_loses_nothing() {
    let mut moto = MotoServer::start();
    let endpoint = moto.endpoint().to_owned();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(&endpoint)
            .load()
            .await;
        Client::new(&config)
    });
    let stream = unique_name("bridge");
    rt.block_on(
        client
            .create_stream()
            .stream_name(&stream)
            .shard_count(2)
            .send(),
    )
    .unwrap();

    // Mosquitto sends the bridge up to 100 unacknowledged messages (~1.8 MB, more than the
    // budget), so the budget, not the broker's window, is what stops the bridge.
    let broker = Mosquitto::start(Listener::Plain, "max_inflight_messages 100\n");
    let port = broker.port();
    let mut bridge = Proc::spawn(Command::new(bin("osprey")).args([
        "bridge",
        "--mqtt-port",
        &port.to_string(),
        "--mqtt-client-id",
        &unique_name("bridge"),
        "--stream",
        &stream,
        "--endpoint-url",
        &endpoint,
        "--max-buffered-bytes",
        &BUDGET.to_string(),
        "--metrics-listen",
        "127.0.0.1:0",
    ]));
    let line = bridge.stdout_line_matching("osprey bridge: metrics on ", Duration::from_secs(60));
    let metrics = line.trim().rsplit(' ').next().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();

    // Until the subscription is in place the broker drops what is published: publish seq 0
    // of device 0 until the bridge has put it.
    let subscribed = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        publish(port, dir.path(), &device(0), 0);
        (scrape(&metrics)["osprey_bridge_records_put_total"] >= 1.0).then_some(())
    });
    assert!(
        subscribed.is_some(),
        "bridge never forwarded:\n{}",
        bridge.logs()
    );
    publish_all(port, dir.path(), 0..10);

    // Kinesis stops answering; devices keep publishing ~5× the budget.
    moto.proc().signal("STOP");
    let stopped_at = Instant::now();
    publish_all(port, dir.path(), 10..10 + DURING_STALL);
    let published_in = stopped_at.elapsed();
    let during = scrape(&metrics);
    let remaining = STALL.saturating_sub(stopped_at.elapsed());
    std::thread::sleep(remaining);
    let before_cont = scrape(&metrics);
    moto.proc().signal("CONT");
    eprintln!(
        "published {} messages per device in {:?} while Kinesis was stopped (stall {:?})",
        DURING_STALL, published_in, STALL
    );

    let total = (DEVICES as u64 * (10 + DURING_STALL)) as f64;
    let drained = wait_until(Duration::from_secs(180), Duration::from_millis(500), || {
        let m = scrape(&metrics);
        (m["osprey_bridge_records_put_total"] >= total
            && m["osprey_bridge_buffered_records"] == 0.0)
            .then_some(m)
    });
    let after = drained.unwrap_or_else(|| {
        panic!(
            "bridge never put all {total} messages: {:?}\n{}",
            scrape(&metrics),
            bridge.logs()
        )
    });

    // The budget held, and it was what stopped the reader.
    assert_eq!(after["osprey_bridge_buffer_budget_bytes"], BUDGET as f64);
    assert!(
        after["osprey_bridge_buffered_max_bytes"] <= BUDGET as f64,
        "buffered more than the budget: {after:?}"
    );
    assert!(
        after["osprey_bridge_buffered_max_bytes"] > (BUDGET / 2) as f64,
        "the stall should have filled the budget: {after:?}"
    );
    assert!(
        before_cont["osprey_bridge_backpressure_waits_total"] > 0.0,
        "no publish was held back while Kinesis was stopped: {before_cont:?}"
    );
    assert!(
        before_cont["osprey_bridge_mqtt_messages_received_total"] < total,
        "the bridge kept reading MQTT while blocked: {before_cont:?}"
    );
    assert!(
        during["osprey_bridge_buffered_bytes"] <= BUDGET as f64,
        "{during:?}"
    );

    // Every (device, seq) is in the stream, under its device's partition key.
    let records = rt.block_on(osprey_tests::read_stream(&client, &stream));
    let mut seen = BTreeSet::new();
    for (key, data) in &records {
        let envelope = osprey_protocol::decode(data).unwrap();
        assert_eq!(key, &envelope.device, "partition key must be the device");
        seen.insert((envelope.device, envelope.seq));
    }
    let want: BTreeSet<(String, u64)> = (0..DEVICES)
        .flat_map(|i| (0..10 + DURING_STALL).map(move |seq| (device(i), seq)))
        .collect();
    let missing: Vec<_> = want.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} messages never reached the stream, e.g. {:?}; {} records read\n{}",
        missing.len(),
        &missing[..missing.len().min(10)],
        records.len(),
        bridge.logs()
    );
    assert_eq!(seen, want, "records that nobody published");
    eprintln!(
        "{} records in the stream for {} messages; bridge metrics after the stall: {after:?}",
        records.len(),
        want.len()
    );
    assert!(bridge.is_running(), "bridge died:\n{}", bridge.logs());
}
