//! What the Lambda's DynamoDB state costs per message, measured: a fleet of ten series at 1 Hz
//! sending a message every 5 s (the agent's earlier default) and every minute (its default
//! now, one 5 KB IoT Core unit at most), delivered in invocations as the
//! event source mapping gathers them over its batching window, applied by the real handler
//! against moto. moto does not bill, so the units are the function's own count by DynamoDB's
//! documented item-size rules (`osprey_lambda::usage`), the same count its `WriteUnits` and
//! `ReadUnits` metrics report in production.
//!
//! Printed per batching window: write and read units per message and per reading, items
//! written, and the DynamoDB request cost per device-month at on-demand prices; asserted: every
//! reading is stored once, the template's default window stays within 3 write units per
//! message, and `osprey plan`'s model of the same fleet is within 15 % of what was measured.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use aws_lambda_events::event::kinesis::KinesisEvent;
use osprey_lambda::handler::handle;
use osprey_lambda::state::DynamoState;
use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
use osprey_tests::{kinesis_event_json, moto_dynamodb, moto_state_tables};

const T0: i64 = 1_767_225_600_000;

/// Devices in the simulated fleet.
const DEVICES: u64 = 8;

/// Simulated minutes of traffic per configuration.
const MINUTES: i64 = 6;

/// Readings per second per series; seconds per message (earlier agents' default, and the
/// default now); series.
const HZ: i64 = 1;
const BATCH_S: i64 = 5;
const DEFAULT_BATCH_S: i64 = 60;
const SERIES: [(&str, &str, &str); 10] = [
    ("motor", "temperature", "Cel"),
    ("motor", "current", "A"),
    ("bearing-de", "vibration", "mm/s"),
    ("bearing-nde", "vibration", "mm/s"),
    ("bearing-de", "temperature", "Cel"),
    ("bearing-nde", "temperature", "Cel"),
    ("pump", "pressure", "kPa"),
    ("pump", "flow", "L/min"),
    ("ambient", "temperature", "Cel"),
    ("ambient", "humidity", "%"),
];

/// The template's default `MaximumBatchingWindowInSeconds`.
const TEMPLATE_WINDOW_S: i64 = 60;

/// On-demand prices (us-east-1): $ per million write and read request units.
const WRITE_PRICE: f64 = 0.625;
const READ_PRICE: f64 = 0.125;

/// Message `seq` of `device`: `batch_s` seconds of every series from `start_ms`.
fn message(device: &str, epoch: u64, seq: u64, start_ms: i64, batch_s: i64) -> Vec<u8> {
    let series = SERIES
        .iter()
        .enumerate()
        .map(|(i, (sensor, metric, unit))| {
            let mut s = Series::new(sensor, metric, unit);
            for k in 0..batch_s * HZ {
                let t = start_ms + k * 1000 / HZ;
                // A slow wave plus a little jitter, as a healthy machine reads.
                let v = 20.0
                    + i as f64 * 5.0
                    + ((t / 1000) as f64 / 37.0).sin() * 2.0
                    + ((t / 1000 * 7919 + i as i64) % 13) as f64 / 100.0;
                s.push(t, (v * 100.0).round() / 100.0);
            }
            s
        })
        .collect();
    Envelope::new(device, seq, Body::Telemetry(TelemetryBatch { series }))
        .with_epoch(epoch)
        .encode()
        .unwrap()
}

/// The fleet's messages in time order as (device, payload, send time).
fn traffic(batch_s: i64) -> Vec<(String, Vec<u8>, i64)> {
    // Devices start their batches at different instants, as real gateways do: 310 ms apart,
    // and spread over the batch when it is longer than 5 s (minute batches all starting in the
    // same second would each fill one minute window, which no fleet does).
    let step_ms = 310 + (batch_s - BATCH_S) * 1000 / DEVICES as i64;
    let mut out = Vec::new();
    for k in 0..(MINUTES * 60 / batch_s) {
        for d in 0..DEVICES {
            let device = format!("cost-{d:03}");
            let start = T0 + k * batch_s * 1000 + d as i64 * step_ms;
            out.push((
                device.clone(),
                message(&device, 0x5eed + d, k as u64 + 1, start, batch_s),
                start,
            ));
        }
    }
    out
}

/// One configuration's figures.
struct Figures {
    window_s: i64,
    batch_s: i64,
    invocations: usize,
    messages: usize,
    write_units: f64,
    read_units: f64,
    items: u64,
}

async fn run(window_s: i64, batch_s: i64) -> Figures {
    let (client, table, dead) = moto_state_tables("cost").await;
    let state = DynamoState::new(client, &table, &dead);
    let traffic = traffic(batch_s);
    // The event source mapping sends what arrived during its batching window (at 0 s it polls
    // about once a second). Its windows are not aligned to the minute: offset them.
    let span_ms = window_s.max(1) * 1000;
    let offset_ms = 23_000;
    let mut invocations = 0;
    let mut first = 0u32;
    let mut at = 0;
    while at < traffic.len() {
        let bucket = (traffic[at].2 - offset_ms).div_euclid(span_ms);
        let end = traffic[at..]
            .iter()
            .position(|(_, _, t)| (t - offset_ms).div_euclid(span_ms) != bucket)
            .map_or(traffic.len(), |p| at + p);
        let records: Vec<(String, Vec<u8>)> = traffic[at..end]
            .iter()
            .map(|(d, p, _)| (d.clone(), p.clone()))
            .collect();
        let event: KinesisEvent =
            serde_json::from_str(&kinesis_event_json("cost", first, &records)).unwrap();
        let response = handle(&event, &state).await;
        assert!(response.batch_item_failures.is_empty(), "{response:?}");
        first += records.len() as u32;
        invocations += 1;
        at = end;
    }
    let readings = (MINUTES * 60 * HZ) as u64 * SERIES.len() as u64;
    for d in 0..DEVICES {
        let device = state
            .device(&format!("cost-{d:03}"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(device["readings"], readings.to_string(), "{device:?}");
    }
    let usage = state.usage().figures();
    Figures {
        window_s,
        batch_s,
        invocations,
        messages: traffic.len(),
        write_units: usage.write_units,
        read_units: usage.read_units,
        items: usage.items_written,
    }
}

#[tokio::test]
async fn write_units_per_message_at_the_agents_defaults() {
    let mut rows = Vec::new();
    for window_s in [0, 30, TEMPLATE_WINDOW_S] {
        rows.push(run(window_s, BATCH_S).await);
    }
    let minute = run(TEMPLATE_WINDOW_S, DEFAULT_BATCH_S).await;
    println!(
        "{DEVICES} devices x {MINUTES} min, {} series at {HZ} Hz",
        SERIES.len()
    );
    println!(
        "{:>7} {:>9} {:>11} {:>9} {:>9} {:>11} {:>12} {:>12}",
        "batch s",
        "window s",
        "invocations",
        "WU/msg",
        "RU/msg",
        "items/msg",
        "WU/reading",
        "$/dev-month"
    );
    let month = |f: &Figures| {
        let per = |v: f64| v / f.messages as f64;
        30.0 * 86_400.0 / f.batch_s as f64
            * (per(f.write_units) * WRITE_PRICE + per(f.read_units) * READ_PRICE)
            / 1e6
    };
    for f in rows.iter().chain([&minute]) {
        let per = |v: f64| v / f.messages as f64;
        let readings_per_message = (f.batch_s * HZ) as f64 * SERIES.len() as f64;
        println!(
            "{:>7} {:>9} {:>11} {:>9.2} {:>9.2} {:>11.2} {:>12.3} {:>12.2}",
            f.batch_s,
            f.window_s,
            f.invocations,
            per(f.write_units),
            per(f.read_units),
            per(f.items as f64),
            per(f.write_units) / readings_per_message,
            month(f)
        );
    }
    // `osprey plan`'s model of the same fleet predicts these units per message.
    for f in rows.iter().chain([&minute]) {
        let fleet = osprey_cloud::plan::Fleet {
            devices: DEVICES,
            series: SERIES.len() as u64,
            hz: HZ as f64,
            max_readings: (f.batch_s * HZ) as u64 * SERIES.len() as u64,
            max_age_s: f.batch_s as f64,
            batching_window_s: f.window_s as f64,
            ..osprey_cloud::plan::Fleet::default()
        };
        let planned = osprey_cloud::plan::plan(&fleet, &osprey_cloud::plan::Prices::default())
            .unwrap()
            .facts
            .write_units_per_message;
        let measured = f.write_units / f.messages as f64;
        println!("batch {:>2} s, window {:>3} s: osprey plan {planned:.2} write units per message, measured {measured:.2}", f.batch_s, f.window_s);
        assert!(
            (measured - planned).abs() <= 0.15 * planned,
            "osprey plan says {planned:.2} write units per message at {} s batches and a {} s window, moto run {measured:.2}",
            f.batch_s,
            f.window_s
        );
    }
    let default = rows.last().unwrap();
    let per_message = default.write_units / default.messages as f64;
    assert!(
        per_message <= 3.0,
        "{per_message:.2} write units per message at the template's {TEMPLATE_WINDOW_S} s window"
    );
    // Gathering more per invocation must cost less per message, or the batching is not working.
    assert!(rows[0].write_units > 2.0 * default.write_units);
    // Minute batches write about as many units per reading (the same windows, once per
    // invocation) in a twelfth of the messages: no dearer a month.
    assert!(
        month(&minute) <= month(default) * 1.05,
        "minute batches ${:.3} against ${:.3} a device-month",
        month(&minute),
        month(default)
    );
}

#[tokio::test]
async fn a_signals_refresh_costs_what_the_template_says() {
    let (client, table, dead) = moto_state_tables("cost-signals").await;
    // Four hours of one-minute windows of every series, applied without signals.
    let quiet = DynamoState::new(client.clone(), &table, &dead).with_signals(Default::default(), 0);
    let device = "cost-signals";
    let minute = |m: i64| {
        let series = SERIES
            .iter()
            .enumerate()
            .map(|(i, (sensor, metric, unit))| {
                let mut s = Series::new(sensor, metric, unit);
                s.push(T0 + m * 60_000, 20.0 + i as f64 + (m % 3) as f64 / 10.0);
                s
            })
            .collect();
        Envelope::new(
            device,
            m as u64 + 1,
            Body::Telemetry(TelemetryBatch { series }),
        )
        .encode()
        .unwrap()
    };
    let history: Vec<(String, Vec<u8>)> =
        (0..240).map(|m| (device.to_owned(), minute(m))).collect();
    let event: KinesisEvent =
        serde_json::from_str(&kinesis_event_json("cost", 0, &history)).unwrap();
    assert!(handle(&event, &quiet).await.batch_item_failures.is_empty());

    // The next message, with signals due (600 s): one refresh of all ten series.
    let state = DynamoState::new(client, &table, &dead);
    let next = vec![(device.to_owned(), minute(240))];
    let event: KinesisEvent =
        serde_json::from_str(&kinesis_event_json("cost", 240, &next)).unwrap();
    assert!(handle(&event, &state).await.batch_item_failures.is_empty());
    let with = state.usage().figures();
    // The same message's apply alone, measured on a copy of the device without signals.
    let alone =
        DynamoState::new(moto_dynamodb().await, &table, &dead).with_signals(Default::default(), 0);
    let again = vec![(device.to_owned(), minute(241))];
    let event: KinesisEvent =
        serde_json::from_str(&kinesis_event_json("cost", 241, &again)).unwrap();
    assert!(handle(&event, &alone).await.batch_item_failures.is_empty());
    let apply = alone.usage().figures();
    let refresh_read = with.read_units - apply.read_units;
    let refresh_write = with.write_units - apply.write_units;
    let per_month = 30.0 * 86_400.0 / 600.0;
    println!(
        "signals refresh, {} series x 241 windows: {refresh_read:.1} read units, \
         {refresh_write:.1} write units; every 600 s: ${:.3} per device-month",
        SERIES.len(),
        per_month * (refresh_read * READ_PRICE + refresh_write * WRITE_PRICE) / 1e6
    );
    assert!(
        refresh_read > 10.0,
        "the refresh read the windows: {refresh_read}"
    );
    let device_item = state.device(device).await.unwrap().unwrap();
    assert!(device_item.contains_key("signals_at"), "{device_item:?}");
}
