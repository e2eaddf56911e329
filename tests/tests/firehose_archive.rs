//! The archive's Kinesis Data Firehose record transformer: the built `osprey-lambda` in
//! `OSPREY_MODE=firehose-transform`, run against the Lambda Runtime API stand-in with
//! data-transformation events (the shape the Firehose developer guide documents for a Kinesis
//! stream source) built from real agent payloads.
//!
//! Each record's result is checked by id (telemetry `Ok`, a bundle's telemetry `Ok`, alert,
//! status and lifecycle events `Dropped`, junk and a payload naming another device than its
//! partition key `ProcessingFailed`), then the `Ok` data is read with DuckDB's JSON reader:
//! every reading of every telemetry message is there exactly once, with serve's archive
//! columns. A full processor buffer of default agent payloads (0.2 MB, the template's
//! ArchiveTransformBufferMB) must fit in one response.
//!
//! What runs for real: the release-shaped binary, AWS's own Lambda runtime client, DuckDB.
//! What does not: Firehose itself. Moto models delivery streams but neither Lambda data
//! transformation nor record format conversion, so the OpenX JSON → Parquet step (schema from
//! the Glue table) and the S3 prefixes are not exercised here; the template's wiring of them
//! is checked by cfn-lint and the deploy suite.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use std::collections::BTreeMap;
use std::time::Duration;

use osprey_cloud::archive::rows::{self, COLUMNS};
use osprey_protocol::{Alert, AlertEvent, Body, Envelope, Severity, Status, StatusState};
use osprey_tests::fleet::SimulatedDevice;
use osprey_tests::{firehose_event_json, LambdaRuntime, Outcome};

const T0: i64 = 1_767_225_600_000;
const ARRIVED: i64 = T0 + 3_600_000 + 1_234;

/// One archive row as compared here: the value as its bits (exact).
type Row = (String, u64, u64, String, String, String, i64, u64, i64);

/// What the transformer answered: result and decoded data per record id.
fn invoke(
    runtime: &LambdaRuntime,
    function: &osprey_tests::Proc,
    event: &str,
) -> (BTreeMap<String, (String, Vec<u8>)>, usize) {
    let outcome = runtime.invoke(event, Duration::from_secs(60));
    let Outcome::Response(body) = outcome else {
        panic!("{outcome:?}\n{}", function.logs());
    };
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    let records = answer["records"].as_array().unwrap();
    let by_id = records
        .iter()
        .map(|r| {
            let data = aws_smithy_types::base64::decode(r["data"].as_str().unwrap()).unwrap();
            (
                r["recordId"].as_str().unwrap().to_owned(),
                (r["result"].as_str().unwrap().to_owned(), data),
            )
        })
        .collect();
    (by_id, body.len())
}

/// The rows a payload's telemetry messages should give: serve's archive rows of each
/// message (`archive::rows`), received at `ARRIVED`.
fn expected_rows(payload: &[u8]) -> Vec<Row> {
    let messages = osprey_protocol::decode_messages(payload).unwrap();
    let mut rows = Vec::new();
    for m in &messages {
        let Body::Telemetry(batch) = &m.body else {
            continue;
        };
        rows.extend(
            rows::readings(&m.device, m.epoch, m.seq, batch, ARRIVED).map(|r| {
                let (device, sensor) = (r.device.to_owned(), r.sensor.to_owned());
                let (metric, unit) = (r.metric.to_owned(), r.unit.to_owned());
                let bits = r.value.to_bits();
                (
                    device, r.epoch, r.seq, sensor, metric, unit, r.time, bits, r.received,
                )
            }),
        );
    }
    rows
}

/// Reads `file` (the concatenated `Ok` data) with DuckDB: its column names and types, and its
/// rows sorted.
fn read_with_duckdb(file: &std::path::Path) -> (Vec<(String, String)>, Vec<Row>) {
    let script = r##"
import duckdb, struct, sys
con = duckdb.connect()
src = "read_json(?, format = 'newline_delimited')"
for name, ty, *_ in con.execute(f"DESCRIBE SELECT * FROM {src}", [sys.argv[1]]).fetchall():
    print("#", name, ty)
rows = con.execute(f"""SELECT device, epoch, seq, sensor, metric, unit, time, value, received
    FROM {src} ORDER BY ALL""", [sys.argv[1]]).fetchall()
for r in rows:
    bits = struct.unpack("<Q", struct.pack("<d", r[7]))[0]
    print("\t".join(str(x) for x in (*r[:7], bits, r[8])))
"##;
    let out = osprey_tests::duckdb_script(script, &[file]);
    let mut columns = Vec::new();
    let mut rows = Vec::new();
    for line in out.lines() {
        if let Some(col) = line.strip_prefix("# ") {
            let (name, ty) = col.split_once(' ').unwrap();
            columns.push((name.to_owned(), ty.to_owned()));
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        rows.push((
            f[0].to_owned(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
            f[3].to_owned(),
            f[4].to_owned(),
            f[5].to_owned(),
            f[6].parse().unwrap(),
            f[7].parse().unwrap(),
            f[8].parse().unwrap(),
        ));
    }
    (columns, rows)
}

#[test]
fn the_transformer_turns_telemetry_into_one_json_row_per_reading_and_duckdb_reads_them() {
    // Real agent payloads: three devices, three messages each, and a bundle of two more.
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    let mut devices: Vec<SimulatedDevice> = ["fh-pump-1", "fh-pump-2", "fh-fan-3"]
        .into_iter()
        .map(SimulatedDevice::new)
        .collect();
    for d in &mut devices {
        let mut t = T0;
        for _ in 0..3 {
            let ((_, payload), next) = d.next_message(t, 1000);
            t = next;
            records.push((d.name().to_owned(), payload));
        }
    }
    let bundled: Vec<Vec<u8>> = (0..2)
        .scan(T0 + 600_000, |t, _| {
            let ((_, payload), next) = devices[0].next_message(*t, 1000);
            *t = next;
            Some(payload)
        })
        .collect();
    let refs: Vec<&[u8]> = bundled.iter().map(Vec::as_slice).collect();
    let bundle = osprey_protocol::encode_bundle("fh-pump-1", 5, &refs).unwrap();
    let telemetry_records = records.len() + 1;
    records.push(("fh-pump-1".to_owned(), bundle));
    // What has no rows, and what must not be archived.
    let alert = Envelope::new(
        "fh-pump-1",
        90,
        Body::Alert(Alert {
            rule: "motor-hot".into(),
            sensor: "motor".into(),
            metric: "temperature".into(),
            event: AlertEvent::Raise,
            severity: Severity::Warning,
            value: 81.0,
            threshold: 80.0,
            time_ms: T0,
        }),
    )
    .encode()
    .unwrap();
    let status = Envelope::new(
        "fh-pump-2",
        91,
        Body::Status(Status::new(StatusState::Online)),
    )
    .encode()
    .unwrap();
    let lifecycle = br#"{"clientId":"fh-fan-3","timestamp":1767225600000,"eventType":"connected","sessionIdentifier":"a4666d2a7d844ae4ac5d7b38c9cb7967","principalIdentifier":"12345678901234567890123456789012","versionNumber":0}"#.to_vec();
    let ((_, impostor), _) = devices[1].next_message(T0 + 900_000, 1000);
    records.push(("fh-pump-1".to_owned(), alert));
    records.push(("fh-pump-2".to_owned(), status));
    records.push(("fh-fan-3".to_owned(), lifecycle));
    records.push(("fh-pump-2".to_owned(), b"not an envelope".to_vec()));
    // fh-pump-2's payload, keyed as fh-fan-3: a device speaking for another.
    records.push(("fh-fan-3".to_owned(), impostor));

    let runtime = LambdaRuntime::start();
    let mut function = runtime.start_transformer();
    let event = firehose_event_json("osprey-telemetry", ARRIVED, &records);
    let (answers, _) = invoke(&runtime, &function, &event);
    assert_eq!(answers.len(), records.len(), "one answer per record");
    let result = |i: usize| answers[&format!("rec-{i}")].0.as_str();
    for i in 0..telemetry_records {
        assert_eq!(result(i), "Ok", "record {i}\n{}", function.logs());
    }
    let n = telemetry_records;
    assert_eq!(
        [result(n), result(n + 1), result(n + 2)],
        ["Dropped"; 3],
        "alert, status, lifecycle event"
    );
    assert_eq!(
        [result(n + 3), result(n + 4)],
        ["ProcessingFailed"; 2],
        "junk, impostor\n{}",
        function.logs()
    );
    // A failed record keeps its data for the error prefix; the reason is in the log.
    assert_eq!(answers[&format!("rec-{}", n + 3)].1, b"not an envelope");
    assert!(function.logs().contains("fh-pump-2"), "{}", function.logs());

    // The Ok data, concatenated as Firehose hands it to the format conversion.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rows.json");
    let mut json = Vec::new();
    let mut cbor_bytes = 0;
    for (i, (_, payload)) in records.iter().enumerate().take(telemetry_records) {
        json.extend_from_slice(&answers[&format!("rec-{i}")].1);
        cbor_bytes += payload.len();
    }
    std::fs::write(&file, &json).unwrap();
    let (columns, mut got) = read_with_duckdb(&file);
    let names: Vec<&str> = columns.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, COLUMNS, "serve's archive columns, in order");
    let types: BTreeMap<&str, &str> = columns
        .iter()
        .map(|(n, t)| (n.as_str(), t.as_str()))
        .collect();
    assert_eq!(types["time"], "BIGINT", "epoch milliseconds: {columns:?}");
    assert_eq!(types["value"], "DOUBLE", "{columns:?}");
    let mut want: Vec<Row> = records[..telemetry_records]
        .iter()
        .flat_map(|(_, p)| expected_rows(p))
        .collect();
    want.sort();
    got.sort();
    assert_eq!(got.len(), 11 * osprey_tests::fleet::READINGS_PER_MESSAGE);
    assert_eq!(got, want, "every reading once, with its message's columns");
    eprintln!(
        "figures: {} telemetry records, {} CBOR bytes -> {} bytes of JSON rows ({:.1}x), {:.0} bytes per row",
        telemetry_records,
        cbor_bytes,
        json.len(),
        json.len() as f64 / cbor_bytes as f64,
        json.len() as f64 / got.len() as f64
    );
    assert!(runtime.unknown_requests().is_empty());
    function.kill();
}

/// Default agent payloads from a fleet of ten, from `T0`, until `bytes` of CBOR.
fn fleet_records(bytes: usize) -> Vec<(String, Vec<u8>)> {
    let mut devices: Vec<(SimulatedDevice, i64)> = (0..10)
        .map(|i| (SimulatedDevice::new(&format!("fh-load-{i:02}")), T0))
        .collect();
    let mut records = Vec::new();
    let mut total = 0;
    loop {
        for (d, t) in &mut devices {
            let ((_, payload), next) = d.next_message(*t, 1000);
            *t = next;
            total += payload.len();
            if total > bytes {
                return records;
            }
            records.push((d.name().to_owned(), payload));
        }
    }
}

#[test]
fn the_answer_stays_within_lambdas_6_mib_and_what_does_not_fit_is_failed_not_lost() {
    let runtime = LambdaRuntime::start();
    let mut function = runtime.start_transformer();

    // 120 KB of stream data (10 s of about 12 KB/s): every record fits.
    let records = fleet_records(120 * 1024);
    let event = firehose_event_json("osprey-telemetry", ARRIVED, &records);
    let (answers, response_bytes) = invoke(&runtime, &function, &event);
    let ok = answers.values().filter(|(r, _)| r == "Ok").count();
    assert_eq!(ok, records.len(), "{}", function.logs());
    eprintln!(
        "figures: {} records, {} bytes of CBOR -> a {response_bytes} byte answer",
        records.len(),
        records.iter().map(|(_, p)| p.len()).sum::<usize>()
    );

    // A full 0.2 MB processor buffer: the answer stays under the limit; the records that do
    // not fit are ProcessingFailed with their data (Firehose keeps them under the error
    // prefix), the rest Ok, in order.
    let records = fleet_records(200 * 1024);
    let event = firehose_event_json("osprey-telemetry", ARRIVED, &records);
    let (answers, response_bytes) = invoke(&runtime, &function, &event);
    assert!(response_bytes <= osprey_lambda::firehose::RESPONSE_LIMIT);
    let results: Vec<&str> = (0..records.len())
        .map(|i| answers[&format!("rec-{i}")].0.as_str())
        .collect();
    let fit = results.iter().take_while(|r| **r == "Ok").count();
    assert!(
        results[fit..].iter().all(|r| *r == "ProcessingFailed"),
        "{results:?}"
    );
    for (i, (_, payload)) in records.iter().enumerate().skip(fit) {
        assert_eq!(
            &answers[&format!("rec-{i}")].1,
            payload,
            "record {i} keeps its data"
        );
    }
    let fit_bytes: usize = records[..fit].iter().map(|(_, p)| p.len()).sum();
    eprintln!(
        "figures: 0.2 MB buffer: {fit} of {} records fit ({fit_bytes} bytes of CBOR) in a \
         {response_bytes} byte answer",
        records.len()
    );
    assert!(fit_bytes >= 120 * 1024, "{fit_bytes}");
    assert!(
        function
            .logs()
            .contains("lower the processor's BufferSizeInMBs"),
        "{}",
        function.logs()
    );
    function.kill();
}
