//! Dead letters on the real `osprey serve --source kinesis` against moto, with DynamoDB
//! checkpoints: each bad record is stored exactly once whatever is read again (DynamoDB
//! throttling that fails checkpoint saves, so whole batches are ingested again; serve killed
//! with SIGKILL and its checkpoints deleted, so the stream is read again from the start), the
//! table stays within its count and byte caps with the evictions counted, and the API and
//! `osprey dead-letters` list the same rows.
//!
//! The throttling is real HTTP: a small loopback proxy in front of moto answers bursts of
//! DynamoDB `UpdateItem` calls (every checkpoint save and lease write is one) with 400
//! `ProvisionedThroughputExceededException`, more in a row than the AWS SDK's three attempts,
//! and forwards everything else. serve's `--endpoint-url` points at the proxy (serve uses one
//! endpoint for Kinesis and DynamoDB).

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use osprey_cloud::metrics::parse_samples;
use osprey_tests::{
    bin, http_get, http_get_json, moto_endpoint, motor_temperature, unique_name, wait_until, Proc,
};
use serde_json::Value;

const T0: i64 = 1_767_225_600_000;

/// A good message of `device`.
fn message(device: &str, seq: u64) -> Vec<u8> {
    motor_temperature(device, 0, seq, [(T0 + seq as i64 * 1000, seq as f64)])
}

struct Aws {
    rt: tokio::runtime::Runtime,
    kinesis: aws_sdk_kinesis::Client,
    dynamodb: aws_sdk_dynamodb::Client,
    stream: String,
}

impl Aws {
    fn new() -> Aws {
        let endpoint = moto_endpoint();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let config = rt.block_on(
            aws_config::defaults(aws_config::BehaviorVersion::latest())
                .region(aws_config::Region::new("us-east-1"))
                .endpoint_url(&endpoint)
                .load(),
        );
        let kinesis = aws_sdk_kinesis::Client::new(&config);
        let dynamodb = aws_sdk_dynamodb::Client::new(&config);
        let stream = unique_name("dl");
        rt.block_on(
            kinesis
                .create_stream()
                .stream_name(&stream)
                .shard_count(1)
                .send(),
        )
        .unwrap_or_else(|e| panic!("cannot create a stream at {endpoint}: {e:?}"));
        let aws = Aws {
            rt,
            kinesis,
            dynamodb,
            stream,
        };
        let active = wait_until(Duration::from_secs(30), Duration::from_millis(100), || {
            let d = aws
                .rt
                .block_on(
                    aws.kinesis
                        .describe_stream_summary()
                        .stream_name(&aws.stream)
                        .send(),
                )
                .ok()?;
            (d.stream_description_summary()?.stream_status()
                == &aws_sdk_kinesis::types::StreamStatus::Active)
                .then_some(())
        });
        assert!(active.is_some(), "stream never became ACTIVE");
        aws
    }

    /// Puts the records, in order, in PutRecords calls of 50.
    fn put(&self, records: &[Vec<u8>]) {
        for chunk in records.chunks(50) {
            let entries = chunk
                .iter()
                .map(|data| {
                    PutRecordsRequestEntry::builder()
                        .partition_key("dl-dev")
                        .data(Blob::new(data.clone()))
                        .build()
                        .unwrap()
                })
                .collect::<Vec<_>>();
            let out = self
                .rt
                .block_on(
                    self.kinesis
                        .put_records()
                        .stream_name(&self.stream)
                        .set_records(Some(entries))
                        .send(),
                )
                .unwrap();
            assert_eq!(out.failed_record_count(), Some(0));
        }
    }

    fn checkpoint_table(&self) -> String {
        let table = unique_name("dlcp");
        self.rt
            .block_on(
                osprey_cloud::source::kinesis::dynamo::DynamoCheckpoints::create_table(
                    &self.dynamodb,
                    &table,
                ),
            )
            .unwrap();
        table
    }

    /// Deletes every item (checkpoints and leases) of `table`.
    fn forget_checkpoints(&self, table: &str) -> usize {
        let items = self
            .rt
            .block_on(self.dynamodb.scan().table_name(table).send())
            .unwrap();
        let items = items.items();
        for item in items {
            let key = item.get("shard").unwrap().clone();
            self.rt
                .block_on(
                    self.dynamodb
                        .delete_item()
                        .table_name(table)
                        .key("shard", key)
                        .send(),
                )
                .unwrap();
        }
        items.len()
    }
}

/// A loopback HTTP proxy to moto that refuses DynamoDB `UpdateItem` calls in bursts.
struct ThrottlingProxy {
    url: String,
    throttled: Arc<AtomicU64>,
    forwarded: Arc<AtomicU64>,
}

/// Of every `CYCLE` UpdateItem calls, the first `BURST` are refused, for the first `ROUNDS`
/// cycles; then everything passes.
const CYCLE: u64 = 6;
const BURST: u64 = 4;
const ROUNDS: u64 = 3;

impl ThrottlingProxy {
    fn start(upstream: &str) -> ThrottlingProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let throttled = Arc::new(AtomicU64::new(0));
        let forwarded = Arc::new(AtomicU64::new(0));
        let updates = Arc::new(AtomicU64::new(0));
        let (t, f) = (Arc::clone(&throttled), Arc::clone(&forwarded));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (upstream, t, f, updates) = (
                    upstream.clone(),
                    Arc::clone(&t),
                    Arc::clone(&f),
                    Arc::clone(&updates),
                );
                std::thread::spawn(move || {
                    // A broken connection only fails that request, which the SDK retries.
                    let _ = serve_one(conn, &upstream, &t, &f, &updates);
                });
            }
        });
        ThrottlingProxy {
            url,
            throttled,
            forwarded,
        }
    }
}

/// Serves one request on `client` (then closes it): refused or forwarded to `upstream`.
fn serve_one(
    client: TcpStream,
    upstream: &str,
    throttled: &AtomicU64,
    forwarded: &AtomicU64,
    updates: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut target = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if let Some(v) = lower.strip_prefix("x-amz-target:") {
            target = v.trim().to_owned();
        }
        assert!(
            !lower.starts_with("transfer-encoding:"),
            "the proxy only handles Content-Length bodies"
        );
        // Every request is answered on a fresh upstream connection that then closes.
        if lower.starts_with("connection:") {
            continue;
        }
        if line == "\r\n" {
            head.extend_from_slice(b"Connection: close\r\n\r\n");
            break;
        }
        head.extend_from_slice(line.as_bytes());
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    let mut client = client;
    if target.ends_with(".updateitem") {
        let n = updates.fetch_add(1, Ordering::SeqCst);
        if n < CYCLE * ROUNDS && n % CYCLE < BURST {
            throttled.fetch_add(1, Ordering::SeqCst);
            let json = r#"{"__type":"com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException","message":"injected by the test proxy"}"#;
            write!(
                client,
                "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\n\
                 x-amzn-RequestId: test-proxy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
                json.len()
            )?;
            return client.flush();
        }
    }
    forwarded.fetch_add(1, Ordering::SeqCst);
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(&head)?;
    up.write_all(&body)?;
    let mut response = Vec::new();
    up.read_to_end(&mut response)?;
    // Make the client open a new connection for its next request too.
    let end = response
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(response.len());
    client.write_all(&response[..end])?;
    client.write_all(b"\r\nConnection: close")?;
    client.write_all(&response[end..])?;
    client.flush()
}

fn start_serve(db: &Path, endpoint: &str, stream: &str, extra: &[&str]) -> (Proc, String) {
    let mut serve = Proc::spawn(
        Command::new(bin("osprey"))
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0", "--source", "kinesis"])
            .args(["--stream", stream, "--endpoint-url", endpoint])
            .args(extra)
            .env("AWS_MAX_ATTEMPTS", "3"),
    );
    let line = serve.stdout_line_matching("osprey serve: listening on ", Duration::from_secs(60));
    let url = line.trim().rsplit(' ').next().unwrap().to_owned();
    (serve, url)
}

fn stats(api: &str) -> Value {
    http_get_json(&format!("{api}/api/stats"))
}

fn dead_letters(api: &str) -> Vec<Value> {
    http_get_json(&format!("{api}/api/dead-letters?limit=10000"))
        .as_array()
        .unwrap()
        .clone()
}

/// Waits until `devices` readings of dl-dev are applied and `rejected` payloads were seen.
fn wait_for(api: &str, readings: u64, rejected: u64, serve: &Proc) {
    let done = wait_until(Duration::from_secs(180), Duration::from_millis(300), || {
        let s = stats(api);
        let devices = http_get_json(&format!("{api}/api/devices"));
        let got = devices.as_array().unwrap().first()?["readings"].as_u64()?;
        (got == readings && s["pipeline"]["rejected"].as_u64()? >= rejected).then_some(())
    });
    if done.is_none() {
        panic!(
            "serve never applied {readings} readings and rejected {rejected}\nstats: {}\nlogs:\n{}",
            stats(api),
            serve.logs()
        );
    }
}

/// The batch pattern: 10 good messages with a bad record after every second one.
fn records(first_seq: u64, bad_tag: &str) -> (Vec<Vec<u8>>, u64) {
    let mut out = Vec::new();
    let mut bad = 0;
    for seq in first_seq..first_seq + 10 {
        out.push(message("dl-dev", seq));
        if seq % 2 == 0 {
            out.push(format!("junk {bad_tag} {seq}").into_bytes());
            bad += 1;
        }
    }
    (out, bad)
}

#[test]
fn each_bad_record_is_one_dead_letter_through_throttled_saves_and_a_kill() {
    let aws = Aws::new();
    let table = aws.checkpoint_table();
    let proxy = ThrottlingProxy::start(&moto_endpoint());
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("osprey.db");
    let cp = ["--checkpoint-table", table.as_str()];

    // Phase 1: records arrive while checkpoint saves are throttled in bursts longer than the
    // SDK's retries, so serve ingests some batches more than once.
    let (serve, api) = start_serve(&db, &proxy.url, &aws.stream, &cp);
    let mut bad_total = 0;
    let mut good_total = 0;
    for round in 0..6u64 {
        let (batch, bad) = records(1 + round * 10, "p1");
        aws.put(&batch);
        bad_total += bad;
        good_total += 10;
        std::thread::sleep(Duration::from_millis(700));
    }
    wait_for(&api, good_total, bad_total, &serve);
    // Wait for the throttling rounds to be used up, so every batch has been saved since.
    let used = wait_until(Duration::from_secs(120), Duration::from_millis(500), || {
        (proxy.throttled.load(Ordering::SeqCst) >= BURST * ROUNDS).then_some(())
    });
    assert!(
        used.is_some(),
        "the proxy throttled only {} calls",
        proxy.throttled.load(Ordering::SeqCst)
    );
    let s = stats(&api);
    let repeated_phase1 = s["maintenance"]["dead_letters_repeated"].as_u64().unwrap();
    let rejected_phase1 = s["pipeline"]["rejected"].as_u64().unwrap();
    println!(
        "phase 1: {bad_total} bad records; {} UpdateItem calls throttled, {} requests forwarded; \
         rejected {rejected_phase1} times, {repeated_phase1} of them not stored again; \
         dead letters stored: {}",
        proxy.throttled.load(Ordering::SeqCst),
        proxy.forwarded.load(Ordering::SeqCst),
        s["store"]["dead_letters"]
    );
    assert!(
        serve
            .logs()
            .contains("could not store a batch of records; retrying"),
        "no batch was ingested again: the throttling did not reach serve\n{}",
        serve.logs()
    );
    assert!(repeated_phase1 > 0, "{s}");
    assert_eq!(rejected_phase1, bad_total + repeated_phase1, "{s}");
    assert_eq!(dead_letters(&api).len() as u64, bad_total, "{s}");

    // Phase 2: SIGKILL, checkpoints deleted (as if every save had been lost between the
    // SQLite commit and DynamoDB), restart: the whole stream is read again.
    let mut serve = serve;
    serve.kill();
    let forgotten = aws.forget_checkpoints(&table);
    assert!(forgotten >= 1);
    let (batch, bad) = records(61, "p2");
    aws.put(&batch);
    bad_total += bad;
    good_total += 10;
    let (serve, api) = start_serve(&db, &moto_endpoint(), &aws.stream, &cp);
    // Everything before was read again: all its bad records are repeats now.
    wait_for(&api, good_total, bad_total, &serve);
    let re_read = wait_until(Duration::from_secs(60), Duration::from_millis(300), || {
        let s = stats(&api);
        (s["maintenance"]["dead_letters_repeated"].as_u64()? >= repeated_phase1 + bad_total - bad)
            .then_some(s)
    })
    .unwrap_or_else(|| {
        panic!(
            "the stream was not read again: {}\n{}",
            stats(&api),
            serve.logs()
        )
    });
    let rows = dead_letters(&api);
    println!(
        "phase 2 (kill -9, checkpoints deleted, {forgotten} items): {bad_total} bad records in all; \
         dead letters stored: {}; not stored again (lifetime): {}",
        rows.len(),
        re_read["maintenance"]["dead_letters_repeated"]
    );
    assert_eq!(rows.len() as u64, bad_total, "{re_read}");
    // One row per position, each the right record.
    let mut sources: Vec<&str> = rows.iter().map(|r| r["source"].as_str().unwrap()).collect();
    sources.sort_unstable();
    sources.dedup();
    assert_eq!(sources.len() as u64, bad_total);
    assert!(rows.iter().all(|r| r["reason"].as_str().unwrap().len() > 3));
    drop(serve);
}

#[test]
fn junk_stays_within_the_caps_and_is_listed_by_the_api_and_the_cli() {
    let aws = Aws::new();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("osprey.db");
    let (mut serve, api) = start_serve(
        &db,
        &moto_endpoint(),
        &aws.stream,
        &[
            "--dead-letters-max-count",
            "40",
            "--dead-letters-max-bytes",
            "300000",
        ],
    );
    // 150 junk payloads of 40 KiB (cut to 16 KiB each when stored): 6 MB received.
    let junk: Vec<Vec<u8>> = (0..150u32)
        .map(|i| {
            let mut p = vec![0xa5u8; 40 * 1024];
            p[..4].copy_from_slice(&i.to_be_bytes());
            p
        })
        .collect();
    aws.put(&junk);
    // Rejected is counted when a record is judged; its dead letter is stored with the next
    // batch commit, so wait for the store's count too (truncated: one per stored letter).
    let done = wait_until(Duration::from_secs(120), Duration::from_millis(300), || {
        let s = stats(&api);
        (s["pipeline"]["rejected"].as_u64()? >= 150
            && s["maintenance"]["dead_letters_truncated"].as_u64()? >= 150)
            .then_some(())
    });
    assert!(done.is_some(), "{}\n{}", stats(&api), serve.logs());
    let rows = dead_letters(&api);
    let stored: u64 = rows.iter().map(|r| r["stored"].as_u64().unwrap()).sum();
    let s = stats(&api);
    let evicted = s["maintenance"]["dead_letters_evicted"].as_u64().unwrap();
    println!(
        "150 junk payloads of 40 KiB: {} rows kept, {stored} payload bytes kept, {evicted} evicted, \
         database {} bytes",
        rows.len(),
        std::fs::metadata(&db).unwrap().len()
    );
    assert!(
        rows.len() <= 40 && stored <= 300_000,
        "{} rows, {stored} bytes",
        rows.len()
    );
    assert_eq!(rows.len() as u64 + evicted, 150, "{s}");
    assert_eq!(s["maintenance"]["dead_letters_truncated"], 150, "{s}");
    assert!(rows
        .iter()
        .all(|r| r["size"] == 40 * 1024 && r["stored"] == 16 * 1024));
    // The newest survive: the last record put is the first row.
    let newest = http_get_json(&format!("{api}/api/dead-letters?limit=1&payload=hex"));
    assert!(
        newest[0]["payload_hex"]
            .as_str()
            .unwrap()
            .starts_with("00000095a5a5"),
        "{newest}"
    );
    // Prometheus agrees with /api/stats.
    let metrics = http_get(&format!("{api}/metrics")).text();
    let samples = parse_samples(&metrics).unwrap();
    let value = |name: &str| {
        samples
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
            .1
    };
    assert_eq!(
        value("osprey_store_dead_letters_evicted_total"),
        evicted as f64
    );

    // The CLI reads the same rows from the API and from the file (read-only, serve running).
    let cli = |args: &[&str]| {
        let out = Command::new(bin("osprey"))
            .arg("dead-letters")
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let ids = |json: &str| -> Vec<i64> {
        serde_json::from_str::<Value>(json)
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_i64().unwrap())
            .collect()
    };
    let from_api = ids(&cli(&["--api", &api, "--json", "--limit", "1000"]));
    let from_db = ids(&cli(&[
        "--db",
        db.to_str().unwrap(),
        "--json",
        "--limit",
        "1000",
    ]));
    let want: Vec<i64> = rows.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(from_api, want);
    assert_eq!(from_db, want);
    let table = cli(&["--db", db.to_str().unwrap(), "--limit", "3"]);
    assert_eq!(
        table.lines().filter(|l| l.contains("kinesis:")).count(),
        3,
        "{table}"
    );
    assert!(table.contains("40960*"), "{table}");
    serve.terminate(Duration::from_secs(15));
}
