//! Store-and-forward figures: journal append rate and disk bytes per reading under both
//! durability policies, journal open time with the backlog waiting (both backends), the time
//! to drain a backlog of 1,000,000 readings through the agent to a local Mosquitto at QoS 1
//! against two yardsticks, the drain under the default rate cap with packing, and peak RSS.
//!
//! The drain comparison runs in interleaved rounds (`OSPREY_BENCH_ROUNDS`, default 5); each
//! round, in this order:
//!
//! 1. the agent drains a fresh copy of the backlog in the default (segment) journal: inflight
//!    64, no rate cap, one publish per batch (`pack_backlog = false`), timed once connected
//!    (first ConnAck to the empty journal, `RunSummary::delivered_after_connect`) and end to
//!    end (`run` to its return: journal open, connect, birth, drain, goodbye, final sync);
//! 2. the same with the backlog in a sled journal;
//! 3. the pipelined publisher (`common/pipelined.rs`): the journal's stored bytes, same topic,
//!    QoS 1, 64 in flight over rumqttc, no journal — the yardstick; timed once connected
//!    (ConnAck to last PUBACK) and end to end (client created to DISCONNECT written);
//! 4. `mosquitto_pub --repeat`, which is stop-and-wait (the next publish only after the
//!    PUBACK), as a second line.
//!
//! Each line prints min / median / max over the rounds, and each ratio the min / median / max
//! of the per-round ratios.
//!
//! To profile one side alone, `OSPREY_BENCH_PROFILE=agent` or `=pipelined` builds the segment
//! backlog and runs only that side, `OSPREY_BENCH_ROUNDS` times (e.g. under `perf record -g`
//! or `perf stat`).
//!
//! ```sh
//! cargo bench -p osprey-agent --bench store_forward            # needs mosquitto, mosquitto_pub
//! OSPREY_BENCH_READINGS=100000 OSPREY_BENCH_ROUNDS=3 cargo bench -p osprey-agent --bench store_forward   # quicker
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)] // a bench: failures are the report

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{append_batch, disk_written, peak_rss_kib, pipelined, proc_field};
use osprey_agent::journal::{self, Backend, Class, Durability, Journal, JournalOptions};
use osprey_agent::{
    BatchLimits, Batcher, Config, Scenario, SegmentJournal, Simulator, SledJournal,
};
use osprey_protocol::{topic, Body, Envelope, Kind, TelemetryBatch};

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
/// The backlog's journal options: fsync per 100 ms, room for everything.
const INTERVAL: JournalOptions = JournalOptions {
    max_bytes: 1 << 30,
    durability: Durability::Interval(Duration::from_millis(100)),
};

fn append_all(
    journal: &dyn Journal,
    durability: Durability,
    batches: &[TelemetryBatch],
) -> (f64, u64) {
    let written = disk_written();
    let started = Instant::now();
    let syncer_stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        if let Durability::Interval(period) = durability {
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

/// Drains the journal in `dir` through the agent to the broker; returns the seconds from
/// `run` to its return and from the first ConnAck to the empty journal, and the bundles sent.
fn drain(dir: &Path, port: u16, rate: u32, inflight: u16, pack: bool) -> (f64, f64, u64) {
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
    let connected = summary
        .delivered_after_connect
        .expect("connected and drained");
    (
        started.elapsed().as_secs_f64(),
        connected.as_secs_f64(),
        summary.bundles,
    )
}

/// A journal of `backend` in `dir` holding `batches` (fsync per 100 ms); returns it, the
/// append seconds and the disk bytes written.
fn backlog(
    dir: &Path,
    backend: Backend,
    batches: &[TelemetryBatch],
) -> (Box<dyn Journal>, f64, u64) {
    let journal: Box<dyn Journal> = match backend {
        Backend::Sled => Box::new(SledJournal::open_with(dir, INTERVAL).unwrap()),
        _ => Box::new(SegmentJournal::open_with(dir, INTERVAL).unwrap()),
    };
    let (secs, bytes) = append_all(journal.as_ref(), INTERVAL.durability, batches);
    (journal, secs, bytes)
}

/// Copies directory `from` (recursively) to the new directory `to`.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Min, median and max of `values`.
fn spread(values: &[f64]) -> (f64, f64, f64) {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

/// One line of rates (messages per second) over the rounds.
fn rate_line(label: &str, rates: &[f64], readings_per_message: f64) {
    let (min, median, max) = spread(rates);
    println!(
        "  {label:<50} {min:>7.0} / {median:>7.0} / {max:>7.0} msg/s  (median {:.0} readings/s)",
        median * readings_per_message
    );
}

/// One line of ratios over the rounds.
fn ratio_line(label: &str, ratios: &[f64]) {
    let (min, median, max) = spread(ratios);
    println!("  {label:<50} {min:>7.2} / {median:>7.2} / {max:>7.2}");
}

/// Times `journal::open` of the journal in `dir` `times` times; returns the seconds of each.
fn open_times(dir: &Path, backend: Backend, times: usize) -> Vec<f64> {
    (0..times)
        .map(|_| {
            let started = Instant::now();
            let opened = journal::open(dir, INTERVAL, backend).unwrap();
            let secs = started.elapsed().as_secs_f64();
            drop(opened);
            if backend == Backend::Sled {
                std::thread::sleep(Duration::from_millis(300)); // sled lets go of its lock after drop
            }
            secs
        })
        .collect()
}

/// `mosquitto_pub` publishing `payload` `repeat` times at QoS 1; returns seconds.
fn mosquitto_pub(port: u16, file: &Path, repeat: usize) -> f64 {
    let started = Instant::now();
    let status = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args([
            "-q",
            "1",
            "-M",
            "64",
            "-t",
            &topic::data(DEVICE, Kind::Telemetry),
        ])
        .arg("-f")
        .arg(file)
        .args(["--repeat", &repeat.to_string()])
        .status()
        .expect("mosquitto_pub (install mosquitto-clients)");
    assert!(status.success());
    started.elapsed().as_secs_f64()
}

/// The telemetry entries of `journal`, as stored.
fn stored_messages(journal: &dyn Journal) -> Vec<bytes::Bytes> {
    journal
        .read(Class::Telemetry, 0, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| bytes::Bytes::from(e.message))
        .collect()
}

/// `OSPREY_BENCH_PROFILE`: only the agent's drain of a segment backlog, or only the pipelined
/// publisher, `rounds` times.
fn profile(side: &str, all: &[TelemetryBatch], rounds: usize) {
    let dir = tempfile::tempdir().unwrap();
    let journal_dir = dir.path().join("segment");
    let (journal, _, _) = backlog(&journal_dir, Backend::Segment, all);
    let payloads = stored_messages(journal.as_ref());
    drop(journal);
    let broker = start_mosquitto();
    let topic = topic::data(DEVICE, Kind::Telemetry);
    for round in 0..rounds {
        let secs = match side {
            "agent" => {
                let copy = dir.path().join(format!("copy-{round}"));
                copy_dir(&journal_dir, &copy);
                drain(&copy, broker.port, 0, 64, false).1
            }
            "pipelined" => pipelined::publish_all(broker.port, &topic, &payloads, 64)
                .connected
                .as_secs_f64(),
            other => panic!("OSPREY_BENCH_PROFILE={other}: say agent or pipelined"),
        };
        println!(
            "{side}: {:.0} msg/s once connected",
            all.len() as f64 / secs
        );
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; this one only runs under `cargo bench`
    }
    let env = |name: &str, default: usize| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let readings = env("OSPREY_BENCH_READINGS", 1_000_000);
    let rounds = env("OSPREY_BENCH_ROUNDS", 5).max(1);
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

    if let Ok(side) = std::env::var("OSPREY_BENCH_PROFILE") {
        profile(&side, &all, rounds);
        return;
    }

    // 1. Append rate and disk bytes per reading, each durability policy (sled), then the
    // backlog in each backend (fsync per 100 ms).
    let each_dir = tempfile::tempdir().unwrap();
    let each = SledJournal::open_with(each_dir.path(), JournalOptions::default()).unwrap();
    let n_each = all.len().min(2_000);
    let (secs, bytes) = append_all(&each, Durability::EachAppend, &all[..n_each]);
    println!(
        "journal append, sled, fsync each:         {:>8.0} msg/s {:>9.0} readings/s  {:>6.1} disk bytes/reading ({n_each} batches)",
        n_each as f64 / secs,
        (n_each * 60) as f64 / secs,
        bytes as f64 / (n_each * 60) as f64
    );
    drop(each);

    let dir = tempfile::tempdir().unwrap();
    let mut stored = Vec::new();
    let mut payloads = Vec::new();
    for backend in [Backend::Segment, Backend::Sled] {
        let journal_dir = dir.path().join(backend.name());
        let (journal, secs, bytes) = backlog(&journal_dir, backend, &all);
        println!(
            "journal append, {:<7} fsync per 100ms: {:>8.0} msg/s {:>9.0} readings/s  {:>6.1} disk bytes/reading ({} batches)",
            format!("{},", backend.name()),
            all.len() as f64 / secs,
            (all.len() * 60) as f64 / secs,
            bytes as f64 / (all.len() * 60) as f64,
            all.len()
        );
        stored.push(journal.bytes());
        if backend == Backend::Segment {
            // The yardstick sends exactly the bytes the journal holds.
            payloads = stored_messages(journal.as_ref());
            assert_eq!(payloads.len(), all.len());
        }
    }
    std::thread::sleep(Duration::from_millis(300)); // sled lets go of its lock after drop
    println!(
        "backlog: {} readings in {} messages, {} record bytes",
        all.len() * 60,
        all.len(),
        stored[0]
    );

    // 2. Opening the journal with that backlog waiting.
    for backend in [Backend::Segment, Backend::Sled] {
        let (min, median, max) = spread(&open_times(&dir.path().join(backend.name()), backend, 5));
        println!(
            "journal open, {:<8} {} readings waiting: {:.1} / {:.1} / {:.1} ms (min / median / max of 5)",
            format!("{},", backend.name()),
            all.len() * 60,
            min * 1e3,
            median * 1e3,
            max * 1e3
        );
    }

    // 3. The drain against the yardsticks, interleaved rounds.
    let broker = start_mosquitto();
    let file = dir.path().join("payload.cbor");
    std::fs::write(&file, &payload).unwrap();
    let repeat = all.len().min(20_000);
    let topic = topic::data(DEVICE, Kind::Telemetry);
    let messages = all.len() as f64;
    // Rates (msg/s) per round: [once connected, end to end] for the segment and sled agent
    // and the pipelined publisher; mosquitto_pub end to end.
    let (mut segment, mut sled, mut piped) = ([vec![], vec![]], [vec![], vec![]], [vec![], vec![]]);
    let mut stop_wait = vec![];
    let mut written = Vec::new();
    for round in 0..rounds {
        for (backend, rates) in [(Backend::Segment, &mut segment), (Backend::Sled, &mut sled)] {
            let copy = dir.path().join(format!("{}-{round}", backend.name()));
            copy_dir(&dir.path().join(backend.name()), &copy);
            let before = disk_written();
            let (total, connected, _) = drain(&copy, broker.port, 0, 64, false);
            if backend == Backend::Segment {
                written.push((disk_written() - before) as f64 / (messages * 60.0));
            }
            rates[0].push(messages / connected);
            rates[1].push(messages / total);
            std::fs::remove_dir_all(&copy).unwrap();
        }
        let timing = pipelined::publish_all(broker.port, &topic, &payloads, 64);
        piped[0].push(messages / timing.connected.as_secs_f64());
        piped[1].push(messages / timing.total.as_secs_f64());
        stop_wait.push(repeat as f64 / mosquitto_pub(broker.port, &file, repeat));
    }
    let ratio =
        |a: &[f64], b: &[f64]| -> Vec<f64> { a.iter().zip(b).map(|(x, y)| x / y).collect() };
    for (i, span) in [
        "once connected (first ConnAck to last PUBACK)",
        "end to end (agent: run to return, journal open, birth and goodbye included; publisher: connect to DISCONNECT)",
    ]
    .into_iter()
    .enumerate()
    {
        println!(
            "drain {} readings, QoS 1, inflight 64, no rate cap, one publish per batch, {span}; {rounds} interleaved rounds, min / median / max:",
            all.len() * 60
        );
        rate_line("agent, segment journal (default)", &segment[i], 60.0);
        rate_line("agent, sled journal", &sled[i], 60.0);
        rate_line("pipelined publisher (rumqttc, 64 in flight)", &piped[i], 60.0);
        ratio_line("ratio agent (segment) / pipelined", &ratio(&segment[i], &piped[i]));
        ratio_line("ratio agent (sled) / pipelined", &ratio(&sled[i], &piped[i]));
    }
    rate_line(
        &format!("mosquitto_pub, stop-and-wait (x{repeat}, end to end)"),
        &stop_wait,
        60.0,
    );
    ratio_line(
        "ratio agent (segment, end to end) / mosquitto_pub",
        &ratio(&segment[1], &stop_wait),
    );
    let (_, median, _) = spread(&written);
    println!(
        "  agent (segment) disk bytes written per reading while draining: {median:.1} (median)"
    );

    // 4. The same backlog again, with the default cap (100 publishes/s, inflight 32) and
    // packing on: bundles of up to 128 KiB.
    let copy = dir.path().join("packed");
    copy_dir(&dir.path().join(Backend::Segment.name()), &copy);
    let (secs, _, bundles) = drain(&copy, broker.port, 100, 32, true);
    println!(
        "drain backlog (segment, QoS 1, inflight 32, cap 100 publishes/s, packing on): {secs:.2} s = {:.0} msg/s = {:.0} readings/s, {bundles} bundles",
        messages / secs,
        messages * 60.0 / secs,
    );
    println!(
        "  with the default cap and no packing the same drain would take {:.0} s (cap-bound)",
        messages / 100.0
    );
    println!("peak RSS of this process: {} KiB", peak_rss_kib());
}
