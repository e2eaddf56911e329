//! Tests of the fleet, history, episodes and live endpoints ([`super::views`], [`super::live`]).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use osprey_protocol::{
    Alert, AlertEvent, Body as MsgBody, Comparison, Envelope, Series, Severity, TelemetryBatch,
    ThresholdRule,
};
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::pipeline::{Origin, Pipeline};
use crate::store::Store;

const T0: i64 = 1_700_000_040_000; // a minute boundary
const MIN: i64 = 60_000;

struct Fleet {
    _dir: tempfile::TempDir,
    _store: Store,
    pipeline: Pipeline,
    router: Router,
    seq: std::collections::HashMap<String, u64>,
}

impl Fleet {
    /// A store whose signals predict crossings of `bearing-hot` (critical, above 80), and an
    /// API that draws its level.
    async fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let rule = ThresholdRule {
            threshold: 80.0,
            severity: Severity::Critical,
            ..ThresholdRule::new("bearing-hot", "bearing", "temperature", Comparison::Above)
        };
        let signals = crate::analytics::signals::SignalsConfig {
            rules: vec![rule.clone()],
            ..Default::default()
        };
        let store = Store::open_with(dir.path().join("osprey.db"), signals).unwrap();
        let pipeline = Pipeline::new(store.writer());
        let mut state = ApiState::new(store.reader(), pipeline.stats_handle());
        state.rules = Arc::from(vec![rule]);
        Fleet {
            router: router(state),
            _dir: dir,
            _store: store,
            pipeline,
            seq: Default::default(),
        }
    }

    async fn send(&mut self, device: &str, body: MsgBody) {
        let seq = self.seq.entry(device.to_owned()).or_insert(0);
        *seq += 1;
        let bytes = Envelope::new(device, *seq, body).encode().unwrap();
        self.pipeline
            .ingest(&bytes, Origin::Direct("test".into()))
            .await
            .unwrap();
    }

    async fn readings(&mut self, device: &str, values: &[(i64, f64)]) {
        let mut s = Series::new("bearing", "temperature", "Cel");
        for (t, v) in values {
            s.push(*t, *v);
        }
        self.send(
            device,
            MsgBody::Telemetry(TelemetryBatch { series: vec![s] }),
        )
        .await;
    }

    async fn alert(
        &mut self,
        device: &str,
        rule: &str,
        event: AlertEvent,
        severity: Severity,
        t: i64,
    ) {
        let alert = Alert {
            rule: rule.into(),
            sensor: "bearing".into(),
            metric: "temperature".into(),
            event,
            severity,
            value: 85.0,
            threshold: 80.0,
            time_ms: t,
        };
        self.send(device, MsgBody::Alert(alert)).await;
    }

    async fn request(&self, uri: &str) -> axum::response::Response {
        self.router
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap()
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        let response = self.request(uri).await;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 22)
            .await
            .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Five devices: c-3 critical, b-2 and e-5 warnings (e-5 two of them), a-1 and d-4 quiet.
async fn five() -> Fleet {
    let mut f = Fleet::new().await;
    for d in ["a-1", "b-2", "c-3", "d-4", "e-5"] {
        f.readings(d, &[(T0, 40.0), (T0 + 1_000, 42.0)]).await;
    }
    f.alert("c-3", "hot", AlertEvent::Raise, Severity::Critical, T0)
        .await;
    f.alert("b-2", "warm", AlertEvent::Raise, Severity::Warning, T0)
        .await;
    f.alert("e-5", "warm", AlertEvent::Raise, Severity::Warning, T0)
        .await;
    f.alert("e-5", "warmer", AlertEvent::Raise, Severity::Warning, T0)
        .await;
    f
}

fn ids(page: &Value) -> Vec<String> {
    page["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["device"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_fleet_comes_worst_first_filtered_and_paged() {
    let f = five().await;
    let (status, page) = f.get("/api/fleet").await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(ids(&page), ["c-3", "e-5", "b-2", "a-1", "d-4"]);
    assert_eq!(page["total"], 5);
    assert_eq!(page["counts"]["devices"], 5);
    assert_eq!(page["counts"]["critical"], 1);
    assert_eq!(page["counts"]["warning"], 2);
    assert_eq!(page["counts"]["active_alerts"], 4);
    let top = &page["rows"][0];
    assert_eq!(top["alerts"]["critical"], 1);
    assert_eq!(top["active_rules"][0], "hot");
    assert!(top["health"]["reasons"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("critical alert hot"));
    assert_eq!(top["latest"][0]["unit"], "Cel");

    let (_, page) = f.get("/api/fleet?offset=1&limit=2").await;
    assert_eq!(ids(&page), ["e-5", "b-2"]);
    assert_eq!(
        (page["total"].as_u64(), page["offset"].as_u64()),
        (Some(5), Some(1))
    );
    let (_, page) = f.get("/api/fleet?severity=warning").await;
    assert_eq!(ids(&page), ["e-5", "b-2"]);
    let (_, page) = f.get("/api/fleet?severity=none&sort=name").await;
    assert_eq!(ids(&page), ["a-1", "d-4"]);
    let (_, page) = f.get("/api/fleet?q=C-").await;
    assert_eq!(ids(&page), ["c-3"]);
    let (_, page) = f.get("/api/fleet?status=online").await;
    assert_eq!(page["total"], 0);
    assert_eq!(page["counts"]["devices"], 5, "counts are the whole fleet's");
    let (_, page) = f.get("/api/fleet?offset=10").await;
    assert_eq!((page["total"].as_u64(), ids(&page).len()), (Some(5), 0));
}

#[tokio::test]
async fn history_buckets_windows_and_draws_rules_alerts_and_corrections() {
    let mut f = Fleet::new().await;
    f.readings("pump-1", &[(T0, 40.0), (T0 + 1_000, 42.0)])
        .await;
    f.readings("pump-1", &[(T0 + MIN, 41.0), (T0 + MIN + 1_000, 43.0)])
        .await;
    // Late data for the first minute, which closed when the second minute arrived.
    f.readings("pump-1", &[(T0 + 30_000, 44.0)]).await;
    f.alert(
        "pump-1",
        "hot",
        AlertEvent::Raise,
        Severity::Critical,
        T0 + MIN,
    )
    .await;

    let to = T0 + 2 * MIN;
    let (status, h) = f
        .get(&format!("/api/devices/pump-1/history?range=1h&to_ms={to}"))
        .await;
    assert_eq!(status, StatusCode::OK, "{h}");
    assert_eq!(h["bucket_ms"], MIN);
    let s = &h["series"][0];
    assert_eq!(
        (s["sensor"].as_str(), s["unit"].as_str()),
        (Some("bearing"), Some("Cel"))
    );
    let t = s["t"].as_array().unwrap();
    assert_eq!(t.len(), 60, "one bucket per minute of the hour");
    let last = t.len() - 1;
    assert_eq!(s["t"][last - 1], T0);
    assert_eq!(s["count"][last - 1], 3);
    assert_eq!(s["mean"][last - 1], 42.0);
    assert_eq!(s["max"][last - 1], 44.0);
    assert_eq!(
        s["corrections"][last - 1],
        1,
        "the late reading corrected minute 0"
    );
    assert_eq!(s["corrections"][last], 0);
    assert!(s["mean"][0].is_null(), "empty buckets are null");
    // The band: percentiles of the merged sketches (1 % relative accuracy; of three
    // readings, p95 is the second or the third).
    let (p5, p95) = (
        s["p5"][last - 1].as_f64().unwrap(),
        s["p95"][last - 1].as_f64().unwrap(),
    );
    assert!(
        (39.5..40.5).contains(&p5) && (41.5..44.5).contains(&p95),
        "{p5} {p95}"
    );
    assert!(s["p95"][0].is_null());
    assert_eq!(
        (s["windows"].as_u64(), s["corrected_windows"].as_u64()),
        (Some(2), Some(1))
    );
    // The rule serve was given, then the level of the device's own alert.
    let levels: Vec<(&str, &str, f64)> = s["thresholds"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["rule"].as_str().unwrap(),
                t["source"].as_str().unwrap(),
                t["level"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        levels,
        [("bearing-hot", "rules", 80.0), ("hot", "alerts", 80.0)]
    );
    assert_eq!(h["alerts"][0]["rule"], "hot");
    assert!(!s["signals"].is_null());
    assert_eq!(h["timeline"]["status"], "unknown");
    assert!(h["timeline"]["not_recorded"].as_array().unwrap().len() >= 3);

    // Ten points over an hour: six-minute buckets; both minutes in one.
    let (_, h) = f
        .get(&format!(
            "/api/devices/pump-1/history?range=1h&points=10&to_ms={to}"
        ))
        .await;
    assert_eq!(h["bucket_ms"], 6 * MIN);
    let s = &h["series"][0];
    assert!(s["t"].as_array().unwrap().len() <= 11);
    let counts: u64 = s["count"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(counts, 5);
    // Thirty days at the default 240 points stay 240 buckets (or one more at the edge).
    let (_, h) = f
        .get(&format!("/api/devices/pump-1/history?range=30d&to_ms={to}"))
        .await;
    assert_eq!(h["bucket_ms"], 3 * 60 * MIN);
    assert!(h["series"][0]["t"].as_array().unwrap().len() <= 241);

    // Windows say it too: version counts merges, corrections only late ones.
    let (_, w) = f.get("/api/devices/pump-1/windows").await;
    let first = w
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["start_ms"] == T0)
        .unwrap()
        .clone();
    assert_eq!(
        (first["version"].as_u64(), first["corrections"].as_u64()),
        (Some(2), Some(1))
    );
    let (status, _) = f.get("/api/devices/pump-9/history").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn history_carries_the_predicted_crossing_to_draw_forward() {
    let mut f = Fleet::new().await;
    // Ten minutes rising 2 °C a minute from 40 °C, a reading every 5 s: a clear trend that
    // reaches 80 °C about 10 minutes after the last window.
    for minute in 0..10 {
        let readings: Vec<(i64, f64)> = (0..12)
            .map(|k| {
                let t = T0 + minute * MIN + k * 5_000;
                (t, 40.0 + 2.0 * (t - T0) as f64 / MIN as f64)
            })
            .collect();
        f.readings("pump-1", &readings).await;
    }
    let to = T0 + 10 * MIN;
    let (_, h) = f
        .get(&format!("/api/devices/pump-1/history?range=1h&to_ms={to}"))
        .await;
    let signals = &h["series"][0]["signals"];
    let p = &signals["predictions"][0];
    assert_eq!(p["rule"], "bearing-hot", "{signals}");
    let crossing = p["crossing_ms"].as_i64().unwrap();
    assert!(
        (T0 + 19 * MIN..T0 + 22 * MIN).contains(&crossing),
        "crossing at {} min",
        (crossing - T0) / MIN
    );
    assert!(p["remaining_low_ms"].as_i64().unwrap() <= p["remaining_ms"].as_i64().unwrap());
    assert!(
        signals["trend"]["level"].as_f64().unwrap() > 55.0,
        "{signals}"
    );
}

#[tokio::test]
async fn episodes_pair_raises_with_clears_and_filter() {
    let mut f = Fleet::new().await;
    f.readings("pump-1", &[(T0, 40.0)]).await;
    f.alert("pump-1", "hot", AlertEvent::Raise, Severity::Critical, T0)
        .await;
    f.alert(
        "pump-1",
        "hot",
        AlertEvent::Clear,
        Severity::Critical,
        T0 + 90_000,
    )
    .await;
    f.alert(
        "pump-1",
        "warm",
        AlertEvent::Raise,
        Severity::Warning,
        T0 + MIN,
    )
    .await;
    f.alert(
        "fan-2",
        "hot",
        AlertEvent::Raise,
        Severity::Critical,
        T0 + 2 * MIN,
    )
    .await;

    let (status, list) = f.get("/api/alerts/episodes?from_ms=0").await;
    assert_eq!(status, StatusCode::OK, "{list}");
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3);
    // Active first (newest raise first), then ended.
    assert_eq!(
        (list[0]["device"].as_str(), list[0]["active"].as_bool()),
        (Some("fan-2"), Some(true))
    );
    assert_eq!(list[1]["rule"], "warm");
    assert!(
        list[1]["duration_ms"].as_i64().unwrap() > 0,
        "active: raise to now"
    );
    let ended = &list[2];
    assert_eq!(
        (ended["rule"].as_str(), ended["active"].as_bool()),
        (Some("hot"), Some(false))
    );
    assert_eq!(ended["raised_ms"], T0);
    assert_eq!(ended["cleared_ms"], T0 + 90_000);
    assert_eq!(ended["duration_ms"], 90_000);

    let count = |v: Value| v.as_array().unwrap().len();
    assert_eq!(
        count(f.get("/api/alerts/episodes?from_ms=0&state=ended").await.1),
        1
    );
    assert_eq!(
        count(f.get("/api/alerts/episodes?from_ms=0&state=active").await.1),
        2
    );
    assert_eq!(
        count(
            f.get("/api/alerts/episodes?from_ms=0&device=pump-1")
                .await
                .1
        ),
        2
    );
    assert_eq!(
        count(
            f.get("/api/alerts/episodes?from_ms=0&severity=warning")
                .await
                .1
        ),
        1
    );
    assert_eq!(
        count(f.get("/api/alerts/episodes?from_ms=0&rule=hot").await.1),
        2
    );
    // A range after the clear: the still-active alerts raised before it remain listed.
    let later = format!("/api/alerts/episodes?from_ms={}", T0 + 10 * MIN);
    let (_, list) = f.get(&later).await;
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["active"] == true)
            .count(),
        2
    );
    assert!(list.as_array().unwrap().iter().all(|e| e["active"] == true));
    // A range that ends before the clear: the clear is after it.
    let (_, list) = f
        .get(&format!(
            "/api/alerts/episodes?from_ms=0&to_ms={}&rule=hot&device=pump-1",
            T0 + MIN
        ))
        .await;
    assert_eq!(list[0]["cleared_ms"], Value::Null);
    assert_eq!(list[0]["active"], false);
}

#[tokio::test]
async fn bad_parameters_of_the_new_endpoints_are_400_with_a_reason() {
    let mut f = Fleet::new().await;
    f.readings("pump-1", &[(T0, 40.0)]).await;
    for (uri, needle) in [
        (
            "/api/fleet?sort=size",
            "sort must be one of worst, name, last_seen",
        ),
        (
            "/api/fleet?limit=501",
            "limit must be an integer from 1 to 500",
        ),
        ("/api/fleet?offset=-1", "offset must be an integer"),
        ("/api/fleet?severity=high", "severity must be one of"),
        ("/api/fleet?status=asleep", "status must be one of"),
        ("/api/fleet?page=2", "unknown query parameter \"page\""),
        ("/api/devices/pump-1/history?range=1w", "range must be"),
        ("/api/devices/pump-1/history?range=500d", "range must be"),
        (
            "/api/devices/pump-1/history?points=5",
            "points must be an integer from 10 to 2000",
        ),
        ("/api/devices/pump-1/history?to_ms=now", "to_ms must be"),
        (
            "/api/alerts/episodes?state=open",
            "state must be one of active, ended",
        ),
        (
            "/api/alerts/episodes?from_ms=10&to_ms=5",
            "to_ms must be after from_ms",
        ),
        ("/api/alerts/episodes?device=a%20b", "not a valid device id"),
        ("/api/fleet/events?after=-3", "after must be"),
        ("/api/fleet/events?sort=size", "sort must be"),
    ] {
        let (status, json) = f.get(uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}: {json}");
        let message = json["error"].as_str().unwrap();
        assert!(message.contains(needle), "{uri}: {message}");
    }
}

/// Reads server-sent events from `body` until `want` returns true for one (or 10 s pass).
async fn read_until(body: &mut Body, mut want: impl FnMut(&str, &Value) -> bool) -> bool {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, body.frame()).await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        text.push_str(std::str::from_utf8(&data).unwrap());
        while let Some(end) = text.find("\n\n") {
            let block: String = text.drain(..end + 2).collect();
            let name = block
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or("");
            let data = block
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap_or("null");
            if want(name, &serde_json::from_str(data).unwrap_or(Value::Null)) {
                return true;
            }
        }
    }
    false
}

#[tokio::test]
async fn the_live_view_sends_the_page_then_only_changes_and_new_alerts() {
    let mut f = five().await;
    let response = f.request("/api/fleet/events?limit=3").await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = response.into_body();
    let mut first = Value::Null;
    assert!(
        read_until(&mut body, |name, data| {
            first = data.clone();
            name == "fleet"
        })
        .await
    );
    assert_eq!(first["order"], serde_json::json!(["c-3", "e-5", "b-2"]));
    assert_eq!(
        first["rows"].as_array().unwrap().len(),
        3,
        "the first event has every row"
    );

    // A critical alert on a quiet device: an alert event, then the page with it on top.
    f.alert(
        "a-1",
        "hot",
        AlertEvent::Raise,
        Severity::Critical,
        T0 + MIN,
    )
    .await;
    let mut alert = Value::Null;
    let mut change = Value::Null;
    assert!(
        read_until(&mut body, |name, data| {
            match name {
                "alert" => alert = data.clone(),
                "fleet" => change = data.clone(),
                _ => {}
            }
            !change.is_null()
        })
        .await,
        "no fleet event after the alert"
    );
    assert_eq!(
        (alert["device"].as_str(), alert["rule"].as_str()),
        (Some("a-1"), Some("hot"))
    );
    assert_eq!(change["order"], serde_json::json!(["a-1", "c-3", "e-5"]));
    // Only a-1 changed on this page (c-3 and e-5 were sent as they are).
    assert_eq!(ids(&change), ["a-1"]);
    assert_eq!(change["counts"]["critical"], 2);

    // A stream that resumes from a cursor gets the alerts after it first.
    let response = f.request("/api/fleet/events?after=0").await;
    let mut body = response.into_body();
    let mut alerts = 0;
    assert!(
        read_until(&mut body, |name, _| {
            alerts += usize::from(name == "alert");
            name == "fleet"
        })
        .await
    );
    assert_eq!(alerts, 5, "every alert stored after id 0");
}

#[tokio::test]
async fn pages_and_their_files_are_served_without_inline_script() {
    let f = Fleet::new().await;
    for (uri, needle) in [
        ("/devices/pump-1", "/assets/device.js"),
        ("/alerts", "/assets/alerts.js"),
        ("/", "/assets/fleet.js"),
    ] {
        let response = f.request(uri).await;
        assert_eq!(response.status(), StatusCode::OK, "{uri}");
        let page = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let page = String::from_utf8(page.to_vec()).unwrap();
        assert!(page.contains(needle), "{uri}");
        assert!(
            !page.contains("<script>") && !page.contains("<style") && !page.contains("https://"),
            "{uri}"
        );
    }
    for (name, kind, _) in pages::ASSETS {
        let response = f.request(&format!("/assets/{name}")).await;
        assert_eq!(response.status(), StatusCode::OK, "{name}");
        assert_eq!(response.headers()["content-type"], kind);
    }
    let (status, json) = f.get("/assets/nothing.js").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json["error"]
        .as_str()
        .unwrap()
        .contains("/assets/nothing.js"));
}

#[tokio::test]
async fn the_device_history_carries_the_statuses_the_device_held() {
    use osprey_protocol::{ClockState, Status, StatusState};
    let mut f = Fleet::new().await;
    let status = |state, dropped, clock| {
        MsgBody::Status(Status {
            dropped,
            backlog: 12,
            clock,
            boot_id: "boot-a".into(),
            time_ms: crate::clock::now_ms(),
            ..Status::new(state)
        })
    };
    f.send(
        "pump-1",
        status(StatusState::Online, 4, ClockState::Unsynced),
    )
    .await;
    // Quiet: nothing changes, and it is less than 5 minutes later: not kept.
    f.send(
        "pump-1",
        status(StatusState::Online, 4, ClockState::Unsynced),
    )
    .await;
    f.send("pump-1", status(StatusState::Online, 9, ClockState::Synced))
        .await;
    f.send(
        "pump-1",
        status(StatusState::Offline, 9, ClockState::Synced),
    )
    .await;
    let (code, h) = f.get("/api/devices/pump-1/history?range=1h").await;
    assert_eq!(code, StatusCode::OK, "{h}");
    let t = &h["timeline"];
    assert_eq!(t["status"], "offline");
    let rows: Vec<(String, Vec<String>, u64)> = t["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["state"].as_str().unwrap().to_owned(),
                serde_json::from_value(p["changes"].clone()).unwrap(),
                p["new_drops"].as_u64().unwrap(),
            )
        })
        .collect();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert_eq!(
        rows,
        [
            ("online".into(), s(&["state", "clock"]), 0),
            ("online".into(), s(&["drops", "clock"]), 5),
            ("offline".into(), s(&["state"]), 0),
        ]
    );
    assert_eq!(t["statuses"][0]["clock"], "unsynced");
    assert_eq!(t["statuses"][0]["backlog"], 12);
    assert_eq!(t["statuses_truncated"], false);
    assert!(t["recorded_since_ms"].as_i64().is_some());
    // A range that ends before the first status has none of them.
    let (_, h) = f
        .get(&format!("/api/devices/pump-1/history?range=1h&to_ms={T0}"))
        .await;
    assert_eq!(h["timeline"]["statuses"], serde_json::json!([]));
}
