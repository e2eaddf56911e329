//! How fast the built `osprey-lambda` applies a shard's batch: the release binary behind the
//! Runtime API stand-in (`osprey_tests::LambdaRuntime`), its state on the moto server, one
//! invocation of `OSPREY_BENCH_RECORDS` records (default 2,000: 200 gateways × 10 messages of
//! 10 series × 5 readings, the agent's default batches) per round, a new set of devices each
//! round, signals off (they are priced apart by the lambda_cost suite). Printed: messages/s
//! per round (min/median/max), and beside it the yardstick that bounds it here: how many
//! DynamoDB requests per second moto answers from one client with 16 at a time, the
//! concurrency the function uses.
//!
//! `bash tests/run.sh -- bash -c 'cargo build --release --bins && cargo bench -p osprey-tests --bench lambda'`

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench binary: a failure is the report

use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
use osprey_tests::bench::machine;
use osprey_tests::{kinesis_event_json, moto_state_tables, LambdaRuntime, Outcome};

const T0: i64 = 1_767_225_600_000;
const ROUNDS: usize = 3;

fn message(device: &str, seq: u64) -> Vec<u8> {
    let series = (0..10)
        .map(|i| {
            let mut s = Series::new(&format!("sensor-{i}"), "temperature", "Cel");
            for k in 0..5 {
                let t = T0 + (seq as i64 * 5 + k) * 1000;
                s.push(t, 40.0 + i as f64 + ((t / 1000) % 7) as f64 / 10.0);
            }
            s
        })
        .collect();
    Envelope::new(device, seq, Body::Telemetry(TelemetryBatch { series }))
        .with_epoch(77)
        .encode()
        .unwrap()
}

fn stats(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn main() {
    let records: usize = std::env::var("OSPREY_BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    let per_device = 10;
    let devices = (records / per_device).max(1);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (client, table, dead) = rt.block_on(moto_state_tables("bench-lambda"));
    let runtime = LambdaRuntime::start();
    let mut function = runtime.start_function(&table, &dead, &[("OSPREY_SIGNALS_EVERY_S", "0")]);

    let mut rates = Vec::new();
    for round in 0..ROUNDS {
        let batch: Vec<(String, Vec<u8>)> = (0..per_device as u64)
            .flat_map(|seq| {
                (0..devices).map(move |d| {
                    let device = format!("bench-{round}-{d:04}");
                    let payload = message(&device, seq + 1);
                    (device, payload)
                })
            })
            .collect();
        let event = kinesis_event_json("bench", (round * records) as u32, &batch);
        let started = Instant::now();
        let outcome = runtime.invoke(&event, Duration::from_secs(900));
        let seconds = started.elapsed().as_secs_f64();
        let Outcome::Response(body) = outcome else {
            panic!("{outcome:?}\n{}", function.logs());
        };
        assert!(body.contains("\"batchItemFailures\":[]"), "{body}");
        rates.push(batch.len() as f64 / seconds);
        eprintln!("round {round}: {} messages in {seconds:.2} s", batch.len());
    }

    // The yardstick: GetItem requests per second moto answers, 16 at a time.
    let gets = 2_000;
    let started = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for worker in 0..16 {
            let client = client.clone();
            let table = table.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..gets / 16 {
                    client
                        .get_item()
                        .table_name(&table)
                        .key(
                            "pk",
                            AttributeValue::S(format!(
                                "dev#bench-0-{:04}",
                                (worker * 97 + i) % 200
                            )),
                        )
                        .key("sk", AttributeValue::S("device".into()))
                        .consistent_read(true)
                        .send()
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let moto_rate = gets as f64 / started.elapsed().as_secs_f64();
    function.kill();

    let (min, median, max) = stats(&mut rates);
    println!("{}", machine());
    println!(
        "osprey-lambda (release) behind the Runtime API stand-in, state on moto: {devices} devices x \
         {per_device} messages per invocation, {ROUNDS} rounds"
    );
    println!("  messages/s: min {min:.0}  median {median:.0}  max {max:.0}");
    println!("  moto alone: {moto_rate:.0} GetItem requests/s (16 at a time)");
}
