//! AWS IoT Core lifecycle events as device presence.
//!
//! IoT Core publishes a JSON event on `$aws/events/presence/connected/<clientId>` and
//! `$aws/events/presence/disconnected/<clientId>` whenever a client connects or goes away; an
//! IoT rule (`SELECT * FROM '$aws/events/presence/+/+'`) delivers them to the same Kinesis
//! stream as the telemetry. Osprey agents connect with their device id as the client id, so an
//! event says whether that device is online:
//!
//! ```json
//! {"clientId": "pump-7", "timestamp": 1573002230757, "eventType": "connected",
//!  "sessionIdentifier": "a4666d2a…", "principalIdentifier": "1234…", "versionNumber": 0}
//! ```
//!
//! Only `clientId`, `timestamp` and `eventType` are read; other fields are ignored. Events
//! carry no sequence number, so they do not go through dedup: applying one twice changes
//! nothing, and an event older than the stored status (by `timestamp`) is ignored, so a
//! redelivered or late `connected` never overrides a newer `disconnected`.

use osprey_protocol::{valid_device_id, StatusState};
use serde::Deserialize;

use crate::pipeline::Origin;
use crate::store::Presence;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LifecycleEvent {
    client_id: String,
    timestamp: i64,
    event_type: String,
}

/// The presence a payload reports, if it is an AWS IoT lifecycle event (`connected` or
/// `disconnected`) for a valid device id. Only for records from Kinesis or fed in-process:
/// Osprey's MQTT data topics never carry lifecycle events.
pub fn parse(payload: &[u8], origin: &Origin, received_ms: i64) -> Option<Presence> {
    if matches!(origin, Origin::Mqtt { .. }) {
        return None;
    }
    let first = payload.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    let event: LifecycleEvent = serde_json::from_slice(payload).ok()?;
    let state = match event.event_type.as_str() {
        "connected" => StatusState::Online,
        "disconnected" => StatusState::Offline,
        _ => return None,
    };
    if !valid_device_id(&event.client_id) {
        return None;
    }
    Some(Presence {
        device: event.client_id,
        state,
        time_ms: event.timestamp,
        received_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinesis() -> Origin {
        Origin::Direct("test".to_owned())
    }

    #[test]
    fn aws_sample_events_are_presence() {
        let connected = br#"{"clientId":"pump-7","timestamp":1573002230757,"eventType":"connected",
            "sessionIdentifier":"a4666d2a7d844ae4ac5d7b38c9cb7967",
            "principalIdentifier":"12345678901234567890123456789012","ipAddress":"192.0.2.0",
            "versionNumber":0}"#;
        let p = parse(connected, &kinesis(), 5).unwrap();
        assert_eq!(
            (p.device.as_str(), p.state, p.time_ms, p.received_ms),
            ("pump-7", StatusState::Online, 1_573_002_230_757, 5)
        );
        let disconnected = br#" {"clientId":"pump-7","timestamp":1573002340451,
            "eventType":"disconnected","sessionIdentifier":"a4666d2a7d844ae4ac5d7b38c9cb7967",
            "principalIdentifier":"12345678901234567890123456789012",
            "clientInitiatedDisconnect":true,"disconnectReason":"CLIENT_INITIATED_DISCONNECT",
            "versionNumber":0}"#;
        assert_eq!(
            parse(disconnected, &kinesis(), 0).unwrap().state,
            StatusState::Offline
        );
    }

    #[test]
    fn other_json_and_other_origins_are_not_presence() {
        let event = br#"{"clientId":"pump-7","timestamp":1,"eventType":"connected"}"#;
        let mqtt = Origin::Mqtt {
            topic: "dt/osprey/pump-7/status".to_owned(),
        };
        assert!(parse(event, &mqtt, 0).is_none());
        assert!(parse(
            br#"{"clientId":"pump-7","timestamp":1,"eventType":"subscribed"}"#,
            &kinesis(),
            0
        )
        .is_none());
        assert!(parse(
            br#"{"clientId":"bad id","timestamp":1,"eventType":"connected"}"#,
            &kinesis(),
            0
        )
        .is_none());
        assert!(parse(br#"{"hello":1}"#, &kinesis(), 0).is_none());
        assert!(parse(b"\xa1\x61v\x01", &kinesis(), 0).is_none());
    }
}
