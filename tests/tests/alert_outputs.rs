//! Alert outputs against moto's SNS, read back through an SQS queue subscribed to the topic:
//! the Lambda and `osprey serve --alerts-sns-topic` publish each raise and clear once, with
//! subject, JSON body and filterable attributes, whatever the redeliveries.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use aws_lambda_events::event::kinesis::KinesisEvent;
use osprey_lambda::handler::{handle_record, RecordOutcome};
use osprey_lambda::state::DynamoState;
use osprey_protocol::{Alert, AlertEvent, Body, Envelope, Series, Severity, TelemetryBatch};
use osprey_tests::{
    bin, kinesis_event_json, mosquitto_tool, moto_endpoint, unique_name, Mosquitto, Proc,
};
use serde_json::Value;

/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;
const EPOCH: u64 = 5;

fn alert(device: &str, seq: u64, event: AlertEvent) -> Vec<u8> {
    Envelope::new(
        device,
        seq,
        Body::Alert(Alert {
            rule: "bearing-hot".to_owned(),
            sensor: "bearing".to_owned(),
            metric: "temperature".to_owned(),
            event,
            severity: Severity::Critical,
            value: if event == AlertEvent::Raise {
                81.5
            } else {
                77.0
            },
            threshold: if event == AlertEvent::Raise {
                80.0
            } else {
                78.0
            },
            time_ms: T0 + seq as i64 * 1_000,
        }),
    )
    .with_epoch(EPOCH)
    .encode()
    .unwrap()
}

fn telemetry(device: &str, seq: u64) -> Vec<u8> {
    let mut series = Series::new("bearing", "temperature", "Cel");
    series.push(T0 + seq as i64 * 1_000, 70.0);
    Envelope::new(
        device,
        seq,
        Body::Telemetry(TelemetryBatch {
            series: vec![series],
        }),
    )
    .with_epoch(EPOCH)
    .encode()
    .unwrap()
}

async fn aws() -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto_endpoint())
        .load()
        .await
}

/// A new SNS topic with a new SQS queue subscribed to it: (topic ARN, queue URL).
async fn topic_with_queue(config: &aws_config::SdkConfig) -> (String, String) {
    let sns = aws_sdk_sns::Client::new(config);
    let sqs = aws_sdk_sqs::Client::new(config);
    let topic = sns
        .create_topic()
        .name(unique_name("alerts"))
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let queue = sqs
        .create_queue()
        .queue_name(unique_name("pager"))
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let queue_arn = sqs
        .get_queue_attributes()
        .queue_url(&queue)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()[&aws_sdk_sqs::types::QueueAttributeName::QueueArn]
        .clone();
    sns.subscribe()
        .topic_arn(&topic)
        .protocol("sqs")
        .endpoint(queue_arn)
        .send()
        .await
        .unwrap();
    (topic, queue)
}

/// Every SNS notification in the queue (each an SNS envelope: Subject, Message,
/// MessageAttributes), until it has been empty for `quiet`.
async fn drain(config: &aws_config::SdkConfig, queue: &str, quiet: Duration) -> Vec<Value> {
    let sqs = aws_sdk_sqs::Client::new(config);
    let mut got = Vec::new();
    let mut empty_since = std::time::Instant::now();
    while empty_since.elapsed() < quiet {
        let out = sqs
            .receive_message()
            .queue_url(queue)
            .max_number_of_messages(10)
            .send()
            .await
            .unwrap();
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        empty_since = std::time::Instant::now();
        for m in messages {
            got.push(serde_json::from_str(m.body().unwrap()).unwrap());
            sqs.delete_message()
                .queue_url(queue)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .unwrap();
        }
    }
    got
}

/// The notifications by the notice id in their body; panics on a repeated id.
fn by_id(notifications: &[Value]) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for n in notifications {
        let body: Value = serde_json::from_str(n["Message"].as_str().unwrap()).unwrap();
        let id = body["id"].as_str().unwrap().to_owned();
        assert!(
            out.insert(id.clone(), n.clone()).is_none(),
            "{id} was published twice"
        );
    }
    out
}

fn attribute<'a>(n: &'a Value, name: &str) -> &'a str {
    n["MessageAttributes"][name]["Value"].as_str().unwrap_or("")
}

async fn run(state: &DynamoState, event: &str) -> Vec<RecordOutcome> {
    let event: KinesisEvent = serde_json::from_str(event).unwrap();
    let mut out = Vec::new();
    for record in &event.records {
        out.push(handle_record(record, state).await.unwrap());
    }
    out
}

#[tokio::test]
async fn the_lambda_publishes_each_raise_and_clear_once_whatever_the_redeliveries() {
    let config = aws().await;
    let (topic, queue) = topic_with_queue(&config).await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    let (table, dead) = (unique_name("state"), unique_name("dead"));
    DynamoState::create_table(&dynamo, &table).await.unwrap();
    DynamoState::create_table(&dynamo, &dead).await.unwrap();
    let output =
        osprey_cloud::alerts::sns::SnsOutput::new(aws_sdk_sns::Client::new(&config), &topic);
    let plain = DynamoState::new(dynamo, &table, &dead);
    let state = plain.clone().with_alerts(output);

    let key = "pump-7".to_owned();
    let records = vec![
        (key.clone(), alert("pump-7", 1, AlertEvent::Raise)),
        (key.clone(), telemetry("pump-7", 2)),
        (key.clone(), alert("pump-7", 3, AlertEvent::Clear)),
    ];
    let event = kinesis_event_json("s", 1, &records);
    assert!(run(&state, &event)
        .await
        .iter()
        .all(|o| *o == RecordOutcome::Applied));
    // The whole batch again (a retried invocation): all duplicates, nothing published.
    assert!(run(&state, &event)
        .await
        .iter()
        .all(|o| *o == RecordOutcome::Duplicate));

    // A raise applied by an invocation that died before publishing (here: a state without
    // the output), then delivered again: published by the redelivery, once.
    let late = kinesis_event_json(
        "s",
        10,
        &[(key.clone(), alert("pump-7", 4, AlertEvent::Raise))],
    );
    assert_eq!(run(&plain, &late).await, [RecordOutcome::Applied]);
    assert_eq!(run(&state, &late).await, [RecordOutcome::Duplicate]);
    assert_eq!(run(&state, &late).await, [RecordOutcome::Duplicate]);

    let got = by_id(&drain(&config, &queue, Duration::from_secs(3)).await);
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        ["pump-7/5/1", "pump-7/5/3", "pump-7/5/4"],
        "{got:#?}"
    );
    let raise = &got["pump-7/5/1"];
    assert_eq!(
        raise["Subject"],
        "CRITICAL raised: bearing-hot on pump-7 (81.5 vs 80)"
    );
    assert_eq!(attribute(raise, "device"), "pump-7");
    assert_eq!(attribute(raise, "rule"), "bearing-hot");
    assert_eq!(attribute(raise, "severity"), "critical");
    assert_eq!(attribute(raise, "event"), "raise");
    assert_eq!(attribute(&got["pump-7/5/3"], "event"), "clear");
    let body: Value = serde_json::from_str(raise["Message"].as_str().unwrap()).unwrap();
    assert_eq!(body["value"], 81.5);
    assert_eq!(body["time_ms"], T0 + 1_000);
}

fn publish(broker: &Mosquitto, topic: &str, payload: &[u8]) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), payload).unwrap();
    let out = Command::new(mosquitto_tool("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &broker.port().to_string()])
        .args(["-q", "1", "-t", topic, "-f"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_publishes_each_alert_once_and_keeps_unsent_ones_across_a_restart() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = rt.block_on(aws());
    let (topic, queue) = rt.block_on(topic_with_queue(&config));
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("osprey.db");
    let broker = Mosquitto::plain();
    let serve = |sns_endpoint: &str| {
        let mut serve = Proc::spawn(
            Command::new(bin("osprey"))
                .arg("serve")
                .arg("--db")
                .arg(&db)
                .args(["--listen", "127.0.0.1:0", "--source", "mqtt"])
                .args(["--mqtt-host", "127.0.0.1"])
                .args(["--mqtt-port", &broker.port().to_string()])
                .args(["--alerts-sns-topic", &topic])
                .args(["--endpoint-url", sns_endpoint]),
        );
        serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(60));
        serve
    };
    let alerts = osprey_protocol::topic::data("press-2", osprey_protocol::Kind::Alert);

    let mut running = serve(&moto_endpoint());
    osprey_tests::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        broker.log().contains("osprey-serve").then_some(())
    })
    .unwrap();
    // Each alert twice (an MQTT redelivery): published once.
    for payload in [
        alert("press-2", 1, AlertEvent::Raise),
        alert("press-2", 2, AlertEvent::Clear),
    ] {
        publish(&broker, &alerts, &payload);
        publish(&broker, &alerts, &payload);
    }
    let got = by_id(&rt.block_on(drain(&config, &queue, Duration::from_secs(4))));
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        ["press-2/5/1", "press-2/5/2"],
        "{got:#?}\n{}",
        running.logs()
    );
    assert_eq!(attribute(&got["press-2/5/2"], "event"), "clear");
    running.terminate(Duration::from_secs(10));

    // SNS unreachable: the raise is applied and waits in the outbox ...
    let dead_port = osprey_tests::free_port();
    let mut running = serve(&format!("http://127.0.0.1:{dead_port}"));
    publish(&broker, &alerts, &alert("press-2", 3, AlertEvent::Raise));
    osprey_tests::wait_until(Duration::from_secs(30), Duration::from_millis(200), || {
        running
            .logs()
            .contains("alert output failed; will retry")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no failed attempt logged:\n{}", running.logs()));
    running.terminate(Duration::from_secs(10));
    assert!(rt
        .block_on(drain(&config, &queue, Duration::from_secs(1)))
        .is_empty());
    // ... and is sent by the next run, once.
    let running = serve(&moto_endpoint());
    let got = by_id(&rt.block_on(drain(&config, &queue, Duration::from_secs(4))));
    assert_eq!(
        got.keys().cloned().collect::<Vec<_>>(),
        ["press-2/5/3"],
        "{got:#?}\n{}",
        running.logs()
    );
}

/// One request a webhook receiver got: headers (lower-case names) and body.
#[derive(Debug, Clone)]
struct Delivery {
    headers: BTreeMap<String, String>,
    body: String,
}

/// A webhook receiver on loopback answering `first` to the first request and 200 after.
fn receiver(first: u16) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<Delivery>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            // Keep-alive: several requests per connection.
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    break;
                }
                let mut headers = BTreeMap::new();
                loop {
                    let mut h = String::new();
                    reader.read_line(&mut h).unwrap();
                    let h = h.trim_end();
                    if h.is_empty() {
                        break;
                    }
                    let (k, v) = h.split_once(':').unwrap();
                    headers.insert(k.trim().to_lowercase(), v.trim().to_owned());
                }
                let len: usize = headers["content-length"].parse().unwrap();
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                let mut list = seen.lock().unwrap();
                list.push(Delivery {
                    headers,
                    body: String::from_utf8(body).unwrap(),
                });
                let status = if list.len() == 1 { first } else { 200 };
                drop(list);
                write!(stream, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n").unwrap();
            }
        }
    });
    (port, got)
}

#[test]
fn serve_posts_signed_alerts_to_a_webhook_and_retries_a_failed_delivery() {
    let (port, got) = receiver(503);
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("hook.secret");
    std::fs::write(&secret, "0123456789abcdef0123\n").unwrap();
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    // A secret others may read is refused, with what to do.
    let out = Command::new(bin("osprey"))
        .arg("serve")
        .arg("--db")
        .arg(dir.path().join("x.db"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--alerts-webhook",
            "http://127.0.0.1:1/",
        ])
        .arg("--alerts-webhook-secret-file")
        .arg(&secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("chmod 600"),
        "{out:?}"
    );
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();

    let broker = Mosquitto::plain();
    let mut serve = Proc::spawn(
        Command::new(bin("osprey"))
            .arg("serve")
            .arg("--db")
            .arg(dir.path().join("osprey.db"))
            .args(["--listen", "127.0.0.1:0", "--source", "mqtt"])
            .args(["--mqtt-host", "127.0.0.1"])
            .args(["--mqtt-port", &broker.port().to_string()])
            .args(["--alerts-webhook", &format!("http://127.0.0.1:{port}/hook")])
            .arg("--alerts-webhook-secret-file")
            .arg(&secret),
    );
    let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(60));
    let api = line.trim().rsplit(' ').next().unwrap().to_owned();
    osprey_tests::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
        broker.log().contains("osprey-serve").then_some(())
    })
    .unwrap();
    let topic = osprey_protocol::topic::data("mill-3", osprey_protocol::Kind::Alert);
    publish(&broker, &topic, &alert("mill-3", 1, AlertEvent::Raise));
    publish(&broker, &topic, &alert("mill-3", 1, AlertEvent::Raise));
    // The first delivery gets 503 and is retried after 1 s; the duplicate is not sent.
    let deliveries =
        osprey_tests::wait_until(Duration::from_secs(20), Duration::from_millis(100), || {
            let list = got.lock().unwrap().clone();
            (list.len() >= 2).then_some(list)
        })
        .unwrap_or_else(|| panic!("{:?}\n{}", got.lock().unwrap(), serve.logs()));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(got.lock().unwrap().len(), 2, "{:?}", got.lock().unwrap());
    for d in &deliveries {
        assert_eq!(d.headers["x-osprey-delivery"], "mill-3/5/1");
        assert_eq!(d.headers["x-osprey-event"], "raise");
        assert_eq!(d.headers["content-type"], "application/json");
        let timestamp: u64 = d.headers["x-osprey-timestamp"].parse().unwrap();
        assert_eq!(
            d.headers["x-osprey-signature"],
            osprey_cloud::alerts::webhook::signature(
                b"0123456789abcdef0123",
                timestamp,
                d.body.as_bytes()
            )
        );
        let body: Value = serde_json::from_str(&d.body).unwrap();
        assert_eq!(body["rule"], "bearing-hot");
    }
    assert!(serve.logs().contains("alert output failed; will retry"));
    let samples = osprey_cloud::metrics::parse_samples(
        &osprey_tests::http_get(&format!("{api}/metrics")).text(),
    )
    .unwrap();
    let value = |name: &str| samples.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
    assert_eq!(value("osprey_alert_notifications_sent_total"), Some(1.0));
    assert_eq!(value("osprey_alert_notifications_retried_total"), Some(1.0));
    assert_eq!(
        value("osprey_alert_notifications_abandoned_total"),
        Some(0.0)
    );
    assert!(
        !serve.logs().contains("0123456789abcdef0123"),
        "the secret was logged"
    );
}
