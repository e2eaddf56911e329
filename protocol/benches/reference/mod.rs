//! The three reference streams of issue #3, shared by the criterion benches, the size table
//! (`examples/sizes.rs`) and the size test (`tests/sizes.rs`). Deterministic: a fixed-seed
//! xorshift generator, no dependencies.
//!
//! | stream | readings | batch | values |
//! |---|---|---|---|
//! | `one-sensor-1hz` | 1 series at 1 Hz | 60 readings (one minute) | temperature, random walk, 0.01 °C |
//! | `accel-100hz` | 1 axis at 100 Hz | 1000 readings (10 s) | vibration + noise, 0.001 m/s² |
//! | `gateway-10x1hz` | 10 series at 1 Hz | 600 readings (one minute) | mixed, see [`gateway`] |
//!
//! Times are what an agent sampling on a timer stamps with its wall clock: 1 Hz streams get
//! 0–2 ms of jitter per reading; the accelerometer's FIFO is hardware-timed (exactly 10 ms).

#![allow(dead_code)] // each including target uses a different part

use osprey_protocol::{Series, TelemetryBatch};

/// Device id used for every stream.
pub const DEVICE: &str = "gateway-0042";

/// Start of every stream: 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000_000;

/// xorshift64*: small, fast, deterministic.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next() % (hi - lo + 1) as u64) as i64
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A value at a decimal resolution, the way agents round (`(v * 100).round() / 100`).
fn at(v: f64, decimals: i32) -> f64 {
    let p = 10f64.powi(decimals);
    (v * p).round() / p
}

/// One of the three streams, as the batches an agent would send.
pub struct Stream {
    pub name: &'static str,
    pub batches: Vec<TelemetryBatch>,
}

impl Stream {
    pub fn readings(&self) -> usize {
        self.batches.iter().map(TelemetryBatch::reading_count).sum()
    }
}

/// All three streams, `minutes` long each.
pub fn all(minutes: usize) -> Vec<Stream> {
    vec![
        Stream {
            name: "one-sensor-1hz",
            batches: one_sensor(minutes),
        },
        Stream {
            name: "accel-100hz",
            batches: accel(minutes),
        },
        Stream {
            name: "gateway-10x1hz",
            batches: gateway(minutes),
        },
    ]
}

/// Wall-clock sample times at 1 Hz with 0–2 ms of jitter.
fn ticks_1hz(rng: &mut Rng, minute: usize) -> Vec<i64> {
    (0..60)
        .map(|s| T0 + (minute as i64 * 60 + s) * 1000 + rng.range(0, 2))
        .collect()
}

/// One temperature sensor at 1 Hz, one batch per minute.
pub fn one_sensor(minutes: usize) -> Vec<TelemetryBatch> {
    let mut rng = Rng::new(1);
    let mut centi = 4150i64;
    (0..minutes)
        .map(|m| {
            let mut s = Series::new("bearing", "temperature", "Cel");
            for t in ticks_1hz(&mut rng, m) {
                centi += rng.range(-3, 3);
                s.push(t, at(centi as f64 / 100.0, 2));
            }
            TelemetryBatch { series: vec![s] }
        })
        .collect()
}

/// One accelerometer axis at 100 Hz, one batch per 10 s: a 24.6 Hz shaft line and its second
/// harmonic plus broadband noise, in m/s² at 0.001.
pub fn accel(minutes: usize) -> Vec<TelemetryBatch> {
    let mut rng = Rng::new(2);
    let mut batches = Vec::new();
    for b in 0..minutes * 6 {
        let mut s = Series::new("spindle", "accel_x", "m/s2");
        for i in 0..1000 {
            let n = (b * 1000 + i) as f64;
            let t = n / 100.0;
            let v = 0.8 * (2.0 * std::f64::consts::PI * 24.6 * t).sin()
                + 0.25 * (2.0 * std::f64::consts::PI * 49.2 * t + 0.3).sin()
                + 0.05 * (rng.unit() - 0.5);
            s.push(T0 + (b * 1000 + i) as i64 * 10, at(v, 3));
        }
        batches.push(TelemetryBatch { series: vec![s] });
    }
    batches
}

/// A gateway with 10 sensors sampled together at 1 Hz, one batch per minute.
pub fn gateway(minutes: usize) -> Vec<TelemetryBatch> {
    let mut rng = Rng::new(3);
    // (sensor, metric, unit, decimals, start, step range in resolution units, walk or noise)
    let spec: [(&str, &str, &str, i32, f64, i64, bool); 10] = [
        ("bearing", "temperature", "Cel", 2, 41.5, 3, true),
        ("motor", "current", "A", 2, 12.0, 5, false),
        ("motor", "voltage", "V", 1, 400.0, 4, false),
        ("pump", "pressure", "bar", 3, 6.2, 8, true),
        ("pump", "flow", "m3/h", 2, 35.0, 10, true),
        ("ambient", "humidity", "%", 1, 48.0, 2, true),
        ("bearing", "vibration", "mm/s", 2, 2.1, 15, false),
        ("line", "count", "", 0, 120_000.0, 3, true),
        ("valve", "open", "", 0, 1.0, 0, false),
        ("power", "active", "kW", 3, 7.5, 40, false),
    ];
    let mut level: Vec<f64> = spec.iter().map(|s| s.4).collect();
    (0..minutes)
        .map(|m| {
            let mut series: Vec<Series> = spec
                .iter()
                .map(|(n, me, u, ..)| Series::new(n, me, u))
                .collect();
            for t in ticks_1hz(&mut rng, m) {
                for (i, (_, metric, _, dec, start, step, walk)) in spec.iter().enumerate() {
                    let res = 10f64.powi(-dec);
                    let v = if *metric == "count" {
                        level[i] += rng.range(0, *step) as f64;
                        level[i]
                    } else if *metric == "open" {
                        if rng.range(0, 299) == 0 {
                            level[i] = 1.0 - level[i];
                        }
                        level[i]
                    } else if *walk {
                        level[i] += rng.range(-step, *step) as f64 * res;
                        level[i]
                    } else {
                        start + rng.range(-step, *step) as f64 * res
                    };
                    series[i].push(t, at(v, *dec));
                }
            }
            TelemetryBatch { series }
        })
        .collect()
}

/// One reading as a typical JSON agent sends it (baseline (i)).
#[derive(serde::Serialize)]
pub struct JsonReading<'a> {
    pub device: &'a str,
    pub sensor: &'a str,
    pub metric: &'a str,
    pub unit: &'a str,
    pub ts: i64,
    pub value: f64,
}

/// Baseline (i): the batch as a JSON array of per-reading objects.
pub fn json_per_reading(batch: &TelemetryBatch) -> Vec<u8> {
    let readings: Vec<JsonReading<'_>> = batch
        .series
        .iter()
        .flat_map(|s| {
            s.readings().map(|(ts, value)| JsonReading {
                device: DEVICE,
                sensor: &s.sensor,
                metric: &s.metric,
                unit: &s.unit,
                ts,
                value,
            })
        })
        .collect();
    serde_json::to_vec(&readings).unwrap_or_default()
}

/// Baseline (ii): the same columnar envelope, keys and compact columns, as JSON.
pub fn json_envelope(batch: &TelemetryBatch, seq: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "v": 1, "k": 1, "d": DEVICE, "q": seq, "b": batch }))
        .unwrap_or_default()
}

/// Bytes per reading of one stream: (CBOR, JSON (i), JSON (ii)).
pub fn sizes(stream: &Stream) -> (f64, f64, f64) {
    let (mut cbor, mut j1, mut j2) = (0usize, 0usize, 0usize);
    for (seq, batch) in stream.batches.iter().enumerate() {
        let msg = osprey_protocol::Envelope::new(
            DEVICE,
            1000 + seq as u64,
            osprey_protocol::Body::Telemetry(batch.clone()),
        );
        cbor += msg.encode().map(|b| b.len()).unwrap_or(usize::MAX / 4);
        j1 += json_per_reading(batch).len();
        j2 += json_envelope(batch, 1000 + seq as u64).len();
    }
    let n = stream.readings() as f64;
    (cbor as f64 / n, j1 as f64 / n, j2 as f64 / n)
}
