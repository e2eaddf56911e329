//! MQTT topic names, following AWS IoT's guidance: `dt/` for device data, `cmd/` for commands,
//! the application name, then the device (thing name).
//!
//! | topic | carries |
//! |---|---|
//! | `dt/osprey/<device>/telemetry` | telemetry batches |
//! | `dt/osprey/<device>/alerts` | alert events |
//! | `dt/osprey/<device>/status` | birth, last will, periodic status |
//! | `cmd/osprey/<device>/<command>` | commands to the device (e.g. `rules`) |
//! | `cmd/osprey/<device>/config` | the device's rule document (retained; brokers without Device Shadow) |
//! | `dt/osprey/<device>/config/reported` | what the device applied or rejected (retained) |
//!
//! The config report has five levels, so it matches neither [`ALL_DATA`] nor the AWS IoT rule
//! that forwards data to Kinesis: it is not an Osprey CBOR message but a JSON document (see
//! SPEC.md, "Remote configuration").
//! A bundle (kind 4) has no topic of its own: it goes on the topic of the kind of the messages
//! it carries (`data(device, Decoded::kind())`), so a subscriber to alerts still gets them.

use alloc::{format, string::String};

use crate::Kind;

/// Filter that matches every device's data topics.
pub const ALL_DATA: &str = "dt/osprey/+/+";

/// The data topic a device publishes messages of `kind` on (and bundles of such messages).
pub fn data(device: &str, kind: Kind) -> String {
    format!("dt/osprey/{device}/{}", kind.topic_level())
}

/// `topic` sent through AWS IoT Basic Ingest to the rule `rule`: the rule is invoked directly,
/// with no messaging charge, and sees the topic without this prefix.
pub fn basic_ingest(rule: &str, topic: &str) -> String {
    format!("$aws/rules/{rule}/{topic}")
}

/// The command topic for `device` and `command`.
pub fn command(device: &str, command: &str) -> String {
    format!("cmd/osprey/{device}/{command}")
}

/// The retained topic that carries `device`'s rule document on brokers without Device Shadow.
pub fn config(device: &str) -> String {
    command(device, "config")
}

/// The retained topic where `device` reports the document it applied (or rejected).
pub fn config_reported(device: &str) -> String {
    format!("dt/osprey/{device}/config/reported")
}

/// Splits a data topic into its device and kind; `None` for anything else.
pub fn parse_data(topic: &str) -> Option<(&str, Kind)> {
    let mut parts = topic.split('/');
    let (Some("dt"), Some("osprey"), Some(device), Some(level), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    let kind = match level {
        "telemetry" => Kind::Telemetry,
        "alerts" => Kind::Alert,
        "status" => Kind::Status,
        _ => return None,
    };
    crate::valid_device_id(device).then_some((device, kind))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_topics_round_trip() {
        for kind in [Kind::Telemetry, Kind::Alert, Kind::Status] {
            let t = data("pump-7", kind);
            assert_eq!(parse_data(&t), Some(("pump-7", kind)));
        }
    }

    #[test]
    fn config_topics_are_outside_the_data_filter() {
        assert_eq!(config("pump-7"), "cmd/osprey/pump-7/config");
        assert_eq!(
            config_reported("pump-7"),
            "dt/osprey/pump-7/config/reported"
        );
        assert_eq!(parse_data(&config_reported("pump-7")), None);
    }

    #[test]
    fn foreign_topics_are_rejected() {
        assert_eq!(parse_data("dt/other/pump/telemetry"), None);
        assert_eq!(parse_data("dt/osprey/pump/telemetry/extra"), None);
        assert_eq!(parse_data("dt/osprey/pu mp/telemetry"), None);
        assert_eq!(parse_data("dt/osprey/pump/weather"), None);
    }
}
