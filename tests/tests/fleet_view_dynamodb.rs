//! The fleet view on AWS: real agent payloads applied by the Lambda handler
//! (`osprey_lambda::handler::handle`, Kinesis event JSON) into moto's DynamoDB, then
//! `osprey serve --state dynamodb --table T`, run as a process, serving the same API and pages
//! read-only from that table: the alerting compressor first on the fleet (API and page), its
//! device page with its alert and a chart with data, the alerts page with the active alert, a
//! new alert delivered on the live stream without a reload. Also: `--source` with
//! `--state dynamodb` and a missing table are refused at start with what to do.
//! Screenshots: `target/screenshots/dynamodb-*.png`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::process::Command;
use std::time::{Duration, Instant};

use aws_lambda_events::event::kinesis::KinesisEvent;
use osprey_lambda::handler::handle;
use osprey_lambda::state::DynamoState;
use osprey_protocol::{Alert, AlertEvent, Body, Envelope, Series, Severity};
use osprey_tests::bench::now_ms;
use osprey_tests::fleet::telemetry;
use osprey_tests::{
    bin, http_get, http_get_json, kinesis_event_json, moto_endpoint, moto_state_tables,
    rendered_dom_in, screenshot, sse_events, tag_with, Proc, Window,
};
use serde_json::Value;

const FAILING: &str = "dyn-compressor-02";
// Both sort before the failing machine by name: only "worst first" puts it on top.
const HEALTHY: [&str; 2] = ["dyn-agitator-01", "dyn-blower-03"];

/// 30 bearing temperatures of `device`, 12 s apart, ending a minute ago: from `base` up by
/// `rise` per reading.
fn readings(device: &str, seq: u64, base: f64, rise: f64) -> Vec<u8> {
    let mut series = Series::new("bearing", "temperature", "Cel");
    let start = now_ms() - 7 * 60_000;
    for i in 0..30 {
        series.push(start + i * 12_000, base + rise * i as f64);
    }
    telemetry(device, seq, series)
}

/// A raise of `rule` on the bearing temperature of `device`, as its agent sends it.
fn raise(device: &str, seq: u64, rule: &str, severity: Severity, value: f64) -> Vec<u8> {
    alert_event(
        device,
        seq,
        rule,
        AlertEvent::Raise,
        severity,
        value,
        now_ms() - 60_000,
    )
}

/// An alert event of `rule` on the bearing temperature of `device` at `time_ms`.
fn alert_event(
    device: &str,
    seq: u64,
    rule: &str,
    event: AlertEvent,
    severity: Severity,
    value: f64,
    time_ms: i64,
) -> Vec<u8> {
    Envelope::new(
        device,
        seq,
        Body::Alert(Alert {
            rule: rule.to_owned(),
            sensor: "bearing".to_owned(),
            metric: "temperature".to_owned(),
            event,
            severity,
            value,
            threshold: 80.0,
            time_ms,
        }),
    )
    .encode()
    .unwrap()
}

/// Applies `records` (partition key, data) through the Lambda handler; none may fail.
async fn apply(state: &DynamoState, first: u32, records: &[(String, Vec<u8>)]) {
    let json = kinesis_event_json("osprey-telemetry", first, records);
    let event: KinesisEvent = serde_json::from_str(&json).unwrap();
    let response = handle(&event, state).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "the Lambda failed records: {response:?}"
    );
}

/// `osprey serve --state dynamodb` with `args`, as an operator starts it.
fn serve(args: &[&str]) -> Command {
    let mut cmd = Command::new(bin("osprey"));
    cmd.args(["serve", "--state", "dynamodb", "--endpoint-url"])
        .arg(moto_endpoint())
        .args(["--region", "us-east-1", "--listen", "127.0.0.1:0"])
        .args(args);
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_shows_the_lambdas_dynamodb_state_as_the_same_pages() {
    let (client, table, dead) = moto_state_tables("view").await;
    let state = DynamoState::new(client, &table, &dead);
    let mut records = vec![
        (FAILING.to_owned(), readings(FAILING, 1, 60.0, 0.9)),
        (
            FAILING.to_owned(),
            raise(FAILING, 2, "bearing-hot", Severity::Critical, 82.5),
        ),
    ];
    for d in HEALTHY {
        records.push((d.to_owned(), readings(d, 1, 40.0, 0.01)));
    }
    apply(&state, 1, &records).await;

    // Refused at start, with what to do: an ingest source, a table that does not exist.
    let out = serve(&["--table", &table, "--source", "kinesis"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ingests nothing") && err.contains("--source"),
        "{err}"
    );
    let out = serve(&["--table", "no-such-table"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("does not exist") && err.contains("--region"),
        "{err}"
    );

    let mut server = Proc::spawn(&mut serve(&["--table", &table]));
    let line = server.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(30));
    let url = line
        .trim()
        .trim_start_matches("osprey serve: listening on ")
        .to_owned();

    // The API: worst first, the alerting compressor on top, with its newest window.
    let page = http_get_json(&format!("{url}/api/fleet"));
    assert_eq!(page["total"], 3, "{page}");
    let top = &page["rows"][0];
    assert_eq!(top["device"], FAILING, "{page}");
    assert_eq!(top["alerts"]["critical"], 1, "{page}");
    assert_eq!(
        top["health"]["score"], 60,
        "one critical alert costs 40: {page}"
    );
    assert_eq!(top["latest"][0]["sensor"], "bearing", "{page}");
    assert_eq!(page["counts"]["critical"], 1, "{page}");
    let page = http_get_json(&format!("{url}/api/fleet?q=BLOWER&sort=name"));
    assert_eq!(page["total"], 1, "{page}");
    assert_eq!(page["rows"][0]["device"], HEALTHY[1], "{page}");
    let bad = http_get(&format!("{url}/api/fleet?sort=loudest"));
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("sort"), "{}", bad.text());

    let device = http_get_json(&format!("{url}/api/devices/{FAILING}"));
    assert_eq!(
        (
            device["readings"].as_u64(),
            device["active_alerts"].as_u64()
        ),
        (Some(30), Some(1))
    );
    assert_eq!(http_get(&format!("{url}/api/devices/nobody")).status, 404);
    // Signals the Lambda does not store are computed from the newest windows, as serve does.
    let signals = http_get_json(&format!("{url}/api/devices/{FAILING}/signals"));
    assert_eq!(
        (
            signals["series"][0]["sensor"].as_str(),
            signals["series"][0]["unit"].as_str()
        ),
        (Some("bearing"), Some("Cel")),
        "{signals}"
    );
    assert_eq!(signals["health"], device["health"], "{signals}");
    assert!(
        device["health"]["score"].as_u64().unwrap() <= 60,
        "{device}"
    );

    // History: every reading in the last hour's buckets, the alert's level, the raise.
    let hist = http_get_json(&format!("{url}/api/devices/{FAILING}/history?range=1h"));
    let s = &hist["series"][0];
    assert_eq!(
        (s["sensor"].as_str(), s["unit"].as_str()),
        (Some("bearing"), Some("Cel"))
    );
    let counted: u64 = s["count"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(counted, 30, "{s}");
    let means = s["mean"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m.is_number())
        .count();
    assert!(
        means >= 6,
        "30 readings over 6 minutes fill 6 or more buckets: {s}"
    );
    assert!(
        s["p95"].as_array().unwrap().iter().any(Value::is_number),
        "{s}"
    );
    assert_eq!(s["thresholds"][0]["level"], 80.0, "{s}");
    assert_eq!(hist["alerts"][0]["event"], "raise", "{hist}");
    assert!(
        hist["timeline"]["not_recorded"]
            .to_string()
            .contains("signals the Lambda stores"),
        "what DynamoDB state lacks is said: {hist}"
    );

    // Episodes: the active alert, with the reading that raised it.
    let episodes = http_get_json(&format!("{url}/api/alerts/episodes"));
    assert_eq!(episodes.as_array().map(Vec::len), Some(1), "{episodes}");
    let e = &episodes[0];
    assert_eq!(
        (
            e["device"].as_str(),
            e["rule"].as_str(),
            e["active"].as_bool()
        ),
        (Some(FAILING), Some("bearing-hot"), Some(true)),
        "{e}"
    );
    assert_eq!(e["raised_value"], 82.5, "{e}");

    // Routes only the SQLite store answers say so; stats say what was read.
    let windows = http_get(&format!("{url}/api/windows"));
    assert_eq!(windows.status, 404);
    assert!(
        windows.text().contains("--state dynamodb"),
        "{}",
        windows.text()
    );
    let stats = http_get_json(&format!("{url}/api/stats"));
    assert_eq!(stats["state"], "dynamodb", "{stats}");
    assert!(stats["reads"]["requests"].as_u64().unwrap() > 0, "{stats}");

    // Pages, as a browser renders them.
    let dom = rendered_dom_in(&format!("{url}/"), Window::DESKTOP);
    let first_row = tag_with(&dom, "<tr data-device=").unwrap_or_default();
    assert!(
        first_row.starts_with(&format!("<tr data-device=\"{FAILING}\"")),
        "{FAILING} is not the fleet page's first row:\n{dom}"
    );
    assert!(
        dom.contains("critical alert bearing-hot is active"),
        "{dom}"
    );
    assert_eq!(dom.matches("<tr data-device=").count(), 3, "{dom}");

    let dom = rendered_dom_in(&format!("{url}/devices/{FAILING}"), Window::DESKTOP);
    assert!(
        dom.contains(r#"data-loaded="true""#),
        "device page did not load:\n{dom}"
    );
    assert!(
        dom.contains(r#"<li data-rule="bearing-hot">"#),
        "its alert is not listed:\n{dom}"
    );
    let chart = tag_with(&dom, r#"data-series="bearing/temperature""#)
        .unwrap_or_else(|| panic!("no bearing temperature chart:\n{dom}"));
    assert!(
        chart.contains(r#"data-rendered="true""#),
        "chart not drawn: {chart}"
    );
    assert!(
        !chart.contains(r#"data-points="0""#),
        "chart without data: {chart}"
    );
    assert!(
        !chart.contains(r#"data-markers="0""#),
        "no raise marker: {chart}"
    );
    assert!(dom.contains("signals the Lambda stores"), "{dom}");

    let dom = rendered_dom_in(&format!("{url}/alerts"), Window::DESKTOP);
    assert!(
        dom.contains(&format!(
            r#"<tr data-device="{FAILING}" data-rule="bearing-hot" data-active="true">"#
        )),
        "the alerts page does not list the active alert:\n{dom}"
    );
    for (name, path) in [
        ("fleet", "/".to_owned()),
        ("device", format!("/devices/{FAILING}")),
    ] {
        for window in [Window::DESKTOP, Window::PHONE] {
            let file = screenshot(
                &format!("{url}{path}"),
                window,
                &format!("dynamodb-{name}-{}", window.width),
            );
            eprintln!("screenshot: {}", file.display());
        }
    }

    // Live: a raise and its clear the Lambda applies (together, so between two listings) after
    // the stream opened both arrive on it, in order, with their values.
    let events = sse_events(&url, "/api/fleet/events");
    let opened = events.recv_timeout(Duration::from_secs(20));
    assert!(
        matches!(&opened, Ok((name, _)) if name == "fleet"),
        "the stream's first event is the page: {opened:?}"
    );
    apply(
        &state,
        10,
        &[
            (
                HEALTHY[0].to_owned(),
                raise(HEALTHY[0], 2, "agitator-warm", Severity::Warning, 81.0),
            ),
            (
                HEALTHY[0].to_owned(),
                alert_event(
                    HEALTHY[0],
                    3,
                    "agitator-warm",
                    AlertEvent::Clear,
                    Severity::Warning,
                    74.0,
                    now_ms() - 30_000,
                ),
            ),
        ],
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut alerts = Vec::new();
    while alerts.len() < 2 && Instant::now() < deadline {
        if let Ok((name, data)) = events.recv_timeout(Duration::from_secs(1)) {
            if name == "alert" && data["device"] == HEALTHY[0] {
                alerts.push(data);
            }
        }
    }
    let got: Vec<_> = alerts
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap_or_default().to_owned(),
                a["event"].as_str().unwrap_or_default().to_owned(),
                a["value"].as_f64(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("agitator-warm".to_owned(), "raise".to_owned(), Some(81.0)),
            ("agitator-warm".to_owned(), "clear".to_owned(), Some(74.0)),
        ],
        "{alerts:?}\n{}",
        server.logs()
    );
    drop(events);

    // The API token applies unchanged: the data needs it, the page itself does not.
    let mut guarded = Proc::spawn(
        serve(&["--table", &table]).env("OSPREY_API_TOKEN", "a-token-of-at-least-sixteen-bytes"),
    );
    let line = guarded.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(30));
    let guarded_url = line
        .trim()
        .trim_start_matches("osprey serve: listening on ");
    assert_eq!(http_get(&format!("{guarded_url}/api/fleet")).status, 401);
    assert_eq!(http_get(&format!("{guarded_url}/")).status, 200);
    guarded.terminate(Duration::from_secs(20));

    let status = server
        .terminate(Duration::from_secs(20))
        .unwrap_or_else(|| panic!("serve did not stop on SIGTERM\n{}", server.logs()));
    assert!(
        status.success(),
        "serve exited with {status}\n{}",
        server.logs()
    );
}
