//! Window throughput: readings/s on one core through decode → dedup → windows (in memory) and
//! decode → dedup → windows → SQLite, memory per active series, and DuckDB computing the same
//! one-minute aggregates (count, sum, min, max, mean, variance, skewness, kurtosis,
//! p50/p95/p99) over the same readings: from its in-memory table and from Parquet, on 1 and 2
//! threads, in rounds interleaved with Osprey's (min / median / max over the rounds). Run with
//! `bash cloud/benches/run.sh` (installs DuckDB into a venv); plain `cargo bench --bench
//! windows` skips DuckDB.
//!
//! Options: `--readings N` (default 4 000 000), `--rounds N` (default 7), `--store-readings N`
//! (default 400 000; 0 skips the store), `--series N` for the memory figure (default 100 000;
//! 0 skips it).

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

/// The DuckDB configurations, each run once per round: (source, threads).
const DUCKDB_RUNS: [(&str, usize); 4] =
    [("table", 1), ("table", 2), ("parquet", 1), ("parquet", 2)];

/// `cloud/benches/duckdb_windows.py`, started once: it loads the readings into a table and a
/// Parquet file, then runs the aggregation on each command.
struct DuckDb {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
    rows: String,
    same_quantiles: String,
    version: String,
}

impl DuckDb {
    fn start(python: &str, csv: &std::path::Path) -> DuckDb {
        use std::process::{Command, Stdio};
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/duckdb_windows.py");
        let version = Command::new(python)
            .args(["-c", "import duckdb; print(duckdb.__version__)"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default();
        let mut child = Command::new(python)
            .arg(script)
            .arg(csv)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start duckdb_windows.py");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let ready = read_line(&mut stdout);
        assert!(ready.starts_with("ready"), "duckdb_windows.py: {ready}");
        DuckDb {
            child,
            stdin,
            stdout,
            rows: field(&ready, "rows=").to_owned(),
            same_quantiles: field(&ready, "same_quantiles=").to_owned(),
            version,
        }
    }

    /// Seconds and windows of one run.
    fn run(&mut self, source: &str, threads: usize) -> (f64, usize) {
        writeln!(self.stdin, "run {source} {threads}").unwrap();
        self.stdin.flush().unwrap();
        let line = read_line(&mut self.stdout);
        let secs = field(&line, "seconds=").parse().unwrap_or(f64::NAN);
        (secs, field(&line, "windows=").parse().unwrap_or(0))
    }
}

impl Drop for DuckDb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_line(from: &mut impl std::io::BufRead) -> String {
    let mut line = String::new();
    from.read_line(&mut line).unwrap();
    line.trim().to_owned()
}

/// The value of `key` (e.g. `seconds=`) in a line of `key=value` words.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key))
        .unwrap_or("")
}

/// Min, median and max of the rounds.
#[derive(Clone, Copy)]
struct Stats {
    min: f64,
    median: f64,
    max: f64,
}

impl Stats {
    fn of(mut xs: Vec<f64>) -> Stats {
        xs.sort_by(f64::total_cmp);
        Stats {
            min: xs[0],
            median: xs[xs.len() / 2],
            max: xs[xs.len() - 1],
        }
    }
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = format!("{:.2} / {:.2} / {:.2}", self.min, self.median, self.max);
        f.pad(&text)
    }
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
    let rounds = arg("--rounds", 7).max(1);
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

    // In memory, in rounds interleaved with DuckDB's configurations (which goes first
    // alternates), so that both see the same machine load.
    let mut duckdb = std::env::var("OSPREY_BENCH_PYTHON")
        .ok()
        .map(|python| DuckDb::start(&python, &csv_path));
    let mut ours = Vec::new();
    let mut theirs: Vec<Vec<f64>> = vec![Vec::new(); DUCKDB_RUNS.len()];
    let mut windows = 0;
    let mut duckdb_windows = 0;
    for round in 0..rounds {
        let mut osprey = || {
            let (secs, table) = in_memory(&data, &spec);
            windows = table.iter().count();
            ours.push(data.readings as f64 / secs / 1e6);
        };
        if round % 2 == 0 {
            osprey();
        }
        if let Some(db) = duckdb.as_mut() {
            for (i, (source, threads)) in DUCKDB_RUNS.iter().enumerate() {
                let (secs, w) = db.run(source, *threads);
                duckdb_windows = w;
                theirs[i].push(data.readings as f64 / secs / 1e6);
            }
        }
        if round % 2 == 1 {
            osprey();
        }
    }
    let ours = Stats::of(ours);
    println!(
        "in-memory decode->dedup->windows: {} readings, {} messages, {windows} windows, \
         {rounds} rounds: {ours} M readings/s on one core (min / median / max)",
        data.readings,
        data.payloads.len(),
    );
    match duckdb {
        None => println!("duckdb: skipped (run cloud/benches/run.sh to compare)"),
        Some(db) => {
            println!(
                "duckdb {}: {} readings, {duckdb_windows} windows, one approx_quantile call \
                 for the three quantiles (same values as three calls: {})",
                db.version, db.rows, db.same_quantiles
            );
            println!(
                "  {:<26} {:>26}   osprey median / this median",
                "", "M readings/s (min / median / max)"
            );
            println!("  {:<26} {ours:>26}   1.00x", "osprey in-memory, 1 core");
            for ((source, threads), runs) in DUCKDB_RUNS.iter().zip(theirs) {
                let runs = Stats::of(runs);
                println!(
                    "  {:<26} {runs:>26}   {:.2}x",
                    format!("duckdb {source}, {threads} thread(s)"),
                    ours.median / runs.median
                );
            }
        }
    }

    if store_readings > 0 {
        store(store_readings, dir.path());
    }
    if series_for_memory > 0 {
        memory(series_for_memory, &spec);
    }
}

/// Through the store (SQLite, one writer thread), Kinesis-sized batches of 100 messages.
fn store(store_readings: usize, dir: &std::path::Path) {
    let store_data = fleet(store_readings, 1_000, None);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let secs = rt.block_on(async {
        let db = dir.join("bench.db");
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
}

/// Memory per active series: one open one-minute window each (every device's newest).
fn memory(series_for_memory: usize, spec: &WindowSpec) {
    let devices = series_for_memory / SERIES.len();
    let one_each = fleet(devices * SERIES.len() * PER_MESSAGE, devices, None);
    let before = rss_bytes();
    let (_, table) = in_memory(&one_each, spec);
    let after = rss_bytes();
    let n = table.series_count();
    println!(
        "memory: {n} active series (one open window each, with dedup set and keys): {} bytes/series (RSS delta)",
        (after.saturating_sub(before)) / n.max(1)
    );
    drop(table);
}
