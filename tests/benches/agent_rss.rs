//! The release agent's memory, throughput and disk writes under a sustained high sample rate,
//! through a broker stall, printed with the machine they were measured on.
//!
//! The agent samples the simulator every millisecond (one reading per series per sample) and
//! publishes at QoS 1 to a local Mosquitto; `mosquitto_sub` (the harness `Subscriber`) counts
//! what arrives, by sequence number (duplicates count once). Phases:
//!
//! ```text
//!  warm-up 5 s ─► steady 20 s ─► stall 20 s (broker SIGSTOP) ─► drain (SIGCONT, until every
//!                                                              reading made in the stall is in)
//! ```
//!
//! "Every reading made in the stall is in" is judged by sample times, whatever order the
//! backlog arrives in: the delivered readings stamped within the stall leave no gap longer
//! than [`GAP_MS`] (the sampler ticks every millisecond).
//!
//! Per phase: readings made per second (counted afterwards by their sample time), readings
//! delivered per second (arrivals at the subscriber), the highest VmRSS sampled every 20 ms
//! from /proc/PID/status, VmHWM at the phase's end, and disk bytes written per reading made
//! (/proc/PID/io `write_bytes`: what the kernel was asked to write out, fsyncs included).
//! Figures, not assertions.
//!
//! `bash tests/run.sh -- bash -c 'cargo build --release -p osprey-agent && cargo bench -p osprey-tests --bench agent_rss'`
//! (about 80 s after the builds).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench binary: a failure is the report

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use osprey_protocol::Body;
use osprey_tests::bench::{machine, now_ms};
use osprey_tests::{bin, wait_until, Mosquitto, Proc, Subscriber};

const PHASES: [&str; 4] = ["warm-up", "steady", "stall", "drain"];
/// Longest run of missing sample times still taken as "all in" (a loaded box can delay the
/// sampler, never by this much).
const GAP_MS: i64 = 500;

/// Whether `times` cover `[from, to)` with no gap longer than [`GAP_MS`].
fn covers(times: &[i64], from: i64, to: i64) -> bool {
    let mut inside: Vec<i64> = times
        .iter()
        .copied()
        .filter(|&t| t >= from && t < to)
        .collect();
    inside.sort_unstable();
    inside.dedup();
    let (Some(&first), Some(&last)) = (inside.first(), inside.last()) else {
        return false;
    };
    first - from <= GAP_MS
        && to - last <= GAP_MS
        && inside.windows(2).all(|w| w[1] - w[0] <= GAP_MS)
}

/// A `kB` field of /proc/PID/status, in bytes.
fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// `write_bytes` of /proc/PID/io.
fn write_bytes(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|io| {
            io.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// What the subscriber has seen: readings per delivered telemetry message (by seq), and the
/// sample time of every delivered reading.
struct Seen {
    readings: u64,
    times: Vec<i64>,
}

fn seen(sub: &Subscriber) -> Seen {
    let mut by_seq = HashMap::new();
    for m in sub.messages() {
        if let Body::Telemetry(batch) = m.body {
            by_seq.entry(m.seq).or_insert(batch);
        }
    }
    let mut times = Vec::new();
    let mut readings = 0;
    for batch in by_seq.values() {
        readings += batch.reading_count() as u64;
        times.extend(
            batch
                .series
                .iter()
                .flat_map(|s| s.readings().map(|(t, _)| t)),
        );
    }
    Seen { readings, times }
}

/// One phase's boundaries and counters.
#[derive(Default, Clone, Copy)]
struct Phase {
    start_ms: i64,
    end_ms: i64,
    delivered_at_start: u64,
    delivered_at_end: u64,
    written_at_start: u64,
    written_at_end: u64,
    hwm_at_end: u64,
}

fn main() {
    // `cargo bench` passes `--bench`; nothing to filter.
    let machine = machine();
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Mosquitto::plain();
    let sub = Subscriber::start(broker.port());
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "device_id = \"bench-1\"\n[sampling]\ninterval_ms = 1\n[journal]\npath = \"{}\"\n\
             [mqtt]\nport = {}\n",
            dir.path().join("journal").display(),
            broker.port()
        ),
    )
    .unwrap();
    let mut agent = Proc::spawn(
        Command::new(bin("osprey-agent"))
            .env("RUST_LOG", "warn")
            .args(["run", "--config"])
            .arg(&config),
    );
    let pid = agent.pid();
    let first = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
        (seen(&sub).readings > 0).then_some(())
    });
    assert!(first.is_some(), "no telemetry arrived: {}", agent.logs());

    // Highest VmRSS per phase, sampled in the background.
    let phase = Arc::new(AtomicUsize::new(0));
    let peaks = Arc::new(Mutex::new([0u64; PHASES.len()]));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (phase, peaks, done) = (Arc::clone(&phase), Arc::clone(&peaks), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::SeqCst) {
                if let Some(rss) = status_field(pid, "VmRSS:") {
                    let p = phase.load(Ordering::SeqCst);
                    let mut peaks = peaks.lock().unwrap();
                    peaks[p] = peaks[p].max(rss);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    let mut phases = [Phase::default(); PHASES.len()];
    let begin = |i: usize, phases: &mut [Phase; 4], delivered: u64| {
        phase.store(i, Ordering::SeqCst);
        phases[i].start_ms = now_ms();
        phases[i].delivered_at_start = delivered;
        phases[i].written_at_start = write_bytes(pid);
    };
    let end = |i: usize, phases: &mut [Phase; 4], delivered: u64| {
        phases[i].end_ms = now_ms();
        phases[i].delivered_at_end = delivered;
        phases[i].written_at_end = write_bytes(pid);
        phases[i].hwm_at_end = status_field(pid, "VmHWM:").unwrap_or(0);
    };

    let run = |i: usize, phases: &mut [Phase; 4], secs: u64| {
        begin(i, phases, seen(&sub).readings);
        std::thread::sleep(Duration::from_secs(secs));
        end(i, phases, seen(&sub).readings);
    };
    run(0, &mut phases, 5);
    run(1, &mut phases, 20);
    begin(2, &mut phases, seen(&sub).readings);
    broker.signal("STOP");
    std::thread::sleep(Duration::from_secs(20));
    end(2, &mut phases, seen(&sub).readings);
    let at_stop = phases[2].delivered_at_end;
    begin(3, &mut phases, at_stop);
    broker.signal("CONT");
    let stall = (phases[2].start_ms, phases[2].end_ms);
    let caught_up = wait_until(Duration::from_secs(90), Duration::from_millis(100), || {
        covers(&seen(&sub).times, stall.0, stall.1).then_some(())
    });
    end(3, &mut phases, seen(&sub).readings);
    done.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let running = agent.is_running();
    agent.terminate(Duration::from_secs(30));
    assert!(running, "the agent exited during the run: {}", agent.logs());

    let times = seen(&sub).times;
    let peaks = *peaks.lock().unwrap();
    let mb = |b: u64| b as f64 / 1_048_576.0;
    println!("agent_rss: release osprey-agent, simulator sampled every 1 ms, defaults otherwise");
    println!(
        "(batches of up to 60 readings, fsync per message, QoS 1, 32 inflight, 100 msg/s cap)"
    );
    println!("machine: {machine}");
    println!(
        "{:<8} {:>7} {:>11} {:>12} {:>13} {:>11} {:>12}",
        "phase", "seconds", "made/s", "delivered/s", "peak RSS MB", "VmHWM MB", "disk B/read"
    );
    for (i, p) in phases.iter().enumerate() {
        let secs = (p.end_ms - p.start_ms) as f64 / 1000.0;
        let made = times
            .iter()
            .filter(|&&t| t >= p.start_ms && t < p.end_ms)
            .count() as f64;
        let delivered = p.delivered_at_end.saturating_sub(p.delivered_at_start) as f64;
        let written = p.written_at_end.saturating_sub(p.written_at_start) as f64;
        println!(
            "{:<8} {:>7.1} {:>11.0} {:>12.0} {:>13.1} {:>11.1} {:>12.1}",
            PHASES[i],
            secs,
            made / secs,
            delivered / secs,
            mb(peaks[i]),
            mb(p.hwm_at_end),
            if made > 0.0 { written / made } else { 0.0 },
        );
    }
    if caught_up.is_none() {
        println!("drain: the backlog was not delivered within 90 s (the drain row is partial)");
    }
    let total_written = phases[3].written_at_end - phases[0].written_at_start;
    let made_total = times
        .iter()
        .filter(|&&t| t >= phases[0].start_ms && t < phases[3].end_ms)
        .count();
    println!(
        "whole run: {} readings made, {:.1} disk bytes written per reading, VmHWM {:.1} MB",
        made_total,
        total_written as f64 / made_total.max(1) as f64,
        mb(phases[3].hwm_at_end)
    );
}
