//! `osprey health-report`: how far the health score can be trusted, measured on the agent's
//! simulated machines.
//!
//! ```text
//!  Simulator (agent, every scenario, seeded) ─► batches of 5 s (the agent's batch age)
//!     ─► window::aggregate_with ─► WindowTable::apply (the store's `fold`)
//!     ─► newest windows per series ─► signals::compute ─► health::score, after every batch
//! ```
//!
//! The readings go through the same window folding, signals and score the store uses (the
//! store recomputes a series' signals from its newest tumbling windows whenever a batch
//! changes them, the open window included), in simulated event time, without sleeping: a
//! simulated week of one machine sampled every 30 s takes well under a second in a release
//! build. Active alerts are left out: the agent's rules are exact on the simulator (see
//! `osprey_agent::sim`), and the report measures what the signals add.
//!
//! Per scenario and sample period it counts the evaluations (one per batch) whose score is
//! below 100, the one-minute windows with at least one such evaluation, and for the
//! `degrading` bearing, per rule, how long before the true crossing of the rule's level
//! (noise-free, from the scenario's formula) the machine was first flagged and first given
//! a predicted crossing, and how far the predicted crossing times were from the true one.

use std::collections::{BTreeMap, BTreeSet};

use osprey_agent::sim::{
    default_rules, Scenario, Simulator, DEGRADING_CELSIUS_PER_SAMPLE, DEGRADING_START_CELSIUS,
    DEGRADING_VIBRATION_PER_SAMPLE, SCENARIOS,
};
use osprey_protocol::{Series, TelemetryBatch};
use serde::Serialize;

use super::health;
use super::signals::{compute, SeriesSignals, SignalsConfig, WindowPoint};
use crate::window::table::WindowTable;
use crate::window::{aggregate_with, window_start, WindowKind, WINDOW_MS};

/// Event time the simulated runs start at (a whole minute).
const T0_MS: i64 = 1_767_225_600_000;
const MINUTE_MS: i64 = 60_000;

/// What to simulate.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportConfig {
    /// Simulated time per machine.
    pub duration_ms: i64,
    /// Sample periods to run every scenario at.
    pub intervals_ms: Vec<i64>,
    /// Simulated machines per scenario and period (machine `i` uses `seed + i`).
    pub devices: usize,
    /// Seed of the first machine.
    pub seed: u64,
    /// Scenarios to run.
    pub scenarios: Vec<Scenario>,
    /// The agent cuts a batch after this much time (its `batch.max_age_ms`, 5 s by default);
    /// the score is evaluated after every batch.
    pub batch_ms: i64,
}

impl Default for ReportConfig {
    fn default() -> ReportConfig {
        ReportConfig {
            duration_ms: 7 * 24 * 3_600_000,
            intervals_ms: vec![30_000, 1_000],
            devices: 3,
            seed: 42,
            scenarios: SCENARIOS.to_vec(),
            batch_ms: 5_000,
        }
    }
}

/// What a scenario is, for judging its flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A healthy machine: every flag is a false alarm.
    Healthy,
    /// A failing machine: flags should come before its rules' levels are crossed.
    MachineFault,
    /// A failing sensor on a healthy machine: flags are fair.
    SensorFault,
}

/// The kind of a scenario.
pub fn kind(scenario: Scenario) -> Kind {
    match scenario {
        Scenario::Degrading => Kind::MachineFault,
        Scenario::Drifting | Scenario::Stuck => Kind::SensorFault,
        Scenario::Steady | Scenario::Noisy | Scenario::Dropouts => Kind::Healthy,
    }
}

/// One rule level the `degrading` scenario crosses, as seen by the score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Crossing {
    /// Rule id.
    pub rule: String,
    /// Its level.
    pub threshold: f64,
    /// True (noise-free) crossing, ms after the start.
    pub true_crossing_ms: i64,
    /// Shortest time from the machine's first flag to the crossing over the machines
    /// (negative: flagged only after it; `None`: never flagged before the end).
    pub flag_lead_ms: Option<i64>,
    /// Shortest time from the first prediction of this rule to the crossing (`None`: no
    /// prediction before the crossing).
    pub prediction_lead_ms: Option<i64>,
    /// Largest |predicted − true crossing| of a machine's first prediction.
    pub first_prediction_error_ms: Option<i64>,
    /// Median of |predicted − true crossing| / (true crossing − now) over every prediction
    /// made before the crossing.
    pub median_relative_error: Option<f64>,
    /// Predictions made before the crossing.
    pub predictions: u64,
}

/// The figures of one scenario at one sample period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScenarioReport {
    /// Scenario name.
    pub scenario: String,
    /// What it is.
    pub kind: Kind,
    /// Sample period.
    pub interval_ms: i64,
    /// Machines simulated.
    pub devices: usize,
    /// Simulated time per machine.
    pub duration_ms: i64,
    /// Scores computed (one per batch per machine).
    pub evaluations: u64,
    /// Of those, below 100 (any deduction).
    pub flagged_evaluations: u64,
    /// `flagged_evaluations / evaluations`.
    pub flag_rate: f64,
    /// One-minute windows with at least one flagged evaluation, over all machines.
    pub flagged_windows: u64,
    /// Lowest score seen.
    pub min_score: u32,
    /// Earliest flag over the machines, ms after the start.
    pub first_flag_ms: Option<i64>,
    /// The reasons of that first flag.
    pub first_reasons: Vec<String>,
    /// Rule levels crossed (the `degrading` scenario).
    pub crossings: Vec<Crossing>,
}

/// True (noise-free) crossings of [`default_rules`] in `scenario` at sample period
/// `interval_ms`: `(rule, level, ms after the start)`.
fn true_crossings(scenario: Scenario, interval_ms: i64) -> Vec<(String, f64, i64)> {
    if scenario != Scenario::Degrading {
        return Vec::new();
    }
    default_rules()
        .into_iter()
        .filter_map(|r| {
            let samples = match r.metric.as_str() {
                "temperature" => {
                    (r.threshold - DEGRADING_START_CELSIUS) / DEGRADING_CELSIUS_PER_SAMPLE
                }
                // The scenario's vibration starts at 2.0 mm/s (see `osprey_agent::sim`).
                "vibration" => (r.threshold - 2.0) / DEGRADING_VIBRATION_PER_SAMPLE,
                _ => return None,
            };
            let ms = (samples * interval_ms as f64).round() as i64;
            Some((r.id, r.threshold, ms))
        })
        .collect()
}

/// One rule's predictions in a run, made before its true crossing.
#[derive(Debug, Default)]
struct RulePredictions {
    /// The first: (ms after the start it was made, predicted crossing ms after the start).
    first: Option<(i64, i64)>,
    /// |predicted − true crossing| / (true crossing − now) of each.
    relative_errors: Vec<f64>,
}

/// What one machine's run saw.
#[derive(Debug, Default)]
struct Run {
    evaluations: u64,
    flagged: u64,
    flagged_windows: BTreeSet<i64>,
    min_score: u32,
    first_flag: Option<(i64, Vec<String>)>,
    /// Per rule.
    predictions: BTreeMap<String, RulePredictions>,
}

/// Simulates one machine and scores it after every batch.
fn run_machine(
    device: &str,
    seed: u64,
    scenario: Scenario,
    interval_ms: i64,
    cfg: &ReportConfig,
    signals_cfg: &SignalsConfig,
) -> Run {
    let crossings = true_crossings(scenario, interval_ms);
    let mut sim = Simulator::new(device, seed, scenario);
    let mut table = WindowTable::new();
    let mut points: BTreeMap<(String, String), Vec<WindowPoint>> = BTreeMap::new();
    let mut latest: BTreeMap<(String, String), SeriesSignals> = BTreeMap::new();
    let mut run = Run {
        min_score: 100,
        ..Run::default()
    };
    let keep = signals_cfg.trend_windows + 1;
    let samples_per_batch = (cfg.batch_ms / interval_ms.max(1)).max(1);
    let samples = cfg.duration_ms / interval_ms.max(1);
    let mut seq = 0u64;
    let mut i = 0i64;
    while i < samples {
        let mut series: BTreeMap<(String, String), Series> = BTreeMap::new();
        let mut now_ms = T0_MS;
        for _ in 0..samples_per_batch.min(samples - i) {
            now_ms = T0_MS + i * interval_ms;
            for r in sim.sample(now_ms) {
                series
                    .entry((r.sensor.clone(), r.metric.clone()))
                    .or_insert_with(|| Series::new(&r.sensor, &r.metric, &r.unit))
                    .push(r.time_ms, r.value);
            }
            i += 1;
        }
        seq += 1;
        let batch = TelemetryBatch {
            series: series.into_values().collect(),
        };
        let deltas = aggregate_with(&batch, WINDOW_MS);
        let Some(updates) = table.apply(device, seq, Some(now_ms), deltas) else {
            continue;
        };
        // The store's refresh: every touched series, from its newest windows.
        let mut touched = BTreeSet::new();
        for u in updates.iter().filter(|u| u.kind == WindowKind::Tumbling) {
            let key = (u.sensor.clone(), u.metric.clone());
            let list = points.entry(key.clone()).or_default();
            let point = WindowPoint {
                start_ms: u.window.start_ms,
                end_ms: u.window.end_ms,
                moments: u.window.agg.moments,
            };
            match list.iter_mut().rev().find(|p| p.start_ms == point.start_ms) {
                Some(p) => *p = point,
                None => {
                    list.push(point);
                    list.sort_by_key(|p| p.start_ms);
                    if list.len() > 2 * keep {
                        list.drain(..list.len() - keep);
                    }
                }
            }
            touched.insert((key, u.window.unit.clone()));
        }
        for ((sensor, metric), unit) in touched {
            let list = &points[&(sensor.clone(), metric.clone())];
            if let Some(mut s) = compute(&sensor, &metric, list, signals_cfg) {
                s.unit = unit;
                latest.insert((sensor, metric), s);
            }
        }
        let signals: Vec<SeriesSignals> = latest.values().cloned().collect();
        let h = health::score(&signals, &[]);
        let since_ms = now_ms - T0_MS;
        run.evaluations += 1;
        run.min_score = run.min_score.min(h.score);
        if h.score < 100 || !h.reasons.is_empty() {
            run.flagged += 1;
            run.flagged_windows.insert(window_start(now_ms, WINDOW_MS));
            if run.first_flag.is_none() {
                let reasons = h.reasons.iter().map(|r| r.reason.clone()).collect();
                run.first_flag = Some((since_ms, reasons));
            }
        }
        for s in &signals {
            for p in &s.predictions {
                let Some((_, _, true_ms)) = crossings.iter().find(|c| c.0 == p.rule) else {
                    continue;
                };
                if since_ms >= *true_ms {
                    continue;
                }
                let predicted_ms = p.crossing_ms - T0_MS;
                let entry = run.predictions.entry(p.rule.clone()).or_default();
                entry.first.get_or_insert((since_ms, predicted_ms));
                entry
                    .relative_errors
                    .push((predicted_ms - true_ms).abs() as f64 / (true_ms - since_ms) as f64);
            }
        }
    }
    run
}

/// Runs every configured scenario at every period and returns their figures.
pub fn run(cfg: &ReportConfig) -> Vec<ScenarioReport> {
    let signals_cfg = SignalsConfig {
        rules: default_rules(),
        ..SignalsConfig::default()
    };
    let mut out = Vec::new();
    for &interval_ms in &cfg.intervals_ms {
        for &scenario in &cfg.scenarios {
            let runs: Vec<Run> = (0..cfg.devices.max(1))
                .map(|d| {
                    let device = format!("{}-{:02}", scenario.name(), d + 1);
                    let seed = cfg.seed.wrapping_add(d as u64);
                    run_machine(&device, seed, scenario, interval_ms, cfg, &signals_cfg)
                })
                .collect();
            out.push(summarise(scenario, interval_ms, cfg, &runs));
        }
    }
    out
}

fn summarise(
    scenario: Scenario,
    interval_ms: i64,
    cfg: &ReportConfig,
    runs: &[Run],
) -> ScenarioReport {
    let evaluations: u64 = runs.iter().map(|r| r.evaluations).sum();
    let flagged: u64 = runs.iter().map(|r| r.flagged).sum();
    let first = runs
        .iter()
        .filter_map(|r| r.first_flag.as_ref())
        .min_by_key(|(t, _)| *t);
    let crossings = true_crossings(scenario, interval_ms)
        .into_iter()
        .map(|(rule, threshold, true_ms)| {
            // The worst machine: the latest first flag, the latest first prediction.
            let flag_lead_ms = runs
                .iter()
                .map(|r| r.first_flag.as_ref().map(|(t, _)| true_ms - t))
                .min()
                .flatten();
            let firsts: Vec<Option<(i64, i64)>> = runs
                .iter()
                .map(|r| r.predictions.get(&rule).and_then(|p| p.first))
                .collect();
            let prediction_lead_ms = firsts
                .iter()
                .map(|f| f.map(|(t, _)| true_ms - t))
                .min()
                .flatten();
            let first_prediction_error_ms = firsts
                .iter()
                .flatten()
                .map(|(_, predicted)| (predicted - true_ms).abs())
                .max();
            let mut errors: Vec<f64> = runs
                .iter()
                .filter_map(|r| r.predictions.get(&rule))
                .flat_map(|p| p.relative_errors.iter().copied())
                .collect();
            errors.sort_by(f64::total_cmp);
            Crossing {
                rule,
                threshold,
                true_crossing_ms: true_ms,
                flag_lead_ms,
                prediction_lead_ms,
                first_prediction_error_ms,
                median_relative_error: errors.get(errors.len() / 2).copied(),
                predictions: errors.len() as u64,
            }
        })
        .collect();
    ScenarioReport {
        scenario: scenario.name().to_owned(),
        kind: kind(scenario),
        interval_ms,
        devices: runs.len(),
        duration_ms: cfg.duration_ms,
        evaluations,
        flagged_evaluations: flagged,
        flag_rate: if evaluations == 0 {
            0.0
        } else {
            flagged as f64 / evaluations as f64
        },
        flagged_windows: runs.iter().map(|r| r.flagged_windows.len() as u64).sum(),
        min_score: runs.iter().map(|r| r.min_score).min().unwrap_or(100),
        first_flag_ms: first.map(|(t, _)| *t),
        first_reasons: first.map(|(_, r)| r.clone()).unwrap_or_default(),
        crossings,
    }
}

fn minutes(ms: Option<i64>) -> String {
    ms.map_or("-".to_owned(), |ms| {
        format!("{:.1} min", ms as f64 / MINUTE_MS as f64)
    })
}

/// The figures as a table for a terminal, with the first flag's reasons under it.
pub fn table(reports: &[ScenarioReport]) -> String {
    let mut out = format!(
        "{:<10} {:<13} {:>6} {:>4} {:>9} {:>8} {:>9} {:>8} {:>5} {:>12}\n",
        "scenario",
        "kind",
        "period",
        "dev",
        "evals",
        "flagged",
        "rate",
        "windows",
        "min",
        "first flag"
    );
    for r in reports {
        let kind = match r.kind {
            Kind::Healthy => "healthy",
            Kind::MachineFault => "machine fault",
            Kind::SensorFault => "sensor fault",
        };
        out.push_str(&format!(
            "{:<10} {:<13} {:>5}s {:>4} {:>9} {:>8} {:>9.6} {:>8} {:>5} {:>12}\n",
            r.scenario,
            kind,
            r.interval_ms / 1000,
            r.devices,
            r.evaluations,
            r.flagged_evaluations,
            r.flag_rate,
            r.flagged_windows,
            r.min_score,
            minutes(r.first_flag_ms),
        ));
        for c in &r.crossings {
            out.push_str(&format!(
                "    {} ({}) crossed at {}: flagged {} before, predicted {} before \
                 (first prediction off by {}, median relative error {}, {} predictions)\n",
                c.rule,
                c.threshold,
                minutes(Some(c.true_crossing_ms)),
                minutes(c.flag_lead_ms),
                minutes(c.prediction_lead_ms),
                minutes(c.first_prediction_error_ms),
                c.median_relative_error
                    .map_or("-".to_owned(), |e| format!("{:.1} %", e * 100.0)),
                c.predictions
            ));
        }
        if r.kind != Kind::Healthy || r.flagged_evaluations > 0 {
            for reason in &r.first_reasons {
                out.push_str(&format!("    first flag: {reason}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_day_has_no_false_flag_and_the_bearing_is_flagged_early() {
        let cfg = ReportConfig {
            duration_ms: 24 * 3_600_000,
            intervals_ms: vec![30_000],
            devices: 2,
            scenarios: vec![
                Scenario::Steady,
                Scenario::Noisy,
                Scenario::Dropouts,
                Scenario::Degrading,
            ],
            ..ReportConfig::default()
        };
        let reports = run(&cfg);
        println!("{}", table(&reports));
        for r in &reports {
            assert!(
                r.evaluations >= 2 * 2_880,
                "{}: {}",
                r.scenario,
                r.evaluations
            );
            match r.kind {
                Kind::Healthy => {
                    assert_eq!(
                        r.flagged_evaluations, 0,
                        "{}: {:?}",
                        r.scenario, r.first_reasons
                    );
                    assert_eq!(r.min_score, 100);
                }
                _ => {
                    let hot = r
                        .crossings
                        .iter()
                        .find(|c| c.rule == "bearing-hot")
                        .unwrap();
                    let lead = hot.flag_lead_ms.expect("flagged");
                    assert!(lead >= 30 * MINUTE_MS, "flagged {lead} ms before 80 °C");
                    assert!(hot.prediction_lead_ms.is_some());
                }
            }
        }
    }

    #[test]
    fn at_demo_speed_the_vibration_breach_is_predicted_before_it_happens() {
        let cfg = ReportConfig {
            duration_ms: 3_600_000,
            intervals_ms: vec![1_000],
            devices: 1,
            scenarios: vec![Scenario::Steady, Scenario::Degrading],
            ..ReportConfig::default()
        };
        let reports = run(&cfg);
        println!("{}", table(&reports));
        assert_eq!(
            reports[0].flagged_evaluations, 0,
            "{:?}",
            reports[0].first_reasons
        );
        let vib = reports[1]
            .crossings
            .iter()
            .find(|c| c.rule == "vibration-high")
            .unwrap();
        assert!(vib.prediction_lead_ms.is_some_and(|l| l > 0), "{vib:?}");
    }
}
