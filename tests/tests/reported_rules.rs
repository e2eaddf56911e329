//! The rules each device runs, as `osprey serve` shows them, on real processes: Mosquitto, the
//! `osprey-agent` binary in `[remote_config] mode = "topic"`, `osprey serve` reading the broker,
//! and headless Chromium for the device page.
//!
//! - the agent's first report: its two local rules, no document;
//! - a retained document applied live: `GET /api/devices/{id}/rules` lists the document's rule
//!   (source `document`, its unit) and the local one left, the document's source, version and
//!   hash;
//! - a document the agent refuses: the refusal with its field and reason, the old rules still
//!   in effect; the device page shows its Rules section (rules in effect with their sources, the
//!   refusal notice) at desktop and phone width, without sideways scrolling;
//! - the agent offline, a new document set: pending, with when it was set, the old rules still
//!   in effect;
//! - a report on the device's topic that names another device: refused and counted, nothing
//!   changed; a report for a device nobody knows, on the wrong topic: no such device appears.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::path::{Path, PathBuf};
use std::time::Duration;

use osprey_tests::{
    http_get, http_get_json, mosquitto_publish, rendered_dom_in, tag_with, wait_until, Mosquitto,
    Proc, Window,
};
use serde_json::{json, Value};

const DEVICE: &str = "pump-7";

/// An agent in topic mode: the steady simulator, `bearing-hot` above 80 °C and `vibration-high`
/// above 7.1 mm/s in its file.
fn agent_config(dir: &Path, port: u16) -> PathBuf {
    let path = dir.join("agent.toml");
    std::fs::write(
        &path,
        format!(
            "device_id = \"{DEVICE}\"\n\
             [sampling]\ninterval_ms = 200\n\
             [simulator]\nseed = 11\n\
             [batch]\nmax_age_ms = 500\n\
             [journal]\npath = \"{}\"\n\
             [mqtt]\nport = {port}\nkeep_alive_s = 5\n\
             [remote_config]\nmode = \"topic\"\n\
             [[rules]]\nid = \"bearing-hot\"\nsensor = \"bearing\"\nmetric = \"temperature\"\n\
             when = \"above\"\nthreshold = 80.0\nclear = 75.0\nseverity = \"critical\"\n\
             [[rules]]\nid = \"vibration-high\"\nsensor = \"bearing\"\nmetric = \"vibration\"\n\
             when = \"above\"\nthreshold = 7.1\n",
            dir.join("agent.journal").display(),
        ),
    )
    .unwrap();
    path
}

/// The `bearing-hot` rule document at `threshold` (clear `clear`).
fn hot(threshold: f64, clear: f64) -> Value {
    json!({"id": "bearing-hot", "sensor": "bearing", "metric": "temperature",
           "when": "above", "threshold": threshold, "clear": clear, "severity": "critical"})
}

fn set_document(port: u16, doc: &Value) {
    mosquitto_publish(
        port,
        &format!("cmd/osprey/{DEVICE}/config"),
        &doc.to_string(),
        true,
    );
}

/// `GET /api/devices/{device}/rules` once `ok` holds for it.
fn wait_rules(url: &str, procs: &[&Proc], what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    wait_until(Duration::from_secs(20), Duration::from_millis(50), || {
        let r = http_get(&format!("{url}/api/devices/{DEVICE}/rules"));
        (r.status == 200).then(|| r.json()).filter(&ok)
    })
    .unwrap_or_else(|| {
        let last = http_get(&format!("{url}/api/devices/{DEVICE}/rules")).text();
        let logs: Vec<String> = procs.iter().map(|p| p.logs()).collect();
        panic!(
            "{what}: not within 20 s; last answer {last}\n{}",
            logs.join("\n")
        )
    })
}

/// `(id, threshold, source)` of the rules in effect.
fn in_effect(view: &Value) -> Vec<(String, f64, String)> {
    view["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["threshold"].as_f64().unwrap(),
                r["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn rule(id: &str, threshold: f64, source: &str) -> (String, f64, String) {
    (id.to_owned(), threshold, source.to_owned())
}

#[test]
fn serve_shows_the_rules_each_device_applied_refused_or_has_pending() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Mosquitto::plain();
    let port = broker.port();
    let (serve, url) = Proc::serve_mqtt(dir.path(), port, &[]);
    let agent = Proc::agent(&agent_config(dir.path(), port), "info");

    // First report: the file's rules, no document.
    let view = wait_rules(&url, &[&serve, &agent], "first report", |v| {
        v["state"] == "no_document"
    });
    assert_eq!(
        in_effect(&view),
        [
            rule("bearing-hot", 80.0, "local"),
            rule("vibration-high", 7.1, "local")
        ]
    );
    assert_eq!(view["signals_use"], "reported", "{view}");

    // A document applies live: its rule from the document, the other still local.
    let doc = json!({"rules": [hot(30.0, 25.0)], "version": 4});
    let doc_hash = osprey_cloud::rules::desired_hash(doc.to_string().as_bytes());
    set_document(port, &doc);
    let view = wait_rules(&url, &[&serve, &agent], "applied", |v| {
        v["state"] == "applied"
    });
    assert_eq!(
        in_effect(&view),
        [
            rule("bearing-hot", 30.0, "document"),
            rule("vibration-high", 7.1, "local")
        ]
    );
    let applied = &view["applied"];
    assert_eq!(
        (&applied["version"], &applied["hash"], &applied["source"]),
        (
            &json!(4),
            &json!(doc_hash),
            &json!(format!("topic cmd/osprey/{DEVICE}/config"))
        ),
        "{view}"
    );
    assert!(
        view["pending"].is_null() && view["rejected"].is_null(),
        "{view}"
    );

    // A document the agent refuses: the reason, and the rules it had.
    set_document(port, &json!({"rules": [hot(30.0, 50.0)]}));
    let view = wait_rules(&url, &[&serve, &agent], "refusal", |v| {
        v["state"] == "rejected"
    });
    assert_eq!(view["rejected"]["field"], "rules[0]", "{view}");
    assert_eq!(
        view["rejected"]["reason"],
        "rule bearing-hot: clear level 50 must be at or below the threshold 30"
    );
    assert!(view["rejected"]["time_ms"].as_i64().unwrap() > 0);
    assert_eq!(in_effect(&view)[0], rule("bearing-hot", 30.0, "document"));
    // Once its readings are stored, each rule has the unit of its series.
    wait_rules(&url, &[&serve, &agent], "units", |v| {
        v["rules"][0]["unit"] == "Cel" && v["state"] == "rejected"
    });

    // The device page: the rules in effect with their sources, the refusal in words.
    let page = format!("{url}/devices/{DEVICE}");
    let dom = rendered_dom_in(&page, Window::DESKTOP);
    let card = tag_with(&dom, r#"id="rules-card""#).unwrap_or_default();
    assert!(card.contains(r#"data-state="rejected""#), "{dom}");
    let row = tag_with(&dom, r#"data-rule-id="bearing-hot""#).unwrap_or_default();
    assert!(row.contains(r#"data-source="document""#), "{dom}");
    let row = tag_with(&dom, r#"data-rule-id="vibration-high""#).unwrap_or_default();
    assert!(row.contains(r#"data-source="local""#), "{dom}");
    assert!(
        dom.contains("≥ 30.0 °C") && dom.contains("below 25.0 °C"),
        "{dom}"
    );
    assert!(dom.contains(r#"id="rules-rejected""#), "{dom}");
    assert!(
        dom.contains("clear level 50 must be at or below the threshold 30"),
        "{dom}"
    );
    let dom = rendered_dom_in(&page, Window::PHONE);
    assert!(dom.contains(r#"data-rule-id="bearing-hot""#), "{dom}");
    assert!(
        dom.contains(r#"data-overflow="false""#),
        "the phone layout scrolls sideways:\n{dom}"
    );

    // Offline: a new document is pending, the old rules stay in effect.
    drop(agent);
    set_document(port, &json!({"rules": [hot(25.0, 20.0)]}));
    let view = wait_rules(&url, &[&serve], "pending", |v| v["state"] == "pending");
    assert!(view["pending"]["set_ms"].as_i64().unwrap() > 0, "{view}");
    assert_eq!(in_effect(&view)[0], rule("bearing-hot", 30.0, "document"));
    let dom = rendered_dom_in(&page, Window::DESKTOP);
    assert!(dom.contains(r#"id="rules-pending""#), "{dom}");

    // A report on this device's topic naming another device: refused and counted; nothing
    // changes. One naming this device on another's topic makes no device appear.
    let forged = json!({"device": "pump-8", "local_rules": [], "rules": [hot(99.0, 90.0)],
                        "applied": null, "rejected": null});
    let topic = format!("dt/osprey/{DEVICE}/config/reported");
    mosquitto_publish(port, &topic, &forged.to_string(), true);
    let mut forged_b = forged.clone();
    forged_b["device"] = json!(DEVICE);
    mosquitto_publish(
        port,
        "dt/osprey/pump-8/config/reported",
        &forged_b.to_string(),
        true,
    );
    let refused = wait_until(Duration::from_secs(10), Duration::from_millis(50), || {
        let stats = http_get_json(&format!("{url}/api/stats"));
        (stats["pipeline"]["rules_refused"] == 2).then_some(stats)
    });
    assert!(refused.is_some(), "{}", serve.logs());
    let view = http_get_json(&format!("{url}/api/devices/{DEVICE}/rules"));
    assert_eq!(view["state"], "pending", "{view}");
    assert_eq!(in_effect(&view)[0], rule("bearing-hot", 30.0, "document"));
    assert_eq!(
        http_get(&format!("{url}/api/devices/pump-8/rules")).status,
        404
    );
    let logs = serve.stderr();
    assert!(
        logs.contains("rules report refused") && logs.contains("the report names device"),
        "{}",
        serve.logs()
    );
    // Nothing of it reached the dead letters.
    assert_eq!(
        http_get_json(&format!("{url}/api/dead-letters")),
        json!([]),
        "{}",
        serve.logs()
    );
}
