#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Maintenance signals on synthetic series with known answers.
//!
//! - Degradation: a level rising linearly towards a rule's threshold, with noise. Wherever a
//!   time to threshold is predicted and the true remaining time is at least an hour, the
//!   prediction must be within 10 % of it; and most series must get a prediction while an hour
//!   or more remains.
//! - Flat noise: 1 000 series with no trend, evaluated after every window; the false trend
//!   and false prediction counts are printed (`--nocapture`) and must be zero.

use osprey_cloud::analytics::signals::{compute, SignalsConfig, WindowPoint};
use osprey_cloud::analytics::Moments;
use osprey_protocol::ThresholdRule;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const MINUTE: i64 = 60_000;
const HOUR: f64 = 3_600_000.0;
const T0: i64 = 1_700_000_000_000 - 1_700_000_000_000 % MINUTE;
const READINGS_PER_WINDOW: usize = 10;

fn rule(threshold: f64) -> ThresholdRule {
    serde_json::from_value(serde_json::json!({
        "id": "bearing-hot",
        "sensor": "bearing",
        "metric": "temperature",
        "when": "above",
        "threshold": threshold,
        "severity": "critical",
    }))
    .unwrap()
}

fn gaussian(rng: &mut ChaCha8Rng) -> f64 {
    // Box-Muller.
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

/// One-minute windows of `level(t)` plus Gaussian noise of `sd`, `n` of them.
fn windows(
    rng: &mut ChaCha8Rng,
    n: usize,
    sd: f64,
    level: impl Fn(f64) -> f64,
) -> Vec<WindowPoint> {
    (0..n)
        .map(|k| {
            let start_ms = T0 + k as i64 * MINUTE;
            let mut m = Moments::new();
            for r in 0..READINGS_PER_WINDOW {
                let t_ms = start_ms + (r as i64 * MINUTE) / READINGS_PER_WINDOW as i64;
                m.add(level((t_ms - T0) as f64 / HOUR) + sd * gaussian(rng));
            }
            WindowPoint {
                start_ms,
                end_ms: start_ms + MINUTE,
                moments: m,
            }
        })
        .collect()
}

#[test]
fn time_to_threshold_is_within_ten_percent_when_an_hour_or_more_remains() {
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (mut checked, mut worst, mut series_predicted_early) = (0usize, 0.0f64, 0usize);
    let series = 40;
    for _ in 0..series {
        let start = rng.random_range(30.0..50.0);
        let slope = rng.random_range(1.0..5.0); // units per hour
        let sd = rng.random_range(0.1..1.0);
        let threshold = 80.0;
        let crossing_h = (threshold - start) / slope;
        let cfg = SignalsConfig {
            rules: vec![rule(threshold)],
            ..SignalsConfig::default()
        };
        let n = (crossing_h * 60.0) as usize;
        let all = windows(&mut rng, n, sd, |h| start + slope * h);
        let mut early = false;
        for k in 1..=all.len() {
            let s = compute("bearing", "temperature", &all[..k], &cfg).unwrap();
            let Some(p) = s.predictions.first() else {
                continue;
            };
            assert_eq!(p.rule, "bearing-hot");
            let true_remaining = crossing_h * HOUR - (s.as_of_ms - T0) as f64;
            if true_remaining < HOUR {
                continue;
            }
            early = true;
            let err = (p.remaining_ms as f64 - true_remaining).abs() / true_remaining;
            worst = worst.max(err);
            assert!(
                err <= 0.10,
                "slope {slope}/h, noise {sd}: predicted {} h, true {} h after {k} windows",
                p.remaining_ms as f64 / HOUR,
                true_remaining / HOUR
            );
            assert!(p.remaining_low_ms <= p.remaining_ms);
            assert!(p.remaining_high_ms.is_none_or(|h| h >= p.remaining_ms));
            assert_eq!(p.maintenance_alert, p.remaining_ms <= cfg.horizon_ms);
            checked += 1;
        }
        series_predicted_early += usize::from(early);
    }
    println!(
        "degradation: {checked} predictions with >= 1 h remaining checked over {series} series, \
         worst relative error {:.2} %, {series_predicted_early} series predicted >= 1 h ahead",
        worst * 100.0
    );
    assert!(checked > 1_000, "too few predictions to judge: {checked}");
    assert!(
        series_predicted_early * 10 >= series * 8,
        "only {series_predicted_early} of {series} series got a prediction an hour ahead"
    );
}

#[test]
fn flat_noisy_series_predict_nothing() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut evaluations, mut false_trends, mut false_predictions) = (0usize, 0usize, 0usize);
    let series = 1_000;
    for _ in 0..series {
        let level = rng.random_range(20.0..80.0);
        let sd = rng.random_range(0.1..3.0);
        // A threshold a few standard deviations above: close enough that a spurious slope
        // would predict a crossing soon.
        let cfg = SignalsConfig {
            rules: vec![rule(level + 5.0 * sd)],
            ..SignalsConfig::default()
        };
        let all = windows(&mut rng, 240, sd, |_| level);
        for k in cfg.min_trend_windows..=all.len() {
            let s = compute("bearing", "temperature", &all[..k], &cfg).unwrap();
            evaluations += 1;
            false_trends += usize::from(s.trend.is_some());
            false_predictions += usize::from(!s.predictions.is_empty());
        }
    }
    println!(
        "flat noise: {series} series, {evaluations} evaluations, {false_trends} false trends, \
         {false_predictions} false predictions (rate {:.6} per series)",
        false_predictions as f64 / series as f64
    );
    assert_eq!(false_predictions, 0);
    assert_eq!(false_trends, 0);
}

#[tokio::test]
async fn the_store_keeps_signals_and_the_device_health_names_the_predicted_breach() {
    use osprey_cloud::pipeline::{Origin, Pipeline};
    use osprey_cloud::store::Store;
    use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};

    let dir = tempfile::tempdir().unwrap();
    let cfg = SignalsConfig {
        rules: vec![rule(80.0)],
        horizon_ms: 24 * 3_600_000,
        ..SignalsConfig::default()
    };
    let store = Store::open_with(dir.path().join("osprey.db"), cfg).unwrap();
    let pipeline = Pipeline::new(store.writer());
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    // Three hours of a bearing warming at 4 °C/h from 40 °C: 80 °C is 10 h from the start.
    let all = windows(&mut rng, 180, 0.3, |h| 40.0 + 4.0 * h);
    for (k, w) in all.iter().enumerate() {
        let mut s = Series::new("bearing", "temperature", "Cel");
        s.push(w.start_ms + 30_000, w.moments.mean);
        let payload = Envelope::new(
            "pump-1",
            k as u64 + 1,
            Body::Telemetry(TelemetryBatch { series: vec![s] }),
        )
        .encode()
        .unwrap();
        pipeline
            .ingest(&payload, Origin::Direct("t".into()))
            .await
            .unwrap();
    }
    let signals = store.reader().device_signals("pump-1").await.unwrap();
    let series = &signals.series[0];
    let p = &series.predictions[0];
    let true_remaining = 10.0 * HOUR - (series.as_of_ms - T0) as f64;
    assert!(
        (p.remaining_ms as f64 - true_remaining).abs() <= 0.1 * true_remaining,
        "predicted {} h, true {} h",
        p.remaining_ms as f64 / HOUR,
        true_remaining / HOUR
    );
    assert!(p.maintenance_alert);
    assert!(signals.health.score <= 70, "{:?}", signals.health);
    assert!(signals.health.reasons[0]
        .reason
        .contains("maintenance alert"));
    let device = store.reader().device("pump-1").await.unwrap().unwrap();
    assert_eq!(device.health, signals.health);
    assert_eq!(device.next_breach.unwrap().prediction.rule, "bearing-hot");
    drop(pipeline);
    store.close().await.unwrap();
}
