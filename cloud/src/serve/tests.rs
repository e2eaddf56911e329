use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::pipeline::{Origin, Outcome};

/// A minimal HTTP/1.1 GET: (status code, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn start_binds_port_zero_serves_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("osprey.db");
    let cfg = ServeConfig::new(&db, "127.0.0.1:0".parse().unwrap(), SourceConfig::None);
    let running = start(cfg).await.unwrap();
    assert_ne!(running.addr().port(), 0);
    running.source_ready().await;

    let mut s = Series::new("bearing", "temperature", "Cel");
    s.push(1_700_000_040_000, 40.0);
    let bytes = Envelope::new(
        "pump-1",
        1,
        Body::Telemetry(TelemetryBatch { series: vec![s] }),
    )
    .encode()
    .unwrap();
    let outcome = running
        .pipeline()
        .ingest(&bytes, Origin::Direct("serve-test".into()))
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Applied);

    let (status, body) = http_get(running.addr(), "/healthz").await;
    assert_eq!((status, body.contains("ok")), (200, true));
    let (status, body) = http_get(running.addr(), "/api/devices").await;
    assert_eq!(status, 200);
    assert!(body.contains("\"pump-1\""), "{body}");
    let addr = running.addr();
    running.shutdown().await.unwrap();
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still listening"
    );

    // The data survives a restart.
    let cfg = ServeConfig::new(&db, "127.0.0.1:0".parse().unwrap(), SourceConfig::None);
    let running = start(cfg).await.unwrap();
    assert_eq!(running.reader().counts().await.unwrap().messages, 1);
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_taken_address_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = ServeConfig::new(
        dir.path().join("osprey.db"),
        taken.local_addr().unwrap(),
        SourceConfig::None,
    );
    let err = start(cfg).await.unwrap_err();
    assert!(matches!(err, ServeError::Bind { .. }), "{err}");
    assert!(err.to_string().contains("--listen"), "{err}");
}

#[tokio::test]
async fn unreadable_tls_files_fail_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut mqtt = MqttConfig::new("127.0.0.1", 1, "t");
    mqtt.tls = Some(crate::connection::mqtt::MqttTls {
        ca: dir.path().join("missing-ca.pem"),
        client_cert: None,
        client_key: None,
    });
    let cfg = ServeConfig::new(
        dir.path().join("osprey.db"),
        "127.0.0.1:0".parse().unwrap(),
        SourceConfig::Mqtt(mqtt),
    );
    let err = start(cfg).await.unwrap_err();
    assert!(err.to_string().contains("missing-ca.pem"), "{err}");
}

#[tokio::test]
async fn a_non_loopback_listener_needs_a_token_or_insecure_no_auth() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::new(
        dir.path().join("osprey.db"),
        "0.0.0.0:0".parse().unwrap(),
        SourceConfig::None,
    );
    let err = start(cfg.clone()).await.unwrap_err();
    assert!(matches!(err, ServeError::Unauthenticated { .. }), "{err}");
    assert!(err.to_string().contains("--api-token-file"), "{err}");
    assert!(err.to_string().contains("--insecure-no-auth"), "{err}");
    cfg.api.insecure_no_auth = true;
    start(cfg).await.unwrap().shutdown().await.unwrap();
}

/// A raw request: (status code, the whole response).
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    (response[9..12].parse().unwrap(), response)
}

#[tokio::test]
async fn token_host_check_and_security_headers_are_layers_on_every_route() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::new(
        dir.path().join("osprey.db"),
        "127.0.0.1:0".parse().unwrap(),
        SourceConfig::None,
    );
    let secret = crate::secret::Secret::new("0123456789abcdef-token");
    cfg.api.token = Some(crate::api::auth::ApiToken::new(&secret).unwrap());
    let running = start(cfg).await.unwrap();
    let addr = running.addr();
    let get = |path: &str, extra: &str| {
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:1\r\n{extra}Connection: close\r\n\r\n")
    };
    let (status, text) = raw(addr, &get("/api/devices", "")).await;
    assert_eq!(status, 401, "{text}");
    assert!(text.contains("www-authenticate: Bearer"), "{text}");
    assert!(text.contains("x-content-type-options: nosniff"), "{text}");
    let (status, _) = raw(addr, &get("/api/devices", "Authorization: Bearer nope\r\n")).await;
    assert_eq!(status, 401);
    let auth = "Authorization: Bearer 0123456789abcdef-token\r\n";
    let (status, text) = raw(addr, &get("/api/devices", auth)).await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("cache-control: no-store"), "{text}");
    assert_eq!(raw(addr, &get("/metrics", "")).await.0, 401);
    for open in [
        "/healthz",
        "/readyz",
        "/",
        "/dashboard.js",
        "/dashboard.css",
    ] {
        let (status, text) = raw(addr, &get(open, "")).await;
        assert_eq!(status, 200, "{open}: {text}");
        assert!(text.contains("content-security-policy: default-src 'none'"));
    }
    let evil =
        format!("GET /healthz HTTP/1.1\r\nHost: evil.example\r\n{auth}Connection: close\r\n\r\n");
    let (status, text) = raw(addr, &evil).await;
    assert_eq!(status, 421, "{text}");
    assert!(text.contains("x-frame-options: DENY"), "{text}");
    running.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_reading_loses_its_slot_after_the_stall_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = ServeConfig::new(
        dir.path().join("osprey.db"),
        "127.0.0.1:0".parse().unwrap(),
        SourceConfig::None,
    );
    cfg.api.limits = HttpLimits {
        header_timeout: Duration::from_secs(30),
        max_connections: 1,
        stall_timeout: Duration::from_secs(1),
    };
    let running = start(cfg).await.unwrap();
    let addr = running.addr();
    // Pipelined requests whose answers (about 6 KB each) fill the socket buffers: the
    // server's writes block because this client never reads.
    let mut hog = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = "GET /dashboard.js HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(3000);
    let _ = tokio::time::timeout(Duration::from_secs(2), hog.write_all(request.as_bytes())).await;
    // The one slot is taken: a new connection is closed at once, without an answer.
    let mut other = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await;
    let mut answer = Vec::new();
    let _ = other.read_to_end(&mut answer).await;
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    // After the stall timeout the hog is gone and the slot serves again.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = http_get(addr, "/healthz").await;
    assert_eq!((status, body.contains("ok")), (200, true));
    drop(hog);
    running.shutdown().await.unwrap();
}
