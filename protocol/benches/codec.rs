//! Encode and decode throughput for the three reference streams (`reference/mod.rs`):
//! `cargo bench -p osprey-protocol --bench codec`. Criterion reports readings/s (elements);
//! and, in the `-bytes` groups, bytes/s of encoded CBOR.

#![allow(missing_docs)] // criterion_group! generates an undocumented function

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use osprey_protocol::{decode, Body, Envelope};

#[path = "reference/mod.rs"]
mod reference;

fn codec(c: &mut Criterion) {
    for stream in reference::all(10) {
        let messages: Vec<Envelope> = stream
            .batches
            .iter()
            .enumerate()
            .map(|(i, b)| Envelope::new(reference::DEVICE, i as u64, Body::Telemetry(b.clone())))
            .collect();
        let encoded: Vec<Vec<u8>> = messages
            .iter()
            .map(|m| m.encode().unwrap_or_default())
            .collect();
        let bytes: usize = encoded.iter().map(Vec::len).sum();
        let readings = stream.readings() as u64;
        println!(
            "{}: {} messages, {} readings, {} bytes ({:.2} bytes/reading)",
            stream.name,
            messages.len(),
            readings,
            bytes,
            bytes as f64 / readings as f64
        );

        // Readings per second, then the same runs as bytes per second of encoded CBOR.
        for (suffix, throughput) in [
            ("", Throughput::Elements(readings)),
            ("-bytes", Throughput::Bytes(bytes as u64)),
        ] {
            let mut group = c.benchmark_group(format!("{}{suffix}", stream.name));
            group.throughput(throughput);
            group.bench_function("encode", |b| {
                b.iter(|| {
                    for m in &messages {
                        black_box(m.encode().ok());
                    }
                })
            });
            group.bench_function("decode", |b| {
                b.iter(|| {
                    for e in &encoded {
                        black_box(decode(e).ok());
                    }
                })
            });
            group.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = codec
}
criterion_main!(benches);
