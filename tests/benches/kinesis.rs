//! Kinesis figures on the local stack, printed with the machine they were measured on:
//!
//! 1. **Consume rate**: records/s one `osprey serve --source kinesis` process applies from a
//!    4-shard moto stream preloaded with telemetry records (10 readings each), from start to
//!    the last record applied (seen in `/api/stats`).
//! 2. **End-to-end latency**: agent sample → Mosquitto → `osprey bridge` → moto Kinesis →
//!    `osprey serve` → visible in the API. The API is polled every 10 ms; each time a device's
//!    newest event time (`last_event_ms`, committed in the same transaction as the windows it
//!    updates) advances, the latency of that newest sample is now − its sample time. p50/p99
//!    over all observations.
//!
//! `bash tests/run.sh -- bash -c 'cargo build --release --bins && cargo bench -p osprey-tests --bench kinesis'`
//! (needs the release binaries; moto started by tests/run.sh). `OSPREY_BENCH_RECORDS` sets the
//! preloaded record count (default 20 000).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench binary: a failure is the report

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
use osprey_tests::bench::{machine, now_ms};
use osprey_tests::{bin, http_get_json, moto_endpoint, unique_name, wait_until, Mosquitto, Proc};

fn client(rt: &tokio::runtime::Runtime, endpoint: &str) -> aws_sdk_kinesis::Client {
    rt.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .load()
            .await;
        aws_sdk_kinesis::Client::new(&config)
    })
}

fn create_stream(
    rt: &tokio::runtime::Runtime,
    client: &aws_sdk_kinesis::Client,
    shards: i32,
) -> String {
    let stream = unique_name("bench");
    rt.block_on(
        client
            .create_stream()
            .stream_name(&stream)
            .shard_count(shards)
            .send(),
    )
    .unwrap();
    stream
}

fn message(device: &str, seq: u64) -> Vec<u8> {
    let mut series = Series::new("motor", "temperature", "Cel");
    for r in 0..10 {
        series.push(1_767_225_600_000 + (seq as i64 * 10 + r) * 1000, r as f64);
    }
    Envelope::new(
        device,
        seq,
        Body::Telemetry(TelemetryBatch {
            series: vec![series],
        }),
    )
    .encode()
    .unwrap()
}

/// `osprey serve` reading `stream` from the Kinesis endpoint into the SQLite file `db`;
/// returns the process and its API base URL.
fn serve(db: &std::path::Path, stream: &str, endpoint: &str) -> (Proc, String) {
    let mut serve = Proc::spawn(Command::new(bin("osprey")).arg("serve").args([
        "--db",
        db.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--source",
        "kinesis",
        "--stream",
        stream,
        "--endpoint-url",
        endpoint,
    ]));
    let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(60));
    (serve, line.trim().rsplit(' ').next().unwrap().to_owned())
}

fn consume_rate(endpoint: &str, records: u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = client(&rt, endpoint);
    let stream = create_stream(&rt, &client, 4);
    let devices = 16;
    let mut entries = Vec::new();
    for seq in 0..records / devices {
        for d in 0..devices {
            let device = format!("bench-{d}");
            entries.push(
                PutRecordsRequestEntry::builder()
                    .partition_key(&device)
                    .data(Blob::new(message(&device, seq)))
                    .build()
                    .unwrap(),
            );
        }
    }
    let total = entries.len() as u64;
    for chunk in entries.chunks(500) {
        let out = rt
            .block_on(
                client
                    .put_records()
                    .stream_name(&stream)
                    .set_records(Some(chunk.to_vec()))
                    .send(),
            )
            .unwrap();
        assert_eq!(out.failed_record_count(), Some(0), "moto refused records");
    }
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let start = Instant::now();
    let (serve, api) = serve(&db, &stream, endpoint);
    let done = wait_until(Duration::from_secs(600), Duration::from_millis(50), || {
        let applied = http_get_json(&format!("{api}/api/stats"))["pipeline"]["applied"].as_u64()?;
        (applied >= total).then_some(())
    });
    assert!(done.is_some(), "not all records applied:\n{}", serve.logs());
    let secs = start.elapsed().as_secs_f64();
    println!(
        "consume: {total} records ({} readings) from a 4-shard moto stream in {secs:.2} s \
         (process start to last record applied) = {:.0} records/s, {:.0} readings/s",
        total * 10,
        total as f64 / secs,
        total as f64 * 10.0 / secs
    );
}

fn latency(endpoint: &str) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = client(&rt, endpoint);
    let stream = create_stream(&rt, &client, 2);
    let broker = Mosquitto::plain();
    let port = broker.port().to_string();
    let mut bridge = Proc::spawn(Command::new(bin("osprey")).args([
        "bridge",
        "--mqtt-port",
        &port,
        "--stream",
        &stream,
        "--endpoint-url",
        endpoint,
    ]));
    bridge.stdout_line_matching("osprey bridge: forwarding", Duration::from_secs(30));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("bench.db");
    let (serve, api) = serve(&db, &stream, endpoint);
    let devices = ["lat-pump-1", "lat-pump-2"];
    let samples = 300;
    let mut agents: Vec<Proc> = devices
        .iter()
        .map(|device| {
            let config = dir.path().join(format!("{device}.toml"));
            std::fs::write(
                &config,
                format!(
                    "device_id = \"{device}\"\n[sampling]\ninterval_ms = 100\nmax_samples = {samples}\n\
                     [simulator]\nseed = 1\nscenario = \"steady\"\n[batch]\nmax_readings = 60\nmax_age_ms = 100\n\
                     [journal]\npath = {:?}\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n",
                    dir.path().join(format!("journal-{device}"))
                ),
            )
            .unwrap();
            Proc::spawn(Command::new(bin("osprey-agent")).arg("run").arg("--config").arg(config))
        })
        .collect();
    let mut last: HashMap<&str, i64> = HashMap::new();
    let mut latencies: Vec<i64> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(samples as u64 / 10 + 60);
    while Instant::now() < deadline && agents.iter_mut().any(Proc::is_running) {
        for device in devices {
            let d = osprey_tests::http_get(&format!("{api}/api/devices/{device}"));
            if d.status != 200 {
                continue;
            }
            let Some(event) = d.json()["last_event_ms"].as_i64() else {
                continue;
            };
            if last.get(device).is_none_or(|prev| event > *prev) {
                latencies.push(now_ms() - event);
                last.insert(device, event);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(serve);
    drop(bridge);
    assert!(latencies.len() > 20, "too few observations: {latencies:?}");
    latencies.sort_unstable();
    let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
    println!(
        "latency: agent sample -> visible in the API (agent 100 ms sampling, batch max_age 100 ms; \
         bridge linger 200 ms; consumer polls each shard every 200 ms): p50 {} ms, p99 {} ms, \
         max {} ms over {} observations",
        q(0.5),
        q(0.99),
        latencies[latencies.len() - 1],
        latencies.len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let endpoint = moto_endpoint();
    let records = std::env::var("OSPREY_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    println!("machine: {}", machine());
    consume_rate(&endpoint, records);
    latency(&endpoint);
}
