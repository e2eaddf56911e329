//! Telemetry payloads for the suites: one series of readings, encoded as a gateway sends it.

use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};

/// Message `seq` of `device` in journal `epoch` holding `readings` (time in ms, value) of the
/// series `motor`/`temperature` in °C.
///
/// # Panics
///
/// When the message does not encode (more readings than a message may hold).
pub fn motor_temperature(
    device: &str,
    epoch: u64,
    seq: u64,
    readings: impl IntoIterator<Item = (i64, f64)>,
) -> Vec<u8> {
    let mut series = Series::new("motor", "temperature", "Cel");
    for (t, v) in readings {
        series.push(t, v);
    }
    Envelope::new(
        device,
        seq,
        Body::Telemetry(TelemetryBatch {
            series: vec![series],
        }),
    )
    .with_epoch(epoch)
    .encode()
    .unwrap_or_else(|e| panic!("message {seq} of {device} does not encode: {e}"))
}

/// Message `seq` of `device` (epoch 0): ten `motor`/`temperature` readings one second apart
/// from `t0_ms` + `seq` × 10 s, valued `seq`, `seq` + 0.1, … `seq` + 0.9, so messages 1–5 fill
/// the first minute after `t0_ms` and each message's readings are told apart by value.
pub fn ten_readings(device: &str, seq: u64, t0_ms: i64) -> Vec<u8> {
    let readings = (0..10).map(|r| {
        (
            t0_ms + (seq as i64 * 10 + r) * 1000,
            seq as f64 + r as f64 / 10.0,
        )
    });
    motor_temperature(device, 0, seq, readings)
}
