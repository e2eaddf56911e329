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

    // A change recorded through the API (a loopback serve without a token: recorded as such)
    // is the device's last change, on its rules view and its page.
    let record = json!({"id": "20260101T000000Z-0badc0de", "time": "2026-01-01T00:00:00Z",
        "time_ms": 1_767_225_600_000_i64, "by": "ops@desk", "hash": "sha256:00",
        "document": {"rules": [hot(30.0, 50.0)]}, "selection": {"devices": [DEVICE]},
        "transport": "mqtt", "outcome": "incomplete",
        "results": [{"device": DEVICE, "result": "rejected", "field": "rules[0]", "reason": "clear above"}]});
    let (status, posted) = call(
        "POST",
        &format!("{url}/api/rules/changes"),
        None,
        Some(&record),
    );
    assert_eq!(
        (status, &posted["recorded_by"]),
        (201, &json!("local (no API token)")),
        "{posted}"
    );
    let view = http_get_json(&format!("{url}/api/devices/{DEVICE}/rules"));
    let last = &view["last_change"];
    assert_eq!(
        (&last["id"], &last["result"], &last["by"]),
        (&record["id"], &json!("rejected"), &json!("ops@desk")),
        "{view}"
    );

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
    let last = tag_with(&dom, r#"id="rules-last-change""#).unwrap_or_default();
    assert!(
        dom.contains("by local (no API token) (ops@desk); the device refused it."),
        "{last}\n{dom}"
    );
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

/// `osprey rules …` with `args`; `(success, stdout, stderr)`; the token, when given, from the
/// environment (as a CI job would pass it).
fn osprey_rules(args: &[&str], token: Option<&str>) -> (bool, String, String) {
    osprey_tests::run_osprey(&[&["rules"], args].concat(), &[("OSPREY_API_TOKEN", token)])
}

/// `METHOD url` with the bearer `token` (if any) and a JSON body (if any).
fn call(method: &str, url: &str, token: Option<&str>, body: Option<&Value>) -> (u16, Value) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
    let bytes = body.map(|b| b.to_string().into_bytes());
    let r = osprey_tests::http_request_with(
        method,
        url,
        &headers,
        bytes.as_deref().map(|b| ("application/json", b)),
    )
    .unwrap();
    let status = r.status;
    (
        status,
        serde_json::from_str(&r.text()).unwrap_or(Value::Null),
    )
}

#[test]
fn rules_changes_are_listed_by_serve_as_its_tokens_name_the_callers() {
    const ALICE: &str = "alice-0123456789abcdef-token";
    const BOT: &str = "bot-0123456789abcdef-token";
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("api-tokens");
    std::fs::write(
        &tokens,
        format!("# who may call\nalice {ALICE}\nci-bot {BOT}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&tokens, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let broker = Mosquitto::plain();
    let port = broker.port();
    let (serve, url) = Proc::serve_mqtt(
        dir.path(),
        port,
        &["--api-token-file", tokens.to_str().unwrap()],
    );
    let agent = Proc::agent(&agent_config(dir.path(), port), "info");
    let changes = format!("{url}/api/rules/changes");

    // Alice lowers the threshold with one command; serve records it as alice, whatever the
    // machine said its user was.
    let file = dir.path().join("doc.json");
    std::fs::write(&file, json!({"rules": [hot(30.0, 25.0)]}).to_string()).unwrap();
    let log = dir.path().join("changes.jsonl");
    let port_arg = port.to_string();
    let set = [
        "set",
        "--device",
        DEVICE,
        "--file",
        file.to_str().unwrap(),
        "--wait",
        "20",
        "--mqtt-port",
        &port_arg,
        "--by",
        "mallory@laptop",
        "--change-log",
        log.to_str().unwrap(),
        "--api",
        &url,
    ];
    let (ok, out, err) = osprey_rules(&set, Some(ALICE));
    assert!(ok, "{out}\n{err}\n{}\n{}", agent.logs(), serve.logs());
    assert!(err.contains("recorded by serve as alice"), "{err}");

    let (status, listed) = call("GET", &changes, Some(BOT), None);
    assert_eq!(status, 200, "{listed}");
    let rows = listed.as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    let row = &rows[0];
    assert_eq!(row["recorded_by"], "alice", "{row}");
    assert_eq!(row["change"]["by"], "mallory@laptop", "{row}");
    assert_eq!(row["change"]["results"][0]["device"], DEVICE, "{row}");
    assert_eq!(row["change"]["results"][0]["result"], "applied", "{row}");
    assert_eq!(
        row["change"]["document"]["rules"][0]["threshold"], 30.0,
        "{row}"
    );
    // The same record as the local file has, line for line.
    let local: Value = serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(row["change"], local);

    // Filtered by device; a device it did not name has none.
    let (_, mine) = call(
        "GET",
        &format!("{changes}?device={DEVICE}"),
        Some(BOT),
        None,
    );
    assert_eq!(mine.as_array().unwrap().len(), 1);
    let (_, other) = call("GET", &format!("{changes}?device=pump-99"), Some(BOT), None);
    assert_eq!(other, json!([]));

    // Without a token, or with a wrong one, nothing is recorded and nothing is listed.
    let mut forged = local.clone();
    forged["id"] = json!("20990101T000000Z-deadbeef");
    for token in [None, Some("not-a-token-0123456789")] {
        assert_eq!(call("POST", &changes, token, Some(&forged)).0, 401);
        assert_eq!(call("GET", &changes, token, None).0, 401);
    }
    // A retried post of the same change is a duplicate: still alice's.
    let (status, again) = call("POST", &changes, Some(BOT), Some(&local));
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );
    let (_, listed) = call("GET", &changes, Some(BOT), None);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert_eq!(listed[0]["recorded_by"], "alice");
    // A new change posted by the bot is the bot's, listed first.
    let (status, posted) = call("POST", &changes, Some(BOT), Some(&forged));
    assert_eq!(
        (status, &posted["recorded_by"]),
        (201, &json!("ci-bot")),
        "{posted}"
    );
    let (_, listed) = call("GET", &format!("{changes}?limit=1"), Some(ALICE), None);
    assert_eq!(listed[0]["change"]["id"], forged["id"], "{listed}");
    // Junk and bad device ids are refused with the reason.
    let (status, refused) = call("POST", &changes, Some(BOT), Some(&json!({"id": "x"})));
    assert_eq!(status, 400, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("not a rules change record"),
        "{refused}"
    );
    let mut bad_device = local.clone();
    bad_device["id"] = json!("20990101T000000Z-00000001");
    bad_device["results"][0]["device"] = json!("pump/7");
    let (status, refused) = call("POST", &changes, Some(BOT), Some(&bad_device));
    assert_eq!(status, 400, "{refused}");

    // The CLI lists them from serve, with who recorded each.
    let (ok, out, err) = osprey_rules(&["changes", "--api", &url, "--device", DEVICE], Some(ALICE));
    assert!(ok, "{err}");
    // Newest first: the bot's (same time, larger id), then alice's.
    assert!(out.starts_with("[recorded by ci-bot] "), "{out}");
    assert!(out.contains("\n[recorded by alice] "), "{out}");
    assert!(out.contains("by mallory@laptop: applied"), "{out}");
    assert!(out.contains(&format!("{DEVICE}: applied")), "{out}");
    let (ok, _, err) = osprey_rules(&["changes", "--api", &url], None);
    assert!(
        !ok && err.contains("401") && err.contains("--api-token-file"),
        "{err}"
    );

    // Kept across a restart of serve.
    drop(serve);
    let (_serve, url) = Proc::serve_mqtt(
        dir.path(),
        port,
        &["--api-token-file", tokens.to_str().unwrap()],
    );
    let (_, listed) = call(
        "GET",
        &format!("{url}/api/rules/changes"),
        Some(ALICE),
        None,
    );
    assert_eq!(listed.as_array().unwrap().len(), 2, "{listed}");
}
