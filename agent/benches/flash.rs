//! Flash wear: disk bytes the journal writes per reading in steady state, against the payload
//! bytes of the same readings, for the three load profiles gateways run (1 Hz × 10 series,
//! 10 Hz × 10, 1 kHz × 3) under both durability settings (`flush_interval_ms = 0`, the
//! default, and `5000`, the SD-card setting), for each journal backend, and what opening a
//! journal that holds a backlog costs: bytes written (the start-up burst) and time.
//!
//! ```sh
//! cargo bench -p osprey-agent --bench flash
//! OSPREY_BENCH_FLASH_SECONDS=600 cargo bench -p osprey-agent --bench flash   # shorter runs
//! OSPREY_BENCH_JOURNAL=segment cargo bench -p osprey-agent --bench flash     # one backend
//! OSPREY_BENCH_FLASH_PART=startup cargo bench -p osprey-agent --bench flash  # start-up only
//! ```
//!
//! How: the agent's own batcher (default limits: 60 readings or 5 s) cuts batches from
//! readings shaped like the simulator's (two decimals, slow noise), the journal appends them as
//! the writer does, and each message is removed as its PUBACK would remove it (at once with
//! flush-each-append; after the flush that made it durable with an interval, since the uplink
//! sends only durable entries). Time is virtual: the journal's flushes happen only where the
//! agent calls them (every append, or `sync` every interval), so the disk traffic per virtual
//! second equals the real agent's, and an hour of traffic takes seconds to measure. Bytes are
//! `write_bytes` of `/proc/self/io`: what this process caused to be written to storage,
//! counted at page-dirtying time (a 100-byte write into a fresh page counts 4096), which is
//! what the card sees. The first quarter of each run is warm-up and is not counted.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench: failures are the report

mod common;

use std::time::Duration;

use common::{append_batch, disk_written};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use osprey_agent::journal::{self, Backend, Class, Durability, Journal, JournalOptions};
use osprey_agent::{Batcher, Reading};
use osprey_protocol::TelemetryBatch;

const DEVICE: &str = "flash-1";

/// One load profile.
struct Profile {
    name: &'static str,
    hz: u64,
    series: usize,
    /// Virtual seconds to run (warm-up included).
    seconds: u64,
    /// Batch limits (`None`: the agent's defaults).
    batch: Option<osprey_agent::BatchLimits>,
}

/// A deterministic noise source (xorshift), so every run measures the same readings.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64 - 0.5
    }
}

/// Figures of one run.
struct Figures {
    readings: u64,
    payload: u64,
    disk: u64,
    flushes: u64,
    messages: u64,
}

/// Opens (or creates) a journal of `backend` at `path`, as the agent does.
fn open(backend: Backend, path: &Path, options: JournalOptions) -> Arc<dyn Journal> {
    let opened = journal::open(path, options, backend).unwrap();
    assert_eq!(opened.backend, backend);
    opened.journal
}

fn run(backend: Backend, profile: &Profile, durability: Durability) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let journal = open(
        backend,
        &dir.path().join("journal"),
        JournalOptions {
            durability,
            ..JournalOptions::default()
        },
    );
    let mut batcher = Batcher::new(
        profile
            .batch
            .unwrap_or_else(osprey_agent::config::default_batch_limits),
    );
    let base = tokio::time::Instant::now();
    let period_us = 1_000_000 / profile.hz;
    let total_us = profile.seconds * 1_000_000;
    let warmup_us = total_us / 4;
    let interval_us = match durability {
        Durability::Interval(p) => Some(p.as_micros() as u64),
        Durability::EachAppend => None,
    };
    let mut next_sync = interval_us.unwrap_or(u64::MAX);
    let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
    let names: Vec<(String, String)> = (0..profile.series)
        .map(|i| (format!("machine-{}", i / 3), format!("metric-{}", i % 3)))
        .collect();
    let mut levels: Vec<f64> = (0..profile.series).map(|i| 20.0 + i as f64).collect();
    let mut unsynced: Vec<u64> = Vec::new();
    let mut f = Figures {
        readings: 0,
        payload: 0,
        disk: 0,
        flushes: 0,
        messages: 0,
    };
    let mut measuring = false;
    let mut disk_at_start = 0;
    let mut t_us = 0u64;
    let append = |batch: TelemetryBatch, measuring: bool, f: &mut Figures| -> u64 {
        let (seq, readings, bytes) = append_batch(&*journal, DEVICE, batch);
        if measuring {
            f.readings += u64::from(readings);
            f.payload += bytes as u64;
            f.messages += 1;
            if interval_us.is_none() {
                f.flushes += 1;
            }
        }
        seq
    };
    while t_us < total_us {
        if !measuring && t_us >= warmup_us {
            measuring = true;
            disk_at_start = disk_written();
        }
        let now = base + Duration::from_micros(t_us);
        let time_ms = 1_700_000_000_000 + (t_us / 1000) as i64;
        let mut cut = Vec::new();
        for (i, (sensor, metric)) in names.iter().enumerate() {
            levels[i] += 0.05 * noise.next();
            let value = (levels[i] * 100.0 + 40.0 * noise.next()).round() / 100.0;
            if let Some(batch) =
                batcher.push(&Reading::new(sensor, metric, "Cel", time_ms, value), now)
            {
                cut.push(batch);
            }
        }
        if batcher.is_due(now) {
            cut.extend(batcher.take());
        }
        for batch in cut {
            let seq = append(batch, measuring, &mut f);
            match interval_us {
                // Durable at once; its PUBACK comes back before the next append.
                None => {
                    journal.remove(Class::Telemetry, seq).unwrap();
                }
                Some(_) => unsynced.push(seq),
            }
        }
        if t_us >= next_sync {
            // As the agent's flusher: only when something is waiting to become durable.
            if journal.needs_sync() {
                journal.sync().unwrap();
                if measuring {
                    f.flushes += 1;
                }
            }
            for seq in unsynced.drain(..) {
                journal.remove(Class::Telemetry, seq).unwrap();
            }
            next_sync += interval_us.unwrap_or(u64::MAX);
        }
        t_us += period_us;
    }
    f.disk = disk_written() - disk_at_start;
    f
}

/// What opening a journal that holds a backlog costs.
struct Startup {
    /// Bytes written by the open (and the flush after it), mean and worst of the opens.
    mean: u64,
    worst: u64,
    /// Time of the open alone, mean and worst.
    time_mean: Duration,
    time_worst: Duration,
}

/// Opens a journal holding `readings` readings (batches of 50) `opens` times, each after a
/// clean close.
fn startup(backend: Backend, readings: u64, opens: u32) -> Startup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let options = JournalOptions {
        durability: Durability::Interval(Duration::from_secs(5)),
        ..JournalOptions::default()
    };
    {
        let journal = open(backend, &path, options);
        let mut batcher = Batcher::new(osprey_agent::config::default_batch_limits());
        let now = tokio::time::Instant::now();
        let batch = (0..50)
            .find_map(|i| {
                batcher.push(
                    &Reading::new("pump", "temperature", "Cel", i, 40.0 + i as f64 / 7.0),
                    now,
                )
            })
            .or_else(|| batcher.take())
            .unwrap();
        let per = batch.reading_count() as u64;
        for _ in 0..readings.div_ceil(per) {
            append_batch(&*journal, DEVICE, batch.clone());
        }
        journal.sync().unwrap();
    }
    let mut s = Startup {
        mean: 0,
        worst: 0,
        time_mean: Duration::ZERO,
        time_worst: Duration::ZERO,
    };
    for _ in 0..opens {
        std::thread::sleep(Duration::from_millis(300)); // sled lets go of its lock after drop
        let before = disk_written();
        let started = Instant::now();
        let journal = open(backend, &path, options);
        let took = started.elapsed();
        journal.sync().unwrap();
        drop(journal);
        let written = disk_written() - before;
        s.worst = s.worst.max(written);
        s.mean += written;
        s.time_worst = s.time_worst.max(took);
        s.time_mean += took;
    }
    s.mean /= u64::from(opens);
    s.time_mean /= opens;
    s
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; this one only runs under `cargo bench`
    }
    let seconds: u64 = std::env::var("OSPREY_BENCH_FLASH_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3600);
    let profiles = [
        Profile {
            name: "1 Hz x 10 series",
            hz: 1,
            series: 10,
            seconds,
            batch: None,
        },
        Profile {
            // The defaults of earlier versions (`[batch] max_readings = 60`, `max_age_ms = 5000`,
            // no target size): a flush writes at least one page, so small batches cost flash.
            name: "1 Hz x 10, 5 s batch",
            hz: 1,
            series: 10,
            seconds,
            batch: Some(osprey_agent::BatchLimits {
                max_readings: std::num::NonZeroUsize::new(60).unwrap(),
                max_age: Duration::from_secs(5),
                target_bytes: osprey_agent::batch::DEFAULT_BATCH_BYTES,
                ..osprey_agent::config::default_batch_limits()
            }),
        },
        Profile {
            name: "10 Hz x 10 series",
            hz: 10,
            series: 10,
            seconds,
            batch: None,
        },
        Profile {
            name: "1 kHz x 3 series",
            hz: 1000,
            series: 3,
            seconds: seconds / 6,
            batch: None,
        },
    ];
    let backends: Vec<Backend> = match std::env::var("OSPREY_BENCH_JOURNAL").as_deref() {
        Ok("segment") => vec![Backend::Segment],
        Ok("sled") => vec![Backend::Sled],
        _ => vec![Backend::Segment, Backend::Sled],
    };
    let part = std::env::var("OSPREY_BENCH_FLASH_PART").unwrap_or_default();
    let steady = part != "startup";
    let starting = part != "steady";
    println!("osprey-agent flash bench (journal disk bytes per reading, steady state)");
    println!(
        "{:<8} {:<21} {:<26} {:>9} {:>9} {:>9} {:>7} {:>10} {:>9}",
        "backend",
        "profile",
        "durability",
        "payload",
        "disk",
        "ratio",
        "msg/s",
        "flush/s",
        "GB/day"
    );
    for (backend, profile) in backends
        .iter()
        .flat_map(|b| profiles.iter().map(move |p| (*b, p)))
        .filter(|_| steady)
    {
        for (label, durability) in [
            ("flush each append (0)", Durability::EachAppend),
            (
                "interval 5000 ms (SD card)",
                Durability::Interval(Duration::from_millis(5000)),
            ),
        ] {
            let f = run(backend, profile, durability);
            let measured_s = (profile.seconds - profile.seconds / 4) as f64;
            let payload = f.payload as f64 / f.readings as f64;
            let disk = f.disk as f64 / f.readings as f64;
            println!(
                "{:<8} {:<21} {:<26} {:>7.1} B {:>7.1} B {:>8.1}x {:>7.2} {:>10.2} {:>9.3}",
                backend.name(),
                profile.name,
                label,
                payload,
                disk,
                disk / payload,
                f.messages as f64 / measured_s,
                f.flushes as f64 / measured_s,
                f.disk as f64 / measured_s * 86_400.0 / 1e9,
            );
        }
    }
    for backend in backends.iter().filter(|_| starting) {
        for readings in [0, 10_000, 100_000, 1_000_000] {
            let s = startup(*backend, readings, 5);
            println!(
                "start-up {:<8} {readings:>9} readings waiting: writes {:>7.0} KiB (worst {:>7.0} KiB), opens in {:>8.2} ms (worst {:>8.2} ms), mean of 5",
                backend.name(),
                s.mean as f64 / 1024.0,
                s.worst as f64 / 1024.0,
                s.time_mean.as_secs_f64() * 1e3,
                s.time_worst.as_secs_f64() * 1e3,
            );
        }
    }
}
