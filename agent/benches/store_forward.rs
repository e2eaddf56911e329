//! Store-and-forward figures: journal append rate and disk bytes per reading under both
//! durability policies, the time to drain a backlog of 1,000,000 readings through the uplink
//! to a local Mosquitto at QoS 1 (one publish per batch without a rate cap; then the same
//! backlog again with the default cap of 100 publishes/s and packing into bundles), peak RSS,
//! and `mosquitto_pub` publishing the same payloads to the same broker as the broker's own
//! limit.
//!
//! ```sh
//! cargo bench -p osprey-agent --bench store_forward            # needs mosquitto, mosquitto_pub
//! OSPREY_BENCH_READINGS=100000 cargo bench -p osprey-agent --bench store_forward   # quicker
//! ```
//!
//! Prints one block of figures and the machine they were taken on. Not a criterion bench: each
//! phase runs once at a size where run-to-run noise is small next to the figure itself.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench: failures are the report

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{append_batch, disk_written, peak_rss_kib, proc_field};
use osprey_agent::journal::{Durability, Journal, JournalOptions};
use osprey_agent::{BatchLimits, Batcher, Config, Scenario, Simulator, SledJournal};
use osprey_protocol::{Body, Envelope, TelemetryBatch};

const DEVICE: &str = "bench-1";

/// Realistic batches: the simulator's three series, cut at 60 readings.
fn batches(count: usize) -> Vec<TelemetryBatch> {
    let mut sim = Simulator::new(DEVICE, 1, Scenario::Steady);
    let mut batcher = Batcher::new(BatchLimits {
        max_readings: std::num::NonZeroUsize::new(60).unwrap(),
        max_age: Duration::from_secs(3600),
        ..osprey_agent::config::default_batch_limits()
    });
    let now = tokio::time::Instant::now();
    let mut out = Vec::with_capacity(count);
    let mut t = 1_700_000_000_000i64;
    while out.len() < count {
        for r in sim.sample(t) {
            if let Some(b) = batcher.push(&r, now) {
                out.push(b);
            }
        }
        t += 10;
    }
    out
}

/// Appends `batches`; returns (seconds, disk bytes written).
fn append_all(journal: &SledJournal, batches: &[TelemetryBatch]) -> (f64, u64) {
    let written = disk_written();
    let started = Instant::now();
    let syncer_stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        if let Durability::Interval(period) = journal.options().durability {
            let stop = &syncer_stop;
            s.spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(period);
                    journal.sync().unwrap();
                }
            });
        }
        for batch in batches {
            append_batch(journal, DEVICE, batch.clone());
        }
        journal.sync().unwrap();
        syncer_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    (started.elapsed().as_secs_f64(), disk_written() - written)
}

struct Broker {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_mosquitto() -> Broker {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 0\nlog_dest none\n"
        ),
    )
    .unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start mosquitto ({e}): install it (bash tests/run.sh does)")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "mosquitto did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    Broker {
        child,
        port,
        _dir: dir,
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map_or_else(|| "unknown CPU".to_owned(), |s| s.trim().to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = proc_field("/proc/meminfo", "MemTotal:") / 1024;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, {mem} MiB RAM, Linux {}",
        kernel.trim()
    )
}

/// Drains the journal in `dir` through the agent to the broker; returns seconds and the
/// bundles sent.
fn drain(dir: &Path, port: u16, rate: u32, inflight: u16, pack: bool) -> (f64, u64) {
    let mut config =
        Config::simulated(DEVICE, 1, Scenario::Steady, dir, "127.0.0.1", port).unwrap();
    config.sampling.max_samples = std::num::NonZeroU64::new(1);
    config.mqtt.max_publish_rate = std::num::NonZeroU32::new(rate);
    config.mqtt.inflight = std::num::NonZeroU16::new(inflight).unwrap();
    config.mqtt.pack_backlog = pack;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let summary = runtime
        .block_on(osprey_agent::run(config, std::future::pending()))
        .unwrap();
    assert_eq!(summary.backlog, 0);
    (started.elapsed().as_secs_f64(), summary.bundles)
}

/// A journal in `dir` holding `batches` (fsync per 100 ms); returns its record bytes.
fn backlog(dir: &Path, batches: &[TelemetryBatch]) -> (SledJournal, f64, u64) {
    let options = JournalOptions {
        max_bytes: 1 << 30,
        durability: Durability::Interval(Duration::from_millis(100)),
    };
    let journal = SledJournal::open_with(dir, options).unwrap();
    let (secs, bytes) = append_all(&journal, batches);
    (journal, secs, bytes)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; this one only runs under `cargo bench`
    }
    let readings: usize = std::env::var("OSPREY_BENCH_READINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let count = readings.div_ceil(60);
    println!("osprey-agent store-and-forward bench");
    println!("machine: {}", machine());
    let all = batches(count);
    let payload = Envelope::new(DEVICE, 1, Body::Telemetry(all[0].clone()))
        .encode()
        .unwrap();
    println!(
        "payload: telemetry batches of 60 readings (3 series), {} bytes encoded",
        payload.len()
    );

    // 1. Append rate and disk bytes per reading, each durability policy.
    let each_dir = tempfile::tempdir().unwrap();
    let each = SledJournal::open_with(each_dir.path(), JournalOptions::default()).unwrap();
    let n_each = all.len().min(2_000);
    let (secs, bytes) = append_all(&each, &all[..n_each]);
    println!(
        "journal append, fsync each:      {:>8.0} msg/s {:>9.0} readings/s  {:>6.1} disk bytes/reading ({n_each} batches)",
        n_each as f64 / secs,
        (n_each * 60) as f64 / secs,
        bytes as f64 / (n_each * 60) as f64
    );
    drop(each);

    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("journal");
    let (interval, secs, bytes) = backlog(&journal_dir, &all);
    println!(
        "journal append, fsync per 100ms: {:>8.0} msg/s {:>9.0} readings/s  {:>6.1} disk bytes/reading ({} batches)",
        all.len() as f64 / secs,
        (all.len() * 60) as f64 / secs,
        bytes as f64 / (all.len() * 60) as f64,
        all.len()
    );
    let stored = interval.bytes();
    drop(interval);
    std::thread::sleep(Duration::from_millis(300)); // sled lets go of its lock after drop
    println!(
        "backlog: {} readings in {} messages, {} record bytes",
        all.len() * 60,
        all.len(),
        stored
    );

    // 2. Drain the backlog through journal + uplink to Mosquitto, QoS 1, no rate cap, one
    // publish per batch.
    let broker = start_mosquitto();
    let written = disk_written();
    let (secs, _) = drain(&journal_dir, broker.port, 0, 64, false);
    let drain_rate = (all.len() * 60) as f64 / secs;
    println!(
        "drain backlog (QoS 1, inflight 64, no rate cap): {secs:.1} s = {:.0} msg/s = {drain_rate:.0} readings/s, {:.1} disk bytes/reading",
        all.len() as f64 / secs,
        (disk_written() - written) as f64 / (all.len() * 60) as f64
    );
    println!(
        "  with the default cap of 100 msg/s and no packing the same drain takes {:.0} s (computed: cap-bound, 6000 readings/s)",
        all.len() as f64 / 100.0
    );

    // 2b. The same backlog again, with the default cap (100 publishes/s, inflight 32) and
    // packing on: bundles of up to 128 KiB.
    let packed_dir = dir.path().join("journal-packed");
    let (packed, _, _) = backlog(&packed_dir, &all);
    drop(packed);
    std::thread::sleep(Duration::from_millis(300));
    let (secs, bundles) = drain(&packed_dir, broker.port, 100, 32, true);
    println!(
        "drain backlog (QoS 1, inflight 32, cap 100 publishes/s, packing on): {secs:.1} s = {:.0} msg/s = {:.0} readings/s, {bundles} bundles",
        all.len() as f64 / secs,
        (all.len() * 60) as f64 / secs,
    );

    // 3. mosquitto_pub, same payload, same broker, QoS 1.
    let file = dir.path().join("payload.cbor");
    std::fs::write(&file, &payload).unwrap();
    let repeat = all.len().min(20_000);
    let started = Instant::now();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args(["-q", "1", "-M", "64", "-t", "dt/osprey/bench-1/telemetry"])
        .arg("-f")
        .arg(&file)
        .args(["--repeat", &repeat.to_string()])
        .status()
        .expect("mosquitto_pub (install mosquitto-clients)");
    assert!(status.success());
    let secs = started.elapsed().as_secs_f64();
    let pub_rate = (repeat * 60) as f64 / secs;
    println!(
        "mosquitto_pub (QoS 1, inflight 64, same payload x{repeat}): {:.0} msg/s = {pub_rate:.0} readings/s",
        repeat as f64 / secs
    );
    println!(
        "ratio agent drain / mosquitto_pub: {:.2}",
        drain_rate / pub_rate
    );
    println!("peak RSS of this process: {} KiB", peak_rss_kib());
}
