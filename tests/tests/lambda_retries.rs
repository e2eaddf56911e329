//! The Lambda applies each message once whatever the event source mapping redelivers, with no
//! transaction: a device's messages of a batch are folded together, the windows written with
//! the messages they took (`pending`) and the device item (with the dedup ranges) last. These
//! tests crash the function between the two (a fault injected before the device write, after
//! the windows were written) and redeliver in other splits and orders, against moto's
//! DynamoDB, and compare every window with serve's in-memory fold of each message once.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::collections::BTreeMap;
use std::num::NonZeroU32;

use aws_lambda_events::event::kinesis::KinesisEvent;
use osprey_cloud::pipeline::{prepare_with, Origin};
use osprey_cloud::window::table::WindowTable;
use osprey_cloud::window::{Hopping, WindowKind, WindowSpec, WINDOW_MS};
use osprey_lambda::handler::handle;
use osprey_lambda::state::DynamoState;
use osprey_tests::{kinesis_event_json, moto_state_tables, ten_readings};

const T0: i64 = 1_767_225_600_000;

/// Message `seq` of `device`: ten readings of one series, one second apart from `seq` × 10 s.
fn telemetry(device: &str, seq: u64) -> Vec<u8> {
    ten_readings(device, seq, T0)
}

/// A Kinesis event of `(device, seq)` messages, sequence numbers from `first`.
fn event(first: u32, messages: &[(&str, u64)]) -> KinesisEvent {
    let records: Vec<(String, Vec<u8>)> = messages
        .iter()
        .map(|&(d, s)| (d.to_owned(), telemetry(d, s)))
        .collect();
    serde_json::from_str(&kinesis_event_json("s", first, &records)).unwrap()
}

/// A window's bounds and exact aggregate: (start, end, count, min, max, sum × 10 rounded).
type Shape = (i64, i64, u64, i64, i64, i64);

fn shape(w: &osprey_cloud::window::table::Stored) -> Shape {
    let m = &w.agg.moments;
    let tenth = |v: f64| (v * 10.0).round() as i64;
    (
        w.start_ms,
        w.end_ms,
        m.count,
        tenth(m.min),
        tenth(m.max),
        tenth(m.sum),
    )
}

/// Every window of `device` in the table, by (kind, start).
async fn stored(state: &DynamoState, device: &str) -> BTreeMap<(WindowKind, i64), Shape> {
    state
        .device_windows(device)
        .await
        .unwrap()
        .iter()
        .map(|w| ((w.kind, w.window.start_ms), shape(&w.window)))
        .collect()
}

/// Serve's windows of `device` from each of `seqs` once.
fn reference(
    spec: &WindowSpec,
    device: &str,
    seqs: impl Iterator<Item = u64>,
) -> BTreeMap<(WindowKind, i64), Shape> {
    let mut table = WindowTable::new();
    for s in seqs {
        let m = prepare_with(&telemetry(device, s), &Origin::Direct("t".into()), 0, spec).unwrap();
        table.apply(&m.device, m.seq, m.event_ms, m.windows);
    }
    table
        .iter()
        .filter(|(d, ..)| *d == device)
        .map(|(_, _, _, k, w)| ((k, w.start_ms), shape(w)))
        .collect()
}

fn failed(response: &aws_lambda_events::event::streams::KinesisEventResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect()
}

#[tokio::test]
async fn a_crash_before_the_device_write_is_finished_by_any_redelivery_without_counting_twice() {
    let (client, table, dead) = moto_state_tables("retry").await;
    let state = DynamoState::new(client.clone(), &table, &dead);
    let spec = WindowSpec::default();
    let dev = "lam-crash";
    let batch = |seqs: std::ops::RangeInclusive<u64>| {
        let messages: Vec<(&str, u64)> = seqs.map(|s| (dev, s)).collect();
        event(1, &messages)
    };

    // Messages 1-6 fold into two minutes; the function dies before the device write.
    state.fail_next_commits(1);
    let response = handle(&batch(1..=6), &state).await;
    assert_eq!(
        failed(&response).len(),
        1,
        "the device's first record is reported"
    );
    assert!(
        state.device(dev).await.unwrap().is_none(),
        "nothing committed yet"
    );
    let half = stored(&state, dev).await;
    assert_eq!(
        half.values().map(|s| s.2).sum::<u64>(),
        60,
        "the windows were written: {half:?}"
    );

    // A redelivery in another split: 4-9 (4-6 already in the windows, 7-9 new).
    let response = handle(&batch(4..=9), &state).await;
    assert!(failed(&response).is_empty(), "{response:?}");
    let device = state.device(dev).await.unwrap().unwrap();
    assert_eq!(
        device["readings"], "60",
        "messages 4-9 counted once: {device:?}"
    );
    assert_eq!(stored(&state, dev).await, reference(&spec, dev, 1..=9));

    // Then everything again: 1-3 are new to the device, already in their windows.
    let response = handle(&batch(1..=9), &state).await;
    assert!(failed(&response).is_empty(), "{response:?}");
    let device = state.device(dev).await.unwrap().unwrap();
    assert_eq!(device["readings"], "90", "{device:?}");
    assert_eq!(device["messages"], "9", "{device:?}");
    assert!(device["seen"].ends_with(":1-9"), "one range: {device:?}");
    assert_eq!(stored(&state, dev).await, reference(&spec, dev, 1..=9));

    // And once more: nothing changes, and a device write that fails now changes nothing.
    state.fail_next_commits(1);
    let response = handle(&batch(1..=9), &state).await;
    assert!(
        failed(&response).is_empty(),
        "duplicates need no write: {response:?}"
    );
    let again = state.device(dev).await.unwrap().unwrap();
    assert_eq!(again["readings"], "90");
    assert_eq!(stored(&state, dev).await, reference(&spec, dev, 1..=9));

    // Every item expires (35 days by default): windows after their end, the device after it
    // was last seen, the fleet entry with it.
    let items = client.scan().table_name(&table).send().await.unwrap();
    let items = items.items();
    assert!(items.len() >= 4, "{items:?}");
    let day = 86_400;
    for item in items {
        let expires: i64 = item["expires_at"].as_n().unwrap().parse().unwrap();
        let sk = item["sk"].as_s().unwrap();
        if let Some(end) = item.get("end_ms") {
            let end: i64 = end.as_n().unwrap().parse().unwrap();
            assert_eq!(expires, end / 1000 + 35 * day, "{sk}");
        } else {
            let now = osprey_cloud::clock::now_ms() / 1000;
            assert!((expires - now - 35 * day).abs() < 600, "{sk}: {expires}");
        }
    }
}

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

#[tokio::test]
async fn any_order_split_duplicates_and_crashes_give_serves_windows_once() {
    let (client, table, dead) = moto_state_tables("shuffle").await;
    let nz = |v| NonZeroU32::new(v).unwrap();
    let hop = Some(Hopping {
        size_ms: nz(30_000),
        slide_ms: nz(10_000),
    });
    // Sessions close after 15 s of silence: messages 10 s apart chain into one session, and a
    // missing message splits it until it arrives.
    let spec = WindowSpec::new(WINDOW_MS, hop, Some(nz(15_000))).unwrap();
    let state = DynamoState::new(client, &table, &dead).with_windows(spec);
    let devices = ["lam-a", "lam-b", "lam-c"];
    let per_device = 40u64;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // Each device's messages, mostly in order with some moved later (a replay) and a fifth
    // sent twice; devices interleaved.
    let mut queues: Vec<Vec<u64>> = devices
        .iter()
        .map(|_| {
            let mut seqs: Vec<u64> = (1..=per_device).collect();
            for _ in 0..8 {
                let from = rng.below(per_device) as usize;
                let to = (from + 1 + rng.below(10) as usize).min(seqs.len() - 1);
                let s = seqs.remove(from);
                seqs.insert(to, s);
            }
            for _ in 0..per_device / 5 {
                let at = rng.below(seqs.len() as u64) as usize;
                let s = seqs[rng.below(seqs.len() as u64) as usize];
                seqs.insert(at, s);
            }
            seqs
        })
        .collect();
    let mut stream: Vec<(&str, u64)> = Vec::new();
    while queues.iter().any(|q| !q.is_empty()) {
        let d = rng.below(devices.len() as u64) as usize;
        if !queues[d].is_empty() {
            stream.push((devices[d], queues[d].remove(0)));
        }
    }

    // Batches of 1-12 records; half of them crash one device's write first. A failed batch
    // is retried from the record it reports, as the event source mapping does.
    let (mut at, mut crashes) = (0usize, 0);
    while at < stream.len() {
        let size = 1 + rng.below(12) as usize;
        let end = (at + size).min(stream.len());
        if rng.below(2) == 0 {
            state.fail_next_commits(1);
        }
        let batch = event(at as u32, &stream[at..end]);
        let response = handle(&batch, &state).await;
        state.fail_next_commits(0);
        match failed(&response).first() {
            Some(reported) => {
                crashes += 1;
                let i = batch
                    .records
                    .iter()
                    .position(|r| &r.kinesis.sequence_number == reported)
                    .unwrap();
                at += i;
            }
            None => at = end,
        }
    }
    assert!(
        crashes > 5,
        "the run crashed too seldom to test anything: {crashes}"
    );
    for dev in devices {
        let device = state.device(dev).await.unwrap().unwrap();
        assert_eq!(
            device["messages"],
            per_device.to_string(),
            "{dev}: {device:?}"
        );
        assert_eq!(device["readings"], (per_device * 10).to_string(), "{dev}");
        let got = stored(&state, dev).await;
        let want = reference(&spec, dev, 1..=per_device);
        assert!(
            want.keys().any(|(k, _)| *k == WindowKind::Session),
            "sessions were computed"
        );
        assert_eq!(got, want, "{dev}: windows differ from serve's fold");
    }
}
