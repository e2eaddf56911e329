//! `mosquitto_sub` as the subscriber that must see every message: it prints `topic hex` per
//! message at QoS 1, reconnects by itself, and the test decodes what it printed.

use std::process::Command;
use std::time::{Duration, Instant};

use osprey_protocol::{Decoded, Envelope};

use crate::{mosquitto_tool, wait_until, Proc};

/// A running `mosquitto_sub` on `dt/osprey/#` (and a marker topic used to know it is ready).
pub struct Subscriber {
    proc: Proc,
    port: u16,
}

impl Subscriber {
    /// Subscribes on the broker at 127.0.0.1:`port` and returns once it receives messages.
    pub fn start(port: u16) -> Subscriber {
        Subscriber::start_with(port, &[])
    }

    /// [`Subscriber::start`], also subscribed to `filters` (e.g. a Basic Ingest
    /// `$aws/rules/<rule>/dt/osprey/#`, which `#` alone never matches).
    pub fn start_with(port: u16, filters: &[&str]) -> Subscriber {
        let mut cmd = Command::new(mosquitto_tool("mosquitto_sub"));
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
            .args(["-t", "dt/osprey/#", "-t", "test/marker", "-F", "%t %x"]);
        for filter in filters {
            cmd.args(["-t", filter]);
        }
        let proc = Proc::spawn(&mut cmd);
        let sub = Subscriber { proc, port };
        sub.wait_ready();
        sub
    }

    /// Publishes markers until the subscriber prints one: it is connected and subscribed.
    pub fn wait_ready(&self) {
        let marker = format!("{:?}", Instant::now());
        let ready = wait_until(Duration::from_secs(60), Duration::from_millis(200), || {
            let _ = Command::new(mosquitto_tool("mosquitto_pub"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-t", "test/marker", "-m", &marker])
                .output();
            let hex: String = marker.bytes().map(|b| format!("{b:02x}")).collect();
            self.proc.stdout().contains(&hex).then_some(())
        });
        assert!(
            ready.is_some(),
            "subscriber not ready:\n{}",
            self.proc.logs()
        );
    }

    /// Everything it printed so far: a `topic hex` line per message.
    pub fn stdout(&self) -> String {
        self.proc.stdout()
    }

    /// Every Osprey message received so far, in arrival order; a bundle (protocol 1.2) gives
    /// its inner messages in their order. Panics (the test's report) on a payload that does
    /// not decode.
    pub fn messages(&self) -> Vec<Envelope> {
        self.publishes()
            .into_iter()
            .flat_map(|publish| publish.messages)
            .collect()
    }

    /// Every publish received on an Osprey data topic so far (not the JSON config reports), in
    /// arrival order, with the messages it carried: one, or a bundle's. Counting these against
    /// [`Subscriber::messages`] shows whether the agent packed its backlog.
    pub fn publishes(&self) -> Vec<Publish> {
        self.proc
            .stdout()
            .lines()
            // A Basic Ingest topic is its data topic after `$aws/rules/<rule>/`.
            .map(|l| match l.strip_prefix("$aws/rules/") {
                Some(rest) => rest.split_once('/').map_or(l, |(_, topic)| topic),
                None => l,
            })
            .filter(|l| l.starts_with("dt/osprey/"))
            .filter_map(|l| l.split_once(' '))
            // Data topics have four levels; `dt/osprey/<device>/config/reported` carries JSON.
            .filter(|(topic, _)| topic.split('/').count() == 4)
            .map(|(topic, hex)| {
                let decoded = osprey_protocol::payload_bytes(hex.as_bytes())
                    .ok()
                    .and_then(|bytes| osprey_protocol::decode_any(&bytes).ok())
                    .unwrap_or_else(|| panic!("undecodable payload on {topic}: {hex}"));
                Publish {
                    topic: topic.to_owned(),
                    bundle: matches!(decoded, Decoded::Bundle(_)),
                    messages: decoded.into_messages(),
                }
            })
            .collect()
    }
}

/// One MQTT publish the subscriber received.
#[derive(Debug, Clone)]
pub struct Publish {
    /// Its topic.
    pub topic: String,
    /// Whether it was a bundle.
    pub bundle: bool,
    /// The messages it carried, in order.
    pub messages: Vec<Envelope>,
}
