//! `osprey decode`: shows a payload as JSON, for an operator looking at what a device sent
//! (an MQTT payload saved with `mosquitto_sub -N`, a Kinesis record, a dead letter). A bundle
//! (protocol 1.2) shows as `kind: "bundle"` with its inner messages under `messages`.
//!
//! The JSON is [`osprey_protocol::json`]'s view: the journal epoch (1.3) as `epoch`, and NaN,
//! +∞ and −∞ readings as the strings `"NaN"`, `"Infinity"` and `"-Infinity"` (JSON has no
//! literal for them; as `null` they would look like a missing reading).

use osprey_protocol::{decode_any, DecodeError, PayloadError, FORMAT_VERSION};
use serde_json::Value;

/// Why a payload could not be shown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShowError {
    /// Neither bytes nor hex: empty input, or an odd number of hex digits.
    #[error(transparent)]
    Input(#[from] PayloadError),
    /// The bytes are not an Osprey message.
    #[error("not an Osprey v{FORMAT_VERSION} message")]
    Decode(#[from] DecodeError),
}

/// Decodes a payload (binary, or hex with any white space; see
/// [`osprey_protocol::payload_bytes`]) to readable JSON.
pub fn show(input: &[u8]) -> Result<Value, ShowError> {
    let decoded = decode_any(&osprey_protocol::payload_bytes(input)?)?;
    Ok(osprey_protocol::json::decoded_json(&decoded))
}

/// A message as readable JSON: full field names, readings as `[time_ms, value]` pairs.
pub use osprey_protocol::json::to_json;

#[cfg(test)]
mod tests {
    use osprey_protocol::{Body, Envelope, Series, TelemetryBatch};
    use serde_json::json;

    use super::*;

    fn telemetry() -> Envelope {
        let mut s = Series::new("bearing", "temperature", "Cel");
        s.push(1_700_000_000_000, 41.5);
        s.push(1_700_000_001_000, 41.75);
        Envelope::new(
            "pump-7",
            4,
            Body::Telemetry(TelemetryBatch { series: vec![s] }),
        )
    }

    #[test]
    fn binary_and_hex_input_show_the_same_message() {
        let bytes = telemetry().encode().unwrap();
        let spaced_hex = hex::encode(&bytes)
            .as_bytes()
            .chunks(16)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("\n");
        let from_binary = show(&bytes).unwrap();
        assert_eq!(show(spaced_hex.as_bytes()).unwrap(), from_binary);
        assert_eq!(from_binary["kind"], "telemetry");
        assert_eq!(from_binary["body"]["readings"], 2);
        assert_eq!(from_binary["device"], "pump-7");
        assert_eq!(from_binary["seq"], 4);
        assert_eq!(
            from_binary["body"]["series"][0]["readings"],
            json!([[1_700_000_000_000i64, 41.5], [1_700_000_001_000i64, 41.75]])
        );
    }

    #[test]
    fn compact_forms_show_the_exact_readings_and_new_status_fields() {
        // telemetry-2 of SPEC.md: period form and scaled integers.
        let hex = "a5617601616b0161646670756d702d376171046162a1617381a7616e6762656172696e67616d6b\
                   74656d706572617475726561756343656c61741b0000018bcfe5680061701903e86173026278\
                   69831910390325";
        let json = show(hex.replace(' ', "").as_bytes()).unwrap();
        assert_eq!(
            json["body"]["series"][0]["readings"],
            json!([
                [1_700_000_000_000i64, 41.53],
                [1_700_000_001_000i64, 41.56],
                [1_700_000_002_000i64, 41.5]
            ])
        );
        let status = Envelope::new(
            "pump-7",
            9,
            Body::Status(osprey_protocol::Status {
                boot_id: "b-1".into(),
                backlog_bytes: 300,
                clock: osprey_protocol::ClockState::Synced,
                ..osprey_protocol::Status::new(osprey_protocol::StatusState::Online)
            }),
        );
        let json = show(&status.encode().unwrap()).unwrap();
        assert_eq!(json["body"]["boot_id"], "b-1");
        assert_eq!(json["body"]["backlog_bytes"], 300);
        assert_eq!(json["body"]["clock"], "synced");
    }

    #[test]
    fn a_bundle_shows_its_inner_messages() {
        let mut second = telemetry();
        second.seq = 9;
        let inner = [telemetry().encode().unwrap(), second.encode().unwrap()];
        let refs: Vec<&[u8]> = inner.iter().map(Vec::as_slice).collect();
        let bytes = osprey_protocol::encode_bundle("pump-7", 9, &refs).unwrap();
        let json = show(&bytes).unwrap();
        assert_eq!(json["kind"], "bundle");
        assert_eq!(json["seq"], 9);
        assert_eq!(json["messages"][0], to_json(&telemetry()));
        assert_eq!(json["messages"][1]["seq"], 9);
        assert_eq!(json["messages"][1]["body"]["readings"], 2);
    }

    #[test]
    fn nan_and_infinities_show_distinguishably() {
        let mut s = Series::new("bearing", "temperature", "Cel");
        for (i, x) in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.5]
            .into_iter()
            .enumerate()
        {
            s.push(1_000 + i as i64, x);
        }
        let msg = Envelope::new(
            "pump-7",
            4,
            Body::Telemetry(TelemetryBatch { series: vec![s] }),
        );
        let json = show(&msg.encode().unwrap()).unwrap();
        assert_eq!(
            json["body"]["series"][0]["readings"],
            json!([
                [1_000, "NaN"],
                [1_001, "Infinity"],
                [1_002, "-Infinity"],
                [1_003, -0.5]
            ])
        );
        let alert = Envelope::new(
            "pump-7",
            5,
            Body::Alert(osprey_protocol::Alert {
                rule: "r".into(),
                sensor: "s".into(),
                metric: "m".into(),
                event: osprey_protocol::AlertEvent::Raise,
                severity: osprey_protocol::Severity::Info,
                value: f64::NAN,
                threshold: f64::NEG_INFINITY,
                time_ms: 0,
            }),
        );
        let json = show(&alert.encode().unwrap()).unwrap();
        assert_eq!(json["body"]["value"], "NaN");
        assert_eq!(json["body"]["threshold"], "-Infinity");
    }

    #[test]
    fn epoch_and_will_seq_show() {
        // status-3 of SPEC.md: epoch 4 503 599 627 370 497, online, will seq 7.
        let status = Envelope::new(
            "pump-7",
            8,
            Body::Status(osprey_protocol::Status {
                will_seq: 7,
                ..osprey_protocol::Status::new(osprey_protocol::StatusState::Online)
            }),
        )
        .with_epoch(4_503_599_627_370_497);
        let json = show(&status.encode().unwrap()).unwrap();
        assert_eq!(json["epoch"], 4_503_599_627_370_497u64);
        assert_eq!(json["body"]["will_seq"], 7);
        assert_eq!(show(&telemetry().encode().unwrap()).unwrap()["epoch"], 0);
    }

    #[test]
    fn trailing_bytes_are_not_shown_as_one_message() {
        let one = telemetry().encode().unwrap();
        let two = [one.clone(), one].concat();
        let err = show(&two).unwrap_err();
        assert!(
            matches!(&err, ShowError::Decode(DecodeError::Malformed(why)) if why.contains("trailing bytes")),
            "{err:?}"
        );
    }

    #[test]
    fn bad_input_says_what_is_wrong() {
        assert!(matches!(
            show(b" \n"),
            Err(ShowError::Input(PayloadError::Empty))
        ));
        let odd = show(b"abc").unwrap_err();
        assert!(odd.to_string().contains("odd number of digits"), "{odd}");
        let err = show(b"hello, world").unwrap_err();
        assert!(
            err.to_string().starts_with("not an Osprey v1 message"),
            "{err}"
        );
    }
}
