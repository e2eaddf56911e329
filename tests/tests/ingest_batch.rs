//! Batched ingest on real processes: `osprey serve --source mqtt` killed with SIGKILL while it
//! applies batches from Mosquitto, restarted on the same database and persistent session, must
//! count every reading exactly once: what it committed before the kill stays (its PUBACKs may
//! not have gone out: the broker redelivers those and dedup drops them), what it had not
//! committed comes back from the broker (nothing acknowledged before its commit).
//!
//! The payloads are real agent messages (the agent library's simulator and batcher, 60
//! readings each); some are published twice in a row (the same `(device, epoch, seq)` in one
//! batch counts once) and some are junk on a device's topic (dead-lettered, stored once, and
//! the rest of their batch applied).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use osprey_tests::fleet::{publish_all, Publish, SimulatedDevice, READINGS_PER_MESSAGE};
use osprey_tests::{bin, http_get, http_get_json, wait_until, Listener, Mosquitto, Proc};
use serde_json::Value;

const DEVICES: usize = 12;
const MESSAGES_PER_DEVICE: usize = 400;
/// Every this many messages, the message is published twice in a row.
const REPEAT_EVERY: usize = 97;
/// Every this many messages, a junk payload follows on the same device's topic.
const JUNK_EVERY: usize = 1_000;

struct Traffic {
    publishes: Vec<Publish>,
    /// Readings per device.
    readings: BTreeMap<String, u64>,
    junk: usize,
}

/// The fleet's messages, devices interleaved, with repeats and junk mixed in.
fn traffic() -> Traffic {
    let mut fleet: Vec<SimulatedDevice> = (0..DEVICES)
        .map(|i| SimulatedDevice::new(&format!("batch-pump-{i:02}")))
        .collect();
    let mut times = vec![1_767_225_600_000_i64; DEVICES];
    let mut out = Traffic {
        publishes: Vec::new(),
        readings: BTreeMap::new(),
        junk: 0,
    };
    let mut n = 0;
    for _ in 0..MESSAGES_PER_DEVICE {
        for (d, t) in fleet.iter_mut().zip(&mut times) {
            let (publish, next) = d.next_message(*t, 100);
            *t = next;
            n += 1;
            *out.readings.entry(d.name().to_owned()).or_default() += READINGS_PER_MESSAGE as u64;
            let topic = publish.0.clone();
            if n % REPEAT_EVERY == 0 {
                out.publishes.push(publish.clone());
            }
            out.publishes.push(publish);
            if n % JUNK_EVERY == 0 {
                out.publishes
                    .push((topic, format!("not cbor {n}").into_bytes()));
                out.junk += 1;
            }
        }
    }
    out
}

fn start_serve(db: &Path, port: u16) -> (Proc, String) {
    let mut serve = Proc::spawn(
        Command::new(bin("osprey"))
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0", "--source", "mqtt", "--mqtt-port"])
            .arg(port.to_string())
            .args(["--mqtt-client-id", "osprey-ingest-batch-test"]),
    );
    let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(30));
    let api = line.trim().rsplit(' ').next().unwrap().to_owned();
    let ready = wait_until(Duration::from_secs(30), Duration::from_millis(50), || {
        (http_get(&format!("{api}/readyz")).status == 200).then_some(())
    });
    assert!(ready.is_some(), "serve never subscribed\n{}", serve.logs());
    (serve, api)
}

fn applied(api: &str) -> u64 {
    http_get_json(&format!("{api}/api/stats"))["pipeline"]["applied"]
        .as_u64()
        .unwrap()
}

/// Readings per device as `/api/devices` counts them, and as the tumbling windows add up.
fn counted(api: &str) -> (BTreeMap<String, u64>, BTreeMap<String, u64>) {
    let mut devices = BTreeMap::new();
    for d in http_get_json(&format!("{api}/api/devices"))
        .as_array()
        .unwrap()
    {
        devices.insert(
            d["device"].as_str().unwrap().to_owned(),
            d["readings"].as_u64().unwrap(),
        );
    }
    let mut windows = BTreeMap::new();
    for device in devices.keys() {
        let list = http_get_json(&format!(
            "{api}/api/windows?device={device}&kind=tumbling&limit=10000"
        ));
        let sum: u64 = list
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["count"].as_u64().unwrap())
            .sum();
        windows.insert(device.clone(), sum);
    }
    (devices, windows)
}

#[test]
fn serve_killed_mid_batch_counts_every_reading_once_after_restart() {
    let traffic = traffic();
    let total = traffic.publishes.len();
    // A window far above a batch, so that hundreds of publishes are unacknowledged when the
    // kill comes.
    let broker = Mosquitto::start(Listener::Plain, "max_inflight_messages 2000\n");
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("osprey.db");
    let (mut serve, mut api) = start_serve(&db, broker.port());

    let publisher = {
        let (port, publishes) = (broker.port(), traffic.publishes.clone());
        std::thread::spawn(move || publish_all(port, publishes))
    };
    // Kill it twice while it is busy, each time once it has applied a sixth of the messages
    // (its counters start at 0 with every process), then restart it on the same database and
    // session.
    let mut kills = Vec::new();
    for _ in 0..2 {
        let busy = wait_until(Duration::from_secs(120), Duration::from_millis(5), || {
            let n = applied(&api);
            (n as usize >= total / 6).then_some(n)
        });
        let Some(n) = busy else {
            panic!("serve stalled\n{}", serve.logs());
        };
        serve.signal("KILL");
        let status = serve.wait_exit(Duration::from_secs(10));
        kills.push(format!("{status} after {n}+ applied"));
        (serve, api) = start_serve(&db, broker.port());
    }
    publisher.join().unwrap();

    let want = &traffic.readings;
    let matched = wait_until(Duration::from_secs(120), Duration::from_millis(250), || {
        let (devices, windows) = counted(&api);
        (&devices == want && &windows == want).then_some(())
    });
    if matched.is_none() {
        let (devices, windows) = counted(&api);
        panic!(
            "readings never matched after {kills:?}\nwant:    {want:?}\ndevices: {devices:?}\nwindows: {windows:?}\n{}",
            serve.logs()
        );
    }
    // A duplicate that slipped past dedup would arrive after the originals: look again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        counted(&api),
        (want.clone(), want.clone()),
        "after {kills:?}"
    );

    let letters = http_get_json(&format!("{api}/api/dead-letters?limit=1000"));
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), traffic.junk, "{letters:?}");
    let stats: Value = http_get_json(&format!("{api}/api/stats"));
    eprintln!(
        "kills: {kills:?}; the last serve's pipeline counters: {}",
        stats["pipeline"]
    );
}
