//! Real agent payloads from simulated devices, and a pipelined QoS 1 publisher for them.
//!
//! A [`SimulatedDevice`] runs the agent library's seeded simulator and batcher and encodes each
//! full batch as the agent does (an envelope of the journal's epoch and the next sequence
//! number), so what it returns is byte for byte a message a gateway would publish.
//! [`publish_all`] sends many such messages through a broker as fast as it takes them: up to
//! 256 QoS 1 publishes await their PUBACK at once (where `mosquitto_pub` waits for each).

use std::num::NonZeroUsize;
use std::time::Duration;

use osprey_agent::{BatchLimits, Batcher, Scenario, Simulator};
use osprey_protocol::{Body, Envelope};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// One publish: topic and payload.
pub type Publish = (String, Vec<u8>);

/// Readings per message: 20 samples of the simulator's 3 series, as the agent's default batch.
pub const READINGS_PER_MESSAGE: usize = 60;

/// A device's simulator and batcher, numbering its messages from 1 in journal epoch 1.
#[derive(Debug)]
pub struct SimulatedDevice {
    name: String,
    sim: Simulator,
    batcher: Batcher,
    seq: u64,
}

impl SimulatedDevice {
    /// A steady machine named `name` (seed 42).
    pub fn new(name: &str) -> SimulatedDevice {
        SimulatedDevice {
            name: name.to_owned(),
            sim: Simulator::new(name, 42, Scenario::Steady),
            batcher: Batcher::new(BatchLimits {
                max_readings: NonZeroUsize::new(READINGS_PER_MESSAGE).unwrap_or(NonZeroUsize::MIN),
                max_age: Duration::from_secs(3600),
                max_bytes: osprey_protocol::MAX_MESSAGE_BYTES,
                target_bytes: osprey_protocol::MAX_MESSAGE_BYTES,
            }),
            seq: 0,
        }
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Samples from `time_ms` every `interval_ms` until a message is full; returns it (on the
    /// device's telemetry topic) and the time of the next sample.
    ///
    /// # Panics
    ///
    /// If the message cannot be encoded (it always can: the batcher keeps it within limits).
    pub fn next_message(&mut self, mut time_ms: i64, interval_ms: i64) -> (Publish, i64) {
        let now = tokio::time::Instant::now();
        loop {
            let readings = self.sim.sample(time_ms);
            time_ms += interval_ms;
            let mut full = None;
            for r in &readings {
                full = full.or(self.batcher.push(r, now));
            }
            if let Some(batch) = full {
                self.seq += 1;
                let payload = Envelope::new(&self.name, self.seq, Body::Telemetry(batch))
                    .with_epoch(1)
                    .encode()
                    .unwrap_or_else(|e| panic!("cannot encode a simulated message: {e}"));
                let topic = format!("dt/osprey/{}/telemetry", self.name);
                return ((topic, payload), time_ms);
            }
        }
    }
}

/// The encoded telemetry message `seq` of `device` carrying one series.
///
/// # Panics
///
/// When the message cannot be encoded (too large).
pub fn telemetry(device: &str, seq: u64, series: osprey_protocol::Series) -> Vec<u8> {
    let batch = osprey_protocol::TelemetryBatch {
        series: vec![series],
    };
    Envelope::new(device, seq, Body::Telemetry(batch))
        .encode()
        .unwrap_or_else(|e| panic!("cannot encode a telemetry message: {e}"))
}

/// Publishes `messages` in order to the broker on 127.0.0.1:`port` at QoS 1, with up to 256
/// awaiting their PUBACK; returns once the broker has acknowledged every one.
///
/// # Panics
///
/// When the connection fails.
pub fn publish_all(port: u16, messages: Vec<Publish>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("cannot start the publisher's runtime: {e}"));
    rt.block_on(async move {
        let mut options = MqttOptions::new(
            format!("osprey-test-publisher-{}", std::process::id()),
            "127.0.0.1",
            port,
        );
        options
            .set_inflight(256)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let total = messages.len();
        let sender = tokio::spawn(async move {
            for (topic, payload) in messages {
                if client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    break;
                }
            }
            client
        });
        let mut acked = 0;
        while acked < total {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher: {e}"),
            }
        }
        if let Ok(client) = sender.await {
            let _ = client.try_disconnect();
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), eventloop.poll()).await;
    });
}
