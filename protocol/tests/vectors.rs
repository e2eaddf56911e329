//! Golden vectors: the hex test vectors in `protocol/SPEC.md` decode to the messages below,
//! and those messages encode to exactly those bytes. A change that breaks either breaks the
//! wire contract with every deployed gateway.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed expectation is the report

use osprey_protocol::{
    decode, Alert, AlertEvent, Body, Envelope, Series, Severity, Status, StatusState,
    TelemetryBatch,
};

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
            state: StatusState::Online,
            agent_version: "0.1.0".into(),
            uptime_s: 12,
            backlog: 0,
            dropped: 0,
            time_ms: 1_700_000_004_000,
        }),
    );
    vec![
        ("telemetry-1", telemetry),
        ("alert-1", alert),
        ("status-1", status),
    ]
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

#[test]
fn spec_vectors_decode_to_the_documented_messages() {
    let vectors = spec_vectors();
    let expected = expected();
    assert_eq!(
        vectors.len(),
        expected.len(),
        "SPEC.md has {} vectors, the test knows {}",
        vectors.len(),
        expected.len()
    );
    for (name, want) in expected {
        let (_, bytes) = vectors
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("vector {name} missing from SPEC.md"));
        let got = decode(bytes).unwrap_or_else(|e| panic!("vector {name} does not decode: {e}"));
        assert_eq!(got, want, "vector {name}");
    }
}

#[test]
fn documented_messages_encode_to_the_spec_bytes() {
    let vectors = spec_vectors();
    for (name, msg) in expected() {
        let bytes = msg.encode().expect("encode");
        let (_, spec_bytes) = vectors
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("vector {name} missing from SPEC.md"));
        assert_eq!(
            hex::encode(&bytes),
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
}
