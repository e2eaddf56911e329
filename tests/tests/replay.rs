//! `osprey replay` on moto's S3 and Kinesis: the objects AWS IoT's S3 error action writes for
//! messages the topic rule could not put (one good payload, one whose payload names another
//! device than its topic, one that is not an error action message at all) are read, judged,
//! and only the good one reaches the stream, keyed by its topic's device. `--dry-run` puts
//! and deletes nothing; `--delete` removes only the object whose records are all in.
//!
//! What the stand-in does not model: the error action itself (AWS IoT writing the object:
//! the objects here follow the message format of the AWS IoT developer guide), S3 and
//! Kinesis throttling and partial PutRecords failures (the retry of refused entries is the
//! bridge's, tested on a stalled moto in the bridge suite), IAM.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::process::{Command, Output};
use std::time::Duration;

use osprey_tests::{bin, moto_endpoint, ten_readings, unique_name};

const T0: i64 = 1_767_225_600_000;

async fn clients() -> (aws_sdk_s3::Client, aws_sdk_kinesis::Client) {
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(moto_endpoint())
        .load()
        .await;
    let s3 = aws_sdk_s3::config::Builder::from(&config)
        .force_path_style(true)
        .build();
    (
        aws_sdk_s3::Client::from_conf(s3),
        aws_sdk_kinesis::Client::new(&config),
    )
}

/// AWS IoT's error action message for a failed Kinesis put of `payload` on `topic`.
fn error_message(topic: &str, payload: &[u8]) -> String {
    serde_json::json!({
        "ruleName": "osprey_telemetry",
        "topic": topic,
        "cloudwatchTraceId": "7e146a2c-95b5-6caf-98b9-50e3969734c7",
        "clientId": topic.split('/').nth(2).unwrap_or(""),
        "base64OriginalPayload": osprey_tests::base64(payload),
        "failures": [{
            "failedAction": "KinesisAction",
            "failedResource": "osprey-telemetry",
            "errorMessage": "Failed to put record. The error received was Rate exceeded for shard"
        }]
    })
    .to_string()
}

fn replay(args: &[&str]) -> Output {
    Command::new(bin("osprey"))
        .arg("replay")
        .args(["--endpoint-url", &moto_endpoint(), "--region", "us-east-1"])
        .args(args)
        .output()
        .unwrap()
}

fn report(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn keys(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<String> {
    let out = s3.list_objects_v2().bucket(bucket).send().await.unwrap();
    let mut keys: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn replay_puts_only_the_payloads_of_their_topics_device_and_deletes_what_it_put() {
    let (s3, kinesis) = clients().await;
    let (bucket, stream) = (unique_name("rule-errors"), unique_name("replay"));
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    kinesis
        .create_stream()
        .stream_name(&stream)
        .shard_count(1)
        .send()
        .await
        .unwrap();
    for _ in 0..50 {
        let d = kinesis
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary()
            .map(|s| s.stream_status().as_str())
            == Some("ACTIVE")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let good = ten_readings("rp-pump-1", 1, T0);
    let other = ten_readings("rp-pump-2", 7, T0);
    let objects = [
        (
            "rule-errors/telemetry/2026-01-01/rp-pump-1/a.json",
            error_message("dt/osprey/rp-pump-1/telemetry", &good),
        ),
        // rp-pump-1 published rp-pump-2's message on its own topic.
        (
            "rule-errors/telemetry/2026-01-01/rp-pump-1/b.json",
            error_message("dt/osprey/rp-pump-1/telemetry", &other),
        ),
        (
            "rule-errors/telemetry/2026-01-01/rp-pump-1/c.json",
            "\u{1}not json".to_owned(),
        ),
        // Outside the prefix: not read.
        (
            "elsewhere/d.json",
            error_message("dt/osprey/rp-pump-2/telemetry", &other),
        ),
    ];
    for (key, body) in &objects {
        s3.put_object()
            .bucket(&bucket)
            .key(*key)
            .body(body.clone().into_bytes().into())
            .send()
            .await
            .unwrap();
    }
    let args = ["--bucket", &bucket, "--stream", &stream, "--json"];

    // Dry run: the verdicts, and nothing put or deleted.
    let dry = report(&replay(&[&args[..], &["--dry-run", "--delete"]].concat()));
    assert_eq!(dry["objects"], 3, "{dry}");
    assert_eq!(dry["put"], 1, "{dry}");
    assert_eq!(dry["refused"], 1, "{dry}");
    assert_eq!(dry["unreadable_objects"], 1, "{dry}");
    assert_eq!(dry["deleted"], 0, "{dry}");
    assert!(osprey_tests::read_stream(&kinesis, &stream)
        .await
        .is_empty());
    assert_eq!(keys(&s3, &bucket).await.len(), 4);

    // The run: the good record in, keyed by its device; only its object deleted.
    let out = replay(&[&args[..], &["--delete"]].concat());
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let done = report(&out);
    assert_eq!(
        (done["put"].as_u64(), done["deleted"].as_u64()),
        (Some(1), Some(1)),
        "{done}"
    );
    assert!(
        stderr.contains("rp-pump-2"),
        "the refusal names the claimed device: {stderr}"
    );
    assert_eq!(
        osprey_tests::read_stream(&kinesis, &stream).await,
        [("rp-pump-1".to_owned(), good.clone())]
    );
    assert_eq!(
        keys(&s3, &bucket).await,
        [
            "elsewhere/d.json",
            "rule-errors/telemetry/2026-01-01/rp-pump-1/b.json",
            "rule-errors/telemetry/2026-01-01/rp-pump-1/c.json"
        ]
    );

    // Again: what is left is never put.
    let again = report(&replay(&[&args[..], &["--delete"]].concat()));
    assert_eq!(
        (again["objects"].as_u64(), again["put"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(osprey_tests::read_stream(&kinesis, &stream).await.len(), 1);

    // A stream that does not exist: a clear error, exit 1, the object kept.
    s3.put_object()
        .bucket(&bucket)
        .key("rule-errors/telemetry/2026-01-01/rp-pump-1/e.json")
        .body(
            error_message("dt/osprey/rp-pump-1/telemetry", &good)
                .into_bytes()
                .into(),
        )
        .send()
        .await
        .unwrap();
    let missing = unique_name("missing");
    let out = replay(&["--bucket", &bucket, "--stream", &missing, "--delete"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&missing) && stderr.contains("ResourceNotFound"),
        "{stderr}"
    );
    assert_eq!(keys(&s3, &bucket).await.len(), 4);
}
