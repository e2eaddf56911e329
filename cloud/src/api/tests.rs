use axum::body::Body;
use axum::http::{Request, StatusCode};
use osprey_protocol::{
    Alert, AlertEvent, Body as MsgBody, Envelope, Series, Severity, TelemetryBatch,
};
use serde_json::Value;
use tower::ServiceExt;

use super::*;
use crate::pipeline::{Origin, Pipeline};
use crate::store::Store;

const T0: i64 = 1_700_000_040_000; // a minute boundary

struct Fixture {
    _dir: tempfile::TempDir,
    _store: Store,
    router: Router,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("osprey.db")).unwrap();
    let pipeline = Pipeline::new(store.writer());
    let origin = || Origin::Direct("api-test".into());
    for (seq, minute) in [(1u64, 0i64), (2, 1)] {
        let mut s = Series::new("bearing", "temperature", "Cel");
        s.push(T0 + minute * 60_000, 40.0 + minute as f64);
        s.push(T0 + minute * 60_000 + 1_000, 42.0 + minute as f64);
        let batch = TelemetryBatch { series: vec![s] };
        let bytes = Envelope::new("pump-1", seq, MsgBody::Telemetry(batch))
            .encode()
            .unwrap();
        pipeline.ingest(&bytes, origin()).await.unwrap();
    }
    let alert = Alert {
        rule: "hot".into(),
        sensor: "bearing".into(),
        metric: "temperature".into(),
        event: AlertEvent::Raise,
        severity: Severity::Critical,
        value: 85.0,
        threshold: 80.0,
        time_ms: T0,
    };
    let bytes = Envelope::new("pump-1", 3, MsgBody::Alert(alert))
        .encode()
        .unwrap();
    pipeline.ingest(&bytes, origin()).await.unwrap();
    pipeline.ingest(b"garbage", origin()).await.unwrap();
    let router = router(ApiState::new(store.reader(), pipeline.stats_handle()));
    Fixture {
        _dir: dir,
        _store: store,
        router,
    }
}

async fn get(router: &Router, uri: &str) -> (StatusCode, Value) {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (status, json)
}

#[tokio::test]
async fn devices_lists_the_fleet_with_latest_windows() {
    let f = fixture().await;
    let (status, json) = get(&f.router, "/api/devices").await;
    assert_eq!(status, StatusCode::OK);
    let devices = json.as_array().unwrap();
    assert_eq!(devices.len(), 1);
    let d = &devices[0];
    assert_eq!(d["device"], "pump-1");
    assert_eq!(d["readings"], 4);
    assert_eq!(d["last_seq"], 3);
    assert_eq!(d["status"], "unknown");
    assert_eq!(d["active_alerts"], 1);
    let latest = d["latest"].as_array().unwrap();
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0]["start_ms"], T0 + 60_000);
    assert_eq!(latest[0]["mean"], 42.0);
    assert_eq!(latest[0]["unit"], "Cel");
    for key in [
        "sensor", "metric", "end_ms", "count", "min", "max", "variance", "skewness", "kurtosis",
        "p50", "p95", "p99", "version", "kind", "closed",
    ] {
        assert!(latest[0].get(key).is_some(), "latest window lacks {key}");
    }
    assert_eq!(latest[0]["kind"], "tumbling");
    // The critical alert is active: 40 points off, and the reason says so.
    assert_eq!(d["health"]["score"], 60);
    assert!(d["health"]["reasons"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("critical alert hot"));
    assert!(d["next_breach"].is_null());
}

#[tokio::test]
async fn signals_show_health_and_each_series() {
    let f = fixture().await;
    let (status, json) = get(&f.router, "/api/devices/pump-1/signals").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["device"], "pump-1");
    assert_eq!(json["health"]["score"], 60);
    let series = json["series"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    assert_eq!(series[0]["sensor"], "bearing");
    assert_eq!(series[0]["latest_mean"], 42.0);
    // Two windows are too few for a trend.
    assert!(series[0]["trend"].is_null());
    let (status, _) = get(&f.router, "/api/devices/pump-9/signals").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, json) = get(&f.router, "/api/windows?kind=sliding").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json["error"].as_str().unwrap().contains("kind must be"));
}

#[tokio::test]
async fn windows_come_newest_first_and_filter() {
    let f = fixture().await;
    let (status, json) = get(&f.router, "/api/devices/pump-1/windows").await;
    assert_eq!(status, StatusCode::OK);
    let starts: Vec<i64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["start_ms"].as_i64().unwrap())
        .collect();
    assert_eq!(starts, [T0 + 60_000, T0]);

    let uri = format!(
        "/api/windows?device=pump-1&sensor=bearing&since_ms={}",
        T0 + 1
    );
    let (_, json) = get(&f.router, &uri).await;
    assert_eq!(json.as_array().unwrap().len(), 1);
    let (_, json) = get(&f.router, "/api/windows?limit=1").await;
    assert_eq!(json.as_array().unwrap().len(), 1);
    let (_, json) = get(&f.router, "/api/windows?metric=humidity").await;
    assert_eq!(json.as_array().unwrap().len(), 0);
}

#[tokio::test]
async fn alerts_and_stats() {
    let f = fixture().await;
    let (status, json) = get(&f.router, "/api/alerts?device=pump-1&limit=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json[0]["rule"], "hot");
    assert_eq!(json[0]["event"], "raise");
    let (_, json) = get(&f.router, "/api/stats").await;
    assert_eq!(json["pipeline"]["applied"], 3);
    assert_eq!(json["pipeline"]["rejected"], 1);
    assert_eq!(json["store"]["dead_letters"], 1);
}

#[tokio::test]
async fn bad_parameters_are_400_with_a_reason() {
    let f = fixture().await;
    for (uri, needle) in [
        ("/api/windows?limit=abc", "limit must be"),
        ("/api/windows?since_ms=yesterday", "since_ms must be"),
        ("/api/alerts?device=no%20spaces", "not a valid device id"),
        ("/api/alerts?colour=red", "unknown query parameter"),
        ("/api/devices/pump-1/windows?limit=0", "limit must be"),
    ] {
        let (status, json) = get(&f.router, uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri}");
        let message = json["error"].as_str().unwrap();
        assert!(message.contains(needle), "{uri}: {message}");
    }
}

#[tokio::test]
async fn unknown_devices_and_routes_are_404() {
    let f = fixture().await;
    let (status, json) = get(&f.router, "/api/devices/pump-9/windows").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json["error"].as_str().unwrap().contains("pump-9"));
    let (status, _) = get(&f.router, "/api/devices/pump-9").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, json) = get(&f.router, "/api/nothing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json["error"].is_string());
}

#[tokio::test]
async fn health_and_dashboard() {
    let f = fixture().await;
    let (status, json) = get(&f.router, "/healthz").await;
    assert_eq!(
        (status, json["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    let response = f
        .router
        .clone()
        .oneshot(Request::get("/").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let page = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let page = String::from_utf8(page.to_vec()).unwrap();
    assert!(page.contains(r#"<script src="/dashboard.js">"#), "{page}");
    assert!(
        !page.contains("<style") && !page.contains("<script>"),
        "no inline script or style (the CSP forbids them)"
    );
    let mut assets = String::new();
    for path in ["/dashboard.js", "/dashboard.css"] {
        let response = f
            .router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assets.push_str(std::str::from_utf8(&body).unwrap());
    }
    assert!(assets.contains("/api/devices"));
    assert!(
        !(page + &assets).contains("https://"),
        "the dashboard must not load anything external"
    );
}
