//! `osprey serve --source mqtt` ingest through Mosquitto, against the path's ceiling, printed
//! with the machine it ran on.
//!
//! The same real agent payloads (the agent library's simulator and batcher: 60 readings of
//! three series per message, encoded as the agent encodes them) go through the same Mosquitto
//! from the same pipelined QoS 1 publisher into:
//!
//! 1. **ceiling**: a counting `mosquitto_sub -q 1` (acknowledges at once, writes nothing);
//! 2. **fresh**: `osprey serve` on an empty database;
//! 3. **history**: `osprey serve` on a database that already holds 4 hours of one-minute
//!    windows per series (the trend's full 240 windows), built in-process beforehand.
//!
//! Each run gets a new broker (no session of an earlier run queues messages) with
//! `max_inflight_messages` raised (serve acknowledges a batch after its commit, so a batch can
//! only be as large as the broker's in-flight window). A run is timed from the first publish
//! to the last message counted (mosquitto_sub exits; serve's `applied` in `/api/stats`
//! reaches the total). The three are interleaved over 3 rounds; min / median / max and serve's
//! peak RSS (VmHWM) are printed.
//!
//! `bash cloud/benches/ingest.sh` (builds the release `osprey`, then
//! `cargo bench -p osprey-tests --bench ingest`). Environment: `OSPREY_BENCH_DEVICES` (20),
//! `OSPREY_BENCH_MESSAGES` per run (30 000), `OSPREY_BENCH_ROUNDS` (3),
//! `OSPREY_BENCH_INFLIGHT` (the broker's max_inflight_messages, 1024),
//! `OSPREY_BENCH_SERVE_ARGS` (extra serve flags, space-separated), `OSPREY_BENCH_ONLY`
//! (`ceiling`, `fresh` or `history`: run only those, comma-separated; `in-process` adds the
//! pipeline's rate without MQTT, batches of 512 straight into the store, and `publisher` the
//! publisher's rate into a broker without subscribers), `OSPREY_BENCH_PERF`
//! (a directory: `perf record -g` each serve run into `serve-KIND-ROUND.perf.data` there).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench binary: a failure is the report

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use osprey_tests::bench::machine;
use osprey_tests::fleet::{
    publish_all, Publish, SimulatedDevice, READINGS_PER_MESSAGE as READINGS,
};
use osprey_tests::{bin, http_get, mosquitto_tool, wait_until, Listener, Mosquitto, Proc};

/// Event time where the measured messages start; the history ends here.
const LIVE_START_MS: i64 = 1_767_225_600_000;
/// History per series.
const HISTORY_MS: i64 = 4 * 3_600_000;
/// Sample period of the history (a gateway sampling every second).
const HISTORY_INTERVAL_MS: i64 = 1_000;
/// Sample period of the measured messages (a gateway sampling at 100 Hz): a run spans a few
/// minutes of event time, so the fresh database stays fresh.
const LIVE_INTERVAL_MS: i64 = 10;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The history (4 h per device, oldest first) and the measured messages (devices
/// interleaved, as a fleet publishes).
fn payloads(devices: usize, messages: usize) -> (Vec<Publish>, Vec<Publish>) {
    let mut fleet: Vec<SimulatedDevice> = (0..devices)
        .map(|i| SimulatedDevice::new(&format!("bench-{i:03}")))
        .collect();
    let mut history = Vec::new();
    for d in &mut fleet {
        let mut t = LIVE_START_MS - HISTORY_MS;
        while t < LIVE_START_MS {
            let (publish, next) = d.next_message(t, HISTORY_INTERVAL_MS);
            history.push(publish);
            t = next;
        }
    }
    let mut live = Vec::with_capacity(messages);
    let mut times = vec![LIVE_START_MS; devices];
    while live.len() < messages {
        for (d, t) in fleet.iter_mut().zip(&mut times) {
            if live.len() == messages {
                break;
            }
            let (publish, next) = d.next_message(*t, LIVE_INTERVAL_MS);
            live.push(publish);
            *t = next;
        }
    }
    (history, live)
}

/// Ingests `messages` into the database at `path` in-process, through the same pipeline
/// serve uses, in batches of 512; returns the seconds it took.
fn ingest_in_process(path: &Path, messages: &[Publish]) -> f64 {
    use osprey_cloud::pipeline::{Origin, Pipeline};
    use osprey_cloud::store::Store;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = Store::open(path).unwrap();
        let pipeline = Pipeline::new(store.writer());
        let start = Instant::now();
        for chunk in messages.chunks(512) {
            let batch = chunk
                .iter()
                .map(|(topic, payload)| {
                    let origin = Origin::Mqtt {
                        topic: topic.clone(),
                    };
                    (payload.as_slice(), origin)
                })
                .collect();
            pipeline.ingest_batch(batch, None).await.unwrap();
        }
        let secs = start.elapsed().as_secs_f64();
        assert_eq!(pipeline.stats().applied, messages.len() as u64);
        drop(pipeline);
        store.close().await.unwrap();
        secs
    })
}

/// Messages/s of [`ingest_in_process`] on a new database (a copy of `seed` if given).
fn in_process(live: &[Publish], seed: Option<&Path>) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("osprey.db");
    if let Some(seed) = seed {
        std::fs::copy(seed, &db).unwrap();
    }
    live.len() as f64 / ingest_in_process(&db, live)
}

/// A broker for one run.
fn broker(inflight: usize) -> Mosquitto {
    Mosquitto::start(
        Listener::Plain,
        &format!("max_inflight_messages {inflight}\n"),
    )
}

/// Messages/s into a counting `mosquitto_sub -q 1`.
fn ceiling(live: &[Publish], inflight: usize) -> f64 {
    let broker = broker(inflight);
    let id = format!("bench-ceiling-{}", std::process::id());
    let mut sub = Proc::spawn(Command::new(mosquitto_tool("mosquitto_sub")).args([
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port().to_string(),
        "-q",
        "1",
        "-i",
        &id,
        "-t",
        "dt/osprey/+/+",
        "-C",
        &live.len().to_string(),
        "-F",
        "%l",
    ]));
    wait_until(Duration::from_secs(10), Duration::from_millis(10), || {
        broker.log().contains(&id).then_some(())
    })
    .expect("mosquitto_sub did not connect");
    std::thread::sleep(Duration::from_millis(200));
    let start = Instant::now();
    let publisher = {
        let (port, live) = (broker.port(), live.to_vec());
        std::thread::spawn(move || publish_all(port, live))
    };
    let status = sub.wait_exit(Duration::from_secs(600));
    let secs = start.elapsed().as_secs_f64();
    assert!(status.success(), "mosquitto_sub: {status}\n{}", sub.logs());
    publisher.join().unwrap();
    live.len() as f64 / secs
}

/// Messages/s the publisher alone gets through the broker (no subscriber).
fn publisher_alone(live: &[Publish], inflight: usize) -> f64 {
    let broker = broker(inflight);
    let start = Instant::now();
    publish_all(broker.port(), live.to_vec());
    live.len() as f64 / start.elapsed().as_secs_f64()
}

/// Messages/s applied by `osprey serve` on `db` (a copy of `seed` if given), and its peak RSS
/// in KiB.
fn serve(live: &[Publish], inflight: usize, seed: Option<&Path>, label: &str) -> (f64, u64) {
    let broker = broker(inflight);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("osprey.db");
    if let Some(seed) = seed {
        std::fs::copy(seed, &db).unwrap();
    }
    let extra = std::env::var("OSPREY_BENCH_SERVE_ARGS").unwrap_or_default();
    let mut serve = Proc::spawn(
        Command::new(bin("osprey"))
            .arg("serve")
            .arg("--db")
            .arg(&db)
            .args(["--listen", "127.0.0.1:0", "--source", "mqtt", "--mqtt-port"])
            .arg(broker.port().to_string())
            .args(["--mqtt-client-id", "bench-serve"])
            .args(extra.split_whitespace())
            .env("RUST_LOG", "warn"),
    );
    let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(60));
    let api = line.trim().rsplit(' ').next().unwrap().to_owned();
    wait_until(Duration::from_secs(30), Duration::from_millis(10), || {
        (http_get(&format!("{api}/readyz")).status == 200).then_some(())
    })
    .unwrap_or_else(|| panic!("serve never subscribed\n{}", serve.logs()));
    let total = live.len() as u64;
    let perf = std::env::var_os("OSPREY_BENCH_PERF").map(|dir| {
        let out = Path::new(&dir).join(format!("serve-{label}.perf.data"));
        let mut perf = Proc::spawn(
            Command::new("perf")
                .args(["record", "-F", "999", "-g", "-o"])
                .arg(out)
                .args(["-p", &serve.pid().to_string()]),
        );
        std::thread::sleep(Duration::from_millis(500));
        assert!(perf.is_running(), "perf record failed\n{}", perf.logs());
        perf
    });
    let cpu_before = cpu_seconds(serve.pid());
    let start = Instant::now();
    let publisher = {
        let (port, live) = (broker.port(), live.to_vec());
        std::thread::spawn(move || publish_all(port, live))
    };
    let done = wait_until(Duration::from_secs(600), Duration::from_millis(5), || {
        let stats = http_get(&format!("{api}/api/stats")).json();
        let applied = stats["pipeline"]["applied"].as_u64()?;
        (applied >= total).then_some(())
    });
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds(serve.pid()) - cpu_before;
    assert!(
        done.is_some(),
        "serve did not apply everything\n{}",
        serve.logs()
    );
    publisher.join().unwrap();
    if let Some(mut perf) = perf {
        perf.signal("INT");
        perf.wait_exit(Duration::from_secs(60));
    }
    let rss = peak_rss_kib(serve.pid());
    let stats = http_get(&format!("{api}/api/stats")).json();
    assert_eq!(
        stats["pipeline"]["applied"].as_u64(),
        Some(total),
        "{stats}"
    );
    assert_eq!(stats["pipeline"]["rejected"].as_u64(), Some(0), "{stats}");
    serve.terminate(Duration::from_secs(15));
    println!(
        "  serve {label}: {:.0} messages/s, {:.1} µs of CPU per message ({:.2} cores busy)",
        total as f64 / secs,
        cpu * 1e6 / total as f64,
        cpu / secs
    );
    (total as f64 / secs, rss)
}

/// User + system CPU seconds of process `pid` so far (all its threads).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; in
    // clock ticks of 1/100 s (USER_HZ on Linux).
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// `min / median / max` of `xs`.
fn spread(xs: &[f64]) -> (f64, f64, f64) {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    (v[0], v[v.len() / 2], v[v.len() - 1])
}

fn line(label: &str, xs: &[f64]) -> String {
    let (lo, med, hi) = spread(xs);
    format!(
        "{label}: {med:.0} messages/s median ({:.0} readings/s), min {lo:.0}, max {hi:.0}",
        med * READINGS as f64
    )
}

fn main() {
    let devices = env("OSPREY_BENCH_DEVICES", 20);
    let messages = env("OSPREY_BENCH_MESSAGES", 30_000);
    let rounds = env("OSPREY_BENCH_ROUNDS", 3).max(1);
    let inflight = env("OSPREY_BENCH_INFLIGHT", 1024);
    println!("machine: {}", machine());
    let (history, live) = payloads(devices, messages);
    let bytes: usize = live.iter().map(|(_, p)| p.len()).sum();
    println!(
        "payloads: {messages} messages of {READINGS} readings from {devices} devices per run \
         ({} bytes on average); history: {} messages (4 h per device, {} one-minute windows per \
         series); Mosquitto max_inflight_messages {inflight}",
        bytes / messages.max(1),
        history.len(),
        HISTORY_MS / 60_000,
    );
    let seed_dir = tempfile::tempdir().unwrap();
    let seed = seed_dir.path().join("history.db");
    let built = Instant::now();
    ingest_in_process(&seed, &history);
    println!(
        "history database: {} bytes, built in {:.1} s",
        std::fs::metadata(&seed).unwrap().len(),
        built.elapsed().as_secs_f64()
    );
    let (mut ceilings, mut fresh, mut aged, mut rss) = (vec![], vec![], vec![], 0u64);
    let only = std::env::var("OSPREY_BENCH_ONLY").unwrap_or_default();
    let runs = |kind: &str| only.is_empty() || only.split(',').any(|k| k == kind);
    for round in 1..=rounds {
        let mut said = format!("round {round}:");
        if runs("ceiling") {
            let c = ceiling(&live, inflight);
            said.push_str(&format!(" ceiling {c:.0}/s"));
            ceilings.push(c);
        }
        if runs("fresh") {
            let (f, kib) = serve(&live, inflight, None, &format!("fresh-{round}"));
            said.push_str(&format!(" serve fresh {f:.0}/s (peak RSS {kib} KiB)"));
            fresh.push(f);
            rss = rss.max(kib);
        }
        if only.split(',').any(|k| k == "publisher") {
            let p = publisher_alone(&live, inflight);
            said.push_str(&format!(" publisher alone {p:.0}/s"));
        }
        if only.split(',').any(|k| k == "in-process") {
            let (f, h) = (in_process(&live, None), in_process(&live, Some(&seed)));
            said.push_str(&format!(
                " in-process fresh {f:.0}/s, with history {h:.0}/s"
            ));
        }
        if runs("history") {
            let label = format!("history-{round}");
            let (h, kib) = serve(&live, inflight, Some(&seed), &label);
            said.push_str(&format!(
                " serve with history {h:.0}/s (peak RSS {kib} KiB)"
            ));
            aged.push(h);
            rss = rss.max(kib);
        }
        println!("{said}");
    }
    if ceilings.is_empty() || fresh.is_empty() || aged.is_empty() {
        return;
    }
    let median = |xs: &[f64]| spread(xs).1;
    println!("{}", line("ceiling (mosquitto_sub -q 1)", &ceilings));
    println!("{}", line("serve, fresh database", &fresh));
    println!("{}", line("serve, 4 h history per series", &aged));
    println!(
        "serve/ceiling: fresh {:.2}, with history {:.2}; history/fresh {:.2}; peak RSS {:.1} MiB",
        median(&fresh) / median(&ceilings),
        median(&aged) / median(&ceilings),
        median(&aged) / median(&fresh),
        rss as f64 / 1024.0
    );
}
