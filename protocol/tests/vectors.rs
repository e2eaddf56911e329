//! Golden vectors: the hex test vectors in `protocol/SPEC.md` decode to the messages below,
//! and those messages encode to exactly those bytes (except the vectors of older forms, which
//! today's encoder no longer writes but every decoder must keep reading). A change that breaks
//! either breaks the wire contract with every deployed gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use osprey_protocol::{
    decode, decode_any, encode_bundle, Alert, AlertEvent, Body, Bundle, ClockState, Decoded,
    Envelope, Series, Severity, Status, StatusState, TelemetryBatch,
};

/// The journal epoch of the 1.3 vectors: 2^52 + 1.
const EPOCH: u64 = 4_503_599_627_370_497;

/// Vectors in a form the current encoder no longer writes (decode-only, kept forever).
const DECODE_ONLY: [&str; 1] = ["telemetry-1"];

fn telemetry(seq: u64, series: Vec<Series>) -> Envelope {
    Envelope::new("pump-7", seq, Body::Telemetry(TelemetryBatch { series }))
}

/// The messages the vectors in SPEC.md encode, by vector name.
fn expected() -> Vec<(&'static str, Envelope)> {
    let mut temp = Series::new("bearing", "temperature", "Cel");
    temp.push(1_700_000_000_000, 41.5);
    temp.push(1_700_000_001_000, 41.75);
    temp.push(1_700_000_002_000, 42.0);
    let telemetry = Envelope::new(
        "pump-7",
        1,
        Body::Telemetry(TelemetryBatch { series: vec![temp] }),
    );
    let alert = Envelope::new(
        "pump-7",
        2,
        Body::Alert(Alert {
            rule: "bearing-hot".into(),
            sensor: "bearing".into(),
            metric: "temperature".into(),
            event: AlertEvent::Raise,
            severity: Severity::Critical,
            value: 80.5,
            threshold: 80.0,
            time_ms: 1_700_000_003_000,
        }),
    );
    let status = Envelope::new(
        "pump-7",
        3,
        Body::Status(Status {
            agent_version: "0.1.0".into(),
            uptime_s: 12,
            time_ms: 1_700_000_004_000,
            ..Status::new(StatusState::Online)
        }),
    );
    // 1.1: regular 1 Hz readings with two decimals, in the period and scaled-integer forms.
    let mut temp2 = Series::new("bearing", "temperature", "Cel");
    temp2.push(1_700_000_000_000, 41.53);
    temp2.push(1_700_000_001_000, 41.56);
    temp2.push(1_700_000_002_000, 41.5);
    // 1.1: jittered 1 Hz times (period + corrections), and values no decimal scale holds
    // exactly (floats), next to a counter (integers, scale 0 left out).
    let mut accel = Series::new("hub", "accel", "m/s2");
    let mut count = Series::new("line", "count", "");
    for (i, (t, x)) in [(0, 0.1 + 0.2), (1001, -1.0 / 3.0), (2000, 9.806_65)]
        .into_iter()
        .enumerate()
    {
        accel.push(1_700_000_000_000 + t, x);
        count.push(1_700_000_000_000 + t, 1000.0 + i as f64);
    }
    let status2 = Envelope::new(
        "pump-7",
        6,
        Body::Status(Status {
            state: StatusState::Offline,
            agent_version: "0.2.0".into(),
            uptime_s: 3600,
            backlog: 2,
            dropped: 5,
            time_ms: 1_700_003_600_000,
            backlog_bytes: 300,
            dropped_quota: 4,
            boot_id: "6f1c2a3e-8d4b-4c5a-9e7f-0a1b2c3d4e5f".into(),
            clock: ClockState::Synced,
            journal_resets: 0,
            will_seq: 0,
        }),
    );
    // 1.3: a gateway whose journal has epoch 2^52 + 1 (a random draw in 1..=2^53-1; "j" takes
    // a 9-byte head), the readings of telemetry-2.
    let mut temp4 = Series::new("bearing", "temperature", "Cel");
    temp4.push(1_700_000_000_000, 41.53);
    temp4.push(1_700_000_001_000, 41.56);
    temp4.push(1_700_000_002_000, 41.5);
    let telemetry4 = self::telemetry(7, vec![temp4]).with_epoch(EPOCH);
    // 1.3: the birth of a connection whose last will reserved seq 7 (one below the birth's).
    let status3 = Envelope::new(
        "pump-7",
        8,
        Body::Status(Status {
            agent_version: "0.3.0".into(),
            uptime_s: 5,
            time_ms: 1_700_007_200_000,
            will_seq: 7,
            boot_id: "6f1c2a3e-8d4b-4c5a-9e7f-0a1b2c3d4e5f".into(),
            clock: ClockState::Synced,
            ..Status::new(StatusState::Online)
        }),
    )
    .with_epoch(EPOCH);
    vec![
        ("telemetry-1", telemetry),
        ("alert-1", alert),
        ("status-1", status),
        ("telemetry-2", self::telemetry(4, vec![temp2])),
        ("telemetry-3", self::telemetry(5, vec![accel, count])),
        ("status-2", status2),
        ("telemetry-4", telemetry4),
        ("status-3", status3),
    ]
}

/// The bundles the vectors in SPEC.md encode, by vector name: their inner messages are the
/// vectors `telemetry-2` and `telemetry-3`, byte for byte.
fn expected_bundles() -> Vec<(&'static str, Bundle)> {
    let messages: Vec<Envelope> = expected()
        .into_iter()
        .filter(|(name, _)| ["telemetry-2", "telemetry-3"].contains(name))
        .map(|(_, msg)| msg)
        .collect();
    vec![(
        "bundle-1",
        Bundle {
            device: "pump-7".into(),
            seq: 5,
            messages,
        },
    )]
}

fn encode(bundle: &Bundle) -> Vec<u8> {
    let inner: Vec<Vec<u8>> = bundle
        .messages
        .iter()
        .map(|m| m.encode().unwrap())
        .collect();
    let refs: Vec<&[u8]> = inner.iter().map(Vec::as_slice).collect();
    encode_bundle(&bundle.device, bundle.seq, &refs).unwrap()
}

/// Extracts `<!-- vector: NAME -->` followed by a fenced hex block from SPEC.md.
fn spec_vectors() -> Vec<(String, Vec<u8>)> {
    let spec = include_str!("../SPEC.md");
    let mut out = Vec::new();
    let mut lines = spec.lines();
    while let Some(line) = lines.next() {
        let Some(name) = line
            .trim()
            .strip_prefix("<!-- vector: ")
            .and_then(|r| r.strip_suffix(" -->"))
        else {
            continue;
        };
        let fence = lines.next().unwrap_or_default();
        assert_eq!(
            fence.trim(),
            "```hex",
            "vector {name}: expected a ```hex fence"
        );
        let mut hex_text = String::new();
        for l in lines.by_ref() {
            if l.trim() == "```" {
                break;
            }
            hex_text.extend(l.chars().filter(|c| !c.is_whitespace()));
        }
        let bytes =
            hex::decode(&hex_text).unwrap_or_else(|e| panic!("vector {name}: bad hex: {e}"));
        out.push((name.to_owned(), bytes));
    }
    out
}

/// The bytes of vector `name`.
fn vector<'a>(vectors: &'a [(String, Vec<u8>)], name: &str) -> &'a [u8] {
    vectors
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, bytes)| bytes.as_slice())
        .unwrap_or_else(|| panic!("vector {name} missing from SPEC.md"))
}

#[test]
fn spec_vectors_decode_to_the_documented_messages() {
    let vectors = spec_vectors();
    let expected = expected();
    let bundles = expected_bundles();
    assert_eq!(
        vectors.len(),
        expected.len() + bundles.len(),
        "SPEC.md has {} vectors, the test knows {}",
        vectors.len(),
        expected.len() + bundles.len()
    );
    for (name, want) in bundles {
        let bytes = vector(&vectors, name);
        let got = decode_any(bytes).unwrap_or_else(|e| panic!("vector {name}: {e}"));
        assert_eq!(got, Decoded::Bundle(want), "vector {name}");
    }
    for (name, want) in expected {
        let bytes = vector(&vectors, name);
        let got = decode(bytes).unwrap_or_else(|e| panic!("vector {name} does not decode: {e}"));
        assert_eq!(got, want, "vector {name}");
    }
}

#[test]
fn documented_messages_encode_to_the_spec_bytes() {
    let vectors = spec_vectors();
    for (name, msg) in expected() {
        if DECODE_ONLY.contains(&name) {
            continue;
        }
        let bytes = msg.encode().expect("encode");
        let spec_bytes = vector(&vectors, name);
        assert_eq!(
            hex::encode(&bytes),
            hex::encode(spec_bytes),
            "vector {name}: encoder output differs from SPEC.md"
        );
    }
    for (name, bundle) in expected_bundles() {
        let spec_bytes = vector(&vectors, name);
        assert_eq!(
            hex::encode(encode(&bundle)),
            hex::encode(spec_bytes),
            "vector {name}: encoder output differs from SPEC.md"
        );
    }
}

/// Prints the vectors' hex; run with `--ignored --nocapture` when adding a vector to SPEC.md.
#[test]
#[ignore]
fn print_vectors() {
    for (name, msg) in expected() {
        println!("{name}: {}", hex::encode(msg.encode().expect("encode")));
    }
    for (name, bundle) in expected_bundles() {
        println!("{name}: {}", hex::encode(encode(&bundle)));
    }
}
