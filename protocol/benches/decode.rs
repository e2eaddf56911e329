//! Decoding speed, before and after: the direct decoder (`decode_any`) against the value-tree
//! decoder it replaced (`osprey_protocol::reference::decode_any`), on the same payloads, in
//! interleaved rounds (which one goes first alternates), each figure min / median / max over
//! the rounds:
//!
//! ```sh
//! cargo bench -p osprey-protocol --bench decode            # 15 rounds
//! cargo bench -p osprey-protocol --bench decode -- 31      # 31 rounds
//! ```
//!
//! Payload sets: the three reference streams (`reference/mod.rs`, 10 minutes each), the
//! messages of the cloud's window benchmark (two series of 60 readings at 1 Hz, two
//! decimals), and those messages packed into bundles as a draining gateway sends them.

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use osprey_protocol::{
    decode_any, encode_bundle, reference, Body, DecodeError, Decoded, Envelope, Series,
    TelemetryBatch,
};

#[path = "reference/mod.rs"]
mod streams;

struct Set {
    name: String,
    payloads: Vec<Vec<u8>>,
    readings: usize,
}

impl Set {
    fn new(name: &str, payloads: Vec<Vec<u8>>) -> Set {
        let readings = payloads
            .iter()
            .map(|p| {
                decode_any(p)
                    .unwrap()
                    .into_messages()
                    .iter()
                    .map(|m| match &m.body {
                        Body::Telemetry(b) => b.reading_count(),
                        _ => 0,
                    })
                    .sum::<usize>()
            })
            .sum();
        Set {
            name: name.to_owned(),
            payloads,
            readings,
        }
    }

    fn bytes(&self) -> usize {
        self.payloads.iter().map(Vec::len).sum()
    }
}

/// The window benchmark's fleet (`cloud/benches/windows.rs`): `messages` messages of two
/// series × 60 readings at 1 Hz from 100 devices.
fn window_fleet(messages: usize) -> Vec<Vec<u8>> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..messages)
        .map(|m| {
            let (device, seq) = (m % 100, (m / 100) as u64 + 1);
            let t0 = 1_700_000_000_000 + (seq as i64 - 1) * 60_000 + device as i64 * 7;
            let mut batch = TelemetryBatch::default();
            for (k, (sensor, metric, unit)) in [
                ("bearing", "temperature", "Cel"),
                ("bearing", "vibration", "mm/s"),
            ]
            .into_iter()
            .enumerate()
            {
                let mut s = Series::new(sensor, metric, unit);
                for r in 0..60 {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let noise = (state >> 11) as f64 / (1u64 << 53) as f64;
                    let v = ((40.0 + 20.0 * k as f64 + noise * 5.0) * 100.0).round() / 100.0;
                    s.push(t0 + r * 1_000, v);
                }
                batch.series.push(s);
            }
            let name = format!("dev-{device:05}");
            Envelope::new(&name, seq, Body::Telemetry(batch))
                .encode()
                .unwrap()
        })
        .collect()
}

/// The same messages as bundles of up to 64, one device per bundle.
fn bundles(messages: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut by_device: std::collections::BTreeMap<String, Vec<&[u8]>> = Default::default();
    for m in messages {
        let device = osprey_protocol::decode(m).unwrap().device;
        by_device.entry(device).or_default().push(m);
    }
    by_device
        .iter()
        .flat_map(|(device, msgs)| {
            msgs.chunks(64).map(move |chunk| {
                let last = osprey_protocol::decode(chunk[chunk.len() - 1]).unwrap().seq;
                encode_bundle(device, last, chunk).unwrap()
            })
        })
        .collect()
}

type Decoder = fn(&[u8]) -> Result<Decoded, DecodeError>;

/// Seconds to decode every payload of `set` `passes` times.
fn time(decoder: Decoder, set: &Set, passes: usize) -> f64 {
    let start = Instant::now();
    for _ in 0..passes {
        for p in &set.payloads {
            black_box(decoder(black_box(p)).ok());
        }
    }
    start.elapsed().as_secs_f64()
}

fn stats(mut xs: Vec<f64>) -> (f64, f64, f64) {
    xs.sort_by(f64::total_cmp);
    (xs[0], xs[xs.len() / 2], xs[xs.len() - 1])
}

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(15);
    let mut sets: Vec<Set> = streams::all(10)
        .into_iter()
        .map(|s| {
            let payloads = s
                .batches
                .iter()
                .enumerate()
                .map(|(i, b)| {
                    Envelope::new(streams::DEVICE, i as u64, Body::Telemetry(b.clone()))
                        .encode()
                        .unwrap()
                })
                .collect();
            Set::new(s.name, payloads)
        })
        .collect();
    let fleet = window_fleet(2_000);
    sets.push(Set::new("window-bench", fleet.clone()));
    sets.push(Set::new("window-bundles", bundles(&fleet)));

    println!("{rounds} rounds, reference and direct interleaved; min / median / max");
    println!(
        "{:<16} {:>7} {:>9} {:>10}  {:>28}  {:>28}  {:>7}",
        "payloads",
        "count",
        "readings",
        "bytes",
        "reference M readings/s",
        "direct M readings/s",
        "speedup"
    );
    for set in &sets {
        for p in &set.payloads {
            // Both accept every payload, with the same messages.
            assert_eq!(decode_any(p).ok(), reference::decode_any(p).ok());
        }
        // About 0.1 s per decoder and round for the slower one.
        let probe = time(reference::decode_any, set, 1).max(1e-6);
        let passes = ((0.1 / probe) as usize).max(1);
        let (mut old, mut new) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            let order: [(Decoder, &mut Vec<f64>); 2] = if round % 2 == 0 {
                [(reference::decode_any, &mut old), (decode_any, &mut new)]
            } else {
                [(decode_any, &mut new), (reference::decode_any, &mut old)]
            };
            for (decoder, out) in order {
                let secs = time(decoder, set, passes);
                out.push((set.readings * passes) as f64 / secs / 1e6);
            }
        }
        let (o, n) = (stats(old), stats(new));
        println!(
            "{:<16} {:>7} {:>9} {:>10}  {:>8.2} / {:>7.2} / {:>7.2}  {:>8.2} / {:>7.2} / {:>7.2}  {:>6.2}x",
            set.name,
            set.payloads.len(),
            set.readings,
            set.bytes(),
            o.0,
            o.1,
            o.2,
            n.0,
            n.1,
            n.2,
            n.1 / o.1
        );
    }
}
