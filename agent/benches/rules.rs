//! Rule evaluation cost per sample, and sample-to-local-alert latency.
//!
//! ```sh
//! cargo bench -p osprey-agent --bench rules
//! ```
//!
//! 1. criterion: `RuleSet::evaluate` over one sample (the simulator's three readings) with the
//!    two default rules, and with 64 rules of every kind (with delays) watching those series.
//! 2. latency, printed as p50/p99 over 20,000 alert events: the sampler's path from reading
//!    the sensors to the local alert having fired, measured two ways:
//!    - `memory`: simulator sample → rules → alert logged (tracing, no subscriber);
//!    - `sysfs`: a hwmon channel read from files (with its health check) → rules → GPIO
//!      output written through sysfs; the files are a fake tree in `/dev/shm` (tmpfs, in
//!      memory like sysfs), so this is the kernel's VFS cost, not a real pin's.
//!
//! Each iteration's reading alternates between alarm and safe levels, so every iteration
//! fires a raise or a clear.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench: failures are the report

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use osprey_agent::config::{ActionConfig, ActionKind, ActionOn, Config};
use osprey_agent::rule::action::Actions;
use osprey_agent::sensors::set::SensorSet;
use osprey_agent::sim::default_rules;
use osprey_agent::{Reading, RuleSet, Scenario, Simulator};
use osprey_protocol::{Comparison, ThresholdRule};

fn many_rules() -> Vec<ThresholdRule> {
    let series = [
        ("bearing", "temperature"),
        ("bearing", "vibration"),
        ("motor", "current"),
    ];
    (0..64)
        .map(|i| {
            let (sensor, metric) = series[i % 3];
            let id = format!("r{i}");
            let base = ThresholdRule::new(&id, sensor, metric, Comparison::Above);
            match i % 4 {
                0 => ThresholdRule {
                    threshold: 1000.0 + i as f64,
                    clear: Some(900.0),
                    on_delay_ms: 5000,
                    ..base
                },
                1 => ThresholdRule {
                    low: Some(-1000.0),
                    high: Some(1000.0),
                    when: Comparison::Outside,
                    off_delay_ms: 1000,
                    ..base
                },
                2 => ThresholdRule {
                    threshold: 50.0,
                    window_ms: Some(60_000),
                    when: Comparison::RateAbove,
                    ..base
                },
                _ => ThresholdRule {
                    threshold: -1000.0,
                    when: Comparison::Below,
                    ..base
                },
            }
        })
        .collect()
}

fn evaluate(c: &mut Criterion) {
    let mut group = c.benchmark_group("evaluate_one_sample");
    for (name, rules) in [
        ("2_default_rules", default_rules()),
        ("64_mixed_rules", many_rules()),
    ] {
        let mut set = RuleSet::new(rules);
        let mut sim = Simulator::new("bench-1", 1, Scenario::Steady);
        let mut t = 0i64;
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    t += 1000;
                    sim.sample(t)
                },
                |sample| {
                    for r in &sample {
                        black_box(set.evaluate(r));
                    }
                },
                criterion::BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, evaluate);

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "sample_to_local_alert/{name}: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} alerts)",
        percentile(&samples, 0.50).as_secs_f64() * 1e6,
        percentile(&samples, 0.99).as_secs_f64() * 1e6,
        samples.last().unwrap().as_secs_f64() * 1e6,
        samples.len()
    );
}

const EVENTS: usize = 20_000;

fn latency_memory() {
    let mut rules = RuleSet::new(vec![ThresholdRule {
        threshold: 80.0,
        clear: Some(75.0),
        ..ThresholdRule::new("hot", "bearing", "temperature", Comparison::Above)
    }]);
    let mut sim = Simulator::new("bench-1", 1, Scenario::Steady);
    let mut out = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        let start = Instant::now();
        let mut sample = sim.sample(i as i64);
        sample[0].value = if i % 2 == 0 { 90.0 } else { 40.0 };
        let mut fired = 0;
        for r in &sample {
            for alert in rules.evaluate(r) {
                tracing::warn!(rule = %alert.rule, value = alert.value, "alert");
                fired += 1;
            }
        }
        out.push(start.elapsed());
        assert_eq!(fired, 1);
    }
    report("memory", out);
}

fn latency_sysfs() {
    // Real sysfs lives in memory; a temp directory on disk would time the disk's writes.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    };
    println!("fake sysfs tree in {}", dir.path().display());
    let hwmon = dir.path().join("hwmon/hwmon0");
    let gpio = dir.path().join("gpio/gpio18");
    std::fs::create_dir_all(&hwmon).unwrap();
    std::fs::create_dir_all(&gpio).unwrap();
    std::fs::write(hwmon.join("name"), "cpu_thermal\n").unwrap();
    std::fs::write(gpio.join("value"), "0").unwrap();
    std::fs::write(gpio.join("direction"), "out").unwrap();
    let text = format!(
        "device_id = \"bench-1\"\n[journal]\npath = {:?}\n\
         [[sensors]]\nname = \"soc\"\nkind = \"hwmon\"\nchip = \"cpu_thermal\"\nroot = {:?}\n\
         [[rules]]\nid = \"hot\"\nsensor = \"soc\"\nmetric = \"temp1\"\nwhen = \"above\"\nthreshold = 80.0\nclear = 75.0\n",
        dir.path().join("journal"),
        dir.path().join("hwmon"),
    );
    let config = Config::from_toml_str(&text, dir.path()).unwrap();
    let mut sensors = SensorSet::from_config(&config);
    let mut rules = RuleSet::new(config.rules.clone());
    let actions = Actions::new(vec![gpio_action(dir.path().join("gpio"))]);
    let mut out = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        // Set the next value outside the timed span (the "sensor" changing).
        let milli = if i % 2 == 0 { "90000\n" } else { "40000\n" };
        std::fs::write(hwmon.join("temp1_input"), milli).unwrap();
        let start = Instant::now();
        let sample = sensors.sample(i as i64);
        let mut fired = 0;
        for r in sample
            .readings
            .iter()
            .filter(|r: &&Reading| r.metric == "temp1")
        {
            for alert in rules.evaluate(r) {
                fired += actions.fire("bench-1", &alert);
            }
        }
        out.push(start.elapsed());
        assert_eq!(fired, 1);
    }
    let level = std::fs::read_to_string(gpio.join("value")).unwrap();
    assert_eq!(level, "0", "the last event was a clear");
    report("sysfs", out);
}

fn gpio_action(root: PathBuf) -> ActionConfig {
    ActionConfig::new(
        "hot",
        ActionOn::Both,
        ActionKind::Gpio {
            line: 18,
            active_low: false,
            root,
        },
    )
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!(
        "{cpu}, {cores} cores, {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    println!("machine: {}", machine());
    latency_memory();
    latency_sysfs();
}
