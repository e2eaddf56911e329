//! The embedded MQTT broker (rumqttd) of the demo.

use std::collections::HashMap;

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

/// Largest payload the embedded broker accepts: a protocol message plus topic and headers.
const MAX_PACKET: usize = osprey_protocol::MAX_MESSAGE_BYTES + 1024;

/// Starts rumqttd on `127.0.0.1:port` on its own threads. It runs until the process exits
/// (rumqttd has no stop handle), which is what the demo wants.
pub fn start(port: u16) -> Result<(), String> {
    let server = ServerSettings {
        name: "demo".to_owned(),
        listen: ([127, 0, 0, 1], port).into(),
        tls: None,
        next_connection_delay_ms: 1,
        connections: ConnectionSettings {
            connection_timeout_ms: 60_000,
            max_payload_size: MAX_PACKET,
            max_inflight_count: 500,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    let config = Config {
        id: 0,
        router: RouterConfig {
            max_connections: 10_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        },
        v4: Some(HashMap::from([("1".to_owned(), server)])),
        ..Config::default()
    };
    let mut broker = Broker::new(config);
    std::thread::Builder::new()
        .name("rumqttd".to_owned())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| format!("cannot start its thread: {e}"))?;
    Ok(())
}
