//! Window throughput: readings/s on one core through decode → dedup → windows (in memory) and
//! decode → dedup → windows → SQLite, memory per active series, and DuckDB computing the same
//! one-minute aggregates over the same readings. Run with `bash cloud/benches/run.sh`
//! (installs DuckDB into a venv); plain `cargo bench --bench windows` skips DuckDB.
//!
//! Options: `--readings N` (default 4 000 000), `--store-readings N` (default 400 000),
//! `--series N` for the memory figure (default 100 000).

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write as _;
use std::time::Instant;

use osprey_cloud::pipeline::{prepare_with, Origin, Pipeline};
use osprey_cloud::store::Store;
use osprey_cloud::window::table::WindowTable;
use osprey_cloud::window::WindowSpec;
use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};

const T0: i64 = 1_700_000_000_000;
const SERIES: [(&str, &str, &str); 2] = [
    ("bearing", "temperature", "Cel"),
    ("bearing", "vibration", "mm/s"),
];
/// Readings per series per message: one minute at 1 Hz, as a gateway batches them.
const PER_MESSAGE: usize = 60;

struct Data {
    payloads: Vec<Vec<u8>>,
    readings: usize,
}

/// `devices` devices, each sending messages of two series × 60 readings at 1 Hz, until
/// `readings` readings; values vary like sensor data (two decimals).
fn fleet(readings: usize, devices: usize, csv: Option<&mut dyn std::io::Write>) -> Data {
    let per_message = SERIES.len() * PER_MESSAGE;
    let messages = readings.div_ceil(per_message);
    let mut payloads = Vec::with_capacity(messages);
    let mut csv = csv;
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    for m in 0..messages {
        let device = m % devices;
        let seq = (m / devices) as u64 + 1;
        let t_start = T0 + (seq as i64 - 1) * 60_000 + device as i64 * 7;
        let name = format!("dev-{device:05}");
        let mut batch = TelemetryBatch::default();
        for (k, (sensor, metric, unit)) in SERIES.iter().enumerate() {
            let mut s = Series::new(sensor, metric, unit);
            for r in 0..PER_MESSAGE {
                // xorshift: cheap, deterministic noise.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 11) as f64 / (1u64 << 53) as f64;
                let v = ((40.0 + 20.0 * k as f64 + noise * 5.0) * 100.0).round() / 100.0;
                let t = t_start + r as i64 * 1_000;
                s.push(t, v);
                if let Some(out) = csv.as_deref_mut() {
                    writeln!(out, "{name},{sensor},{metric},{t},{v}").unwrap();
                }
            }
            batch.series.push(s);
        }
        payloads.push(
            Envelope::new(&name, seq, Body::Telemetry(batch))
                .encode()
                .unwrap(),
        );
    }
    Data {
        payloads,
        readings: messages * per_message,
    }
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// decode → dedup → windows into a fresh in-memory table; returns seconds.
fn in_memory(data: &Data, spec: &WindowSpec) -> (f64, WindowTable) {
    let origin = Origin::Direct("bench".into());
    let mut table = WindowTable::new();
    let start = Instant::now();
    for p in &data.payloads {
        let m = prepare_with(p, &origin, 0, spec).unwrap();
        table.apply(&m.device, m.seq, m.event_ms, m.windows);
    }
    (start.elapsed().as_secs_f64(), table)
}

fn machine() -> String {
    let lscpu = std::process::Command::new("lscpu")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let model = lscpu
        .lines()
        .find(|l| l.starts_with("Model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown")
        .to_owned();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{model}, {cores} cores visible")
}

fn main() {
    let readings = arg("--readings", 4_000_000);
    let store_readings = arg("--store-readings", 400_000);
    let series_for_memory = arg("--series", 100_000);
    let spec = WindowSpec::default();
    println!("machine: {}", machine());

    // Readings for both engines, and the CSV DuckDB loads.
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("readings.csv");
    let mut csv = std::io::BufWriter::new(std::fs::File::create(&csv_path).unwrap());
    writeln!(csv, "device,sensor,metric,t_ms,v").unwrap();
    let data = fleet(readings, 1_000, Some(&mut csv));
    csv.flush().unwrap();
    drop(csv);

    // In memory: best of 3.
    let mut best = f64::INFINITY;
    let mut windows = 0;
    for _ in 0..3 {
        let (secs, table) = in_memory(&data, &spec);
        best = best.min(secs);
        windows = table.iter().count();
    }
    let ours = data.readings as f64 / best;
    println!(
        "in-memory decode->dedup->windows: {} readings, {} messages, {windows} windows, \
         {best:.3} s, {:.2} M readings/s on one core",
        data.readings,
        data.payloads.len(),
        ours / 1e6
    );

    // Through the store (SQLite, one writer thread), Kinesis-sized batches of 100 messages.
    let store_data = fleet(store_readings, 1_000, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let secs = rt.block_on(async {
        let db = dir.path().join("bench.db");
        let store = Store::open(&db).unwrap();
        let pipeline = Pipeline::new(store.writer());
        let start = Instant::now();
        for chunk in store_data.payloads.chunks(100) {
            let batch = chunk
                .iter()
                .map(|p| (p.as_slice(), Origin::Direct("bench".into())))
                .collect();
            pipeline.ingest_batch(batch, None).await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        drop(pipeline);
        store.close().await.unwrap();
        secs
    });
    println!(
        "store decode->dedup->windows->SQLite (+signals): {} readings, {secs:.3} s, {:.0} k readings/s \
         (pipeline on one core, SQLite writer thread on the other)",
        store_data.readings,
        store_data.readings as f64 / secs / 1e3
    );

    // Memory per active series: one open one-minute window each (every device's newest).
    let devices = series_for_memory / SERIES.len();
    let one_each = fleet(devices * SERIES.len() * PER_MESSAGE, devices, None);
    let before = rss_bytes();
    let (_, table) = in_memory(&one_each, &spec);
    let after = rss_bytes();
    let n = table.series_count();
    println!(
        "memory: {n} active series (one open window each, with dedup set and keys): {} bytes/series (RSS delta)",
        (after.saturating_sub(before)) / n.max(1)
    );
    drop(table);

    // DuckDB on the same readings.
    match std::env::var("OSPREY_BENCH_PYTHON") {
        Err(_) => println!("duckdb: skipped (run cloud/benches/run.sh to compare)"),
        Ok(python) => {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/duckdb_windows.py");
            for threads in [1, 0] {
                let threads_arg = if threads == 0 {
                    std::thread::available_parallelism().map_or(1, |n| n.get())
                } else {
                    threads
                };
                let out = std::process::Command::new(&python)
                    .arg(script)
                    .arg(&csv_path)
                    .arg(threads_arg.to_string())
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                let line = text.lines().find(|l| l.starts_with("duckdb")).unwrap_or("");
                let secs: f64 = line
                    .split_whitespace()
                    .find_map(|kv| kv.strip_prefix("seconds="))
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN);
                let theirs = data.readings as f64 / secs;
                println!(
                    "{line} threads={threads_arg}: {:.2} M readings/s; osprey in-memory (1 core) / duckdb = {:.2}x",
                    theirs / 1e6,
                    ours / theirs
                );
                if !out.status.success() {
                    println!("duckdb stderr: {}", String::from_utf8_lossy(&out.stderr));
                }
            }
        }
    }
}
