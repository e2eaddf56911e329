//! The size targets of issue #3 on the three reference streams (benches/reference/mod.rs):
//! at most 6 bytes per reading for one sensor at 1 Hz batched per minute, and at most one
//! eighth of per-reading JSON for all three. Sizes are deterministic, so this is a test, not a
//! benchmark; `cargo run --release -p osprey-protocol --example sizes` prints the table.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

#[path = "../benches/reference/mod.rs"]
mod reference;

#[test]
fn reference_streams_meet_the_size_targets() {
    for stream in reference::all(10) {
        let (cbor, json_readings, json_envelope) = reference::sizes(&stream);
        println!(
            "{}: {cbor:.2} bytes/reading, JSON (i) {json_readings:.2}, JSON (ii) {json_envelope:.2}",
            stream.name
        );
        assert!(
            cbor * 8.0 <= json_readings,
            "{}: {cbor:.2} bytes/reading is over 1/8 of JSON's {json_readings:.2}",
            stream.name
        );
        if stream.name == "one-sensor-1hz" {
            assert!(cbor <= 6.0, "one sensor at 1 Hz: {cbor:.2} bytes/reading");
        }
    }
}

#[test]
fn reference_streams_round_trip_exactly() {
    for stream in reference::all(2) {
        for (i, batch) in stream.batches.iter().enumerate() {
            let msg = osprey_protocol::Envelope::new(
                reference::DEVICE,
                i as u64,
                osprey_protocol::Body::Telemetry(batch.clone()),
            );
            assert_eq!(
                osprey_protocol::decode(&msg.encode().unwrap()).unwrap(),
                msg
            );
        }
    }
}
