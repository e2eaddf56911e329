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
