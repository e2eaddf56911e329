//! A deterministic simulated machine: a bearing (temperature, vibration) and a motor (current).
//!
//! Every value depends only on `(seed, device id, scenario, sample index)`, never on the clock,
//! so a test can rebuild a [`Simulator`] with the same inputs and recompute exactly what an agent
//! published. The random stream is ChaCha8 seeded with `seed ^ fnv1a64(device_id)`; noise is
//! built from uniform draws with plain IEEE arithmetic only (no `ln`/`cos`, whose last bit can
//! differ between libm implementations), so x86 and ARM produce the same bits.
//!
//! # Scenarios
//!
//! | series | unit | `steady` | `degrading` (sample index `i`) |
//! |---|---|---|---|
//! | `bearing/temperature` | `Cel` | 42 ± 0.8 σ | `min(60 + 0.15·i, 120)` ± 0.5 σ |
//! | `bearing/vibration` | `mm/s` | 2.0 ± 0.15 σ | `min(2.0 + 0.01·i, 12)` ± 0.15 σ |
//! | `motor/current` | `A` | 12 ± 0.3 σ | `min(12 + 0.004·i, 15)` ± 0.3 σ |
//!
//! Further scenarios for testing rules and sensor health (the series and units are the same):
//!
//! | scenario | what happens |
//! |---|---|
//! | `noisy` | `steady` with four times the noise (temperature ± 3.2 σ) |
//! | `drifting` | `steady` whose temperature drifts up by 0.02 °C per sample (a sensor losing calibration), up to +30 °C |
//! | `stuck` | `steady`, but from sample 100 on the temperature repeats its last value forever (a frozen sensor) |
//! | `dropouts` | `steady`, but each reading is missing with probability 1/10 (drawn from a second stream, so the values that do arrive equal `steady`'s) |
//!
//! The noise is bounded (a sum of four uniforms, at most ±3.47 σ), which makes the rule
//! outcomes of [`default_rules`] exact rather than probable:
//!
//! - `steady` never raises an alert.
//! - `degrading` raises `bearing-hot` (≥ 80 °C) exactly once, at a sample index between 122
//!   and 145 (about two minutes at 1 s sampling, about 1.4 s at 10 ms), and never clears it:
//!   once a value reached 80 °C the trend is at least 78.3 °C, so no later value falls below
//!   the 75 °C clear level. Likewise `vibration-high` (≥ 7.1 mm/s) raises once between samples
//!   458 and 563 and never clears. A run with `max_samples = 600` therefore yields exactly two
//!   raise events and no clear.
//!
//! The sample index restarts at 0 with every run of the agent: a restarted `degrading` device
//! starts from a healthy bearing again.
//!
//! Values are rounded to two decimals: a realistic sensor resolution, and it keeps the CBOR
//! floats of a batch short.

use osprey_protocol::{Comparison, Severity, ThresholdRule};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use crate::reading::Reading;

/// Starting bearing temperature of the `degrading` scenario, °C.
pub const DEGRADING_START_CELSIUS: f64 = 60.0;
/// Bearing temperature rise per sample in the `degrading` scenario, °C.
pub const DEGRADING_CELSIUS_PER_SAMPLE: f64 = 0.15;
/// Bearing temperature at which the `degrading` scenario levels off, °C.
pub const DEGRADING_MAX_CELSIUS: f64 = 120.0;
/// Vibration growth per sample in the `degrading` scenario, mm/s.
pub const DEGRADING_VIBRATION_PER_SAMPLE: f64 = 0.01;

/// √3: scales the sum of four uniforms on [0, 1) minus 2 (variance 1/3) to unit variance.
const SQRT_3: f64 = 1.732_050_807_568_877_2;

/// What the simulated machine does over time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// A healthy machine: every series is noise around a constant level.
    Steady,
    /// A failing bearing: temperature and vibration rise linearly with the sample index.
    Degrading,
    /// A healthy machine measured with four times the noise.
    Noisy,
    /// A healthy machine whose temperature sensor drifts upwards.
    Drifting,
    /// A healthy machine whose temperature sensor freezes at sample [`STUCK_FROM`].
    Stuck,
    /// A healthy machine whose readings go missing one time in ten.
    Dropouts,
}

/// The sample index from which the `stuck` scenario repeats its temperature.
pub const STUCK_FROM: u64 = 100;

/// The sensors the simulated machine reports (each reading's `sensor`).
pub const SENSORS: [&str; 2] = ["bearing", "motor"];

/// Every scenario, in declaration order.
pub const SCENARIOS: [Scenario; 6] = [
    Scenario::Steady,
    Scenario::Degrading,
    Scenario::Noisy,
    Scenario::Drifting,
    Scenario::Stuck,
    Scenario::Dropouts,
];

impl Scenario {
    /// The scenario's name as written in the config file.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Steady => "steady",
            Scenario::Degrading => "degrading",
            Scenario::Noisy => "noisy",
            Scenario::Drifting => "drifting",
            Scenario::Stuck => "stuck",
            Scenario::Dropouts => "dropouts",
        }
    }
}

impl std::str::FromStr for Scenario {
    type Err = UnknownScenario;

    /// Parses a scenario name as written in the config file (for command-line flags).
    fn from_str(name: &str) -> Result<Scenario, UnknownScenario> {
        SCENARIOS
            .into_iter()
            .find(|s| s.name() == name)
            .ok_or_else(|| UnknownScenario(name.to_owned()))
    }
}

/// A scenario name that is not one of [`SCENARIOS`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scenario {0:?} (expected steady, degrading, noisy, drifting, stuck or dropouts)")]
pub struct UnknownScenario(pub String);

/// A seeded simulated machine. See the [module docs](self) for the value model.
#[derive(Debug, Clone)]
pub struct Simulator {
    rng: ChaCha8Rng,
    scenario: Scenario,
    index: u64,
    /// `stuck`: the frozen temperature.
    frozen: Option<f64>,
    /// `dropouts`: which readings go missing, a stream of its own.
    drops: ChaCha8Rng,
}

impl Simulator {
    /// A simulator for `device_id`; equal arguments give equal readings.
    pub fn new(device_id: &str, seed: u64, scenario: Scenario) -> Simulator {
        Simulator {
            rng: ChaCha8Rng::seed_from_u64(seed ^ fnv1a64(device_id.as_bytes())),
            scenario,
            index: 0,
            frozen: None,
            drops: ChaCha8Rng::seed_from_u64(!(seed ^ fnv1a64(device_id.as_bytes()))),
        }
    }

    /// Number of samples taken so far (the index of the next sample).
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Takes the next sample: one reading per series, all stamped `time_ms`. The values do not
    /// depend on `time_ms`.
    pub fn sample(&mut self, time_ms: i64) -> Vec<Reading> {
        // Sample indices stay far below 2^53, so the conversion is exact.
        let i = self.index as f64;
        self.index += 1;
        // Draw the noise for every series first and always in the same order, so the stream
        // position depends only on the index.
        let (n_temp, n_vib, n_cur) = (self.noise(), self.noise(), self.noise());
        let steady = (42.0 + 0.8 * n_temp, 2.0 + 0.15 * n_vib, 12.0 + 0.3 * n_cur);
        let (temperature, vibration, current) = match self.scenario {
            Scenario::Steady | Scenario::Stuck | Scenario::Dropouts => steady,
            Scenario::Degrading => (
                (DEGRADING_START_CELSIUS + DEGRADING_CELSIUS_PER_SAMPLE * i)
                    .min(DEGRADING_MAX_CELSIUS)
                    + 0.5 * n_temp,
                (2.0 + DEGRADING_VIBRATION_PER_SAMPLE * i).min(12.0) + 0.15 * n_vib,
                (12.0 + 0.004 * i).min(15.0) + 0.3 * n_cur,
            ),
            Scenario::Noisy => (42.0 + 3.2 * n_temp, 2.0 + 0.6 * n_vib, 12.0 + 1.2 * n_cur),
            Scenario::Drifting => (
                (42.0 + (0.02 * i).min(30.0)) + 0.8 * n_temp,
                steady.1,
                steady.2,
            ),
        };
        let mut temperature = round2(temperature);
        if self.scenario == Scenario::Stuck && self.index > STUCK_FROM {
            temperature = *self.frozen.get_or_insert(temperature);
        }
        let mut readings = vec![
            Reading::new(SENSORS[0], "temperature", "Cel", time_ms, temperature),
            Reading::new(
                SENSORS[0],
                "vibration",
                "mm/s",
                time_ms,
                round2(vibration.max(0.0)),
            ),
            Reading::new(
                SENSORS[1],
                "current",
                "A",
                time_ms,
                round2(current.max(0.0)),
            ),
        ];
        if self.scenario == Scenario::Dropouts {
            // Drawn from the second stream, so the noise stream stays steady's.
            let keep = [(); 3].map(|()| self.drops.next_u64() % 10 != 0);
            let mut k = keep.iter();
            readings.retain(|_| k.next().copied().unwrap_or(true));
        }
        readings
    }

    /// Approximately standard normal noise, bounded to ±2√3: the Irwin–Hall sum of four
    /// uniforms, centred and scaled. Only exact IEEE operations, so it is bit-reproducible.
    fn noise(&mut self) -> f64 {
        let sum: f64 = (0..4).map(|_| self.uniform()).sum();
        (sum - 2.0) * SQRT_3
    }

    /// A uniform value in [0, 1) from the top 53 bits of the stream.
    fn uniform(&mut self) -> f64 {
        // 53 bits fit an f64 mantissa exactly; 2^-53 is a power of two, so the product is exact.
        (self.rng.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// The rules that go with the simulated machine: `bearing-hot` (critical, ≥ 80 °C, clears
/// below 75 °C) and `vibration-high` (warning, ≥ 7.1 mm/s — the ISO 10816-3 zone C/D boundary
/// for medium machines — clears below 6.0 mm/s).
pub fn default_rules() -> Vec<ThresholdRule> {
    vec![
        ThresholdRule {
            threshold: 80.0,
            clear: Some(75.0),
            severity: Severity::Critical,
            ..ThresholdRule::new("bearing-hot", "bearing", "temperature", Comparison::Above)
        },
        ThresholdRule {
            threshold: 7.1,
            clear: Some(6.0),
            severity: Severity::Warning,
            ..ThresholdRule::new("vibration-high", "bearing", "vibration", Comparison::Above)
        },
    ]
}

/// 64-bit FNV-1a: a tiny hash that is stable across Rust versions and platforms, unlike
/// `std`'s `DefaultHasher`, whose algorithm may change between releases.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    bytes.iter().fold(OFFSET_BASIS, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(PRIME)
    })
}

/// Rounds to two decimals.
fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rule::RuleSet;
    use osprey_protocol::AlertEvent;

    fn run(device: &str, seed: u64, scenario: Scenario, n: usize) -> Vec<Vec<Reading>> {
        let mut sim = Simulator::new(device, seed, scenario);
        (0..n).map(|i| sim.sample(i as i64 * 1000)).collect()
    }

    #[test]
    fn scenario_names_round_trip() {
        for scenario in SCENARIOS {
            assert_eq!(scenario.name().parse::<Scenario>(), Ok(scenario));
        }
        assert!("wobbly".parse::<Scenario>().is_err());
    }

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        // Reference values from the FNV specification's test suite.
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn same_inputs_give_same_values_regardless_of_time() {
        let mut a = Simulator::new("pump-7", 42, Scenario::Degrading);
        let mut b = Simulator::new("pump-7", 42, Scenario::Degrading);
        for i in 0..500 {
            let ra = a.sample(i);
            let rb = b.sample(1_700_000_000_000 + i * 7);
            let va: Vec<f64> = ra.iter().map(|r| r.value).collect();
            let vb: Vec<f64> = rb.iter().map(|r| r.value).collect();
            assert_eq!(va, vb, "sample {i}");
        }
    }

    #[test]
    fn devices_and_seeds_get_different_streams() {
        let base = run("pump-7", 42, Scenario::Steady, 20);
        assert_ne!(base, run("pump-8", 42, Scenario::Steady, 20));
        assert_ne!(base, run("pump-7", 43, Scenario::Steady, 20));
    }

    #[test]
    fn steady_values_stay_in_their_bands() {
        for sample in run("pump-1", 7, Scenario::Steady, 2000) {
            let [t, v, c] = [sample[0].value, sample[1].value, sample[2].value];
            assert!((39.0..=45.0).contains(&t), "temperature {t}");
            assert!((1.4..=2.6).contains(&v), "vibration {v}");
            assert!((10.9..=13.1).contains(&c), "current {c}");
        }
    }

    #[test]
    fn values_have_two_decimals() {
        for sample in run("pump-1", 7, Scenario::Degrading, 200) {
            for r in sample {
                let cents = r.value * 100.0;
                assert!((cents - cents.round()).abs() < 1e-6, "{}", r.value);
            }
        }
    }

    #[test]
    fn degrading_raises_each_default_rule_once_and_never_clears() {
        for (device, seed) in [("pump-1", 1), ("pump-7", 42), ("fan:3", u64::MAX)] {
            let mut rules = RuleSet::new(default_rules());
            let mut events = Vec::new();
            for (i, sample) in run(device, seed, Scenario::Degrading, 600)
                .into_iter()
                .enumerate()
            {
                for r in &sample {
                    events.extend(rules.evaluate(r).into_iter().map(|a| (i, a)));
                }
            }
            let summary: Vec<(&str, AlertEvent)> = events
                .iter()
                .map(|(_, a)| (a.rule.as_str(), a.event))
                .collect();
            assert_eq!(
                summary,
                [
                    ("bearing-hot", AlertEvent::Raise),
                    ("vibration-high", AlertEvent::Raise)
                ],
                "{device}"
            );
            assert!((122..=145).contains(&events[0].0), "hot at {}", events[0].0);
            assert!((458..=563).contains(&events[1].0), "vib at {}", events[1].0);
        }
    }

    #[test]
    fn new_scenarios_do_what_they_say() {
        let steady = run("pump-3", 5, Scenario::Steady, 400);
        let temps = |scenario| -> Vec<f64> {
            run("pump-3", 5, scenario, 400)
                .iter()
                .map(|s| s[0].value)
                .collect()
        };
        // Stuck: from sample 100 the temperature never changes; before, it is steady's.
        let stuck = temps(Scenario::Stuck);
        assert!(stuck[100..].iter().all(|t| *t == stuck[100]));
        assert!(stuck[..=100]
            .iter()
            .zip(&steady)
            .all(|(a, b)| *a == b[0].value));
        // Drifting: same noise, trend +0.02 per sample.
        let drifting = temps(Scenario::Drifting);
        assert!((drifting[399] - steady[399][0].value - 7.98).abs() < 0.011);
        // Noisy: four times the spread of steady around the same level.
        let spread = |v: &[f64]| {
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let steady_temps: Vec<f64> = steady.iter().map(|s| s[0].value).collect();
        let ratio = spread(&temps(Scenario::Noisy)) / spread(&steady_temps);
        assert!((ratio - 4.0).abs() < 0.05, "{ratio}");
        // Dropouts: about one reading in ten is missing; those that arrive are steady's values.
        let dropouts = run("pump-3", 5, Scenario::Dropouts, 400);
        let missing: usize = dropouts.iter().map(|s| 3 - s.len()).sum();
        assert!((60..=180).contains(&missing), "{missing} of 1200 missing");
        for (got, want) in dropouts.iter().zip(&steady) {
            for r in got {
                assert!(want.contains(r), "{r:?} not in {want:?}");
            }
        }
    }

    #[test]
    fn steady_never_raises_default_rules() {
        let mut rules = RuleSet::new(default_rules());
        for sample in run("pump-2", 9, Scenario::Steady, 3000) {
            for r in &sample {
                assert!(rules.evaluate(r).is_empty());
            }
        }
    }
}
