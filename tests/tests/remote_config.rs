//! Thresholds from the cloud, on real processes: the `osprey-agent` binary, Mosquitto,
//! `mosquitto_sub` for the alerts, and for AWS IoT's Device Shadow the harness's stand-in
//! (`tests/src/shadow.rs`, which says what it does not model).
//!
//! - shadow, live: lowering a threshold in the shadow's `desired` raises the alert on the broker
//!   without a restart; the device reports the document (delta cleared), its version and hash;
//!   `osprey-agent rules` names the shadow version as the rule's source.
//! - shadow, refused: a document that fails the check is reported with its field and reason,
//!   the old rules keep running, and a later valid document still applies.
//! - shadow, offline: a change made while the device is cut off (the delta is lost) is applied
//!   when it reconnects (its get on connect).
//! - topic, restart: a retained `cmd/osprey/<device>/config` document applies live; after a
//!   restart with the retained message gone, the kept document still rules (no clear under the
//!   file's levels), from a 0600 file.
//! - topic, identity: a document naming device A on device B's topic is refused by B and never
//!   seen by A; a document on B's topic is applied by B only.
//! - `osprey rules set|get|status` (MQTT path): one command sets a document on two devices and
//!   returns once both applied it; a document a device would refuse is refused before sending;
//!   status shows a device's refusal; on twenty devices, every alert fires without a restart.
//! - `osprey rules --iot-data` against moto's IoT Data Plane (named shadows): set on two
//!   things, get, status from a reported state, a document that drops a key replaces the
//!   desired state wholly, a bad document refused before sending.
//! - `osprey rules diff` and device selection (MQTT): `--prefix`/`--all` find the devices by
//!   their retained reports, an empty selection says what to do; the diff against what the
//!   agents report in effect (text and JSON), `--exit-code`; `set --devices-file`.
//! - `osprey rules set --canary`: a canary device that refuses the document (a scripted device
//!   on the broker) or stays silent stops the rollout with the others untouched; a passing
//!   canary reaches all; every set is one line of the change record, listed newest first by
//!   `osprey rules changes`; the default log is 0600 in a 0700 directory.
//! - `osprey rules --iot-data` selection on moto: `--thing-group` (moto lists a group's own
//!   things only, not its children's), `--prefix` through ListThings, `diff` against shadows.
//! - the stand-in itself, against AWS's own client (awsiotsdk, `tests/sdk/shadow_check.py`):
//!   the SDK builds the topics and parses the answers, so a wrong topic or field fails.
//!
//! The figures (update to alert on the broker) are printed; run with `--nocapture` to see them.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use osprey_agent::remote_config::Document;
use osprey_protocol::{AlertEvent, Body};
use osprey_tests::{
    bin, mosquitto_publish, mosquitto_tool, wait_until, Mosquitto, Proc, ShadowService, Subscriber,
};
use serde_json::{json, Value};

const SHADOW: &str = "osprey-config";
const POLL: Duration = Duration::from_millis(5);

/// An agent config: the simulator (steady: bearing temperature about 41 °C), 10 samples a
/// second, the `bearing-hot` rule at `threshold` (clear 5 below) and a vibration rule.
fn agent_config(dir: &Path, device: &str, port: u16, mode: &str, threshold: f64) -> PathBuf {
    let path = dir.join(format!("{device}.toml"));
    std::fs::write(
        &path,
        format!(
            "device_id = \"{device}\"\n\
             [sampling]\ninterval_ms = 100\n\
             [simulator]\nseed = 7\n\
             [batch]\nmax_age_ms = 500\n\
             [journal]\npath = \"{}\"\n\
             [mqtt]\nport = {port}\nkeep_alive_s = 5\n\
             [remote_config]\nmode = \"{mode}\"\n\
             [[rules]]\nid = \"bearing-hot\"\nsensor = \"bearing\"\nmetric = \"temperature\"\n\
             when = \"above\"\nthreshold = {threshold:.1}\nclear = {:.1}\nseverity = \"critical\"\n\
             [[rules]]\nid = \"vibration-high\"\nsensor = \"bearing\"\nmetric = \"vibration\"\n\
             when = \"above\"\nthreshold = 7.1\nclear = 6.0\n",
            dir.join(format!("{device}.journal")).display(),
            threshold - 5.0,
        ),
    )
    .unwrap();
    path
}

fn start_agent(config: &Path) -> Proc {
    Proc::agent(config, "info")
}

/// The bearing-hot rule document at `threshold`.
fn hot(threshold: f64) -> Value {
    json!({"id": "bearing-hot", "sensor": "bearing", "metric": "temperature",
           "when": "above", "threshold": threshold, "clear": threshold - 5.0,
           "severity": "critical"})
}

/// The hash the agent reports for `document` (applied or refused).
fn hash(document: &Value) -> String {
    match Document::from_value(document.clone()) {
        Ok(doc) => doc.hash,
        Err((hash, _)) => hash,
    }
}

/// Sets the shadow's desired state over MQTT (`…/update`), as a cloud application would.
fn set_desired(port: u16, thing: &str, desired: &Value) {
    let request = json!({"state": {"desired": desired}, "clientToken": "test-cloud"});
    let topic = format!("$aws/things/{thing}/shadow/name/{SHADOW}/update");
    mosquitto_publish(port, &topic, &request.to_string(), false);
}

/// The retained message on `topic`, if any (read with `mosquitto_sub -C 1`).
fn retained(port: u16, topic: &str) -> Option<Value> {
    let out = Command::new(mosquitto_tool("mosquitto_sub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", topic])
        .args(["-C", "1", "-W", "1"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).ok()
}

/// `(device, rule, event, level)` of every alert the subscriber got.
fn alerts(sub: &Subscriber) -> Vec<(String, String, AlertEvent, f64)> {
    sub.messages()
        .into_iter()
        .filter_map(|m| match m.body {
            Body::Alert(a) => Some((m.device, a.rule, a.event, a.threshold)),
            _ => None,
        })
        .collect()
}

fn raised(sub: &Subscriber, device: &str, level: f64) -> bool {
    alerts(sub).iter().any(|(d, rule, event, threshold)| {
        d == device && rule == "bearing-hot" && *event == AlertEvent::Raise && *threshold == level
    })
}

/// Waits for `what`, panicking with the agent's logs after `timeout`.
fn wait_for<T>(agent: &Proc, timeout: Duration, what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_until(timeout, POLL, f)
        .unwrap_or_else(|| panic!("{what}: not within {timeout:?}\n{}", agent.logs()))
}

/// The shadow's reported state once `ok` holds for it.
fn wait_reported(
    service: &ShadowService,
    agent: &Proc,
    thing: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    wait_for(agent, Duration::from_secs(20), what, || {
        service
            .document(thing, SHADOW)
            .filter(|d| ok(&d["state"]["reported"]))
    })
}

/// `osprey-agent rules --json`.
fn rules_json(config: &Path) -> Value {
    let out = Command::new(bin("osprey-agent"))
        .args(["rules", "--json", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(out.status.success(), "osprey-agent rules: {out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `(id, threshold, source)` of the rules in effect.
fn rules_in_effect(config: &Path) -> Vec<(String, f64, String)> {
    rules_json(config)["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["rule"]["id"].as_str().unwrap().to_owned(),
                r["rule"]["threshold"].as_f64().unwrap(),
                r["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// A broker, the alert subscriber, a temp dir and, for shadow tests, the shadow service.
struct Rig {
    broker: Mosquitto,
    sub: Subscriber,
    dir: tempfile::TempDir,
    service: Option<ShadowService>,
}

impl Rig {
    fn new(shadow: bool) -> Rig {
        let broker = Mosquitto::plain();
        let service = shadow.then(|| ShadowService::start(broker.port()));
        Rig {
            sub: Subscriber::start(broker.port()),
            dir: tempfile::tempdir().unwrap(),
            broker,
            service,
        }
    }

    fn port(&self) -> u16 {
        self.broker.port()
    }

    /// Starts `device` with `bearing-hot` at 80 and waits for its first report (in a shadow
    /// mode, the shadow it creates).
    fn agent(&self, device: &str) -> (PathBuf, Proc) {
        let mode = if self.service.is_some() {
            "shadow"
        } else {
            "topic"
        };
        let config = agent_config(self.dir.path(), device, self.port(), mode, 80.0);
        let agent = start_agent(&config);
        match &self.service {
            Some(service) => {
                wait_reported(service, &agent, device, "first report", |r| {
                    r["local_rules"].is_array()
                });
            }
            None => {
                let topic = format!("dt/osprey/{device}/config/reported");
                wait_for(&agent, Duration::from_secs(20), "first report", || {
                    retained(self.port(), &topic).filter(|r| r["local_rules"].is_array())
                });
            }
        }
        (config, agent)
    }
}

fn assert_owner_only(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{}", path.display());
}

fn starts(agent: &Proc) -> usize {
    agent.stderr().matches("agent starting").count()
}

#[test]
fn shadow_lowers_a_threshold_live_and_reports_the_document() {
    // No shadow yet: the get is refused with 404 and the device reports, creating it.
    let rig = Rig::new(true);
    let (config, agent) = rig.agent("pump-7");
    let Rig {
        broker,
        sub,
        dir,
        service,
    } = rig;
    let service = service.unwrap();
    let doc = service.document("pump-7", SHADOW).unwrap();
    assert_eq!(
        doc["state"]["reported"]["local_rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(doc["state"]["reported"].get("applied").is_none(), "{doc}");
    let before = doc["version"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        !raised(&sub, "pump-7", 80.0),
        "the steady bearing never reaches 80"
    );

    let desired = json!({"rules": [hot(30.0)]});
    let t0 = Instant::now();
    set_desired(broker.port(), "pump-7", &desired);
    wait_for(&agent, Duration::from_secs(10), "alert at 30", || {
        raised(&sub, "pump-7", 30.0).then_some(())
    });
    let to_alert = t0.elapsed();
    let doc = wait_reported(&service, &agent, "pump-7", "applied report", |r| {
        r["applied"]["hash"] == hash(&desired)
    });
    let to_report = t0.elapsed();
    let reported = &doc["state"]["reported"];
    // The desired keys are echoed, so the delta is gone.
    assert_eq!(reported["rules"], desired["rules"], "{doc}");
    assert!(doc["state"].get("delta").is_none(), "{doc}");
    // Version of the desired update: one after the device's first report.
    assert_eq!(reported["applied"]["version"], json!(before + 1), "{doc}");
    assert_eq!(reported["applied"]["source"], "shadow osprey-config");
    assert_eq!(reported["local_rules"].as_array().unwrap().len(), 1);
    assert_eq!(reported["local_rules"][0]["id"], "vibration-high");

    let mut agent = agent;
    assert!(agent.is_running(), "{}", agent.logs());
    assert_eq!(starts(&agent), 1, "no restart");
    let rules = rules_in_effect(&config);
    assert_eq!(rules[0].0, "bearing-hot");
    assert_eq!(rules[0].1, 30.0);
    assert_eq!(
        rules[0].2,
        format!("shadow osprey-config version {}, rules[0]", before + 1)
    );
    assert_eq!(rules[1].2, config.display().to_string());
    assert_owner_only(&dir.path().join("pump-7.journal.remote-config.json"));
    println!(
        "figure: shadow desired update to alert on the broker {} ms, to reported applied {} ms",
        to_alert.as_millis(),
        to_report.as_millis()
    );
}

#[test]
fn shadow_refuses_a_bad_document_with_its_reason_and_keeps_the_rules() {
    let rig = Rig::new(true);
    let (config, agent) = rig.agent("pump-7");
    let Rig {
        broker,
        sub,
        service,
        ..
    } = rig;
    let service = service.unwrap();

    // Clear level on the wrong side: what `osprey-agent check` refuses in a file.
    let mut bad = hot(30.0);
    bad["clear"] = json!(50.0);
    let desired = json!({"rules": [bad]});
    set_desired(broker.port(), "pump-7", &desired);
    let doc = wait_reported(&service, &agent, "pump-7", "rejection", |r| {
        r["rejected"]["hash"] == hash(&desired)
    });
    let rejected = &doc["state"]["reported"]["rejected"];
    assert_eq!(rejected["field"], "rules[0]", "{doc}");
    assert_eq!(
        rejected["reason"],
        "rule bearing-hot: clear level 50 must be at or below the threshold 30"
    );
    // Still pending: desired differs from what the device runs.
    assert_eq!(doc["state"]["delta"]["rules"], desired["rules"], "{doc}");
    // The old rule (80) keeps running: at 30 the bearing (about 41) would raise at once.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !raised(&sub, "pump-7", 30.0),
        "{:?}\n{}",
        alerts(&sub),
        agent.logs()
    );
    let rules = rules_in_effect(&config);
    assert_eq!(
        (rules[0].1, rules[0].2.as_str()),
        (80.0, config.to_str().unwrap())
    );
    assert_eq!(rules_json(&config)["rejected"]["field"], "rules[0]");

    // A typo is refused with serde's words.
    let mut typo = hot(30.0);
    typo["thresold"] = json!(30.0);
    let desired = json!({"rules": [typo]});
    set_desired(broker.port(), "pump-7", &desired);
    let doc = wait_reported(&service, &agent, "pump-7", "typo rejection", |r| {
        r["rejected"]["hash"] == hash(&desired)
    });
    let reason = doc["state"]["reported"]["rejected"]["reason"]
        .as_str()
        .unwrap();
    assert!(reason.contains("unknown field `thresold`"), "{doc}");

    // And the agent still applies a good one.
    let desired = json!({"rules": [hot(30.0)]});
    set_desired(broker.port(), "pump-7", &desired);
    wait_for(&agent, Duration::from_secs(10), "alert at 30", || {
        raised(&sub, "pump-7", 30.0).then_some(())
    });
    let doc = wait_reported(&service, &agent, "pump-7", "applied", |r| {
        r["applied"]["hash"] == hash(&desired)
    });
    assert!(
        doc["state"]["reported"].get("rejected").is_none(),
        "cleared: {doc}"
    );
}

#[test]
fn shadow_change_made_while_offline_is_applied_on_reconnect() {
    let rig = Rig::new(true);
    let (config, mut agent) = rig.agent("pump-7");
    let Rig {
        mut broker,
        sub,
        service,
        ..
    } = rig;
    let service = service.unwrap();

    // The link goes down; the cloud changes the shadow meanwhile (REST API); the delta is
    // published to nobody.
    broker.stop();
    wait_for(&agent, Duration::from_secs(10), "link down", || {
        agent.stderr().contains("connection lost").then_some(())
    });
    let desired = json!({"rules": [hot(30.0)]});
    service
        .update("pump-7", SHADOW, &json!({"state": {"desired": desired}}))
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(rules_in_effect(&config)[0].1, 80.0);

    // Back up: hold the agent until the service and the subscriber are back, so the alert
    // cannot reach the broker before anyone listens.
    agent.signal("STOP");
    broker.restart();
    service.wait_ready(Duration::from_secs(10));
    sub.wait_ready();
    agent.signal("CONT");
    let t0 = Instant::now();
    wait_for(&agent, Duration::from_secs(60), "alert at 30", || {
        raised(&sub, "pump-7", 30.0).then_some(())
    });
    let to_alert = t0.elapsed();
    wait_reported(&service, &agent, "pump-7", "applied report", |r| {
        r["applied"]["hash"] == hash(&desired)
    });
    assert_eq!(starts(&agent), 1, "no restart");
    println!(
        "figure: link back to alert with the change made offline {} ms (includes the reconnect backoff)",
        to_alert.as_millis()
    );
}

#[test]
fn topic_document_applies_live_and_holds_across_a_restart() {
    let rig = Rig::new(false);
    let (config, mut agent) = rig.agent("pump-7");
    let Rig {
        broker, sub, dir, ..
    } = rig;
    let port = broker.port();
    let reported_topic = "dt/osprey/pump-7/config/reported";

    let document = json!({"version": 5, "rules": [hot(30.0)]});
    let t0 = Instant::now();
    mosquitto_publish(
        port,
        "cmd/osprey/pump-7/config",
        &document.to_string(),
        true,
    );
    wait_for(&agent, Duration::from_secs(10), "alert at 30", || {
        raised(&sub, "pump-7", 30.0).then_some(())
    });
    let to_alert = t0.elapsed();
    let report = wait_for(&agent, Duration::from_secs(10), "applied report", || {
        retained(port, reported_topic).filter(|r| r["applied"]["hash"] == hash(&document))
    });
    assert_eq!(report["applied"]["version"], 5, "{report}");
    assert_eq!(
        report["applied"]["source"],
        "topic cmd/osprey/pump-7/config"
    );
    assert_eq!(report["device"], "pump-7");

    // Restart with the retained document gone: the kept one still rules.
    assert!(
        agent.terminate(Duration::from_secs(10)).is_some(),
        "{}",
        agent.logs()
    );
    mosquitto_publish(port, "cmd/osprey/pump-7/config", "", true);
    let alerts_before = alerts(&sub).len();
    let agent = start_agent(&config);
    wait_for(
        &agent,
        Duration::from_secs(20),
        "kept document applied",
        || {
            agent
                .stderr()
                .contains("applying the kept remote document")
                .then_some(())
        },
    );
    wait_for(
        &agent,
        Duration::from_secs(20),
        "report after restart",
        || {
            retained(port, reported_topic)
                .filter(|r| r["applied"]["hash"] == hash(&document) && r["local_rules"].is_array())
        },
    );
    // Under the file's levels (clear at 75) the restored alarm would clear at once; under the
    // kept document's (clear at 25) it stays raised.
    std::thread::sleep(Duration::from_millis(1500));
    let after: Vec<_> = alerts(&sub).into_iter().skip(alerts_before).collect();
    assert!(
        !after
            .iter()
            .any(|(_, rule, event, _)| rule == "bearing-hot" && *event == AlertEvent::Clear),
        "{after:?}\n{}",
        agent.logs()
    );
    let rules = rules_in_effect(&config);
    assert_eq!(
        (rules[0].1, rules[0].2.as_str()),
        (30.0, "topic cmd/osprey/pump-7/config version 5, rules[0]")
    );
    assert_owner_only(&dir.path().join("pump-7.journal.remote-config.json"));
    println!(
        "figure: retained topic document to alert on the broker {} ms",
        to_alert.as_millis()
    );
}

#[test]
fn a_document_on_device_bs_topic_is_never_applied_by_a() {
    let rig = Rig::new(false);
    let (config_a, agent_a) = rig.agent("pump-a");
    let (config_b, agent_b) = rig.agent("pump-b");
    let Rig { broker, sub, .. } = rig;
    let port = broker.port();

    // A document for A, published on B's topic: B refuses it, A never sees it.
    let for_a = json!({"device": "pump-a", "rules": [hot(30.0)]});
    mosquitto_publish(port, "cmd/osprey/pump-b/config", &for_a.to_string(), true);
    let report = wait_for(&agent_b, Duration::from_secs(10), "B's refusal", || {
        retained(port, "dt/osprey/pump-b/config/reported")
            .filter(|r| r["rejected"]["hash"] == hash(&for_a))
    });
    assert_eq!(report["rejected"]["field"], "device", "{report}");
    assert_eq!(
        report["rejected"]["reason"],
        "the document is for device \"pump-a\", this is \"pump-b\""
    );
    // Not JSON at all: refused too, with the whole document as the field.
    mosquitto_publish(port, "cmd/osprey/pump-b/config", "{\"rules\": [", true);
    let report = wait_for(&agent_b, Duration::from_secs(10), "B's refusal", || {
        retained(port, "dt/osprey/pump-b/config/reported")
            .filter(|r| r["rejected"]["field"] == "document")
    });
    assert!(
        report["rejected"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("not JSON"),
        "{report}"
    );

    // A document on B's topic with no device: B applies it, A still runs its file.
    let for_b = json!({"rules": [hot(30.0)]});
    mosquitto_publish(port, "cmd/osprey/pump-b/config", &for_b.to_string(), true);
    wait_for(&agent_b, Duration::from_secs(10), "B's alert at 30", || {
        raised(&sub, "pump-b", 30.0).then_some(())
    });
    std::thread::sleep(Duration::from_millis(1000));
    assert!(!raised(&sub, "pump-a", 30.0), "{:?}", alerts(&sub));
    assert!(
        !agent_a.stderr().contains("remote config"),
        "{}",
        agent_a.logs()
    );
    let report_a = retained(port, "dt/osprey/pump-a/config/reported").unwrap();
    assert!(
        report_a["applied"].is_null() && report_a["rejected"].is_null(),
        "{report_a}"
    );
    assert_eq!(rules_in_effect(&config_a)[0].1, 80.0);
    assert_eq!(rules_in_effect(&config_b)[0].1, 30.0);
}

#[test]
fn the_shadow_stand_in_agrees_with_awsiotsdk() {
    let python = std::env::var_os("OSPREY_TEST_AWSIOT_PYTHON").unwrap_or_else(|| {
        panic!("OSPREY_TEST_AWSIOT_PYTHON is not set: run tests/run.sh, which installs awsiotsdk")
    });
    let broker = Mosquitto::plain();
    let _service = ShadowService::start(broker.port());
    let out = Command::new(&python)
        .arg(osprey_tests::workspace_root().join("tests/sdk/shadow_check.py"))
        .env("OSPREY_SHADOW_PORT", broker.port().to_string())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", Path::new(&python).display()));
    assert!(
        out.status.success(),
        "{}\n{}\n----- mosquitto -----\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        broker.log()
    );
}

/// `osprey rules …` against the broker at `port`; `(success, stdout, stderr)`.
fn osprey_rules(port: u16, args: &[&str]) -> (bool, String, String) {
    osprey_rules_with(args, &["--mqtt-port", &port.to_string()])
}

/// `osprey rules ARGS WAY`: success, standard output, standard error. The default change log
/// is under the target directory ([`osprey_tests::run_osprey`]), never the user's own.
fn osprey_rules_with(args: &[&str], way: &[&str]) -> (bool, String, String) {
    osprey_tests::run_osprey(&[&["rules"], args, way].concat(), &[])
}

#[test]
fn osprey_rules_sets_reads_and_reports_over_mqtt() {
    let rig = Rig::new(false);
    let (_config_a, agent_a) = rig.agent("pump-a");
    let (_config_b, agent_b) = rig.agent("pump-b");
    let (sub, port) = (&rig.sub, rig.port());
    let devices = ["--device", "pump-a", "--device", "pump-b"];

    let (ok, out, err) = osprey_rules(port, &[&["status"], &devices[..]].concat());
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "pump-a: no document set (local rules)\npump-b: no document set (local rules)\n"
    );

    // One command lowers the threshold on both; it returns once both report it applied.
    let document = json!({"rules": [hot(30.0)]});
    let file = rig.dir.path().join("rules.json");
    std::fs::write(&file, document.to_string()).unwrap();
    let t0 = Instant::now();
    let (ok, out, err) = osprey_rules(
        port,
        &[
            &["set", "--file", file.to_str().unwrap(), "--wait", "20"],
            &devices[..],
        ]
        .concat(),
    );
    let to_reported = t0.elapsed();
    assert!(ok, "{out}\n{err}\n{}\n{}", agent_a.logs(), agent_b.logs());
    for device in ["pump-a", "pump-b"] {
        assert!(
            out.contains(&format!(
                "{device}: applied (topic cmd/osprey/{device}/config, {})",
                hash(&document)
            )),
            "{out}"
        );
        wait_for(&agent_a, Duration::from_secs(10), "alerts at 30", || {
            raised(sub, device, 30.0).then_some(())
        });
    }
    let (ok, out, _) = osprey_rules(port, &["get", "--json", "--device", "pump-a"]);
    assert!(ok);
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got["pump-a"], document);

    // A document a device would refuse is refused before anything is sent.
    let mut bad = hot(30.0);
    bad["clear"] = json!(50.0);
    std::fs::write(&file, json!({"rules": [bad]}).to_string()).unwrap();
    let (ok, _, err) = osprey_rules(
        port,
        &[&["set", "--file", file.to_str().unwrap()], &devices[..]].concat(),
    );
    assert!(!ok);
    assert!(
        err.contains("refused before sending: rules[0]: rule bearing-hot: clear level 50"),
        "{err}"
    );
    let (_, out, _) = osprey_rules(port, &["get", "--json", "--device", "pump-b"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["pump-b"],
        document
    );

    // One set past the CLI (by hand): status shows the device's refusal and its reason.
    mosquitto_publish(port, "cmd/osprey/pump-b/config", "{\"rulez\": []}", true);
    let status = wait_for(&agent_b, Duration::from_secs(10), "B's refusal", || {
        let (_, out, _) = osprey_rules(port, &[&["status"], &devices[..]].concat());
        out.contains("pump-b: rejected").then_some(out)
    });
    assert!(
        status.contains("pump-a: applied (topic cmd/osprey/pump-a/config"),
        "{status}"
    );
    assert!(
        status.contains("rulez: unknown field: a document has `rules`"),
        "{status}"
    );
    println!(
        "figure: osprey rules set on 2 devices, start to both reported applied {} ms",
        to_reported.as_millis()
    );
}

#[test]
fn one_osprey_rules_set_lowers_a_threshold_on_twenty_devices() {
    let rig = Rig::new(false);
    let devices: Vec<String> = (1..=20).map(|i| format!("pump-{i:02}")).collect();
    let agents: Vec<(PathBuf, Proc)> = devices.iter().map(|d| rig.agent(d)).collect();
    let document = json!({"rules": [hot(30.0)]});
    let file = rig.dir.path().join("rules.json");
    std::fs::write(&file, document.to_string()).unwrap();
    let mut args = vec!["set", "--file", file.to_str().unwrap(), "--wait", "30"];
    for d in &devices {
        args.extend(["--device", d.as_str()]);
    }
    let t0 = Instant::now();
    let (ok, out, err) = osprey_rules(rig.port(), &args);
    let to_reported = t0.elapsed();
    assert!(ok, "{out}\n{err}");
    assert_eq!(out.matches(": applied (").count(), 20, "{out}");
    let all_raised = wait_until(Duration::from_secs(20), POLL, || {
        devices
            .iter()
            .all(|d| raised(&rig.sub, d, 30.0))
            .then_some(())
    });
    let to_alerts = t0.elapsed();
    assert!(
        all_raised.is_some(),
        "{:?}\n{}",
        alerts(&rig.sub),
        agents[0].1.logs()
    );
    for (_, agent) in &agents {
        assert_eq!(starts(agent), 1, "no restart");
    }
    println!(
        "figure: osprey rules set on 20 devices: all reported applied {} ms, all 20 alerts on the broker {} ms",
        to_reported.as_millis(),
        to_alerts.as_millis()
    );
}

/// The AWS CLI from tests/run.sh's venv, against the moto server.
fn aws_cli(args: &[&str]) -> String {
    let aws = osprey_tests::workspace_root().join(".osprey-test/venv/bin/aws");
    let out = Command::new(aws)
        .args(args)
        .args(["--endpoint-url", &osprey_tests::moto_endpoint()])
        .args(["--region", "us-east-1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aws {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `osprey rules ARGS --iot-data` against moto's IoT Data Plane.
fn osprey_rules_aws(args: &[&str]) -> (bool, String, String) {
    let endpoint = osprey_tests::moto_endpoint();
    osprey_rules_with(
        args,
        &[
            "--iot-data",
            "--iot-endpoint-url",
            &endpoint,
            "--iot-control-endpoint-url",
            &endpoint,
        ],
    )
}

/// Writes `reported` into `thing`'s osprey-config shadow, as its agent would.
fn put_reported(dir: &Path, thing: &str, reported: &Value) {
    let payload = json!({"state": {"reported": reported}}).to_string();
    let out_file = dir.join("update.json").display().to_string();
    aws_cli(&[
        "iot-data",
        "update-thing-shadow",
        "--thing-name",
        thing,
        "--shadow-name",
        SHADOW,
        "--payload",
        &payload,
        &out_file,
    ]);
}

#[test]
fn osprey_rules_sets_reads_and_reports_through_the_iot_data_plane() {
    let things = [
        osprey_tests::unique_name("gw-a"),
        osprey_tests::unique_name("gw-b"),
    ];
    for thing in &things {
        aws_cli(&["iot", "create-thing", "--thing-name", thing]);
    }
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, doc: &Value| {
        let path = dir.path().join(name);
        std::fs::write(&path, doc.to_string()).unwrap();
        path.display().to_string()
    };
    let devices = ["--device", &things[0], "--device", &things[1]];

    // One command sets the document in both things' osprey-config shadows.
    let doc = json!({"rules": [hot(30.0)]});
    let file = write("doc.json", &doc);
    let (ok, _, err) =
        osprey_rules_aws(&[&["set", "--file", &file, "--wait", "0"], &devices[..]].concat());
    assert!(ok, "{err}");
    let (ok, out, err) = osprey_rules_aws(&[&["get", "--json"], &devices[..]].concat());
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got[&things[0]], doc, "{out}");
    assert_eq!(got[&things[1]], doc, "{out}");

    // The first thing reports it applied, as its agent would; the second has not reported.
    let report = json!({
        "rules": doc["rules"],
        "applied": {"source": "shadow osprey-config", "version": 2, "hash": hash(&doc),
                    "time_ms": 1_767_225_600_000_i64},
        "rejected": null});
    put_reported(dir.path(), &things[0], &report);
    let (ok, out, err) = osprey_rules_aws(&[&["status", "--json"], &devices[..]].concat());
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let state = |thing: &str| {
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["device"] == thing)
            .map(|r| r["state"].clone())
    };
    assert_eq!(state(&things[0]), Some(json!("applied")), "{out}");
    assert_eq!(state(&things[1]), Some(json!("no_report")), "{out}");

    // A document that drops a key replaces the desired state wholly (the key is nulled).
    let named = json!({"device": &things[0], "rules": [hot(30.0)]});
    let file = write("named.json", &named);
    let (ok, _, err) = osprey_rules_aws(&[
        "set", "--file", &file, "--wait", "0", "--device", &things[0],
    ]);
    assert!(ok, "{err}");
    let lower = json!({"rules": [hot(25.0)]});
    let file = write("lower.json", &lower);
    let (ok, _, err) = osprey_rules_aws(&[
        "set", "--file", &file, "--wait", "0", "--device", &things[0],
    ]);
    assert!(ok, "{err}");
    let (_, out, _) = osprey_rules_aws(&["get", "--json", "--device", &things[0]]);
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got[&things[0]], lower, "the dropped key is gone: {out}");
    let (_, out, _) = osprey_rules_aws(&["status", "--json", "--device", &things[0]]);
    assert!(
        out.contains("\"pending\""),
        "a new document is pending until reported: {out}"
    );

    // A document a device would refuse is refused before anything is sent.
    let bad = json!({"rules": [{"id": "x", "sensor": "s", "metric": "m", "when": "above",
                               "threshold": 30.0, "clear": 50.0}]});
    let file = write("bad.json", &bad);
    let (ok, _, err) = osprey_rules_aws(&[&["set", "--file", &file], &devices[..]].concat());
    assert!(!ok && err.contains("refused before sending"), "{err}");
    let (_, out, _) = osprey_rules_aws(&["get", "--json", "--device", &things[1]]);
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got[&things[1]], doc, "unchanged: {out}");
}

/// Writes `doc` as `dir/name` and gives its path.
fn write_json(dir: &Path, name: &str, doc: &Value) -> String {
    let path = dir.join(name);
    std::fs::write(&path, doc.to_string()).unwrap();
    path.display().to_string()
}

/// A rule that is not in the agents' files.
fn cold() -> Value {
    json!({"id": "bearing-cold", "sensor": "bearing", "metric": "temperature",
           "when": "below", "threshold": 5.0})
}

#[test]
fn osprey_rules_diffs_against_reported_rules_and_selects_by_prefix_and_file() {
    let rig = Rig::new(false);
    let (_config_a, agent_a) = rig.agent("pump-a");
    let (_config_b, _agent_b) = rig.agent("pump-b");
    let (_config_f, _agent_f) = rig.agent("fan-a");
    let (port, dir) = (rig.port(), rig.dir.path());

    // --prefix and --all find the devices by their retained reports.
    let t0 = Instant::now();
    let (ok, out, err) = osprey_rules(port, &["status", "--prefix", "pump-"]);
    println!(
        "figure: osprey rules status --prefix (discovery, then status) {} ms",
        t0.elapsed().as_millis()
    );
    assert!(ok, "{err}");
    assert_eq!(
        out,
        "pump-a: no document set (local rules)\npump-b: no document set (local rules)\n"
    );
    let (ok, out, err) = osprey_rules(port, &["get", "--all"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.starts_with("fan-a: "), "sorted: {out}");
    // An empty selection says what to do; two selections are refused.
    let (ok, _, err) = osprey_rules(port, &["status", "--prefix", "valve-"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains(
            "no device id starts with \"valve-\": on a broker only devices with a retained report"
        ) && err.contains("--devices-file"),
        "{err}"
    );
    let (ok, _, err) = osprey_rules(port, &["status", "--all", "--prefix", "pump-"]);
    assert!(!ok && err.contains("cannot be used with"), "{err}");
    let (ok, _, err) = osprey_rules(port, &["status", "--device", "pump/a"]);
    assert!(!ok && err.contains("invalid device id"), "{err}");

    // The file against nothing set and against the local rules each device reports.
    let doc = json!({"rules": [hot(30.0), cold()]});
    let file = write_json(dir, "doc.json", &doc);
    let (ok, out, err) = osprey_rules(port, &["diff", "--file", &file, "--prefix", "pump-"]);
    assert!(ok, "{err}");
    let cold_line = "    + bearing-cold: metric temperature, sensor bearing, severity warning, \
                     threshold 5.0, when below\n";
    let expected_a = format!(
        "pump-a\n\
         \x20 document set: none (local rules only); the file: 0 changed, 2 added, 0 removed, 0 unchanged\n\
         \x20   + bearing-hot: clear 25.0, metric temperature, sensor bearing, severity critical, \
         threshold 30.0, when above\n\
         {cold_line}\
         \x20 in effect (local rules only): 1 changed, 1 added, 0 removed, 1 unchanged\n\
         \x20   ~ bearing-hot: clear 75.0 → 25.0, threshold 80.0 → 30.0\n\
         {cold_line}"
    );
    assert!(out.starts_with(&expected_a), "{out}");
    assert!(
        out.contains("\npump-b\n") && !out.contains("fan-a"),
        "{out}"
    );
    // --exit-code: 1 when anything differs, with nothing on stderr.
    let (ok, _, err) = osprey_rules(
        port,
        &["diff", "--file", &file, "--device", "pump-a", "--exit-code"],
    );
    assert!(!ok && err.is_empty(), "{err}");

    // Set through a devices file (comments skipped): pump-a only.
    let devices = dir.join("devices.txt");
    std::fs::write(&devices, "# the first gateway\npump-a   # north side\n\n").unwrap();
    let devices = devices.to_str().unwrap();
    let log = dir.join("changes.jsonl");
    let log = log.to_str().unwrap();
    let (ok, out, err) = osprey_rules(
        port,
        &[
            "set",
            "--file",
            &file,
            "--devices-file",
            devices,
            "--wait",
            "20",
            "--change-log",
            log,
        ],
    );
    assert!(ok, "{out}\n{err}\n{}", agent_a.logs());
    assert!(
        out.starts_with("pump-a: applied (") && out.lines().count() == 1,
        "{out}"
    );
    // Now the file is what pump-a has on both sides.
    let (ok, out, err) = osprey_rules(
        port,
        &[
            "diff",
            "--file",
            &file,
            "--devices-file",
            devices,
            "--exit-code",
        ],
    );
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains(&format!(
            "  document set ({h}): 0 changed, 0 added, 0 removed, 2 unchanged\n\
             \x20 in effect (applied {h}): 0 changed, 0 added, 0 removed, 3 unchanged\n",
            h = hash(&doc)
        )),
        "{out}"
    );

    // JSON: a lower threshold and one rule dropped, against both devices.
    let lower = json!({"rules": [hot(25.0)]});
    let file = write_json(dir, "lower.json", &lower);
    let (ok, out, err) = osprey_rules(
        port,
        &[
            "diff", "--json", "--file", &file, "--device", "pump-a", "--device", "pump-b",
        ],
    );
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let a = &rows[0];
    assert_eq!(a["device"], "pump-a");
    assert_eq!(a["desired"]["hash"], hash(&doc));
    assert_eq!(a["desired"]["removed"][0]["id"], "bearing-cold", "{a}");
    assert_eq!(a["in_effect"]["removed"][0]["id"], "bearing-cold", "{a}");
    let threshold = json!({"field": "threshold", "old": 30.0, "new": 25.0});
    assert!(
        a["in_effect"]["changed"][0]["fields"]
            .as_array()
            .unwrap()
            .contains(&threshold),
        "{a}"
    );
    let b = &rows[1];
    assert_eq!(b["desired"]["hash"], Value::Null);
    let threshold = json!({"field": "threshold", "old": 80.0, "new": 25.0});
    assert!(
        b["in_effect"]["changed"][0]["fields"]
            .as_array()
            .unwrap()
            .contains(&threshold),
        "{b}"
    );
    assert_eq!(b["in_effect"]["unchanged"], 1, "vibration-high stays: {b}");
}

/// Plays a device that refuses the next document on its config topic: waits for it (retained,
/// so it may come before the subscription) and reports it rejected, as an agent words it.
fn refusing_device(port: u16, device: &'static str) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let out = Command::new(mosquitto_tool("mosquitto_sub"))
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args([
                "-t",
                &format!("cmd/osprey/{device}/config"),
                "-C",
                "1",
                "-W",
                "20",
            ])
            .output()
            .unwrap();
        let document: Value = serde_json::from_slice(&out.stdout).unwrap();
        let report = json!({"device": device, "local_rules": [], "applied": null,
            "rejected": {"source": format!("topic cmd/osprey/{device}/config"), "version": null,
                         "hash": hash(&document), "field": "rules[0]",
                         "reason": "rule bearing-hot: no such sensor here", "time_ms": 0}});
        mosquitto_publish(
            port,
            &format!("dt/osprey/{device}/config/reported"),
            &report.to_string(),
            true,
        );
    })
}

#[test]
fn osprey_rules_canary_stops_on_a_refusal_or_silence_and_every_set_is_recorded() {
    let rig = Rig::new(false);
    let (_config_a, agent_a) = rig.agent("pump-a");
    let (_config_b, _agent_b) = rig.agent("pump-b");
    let (port, dir) = (rig.port(), rig.dir.path());
    let log = dir.join("changes.jsonl");
    let log = log.to_str().unwrap();
    let devices = [
        "--device", "pump-0", "--device", "pump-a", "--device", "pump-b",
    ];
    let set = |file: &str, extra: &[&str]| {
        let base = ["set", "--file", file, "--change-log", log, "--by", "tester"];
        osprey_rules(port, &[&base[..], extra].concat())
    };

    // pump-0 (first in id order, so the canary) refuses: the others are not touched.
    let doc = json!({"rules": [hot(30.0)]});
    let file = write_json(dir, "doc.json", &doc);
    let refuser = refusing_device(port, "pump-0");
    let (ok, out, err) = set(
        &file,
        &[&devices[..], &["--canary", "1", "--canary-timeout", "20"]].concat(),
    );
    refuser.join().unwrap();
    assert!(!ok, "{out}");
    assert_eq!(out.lines().count(), 1, "only the canary was set: {out}");
    assert!(
        err.contains(
            "the canary stopped the rollout (pump-0: rejected: rules[0]: rule bearing-hot: no \
             such sensor here); 2 other devices were not touched"
        ) && err.contains("--file PREVIOUS.json --device pump-0"),
        "{err}"
    );
    let (_, out, _) = osprey_rules(
        port,
        &["get", "--json", "--device", "pump-a", "--device", "pump-b"],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap(),
        json!({}),
        "untouched"
    );

    // A canary of 50% of two: pump-a applies it, then pump-b gets it too.
    let t0 = Instant::now();
    let (ok, out, err) = set(
        &file,
        &[
            "--device", "pump-a", "--device", "pump-b", "--canary", "50%", "--wait", "20",
        ],
    );
    let canary_then_rest = t0.elapsed();
    assert!(ok, "{out}\n{err}\n{}", agent_a.logs());
    assert_eq!(out.matches(": applied (").count(), 2, "{out}");
    println!(
        "figure: osprey rules set --canary 50% on 2 devices, start to both reported applied {} ms",
        canary_then_rest.as_millis()
    );

    // A silent canary: pump-0 does not report on the new document within the timeout.
    let lower = json!({"rules": [hot(28.0)]});
    let lower_file = write_json(dir, "lower.json", &lower);
    let (ok, _, err) = set(
        &lower_file,
        &[
            "--device",
            "pump-0",
            "--device",
            "pump-a",
            "--canary",
            "1",
            "--canary-timeout",
            "1",
        ],
    );
    assert!(!ok);
    assert!(
        err.contains("(pump-0: no report); 1 other device was not touched"),
        "{err}"
    );
    assert!(
        err.contains("(pump-0 has no earlier change in this log; `osprey rules changes"),
        "it never applied one: {err}"
    );
    let (_, out, _) = osprey_rules(port, &["get", "--json", "--device", "pump-a"]);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["pump-a"],
        doc,
        "untouched"
    );

    // The record: three lines, newest first, each with its per-device results.
    assert_owner_only(Path::new(log));
    let (ok, out, err) = osprey_rules_with(&["changes", "--change-log", log], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("by tester: stopped by the canary"), "{out}");
    let first = out.find(&hash(&lower)).unwrap();
    assert!(
        first < out.find(&hash(&doc)).unwrap(),
        "newest first: {out}"
    );
    assert!(
        out.contains("  pump-0: no report\n  pump-a: not attempted"),
        "{out}"
    );
    let (ok, out, _) = osprey_rules_with(
        &["changes", "--change-log", log, "--json", "--limit", "3"],
        &[],
    );
    assert!(ok);
    let records: Value = serde_json::from_str(&out).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 3);
    let (passed, stopped) = (&records[1], &records[2]);
    assert_eq!(passed["outcome"], "applied");
    assert_eq!(passed["canary"]["devices"], json!(["pump-a"]));
    assert_eq!(passed["canary"]["spec"], "50%");
    assert_eq!(stopped["outcome"], "stopped");
    assert_eq!(stopped["by"], "tester");
    assert_eq!(stopped["hash"], hash(&doc));
    assert_eq!(stopped["document"], doc);
    assert_eq!(stopped["transport"], format!("mqtt 127.0.0.1:{port}"));
    assert_eq!(
        stopped["selection"],
        json!({"devices": ["pump-0", "pump-a", "pump-b"]})
    );
    assert_eq!(
        stopped["results"],
        json!([
            {"device": "pump-0", "result": "rejected", "field": "rules[0]",
             "reason": "rule bearing-hot: no such sensor here"},
            {"device": "pump-a", "result": "not_attempted"},
            {"device": "pump-b", "result": "not_attempted"}])
    );

    // Without --change-log: $XDG_STATE_HOME/osprey/rules-changes.jsonl, directory 0700. (A
    // device with no agent, so that --wait 0 cannot see it applied.)
    let state = dir.join("state");
    let out = Command::new(bin("osprey"))
        .args([
            "rules", "set", "--file", &file, "--device", "pump-9", "--wait", "0",
        ])
        .args(["--mqtt-port", &port.to_string()])
        .env("XDG_STATE_HOME", &state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let default_log = state.join("osprey/rules-changes.jsonl");
    assert_owner_only(&default_log);
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(&default_log).unwrap().trim()).unwrap();
    assert_eq!(line["results"][0]["result"], "not_waited", "{line}");
    assert!(line["by"].as_str().unwrap().contains('@'), "{line}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(state.join("osprey"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700);
}

#[test]
fn osprey_rules_selects_things_by_group_and_prefix_and_diffs_through_the_iot_data_plane() {
    let prefix = osprey_tests::unique_name("line");
    let things: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|s| format!("{prefix}-{s}"))
        .collect();
    let group = format!("{prefix}-group");
    let empty_group = format!("{prefix}-empty");
    for thing in &things {
        aws_cli(&["iot", "create-thing", "--thing-name", thing]);
    }
    for g in [&group, &empty_group] {
        aws_cli(&["iot", "create-thing-group", "--thing-group-name", g]);
    }
    for thing in &things[..2] {
        aws_cli(&[
            "iot",
            "add-thing-to-thing-group",
            "--thing-group-name",
            &group,
            "--thing-name",
            thing,
        ]);
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("changes.jsonl");
    let log = log.to_str().unwrap();

    // The group's things, and only them.
    let doc = json!({"rules": [hot(30.0)]});
    let file = write_json(dir.path(), "doc.json", &doc);
    let (ok, out, err) = osprey_rules_aws(&[
        "set",
        "--file",
        &file,
        "--thing-group",
        &group,
        "--wait",
        "0",
        "--change-log",
        log,
    ]);
    assert!(ok, "{out}\n{err}");
    assert_eq!(out.lines().count(), 2, "{out}");
    let (ok, out, err) = osprey_rules_aws(&["get", "--json", "--prefix", &prefix]);
    assert!(ok, "{err}");
    let got: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(got[&things[0]], doc, "{out}");
    assert_eq!(got[&things[1]], doc, "{out}");
    assert!(got.get(&things[2]).is_none(), "not in the group: {out}");
    let record: Value = serde_json::from_str(std::fs::read_to_string(log).unwrap().trim()).unwrap();
    assert_eq!(record["selection"], json!({"thing_group": group}));
    assert!(
        record["transport"]
            .as_str()
            .unwrap()
            .starts_with(&format!("iot-data {}", osprey_tests::moto_endpoint())),
        "{record}"
    );
    assert_eq!(record["results"][0]["result"], "not_waited");

    // The first thing reports it applied over its local vibration rule, as its agent would.
    let vibration = json!({"id": "vibration-high", "sensor": "bearing", "metric": "vibration",
                           "when": "above", "threshold": 7.1, "clear": 6.0, "severity": "warning"});
    let report = json!({
        "rules": doc["rules"], "device": &things[0], "local_rules": [vibration],
        "applied": {"source": "shadow osprey-config", "version": 2, "hash": hash(&doc),
                    "time_ms": 1_767_225_600_000_i64},
        "rejected": null});
    put_reported(dir.path(), &things[0], &report);

    // diff by prefix: all three things, each against its own shadow.
    let lower = json!({"rules": [hot(25.0), cold()]});
    let file = write_json(dir.path(), "lower.json", &lower);
    let (ok, out, err) =
        osprey_rules_aws(&["diff", "--json", "--file", &file, "--prefix", &prefix]);
    assert!(ok, "{err}");
    let rows: Value = serde_json::from_str(&out).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3, "{out}");
    let (a, b, c) = (&rows[0], &rows[1], &rows[2]);
    assert_eq!(a["desired"]["hash"], hash(&doc));
    assert_eq!(a["desired"]["changed"][0]["id"], "bearing-hot", "{a}");
    assert_eq!(a["in_effect"]["hash"], hash(&doc));
    assert_eq!(a["in_effect"]["added"][0]["id"], "bearing-cold", "{a}");
    assert_eq!(a["in_effect"]["unchanged"], 1, "the local rule stays: {a}");
    assert_eq!(b["in_effect"], Value::Null, "no report: {b}");
    assert_eq!(c["desired"]["hash"], Value::Null, "{c}");
    assert_eq!(c["desired"]["added"].as_array().unwrap().len(), 2, "{c}");
    let (ok, out, _) = osprey_rules_aws(&["diff", "--file", &file, "--device", &things[0]]);
    assert!(ok);
    assert!(
        out.contains("    ~ bearing-hot: clear 25.0 → 20.0, threshold 30.0 → 25.0\n"),
        "{out}"
    );

    // An empty group says so; a group needs AWS.
    let (ok, _, err) = osprey_rules_aws(&["status", "--thing-group", &empty_group]);
    assert!(!ok && err.contains("has no things"), "{err}");
    let (ok, _, err) = osprey_rules_with(&["status", "--thing-group", &group], &[]);
    assert!(!ok && err.contains("--iot-data"), "{err}");
}
