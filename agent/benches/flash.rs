//! Flash wear: disk bytes the journal writes per reading in steady state, against the payload
//! bytes of the same readings, for the three load profiles gateways run (1 Hz × 10 series,
//! 10 Hz × 10, 1 kHz × 3) under both durability settings (`flush_interval_ms = 0`, the
//! default, and `5000`, the SD-card setting), and the bytes written by opening a journal that
//! holds a backlog (the start-up burst).
//!
//! ```sh
//! cargo bench -p osprey-agent --bench flash
//! OSPREY_BENCH_FLASH_SECONDS=600 cargo bench -p osprey-agent --bench flash   # shorter runs
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
use osprey_agent::journal::{Class, Durability, Journal, JournalOptions};
use osprey_agent::{Batcher, Reading, SledJournal};
use osprey_protocol::TelemetryBatch;

const DEVICE: &str = "flash-1";

/// One load profile.
struct Profile {
    name: &'static str,
    hz: u64,
    series: usize,
    /// Virtual seconds to run (warm-up included).
    seconds: u64,
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

fn run(profile: &Profile, durability: Durability) -> Figures {
    let dir = tempfile::tempdir().unwrap();
    let journal = SledJournal::open_with(
        &dir.path().join("journal"),
        JournalOptions {
            durability,
            ..JournalOptions::default()
        },
    )
    .unwrap();
    let mut batcher = Batcher::new(osprey_agent::config::default_batch_limits());
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
        let (seq, readings, bytes) = append_batch(&journal, DEVICE, batch);
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

/// Bytes written by opening a journal that holds `backlog` messages, averaged over `opens`
/// re-opens (each after a clean close).
fn startup_burst(backlog: usize, opens: u32) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal");
    let options = JournalOptions {
        durability: Durability::Interval(Duration::from_secs(5)),
        ..JournalOptions::default()
    };
    {
        let journal = SledJournal::open_with(&path, options).unwrap();
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
        for _ in 0..backlog {
            append_batch(&journal, DEVICE, batch.clone());
        }
        journal.sync().unwrap();
    }
    let mut worst = 0;
    let mut total = 0;
    for _ in 0..opens {
        std::thread::sleep(Duration::from_millis(300)); // sled lets go of its lock after drop
        let before = disk_written();
        let journal = SledJournal::open_with(&path, options).unwrap();
        journal.sync().unwrap();
        drop(journal);
        let written = disk_written() - before;
        worst = worst.max(written);
        total += written;
    }
    (total / u64::from(opens), worst)
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
        },
        Profile {
            name: "10 Hz x 10 series",
            hz: 10,
            series: 10,
            seconds,
        },
        Profile {
            name: "1 kHz x 3 series",
            hz: 1000,
            series: 3,
            seconds: seconds / 6,
        },
    ];
    println!("osprey-agent flash bench (journal disk bytes per reading, steady state)");
    println!(
        "{:<18} {:<26} {:>9} {:>9} {:>9} {:>7} {:>10} {:>9}",
        "profile", "durability", "payload", "disk", "ratio", "msg/s", "flush/s", "GB/day"
    );
    for profile in &profiles {
        for (label, durability) in [
            ("flush each append (0)", Durability::EachAppend),
            (
                "interval 5000 ms (SD card)",
                Durability::Interval(Duration::from_millis(5000)),
            ),
        ] {
            let f = run(profile, durability);
            let measured_s = (profile.seconds - profile.seconds / 4) as f64;
            let payload = f.payload as f64 / f.readings as f64;
            let disk = f.disk as f64 / f.readings as f64;
            println!(
                "{:<18} {:<26} {:>7.1} B {:>7.1} B {:>8.1}x {:>7.2} {:>10.2} {:>9.3}",
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
    for backlog in [0, 10_000] {
        let (mean, worst) = startup_burst(backlog, 5);
        println!(
            "start-up: opening a journal holding {backlog} messages writes {:.0} KiB (mean of 5 opens, worst {:.0} KiB)",
            mean as f64 / 1024.0,
            worst as f64 / 1024.0
        );
    }
}
