//! The whole pipeline on real processes: `osprey-agent` (seeded simulators) → Mosquitto →
//! `osprey bridge` → Kinesis (moto's server, through the real AWS SDK) → `osprey serve` → the
//! JSON API. What the simulators produced must be exactly what the API shows: every reading
//! once (window counts, minima and maxima per series), and every alert the agents' rules raised.
//!
//! The expected values are recomputed here with the agent library's `Simulator` and `RuleSet`
//! from the same seeds: the simulated values depend only on (seed, device, sample index).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use osprey_agent::{sim::default_rules, RuleSet, Scenario, Simulator};
use osprey_tests::{
    bin, http_get_json, moto_endpoint, unique_name, wait_until, Certs, Mosquitto, Proc,
};
use serde_json::Value;

/// Samples each agent takes (three readings each).
const SAMPLES: u64 = 300;

/// The fleet: (device, scenario, seed). The degrading machine crosses the bearing-hot rule.
const FLEET: [(&str, Scenario, u64); 3] = [
    ("e2e-pump-1", Scenario::Steady, 11),
    ("e2e-pump-2", Scenario::Degrading, 12),
    ("e2e-fan-3", Scenario::Steady, 13),
];

/// What one series should add up to.
#[derive(Debug, Default, PartialEq)]
struct SeriesTotals {
    count: u64,
    min: f64,
    max: f64,
}

/// Per device: per (sensor, metric) totals, and the alerts as (rule, event, value).
type Expected = BTreeMap<
    String,
    (
        BTreeMap<(String, String), SeriesTotals>,
        Vec<(String, String, f64)>,
    ),
>;

fn expected() -> Expected {
    let mut out = Expected::new();
    for (device, scenario, seed) in FLEET {
        let mut sim = Simulator::new(device, seed, scenario);
        let mut rules = RuleSet::new(default_rules());
        let (series, alerts) = out.entry(device.to_owned()).or_default();
        for _ in 0..SAMPLES {
            for reading in sim.sample(0) {
                for alert in rules.evaluate(&reading) {
                    let event = serde_json::to_value(alert.event).unwrap();
                    alerts.push((alert.rule, event.as_str().unwrap().to_owned(), alert.value));
                }
                let totals = series
                    .entry((reading.sensor.clone(), reading.metric.clone()))
                    .or_insert(SeriesTotals {
                        count: 0,
                        min: f64::INFINITY,
                        max: f64::NEG_INFINITY,
                    });
                totals.count += 1;
                totals.min = totals.min.min(reading.value);
                totals.max = totals.max.max(reading.value);
            }
        }
    }
    out
}

/// What the API shows for the fleet's devices, in the same shape.
fn observed(api: &str) -> Expected {
    let mut out = Expected::new();
    for (device, _, _) in FLEET {
        let windows = http_get_json(&format!("{api}/api/windows?device={device}&limit=10000"));
        let (series, alerts) = out.entry(device.to_owned()).or_default();
        for w in windows.as_array().unwrap() {
            let key = (
                w["sensor"].as_str().unwrap().to_owned(),
                w["metric"].as_str().unwrap().to_owned(),
            );
            let totals = series.entry(key).or_insert(SeriesTotals {
                count: 0,
                min: f64::INFINITY,
                max: f64::NEG_INFINITY,
            });
            totals.count += w["count"].as_u64().unwrap();
            totals.min = totals.min.min(w["min"].as_f64().unwrap());
            totals.max = totals.max.max(w["max"].as_f64().unwrap());
        }
        let mut list: Vec<Value> =
            http_get_json(&format!("{api}/api/alerts?device={device}&limit=10000"))
                .as_array()
                .unwrap()
                .clone();
        list.sort_by_key(|a| a["seq"].as_u64().unwrap());
        for a in list {
            alerts.push((
                a["rule"].as_str().unwrap().to_owned(),
                a["event"].as_str().unwrap().to_owned(),
                a["value"].as_f64().unwrap(),
            ));
        }
    }
    out
}

/// How the agents reach the broker.
enum Link<'a> {
    Plain,
    Mtls(&'a Certs),
}

fn agent_config(
    dir: &Path,
    device: &str,
    scenario: Scenario,
    seed: u64,
    port: u16,
    link: &Link,
) -> std::path::PathBuf {
    let scenario = scenario.name();
    let mut text = format!(
        r#"device_id = "{device}"
[sampling]
interval_ms = 5
max_samples = {SAMPLES}
[simulator]
seed = {seed}
scenario = "{scenario}"
[batch]
max_readings = 60
max_age_ms = 500
[journal]
path = "journal-{device}"
[mqtt]
host = "127.0.0.1"
port = {port}
"#
    );
    if let Link::Mtls(certs) = link {
        let client = certs.issue_client(device);
        text.push_str(&format!(
            "[mqtt.tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            certs.ca, client.cert, client.key
        ));
    }
    for rule in default_rules() {
        text.push_str(&format!(
            "[[rules]]\nid = {:?}\nsensor = {:?}\nmetric = {:?}\nwhen = \"above\"\nthreshold = {:?}\nclear = {:?}\nseverity = {}\n",
            rule.id,
            rule.sensor,
            rule.metric,
            rule.threshold,
            rule.clear_level(),
            serde_json::to_string(&rule.severity).unwrap()
        ));
    }
    let path = dir.join(format!("{device}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the fleet to completion: each agent exits 0 once its journal is empty, which means
/// the broker acknowledged every message.
fn run_fleet(dir: &Path, port: u16, link: &Link) {
    let mut agents: Vec<Proc> = FLEET
        .iter()
        .map(|(device, scenario, seed)| {
            let config = agent_config(dir, device, *scenario, *seed, port, link);
            Proc::spawn(
                Command::new(bin("osprey-agent"))
                    .arg("run")
                    .arg("--config")
                    .arg(config),
            )
        })
        .collect();
    for agent in &mut agents {
        let status = agent.wait_exit(Duration::from_secs(120));
        assert!(status.success(), "agent failed: {status}\n{}", agent.logs());
    }
}

/// Waits until the API shows every expected reading, then checks that nothing more arrives.
fn assert_api_matches(api: &str, serve: &Proc) {
    let want = expected();
    let matched = wait_until(Duration::from_secs(90), Duration::from_millis(500), || {
        (observed(api) == want).then_some(())
    });
    if matched.is_none() {
        panic!(
            "API never matched the simulators\nexpected: {want:#?}\nobserved: {:#?}\nserve logs:\n{}",
            observed(api),
            serve.logs()
        );
    }
    // A duplicate that slipped past dedup would arrive after the originals: look again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        observed(api),
        want,
        "extra readings arrived after the match"
    );
    let degrading = &want["e2e-pump-2"].1;
    assert!(
        degrading
            .iter()
            .any(|(rule, event, _)| rule == "bearing-hot" && event == "raise"),
        "the degrading machine should raise bearing-hot within {SAMPLES} samples: {degrading:?}"
    );
    let devices = http_get_json(&format!("{api}/api/devices"));
    for (device, _, _) in FLEET {
        let d = devices
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device"] == device)
            .unwrap_or_else(|| panic!("{device} missing from /api/devices: {devices}"));
        assert_eq!(d["readings"].as_u64(), Some(SAMPLES * 3), "{d}");
    }
}

fn create_stream(endpoint: &str, name: &str, shards: i32) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new("us-east-1"))
            .endpoint_url(endpoint)
            .load()
            .await;
        let client = aws_sdk_kinesis::Client::new(&config);
        client
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await
            .unwrap_or_else(|e| panic!("cannot create stream {name} at {endpoint}: {e:?}"));
    });
}

fn start_serve(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut serve = Proc::spawn(
        Command::new(bin("osprey"))
            .arg("serve")
            .arg("--db")
            .arg(dir.join("osprey.db"))
            .args(["--listen", "127.0.0.1:0"])
            .args(extra),
    );
    let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(30));
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    (serve, url)
}

#[test]
fn seeded_fleet_through_bridge_and_kinesis_shows_every_reading_once() {
    let endpoint = moto_endpoint();
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::plain();
    let port = broker.port().to_string();
    let stream = unique_name("e2e");
    create_stream(&endpoint, &stream, 2);

    let mut bridge = Proc::spawn(Command::new(bin("osprey")).args([
        "bridge",
        "--mqtt-port",
        &port,
        "--stream",
        &stream,
        "--endpoint-url",
        &endpoint,
    ]));
    bridge.stdout_line_matching("osprey bridge: forwarding", Duration::from_secs(30));
    let (serve, api) = start_serve(
        dir.path(),
        &[
            "--source",
            "kinesis",
            "--stream",
            &stream,
            "--endpoint-url",
            &endpoint,
        ],
    );

    run_fleet(dir.path(), broker.port(), &Link::Plain);
    assert_api_matches(&api, &serve);
    assert!(bridge.is_running(), "bridge died:\n{}", bridge.logs());
}

#[test]
fn seeded_fleet_over_mutual_tls_straight_to_serve_shows_every_reading_once() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate("osprey-serve");
    let broker = Mosquitto::mtls(&certs);
    let port = broker.port().to_string();
    let (serve, api) = start_serve(
        dir.path(),
        &[
            "--source",
            "mqtt",
            "--mqtt-host",
            "localhost",
            "--mqtt-port",
            &port,
            "--mqtt-ca",
            certs.ca.to_str().unwrap(),
            "--mqtt-cert",
            certs.client.cert.to_str().unwrap(),
            "--mqtt-key",
            certs.client.key.to_str().unwrap(),
        ],
    );
    // serve subscribes before the agents publish: wait until the broker has seen it connect.
    wait_until(Duration::from_secs(20), Duration::from_millis(200), || {
        broker.log().contains("osprey-serve").then_some(())
    })
    .unwrap_or_else(|| panic!("serve never connected:\n{}\n{}", serve.logs(), broker.log()));

    run_fleet(dir.path(), broker.port(), &Link::Mtls(&certs));
    assert_api_matches(&api, &serve);
}

/// Three telemetry messages of `device` (10 readings each, seqs 1 to 3) in one bundle.
fn bundle_of_three(device: &str) -> Vec<u8> {
    use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
    let inner: Vec<Vec<u8>> = (1..=3u64)
        .map(|seq| {
            let mut s = Series::new("bearing", "temperature", "Cel");
            for i in 0..10 {
                let t = 1_700_000_000_000 + (seq as i64 * 10 + i) * 1000;
                s.push(t, 40.0 + i as f64);
            }
            let batch = TelemetryBatch { series: vec![s] };
            Envelope::new(device, seq, Body::Telemetry(batch))
                .encode()
                .unwrap()
        })
        .collect();
    let refs: Vec<&[u8]> = inner.iter().map(Vec::as_slice).collect();
    osprey_protocol::encode_bundle(device, 3, &refs).unwrap()
}

fn mosquitto_pub(port: u16, topic: &str, payload: &Path) {
    let out = Command::new(osprey_tests::mosquitto_tool("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-f"])
        .arg(payload)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn a_bundle_through_mosquitto_to_serve_applies_each_message_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::plain();
    let port = broker.port().to_string();
    let (serve, api) = start_serve(
        dir.path(),
        &[
            "--source",
            "mqtt",
            "--mqtt-port",
            &port,
            "--mqtt-client-id",
            "osprey-bundle-test",
        ],
    );
    let device = "bundle-pump-1";
    let file = dir.path().join("bundle.cbor");
    std::fs::write(&file, bundle_of_three(device)).unwrap();
    let topic = format!("dt/osprey/{device}/telemetry");
    let stats = || http_get_json(&format!("{api}/api/stats"))["pipeline"].clone();
    // Publish until serve has subscribed and applied it: repeats are duplicates by design.
    let applied = wait_until(Duration::from_secs(60), Duration::from_millis(500), || {
        mosquitto_pub(broker.port(), &topic, &file);
        (stats()["applied"].as_u64() == Some(3)).then_some(())
    });
    assert!(applied.is_some(), "{}\n{}", stats(), serve.logs());
    // On another device's topic the whole bundle is a dead letter.
    mosquitto_pub(broker.port(), "dt/osprey/other-pump/telemetry", &file);
    let rejected = wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        (stats()["rejected"].as_u64() == Some(1)).then_some(())
    });
    assert!(rejected.is_some(), "{}\n{}", stats(), serve.logs());

    let s = stats();
    assert_eq!(s["applied"].as_u64(), Some(3), "{s}");
    assert!(s["duplicates"].as_u64().unwrap() % 3 == 0, "{s}");
    let devices = http_get_json(&format!("{api}/api/devices"));
    let d = devices
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["device"] == device)
        .unwrap_or_else(|| panic!("{device} missing: {devices}"));
    assert_eq!(d["readings"].as_u64(), Some(30), "{d}");
}
