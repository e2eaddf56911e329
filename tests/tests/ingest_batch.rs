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
//!
//! The same run archives every reading ([`osprey_cloud::archive`], `--archive DIR`): after the
//! kills and a clean stop, DuckDB reads the Parquet files back and finds every reading that was
//! produced, once, with its message's identity, in the partition of the hour it arrived.

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

fn start_serve(db: &Path, archive: &Path, port: u16) -> (Proc, String) {
    let mut serve = Proc::spawn(
        Command::new(bin("osprey"))
            .arg("serve")
            .arg("--db")
            .arg(db)
            .arg("--archive")
            .arg(archive)
            .args(["--archive-every", "1"])
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
    let archive = dir.path().join("archive");
    let (mut serve, mut api) = start_serve(&db, &archive, broker.port());

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
        (serve, api) = start_serve(&db, &archive, broker.port());
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

    // The archive: a clean stop writes what is still spooled; then every reading produced is
    // in it exactly once.
    serve.signal("TERM");
    let status = serve.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status}\n{}", serve.logs());
    let (archived, partitions) = read_archive(&archive);
    let produced = produced_rows(&traffic.publishes);
    assert_eq!(
        archived.len(),
        produced.len(),
        "the archive holds {} readings, {} were produced (after {kills:?})",
        archived.len(),
        produced.len()
    );
    assert!(
        archived == produced,
        "the archive differs from the readings produced"
    );
    assert_eq!(
        partitions.mismatched, 0,
        "rows outside their arrival hour's partition"
    );
    eprintln!(
        "archive: {} readings in {} files over {} hour partition(s), read back by DuckDB",
        archived.len(),
        partitions.files,
        partitions.hours
    );
}

/// One reading as archived: device, epoch, seq, sensor, metric, time (ms), value's bits.
type Row = (String, u64, u64, String, String, i64, u64);

/// Every reading of the (non-junk) publishes, each once, sorted.
fn produced_rows(publishes: &[Publish]) -> Vec<Row> {
    let mut rows = std::collections::BTreeSet::new();
    for (_, payload) in publishes {
        let Ok(envelope) = osprey_protocol::decode(payload) else {
            continue;
        };
        let osprey_protocol::Body::Telemetry(batch) = &envelope.body else {
            continue;
        };
        for s in &batch.series {
            for (t, v) in s.readings() {
                rows.insert((
                    envelope.device.clone(),
                    envelope.epoch,
                    envelope.seq,
                    s.sensor.clone(),
                    s.metric.clone(),
                    t,
                    v.to_bits(),
                ));
            }
        }
    }
    rows.into_iter().collect()
}

/// How the archive's files are laid out.
struct Partitions {
    files: u64,
    hours: u64,
    /// Rows whose `date=`/`hour=` is not the hour of their `received` time.
    mismatched: u64,
}

/// Every row of the archive as DuckDB reads it (hive partitioning on), sorted.
fn read_archive(archive: &Path) -> (Vec<Row>, Partitions) {
    let script = r##"
import duckdb, struct, sys
files = sys.argv[1] + "/**/*.parquet"
con = duckdb.connect()
rows = con.execute("""SELECT device, epoch, seq, sensor, metric, epoch_ms(time), value
    FROM read_parquet(?, hive_partitioning = true) ORDER BY ALL""", [files]).fetchall()
for r in rows:
    bits = struct.unpack("<Q", struct.pack("<d", r[6]))[0]
    print(r[0], r[1], r[2], r[3], r[4], r[5], bits)
stats = con.execute("""SELECT count(DISTINCT filename), count(DISTINCT (date, hour)),
    count(*) FILTER (WHERE strftime(received AT TIME ZONE 'UTC', '%Y-%m-%d') != CAST(date AS VARCHAR)
                      OR hour(received AT TIME ZONE 'UTC') != CAST(hour AS INTEGER))
    FROM read_parquet(?, hive_partitioning = true, filename = true)""", [files]).fetchone()
print("#", *stats)
"##;
    let text = osprey_tests::duckdb_script(script, &[archive]);
    let mut rows = Vec::new();
    let mut partitions = None;
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f[0] == "#" {
            partitions = Some(Partitions {
                files: f[1].parse().unwrap(),
                hours: f[2].parse().unwrap(),
                mismatched: f[3].parse().unwrap(),
            });
            continue;
        }
        rows.push((
            f[0].to_owned(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].to_owned(),
            f[4].to_owned(),
            f[5].parse().unwrap(),
            f[6].parse().unwrap(),
        ));
    }
    rows.sort();
    (rows, partitions.expect("no partition statistics"))
}
