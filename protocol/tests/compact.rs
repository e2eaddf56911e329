//! The 1.1 column forms: bit-exact round trips for every kind of value and time column, and
//! splitting batches under a byte limit (nothing over it, nothing lost, order kept).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use osprey_protocol::{
    decode, Body, EncodeError, Envelope, Series, TelemetryBatch, ENVELOPE_OVERHEAD_MAX,
};
use proptest::prelude::*;

/// Values of the kinds agents produce: decimals at some scale, integers, arbitrary doubles
/// (NaN, infinities, -0.0, subnormals included), and mixes of them.
fn values() -> impl Strategy<Value = Vec<f64>> {
    let decimal = (0u32..=6, -1_000_000_000i64..1_000_000_000)
        .prop_map(|(s, k)| k as f64 / 10f64.powi(s as i32));
    let walk = (
        0u32..=3,
        -500_000i64..500_000,
        prop::collection::vec(-30i64..30, 0..200),
    )
        .prop_map(|(s, start, steps)| {
            let mut k = start;
            steps
                .into_iter()
                .map(|d| {
                    k += d;
                    k as f64 / 10f64.powi(s as i32)
                })
                .collect::<Vec<_>>()
        });
    prop_oneof![
        walk,
        prop::collection::vec(decimal, 0..100),
        prop::collection::vec(any::<u64>().prop_map(f64::from_bits), 0..50),
        prop::collection::vec(
            prop_oneof![
                (-1000i64..1000).prop_map(|k| k as f64 / 100.0),
                Just(f64::NAN),
                Just(-0.0),
                Just(f64::INFINITY),
                Just(f64::MIN_POSITIVE / 8.0),
                Just(0.1 + 0.2),
                Just(9.007_199_254_740_993e15),
            ],
            0..60
        ),
    ]
}

/// Time deltas: regular, jittered around a period, or arbitrary.
fn deltas(n: usize) -> impl Strategy<Value = Vec<u32>> {
    prop_oneof![
        (1u32..100_000).prop_map(move |p| (0..n).map(|i| if i == 0 { 0 } else { p }).collect()),
        (1u32..100_000, prop::collection::vec(-3i64..=3, n)).prop_map(|(p, jitter)| {
            jitter
                .iter()
                .enumerate()
                .map(|(i, j)| {
                    if i == 0 {
                        0
                    } else {
                        (i64::from(p) + j).max(0) as u32
                    }
                })
                .collect()
        }),
        prop::collection::vec(any::<u32>(), n),
    ]
}

fn series() -> impl Strategy<Value = Series> {
    (
        "[a-z]{1,10}",
        "[a-z]{1,10}",
        "[A-Za-z%/]{0,4}",
        any::<i64>(),
        values(),
    )
        .prop_flat_map(|(n, m, u, t0, values)| {
            let len = values.len();
            (Just((n, m, u, t0, values)), deltas(len))
        })
        .prop_map(|((n, m, u, t0, values), dt_ms)| Series {
            sensor: n,
            metric: m,
            unit: u,
            t0_ms: t0,
            dt_ms,
            values,
        })
}

/// Series compared with values as bits (NaN equals itself, -0.0 differs from 0.0).
fn bits(s: &Series) -> (String, String, String, i64, Vec<u32>, Vec<u64>) {
    (
        s.sensor.clone(),
        s.metric.clone(),
        s.unit.clone(),
        s.t0_ms,
        s.dt_ms.clone(),
        s.values.iter().map(|v| v.to_bits()).collect(),
    )
}

/// Every reading of a batch, in order, as (sensor, metric, unit, time, value bits).
fn flatten(batches: &[TelemetryBatch]) -> Vec<(String, String, String, i64, u64)> {
    batches
        .iter()
        .flat_map(|b| &b.series)
        .flat_map(|s| {
            s.readings().map(|(t, v)| {
                (
                    s.sensor.clone(),
                    s.metric.clone(),
                    s.unit.clone(),
                    t,
                    v.to_bits(),
                )
            })
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn compact_columns_round_trip_bit_exactly(series in prop::collection::vec(series(), 1..4)) {
        let msg = Envelope::new("dev-1", 7, Body::Telemetry(TelemetryBatch { series }));
        let bytes = msg.encode().expect("encode");
        let Body::Telemetry(got) = decode(&bytes).expect("decode").body else {
            panic!("not telemetry");
        };
        let Body::Telemetry(want) = &msg.body else { unreachable!() };
        prop_assert_eq!(
            got.series.iter().map(bits).collect::<Vec<_>>(),
            want.series.iter().map(bits).collect::<Vec<_>>()
        );
    }

    #[test]
    fn compact_form_is_never_bigger_than_the_1_0_form(s in series()) {
        // The 1.0 form: every delta and every value as a float.
        #[derive(serde::Serialize)]
        struct V10<'a> { n: &'a str, m: &'a str, u: &'a str, t: i64, dt: &'a [u32], x: &'a [f64] }
        let mut old = Vec::new();
        ciborium::into_writer(
            &V10 { n: &s.sensor, m: &s.metric, u: &s.unit, t: s.t0_ms, dt: &s.dt_ms, x: &s.values },
            &mut old,
        ).unwrap();
        prop_assert!(s.encoded_len() <= old.len(), "{} > {}", s.encoded_len(), old.len());
        prop_assert!(s.encoded_len() <= s.encoded_len_bound());
    }

    #[test]
    fn split_parts_fit_keep_order_and_lose_nothing(
        series in prop::collection::vec(series(), 0..6),
        limit in 400usize..6000,
    ) {
        let batch = TelemetryBatch { series };
        let parts = batch.split_to_fit(limit).expect("split");
        let longest: String = "d".repeat(128);
        for (i, part) in parts.iter().enumerate() {
            prop_assert!(part.max_message_len() <= limit);
            let msg = Envelope::new(&longest, u64::MAX, Body::Telemetry(part.clone()));
            let bytes = msg.encode_with_limit(limit).expect("a part encodes under the limit");
            prop_assert!(bytes.len() <= limit);
            prop_assert!(i == 0 || part.reading_count() > 0, "empty part {i}");
        }
        prop_assert_eq!(flatten(&parts), flatten(std::slice::from_ref(&batch)));
    }
}

#[test]
fn a_batch_that_fits_comes_back_whole() {
    let mut s = Series::new("bearing", "temperature", "Cel");
    for i in 0..60 {
        s.push(1_700_000_000_000 + i * 1000, 41.5 + i as f64 / 100.0);
    }
    let batch = TelemetryBatch { series: vec![s] };
    assert_eq!(batch.split_to_fit(4096).unwrap(), vec![batch.clone()]);
    // Given room for half its readings, it comes back in order in several parts.
    let half = ENVELOPE_OVERHEAD_MAX + (batch.max_message_len() - ENVELOPE_OVERHEAD_MAX) / 2 + 20;
    let parts = batch.split_to_fit(half).unwrap();
    assert!(parts.len() >= 2, "{} parts", parts.len());
    assert_eq!(flatten(&parts), flatten(&[batch]));
}

#[test]
fn a_limit_below_one_reading_is_a_typed_error() {
    let mut s = Series::new("bearing", "temperature", "Cel");
    s.push(0, 1.0);
    let batch = TelemetryBatch { series: vec![s] };
    let err = batch.split_to_fit(ENVELOPE_OVERHEAD_MAX + 10).unwrap_err();
    assert!(
        matches!(err, EncodeError::LimitTooSmall { ref sensor, .. } if sensor == "bearing"),
        "{err:?}"
    );
    assert!(err.to_string().contains("raise the limit"), "{err}");
}

#[test]
fn encode_split_numbers_the_parts() {
    let mut s = Series::new("acc", "x", "g");
    for i in 0..2000 {
        s.push(i * 10, (i % 97) as f64 / 7.0);
    }
    let batch = TelemetryBatch { series: vec![s] };
    let messages = batch.encode_split("pump-7", 40, 2048).unwrap();
    assert!(messages.len() > 1);
    let mut readings = 0;
    for (i, bytes) in messages.iter().enumerate() {
        assert!(bytes.len() <= 2048);
        let msg = decode(bytes).unwrap();
        assert_eq!(msg.seq, 40 + i as u64);
        if let Body::Telemetry(b) = msg.body {
            readings += b.reading_count();
        }
    }
    assert_eq!(readings, 2000);
}
